"""Which part of a CoT transfers: prefix transfer and sentence importance (docs/probe.md).

Two probes of a model source A's greedy CoTs, both prefilled into every evaluator B through the
transfer stage's batched, cached inference (`cotransfer.stages.probe`):

- **prefix transfer** (condition `prefix`): each CoT cut at sentence ends to fractions of its
  length (`prefix_cut`). Fraction 0 is an empty thought, 1 the whole CoT: the very request of
  the transfer condition (and, for 0, of the empty condition), so both come from the request
  cache. How far in does B reach A's answer?
- **sentence importance** (condition `drop_one`): on a subset of items, each CoT with one
  sentence left out at a time (`drop_sentence`), next to the whole CoT (`dropped` = -1). A
  sentence's importance for B is how much B's agreement with A's answer falls without it.

The answers of both go into the answers table with the key columns `fraction` and `dropped`
(PROBE_KEY_SCHEMA). This module builds the CoTs the probes prefill; `cotransfer.probe_metrics`
the tables read from their answers.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import polars as pl

from cotransfer.sentences import Sentence
from cotransfer.strip import check_spans

PROBE_CONDITIONS = ("prefix", "drop_one")
FULL = -1  # `dropped` of the whole CoT, the baseline of a drop-one set

#: the extra columns of probe rows in generation and answers tables
PREFIX_COLUMNS = {"fraction": pl.Float64, "kept_share": pl.Float64}
DROP_COLUMNS = {"dropped": pl.Int64, "dropped_text": pl.String, "n_sentences": pl.Int64}
#: their key columns: with (item, sample) they identify a probe row of one output; the metrics
#: fold a non-null value into the row's condition label ("prefix@0.4", "drop_one@2")
PROBE_KEY_SCHEMA = {"fraction": pl.Float64, "dropped": pl.Int64}

# --------------------------------------------------------------------------------------------
# the CoTs the probes prefill


def prefix_cut(cot: str, sentences: Sequence[Sentence], fraction: float) -> int:
    """Where a CoT is cut for `fraction` of its characters: 0 for fraction 0, the whole CoT for
    1, else the sentence end nearest `fraction * len(cot)` (0 included; a tie goes to the longer
    prefix). A cut never falls inside a sentence."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if fraction >= 1.0:
        return len(cot)
    if fraction <= 0.0 or not sentences:
        return 0
    target = fraction * len(cot)
    return min([0, *(s.end for s in sentences)], key=lambda e: (abs(e - target), -e))


def drop_sentence(cot: str, sentences: Sequence[Sentence], index: int) -> str:
    """The CoT without sentence `index`: every other sentence, in order, with the original text
    between them. The dropped sentence goes with the space after it (the one before it, for the
    last sentence), so nothing else changes."""
    n = len(sentences)
    if not 0 <= index < n:
        raise IndexError(f"sentence {index} of a CoT with {n} sentences")
    if index < n - 1:
        return cot[:sentences[index].start] + cot[sentences[index + 1].start:]
    return cot[:sentences[index - 1].end] if index else ""


def spans_by_cot(sentences: pl.DataFrame) -> dict[tuple[str, int], list[Sentence]]:
    """The split stage's sentence table as spans per (item_id, sample), in order."""
    spans: dict[tuple[str, int], list[Sentence]] = {}
    for r in sentences.sort("item_id", "sample", "sentence_idx").iter_rows(named=True):
        spans.setdefault((r["item_id"], r["sample"]), []).append(
            Sentence(r["sentence_idx"], r["char_start"], r["char_end"], r["text"]))
    return spans


def _checked_spans(cot: str, spans: list[Sentence], source: str, item_id: str) -> list[Sentence]:
    try:
        check_spans(cot, spans)
    except ValueError as err:
        raise ValueError(f"{source}, item {item_id}: the sentence table does not match the CoT table "
                         f"({err}); re-run the split stage (`snakemake -R split`)") from None
    return spans


def prefix_cots(cots: pl.DataFrame, spans: Mapping[tuple[str, int], list[Sentence]],
                fractions: Sequence[float]) -> pl.DataFrame:
    """One row per (CoT, fraction): item_id, sample, cot (the prefix), fraction, kept_share (the
    prefix's share of the CoT's characters)."""
    rows = []
    for r in cots.select("item_id", "sample", "cot", "cot_source").iter_rows(named=True):
        cot = r["cot"] or ""
        ss = _checked_spans(cot, spans.get((r["item_id"], r["sample"]), []), r["cot_source"], r["item_id"])
        for f in fractions:
            cut = prefix_cut(cot, ss, f)
            rows.append({"item_id": r["item_id"], "sample": r["sample"], "cot": cot[:cut], "fraction": float(f),
                         "kept_share": cut / len(cot) if cot else 0.0})
    return pl.DataFrame(rows, schema={"item_id": pl.String, "sample": pl.Int64, "cot": pl.String, **PREFIX_COLUMNS})


def importance_items(item_ids: Sequence[str], n: int | None, seed: int) -> list[str]:
    """The items of the importance probe: all (`n` None or at least the count), else a seeded
    sample of `n`, in id order."""
    ids = sorted(item_ids)
    if n is None or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))


def drop_one_cots(cots: pl.DataFrame, spans: Mapping[tuple[str, int], list[Sentence]], items: Sequence[str],
                  samples: int = 1) -> pl.DataFrame:
    """For every CoT of `items`: the whole CoT (`dropped` = -1) and the CoT without each of its
    sentences in turn, each `samples` times (sample 0..samples-1). Columns: item_id, sample, cot,
    dropped, dropped_text, n_sentences. Only sample-0 CoTs are read (the greedy CoTs)."""
    keep = set(items)
    rows = []
    for r in cots.filter(pl.col("sample") == 0).select("item_id", "cot", "cot_source").iter_rows(named=True):
        if r["item_id"] not in keep:
            continue
        cot = r["cot"] or ""
        ss = _checked_spans(cot, spans.get((r["item_id"], 0), []), r["cot_source"], r["item_id"])
        variants = [(FULL, cot, None)] + [(i, drop_sentence(cot, ss, i), s.text) for i, s in enumerate(ss)]
        for s in range(samples):
            rows += [{"item_id": r["item_id"], "sample": s, "cot": text, "dropped": i, "dropped_text": t,
                      "n_sentences": len(ss)} for i, text, t in variants]
    return pl.DataFrame(rows, schema={"item_id": pl.String, "sample": pl.Int64, "cot": pl.String, **DROP_COLUMNS})
