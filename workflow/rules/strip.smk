# strip: answer removal; the stripped CoT is an ordered subset of the original sentences.


rule strip:
    input:
        unpack(get_strip_input),
    output:
        f"{R}/cots/{{dataset}}/stripped/{{source}}/{{kind}}.parquet",
    log:
        "logs/strip/{dataset}/{source}/{kind}.log",
    params:
        strip=strip_params,
    resources:
        gpu=gpus_strip,
        mem_mb=mem_mb_cpu,
    script:
        "../scripts/strip.py"
