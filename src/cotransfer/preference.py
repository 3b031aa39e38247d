"""Human preference analysis (method.md §8.2 "Human preference"; figure F10).

Input: a ratings table, one row per (rater, item, source, criterion) with an integer `rating`
from 1 to 5. `source` is a free label for the explanation the rater saw (for example
``transfer_dapo``); the study's config maps every label to the pipeline group it came from
(`preference.sources`, see `cotransfer.config.PreferenceSpec`). The study's criteria are

    Clarity of Steps, Ease of Following, Confidence, Best overall

(`CRITERIA`); any other criterion names are accepted and analysed the same way, after these.

Outputs of `analyze()` (all polars DataFrames):

- ``preference_means``: source, criterion, n, mean, sd (sample SD, ddof 1; null when n < 2).
- ``preference_tests``: criterion, source_a, source_b, test, n, statistic, p_value, p_adjusted,
  cohens_d. For every pair of sources within a criterion (in `source_map` order):
  * ``ttest_ind``: independent two-sample t-test with equal variances (SciPy's default) on all
    ratings of the two sources; n = n_a + n_b; cohens_d = (mean_a - mean_b) / pooled SD with the
    pooled SD sqrt(((n_a-1) s_a² + (n_b-1) s_b²) / (n_a + n_b - 2)).
  * ``wilcoxon``: paired Wilcoxon signed-rank test (SciPy defaults: zero differences dropped,
    no continuity correction, exact or normal method chosen by SciPy) on the ratings matched by
    the explicit pairing key (rater, item); n = number of matched pairs.
  * ``ttest_rel``: paired t-test on the same matched pairs.
  p_adjusted is Bonferroni within one (criterion, test): p × the number of comparisons of that
  test in that criterion, capped at 1. cohens_d is null for the paired tests. A test that cannot
  be computed (too few ratings, no variance, all differences zero) has null statistic and p; it
  still counts as a comparison for the correction.
- ``preference_points``: source, criterion, variant, mean_rating, consistency, accuracy — one
  point of the F10 scatter per source and criterion. consistency is the consistency_summary
  `mean` of the source's group (dataset, condition, variant, cot_source) under `definition`
  (paper by default); accuracy is the mean over evaluators of the accuracy table's `accuracy`
  for that group.
- ``preference_correlation``: criterion, variant, metric (consistency | accuracy), pearson_r,
  spearman_rho, ci_low, ci_high, n_sources. r and ρ are computed across sources between the
  mean rating and the pipeline number; ci_low/ci_high are the 2.5 and 97.5 percentiles of a
  seeded bootstrap over raters of Pearson r (raters drawn with replacement, each with all of
  their ratings; resamples where r is undefined are dropped). `variant` is the answer mode of
  the pipeline numbers: the sources' common variant, or ``mixed`` when the source map mixes them
  (the original's stripped-Transfer/full-Ensemble mix; method.md allows it only under
  ``compat: paper``).

There are no p-values for the correlations, deliberately: with 4 sources (the study's design)
Pearson r has no meaningful p-value, and with fewer than 3 sources r is ±1 or undefined by
construction. r, ρ and the CI are still reported, with n_sources, for the reader to judge.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

CRITERIA = ("Clarity of Steps", "Ease of Following", "Confidence", "Best overall")
RATING_COLUMNS = ("rater", "item", "source", "criterion", "rating")
KEY = ["rater", "item", "source", "criterion"]
SOURCE_FIELDS = ("condition", "cot_source", "variant", "dataset")
TESTS = ("ttest_ind", "wilcoxon", "ttest_rel")
GROUP_KEYS = ["dataset", "condition", "variant", "cot_source"]

MEANS_SCHEMA = {"source": pl.String, "criterion": pl.String, "n": pl.Int64, "mean": pl.Float64,
                "sd": pl.Float64}
TESTS_SCHEMA = {"criterion": pl.String, "source_a": pl.String, "source_b": pl.String,
                "test": pl.String, "n": pl.Int64, "statistic": pl.Float64, "p_value": pl.Float64,
                "p_adjusted": pl.Float64, "cohens_d": pl.Float64}
POINTS_SCHEMA = {"source": pl.String, "criterion": pl.String, "variant": pl.String,
                 "mean_rating": pl.Float64, "consistency": pl.Float64, "accuracy": pl.Float64}
CORRELATION_SCHEMA = {"criterion": pl.String, "variant": pl.String, "metric": pl.String,
                      "pearson_r": pl.Float64, "spearman_rho": pl.Float64, "ci_low": pl.Float64,
                      "ci_high": pl.Float64, "n_sources": pl.Int64}


# --------------------------------------------------------------------------------------------
# loading


def _examples(df: pl.DataFrame, mask: pl.Series, where: tuple[str, int], what: str) -> str:
    unit, offset = where
    bad = df.with_row_index("_row").filter(mask)
    shown = ", ".join(
        f"{unit} {r['_row'] + offset}: {r['rating']!r}" if what == "rating" else
        f"{unit} {r['_row'] + offset}"
        for r in bad.head(5).iter_rows(named=True)
    )
    more = f" (and {bad.height - 5} more)" if bad.height > 5 else ""
    return shown + more


def load_ratings(path: Path | str) -> pl.DataFrame:
    """Read and check a ratings table (CSV, or Parquet for a ``.parquet``/``.pq`` suffix).

    Required columns: rater, item, source, criterion, rating; others are dropped. Keys are read
    as strings (item ``7`` and ``007`` differ), ratings must be integers from 1 to 5 (``4.0`` is
    accepted as 4, ``4.5`` is not), and each (rater, item, source, criterion) may appear once.
    Returns the five columns, rating as Int64. Raises ValueError naming the file and the problem
    (CSV: "line" numbers count the header as line 1; Parquet: 1-based "row" numbers).
    """
    path = Path(path)
    where = f"ratings file {str(path)!r}"
    if not path.exists():
        raise ValueError(f"{where}: no such file")
    is_parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        if is_parquet:
            df = pl.read_parquet(path)
        else:
            df = pl.read_csv(path, infer_schema=False)  # every column as text
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{where}: cannot be read ({exc})") from exc
    line_offset = ("row", 1) if is_parquet else ("line", 2)  # CSV: the header is line 1
    missing = [c for c in RATING_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {df.columns}; "
                         f"required: {list(RATING_COLUMNS)}")
    df = df.select(RATING_COLUMNS)
    if df.height == 0:
        raise ValueError(f"{where}: no ratings")
    for col in KEY:
        if df.schema[col] != pl.String:
            df = df.with_columns(pl.col(col).cast(pl.String))
        df = df.with_columns(pl.col(col).str.strip_chars())
        empty = df[col].is_null() | (df[col] == "")
        if empty.any():
            raise ValueError(f"{where}: empty {col} at {_examples(df, empty, line_offset, col)}")

    raw = df["rating"]
    as_text = raw.cast(pl.String).str.strip_chars()
    num = as_text.cast(pl.Float64, strict=False)
    notnum = num.is_null() | num.is_nan()
    if notnum.any():
        raise ValueError(f"{where}: rating is missing or not a number at "
                         f"{_examples(df, notnum, line_offset, 'rating')}")
    frac = num != num.round(0)
    if frac.any():
        raise ValueError(f"{where}: rating must be an integer 1-5; non-integer at "
                         f"{_examples(df, frac, line_offset, 'rating')}")
    out_of_range = (num < 1) | (num > 5)
    if out_of_range.any():
        raise ValueError(f"{where}: rating outside 1-5 at "
                         f"{_examples(df, out_of_range, line_offset, 'rating')}")
    df = df.with_columns(num.cast(pl.Int64).alias("rating"))

    dup = df.select(KEY).is_duplicated()
    if dup.any():
        first = df.filter(dup).row(0, named=True)
        key = ", ".join(f"{k}={first[k]!r}" for k in KEY)
        raise ValueError(f"{where}: {int(dup.sum())} rows share a (rater, item, source, criterion) "
                         f"key, e.g. {key} at {_examples(df, dup, line_offset, 'key')}")
    return df


# --------------------------------------------------------------------------------------------
# statistics helpers (pure numpy; scipy only for the tests' distributions)


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of x (B × K) with y (K); nan where a row has nan or no variance."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum())
        r = (xc @ yc) / den
    r[~np.isfinite(r) | (den <= 1e-12)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return None
    return _finite(_pearson_rows(x[None, :], y)[0])


def _spearman(x, y) -> float | None:
    from scipy.stats import rankdata

    if len(x) < 2:
        return None
    return _pearson(rankdata(x), rankdata(y))


def cohens_d(a, b) -> float | None:
    """(mean_a - mean_b) / pooled SD (ddof 1 per group); None when undefined."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return None
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return None
    return (a.mean() - b.mean()) / pooled


