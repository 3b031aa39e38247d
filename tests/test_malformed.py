"""Malformed model output is recorded with its finish reason and flagged, never a crash."""

import pytest

from cotransfer.config import GREEDY, Study, validate
from cotransfer.engine import Completion
from cotransfer.inference import Job, free_run, prefilled_run
from cotransfer.scoring import score_generations
from test_formats import Tok

ITEM = {"item_id": "t0", "system": None, "user": "Start with 3. Add 4."}


class Scripted:
    """Phase-1 completion given per test; the answer phase answers by what it was given."""

    tokenizer = Tok()

    def __init__(self, phase1: Completion, phase2: Completion | None = None):
        self.phase1, self.phase2, self.calls = phase1, phase2, []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, requests, what=""):
        self.calls.append((what, [r.prompt for r in requests]))
        if "thinking" in what:
            return [self.phase1 for _ in requests]
        return [self.phase2 or Completion("The answer is 7.", 5, "stop") for _ in requests]


@pytest.fixture
def study(demo_config):
    return Study.from_dict(validate(demo_config))


def run(study, engine):
    return free_run(Job(study, "toyarith", "toy_dapo", engine), [ITEM], "default", GREEDY, 1).row(0, named=True)


def test_no_closing_tag_is_closed_by_us_and_flagged(study):
    engine = Scripted(Completion("I think it is seven", 48, "length"))
    row = run(study, engine)
    assert row["closed"] is False and row["flag"] == "no_close" and row["budget_exhausted"] is True
    assert row["thinking"] == "I think it is seven" and row["answer_text"] == "The answer is 7."
    # the answer phase got the thinking closed with the family's own closer
    assert engine.calls[1][1][0].endswith("<think>I think it is seven</think>")


def test_eos_without_closing_tag(study):
    row = run(study, Scripted(Completion("short thought", 3, "stop")))
    assert row["flag"] == "no_close" and row["budget_exhausted"] is False and row["finish_reason"] == "stop"


def test_empty_completion(study):
    row = run(study, Scripted(Completion("", 0, "stop"), Completion("", 0, "stop")))
    assert row["thinking"] == "" and row["answer_text"] == "" and row["flag"] == "no_close"


def test_closed_but_empty_answer(study):
    row = run(study, Scripted(Completion("done</think>", 2, "stop")))
    assert row["closed"] is True and row["flag"] == "empty_answer" and row["answer_text"] == ""


def test_answer_cut_at_the_cap_is_continued_then_flagged(study):
    engine = Scripted(Completion("ok</think>The ans", 48, "length"), Completion("wer is", 12, "length"))
    row = run(study, engine)
    assert engine.calls[1][1][0].endswith("<think>ok</think>The ans")  # continued, not re-closed
    assert row["flag"] == "answer_cut" and row["finish_reason"] == "length"


def test_junk_bytes_are_kept_and_scored_invalid(study, demo_config):
    junk = "\ufffd\ufffd\x00\x07</think>\ufffd<|im_end|>\x00"
    df = free_run(Job(study, "toyarith", "toy_dapo", Scripted(Completion(junk, 9, "stop"))), [ITEM],
                  "default", GREEDY, 1)
    row = df.row(0, named=True)
    assert row["closed"] is True and "\ufffd" in row["thinking"]
    import polars as pl

    items = pl.DataFrame({"item_id": ["t0"], "system": [None], "user": ["q"], "gold": ["7"], "meta": ["{}"]},
                         schema_overrides={"system": pl.String})
    scored = score_generations(study.datasets["toyarith"], items, df)
    assert scored["valid"].to_list() == [False] and scored["parse_status"].to_list() == ["no_number"]


def test_prompt_too_long_is_recorded(study):
    class TooLong(Scripted):
        def generate(self, requests, what=""):
            return [Completion("", 0, "error:prompt_too_long", 5000) for _ in requests]

    row = prefilled_run(Job(study, "toyarith", "toy_dapo", TooLong(None)), [ITEM], None, condition="empty",
                        variant=None, cot_source=None).row(0, named=True)
    assert row["flag"] == "prompt_too_long" and row["finish_reason"] == "error:prompt_too_long"


def test_dataset_decoding_overrides(demo_config):
    """II-style: stop at the close marker, discard the rest, answer anew after a lead-in;
    MedCalc-style: the thinking budget grows with the prompt."""
    demo_config["datasets"]["toyarith"]["decoding"] = {
        "thinking_budget": 100, "thinking_budget_mode": "prompt_plus", "answer_max_tokens": 30,
        "answer_lead_in": " The instruction is:", "discard_after_close": True}
    study = Study.from_dict(validate(demo_config))
    engine = Scripted(Completion("reverse the words", 3, "stop", stop_reason="</think>"),
                      Completion(" reverse the words", 4, "stop"))
    row = run(study, engine)
    prompt_tokens = engine.count_tokens(row["prompt"])
    assert row["closed"] is True and row["thinking"] == "reverse the words" and row["flag"] is None
    assert engine.calls[1][1][0].endswith("<think>reverse the words</think> The instruction is:")
    assert row["answer_text"] == "reverse the words"
    dec = study.decoding_for("toyarith")
    assert dec.thinking_max_tokens(prompt_tokens) == prompt_tokens + 100
    assert dec.answer_max_tokens == 30 and study.decoding.answer_max_tokens == 12  # others unchanged
    empty = prefilled_run(Job(study, "toyarith", "toy_dapo", engine), [ITEM], None, condition="empty",
                          variant=None, cot_source=None).row(0, named=True)
    assert empty["prompt"].endswith("<think></think> The instruction is:")


def test_answer_records_count_phase_one_and_keep_the_text_as_written(study):
    """Issue 13's record defects: an answer that came in phase 1 has its tokens counted; a budget
    that ran out after the close marker is exhausted; a continued answer is phase 1's text and
    phase 2's joined as written (the phase-1 part was stripped before, gluing words together)."""
    row = run(study, Scripted(Completion("ok</think>The answer is 7.", 9, "stop")))
    assert row["answer_tokens"] == 4 and row["budget_exhausted"] is False  # "The answer is 7." (Scripted: words)
    engine = Scripted(Completion("ok</think>The answer ", 48, "length"), Completion("is 7.", 3, "stop"))
    row = run(study, engine)
    assert row["answer_text"] == "The answer is 7."  # not "The answeris 7."
    assert row["budget_exhausted"] is True and row["answer_tokens"] == 2 + 3


def test_a_prompt_over_the_datasets_input_limit_fails_loudly_before_any_generation(study, demo_config):
    """method.md section 3 (II): the input must fit in 4096 tokens, failing loudly rather than
    truncating: `decoding.max_input_tokens` of a dataset, checked before any request."""
    demo_config["datasets"]["toyarith"]["decoding"] = {"max_input_tokens": 5}
    strict = Study.from_dict(validate(demo_config))
    engine = Scripted(Completion("4+3=7.</think>The answer is 7.", 9, "stop"))
    with pytest.raises(ValueError, match=r"1 of 1 prompts for toy_dapo exceed max_input_tokens 5 \(item, tokens: \[\('t0'"):
        free_run(Job(strict, "toyarith", "toy_dapo", engine), [ITEM], "default", GREEDY, 1)
    with pytest.raises(ValueError, match="max_input_tokens 5"):
        prefilled_run(Job(strict, "toyarith", "toy_dapo", engine), [ITEM], None, condition="empty",
                      variant=None, cot_source=None)
    assert engine.calls == []  # nothing was generated
    assert run(study, engine)["answer_text"] == "The answer is 7."  # no limit: unchanged
