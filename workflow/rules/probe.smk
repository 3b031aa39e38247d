# probe: which part of a CoT transfers (docs/probe.md). One job per (dataset, evaluator), one
# model load (only if the request cache lacks something): every model's greedy CoT cut at
# sentence ends (prefix) and, on a subset of items, with one sentence left out at a time
# (drop_one); one output per (probe, source) (cotransfer.plan.prefill_cells). It runs after the
# evaluator's transfer job, whose whole-CoT answers it reproduces from the request cache and
# checks.


if plan.probe_conditions(STUDY):

    rule probe:
        input:
            itemsfile=f"{R}/items/{{dataset}}.parquet",
            model=f"{RES}/models/{{model}}.json",
            cots=get_probe_cots,
            sentences=get_probe_sentences,
            transfer=get_probe_transfer,
        output:
            prefill_outputs("probe"),
        log:
            f"{R}/logs/probe/{{dataset}}/{{model}}.log",
        benchmark:
            f"{R}/benchmarks/probe/{{dataset}}/{{model}}.tsv"
        params:
            run=run_params("probe.py"),
            probe=STUDY.probe.params(),
        resources:
            **MODEL_JOB,
        script:
            "../scripts/probe.py"
