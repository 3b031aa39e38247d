"""Scoring: generation tables in, answers-table rows out, through the dataset's adapter.

Used by the pipeline's score rule and by `cotransfer score`, so a scorer fix re-scores finished
generations without any GPU time. Parsing sees only `answer_text` (what the evaluator wrote after
its thinking section), never the prompt or the thinking (method.md pitfall 6).
"""

from __future__ import annotations

import polars as pl

from cotransfer.config import DatasetSpec
from cotransfer.datasets import get_adapter

ANSWER_COLUMNS = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample",
                  "fraction", "dropped", "answer", "valid", "correct", "score", "category"]
SCORE_SCHEMA = {"answer": pl.String, "valid": pl.Boolean, "correct": pl.Boolean, "score": pl.Float64,
                "parse_status": pl.String, "category": pl.String}


def score_generations(spec: DatasetSpec, items: pl.DataFrame, generations: pl.DataFrame,
                      answer_scope: str = "answer") -> pl.DataFrame:
    """Add `answer`, `valid`, `correct`, `score`, `parse_status` and `category` to every generation row.

    `score` is the adapter's per-answer score in [0, 1] (`Scored.score`: the similarity for
    Instruction Induction, 1.0/0.0 for correct/incorrect elsewhere, null when it cannot be
    judged); `category` is the item's category (`DatasetAdapter.category`: MedCalc's `Category`,
    null for datasets without one). A row whose item is unknown is an input error and fails
    loudly, naming the ids; a row whose text cannot be parsed is recorded invalid (never a
    crash). Flagged rows (e.g. a prompt that did not fit) are scored like any other: their answer
    text is usually empty, hence invalid.

    `answer_scope="paper"` (`compat.answer_scope`) parses prompt + thinking + answer instead, as
    the original did: the last match anywhere, so an answer the evaluator failed to give can be
    found in the prompt or the (prefilled) CoT.
    """
    import json

    for col in ("item_id", "answer_text"):
        if col not in generations.columns:
            raise ValueError(f"generations table lacks the column {col!r} (has: {generations.columns})")
    adapter = get_adapter(spec.adapter)(spec)
    by_id = {}
    for r in items.iter_rows(named=True):
        r = dict(r)
        r["meta"] = json.loads(r["meta"]) if isinstance(r.get("meta"), str) else (r.get("meta") or {})
        by_id[str(r["item_id"])] = r
    ids = generations["item_id"].cast(pl.String).to_list()
    unknown = sorted(set(ids) - by_id.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} generation rows name items not in the dataset: {unknown[:5]}")
    categories = {i: adapter.category(item) for i, item in by_id.items()}
    out = {k: [] for k in SCORE_SCHEMA}
    if answer_scope not in ("answer", "paper"):
        raise ValueError(f"answer_scope: expected answer or paper, got {answer_scope!r}")
    texts = generations["answer_text"]
    if answer_scope == "paper":
        texts = generations.select(pl.concat_str([pl.col(c).fill_null("") for c in ("prompt", "thinking", "answer_text")
                                                  if c in generations.columns]))[:, 0]
    for item_id, text in zip(ids, texts.to_list()):
        s = adapter.parse_and_score(text, by_id[item_id])
        out["answer"].append(s.answer)
        out["valid"].append(bool(s.valid))
        out["correct"].append(s.correct)
        out["score"].append(None if s.score is None else float(s.score))
        out["parse_status"].append(s.status)
        out["category"].append(categories[item_id])
    drop = [c for c in SCORE_SCHEMA if c in generations.columns]
    return generations.drop(drop).with_columns(pl.DataFrame(out, schema=SCORE_SCHEMA))
