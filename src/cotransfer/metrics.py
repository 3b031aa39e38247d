"""Metrics over the answers table: every table of method.md §8.1-8.2, with bootstrap CIs and paired tests.

The input is the answers table of docs/schemas.md ("Answers table"): one row per
(dataset, item_id, condition, variant, cot_source, evaluator, sample), with `answer`, `valid`,
`correct` and, optionally, `score` (the per-answer score in [0, 1]) and `category` (MedCalc's
`Category`). Every function accepts a `polars.DataFrame` or `LazyFrame` (a `pl.scan_parquet` reads
only the columns named here, never raw text) or a `Prepared` table (`prepare_answers`), which
encodes the table once for many metrics. `all_tables()` computes every table at once.

Grouping: a *condition group* is one (dataset, condition, variant, cot_source). `variant` is null
for the empty condition and `cot_source` is null when each evaluator used its own CoT or none, so
every join over these keys treats null as equal to null (`nulls_equal=True`); otherwise the empty,
default and sampled conditions would silently produce no pairs at all.

How it is computed: `prepare_answers` encodes the keys as integers (a group id per condition group,
an evaluator code in name order, an item code per (dataset, item_id) in id order, an answer code
per distinct answer string) and sorts the rows by key. Metrics are polars joins and group-bys on
these codes; no Python loop visits answer rows (loops run over datasets, groups, evaluator pairs
and comparisons only). Pairwise statistics come from one pivot per set of evaluators: one row per
(group, item, sample) with each evaluator's answer and correctness as columns.

Uncertainty (an extension of the paper, method.md §8.3 last paragraph): a percentile bootstrap
over items, seeded (`seed`) and with `bootstrap` resamples (0: no CIs, null columns). Per-item
statistics (numerators and denominators) are collected once into an items x statistics matrix X,
and each block of resamples is a (resamples x items) matrix of multinomial item counts W, so the
resampled statistics are W @ X: every ratio is recomputed from its resampled numerator and
denominator, and a mean over evaluator pairs from the resampled pair values. Each (table,
dataset[, category]) draws from its own generator, seeded by (seed, table, dataset), so a CI does
not depend on which other tables or datasets were computed. CIs are 95% percentile intervals;
resamples in which a ratio has no denominator are left out of its interval.
"""

from __future__ import annotations

import logging
import time
import warnings
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import polars as pl

from cotransfer.probe import PROBE_KEY_SCHEMA

log = logging.getLogger(__name__)

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
# Optional columns, kept when present: the per-answer score in [0, 1] (Instruction Induction: the
# similarity; elsewhere 1.0/0.0; null when it cannot be judged) and the item's category.
OPTIONAL_SCHEMA = {"score": pl.Float64, "category": pl.String}
# The probe conditions' key columns (docs/probe.md): prefix rows carry `fraction`, drop-one rows
# `dropped`; a non-null value is folded into the row's condition label ("prefix@0.4",
# "drop_one@2"), so each fraction or dropped sentence is a condition group of its own and the
# answer key stays unique: `cotransfer.probe.PROBE_KEY_SCHEMA`.
# Columns that may be entirely null in a small table, where polars infers the Null dtype.
NULLABLE = frozenset({"variant", "cot_source", "answer", "correct", "score", "category"})
NOT_NULL = ("dataset", "item_id", "condition", "evaluator", "sample", "valid")
DEFINITIONS = ("paper", "strict")
PAIR = ["evaluator_a", "evaluator_b"]
CI_LEVEL = 0.95

Definition = Literal["paper", "strict"]
Frame = pl.DataFrame | pl.LazyFrame

# §8.2 breakdown: every valid pair row falls into exactly one category ("same" = equal parsed
# answers; a null `correct` counts as wrong). `one_correct` takes every row with different
# correctness, whatever the answers; `same_diff_correctness` counts the subset with identical
# answers, which a consistent scorer never produces (sanity check, must be 0). Paper consistency
# is the share of the first three, strict the share of the first two.
BREAKDOWN_CATEGORIES = ("same_both_correct", "same_both_wrong", "different_both_correct", "one_correct",
                        "different_both_wrong")
SANITY_COLUMN = "same_diff_correctness"
# §8.2 Empty -> condition transitions of one evaluator on one item (invalid or null correct = wrong).
TRANSITION_CATEGORIES = ("wrong_to_correct", "correct_to_wrong", "correct_to_correct", "wrong_to_wrong_same",
                         "wrong_to_wrong_different")

_S, _I = pl.String, pl.Int64
_F = pl.Float64
_GROUP_SCHEMA = {k: _S for k in GROUP_KEYS}
CONSISTENCY_SCHEMA = {**_GROUP_SCHEMA, "evaluator_a": _S, "evaluator_b": _S, "n": _I, "consistency": _F,
                      "definition": _S}
SUMMARY_SCHEMA = {**_GROUP_SCHEMA, "definition": _S, "n_pairs": _I, "mean": _F, "std": _F, "stderr": _F,
                  "ci_low": _F, "ci_high": _F}
_ACCURACY_VALUES = {"n": _I, "n_expected": _I, "n_missing": _I, "n_valid": _I, "n_correct": _I, "accuracy": _F,
                    "se": _F, "ci_low": _F, "ci_high": _F}
ACCURACY_SCHEMA = {**_GROUP_SCHEMA, "evaluator": _S, **_ACCURACY_VALUES}
ACCURACY_CATEGORY_SCHEMA = {**_GROUP_SCHEMA, "evaluator": _S, "category": _S, **_ACCURACY_VALUES}
BREAKDOWN_SCHEMA = {**_GROUP_SCHEMA, "category": _S, "n": _I, "share": _F, "n_rows": _I, SANITY_COLUMN: _I}
SELF_CONSISTENCY_SCHEMA = {"dataset": _S, "evaluator": _S, "variant": _S, "definition": _S, "n": _I, "rate": _F,
                           "ci_low": _F, "ci_high": _F}
TRANSITIONS_SCHEMA = {**_GROUP_SCHEMA, "evaluator": _S, "category": _S, "n": _I, "share": _F}
INVOLVEMENT_SCHEMA = {"dataset": _S, "condition": _S, "variant": _S, "creators": _S, "version": _S,
                      "involved": pl.Boolean, "definition": _S, "n_pairs": _I, "mean": _F, "stderr": _F}
POST_TRAINING_SCHEMA = {"dataset": _S, "variant": _S, "source": _S, "post_training": _S, "n_targets": _I,
                        "target_accuracy": _F, "agreement": _F, "definition": _S}
PAIRED_TESTS_SCHEMA = {"dataset": _S, "variant": _S, "cot_source": _S, "metric": _S, "unit": _S,
                       "condition_a": _S, "condition_b": _S, "test": _S, "n": _I, "statistic": _F, "p_value": _F}
TABLES = ("consistency", "consistency_summary", "accuracy", "accuracy_category", "breakdown", "self_consistency",
          "transitions", "involvement", "post_training", "paired_tests")


# ------------------------------------------------------------------------------------------------
# Input contract and encoding


def _dtype_ok(got: pl.DataType, want: pl.DataType, nullable: bool) -> bool:
    if got == want:
        return True
    if want == pl.Int64 and got.is_integer():
        return True
    if want == pl.Float64 and (got.is_float() or got.is_integer()):
        return True
    return nullable and got == pl.Null


def _checked(answers: Frame) -> pl.LazyFrame:
    """The column and dtype part of `validate_answers` (no pass over the rows)."""
    lf = answers.lazy()
    schema = lf.collect_schema()
    missing = [c for c in ANSWER_SCHEMA if c not in schema]
    if missing:
        raise ValueError(f"answers table lacks columns {missing} (has: {list(schema)})")
    want = {**ANSWER_SCHEMA, **{c: t for c, t in OPTIONAL_SCHEMA.items() if c in schema}}
    probe = {c: t for c, t in PROBE_KEY_SCHEMA.items() if c in schema}
    wrong = [f"{c}: {schema[c]} (expected {t})" for c, t in {**want, **probe}.items()
             if not _dtype_ok(schema[c], t, c in NULLABLE or c in probe)]
    if wrong:
        raise ValueError(f"answers table has columns of the wrong dtype: {'; '.join(wrong)}")
    condition = pl.col("condition")
    for c, t in probe.items():  # a probe row's key column folded into its condition label
        condition = (pl.when(pl.col(c).is_not_null())
                     .then(pl.concat_str(condition, pl.lit("@"), pl.col(c).cast(t).cast(pl.String)))
                     .otherwise(condition))
    return lf.select(condition.alias(c) if c == "condition" else pl.col(c).cast(t) for c, t in want.items())


def validate_answers(answers: Frame) -> pl.LazyFrame:
    """Check the answers-table contract and return it as a LazyFrame with exactly its columns.

    Raises ValueError naming missing columns, columns of the wrong dtype, or duplicate keys. A
    duplicate (dataset, item_id, condition, variant, cot_source, evaluator, sample) would enter
    the pair join twice and inflate both `n` and the agreement, so it is an error, not a warning.
    Integer `sample` columns of any width and all-null nullable columns are cast to the declared
    dtypes. The optional columns `score` (float) and `category` (str) are kept when present;
    other extra columns are dropped. The duplicate check collects the key columns once.
    """
    lf = _checked(answers)
    dups = lf.group_by(ANSWER_KEY).len().filter(pl.col("len") > 1).collect()
    if dups.height:
        examples = dups.drop("len").sort(ANSWER_KEY, nulls_last=True).head(3).to_dicts()
        raise ValueError(f"answers table has {dups.height} duplicate keys {ANSWER_KEY}, e.g. {examples}")
    return lf


