# cotransfer: do chain-of-thought explanations generalize across large reasoning models?
#
# Plain `snakemake --cores all` runs the embedded demo (config/demo.yaml: toy models on CPU).
# `snakemake --profile profiles/slurm` runs the paper's study (config/config.yaml) on SLURM.
#
# Outputs (under study.results, default results/):
#   items/{dataset}.parquet                                   sampled items, drawn once
#   generations/{dataset}/{model}/empty.parquet               empty CoT
#   generations/{dataset}/{model}/{default,sampled}/full.parquet      free runs
#   generations/{dataset}/{model}/{default,sampled}/stripped.parquet  own stripped CoT prefilled
#   generations/{dataset}/{model}/transfer/{variant}/{source}.parquet another model's CoT
#   generations/{dataset}/{model}/ensemble/{variant}/{ensemble}.parquet   an ensembled CoT
#   generations/{dataset}/{model}/{prefix,drop_one}/full/{source}.parquet  probes (docs/probe.md)
#   cots/{dataset}/{variant}/{source}/{kind}.parquet          CoTs (kind: default, sampled, ensemble)
#   sentences/{dataset}/{source}/{kind}.parquet               sentence spans of each CoT
#   ensembles/{dataset}/{ensemble}.steps.parquet              per-step ensemble log
#   scored/{dataset}.parquet                                  every generation, parsed and scored
#   tables/{answers,consistency,consistency_summary,accuracy,accuracy_category,breakdown,
#          self_consistency,transitions,involvement,post_training,paired_tests,
#          ensemble_diagnostics, prefix_transfer, prefix_summary, sentence_importance,
#          importance_correlation}.parquet                   the study's findings (method.md 8)
#   figures/*.{png,pdf}, figures/figures.json                 F1-F14; `snakemake --report` for the report
#   logs/{rule}/{wildcards}.log, benchmarks/{rule}/...        one log per job, under this root only
# `rule all` asks for every intermediate as well: a deleted one is rebuilt, then what reads it.
# Every Parquet file carries its provenance (`cotransfer audit FILE`).

from snakemake.utils import min_version

min_version("9.0")

if not workflow.overwrite_configfiles:  # a --configfile replaces the demo instead of merging into it
    configfile: "config/demo.yaml"

report: "report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/strip.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        get_final_outputs(),
        # every intermediate too: a deleted one is rebuilt, then what reads it (docs/architecture.md)
        get_intermediate_outputs(),
    default_target: True
