# figures: consistency heatmaps, accuracy, overview.


rule figures:
    input:
        consistency=TABLES["consistency"],
        accuracy=TABLES["accuracy"],
    output:
        **FIGURES,
    log:
        "logs/figures.log",
    params:
        definition=STUDY.consistency_definition,
    script:
        "../scripts/figures.py"
