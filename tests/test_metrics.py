"""Unit tests for cotransfer.metrics on a small hand-computed answers table."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from cotransfer import metrics
from cotransfer.metrics import (
    BREAKDOWN_CATEGORIES,
    accuracy,
    breakdown,
    condition_summary,
    consistency,
    validate_answers,
)

COLUMNS = ["condition", "variant", "cot_source", "evaluator", "item_id", "sample", "answer", "valid", "correct"]
# (condition, variant, cot_source, evaluator, item, sample, answer, valid, correct)
ROWS = [
    # empty: variant and cot_source null. Per item, what the pairs see:
    # i1 all "5", all correct            -> every pair: same, both correct
    # i2 A "5.0" ok, B "5.1" ok, C "7"    -> AB: different but both correct (paper 1, strict 0); AC, BC: one correct
    # i3 A unparseable, B = C = "3" wrong -> AB, AC excluded; BC: same, both wrong
    # i4 A = B = "9" correct unknown, C "8" wrong -> AB: same, both "wrong"; AC, BC: different, both wrong
    ("empty", None, None, "A", "i1", 0, "5", True, True),
    ("empty", None, None, "B", "i1", 0, "5", True, True),
    ("empty", None, None, "C", "i1", 0, "5", True, True),
    ("empty", None, None, "A", "i2", 0, "5.0", True, True),
    ("empty", None, None, "B", "i2", 0, "5.1", True, True),
    ("empty", None, None, "C", "i2", 0, "7", True, False),
    ("empty", None, None, "A", "i3", 0, None, False, False),
    ("empty", None, None, "B", "i3", 0, "3", True, False),
    ("empty", None, None, "C", "i3", 0, "3", True, False),
    ("empty", None, None, "A", "i4", 0, "9", True, None),
    ("empty", None, None, "B", "i4", 0, "9", True, None),
    ("empty", None, None, "C", "i4", 0, "8", True, False),
    # sampled: two samples of one item; pairs must be aligned on sample (n = 2, not 4)
    ("sampled", "full", None, "A", "i1", 0, "5", True, True),
    ("sampled", "full", None, "B", "i1", 0, "5", True, True),
    ("sampled", "full", None, "A", "i1", 1, "4", True, False),
    ("sampled", "full", None, "B", "i1", 1, "6", True, False),
    # transfer from A: C never parses -> pairs AC and BC keep a row with n = 0
    ("transfer", "full", "A", "A", "i1", 0, "5", True, True),
    ("transfer", "full", "A", "B", "i1", 0, "5", True, True),
    ("transfer", "full", "A", "C", "i1", 0, None, False, None),
    ("transfer", "full", "A", "A", "i2", 0, "2", True, False),
    ("transfer", "full", "A", "B", "i2", 0, "2", True, False),
    ("transfer", "full", "A", "C", "i2", 0, None, False, None),
    # the stripped variant is a separate group
    ("transfer", "stripped", "A", "A", "i1", 0, "5", True, True),
    ("transfer", "stripped", "A", "B", "i1", 0, "6", True, False),
]

# (condition, variant, cot_source, evaluator_a, evaluator_b) -> (n, paper, strict)
EXPECTED = {
    ("empty", None, None, "A", "B"): (3, 1.0, 2 / 3),
    ("empty", None, None, "A", "C"): (3, 1 / 3, 1 / 3),
    ("empty", None, None, "B", "C"): (4, 0.5, 0.5),
    ("sampled", "full", None, "A", "B"): (2, 0.5, 0.5),
    ("transfer", "full", "A", "A", "B"): (2, 1.0, 1.0),
    ("transfer", "full", "A", "A", "C"): (0, None, None),
    ("transfer", "full", "A", "B", "C"): (0, None, None),
    ("transfer", "stripped", "A", "A", "B"): (1, 0.0, 0.0),
}


def make_answers(rows=ROWS) -> pl.DataFrame:
    schema = {"condition": pl.String, "variant": pl.String, "cot_source": pl.String, "evaluator": pl.String,
              "item_id": pl.String, "sample": pl.Int64, "answer": pl.String, "valid": pl.Boolean,
              "correct": pl.Boolean}
    df = pl.DataFrame(rows, schema=schema, orient="row")
    return df.with_columns(dataset=pl.lit("medcalc"), raw_text=pl.lit("ignored"))


@pytest.fixture
def answers() -> pl.DataFrame:
    return make_answers()


def as_dict(df: pl.DataFrame) -> dict:
    keys = ["condition", "variant", "cot_source", "evaluator_a", "evaluator_b"]
    return {tuple(r[k] for k in keys): (r["n"], r["consistency"]) for r in df.iter_rows(named=True)}


@pytest.mark.parametrize("definition", ["paper", "strict"])
def test_consistency_hand_computed(answers, definition):
    out = consistency(answers, definition)
    assert out.columns == ["dataset", "condition", "variant", "cot_source", "evaluator_a", "evaluator_b",
                           "n", "consistency", "definition"]
    assert out["definition"].unique().to_list() == [definition]
    got = as_dict(out)
    assert got.keys() == EXPECTED.keys()
    col = 1 if definition == "paper" else 2
    for key, exp in EXPECTED.items():
        n, value = got[key]
        assert n == exp[0], key
        if exp[col] is None:
            assert value is None, key
        else:
            assert value == pytest.approx(exp[col]), key


def test_paper_and_strict_differ_only_on_tolerance_agreement(answers):
    paper = as_dict(consistency(answers, "paper"))
    strict = as_dict(consistency(answers, "strict"))
    differing = {k for k in paper if paper[k] != strict[k]}
    assert differing == {("empty", None, None, "A", "B")}


def test_consistency_sorted_deterministic_and_lazy(answers):
    out = consistency(answers)
    shuffled = consistency(answers.sample(fraction=1.0, shuffle=True, seed=1).lazy())
    assert out.equals(shuffled)
    assert out["condition"].to_list() == sorted(out["condition"].to_list())
    assert (out["evaluator_a"] < out["evaluator_b"]).all()


def test_consistency_empty_table(answers):
    out = consistency(answers.clear(), "strict")
    assert out.height == 0
    assert out.schema["n"] == pl.Int64 and out.schema["consistency"] == pl.Float64


def test_unknown_definition(answers):
    with pytest.raises(ValueError, match="definition"):
        consistency(answers, "lenient")


def test_duplicate_key_raises(answers):
    # the duplicated row has null variant and cot_source: nulls must count as equal keys
    with pytest.raises(ValueError, match="duplicate"):
        consistency(pl.concat([answers, answers.head(1)]))


def test_duplicate_key_differing_only_in_payload_raises(answers):
    dup = answers.filter(pl.col("condition") == "transfer").head(1).with_columns(answer=pl.lit("other"))
    with pytest.raises(ValueError, match="duplicate"):
        validate_answers(pl.concat([answers, dup]))


def test_missing_column_raises(answers):
    with pytest.raises(ValueError, match="'valid'"):
        accuracy(answers.drop("valid"))


def test_wrong_dtype_raises(answers):
    with pytest.raises(ValueError, match="sample"):
        breakdown(answers.with_columns(pl.col("sample").cast(pl.String)))


def test_validate_accepts_narrow_ints_and_all_null_columns():
    df = make_answers(ROWS[:12]).with_columns(pl.col("sample").cast(pl.Int32),
                                              cot_source=pl.lit(None), variant=pl.lit(None))
    assert df.schema["cot_source"] == pl.Null
    lf = validate_answers(df)
    assert lf.collect_schema()["sample"] == pl.Int64
    assert "raw_text" not in lf.collect_schema()
    assert consistency(df).height == 3


def test_condition_summary(answers):
    summary = condition_summary(pl.concat([consistency(answers, "paper"), consistency(answers, "strict")]))
    row = summary.filter(condition="empty", definition="paper").row(0, named=True)
    values = [1.0, 1 / 3, 0.5]
    assert row["n_pairs"] == 3
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["std"] == pytest.approx(np.std(values))  # population std (ddof = 0)
    assert row["stderr"] == pytest.approx(np.std(values) / math.sqrt(3))
    strict = summary.filter(condition="empty", definition="strict").row(0, named=True)
    assert strict["mean"] == pytest.approx(np.mean([2 / 3, 1 / 3, 0.5]))
    # null pairs (n = 0) are not counted
    transfer = summary.filter(condition="transfer", variant="full", definition="paper").row(0, named=True)
    assert (transfer["n_pairs"], transfer["mean"], transfer["std"], transfer["stderr"]) == (1, 1.0, 0.0, 0.0)
    assert summary.height == 2 * 4


def test_condition_summary_pools_sources_within_variant():
    cons = pl.DataFrame({
        "dataset": ["d"] * 5,
        "condition": ["transfer"] * 5,
        "variant": ["full", "full", "full", "stripped", "full"],
        "cot_source": ["A", "A", "B", "A", "B"],
        "evaluator_a": ["x", "x", "x", "x", "y"],
        "evaluator_b": ["y", "z", "y", "y", "z"],
        "n": [4, 4, 4, 4, 0],
        "consistency": [0.2, 0.4, 0.9, 0.0, None],
        "definition": ["paper"] * 5,
    })
    per_source = condition_summary(cons)
    assert per_source.height == 3
    pooled = condition_summary(cons, pool_sources=True)
    assert "cot_source" not in pooled.columns
    full = pooled.filter(variant="full").row(0, named=True)
    assert full["n_pairs"] == 3
    assert full["mean"] == pytest.approx(0.5)
    assert full["stderr"] == pytest.approx(np.std([0.2, 0.4, 0.9]) / math.sqrt(3))
    assert pooled.filter(variant="stripped")["mean"].item() == 0.0


def test_accuracy(answers):
    acc = accuracy(answers)
    empty = {r["evaluator"]: r for r in acc.filter(condition="empty").iter_rows(named=True)}
    # A: i3 unparseable (incorrect), i4 correct unknown (incorrect) -> 2/4
    assert (empty["A"]["n"], empty["A"]["n_valid"], empty["A"]["n_correct"]) == (4, 3, 2)
    assert empty["A"]["accuracy"] == 0.5 and empty["A"]["se"] == pytest.approx(0.25)
    assert (empty["B"]["n_valid"], empty["B"]["n_correct"]) == (4, 2)
    assert empty["C"]["accuracy"] == 0.25
    assert empty["C"]["se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    sampled_a = acc.filter(condition="sampled", evaluator="A").row(0, named=True)
    assert (sampled_a["n"], sampled_a["n_correct"]) == (2, 1)  # samples count as rows
    transfer_c = acc.filter(condition="transfer", variant="full", evaluator="C").row(0, named=True)
    assert (transfer_c["n_valid"], transfer_c["accuracy"], transfer_c["se"]) == (0, 0.0, 0.0)
    assert acc.height == 3 + 2 + 3 + 2


def test_breakdown_hand_computed(answers):
    bd = breakdown(answers)
    empty = bd.filter(condition="empty").row(0, named=True)
    assert empty["n"] == 10
    assert {c: empty[c] for c in BREAKDOWN_CATEGORIES} == {
        "same_both_correct": 3, "same_both_wrong": 2, "diff_both_correct": 1,
        "one_correct": 2, "diff_both_wrong": 2}
    assert empty["same_diff_correctness"] == 0
    transfer_full = bd.filter(condition="transfer", variant="full").row(0, named=True)
    assert (transfer_full["n"], transfer_full["same_both_correct"], transfer_full["same_both_wrong"]) == (2, 1, 1)


def test_breakdown_sums_and_matches_consistency(answers):
    bd = breakdown(answers)
    assert (bd.select(pl.sum_horizontal(list(BREAKDOWN_CATEGORIES))).to_series() == bd["n"]).all()
    for definition, cats in [("paper", 3), ("strict", 2)]:
        pooled = (consistency(answers, definition)
                  .group_by("dataset", "condition", "variant", "cot_source")
                  .agg(agree=(pl.col("n") * pl.col("consistency")).sum(), n=pl.col("n").sum()))
        joined = bd.join(pooled, on=["dataset", "condition", "variant", "cot_source"], nulls_equal=True)
        assert joined.height == bd.height == 4
        shares = pl.sum_horizontal([f"share_{c}" for c in list(BREAKDOWN_CATEGORIES)[:cats]])
        check = joined.select(shares, pl.col("agree") / pl.col("n"))
        np.testing.assert_allclose(check[:, 0].to_numpy(), check[:, 1].to_numpy())


def test_breakdown_sanity_count_and_empty_group():
    rows = [
        ("default", "full", None, "A", "i1", 0, "5", True, True),
        ("default", "full", None, "B", "i1", 0, "5", True, False),  # same answer, different correctness
        ("default", "full", None, "A", "i2", 0, "1", True, True),
        ("default", "full", None, "B", "i2", 0, "2", True, False),
        ("transfer", "full", "A", "A", "i1", 0, None, False, None),
        ("transfer", "full", "A", "B", "i1", 0, "5", True, True),
    ]
    bd = breakdown(make_answers(rows))
    default = bd.filter(condition="default").row(0, named=True)
    assert (default["n"], default["one_correct"], default["same_diff_correctness"]) == (2, 2, 1)
    transfer = bd.filter(condition="transfer").row(0, named=True)
    assert transfer["n"] == 0 and transfer["share_one_correct"] is None


def test_ensemble_diagnostics_counts_wins_steps_stops_and_strip_ratio():
    steps = pl.DataFrame({"dataset": ["d"] * 5, "ensemble": ["e"] * 5, "item_id": ["a", "a", "b", "b", "b"],
                          "step": [0, 1, 0, 1, 2], "selected_generator": [0, 1, 1, 1, 0]})
    rows = pl.DataFrame({"dataset": ["d", "d"], "item_id": ["a", "b"], "cot_source": ["e", "e"],
                         "n_steps": [2, 3], "stop_reason": ["ends_thought", "max_steps"]})
    stripped = pl.DataFrame({"dataset": ["d", "d"], "cot_source": ["e", "e"], "char_ratio": [1.0, 0.5]})
    diag = metrics.ensemble_diagnostics(steps, rows, {"e": ("gq", "gd")}, stripped=stripped)
    got = {(r["kind"], r["label"]): (r["n"], r["share"]) for r in diag.iter_rows(named=True)}
    assert got[("generator_wins", "gd")] == (3, 0.6) and got[("generator_wins", "gq")] == (2, 0.4)
    assert got[("steps", "2")] == (1, 0.5) and got[("steps", "3")] == (1, 0.5)
    assert got[("stop_reason", "max_steps")] == (1, 0.5)
    assert got[("strip_char_ratio", "mean")] == (2, 0.75)
    empty = metrics.ensemble_diagnostics(steps.clear(), rows.clear(), {"e": ("gq",)})
    assert empty.is_empty() and empty.schema == pl.Schema(metrics.ENSEMBLE_DIAGNOSTICS_SCHEMA)
