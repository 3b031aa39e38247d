import shutil

import pytest
import yaml
from conftest import ROOT
from test_workflow import demo_config_abs, snakemake

from cotransfer.config import ConfigError, Study, config_sha256, validate


def test_shipped_configs_validate(demo_config, paper_config):
    demo = Study.from_dict(validate(demo_config))
    paper = Study.from_dict(validate(paper_config))
    assert len(demo.models) == 4 and {m.source for m in demo.models.values()} == {"local"}
    assert list(paper.models) == ["nrr", "opent", "oss", "qwq", "dapo"]
    assert set(paper.datasets) == {"medcalc", "ii"}
    assert len(paper.ensembles) == 3
    assert paper.model("qwq").tensor_parallel_size == 2


def test_defaults_are_filled(demo_config):
    del demo_config["decoding"]
    del demo_config["engine"]
    validate(demo_config)
    assert demo_config["decoding"]["seed"] == 42
    assert demo_config["decoding"]["top_k"] == -1
    assert demo_config["engine"]["gpu_memory_utilization"] == 0.9
    assert demo_config["models"]["toy_qwq"]["dtype"] == "bfloat16"
    demo_config["models"]["rand"] = {"family": "think", "toy": {"seed": 3}}
    validate(demo_config)
    assert demo_config["models"]["rand"]["toy"] == {"seed": 3, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                                    "head_dim": 32, "vocab_size": 512, "opens_thinking": False}
    assert demo_config["consistency"] == {"definition": "paper", "bootstrap": 1000, "permutations": 1000}


@pytest.mark.parametrize(
    "mutate, named",
    [
        (lambda c: c.update(bogus=1), "bogus"),
        (lambda c: c["decoding"].update(temprature=0.5), "decoding.temprature"),
        (lambda c: c["models"]["toy_qwq"].update(colour="red"), "models.toy_qwq.colour"),
        (lambda c: c["decoding"].update(temperature="hot"), "decoding.temperature"),
        (lambda c: c["decoding"].update(top_p=1.5), "decoding.top_p"),
        (lambda c: c["models"]["toy_qwq"].update(family="llama"), "models.toy_qwq.family"),
        (lambda c: c["models"]["toy_qwq"].update(repo_id="a/b"), "models.toy_qwq"),
        (lambda c: c["models"].update({"bad/name": c["models"]["toy_qwq"]}), "bad/name"),
        (lambda c: c["datasets"]["toyarith"].update(adapter="nope"), "datasets.toyarith.adapter"),
        (lambda c: c["ensembles"]["qwq_dapo__opent"].update(evaluators=["ghost"]), "ensembles.qwq_dapo__opent.evaluators"),
        (lambda c: c.update(strip={"method": "llm"}), "strip.model"),
    ],
)
def test_bad_config_names_the_key(demo_config, mutate, named):
    mutate(demo_config)
    with pytest.raises(ConfigError) as err:
        validate(demo_config)
    assert named in str(err.value)


def test_temperature_hot_message(demo_config):
    demo_config["decoding"]["temperature"] = "hot"
    with pytest.raises(ConfigError, match=r"decoding\.temperature: 'hot' is not of type 'number'"):
        validate(demo_config)


def test_config_hash_is_canonical(demo_config):
    a = config_sha256(demo_config)
    reordered = dict(reversed(list(demo_config.items())))
    assert config_sha256(reordered) == a
    demo_config["decoding"]["seed"] = 7
    assert config_sha256(demo_config) != a


def test_sampling_override_per_model(paper_config):
    study = Study.from_dict(validate(paper_config))
    assert study.sampling_for("qwq", "sampled").top_p == 0.95
    assert study.sampling_for("qwq", "sampled").top_k == 40
    assert study.sampling_for("nrr", "sampled").top_p == 1.0
    assert study.sampling_for("qwq", "default").greedy
    assert study.ensembles["qwq_oss__dapo"].members == ("qwq", "oss", "dapo")


