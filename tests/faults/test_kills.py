"""SIGKILL at a seeded schedule of points inside every inference stage, the ensemble, answer
removal, splitting, scoring and aggregation (docs/reliability.md): after each kill the files on
disk are whole, and the run that follows finishes with exactly the answers of an unbroken run:
no row lost, none duplicated."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_workflow import snakemake  # noqa: E402

pytestmark = pytest.mark.workflow

SEED = 20261126
#: every (rule, point, occurrence) the schedule draws from (`cotransfer.faults`: `shard` an
#: inference shard done and cached, `step` an ensemble step logged, `write` inside an atomic
#: write, `read` the inputs read). The reduced demo with shards of 4 reaches each of them.
CATALOGUE = [
    ("generate", "shard", 1), ("generate", "shard", 2), ("generate", "write", 1), ("generate", "write", 4),
    ("transfer", "shard", 1), ("transfer", "shard", 3), ("transfer", "write", 1), ("transfer", "write", 5),
    ("transfer_ensemble", "shard", 1), ("transfer_ensemble", "write", 2),
    ("ensemble", "step", 1), ("ensemble", "step", 2), ("ensemble", "write", 1),
    ("probe", "shard", 1), ("probe", "shard", 4), ("probe", "write", 3),
    ("strip", "shard", 1), ("strip", "write", 2), ("strip_ensembles", "write", 1),
    ("split", "write", 1), ("split_ensembles", "write", 1),
    ("score", "read", 1), ("score", "write", 1),
    ("aggregate", "read", 1), ("aggregate", "write", 1), ("aggregate", "write", 7),
]
N_KILLS = 20
STAGE_ORDER = ["generate", "split", "strip", "transfer", "probe", "ensemble", "split_ensembles", "strip_ensembles",
               "transfer_ensemble", "score", "aggregate"]


def schedule(seed: int = SEED, n: int = N_KILLS) -> list[tuple[str, str, int]]:
    """One seeded point of every rule in the catalogue, then seeded others up to `n`; in the
    pipeline's order, so that each run rebuilds only what the kill before it took down."""
    rng = random.Random(seed)
    first = [rng.choice([c for c in CATALOGUE if c[0] == r]) for r in STAGE_ORDER]
    rest = rng.sample([c for c in CATALOGUE if c not in first], n - len(first))
    return sorted(first + rest, key=lambda c: (STAGE_ORDER.index(c[0]), c[1], c[2]))


KEY = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample", "fraction", "dropped"]


def answers(wd: Path) -> pl.DataFrame:
    cols = [*KEY, "answer", "valid", "correct", "thinking", "answer_text"]
    return pl.read_parquet(wd / "results/tables/answers.parquet", columns=cols).sort(KEY, nulls_last=True)


def test_schedule_covers_every_stage_and_is_seeded():
    s = schedule()
    assert len(s) == N_KILLS >= 20 and len(set(s)) == len(s)
    assert {r for r, _, _ in s} == {r for r, _, _ in CATALOGUE} == set(STAGE_ORDER)
    assert s == schedule() and s != schedule(SEED + 1)


def test_kill_schedule_loses_and_duplicates_nothing(fault_demo):
    wd = fault_demo
    before = answers(wd)
    assert not before.select(KEY).is_duplicated().any()
    fired = []
    for rule, where, n in schedule():
        # the rule's jobs again (and whatever an earlier kill took down before them), no further
        proc = snakemake("--cores", "2", "--configfile", "demo.yaml", "--forcerun", rule, "--until", rule, cwd=wd,
                         check=False, env={"COTRANSFER_FAULT": f"kill:{rule}:{where}:{n}"})
        text = proc.stdout + proc.stderr
        logs = "".join(p.read_text(errors="replace") for p in wd.rglob(f"logs/{rule}/**/*.log"))
        assert proc.returncode != 0, f"kill:{rule}:{where}:{n} was not reached:\n{text[-3000:]}"
        assert f"simulated kill (COTRANSFER_FAULT): rule {rule}, at {where} {n}" in logs + text, text[-3000:]
        fired.append((rule, where, n))
        # whatever a kill leaves, no file at an output path is a torn write
        for path in (wd / "results").rglob("*.parquet"):
            pl.read_parquet_schema(path)
    assert len(fired) >= 20
    snakemake("--cores", "2", "--configfile", "demo.yaml", cwd=wd)  # resume: the cache answers what was done
    after = answers(wd)
    assert not after.select(KEY).is_duplicated().any()
    assert after.equals(before)  # no row lost, none added, every answer the same
    assert "Nothing to be done" in snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=wd).stdout
    assert not list((wd / "results").rglob(".tmp-*")), "a killed write's temporary file survived its re-run"
