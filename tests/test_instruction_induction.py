"""Tests of the Instruction Induction adapter on the committed fixtures.

tests/fixtures/instruction_induction/ holds two tasks in the accepted layouts:
  larger_animal  12 examples whose `input` is the full induction prompt (the benchmark's
                 data/induction_input format), annotations as {"annotations": [...]}
  reverse_word   8 examples holding separate demonstrations, annotations as a plain list
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.error
from pathlib import Path

import pytest

from cotransfer.config import DatasetSpec
from cotransfer.datasets import get_adapter
from cotransfer.datasets import instruction_induction as ii
from cotransfer.datasets.instruction_induction import (InstructionInduction, build_prompt,
                                                       normalize_instruction)

FIXTURES = Path(__file__).parent / "fixtures" / "instruction_induction"


def spec(**kw) -> DatasetSpec:
    kw.setdefault("name", "ii")
    kw.setdefault("adapter", "instruction_induction")
    kw["options"] = tuple(sorted((kw.pop("options", None) or {}).items()))
    return DatasetSpec(**kw)


def adapter(**kw) -> InstructionInduction:
    return get_adapter("instruction_induction")(spec(**kw))


def test_registered():
    assert get_adapter("instruction_induction") is InstructionInduction
    assert InstructionInduction.remote and InstructionInduction.version == "1"


# -- sampling -----------------------------------------------------------------------------------


def test_sample_is_pinned_sorted_and_reproducible():
    items = adapter().load(FIXTURES)
    # tasks in name order; ids sorted numerically ("11" after "5")
    assert items["item_id"].to_list() == [
        "larger_animal:1", "larger_animal:2", "larger_animal:4", "larger_animal:5", "larger_animal:11",
        "reverse_word:1", "reverse_word:2", "reverse_word:3", "reverse_word:6", "reverse_word:8"]
    # ... which is what the original's per-task `random.seed(42); random.sample(ids, 5)` draws
    ids = list(json.loads((FIXTURES / "induce" / "larger_animal.json").read_text())["examples"])
    random.seed(42)
    assert sorted(random.sample(ids, 5), key=int) == ["1", "2", "4", "5", "11"]
    assert items.equals(adapter().load(FIXTURES))


def test_options_select_tasks_and_count():
    items = adapter(seed=3, options={"tasks": ["reverse_word"], "per_task": 3}).load(FIXTURES)
    ids = [str(i) for i in range(1, 9)]
    assert items["item_id"].to_list() == [f"reverse_word:{i}" for i in
                                          sorted(random.Random(3).sample(ids, 3), key=int)]
    with pytest.raises(FileNotFoundError, match="nope"):
        adapter(options={"tasks": ["nope"]}).load(FIXTURES)
    with pytest.raises(ValueError, match="fewer than per_task"):
        adapter(options={"per_task": 9}).load(FIXTURES)


def test_items_carry_prompt_gold_and_meta():
    items = adapter().load(FIXTURES)
    first = items.row(0, named=True)
    examples = json.loads((FIXTURES / "induce" / "larger_animal.json").read_text())["examples"]
    assert first["user"] == examples["1"]["input"]  # the full prompt, unchanged
    assert first["system"] is None
    annotations = json.loads((FIXTURES / "annotations" / "larger_animal.json").read_text())["annotations"]
    assert first["gold"] == annotations[0]
    assert json.loads(first["meta"]) == {"task": "larger_animal", "example_id": "1",
                                         "annotations": annotations}


def test_prompt_is_built_from_separate_demonstrations():
    items = adapter(options={"tasks": ["reverse_word"]}).load(FIXTURES)
    demos = json.loads((FIXTURES / "induce" / "reverse_word.json").read_text())["examples"]["1"]
    user = items["user"][0]
    assert user == build_prompt([(d["input"], d["output"]) for d in demos["demonstrations"]])
    assert user.startswith("I gave a friend an instruction and five inputs. The friend read the "
                           "instruction and wrote an output for every one of the inputs.\n"
                           "Here are the input-output pairs:\n\nInput: ")
    assert user.endswith("\n\nThe instruction was")
    assert user.count("\nOutput: ") == 5
    assert items["gold"][0] == "Reverse the word."


def test_other_layouts(tmp_path):
    (tmp_path / "induce").mkdir()
    (tmp_path / "annotations").mkdir()
    ex = {str(i): {"inputs": ["a", "b"], "outputs": ["A", "B"]} for i in range(1, 7)}
    (tmp_path / "induce" / "upper.json").write_text(json.dumps({"examples": ex}))
    per_example = {"examples": {"1": {"annotations": ["Capitalize", "Uppercase it"]},
                                "2": {"annotations": ["Capitalize"]}}}
    (tmp_path / "annotations" / "upper.json").write_text(json.dumps(per_example))
    items = adapter().load(tmp_path)
    assert json.loads(items["meta"][0])["annotations"] == ["Capitalize", "Uppercase it"]
    assert "Input: a\nOutput: A\n\nInput: b\nOutput: B" in items["user"][0]


def test_single_pair_files_are_refused(tmp_path):
    (tmp_path / "induce").mkdir()
    (tmp_path / "annotations").mkdir()
    raw = {str(i): {"input": "cat, whale", "output": "whale"} for i in range(1, 7)}
    (tmp_path / "induce" / "larger_animal.json").write_text(json.dumps({"examples": raw}))
    (tmp_path / "annotations" / "larger_animal.json").write_text(json.dumps({"annotations": ["x"]}))
    with pytest.raises(ValueError, match="single input/output pairs"):
        adapter().load(tmp_path)


# -- fetch --------------------------------------------------------------------------------------


def test_fetch_from_local_path(tmp_path):
    dest = tmp_path / "raw"
    prov = adapter(path=str(FIXTURES)).fetch(dest)
    assert prov["source_path"] == str(FIXTURES)
    assert set(prov["files"]) == {"induce/larger_animal.json", "induce/reverse_word.json",
                                  "annotations/larger_animal.json", "annotations/reverse_word.json"}
    for rel, digest in prov["files"].items():
        assert hashlib.sha256((FIXTURES / rel).read_bytes()).hexdigest() == digest
    assert adapter().load(dest).equals(adapter().load(FIXTURES))


def test_fetch_requires_a_pinned_commit(tmp_path):
    with pytest.raises(ValueError, match="40-hex commit"):
        adapter(options={"commit": "main"}).fetch(tmp_path)


class FakeResponse:
    def __init__(self, body: bytes):
        self.body = body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self):
        return self.body


def test_fetch_downloads_the_pinned_files(monkeypatch, tmp_path):
    commit, seen = "0" * 40, []

    def fake_urlopen(url, timeout):
        seen.append(url)
        sub = "induce" if "/induction_input/" in url else "annotations"
        task = url.rsplit("/", 1)[1]
        return FakeResponse((FIXTURES / sub / task).read_bytes())

    monkeypatch.setattr(ii, "_urlopen", fake_urlopen)
    prov = adapter(options={"commit": commit, "tasks": ["larger_animal"]}).fetch(tmp_path)
    base = f"https://raw.githubusercontent.com/orhonovich/instruction-induction/{commit}/data"
    assert seen == [f"{base}/induction_input/larger_animal.json", f"{base}/annotations/larger_animal.json"]
    assert prov["commit"] == commit and set(prov["files"]) == {"induce/larger_animal.json",
                                                               "annotations/larger_animal.json"}
    assert adapter().load(tmp_path)["item_id"][0] == "larger_animal:1"


def test_fetch_failure_names_the_url(monkeypatch, tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ii, "_urlopen", offline)
    with pytest.raises(RuntimeError, match=r"https://raw\.githubusercontent\.com/.*cause_and_effect\.json"):
        adapter(options={"commit": "1" * 40}).fetch(tmp_path)


def test_default_tasks_are_the_eight_originals():
    assert len(ii.ORIGINAL_TASKS) == 8 and "translation_en-fr" in ii.ORIGINAL_TASKS


# -- normalization and scoring ------------------------------------------------------------------


@pytest.mark.parametrize("text, norm", [
    ("Write the bigger animal of the two.", "write the bigger animal of the two"),
    ("The instruction is: **Write the larger animal.**", "write the larger animal"),
    ("the instruction was: `reverse` the word", "reverse the word"),
    ("### Choose the bigger animal\nMore text here.", "choose the bigger animal"),
    ("Pick the larger one, e.g. whale. Then stop.", "pick the larger one e"),
    ("Translate English-to-French", "translate english to french"),
    ("Output cats and dogs", "output cats dogs"),
    ("  \n", ""),
    (None, ""),
])
def test_normalize(text, norm):
    assert normalize_instruction(text) == norm


def item() -> dict:
    return {"item_id": "larger_animal:1", "gold": "Write the bigger animal of the two",
            "meta": json.dumps({"task": "larger_animal", "example_id": "1",
                                "annotations": ["Write the bigger animal of the two",
                                                "Which of the two animals is larger?"]})}


@pytest.mark.parametrize("text, answer, correct", [
    ("The instruction is: write the bigger animal of the two.", "write the bigger animal of the two", True),
    ("**Which of the two animals is larger?**\nBecause whales are big.", "which of the two animals is larger",
     True),
    ("Output the animal with the longer name.", "output the animal with the longer name", False),
])
def test_exact_match_scoring(text, answer, correct):
    s = adapter().parse_and_score(text, item())
    assert (s.answer, s.valid, s.correct, s.status) == (answer, True, correct, "ok")


@pytest.mark.parametrize("text", ["", None, "ok", ".", "The instruction is:", "**", "a."])
def test_empty_or_short_answers_are_invalid(text):
    s = adapter().parse_and_score(text, item())
    assert (s.answer, s.valid, s.correct, s.status) == (None, False, False, "not_found")


def test_meta_may_be_a_dict():
    it = item()
    it["meta"] = json.loads(it["meta"])
    assert adapter().parse_and_score("Write the bigger animal of the two", it).correct


def test_score_is_the_similarity():
    a = adapter()
    assert a.parse_and_score("The instruction is: write the bigger animal of the two.", item()).score == 1.0
    assert a.parse_and_score("Output the animal with the longer name.", item()).score == 0.0
    assert a.parse_and_score("ok", item()).score == 0.0  # invalid: 0, not null
    no_gold = {"item_id": "larger_animal:1", "gold": "", "meta": {"task": "larger_animal", "annotations": []}}
    s = a.parse_and_score("Write the bigger animal", no_gold)
    assert (s.valid, s.correct, s.score) == (True, None, None)  # cannot be judged


def test_item_ids_name_their_task():
    items = adapter().load(FIXTURES)
    for r in items.iter_rows(named=True):
        meta = json.loads(r["meta"])
        assert r["item_id"] == ii.item_id(meta["task"], meta["example_id"])
        assert ii.task_of(r["item_id"]) == meta["task"]
    assert ii.task_of("translation_en-fr:12") == "translation_en-fr"


def test_task_names_with_the_separator_are_refused(tmp_path):
    import shutil

    (tmp_path / "induce").mkdir()
    (tmp_path / "annotations").mkdir()
    shutil.copy(FIXTURES / "induce" / "larger_animal.json", tmp_path / "induce" / "a:b.json")
    shutil.copy(FIXTURES / "annotations" / "larger_animal.json", tmp_path / "annotations" / "a:b.json")
    with pytest.raises(ValueError, match="task names may not contain ':'"):
        adapter().load(tmp_path)


def test_scored_rows_have_score_and_no_category():
    import polars as pl

    from cotransfer.scoring import score_generations

    items = adapter().load(FIXTURES)
    ids = items["item_id"].to_list()[:3]
    gens = pl.DataFrame({"item_id": ids, "answer_text": [
        "The instruction is: " + items["gold"][0], "Reverse the word.", "ok"]})
    scored = score_generations(spec(), items, gens)
    assert scored["score"].to_list() == [1.0, 0.0, 0.0]
    assert scored["correct"].to_list() == [True, False, False]
    assert scored["category"].to_list() == [None] * 3 and scored.schema["category"] == pl.String

