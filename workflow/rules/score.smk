# score: parse and score every generation of a dataset (CPU; a scorer fix re-runs no GPU job).


rule score:
    input:
        itemsfile=f"{R}/items/{{dataset}}.parquet",
        generations=get_generations,
    output:
        f"{R}/scored/{{dataset}}.parquet",
    log:
        f"{R}/logs/score/{{dataset}}.log",
    params:
        score=score_params,
    script:
        "../scripts/score.py"
