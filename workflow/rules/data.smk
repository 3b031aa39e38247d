# data: fetch datasets and models (local rules: compute nodes often lack internet), draw items once.


rule fetch_dataset:
    output:
        f"{RES}/data/{{dataset}}/fetch.json",
    log:
        f"{R}/logs/fetch_dataset/{{dataset}}.log",
    params:
        dataset=dataset_params,
    script:
        "../scripts/fetch_dataset.py"


rule items:
    input:
        unpack(get_items_input),
    output:
        f"{R}/items/{{dataset}}.parquet",
    log:
        f"{R}/logs/items/{{dataset}}.log",
    params:
        dataset=dataset_params,
    script:
        "../scripts/items.py"


rule prepare_model:
    input:
        get_model_files,
    output:
        f"{RES}/models/{{anymodel}}.json",
    log:
        f"{R}/logs/prepare_model/{{anymodel}}.log",
    params:
        model=model_params,
    script:
        "../scripts/prepare_model.py"
