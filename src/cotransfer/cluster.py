"""What each job asks a SLURM cluster for, and a pre-flight check against the partitions.

Requests are derived from the config (docs/cluster.md):

- an inference job (generate, transfer, ensemble, an llm filter) on GPU models asks for the sum
  of its models' `tensor_parallel_size` GPUs, `cluster.cpus_per_gpu` CPUs per GPU, and host
  memory for its models' weights (size in parameters x bytes per parameter of the dtype) plus
  `cluster.gpu_mem_overhead_mb`; on CPU models (the demo's toys, `device: cpu`) it asks for
  `cluster.cpu_inference_cpus` CPUs and `cluster.cpu_mem_mb_per_model` per model;
- a light job (reports) asks for one CPU and `cluster.cpu_mem_mb`;
- memory and runtime grow with each attempt (x attempt), up to `cluster.max_mem_mb` and
  `cluster.max_runtime` when set.

`check()` compares every job's request with what `sinfo` says the partitions have, and names each
job and resource that could never be scheduled (sbatch would refuse it, or it would pend forever).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable

from cotransfer.config import ModelSpec, Study

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2}
UNKNOWN_SIZE_MB_PER_GPU = 40_000  # host memory per GPU when a model's size is unknown
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z0-9])")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The `cluster:` config section (operational: changing it re-runs nothing)."""

    gpu_partition: str = "gpu"
    cpu_partition: str = "cpu"
    cpus_per_gpu: int = 8
    gpu_mem_overhead_mb: int = 16_000
    gpu_runtime: int = 240  # minutes, first attempt
    cpu_inference_cpus: int = 2
    cpu_mem_mb_per_model: int = 3_000
    cpu_inference_runtime: int = 120
    cpu_mem_mb: int = 4_000
    cpu_runtime: int = 60
    max_mem_mb: int | None = None
    max_runtime: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "ClusterSpec":
        return cls(**(d or {}))


def cluster_spec(study: Study) -> ClusterSpec:
    return ClusterSpec.from_dict(study.raw.get("cluster"))


def device(spec: ModelSpec) -> str:
    """Where a model's jobs run: its `device:`, else cpu for toy models and gpu for the rest."""
    return spec.device or ("cpu" if spec.source == "toy" else "gpu")


def size_b(spec: ModelSpec) -> float | None:
    """Billions of parameters: `params_b:`, else read off the repo or folder name ("QwQ-32B")."""
    if spec.params_b:
        return float(spec.params_b)
    for name in (spec.repo_id, spec.path):
        m = _SIZE.findall((name or "").rsplit("/", 1)[-1])
        if m:
            return float(m[-1])
    return None


def weights_mb(spec: ModelSpec) -> int:
    """Host memory a GPU model needs to load: its weights, or a default per GPU when unknown."""
    b = size_b(spec)
    if b is None:
        return UNKNOWN_SIZE_MB_PER_GPU * spec.tensor_parallel_size
    return math.ceil(b * DTYPE_BYTES.get(spec.dtype, 2) * 1000)


@dataclass(frozen=True, slots=True)
class Request:
    gpus: int
    cpus: int
    mem_mb: int
    runtime: int  # minutes
    partition: str

    def resources(self) -> dict[str, Any]:
        """As Snakemake resources for the SLURM executor plugin. `tasks_per_gpu: 0` keeps the
        plugin from adding --ntasks-per-gpu, which would start the job once per GPU."""
        out = {"slurm_partition": self.partition, "mem_mb": self.mem_mb, "runtime": self.runtime,
               "cpus_per_task": self.cpus, "gpu": self.gpus}
        if self.gpus:
            out["tasks_per_gpu"] = 0
        return out


def _grow(c: ClusterSpec, mem_mb: int, runtime: int, attempt: int) -> tuple[int, int]:
    mem, rt = mem_mb * attempt, runtime * attempt
    if c.max_mem_mb:
        mem = min(mem, max(c.max_mem_mb, mem_mb))
    if c.max_runtime:
        rt = min(rt, max(c.max_runtime, runtime))
    return mem, rt