def _run_test(test: str, a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    from scipy import stats

    if test == "ttest_ind":
        if a.size < 2 or b.size < 2:
            return None, None
        fn = lambda: stats.ttest_ind(a, b)  # noqa: E731 - equal_var=True (SciPy default)
    elif a.size < 1:
        return None, None
    elif test == "wilcoxon":
        if not np.any(a != b):
            return None, None  # all differences zero: the signed-rank statistic is undefined
        fn = lambda: stats.wilcoxon(a, b)  # noqa: E731
    else:
        if a.size < 2:
            return None, None
        fn = lambda: stats.ttest_rel(a, b)  # noqa: E731
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            res = fn()
        except ValueError:
            return None, None
    stat, p = _finite(res.statistic), _finite(res.pvalue)
    return (stat, p) if p is not None else (None, None)


# --------------------------------------------------------------------------------------------
# analysis


def _criteria_order(names) -> list[str]:
    names = set(names)
    return [c for c in CRITERIA if c in names] + sorted(names - set(CRITERIA))


def _check_source_map(source_map: dict[str, dict], rated: set[str]) -> None:
    unmapped = sorted(rated - set(source_map))
    if unmapped:
        raise ValueError(f"ratings name source(s) {unmapped} that the source map lacks; "
                         f"mapped: {sorted(source_map)}")
    for label, spec in source_map.items():
        missing = [f for f in SOURCE_FIELDS if not spec.get(f)]
        if missing:
            raise ValueError(f"source map entry {label!r}: missing {missing}")


def _pipeline_numbers(source_map: dict[str, dict], sources: list[str],
                      consistency_summary: pl.DataFrame, accuracy: pl.DataFrame,
                      definition: str) -> dict[str, tuple[float | None, float | None]]:
    for name, df, cols in (("consistency_summary", consistency_summary, GROUP_KEYS + ["definition", "mean"]),
                           ("accuracy", accuracy, GROUP_KEYS + ["accuracy"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}")
    out = {}
    for label in sources:
        spec = source_map[label]
        sel = [pl.col(k) == spec[k] for k in GROUP_KEYS]
        group = ", ".join(f"{k}={spec[k]!r}" for k in GROUP_KEYS)
        cons = consistency_summary.filter(*sel, pl.col("definition") == definition)
        if cons.height != 1:
            what = "no row" if cons.height == 0 else f"{cons.height} rows"
            raise ValueError(f"source {label!r}: consistency_summary has {what} for ({group}, "
                             f"definition={definition!r})")
        acc = accuracy.filter(*sel)
        if acc.height == 0:
            raise ValueError(f"source {label!r}: accuracy has no row for ({group})")
        out[label] = (_finite(cons["mean"][0]), _finite(acc["accuracy"].mean()))
    return out


def _tests_for(criterion: str, by_source: dict[str, pl.DataFrame], sources: list[str]) -> list[dict]:
    rows = []
    for a, b in combinations(sources, 2):
        ra, rb = by_source[a], by_source[b]
        xa, xb = ra["rating"].to_numpy().astype(float), rb["rating"].to_numpy().astype(float)
        stat, p = _run_test("ttest_ind", xa, xb)
        rows.append({"criterion": criterion, "source_a": a, "source_b": b, "test": "ttest_ind",
                     "n": xa.size + xb.size, "statistic": stat, "p_value": p,
                     "cohens_d": _finite(cohens_d(xa, xb))})
        # Pairing by the explicit key (rater, item): a join, never row order.
        paired = ra.select("rater", "item", pl.col("rating").alias("a")).join(
            rb.select("rater", "item", pl.col("rating").alias("b")), on=["rater", "item"], how="inner"
        ).sort("rater", "item")
        pa, pb = paired["a"].to_numpy().astype(float), paired["b"].to_numpy().astype(float)
        for test in ("wilcoxon", "ttest_rel"):
            stat, p = _run_test(test, pa, pb)
            rows.append({"criterion": criterion, "source_a": a, "source_b": b, "test": test,
                         "n": paired.height, "statistic": stat, "p_value": p, "cohens_d": None})
    m = {t: sum(r["test"] == t for r in rows) for t in TESTS}
    for r in rows:
        r["p_adjusted"] = None if r["p_value"] is None else min(1.0, r["p_value"] * m[r["test"]])
    return rows


def analyze(ratings: pl.DataFrame, consistency_summary: pl.DataFrame, accuracy: pl.DataFrame, *,
            source_map: dict[str, dict], bootstrap: int = 1000, seed: int = 0,
            definition: str = "paper") -> dict[str, pl.DataFrame]:
    """The four preference tables (module docstring) from checked ratings and pipeline tables.

    `source_map` maps every ratings `source` label to {"condition": transfer|ensemble,
    "cot_source": ..., "variant": full|stripped, "dataset": ...}; its order is the sources'
    order in the outputs. Labels in the map but absent from the ratings are ignored; a rated
    label missing from the map, or a mapped group missing from the pipeline tables, is a
    ValueError. The bootstrap draws one (bootstrap × raters) index matrix from
    `numpy.random.default_rng(seed)` over the sorted rater names, shared by every criterion and
    metric, so results depend on neither row order nor criterion order.
    """
    missing = [c for c in RATING_COLUMNS if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings lack column(s) {missing}")
    rated = set(ratings["source"].unique().to_list())
    _check_source_map(source_map, rated)
    sources = [s for s in source_map if s in rated]
    criteria = _criteria_order(ratings["criterion"].unique().to_list())
    numbers = _pipeline_numbers(source_map, sources, consistency_summary, accuracy, definition)
    variants = {source_map[s]["variant"] for s in sources}
    corr_variant = variants.pop() if len(variants) == 1 else "mixed"

    raters = sorted(ratings["rater"].unique().to_list())
    rater_index = {r: i for i, r in enumerate(raters)}
    draws = None
    if bootstrap > 0 and raters:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(raters), size=(bootstrap, len(raters)))
        # weights[b, r] = how often rater r was drawn in resample b
        draws = np.zeros((bootstrap, len(raters)))
        np.add.at(draws, (np.repeat(np.arange(bootstrap), len(raters)), idx.ravel()), 1.0)

    means_rows, test_rows, point_rows, corr_rows = [], [], [], []
    for crit in criteria:
        sub = ratings.filter(pl.col("criterion") == crit)
        by_source = {s: sub.filter(pl.col("source") == s) for s in sources}
        present = [s for s in sources if by_source[s].height > 0]
        for s in present:
            x = by_source[s]["rating"].to_numpy().astype(float)
            means_rows.append({"source": s, "criterion": crit, "n": x.size, "mean": float(x.mean()),
                               "sd": float(x.std(ddof=1)) if x.size > 1 else None})
        test_rows += _tests_for(crit, by_source, present)

        # per-rater sums and counts (raters × sources) for the bootstrap of mean ratings
        sums = np.zeros((len(raters), len(present)))
        counts = np.zeros_like(sums)
        for k, s in enumerate(present):
            g = by_source[s].group_by("rater").agg(pl.col("rating").sum().alias("s"), pl.len().alias("c"))
            for r, sm, c in g.iter_rows():
                sums[rater_index[r], k] += sm
                counts[rater_index[r], k] += c
        mean_rating = sums.sum(axis=0) / counts.sum(axis=0)
        for k, s in enumerate(present):
            cons, acc = numbers[s]
            point_rows.append({"source": s, "criterion": crit, "variant": source_map[s]["variant"],
                               "mean_rating": float(mean_rating[k]), "consistency": cons, "accuracy": acc})
        for mi, metric in enumerate(("consistency", "accuracy")):
            keep = [k for k, s in enumerate(present) if numbers[s][mi] is not None]
            y = np.array([numbers[present[k]][mi] for k in keep], float)
            x = mean_rating[keep]
            lo = hi = None
            if draws is not None and len(keep) >= 2:
                with np.errstate(invalid="ignore", divide="ignore"):
                    boot_means = (draws @ sums[:, keep]) / (draws @ counts[:, keep])
                rs = _pearson_rows(boot_means, y)
                rs = rs[np.isfinite(rs)]
                if rs.size:
                    lo, hi = (float(v) for v in np.percentile(rs, [2.5, 97.5]))
            corr_rows.append({"criterion": crit, "variant": corr_variant, "metric": metric,
                              "pearson_r": _pearson(x, y), "spearman_rho": _spearman(x, y),
                              "ci_low": lo, "ci_high": hi, "n_sources": len(keep)})

    return {
        "preference_means": pl.DataFrame(means_rows, schema=MEANS_SCHEMA),
        "preference_tests": pl.DataFrame(test_rows, schema=TESTS_SCHEMA),
        "preference_correlation": pl.DataFrame(corr_rows, schema=CORRELATION_SCHEMA),
        "preference_points": pl.DataFrame(point_rows, schema=POINTS_SCHEMA),
    }