def _preference(**sources):
    return {"ratings": "tests/fixtures/ratings_demo.csv",
            "sources": sources or {
                "transfer_dapo": {"condition": "transfer", "cot_source": "toy_dapo", "variant": "stripped",
                                  "dataset": "toyarith"},
                "ensemble_qwq_dapo__opent": {"condition": "ensemble", "cot_source": "qwq_dapo__opent",
                                             "variant": "full", "dataset": "toyarith"},
            }}


def test_preference_is_optional_and_typed(demo_config):
    assert Study.from_dict(validate(demo_config)).preference is None
    assert "preference" not in demo_config  # no default is filled in
    demo_config["preference"] = _preference()
    demo_config["compat"] = {"preference_modes": "paper"}  # the original's stripped/full mix
    pref = Study.from_dict(validate(demo_config)).preference
    assert pref.ratings == "tests/fixtures/ratings_demo.csv"
    assert [s.label for s in pref.sources] == ["transfer_dapo", "ensemble_qwq_dapo__opent"]
    assert pref.source_map() == {
        "transfer_dapo": {"condition": "transfer", "cot_source": "toy_dapo", "variant": "stripped",
                          "dataset": "toyarith"},
        "ensemble_qwq_dapo__opent": {"condition": "ensemble", "cot_source": "qwq_dapo__opent",
                                     "variant": "full", "dataset": "toyarith"},
    }


_SRC = {"condition": "transfer", "cot_source": "toy_dapo", "variant": "stripped", "dataset": "toyarith"}


@pytest.mark.parametrize(
    "preference, named",
    [
        ({"sources": {"x": _SRC}}, "preference: 'ratings' is a required property"),
        ({"ratings": "r.csv"}, "preference: 'sources' is a required property"),
        ({"ratings": "r.csv", "sources": {}}, "preference.sources"),
        ({"ratings": "", "sources": {"x": _SRC}}, "preference.ratings"),
        ({**_preference(), "colour": 1}, "preference.colour"),
        (_preference(x={**_SRC, "condition": "sampled"}), "preference.sources.x.condition"),
        (_preference(x={**_SRC, "variant": "both"}), "preference.sources.x.variant"),
        (_preference(x={**_SRC, "colour": "red"}), "preference.sources.x.colour"),
        (_preference(x={k: v for k, v in _SRC.items() if k != "dataset"}), "preference.sources.x: 'dataset'"),
        (_preference(x={**_SRC, "dataset": "medcalc"}), "preference.sources.x.dataset: unknown dataset 'medcalc'"),
        (_preference(x={**_SRC, "cot_source": "ghost"}), "preference.sources.x.cot_source: 'ghost' is not a model"),
        (_preference(x={**_SRC, "cot_source": "qwq_dapo__opent"}), "preference.sources.x.cot_source"),
        (_preference(x={**_SRC, "condition": "ensemble"}), "preference.sources.x.cot_source: 'toy_dapo' is not an ensemble"),
    ],
)
def test_bad_preference_names_the_key(demo_config, preference, named):
    demo_config["preference"] = preference
    with pytest.raises(ConfigError) as err:
        validate(demo_config)
    assert named in str(err.value)


def test_cot_only_sources_and_optional_checkpoints(demo_config, tmp_path, caplog):
    demo_config["models"]["base"] = {"family": "think", "toy": {"seed": 5}, "evaluator": False}
    demo_config["models"]["grpo"] = {"family": "think", "path": str(tmp_path / "absent"), "optional": True}
    with caplog.at_level("WARNING", logger="cotransfer.config"):
        study = Study.from_dict(validate(demo_config))
    assert "base" in study.models and "base" not in study.evaluators and "grpo" not in study.models
    assert "models.grpo" in caplog.text and "left out" in caplog.text
    (tmp_path / "absent").mkdir()  # a folder, but no checkpoint in it yet: an error, not left out
    with pytest.raises(ConfigError, match=r"models\.grpo\.path: .*not a complete model folder"):
        validate(demo_config)
    (tmp_path / "absent").rmdir()
    shutil.copytree(ROOT / "data/models/toy_qwq", tmp_path / "absent")  # trained now: it joins the study
    assert "grpo" in Study.from_dict(validate(demo_config)).evaluators
    for m in demo_config["models"].values():
        m["evaluator"] = False
    with pytest.raises(ConfigError, match="no evaluator"):
        Study.from_dict(validate(demo_config))


