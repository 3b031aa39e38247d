# figures: consistency heatmaps, accuracy, overview; ensemble diagnostics (F12).


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


if ENSEMBLES:

    rule ensemble_report:
        input:
            get_ensemble_report_input,
        output:
            table=ENSEMBLE_REPORT["table"],
            figure=ENSEMBLE_REPORT["figure"],
        log:
            "logs/ensemble_report.log",
        params:
            code=cotransfer.__version__,
        script:
            "../scripts/ensemble_report.py"
