"""Tests of the GSM8K adapter: gold extraction, sampling, parsing and scoring, fetch, `cotransfer score`.

Fixtures are written here in the upstream format: a Parquet table with `question` and `answer`
columns whose worked solutions end in `#### <number>` (thousands separators included).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cotransfer.config import DatasetSpec
from cotransfer.datasets import get_adapter
from cotransfer.datasets.gsm8k import GSM8K, SYSTEM, canonical, extract_number, gold_number

N_ROWS = 60


def gold_of(i: int) -> str:
    """Gold answers in the shapes upstream uses: small ints, thousands, a few large ones."""
    return [str(i), f"{1000 + i * 37:,}", str(i * 3), f"{1_000_000 + i:,}"][i % 4]


def make_table(n: int = N_ROWS) -> pl.DataFrame:
    rows = []
    for i in range(n):
        g = gold_of(i)
        rows.append({"question": f"Question {i}: Janet has {i} ducks. How many eggs?",
                     "answer": f"She has {i} ducks.\nEach lays <<{i}*1={i}>>{i} eggs.\n#### {g}"})
    return pl.DataFrame(rows, schema={"question": pl.String, "answer": pl.String})


@pytest.fixture(scope="module")
def table_parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gsm8k") / "test-00000-of-00001.parquet"
    make_table().write_parquet(path)
    return path


def spec(**kw) -> DatasetSpec:
    kw.setdefault("name", "gsm8k")
    kw.setdefault("adapter", "gsm8k")
    kw["options"] = tuple(sorted((kw.pop("options", None) or {}).items()))
    return DatasetSpec(**kw)


def adapter(**kw) -> GSM8K:
    return get_adapter("gsm8k")(spec(**kw))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registered():
    assert get_adapter("gsm8k") is GSM8K
    assert GSM8K.version == "1" and GSM8K.remote is True


# -- gold extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, gold", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("... so 1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234", "1234"),
    ("#### 1,000,000", "1000000"),
    ("The difference is -3\n#### -3", "-3"),
    ("half\n#### 0.5", "0.5"),
    ("a #### inside the text\n####  18 ", "18"),  # the last marker counts
])
def test_gold_number(answer, gold):
    assert gold_number(answer) == gold


@pytest.mark.parametrize("answer", ["no marker here", "#### eighteen", "#### "])
def test_gold_number_rejects_bad_rows(answer):
    with pytest.raises(ValueError):
        gold_number(answer)


def test_bad_gold_row_names_the_row(tmp_path):
    t = make_table(5).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("no marker")).otherwise(pl.col("answer")).alias("answer"))
    t.write_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="row 3"):
        adapter().load_all(tmp_path / "t.parquet")


# -- loading and sampling ---------------------------------------------------------------------


def test_load_all_is_every_row_in_file_order(table_parquet):
    items = adapter().load_all(table_parquet)
    assert items["item_id"].to_list() == [str(i) for i in range(N_ROWS)]
    assert items["gold"].to_list() == [gold_of(i).replace(",", "") for i in range(N_ROWS)]
    assert items["system"].unique().to_list() == [SYSTEM]
    assert items["user"][7] == make_table()["question"][7]
    assert [json.loads(m) for m in items["meta"]] == [{"index": i} for i in range(N_ROWS)]


def test_default_sample_is_every_row(table_parquet):
    assert adapter().load(table_parquet)["item_id"].to_list() == [str(i) for i in range(N_ROWS)]


def test_sample_is_numpy_choice_in_numpy_order(table_parquet):
    items = adapter(n_items=10, seed=7).load(table_parquet)
    expected = np.random.RandomState(7).choice(N_ROWS, 10, replace=False).tolist()
    assert items["item_id"].to_list() == [str(i) for i in expected]
    assert expected != sorted(expected)  # the order is numpy's, not the file's
    assert items["gold"].to_list() == [gold_of(i).replace(",", "") for i in expected]
    assert [json.loads(m)["index"] for m in items["meta"]] == expected


def test_sample_is_deterministic_and_seed_dependent(table_parquet):
    a = adapter(n_items=10, seed=42).load(table_parquet)
    assert a.equals(adapter(n_items=10, seed=42).load(table_parquet))
    assert a["item_id"].to_list() != adapter(n_items=10, seed=43).load(table_parquet)["item_id"].to_list()


def test_ids_are_stable_across_sample_sizes(table_parquet):
    """An item's id is its row, whatever the sample: a larger sample's rows keep their ids."""
    full = {r["item_id"]: r for r in adapter().load_all(table_parquet).iter_rows(named=True)}
    for r in adapter(n_items=25, seed=3).load(table_parquet).iter_rows(named=True):
        assert r == full[r["item_id"]]


def test_more_items_than_rows_is_an_error_naming_the_key(table_parquet):
    """Issue 15: n_items above the rows of a table known only after its download fails the items
    job naming the key, instead of using fewer items than asked for."""
    with pytest.raises(ValueError, match=rf"datasets\.\w+\.n_items: {N_ROWS + 5} is more than the {N_ROWS} rows"):
        adapter(n_items=N_ROWS + 5).load(table_parquet)
    assert adapter(n_items=N_ROWS).load(table_parquet).height == N_ROWS


def test_expected_rows(table_parquet):
    assert adapter(options={"expected_rows": N_ROWS}).load(table_parquet).height == N_ROWS
    with pytest.raises(ValueError, match="expected 1319"):
        adapter(options={"expected_rows": 1319}).load(table_parquet)


def test_missing_column(tmp_path):
    make_table(3).rename({"answer": "solution"}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="missing GSM8K column"):
        adapter().load(tmp_path / "t.parquet")


def test_jsonl_and_csv_read_like_parquet(tmp_path, table_parquet):
    """The original GitHub release is `test.jsonl`; a CSV export reads the same."""
    ref = adapter(n_items=8).load(table_parquet)
    make_table().write_ndjson(tmp_path / "test.jsonl")
    make_table().write_csv(tmp_path / "test.csv")
    assert adapter(n_items=8).load(tmp_path / "test.jsonl").equals(ref)
    assert adapter(n_items=8).load(tmp_path / "test.csv").equals(ref)


def test_snapshot_dir_picks_config_and_split_shards(tmp_path):
    """A Hub snapshot: `main/test-*` shards concatenated in name order; other configs/splits ignored."""
    t = make_table()
    (tmp_path / "main").mkdir()
    (tmp_path / "socratic").mkdir()
    t.head(40).write_parquet(tmp_path / "main" / "test-00000-of-00002.parquet")
    t.tail(20).write_parquet(tmp_path / "main" / "test-00001-of-00002.parquet")
    make_table(7).write_parquet(tmp_path / "main" / "train-00000-of-00001.parquet")
    make_table(5).write_parquet(tmp_path / "socratic" / "test-00000-of-00001.parquet")
    (tmp_path / "fetch.json").write_text("{}")
    items = adapter().load(tmp_path)
    assert items.height == N_ROWS and items["item_id"].to_list() == [str(i) for i in range(N_ROWS)]
    assert adapter(options={"config": "socratic"}).load(tmp_path).height == 5
    assert adapter(split="train").load(tmp_path).height == 7


# -- parsing and scoring --------------------------------------------------------------------------

ITEM = {"item_id": "0", "gold": "1234", "meta": {"index": 0}}


@pytest.mark.parametrize("text, answer, correct", [
    ("The answer is 1234.", "1234", True),
    ("The answer is 1,234.", "1234", True),
    ("The answer is $1,234.", "1234", True),
    ("The answer is $1,234.00", "1234", True),
    ("The answer is 1234.0", "1234", True),
    ("The answer is 1233.", "1233", False),
    ("the answer is: 1234", "1234", True),
    ("The final answer is 1234", "1234", True),
    ("Answer: 1234", "1234", True),
    ("**Answer:** $1234$", "1234", True),
    ("#### 1,234", "1234", True),
    ("The answer is 5. Wait, I made an error. The answer is 1234.", "1234", True),  # last marker
    ("The answer is 1234. Check: 1000 + 234 = 1234, and 2 * 3 = 6.", "1234", True),  # first number after it
    ("Adding up: 1000 + 234 = 1234", "1234", True),  # no marker: the last number
    ("So the total is \\boxed{1234}.", "1234", True),
    ("\\boxed{1,234}", "1234", True),
    ("$\\boxed{\\$1234}$", "1234", True),
    ("\\boxed{1234 \\text{ eggs}}", "1234", True),
    ("The answer is 12. Actually \\boxed{1234}", "1234", True),  # boxed after the marker wins
    ("\\boxed{12} The answer is 1234.", "1234", True),  # marker after the box wins
    ("The answer is 0.5.", "0.5", False),
    ("The answer is .25", "0.25", False),
    ("The answer is 3.14159265", "3.14159", False),
    ("The answer is -3.", "-3", False),
    ("The answer is \u22123", "-3", False),  # Unicode minus
    ("The answer is -$3", "-3", False),
    ("The answer is -0", "0", False),
    ("It drops 5-3 = 2", "2", False),  # a minus, not a negative number
    ("The answer is 1234 dollars, not 5", "1234", True),
])
def test_parse_and_score(text, answer, correct):
    s = adapter().parse_and_score(text, ITEM)
    assert (s.answer, s.valid, s.correct, s.status) == (answer, True, correct, "ok")


@pytest.mark.parametrize("text, status", [
    (None, "not_found"),
    ("", "not_found"),
    ("   \n\t", "not_found"),
    ("I do not know.", "not_found"),
    ("}{\\boxed", "not_found"),
    ("\x00\ud800 junk", "not_found"),
    ("The answer is unknown.", "no_number"),
    ("Answer: eighteen", "no_number"),
    ("\\boxed{}", "no_number"),
    ("\\boxed{x", "no_number"),
    ("The answer is " + "9" * 400, "no_number"),  # not a finite number
])
def test_invalid_answers(text, status):
    s = adapter().parse_and_score(text, ITEM)
    assert (s.answer, s.valid, s.correct, s.status) == (None, False, False, status)


def test_int_valued_floats_equal_ints():
    item = {"gold": "18", "meta": {"index": 0}}
    for text in ("The answer is 18", "The answer is 18.0", "The answer is 18.00.", "#### $18"):
        s = adapter().parse_and_score(text, item)
        assert (s.answer, s.correct) == ("18", True), text
    assert adapter().parse_and_score("The answer is 18", {"gold": "18.0"}).correct is True


def test_unparseable_gold_cannot_be_judged():
    s = adapter().parse_and_score("The answer is 3", {"gold": "n/a", "meta": {}})
    assert (s.answer, s.valid, s.correct) == ("3", True, None)


@pytest.mark.parametrize("x, s", [(18.0, "18"), (-3.0, "-3"), (-0.0, "0"), (0.5, "0.5"), (1e20, "1e+20"),
                                  (1234567.0, "1234567"), (2 / 3, "0.666667")])
def test_canonical(x, s):
    assert canonical(x) == s


def test_code_in_answers_is_text(monkeypatch):
    def boom(*a, **k):
        pytest.fail("model text reached the shell")

    monkeypatch.setattr(os, "system", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)
    for text in ("__import__('os').system('echo pwned')", "The answer is __import__('os').system('echo pwned')",
                 "exec('import os')", "\\boxed{__import__('subprocess').Popen('echo pwned', shell=True)}"):
        s = adapter().parse_and_score(text, ITEM)
        assert not s.valid and s.status in {"not_found", "no_number"}, text


def test_hostile_long_inputs_are_fast():
    import time

    t0 = time.perf_counter()
    for text in ("answer " * 200_000, "\\boxed{" * 100_000, "- " * 300_000, "1," * 300_000,
                 "The answer is " * 100_000, "$" * 500_000):
        extract_number(text)
    assert time.perf_counter() - t0 < 5


# -- fetch -----------------------------------------------------------------------------------------


def test_fetch_local_path(table_parquet, tmp_path):
    dest = tmp_path / "raw"
    prov = adapter(path=str(table_parquet)).fetch(dest)
    assert (dest / table_parquet.name).read_bytes() == table_parquet.read_bytes()
    assert prov["files"] == {table_parquet.name: sha(table_parquet)}
    assert prov["data_files"] == [table_parquet.name]
    assert prov["resolved_revision"] is None and prov["source_path"] == str(table_parquet)
    (dest / "fetch.json").write_text(json.dumps(prov))  # as the data stage writes it
    assert adapter(n_items=5).load(dest).equals(adapter(n_items=5).load(table_parquet))


def test_fetch_local_path_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        adapter(path=str(tmp_path / "nope.parquet")).fetch(tmp_path / "raw")


def test_fetch_hub_call(monkeypatch, tmp_path):
    """The Hub call: default repo, `{config}/{split}-*` pattern, into dest; sha asked from the Hub."""
    import huggingface_hub

    calls = []

    def snapshot_download(**kw):
        calls.append(kw)
        root = Path(kw["local_dir"])
        (root / "main").mkdir(parents=True)
        make_table(12).write_parquet(root / "main" / "test-00000-of-00001.parquet")
        return str(root)

    class Online:
        def dataset_info(self, repo_id, revision=None):
            assert (repo_id, revision) == ("openai/gsm8k", "main")
            return type("Info", (), {"sha": "c" * 40})()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Online)
    prov = adapter().fetch(tmp_path)
    assert calls == [{"repo_id": "openai/gsm8k", "repo_type": "dataset", "revision": "main",
                      "allow_patterns": ["main/test-*"], "local_dir": tmp_path}]
    f = "main/test-00000-of-00001.parquet"
    assert prov == {"dataset_repo_id": "openai/gsm8k", "dataset_revision": "main",
                    "resolved_revision": "c" * 40, "data_files": [f], "files": {f: sha(tmp_path / f)}}
    assert adapter().load(tmp_path).height == 12


# -- `cotransfer score` end to end --------------------------------------------------------------


def test_cli_score(table_parquet, tmp_path, capsys):
    from cotransfer.cli import main
    from cotransfer.io import read_provenance

    texts = {"0": "The answer is 0.", "1": "#### 1,037", "2": "The answer is 7.", "3": "\\boxed{1000003}",
             "4": "", "5": "__import__('os').system('echo pwned')", "6": "Answer: eighteen"}
    gens = pl.DataFrame({"item_id": list(texts), "evaluator": ["m"] * len(texts), "answer_text": list(texts.values())})
    gens.write_parquet(tmp_path / "gens.parquet")
    out = tmp_path / "scored.parquet"
    rc = main(["score", "gsm8k", "--data", str(table_parquet), "--generations", str(tmp_path / "gens.parquet"),
               "-o", str(out)])
    assert rc == 0
    assert "7 rows scored (4 valid, 3 correct)" in capsys.readouterr().out
    df = pl.read_parquet(out)
    assert df["item_id"].to_list() == list(texts)
    assert df["answer"].to_list() == ["0", "1037", "7", "1000003", None, None, None]
    assert df["correct"].to_list() == [True, True, False, True, False, False, False]
    assert df["parse_status"].to_list() == ["ok"] * 4 + ["not_found", "not_found", "no_number"]
    prov = read_provenance(out)
    assert prov["datasets"]["gsm8k"]["adapter_version"] == "1"


def test_cli_score_unknown_item(table_parquet, tmp_path, capsys):
    from cotransfer.cli import main

    pl.DataFrame({"item_id": ["9999"], "answer_text": ["The answer is 1."]}).write_parquet(tmp_path / "g.parquet")
    rc = main(["score", "gsm8k", "--data", str(table_parquet), "--generations", str(tmp_path / "g.parquet"),
               "-o", str(tmp_path / "o.parquet")])
    assert rc == 2 and "9999" in capsys.readouterr().err
