"""The probes' tables (docs/probe.md), from the answers table's `prefix` and `drop_one` rows.

Agreement is always with the source's own default (greedy, full) answer, and an invalid or
missing answer on either side counts as disagreement.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cotransfer.probe import DROP_COLUMNS, FULL, PREFIX_COLUMNS
from cotransfer.strip import ends_on_answer

TRANSFER_POINT_SHARE = 0.9  # the transfer point: agreement first reaches this share of its value at 1.0

PREFIX_TRANSFER_SCHEMA = {
    "dataset": pl.String, "cot_source": pl.String, "fraction": pl.Float64, "evaluator": pl.String,
    "n": pl.Int64, "source_agreement": pl.Float64, "agreement_lo": pl.Float64, "agreement_hi": pl.Float64,
    "accuracy": pl.Float64, "kept_share": pl.Float64, "transfer_point": pl.Float64,
}
PREFIX_SUMMARY_SCHEMA = {
    "dataset": pl.String, "cot_source": pl.String, "fraction": pl.Float64, "n_readers": pl.Int64,
    "mean_agreement": pl.Float64, "mean_agreement_others": pl.Float64, "n_pairs": pl.Int64,
    "consistency": pl.Float64,
}
IMPORTANCE_SCHEMA = {
    "dataset": pl.String, "cot_source": pl.String, "item_id": pl.String, "sentence_idx": pl.Int64,
    "n_sentences": pl.Int64, "position": pl.Float64, "text": pl.String, "states_answer": pl.Boolean,
    "evaluator": pl.String, "n_samples": pl.Int64, "agreement_full": pl.Float64,
    "agreement_dropped": pl.Float64, "importance": pl.Float64,
}
IMPORTANCE_CORRELATION_SCHEMA = {
    "dataset": pl.String, "cot_source": pl.String, "evaluator_a": pl.String, "evaluator_b": pl.String,
    "kind": pl.String, "n": pl.Int64, "spearman": pl.Float64, "p_value": pl.Float64,
}
PROBE_TABLES = {"prefix_transfer": PREFIX_TRANSFER_SCHEMA, "prefix_summary": PREFIX_SUMMARY_SCHEMA,
                "sentence_importance": IMPORTANCE_SCHEMA, "importance_correlation": IMPORTANCE_CORRELATION_SCHEMA}


# --------------------------------------------------------------------------------------------
# tables from the answers


def source_answers(answers: pl.DataFrame) -> pl.DataFrame:
    """Each model's own default answer per item: the greedy free run (default, full, sample 0)."""
    return (answers.filter((pl.col("condition") == "default") & (pl.col("variant") == "full")
                           & (pl.col("sample") == 0) & pl.col("cot_source").is_null())
            .select("dataset", "item_id", cot_source="evaluator", source_answer="answer", source_valid="valid"))


def _agreement(rows: pl.DataFrame, answers: pl.DataFrame) -> pl.DataFrame:
    """`rows` with `agree`: a valid answer equal to the source's valid default answer (a missing
    or invalid answer on either side is a disagreement)."""
    return (rows.join(source_answers(answers), on=["dataset", "item_id", "cot_source"], how="left")
            .with_columns(agree=(pl.col("valid") & pl.col("source_valid").fill_null(False)
                                 & (pl.col("answer") == pl.col("source_answer"))).fill_null(False)))


def _probe_rows(answers: pl.DataFrame, condition: str, columns: Mapping[str, pl.DataType]) -> pl.DataFrame:
    missing = [c for c in columns if c not in answers.columns]
    rows = answers.filter(pl.col("condition") == condition)
    if missing:
        if rows.height:
            raise ValueError(f"the answers table has {condition} rows but lacks the columns {missing}")
        rows = rows.with_columns(pl.lit(None, t).alias(c) for c, t in columns.items() if c in missing)
    return rows


