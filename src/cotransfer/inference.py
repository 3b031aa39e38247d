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

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cotransfer.config import GREEDY, Sampling, Study
from cotransfer.engine import Completion, Engine, Request, derive_seed
from cotransfer.formats import Format, Split, get_format

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
        return self.fmt.prompt(self.engine.tokenizer, messages(item), **self.study.model(self.evaluator).prompt_kwargs())

    @property
    def decoding(self):
        return self.study.decoding_for(self.dataset)

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


@dataclass(frozen=True)
class Unit:
    """One row of work: an (item, sample) with its request and whatever the row records."""

    item_id: str
    sample: int
    request: Request
    cot: str = ""
    missing_cot: bool = False

    def fingerprint(self) -> list:
        return [self.item_id, self.sample, self.request.prompt, self.request.params()]


def sharded(units: list[Unit], process, *, parts: Path | None, shard_size: int, prov: dict | None,
            what: str) -> pl.DataFrame:
    """Run `process` over `units` in shards, each written to `parts/` as soon as it is done.

    A shard's file name carries a hash of its units (keys, prompts, sampling parameters), so a
    re-run after preemption or a crash reuses exactly the shards whose work is unchanged and
    recomputes the rest; shards of a changed job are never mixed in. The caller writes the merged
    output atomically and then removes `parts/`. Without `parts`, everything is one call.
    """
    if parts is None:
        return frame(process(units))
    from cotransfer import io

    parts.mkdir(parents=True, exist_ok=True)
    frames, reused = [], 0
    n_shards = (len(units) + shard_size - 1) // shard_size
    for k in range(n_shards):
        chunk = units[k * shard_size:(k + 1) * shard_size]
        digest = hashlib.sha256(json.dumps([u.fingerprint() for u in chunk], sort_keys=True,
                                           default=str).encode()).hexdigest()[:16]
        path = parts / f"{k:05d}-{digest}.parquet"
        done = path.exists()
        if done:
            df = pl.read_parquet(path)
            reused += 1
        else:
            df = frame(process(chunk))
            io.write_parquet(df, path, {**(prov or {}), "shard": {"index": k, "of": n_shards, "hash": digest}})
        frames.append(df)
        log.info("%s: shard %d/%d %s (%d rows)", what, k + 1, n_shards, "reused" if done else "done", df.height)
    if reused:
        log.info("%s: reused %d of %d finished shards", what, reused, n_shards)
    out = pl.concat(frames) if frames else frame([])
    keys = out.select("item_id", "sample")
    if keys.is_duplicated().any() or out.height != len(units):
        raise RuntimeError(f"{what}: merged shards hold {out.height} rows for {len(units)} units")
    return out


def free_run(job: Job, items: list[dict], condition: str, sampling: Sampling, n_samples: int, *,
             parts: Path | None = None, shard_size: int = 256, prov: dict | None = None) -> pl.DataFrame:
    """Default (greedy) or sampled run: the evaluator writes its own CoT, then answers."""
    dec = job.decoding
    fmt = job.fmt
    stops = fmt.stops + ((fmt.closer,) if dec.discard_after_close else ())
    units = []
    for item in items:
        prompt = job.prompt(item)
        budget = dec.thinking_max_tokens(job.engine.count_tokens(prompt))
        for s in range(n_samples):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            units.append(Unit(item["item_id"], s, Request(prompt, budget, sampling, seed, stops)))

    def process(chunk: list[Unit]) -> list[dict]:
        phase1 = job.engine.generate([u.request for u in chunk], what=f"{condition} thinking phase")
        # Rows whose thinking is closed and whose answer ended on its own are finished; the rest
        # get the answer phase: closed by us if the model did not, continued if cut after closing
        # (with discard_after_close, every row's answer phase starts anew after its thinking).
        splits = [fmt.split(c.text + (fmt.closer if c.stop_reason == fmt.closer else "")) for c in phase1]
        need = [i for i, (c, sp) in enumerate(zip(phase1, splits))
                if not c.finish_reason.startswith("error:")
                and (dec.discard_after_close or not sp.closed or c.finish_reason == "length")]
        p2 = [answer_phase_request(job, chunk[i].request, phase1[i], splits[i]) for i in need]
        phase2 = dict(zip(need, job.engine.generate(p2, what=f"{condition} answer phase")))
        rows = []
        for i, (u, c, sp) in enumerate(zip(chunk, phase1, splits)):
            answer = c
            if i in phase2:
                extra = phase2[i]
                continued = sp.closed and not dec.discard_after_close
                answer = Completion((sp.answer + extra.text) if continued else extra.text,
                                    extra.n_tokens, extra.finish_reason)
            elif sp.closed:
                answer = Completion(sp.answer, 0, c.finish_reason)
            rows.append(job.row(
                u.item_id, condition, "full", None, u.sample, u.request.prompt, sp.thinking, answer,
                closed=sp.closed,
                thinking_tokens=c.n_tokens if not sp.closed else job.engine.count_tokens(sp.thinking),
                budget_exhausted=(c.finish_reason == "length" and not sp.closed), seed=u.request.seed,
            ))
        return rows

    return sharded(units, process, parts=parts, shard_size=shard_size, prov=prov, what=condition)


