# figures: every figure of method.md section 8.4 the config has data for (PNG and PDF, strict
# twins), each in the Snakemake report with its caption (report/); figures.json says why any
# other is missing. The ensemble diagnostics table (F12) comes from ensemble_report.


rule figures:
    input:
        unpack(get_figure_tables),
    output:
        **figure_outputs(),
    log:
        f"{R}/logs/figures.log",
    params:
        **figure_caption_params(),
        code=code("figures.py"),
        compat=STUDY.compat.params("figures"),
    script:
        "../scripts/figures.py"


if ENSEMBLES:

    rule ensemble_report:
        input:
            get_ensemble_report_input,
        output:
            table=ENSEMBLE_TABLE,
        log:
            f"{R}/logs/ensemble_report.log",
        params:
            code=code("ensemble_report.py"),
        script:
            "../scripts/ensemble_report.py"