# -- inputs checked before any job (issue 15) ----------------------------------------------------


def _rejected(cfg: dict, *named: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for text in named:
        assert text in str(err.value)
    return str(err.value)


def _toy_copy(tmp_path, name="toy_qwq"):
    return shutil.copytree(ROOT / "data/models" / name, tmp_path / name)


def test_demo_inputs_pass_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # absolute model paths: nothing depends on where validation runs
    assert len(Study.from_dict(validate(demo_config_abs())).models) == 4


def test_missing_model_path_fails_validation(tmp_path):
    """(a) A `path:` that does not exist used to pass and fail the prepare_model job."""
    cfg = demo_config_abs()
    cfg["models"]["toy_qwq"]["path"] = str(tmp_path / "no_such_model")
    message = _rejected(cfg, "models.toy_qwq.path: no such folder", str(tmp_path / "no_such_model"))
    assert message.count("\n") == 0  # one problem, one line
    cfg = demo_config_abs()
    cfg["aux_models"]["toy_filter"]["path"] = "data/models/toy_filtre"  # relative: to the working directory
    _rejected(cfg, "aux_models.toy_filter.path: no such folder data/models/toy_filtre (relative to the working "
                   "directory")


@pytest.mark.parametrize("remove, missing", [
    (["config.json"], "missing config.json"),
    (["tokenizer.json"], "missing a tokenizer"),
    (["model.safetensors"], "missing weights (*.safetensors or *.bin)"),
    (["chat_template.jinja"], "missing a chat template"),
    (["config.json", "tokenizer.json", "model.safetensors"], "missing config.json, a tokenizer"),
])
def test_incomplete_model_folder_names_what_is_missing(tmp_path, remove, missing):
    """(b) A model folder without its config, tokenizer, weights or chat template."""
    folder = _toy_copy(tmp_path)
    for name in remove:
        (folder / name).unlink()
    cfg = demo_config_abs()
    cfg["models"]["toy_qwq"]["path"] = str(folder)
    _rejected(cfg, f"models.toy_qwq.path: {folder} is not a complete model folder", missing)


def test_sharded_weights_need_every_shard_the_index_lists(tmp_path):
    folder = _toy_copy(tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    cfg = demo_config_abs()
    cfg["models"]["toy_qwq"]["path"] = str(folder)
    _rejected(cfg, "models.toy_qwq.path", "model-00002-of-00002.safetensors (listed in model.safetensors.index.json)")
    (folder / "model-00001-of-00002.safetensors").rename(folder / "model-00002-of-00002.safetensors")
    _rejected(cfg, "model-00001-of-00002.safetensors")
    shutil.copy(folder / "model-00002-of-00002.safetensors", folder / "model-00001-of-00002.safetensors")
    validate(cfg)
    (folder / "config.json").write_text("{not json")
    _rejected(cfg, "models.toy_qwq.path", "config.json is not valid JSON")


def test_n_items_above_toyarith_questions_is_refused(tmp_path):
    """(c) the issue's case: `n_items: 100000` on the demo started hours of work silently. The
    toyarith dataset is its generator's first `options.size` distinct questions (default 1000;
    at most modulus * (3 * (modulus - 1)) ** steps: 196,830 for the demo's options)."""
    cfg = demo_config_abs()
    cfg["datasets"]["toyarith"]["n_items"] = 100_000
    _rejected(cfg, "datasets.toyarith.n_items: 100000 is more than the 1000 questions", "n_items must not exceed")
    cfg["datasets"]["toyarith"]["options"]["size"] = 100_000
    validate(cfg)  # asked for explicitly
    cfg["datasets"]["toyarith"]["options"]["size"] = 300_000
    _rejected(cfg, "datasets.toyarith.options.size: 300000 is more than the 196830 distinct questions")
    cfg["datasets"]["toyarith"]["options"] = {"steps": 1, "modulus": 10}  # 10 * 27 questions
    cfg["datasets"]["toyarith"]["n_items"] = 271
    _rejected(cfg, "datasets.toyarith.n_items: 271 is more than the 270 questions")
    cfg["datasets"]["toyarith"]["n_items"] = 270
    validate(cfg)
    cfg["datasets"]["toyarith"]["options"] = {"steps": 0}
    _rejected(cfg, "datasets.toyarith.options.steps")


def test_toyarith_items_are_distinct_questions():
    """toyarith used to draw questions with replacement and repeat them under new ids (21,605
    of 100,000 with the demo's options); every question of a full draw is now distinct, and a
    draw without repeats is the one version 1 made."""
    import random

    from cotransfer.config import DatasetSpec
    from cotransfer.datasets.toyarith import ToyArith, make_item

    spec = DatasetSpec(name="t", adapter="toyarith", n_items=18, seed=0, options=(("modulus", 3), ("steps", 1)))
    items = ToyArith(spec).load()
    assert items.height == ToyArith(spec).available() == 18 and items["user"].n_unique() == 18
    demo = DatasetSpec(name="t", adapter="toyarith", n_items=40, seed=0, options=(("modulus", 10), ("steps", 3)))
    rng = random.Random(0)
    assert ToyArith(demo).load()["user"].to_list() == [make_item(rng, 3, 10)[0] for _ in range(40)]


def test_n_items_above_a_local_table_is_refused(tmp_path):
    """(c) n_items above the rows of a local dataset file names both numbers."""
    table = tmp_path / "test.csv"
    table.write_text('question,answer\n"Two\nlines",#### 1\nb,#### 2\nc,#### 3\n')  # a quoted newline: 3 rows
    cfg = demo_config_abs()
    cfg["datasets"]["small"] = {"adapter": "gsm8k", "path": str(table), "n_items": 100_000}
    _rejected(cfg, f"datasets.small.n_items: 100000 is more than the 3 rows of {table}")
    cfg["datasets"]["small"]["n_items"] = 3
    validate(cfg)
    cfg["datasets"]["small"]["options"] = {"expected_rows": 1319}
    _rejected(cfg, "datasets.small.options.expected_rows", "has 3 rows, expected 1319")
    cfg["datasets"]["small"] = {"adapter": "medcalc", "repo_id": "ncbi/MedCalc-Bench-v1.0", "n_items": 2000,
                                "options": {"expected_rows": 1047}}  # the size is pinned: known offline
    _rejected(cfg, "datasets.small.n_items: 2000 is more than the 1047 rows")


def test_instruction_induction_sizes_and_folder(tmp_path):
    """tasks x per_task items; per_task above a task's examples; a folder without induce/."""
    cfg = demo_config_abs()
    ii = {"adapter": "instruction_induction", "path": str(ROOT / "tests/fixtures/instruction_induction")}
    cfg["datasets"]["ii"] = {**ii, "options": {"per_task": 5}}
    validate(cfg)
    cfg["datasets"]["ii"] = {**ii, "options": {"per_task": 10}}
    _rejected(cfg, "datasets.ii.options.per_task: 10 is more than the examples of task(s) reverse_word (8)")
    cfg["datasets"]["ii"] = {**ii, "n_items": 11}
    _rejected(cfg, "datasets.ii.n_items: 11 is more than the 10 items (tasks x per_task)")
    cfg["datasets"]["ii"] = {**ii, "options": {"tasks": ["larger_animal", "rhymes"]}}
    _rejected(cfg, "datasets.ii.options.tasks", "['rhymes']")
    cfg["datasets"]["ii"] = {**ii, "path": str(tmp_path)}
    _rejected(cfg, "datasets.ii.path", "has no induce/ folder")


@pytest.mark.parametrize("dataset, named", [
    ({"adapter": "medcalc", "path": "no/such/medcalc.csv"}, "datasets.d.path: no such file no/such/medcalc.csv"),
    ({"adapter": "gsm8k", "path": "tests/fixtures"}, "datasets.d.path: tests/fixtures (relative to the working "
                                                      "directory"),
    ({"adapter": "instruction_induction", "path": "no/such/ii"}, "datasets.d.path: no such folder no/such/ii"),
    ({"adapter": "medcalc", "path": "tests/fixtures/instruction_induction/induce/larger_animal.json"},
     "datasets.d.path: cannot read"),
])
def test_missing_dataset_path_fails_validation(dataset, named):
    """(d) A local dataset `path:` that does not exist (or is not what the adapter reads)."""
    cfg = demo_config_abs()
    cfg["datasets"]["d"] = dataset
    _rejected(cfg, named)


def test_similarity_weights_are_checked_where_local(tmp_path):
    cfg = demo_config_abs()
    opts = {"similarity": "embedding", "similarity_threshold": 0.5}
    ii = {"adapter": "instruction_induction", "path": str(ROOT / "tests/fixtures/instruction_induction")}
    cfg["datasets"]["ii"] = {**ii, "options": {**opts, "similarity_model": str(tmp_path / "minilm")}}
    _rejected(cfg, "datasets.ii.options.similarity_model: no such folder")
    (tmp_path / "minilm").mkdir()
    _rejected(cfg, "datasets.ii.options.similarity_model", "missing config.json")
    cfg["datasets"]["ii"] = {**ii, "options": {**opts, "similarity": "bertscore", "similarity_model": "./no/deberta"}}
    _rejected(cfg, "datasets.ii.options.similarity_model: no such folder")
    cfg["datasets"]["ii"]["options"]["similarity_model"] = "microsoft/deberta-xlarge-mnli"  # a Hub id: not checked
    validate(cfg)


def test_missing_ratings_file_fails_validation(tmp_path):
    """(e) The preference study's ratings file."""
    cfg = demo_config_abs()
    cfg["preference"] = {**_preference(), "ratings": str(tmp_path / "ratings.csv")}
    cfg["compat"] = {"preference_modes": "paper"}
    _rejected(cfg, f"preference.ratings: no such file {tmp_path / 'ratings.csv'}")
    (tmp_path / "ratings.csv").write_text("rater,item\nr1,t0\n")
    _rejected(cfg, "preference.ratings", "missing column(s)")
    cfg["preference"]["ratings"] = str(ROOT / "tests/fixtures/ratings_demo.csv")
    validate(cfg)


def test_every_problem_is_listed(tmp_path):
    cfg = demo_config_abs()
    cfg["models"]["toy_qwq"]["path"] = str(tmp_path / "a")
    cfg["models"]["toy_dapo"]["path"] = str(tmp_path / "b")
    cfg["datasets"]["toyarith"]["n_items"] = 10**6
    message = _rejected(cfg, "models.toy_qwq.path", "models.toy_dapo.path", "datasets.toyarith.n_items")
    assert message.startswith("invalid inputs:\n")
    Study.from_dict(cfg)  # the typed view alone reads no file (planning elsewhere)
    validate(cfg, inputs=False)


def _bad_model_config(tmp_path):
    cfg = demo_config_abs()
    cfg["models"]["toy_qwq"]["path"] = str(tmp_path / "no_such_model")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "bad.yaml"


def test_cli_validate_names_a_missing_model(tmp_path, capsys):
    from cotransfer.cli import main

    assert main(["validate", str(_bad_model_config(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "models.toy_qwq.path: no such folder" in err and "Traceback" not in err


@pytest.mark.workflow
def test_snakemake_dry_run_fails_on_a_missing_model_before_any_job(tmp_path):
    """The issue's case: a missing model folder passed `snakemake -n`; now the plan fails,
    naming the key, and nothing is created."""
    _bad_model_config(tmp_path)
    proc = snakemake("-n", "--configfile", "bad.yaml", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "models.toy_qwq.path: no such folder" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
