"""The demo DAG end to end: wall time and model loads, before and after, and an incremental run.

Three runs on this machine, one after the other (nothing else should run meanwhile):
  baseline     the demo DAG (`snakemake --cores all`, config/demo.yaml) at a git revision of this
               repository (default: the last one before the request cache), in a temporary
               worktree, with that revision's `cotransfer` on PYTHONPATH;
  current      the same DAG with the working tree's code, in a temporary directory;
  incremental  then a fifth model (a random `toy:` model) added to the finished current run.
Both DAG runs use the working tree's models (`data/models`) and demo config, so only the
pipeline's code differs. Model loads are vLLM engine initialisations in Snakemake's output. The
answers tables of the baseline and current runs are compared (same rows, same answers) outside
the `ensemble` condition, whose CoTs come from the ensemble algorithm (versioned on its own);
the incremental run must leave every earlier answer unchanged. Prints times, loads and the
ratios; stores nothing.

    .venv/bin/python benchmarks/inference/dag.py [--baseline REV] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASELINE = "c2a51ef"  # the last commit before one-load-per-stage and the request cache
KEY = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample"]
LOAD_LINE = "Initializing a V1 LLM engine"


def run_dag(cwd: Path, *args: str, pythonpath: Path | None = None) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "all", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {cwd} failed:\n{out[-4000:]}")
    jobs = out.count("Finished job")
    return {"wall_s": wall, "loads": out.count(LOAD_LINE), "jobs": jobs}


def answers(cwd: Path) -> pl.DataFrame:
    return pl.read_parquet(cwd / "results/tables/answers.parquet").select(KEY + ["answer", "valid", "correct"])


def same_answers(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    a, b = a.sort(KEY, nulls_last=True), b.sort(KEY, nulls_last=True)
    return a.height == b.height and a.equals(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' run (default %(default)s)")
    ap.add_argument("--keep", help="keep the run directories under this folder")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="cotransfer-dag-"))
    tmp.mkdir(parents=True, exist_ok=True)

    base = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        shutil.rmtree(base / "data/models")  # the same models and config as the current run
        shutil.copytree(ROOT / "data/models", base / "data/models")
        shutil.copy(ROOT / "config/demo.yaml", base / "config/demo.yaml")
        before = run_dag(base, pythonpath=base / "src")
        print(f"baseline ({args.baseline}): {before['wall_s']:.0f} s, {before['jobs']} jobs, {before['loads']} model loads",
              flush=True)

        cur = tmp / "current"
        cur.mkdir(exist_ok=True)
        cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
        for spec in [*cfg["models"].values(), *(cfg.get("aux_models") or {}).values()]:  # the filter too
            spec["path"] = str(ROOT / spec["path"])
        (cur / "demo.yaml").write_text(yaml.safe_dump(cfg))
        after = run_dag(cur, "-s", str(ROOT / "Snakefile"), "--configfile", "demo.yaml")
        print(f"current: {after['wall_s']:.0f} s, {after['jobs']} jobs, {after['loads']} model loads", flush=True)
        outside = pl.col("condition") != "ensemble"
        same = same_answers(answers(base).filter(outside), answers(cur).filter(outside))

        first = answers(cur)
        cfg["models"]["toy_new"] = {"family": "think", "post_training": "sft", "toy": {"seed": 7}}
        (cur / "plus.yaml").write_text(yaml.safe_dump(cfg))
        inc = run_dag(cur, "-s", str(ROOT / "Snakefile"), "--configfile", "plus.yaml")
        grown = answers(cur)
        kept = grown.join(first.select(KEY), on=KEY, how="semi", nulls_equal=True)
        unchanged = same_answers(kept, first)
        print(f"incremental (+1 model): {inc['wall_s']:.0f} s, {inc['jobs']} jobs, {inc['loads']} model loads; "
              f"{grown.height - first.height} new answers", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'run':<24}{'wall s':>8}{'jobs':>6}{'loads':>7}")
    for name, r in (("baseline", before), ("current", after), ("incremental (+1 model)", inc)):
        print(f"{name:<24}{r['wall_s']:>8.0f}{r['jobs']:>6}{r['loads']:>7}")
    print(f"current / baseline wall          = {after['wall_s'] / before['wall_s']:.2f}  "
          f"(speed-up {before['wall_s'] / after['wall_s']:.1f}x)")
    print(f"current / baseline model loads   = {after['loads']} / {before['loads']}")
    print(f"incremental / current full DAG   = {inc['wall_s'] / after['wall_s']:.2f}")
    print(f"incremental / baseline full DAG  = {inc['wall_s'] / before['wall_s']:.2f}")
    print(f"answers table identical to baseline (outside the ensemble condition): {same}; "
          f"earlier answers unchanged by the new model: {unchanged}")
    if not (same and unchanged):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
