"""Instruction Induction pairwise consistency (method.md §8.3).

Free-text instructions rarely match word for word, so the consistency of two evaluators on an
Instruction Induction dataset is a similarity, not the equality rule of §8.1:

1. The answers are the adapter's normalized answers (the answers table's `answer`, written by
   `instruction_induction.normalize_instruction`: the text after the last `The instruction is:`
   lead-in, Markdown marks removed, lowercased, trimmed; it also keeps the first line and
   sentence and drops punctuation, as the accuracy's normalization of §4.2 does). They are not
   normalized a second time here: one normalizer serves accuracy and consistency.
2. Pairs: within each condition group (dataset, condition, variant, cot_source), every
   unordered evaluator pair present in the group (evaluator_a < evaluator_b), joined on
   (item_id, sample).
3. A row scores 0 when either answer is shorter than 3 characters; an invalid answer (`valid`
   false, `answer` null) counts as such, so it scores 0 and is *not* excluded (unlike §8.1).
4. Otherwise the row's score is, under definition `paper`, the symmetrized similarity
   (sim(a, b) + sim(b, a)) / 2 from the dataset's similarity backend (`Backend.pair_scores`;
   with `bertscore`, §8.3's BERTScore F1 without idf), and under `strict` 1 if the normalized
   answers are equal, else 0.
5. Mean over the rows of a task (its items, times samples under `sampled`), then the mean over
   the tasks, giving one value per pair. The task of an item is read from its id
   (`instruction_induction.task_of`).

Output: the `consistency` table's columns (dataset, condition, variant, cot_source, evaluator_a,
evaluator_b, n, consistency, definition): `paper` rows, then `strict` rows, each sorted by the
keys (nulls last). `n` counts the rows scored; a pair that shares no (item_id, sample) keeps its
row with n = 0 and a null consistency, as in `metrics.consistency`.

The backend is called once for the whole table, on the distinct (unordered) answer pairs.
"""

from __future__ import annotations

import polars as pl

from cotransfer.datasets.instruction_induction import MIN_ANSWER_CHARS, TASK_SEPARATOR
from cotransfer.similarity import Backend

# the `consistency` table's keys and definitions, as metrics.py names them (not imported from there
# at module level: metrics may import this module)
GROUP_KEYS = ["dataset", "condition", "variant", "cot_source"]
PAIR = ["evaluator_a", "evaluator_b"]
DEFINITIONS = ("paper", "strict")
CONSISTENCY_SCHEMA = {"dataset": pl.String, "condition": pl.String, "variant": pl.String,
                      "cot_source": pl.String, "evaluator_a": pl.String, "evaluator_b": pl.String,
                      "n": pl.Int64, "consistency": pl.Float64, "definition": pl.String}


def task_of_item() -> pl.Expr:
    """An Instruction Induction item's task, from its id (`task:example`)."""
    return pl.col("item_id").str.split(TASK_SEPARATOR).list.first()


def ii_task_accuracy(answers: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Mean score per (dataset, condition, variant, cot_source, task, evaluator) of Instruction
    Induction answers (F11's per-task accuracy; the score is the similarity, null as 0)."""
    return (answers.lazy().with_columns(task=task_of_item())
            .group_by(*GROUP_KEYS, "task", "evaluator")
            .agg(accuracy=pl.col("score").fill_null(0.0).mean())
            .sort(*GROUP_KEYS, "task", "evaluator", nulls_last=True)
            .collect())


def ii_consistency(answers: pl.LazyFrame | pl.DataFrame, backend: Backend) -> pl.DataFrame:
    """Pairwise consistency of one Instruction Induction dataset's answers (module docstring).

    `answers` is the answers table (checked by `metrics.validate_answers`) of one dataset; rows of
    more than one dataset are an error, since each dataset has its own backend. `backend` is that
    dataset's similarity backend: `similarity.get_backend(spec.opts, where=...)`.
    """
    return ii_consistency_tables(answers, backend)[0]


def ii_consistency_tables(answers: pl.LazyFrame | pl.DataFrame, backend: Backend) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(`ii_consistency`'s table, the same per task) from one pass over the backend. The per-task
    table (F11's heatmap): GROUP, evaluator_a, evaluator_b, task, n, consistency, definition."""
    from cotransfer import metrics

    lf = metrics.validate_answers(answers)
    datasets = lf.select(pl.col("dataset").unique()).collect()["dataset"].to_list()
    if len(datasets) > 1:
        raise ValueError(f"ii_consistency: one dataset at a time (each has its own similarity backend); "
                         f"got {sorted(datasets, key=str)}")
    # the answer that counts: valid and at least 3 characters, else null (scores 0)
    rows = lf.select(*GROUP_KEYS, "item_id", "sample", "evaluator",
                     answer=pl.when(pl.col("valid") & (pl.col("answer").str.len_chars() >= MIN_ANSWER_CHARS))
                     .then(pl.col("answer")))
    pairs = (rows.join(rows, on=[*GROUP_KEYS, "item_id", "sample"], nulls_equal=True, suffix="_b")
             .filter(pl.col("evaluator") < pl.col("evaluator_b"))
             .rename({"evaluator": "evaluator_a"})
             .with_columns(task=task_of_item(),
                           lo=pl.min_horizontal("answer", "answer_b"),
                           hi=pl.max_horizontal("answer", "answer_b"),
                           scored=pl.col("answer").is_not_null() & pl.col("answer_b").is_not_null())
             .collect())
    distinct = pairs.filter("scored").select("lo", "hi").unique(maintain_order=True)
    similarity = distinct.with_columns(
        sim=pl.Series(backend.pair_scores(distinct["lo"].to_list(), distinct["hi"].to_list()), dtype=pl.Float64))
    scored = (pairs.join(similarity, on=["lo", "hi"], how="left")
              .with_columns(paper=pl.when("scored").then(pl.col("sim")).otherwise(0.0),
                            strict=pl.when("scored").then((pl.col("answer") == pl.col("answer_b")).cast(pl.Float64))
                            .otherwise(0.0)))
    per_task = (scored.group_by(*GROUP_KEYS, *PAIR, "task")
                .agg(pl.len().alias("n"), *(pl.col(d).mean() for d in DEFINITIONS)))
    per_pair = (per_task.group_by(*GROUP_KEYS, *PAIR)
                .agg(pl.col("n").sum(), *(pl.col(d).mean() for d in DEFINITIONS)))
    evaluators = rows.select(*GROUP_KEYS, "evaluator").unique().collect()
    all_pairs = (evaluators.join(evaluators, on=GROUP_KEYS, nulls_equal=True, suffix="_b")
                 .filter(pl.col("evaluator") < pl.col("evaluator_b"))
                 .rename({"evaluator": "evaluator_a"}))
    table = all_pairs.join(per_pair, on=[*GROUP_KEYS, *PAIR], how="left", nulls_equal=True)
    parts = [table.select(*GROUP_KEYS, *PAIR, n=pl.col("n").fill_null(0), consistency=pl.col(d),
                          definition=pl.lit(d))
             .cast(CONSISTENCY_SCHEMA)
             .sort([*GROUP_KEYS, *PAIR], nulls_last=True)
             for d in DEFINITIONS]
    task_parts = [per_task.select(*GROUP_KEYS, *PAIR, "task", n=pl.col("n").cast(pl.Int64),
                                  consistency=pl.col(d).cast(pl.Float64), definition=pl.lit(d))
                  .sort([*GROUP_KEYS, *PAIR, "task"], nulls_last=True)
                  for d in DEFINITIONS]
    return pl.concat(parts), pl.concat(task_parts)
