"""Tests of the MedCalc-Bench adapter: sampling, table checks, fetch provenance, parsing, scoring.

The 1,047-row test table is generated here (a committed copy would be ~1 MB of synthetic notes):
Row Number = position + 1, calculator IDs cycling through every parser class.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cotransfer.config import DatasetSpec
from cotransfer.datasets import get_adapter
from cotransfer.datasets.medcalc import (COLUMNS, DECIMAL_IDS, INTEGER_IDS, SYSTEM, MedCalc,
                                         UnsafeExpression, calculator_class, check_calculator_ids,
                                         extract_answer, safe_eval)

N_ROWS = 1047
KNOWN_IDS = sorted({13, 68, 69} | INTEGER_IDS | DECIMAL_IDS)


def gold_row(cid: int, i: int) -> tuple[str, str, str, str]:
    """(output type, gold, lower, upper) in the shapes the real table uses per class."""
    kind = calculator_class(cid)
    if kind == "date":
        d = f"{(i % 12) + 1:02d}/{(i % 28) + 1:02d}/2023"
        return "date", d, d, d
    if kind == "tuple":
        t = f"('{i % 40} weeks', '{i % 7} days')"
        return "integer", t, t, t
    if kind == "integer":
        return "integer", str(i % 10), str(i % 10), str(i % 10)
    x = round(10 + i * 0.37, 3)
    return "decimal", str(x), str(round(x * 0.95, 5)), str(round(x * 1.05, 5))


def make_table(n: int = N_ROWS) -> pl.DataFrame:
    rows = []
    for i in range(n):
        cid = KNOWN_IDS[i % len(KNOWN_IDS)]
        out_type, gold, lo, hi = gold_row(cid, i)
        rows.append({
            "Row Number": str(i + 1), "Calculator ID": str(cid), "Calculator Name": f"calc {cid}",
            "Category": ["lab", "risk", "date", "severity"][cid % 4], "Output Type": out_type,
            "Note ID": f"n{i}", "Note Type": "synthetic", "Patient Note": f"Patient {i}, aged {20 + i % 60}.",
            "Question": f"What is the value of calculator {cid}?", "Relevant Entities": "{}",
            "Ground Truth Answer": gold, "Lower Limit": lo, "Upper Limit": hi,
            "Ground Truth Explanation": "synthetic",
        })
    return pl.DataFrame(rows, schema={c: pl.String for c in COLUMNS})


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("medcalc") / "test_data.csv"
    make_table().write_csv(path)
    return path


def spec(**kw) -> DatasetSpec:
    kw.setdefault("name", "medcalc")
    kw.setdefault("adapter", "medcalc")
    kw.setdefault("repo_id", "ncbi/MedCalc-Bench-v1.0")
    kw["options"] = tuple(sorted((kw.pop("options", None) or {}).items()))
    return DatasetSpec(**kw)


def adapter(**kw) -> MedCalc:
    return get_adapter("medcalc")(spec(**kw))


# -- sampling -----------------------------------------------------------------------------------


def test_registered():
    assert get_adapter("medcalc") is MedCalc
    assert MedCalc.remote and MedCalc.version == "2"  # bumped whenever parsing changes (scores re-run)


def test_numpy_positions_are_the_original_rows():
    # The original study's rows: pandas sample(n=100, random_state=42) on 1,047 rows, which is
    # RandomState(42).choice(1047, 100, replace=False); its first Row Numbers are 353, 561, ...
    positions = np.random.RandomState(42).choice(N_ROWS, size=100, replace=False)
    assert positions[:5].tolist() == [352, 560, 874, 980, 31]
    assert len(set(positions.tolist())) == 100


def test_sample_is_pinned_and_in_sample_order(table_csv):
    items = adapter().load(table_csv)
    assert items.height == 100
    assert items["item_id"][:5].to_list() == ["353", "561", "875", "981", "32"]
    expected = np.random.RandomState(42).choice(N_ROWS, size=100, replace=False) + 1
    assert items["item_id"].to_list() == [str(x) for x in expected]


def test_sample_is_deterministic_and_seeded(table_csv):
    a = adapter().load(table_csv)
    assert a.equals(adapter().load(table_csv))
    assert not a["item_id"].equals(adapter(seed=7).load(table_csv)["item_id"])
    assert adapter(n_items=10).load(table_csv)["item_id"].to_list() == \
        [str(x + 1) for x in np.random.RandomState(42).choice(N_ROWS, size=10, replace=False)]


def test_items_carry_prompt_gold_and_meta(table_csv):
    items = adapter().load(table_csv)
    row = items.row(0, named=True)
    src = make_table().row(352, named=True)
    assert row["system"] == SYSTEM
    assert "step_by_step_thinking" in SYSTEM and '"answer"' in SYSTEM and "step-by-step" in SYSTEM
    assert row["user"].startswith("Here is the patient note:\n" + src["Patient Note"] + "\n\n")
    assert "\n\nHere is the task:\n" + src["Question"] + "\n\n" in row["user"]
    assert row["user"].endswith('"answer": str(short_and_direct_answer_of_the_question)}:')
    assert row["gold"] == src["Ground Truth Answer"]
    meta = json.loads(row["meta"])
    assert set(meta) == {"calculator_id", "output_type", "category", "lower", "upper", "row_number"}
    assert meta["row_number"] == 353 and meta["calculator_id"] == int(src["Calculator ID"])
    assert meta["category"] == src["Category"]


def test_scored_rows_carry_score_and_category(table_csv):
    """The answers table's `score` (1/0 for correct/incorrect, null when the gold cannot be judged)
    and `category` (the item's MedCalc `Category`) come from scoring."""
    from cotransfer.scoring import ANSWER_COLUMNS, SCORE_SCHEMA, score_generations

    items = adapter(n_items=10).load(table_csv)
    rows = items.head(3).to_dicts()
    gold = rows[0]["gold"]
    gens = pl.DataFrame({"item_id": [r["item_id"] for r in rows] + [rows[0]["item_id"]],
                         "answer_text": [answer(gold), "garbage", None, answer(gold)]})
    scored = score_generations(spec(n_items=10), items, gens)
    assert {"score", "category"} <= set(scored.columns) and {"score", "category"} <= set(ANSWER_COLUMNS)
    assert scored.schema["score"] == pl.Float64 and scored.schema["category"] == pl.String
    assert all(scored.schema[c] == t for c, t in SCORE_SCHEMA.items())
    categories = {r["item_id"]: json.loads(r["meta"])["category"] for r in rows}
    assert scored["category"].to_list() == [categories[i] for i in gens["item_id"]]
    assert scored["correct"].to_list() == [True, False, False, True]
    assert scored["score"].to_list() == [1.0, 0.0, 0.0, 1.0]
    assert adapter().category({"meta": {"category": ""}}) is None and adapter().category({"meta": "{}"}) is None


def test_score_is_null_when_the_gold_cannot_be_judged():
    s = score("8.1", item(2, "8.1"))  # a decimal row without limits
    assert (s.valid, s.correct, s.score) == (True, None, None)
    assert score("8.1", DEC).score == 1.0 and score("9.9", DEC).score == 0.0 and score("x", DEC).score == 0.0


def test_parquet_and_directory_inputs_give_the_same_sample(table_csv, tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    make_table().write_parquet(raw / "sub" / "test-00000.parquet")
    make_table(50).write_csv(raw / "train_data.csv")
    (raw / "fetch.json").write_text("{}")  # written by the data stage next to the table
    assert adapter().load(raw).equals(adapter().load(table_csv))


def test_ambiguous_directory_is_an_error(tmp_path):
    make_table(50).write_csv(tmp_path / "a_test.csv")
    make_table(50).write_csv(tmp_path / "b_test.csv")
    with pytest.raises(ValueError, match="cannot pick"):
        adapter().load(tmp_path)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "t.csv"
    make_table(200).drop("Lower Limit", "Question").write_csv(path)
    with pytest.raises(ValueError, match=r"Question.*Lower Limit|Lower Limit.*Question"):
        adapter().load(path)


def test_small_table_uses_every_row_in_order(tmp_path, caplog):
    path = tmp_path / "t.csv"
    make_table(30).write_csv(path)
    items = adapter().load(path)
    assert items["item_id"].to_list() == [str(i) for i in range(1, 31)]
    assert "using every row" in caplog.text


def test_row_order_and_size_are_checked(tmp_path):
    path = tmp_path / "t.csv"
    make_table(300).reverse().write_csv(path)
    with pytest.raises(ValueError, match="strictly increasing"):
        adapter().load(path)
    make_table(300).write_csv(path)
    with pytest.raises(ValueError, match="expected 1047"):
        adapter(options={"expected_rows": 1047}).load(path)


def test_unknown_calculator_in_sample_fails(tmp_path):
    path = tmp_path / "t.csv"
    make_table(20).with_columns(pl.lit("99").alias("Calculator ID")).write_csv(path)
    with pytest.raises(ValueError, match="99: no parser class"):
        adapter().load(path)


def test_parser_classes():
    check_calculator_ids(KNOWN_IDS)  # 69 is listed twice; the tuple class wins
    assert calculator_class(69) == "tuple" and calculator_class(13) == "date"
    assert calculator_class(4) == "integer" and calculator_class(2) == "decimal"
    assert calculator_class(1) is None


# -- fetch --------------------------------------------------------------------------------------


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_local_path(table_csv, tmp_path):
    prov = adapter(path=str(table_csv)).fetch(tmp_path / "raw")
    assert (tmp_path / "raw" / "test_data.csv").read_bytes() == table_csv.read_bytes()
    assert prov["files"] == {"test_data.csv": sha(table_csv)}
    assert prov["data_files"] == ["test_data.csv"]


def fake_snapshot(commit: str, calls: list):
    """Stands in for huggingface_hub.snapshot_download: writes a small repo like the Hub would."""

    def snapshot_download(*, repo_id, repo_type, revision, allow_patterns, local_dir):
        calls.append(dict(repo_id=repo_id, repo_type=repo_type, revision=revision,
                          allow_patterns=allow_patterns))
        root = Path(local_dir)
        make_table(60).write_csv(root / "test_data.csv")
        make_table(20).write_csv(root / "train_data.csv")
        meta = root / ".cache" / "huggingface" / "download"
        meta.mkdir(parents=True)
        (meta / "test_data.csv.metadata").write_text(f"{commit}\netag\n0\n")
        return str(root)

    return snapshot_download


def test_fetch_hub_offline_reads_commit_from_snapshot(monkeypatch, tmp_path):
    import huggingface_hub

    commit, calls = "a" * 40, []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot(commit, calls))

    class Offline:
        def dataset_info(self, *a, **k):
            raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    prov = adapter(revision="main").fetch(tmp_path)
    assert calls == [{"repo_id": "ncbi/MedCalc-Bench-v1.0", "repo_type": "dataset", "revision": "main",
                      "allow_patterns": ["*.csv", "*.parquet", "*.jsonl", "*.json"]}]
    assert prov["dataset_revision"] == "main" and prov["resolved_revision"] == commit
    assert prov["data_files"] == ["test_data.csv"]
    assert set(prov["files"]) == {"test_data.csv", "train_data.csv"}  # not the .cache metadata
    assert prov["files"]["test_data.csv"] == sha(tmp_path / "test_data.csv")
    assert adapter().load(tmp_path).height == 60


def test_fetch_hub_online_asks_for_the_sha(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot("b" * 40, []))

    class Online:
        def dataset_info(self, repo_id, revision=None):
            assert (repo_id, revision) == ("ncbi/MedCalc-Bench-v1.0", "v1.0")
            return type("Info", (), {"sha": "c" * 40})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Online)
    assert adapter(revision="v1.0").fetch(tmp_path)["resolved_revision"] == "c" * 40


