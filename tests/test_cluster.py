"""Cluster operations without a cluster: requests from the config, the pre-flight check against
`sinfo`, the per-stage code hash (the SLURM run itself is tests/test_slurm.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from cotransfer import cluster
from cotransfer.codehash import code_hash, stage_code
from cotransfer.config import Study

SCRIPTS = ROOT / "workflow/scripts"

SINFO = """\
cpu*|up|infinite|32|128000|(null)|10
gpu|up|2-00:00:00|64|512000|gpu:a100:4(S:0-1)|8
gpu|up|2-00:00:00|32|256000|gpu:a100:2|2
debug|down|30:00|4|8000|(null)|1
"""


def test_sinfo_is_read_per_partition_with_the_largest_node():
    parts = cluster.parse_sinfo(SINFO)
    assert parts["cpu"].default and parts["cpu"].gpus == 0 and parts["cpu"].time_limit is None
    gpu = parts["gpu"]
    assert (gpu.gpus, gpu.cpus, gpu.mem_mb, gpu.time_limit, gpu.nodes) == (4, 64, 512000, 2880, 10)
    assert not parts["debug"].up and parts["debug"].time_limit == 30
    with pytest.raises(ValueError, match="format"):
        cluster.parse_sinfo("gpu up 4")


def test_requests_follow_device_size_and_parallelism(paper_config, demo_config):
    study = Study.from_dict(paper_config)
    qwq = cluster.inference_request(study, ["qwq"])  # QwQ-32B, tp 2, bfloat16
    assert (qwq.gpus, qwq.cpus, qwq.mem_mb, qwq.partition) == (2, 16, 16000 + 64000, "gpu")
    nrr = cluster.inference_request(study, ["nrr"])  # 1.5B
    assert (nrr.gpus, nrr.mem_mb) == (1, 16000 + 3000)
    ens = cluster.inference_request(study, ["qwq", "dapo", "opent"])  # one job loads all three
    assert ens.gpus == 5 and ens.mem_mb == 16000 + 64000 + 64000 + 14000
    again = cluster.inference_request(study, ["qwq"], attempt=2)
    assert again.mem_mb == 2 * qwq.mem_mb and again.runtime == 2 * qwq.runtime
    # the demo's models run on CPU: no GPU, a CPU partition, memory per model
    demo = Study.from_dict(demo_config)
    toy = cluster.inference_request(demo, ["toy_qwq"])
    assert (toy.gpus, toy.cpus, toy.partition, toy.mem_mb) == (0, 2, "cpu", 4000)
    assert cluster.inference_request(demo, ["toy_qwq", "toy_dapo", "toy_opent"]).mem_mb == 10000
    assert "tasks_per_gpu" not in toy.resources() and qwq.resources()["tasks_per_gpu"] == 0


def test_retry_growth_is_capped_and_config_keys_change_requests(demo_config):
    demo_config["cluster"] = {"max_mem_mb": 9000, "cpu_inference_cpus": 1, "cpu_partition": "small"}
    demo = Study.from_dict(demo_config)
    assert [cluster.inference_request(demo, ["toy_qwq"], a).mem_mb for a in (1, 2, 3)] == [4000, 8000, 9000]
    r = cluster.inference_request(demo, ["toy_qwq"])
    assert (r.cpus, r.partition) == (1, "small")


def test_model_size_from_key_or_name(paper_config):
    paper_config["models"]["opent"]["params_b"] = 7.6
    study = Study.from_dict(paper_config)
    assert cluster.size_b(study.model("opent")) == 7.6
    assert cluster.size_b(study.model("oss")) == 20 and cluster.size_b(study.model("nrr")) == 1.5
    paper_config["models"]["opent"] = {"repo_id": "org/mystery-model", "family": "think"}
    unknown = Study.from_dict(paper_config).model("opent")
    assert cluster.size_b(unknown) is None and cluster.weights_mb(unknown) == cluster.UNKNOWN_SIZE_MB_PER_GPU


def test_check_names_each_job_and_resource_that_can_never_run():
    parts = cluster.parse_sinfo(SINFO)
    jobs = [
        cluster.JobRequest("ensemble", "dataset=ii, ensemble=big", gpus=5, cpus=40, mem_mb=184000, runtime=240, partition="gpu"),
        cluster.JobRequest("generate", "model=qwq", gpus=2, cpus=16, mem_mb=80000, runtime=240, partition="gpu"),
        cluster.JobRequest("transfer", "model=x", gpus=1, cpus=8, mem_mb=600000, runtime=4000, partition="gpu"),
        cluster.JobRequest("strip_report", "", mem_mb=4000, partition="cpus"),
        cluster.JobRequest("preference", "", mem_mb=4000, partition=None),  # the default partition
        cluster.JobRequest("score", "", mem_mb=4000, partition="debug"),
    ]
    problems = cluster.check(jobs, parts)
    assert "ensemble (dataset=ii, ensemble=big): asks for 5 GPU(s); a node of partition 'gpu' has 4" in problems
    assert not any(p.startswith("generate") for p in problems)
    assert any(p.startswith("transfer (model=x): asks for 600000 MB") for p in problems)
    assert any(p.startswith("transfer (model=x): asks for 4000 min; partition 'gpu' allows 2880") for p in problems)
    assert any(p.startswith("strip_report: partition 'cpus' does not exist") for p in problems)
    assert any(p.startswith("score: partition 'debug' is not up") for p in problems)
    assert not any(p.startswith("preference") for p in problems)


def test_cluster_check_on_the_planned_paper_run(tmp_path):
    """The CLI plans the run with the profile (a dry run), leaves local rules out, and names the
    jobs that exceed a small cluster; on a large enough one it says so and exits 0."""
    small = tmp_path / "sinfo.txt"
    small.write_text("cpu*|up|infinite|16|64000|(null)|4\ngpu|up|infinite|32|160000|gpu:4|2\n")
    cmd = [sys.executable, "-m", "cotransfer.cli", "cluster-check", "--profile", str(ROOT / "profiles/slurm"),
           "--configfile", str(ROOT / "config/config.yaml"), "--sinfo", str(small)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ensemble (dataset=medcalc, ensemble=qwq_oss__dapo): asks for 5 GPU(s); a node of partition 'gpu' has 4" in out
    assert "asks for 184000 MB" in out and "prepare_model" not in out and "generate" not in out
    big = tmp_path / "big.txt"
    big.write_text("cpu*|up|infinite|16|64000|(null)|4\ngpu|up|infinite|64|1000000|gpu:8|2\n")
    proc = subprocess.run(cmd[:-1] + [str(big)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "every job fits" in proc.stdout, proc.stdout + proc.stderr


def _package_copy(tmp_path: Path) -> tuple[Path, Path]:
    pkg = tmp_path / "src/cotransfer"
    shutil.copytree(ROOT / "src/cotransfer", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts)
    return pkg, scripts


def test_code_hash_follows_the_code_a_stage_runs(tmp_path):
    pkg, scripts = _package_copy(tmp_path)
    stages = ["generate.py", "prefill.py", "split.py", "score.py", "aggregate.py", "figures.py"]
    before = {s: code_hash(scripts / s, pkg) for s in stages}
    assert before == {s: code_hash(SCRIPTS / s) for s in stages}  # only the code counts, not where it is
    # comments and docstrings change nothing
    metrics = pkg / "metrics.py"
    src = metrics.read_text()
    metrics.write_text('"""Another docstring."""\n# a comment\n' + src.split('"""', 2)[2])
    assert {s: code_hash(scripts / s, pkg) for s in stages} == before
    # a changed statement in the metrics re-runs the stages that compute metrics, nothing else
    metrics.write_text(src + "\nBOOTSTRAP_DEFAULT_CHANGED = 1\n")
    after = {s: code_hash(scripts / s, pkg) for s in stages}
    assert after["aggregate.py"] != before["aggregate.py"]
    assert all(after[s] == before[s] for s in stages if s != "aggregate.py")
    # stages.py counts per function: a change to score() re-runs score, not generate
    st = pkg / "stages.py"
    st.write_text(st.read_text().replace("def score(study", "def score(study", 1).replace(
        "def score(study", "def score_unused():\n    return 1\n\n\ndef score(study", 1))
    assert code_hash(scripts / "generate.py", pkg) == before["generate.py"]
    st.write_text(st.read_text().replace('def score_unused():\n    return 1', 'def score_unused():\n    return 2'))
    assert code_hash(scripts / "score.py", pkg) == before["score.py"]  # nothing calls it
    _, modules = stage_code(str(scripts / "generate.py"), pkg)
    assert {"cotransfer.inference", "cotransfer.engine", "cotransfer.formats"} <= set(modules)
    assert "cotransfer.metrics" not in modules and "cotransfer.figures" not in modules


def test_check_needs_one_node_with_everything_together():
    parts = cluster.parse_sinfo("gpu|up|infinite|64|128000|gpu:2|4\ngpu|up|infinite|16|512000|gpu:8|1\n")
    fits = cluster.JobRequest("generate", "model=a", gpus=2, cpus=16, mem_mb=100000, partition="gpu")
    split = cluster.JobRequest("ensemble", "e=b", gpus=4, cpus=32, mem_mb=200000, partition="gpu")
    assert cluster.check([fits], parts) == []
    assert cluster.check([split], parts) == [
        "ensemble (e=b): asks for 4 GPU(s), 32 CPUs and 200000 MB together; no node of partition 'gpu' has all of them"]
