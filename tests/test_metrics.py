"""Unit tests for cotransfer.metrics on small hand-computed answers tables."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest

from cotransfer import metrics
from cotransfer.metrics import (
    BREAKDOWN_CATEGORIES,
    TRANSITION_CATEGORIES,
    accuracy,
    accuracy_by_category,
    all_tables,
    breakdown,
    condition_summary,
    consistency,
    consistency_summary,
    involvement,
    paired_tests,
    post_training,
    prepare_answers,
    self_consistency,
    transitions,
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
GROUP = ["dataset", "condition", "variant", "cot_source"]


def make_answers(rows=ROWS, dataset="medcalc") -> pl.DataFrame:
    schema = {"condition": pl.String, "variant": pl.String, "cot_source": pl.String, "evaluator": pl.String,
              "item_id": pl.String, "sample": pl.Int64, "answer": pl.String, "valid": pl.Boolean,
              "correct": pl.Boolean}
    df = pl.DataFrame(rows, schema=schema, orient="row")
    return df.with_columns(dataset=pl.lit(dataset), raw_text=pl.lit("ignored"))


def row(condition, variant, source, evaluator, item, answer, correct, *, sample=0, valid=None):
    """One answers row; valid defaults to "has an answer"."""
    return (condition, variant, source, evaluator, item, sample, answer,
            answer is not None if valid is None else valid, correct)


@pytest.fixture
def answers() -> pl.DataFrame:
    return make_answers()


def as_dict(df: pl.DataFrame) -> dict:
    keys = ["condition", "variant", "cot_source", "evaluator_a", "evaluator_b"]
    return {tuple(r[k] for k in keys): (r["n"], r["consistency"]) for r in df.iter_rows(named=True)}


def one(df: pl.DataFrame, **where) -> dict:
    got = df.filter(**where) if where else df
    assert got.height == 1, (where, got)
    return got.row(0, named=True)


# ------------------------------------------------------------------------------------------------
# consistency and the input contract


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


def test_valid_row_without_answer_equals_nothing():
    rows = [row("default", "full", None, "A", "i1", None, False, valid=True),
            row("default", "full", None, "B", "i1", None, False, valid=True)]
    out = consistency(make_answers(rows), "strict")
    assert (out["n"].item(), out["consistency"].item()) == (1, 0.0)


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
    with pytest.raises(ValueError, match="duplicate"):
        validate_answers(pl.concat([answers, answers.head(1)]))


def test_duplicate_key_differing_only_in_payload_raises(answers):
    dup = answers.filter(pl.col("condition") == "transfer").head(1).with_columns(answer=pl.lit("other"))
    with pytest.raises(ValueError, match="duplicate"):
        validate_answers(pl.concat([answers, dup]))
    with pytest.raises(ValueError, match=r"duplicate.*'item_id': 'i1'"):
        accuracy(pl.concat([answers, dup]))


def test_missing_column_raises(answers):
    with pytest.raises(ValueError, match="'valid'"):
        accuracy(answers.drop("valid"))


def test_wrong_dtype_raises(answers):
    with pytest.raises(ValueError, match="sample"):
        breakdown(answers.with_columns(pl.col("sample").cast(pl.String)))
    with pytest.raises(ValueError, match="score"):
        accuracy(answers.with_columns(score=pl.lit("high")))


def test_null_in_key_column_raises(answers):
    with pytest.raises(ValueError, match="nulls in \\['evaluator'\\]"):
        prepare_answers(answers.with_columns(evaluator=pl.when(pl.col("item_id") == "i2").then(None)
                                             .otherwise(pl.col("evaluator"))))


def test_validate_accepts_narrow_ints_and_all_null_columns():
    df = make_answers(ROWS[:12]).with_columns(pl.col("sample").cast(pl.Int32),
                                              cot_source=pl.lit(None), variant=pl.lit(None), score=pl.lit(None))
    assert df.schema["cot_source"] == pl.Null
    lf = validate_answers(df)
    assert lf.collect_schema()["sample"] == pl.Int64
    assert lf.collect_schema()["score"] == pl.Float64  # optional columns are kept
    assert "raw_text" not in lf.collect_schema()
    assert consistency(df).height == 3


# ------------------------------------------------------------------------------------------------
# summary and bootstrap


def test_condition_summary(answers):
    summary = condition_summary(pl.concat([consistency(answers, "paper"), consistency(answers, "strict")]))
    r = one(summary, condition="empty", definition="paper")
    values = [1.0, 1 / 3, 0.5]
    assert r["n_pairs"] == 3
    assert r["mean"] == pytest.approx(np.mean(values))
    assert r["std"] == pytest.approx(np.std(values))  # population std (ddof = 0)
    assert r["stderr"] == pytest.approx(np.std(values) / math.sqrt(3))
    strict = one(summary, condition="empty", definition="strict")
    assert strict["mean"] == pytest.approx(np.mean([2 / 3, 1 / 3, 0.5]))
    # null pairs (n = 0) are not counted
    transfer = one(summary, condition="transfer", variant="full", definition="paper")
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
    full = one(pooled, variant="full")
    assert full["n_pairs"] == 3
    assert full["mean"] == pytest.approx(0.5)
    assert full["stderr"] == pytest.approx(np.std([0.2, 0.4, 0.9]) / math.sqrt(3))
    assert pooled.filter(variant="stripped")["mean"].item() == 0.0


def random_answers(n_items=60, evaluators="ABCD", seed=0, samples=1, p_right=0.6) -> pl.DataFrame:
    """A table with variation across items: empty, default and transfer from A, one or more samples."""
    rng = np.random.default_rng(seed)
    rows = []
    groups = [("empty", None, None), ("default", "full", None), ("transfer", "full", "A")]
    for cond, variant, src in groups:
        for ev in evaluators:
            for i in range(n_items):
                for s in range(samples if cond == "default" else 1):
                    right = bool(rng.random() < p_right + (0.2 if cond == "transfer" else 0))
                    answer = "1" if right else str(int(rng.integers(2, 4)))
                    rows.append(row(cond, variant, src, ev, f"i{i:03d}", answer, right, sample=s))
    return make_answers(rows, dataset="d")


def test_consistency_summary_columns_and_null_cis_without_bootstrap(answers):
    out = consistency_summary(answers)
    assert out.columns == [*GROUP, "definition", "n_pairs", "mean", "std", "stderr", "ci_low", "ci_high"]
    assert out["ci_low"].null_count() == out.height and out["ci_high"].null_count() == out.height
    assert out.drop("ci_low", "ci_high").equals(
        condition_summary(pl.concat([consistency(answers, d) for d in ("paper", "strict")])))


def test_consistency_summary_bootstrap_is_seeded_and_brackets_the_mean():
    df = random_answers()
    a = consistency_summary(df, bootstrap=300, seed=7)
    b = consistency_summary(df.sample(fraction=1.0, shuffle=True, seed=3), bootstrap=300, seed=7)
    assert a.equals(b)  # same seed, any row order: the same CIs
    c = consistency_summary(df, bootstrap=300, seed=8)
    assert not a["ci_low"].equals(c["ci_low"])
    assert (a["ci_low"] <= a["mean"]).all() and (a["mean"] <= a["ci_high"]).all()
    assert (a["ci_low"] < a["ci_high"]).all()


def test_consistency_summary_bootstrap_recomputes_pairs_then_averages():
    """Items where every pair agrees or every pair disagrees: a resample's mean over pairs is the
    resampled share of agreeing items, so the CI is the binomial one (within bootstrap noise)."""
    rows = []
    for i in range(200):
        same = i % 4 != 0  # 150 agreeing items of 200
        for ev in "ABC":
            rows.append(row("default", "full", None, ev, f"i{i:03d}", "1" if same else ev, same))
    out = one(consistency_summary(make_answers(rows), bootstrap=2000, seed=0), definition="paper")
    assert out["mean"] == pytest.approx(0.75)
    half = 1.96 * math.sqrt(0.75 * 0.25 / 200)
    assert out["ci_low"] == pytest.approx(0.75 - half, abs=0.012)
    assert out["ci_high"] == pytest.approx(0.75 + half, abs=0.012)


def reference_weights(n_items, bootstrap, seed, *labels):
    """The resample weights (bootstrap x items) the module draws for these labels: W @ I = W."""
    return metrics._resampled(np.eye(n_items), bootstrap, metrics._rng(seed, *labels))


def test_consistency_bootstrap_against_a_reference_loop():
    """Pairs with different valid counts and two samples per item: each resample recomputes every
    pair's ratio from its own resampled rows, then averages the pairs (not a pooled ratio)."""
    rng = np.random.default_rng(11)
    rows = []
    for i in range(30):
        for s in range(2):
            for ev in "ABC":
                valid = not (ev == "C" and rng.random() < 0.5)
                answer = str(int(rng.integers(0, 2))) if valid else None
                rows.append(row("sampled", "full", None, ev, f"i{i:02d}", answer, answer == "1", sample=s))
    df = make_answers(rows)
    got = one(consistency_summary(df, bootstrap=400, seed=5), definition="strict")
    w = reference_weights(30, 400, 5, "consistency_summary", "medcalc")
    answers_ = {(r[4], r[5], r[3]): r[6] for r in rows}
    per_pair = []
    for a, b in [("A", "B"), ("A", "C"), ("B", "C")]:
        n = np.zeros(30)
        agree = np.zeros(30)
        for i in range(30):
            for s in range(2):
                x, y = answers_[(f"i{i:02d}", s, a)], answers_[(f"i{i:02d}", s, b)]
                if x is not None and y is not None:
                    n[i] += 1
                    agree[i] += x == y
        per_pair.append((w @ agree) / (w @ n))
    means = np.mean(per_pair, axis=0)
    assert got["ci_low"] == pytest.approx(np.percentile(means, 2.5))
    assert got["ci_high"] == pytest.approx(np.percentile(means, 97.5))


