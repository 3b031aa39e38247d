# Configuration, typed view, wildcard vocabulary, input/params/resource functions.
# Rules stay declarative; everything computed lives here (or in the cotransfer library).

import os
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.exceptions import WorkflowError

from cotransfer import cluster, plan
from cotransfer.codehash import code_hash
from cotransfer.config import ConfigError, Study, validate as validate_config
from cotransfer.datasets import get_adapter
from cotransfer.ensemble import ENSEMBLE_VERSION
from cotransfer.formats import get_format
from cotransfer.toymodels import TOY_VERSION

try:
    validate_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None

STUDY = Study.from_dict(config)
R = STUDY.results
RES = STUDY.resources
MODELS = list(STUDY.models)
ENSEMBLES = list(STUDY.ensembles)
DATASETS = list(STUDY.datasets)


def _alt(names):
    return "|".join(names) if names else "(?!)"  # (?!) never matches: no such wildcard values


wildcard_constraints:
    dataset=_alt(DATASETS),
    model=_alt(MODELS),
    anymodel=_alt(list(STUDY.all_models)),
    ensemble=_alt(ENSEMBLES),
    source=_alt(MODELS + ENSEMBLES),
    variant="full|stripped",
    kind="default|sampled|ensemble",


workflow.localrules(*plan.local_rules(STUDY))  # run on the submit host, never through sbatch


# ---------------------------------------------------------------------------------------------
# paths


def manifest(model):
    return f"{RES}/models/{model}.json"


def items_path(dataset):
    return plan.items_path(R, dataset)


def generation_paths(dataset):
    """Every generation table of one dataset (what the score rule reads)."""
    out = []
    for m in MODELS:
        out.append(plan.generation_path(R, dataset, m, "empty"))
        out += [plan.generation_path(R, dataset, m, c, "full") for c in ("default", "sampled")]
        if STUDY.models[m].evaluator:  # a CoT source only reads no CoT
            for stage in ("transfer", "ensemble", "probe"):
                out += [c.output(R, dataset, m) for c in plan.prefill_cells(STUDY, stage)]
    return out


def prefill_outputs(stage):
    """The outputs of an evaluator's prefill job, with {dataset} and {model} left as wildcards."""
    return [c.output(R, "{dataset}", "{model}") for c in plan.prefill_cells(STUDY, stage)]


def split_outputs(group):
    return [t.sentences(R, "{dataset}") for t in plan.cot_tables(STUDY, group)]


def strip_outputs(group):
    return [t.stripped(R, "{dataset}") for t in plan.cot_tables(STUDY, group)]


TABLES = {name: f"{R}/tables/{name}.parquet" for name in ("answers", *plan.metric_tables(STUDY))}
REPORT_TABLES = {f"{name}_csv": f"{R}/tables/{name}.csv" for name in ("consistency_summary", "accuracy")}
PREFERENCE_TABLES = ({name: f"{R}/tables/{name}.parquet" for name in plan.PREFERENCE_TABLES}
                     if STUDY.preference else {})
ENSEMBLE_TABLE = f"{R}/tables/ensemble_diagnostics.parquet"
STRIP_QC = {"table": f"{R}/tables/strip_qc.parquet", "csv": f"{R}/tables/strip_qc.csv"}
REPORT_DIR = str(Path(workflow.basedir) / "report")  # the report's captions
FIGURES_PLANNED = plan.figures_planned(STUDY)
FIGURE_STEMS = [stem for stem, why in FIGURES_PLANNED.items() if why is None]
FIGURE_CATEGORY = {"overview": "1 consistency", "consistency": "1 consistency", "heatmap": "1 consistency",
                   "breakdown": "1 consistency", "accuracy": "2 accuracy", "accuracy_transfer": "2 accuracy",
                   "self_consistency": "3 self-consistency", "transitions": "4 transitions",
                   "involvement": "5 creator involvement", "post_training": "6 post-training",
                   "user_study": "7 user study", "ii_consistency": "8 instruction induction",
                   "ii_tasks": "8 instruction induction", "ii_accuracy": "8 instruction induction",
                   "ensemble": "9 ensemble diagnostics", "prefix_transfer": "10 which part transfers",
                   "sentence_importance": "10 which part transfers"}


