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
the answer phase runs.

A job pools every output it writes (all conditions of a free run; every CoT source and variant
an evaluator reads) into one list of units and runs them with `run()`: each phase of each shard
is one batched engine call over all of them, and the rows are split back into one table per
output. Resume after a crash and incremental re-runs come from the engine's request cache.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import polars as pl

from cotransfer import faults
from cotransfer.config import GREEDY, Sampling, Study
from cotransfer.engine import Completion, Engine, Request, derive_seed
from cotransfer.formats import Format, Split, get_format
from cotransfer.probe import DROP_COLUMNS, PREFIX_COLUMNS, PROBE_KEY_SCHEMA

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
    _prompts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def fmt(self) -> Format:
        return get_format(self.study.model(self.evaluator).family)

    def prompt(self, item: dict, condition: str | None = None) -> str:
        kw = self.study.prompt_kwargs(self.evaluator, self.dataset, condition)
        return self.fmt.prompt(self.engine.tokenizer, messages(item), **kw)

    def prompts(self, items: list[dict], condition: str | None = None) -> list[str]:
        """Every item's rendered prompt. Fails loudly, before any generation, when one exceeds
        the dataset's `max_input_tokens` (II: 4096, method.md section 3): never truncated.
        Rendered and checked once per job for the same items and prompt arguments: the cells of
        a prefill job (every CoT source and variant) share them."""
        kw = self.study.prompt_kwargs(self.evaluator, self.dataset, condition)
        key = (tuple(it["item_id"] for it in items), tuple(sorted(kw.items())))
        if key not in self._prompts:
            self._prompts[key] = self._render(items, condition)
        return self._prompts[key]

    def _render(self, items: list[dict], condition: str | None) -> list[str]:
        prompts = [self.prompt(it, condition) for it in items]
        limit = self.decoding.max_input_tokens
        if limit:
            over = [(it["item_id"], n) for it, p in zip(items, prompts) if (n := self.engine.count_tokens(p)) > limit]
            if over:
                raise ValueError(f"{self.dataset}: {len(over)} of {len(items)} prompts for {self.evaluator} exceed "
                                 f"max_input_tokens {limit} (item, tokens: {over[:5]}); they are not truncated")
        return prompts

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


#: the extra columns of probe rows (`cotransfer.probe`: prefix and drop-one), after GEN_SCHEMA's
EXTRA_SCHEMA = {**PREFIX_COLUMNS, **DROP_COLUMNS}
EXTRA_KEYS = tuple(PROBE_KEY_SCHEMA)  # a probe row's key within its output, beside (item, sample)


def frame(rows: list[dict], extra: tuple[str, ...] = ()) -> pl.DataFrame:
    """A generation table of `rows`; `extra` names the EXTRA_SCHEMA columns its rows carry."""
    return pl.DataFrame(rows, schema={**GEN_SCHEMA, **{c: EXTRA_SCHEMA[c] for c in extra}})


@dataclass(frozen=True)
class Unit:
    """One row of work: an (item, sample) of one output, with its (first) request.

    `free` units are free runs (thinking phase, then the answer phase where needed); the others
    are prefilled: their request already is the answer phase on a given CoT. `extra` holds a
    probe row's EXTRA_SCHEMA columns (its fraction, or the sentence it leaves out): part of the
    row's key within its output."""

    item_id: str
    sample: int
    request: Request
    condition: str
    variant: str | None = None
    cot_source: str | None = None
    cot: str = ""
    free: bool = False
    missing_cot: bool = False
    extra: tuple[tuple[str, object], ...] = ()

    @property
    def output(self) -> tuple[str, str | None, str | None]:
        """Which output table the row goes to: (condition, variant, cot_source)."""
        return (self.condition, self.variant, self.cot_source)


@dataclass
class RunResult:
    """The rows of a run, one frame per output, and per output how its requests were served."""

    frames: dict[tuple, pl.DataFrame]
    counts: dict[tuple, dict[str, int]]

    def __getitem__(self, output: tuple) -> pl.DataFrame:
        return self.frames[output]


