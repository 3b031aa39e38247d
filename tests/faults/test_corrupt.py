"""Truncated, corrupt and foreign inputs of every stage (docs/reliability.md): each stage,
given one bad input, fails with an error that names the file, says what is wrong and, for a
file the pipeline writes, which rule writes it and how to make it again; and a job's log says
so too (not only Snakemake's stderr)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_workflow import snakemake  # noqa: E402

from cotransfer import io, plan, stages  # noqa: E402
from cotransfer.config import Study, validate  # noqa: E402

pytestmark = pytest.mark.workflow

D = "toyarith"
R = "results"


def _gen(model, condition, variant=None, source=None):
    return plan.generation_path(R, D, model, condition, variant, source)


def _manifest(m):
    return f"resources/models/{m}.json"


#: (input file, the stage reading it, the rule that writes it). Outputs go to `out/`.
def cases(study: Study) -> list[tuple[str, str, object, str]]:
    """(case id, bad input, call of the stage that reads it, rule writing the input)."""
    items = plan.items_path(R, D)
    qwq_cots = plan.cot_path(R, D, "full", "toy_qwq", "default")
    qwq_sentences = plan.sentences_path(R, D, "toy_qwq", "default")
    ens = "ens"
    transfer_out = [c.output("out", D, "toy_dapo") for c in plan.prefill_cells(study, "transfer")]
    probe_out = [c.output("out", D, "toy_dapo") for c in plan.prefill_cells(study, "probe")]
    tables = {n: f"{R}/tables/{n}.parquet" for n in plan.metric_tables(study)}
    calls = {
        "generate": lambda: stages.generate(study, D, "toy_qwq", items, _manifest("toy_qwq"),
                                            {k: f"out/{k}.parquet" for k in ("empty", "default", "sampled", "cot_default",
                                                                              "cot_sampled")}, {}),
        "transfer": lambda: stages.prefill(study, D, "toy_dapo", "transfer", items, _manifest("toy_dapo"),
                                           [p.replace("out/", f"{R}/", 1) for p in transfer_out], {}),
        "probe": lambda: stages.probe(study, D, "toy_dapo", items, _manifest("toy_dapo"),
                                      [p.replace("out/", f"{R}/", 1) for p in probe_out], {},
                                      transfer=[plan.Cell("transfer", "full", m).output(R, D, "toy_dapo")
                                                for m in study.models]),
        "ensemble": lambda: stages.ensemble(study, D, ens, items, {m: _manifest(m) for m in study.ensembles[ens].members},
                                            "out/ens.parquet", "out/ens.steps.parquet", {}),
        "split": lambda: stages.split(study, D, "models", [t.sentences(R, D) for t in plan.cot_tables(study, "models")], {}),
        "strip": lambda: stages.strip(study, D, "models", items, [t.stripped(R, D) for t in plan.cot_tables(study, "models")],
                                      {}, _manifest(study.strip_model)),
        "score": lambda: stages.score(study, D, items, [_gen(m, c, v) for m in study.models for c, v in
                                                        (("default", "full"), ("sampled", "full"))] +
                                      [_gen("toy_dapo", "transfer", "full", "toy_qwq")], "out/scored.parquet", {}),
        "aggregate": lambda: stages.aggregate(study, [f"{R}/scored/{D}.parquet"],
                                              {**{n: f"out/{n}.parquet" for n in tables}, "answers": "out/answers.parquet",
                                               "consistency_summary_csv": "out/c.csv", "accuracy_csv": "out/a.csv"}, {}),
        "strip_report": lambda: stages.strip_report(study, "out/qc.parquet", "out/qc.csv", {}),
        "ensemble_report": lambda: stages.ensemble_report(study, "out/diag.parquet", {}),
        "figures": lambda: stages.figures(study, tables, "out/figures", []),
    }
    return [
        ("items/generate", items, calls["generate"], "items"),
        ("manifest/generate", _manifest("toy_qwq"), calls["generate"], "prepare_model"),
        ("items/transfer", items, calls["transfer"], "items"),
        ("cots/transfer", qwq_cots, calls["transfer"], "generate"),
        ("stripped/transfer", plan.cot_path(R, D, "stripped", "toy_dapo", "sampled"), calls["transfer"], "strip"),
        ("sentences/probe", qwq_sentences, calls["probe"], "split"),
        ("transfer/probe", _gen("toy_dapo", "transfer", "full", "toy_qwq"), calls["probe"], "transfer"),
        ("items/ensemble", items, calls["ensemble"], "items"),
        ("cots/split", qwq_cots, calls["split"], "generate"),
        ("sentences/strip", qwq_sentences, calls["strip"], "split"),
        ("generations/strip", _gen("toy_qwq", "default", "full"), calls["strip"], "generate"),
        ("generations/score", _gen("toy_dapo", "transfer", "full", "toy_qwq"), calls["score"], "transfer"),
        ("items/score", items, calls["score"], "items"),
        ("scored/aggregate", f"{R}/scored/{D}.parquet", calls["aggregate"], "score"),
        ("stripped/strip_report", plan.cot_path(R, D, "stripped", "toy_qwq", "default"), calls["strip_report"], "strip"),
        ("steps/ensemble_report", plan.ensemble_steps_path(R, D, ens), calls["ensemble_report"], "ensemble"),
        ("ensemble_cots/ensemble_report", plan.cot_path(R, D, "full", ens, "ensemble"), calls["ensemble_report"],
         "ensemble"),
        ("table/figures", tables["consistency"], calls["figures"], "aggregate"),
    ]


CORRUPTIONS = {
    "truncated": lambda b: b[: max(len(b) - 64, 8)],
    "garbage": lambda b: b"this is not the file you are looking for\n" * 8,
    "empty": lambda b: b"",
}
N_CASES = 18  # len(cases(...)); docs/reliability.md quotes cases x corruptions


@pytest.fixture(scope="module")
def copy_of_demo(fault_demo, tmp_path_factory):
    """A finished demo's results and resources, copied (the stages run in-process here)."""
    wd = tmp_path_factory.mktemp("corrupt")
    for sub in ("results", "resources"):
        shutil.copytree(fault_demo / sub, wd / sub)
    (wd / "out").mkdir()
    (wd / "demo.yaml").write_text((fault_demo / "demo.yaml").read_text())
    return wd


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_every_stage_names_a_bad_input(copy_of_demo, monkeypatch, kind):
    monkeypatch.chdir(copy_of_demo)
    study = Study.from_dict(validate(yaml.safe_load(Path("demo.yaml").read_text())))
    all_cases = cases(study)
    assert len(all_cases) == N_CASES
    failures = []
    for case, path, call, rule in all_cases:
        original = Path(path).read_bytes()
        Path(path).write_bytes(CORRUPTIONS[kind](original))
        try:
            call()
        except io.TableError as err:
            msg = str(err)
            if path not in msg or f"rule {rule}" not in msg or "\n" in msg:
                failures.append(f"{case}: {msg}")
        except Exception as err:  # noqa: BLE001 - any other error is what this test exists to catch
            failures.append(f"{case}: {type(err).__name__}: {err}")
        else:
            failures.append(f"{case}: no error")
        finally:
            Path(path).write_bytes(original)
    assert not failures, "\n".join(failures)


