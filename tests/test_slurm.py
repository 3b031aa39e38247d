"""The demo through the shipped SLURM profile on a real one-node SLURM (`make test-slurm`).

Needs root (it installs Debian's slurm-wlm and munge when missing, and starts munged, slurmctld
and slurmd); skipped otherwise, saying why. What it shows (issue 12):
- every non-local job goes through sbatch, with the resources the config derives, and the demo
  completes; a second run plans nothing;
- a job that dies of a (simulated) out-of-memory kill is retried, and its second SLURM log shows
  the larger memory request, as SLURM granted it;
- a job that could never be scheduled is reported before anything is submitted, naming it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import ROOT
from test_workflow import demo_config_abs

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

FAULT = "oom:generate:toy_qwq:5000"  # generate for toy_qwq needs 5000 MB: attempt 1 gets 4000


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the SLURM test starts munged, slurmctld and slurmd, which needs root: "
                    "run `make test-slurm` as root")
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this machine has its own SLURM config (/etc/slurm/slurm.conf); "
                    "the test cluster does not run beside a real one")
    from cotransfer import testcluster

    c = testcluster.start(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


def run_profile(wd: Path, slurm, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """snakemake with the shipped profile and only the overrides docs/cluster.md documents."""
    env = {**slurm.env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("COTRANSFER_FAULT", None)
    if fault:
        env["COTRANSFER_FAULT"] = fault
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles/slurm"),
           "--configfile", "demo.yaml", "--slurm-status-command", "squeue", *args]
    return subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def demo_on_slurm(slurm, tmp_path_factory):
    wd = tmp_path_factory.mktemp("demo_slurm")
    (wd / "demo.yaml").write_text(yaml.safe_dump(demo_config_abs()))
    proc = run_profile(wd, slurm, fault=FAULT)
    return wd, proc


def test_demo_completes_through_sbatch(demo_on_slurm, slurm):
    wd, proc = demo_on_slurm
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "cluster check: every job fits its partition" in out
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    rules = sorted(next(p for p in Path(log).parts if p.startswith("rule_")) for _, log in submitted)
    # the demo's non-local jobs: 4 models x (generate, transfer, transfer_ensemble), the
    # ensemble, the answer-removal report; generate for toy_qwq twice (the retry)
    assert rules.count("rule_generate") == 5 and rules.count("rule_transfer") == 4
    assert rules.count("rule_transfer_ensemble") == 4 and rules.count("rule_ensemble") == 1
    assert rules.count("rule_strip_report") == 1 and "rule_score" not in rules and "rule_split" not in rules
    answers = pl.read_parquet(wd / "results/tables/answers.parquet")
    assert set(answers["evaluator"]) == {"toy_qwq", "toy_dapo", "toy_opent", "toy_weak"}
    from cotransfer.io import read_provenance

    prov = read_provenance(wd / "results/generations/toyarith/toy_dapo/transfer/full/toy_qwq.parquet")
    assert prov["slurm_job_id"] in {j for j, _ in submitted}
    # the second run plans nothing
    again = run_profile(wd, slurm, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


def test_out_of_memory_retry_asks_for_more(demo_on_slurm):
    wd, proc = demo_on_slurm
    logs = sorted((wd / "logs/slurm/rule_generate/toyarith_toy_qwq").glob("*.log"), key=lambda p: int(p.stem))
    assert len(logs) == 2, logs
    first, second = (p.read_text() for p in logs)
    assert "simulated out-of-memory" in first
    granted = [re.search(r"resources mem_mb=(\d+) .*TRES (\S+)\)", t) for t in (first, second)]
    assert granted[0].group(1) == "4000" and "mem=4000M" in granted[0].group(2)
    assert granted[1].group(1) == "8000" and "mem=8000M" in granted[1].group(2)
    assert "simulated out-of-memory" not in second


def test_a_job_that_can_never_run_is_named_before_submission(slurm, tmp_path):
    cfg = demo_config_abs()
    cfg["cluster"] = {"cpu_mem_mb_per_model": slurm.mem_mb // 2}  # the 3-model ensemble exceeds the node
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_profile(tmp_path, slurm)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "could never be scheduled" in out
    assert re.search(r"ensemble \(dataset=toyarith, ensemble=qwq_dapo__opent\): asks for \d+ MB of memory; "
                     r"a node of partition 'cpu' has \d+ MB", out), out[-3000:]
    assert "has been submitted" not in out and not (tmp_path / "results").exists()