def figure_outputs():
    """The figures rule's outputs: each planned figure's PNG (in the report, with its caption;
    a strict twin shares its paper figure's caption) and PDF, and the listing."""
    out = {"listing": report(f"{R}/figures/figures.json", caption=f"{REPORT_DIR}/figures_listing.rst",
                             category="0 tables")}
    for stem in FIGURE_STEMS:
        base = stem.removesuffix("_strict")
        out[stem] = report(f"{R}/figures/{stem}.png", caption=f"{REPORT_DIR}/{base}.rst",
                           category=FIGURE_CATEGORY[base], subcategory=stem)
        out[f"{stem}_pdf"] = f"{R}/figures/{stem}.pdf"
    return out


def figure_caption_params():
    """Counts the report's captions quote (report/*.rst)."""
    n_eval = len(STUDY.evaluators)
    return {"n_items": ", ".join(f"{s.n_items} ({d})" for d, s in STUDY.datasets.items()),
            "n_pairs": n_eval * (n_eval - 1) // 2, "n_evaluators": n_eval, "n_sources": len(MODELS),
            "n_ensembles": len(ENSEMBLES), "n_samples": STUDY.decoding.n_samples}


def get_figure_tables(wildcards):
    """Every metric table (not the answers table: its raw text is not needed for figures)."""
    tables = {name: path for name, path in TABLES.items() if name != "answers"}
    tables.update(PREFERENCE_TABLES)
    if ENSEMBLES:
        tables["ensemble_diagnostics"] = ENSEMBLE_TABLE
    return tables


def get_final_outputs():
    figures = [str(p) for p in figure_outputs().values()]  # plain paths: the report flag belongs to the figures rule
    return ([*TABLES.values(), *REPORT_TABLES.values(), *PREFERENCE_TABLES.values(), *figures,
             *STRIP_QC.values()] + ([ENSEMBLE_TABLE] if ENSEMBLES else []))


def get_intermediate_outputs():
    """Every intermediate file the study plans under study.results: items, the generations of
    every stage, every CoT table (full and stripped) and its sentences, the ensembles' step logs,
    the scored tables. `rule all` asks for them too, because Snakemake checks no intermediate of
    an up-to-date target: so a deleted one is rebuilt, and (by modification time) what reads it."""
    out = []
    for d in DATASETS:
        out.append(items_path(d))
        out += generation_paths(d)
        for group in plan.COT_GROUPS:
            for t in plan.cot_tables(STUDY, group):
                out += [t.cots(R, d), t.sentences(R, d), t.stripped(R, d)]
        out += [plan.ensemble_steps_path(R, d, e) for e in ENSEMBLES]
    out += get_scored()
    return list(dict.fromkeys(out))


def get_strip_report_input(wildcards):
    return [t.stripped(R, d) for d in DATASETS for g in plan.COT_GROUPS for t in plan.cot_tables(STUDY, g)]


def get_ensemble_report_input(wildcards):
    out = []
    for d in DATASETS:
        for e in ENSEMBLES:
            t = plan.CotTable(e, "ensemble")
            out += [plan.ensemble_steps_path(R, d, e), t.cots(R, d), t.stripped(R, d)]
    return out


# ---------------------------------------------------------------------------------------------
# input functions


def get_items_input(wildcards):
    spec = STUDY.datasets[wildcards.dataset]
    if get_adapter(spec.adapter).remote or spec.path:
        return {"raw": f"{RES}/data/{wildcards.dataset}/fetch.json"}
    return {}