# -- answer extraction and safe arithmetic --------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ('{"step_by_step_thinking": "add it up", "answer": "5"}', "5"),
    ('{"step_by_step_thinking": "...", "answer": 12.5}', "12.5"),
    ('Here you go:\n```json\n{\n  "step_by_step_thinking": "x",\n  "answer": "7"\n}\n```\nDone.', "7"),
    ("Final Answer: 42", "42"),
    ("**Answer:** 3 points", "3 points"),
    ("The answer: 1\nanswer: 2", "2"),  # the last match wins
    ('{"answer": \u201c9.5\u201d}', "9.5"),  # curly quotes
    ('{"answer": ""}', None),
    ("no key here", None),
    ("", None),
    (None, None),
    ('{"step_by_step_thinking": str(your_step_by_step_thinking_procress_to_solve_the_question), '
     '"answer": str(short_and_direct_answer_of_the_question)}', None),
    ('{"answer": "X.XX"}', None),
])
def test_extract_answer(text, value):
    assert extract_answer(text) == value


@pytest.mark.parametrize("expr, value", [
    ("4 + 1", 5.0), ("2^3", 8.0), ("2 ** 3", 8.0), ("-(3 - 5) * 2", 4.0), ("7 / 2", 3.5),
    ("1.5e2", 150.0), ("(140 - 60) * 70 / (72 * 1.2)", (140 - 60) * 70 / (72 * 1.2)),
])
def test_safe_eval_arithmetic(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo pwned')", "round(4.5)", "x + 1", "[1][0]", "(1).real",
    "1 if 1 else 2", "lambda: 1", "True + 1", "1j", "'a' * 3", "1 / 0", "(-8) ** (1 / 3)",
    "1e308 * 10", "", "1 +", "1" * 300,
])
def test_safe_eval_rejects(expr):
    with pytest.raises(UnsafeExpression):
        safe_eval(expr)