def test_a_table_lacking_columns_is_named(copy_of_demo, monkeypatch):
    monkeypatch.chdir(copy_of_demo)
    study = Study.from_dict(validate(yaml.safe_load(Path("demo.yaml").read_text())))
    scored = f"{R}/scored/{D}.parquet"
    original = Path(scored).read_bytes()
    pl.read_parquet(scored).drop("valid", "correct").write_parquet(scored)
    try:
        with pytest.raises((io.TableError, ValueError), match=r"scored/toyarith\.parquet.*lack"):
            stages.aggregate(study, [scored], {"answers": "out/answers.parquet"}, {})
    finally:
        Path(scored).write_bytes(original)


def test_truncated_generations_fail_the_score_job_naming_the_file_in_its_log(fault_demo, tmp_path):
    """The defect of issue 15: a truncated generations file failed the score job with a bare
    `parquet: File out of specification`, naming none of its inputs, and an empty job log."""
    wd = tmp_path / "wd"
    for sub in ("results", "resources"):
        shutil.copytree(fault_demo / sub, wd / sub)
    shutil.copytree(fault_demo / ".snakemake", wd / ".snakemake", ignore=shutil.ignore_patterns("locks", "incomplete"))
    (wd / "demo.yaml").write_text((fault_demo / "demo.yaml").read_text())
    bad = wd / _gen("toy_dapo", "ensemble", "full", "ens")  # read by the score job only
    bad.write_bytes(bad.read_bytes()[:-100])
    proc = snakemake("--cores", "2", "--configfile", "demo.yaml", "--forcerun", "score", "--until", "score",
                     cwd=wd, check=False)
    assert proc.returncode != 0
    rel = str(bad.relative_to(wd))
    logs = "".join(p.read_text() for p in wd.rglob("logs/score/*.log"))
    assert rel in logs and "rule transfer_ensemble" in logs, logs[-2000:]
    assert rel in proc.stdout + proc.stderr