def test_accuracy_bootstrap_against_a_reference_loop():
    rng = np.random.default_rng(2)
    rows = [row("default", "full", None, "A", f"i{i:02d}", "1", bool(rng.random() < 0.6)) for i in range(25)
            if i != 7]  # i07 missing: counts as incorrect
    rows.append(row("default", "full", None, "B", "i07", "1", True))
    got = one(accuracy(make_answers(rows), bootstrap=300, seed=9), evaluator="A")
    right = np.array([next((r[8] for r in rows if r[4] == f"i{i:02d}" and r[3] == "A"), False) for i in range(25)])
    w = reference_weights(25, 300, 9, "accuracy", "medcalc")
    resampled = (w @ right.astype(float)) / 25
    assert (got["n_missing"], got["accuracy"]) == (1, pytest.approx(right.mean()))
    assert got["ci_low"] == pytest.approx(np.percentile(resampled, 2.5))
    assert got["ci_high"] == pytest.approx(np.percentile(resampled, 97.5))


def test_constant_agreement_gives_a_degenerate_interval():
    rows = [row("default", "full", None, ev, f"i{i}", "1", True) for i in range(5) for ev in "AB"]
    out = consistency_summary(make_answers(rows), bootstrap=50, seed=0)
    assert out["ci_low"].to_list() == [1.0, 1.0] and out["ci_high"].to_list() == [1.0, 1.0]


