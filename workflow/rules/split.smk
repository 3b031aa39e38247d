# split: every CoT into sentences with character offsets.


rule split:
    input:
        f"{R}/cots/{{dataset}}/full/{{source}}/{{kind}}.parquet",
    output:
        f"{R}/sentences/{{dataset}}/{{source}}/{{kind}}.parquet",
    log:
        "logs/split/{dataset}/{source}/{kind}.log",
    params:
        code=cotransfer.__version__,
    script:
        "../scripts/split.py"