def get_model_files(wildcards):
    """A local model's files, so that changed weights re-run everything downstream."""
    spec = STUDY.model(wildcards.anymodel)
    if spec.source != "local" or not spec.path or not Path(spec.path).is_dir():
        return []  # hub and toy models have no local input; a missing dir fails in the job
    return sorted(str(f) for f in Path(spec.path).rglob("*") if f.is_file())


def get_prefill_cots(wildcards, stage):
    """Every CoT table an evaluator's prefill job reads (its own stripped ones, every source's)."""
    cells = plan.prefill_cells(STUDY, stage)
    return list(dict.fromkeys(c.cots(R, wildcards.dataset, wildcards.model) for c in cells))


def get_transfer_cots(wildcards):
    return get_prefill_cots(wildcards, "transfer")


def get_ensemble_transfer_cots(wildcards):
    return get_prefill_cots(wildcards, "ensemble")


def get_probe_cots(wildcards):
    return get_prefill_cots(wildcards, "probe")


def get_probe_sentences(wildcards):
    return plan.probe_sentences(STUDY, R, wildcards.dataset)


def get_probe_transfer(wildcards):
    """The evaluator's transfer answers on every model's whole CoT: the probe's whole-CoT
    requests are theirs, so the probe runs after them (and finds them in the request cache)."""
    return [plan.Cell("transfer", "full", m).output(R, wildcards.dataset, wildcards.model) for m in MODELS]


def get_split_input(wildcards, group):
    return [t.cots(R, wildcards.dataset) for t in plan.cot_tables(STUDY, group)]


def get_split_models_input(wildcards):
    return get_split_input(wildcards, "models")


def get_split_ensembles_input(wildcards):
    return get_split_input(wildcards, "ensembles")


def get_strip_input(wildcards, group):
    tables = plan.cot_tables(STUDY, group)
    d = {
        "itemsfile": items_path(wildcards.dataset),
        "cots": [t.cots(R, wildcards.dataset) for t in tables],
        "sentences": [t.sentences(R, wildcards.dataset) for t in tables],
        # a model's own answer tells the rule method what to drop
        "generations": [g for t in tables if (g := t.generations(R, wildcards.dataset))],
    }
    if STUDY.strip_method == "llm":
        d["model"] = manifest(STUDY.strip_model)
    return d


def get_strip_models_input(wildcards):
    return get_strip_input(wildcards, "models")


def get_strip_ensembles_input(wildcards):
    return get_strip_input(wildcards, "ensembles")


def get_ensemble_manifests(wildcards):
    return {m: manifest(m) for m in STUDY.ensembles[wildcards.ensemble].members}


def get_scored():
    return [f"{R}/scored/{d}.parquet" for d in DATASETS]


# ---------------------------------------------------------------------------------------------
# params: result-defining values only, so that a real change re-runs exactly what it affects


def _dataset_params(dataset):
    spec = STUDY.datasets[dataset]
    return {**spec.params(), "adapter_version": get_adapter(spec.adapter).version}


def _model_params(model):
    spec = STUDY.model(model)
    extra = {"toy_version": TOY_VERSION} if spec.source == "toy" else {}
    return {**spec.params(), "format_version": get_format(spec.family).version, **extra}


def dataset_params(wildcards):
    return _dataset_params(wildcards.dataset)


def model_params(wildcards):
    return _model_params(wildcards.anymodel)


def run_params(script):
    """Everything that defines the results of an inference job running `script`."""
    return lambda wildcards: _run_params(wildcards, script)


def _run_params(wildcards, script):
    models = [wildcards.model] if hasattr(wildcards, "model") else list(STUDY.ensembles[wildcards.ensemble].members)
    return {
        "code": code(script),
        "dataset": _dataset_params(wildcards.dataset),
        "models": [_model_params(m) for m in models],
        "decoding": asdict(STUDY.decoding_for(wildcards.dataset)),
        "ensemble": ({**STUDY.ensembles[wildcards.ensemble].params(), "version": ENSEMBLE_VERSION}
                     if hasattr(wildcards, "ensemble") else None),
        "compat": {k: v for where in COMPAT_WHERE[script] for k, v in STUDY.compat.params(where).items()},
    }