def inference_request(study: Study, models: Iterable[str], attempt: int = 1) -> Request:
    """One job that loads `models` (all at once, as the ensemble does)."""
    c = cluster_spec(study)
    specs = [study.model(m) for m in models]
    gpu_specs = [s for s in specs if device(s) == "gpu"]
    if gpu_specs:
        gpus = sum(s.tensor_parallel_size for s in gpu_specs)
        mem = c.gpu_mem_overhead_mb + sum(weights_mb(s) for s in gpu_specs)
        mem += c.cpu_mem_mb_per_model * (len(specs) - len(gpu_specs))
        mem, rt = _grow(c, mem, c.gpu_runtime, attempt)
        return Request(gpus, c.cpus_per_gpu * gpus, mem, rt, c.gpu_partition)
    mem, rt = _grow(c, 1000 + c.cpu_mem_mb_per_model * len(specs), c.cpu_inference_runtime, attempt)
    return Request(0, c.cpu_inference_cpus, mem, rt, c.cpu_partition)


def cpu_request(study: Study, attempt: int = 1) -> Request:
    c = cluster_spec(study)
    mem, rt = _grow(c, c.cpu_mem_mb, c.cpu_runtime, attempt)
    return Request(0, 1, mem, rt, c.cpu_partition)


# ---------------------------------------------------------------------------------------------
# partitions and the pre-flight check


@dataclass(slots=True)
class Partition:
    name: str
    default: bool = False
    up: bool = True
    cpus: int = 0  # the most on one node
    mem_mb: int = 0
    gpus: int = 0
    time_limit: int | None = None  # minutes; None: infinite
    nodes: int = 0
    groups: list[tuple[int, int, int]] = field(default_factory=list)  # (cpus, mem_mb, gpus) per node kind


SINFO_FORMAT = "%P|%a|%l|%c|%m|%G|%D"


def _minutes(limit: str) -> int | None:
    """SLURM's time format ([days-]hours:minutes:seconds, minutes, infinite) in minutes."""
    limit = limit.strip()
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in limit:
        d, limit = limit.split("-", 1)
        days = int(d)
    parts = [int(p) for p in limit.split(":")]
    if len(parts) == 1:  # minutes
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:  # minutes:seconds
        h, (m, s) = 0, parts
    else:
        h, m, s = parts[-3:]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    """GPUs per node in sinfo's GRES column ("gpu:4", "gpu:a100:8(S:0-1)", "(null)")."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:()]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from `sinfo -h -o "%P|%a|%l|%c|%m|%G|%D"` (one line per node group)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 7:
            raise ValueError(f"sinfo line not in the format {SINFO_FORMAT!r}: {line!r}")
        name, avail, limit, cpus, mem, gres, nodes = (f.strip() for f in fields)
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, Partition(name, default=default, up=avail == "up",
                                             time_limit=_minutes(limit)))
        group = (int(cpus.rstrip("+")), int(mem.rstrip("+")), _gpus(gres))
        p.groups.append(group)
        p.cpus, p.mem_mb, p.gpus = max(p.cpus, group[0]), max(p.mem_mb, group[1]), max(p.gpus, group[2])
        p.nodes += int(nodes)
    return parts


def sinfo() -> dict[str, Partition]:
    if shutil.which("sinfo") is None:
        raise RuntimeError("sinfo is not on PATH: run the check on a SLURM login node")
    out = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"sinfo failed: {out.stderr.strip()}")
    return parse_sinfo(out.stdout)


@dataclass(slots=True)
class JobRequest:
    """One job's request as the executor will submit it."""

    rule: str
    wildcards: str = ""
    gpus: int = 0
    cpus: int = 1
    mem_mb: int = 0
    runtime: int | None = None
    partition: str | None = None

    @property
    def label(self) -> str:
        return f"{self.rule} ({self.wildcards})" if self.wildcards else self.rule

    @classmethod
    def from_resources(cls, rule: str, wildcards: str, res: dict, threads: int = 1) -> "JobRequest":
        gpus = int(res.get("gpu") or 0)
        cpus = res.get("cpus_per_task")
        if not cpus:
            per_gpu = res.get("cpus_per_gpu")
            cpus = per_gpu * max(gpus, 1) if gpus and per_gpu else threads
        mem = res.get("mem_mb") or 0
        if res.get("mem_mb_per_cpu"):
            mem = res["mem_mb_per_cpu"] * cpus
        runtime = res.get("runtime")
        return cls(rule, wildcards, gpus, int(cpus), int(mem),
                   int(runtime) if isinstance(runtime, (int, float)) else None,
                   res.get("slurm_partition") or None)


