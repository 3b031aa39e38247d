# strip: answer removal; each stripped CoT is an ordered subset of the original sentences.
# One job per dataset for the models' CoTs and one for the ensembles' (cotransfer.plan), so the
# filter model of `strip.method: llm` loads at most once per job.


rule strip:
    input:
        unpack(get_strip_models_input),
    output:
        strip_outputs("models"),
    log:
        f"{R}/logs/strip/{{dataset}}/models.log",
    params:
        strip=strip_params,
        group="models",
    resources:
        **STRIP_JOB,
    script:
        "../scripts/strip.py"


if ENSEMBLES:

    rule strip_ensembles:
        input:
            unpack(get_strip_ensembles_input),
        output:
            strip_outputs("ensembles"),
        log:
            f"{R}/logs/strip_ensembles/{{dataset}}/ensembles.log",
        params:
            strip=strip_params,
            group="ensembles",
        resources:
            **STRIP_JOB,
        script:
            "../scripts/strip.py"


rule strip_report:
    input:
        get_strip_report_input,
    output:
        table=STRIP_QC["table"],
        csv=report(STRIP_QC["csv"], caption=f"{REPORT_DIR}/strip_qc.rst", category="0 tables"),
    log:
        f"{R}/logs/strip_report.log",
    params:
        code=code("strip_report.py"),
    resources:
        **CPU_JOB,
    script:
        "../scripts/strip_report.py"
