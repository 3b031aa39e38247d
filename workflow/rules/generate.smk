# generate: each model answers every item with an empty CoT, its greedy CoT and sampled CoTs.


rule generate:
    input:
        itemsfile=f"{R}/items/{{dataset}}.parquet",
        model=f"{RES}/models/{{model}}.json",
    output:
        empty=f"{R}/generations/{{dataset}}/{{model}}/empty.parquet",
        default=f"{R}/generations/{{dataset}}/{{model}}/default/full.parquet",
        sampled=f"{R}/generations/{{dataset}}/{{model}}/sampled/full.parquet",
        cot_default=f"{R}/cots/{{dataset}}/full/{{model}}/default.parquet",
        cot_sampled=f"{R}/cots/{{dataset}}/full/{{model}}/sampled.parquet",
    log:
        f"{R}/logs/generate/{{dataset}}/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/generate/{{dataset}}/{{model}}.tsv"
    params:
        run=run_params("generate.py"),
    resources:
        **MODEL_JOB,
    script:
        "../scripts/generate.py"
