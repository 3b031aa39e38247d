"""The adapter interface and its registry, and the Hugging Face Hub helpers that adapters share."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import polars as pl

from cotransfer.registry import registrar

if TYPE_CHECKING:
    from cotransfer.config import DatasetSpec

log = logging.getLogger(__name__)

ITEM_SCHEMA = {"item_id": pl.String, "system": pl.String, "user": pl.String,
               "gold": pl.String, "meta": pl.String}

ADAPTERS: dict[str, type["DatasetAdapter"]] = {}

#: the table formats a local `path:` file (and `medcalc.read_table`) reads
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")


register = registrar(ADAPTERS, "dataset adapter")  # register(name) is a class decorator


def get_adapter(name: str) -> type["DatasetAdapter"]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset adapter {name!r}; known: {sorted(ADAPTERS)}") from None


@dataclass(frozen=True, slots=True)
class Scored:
    """One parsed and scored answer.

    answer  normalized answer string used for comparisons between models (None: not parsed)
    valid   whether the answer counts for consistency
    correct True/False, or None when it cannot be judged
    status  "ok" or a reason code (not_found, no_number, bad_date, bad_expr, ...)
    score   the answer's score in [0, 1], or None when it cannot be judged. Not given (None), it
            is derived from `correct`: 1.0 if correct, 0.0 if not, None if `correct` is None.
            A graded adapter (Instruction Induction: the similarity to the references) gives it.
    """

    answer: str | None
    valid: bool
    correct: bool | None
    status: str
    score: float | None = None

    def __post_init__(self):
        if self.score is None and self.correct is not None:
            object.__setattr__(self, "score", 1.0 if self.correct else 0.0)


class DatasetAdapter:
    """Base class. Subclasses set `version` and implement `load`, `parse_and_score`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    #: whether `fetch` needs the network (then the pipeline runs it as a local rule)
    remote: ClassVar[bool] = False
    #: whether answers are numbers, so that a thought's last number is the answer it states
    #: (answer removal's rule method for a thought with no answer phase, e.g. an ensemble's)
    numeric_answers: ClassVar[bool] = False
    #: what a local `path:` must be: "file" (one table), "dir" (a folder in the adapter's
    #: layout), or None (the adapter reads no path)
    local_path: ClassVar[str | None] = "file"
    #: what `available()` counts, in the words of an error message
    size_unit: ClassVar[str] = "rows"

    def __init__(self, spec: "DatasetSpec"):
        self.spec = spec

    # -- before any job (cotransfer.config.check_inputs) -------------------------------------

    def check_inputs(self) -> None:
        """Check what the spec names on this machine, before any job runs and without the
        network: by default that a local `path:` is a file (or a folder, `local_path`). Raise
        ValueError whose message starts with the offending key (`datasets.<name>.path: ...`)."""
        if not self.spec.path or self.local_path is None:
            return
        key, path = f"datasets.{self.spec.name}.path", Path(self.spec.path)
        where = self.spec.path if path.is_absolute() else \
            f"{self.spec.path} (relative to the working directory {Path.cwd()})"
        if not path.exists():
            raise ValueError(f"{key}: no such {'folder' if self.local_path == 'dir' else 'file'} {where}")
        if self.local_path == "file" and not path.is_file():
            raise ValueError(f"{key}: {where} is a folder; this adapter reads one table file")
        if self.local_path == "dir" and not path.is_dir():
            raise ValueError(f"{key}: {where} is a file; this adapter reads a folder")

    def available(self) -> int | None:
        """How many distinct items the dataset holds for this spec (`size_unit`), when that is
        known without the network: the rows of a local file, a size the options pin, the space a
        synthetic task draws from. None: known only after the download. Called after
        `check_inputs` passed; `cotransfer.config` refuses an `n_items` above it before any job."""
        return None

    def local_rows(self) -> int | None:
        """The rows of the local `path:` table (None without a path), counted once and checked
        against the option `expected_rows` when it is set; ValueError naming the key otherwise."""
        if not self.spec.path:
            return None
        if getattr(self, "_local_rows", None) is None:
            key = f"datasets.{self.spec.name}"
            try:
                rows = count_rows(Path(self.spec.path))
            except Exception as e:  # noqa: BLE001 - any reader failure, with the file named
                raise ValueError(f"{key}.path: cannot read {self.spec.path} as a table: {_one_line(e)}") from None
            expected = self.spec.opts.get("expected_rows")
            if expected is not None and rows != _count_option(expected, f"{key}.options.expected_rows"):
                raise ValueError(f"{key}.options.expected_rows: {self.spec.path} has {rows} rows, expected "
                                 f"{expected} (wrong file, split or version?)")
            self._local_rows = rows
        return self._local_rows

    def expected_rows(self) -> int | None:
        """The size the option `expected_rows` pins (the adapter fails on another), or None."""
        expected = self.spec.opts.get("expected_rows")
        if expected is None:
            return None
        return _count_option(expected, f"datasets.{self.spec.name}.options.expected_rows")

    # -- data stage -------------------------------------------------------------------------

    def fetch(self, dest: Path) -> dict:
        """Download the raw files into `dest`; return their provenance (ids, revision, sha256)."""
        dest.mkdir(parents=True, exist_ok=True)
        return {}

    def load(self, raw: Path) -> pl.DataFrame:
        """Return the sampled items table (ITEM_SCHEMA columns), drawn once, in sample order."""
        raise NotImplementedError

    def load_all(self, raw: Path | None) -> pl.DataFrame:
        """Every item of the raw data, unsampled (for `cotransfer score`); default: `load`."""
        return self.load(raw)

    # -- scoring ----------------------------------------------------------------------------

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        """Parse the generated answer segment only (never the prompt or the thinking)."""
        raise NotImplementedError

    def category(self, item: dict) -> str | None:
        """The item's category for per-category accuracy (method.md 8.2), from the item as
        `parse_and_score` gets it (meta as JSON text or a dict); None for a dataset without one."""
        return None

    # -- helpers ----------------------------------------------------------------------------

    def copy_local_file(self, dest: Path) -> dict:
        """Copy the config's local `path:` file into `dest`; its provenance (no hub revision)."""
        import shutil

        from cotransfer.io import sha256_file

        src = Path(self.spec.path)
        if not src.is_file():
            raise FileNotFoundError(f"datasets.{self.spec.name}.path: no such file {src}")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / src.name)
        return {"dataset_repo_id": self.spec.repo_id, "dataset_revision": None, "resolved_revision": None,
                "source_path": str(src), "data_files": [src.name],
                "files": {src.name: sha256_file(dest / src.name)}}

    @staticmethod
    def items_frame(rows: list[dict]) -> pl.DataFrame:
        """Build an items table, checking the contract: unique non-empty ids, JSON meta."""
        for r in rows:
            r.setdefault("system", None)
            r["meta"] = json.dumps(r.get("meta") or {}, sort_keys=True)
        df = pl.DataFrame(rows, schema=ITEM_SCHEMA)
        if df.is_empty():
            raise ValueError("dataset produced no items")
        dup = df.filter(pl.col("item_id").is_duplicated())["item_id"].unique().to_list()
        if dup:
            raise ValueError(f"duplicate item_id values: {dup[:5]}")
        if df["item_id"].is_null().any() or (df["item_id"] == "").any():
            raise ValueError("empty item_id")
        return df