def run(job: Job, units: list[Unit], *, shard_size: int | None = None, what: str = "run") -> RunResult:
    """Every unit of a job through the engine, in shards of `shard_size` units (all of them in
    one shard by default); each shard is one batched engine call per phase.

    Resume and incremental runs need nothing here: the engine answers from its request cache
    whatever was computed before (by a killed run of this job, or by its earlier version), and a
    shard's computed requests are cached as soon as its call returns. Each shard logs its
    progress (k/N, cache hits against computed requests, an ETA). The rows of each output keep
    the order of its units; one row per (item, sample) is checked.
    """
    shard_size = shard_size or max(len(units), 1)
    n_shards = (len(units) + shard_size - 1) // shard_size
    rows: dict[tuple, list[dict]] = {u.output: [] for u in units}
    counts: dict[tuple, dict[str, int]] = {o: {"requests": 0, "cached": 0, "computed": 0} for o in rows}
    t0 = time.perf_counter()
    for k in range(n_shards):
        chunk = units[k * shard_size:(k + 1) * shard_size]
        before = {o: dict(c) for o, c in counts.items()}
        for u, row in zip(chunk, _process(job, chunk, counts, what)):
            rows[u.output].append(row)
        faults.point("shard")  # the fault suite kills a job here: the shard's requests are cached
        done = time.perf_counter() - t0
        cached = sum(counts[o]["cached"] - before[o]["cached"] for o in counts)
        computed = sum(counts[o]["computed"] - before[o]["computed"] for o in counts)
        eta = done / (k + 1) * (n_shards - k - 1)
        log.info("%s: shard %d/%d done (%d rows; requests %d cached, %d computed); %.1f s elapsed, ETA %.0f s",
                 what, k + 1, n_shards, len(chunk), cached, computed, done, eta)
    frames = {}
    seen: dict[tuple, set[str]] = {}  # every probe column any unit of an output carries
    for u in units:
        seen.setdefault(u.output, set()).update(c for c, _ in u.extra)
    extra = {out: tuple(c for c in EXTRA_SCHEMA if c in cols) for out, cols in seen.items()}
    for out, rs in rows.items():
        df = frame(rs, extra[out])
        if df.select("item_id", "sample", *(c for c in extra[out] if c in EXTRA_KEYS)).is_duplicated().any():
            raise RuntimeError(f"{what}: duplicate (item, sample) rows in output {out}")
        frames[out] = df
    total = {k: sum(c[k] for c in counts.values()) for k in ("requests", "cached", "computed")}
    log.info("%s: %d rows in %d outputs; requests %d cached, %d computed", what, len(units), len(frames),
             total["cached"], total["computed"])
    return RunResult(frames, counts)


def _served(counts: dict, units: list[Unit], outs: list[Completion]) -> None:
    for u, c in zip(units, outs):
        n = counts[u.output]
        n["requests"] += 1
        n["cached" if c.cached else "computed"] += 1


def _process(job: Job, chunk: list[Unit], counts: dict, what: str) -> list[dict]:
    """One shard: one call for every unit's first request; for free runs whose thinking did not
    finish on its own, one more call for the answer phase (method.md section 3)."""
    dec, fmt = job.decoding, job.fmt
    phase = "thinking phase" if all(u.free for u in chunk) else (
        "answer phase" if not any(u.free for u in chunk) else "thinking/answer phase")
    phase1 = job.engine.generate([u.request for u in chunk], what=f"{what} {phase}")
    _served(counts, chunk, phase1)
    # Free rows whose thinking is closed and whose answer ended on its own are finished; the rest
    # get the answer phase: closed by us if the model did not, continued if cut after closing
    # (with discard_after_close, every row's answer phase starts anew after its thinking).
    # the phase-1 text with the close marker a stop string removed
    written = {i: c.text + (fmt.closer if c.stop_reason == fmt.closer else "")
               for i, (u, c) in enumerate(zip(chunk, phase1)) if u.free}
    splits = {i: fmt.split(text) for i, text in written.items()}
    need = [i for i, sp in splits.items()
            if not phase1[i].finish_reason.startswith("error:")
            and (dec.discard_after_close or not sp.closed or phase1[i].finish_reason == "length")]
    p2 = [answer_phase_request(job, chunk[i].request, phase1[i], splits[i]) for i in need]
    outs2 = job.engine.generate(p2, what=f"{what} answer phase") if p2 else []
    _served(counts, [chunk[i] for i in need], outs2)
    phase2 = dict(zip(need, outs2))
    rows = []
    for i, (u, c) in enumerate(zip(chunk, phase1)):
        if not u.free:
            row = job.row(u.item_id, u.condition, u.variant, u.cot_source, u.sample, u.request.prompt, u.cot, c,
                          closed=True, thinking_tokens=job.engine.count_tokens(u.cot),
                          budget_exhausted=False, seed=u.request.seed)
            if u.missing_cot:
                row["flag"] = "no_source_cot"
            row.update(u.extra)
            rows.append(row)
            continue
        sp = splits[i]
        answer = c
        # what phase 1 wrote after the close marker, unstripped (the answer's first part)
        tail = written[i].partition(fmt.closer)[2] if sp.closed and fmt.closer else ""
        if i in phase2:
            extra = phase2[i]
            if sp.closed and not dec.discard_after_close:  # continued: both parts, joined as written
                answer = Completion(fmt.answer_text(tail + extra.text),
                                    job.engine.count_tokens(tail) + extra.n_tokens, extra.finish_reason)
            else:
                answer = Completion(extra.text, extra.n_tokens, extra.finish_reason)
        elif sp.closed:  # the whole answer came in phase 1
            answer = Completion(sp.answer, job.engine.count_tokens(tail), c.finish_reason)
        rows.append(job.row(
            u.item_id, u.condition, "full", None, u.sample, u.request.prompt, sp.thinking, answer,
            closed=sp.closed,
            thinking_tokens=c.n_tokens if not sp.closed else job.engine.count_tokens(sp.thinking),
            # phase 1 ran out of tokens, before or after its close marker
            budget_exhausted=c.finish_reason == "length", seed=u.request.seed,
        ))
    return rows


