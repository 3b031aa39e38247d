"""The sentence-level ensemble (method.md section 7), corrected defaults.

A thought `T` (plain text, no markers) is built step by step. At each step every generator
proposes `candidates` continuations of its own context (its rendered prompt, its opener, then
`T`) of at most `chunk_tokens` new tokens; candidates are cleaned (cut at the generator's close
marker, which flags `ends_thought`; format artifacts removed; truncated to a sentence boundary);
every evaluator scores every candidate by the mean log-probability of the candidate's tokens
given its own context; the candidate with the highest score averaged over evaluators is appended.

All rows advance in lockstep, so each step is one batched generate call per generator and one
batched scoring call per evaluator over every active row. Ties are broken by (generator index,
sample index); selection is by that pair, never by string match. Seeds are derived per
(row, step, generator, sample). The thinking cap is measured in the primary generator's tokens.

Stops: an `ends_thought` candidate is selected; the cap is reached; `max_steps`; or three
consecutive steps without a non-empty candidate.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import polars as pl

from cotransfer.config import EnsembleSpec, Sampling, Study
from cotransfer.engine import Engine, Request, derive_seed
from cotransfer.formats import FORMATS, get_format
from cotransfer.inference import messages
from cotransfer.sentences import truncate_to_complete, truncate_to_sentence

log = logging.getLogger(__name__)

STEP_SCHEMA = {"dataset": pl.String, "ensemble": pl.String, "item_id": pl.String, "step": pl.Int64,
               "candidates": pl.String, "selected_generator": pl.Int64, "selected_sample": pl.Int64,
               "selected_text": pl.String, "ends_thought": pl.Boolean, "cum_tokens": pl.Int64,
               "wall_s": pl.Float64}
ROW_SCHEMA = {"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64, "cot_source": pl.String,
              "cot": pl.String, "stop_reason": pl.String, "n_steps": pl.Int64}
MAX_EMPTY_STEPS = 3
#: bump when a change here changes ensemble CoTs (a rule param: their jobs re-run)
ENSEMBLE_VERSION = "2"
TRUNCATIONS = {"sentence": truncate_to_complete, "paper": truncate_to_sentence}


@dataclass
class Candidate:
    generator: int
    sample: int
    raw: str
    text: str
    ends_thought: bool
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The per-evaluator scores averaged (mean log-prob, or perplexity in `paper` scoring)."""
        return sum(self.scores.values()) / len(self.scores) if self.scores else float("nan")


def clean(raw: str, closer: str, truncation: str = "sentence") -> tuple[str, bool]:
    """Cut at the generator's close marker (-> ends_thought), strip every format's markers,
    then truncate an unfinished chunk to its last complete sentence (`truncation: sentence`,
    the section 6 splitter) or by the original's rule (`paper`)."""
    ends = bool(closer) and closer in raw
    text = raw.split(closer, 1)[0] if ends else raw
    for fmt in FORMATS.values():
        for marker in fmt.markers:
            text = text.replace(marker, " ")
    for junk in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|start|>", "<|message|>", "<|channel|>"):
        text = text.replace(junk, " ")
    if not ends:
        text = TRUNCATIONS[truncation](text)
    return text.strip(), ends


def select(cands: list[Candidate], scoring: str) -> Candidate:
    """The best candidate by its score averaged over evaluators: the highest mean log-prob
    (`candidate`) or the lowest perplexity (`paper`); ties go to the lower (generator index,
    sample index), never to whichever text happens to match first."""
    if scoring == "paper":
        return min(cands, key=lambda c: (c.score, c.generator, c.sample))
    return max(cands, key=lambda c: (c.score, -c.generator, -c.sample))


def join(thought: str, piece: str) -> str:
    return f"{thought} {piece}".strip() if thought else piece.strip()