@pytest.mark.parametrize("expr", ["10**10**10", "9^9^9^9", "(10**10)**(10**10)", "2**2**2**2**2**2",
                                  "(" * 90 + "9" + ")" * 90, "9" * 199])
def test_huge_expressions_are_rejected_or_finite_and_fast(expr):
    start = time.perf_counter()
    try:
        assert np.isfinite(safe_eval(expr))
    except UnsafeExpression:
        pass
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("text", ["answer " * 20000, "answer: a" + " " * 100000 + "b",
                                  '{"answer": "' + "1 " * 50000 + '"}', "answer\n" * 50000])
def test_degenerate_long_outputs_parse_in_linear_time(text):
    m = adapter()
    start = time.perf_counter()
    for cid in (2, 4, 13, 69):
        m.parse_and_score(text, item(cid, "1", 0, 2))
    assert time.perf_counter() - start < 1.0


# -- scoring by calculator class ----------------------------------------------------------------


def item(cid: int, gold: str, lower=None, upper=None, as_json: bool = True) -> dict:
    meta = {"calculator_id": cid, "output_type": "x", "category": "x", "lower": lower,
            "upper": upper, "row_number": 1}
    return {"item_id": "1", "gold": gold, "meta": json.dumps(meta) if as_json else meta}


def answer(value: str) -> str:
    return json.dumps({"step_by_step_thinking": "Step 1 ... done.", "answer": value}, ensure_ascii=False)