def free_units(job: Job, items: list[dict], condition: str, sampling: Sampling, n_samples: int) -> list[Unit]:
    """Default (greedy) or sampled run: the evaluator writes its own CoT, then answers."""
    dec, fmt = job.decoding, job.fmt
    stops = fmt.stops + ((fmt.closer,) if dec.discard_after_close else ())
    units = []
    for item, prompt in zip(items, job.prompts(items)):
        budget = dec.thinking_max_tokens(job.engine.count_tokens(prompt))
        for s in range(n_samples):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            units.append(Unit(item["item_id"], s, Request(prompt, budget, sampling, seed, stops), condition,
                              "full", free=True))
    return units


def free_run(job: Job, items: list[dict], condition: str, sampling: Sampling, n_samples: int, *,
             shard_size: int | None = None) -> pl.DataFrame:
    return run(job, free_units(job, items, condition, sampling, n_samples), shard_size=shard_size,
               what=condition)[(condition, "full", None)]


def phase_ids(tokenizer, c: Completion, window: int = 16) -> tuple[int, ...]:
    """The phase-1 token ids without what ended the phase. vLLM keeps the EOS token (or a stop
    token, or a stop string's tokens) in `token_ids` while the text drops it; continuing from all
    of them conditioned the answer phase on e.g. `...<|im_end|></think>`. For a phase that
    stopped, the ids kept are the longest prefix (within the last `window` tokens) whose
    decoding, special tokens included, is a prefix of the text; if none is, all of them."""
    ids = c.token_ids
    if c.finish_reason != "stop" or not ids:
        return ids
    for k in range(len(ids), max(len(ids) - window, 0) - 1, -1):
        if c.text.startswith(tokenizer.decode(list(ids[:k]), skip_special_tokens=False)):
            return ids[:k]
    return ids