@dataclass(eq=False)
class Prepared:
    """The answers table encoded once for every metric (`prepare_answers`).

    - `rows`: one row per answer, sorted by (gid, ev, item, sample): gid (u32, the condition
      group), ev (u32, index into `evaluators`), item (u32, global item code), sample (i64), ans
      (u32 answer code, null when `answer` is null; equal codes = equal strings), valid, correct
      (null filled with false), score (f64: `score` with null as 0 when the column exists, else
      `correct` as 0/1).
    - `groups`: gid, dataset, condition, variant, cot_source, n_samples (distinct samples in the
      group), evaluators (sorted list of the codes that have a row in the group); sorted by the
      group keys (nulls last), so the groups of a dataset are one gid range.
    - `items`: item, dataset, item_id, category, local (the item's index within its dataset);
      sorted by (dataset, item_id).
    - `datasets`: dataset, offset (its first item code), n_items, g0, g1 (its gid range).
    - `source`: the table as given (lazy), for callers that need its other columns.
    """

    rows: pl.DataFrame
    groups: pl.DataFrame
    items: pl.DataFrame
    datasets: pl.DataFrame
    evaluators: list[str]
    has_category: bool
    source: pl.LazyFrame
    _cache: dict = field(default_factory=dict, repr=False)

    def ev_name(self, expr: pl.Expr) -> pl.Expr:
        """Evaluator codes to names."""
        return expr.replace_strict(list(range(len(self.evaluators))), self.evaluators, return_dtype=pl.String)

    def named(self, df: pl.DataFrame, ev: str | None = "ev") -> pl.DataFrame:
        """`df` with the group keys of its `gid` (and, given `ev`, `evaluator` for that column)."""
        out = df.join(self.groups.select("gid", *GROUP_KEYS), on="gid", how="left")
        return out.with_columns(evaluator=self.ev_name(pl.col(ev))) if ev else out

    def dataset_ranges(self) -> list[tuple[str, int, int, int, int]]:
        """(dataset, offset, n_items, g0, g1) of every dataset."""
        return self.datasets.select("dataset", "offset", "n_items", "g0", "g1").rows()

    def dataset_rows(self, g0: int, g1: int) -> pl.DataFrame:
        """The rows of the gid range [g0, g1) (contiguous: rows are sorted by gid)."""
        gid = self.rows["gid"]
        lo, hi = gid.search_sorted(g0, "left"), gid.search_sorted(g1, "left")
        return self.rows.slice(lo, hi - lo)


def prepare_answers(answers: Frame | Prepared) -> Prepared:
    """Validate the answers table (as `validate_answers` does) and encode it for the metrics.

    Reads only the contract columns (plus `score` and `category` when present), each dimension in
    its own streaming pass, then the rows once. Raises ValueError for missing columns, wrong
    dtypes, nulls in never-null columns (dataset, item_id, condition, evaluator, sample, valid),
    an item with two different categories, or duplicate keys (naming up to three).
    """
    if isinstance(answers, Prepared):
        return answers
    lf = _checked(answers)
    schema = lf.collect_schema()
    nulls = lf.select(pl.col(c).null_count() for c in NOT_NULL).collect(engine="streaming")
    bad = [c for c in NOT_NULL if nulls[c].item()]
    if bad:
        raise ValueError(f"answers table has nulls in {bad}, which are never null")
    groups = (lf.select(GROUP_KEYS).unique().collect(engine="streaming")
              .sort(GROUP_KEYS, nulls_last=True).with_row_index("gid"))
    evaluators = sorted(lf.select(pl.col("evaluator").unique()).collect(engine="streaming").to_series().to_list())
    has_category = "category" in schema
    if has_category:
        items = (lf.group_by("dataset", "item_id")
                 .agg(category=pl.col("category").drop_nulls().first(),
                      n_categories=pl.col("category").drop_nulls().n_unique())
                 .collect(engine="streaming"))
        clash = items.filter(pl.col("n_categories") > 1)
        if clash.height:
            raise ValueError(f"answers table gives {clash.height} items more than one category, e.g. "
                             f"{clash.sort('dataset', 'item_id').head(3).select('dataset', 'item_id').to_dicts()}")
        items = items.drop("n_categories")
    else:
        items = (lf.select("dataset", "item_id").unique().collect(engine="streaming")
                 .with_columns(category=pl.lit(None, pl.String)))
    items = (items.sort("dataset", "item_id").with_row_index("item")
             .with_columns(local=(pl.col("item") - pl.col("item").min().over("dataset")).cast(pl.UInt32)))
    score = (pl.col("score").fill_null(0.0) if "score" in schema
             else pl.col("correct").fill_null(False).cast(pl.Float64))
    rows = (lf.join(groups.lazy(), on=GROUP_KEYS, nulls_equal=True)
            .join(items.lazy().select("dataset", "item_id", "item"), on=["dataset", "item_id"])
            .select("gid",
                    ev=pl.col("evaluator").replace_strict(evaluators, list(range(len(evaluators))),
                                                          return_dtype=pl.UInt32),
                    item="item", sample="sample",
                    ans=pl.col("answer").cast(pl.Categorical).to_physical(),
                    valid="valid", correct=pl.col("correct").fill_null(False), score=score)
            .collect(engine="streaming")
            .sort("gid", "ev", "item", "sample"))
    keys = ["gid", "ev", "item", "sample"]
    dup = pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in keys)
    n_dup = rows.select(dup.sum()).item() if rows.height else 0
    if n_dup:
        ex = (rows.filter(dup).head(3).join(groups, on="gid").join(items.select("item", "item_id"), on="item")
              .with_columns(evaluator=pl.col("ev").replace_strict(list(range(len(evaluators))), evaluators)))
        raise ValueError(f"answers table has {n_dup} duplicate keys {ANSWER_KEY}, "
                         f"e.g. {ex.select(ANSWER_KEY).to_dicts()}")
    per_group = rows.group_by("gid").agg(n_samples=pl.col("sample").n_unique().cast(pl.Int64),
                                         evaluators=pl.col("ev").unique().sort())
    groups = groups.join(per_group, on="gid", how="left")
    datasets = (items.group_by("dataset").agg(offset=pl.col("item").min(), n_items=pl.len().cast(pl.Int64))
                .join(groups.group_by("dataset").agg(g0=pl.col("gid").min(), g1=pl.col("gid").max() + 1),
                      on="dataset", how="left")
                .sort("dataset"))
    return Prepared(rows=rows, groups=groups, items=items, datasets=datasets, evaluators=evaluators,
                    has_category=has_category, source=answers.lazy())


def _rng(seed: int, *labels: str) -> np.random.Generator:
    """A generator of its own for (seed, labels): the same draws whatever else is computed."""
    return np.random.default_rng([seed, *(zlib.crc32(str(x).encode()) for x in labels)])


_CHUNK_CELLS = 1 << 22  # entries of one block of resample (or permutation) weights