def run(study: Study, dataset: str, spec: EnsembleSpec, items: list[dict],
        engines: dict[str, Engine]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build the ensembled thought for every item; return (row table, step log)."""
    sampling = Sampling(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k)
    fmts = {m: get_format(study.model(m).family) for m in spec.members}
    prompts = {}
    for m in spec.members:
        kw = study.model(m).prompt_kwargs()
        prompts[m] = [fmts[m].prompt(engines[m].tokenizer, messages(it), **kw) for it in items]
    thoughts = ["" for _ in items]
    active = list(range(len(items)))
    empty_streak = [0] * len(items)
    stop_reason: dict[int, str] = {}
    n_steps = [0] * len(items)
    step_rows: list[dict] = []
    primary = engines[spec.generators[0]]

    for step in range(spec.max_steps):
        if not active:
            break
        t0 = time.perf_counter()
        # 1-2. propose and clean
        cands: dict[int, list[Candidate]] = {i: [] for i in active}
        for g_idx, g in enumerate(spec.generators):
            reqs, owners = [], []
            for i in active:
                for s in range(spec.candidates):
                    seed = derive_seed(study.decoding.seed, dataset, spec.name, items[i]["item_id"], step, g_idx, s)
                    reqs.append(Request(prompts[g][i] + thoughts[i], spec.chunk_tokens, sampling, seed))
                    owners.append((i, s))
            for (i, s), out in zip(owners, engines[g].generate(reqs, what=f"ensemble step {step} propose {g}")):
                text, ends = clean(out.text, fmts[g].closer, spec.truncation)
                if text or ends:
                    cands[i].append(Candidate(g_idx, s, out.text, text, ends))
        # 3. score with every evaluator: mean log-prob of the candidate tokens in its context
        for e in spec.evaluators:
            pairs, owners = [], []
            for i in active:
                ctx = engines[e].encode(prompts[e][i] + thoughts[i])
                for c in cands[i]:
                    piece = (" " + c.text) if c.text else fmts[e].closer
                    pairs.append((ctx, engines[e].encode(piece)))
                    owners.append(c)
            for c, score in zip(owners, engines[e].score(pairs, spec.scoring)):
                c.scores[e] = score
        # 4-6. select, append, stop
        still = []
        for i in active:
            n_steps[i] = step + 1
            if not cands[i]:
                empty_streak[i] += 1
                if empty_streak[i] >= MAX_EMPTY_STEPS:
                    stop_reason[i] = "no_candidates"
                else:
                    still.append(i)
                continue
            empty_streak[i] = 0
            best = select(cands[i], spec.scoring)
            if best.text:
                thoughts[i] = join(thoughts[i], best.text)
            cum = len(primary.encode(thoughts[i]))
            step_rows.append({
                "dataset": dataset, "ensemble": spec.name, "item_id": items[i]["item_id"], "step": step,
                "candidates": json.dumps([{"generator": spec.generators[c.generator], "sample": c.sample,
                                           "raw": c.raw, "text": c.text, "ends_thought": c.ends_thought,
                                           "scores": c.scores, "score": c.score} for c in cands[i]]),
                "selected_generator": best.generator, "selected_sample": best.sample,
                "selected_text": best.text, "ends_thought": best.ends_thought, "cum_tokens": cum,
                "wall_s": time.perf_counter() - t0,
            })
            if best.ends_thought:
                stop_reason[i] = "ends_thought"
            elif cum >= spec.thinking_cap:
                stop_reason[i] = "thinking_cap"
            else:
                still.append(i)
        active = still
        log.info("ensemble %s step %d: %d rows still active", spec.name, step, len(active))
    for i in active:
        stop_reason[i] = "max_steps"
    rows = pl.DataFrame([{"dataset": dataset, "item_id": it["item_id"], "sample": 0, "cot_source": spec.name,
                          "cot": thoughts[i], "stop_reason": stop_reason[i], "n_steps": n_steps[i]}
                         for i, it in enumerate(items)], schema=ROW_SCHEMA)
    return rows, pl.DataFrame(step_rows, schema=STEP_SCHEMA)