def score(value, it):
    return adapter().parse_and_score(answer(value) if isinstance(value, str) else value, it)


DEC = item(2, "8.1", 7.695, 8.505)


@pytest.mark.parametrize("value, parsed, correct", [
    ("8.1", "8.1", True),
    ("7.695", "7.695", True),  # lower limit, inclusive
    ("8.505", "8.505", True),  # upper limit, inclusive
    ("7.694", "7.694", False),  # just outside
    ("8.506", "8.506", False),
    ("8.10", "8.1", True),  # 1.5 == 1.50 as normalized strings
    ("8.1 mL/min/1.73 m\u00b2", "8.1", True),  # not 1.73 or 2
    ("eGFR = 8.1 mL/min/1.73m2", "8.1", True),
    ("810%", "8.1", True),  # "x%" -> x/100
    ("str(4 + 4.1)", "8.1", True),  # safe evaluation of the str() wrapper
    ("8 + 0.1", "8.1", True),  # a bare expression is evaluated too
    ("The value is approximately 8.1 mL/min", "8.1", True),
    ("1,234.5", "1234.5", False),
    ("\u22128.1", "-8.1", False),  # Unicode minus
    ("-8.1", "-8.1", False),
])
def test_decimal(value, parsed, correct):
    s = score(value, DEC)
    assert (s.answer, s.valid, s.correct, s.status) == (parsed, True, correct, "ok")


