# aggregate: the answers table (architecture.md contract) and the metric tables.


rule aggregate:
    input:
        get_scored(),
    output:
        **TABLES,
    log:
        "logs/aggregate.log",
    params:
        code=cotransfer.__version__,
    script:
        "../scripts/aggregate.py"