def scan_data_table(path: Path) -> pl.LazyFrame:
    """A dataset's CSV, Parquet or JSONL table, lazily (CSV: every column as text, quoted
    newlines inside): what `medcalc.read_table` reads and `count_rows` counts."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pl.scan_parquet(path)
    if name.endswith(".jsonl"):
        return pl.scan_ndjson(path)
    if name.endswith(".csv"):
        return pl.scan_csv(path, infer_schema=False)
    raise ValueError(f"{path}: unsupported table format {path.suffix or '(no suffix)'}; "
                     f"expected {', '.join(TABLE_SUFFIXES)}")


def count_rows(path: Path) -> int:
    """The rows of a dataset's table without keeping it (Parquet: from its footer)."""
    return int(scan_data_table(path).select(pl.len()).collect().item())


def _count_option(value, key: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# -- Hugging Face Hub ---------------------------------------------------------------------------


def is_sha(revision: str | None) -> bool:
    return bool(revision) and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def data_files(root: Path) -> list[Path]:
    """Every file under `root`, outside hidden folders such as huggingface_hub's `.cache/`."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def snapshot_commit(dest: Path) -> str | None:
    """Commit recorded by huggingface_hub in `<local_dir>/.cache/huggingface/download/*.metadata`
    (first line: the commit hash); lets an offline re-run still name the revision it holds."""
    for meta in sorted((dest / ".cache" / "huggingface" / "download").rglob("*.metadata")):
        try:
            first = meta.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            continue
        if is_sha(first):
            return first
    return None


def download_dataset(repo_id: str, revision: str | None, patterns: list[str], dest: Path,
                     wanted: Callable[[Path], list[Path]]) -> tuple[list[Path], str | None]:
    """Put the files of a Hub dataset that match `patterns` into `dest`; return (`wanted(dest)`,
    the commit of the cache snapshot they were copied from, or None when they were downloaded).

    `wanted(root)` lists the files the adapter needs under a folder; none there means "not
    fetched". The download is huggingface_hub's `local_dir` mode, which offline (HF_HUB_OFFLINE=1
    or no connection) never looks at the shared Hub cache: it returns `dest` as it is when it is
    not empty (a re-run over an earlier download) and raises `LocalEntryNotFoundError` when it is.
    So when that gives no wanted file, the same files are taken from the cache
    (`snapshot_download(..., local_files_only=True)`, which resolves a branch through the cache's
    refs) and copied into `dest` atomically; if the cache lacks them too, huggingface_hub's
    `LocalEntryNotFoundError` (or `IncompleteSnapshotError`) propagates. The snapshot folder is
    named by its commit, which is what the caller records as the resolved revision.
    """
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    from cotransfer.io import atomic_path

    kw = dict(repo_id=repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns)
    try:
        huggingface_hub.snapshot_download(**kw, local_dir=dest)
        files = wanted(dest)
    except LocalEntryNotFoundError as e:
        log.warning("%s@%s: Hub unreachable (%s); taking the files from the local Hub cache",
                    repo_id, revision, e)
        files = []
    if files:
        return files, None
    snapshot = Path(huggingface_hub.snapshot_download(**kw, local_files_only=True))
    names = [p.relative_to(snapshot).as_posix() for p in data_files(snapshot)]
    for name in filter_repo_objects(names, allow_patterns=patterns):  # the download's own filter
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(snapshot / name, tmp)  # follows the cache's symlink into blobs/
    files = wanted(dest)
    if not files:
        raise FileNotFoundError(f"{repo_id}@{revision}: neither the download nor the cache snapshot "
                                f"{snapshot} has the files needed ({patterns})")
    return files, snapshot.name if is_sha(snapshot.name) else None


def resolve_revision(repo_id: str, revision: str | None, dest: Path, cached_commit: str | None) -> str | None:
    """The commit fetched: the revision if it is a sha, else the cache snapshot's commit (offline
    fallback), else asked from the Hub, else huggingface_hub's download metadata in `dest`;
    None if none of these works."""
    if is_sha(revision):
        return revision
    if cached_commit:
        return cached_commit
    try:
        import huggingface_hub

        sha = huggingface_hub.HfApi().dataset_info(repo_id, revision=revision).sha
        if sha:
            return sha
    except Exception as e:  # offline, rate limited, gated: provenance degrades, fetch does not fail
        log.warning("could not resolve %s@%s on the Hub: %s", repo_id, revision, e)
    return snapshot_commit(dest)