def test_resampled_weights_are_multinomial_item_counts():
    rng = np.random.default_rng(0)
    w = metrics._resampled(np.eye(50), 3000, rng)  # W itself
    assert w.shape == (3000, 50)
    assert (w.sum(axis=1) == 50).all() and (w >= 0).all() and (w == np.round(w)).all()
    assert w.mean() == pytest.approx(1.0, abs=0.01)
    assert w.var(axis=0).mean() == pytest.approx(1 - 1 / 50, abs=0.05)  # multinomial variance


# ------------------------------------------------------------------------------------------------
# accuracy


def test_accuracy_full_sample_denominator(answers):
    acc = accuracy(answers)
    assert acc.columns == [*GROUP, "evaluator", "n", "n_expected", "n_missing", "n_valid", "n_correct",
                           "accuracy", "se", "ci_low", "ci_high"]
    a = one(acc, condition="empty", evaluator="A")
    # i3 unparseable (incorrect), i4 correct unknown (incorrect) -> 2/4
    assert (a["n"], a["n_expected"], a["n_missing"], a["n_valid"], a["n_correct"]) == (4, 4, 0, 3, 2)
    assert a["accuracy"] == 0.5 and a["se"] == pytest.approx(0.25)
    assert one(acc, condition="empty", evaluator="C")["accuracy"] == 0.25
    # sampled: 4 items x 2 samples expected, A answered i1 only (2 rows, 1 correct)
    s = one(acc, condition="sampled", evaluator="A")
    assert (s["n"], s["n_expected"], s["n_missing"], s["n_correct"]) == (2, 8, 6, 1)
    assert s["accuracy"] == 1 / 8 and s["se"] == pytest.approx(math.sqrt(1 / 8 * 7 / 8 / 8))
    c = one(acc, condition="transfer", variant="full", evaluator="C")
    assert (c["n"], c["n_missing"], c["n_valid"], c["accuracy"], c["se"]) == (2, 2, 0, 0.0, 0.0)
    stripped = one(acc, condition="transfer", variant="stripped", evaluator="A")
    assert (stripped["n_missing"], stripped["accuracy"]) == (3, 0.25)
    assert acc.height == 3 + 2 + 3 + 2
    assert acc["ci_low"].null_count() == acc.height  # no bootstrap by default


def test_accuracy_explicit_n_expected(answers):
    acc = accuracy(answers, n_expected=10)
    assert one(acc, condition="empty", evaluator="A")["accuracy"] == 0.2
    by_group = accuracy(answers, n_expected={("medcalc", "sampled"): 4})
    s = one(by_group, condition="sampled", evaluator="A")
    assert (s["n_expected"], s["n_missing"], s["accuracy"]) == (4, 2, 0.25)
    assert one(by_group, condition="empty", evaluator="A")["n_expected"] == 4  # derived elsewhere
    with pytest.raises(ValueError, match="n_expected is smaller"):
        accuracy(answers, n_expected=1)