@pytest.mark.parametrize("value, parsed, correct", [
    ("3", "3", True), ("3.0", "3", True), ("2.5", "2", False),  # round half to even: 2.5 -> 2
    ("3.5", "4", False), ("3.4", "3", True),
    ("3 out of 10", "3", True), ("1, 1, 1", "3", True),  # a comma list counts its items
    ("1 + 2", "3", True), ("str(1 + 2)", "3", True), ("The total is 3 points.", "3", True),
])
def test_integer(value, parsed, correct):
    s = score(value, item(4, "3"))
    assert (s.answer, s.valid, s.correct, s.status) == (parsed, True, correct, "ok")


@pytest.mark.parametrize("value, cid, gold, parsed", [
    # a range or ratio is not a calculation: the last number (method.md 4.1), not 7.35 - 7.45
    ("7.35-7.45", 2, "7.4", "7.45"), ("2-3", 4, "3", "3"), ("3/4", 4, "3", "4"),
    ("7.35 \u2212 7.45", 2, "7.4", "-0.1"),  # written as a calculation, with spaces: evaluated
    # an answer with its derivation in parentheses is that answer, not an invalid expression
    ("3 (1 + 1 + 1)", 4, "3", "3"), ("12.5 (10 + 2.5)", 2, "12.5", "12.5"),
])
def test_ranges_ratios_and_derivations_are_not_evaluated(value, cid, gold, parsed):
    s = score(value, item(cid, gold))
    assert (s.answer, s.valid, s.status) == (parsed, True, "ok")



@pytest.mark.parametrize("value, parsed, correct", [
    ("03/07/2023", "3/7/2023", True), ("3/7/2023", "3/7/2023", True),
    ("The due date is 3-7-2023.", "3/7/2023", True), ("03/08/2023", "3/8/2023", False),
])
@pytest.mark.parametrize("cid", [13, 68])
def test_date(cid, value, parsed, correct):
    s = score(value, item(cid, "03/07/2023"))
    assert (s.answer, s.valid, s.correct, s.status) == (parsed, True, correct, "ok")


@pytest.mark.parametrize("value", ["02/30/2023", "13/01/2023", "next Tuesday", "2023"])
def test_bad_date(value):
    s = score(value, item(13, "03/07/2023"))
    assert (s.answer, s.valid, s.correct, s.status) == (None, False, False, "bad_date")


@pytest.mark.parametrize("value, parsed, correct", [
    ("(4 weeks, 3 days)", "(4, 3)", True), ("('4 weeks', '3 days')", "(4, 3)", True),
    ("4 weeks and 3 days", "(4, 3)", True), ("[4, 3]", "(4, 3)", True), ("(4, 3)", "(4, 3)", True),
    ("4w 3d", "(4, 3)", True), ("(3 weeks, 4 days)", "(3, 4)", False),
])
def test_weeks_days(value, parsed, correct):
    s = score(value, item(69, "('4 weeks', '3 days')"))  # 69 is also an Integer ID: tuple wins
    assert (s.answer, s.valid, s.correct, s.status) == (parsed, True, correct, "ok")


