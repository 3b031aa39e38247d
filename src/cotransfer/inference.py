"""The inference stages: free runs (empty, default, sampled) and prefilled runs (transfer, ensemble,
stripped self-prefill), turned into generation tables.

Generation table, one row per (item, sample) of one evaluator under one condition:

    dataset, item_id, condition, variant, cot_source, evaluator, sample,
    prompt            the exact prompt string sent (special tokens kept)
    thinking          the CoT: generated (free runs) or prefilled (everything else)
    answer_text       what the evaluator wrote after its thinking section
    closed            the thinking section was closed by the model (free runs; true when prefilled)
    finish_reason     of the call that produced the answer ("stop", "length", "error:...")
    thinking_tokens, answer_tokens, budget_exhausted, seed
    flag              null, or why the row is suspect: no_close, empty_answer, answer_cut,
                      prompt_too_long (the row is kept and scored invalid, never dropped)

A free run has two phases (method.md section 3): the thinking phase up to the thinking budget;
then, for every row whose thinking was not closed, the closer and answer opener are appended and
the answer phase runs. Each phase is one batched call over all rows of the job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import polars as pl

from cotransfer.config import GREEDY, Sampling, Study
from cotransfer.engine import Completion, Engine, Request, derive_seed
from cotransfer.formats import Format, get_format

log = logging.getLogger(__name__)

GEN_SCHEMA = {
    "dataset": pl.String, "item_id": pl.String, "condition": pl.String, "variant": pl.String,
    "cot_source": pl.String, "evaluator": pl.String, "sample": pl.Int64, "prompt": pl.String,
    "thinking": pl.String, "answer_text": pl.String, "closed": pl.Boolean,
    "finish_reason": pl.String, "thinking_tokens": pl.Int64, "answer_tokens": pl.Int64,
    "budget_exhausted": pl.Boolean, "seed": pl.Int64, "flag": pl.String,
}
COT_SCHEMA = {"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64,
              "cot_source": pl.String, "cot": pl.String}


def messages(item: dict) -> list[dict]:
    msgs = [{"role": "system", "content": item["system"]}] if item.get("system") else []
    return msgs + [{"role": "user", "content": item["user"]}]


@dataclass(frozen=True)
class Job:
    """What every inference stage needs: the study, the dataset, the evaluator and its engine."""

    study: Study
    dataset: str
    evaluator: str
    engine: Engine

    @property
    def fmt(self) -> Format:
        return get_format(self.study.model(self.evaluator).family)

    def prompt(self, item: dict) -> str:
        spec = self.study.model(self.evaluator)
        kwargs = {"reasoning_effort": spec.reasoning_effort} if spec.family == "harmony" else {}
        return self.fmt.prompt(self.engine.tokenizer, messages(item), **kwargs)

    def seed(self, condition: str, item_id: str, sample: int) -> int:
        return derive_seed(self.study.decoding.seed, self.dataset, condition, self.evaluator,
                           item_id, sample)

    def row(self, item_id, condition, variant, cot_source, sample, prompt, thinking, answer: Completion,
            *, closed: bool, thinking_tokens: int, budget_exhausted: bool, seed) -> dict:
        text = answer.text
        ans = self.fmt.answer_text(text)
        flag = None
        if answer.finish_reason.startswith("error:"):
            flag = answer.finish_reason.removeprefix("error:")
        elif not closed:
            flag = "no_close"
        elif answer.finish_reason == "length":
            flag = "answer_cut"
        elif not ans:
            flag = "empty_answer"
        return {
            "dataset": self.dataset, "item_id": item_id, "condition": condition, "variant": variant,
            "cot_source": cot_source, "evaluator": self.evaluator, "sample": sample,
            "prompt": prompt, "thinking": thinking, "answer_text": ans, "closed": closed,
            "finish_reason": answer.finish_reason, "thinking_tokens": thinking_tokens,
            "answer_tokens": answer.n_tokens, "budget_exhausted": budget_exhausted,
            "seed": seed, "flag": flag,
        }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=GEN_SCHEMA)


def free_run(job: Job, items: list[dict], condition: str, sampling: Sampling, n_samples: int) -> pl.DataFrame:
    """Default (greedy) or sampled run: the evaluator writes its own CoT, then answers."""
    dec = job.study.decoding
    keys, prompts, reqs = [], [], []
    for item in items:
        prompt = job.prompt(item)
        for s in range(n_samples):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            keys.append((item["item_id"], s, seed))
            prompts.append(prompt)
            reqs.append(Request(prompt, dec.thinking_budget, sampling, seed, job.fmt.stops))
    phase1 = job.engine.generate(reqs, what=f"{condition} thinking phase")

    # Rows whose thinking is closed and whose answer ended on its own are finished; the rest get
    # the answer phase: closed by us if the model did not, continued if it was cut after closing.
    fmt = job.fmt
    splits = [fmt.split(c.text) for c in phase1]
    need = [i for i, (c, sp) in enumerate(zip(phase1, splits))
            if not c.finish_reason.startswith("error:") and (not sp.closed or c.finish_reason == "length")]
    p2_reqs = []
    for i in need:
        sp, c = splits[i], phase1[i]
        prefix = prompts[i] + c.text if sp.closed else fmt.close(prompts[i], sp.thinking)
        p2_reqs.append(Request(prefix, dec.answer_max_tokens, sampling, keys[i][2], fmt.stops))
    phase2 = dict(zip(need, job.engine.generate(p2_reqs, what=f"{condition} answer phase")))

    rows = []
    for i, ((item_id, s, seed), c, sp) in enumerate(zip(keys, phase1, splits)):
        answer = c
        if i in phase2:
            extra = phase2[i]
            answer = Completion((sp.answer + extra.text) if sp.closed else extra.text,
                                extra.n_tokens, extra.finish_reason)
        elif sp.closed:
            answer = Completion(sp.answer, 0, c.finish_reason)
        rows.append(job.row(
            item_id, condition, "full", None, s, prompts[i], sp.thinking, answer,
            closed=sp.closed, thinking_tokens=c.n_tokens if not sp.closed else job.engine.count_tokens(sp.thinking),
            budget_exhausted=(c.finish_reason == "length" and not sp.closed), seed=seed,
        ))
    return frame(rows)


def prefilled_run(job: Job, items: list[dict], cots: pl.DataFrame | None, *, condition: str,
                  variant: str | None, cot_source: str | None, sampling: Sampling = GREEDY) -> pl.DataFrame:
    """One answer-phase call per (item, sample) on the prompt with a given CoT, closed.

    `cots` has columns item_id, sample, cot (COT_SCHEMA); None means the empty condition. Items
    with no CoT in `cots` (the source failed on them) get an empty CoT and the flag `no_source_cot`.
    """
    dec = job.study.decoding
    by_item: dict[str, list[tuple[int, str]]] = {}
    if cots is not None:
        for r in cots.select("item_id", "sample", "cot").iter_rows(named=True):
            by_item.setdefault(r["item_id"], []).append((r["sample"], r["cot"] or ""))
    keys, prompts, reqs, thinkings = [], [], [], []
    missing = set()
    for item in items:
        base = job.prompt(item)
        entries = [(0, "")] if cots is None else by_item.get(item["item_id"])
        if not entries:
            entries = [(0, "")]
            missing.add(item["item_id"])
        for s, cot in sorted(entries):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            prompt = job.fmt.prefill(base, cot)
            keys.append((item["item_id"], s, seed))
            prompts.append(prompt)
            thinkings.append(cot)
            reqs.append(Request(prompt, dec.answer_max_tokens, sampling, seed, job.fmt.stops))
    outs = job.engine.generate(reqs, what=f"{condition}/{variant}/{cot_source} answer phase")
    rows = []
    for (item_id, s, seed), prompt, cot, c in zip(keys, prompts, thinkings, outs):
        row = job.row(item_id, condition, variant, cot_source, s, prompt, cot, c, closed=True,
                      thinking_tokens=job.engine.count_tokens(cot), budget_exhausted=False, seed=seed)
        if item_id in missing:
            row["flag"] = "no_source_cot"
        rows.append(row)
    return frame(rows)


def cots_from_generations(gen: pl.DataFrame, cot_source: str) -> pl.DataFrame:
    """The CoT table of a free run: its thinking text per (item, sample)."""
    return gen.select(
        "dataset", "item_id", "sample", pl.lit(cot_source).alias("cot_source"),
        pl.col("thinking").fill_null("").alias("cot"),
    ).cast(COT_SCHEMA)


def items_list(items: pl.DataFrame) -> list[dict]:
    rows = items.to_dicts()
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
    return rows
