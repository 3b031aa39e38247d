"""Metrics over the answers table: pairwise consistency, accuracy and the consistency breakdown.

Implements method.md §8.1 (pairwise consistency) and the accuracy and breakdown parts of §8.2.
The input is the answers table of architecture.md ("Answers table"): one row per
(dataset, item_id, condition, variant, cot_source, evaluator, sample). Every function accepts a
`polars.DataFrame` or `LazyFrame`, validates it with `validate_answers()` and works in polars
expressions (joins and group-bys, no Python row loops).

Grouping: a *condition group* is one (dataset, condition, variant, cot_source). `variant` is null
for the empty condition and `cot_source` is null when each evaluator used its own CoT or none, so
every join over these keys treats null as equal to null (`nulls_equal=True`); otherwise the empty,
default and sampled conditions would silently produce no pairs at all.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

GROUP_KEYS = ["dataset", "condition", "variant", "cot_source"]
ANSWER_KEY = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample"]
ANSWER_SCHEMA = {
    "dataset": pl.String,
    "item_id": pl.String,
    "condition": pl.String,
    "variant": pl.String,
    "cot_source": pl.String,
    "evaluator": pl.String,
    "sample": pl.Int64,
    "answer": pl.String,
    "valid": pl.Boolean,
    "correct": pl.Boolean,
}
# Columns that may be entirely null in a small table, where polars infers the Null dtype.
NULLABLE = frozenset({"variant", "cot_source", "answer", "correct"})
DEFINITIONS = ("paper", "strict")
PAIR = ["evaluator_a", "evaluator_b"]

Definition = Literal["paper", "strict"]
Frame = pl.DataFrame | pl.LazyFrame

# Columns of a pair row (see `_pair_rows`): `same` = identical parsed answers; `correct`/`correct_b`
# have null ("cannot be judged") already counted as not correct.
_SAME = pl.col("same")
_CA, _CB = pl.col("correct"), pl.col("correct_b")
_AGREE = {
    # §8.1 paper rule: the same parsed answer, or both inside the tolerance (both Correct).
    "paper": _SAME | (_CA & _CB),
    # §8.1 strict rule: the same parsed answer; correctness is not consulted. Answers are already
    # normalized by the dataset adapter (1.5 and 1.50 are stored alike), so string equality is
    # value equality.
    "strict": _SAME,
}
# §8.2 breakdown: every valid pair row falls into exactly one category. "one_correct" takes every
# row with different correctness, whatever the answers; `same_diff_correctness` counts the subset
# with identical answers, which a consistent scorer never produces (sanity check, must be 0).
BREAKDOWN_CATEGORIES = {
    "same_both_correct": _SAME & _CA & _CB,
    "same_both_wrong": _SAME & ~_CA & ~_CB,
    "diff_both_correct": ~_SAME & _CA & _CB,
    "one_correct": _CA != _CB,
    "diff_both_wrong": ~_SAME & ~_CA & ~_CB,
}
SANITY_COLUMN = "same_diff_correctness"


def _dtype_ok(got: pl.DataType, want: pl.DataType, nullable: bool) -> bool:
    if got == want:
        return True
    if want == pl.Int64 and got.is_integer():
        return True
    return nullable and got == pl.Null


def validate_answers(answers: Frame) -> pl.LazyFrame:
    """Check the answers-table contract and return it as a LazyFrame with exactly its columns.

    Raises ValueError naming missing columns, columns of the wrong dtype, or duplicate keys. A
    duplicate (dataset, item_id, condition, variant, cot_source, evaluator, sample) would enter
    the pair join twice and inflate both `n` and the agreement, so it is an error, not a warning.
    Integer `sample` columns of any width and all-null nullable columns are cast to the declared
    dtypes. Extra columns are dropped. The duplicate check collects the key columns once.
    """
    lf = answers.lazy()
    schema = lf.collect_schema()
    missing = [c for c in ANSWER_SCHEMA if c not in schema]
    if missing:
        raise ValueError(f"answers table lacks columns {missing} (has: {list(schema)})")
    wrong = [f"{c}: {schema[c]} (expected {want})" for c, want in ANSWER_SCHEMA.items()
             if not _dtype_ok(schema[c], want, c in NULLABLE)]
    if wrong:
        raise ValueError(f"answers table has columns of the wrong dtype: {'; '.join(wrong)}")
    lf = lf.select(pl.col(c).cast(t) for c, t in ANSWER_SCHEMA.items())
    dups = lf.group_by(ANSWER_KEY).len().filter(pl.col("len") > 1).collect()
    if dups.height:
        examples = dups.drop("len").sort(ANSWER_KEY, nulls_last=True).head(3).to_dicts()
        raise ValueError(f"answers table has {dups.height} duplicate keys {ANSWER_KEY}, e.g. {examples}")
    return lf


def _evaluator_pairs(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Every unordered evaluator pair (evaluator_a < evaluator_b) present in each condition group."""
    ev = lf.select(*GROUP_KEYS, "evaluator").unique()
    return (ev.join(ev, on=GROUP_KEYS, nulls_equal=True, suffix="_b")
            .filter(pl.col("evaluator") < pl.col("evaluator_b"))
            .rename({"evaluator": "evaluator_a"}))