@pytest.mark.parametrize("text, it, status", [
    ("", DEC, "not_found"),
    (None, DEC, "not_found"),
    ("I could not compute it.", DEC, "not_found"),
    ('{"step_by_step_thinking": "...", "answer": str(short_and_direct_answer_of_the_question)}', DEC,
     "not_found"),
    ('{"answer": "unknown"}', DEC, "no_number"),
    ('{"answer": "str(round(8.1, 1))"}', DEC, "bad_expr"),
    ('{"answer": "str(10**10**10)"}', DEC, "bad_expr"),
    ('{"answer": "1 / 0"}', DEC, "bad_expr"),
    ('{"answer": "43"}', item(69, "(4, 3)"), "no_number"),  # not split into (4, 3)
    ('{"answer": "' + "9" * 400 + '"}', item(4, "3"), "no_number"),  # overflows to inf
    ('{"answer": "5"}', item(99, "5"), "unknown_calculator"),
    ('{"answer": "5"}', {"gold": "5", "meta": {}}, "unknown_calculator"),
    ("{", DEC, "not_found"),
    ('{"answer": "\x00\ud800"}', DEC, "no_number"),
])
def test_malformed_answers_are_invalid_never_a_crash(text, it, status):
    s = adapter().parse_and_score(text, it)
    assert (s.answer, s.valid, s.correct, s.status) == (None, False, False, status)


def test_code_in_answers_is_text(monkeypatch):
    def boom(*a, **k):
        pytest.fail("model text reached the shell")

    monkeypatch.setattr(os, "system", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)
    for value in ("__import__('os').system('echo pwned')", "str(__import__('os').system('echo pwned'))",
                  "exec('import os')", "__import__('subprocess').Popen('echo pwned', shell=True)"):
        for cid in (2, 4, 13, 69):
            s = score(value, item(cid, "1", 0, 2))
            assert not s.valid and s.status in {"no_number", "bad_expr", "bad_date"}


def test_json_unicode_escapes_are_decoded():
    text = json.dumps({"answer": "\u22128.1 mL/min/1.73 m\u00b2"})  # ensure_ascii: "\\u2212"
    assert "\\u2212" in text
    assert adapter().parse_and_score(text, DEC).answer == "-8.1"


def test_meta_as_dict_or_json_and_scored_from_answer_only():
    assert score("8.1", item(2, "8.1", 7.695, 8.505, as_json=False)).correct
    # the thinking may quote other numbers; only the answer key counts
    text = 'Thinking: answer: 99\n{"step_by_step_thinking": "answer might be 99", "answer": "8.1"}'
    assert adapter().parse_and_score(text, DEC).answer == "8.1"


def test_scoring_5000_rows_is_fast():
    values = ["8.1", "str(4 + 4.1)", "8.1 mL/min/1.73 m\u00b2", "x", "81%", "str(10**10**10)"]
    items = [DEC, item(4, "3"), item(13, "03/07/2023"), item(69, "(4, 3)")]
    texts = [answer(values[i % len(values)]) + " trailing words " * 20 for i in range(5000)]
    m = adapter()
    start = time.perf_counter()
    for i, text in enumerate(texts):
        m.parse_and_score(text, items[i % len(items)])
    assert time.perf_counter() - start < 2.0


def test_more_items_than_rows_is_an_error_naming_the_key(tmp_path):
    """Issue 15: an n_items the table cannot give (known only after the download when the config
    has no expected_rows) fails the items job naming the key; the default n_items (100) on a
    smaller table still takes it whole (above)."""
    path = tmp_path / "t.csv"
    make_table(30).write_csv(path)
    with pytest.raises(ValueError, match=r"datasets\.\w+\.n_items: 40 is more than the 30 rows"):
        adapter(n_items=40).load(path)