# which compat switches (cotransfer.config.COMPAT_SWITCHES, by where they act) define a stage's results
COMPAT_WHERE = {"generate.py": ("prompt", "cots"), "prefill.py": ("prompt", "prefill"), "probe.py": ("prompt", "prefill"),
                "ensemble.py": ("prompt", "ensemble", "cots")}


def strip_params(wildcards):
    return {"method": STUDY.strip_method, "joiner": STUDY.strip_joiner,
            "mode": STUDY.strip_mode if STUDY.strip_method == "llm" else None,
            "model": _model_params(STUDY.strip_model) if STUDY.strip_method == "llm" else None,
            "code": code("strip.py")}


def score_params(wildcards):
    return {"dataset": _dataset_params(wildcards.dataset), "code": code("score.py"),
            "compat": STUDY.compat.params("score")}


# ---------------------------------------------------------------------------------------------
# resources: from the config (cotransfer.cluster, docs/cluster.md), growing with each attempt


def _inference_resources(models_of):
    """GPUs, CPUs, memory, runtime and partition of a job that loads the models `models_of`
    names; each a function of the wildcards and the attempt, as Snakemake evaluates them."""
    req = lambda wc, attempt: cluster.inference_request(STUDY, models_of(wc), attempt)
    return {
        "slurm_partition": lambda wc, attempt: req(wc, attempt).partition,
        "gpu": lambda wc, attempt: req(wc, attempt).gpus,
        "tasks_per_gpu": 0,  # else the plugin starts the job once per GPU
        "cpus_per_task": lambda wc, attempt: req(wc, attempt).cpus,
        "mem_mb": lambda wc, attempt: req(wc, attempt).mem_mb,
        "runtime": lambda wc, attempt: req(wc, attempt).runtime,
    }


MODEL_JOB = _inference_resources(lambda wc: [wc.model])
ENSEMBLE_JOB = _inference_resources(lambda wc: STUDY.ensembles[wc.ensemble].members)
CPU_JOB = {k: (lambda wc, attempt, k=k: cluster.cpu_request(STUDY, attempt).resources()[k])
           for k in ("slurm_partition", "cpus_per_task", "mem_mb", "runtime")}
# the rule method loads no model (and its strip jobs are local rules)
STRIP_JOB = _inference_resources(lambda wc: [STUDY.strip_model]) if STUDY.strip_method == "llm" else CPU_JOB


_CODE: dict[str, str] = {}


def code(script):
    """The hash of the code a stage runs (its script, the library code it reaches): a change
    to one stage's code re-runs that stage and what follows (cotransfer.codehash)."""
    if script not in _CODE:
        _CODE[script] = code_hash(Path(workflow.basedir) / "workflow/scripts" / script)
    return _CODE[script]


def get_generations(wildcards):
    return generation_paths(wildcards.dataset)


# ---------------------------------------------------------------------------------------------
# before anything is submitted: every job's request against the partitions


def preflight_cluster_check():
    """On a SLURM run, fail before the first sbatch when a job asks for more than any node of its
    partition has (it would be refused, or pend forever), naming the job and the resource."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or os.environ.get("COTRANSFER_SKIP_CLUSTER_CHECK"):
        return
    try:
        partitions = cluster.sinfo()
    except RuntimeError as err:
        print(f"cluster check skipped: {err}", file=sys.stderr)
        return
    problems = cluster.check(cluster.jobs_from_dag(workflow), partitions)
    if problems:
        raise WorkflowError("these jobs could never be scheduled on this cluster (nothing was submitted):\n  "
                            + "\n  ".join(problems)
                            + "\nChange the `cluster:` section of the config or the models' device, "
                            "params_b or tensor_parallel_size (docs/cluster.md).")
    print(f"cluster check: every job fits its partition ({', '.join(sorted(partitions))})", file=sys.stderr)


onstart:
    preflight_cluster_check()