def test_accuracy_uses_score_when_present(answers):
    scored = answers.with_columns(score=pl.when(pl.col("correct")).then(0.5).otherwise(pl.lit(None)))
    a = one(accuracy(scored), condition="empty", evaluator="A")
    assert a["n_correct"] == 2 and a["accuracy"] == pytest.approx(2 * 0.5 / 4)  # null score = 0
    assert a["se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))


def test_accuracy_bootstrap_deterministic_contains_point_and_matches_binomial():
    df = random_answers(n_items=400, evaluators="AB", seed=1)
    a = accuracy(df, bootstrap=1500, seed=3)
    assert a.equals(accuracy(df.sample(fraction=1.0, shuffle=True, seed=9), bootstrap=1500, seed=3))
    assert (a["ci_low"] <= a["accuracy"]).all() and (a["accuracy"] <= a["ci_high"]).all()
    half = 1.96 * a["se"]
    np.testing.assert_allclose((a["ci_high"] - a["ci_low"]).to_numpy(), (2 * half).to_numpy(), rtol=0.15)
    b = accuracy(df, bootstrap=1500, seed=4)
    assert not a["ci_low"].equals(b["ci_low"])


def test_accuracy_by_category():
    rows = [
        row("default", "full", None, "A", "c1", "1", True),
        row("default", "full", None, "A", "c2", "2", False),
        row("default", "full", None, "A", "c3", "3", True),
        # c4 has no category; c5 (category Y) is missing for A
        row("default", "full", None, "A", "c4", "4", True),
        row("default", "full", None, "B", "c5", "5", True),
    ]
    category = {"c1": "X", "c2": "X", "c3": "Y", "c4": None, "c5": "Y"}
    df = make_answers(rows).with_columns(category=pl.col("item_id").replace_strict(category, return_dtype=pl.String))
    out = accuracy_by_category(df, bootstrap=100, seed=0)
    assert out.columns == [*GROUP, "evaluator", "category", "n", "n_expected", "n_missing", "n_valid",
                           "n_correct", "accuracy", "se", "ci_low", "ci_high"]
    x = one(out, evaluator="A", category="X")
    assert (x["n"], x["n_expected"], x["n_missing"], x["accuracy"]) == (2, 2, 0, 0.5)
    y = one(out, evaluator="A", category="Y")
    assert (y["n"], y["n_expected"], y["n_missing"], y["accuracy"]) == (1, 2, 1, 0.5)
    assert one(out, evaluator="B", category="Y")["accuracy"] == 0.5
    assert set(out["category"]) == {"X", "Y"}
    assert out["ci_low"].null_count() == 0
    # the whole-dataset accuracy still counts every item
    assert one(accuracy(df), evaluator="A")["n_expected"] == 5
    assert accuracy_by_category(df.drop("category")).is_empty()
    with pytest.raises(ValueError, match="more than one category"):
        accuracy_by_category(df.with_columns(category=pl.when(pl.col("evaluator") == "B").then(pl.lit("Z"))
                                             .otherwise(pl.col("category")))
                             .vstack(make_answers([row("empty", None, None, "B", "c1", "1", True)])
                                     .with_columns(category=pl.lit("Y"))))


# ------------------------------------------------------------------------------------------------
# breakdown


def test_breakdown_hand_computed(answers):
    bd = breakdown(answers)
    assert bd.columns == [*GROUP, "category", "n", "share", "n_rows", "same_diff_correctness"]
    empty = bd.filter(condition="empty")
    assert empty["category"].to_list() == list(BREAKDOWN_CATEGORIES)
    assert dict(zip(empty["category"], empty["n"])) == {
        "same_both_correct": 3, "same_both_wrong": 2, "different_both_correct": 1,
        "one_correct": 2, "different_both_wrong": 2}
    assert empty["n_rows"].unique().to_list() == [10]
    assert empty["share"].to_list() == pytest.approx([0.3, 0.2, 0.1, 0.2, 0.2])
    assert empty["same_diff_correctness"].unique().to_list() == [0]
    sampled = bd.filter(condition="sampled")  # the two samples: same both correct, different both wrong
    assert dict(zip(sampled["category"], sampled["n"])) == {
        "same_both_correct": 1, "same_both_wrong": 0, "different_both_correct": 0,
        "one_correct": 0, "different_both_wrong": 1}
    full = bd.filter(condition="transfer", variant="full")
    assert dict(zip(full["category"], full["n"]))["same_both_wrong"] == 1 and full["n_rows"][0] == 2
    assert bd.height == 4 * len(BREAKDOWN_CATEGORIES)


def test_breakdown_sums_and_matches_consistency(answers):
    bd = breakdown(answers)
    for definition, cats in [("paper", 3), ("strict", 2)]:
        pooled = (consistency(answers, definition)
                  .group_by(GROUP).agg(agree=(pl.col("n") * pl.col("consistency")).sum(), n=pl.col("n").sum()))
        shares = (bd.filter(pl.col("category").is_in(list(BREAKDOWN_CATEGORIES[:cats])))
                  .group_by(GROUP).agg(share=pl.col("share").sum(), n_rows=pl.col("n_rows").first()))
        joined = shares.join(pooled, on=GROUP, nulls_equal=True)
        assert joined.height == 4
        np.testing.assert_allclose(joined["share"].to_numpy(), (joined["agree"] / joined["n"]).to_numpy())
        assert (joined["n_rows"] == joined["n"]).all()
    totals = bd.group_by(GROUP).agg(pl.col("n").sum(), pl.col("n_rows").first())
    assert (totals["n"] == totals["n_rows"]).all()


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
    default = bd.filter(condition="default")
    assert dict(zip(default["category"], default["n"]))["one_correct"] == 2
    assert default["same_diff_correctness"].to_list() == [1] * 5 and default["n_rows"][0] == 2
    transfer = bd.filter(condition="transfer")  # no valid pair row: every category, n = 0, null share
    assert transfer["category"].to_list() == list(BREAKDOWN_CATEGORIES)
    assert transfer["n"].to_list() == [0] * 5 and transfer["share"].null_count() == 5
    assert transfer["n_rows"].to_list() == [0] * 5


# ------------------------------------------------------------------------------------------------
# self-consistency and transitions


def test_self_consistency_hand_computed():
    rows = [
        # A, full: default sample 0 against every sampled sample
        row("default", "full", None, "A", "i1", "5", True),
        row("default", "full", None, "A", "i2", "3", False),
        row("default", "full", None, "A", "i3", None, False),  # invalid: i3 excluded
        row("default", "full", None, "A", "i4", "7", False),
        row("sampled", "full", None, "A", "i1", "5", True, sample=0),  # both correct, equal: paper, strict
        row("sampled", "full", None, "A", "i1", "5.0", True, sample=1),  # both correct, different: paper only
        row("sampled", "full", None, "A", "i1", None, False, sample=2),  # invalid: excluded
        row("sampled", "full", None, "A", "i2", "3", False, sample=0),  # both wrong, equal: paper, strict
        row("sampled", "full", None, "A", "i2", "4", False, sample=1),  # both wrong, different: neither
        row("sampled", "full", None, "A", "i2", "9", True, sample=2),  # one correct: neither
        row("sampled", "full", None, "A", "i3", "1", True, sample=0),
        row("sampled", "full", None, "A", "i4", "7", None, sample=0),  # null correct = wrong, equal: both
        # B has no sampled rows: no row; C never valid under default: n = 0
        row("default", "full", None, "B", "i1", "5", True),
        row("default", "full", None, "C", "i1", None, False),
        row("sampled", "full", None, "C", "i1", "5", True, sample=0),
        # the stripped variant is separate
        row("default", "stripped", None, "A", "i1", "5", True),
        row("sampled", "stripped", None, "A", "i1", "6", False, sample=0),
    ]
    out = self_consistency(make_answers(rows))
    assert out.columns == ["dataset", "evaluator", "variant", "definition", "n", "rate", "ci_low", "ci_high"]
    paper = one(out, evaluator="A", variant="full", definition="paper")
    strict = one(out, evaluator="A", variant="full", definition="strict")
    assert (paper["n"], paper["rate"]) == (6, pytest.approx(4 / 6))
    assert (strict["n"], strict["rate"]) == (6, pytest.approx(3 / 6))
    c = one(out, evaluator="C", definition="paper")
    assert (c["n"], c["rate"]) == (0, None)
    assert out.filter(evaluator="B").is_empty()
    assert one(out, evaluator="A", variant="stripped", definition="paper")["rate"] == 0.0
    boot = self_consistency(make_answers(rows), bootstrap=200, seed=1)
    a = one(boot, evaluator="A", variant="full", definition="paper")
    assert a["ci_low"] <= a["rate"] <= a["ci_high"]
    assert boot.equals(self_consistency(make_answers(rows), bootstrap=200, seed=1))


def test_transitions_hand_computed():
    rows = [
        row("empty", None, None, "A", "i1", "5", True),
        row("empty", None, None, "A", "i2", "3", False),
        row("empty", None, None, "A", "i3", None, False),  # invalid: wrong
        row("empty", None, None, "A", "i4", "8", False),
        row("empty", None, None, "A", "i5", "1", True),
        row("empty", None, None, "A", "i6", "2", False),
        row("empty", None, None, "A", "i7", "4", True),
        row("transfer", "full", "S", "A", "i1", "6", False),  # correct -> wrong
        row("transfer", "full", "S", "A", "i2", "3", False),  # wrong -> wrong, same answer
        row("transfer", "full", "S", "A", "i3", "2", True),  # wrong (invalid) -> correct
        # i4 missing: wrong -> wrong (different); i7 missing: correct -> wrong
        row("transfer", "full", "S", "A", "i5", "1", True),  # correct -> correct
        row("transfer", "full", "S", "A", "i6", None, False),  # wrong -> invalid: different
        row("sampled", "full", None, "A", "i1", "5", True, sample=0),
        row("sampled", "full", None, "A", "i2", "3", True, sample=1),  # sample 1 is not used
    ]
    out = transitions(make_answers(rows))
    assert out.columns == [*GROUP, "evaluator", "category", "n", "share"]
    t = out.filter(condition="transfer")
    assert t["category"].to_list() == list(TRANSITION_CATEGORIES)
    assert dict(zip(t["category"], t["n"])) == {
        "wrong_to_correct": 1, "correct_to_wrong": 2, "correct_to_correct": 1,
        "wrong_to_wrong_same": 1, "wrong_to_wrong_different": 2}
    assert t["share"].to_list() == pytest.approx([1 / 7, 2 / 7, 1 / 7, 1 / 7, 2 / 7])
    s = out.filter(condition="sampled")  # only i1 at sample 0; the rest is missing
    assert dict(zip(s["category"], s["n"])) == {
        "wrong_to_correct": 0, "correct_to_wrong": 2, "correct_to_correct": 1,
        "wrong_to_wrong_same": 0, "wrong_to_wrong_different": 4}
    assert out.group_by(GROUP).agg(pl.col("share").sum())["share"].to_list() == pytest.approx([1.0, 1.0])
    assert out.filter(condition="empty").is_empty()


# ------------------------------------------------------------------------------------------------
# involvement and post-training


def cons_table(rows):
    """(condition, source, a, b, value) -> a consistency table, both definitions alike."""
    df = pl.DataFrame(rows, schema={"condition": pl.String, "cot_source": pl.String, "evaluator_a": pl.String,
                                    "evaluator_b": pl.String, "consistency": pl.Float64}, orient="row")
    df = df.with_columns(dataset=pl.lit("d"), variant=pl.lit("full"), n=pl.lit(10, pl.Int64))
    return pl.concat([df.with_columns(definition=pl.lit(d)) for d in ("paper", "strict")]).select(
        "dataset", "condition", "variant", "cot_source", "evaluator_a", "evaluator_b", "n", "consistency",
        "definition")


def test_involvement_transfer_and_pooled_ensembles():
    cons = cons_table([
        ("transfer", "A", "A", "B", 0.8), ("transfer", "A", "A", "C", 0.6), ("transfer", "A", "B", "C", 0.2),
        ("ensemble", "e1", "A", "B", 0.5), ("ensemble", "e1", "A", "C", 0.4), ("ensemble", "e1", "C", "D", 0.3),
        ("ensemble", "e2", "A", "B", 0.9), ("ensemble", "e2", "A", "C", 0.1), ("ensemble", "e2", "C", "D", None),
    ])
    ens = {"e1": (("A",), ("B",)), "e2": (("B",), ("A",))}
    out = involvement(cons, ens).filter(definition="paper")
    assert out.columns == ["dataset", "condition", "variant", "creators", "version", "involved", "definition",
                           "n_pairs", "mean", "stderr"]
    t_in = one(out, condition="transfer", creators="A", involved=True)
    assert (t_in["version"], t_in["n_pairs"]) == ("source", 2)
    assert (t_in["mean"], t_in["stderr"]) == (pytest.approx(0.7), pytest.approx(0.1 / math.sqrt(2)))
    t_out = one(out, condition="transfer", involved=False)
    assert (t_out["n_pairs"], t_out["mean"], t_out["stderr"]) == (1, 0.2, 0.0)
    # creator version: both configs have the set {A, B}, pooled
    c_in = one(out, version="creator", creators="A,B", involved=True)
    assert (c_in["n_pairs"], c_in["mean"]) == (4, pytest.approx(0.475))
    c_out = one(out, version="creator", creators="A,B", involved=False)
    assert (c_out["n_pairs"], c_out["mean"]) == (1, pytest.approx(0.3))  # e2's CD is null: not counted
    # source version: generators only, {A} and {B} separately
    assert one(out, version="source", creators="A", condition="ensemble", involved=True)["mean"] == pytest.approx(0.45)
    b_in = one(out, version="source", creators="B", involved=True)
    b_out = one(out, version="source", creators="B", involved=False)
    assert (b_in["n_pairs"], b_in["mean"], b_out["n_pairs"], b_out["mean"]) == (1, 0.9, 1, pytest.approx(0.1))
    assert involvement(cons).filter(condition="ensemble").is_empty()  # no configs: no ensemble rows
    with pytest.raises(ValueError, match="e2"):
        involvement(cons, {"e1": (("A",), ("B",))})


def test_involvement_from_answers(answers):
    out = involvement(answers)
    row_ = one(out, variant="full", involved=True, definition="paper")
    assert (row_["creators"], row_["n_pairs"], row_["mean"]) == ("A", 1, 1.0)  # AC has no valid row
    assert one(out, variant="full", involved=False, definition="paper")["n_pairs"] == 0


def post_rows(grpo_answers=("1", "5", None)):
    g1, g2, g3 = grpo_answers
    return [
        # own answers (default, full, sample 0)
        row("default", "full", None, "base", "i1", "1", True),
        row("default", "full", None, "base", "i2", "2", False),
        row("default", "full", None, "base", "i3", "3", False),
        row("default", "full", None, "grpo", "i1", g1, g1 == "1"),
        row("default", "full", None, "grpo", "i2", g2, g2 == "5"),
        row("default", "full", None, "grpo", "i3", g3, False),
        # transfer from base
        row("transfer", "full", "base", "T1", "i1", "1", True),
        row("transfer", "full", "base", "T1", "i2", "2", False),
        row("transfer", "full", "base", "T1", "i3", "4", False),
        row("transfer", "full", "base", "T2", "i1", "1.0", True),  # i2 missing
        row("transfer", "full", "base", "T2", "i3", None, False),
        # transfer from grpo
        row("transfer", "full", "grpo", "T1", "i1", "1", True),
        row("transfer", "full", "grpo", "T1", "i2", "5", True),
        row("transfer", "full", "grpo", "T1", "i3", "3", False),
        row("transfer", "full", "grpo", "T2", "i1", "7", False),
    ]


def test_post_training_hand_computed():
    out = post_training(make_answers(post_rows()), {"base": "base", "grpo": "grpo"})
    assert out.columns == ["dataset", "variant", "source", "post_training", "n_targets", "target_accuracy",
                           "agreement", "definition"]
    base_p = one(out, source="base", definition="paper")
    base_s = one(out, source="base", definition="strict")
    assert (base_p["post_training"], base_p["n_targets"]) == ("base", 2)
    assert base_p["target_accuracy"] == pytest.approx(1 / 3)  # T1 1/3, T2 1/3 (missing i2 counts wrong)
    assert base_p["agreement"] == pytest.approx((2 / 3 + 1) / 2)
    assert base_s["agreement"] == pytest.approx((2 / 3 + 0) / 2)
    grpo_p = one(out, source="grpo", definition="paper")
    assert grpo_p["target_accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    assert grpo_p["agreement"] == pytest.approx(0.5)  # T1 agrees on i1, i2 (i3: own invalid); T2 not on i1
    untagged = post_training(make_answers(post_rows()), {})
    assert untagged["post_training"].null_count() == untagged.height


def test_post_training_sanity_check_names_the_mixed_up_checkpoints():
    identical = make_answers(post_rows(grpo_answers=("1", "2", "3")))
    with pytest.raises(ValueError, match=r"medcalc: base \(base\) and grpo \(grpo\)"):
        post_training(identical, {"base": "base", "grpo": "grpo"})
    with pytest.raises(ValueError, match="checkpoint"):
        all_tables(identical, tags={"base": "base", "grpo": "grpo"}, bootstrap=0)
    post_training(identical, {"base": "rl", "grpo": "rl"})  # same tag: not a mix-up
    post_training(make_answers(post_rows(grpo_answers=("1", "2", "4"))), {"base": "base", "grpo": "grpo"})
    missing_one = identical.filter(~((pl.col("evaluator") == "grpo") & (pl.col("item_id") == "i3")))
    post_training(missing_one, {"base": "base", "grpo": "grpo"})


# ------------------------------------------------------------------------------------------------
# paired tests


def test_mcnemar_exact_on_a_hand_computed_table():
    # A: right only under transfer on 6 items (one of them has no empty row), right only under empty
    # on 1, right in both on 2, wrong in both on 1 -> discordant 7, min 1
    empty_right = [False] * 6 + [True] + [True, True] + [False]
    transfer_right = [True] * 6 + [False] + [True, True] + [False]
    rows = []
    for i, (e, t) in enumerate(zip(empty_right, transfer_right)):
        if i != 0:
            rows.append(row("empty", None, None, "A", f"i{i}", "1" if e else "2", e))
        rows.append(row("transfer", "full", "S", "A", f"i{i}", "1" if t else "2", t))
    out = paired_tests(make_answers(rows), permutations=0)
    assert out.columns == ["dataset", "variant", "cot_source", "metric", "unit", "condition_a", "condition_b",
                           "test", "n", "statistic", "p_value"]
    r = one(out)
    assert (r["metric"], r["unit"], r["condition_a"], r["condition_b"], r["test"]) == (
        "accuracy", "A", "transfer", "empty", "mcnemar")
    assert (r["variant"], r["cot_source"], r["n"], r["statistic"]) == ("full", "S", 10, 1.0)
    assert r["p_value"] == pytest.approx(2 * (1 + 7) / 2 ** 7)  # 0.125
    assert r["p_value"] == pytest.approx(binomtest(1, 7, 0.5).pvalue)


def test_mcnemar_ties_and_no_discordance():
    rows = [row("empty", None, None, "A", "i1", "1", True), row("transfer", "full", "S", "A", "i1", "2", False),
            row("empty", None, None, "A", "i2", "2", False), row("transfer", "full", "S", "A", "i2", "1", True),
            row("default", "full", None, "A", "i1", "1", True), row("default", "full", None, "A", "i2", "2", False)]
    out = paired_tests(make_answers(rows), permutations=0)
    # transfer vs empty: one each way (a tie) -> p = 1; default vs empty: no discordant item -> p = 1
    assert one(out, condition_a="transfer", condition_b="empty")["p_value"] == 1.0
    assert one(out, condition_a="default", condition_b="empty")["statistic"] == 0.0
    assert one(out, condition_a="default", condition_b="empty")["p_value"] == 1.0
    # transfer vs default of the same variant as well
    assert one(out, condition_a="transfer", condition_b="default")["p_value"] == 1.0


def perm_rows(empty_b=("2", "2", "1")):
    """A and B agree under transfer on i1..i3; under empty B's answers are `empty_b`."""
    rows = []
    for i, b in enumerate(empty_b):
        rows += [row("transfer", "full", "S", "A", f"i{i}", "1", True),
                 row("transfer", "full", "S", "B", f"i{i}", "1", True),
                 row("empty", None, None, "A", f"i{i}", "1", True),
                 row("empty", None, None, "B", f"i{i}", b, b == "1")]
    return make_answers(rows)


def test_permutation_test_hand_computed():
    # per-item differences (transfer - empty): 1, 1, 0 -> mean 2/3 over 3 items; of the sign flips,
    # half give |mean| = 2/3 (ties count as extreme) -> p close to 1/2
    out = paired_tests(perm_rows(), permutations=4000, seed=5).filter(metric="consistency")
    r = one(out)
    assert (r["unit"], r["test"], r["condition_a"], r["condition_b"], r["n"]) == (
        "A|B", "permutation", "transfer", "empty", 3)
    assert r["statistic"] == pytest.approx(2 / 3)
    assert r["p_value"] == pytest.approx(0.5, abs=0.04)
    assert out.equals(paired_tests(perm_rows(), permutations=4000, seed=5).filter(metric="consistency"))
    same = one(paired_tests(perm_rows(("1", "1", "1")), permutations=200).filter(metric="consistency"))
    assert (same["statistic"], same["p_value"]) == (0.0, 1.0)
    assert one(paired_tests(perm_rows(), permutations=0).filter(metric="consistency"))["p_value"] is None
    skipped = paired_tests(perm_rows(), permutations=10, skip_consistency={"medcalc"})
    assert skipped.filter(metric="consistency").is_empty()


def test_permutation_test_detects_a_real_difference():
    rows = []
    for i in range(40):
        rows += [row("transfer", "full", "S", ev, f"i{i}", "1", True) for ev in "AB"]
        rows += [row("empty", None, None, "A", f"i{i}", "1", True),
                 row("empty", None, None, "B", f"i{i}", "1" if i % 4 == 0 else "2", i % 4 == 0)]
    r = one(paired_tests(make_answers(rows), permutations=2000).filter(metric="consistency"))
    assert r["statistic"] == pytest.approx(0.75) and r["p_value"] == pytest.approx(1 / 2001)


# ------------------------------------------------------------------------------------------------
# all_tables


SCHEMAS = {
    "consistency": metrics.CONSISTENCY_SCHEMA, "consistency_summary": metrics.SUMMARY_SCHEMA,
    "accuracy": metrics.ACCURACY_SCHEMA, "accuracy_category": metrics.ACCURACY_CATEGORY_SCHEMA,
    "breakdown": metrics.BREAKDOWN_SCHEMA, "self_consistency": metrics.SELF_CONSISTENCY_SCHEMA,
    "transitions": metrics.TRANSITIONS_SCHEMA, "involvement": metrics.INVOLVEMENT_SCHEMA,
    "post_training": metrics.POST_TRAINING_SCHEMA, "paired_tests": metrics.PAIRED_TESTS_SCHEMA,
}


def test_all_tables_match_the_single_functions(answers):
    tables = all_tables(answers, bootstrap=50, seed=2, permutations=20)
    assert list(tables) == list(metrics.TABLES)
    for name, df in tables.items():
        assert df.schema == pl.Schema(SCHEMAS[name]), name
    assert tables["consistency"].equals(pl.concat([consistency(answers, d) for d in ("paper", "strict")]))
    assert tables["consistency_summary"].equals(consistency_summary(answers, bootstrap=50, seed=2))
    assert tables["accuracy"].equals(accuracy(answers, bootstrap=50, seed=2))
    assert tables["breakdown"].equals(breakdown(answers))
    assert tables["transitions"].equals(transitions(answers))
    assert tables["paired_tests"].equals(paired_tests(answers, permutations=20, seed=2))
    assert tables["post_training"]["post_training"].null_count() == tables["post_training"].height


def test_all_tables_of_an_empty_table(answers):
    tables = all_tables(answers.clear())
    for name, df in tables.items():
        assert df.is_empty() and df.schema == pl.Schema(SCHEMAS[name]), name


def test_all_tables_instruction_induction_hook(answers):
    ii = make_answers(ROWS[:16], dataset="ii")  # empty and sampled
    seen = []

    def fake_ii(lf, backend):
        df = lf.collect()
        seen.append((sorted(df["dataset"].unique()), backend))
        pairs = consistency(df, "paper").drop("consistency", "definition")
        return pl.concat([pairs.with_columns(consistency=pl.lit(0.42), definition=pl.lit(d))
                          for d in ("strict", "paper")])

    tables = all_tables(pl.concat([answers, ii]), ii_consistency=fake_ii, similarity={"ii": "backend-ii"},
                        bootstrap=20, permutations=10)
    assert seen == [(["ii"], "backend-ii")]
    cons = tables["consistency"]
    assert cons.filter(dataset="ii")["consistency"].unique().to_list() == [0.42]
    assert cons.filter(dataset="medcalc").equals(
        pl.concat([consistency(answers, d) for d in ("paper", "strict")]))
    assert cons["definition"].to_list() == sorted(cons["definition"].to_list())  # paper rows, then strict
    summary = tables["consistency_summary"]
    assert summary.filter(dataset="ii")["mean"].to_list() == pytest.approx([0.42] * 4)
    assert summary.filter(dataset="ii")["ci_low"].null_count() == 4
    assert summary.filter(dataset="medcalc")["ci_low"].null_count() < summary.filter(dataset="medcalc").height
    assert tables["paired_tests"].filter(dataset="ii", metric="consistency").is_empty()
    assert not tables["paired_tests"].filter(dataset="ii", metric="accuracy").is_empty()
    with pytest.raises(ValueError, match="ii_consistency"):
        all_tables(pl.concat([answers, ii]), ii_datasets={"ii"})


def test_study_tables_keep_cot_only_sources_out_of_pairs_but_in_post_training(demo_config):
    """`stages.metric_tables`: a model with `evaluator: false` answers only its own free runs; it
    is in no evaluator pair, and post-training compares the targets with its own answers."""
    from cotransfer import stages
    from cotransfer.config import Study, validate

    demo_config["models"]["base_src"] = {"family": "think", "toy": {"seed": 5}, "post_training": "base",
                                         "evaluator": False}
    study = Study.from_dict(validate(demo_config))
    assert "base_src" not in study.evaluators and "base_src" in study.models
    rows = []
    for item, gold in (("t0", "1"), ("t1", "2")):
        for ev in study.evaluators:
            rows.append(("default", "full", None, ev, item, gold))
            rows.append(("transfer", "full", "base_src", ev, item, "9" if ev == "toy_weak" else gold))
        rows.append(("default", "full", None, "base_src", item, gold))
    answers = pl.DataFrame([{"dataset": "toyarith", "item_id": i, "condition": c, "variant": v, "cot_source": s,
                             "evaluator": e, "sample": 0, "answer": a, "valid": True, "correct": a in ("1", "2")}
                            for c, v, s, e, i, a in rows],
                           schema_overrides={"cot_source": pl.String})
    tables = stages.metric_tables(study, answers, bootstrap=0, permutations=0, seed=0)
    cons = tables["consistency"]
    assert "base_src" not in set(cons["evaluator_a"]) | set(cons["evaluator_b"])
    assert cons.filter(condition="default", definition="strict").height == 6  # 4 evaluators: 6 pairs
    pt = tables["post_training"].filter(source="base_src", definition="strict")
    assert pt["post_training"].item() == "base" and pt["n_targets"].item() == 4
    assert pt["agreement"].item() == pytest.approx(0.75)  # toy_weak disagrees on both items


def test_strip_qc_summarizes_answer_removal_per_source():
    stripped = pl.DataFrame({
        "dataset": "d", "cot_source": ["a", "a", "a", "a", "b", "b"],
        "n_in": [4, 2, 3, 0, 2, 2], "n_out": [2, 0, 3, 0, 2, 2],
        "char_ratio": [0.5, 0.0, 1.0, 0.0, 1.0, 1.0],
        "status": ["ok", "ok", "nothing_removed", "empty_input", "nothing_removed", "nothing_removed"],
        "answer_still_present": [False, False, True, None, None, None]})
    qc = {r["cot_source"]: r for r in metrics.strip_qc(stripped, "default").iter_rows(named=True)}
    a = qc["a"]
    assert a["n"] == 4 and a["kind"] == "default"
    assert a["kept_fraction"] == pytest.approx((0.5 + 0 + 1) / 3)  # the empty CoT has no sentences
    assert a["char_ratio"] == pytest.approx(0.5) and a["share_all_removed"] == pytest.approx(1 / 4)
    assert a["share_none_removed"] == pytest.approx(1 / 4) and a["share_answer_still_present"] == pytest.approx(1 / 3)
    assert a["flag"] is None and qc["b"]["flag"] == "nothing_removed"
    assert qc["b"]["share_answer_still_present"] is None  # nothing could be checked
