"""The demo's trained toy models: their own CoT solves the task, an empty CoT does not."""

import random

import polars as pl
import pytest

from conftest import ROOT
from cotransfer.config import GREEDY, DatasetSpec, Study, validate
from cotransfer.datasets.toyarith import ToyArith, make_chain
from cotransfer.inference import Job, free_run, items_list, prefilled_run
from cotransfer.scoring import score_generations
from cotransfer.toymodels import RECIPES, STYLES, cot_text, training_example


def test_styles_phrase_the_same_chain_differently():
    chain = make_chain(random.Random(0), 3, 10)
    texts = {s: cot_text(chain, s) for s in STYLES}
    assert texts["symbols"] == "6-1=5. 5-9=6. 6-7=9."
    assert texts["words"] == "6 minus 1 is 5. 5 minus 9 is 6. 6 minus 7 is 9."
    assert len(set(texts.values())) == len(STYLES)
    assert {r["style"] for r in RECIPES.values()} == set(STYLES)
    assert len({r["family"] for r in RECIPES.values()}) >= 2


def test_training_example_uses_the_family_format():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "data/models/toy_opent")
    p, c = training_example(tok, "openthinker", make_chain(random.Random(1), 3, 10), "words")
    text = tok.decode(c)
    assert tok.decode(p).endswith("<|im_start|>assistant\n<|begin_of_thought|>")
    assert "<|end_of_thought|><|begin_of_solution|>The answer is" in text and text.endswith("<|end_of_solution|><|im_end|>")


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["toy_qwq", "toy_weak"])
def test_trained_model_beats_its_empty_cot_on_held_out_items(name, demo_config):
    from cotransfer.engine import Engine

    study = Study.from_dict(validate(demo_config))
    spec = DatasetSpec(name="toyarith", adapter="toyarith", n_items=60, seed=12345, options=(("steps", 3),))
    items_df = ToyArith(spec).load(None)
    items = items_list(items_df)
    engine = Engine(str(ROOT / "data/models" / name), dtype="float32", max_model_len=1024)
    job = Job(study, "toyarith", name, engine)
    own = free_run(job, items, "default", GREEDY, 1)
    empty = prefilled_run(job, items, None, condition="empty", variant=None, cot_source=None)
    acc = {k: score_generations(spec, items_df, df)["correct"].mean() for k, df in (("own", own), ("empty", empty))}
    print(name, acc)
    if name == "toy_qwq":
        assert acc["own"] >= 0.8
    assert acc["own"] >= acc["empty"] + 0.25
    assert own.filter(pl.col("closed")).height >= 0.9 * own.height  # it closes its own thinking
