import pytest

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
    (tmp_path / "absent").mkdir()  # trained now: it joins the study
    assert "grpo" in Study.from_dict(validate(demo_config)).evaluators
    for m in demo_config["models"].values():
        m["evaluator"] = False
    with pytest.raises(ConfigError, match="no evaluator"):
        Study.from_dict(validate(demo_config))