def check(jobs: Iterable[JobRequest], partitions: dict[str, Partition]) -> list[str]:
    """Every job and resource that no node of its partition can ever give; [] when all fit."""
    problems = []
    default = next((p.name for p in partitions.values() if p.default), None)
    for job in jobs:
        name = job.partition or default
        if name is None:
            problems.append(f"{job.label}: no partition given and the cluster has no default partition")
            continue
        p = partitions.get(name)
        if p is None:
            problems.append(f"{job.label}: partition {name!r} does not exist (sinfo lists {', '.join(sorted(partitions))})")
            continue
        where = f"partition {name!r}"
        if not p.up:
            problems.append(f"{job.label}: {where} is not up")
        if job.gpus > p.gpus:
            problems.append(f"{job.label}: asks for {job.gpus} GPU(s); a node of {where} has {p.gpus}")
        if job.cpus > p.cpus:
            problems.append(f"{job.label}: asks for {job.cpus} CPUs; a node of {where} has {p.cpus}")
        if job.mem_mb > p.mem_mb:
            problems.append(f"{job.label}: asks for {job.mem_mb} MB of memory; a node of {where} has {p.mem_mb} MB")
        if job.runtime and p.time_limit is not None and job.runtime > p.time_limit:
            problems.append(f"{job.label}: asks for {job.runtime} min; {where} allows {p.time_limit} min")
        each_fits = job.gpus <= p.gpus and job.cpus <= p.cpus and job.mem_mb <= p.mem_mb
        if each_fits and p.groups and not any(job.gpus <= g and job.cpus <= c and job.mem_mb <= m
                                              for c, m, g in p.groups):
            problems.append(f"{job.label}: asks for {job.gpus} GPU(s), {job.cpus} CPUs and {job.mem_mb} MB "
                            f"together; no node of {where} has all of them")
    return problems


def jobs_from_dag(workflow) -> list[JobRequest]:
    """The requests of the jobs a Snakemake run is about to submit (local rules excluded)."""
    out = []
    for job in workflow.dag.needrun_jobs():
        if job.is_local or job.is_group():
            continue
        res = {k: job.resources.get(k) for k in ("gpu", "cpus_per_task", "cpus_per_gpu", "mem_mb",
                                                  "mem_mb_per_cpu", "runtime", "slurm_partition")}
        wc = ", ".join(f"{k}={v}" for k, v in job.wildcards_dict.items())
        out.append(JobRequest.from_resources(job.rule.name, wc, res, job.threads))
    return out


def parse_dry_run(text: str, local_rules: Iterable[str] = ()) -> list[JobRequest]:
    """The jobs of a `snakemake -n` plan, with the resources it prints (attempt 1)."""
    local = set(local_rules)
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(local)?rule (\w+):", block)
        if not m or m.group(1) or m.group(2) in local:
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        res_line = re.search(r"^\s+resources: (.*)$", block, re.M)
        res: dict[str, Any] = {}
        for item in (res_line.group(1).split(", ") if res_line else []):
            k, _, v = item.partition("=")
            res[k.strip()] = int(v) if re.fullmatch(r"-?\d+", v.strip()) else v.strip()
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        out.append(JobRequest.from_resources(m.group(2), wc.group(1) if wc else "", res,
                                             int(threads.group(1)) if threads else 1))
    return out


def planned_jobs(profile: str | None, configfiles: list[str], snakefile: str, extra: list[str] = ()) -> list[JobRequest]:
    """The jobs `snakemake -n` plans with this profile and config, as they would be submitted."""
    import sys

    import yaml

    from cotransfer.config import load
    from cotransfer.plan import local_rules

    cmd = [sys.executable, "-m", "snakemake", "-s", snakefile, "-n"]
    if profile:
        cmd += ["--profile", profile]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    cmd += list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake could not plan the run:\n{(proc.stderr or proc.stdout)[-3000:]}")
    if not configfiles and profile:  # the profile's own configfile
        from pathlib import Path

        names = ("profile.v9+.yaml", "config.v9+.yaml", "config.yaml")  # Snakemake's lookup order
        prof = next((Path(profile) / n for n in names if (Path(profile) / n).exists()), None)
        cf = (yaml.safe_load(prof.read_text()) or {}).get("configfile") if prof else None
        configfiles = [cf] if isinstance(cf, str) else list(cf or [])
    study = load(configfiles[-1]) if configfiles else None
    local = local_rules(study) if study else []
    return parse_dry_run(proc.stdout + proc.stderr, local)
