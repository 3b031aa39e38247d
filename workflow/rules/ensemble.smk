# ensemble: a CoT built sentence by sentence from several generators, chosen by evaluators;
# every member model is resident in the one job. The result is transferred like any CoT.


rule ensemble:
    input:
        unpack(get_ensemble_manifests),
        itemsfile=f"{R}/items/{{dataset}}.parquet",
    output:
        cots=f"{R}/cots/{{dataset}}/full/{{ensemble}}/ensemble.parquet",
        steps=f"{R}/ensembles/{{dataset}}/{{ensemble}}.steps.parquet",
    log:
        f"{R}/logs/ensemble/{{dataset}}/{{ensemble}}.log",
    benchmark:
        f"{R}/benchmarks/ensemble/{{dataset}}/{{ensemble}}.tsv"
    params:
        run=run_params("ensemble.py"),
    resources:
        **ENSEMBLE_JOB,
    script:
        "../scripts/ensemble.py"
