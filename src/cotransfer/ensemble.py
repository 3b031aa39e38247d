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

Stops: an `ends_thought` candidate is selected; the cap is reached; `max_steps`; three
consecutive steps without a non-empty candidate; or a member's context window cannot hold another
chunk (`context_full`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cotransfer import faults, io
from cotransfer.config import EnsembleSpec, Sampling, Study
from cotransfer.engine import Engine, Request, derive_seed, perplexity, sequence_score
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
ENSEMBLE_VERSION = "3"
TRUNCATIONS = {"sentence": truncate_to_complete, "paper": truncate_to_sentence}


@dataclass
class Candidate:
    generator: int
    sample: int
    raw: str
    text: str
    ends_thought: bool
    scores: dict[str, float] = field(default_factory=dict)
    ids: dict[str, list[int]] = field(default_factory=dict)  # per evaluator: the scored piece's ids
    logprobs: dict[str, list[float]] = field(default_factory=dict)

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


def _piece(thought: str, text: str) -> str:
    """What a selected candidate adds to the thought: a space, then its text (none at first)."""
    return f" {text}" if thought else text


def join(thought: str, piece: str) -> str:
    return f"{thought} {piece}".strip() if thought else piece.strip()


class StepLog:
    """The ensemble's append-only step log: one JSON file per finished step, written atomically,
    so a killed job continues from its last finished step.

    `start.json` holds what the run starts from (the contexts' own log-likelihoods in `paper`
    scoring); `step-NNNNN.json` what one step changed: its step-table rows, each grown row's new
    ids per member, log-likelihood per evaluator and text, and the rows' stop bookkeeping. Floats
    round-trip exactly through JSON, so a resumed run continues bit for bit. `meta.json` carries
    a fingerprint of everything the CoTs depend on (spec, seed, items and their prompts, each
    member's weights and backend); a log with another fingerprint is discarded.
    """

    def __init__(self, directory: str | Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def open(self) -> tuple[dict | None, list[dict]]:
        """The start record and the finished steps (contiguous from 0); empty if none or stale."""
        meta = self.dir / "meta.json"
        if self.dir.exists():
            try:
                same = json.loads(meta.read_text()).get("fingerprint") == self.fingerprint
            except (OSError, ValueError):
                same = False
            if not same:
                log.info("ensemble step log %s belongs to another configuration: starting over", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            io.write_json(meta, {"fingerprint": self.fingerprint})
        start = self._read(self.dir / "start.json")
        steps = []
        while start is not None and (rec := self._read(self.dir / f"step-{len(steps):05d}.json")) is not None:
            steps.append(rec)
        return start, steps

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:  # atomic writes make this unexpected; never trust a bad record
            log.warning("ensemble step log: ignoring unreadable %s (%s)", path, err)
            return None

    def write_start(self, record: dict) -> None:
        io.write_text(self.dir / "start.json", json.dumps(record))

    def append(self, step: int, record: dict) -> None:
        io.write_text(self.dir / f"step-{step:05d}.json", json.dumps(record))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def step_log_dir(out_steps: str | Path) -> Path:
    """Where the ensemble job writing `out_steps` keeps its step log while it runs."""
    out = Path(out_steps)
    return out.with_name(out.name.removesuffix(".parquet") + ".log")


def fingerprint(study: Study, dataset: str, spec: EnsembleSpec, items: list[dict],
                engines: dict[str, Engine], rescore_whole: bool = False) -> str:
    """What an ensemble run's CoTs depend on (the step log's key)."""
    blob = json.dumps({"version": ENSEMBLE_VERSION, "dataset": dataset, "spec": spec.params(),
                       "seed": study.decoding.seed, "rescore_whole": rescore_whole,
                       "compat": study.compat.params("ensemble") | study.compat.params("prompt"),
                       "members": {m: {"identity": engines[m].identity, "family": study.model(m).family,
                                       "prompt_kwargs": study.prompt_kwargs(m, dataset, "ensemble")}
                                   for m in spec.members},
                       "items": [[it["item_id"], messages(it)] for it in items]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def run(study: Study, dataset: str, spec: EnsembleSpec, items: list[dict],
        engines: dict[str, Engine], *, rescore_whole: bool = False,
        step_log: str | Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build the ensembled thought for every item; return (row table, step log).

    Every model's context is kept as token ids: its rendered prompt, then each selected piece
    (" " + text; no space before the first) encoded once and appended. Nothing is re-tokenized,
    so the ids scored are the ids that stay in the context, and vLLM's prefix cache serves the
    shared context: a step prefills about one piece per candidate, not the whole CoT again. In
    `paper` scoring the context's own log-likelihood is carried from step to step (the selected
    candidate's token log-probabilities are exactly the context's new positions).
    `rescore_whole` scores every `paper` candidate over its whole sequence instead, as the
    original did: the reference the carried sums are checked against (tests, benchmark).
    `step_log`, a directory: every finished step is recorded there (`StepLog`), and a re-run
    continues from the last one; the caller removes it once the outputs are written.
    """
    sampling = Sampling(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k)
    fmts = {m: get_format(study.model(m).family) for m in spec.members}
    prompts, ctx = {}, {}
    for m in spec.members:
        kw = study.prompt_kwargs(m, dataset, "ensemble")
        prompts[m] = [fmts[m].prompt(engines[m].tokenizer, messages(it), **kw) for it in items]
        ctx[m] = [list(engines[m].encode(p)) for p in prompts[m]]
    prompt_len = {m: [len(c) for c in ctx[m]] for m in spec.members}
    thoughts = ["" for _ in items]
    active = list(range(len(items)))
    empty_streak = [0] * len(items)
    stop_reason: dict[int, str] = {}
    n_steps = [0] * len(items)
    step_rows: list[dict] = []
    primary = spec.generators[0]
    book = None
    start, done = None, []
    if step_log is not None:
        book = StepLog(step_log, fingerprint(study, dataset, spec, items, engines, rescore_whole))
        start, done = book.open()
    # paper scoring: sum of the log-probabilities of every context token but the first
    ctx_lp: dict[str, list[float]] = {}
    if spec.scoring == "paper" and not rescore_whole:
        if start is not None:
            ctx_lp = {e: list(v) for e, v in start["ctx_lp"].items()}
        else:
            for e in spec.evaluators:
                whole = engines[e].token_logprobs([(c[:1], c[1:]) for c in ctx[e]], what="ensemble prompts (paper)")
                ctx_lp[e] = [sum(lps) for lps in whole]
    if book is not None and start is None:
        book.write_start({"ctx_lp": ctx_lp})

    def advance(rec: dict) -> None:
        """Apply one step's record (the same code for a fresh step and a replayed one)."""
        nonlocal active
        for i, g in rec["grown"].items():
            i = int(i)
            for m in spec.members:
                ctx[m][i] += g["ids"][m]
                if m in ctx_lp:
                    ctx_lp[m][i] += g["lp"][m]
            thoughts[i] = join(thoughts[i], g["text"])
        step_rows.extend(rec["rows"])
        stop_reason.update({int(i): r for i, r in rec["stopped"].items()})
        for i, n in rec["empty_streak"].items():
            empty_streak[int(i)] = n
        for i in rec["stepped"]:
            n_steps[i] = rec["step"] + 1
        active = list(rec["active"])

    for rec in done:
        advance(rec)
    if done:
        log.info("ensemble %s: resumed after step %d from %s (%d rows still active)",
                 spec.name, done[-1]["step"], book.dir, len(active))

    for step in range(len(done), spec.max_steps):
        if not active:
            break
        t0 = time.perf_counter()
        prefill0 = sum(engines[m].stats.prefill_tokens for m in spec.members)
        rec = {"step": step, "rows": [], "grown": {}, "stopped": {}, "empty_streak": {}, "stepped": []}
        # a row whose next chunk could not fit every member's context window stops here
        full = [i for i in active if any(len(ctx[m][i]) + spec.chunk_tokens + 8 > engines[m].settings["max_model_len"]
                                         for m in spec.members)]
        for i in full:
            rec["stopped"][i] = "context_full"
        live = [i for i in active if i not in set(full)] if full else list(active)
        # 1-2. propose and clean
        cands: dict[int, list[Candidate]] = {i: [] for i in live}
        for g_idx, g in enumerate(spec.generators):
            if not live:
                break
            reqs, owners = [], []
            for i in live:
                for s in range(spec.candidates):
                    seed = (derive_seed(study.decoding.seed, g_idx, s) if study.compat.ensemble_seed  # every step alike
                            else derive_seed(study.decoding.seed, dataset, spec.name, items[i]["item_id"], step, g_idx, s))
                    reqs.append(Request(prompts[g][i] + thoughts[i], spec.chunk_tokens, sampling, seed,
                                        prompt_ids=tuple(ctx[g][i])))
                    owners.append((i, s))
            for (i, s), out in zip(owners, engines[g].generate(reqs, what=f"ensemble step {step} propose {g}")):
                text, ends = clean(out.text, fmts[g].closer, spec.truncation)
                if text or ends:
                    cands[i].append(Candidate(g_idx, s, out.text, text, ends))
        # 3. score with every evaluator, on its own context ids plus the candidate's
        for e in spec.evaluators:
            pairs, owners = [], []
            for i in live:
                for c in cands[i]:
                    piece = engines[e].encode(_piece(thoughts[i], c.text) if c.text else fmts[e].closer)
                    c.ids[e] = piece
                    if len(ctx[e][i]) + len(piece) > engines[e].settings["max_model_len"]:
                        c.scores[e] = sequence_score([], spec.scoring)  # does not fit: never preferred
                        c.logprobs[e] = []
                        continue
                    pairs.append((ctx[e][i], piece))
                    owners.append((i, c))
            if not pairs:
                continue
            if spec.scoring == "paper" and rescore_whole:
                for (i, c), score in zip(owners, engines[e].score(pairs, "paper")):
                    c.scores[e] = score
                continue
            for (i, c), lps in zip(owners, engines[e].token_logprobs(pairs, what=f"ensemble step {step} score {e}")):
                c.logprobs[e] = lps
                if spec.scoring == "paper":
                    # every context token but the first, then the candidate's
                    c.scores[e] = perplexity(ctx_lp[e][i] + sum(lps), len(ctx[e][i]) - 1 + len(lps))
                else:
                    c.scores[e] = sequence_score(lps, "candidate")
        # 4-6. select, append, stop
        still = []
        for i in live:
            rec["stepped"].append(i)
            if not cands[i]:
                rec["empty_streak"][i] = empty_streak[i] + 1
                if empty_streak[i] + 1 >= MAX_EMPTY_STEPS:
                    rec["stopped"][i] = "no_candidates"
                else:
                    still.append(i)
                continue
            rec["empty_streak"][i] = 0
            best = select(cands[i], spec.scoring)
            cum = len(ctx[primary][i]) - prompt_len[primary][i]
            if best.text:
                piece = _piece(thoughts[i], best.text)
                # every context grows by the same piece, encoded once per model
                ids = {m: best.ids.get(m) or engines[m].encode(piece) for m in spec.members}
                rec["grown"][i] = {"ids": ids, "text": best.text,
                                   "lp": {m: sum(best.logprobs[m]) for m in ctx_lp}}
                cum += len(ids[primary])
            rec["rows"].append({
                "dataset": dataset, "ensemble": spec.name, "item_id": items[i]["item_id"], "step": step,
                "candidates": json.dumps([{"generator": spec.generators[c.generator], "sample": c.sample,
                                           "raw": c.raw, "text": c.text, "ends_thought": c.ends_thought,
                                           "scores": c.scores, "score": c.score} for c in cands[i]]),
                "selected_generator": best.generator, "selected_sample": best.sample,
                "selected_text": best.text, "ends_thought": best.ends_thought, "cum_tokens": cum,
                "wall_s": time.perf_counter() - t0,
            })
            if best.ends_thought and (not study.compat.ensemble_stop
                                      or fmts[spec.generators[best.generator]].closer == "</think>"):
                rec["stopped"][i] = "ends_thought"
            elif cum >= spec.thinking_cap:
                rec["stopped"][i] = "thinking_cap"
            else:
                still.append(i)
        rec["active"] = still
        if book is not None:
            book.append(step, rec)
        faults.point("step")  # the fault suite kills a job here: the step is logged
        advance(json.loads(json.dumps(rec)) if book is not None else rec)
        prefilled = sum(engines[m].stats.prefill_tokens for m in spec.members) - prefill0
        log.info("ensemble %s step %d: %d rows still active; %d tokens prefilled for scoring",
                 spec.name, step, len(active), prefilled)
    for i in active:
        stop_reason[i] = "max_steps"
    rows = pl.DataFrame([{"dataset": dataset, "item_id": it["item_id"], "sample": 0, "cot_source": spec.name,
                          "cot": " ".join(thoughts[i].split()) if study.compat.collapse_ws else thoughts[i],
                          "stop_reason": stop_reason[i], "n_steps": n_steps[i]}
                         for i, it in enumerate(items)], schema=ROW_SCHEMA)
    return rows, pl.DataFrame(step_rows, schema=STEP_SCHEMA)