def answer_phase_request(job: Job, first: Request, c: Completion, sp: Split) -> Request:
    """The answer phase after a thinking phase that did not finish on its own (method.md 3).

    Cut off after the close marker: continue from the exact phase-1 token ids. Never closed:
    the phase-1 ids, then the closer, the answer opener and the lead-in; nothing is decoded and
    re-tokenized (except for a scripted completion that carries no ids, in tests). With
    `discard_after_close` whatever followed the close marker is dropped and the answer phase
    starts anew from the thinking text.
    """
    fmt, dec = job.fmt, job.decoding
    tail = fmt.closer + fmt.answer_opener + dec.answer_lead_in
    ids = None
    if dec.discard_after_close:
        text = first.prompt + sp.thinking + tail
    elif sp.closed:
        text = first.prompt + c.text
        ids = (c.prompt_ids + c.token_ids) if c.prompt_ids else None
    else:
        text = first.prompt + c.text + tail
        ids = (c.prompt_ids + c.token_ids + tuple(job.engine.encode(tail))) if c.prompt_ids else None
    return Request(text, dec.answer_max_tokens, first.sampling, first.seed, fmt.stops, ids)


def prefilled_run(job: Job, items: list[dict], cots: pl.DataFrame | None, *, condition: str,
                  variant: str | None, cot_source: str | None, sampling: Sampling = GREEDY,
                  parts: Path | None = None, shard_size: int = 256, prov: dict | None = None) -> pl.DataFrame:
    """One answer-phase call per (item, sample) on the prompt with a given CoT, closed.

    `cots` has columns item_id, sample, cot (COT_SCHEMA); None means the empty condition. Items
    with no CoT in `cots` (the source failed on them) get an empty CoT and the flag `no_source_cot`.
    """
    dec = job.decoding
    by_item: dict[str, list[tuple[int, str]]] = {}
    if cots is not None:
        for r in cots.select("item_id", "sample", "cot").iter_rows(named=True):
            by_item.setdefault(r["item_id"], []).append((r["sample"], r["cot"] or ""))
    units = []
    for item in items:
        base = job.prompt(item)
        entries = [(0, "")] if cots is None else by_item.get(item["item_id"])
        missing = not entries
        for s, cot in sorted(entries or [(0, "")]):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            req = Request(job.fmt.prefill(base, cot) + dec.answer_lead_in, dec.answer_max_tokens, sampling,
                          seed, job.fmt.stops)
            units.append(Unit(item["item_id"], s, req, cot, missing))

    def process(chunk: list[Unit]) -> list[dict]:
        outs = job.engine.generate([u.request for u in chunk],
                                   what=f"{condition}/{variant}/{cot_source} answer phase")
        rows = []
        for u, c in zip(chunk, outs):
            row = job.row(u.item_id, condition, variant, cot_source, u.sample, u.request.prompt, u.cot, c,
                          closed=True, thinking_tokens=job.engine.count_tokens(u.cot),
                          budget_exhausted=False, seed=u.request.seed)
            if u.missing_cot:
                row["flag"] = "no_source_cot"
            rows.append(row)
        return rows

    return sharded(units, process, parts=parts, shard_size=shard_size, prov=prov,
                   what=f"{condition}/{variant}/{cot_source}")


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
