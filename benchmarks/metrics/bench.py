"""Every metric table of `cotransfer.metrics.all_tables` on a synthetic answers table of 10 million rows.

The table has the answers table's shape (docs/schemas.md): 5 evaluators; per dataset the
conditions empty, default and sampled (5 samples) with both variants, transfer from 5 sources and
ensemble from 2 configs with both variants; 2 datasets (the first with a MedCalc-like `category`),
as many items as the row count needs (about 37,000 per dataset for 10 million rows: 135 rows per
item). Answers are small integers, right with a per-evaluator probability, wrong answers drawn
from a few values so that wrong answers often agree; about 5% are invalid and 1% of the valid
ones cannot be judged (null `correct`). A raw-text column (`answer_text`) is written too, and is
not read.

The table is generated in a child process and written to a temporary Parquet file; this process
then runs `all_tables` on `pl.scan_parquet(...)` (so only the needed columns are read) with
B = 1000 bootstrap resamples and 1000 permutations, and prints the wall time of each phase, the
tables' sizes and its own peak RSS (resource.getrusage, this process only: the generator's memory
is not counted). Target: under 4 GB peak RSS.

    .venv/bin/python benchmarks/metrics/bench.py [--rows 10000000] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

EVALUATORS = ["dapo", "nrr", "opent", "oss", "qwq"]
ENSEMBLES = {"qwq_dapo__oss": (("qwq", "dapo"), ("oss",)), "qwq_oss__dapo": (("qwq", "oss"), ("dapo",))}
TAGS = {"dapo": "rl", "nrr": "rl", "opent": "sft", "oss": "rl", "qwq": "rl"}
DATASETS = ["medcalc", "arith"]
CATEGORIES = ["lab", "risk", "physical", "severity", "diagnosis", "date", "dosage"]
SAMPLES = 5


def design():
    """Every (condition, variant, cot_source, evaluator, sample) of one item."""
    out = []
    for ev in EVALUATORS:
        out.append(("empty", None, None, ev, 0))
        for variant in ("full", "stripped"):
            out.append(("default", variant, None, ev, 0))
            out += [("sampled", variant, None, ev, s) for s in range(SAMPLES)]
            out += [("transfer", variant, src, ev, 0) for src in EVALUATORS]
            out += [("ensemble", variant, ens, ev, 0) for ens in ENSEMBLES]
    return out


def generate(rows: int, path: str, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    combos = design()
    n_items = math.ceil(rows / (len(DATASETS) * len(combos)))
    plan = pl.DataFrame(combos, schema={"condition": pl.String, "variant": pl.String, "cot_source": pl.String,
                                        "evaluator": pl.String, "sample": pl.Int64}, orient="row")
    rng = np.random.default_rng(seed)
    parts = []
    for d, dataset in enumerate(DATASETS):
        items = pl.DataFrame({"item_id": [f"{dataset}-{i:06d}" for i in range(n_items)],
                              "gold": np.arange(n_items) % 97})
        df = items.join(plan, how="cross")
        n = df.height
        skill = df.select(pl.col("evaluator").replace_strict(EVALUATORS, [0.55, 0.35, 0.45, 0.6, 0.65])
                          + pl.col("condition").replace_strict(
                              ["empty", "default", "sampled", "transfer", "ensemble"], [-0.2, 0, -0.05, 0.05, 0.1]))
        correct = rng.random(n) < skill.to_series().to_numpy()
        valid = rng.random(n) < 0.95
        judged = rng.random(n) < 0.99
        gold = df["gold"].to_numpy()
        answer = np.where(correct, gold, gold + 1 + rng.integers(0, 3, n))
        df = df.with_columns(
            dataset=pl.lit(dataset),
            answer=pl.when(pl.Series(valid)).then(pl.Series(answer).cast(pl.String)),
            valid=pl.Series(valid),
            correct=pl.when(~pl.Series(judged)).then(None).otherwise(pl.Series(correct & valid)),
        ).with_columns(
            score=pl.col("correct").cast(pl.Float64),
            category=pl.lit(None, pl.String) if d else pl.col("gold").mod(len(CATEGORIES)).replace_strict(
                list(range(len(CATEGORIES))), CATEGORIES, return_dtype=pl.String),
            answer_text=pl.concat_str(pl.lit("After careful thought, the answer is "),
                                      pl.col("answer").fill_null("unclear"), pl.lit(".")),
        ).drop("gold")
        parts.append(df)
        del df
    table = pl.concat(parts).head(rows)
    table.select("dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample", "answer",
                 "valid", "correct", "score", "category", "answer_text").write_parquet(path, row_group_size=1 << 20)


def peak_rss_gb() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generate-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        generate(args.rows, args.generate_only, args.seed)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "answers.parquet")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--seed", str(args.seed),
                        "--generate-only", path], check=True)
        print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f} s "
              f"({os.path.getsize(path) / 1e6:.0f} MB Parquet, child process)", flush=True)

        import polars as pl

        from cotransfer import metrics

        logging.basicConfig(level=logging.WARNING, format="  %(message)s", stream=sys.stdout)
        logging.getLogger("cotransfer.metrics").setLevel(logging.INFO)  # the time of each phase
        t0 = time.perf_counter()
        tables = metrics.all_tables(pl.scan_parquet(path), ensembles=ENSEMBLES, tags=TAGS,
                                    bootstrap=args.bootstrap, seed=args.seed, permutations=args.permutations)
        wall = time.perf_counter() - t0
        for name, df in tables.items():
            print(f"  {name:<20} {df.height:>8} rows")
        print(f"metrics benchmark: {args.rows} rows in {wall:.1f} s, peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
