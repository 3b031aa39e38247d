# transfer: an evaluator answers with a given CoT prefilled in its own thinking section, closed.
# One script serves the transfer and ensemble conditions and the stripped self-prefill of the
# default and sampled conditions.


rule transfer:
    input:
        itemsfile=f"{R}/items/{{dataset}}.parquet",
        model=f"{RES}/models/{{model}}.json",
        cots=get_prefill_cots,
    output:
        f"{R}/generations/{{dataset}}/{{model}}/{{condition}}/{{variant}}/{{source}}.parquet",
    wildcard_constraints:
        condition="transfer|ensemble",
    log:
        "logs/transfer/{dataset}/{model}/{condition}/{variant}/{source}.log",
    benchmark:
        f"{R}/benchmarks/transfer/{{dataset}}/{{model}}/{{condition}}/{{variant}}/{{source}}.tsv"
    params:
        run=run_params,
    resources:
        gpu=gpus_model,
        mem_mb=mem_mb_gpu,
        runtime=runtime_gpu,
    script:
        "../scripts/prefill.py"


rule selfprefill:
    input:
        itemsfile=f"{R}/items/{{dataset}}.parquet",
        model=f"{RES}/models/{{model}}.json",
        cots=get_prefill_cots,
    output:
        f"{R}/generations/{{dataset}}/{{model}}/{{condition}}/stripped.parquet",
    wildcard_constraints:
        condition="default|sampled",
    log:
        "logs/selfprefill/{dataset}/{model}/{condition}.log",
    benchmark:
        f"{R}/benchmarks/selfprefill/{{dataset}}/{{model}}/{{condition}}.tsv"
    params:
        run=run_params,
    resources:
        gpu=gpus_model,
        mem_mb=mem_mb_gpu,
        runtime=runtime_gpu,
    script:
        "../scripts/prefill.py"
