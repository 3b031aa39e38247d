"""The paper-compatibility switches (method.md 1.4): each one's paper mode next to its corrected
twin, the config that sets them all, and their place in params and provenance."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import yaml

from conftest import ROOT, load_yaml
from cotransfer.config import COMPAT_SWITCHES, Compat, ConfigError, Study, validate
from cotransfer.formats import get_format
from test_ensemble import ITEMS, Scripted, spec
from test_formats import HARMONY_HEAD, HEAD, MSGS, Tok


def _study(cfg: dict, compat) -> Study:
    cfg = copy.deepcopy(cfg)
    cfg["compat"] = compat
    return Study.from_dict(validate(cfg))


def test_compat_config_all_none_or_each_switch():
    assert Compat.from_config(None).paper == frozenset() == Compat.from_config("corrected").paper
    assert Compat.from_config("paper").paper == frozenset(COMPAT_SWITCHES)
    one = Compat.from_config({"answer_scope": "paper", "dedupe_open": "corrected"})
    assert one.answer_scope and not one.dedupe_open
    assert one.params("score") == {"answer_scope": "paper"}
    assert set(one.params()) == set(COMPAT_SWITCHES) and list(one.params().values()).count("paper") == 1
    with pytest.raises(ConfigError, match="unknown switch"):
        Compat.from_config({"answer_scop": "paper"})


def test_paper_compat_config_is_the_study_with_every_switch_paper():
    paper, corrected = load_yaml("config/paper-compat.yaml"), load_yaml("config/config.yaml")
    assert paper.pop("compat") == "paper"
    assert paper.pop("study") == {"name": "paper-compat", "results": "results/paper-compat"}
    corrected.pop("study")
    assert paper == corrected  # nothing else differs: the two runs compare like with like
    study = Study.from_dict(validate(load_yaml("config/paper-compat.yaml")))
    assert study.compat.paper == frozenset(COMPAT_SWITCHES)
    assert {e.scoring for e in study.ensembles.values()} == {"paper"}


# -- prompts ---------------------------------------------------------------------------------


def test_dedupe_open_paper_doubles_the_opener_a_template_already_wrote():
    f = get_format("think")
    corrected = f.prompt(Tok("<think>\n"), MSGS)
    paper = f.prompt(Tok("<think>\n"), MSGS, dedupe_open=False)
    assert corrected == HEAD + "<think>\n"
    assert paper == HEAD + "<think>\n<think>"  # QwQ received `<think>\n<think>`
    # a template that does not open: the same in both modes
    assert f.prompt(Tok(), MSGS, dedupe_open=False) == f.prompt(Tok(), MSGS) == HEAD + "<think>"


def test_oss_literal_prefill_next_to_its_corrected_twin(paper_config):
    f = get_format("harmony")
    own = f.prompt(None, MSGS, reasoning_effort="low", conversation_date="2025-06-28")
    cot = "Three plus four is seven."
    assert f.prefill(own, cot) == HARMONY_HEAD + ("<|channel|>analysis<|message|>Three plus four is seven.<|end|>"
                                                  "<|start|>assistant<|channel|>final<|message|>")
    assert f.literal_prefill(own, cot) == HARMONY_HEAD + "analysisThree plus four is seven.assistantfinal"
    paper, corrected = _study(paper_config, "paper"), _study(paper_config, "corrected")
    assert paper.literal_oss_prefill("oss", "medcalc")
    assert not paper.literal_oss_prefill("oss", "ii")  # II used real channel tokens
    assert not paper.literal_oss_prefill("qwq", "medcalc") and not corrected.literal_oss_prefill("oss", "medcalc")


def test_oss_effort_medium_only_for_medcalc_transfer_evaluation(paper_config):
    paper, corrected = _study(paper_config, "paper"), _study(paper_config, "corrected")
    assert paper.prompt_kwargs("oss", "medcalc", "transfer")["reasoning_effort"] == "medium"
    for args in (("medcalc", "ensemble"), ("medcalc", "default"), ("ii", "transfer")):
        assert paper.prompt_kwargs("oss", *args)["reasoning_effort"] == "low"
    assert corrected.prompt_kwargs("oss", "medcalc", "transfer")["reasoning_effort"] == "low"
    f = get_format("harmony")
    medium = f.prompt(None, MSGS, **paper.prompt_kwargs("oss", "medcalc", "transfer"))
    assert medium == HARMONY_HEAD.replace("Reasoning: low", "Reasoning: medium") + "<|channel|>analysis<|message|>"
    assert paper.prompt_kwargs("qwq", "medcalc", "transfer") == {"dedupe_open": False}
    assert corrected.prompt_kwargs("qwq", "medcalc", "transfer") == {}


def test_prefill_units_use_the_switches(demo_config):
    """Through the inference code: the prompt a prefilled request carries in each mode."""
    from cotransfer.inference import Job, prefill_units

    class Engine:
        tokenizer = Tok("<think>\n")

        def count_tokens(self, text):
            return len(text)

    demo_config["models"]["toy_qwq"]["family"] = "think"
    item = {"item_id": "t0", "system": "Be careful.", "user": "Start with 3. Add 4."}
    cots = pl.DataFrame({"item_id": ["t0"], "sample": [0], "cot": ["C."]})
    reqs = {}
    for mode in ("corrected", "paper"):
        job = Job(_study(demo_config, mode), "toyarith", "toy_qwq", Engine())
        reqs[mode] = prefill_units(job, [item], cots, condition="transfer", variant="full", cot_source="x")[0].request
    assert reqs["corrected"].prompt == HEAD + "<think>\nC.</think>"
    assert reqs["paper"].prompt == HEAD + "<think>\n<think>C.</think>"


# -- CoTs and answers ----------------------------------------------------------------------------


def test_collapse_ws_before_storing_and_transferring():
    from cotransfer.inference import cots_from_generations

    gen = pl.DataFrame({"dataset": ["d"], "item_id": ["1"], "sample": [0], "thinking": ["  First,\n\n 3+4 =\t7.\n"]})
    assert cots_from_generations(gen, "m")["cot"][0] == "  First,\n\n 3+4 =\t7.\n"
    assert cots_from_generations(gen, "m", collapse=True)["cot"][0] == "First, 3+4 = 7."


def test_answer_scope_paper_finds_an_answer_in_the_prompt_or_thinking(demo_config):
    from cotransfer.scoring import score_generations

    study = Study.from_dict(validate(demo_config))
    items = pl.DataFrame({"item_id": ["1"], "gold": ["7"], "meta": ["{}"]})
    gens = pl.DataFrame({"item_id": ["1", "1"], "prompt": ["Start with 3. Add 4.", "Q"],
                         "thinking": ["3 + 4 = 7.", "3 + 4 = 8."], "answer_text": ["", "The answer is 7."]})
    spec_ = study.datasets["toyarith"]
    corrected = score_generations(spec_, items, gens)
    paper = score_generations(spec_, items, gens, answer_scope="paper")
    assert corrected["valid"].to_list() == [False, True] and corrected["answer"].to_list() == [None, "7"]
    # paper: the last number anywhere (an empty answer is scored from the CoT it was given)
    assert paper["valid"].to_list() == [True, True] and paper["answer"].to_list() == ["7", "7"]
    with pytest.raises(ValueError, match="answer_scope"):
        score_generations(spec_, items, gens, answer_scope="everything")


# -- the ensemble ----------------------------------------------------------------------------------


def test_ensemble_stop_paper_ends_only_on_think_close(demo_config):
    """A selected candidate that ends OpenThinker's thought stops the row in corrected mode; in
    paper mode only `</think>` did, so the row goes on to its cap."""
    from cotransfer.ensemble import run

    def opent(ctx, seed):
        return "4 plus 2 is 6.<|end_of_thought|>"

    def qwq(ctx, seed):
        return "x"  # truncated to nothing: never a candidate

    evaluator = Scripted(scores={"4 plus 2 is 6.": -0.1})
    for mode, reason in (("corrected", "ends_thought"), ("paper", "max_steps")):
        study = _study(demo_config, {"ensemble_stop": mode})
        engines = {"toy_qwq": Scripted(qwq), "toy_opent": Scripted(opent), "toy_dapo": evaluator}
        rows, _ = run(study, "toyarith", spec(generators=("toy_qwq", "toy_opent"), evaluators=("toy_dapo",),
                                              max_steps=3), ITEMS[:1], engines)
        assert rows["stop_reason"][0] == reason, mode


def test_ensemble_seed_paper_repeats_every_step(demo_config):
    from cotransfer.ensemble import run

    for mode in ("corrected", "paper"):
        seeds = []

        def sampler(ctx, seed, seeds=seeds):
            seeds.append(seed)
            return f"{len(seeds)}+1=2."

        study = _study(demo_config, {"ensemble_seed": mode})
        engines = {"toy_qwq": Scripted(sampler), "toy_dapo": Scripted(sampler), "toy_opent": Scripted()}
        run(study, "toyarith", spec(max_steps=3), ITEMS[:1], engines)
        per_step = [tuple(seeds[i:i + 4]) for i in range(0, len(seeds), 4)]  # 2 generators x 2 samples
        assert len(per_step) == 3 and len(set(per_step[0])) == 4  # distinct candidates within a step
        if mode == "paper":
            assert len(set(per_step)) == 1  # the same seeds every step
        else:
            assert len(set(per_step)) == 3


def test_ensemble_scoring_paper_for_every_ensemble(demo_config):
    assert {e.scoring for e in _study(demo_config, "paper").ensembles.values()} == {"paper"}
    assert {e.scoring for e in _study(demo_config, "corrected").ensembles.values()} == {"candidate"}


# -- metrics and figures -----------------------------------------------------------------------------


def _answers(rows):
    cols = ["dataset", "item_id", "condition", "variant", "cot_source", "evaluator", "sample", "answer", "valid",
            "correct"]
    return pl.DataFrame([dict(zip(cols, r)) for r in rows],
                        schema={c: (pl.Int64 if c == "sample" else pl.Boolean if c in ("valid", "correct")
                                    else pl.String) for c in cols})


def test_selfcons_default_source_paper_uses_the_a_to_a_transfer():
    from cotransfer import metrics

    rows = []
    for item in ("1", "2"):
        rows += [("d", item, "default", "full", None, "A", 0, "5", True, False),      # free run: 5
                 ("d", item, "transfer", "full", "A", "A", 0, "7", True, True),        # A->A: 7
                 ("d", item, "sampled", "full", None, "A", 0, "7", True, True)]        # sampled: 7
    answers = _answers(rows)
    corrected = metrics.self_consistency(answers).filter(definition="strict")
    paper = metrics.self_consistency(metrics.paper_default_source(answers)).filter(definition="strict")
    assert corrected["rate"].to_list() == [0.0] and paper["rate"].to_list() == [1.0]
    swapped = metrics.paper_default_source(answers)
    assert swapped.filter(condition="default")["answer"].to_list() == ["7", "7"]
    assert swapped.filter(condition="transfer").height == 2  # the transfer rows stay for consistency


def test_fig1_pooling_paper_pools_both_answer_modes():
    from cotransfer import figures

    cons = pl.DataFrame({
        "dataset": ["d"] * 4, "condition": ["transfer"] * 4, "variant": ["full", "full", "stripped", "stripped"],
        "cot_source": ["s"] * 4, "evaluator_a": ["A", "A", "A", "A"], "evaluator_b": ["B", "C", "B", "C"],
        "definition": ["paper"] * 4, "n": [10] * 4, "consistency": [0.9, 0.7, 0.3, 0.1]})
    split = figures.overview_figure(cons)
    pooled = figures.overview_figure(cons, pool_variants=True)
    assert len([a for a in split.axes if a.get_visible()]) == 2
    assert len([a for a in pooled.axes if a.get_visible()]) == 1
    heights = [p.get_height() for p in pooled.axes[0].patches]
    assert heights == pytest.approx([0.5])  # the mean over all four pairs


# -- params and provenance -------------------------------------------------------------------------


def test_provenance_records_every_switch(demo_config):
    from cotransfer import io

    demo_config["compat"] = {"answer_scope": "paper"}
    doc = io.provenance(config=demo_config)
    assert doc["compat"]["answer_scope"] == "paper" and set(doc["compat"]) == set(COMPAT_SWITCHES)
    assert list(doc["compat"].values()).count("paper") == 1
    demo_config["compat"] = "paper"
    assert set(io.provenance(config=demo_config)["compat"].values()) == {"paper"}


def test_paper_compat_plans_the_study(tmp_path):
    from test_workflow import job_counts, snakemake

    out = snakemake("-n", "--configfile", str(ROOT / "config/paper-compat.yaml"), cwd=tmp_path).stdout
    counts = job_counts(out)
    assert counts["generate"] == 10 and counts["ensemble"] == 6 and counts["figures"] == 1
    assert "results/paper-compat/tables/answers.parquet" in out


def test_breakdown_grouping_paper_draws_tolerance_agreement_as_inconsistent():
    from matplotlib.colors import to_hex

    from cotransfer import figures

    br = pl.DataFrame({"dataset": ["d"] * 5, "condition": ["transfer"] * 5, "variant": ["full"] * 5,
                       "cot_source": ["s"] * 5, "category": list(figures.BREAKDOWN_CATEGORIES),
                       "share": [0.2] * 5, "n_rows": [10] * 5, "same_diff_correctness": [0] * 5})

    def colours(fig):
        return [to_hex(p.get_facecolor()) for p in fig.axes[0].patches]

    corrected, paper = colours(figures.breakdown_figure(br)), colours(figures.breakdown_figure(br, paper_grouping=True))
    tolerance = list(figures.BREAKDOWN_CATEGORIES).index("different_both_correct")
    assert corrected[tolerance] == "#d9ef8b" and paper[tolerance] == "#fdae61"  # green -> orange
    assert [c for i, c in enumerate(paper) if i != tolerance] == [c for i, c in enumerate(corrected) if i != tolerance]


def test_preference_may_mix_answer_modes_only_under_paper(demo_config):
    demo_config["preference"] = {"ratings": "tests/fixtures/ratings_demo.csv", "sources": {
        "A": {"condition": "transfer", "cot_source": "toy_qwq", "variant": "stripped", "dataset": "toyarith"},
        "B": {"condition": "ensemble", "cot_source": "qwq_dapo__opent", "variant": "full", "dataset": "toyarith"}}}
    with pytest.raises(ConfigError, match="mix answer modes.*compat.preference_modes"):
        _study(demo_config, "corrected")
    assert _study(demo_config, {"preference_modes": "paper"}).preference is not None


def test_ii_source_cot_parse_paper_cuts_the_source_output_at_the_target_marker():
    from cotransfer.inference import cots_from_generations, paper_source_cots

    gen = pl.DataFrame({"dataset": ["ii"] * 2, "item_id": ["1", "2"], "sample": [0, 0],
                        "thinking": ["Pairs are opposites.", "Still thinking"], "closed": [True, False],
                        "answer_text": ["Write the antonym.", ""]})
    cots = cots_from_generations(gen, "qwq", fmt=get_format("think"))
    assert cots["cot"].to_list() == ["Pairs are opposites.", "Still thinking"]  # corrected: the source's markers
    assert cots["raw"].to_list() == ["Pairs are opposites.</think>Write the antonym.", "Still thinking"]
    # a target with the same markers reads the same CoT; another family finds no close marker of
    # its own and reads the whole decoded output, the source's answer included
    assert paper_source_cots(cots, get_format("think"))["cot"].to_list() == cots["cot"].to_list()
    assert paper_source_cots(cots, get_format("openthinker"))["cot"].to_list() == cots["raw"].to_list()
    with pytest.raises(ValueError, match="raw"):
        paper_source_cots(cots.drop("raw"), get_format("think"))


def test_docs_name_every_switch():
    text = (ROOT / "docs/compat.md").read_text()
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    in_schema = set(schema["properties"]["compat"]["oneOf"][1]["properties"])
    assert in_schema == set(COMPAT_SWITCHES)
    assert all(f"`{k}`" in text for k in COMPAT_SWITCHES)
