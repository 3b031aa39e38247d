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

PREFILL_STAGES = ("transfer", "ensemble")


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

    condition: str  # default | sampled (self-prefill), transfer, ensemble
    variant: str
    source: str | None  # None: the evaluator's own CoT

    @property
    def cot_source(self) -> str | None:
        return self.source if self.condition in ("transfer", "ensemble") else None

    @property
    def output_key(self) -> tuple[str, str, str | None]:
        return (self.condition, self.variant, self.cot_source)

    def output(self, results: str, dataset: str, evaluator: str) -> str:
        return generation_path(results, dataset, evaluator, self.condition, self.variant, self.source)

    def cots(self, results: str, dataset: str, evaluator: str) -> str:
        if self.condition in ("default", "sampled"):
            return cot_path(results, dataset, "stripped", evaluator, self.condition)
        kind = "ensemble" if self.condition == "ensemble" else "default"
        return cot_path(results, dataset, self.variant, self.source, kind)


def prefill_cells(study: Study, stage: str) -> list[Cell]:
    """Every output of an evaluator's `transfer` or `ensemble` prefill job (the same for every
    evaluator: each reads every model's CoT, its own included, and every ensemble's)."""
    if stage == "transfer":
        cells = [Cell(cond, "stripped", None) for cond in ("default", "sampled")]
        return cells + [Cell("transfer", v, m) for v in VARIANTS for m in study.models]
    if stage == "ensemble":
        return [Cell("ensemble", v, e) for v in VARIANTS for e in study.ensembles]
    raise ValueError(f"unknown prefill stage {stage!r}; known: {PREFILL_STAGES}")


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
