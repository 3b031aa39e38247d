"""The Hub code path of the dataset adapters, offline, against a Hugging Face cache built by hand.

Nothing here mocks `snapshot_download`: the cache directory has the layout huggingface_hub reads
(`datasets--{org}--{name}/refs/{branch}` holding a commit sha, `snapshots/{sha}/...` symlinks into
`blobs/`, optionally `trees/{sha}.json`), `HF_HUB_OFFLINE=1` is set in the environment and in
`huggingface_hub.constants` (read once at import), and every socket connection fails the test.

What huggingface_hub 2.4 does offline (see `_snapshot_download.py`):
- without `local_dir`, it resolves a branch through `refs/` and returns `snapshots/{sha}`;
- with `local_dir`, it never reads the shared cache: it returns `local_dir` as is if it is
  non-empty, else raises `LocalEntryNotFoundError`.
So both adapters fetch through `datasets.base.download_dataset`, which then reads the cache
itself: they work offline on an empty `dest` as well as on one filled by an earlier download.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import polars as pl
import pytest

from cotransfer.config import DatasetSpec
from cotransfer.datasets.gsm8k import GSM8K
from cotransfer.datasets.medcalc import COLUMNS, MedCalc

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants  # noqa: E402
from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError  # noqa: E402

GSM8K_SHA = "3f5c0e8a1b2d4c6e8f0a1b2c3d4e5f6a7b8c9d0e"
MEDCALC_SHA = "0123456789abcdef0123456789abcdef01234567"
GSM8K_FILE = "main/test-00000-of-00001.parquet"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repo(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], *, refs=("main",),
             tree: dict[str, bytes] | None = None) -> Path:
    """Write one dataset repo into a Hub cache: blobs, a snapshot of symlinks, refs, a tree listing.

    `tree` (default: `files`) is what the cached tree listing says the commit holds; listing more
    than `files` makes the snapshot incomplete.
    """
    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()  # LFS files are named by sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline: huggingface_hub reads it verbatim
    listing = {name: {"size": len(data), "blob_id": git_blob_id(data), "lfs_sha256": hashlib.sha256(data).hexdigest(),
                      "lfs_size": len(data)} for name, data in (tree if tree is not None else files).items()}
    (repo / "trees").mkdir(parents=True, exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return snapshot


def gsm8k_bytes(tmp_path: Path, n: int = 15) -> bytes:
    path = tmp_path / "gsm8k.parquet"
    pl.DataFrame({"question": [f"Q{i}: what is {i} + {i}?" for i in range(n)],
                  "answer": [f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i * 1000:,}" for i in range(n)]}
                 ).write_parquet(path)
    return path.read_bytes()


def medcalc_bytes(tmp_path: Path, n: int = 4) -> bytes:
    rows = [{c: "" for c in COLUMNS} | {"Row Number": str(i + 1), "Calculator ID": "4", "Category": "risk",
                                        "Output Type": "integer", "Patient Note": f"note {i}", "Question": "score?",
                                        "Ground Truth Answer": str(i), "Lower Limit": str(i), "Upper Limit": str(i)}
            for i in range(n)]
    path = tmp_path / "test_data.csv"
    pl.DataFrame(rows, schema={c: pl.String for c in COLUMNS}).write_csv(path)
    return path.read_bytes()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache under HF_HOME, offline mode on, network connections forbidden."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # constants are read from the environment once, at import: set them too
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))

    def no_network(*a, **k):
        pytest.fail(f"network connection attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert huggingface_hub.is_offline_mode()
    return cache


@pytest.fixture
def spy(monkeypatch):
    """Record the calls to the real `snapshot_download` (it still runs)."""
    calls, real = [], huggingface_hub.snapshot_download

    def snapshot_download(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def gsm8k(**kw) -> GSM8K:
    return GSM8K(DatasetSpec(name="gsm8k", adapter="gsm8k", **kw))


def medcalc(**kw) -> MedCalc:
    return MedCalc(DatasetSpec(name="medcalc", adapter="medcalc", repo_id="ncbi/MedCalc-Bench-v1.0", **kw))


def test_hand_built_cache_is_what_huggingface_hub_reads(hub_cache, tmp_path):
    add_repo(hub_cache, "openai/gsm8k", GSM8K_SHA, {GSM8K_FILE: gsm8k_bytes(tmp_path)})
    info = huggingface_hub.scan_cache_dir(hub_cache)
    assert not info.warnings
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type) == ("openai/gsm8k", "dataset")
    (rev,) = repo.revisions
    assert rev.commit_hash == GSM8K_SHA and rev.refs == frozenset({"main"})
    assert {f.file_name for f in rev.files} == {"test-00000-of-00001.parquet"}
    folder = huggingface_hub.snapshot_download("openai/gsm8k", repo_type="dataset", local_files_only=True)
    assert Path(folder) == hub_cache / "datasets--openai--gsm8k" / "snapshots" / GSM8K_SHA


# -- gsm8k ----------------------------------------------------------------------------------------


def test_gsm8k_fetch_offline_from_cache(hub_cache, tmp_path, spy):
    data = gsm8k_bytes(tmp_path)
    add_repo(hub_cache, "openai/gsm8k", GSM8K_SHA, {GSM8K_FILE: data,
                                                     "main/train-00000-of-00001.parquet": b"not wanted",
                                                     "socratic/test-00000-of-00001.parquet": b"not wanted"})
    dest = tmp_path / "raw"
    prov = gsm8k().fetch(dest)

    assert (dest / GSM8K_FILE).read_bytes() == data and not (dest / GSM8K_FILE).is_symlink()
    assert prov["files"] == {GSM8K_FILE: hashlib.sha256(data).hexdigest()} == {GSM8K_FILE: sha256(dest / GSM8K_FILE)}
    assert prov["resolved_revision"] == GSM8K_SHA
    assert (prov["dataset_repo_id"], prov["dataset_revision"]) == ("openai/gsm8k", "main")
    assert prov["data_files"] == [GSM8K_FILE]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [GSM8K_FILE]
    # the real function ran twice: local_dir (refused offline), then the shared cache
    assert [c.get("local_dir") for c in spy] == [dest, None]
    assert spy[1]["local_files_only"] is True and spy[1]["allow_patterns"] == ["main/test-*"]

    items = gsm8k(n_items=5).load(dest)
    assert items.height == 5 and set(items["gold"]) <= {str(2 * i * 1000) for i in range(15)}


def test_gsm8k_fetch_offline_pinned_sha_needs_no_ref(hub_cache, tmp_path):
    data = gsm8k_bytes(tmp_path)
    add_repo(hub_cache, "openai/gsm8k", GSM8K_SHA, {GSM8K_FILE: data}, refs=())
    prov = gsm8k(revision=GSM8K_SHA).fetch(tmp_path / "raw")
    assert prov["resolved_revision"] == GSM8K_SHA
    assert prov["files"] == {GSM8K_FILE: hashlib.sha256(data).hexdigest()}
    with pytest.raises(LocalEntryNotFoundError):  # a branch with no ref in the cache cannot resolve
        gsm8k(revision="main").fetch(tmp_path / "raw2")


def test_gsm8k_fetch_offline_other_repo_id_and_config(hub_cache, tmp_path):
    data = gsm8k_bytes(tmp_path, n=3)
    add_repo(hub_cache, "me/gsm8k-mirror", GSM8K_SHA, {"socratic/test-00000-of-00001.parquet": data})
    prov = gsm8k(repo_id="me/gsm8k-mirror", options=(("config", "socratic"),)).fetch(tmp_path / "raw")
    assert prov["dataset_repo_id"] == "me/gsm8k-mirror" and prov["resolved_revision"] == GSM8K_SHA
    assert list(prov["files"]) == ["socratic/test-00000-of-00001.parquet"]


def test_gsm8k_fetch_offline_not_cached_fails_clearly(hub_cache, tmp_path):
    with pytest.raises(LocalEntryNotFoundError):
        gsm8k().fetch(tmp_path / "raw")


def test_gsm8k_fetch_offline_refuses_an_incomplete_snapshot(hub_cache, tmp_path):
    """The cached tree listing names two shards; only one is in the snapshot."""
    data = gsm8k_bytes(tmp_path)
    add_repo(hub_cache, "openai/gsm8k", GSM8K_SHA, {GSM8K_FILE: data},
             tree={GSM8K_FILE: data, "main/test-00001-of-00002.parquet": data})
    with pytest.raises(IncompleteSnapshotError):
        gsm8k().fetch(tmp_path / "raw")


def test_gsm8k_fetch_offline_rerun_keeps_an_earlier_download(hub_cache, tmp_path, spy):
    """dest filled by an earlier online `local_dir` download: huggingface_hub returns it as is and
    the commit comes from its download metadata (no cache needed)."""
    from huggingface_hub._local_folder import write_download_metadata

    dest = tmp_path / "raw"
    (dest / "main").mkdir(parents=True)
    (dest / GSM8K_FILE).write_bytes(gsm8k_bytes(tmp_path))
    write_download_metadata(dest, GSM8K_FILE, GSM8K_SHA, "etag")
    (dest / "fetch.json").write_text("{}")  # left by the data stage
    prov = gsm8k().fetch(dest)
    assert prov["resolved_revision"] == GSM8K_SHA
    assert prov["files"] == {GSM8K_FILE: sha256(dest / GSM8K_FILE)}
    assert [c.get("local_dir") for c in spy] == [dest]


# -- medcalc --------------------------------------------------------------------------------------


def test_medcalc_fetch_offline_from_cache(hub_cache, tmp_path, spy):
    data = medcalc_bytes(tmp_path)
    add_repo(hub_cache, "ncbi/MedCalc-Bench-v1.0", MEDCALC_SHA, {"test_data.csv": data, "README.md": b"not wanted"})
    dest = tmp_path / "raw"
    prov = medcalc().fetch(dest)
    assert prov["files"]["test_data.csv"] == hashlib.sha256(data).hexdigest() == sha256(dest / "test_data.csv")
    assert prov["resolved_revision"] == MEDCALC_SHA
    assert (prov["dataset_repo_id"], prov["dataset_revision"]) == ("ncbi/MedCalc-Bench-v1.0", "main")
    assert prov["data_files"] == ["test_data.csv"] and list(prov["files"]) == ["test_data.csv"]
    assert not (dest / "test_data.csv").is_symlink() and not (dest / "README.md").exists()
    # local_dir (refused offline), then the shared cache with the same patterns
    assert [c.get("local_dir") for c in spy] == [dest, None]
    assert spy[1]["local_files_only"] is True
    assert spy[1]["allow_patterns"] == ["*.csv", "*.parquet", "*.jsonl", "*.json"]
    assert medcalc(n_items=2).load(dest).height == 2


def test_medcalc_fetch_offline_pinned_sha_and_leftover_dest(hub_cache, tmp_path):
    """A pinned sha needs no ref; a dest holding only the data stage's fetch.json (huggingface_hub
    returns it as is offline) still gets the table from the cache."""
    data = medcalc_bytes(tmp_path)
    add_repo(hub_cache, "ncbi/MedCalc-Bench-v1.0", MEDCALC_SHA, {"data/test_data.csv": data}, refs=())
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "fetch.json").write_text("{}")
    prov = medcalc(revision=MEDCALC_SHA).fetch(dest)
    assert prov["resolved_revision"] == MEDCALC_SHA and prov["data_files"] == ["data/test_data.csv"]
    assert (dest / "data" / "test_data.csv").read_bytes() == data


def test_medcalc_fetch_offline_not_cached_fails_clearly(hub_cache, tmp_path):
    with pytest.raises(LocalEntryNotFoundError):
        medcalc().fetch(tmp_path / "raw")


def test_medcalc_fetch_offline_rerun_keeps_an_earlier_download(hub_cache, tmp_path, spy):
    from huggingface_hub._local_folder import write_download_metadata

    data = medcalc_bytes(tmp_path)
    add_repo(hub_cache, "ncbi/MedCalc-Bench-v1.0", MEDCALC_SHA, {"test_data.csv": data})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "test_data.csv").write_bytes(data)
    write_download_metadata(dest, "test_data.csv", MEDCALC_SHA, "etag")
    prov = medcalc().fetch(dest)
    assert [c.get("local_dir") for c in spy] == [dest]
    assert prov["files"] == {"test_data.csv": hashlib.sha256(data).hexdigest()}
    assert prov["resolved_revision"] == MEDCALC_SHA
    assert medcalc(n_items=2).load(dest).height == 2
