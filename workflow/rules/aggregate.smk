# aggregate: the answers table (architecture.md contract) and every metric table (method.md
# section 8), with CSV copies of the condition summary and accuracy for the report.


rule aggregate:
    input:
        get_scored(),
    output:
        **TABLES,
        consistency_summary_csv=report(REPORT_TABLES["consistency_summary_csv"], caption=f"{REPORT_DIR}/consistency_summary.rst",
                                       category="0 tables"),
        accuracy_csv=report(REPORT_TABLES["accuracy_csv"], caption=f"{REPORT_DIR}/accuracy_table.rst", category="0 tables"),
    log:
        f"{R}/logs/aggregate.log",
    params:
        code=code("aggregate.py"),
        compat=STUDY.compat.params("metrics"),
        metrics={"bootstrap": STUDY.metrics_bootstrap, "permutations": STUDY.metrics_permutations},
    script:
        "../scripts/aggregate.py"


if STUDY.preference:

    rule preference:
        input:
            ratings=STUDY.preference.ratings,
            summary=TABLES["consistency_summary"],
            accuracy=TABLES["accuracy"],
        output:
            **PREFERENCE_TABLES,
        log:
            f"{R}/logs/preference.log",
        params:
            code=code("preference.py"),
        resources:
            **CPU_JOB,
        script:
            "../scripts/preference.py"