def answer_phase_request(job: Job, first: Request, c: Completion, sp: Split) -> Request:
    """The answer phase after a thinking phase that did not finish on its own (method.md 3).

    Cut off after the close marker: continue from the exact phase-1 token ids. Never closed:
    the phase-1 ids (without an EOS or stop string that ended it: `phase_ids`), then the
    closer, the answer opener and the lead-in; nothing is decoded and
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
        ids = (c.prompt_ids + phase_ids(job.engine.tokenizer, c) + tuple(job.engine.encode(tail))
               if c.prompt_ids else None)
    return Request(text, dec.answer_max_tokens, first.sampling, first.seed, fmt.stops, ids)


def prefill_units(job: Job, items: list[dict], cots: pl.DataFrame | None, *, condition: str,
                  variant: str | None, cot_source: str | None, sampling: Sampling = GREEDY,
                  prompt_condition: str | None = None) -> list[Unit]:
    """One answer-phase request per (item, sample) on the prompt with a given CoT, closed.

    `cots` has columns item_id, sample, cot (COT_SCHEMA), and may carry EXTRA_SCHEMA columns (a
    probe's: several CoTs per (item, sample), kept on the rows); None means the empty condition.
    Items with no CoT in `cots` (the source failed on them) get an empty CoT and the flag
    `no_source_cot`. The prompt is rendered as for `prompt_condition` (default: `condition`): the
    probes prompt as the transfer condition does, so their whole-CoT requests are its requests.
    """
    dec = job.decoding
    extra = [c for c in EXTRA_SCHEMA if cots is not None and c in cots.columns]
    by_item: dict[str, list[tuple[int, str, tuple]]] = {}
    if cots is not None:
        for r in cots.select("item_id", "sample", "cot", *extra).iter_rows(named=True):
            by_item.setdefault(r["item_id"], []).append(
                (r["sample"], r["cot"] or "", tuple((c, r[c]) for c in extra)))
    units = []
    prefill = (job.fmt.literal_prefill if job.study.literal_oss_prefill(job.evaluator, job.dataset)
               else job.fmt.prefill)
    for item, base in zip(items, job.prompts(items, prompt_condition or condition)):
        entries = [(0, "", ())] if cots is None else by_item.get(item["item_id"])
        missing = not entries
        for s, cot, ext in sorted(entries or [(0, "", ())], key=lambda e: e[0]):
            seed = None if sampling.greedy else job.seed(condition, item["item_id"], s)
            req = Request(prefill(base, cot) + dec.answer_lead_in, dec.answer_max_tokens, sampling,
                          seed, job.fmt.stops)
            units.append(Unit(item["item_id"], s, req, condition, variant, cot_source, cot, missing_cot=missing,
                              extra=ext))
    return units


def prefilled_run(job: Job, items: list[dict], cots: pl.DataFrame | None, *, condition: str,
                  variant: str | None, cot_source: str | None, sampling: Sampling = GREEDY,
                  shard_size: int | None = None) -> pl.DataFrame:
    units = prefill_units(job, items, cots, condition=condition, variant=variant, cot_source=cot_source,
                          sampling=sampling)
    return run(job, units, shard_size=shard_size, what=f"{condition}/{variant}/{cot_source}")[
        (condition, variant, cot_source)]


def collapse_ws(cot: pl.Expr) -> pl.Expr:
    """`compat.collapse_ws`: every whitespace run to one space, the ends trimmed (the original's
    `" ".join(cot.split())`)."""
    return cot.str.replace_all(r"\s+", " ").str.strip_chars()


def cots_from_generations(gen: pl.DataFrame, cot_source: str, *, collapse: bool = False,
                          fmt: Format | None = None) -> pl.DataFrame:
    """The CoT table of a free run: its thinking text per (item, sample); whitespace collapsed
    under `compat.collapse_ws`. With the source's format, also `raw`: the source's whole output
    as decoded text (thinking, then, if it closed its thought, its closer, answer opener and
    answer), which `compat.ii_source_cot_parse` re-parses with each target's markers."""
    cot = pl.col("thinking").fill_null("")
    extra = []
    if fmt is not None:
        after = pl.concat_str([pl.lit(fmt.closer + fmt.answer_opener), pl.col("answer_text").fill_null("")])
        extra = [pl.concat_str([cot, pl.when(pl.col("closed")).then(after).otherwise(pl.lit(""))]).alias("raw")]
    return gen.select(
        "dataset", "item_id", "sample", pl.lit(cot_source).alias("cot_source"),
        (collapse_ws(cot) if collapse else cot).alias("cot"), *extra,
    ).cast(COT_SCHEMA)


def paper_source_cots(cots: pl.DataFrame, target: Format) -> pl.DataFrame:
    """`compat.ii_source_cot_parse`: the CoT as the original took it in Instruction Induction,
    from the source's decoded output parsed with the *target's* markers: the text before the
    target's closer, or the whole decoded text when the target's closer is not in it (then the
    source's own closer and answer go along into the target's thinking)."""
    if "raw" not in cots.columns:
        raise ValueError("the CoT table has no `raw` column (the source's decoded output): re-run its "
                         "generate job to reproduce compat.ii_source_cot_parse")
    raw = pl.col("raw").fill_null("")
    return cots.with_columns(cot=raw.str.split_exact(target.closer, 1).struct.field("field_0")
                             if target.closer else raw)


def items_list(items: pl.DataFrame) -> list[dict]:
    rows = items.to_dicts()
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
    return rows
