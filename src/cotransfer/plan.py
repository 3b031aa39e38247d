"""Where the pipeline's files live, and which outputs each inference job writes.

The rules (`workflow/rules/*.smk`) and the stages (`cotransfer.stages`) both build paths from
here, so the outputs a rule declares are exactly the files its stage writes.

An evaluator's prefilled work is split in two jobs per dataset, each with one model load:
`transfer` (every model's CoT in both variants, and its own stripped default and sampled CoTs)
and `transfer_ensemble` (every ensemble's CoT in both variants), because ensembles are built by a
job of their own that would otherwise hold every transfer back.
"""

from __future__ import annotations

from dataclasses import dataclass

from cotransfer.config import VARIANTS, Study

PREFILL_STAGES = ("transfer", "ensemble", "probe")
#: conditions whose CoT comes from another source (recorded as `cot_source`)
SOURCED = ("transfer", "ensemble", "prefix", "drop_one")


def items_path(results: str, dataset: str) -> str:
    return f"{results}/items/{dataset}.parquet"


def generation_path(results: str, dataset: str, model: str, condition: str, variant: str | None = None,
                    source: str | None = None) -> str:
    base = f"{results}/generations/{dataset}/{model}"
    if condition == "empty":
        return f"{base}/empty.parquet"
    if condition in ("default", "sampled"):
        return f"{base}/{condition}/{variant}.parquet"
    return f"{base}/{condition}/{variant}/{source}.parquet"


def cot_path(results: str, dataset: str, variant: str, source: str, kind: str) -> str:
    """A CoT table; kind: default, sampled (a model's) or ensemble."""
    return f"{results}/cots/{dataset}/{variant}/{source}/{kind}.parquet"


def ensemble_steps_path(results: str, dataset: str, ensemble: str) -> str:
    return f"{results}/ensembles/{dataset}/{ensemble}.steps.parquet"


def sentences_path(results: str, dataset: str, source: str, kind: str) -> str:
    return f"{results}/sentences/{dataset}/{source}/{kind}.parquet"


@dataclass(frozen=True, slots=True)
class Cell:
    """One output of a prefill job: the evaluator answers after `source`'s CoT (`variant`).

    The stripped self-prefill of the default and sampled conditions has the evaluator itself as
    its source and records no `cot_source` (answers-table contract)."""

    condition: str  # default | sampled (self-prefill), transfer, ensemble, prefix, drop_one (probe)
    variant: str
    source: str | None  # None: the evaluator's own CoT

    @property
    def cot_source(self) -> str | None:
        return self.source if self.condition in SOURCED else None

    @property
    def output_key(self) -> tuple[str, str, str | None]:
        return (self.condition, self.variant, self.cot_source)

    def output(self, results: str, dataset: str, evaluator: str) -> str:
        return generation_path(results, dataset, evaluator, self.condition, self.variant, self.source)

    def cots(self, results: str, dataset: str, evaluator: str) -> str:
        if self.condition in ("default", "sampled"):
            return cot_path(results, dataset, "stripped", evaluator, self.condition)
        kind = "ensemble" if self.condition == "ensemble" else "default"  # probes read the greedy CoTs
        return cot_path(results, dataset, self.variant, self.source, kind)


def prefill_cells(study: Study, stage: str) -> list[Cell]:
    """Every output of an evaluator's `transfer` or `ensemble` prefill job (the same for every
    evaluator: each reads every model's CoT, its own included, and every ensemble's)."""
    if stage == "transfer":
        cells = [Cell(cond, "stripped", None) for cond in ("default", "sampled")]
        return cells + [Cell("transfer", v, m) for v in VARIANTS for m in study.models]
    if stage == "ensemble":
        return [Cell("ensemble", v, e) for v in VARIANTS for e in study.ensembles]
    if stage == "probe":  # every model's greedy CoT, cut (prefix) and one sentence left out (drop_one)
        return [Cell(cond, "full", m) for cond in probe_conditions(study) for m in study.models]
    raise ValueError(f"unknown prefill stage {stage!r}; known: {PREFILL_STAGES}")


def probe_conditions(study: Study) -> list[str]:
    """The probes the config switches on (docs/probe.md): `prefix` and `drop_one`."""
    return [c for c, on in (("prefix", study.probe.prefix), ("drop_one", study.probe.importance)) if on]


def probe_sentences(study: Study, results: str, dataset: str) -> list[str]:
    """The sentence tables the probe job cuts the CoTs by: every model's greedy CoTs'."""
    return [sentences_path(results, dataset, m, "default") for m in study.models] if probe_conditions(study) else []


