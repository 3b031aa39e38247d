# transfer: an evaluator answers with a given CoT prefilled in its own thinking section, closed.
# One job per (dataset, evaluator) and stage, one model load (only if the request cache lacks
# something), one batched run; one output per (condition, variant, source) (cotransfer.plan).
#   transfer:          every model's CoT (full, stripped) and its own stripped default/sampled CoTs
#   transfer_ensemble: every ensemble's CoT (full, stripped)


rule transfer:
    input:
        itemsfile=f"{R}/items/{{dataset}}.parquet",
        model=f"{RES}/models/{{model}}.json",
        cots=get_transfer_cots,
    output:
        prefill_outputs("transfer"),
    log:
        f"{R}/logs/transfer/{{dataset}}/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/transfer/{{dataset}}/{{model}}.tsv"
    params:
        run=run_params("prefill.py"),
        stage="transfer",
    resources:
        **MODEL_JOB,
    script:
        "../scripts/prefill.py"


if ENSEMBLES:

    rule transfer_ensemble:
        input:
            itemsfile=f"{R}/items/{{dataset}}.parquet",
            model=f"{RES}/models/{{model}}.json",
            cots=get_ensemble_transfer_cots,
        output:
            prefill_outputs("ensemble"),
        log:
            f"{R}/logs/transfer_ensemble/{{dataset}}/{{model}}.log",
        benchmark:
            f"{R}/benchmarks/transfer_ensemble/{{dataset}}/{{model}}.tsv"
        params:
            run=run_params("prefill.py"),
            stage="ensemble",
        resources:
            **MODEL_JOB,
        script:
            "../scripts/prefill.py"