def _resampled(x: np.ndarray, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """W @ x for `bootstrap` resamples of x's rows (items): W[b, i] = times item i was drawn.

    x is (n_items, k); the result is (bootstrap, k). W is built block by block (multinomial counts
    of n_items draws with replacement), so memory stays at about _CHUNK_CELLS weights.
    """
    n = x.shape[0]
    out = np.empty((bootstrap, x.shape[1]))
    block = max(1, min(bootstrap, _CHUNK_CELLS // max(n, 1)))
    for start in range(0, bootstrap, block):
        b = min(block, bootstrap - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        w = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out[start:start + b] = w @ x
    return out


def _interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI per column of (resamples, k) values; NaN resamples left out; NaN when none."""
    alpha = (1 - CI_LEVEL) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(values, [alpha, 100 - alpha], axis=0)
    return np.atleast_1d(lo), np.atleast_1d(hi)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _floats(values: Iterable[float]) -> pl.Series:
    """Floats with NaN as null."""
    return pl.Series(values=np.asarray(list(values), dtype=np.float64), dtype=pl.Float64, nan_to_null=True)


# ------------------------------------------------------------------------------------------------
# Pairwise statistics (§8.1 consistency, §8.2 breakdown)


@dataclass
class _PairBlock:
    """The groups that share one evaluator set: its pairs and per-(gid, item) pair counts.

    `per_item` has gid, item and, for pair k, n_k (rows with both answers valid), paper_k and
    strict_k (rows agreeing under each definition), summed over samples."""

    gids: list[int]
    pairs: list[tuple[int, int]]
    per_item: pl.DataFrame


def _pair_flags(x: int, y: int) -> dict[str, pl.Expr]:
    """Per (gid, item, sample) row of the pivot: the pair (x, y)'s agreement and breakdown flags."""
    ax, ay = pl.col(f"a_{x}"), pl.col(f"a_{y}")
    cx, cy = pl.col(f"c_{x}").fill_null(False), pl.col(f"c_{y}").fill_null(False)
    both = ax.is_not_null() & ay.is_not_null()
    # a = answer code + 1, 0 for a valid row without an answer: never "the same" as anything
    same = both & (ax == ay) & (ax > 0)
    return {
        "n": both,
        # §8.1 paper rule: the same parsed answer, or both inside the tolerance (both correct)
        "paper": same | (both & cx & cy),
        # §8.1 strict rule: the same parsed answer; correctness is not consulted. Answers are
        # normalized by the dataset adapter (1.5 and 1.50 are stored alike), so equal strings are
        # equal values.
        "strict": same,
        "same_both_correct": same & cx & cy,
        "same_both_wrong": same & ~cx & ~cy,
        "different_both_correct": both & ~same & cx & cy,
        "one_correct": both & (cx != cy),
        "different_both_wrong": both & ~same & ~cx & ~cy,
        SANITY_COLUMN: same & (cx != cy),
    }


def _pair_stats(prep: Prepared) -> tuple[list[_PairBlock], pl.DataFrame, pl.DataFrame]:
    """Blocks of per-item pair counts, per-(gid, pair) counts and per-gid breakdown counts.

    Each set of groups with the same evaluators is pivoted once: one row per (gid, item, sample)
    holding every evaluator's valid answer code and correctness, so a pair's rows are a pair of
    columns (no self-join). Pairs are every two evaluators with a row in the group, valid or not,
    so a pair without a shared valid row keeps its place with n = 0. Cached on `prep`.
    """
    if "pairs" in prep._cache:
        return prep._cache["pairs"]
    partitions: dict[tuple[int, ...], list[int]] = {}
    for gid, evs in prep.groups.select("gid", "evaluators").iter_rows():
        partitions.setdefault(tuple(evs or ()), []).append(gid)
    blocks, per_pair, per_group = [], [], []
    for evs, gids in sorted(partitions.items(), key=lambda kv: kv[1][0]):
        pairs = list(combinations(evs, 2))
        if not pairs:
            continue
        valid = (prep.rows.lazy().filter(pl.col("gid").is_in(gids) & pl.col("valid"))
                 .select("gid", "item", "sample", "ev", a=(pl.col("ans") + 1).fill_null(0), c="correct")
                 .collect())
        if valid.height:
            wide = valid.pivot(on="ev", index=["gid", "item", "sample"], values=["a", "c"])
        else:
            wide = valid.select("gid", "item", "sample")
        absent = [(f"{v}_{e}", dtype) for e in evs for v, dtype in (("a", pl.UInt32), ("c", pl.Boolean))
                  if f"{v}_{e}" not in wide.columns]  # an evaluator without a valid row in these groups
        wide = wide.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in absent)
        del valid
        flags = [_pair_flags(x, y) for x, y in pairs]
        per_item = (wide.group_by("gid", "item")
                    .agg(f[stat].sum().alias(f"{stat}_{k}") for k, f in enumerate(flags)
                         for stat in ("n", "paper", "strict")))
        cats = [*BREAKDOWN_CATEGORIES, SANITY_COLUMN]
        per_group.append(wide.group_by("gid").agg(
            pl.sum_horizontal(f[c] for f in flags).sum().cast(pl.Int64).alias(c) for c in cats))
        del wide
        totals = per_item.drop("item").group_by("gid").sum()
        grid = pl.DataFrame({"gid": gids}, schema={"gid": pl.UInt32}).join(totals, on="gid", how="left")
        per_pair.append(pl.concat([
            grid.select("gid", evaluator_a=pl.lit(prep.evaluators[x]), evaluator_b=pl.lit(prep.evaluators[y]),
                        **{stat: pl.col(f"{stat}_{k}").fill_null(0).cast(pl.Int64)
                           for stat in ("n", "paper", "strict")})
            for k, (x, y) in enumerate(pairs)]))
        blocks.append(_PairBlock(gids=gids, pairs=pairs, per_item=per_item))
    pair_schema = {"gid": pl.UInt32, "evaluator_a": _S, "evaluator_b": _S, "n": _I, "paper": _I, "strict": _I}
    per_pair_df = pl.concat(per_pair) if per_pair else pl.DataFrame(schema=pair_schema)
    group_schema = {"gid": pl.UInt32, **{c: _I for c in [*BREAKDOWN_CATEGORIES, SANITY_COLUMN]}}
    per_group_df = pl.concat(per_group) if per_group else pl.DataFrame(schema=group_schema)
    prep._cache["pairs"] = blocks, per_pair_df, per_group_df
    return prep._cache["pairs"]


def _consistency(prep: Prepared) -> pl.DataFrame:
    _, per_pair, _ = _pair_stats(prep)
    parts = []
    for d in DEFINITIONS:
        part = prep.named(per_pair.select(
            "gid", *PAIR, "n", consistency=pl.when(pl.col("n") > 0).then(pl.col(d) / pl.col("n")),
            definition=pl.lit(d)), ev=None)
        parts.append(part.select(list(CONSISTENCY_SCHEMA)).cast(CONSISTENCY_SCHEMA)
                     .sort([*GROUP_KEYS, *PAIR], nulls_last=True))
    return pl.concat(parts)


def consistency(answers: Frame | Prepared, definition: Definition = "paper") -> pl.DataFrame:
    """Pairwise consistency per condition group and unordered evaluator pair (method.md §8.1).

    `n` counts the (item_id, sample) rows where both evaluators gave a valid answer, and
    `consistency` is the share of those rows on which they agree: under `paper` (the original
    study's rule) when the parsed answers are equal or both are correct, under `strict` only when
    the parsed answers are equal. A null `correct` counts as not correct; a valid row with a null
    answer equals nothing. A pair whose evaluators share no valid row keeps its row, with n = 0
    and a null consistency, so a missing pair is visible rather than silently absent.

    Columns: dataset, condition, variant, cot_source, evaluator_a, evaluator_b, n, consistency,
    definition; sorted by those keys (nulls last).
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown consistency definition {definition!r}; known: {list(DEFINITIONS)}")
    return _consistency(prepare_answers(answers)).filter(pl.col("definition") == definition)


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
    Answer modes (`variant`) are never pooled (method.md pitfall 13). No CIs: see
    `consistency_summary`.
    """
    keys = [k for k in GROUP_KEYS if not (pool_sources and k == "cot_source")] + ["definition"]
    value = pl.col("consistency").drop_nulls()
    return (_require(consistency_df, [*keys, "consistency"], "consistency table")
            .group_by(keys)
            .agg(n_pairs=value.len().cast(pl.Int64), mean=value.mean(), std=value.std(ddof=0))
            .with_columns(stderr=pl.col("std") / pl.col("n_pairs").sqrt())
            .sort(keys, nulls_last=True)
            .collect())


def _item_matrix(block: _PairBlock, gid: int, offset: int, n_items: int, columns: list[str]) -> np.ndarray:
    """(n_items, len(columns)) of one group's per-item pair counts; items without a row are 0."""
    sub = block.per_item.filter(pl.col("gid") == gid)
    x = np.zeros((n_items, len(columns)))
    if sub.height:
        x[sub["item"].to_numpy().astype(np.int64) - offset] = sub.select(columns).to_numpy()
    return x


def _consistency_ci(prep: Prepared, bootstrap: int, seed: int, skip: Collection[str] = ()) -> pl.DataFrame:
    """Bootstrap CI of the mean over pairs of each group and definition (resampling items)."""
    schema = {"gid": pl.UInt32, "definition": _S, "ci_low": _F, "ci_high": _F}
    if bootstrap <= 0:
        return pl.DataFrame(schema=schema)
    blocks, _, _ = _pair_stats(prep)
    out = []
    for dataset, offset, n_items, g0, g1 in prep.dataset_ranges():
        if dataset in skip or not n_items:
            continue
        mats, spans = [], []  # spans: (gid, n_pairs, first column)
        width = 0
        for block in blocks:
            p = len(block.pairs)
            cols = [f"{s}_{k}" for s in ("n", "paper", "strict") for k in range(p)]
            for gid in block.gids:
                if g0 <= gid < g1:
                    mats.append(_item_matrix(block, gid, offset, n_items, cols))
                    spans.append((gid, p, width))
                    width += 3 * p
        if not mats:
            continue
        r = _resampled(np.hstack(mats), bootstrap, _rng(seed, "consistency_summary", dataset))
        for gid, p, c in spans:
            n = r[:, c:c + p]
            for j, d in enumerate(DEFINITIONS):
                lo, hi = _interval(_nanmean(_ratio(r[:, c + (j + 1) * p:c + (j + 2) * p], n), axis=1))
                out.append((gid, d, lo[0], hi[0]))
    if not out:
        return pl.DataFrame(schema=schema)
    gid, d, lo, hi = zip(*out)
    return pl.DataFrame({"gid": pl.Series(gid, dtype=pl.UInt32), "definition": d, "ci_low": _floats(lo),
                         "ci_high": _floats(hi)})


def _consistency_summary(prep: Prepared, cons: pl.DataFrame, bootstrap: int, seed: int,
                         no_ci: Collection[str] = ()) -> pl.DataFrame:
    summary = condition_summary(cons)
    ci = prep.named(_consistency_ci(prep, bootstrap, seed, skip=no_ci), ev=None).drop("gid")
    return (summary.join(ci, on=[*GROUP_KEYS, "definition"], how="left", nulls_equal=True)
            .select(list(SUMMARY_SCHEMA)).cast(SUMMARY_SCHEMA).sort([*GROUP_KEYS, "definition"], nulls_last=True))


def consistency_summary(answers: Frame | Prepared, bootstrap: int = 0, seed: int = 0) -> pl.DataFrame:
    """`condition_summary` of both definitions plus a bootstrap CI over items (method.md §8.1, §8.3 end).

    A resample draws the dataset's items with replacement, recomputes every pair's consistency
    from its resampled agreeing and valid rows, then the mean over the pairs that have rows;
    ci_low/ci_high are the 2.5 and 97.5 percentiles over `bootstrap` resamples (seeded; null when
    bootstrap = 0 or the group has no valid pair row).

    Columns: dataset, condition, variant, cot_source, definition, n_pairs, mean, std (ddof 0),
    stderr, ci_low, ci_high.
    """
    prep = prepare_answers(answers)
    return _consistency_summary(prep, _consistency(prep), bootstrap, seed)


def _breakdown(prep: Prepared) -> pl.DataFrame:
    _, _, per_group = _pair_stats(prep)
    counts = per_group.unpivot(index=["gid", SANITY_COLUMN], on=list(BREAKDOWN_CATEGORIES),
                               variable_name="category", value_name="n")
    grid = prep.groups.select("gid").join(pl.DataFrame({"category": list(BREAKDOWN_CATEGORIES)}), how="cross")
    order = {c: i for i, c in enumerate(BREAKDOWN_CATEGORIES)}
    df = (grid.join(counts.drop(SANITY_COLUMN), on=["gid", "category"], how="left")
          .join(per_group.select("gid", SANITY_COLUMN), on="gid", how="left")
          .with_columns(pl.col("n", SANITY_COLUMN).fill_null(0).cast(pl.Int64))
          .with_columns(n_rows=pl.col("n").sum().over("gid"))
          .with_columns(share=pl.when(pl.col("n_rows") > 0).then(pl.col("n") / pl.col("n_rows")),
                        _order=pl.col("category").replace_strict(order, return_dtype=pl.Int64)))
    return (prep.named(df, ev=None).sort([*GROUP_KEYS, "_order"], nulls_last=True)
            .select(list(BREAKDOWN_SCHEMA)).cast(BREAKDOWN_SCHEMA))


def breakdown(answers: Frame | Prepared) -> pl.DataFrame:
    """Consistency breakdown per condition group, pooled over its evaluator pairs (method.md §8.2).

    Every valid pair row (both answers valid, as in `consistency`) of every evaluator pair of the
    group falls into exactly one category of BREAKDOWN_CATEGORIES ("same" = equal answers; null
    correctness = wrong): same_both_correct, same_both_wrong, different_both_correct, one_correct
    (different correctness, whatever the answers), different_both_wrong. Long format, one row per
    (group, category), every category present (0 included), in that order:

    Columns: dataset, condition, variant, cot_source, category, n, share (= n / n_rows; null when
    n_rows = 0), n_rows (all categorized pair rows of the group), same_diff_correctness (rows with
    equal answers but different correctness, counted inside one_correct; a consistent scorer
    never produces one, so it must be 0; repeated on every row of the group).

    The shares of the first three categories add up to the paper consistency of the pooled rows,
    of the first two to the strict one. Pooling weights pairs by their n, so these equal the mean
    over pairs of `consistency_summary` only when every pair has the same number of valid rows.
    """
    return _breakdown(prepare_answers(answers))


# ------------------------------------------------------------------------------------------------
# Accuracy (§8.2)


def _expected(prep: Prepared, n_expected: int | Mapping[tuple[str, str], int] | None) -> pl.Expr:
    """n_expected of a row with dataset, condition, n_items and n_samples columns."""
    derived = pl.col("n_items") * pl.col("n_samples")
    if n_expected is None:
        return derived
    if isinstance(n_expected, Mapping):
        keyed = pl.concat_str(pl.col("dataset"), pl.lit("\x00"), pl.col("condition"))
        given = {f"{d}\x00{c}": int(v) for (d, c), v in n_expected.items()}
        return keyed.replace_strict(given, default=None, return_dtype=pl.Int64).fill_null(derived)
    return pl.lit(int(n_expected), dtype=pl.Int64)


def _accuracy_point(prep: Prepared, rows: pl.DataFrame, keys: list[str], n_items: pl.DataFrame,
                    n_expected: Any) -> pl.DataFrame:
    stats = (rows.group_by(keys)
             .agg(n=pl.len().cast(pl.Int64), n_valid=pl.col("valid").sum().cast(pl.Int64),
                  n_correct=pl.col("correct").sum().cast(pl.Int64), total=pl.col("score").sum()))
    df = (prep.named(stats)
          .join(prep.groups.select("gid", "n_samples"), on="gid")
          .join(n_items, on=[c for c in n_items.columns if c != "n_items"])
          .with_columns(n_expected=_expected(prep, n_expected).cast(pl.Int64)))
    over = df.filter(pl.col("n") > pl.col("n_expected"))
    if over.height:
        raise ValueError(f"n_expected is smaller than the rows present for {over.height} evaluator groups, e.g. "
                         f"{over.select(*GROUP_KEYS, 'evaluator', 'n', 'n_expected').head(3).to_dicts()}")
    p = pl.col("accuracy")
    return (df.with_columns(n_missing=pl.col("n_expected") - pl.col("n"),
                            accuracy=pl.when(pl.col("n_expected") > 0).then(pl.col("total") / pl.col("n_expected")))
            .with_columns(se=(p * (1 - p) / pl.col("n_expected")).sqrt()))


def _accuracy_tables(prep: Prepared, n_expected: Any, bootstrap: int, seed: int,
                     by_category: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The accuracy and accuracy_category tables; one items x (group, evaluator) score matrix per
    dataset serves the bootstrap of both."""
    rows = prep.rows
    point = _accuracy_point(prep, rows, ["gid", "ev"], prep.datasets.select("dataset", "n_items"), n_expected)
    cat_point = None
    if by_category and prep.has_category:
        items = prep.items.filter(pl.col("category").is_not_null())
        n_cat = items.group_by("dataset", "category").agg(n_items=pl.len().cast(pl.Int64))
        cat_rows = rows.join(items.select("item", "category"), on="item")
        cat_point = _accuracy_point(prep, cat_rows, ["gid", "ev", "category"], n_cat, None)
    e = max(len(prep.evaluators), 1)
    ci, cat_ci = [], []
    if bootstrap > 0:
        for dataset, offset, n_items, g0, g1 in prep.dataset_ranges():
            if not n_items:
                continue
            sub = prep.dataset_rows(g0, g1)
            k = (g1 - g0) * e
            col = (sub["gid"].to_numpy().astype(np.int64) - g0) * e + sub["ev"].to_numpy()
            local = sub["item"].to_numpy().astype(np.int64) - offset
            x = np.bincount(local * k + col, weights=sub["score"].to_numpy(), minlength=n_items * k).reshape(n_items, k)
            del sub, col, local
            here = point.filter(pl.col("dataset") == dataset)
            cols = (here["gid"].to_numpy().astype(np.int64) - g0) * e + here["ev"].to_numpy()
            r = _resampled(x[:, cols], bootstrap, _rng(seed, "accuracy", dataset))
            lo, hi = _interval(r / here["n_expected"].to_numpy())
            ci.append(here.select("gid", "ev", ci_low=_floats(lo), ci_high=_floats(hi)))
            if cat_point is None:
                continue
            cats = prep.items.filter((pl.col("dataset") == dataset) & pl.col("category").is_not_null())
            for (category,), members in cats.group_by("category", maintain_order=True):
                here = cat_point.filter((pl.col("dataset") == dataset) & (pl.col("category") == category))
                if not here.height:
                    continue
                cols = (here["gid"].to_numpy().astype(np.int64) - g0) * e + here["ev"].to_numpy()
                r = _resampled(x[np.ix_(members["local"].to_numpy().astype(np.int64), cols)], bootstrap,
                               _rng(seed, "accuracy_category", dataset, category))
                lo, hi = _interval(r / here["n_expected"].to_numpy())
                cat_ci.append(here.select("gid", "ev", "category", ci_low=_floats(lo), ci_high=_floats(hi)))

    def finish(df: pl.DataFrame, cis: list[pl.DataFrame], keys: list[str], schema: dict) -> pl.DataFrame:
        ci_df = (pl.concat(cis) if cis else
                 pl.DataFrame(schema={"gid": pl.UInt32, "ev": pl.UInt32, "category": _S, "ci_low": _F, "ci_high": _F})
                 .select(*keys, "ci_low", "ci_high"))
        return (df.join(ci_df, on=keys, how="left").select(list(schema)).cast(schema)
                .sort([c for c in schema if c in (*GROUP_KEYS, "evaluator", "category")], nulls_last=True))

    acc = finish(point, ci, ["gid", "ev"], ACCURACY_SCHEMA)
    acc_cat = (finish(cat_point, cat_ci, ["gid", "ev", "category"], ACCURACY_CATEGORY_SCHEMA)
               if cat_point is not None else pl.DataFrame(schema=ACCURACY_CATEGORY_SCHEMA))
    return acc, acc_cat


def accuracy(answers: Frame | Prepared, n_expected: int | Mapping[tuple[str, str], int] | None = None,
             bootstrap: int = 0, seed: int = 0) -> pl.DataFrame:
    """Accuracy per condition group and evaluator, over the full sample (method.md §8.2).

    The denominator `n_expected` is the full sample: by default (items of the dataset, i.e. its
    distinct item_ids anywhere in the table) x (distinct samples of the condition group); an int
    sets it for every group, a mapping {(dataset, condition): n} for those groups. A missing row
    counts as incorrect and is reported in `n_missing` = n_expected - n (a ValueError if rows
    exceed n_expected); an invalid (unparseable) answer and a null `correct` count as incorrect.
    `accuracy` = sum of the per-answer `score` (null = 0) / n_expected when the table has a score
    column (Instruction Induction: mean similarity, §4.2), else n_correct / n_expected. `se` is
    the binomial standard error sqrt(p (1 - p) / n_expected) (pitfall 14). ci_low/ci_high: 2.5 and
    97.5 percentiles over `bootstrap` resamples of the dataset's items (seeded; null when 0).
    Evaluators without any row in a group have no row.

    Columns: dataset, condition, variant, cot_source, evaluator, n (rows present), n_expected,
    n_missing, n_valid, n_correct, accuracy, se, ci_low, ci_high.
    """
    return _accuracy_tables(prepare_answers(answers), n_expected, bootstrap, seed, by_category=False)[0]


def accuracy_by_category(answers: Frame | Prepared, bootstrap: int = 0, seed: int = 0) -> pl.DataFrame:
    """`accuracy` per item category (MedCalc `Category`, method.md §8.2), plus a `category` column.

    Only items with a non-null `category` count (no rows when the table has no such column or
    only nulls); each item's category is read from its rows. n_expected = (items of that category
    in the dataset) x (samples of the group); the bootstrap resamples the category's items.

    Columns: dataset, condition, variant, cot_source, evaluator, category, n, n_expected,
    n_missing, n_valid, n_correct, accuracy, se, ci_low, ci_high.
    """
    return _accuracy_tables(prepare_answers(answers), None, bootstrap, seed)[1]


# ------------------------------------------------------------------------------------------------
# Self-consistency and transitions (§8.2)


def _self_consistency(prep: Prepared, bootstrap: int, seed: int) -> pl.DataFrame:
    g = prep.groups.filter(pl.col("cot_source").is_null())
    links = (g.filter(pl.col("condition") == "default").select("dataset", "variant", gid_d="gid", evs_d="evaluators")
             .join(g.filter(pl.col("condition") == "sampled")
                   .select("dataset", "variant", gid_s="gid", evs_s="evaluators"),
                   on=["dataset", "variant"], nulls_equal=True))
    if not links.height:
        return pl.DataFrame(schema=SELF_CONSISTENCY_SCHEMA)
    rows = prep.rows.lazy()
    base = (rows.filter(pl.col("gid").is_in(links["gid_d"].to_list()) & (pl.col("sample") == 0) & pl.col("valid"))
            .select(gid_d="gid", ev="ev", item="item", a_d="ans", c_d="correct"))
    sampled = (rows.filter(pl.col("gid").is_in(links["gid_s"].to_list()) & pl.col("valid"))
               .join(links.lazy().select("gid_s", "gid_d"), left_on="gid", right_on="gid_s")
               .select("gid_d", "ev", "item", "ans", "correct"))
    same = (pl.col("ans") == pl.col("a_d")).fill_null(False)
    c, cd = pl.col("correct"), pl.col("c_d")
    per_item = (sampled.join(base, on=["gid_d", "ev", "item"])
                .group_by("gid_d", "ev", "item")
                .agg(n=pl.len().cast(pl.Int64),
                     # paper: both correct, or both wrong with equal answers; strict: equal answers
                     paper=((c & cd) | (~c & ~cd & same)).sum().cast(pl.Int64),
                     strict=same.sum().cast(pl.Int64))
                .collect())
    # an evaluator with rows in both groups gets a row, n = 0 when no sampled row pairs with a valid default
    present = (links.select("gid_d", ev=pl.col("evs_d").list.set_intersection("evs_s")).explode("ev")
               .drop_nulls("ev").with_columns(pl.col("ev").cast(pl.UInt32)))
    point = (present.join(per_item.group_by("gid_d", "ev").agg(pl.col("n", "paper", "strict").sum()),
                          on=["gid_d", "ev"], how="left")
             .with_columns(pl.col("n", "paper", "strict").fill_null(0)))
    ci = {}
    if bootstrap > 0:
        e = max(len(prep.evaluators), 1)
        for dataset, offset, n_items in prep.datasets.select("dataset", "offset", "n_items").iter_rows():
            keys = links.filter(pl.col("dataset") == dataset)["gid_d"].to_list()
            here = point.filter(pl.col("gid_d").is_in(keys))
            if not here.height or not n_items:
                continue
            slot = {gd: i for i, gd in enumerate(keys)}
            sub = per_item.filter(pl.col("gid_d").is_in(keys))
            k = len(keys) * e
            flat = ((sub["item"].to_numpy().astype(np.int64) - offset) * k
                    + sub["gid_d"].replace_strict(slot, return_dtype=pl.Int64).to_numpy() * e + sub["ev"].to_numpy())
            cols = here["gid_d"].replace_strict(slot, return_dtype=pl.Int64).to_numpy() * e + here["ev"].to_numpy()
            x = np.hstack([np.bincount(flat, weights=sub[s].to_numpy().astype(np.float64),
                                       minlength=n_items * k).reshape(n_items, k)[:, cols]
                           for s in ("n", *DEFINITIONS)])
            r = _resampled(x, bootstrap, _rng(seed, "self_consistency", dataset))
            m = len(cols)
            for j, d in enumerate(DEFINITIONS):
                lo, hi = _interval(_ratio(r[:, (j + 1) * m:(j + 2) * m], r[:, :m]))
                ci[d] = ci.get(d, []) + [here.select("gid_d", "ev", ci_low=_floats(lo), ci_high=_floats(hi))]
    parts = []
    for d in DEFINITIONS:
        ci_df = (pl.concat(ci[d]) if d in ci else
                 pl.DataFrame(schema={"gid_d": pl.UInt32, "ev": pl.UInt32, "ci_low": _F, "ci_high": _F}))
        parts.append(point.join(ci_df, on=["gid_d", "ev"], how="left").select(
            "gid_d", "ev", "n", "ci_low", "ci_high", definition=pl.lit(d),
            rate=pl.when(pl.col("n") > 0).then(pl.col(d) / pl.col("n"))))
    df = prep.named(pl.concat(parts).rename({"gid_d": "gid"}))
    return (df.select(list(SELF_CONSISTENCY_SCHEMA)).cast(SELF_CONSISTENCY_SCHEMA)
            .sort("dataset", "evaluator", "variant", "definition", nulls_last=True))


def paper_default_source(answers: Frame) -> pl.DataFrame:
    """The answers with the original's self-consistency default side (`compat.selfcons_default_source`):
    each evaluator's A->A full-text transfer answers stand in for its free-run default (full
    variant); the stripped default, the sampled runs and everything else are unchanged."""
    df = answers.collect() if isinstance(answers, pl.LazyFrame) else answers
    aa = ((pl.col("condition") == "transfer") & (pl.col("variant") == "full")
          & (pl.col("cot_source") == pl.col("evaluator")))
    own_default = (pl.col("condition") == "default") & (pl.col("variant") == "full")
    stand_in = df.filter(aa).with_columns(condition=pl.lit("default"), cot_source=pl.lit(None, dtype=df.schema["cot_source"]))
    return pl.concat([df.filter(~own_default.fill_null(False)), stand_in])


def self_consistency(answers: Frame | Prepared, bootstrap: int = 0, seed: int = 0) -> pl.DataFrame:
    """Self-consistency per (dataset, evaluator, variant) (method.md §8.2).

    The evaluator's `default` answer (sample 0, its own CoT) against each of its `sampled`
    answers (every sample) to the same item in the same variant, on rows where both are valid.
    `paper`: a match is both correct, or both wrong with equal answers; `strict`: equal answers.
    `rate` = matches / n (null when n = 0). An evaluator with rows in both conditions always has
    a row. CIs: bootstrap over the dataset's items (seeded; null when bootstrap = 0). For
    `compat.selfcons_default_source` (the A->A transfer run as the default side, as the original
    did) pass `paper_default_source(answers)`.

    Columns: dataset, evaluator, variant, definition, n, rate, ci_low, ci_high.
    """
    return _self_consistency(prepare_answers(answers), bootstrap, seed)


def _transitions(prep: Prepared) -> pl.DataFrame:
    g = prep.groups
    empty = g.filter((pl.col("condition") == "empty") & pl.col("variant").is_null() & pl.col("cot_source").is_null())
    targets = g.filter(pl.col("condition") != "empty").join(empty.select("dataset", gid_e="gid"), on="dataset")
    if not targets.height:
        return pl.DataFrame(schema=TRANSITIONS_SCHEMA)
    ok = pl.col("valid") & pl.col("correct")
    rows = prep.rows.lazy().filter(pl.col("sample") == 0)
    base = (rows.filter(pl.col("gid").is_in(empty["gid"].to_list()))
            .select(gid_e="gid", ev="ev", item="item", e_ok=ok, e_valid="valid", e_ans="ans"))
    cond = (rows.filter(pl.col("gid").is_in(targets["gid"].to_list()))
            .join(targets.lazy().select("gid", "gid_e"), on="gid")
            .select("gid", "gid_e", "ev", "item", ok=ok, valid="valid", ans="ans"))
    e_ok = pl.col("e_ok").fill_null(False)  # no empty answer: wrong
    same = pl.col("valid") & pl.col("e_valid").fill_null(False) & (pl.col("ans") == pl.col("e_ans")).fill_null(False)
    category = (pl.when(~e_ok & pl.col("ok")).then(pl.lit("wrong_to_correct"))
                .when(e_ok & ~pl.col("ok")).then(pl.lit("correct_to_wrong"))
                .when(e_ok & pl.col("ok")).then(pl.lit("correct_to_correct"))
                .when(same).then(pl.lit("wrong_to_wrong_same"))
                .otherwise(pl.lit("wrong_to_wrong_different")))
    joined = cond.join(base, on=["gid_e", "ev", "item"], how="left").with_columns(category=category)
    counts, present = pl.collect_all([
        joined.group_by("gid", "ev", "category").agg(n=pl.len().cast(pl.Int64)),
        joined.group_by("gid", "gid_e", "ev").agg(m=pl.len().cast(pl.Int64), m_ok=e_ok.sum().cast(pl.Int64)),
    ])
    base_ok = base.group_by("gid_e", "ev").agg(ok_total=pl.col("e_ok").sum().cast(pl.Int64)).collect()
    # a missing condition row is a wrong answer: correct_to_wrong where the empty answer is right
    missing = (present.join(base_ok, on=["gid_e", "ev"], how="left")
               .join(targets.select("gid", "dataset"), on="gid")
               .join(prep.datasets.select("dataset", "n_items"), on="dataset")
               .select("gid", "ev", ctw=pl.col("ok_total").fill_null(0) - pl.col("m_ok"),
                       all=pl.col("n_items") - pl.col("m")))
    extra = pl.concat([missing.select("gid", "ev", category=pl.lit("correct_to_wrong"), n="ctw"),
                       missing.select("gid", "ev", category=pl.lit("wrong_to_wrong_different"),
                                      n=pl.col("all") - pl.col("ctw"))])
    grid = present.select("gid", "ev").join(pl.DataFrame({"category": list(TRANSITION_CATEGORIES)}), how="cross")
    order = {c: i for i, c in enumerate(TRANSITION_CATEGORIES)}
    df = (grid.join(pl.concat([counts, extra]).group_by("gid", "ev", "category").agg(pl.col("n").sum()),
                    on=["gid", "ev", "category"], how="left")
          .with_columns(pl.col("n").fill_null(0))
          .with_columns(share=pl.col("n") / pl.col("n").sum().over("gid", "ev"),
                        _order=pl.col("category").replace_strict(order, return_dtype=pl.Int64)))
    return (prep.named(df).sort([*GROUP_KEYS, "evaluator", "_order"], nulls_last=True)
            .select(list(TRANSITIONS_SCHEMA)).cast(TRANSITIONS_SCHEMA))


def transitions(answers: Frame | Prepared) -> pl.DataFrame:
    """Empty -> condition transitions per condition group and evaluator (method.md §8.2).

    For every non-empty condition group of a dataset with an `empty` group: each item's sample-0
    outcome under the condition against the same evaluator's empty-condition outcome (sample 0).
    Invalid answers and null correctness count as wrong, and so does a missing row on either
    side. Categories: wrong_to_correct, correct_to_wrong, correct_to_correct, wrong_to_wrong_same
    (both valid with equal answers), wrong_to_wrong_different (the other wrong->wrong rows).
    `share` = n / the dataset's items (the full sample, as in `accuracy`), so the shares of a
    (group, evaluator) add up to 1; every category is present, 0 included.

    Columns: dataset, condition, variant, cot_source, evaluator, category, n, share.
    """
    return _transitions(prepare_answers(answers))


# ------------------------------------------------------------------------------------------------
# Creator involvement and post-training (§8.2)

Ensembles = Mapping[str, tuple[Iterable[str], Iterable[str]]]


def _involvement(cons: pl.DataFrame, ensembles: Ensembles | None) -> pl.DataFrame:
    c = _require(cons, list(CONSISTENCY_SCHEMA), "consistency table").collect().filter(
        pl.col("condition").is_in(["transfer", "ensemble"]) & pl.col("consistency").is_not_null())
    transfer = c.filter(pl.col("condition") == "transfer").with_columns(
        creators=pl.col("cot_source"), version=pl.lit("source"), members=pl.concat_list(pl.col("cot_source")))
    ens = c.filter(pl.col("condition") == "ensemble")
    if ensembles is None:
        ens = ens.clear()
    unknown = sorted(set(ens["cot_source"].unique().to_list()) - set(ensembles or {}))
    if unknown:
        raise ValueError(f"involvement: no generators/evaluators given for ensemble(s) {unknown}; "
                         f"known: {sorted(ensembles or {})}")
    spec = []
    for name, (gens, evals) in (ensembles or {}).items():
        for version, members in (("creator", sorted(set(gens) | set(evals))), ("source", sorted(set(gens)))):
            spec.append({"cot_source": name, "version": version, "creators": ",".join(members), "members": members})
    mapping = pl.DataFrame(spec, schema={"cot_source": _S, "version": _S, "creators": _S, "members": pl.List(_S)})
    columns = [*CONSISTENCY_SCHEMA, "creators", "version", "members"]
    pairs = pl.concat([transfer.select(columns), ens.join(mapping, on="cot_source").select(columns)])
    keys = ["dataset", "condition", "variant", "creators", "version", "definition"]
    stats = (pairs.with_columns(involved=pl.col("members").list.contains(pl.col("evaluator_a"))
                                | pl.col("members").list.contains(pl.col("evaluator_b")))
             .group_by(*keys, "involved")
             .agg(n_pairs=pl.len().cast(pl.Int64), mean=pl.col("consistency").mean(),
                  std=pl.col("consistency").std(ddof=0)))
    grid = pairs.select(keys).unique().join(pl.DataFrame({"involved": [True, False]}), how="cross")
    return (grid.join(stats, on=[*keys, "involved"], how="left", nulls_equal=True)
            .with_columns(pl.col("n_pairs").fill_null(0), stderr=pl.col("std") / pl.col("n_pairs").sqrt())
            .select(list(INVOLVEMENT_SCHEMA)).cast(INVOLVEMENT_SCHEMA)
            .sort("dataset", "condition", "variant", "version", "creators", "definition", pl.col("involved").not_(),
                  nulls_last=True))


def involvement(answers_or_consistency: Frame | Prepared, ensembles: Ensembles | None = None) -> pl.DataFrame:
    """Creator involvement (method.md §8.2): pair consistency split by whether the pair contains a creator.

    Input: the answers table, or a `consistency` table (both definitions; recognized by its
    evaluator_a column), e.g. one with Instruction Induction rows from its own metric.
    `ensembles` maps each ensemble name (its cot_source) to (generators, evaluators); without it
    ensemble rows are left out, and an ensemble of the table missing from a given mapping is a
    ValueError.

    - transfer: per source A (creators = A, version `source`), involved = the pair contains A;
    - ensemble: version `creator` uses generators ∪ evaluators, version `source` generators only;
      creators = the sorted, comma-joined set, and configs with the same set are pooled.

    Per (dataset, condition, variant, creators, version, involved, definition): n_pairs (pairs
    with a non-null consistency), mean and stderr (population std / sqrt(n_pairs)) over them.
    Both involved values are listed for every key, n_pairs = 0 (null mean) when no pair falls
    there.

    Columns: dataset, condition, variant, creators, version, involved, definition, n_pairs, mean, stderr.
    """
    src = answers_or_consistency
    if not isinstance(src, Prepared) and "evaluator_a" in src.lazy().collect_schema():
        cons = src.lazy().collect() if isinstance(src, pl.LazyFrame) else src
    else:
        cons = _consistency(prepare_answers(src))
    return _involvement(cons, ensembles)


def _own_group(prep: Prepared) -> pl.DataFrame:
    """Per dataset, the gid of (default, full, no cot_source): each model's own answer."""
    return prep.groups.filter((pl.col("condition") == "default") & (pl.col("variant") == "full")
                              & pl.col("cot_source").is_null()).select("dataset", gid_o="gid")


def _check_checkpoints(prep: Prepared, tags: Mapping[str, str | None]) -> None:
    """Raise when two transfer sources with different tags answer every item of a dataset alike."""
    transfer_sources = set(prep.groups.filter(pl.col("condition") == "transfer")["cot_source"].drop_nulls().to_list())
    codes = {i: name for i, name in enumerate(prep.evaluators) if name in transfer_sources and tags.get(name)}
    if len(codes) < 2:
        return
    own = _own_group(prep).join(prep.datasets.select("dataset", "n_items"), on="dataset")
    answers = (prep.rows.lazy()
               .filter(pl.col("gid").is_in(own["gid_o"].to_list()) & pl.col("ev").is_in(list(codes))
                       & (pl.col("sample") == 0))
               .select(gid_o="gid", ev="ev", item="item", ans="ans"))
    stats = (answers.join(answers, on=["gid_o", "item"], suffix="_b").filter(pl.col("ev") < pl.col("ev_b"))
             .group_by("gid_o", "ev", "ev_b")
             .agg(n=pl.len(), equal=pl.col("ans").eq_missing(pl.col("ans_b")).sum(),
                  answered=pl.col("ans").is_not_null().sum())
             .collect()
             .join(own, on="gid_o")
             .filter((pl.col("n") == pl.col("n_items")) & (pl.col("equal") == pl.col("n_items"))
                     & (pl.col("answered") > 0)))
    clashes = [f"{d}: {codes[a]} ({tags[codes[a]]}) and {codes[b]} ({tags[codes[b]]})"
               for d, a, b in stats.sort("dataset", "ev", "ev_b").select("dataset", "ev", "ev_b").iter_rows()
               if tags[codes[a]] != tags[codes[b]]]
    if clashes:
        raise ValueError("post-training sanity check: sources with different post_training tags gave identical "
                         "answers on every item, a checkpoint mix-up? " + "; ".join(clashes))


def _post_training(prep: Prepared, tags: Mapping[str, str | None], acc: pl.DataFrame) -> pl.DataFrame:
    _check_checkpoints(prep, tags)
    transfer = (prep.groups.filter(pl.col("condition") == "transfer")
                .join(_own_group(prep), on="dataset", how="left")
                .with_columns(src_ev=pl.col("cot_source").replace_strict(
                    prep.evaluators, list(range(len(prep.evaluators))), default=None, return_dtype=pl.UInt32)))
    if not transfer.height:
        return pl.DataFrame(schema=POST_TRAINING_SCHEMA)
    rows = prep.rows.lazy().filter((pl.col("sample") == 0) & pl.col("valid"))
    own = (rows.filter(pl.col("gid").is_in(transfer["gid_o"].drop_nulls().to_list()))
           .select(gid_o="gid", src_ev="ev", item="item", a_o="ans", c_o="correct"))
    same = (pl.col("ans") == pl.col("a_o")).fill_null(False)
    per_target = (rows.filter(pl.col("gid").is_in(transfer["gid"].to_list()))
                  .join(transfer.lazy().select("gid", "gid_o", "src_ev"), on="gid")
                  .join(own, on=["gid_o", "src_ev", "item"])
                  .group_by("gid", "ev")
                  .agg(paper=(same | (pl.col("correct") & pl.col("c_o"))).mean(), strict=same.mean())
                  .group_by("gid").agg(pl.col(*DEFINITIONS).mean())
                  .collect())
    target_acc = (acc.filter(pl.col("condition") == "transfer")
                  .group_by(GROUP_KEYS)
                  .agg(n_targets=pl.len().cast(pl.Int64), target_accuracy=pl.col("accuracy").mean()))
    tag_of = pl.col("cot_source").replace_strict(dict(tags), default=None, return_dtype=pl.String)
    df = (transfer.select("gid", *GROUP_KEYS).join(per_target, on="gid", how="left")
          .join(target_acc, on=GROUP_KEYS, how="left", nulls_equal=True)
          .with_columns(post_training=tag_of, source=pl.col("cot_source"), n_targets=pl.col("n_targets").fill_null(0)))
    return (pl.concat([df.with_columns(agreement=pl.col(d), definition=pl.lit(d)).select(list(POST_TRAINING_SCHEMA))
                       for d in DEFINITIONS])
            .cast(POST_TRAINING_SCHEMA).sort("dataset", "variant", "source", "definition", nulls_last=True))


def post_training(answers: Frame | Prepared, tags: Mapping[str, str | None],
                  accuracy_table: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per transfer source: target accuracy and the targets' agreement with the source (method.md §8.2).

    For every (dataset, variant, source) of the `transfer` condition: `target_accuracy` = mean over
    the target evaluators of their `accuracy` (full-sample denominator, so a missing row counts as
    incorrect) under transfer from the source; `agreement` = mean over targets of the share of
    items on which the target's answer (sample 0) agrees with the source's own answer (its
    `default`, `full`, sample-0 answer), over items where both are valid: `paper` = equal answers
    or both correct, `strict` = equal answers; null when the source has no own answers. Every
    evaluator of the group is a target (a source that is also an evaluator is its own target).
    `post_training` = tags[source] (null when untagged); `n_targets` = evaluators with rows.

    Sanity check (§8.2): a ValueError, naming them, when two transfer sources with different
    (non-null) tags gave identical own answers (as strings, null = null, at least one non-null)
    on every item of a dataset: a fine-tune identical to its base is a checkpoint mix-up.
    `accuracy_table` (the `accuracy` table of the same answers) saves recomputing it.

    Columns: dataset, variant, source, post_training, n_targets, target_accuracy, agreement, definition.
    """
    prep = prepare_answers(answers)
    acc = accuracy_table if accuracy_table is not None else _accuracy_tables(prep, None, 0, 0, by_category=False)[0]
    return _post_training(prep, tags, acc)


# ------------------------------------------------------------------------------------------------
# Paired tests between conditions


def _comparisons(prep: Prepared) -> pl.DataFrame:
    """(gid_a, gid_b, condition_b): every non-empty group vs its dataset's `empty` group, and
    every transfer/ensemble group vs `default` of the same variant."""
    g = prep.groups
    own = g.filter(pl.col("cot_source").is_null())
    empty = own.filter((pl.col("condition") == "empty") & pl.col("variant").is_null())
    default = own.filter(pl.col("condition") == "default")
    vs_empty = (g.filter(pl.col("condition") != "empty")
                .join(empty.select("dataset", gid_b="gid"), on="dataset")
                .select(gid_a="gid", gid_b="gid_b", condition_b=pl.lit("empty")))
    vs_default = (g.filter(pl.col("condition").is_in(["transfer", "ensemble"]))
                  .join(default.select("dataset", "variant", gid_b="gid"), on=["dataset", "variant"])
                  .select(gid_a="gid", gid_b="gid_b", condition_b=pl.lit("default")))
    return pl.concat([vs_empty, vs_default]).sort("gid_a", "condition_b")


def _mcnemar(prep: Prepared, comps: pl.DataFrame) -> list[dict]:
    """Exact McNemar test of correctness (sample 0) per comparison and evaluator."""
    from scipy.stats import binom

    out = []
    e = max(len(prep.evaluators), 1)
    evs = dict(prep.groups.select("gid", "evaluators").iter_rows())
    for dataset, offset, n_items, g0, g1 in prep.dataset_ranges():
        here = comps.filter((pl.col("gid_a") >= g0) & (pl.col("gid_a") < g1))
        if not here.height or not n_items:
            continue
        sub = prep.dataset_rows(g0, g1).filter(pl.col("sample") == 0)
        k = (g1 - g0) * e
        flat = ((sub["item"].to_numpy().astype(np.int64) - offset) * k
                + (sub["gid"].to_numpy().astype(np.int64) - g0) * e + sub["ev"].to_numpy())
        right = np.bincount(flat, weights=sub["correct"].to_numpy().astype(np.float64),
                            minlength=n_items * k).reshape(n_items, k) > 0  # a missing row is incorrect
        units = [(ga, gb, cb, ev) for ga, gb, cb in here.iter_rows()
                 for ev in sorted(set(evs[ga] or ()) & set(evs[gb] or ()))]
        if not units:
            continue
        ca = np.array([(ga - g0) * e + ev for ga, _, _, ev in units])
        cb = np.array([(gb - g0) * e + ev for _, gb, _, ev in units])
        a, b = right[:, ca], right[:, cb]
        only_a, only_b = (a & ~b).sum(axis=0), (~a & b).sum(axis=0)
        low, disc = np.minimum(only_a, only_b), only_a + only_b
        p = np.where(disc > 0, np.minimum(1.0, 2 * binom.cdf(low, np.maximum(disc, 1), 0.5)), 1.0)
        for (ga, _, cond_b, ev), s, pv in zip(units, low, p):
            out.append({"gid": ga, "metric": "accuracy", "unit": prep.evaluators[ev], "condition_b": cond_b,
                        "test": "mcnemar", "n": n_items, "statistic": float(s), "p_value": float(pv)})
    return out


def _permutation(prep: Prepared, comps: pl.DataFrame, permutations: int, seed: int, definition: str,
                 skip: Collection[str]) -> list[dict]:
    """Paired (sign-flip) permutation test of per-item pair consistency per comparison and pair."""
    blocks, _, _ = _pair_stats(prep)
    where = {gid: block for block in blocks for gid in block.gids}
    out = []
    for dataset, offset, n_items, g0, g1 in prep.dataset_ranges():
        here = comps.filter((pl.col("gid_a") >= g0) & (pl.col("gid_a") < g1))
        if dataset in skip or not here.height or not n_items:
            continue
        rates: dict[int, tuple[dict, np.ndarray]] = {}

        def rate(gid: int) -> tuple[dict, np.ndarray]:
            """Per-item consistency of each pair of the group (NaN where the pair has no valid row)."""
            if gid not in rates:
                block = where[gid]
                p = len(block.pairs)
                x = _item_matrix(block, gid, offset, n_items, [f"{s}_{k}" for s in ("n", definition) for k in range(p)])
                rates[gid] = ({pair: k for k, pair in enumerate(block.pairs)}, _ratio(x[:, p:], x[:, :p]))
            return rates[gid]

        units, diffs = [], []
        for ga, gb, cond_b in here.iter_rows():
            if ga not in where or gb not in where:
                continue
            (ka, ra), (kb, rb) = rate(ga), rate(gb)
            for pair in sorted(set(ka) & set(kb)):
                d = ra[:, ka[pair]] - rb[:, kb[pair]]  # NaN unless both groups have the item
                units.append((ga, cond_b, pair))
                diffs.append(d)
        if not units:
            continue
        d = np.column_stack(diffs)
        paired = ~np.isnan(d)
        n = paired.sum(axis=0)
        d = np.where(paired, d, 0.0)
        stat = _ratio(d.sum(axis=0), n)
        hits = np.zeros(len(units))
        if permutations > 0:
            rng = _rng(seed, "paired_tests", dataset)
            target = np.abs(stat) - 1e-9
            block = max(1, min(permutations, _CHUNK_CELLS // n_items))
            for start in range(0, permutations, block):
                b = min(block, permutations - start)
                signs = rng.integers(0, 2, size=(b, n_items)).astype(np.float64) * 2 - 1
                hits += (np.abs((signs @ d) / np.maximum(n, 1)) >= target).sum(axis=0)
        p = np.where(n > 0, (1 + hits) / (1 + permutations), np.nan) if permutations > 0 else np.full(n.shape, np.nan)
        for (ga, cond_b, (x, y)), nn, s, pv in zip(units, n, stat, p):
            out.append({"gid": ga, "metric": "consistency", "unit": f"{prep.evaluators[x]}|{prep.evaluators[y]}",
                        "condition_b": cond_b, "test": "permutation", "n": int(nn), "statistic": float(s),
                        "p_value": float(pv)})
    return out


def _paired_tests(prep: Prepared, permutations: int, seed: int, definition: str,
                  skip_consistency: Collection[str] = ()) -> pl.DataFrame:
    comps = _comparisons(prep)
    rows = _mcnemar(prep, comps) + _permutation(prep, comps, permutations, seed, definition, skip_consistency)
    if not rows:
        return pl.DataFrame(schema=PAIRED_TESTS_SCHEMA)
    df = pl.DataFrame(rows, schema={"gid": pl.UInt32, "metric": _S, "unit": _S, "condition_b": _S, "test": _S,
                                    "n": _I, "statistic": _F, "p_value": _F}).fill_nan(None)
    return (prep.named(df, ev=None).rename({"condition": "condition_a"})
            .select(list(PAIRED_TESTS_SCHEMA)).cast(PAIRED_TESTS_SCHEMA)
            .sort("dataset", "variant", "cot_source", "metric", "condition_a", "condition_b", "unit", nulls_last=True))


def paired_tests(answers: Frame | Prepared, permutations: int = 1000, seed: int = 0,
                 definition: Definition = "paper", skip_consistency: Collection[str] = ()) -> pl.DataFrame:
    """Paired tests between conditions, over the items of a dataset.

    Comparisons: every non-empty condition group (condition_a) against its dataset's `empty`
    group, and every transfer/ensemble group against `default` of the same variant (condition_b).
    `variant` and `cot_source` are condition_a's.

    - metric `accuracy`, unit = evaluator (present in both groups), test `mcnemar`: the exact
      McNemar test (two-sided binomial test of the discordant items, p = min(1, 2 P[X <= min])
      with X ~ Bin(discordant, 1/2); no chi-square approximation) on each item's sample-0
      correctness, a missing row or null correctness counting as incorrect (as in `accuracy`);
      n = the dataset's items, statistic = min(items right only under a, items right only under
      b) (p = 1 with no discordant item).
    - metric `consistency`, unit "a|b" (an evaluator pair of both groups), test `permutation`: a
      paired permutation test over items of the pair's per-item consistency under `definition`
      (agreeing / valid rows of the item, over its samples): statistic = mean over the items both
      groups have valid rows for (n of them) of (a - b); p = (1 + #{|permuted| >= |observed|}) /
      (1 + permutations) (ties count as extreme), a permutation swapping a and b on each item
      with probability 1/2 (a random sign per difference; seeded); null p without permutations,
      null statistic and p when n = 0. Datasets in
      `skip_consistency` get no consistency tests (Instruction Induction: their consistency is
      a similarity, not this equality rule).

    Columns: dataset, variant, cot_source, metric, unit, condition_a, condition_b, test, n,
    statistic, p_value.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown consistency definition {definition!r}; known: {list(DEFINITIONS)}")
    return _paired_tests(prepare_answers(answers), permutations, seed, definition, skip_consistency)


# ------------------------------------------------------------------------------------------------
# Every table at once


def _ii_rows(prep: Prepared, ii_consistency: Callable, datasets: list[str], similarity: Any) -> pl.DataFrame:
    parts = []
    for d in datasets:
        lf = prep.source.filter(pl.col("dataset") == d)
        if similarity is None:
            got = ii_consistency(lf)
        else:
            got = ii_consistency(lf, similarity[d] if isinstance(similarity, Mapping) else similarity)
        got = got.collect() if isinstance(got, pl.LazyFrame) else got
        missing = [c for c in CONSISTENCY_SCHEMA if c not in got.columns]
        if missing:
            raise ValueError(f"ii_consistency({d!r}) returned a table without columns {missing}")
        parts.append(got.select(list(CONSISTENCY_SCHEMA)).cast(CONSISTENCY_SCHEMA))
    return pl.concat(parts)


def all_tables(answers: Frame | Prepared, *, ensembles: Ensembles | None = None,
               tags: Mapping[str, str | None] | None = None, bootstrap: int = 1000, seed: int = 0,
               similarity: Any = None, ii_consistency: Callable | None = None,
               ii_datasets: Collection[str] | None = None, permutations: int = 1000) -> dict[str, pl.DataFrame]:
    """Every metric table of the answers table, keyed by name (TABLES), computed from one encoding.

    - consistency: `consistency`, both definitions (paper rows, then strict rows);
    - consistency_summary: `consistency_summary` over that table, CIs from `bootstrap` resamples;
    - accuracy, accuracy_category: `accuracy` (default n_expected) and `accuracy_by_category`;
    - breakdown, self_consistency, transitions: as those functions;
    - involvement: from the consistency table, with `ensembles` ({name: (generators, evaluators)});
    - post_training: with `tags` ({model: post_training tag}; none: null tags, no sanity check
      possible), from the accuracy table;
    - paired_tests: `permutations` permutations, paper definition.

    Instruction Induction hook: for the datasets in `ii_datasets` (default: the keys of
    `similarity` when it is a mapping) the consistency rows come from
    `ii_consistency(answers of that dataset as a LazyFrame[, backend])`, which returns the
    `consistency` table's columns with both definitions; the backend argument is passed when
    `similarity` is given (`similarity[dataset]` for a mapping, else `similarity` itself). Those
    datasets' consistency_summary rows then have null CIs and they get no consistency paired
    tests (per-item similarities are not available here); their involvement uses these rows.
    `seed` seeds every bootstrap and permutation (0 resamples / permutations: null CIs / p-values).
    Timings go to this module's logger (INFO).
    """
    t0 = time.perf_counter()

    def took(what: str) -> None:
        nonlocal t0
        log.info("metrics: %s in %.1f s", what, time.perf_counter() - t0)
        t0 = time.perf_counter()

    prep = prepare_answers(answers)
    took(f"read and encoded {prep.rows.height} answer rows")
    if ii_datasets is None:
        ii_datasets = set(similarity) if isinstance(similarity, Mapping) else set()
    ii = sorted(set(ii_datasets) & set(prep.datasets["dataset"].to_list()))
    if ii and ii_consistency is None:
        raise ValueError(f"ii_datasets {ii} given without an ii_consistency function")
    cons = _consistency(prep)
    if ii:
        cons = pl.concat([cons.filter(~pl.col("dataset").is_in(ii)), _ii_rows(prep, ii_consistency, ii, similarity)])
        cons = pl.concat([cons.filter(pl.col("definition") == d).sort([*GROUP_KEYS, *PAIR], nulls_last=True)
                          for d in DEFINITIONS])
    out = {"consistency": cons}
    took("consistency")
    out["consistency_summary"] = _consistency_summary(prep, cons, bootstrap, seed, no_ci=ii)
    took("consistency_summary")
    out["accuracy"], out["accuracy_category"] = _accuracy_tables(prep, None, bootstrap, seed)
    took("accuracy, accuracy_category")
    out["breakdown"] = _breakdown(prep)
    out["self_consistency"] = _self_consistency(prep, bootstrap, seed)
    took("breakdown, self_consistency")
    out["transitions"] = _transitions(prep)
    took("transitions")
    out["involvement"] = _involvement(cons, ensembles)
    out["post_training"] = _post_training(prep, tags or {}, out["accuracy"])
    took("involvement, post_training")
    out["paired_tests"] = _paired_tests(prep, permutations, seed, "paper", skip_consistency=ii)
    took("paired_tests")
    return {name: out[name] for name in TABLES}


# ------------------------------------------------------------------------------------------------
# Ensemble diagnostics (F12)

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


STRIP_QC_SCHEMA = {"dataset": pl.String, "cot_source": pl.String, "kind": pl.String, "n": pl.Int64,
                   "kept_fraction": pl.Float64, "char_ratio": pl.Float64, "token_ratio": pl.Float64,
                   "share_all_removed": pl.Float64, "unmatched_sentences": pl.Int64,
                   "share_none_removed": pl.Float64, "share_answer_still_present": pl.Float64,
                   "share_bad_filter_output": pl.Float64, "flag": pl.String}


def strip_qc(stripped: Frame, kind: str) -> pl.DataFrame:
    """Answer removal's quality control per (dataset, CoT source) of one stripped CoT table kind
    (method.md section 5): `n` CoTs; the mean share of sentences kept (`kept_fraction`, n_out / n_in
    over CoTs with sentences) and of characters (`char_ratio`); the shares of CoTs with every
    sentence removed, with none removed, with the parsed answer still present (over CoTs where
    that could be checked) and with an unreadable filter reply; with a filter model, the mean
    token ratio (its tokens; null for the rule method, which loads no tokenizer) and, in rewrite
    mode, the reply sentences that matched no original sentence (`unmatched_sentences`). `flag` names what deserves a
    look: `nothing_removed` when no CoT lost a sentence (ratio 1.0), `all_removed` when at least
    half lost every sentence, else null."""
    lf = _require(stripped, ["dataset", "cot_source", "n_in", "n_out", "char_ratio", "status",
                             "answer_still_present"], "stripped CoT table")
    has = pl.col("n_in") > 0
    names = lf.collect_schema().names()
    out = (lf.group_by("dataset", "cot_source")
           .agg(n=pl.len().cast(pl.Int64),
                kept_fraction=(pl.col("n_out") / pl.col("n_in")).filter(has).mean(),
                char_ratio=pl.col("char_ratio").filter(has).mean(),
                token_ratio=(pl.col("token_ratio").filter(has).mean() if "token_ratio" in names
                             else pl.lit(None, dtype=pl.Float64)),
                # rewrite mode only: index mode and the rule method record none (null, not 0)
                unmatched_sentences=(pl.when(pl.col("unmatched").is_not_null().any()).then(pl.col("unmatched").sum())
                                     if "unmatched" in names else pl.lit(None, dtype=pl.Int64)),
                share_all_removed=((pl.col("n_out") == 0) & has).mean(),
                share_none_removed=(pl.col("status") == "nothing_removed").mean(),
                share_answer_still_present=pl.col("answer_still_present").cast(pl.Float64).mean(),
                share_bad_filter_output=(pl.col("status") == "bad_filter_output").mean())
           .with_columns(kind=pl.lit(kind),
                         flag=pl.when(pl.col("share_none_removed") == 1.0).then(pl.lit("nothing_removed"))
                         .when(pl.col("share_all_removed") >= 0.5).then(pl.lit("all_removed")))
           .collect())
    return out.select(list(STRIP_QC_SCHEMA)).cast(STRIP_QC_SCHEMA).sort("dataset", "cot_source", "kind")