@dataclass(frozen=True, slots=True)
class CotTable:
    """One table of CoTs: `source`'s CoTs of `kind`, with its sentences and its stripped version."""

    source: str
    kind: str  # default | sampled | ensemble

    def cots(self, results: str, dataset: str, variant: str = "full") -> str:
        return cot_path(results, dataset, variant, self.source, self.kind)

    def sentences(self, results: str, dataset: str) -> str:
        return sentences_path(results, dataset, self.source, self.kind)

    def stripped(self, results: str, dataset: str) -> str:
        return self.cots(results, dataset, "stripped")

    def generations(self, results: str, dataset: str) -> str | None:
        """The source's own free run, whose parsed answer the rule method removes."""
        if self.kind == "ensemble":
            return None
        return generation_path(results, dataset, self.source, self.kind, "full")


COT_GROUPS = ("models", "ensembles")


def cot_tables(study: Study, group: str) -> list[CotTable]:
    """The CoT tables one split or strip job covers: every model's default and sampled CoTs
    (`models`), or every ensemble's CoT (`ensembles`, ready only after the ensemble jobs). One
    job per group keeps the filter model of `strip.method: llm` to one load."""
    if group == "models":
        return [CotTable(m, k) for m in study.models for k in ("default", "sampled")]
    if group == "ensembles":
        return [CotTable(e, "ensemble") for e in study.ensembles]
    raise ValueError(f"unknown CoT group {group!r}; known: {COT_GROUPS}")


# -- the study's findings -----------------------------------------------------------------------

#: the metric tables of `metrics.all_tables`, one Parquet file each under results/tables/
METRIC_TABLES = ("consistency", "consistency_summary", "accuracy", "accuracy_category", "breakdown",
                 "self_consistency", "transitions", "involvement", "post_training", "paired_tests")
#: the human-preference tables (`preference.analyze`), only with `preference:` in the config
PREFERENCE_TABLES = ("preference_means", "preference_tests", "preference_correlation", "preference_points")
#: the probes' tables (`probe.probe_tables`), each with its probe switched on
PROBE_TABLES = {"prefix": ("prefix_transfer", "prefix_summary"),
                "drop_one": ("sentence_importance", "importance_correlation")}


def metric_tables(study: Study) -> tuple[str, ...]:
    """The metric tables of this study: METRIC_TABLES, per-task Instruction Induction
    consistency and accuracy where it has such a dataset, and the tables of the probes it runs."""
    probes = tuple(t for c in probe_conditions(study) for t in PROBE_TABLES[c])
    return METRIC_TABLES + (("ii_task_consistency", "ii_task_accuracy") if ii_datasets(study) else ()) + probes


def ii_datasets(study: Study) -> list[str]:
    """The Instruction Induction datasets (consistency by similarity, method.md section 8.3)."""
    return [d for d, spec in study.datasets.items() if spec.adapter == "instruction_induction"]


def figures_planned(study: Study) -> dict[str, str | None]:
    """Every figure file stem of method.md section 8.4 (`figures.render_all`): None where the
    config gives it data, else the reason it is not drawn. The figures rule declares the first
    kind as outputs (PNG and PDF each); the report's front page lists the second."""
    twins = lambda stem: (stem, f"{stem}_strict")  # noqa: E731
    plan: dict[str, str | None] = {}
    for stem in (*twins("overview"), *twins("consistency"), *twins("heatmap"), "accuracy", "accuracy_transfer",
                 "breakdown", "transitions", *twins("involvement")):
        plan[stem] = None
    sampled = None if study.decoding.n_samples >= 1 else "no Sampled condition (decoding.n_samples is 0)"
    plan.update(dict.fromkeys(twins("self_consistency"), sampled))
    tags = {m.post_training for m in study.models.values()}
    plan.update(dict.fromkeys(twins("post_training"), None if len(tags) >= 2 else
                              f"one post-training tag only ({', '.join(sorted(tags))}): nothing to compare"))
    plan["user_study"] = None if study.preference else "no ratings file (config key preference)"
    ii = None if ii_datasets(study) else "no Instruction Induction dataset"
    plan.update(dict.fromkeys(twins("ii_consistency"), ii))
    plan["ii_accuracy"] = ii
    plan.update(dict.fromkeys(twins("ii_tasks"), ii))
    plan["ensemble"] = None if study.ensembles else "no ensembles"
    plan["prefix_transfer"] = None if study.probe.prefix else "prefix transfer is off (config key prefix.enabled)"
    plan["sentence_importance"] = (None if study.probe.importance
                                   else "sentence importance is off (config key importance.enabled)")
    return plan


LOCAL_RULES = ("all", "fetch_dataset", "prepare_model", "items", "split", "split_ensembles", "score",
               "aggregate", "figures", "ensemble_report")


def local_rules(study: Study) -> list[str]:
    """Rules that run on the submit host, never through sbatch: downloads (compute nodes are
    often offline), light table work, and answer removal by rule (no model)."""
    extra = ["strip", "strip_ensembles"] if study.strip_method == "rule" else []
    return [*LOCAL_RULES, *extra]
