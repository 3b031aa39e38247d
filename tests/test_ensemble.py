"""The sentence-level ensemble (method.md section 7) on scripted engines: cleaning, selection
and its ties in both scoring modes, the stop rules."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from cotransfer.config import EnsembleSpec, Study, validate
from cotransfer.engine import Completion
from cotransfer.ensemble import Candidate, clean, run, select
from test_formats import Tok

ITEMS = [{"item_id": "t0", "system": None, "user": "Start with 4. Add 2."},
         {"item_id": "t1", "system": None, "user": "Start with 1. Add 1."}]


class Scripted:
    """A generator proposes `propose(context, seed)`; an evaluator gives a candidate piece one
    log-probability, `scores[piece.strip()]` (default `default`). Token ids are characters."""

    tokenizer = Tok()
    settings = {"max_model_len": 10_000}
    identity = {"weights": "scripted"}

    def __init__(self, propose=None, scores=None, default=-5.0):
        self.propose, self.scores, self.default = propose, scores or {}, default
        self.generated, self.scored = 0, []
        self.stats = SimpleNamespace(prefill_tokens=0)

    def encode(self, text):
        return [ord(c) for c in text]

    def generate(self, requests, what=""):
        self.generated += len(requests)
        assert all(r.prompt_ids is not None for r in requests)  # contexts go as ids
        return [Completion(self.propose(r.prompt, r.seed), 3, "length") for r in requests]

    def token_logprobs(self, pairs, what=""):
        self.scored.append(what)
        return [[self.scores.get("".join(map(chr, cand)).strip(), self.default)] for _, cand in pairs]


@pytest.fixture
def study(demo_config):
    return Study.from_dict(validate(demo_config))


def spec(**kw) -> EnsembleSpec:
    base = dict(name="ens", generators=("toy_qwq", "toy_dapo"), evaluators=("toy_opent",), candidates=2,
                chunk_tokens=8, max_steps=5, thinking_cap=1000)
    return EnsembleSpec(**{**base, **kw})


def test_clean_cuts_at_the_close_marker_and_truncates_the_rest():
    assert clean("4+2=6.</think>The answer", "</think>") == ("4+2=6.", True)
    assert clean("4+2=6. 6*", "</think>") == ("4+2=6.", False)
    assert clean("4+2=6. 6*", "</think>", "paper") == ("4+2=6. 6*", False)  # the original rule
    assert clean("<|begin_of_thought|>4 plus 2 is 6.", "<|end_of_thought|>") == ("4 plus 2 is 6.", False)


def test_selection_ties_go_to_the_lower_generator_then_sample():
    cands = [Candidate(1, 0, "b", "b", False, {"e": -1.0}), Candidate(0, 1, "a", "a", False, {"e": -1.0}),
             Candidate(0, 0, "c", "c", False, {"e": -1.0})]
    assert (select(cands, "candidate").generator, select(cands, "candidate").sample) == (0, 0)
    assert (select(cands, "paper").generator, select(cands, "paper").sample) == (0, 0)
    cands[1].scores["e"] = -0.5  # higher mean log-prob wins; lower perplexity wins
    assert select(cands, "candidate").raw == "a" and select(cands, "paper").raw in ("b", "c")
    assert select(cands, "paper").raw == "c"


def test_steps_append_the_best_candidate_until_one_ends_the_thought(study):
    def qwq(ctx, seed):
        return "4+2=6. 6*" if not ctx.endswith(".") else " done.</think>"

    def dapo(ctx, seed):
        return "4 + 2 -> 6; 6" if not ctx.endswith(".") else " more."

    evaluator = Scripted(scores={"4+2=6.": -1.0, "4 + 2 -> 6; 6": -2.0, "done.": -0.5, "more.": -3.0})
    engines = {"toy_qwq": Scripted(qwq), "toy_dapo": Scripted(dapo), "toy_opent": evaluator}
    rows, steps = run(study, "toyarith", spec(), ITEMS, engines)
    assert rows["cot"].to_list() == ["4+2=6. done."] * 2
    assert rows["stop_reason"].to_list() == ["ends_thought"] * 2 and rows["n_steps"].to_list() == [2, 2]
    assert steps.height == 4 and steps["selected_generator"].to_list() == [0, 0, 0, 0]
    assert not any("paper" in w for w in evaluator.scored)
    # paper scoring: the lowest whole-sequence perplexity, i.e. here the highest log-probability
    # (same context, one token per candidate); the prompt's own likelihood is computed once
    evaluator = Scripted(scores={"4+2=6.": -4.0, "4 + 2 -> 6; 6": -0.1})
    engines["toy_opent"] = evaluator
    rows, steps = run(study, "toyarith", spec(scoring="paper", max_steps=1), ITEMS, engines)
    assert rows["cot"][0] == "4 + 2 -> 6; 6" and "paper" in evaluator.scored[0]
    scores = json.loads(steps["candidates"][0])
    assert min(scores, key=lambda c: c["score"])["text"] == "4 + 2 -> 6; 6" and all(c["score"] > 1 for c in scores)


def test_empty_candidates_stop_after_three_steps_and_the_cap_stops_a_run_that_never_ends(study):
    engines = {"toy_qwq": Scripted(lambda c, s: "   "), "toy_dapo": Scripted(lambda c, s: ""),
               "toy_opent": Scripted()}
    rows, steps = run(study, "toyarith", spec(), ITEMS, engines)
    assert rows["stop_reason"].to_list() == ["no_candidates"] * 2 and rows["n_steps"].to_list() == [3, 3]
    assert steps.height == 0 and rows["cot"].to_list() == ["", ""]
    forever = {"toy_qwq": Scripted(lambda c, s: "1+1=2. 2"), "toy_dapo": Scripted(lambda c, s: "1 + 1 -> 2;"),
               "toy_opent": Scripted()}
    rows, _ = run(study, "toyarith", spec(thinking_cap=20, max_steps=100), ITEMS, forever)
    assert rows["stop_reason"].to_list() == ["thinking_cap"] * 2
    assert all(20 <= len(t) < 30 for t in rows["cot"])  # character ids: the cap counts characters here
    rows, _ = run(study, "toyarith", spec(max_steps=3), ITEMS, forever)
    assert rows["stop_reason"].to_list() == ["max_steps"] * 2 and rows["n_steps"].to_list() == [3, 3]


def test_same_seeds_give_the_same_thoughts(study):
    def sampler(ctx, seed):  # the completion depends on the request's seed only
        return f"{seed % 7}+1={seed % 7 + 1}."

    def engines():
        return {"toy_qwq": Scripted(sampler), "toy_dapo": Scripted(sampler), "toy_opent": Scripted()}

    a, _ = run(study, "toyarith", spec(max_steps=3), ITEMS, engines())
    b, _ = run(study, "toyarith", spec(max_steps=3), ITEMS, engines())
    assert a.equals(b) and a["cot"][0] != a["cot"][1]  # per-row seeds differ


def test_a_row_stops_when_the_next_chunk_would_not_fit_the_context_window(study):
    engines = {"toy_qwq": Scripted(lambda c, s: "1+1=2. 2"), "toy_dapo": Scripted(lambda c, s: "1 + 1 -> 2;"),
               "toy_opent": Scripted()}
    prompt = len(Tok().apply_chat_template([{"role": "user", "content": ITEMS[0]["user"]}], False, True))
    engines["toy_opent"].settings = {"max_model_len": prompt + 40}
    rows, steps = run(study, "toyarith", spec(max_steps=50), ITEMS, engines)
    assert rows["stop_reason"].to_list() == ["context_full"] * 2
    assert 1 <= rows["n_steps"][0] < 50


def test_a_run_killed_midway_continues_from_its_step_log_and_ends_identical(study, tmp_path, caplog):
    """The step log is append-only per step: a run that dies at step 3 and is run again computes
    only steps 3 on, and ends exactly like a run never interrupted (paper scoring, whose carried
    context likelihoods are restored too). A log written for another configuration is discarded."""
    def sampler(ctx, seed):
        return f"{seed % 7}+1={seed % 7 + 1}."

    def evaluator():  # a log-probability that depends on the candidate, so selections vary
        e = Scripted()
        e.token_logprobs = lambda pairs, what="": [[-(sum(c) % 13) / 3.0] for _, c in pairs]
        return e

    def engines(die_at=None):
        gen = Scripted(sampler)
        if die_at is not None:
            orig = gen.generate

            def generate(requests, what=""):
                if what.startswith(f"ensemble step {die_at} "):
                    raise KeyboardInterrupt("killed")
                return orig(requests, what)
            gen.generate = generate
        return {"toy_qwq": gen, "toy_dapo": Scripted(sampler), "toy_opent": evaluator()}

    s = spec(max_steps=6, scoring="paper")
    whole = run(study, "toyarith", s, ITEMS, engines())
    log_dir = tmp_path / "ens.steps.log"
    with pytest.raises(KeyboardInterrupt):
        run(study, "toyarith", s, ITEMS, engines(die_at=3), step_log=log_dir)
    assert sorted(p.name for p in log_dir.glob("step-*.json")) == ["step-00000.json", "step-00001.json",
                                                                   "step-00002.json"]
    again = engines()
    with caplog.at_level(logging.INFO, logger="cotransfer.ensemble"):
        resumed = run(study, "toyarith", s, ITEMS, again, step_log=log_dir)
    assert "resumed after step 2" in caplog.text
    assert again["toy_qwq"].generated == 2 * 2 * 3  # steps 3, 4, 5 only: 2 items x 2 candidates
    assert resumed[0].equals(whole[0])
    assert resumed[1].drop("wall_s").equals(whole[1].drop("wall_s"))
    # another configuration: the log is discarded, not replayed into the wrong run
    other = engines()
    with caplog.at_level(logging.INFO, logger="cotransfer.ensemble"):
        run(study, "toyarith", spec(max_steps=6, scoring="paper", chunk_tokens=9), ITEMS, other, step_log=log_dir)
    assert other["toy_qwq"].generated == 2 * 2 * 6 and "another configuration" in caplog.text
