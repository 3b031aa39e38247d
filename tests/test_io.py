import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from cotransfer import io


def test_provenance_survives_and_is_visible_to_both_readers(tmp_path, demo_config):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    prov = io.provenance(rule="r", wildcards={"model": "m"}, config=demo_config, inputs=[str(src)],
                         models={"m": {"repo_id": "a/b", "token": "hf_secret"}})
    out = io.write_parquet(pl.DataFrame({"x": [1, 2]}), tmp_path / "t.parquet", prov)
    back = io.read_provenance(out)
    assert back["rule"] == "r" and back["wildcards"] == {"model": "m"}
    assert back["inputs"][str(src)]["sha256"] == io.sha256_file(src)
    assert back["models"]["m"]["token"] == "<redacted>"
    assert "hf_secret" not in json.dumps(back)
    assert back["packages"]["polars"] == pl.__version__
    assert back["config_sha256"] and back["started_utc"] and back["finished_utc"]
    assert set(back["git"]) == {"commit", "dirty"}
    # pyarrow's schema reader and polars' metadata reader both see it
    assert io.PROVENANCE_KEY.encode() in pq.read_schema(out).metadata
    assert io.PROVENANCE_KEY in pl.read_parquet_metadata(out)
    assert pl.read_parquet(out)["x"].to_list() == [1, 2]


def test_atomic_write_respects_umask(tmp_path):
    dest = io.write_text(tmp_path / "t.txt", "x")
    assert dest.stat().st_mode & 0o777 == 0o666 & ~io._umask()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    dest = tmp_path / "t.txt"
    io.write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_scrub_url_credentials():
    assert io.scrub({"url": "https://user:pw@host/x"}) == {"url": "https://host/x"}
    assert io.scrub({"HF_TOKEN": "x", "nested": [{"api_key": "y"}]}) == {
        "HF_TOKEN": "<redacted>", "nested": [{"api_key": "<redacted>"}]}


def test_directory_hash_changes_with_content(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = io.sha256_path(tmp_path)
    (tmp_path / "a").write_text("2")
    assert io.sha256_path(tmp_path) != h1


def test_provenance_from_snakemake_flattens_named_lists(tmp_path):
    from types import SimpleNamespace

    from snakemake.iocontainers import InputFiles

    files = []
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
        files.append(str(tmp_path / name))
    inp = InputFiles(files)
    inp._set_name("itemsfile", 0)
    inp._set_name("generations", 1, 3)
    smk = SimpleNamespace(rule="score", wildcards=InputFiles([]), config={"x": 1}, input=inp)
    prov = io.provenance_from_snakemake(smk)
    assert set(prov["inputs"]) == {"itemsfile", "generations[0]", "generations[1]"}
    assert prov["inputs"]["generations[1]"]["sha256"] == io.sha256_file(tmp_path / "c")