def _bootstrap_interval(values: np.ndarray, bootstrap: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CIs of the column means of (items, k) `values` (NaN: no row) over items."""
    from cotransfer.metrics import _interval, _ratio, _resampled

    present = ~np.isnan(values)
    k = values.shape[1]  # numerators and denominators resampled with the same item weights
    both = _resampled(np.hstack([np.where(present, values, 0.0), present.astype(np.float64)]), bootstrap, rng)
    return _interval(_ratio(both[:, :k], both[:, k:]))


def prefix_transfer(answers: pl.DataFrame, *, bootstrap: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Per (dataset, source, fraction, reader): `n` items, `source_agreement` (share of items
    whose answer equals the source's default answer; several samples are averaged per item
    first) with a percentile bootstrap CI over items, `accuracy`, `kept_share` (the mean share of
    the CoT's characters kept) and `transfer_point`: the smallest fraction at which the reader's
    agreement reaches 90% of its value at fraction 1.0 (null without a positive value there)."""
    from cotransfer.metrics import _rng

    rows = _probe_rows(answers, "prefix", PREFIX_COLUMNS)
    if not rows.height:
        return pl.DataFrame(schema=PREFIX_TRANSFER_SCHEMA)
    keys = ["dataset", "cot_source", "fraction", "evaluator"]
    per_item = (_agreement(rows, answers)
                .group_by(*keys, "item_id")
                .agg(agree=pl.col("agree").cast(pl.Float64).mean(),
                     correct=pl.col("correct").fill_null(False).cast(pl.Float64).mean(),
                     kept_share=pl.col("kept_share").mean()))
    table = (per_item.group_by(keys)
             .agg(n=pl.len().cast(pl.Int64), source_agreement=pl.col("agree").mean(),
                  accuracy=pl.col("correct").mean(), kept_share=pl.col("kept_share").mean())
             .sort(keys))
    cis = []
    for (dataset, source, reader), part in per_item.group_by("dataset", "cot_source", "evaluator"):
        wide = part.pivot(on="fraction", index="item_id", values="agree").sort("item_id")
        fractions = [c for c in wide.columns if c != "item_id"]
        if bootstrap > 0 and wide.height:
            lo, hi = _bootstrap_interval(wide.select(fractions).to_numpy().astype(np.float64), bootstrap,
                                         _rng(seed, "prefix_transfer", dataset, source, reader))
        else:
            lo = hi = np.full(len(fractions), np.nan)
        cis.append(pl.DataFrame({"dataset": dataset, "cot_source": source, "evaluator": reader,
                                 "fraction": [float(f) for f in fractions], "agreement_lo": lo, "agreement_hi": hi},
                                schema_overrides={"agreement_lo": pl.Float64, "agreement_hi": pl.Float64}))
    table = table.join(pl.concat(cis).fill_nan(None), on=["dataset", "cot_source", "evaluator", "fraction"], how="left")
    full = (table.filter(pl.col("fraction") == 1.0)
            .select("dataset", "cot_source", "evaluator", at_full="source_agreement"))
    points = (table.join(full, on=["dataset", "cot_source", "evaluator"], how="left")
              .filter((pl.col("at_full") > 0)
                      & (pl.col("source_agreement") >= TRANSFER_POINT_SHARE * pl.col("at_full") - 1e-12))
              .group_by("dataset", "cot_source", "evaluator").agg(transfer_point=pl.col("fraction").min()))
    table = table.join(points, on=["dataset", "cot_source", "evaluator"], how="left")
    return table.select(list(PREFIX_TRANSFER_SCHEMA)).cast(PREFIX_TRANSFER_SCHEMA).sort(keys)


def prefix_summary(answers: pl.DataFrame, prefix_table: pl.DataFrame) -> pl.DataFrame:
    """Per (dataset, source, fraction): the readers' mean agreement with the source (all of
    them, and without the source reading its own CoT), and the mean pairwise consistency of the
    readers' answers (`metrics.consistency`, paper definition) over `n_pairs` reader pairs."""
    from cotransfer.metrics import consistency

    if not prefix_table.height:
        return pl.DataFrame(schema=PREFIX_SUMMARY_SCHEMA)
    keys = ["dataset", "cot_source", "fraction"]
    agreement = (prefix_table.group_by(keys)
                 .agg(n_readers=pl.len().cast(pl.Int64), mean_agreement=pl.col("source_agreement").mean(),
                      mean_agreement_others=pl.col("source_agreement")
                      .filter(pl.col("evaluator") != pl.col("cot_source")).mean()))
    rows = _probe_rows(answers, "prefix", PREFIX_COLUMNS)
    pairs = (consistency(rows)  # the fraction is folded into the condition label ("prefix@0.4")
             .with_columns(fraction=pl.col("condition").str.split("@").list.get(1).cast(pl.Float64))
             .group_by(keys)
             .agg(n_pairs=pl.col("consistency").drop_nulls().len().cast(pl.Int64),
                  consistency=pl.col("consistency").mean()))
    out = agreement.join(pairs, on=keys, how="left").with_columns(pl.col("n_pairs").fill_null(0))
    return out.select(list(PREFIX_SUMMARY_SCHEMA)).cast(PREFIX_SUMMARY_SCHEMA).sort(keys)


def sentence_importance(answers: pl.DataFrame) -> pl.DataFrame:
    """Per (dataset, source, item, sentence, reader): the reader's agreement with the source's
    answer on the whole CoT and without the sentence (each averaged over samples), and
    `importance` = the first minus the second. `position` is the sentence's relative place in its
    CoT (0 first, 1 last; 0 for a one-sentence CoT); `states_answer` whether it arrives at the
    source's answer (`strip.ends_on_answer`: its last number is a numeric answer's value, or it
    contains any other answer)."""
    rows = _probe_rows(answers, "drop_one", DROP_COLUMNS)
    if not rows.height:
        return pl.DataFrame(schema=IMPORTANCE_SCHEMA)
    keys = ["dataset", "cot_source", "item_id", "evaluator"]
    agree = (_agreement(rows, answers)
             .group_by(*keys, "dropped")
             .agg(n_samples=pl.len().cast(pl.Int64), agreement=pl.col("agree").cast(pl.Float64).mean(),
                  text=pl.col("dropped_text").first(), n_sentences=pl.col("n_sentences").first(),
                  source_answer=pl.col("source_answer").first()))
    full = agree.filter(pl.col("dropped") == FULL).select(*keys, agreement_full="agreement")
    table = (agree.filter(pl.col("dropped") != FULL)
             .join(full, on=keys, how="left")
             .with_columns(sentence_idx="dropped", agreement_dropped="agreement",
                           importance=pl.col("agreement_full") - pl.col("agreement"),
                           position=pl.when(pl.col("n_sentences") > 1)
                           .then(pl.col("dropped") / (pl.col("n_sentences") - 1)).otherwise(0.0)))
    stated = [ends_on_answer(t or "", a) for t, a in table.select("text", "source_answer").iter_rows()]
    table = table.with_columns(states_answer=pl.Series(stated, dtype=pl.Boolean))
    return (table.select(list(IMPORTANCE_SCHEMA)).cast(IMPORTANCE_SCHEMA)
            .sort("dataset", "cot_source", "item_id", "sentence_idx", "evaluator"))


def importance_correlation(importance: pl.DataFrame) -> pl.DataFrame:
    """Does what carries A's CoT for reader B also carry it for reader C? Per (dataset, source)
    and reader pair: Spearman's rank correlation (and its p-value) of the sentences' importance,
    over the `n` sentences both readers have. `kind`: `self` when one reader is the source
    itself, else `others`. Null where either side has no variance."""
    from scipy.stats import spearmanr

    out = []
    for (dataset, source), part in importance.group_by("dataset", "cot_source", maintain_order=True):
        wide = part.pivot(on="evaluator", index=["item_id", "sentence_idx"], values="importance")
        readers = sorted(c for c in wide.columns if c not in ("item_id", "sentence_idx"))
        for i, a in enumerate(readers):
            for b in readers[i + 1:]:
                both = wide.select(a, b).drop_nulls()
                x, y = both[a].to_numpy(), both[b].to_numpy()
                rho = p = None
                if both.height >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    res = spearmanr(x, y)
                    rho, p = float(res.statistic), float(res.pvalue)
                out.append({"dataset": dataset, "cot_source": source, "evaluator_a": a, "evaluator_b": b,
                            "kind": "self" if source in (a, b) else "others", "n": both.height,
                            "spearman": rho, "p_value": p})
    return pl.DataFrame(out, schema=IMPORTANCE_CORRELATION_SCHEMA).sort("dataset", "cot_source", "evaluator_a",
                                                                        "evaluator_b")


def probe_tables(answers: pl.DataFrame, *, bootstrap: int, seed: int) -> dict[str, pl.DataFrame]:
    """Every probe table of the answers table (empty tables where a probe did not run)."""
    prefix = prefix_transfer(answers, bootstrap=bootstrap, seed=seed)
    importance = sentence_importance(answers)
    return {"prefix_transfer": prefix, "prefix_summary": prefix_summary(answers, prefix),
            "sentence_importance": importance, "importance_correlation": importance_correlation(importance)}