def _pair_rows(lf: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (condition group, unordered evaluator pair, item_id, sample), both answers valid.

    §8.1 excludes a row when either side is unparseable, so invalid answers are dropped before the
    join. Joining on `sample` too keeps sampled runs aligned sample by sample.
    """
    valid = (lf.filter(pl.col("valid"))
             .select(*GROUP_KEYS, "item_id", "sample", "evaluator", "answer", pl.col("correct").fill_null(False)))
    return (valid.join(valid, on=[*GROUP_KEYS, "item_id", "sample"], nulls_equal=True, suffix="_b")
            .filter(pl.col("evaluator") < pl.col("evaluator_b"))
            .rename({"evaluator": "evaluator_a"})
            .with_columns(same=(pl.col("answer") == pl.col("answer_b")).fill_null(False)))


def consistency(answers: Frame, definition: Definition = "paper") -> pl.DataFrame:
    """Pairwise consistency per condition group and unordered evaluator pair (method.md §8.1).

    `n` counts the (item_id, sample) rows where both evaluators gave a valid answer, and
    `consistency` is the share of those rows on which they agree: under `paper` (the original
    study's rule) when the parsed answers are equal or both are correct, under `strict` only when
    the parsed answers are equal. A null `correct` counts as not correct. A pair whose evaluators
    share no valid row keeps its row, with n = 0 and a null consistency, so a missing pair is
    visible rather than silently absent.

    Columns: dataset, condition, variant, cot_source, evaluator_a, evaluator_b, n, consistency,
    definition; sorted by those keys (nulls last).
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown consistency definition {definition!r}; known: {list(DEFINITIONS)}")
    lf = validate_answers(answers)
    stats = (_pair_rows(lf).group_by(*GROUP_KEYS, *PAIR)
             .agg(n=pl.len(), consistency=_AGREE[definition].mean()))
    return (_evaluator_pairs(lf)
            .join(stats, on=[*GROUP_KEYS, *PAIR], how="left", nulls_equal=True)
            .select(*GROUP_KEYS, *PAIR,
                    n=pl.col("n").fill_null(0).cast(pl.Int64),
                    consistency=pl.col("consistency").cast(pl.Float64),
                    definition=pl.lit(definition))
            .sort([*GROUP_KEYS, *PAIR], nulls_last=True)
            .collect())


def _require(df: Frame, columns: list[str], what: str) -> pl.LazyFrame:
    lf = df.lazy()
    missing = [c for c in columns if c not in lf.collect_schema()]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")
    return lf


def condition_summary(consistency_df: Frame, *, pool_sources: bool = False) -> pl.DataFrame:
    """Mean pairwise consistency per condition group and definition, with its spread over pairs.

    method.md §8.1: condition value = mean over the evaluator pairs ± population standard
    deviation (ddof = 0); `stderr` = std / sqrt(n_pairs) is the error bar of F1 and §8.2's
    involvement analysis. Pairs with a null consistency (no valid rows) are not counted in
    `n_pairs`. With `pool_sources=True` the pairs of all CoT sources of a condition are pooled
    (F1: Transfer pooled over sources, Ensemble over configs) and `cot_source` is not a key.
    Answer modes (`variant`) are never pooled (method.md pitfall 13).
    """
    keys = [k for k in GROUP_KEYS if not (pool_sources and k == "cot_source")] + ["definition"]
    value = pl.col("consistency").drop_nulls()
    return (_require(consistency_df, [*keys, "consistency"], "consistency table")
            .group_by(keys)
            .agg(n_pairs=value.len().cast(pl.Int64), mean=value.mean(), std=value.std(ddof=0))
            .with_columns(stderr=pl.col("std") / pl.col("n_pairs").sqrt())
            .sort(keys, nulls_last=True)
            .collect())


def accuracy(answers: Frame) -> pl.DataFrame:
    """Accuracy per condition group and evaluator (method.md §8.2).

    The denominator `n` is every answer row, so an invalid (unparseable) answer counts as
    incorrect, as does a null `correct`; `n_valid` reports how many parsed. `se` is the binomial
    standard error sqrt(p(1 - p) / n) with the real n (pitfall 14).
    """
    keys = [*GROUP_KEYS, "evaluator"]
    p = pl.col("accuracy")
    return (validate_answers(answers)
            .group_by(keys)
            .agg(n=pl.len().cast(pl.Int64),
                 n_valid=pl.col("valid").sum().cast(pl.Int64),
                 n_correct=pl.col("correct").fill_null(False).sum().cast(pl.Int64))
            .with_columns(accuracy=pl.col("n_correct") / pl.col("n"))
            .with_columns(se=(p * (1 - p) / pl.col("n")).sqrt())
            .sort(keys, nulls_last=True)
            .collect())


def breakdown(answers: Frame) -> pl.DataFrame:
    """Consistency breakdown per condition group, summed over its evaluator pairs (method.md §8.2).

    Each valid pair row (both answers valid, as in `consistency`) falls into exactly one of
    BREAKDOWN_CATEGORIES, so their counts add up to `n`. Counts are pooled over the pairs of the
    group, and `share_<category>` = count / n: share_same_both_correct + share_same_both_wrong +
    share_diff_both_correct is the paper consistency of the pooled rows (plus the share of
    `same_diff_correctness`, which must be 0); the first two alone give the strict consistency.
    Pooled shares weight pairs by their n, so they equal `condition_summary`'s mean over pairs
    only when every pair has the same number of valid rows.

    Columns: dataset, condition, variant, cot_source, n, one count per category,
    same_diff_correctness, one share per category. Groups without any valid pair row have n = 0
    and null shares.
    """
    lf = validate_answers(answers)
    counts = list(BREAKDOWN_CATEGORIES) + [SANITY_COLUMN]
    stats = (_pair_rows(lf).group_by(GROUP_KEYS)
             .agg(pl.len().alias("n"),
                  *(expr.sum().alias(name) for name, expr in BREAKDOWN_CATEGORIES.items()),
                  (_SAME & (_CA != _CB)).sum().alias(SANITY_COLUMN)))
    n = pl.col("n")
    return (lf.select(GROUP_KEYS).unique()
            .join(stats, on=GROUP_KEYS, how="left", nulls_equal=True)
            .with_columns(pl.col("n", *counts).fill_null(0).cast(pl.Int64))
            .with_columns(pl.when(n > 0).then(pl.col(c) / n).alias(f"share_{c}") for c in BREAKDOWN_CATEGORIES)
            .sort(GROUP_KEYS, nulls_last=True)
            .collect())


ENSEMBLE_DIAGNOSTICS_SCHEMA = {"dataset": pl.String, "ensemble": pl.String, "kind": pl.String, "label": pl.String,
                               "n": pl.Int64, "share": pl.Float64}


def ensemble_diagnostics(steps: Frame, rows: Frame, generators: dict[str, tuple[str, ...]],
                         stripped: Frame | None = None) -> pl.DataFrame:
    """Figure F12's numbers (method.md section 8.4), one tidy table per (dataset, ensemble):

    - kind `generator_wins`: steps won by each generator (label: its name), share of all steps;
    - kind `steps`: items by the number of steps their thought took (label: the count);
    - kind `stop_reason`: items by why their thought stopped;
    - kind `strip_char_ratio` (given `stripped`): the mean share of characters answer removal kept
      (label `mean`, n = items, share = the ratio).

    `steps` is an ensemble's step log, `rows` its CoT table (n_steps, stop_reason), `generators`
    each ensemble's ordered generators (the step log names the winner by index)."""
    st = (pl.DataFrame(steps) if not isinstance(steps, pl.DataFrame) else steps)
    r = (pl.DataFrame(rows) if not isinstance(rows, pl.DataFrame) else rows).rename({"cot_source": "ensemble"})
    out = []
    if st.height:
        names = [generators[e][g] for e, g in zip(st["ensemble"], st["selected_generator"])]
        out.append(st.select("dataset", "ensemble").with_columns(label=pl.Series(names, dtype=pl.String))
                   .group_by("dataset", "ensemble", "label").len("n").with_columns(kind=pl.lit("generator_wins")))
    out.append(r.group_by("dataset", "ensemble", pl.col("n_steps").cast(pl.String).alias("label")).len("n")
               .with_columns(kind=pl.lit("steps")))
    out.append(r.group_by("dataset", "ensemble", pl.col("stop_reason").alias("label")).len("n")
               .with_columns(kind=pl.lit("stop_reason")))
    df = pl.concat([o.select("dataset", "ensemble", "kind", "label", pl.col("n").cast(pl.Int64)) for o in out])
    df = df.with_columns(share=pl.col("n") / pl.col("n").sum().over("dataset", "ensemble", "kind"))
    if stripped is not None:
        sp = (pl.DataFrame(stripped) if not isinstance(stripped, pl.DataFrame) else stripped).rename(
            {"cot_source": "ensemble"})
        df = pl.concat([df, sp.group_by("dataset", "ensemble").agg(
            kind=pl.lit("strip_char_ratio"), label=pl.lit("mean"), n=pl.len().cast(pl.Int64),
            share=pl.col("char_ratio").mean()).select(df.columns)])
    return df.cast(ENSEMBLE_DIAGNOSTICS_SCHEMA).sort("dataset", "ensemble", "kind", "label")
