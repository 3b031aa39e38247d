# split: every CoT into sentences with character offsets; one job per dataset for the models'
# CoTs and one for the ensembles' (cotransfer.plan.cot_tables).


rule split:
    input:
        get_split_models_input,
    output:
        split_outputs("models"),
    log:
        f"{R}/logs/split/{{dataset}}/models.log",
    params:
        code=code("split.py"),
        group="models",
    script:
        "../scripts/split.py"


if ENSEMBLES:

    rule split_ensembles:
        input:
            get_split_ensembles_input,
        output:
            split_outputs("ensembles"),
        log:
            f"{R}/logs/split_ensembles/{{dataset}}/ensembles.log",
        params:
            code=code("split.py"),
            group="ensembles",
        script:
            "../scripts/split.py"
