"""Answer removal (method.md section 5): the rule method, the ordered-subset guarantee, and the
pure parts of the filter model's index mode."""

import random
from pathlib import Path

import polars as pl
import pytest

from cotransfer.sentences import Sentence, split
from cotransfer.strip import (
    STRIP_VERSION,
    StripResult,
    answer_matcher,
    filter_prompt,
    filter_reply,
    filter_reply_budget,
    has_answer_cue,
    parse_filter_output,
    rebuild,
    render_filter_prompt,
    stated_answer,
    states_answer,
    strip_rule,
    strip_with_drops,
)

MEDCALC_COT = (
    "The patient is 67 years old, so age contributes 1 point. "
    "Hypertension is present.\n"
    "- Diabetes: absent\n"
    "- Prior stroke: present, 2 points\n\n"
    "Adding up: 1 + 2 = 3. "
    "Therefore, the CHA2DS2-VASc score is 3. "
    "The answer is 3."
)


def is_ordered_subset(result: StripResult, cot: str) -> bool:
    sents = split(cot)
    return result.text == " ".join(sents[i].text for i in result.kept) and list(result.kept) == sorted(result.kept)


# -- rule method --------------------------------------------------------------------------------


def test_rule_drops_answer_sentences_keeps_reasoning():
    r = strip_rule(MEDCALC_COT, "3")
    assert r.text == ("The patient is 67 years old, so age contributes 1 point. Hypertension is present. "
                      "- Diabetes: absent - Prior stroke: present, 2 points")
    assert r.dropped == (4, 5, 6) and r.kept == (0, 1, 2, 3)
    assert r.status == "ok" and r.n_in == 7 and r.n_out == 4
    assert r.answer_still_present is False
    assert 0 < r.char_ratio < 1 and r.char_ratio == len(r.text) / len(MEDCALC_COT)
    assert is_ordered_subset(r, MEDCALC_COT)


def test_rule_is_conservative_about_intermediate_numbers():
    cot = "Start with 3. Add 4 to get 7. Multiply by 2 to get 14. So the answer is 14. Double-check: 7 x 2 = 14."
    r = strip_rule(cot, "14")
    assert r.text == "Start with 3. Add 4 to get 7."
    r = strip_rule(cot, "7")  # "Add 4 to get 7." states 7 too: the rule drops any sentence stating it
    assert r.text == "Start with 3. Multiply by 2 to get 14."  # the strong cue still goes


def test_rule_with_unparsed_answer_drops_only_strong_cues():
    cot = "We add 3 and 4. That gives 7. The final answer is 7."
    r = strip_rule(cot, None)
    assert r.text == "We add 3 and 4. That gives 7." and r.answer_still_present is None
    assert r.dropped == (2,)


def test_rule_nothing_to_remove():
    r = strip_rule("We add 3 and 4. Then we halve it.", "9")
    assert r.status == "nothing_removed" and r.dropped == () and r.answer_still_present is False
    assert r.text == "We add 3 and 4. Then we halve it." and r.char_ratio == 1.0


def test_rule_conclusion_cue_with_rounded_answer():
    cot = "Plug in the values. Therefore eGFR \u2248 72.35 mL/min. The sodium was 72.35 earlier? No."
    r = strip_rule(cot, "72.3456")
    # the conclusion is dropped (72.35 is the answer rounded); the cue-less mention is kept
    assert r.text == "Plug in the values. The sodium was 72.35 earlier? No."
    # an integer answer never matches a decimal by rounding
    assert strip_rule("Therefore the dose is 2.4 mg.", "2").status == "nothing_removed"


def test_rule_date_tuple_and_text_answers():
    cot = "Add 280 days to the LMP. The due date is 03/07/2024. Check the calendar."
    assert strip_rule(cot, "3/7/2024").text == "Add 280 days to the LMP. Check the calendar."
    cot = "Count from the LMP. That is 4 weeks and 3 days. Done."
    assert strip_rule(cot, "(4, 3)").text == "Count from the LMP. Done."
    cot = "The outputs rhyme with the inputs. So: rhymes with the input word! Let me verify."
    assert strip_rule(cot, "rhymes with the input word").text == "The outputs rhyme with the inputs. Let me verify."


def test_rule_on_empty_input():
    r = strip_rule("  \n ", "4")
    assert r.status == "empty_input" and r.text == "" and r.n_in == 0 and r.char_ratio == 0.0
    assert strip_rule("", None).status == "empty_input"


def test_rule_accepts_precomputed_sentences_and_checks_them():
    cot = "A one. B two."
    sents = split(cot)
    assert strip_rule(cot, None, sentences=sents) == strip_rule(cot, None)
    with pytest.raises(ValueError):
        strip_rule("C three. D four.", None, sentences=sents)  # another CoT's spans


@pytest.mark.parametrize("text, answer, hit", [
    ("the value is 2.", "2", True),
    ("it is 2.0 now", "2", True),
    ("it is +2 points", "2", True),
    ("it is 12", "2", False),
    ("it is 2.5", "2", False),
    ("it is 0.2", "2", False),
    ("the 2nd step", "2", False),
    ("CHA2DS2-VASc", "2", False),
    ("x2 or 2_a", "2", False),
    ("dose 5mg daily", "5", True),
    ("x = -3", "-3", True),
    ("5-3 = 2", "-3", False),
    ("so 1.50 it is", "1.5", True),
    ("about .5 of it", "0.5", True),
    ("it totals 1,234 mL", "1234", True),
    ("values 1,2,3", "2", True),
    ("score: 7/10", "7", True),
    ("1.2345e+06 is big: 1234500", "1.2345e+06", True),
    ("due 2024-03-07", "3/7/2024", True),
    ("due March 7, 2024", "3/7/2024", True),
    ("due 3/17/2024", "3/7/2024", False),
    ("(4, 3)", "(4, 3)", True),
    ("4 weeks, 3 days", "(4, 3)", True),
    ("14 weeks, 3 days", "(4, 3)", False),
    ("The instruction is to Rhyme.", "rhyme", True),
    ("rhymes are fun", "rhyme", False),
    ("Write the word, in reverse", "write the word in reverse", True),
    ("anything", None, False),
    ("anything", "", False),
    ("anything", "???", False),
])
def test_states_answer(text, answer, hit):
    assert states_answer(text, answer) is hit


def test_answer_matcher_none_for_nothing_to_match():
    assert answer_matcher(None) is None and answer_matcher("  ") is None and answer_matcher("--") is None


@pytest.mark.parametrize("sentence, cue", [
    ("So the answer is 4.", True),
    ("The answer would be 12 points.", True),
    ("Final answer: 4", True),
    ("**Final Answer**", True),
    ("So 4 is the final answer.", True),
    ('{"answer": "4"}', True),
    ("Answer: 4", True),
    ("Thus \\boxed{4}", True),
    ("So the instruction is to reverse the word.", True),
    ("Let me work out what the answer is.", False),
    ("First figure out what the instruction is.", False),
    ("Therefore we need the weight.", False),
    ("We add the points.", False),
])
def test_has_answer_cue(sentence, cue):
    assert has_answer_cue(sentence) is cue


# -- rebuilding and the ordered-subset guarantee -----------------------------------------------------


def test_strip_with_drops_is_an_ordered_subset():
    cot = "A one.  B two!\n\nC three? D four."
    sents = split(cot)
    assert [s.text for s in sents] == ["A one.", "B two!", "C three?", "D four."]
    for drop in [set(), {0}, {1, 3}, {3, 1}, {0, 1, 2, 3}]:
        r = strip_with_drops(cot, drop)
        assert r.text == " ".join(s.text for s in sents if s.index not in drop)
        assert r.kept == tuple(i for i in range(4) if i not in drop) and r.dropped == tuple(sorted(drop))
        assert r.char_ratio <= 1
    assert strip_with_drops(cot, set()).status == "nothing_removed"
    assert strip_with_drops(cot, {0, 1, 2, 3}).text == "" and strip_with_drops(cot, {0, 1, 2, 3}).char_ratio == 0.0
    assert strip_with_drops("", set()).status == "empty_input"


def test_strip_with_drops_ignores_out_of_range_and_keeps_status():
    cot = "A one. B two."
    r = strip_with_drops(cot, {-1, 5, 1})
    assert r.dropped == (1,) and r.text == "A one."
    r = strip_with_drops(cot, set(), status="bad_filter_output")
    assert r.status == "bad_filter_output" and r.text == cot
    r = strip_with_drops(cot, {1}, answer="two")
    assert r.answer_still_present is False
    assert strip_with_drops(cot, set(), answer="two").answer_still_present is True


def test_joiner():
    cot = "A one.\n\nB two. C three."
    assert strip_with_drops(cot, {1}, "\n").text == "A one.\nC three."
    for bad in ["", "  ", "\n\n", "|"]:
        with pytest.raises(ValueError):
            strip_with_drops(cot, {1}, bad)


def test_rebuild_reads_the_source_spans():
    cot = "A one. B two. C three."
    sents = split(cot)
    forged = [Sentence(s.index, s.start, s.end, "FORGED") for s in sents]
    assert rebuild(cot, forged, [2, 0]) == "A one. C three."
    assert rebuild(cot, sents, []) == ""


def test_random_drops_keep_the_guarantee():
    """Property: for random CoTs and drop sets the output is the kept sentences, in order,
    byte-identical, joined by one space, and never longer than the input."""
    frags = ["The value is 3.5.", " ", "\n", "\n\n", "So the answer is 4.", "- item", "1. Step.", "(a. b)",
             "Dr. No", "x = 4", "Why?", '{"answer": "4"}', "$x. Y$", "Next!", "\t"]
    rng = random.Random(1)
    for _ in range(500):
        cot = "".join(rng.choice(frags) for _ in range(rng.randrange(0, 30)))
        sents = split(cot)
        drop = {i for i in range(len(sents)) if rng.random() < 0.4}
        for r in (strip_with_drops(cot, drop), strip_rule(cot, rng.choice([None, "4", "3.5"]))):
            assert r.text == " ".join(cot[sents[i].start:sents[i].end] for i in r.kept)
            assert list(r.kept) == sorted(r.kept) and set(r.kept).isdisjoint(r.dropped)
            assert len(r.kept) + len(r.dropped) == r.n_in == len(sents)
            assert len(r.text) <= len(cot) and r.char_ratio <= 1


# -- filter model, index mode -------------------------------------------------------------------


def test_filter_prompt_numbers_from_one_and_defines_the_classes():
    msgs = filter_prompt(split("First.\nStill first? No. Second\nline here."))
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert "hint/explanation" in system and "answer sentence" in system
    assert "original order" in system and "added" in system
    assert "1. First.\n2. Still first?\n3. No.\n4. Second line here." in user  # internal newline shown as a space
    assert "JSON list" in user
    assert filter_prompt(["plain strings work"])[1]["content"].count("1. plain strings work") == 1


@pytest.mark.parametrize("text, n, expected", [
    ("[2]", 3, ({1}, "ok")),
    ("[1, 3]", 3, ({0, 2}, "ok")),
    ("Sure. The answer sentences are [1, 3].", 3, ({0, 2}, "ok")),
    ("```json\n[3]\n```", 3, ({2}, "ok")),
    ("[]", 3, (set(), "ok")),
    ("[ ]", 3, (set(), "ok")),
    ("[2, 2]", 3, ({1}, "ok")),
    ("first [1] then corrected [2, 3]", 3, ({1, 2}, "ok")),  # the last list wins
    ("[2] see [note]", 3, ({1}, "ok")),  # a non-integer list is not a candidate
    ("<think>maybe [1]</think>\n[3]", 3, ({2}, "ok")),
    ("<think>maybe [1]</think>\nno idea", 3, (set(), "bad_filter_output")),
    ("[4]", 3, (set(), "bad_filter_output")),  # out of range (numbers are 1..n)
    ("[0]", 3, (set(), "bad_filter_output")),
    ("[-1]", 3, (set(), "bad_filter_output")),
    ("[1, 99999999999999999999999]", 3, (set(), "bad_filter_output")),
    ("[1, 2.5]", 3, (set(), "bad_filter_output")),
    ("[1, 2", 3, (set(), "bad_filter_output")),
    ("3, 7", 9, (set(), "bad_filter_output")),
    ("[1]", 0, (set(), "bad_filter_output")),
    ("\x00\xff junk \ufffd\udcff", 3, (set(), "bad_filter_output")),
    ("__import__('os').system('echo pwned')", 3, (set(), "bad_filter_output")),
    ("[__import__('os').system('echo pwned')]", 3, (set(), "bad_filter_output")),
    ("", 3, (set(), "bad_filter_output")),
    (None, 3, (set(), "bad_filter_output")),
    (b"[1]", 3, (set(), "bad_filter_output")),
])
def test_parse_filter_output(text, n, expected):
    assert parse_filter_output(text, n) == expected


def test_parse_filter_output_never_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = "__import__('pathlib').Path('pwned').write_text('x')"
    for text in (payload, f"[{payload}]", f"[1] {payload}"):
        parse_filter_output(text, 3)
    assert not (tmp_path / "pwned").exists()


def test_filter_round_trip():
    cot = "Age 67 gives 1 point. Stroke gives 2 points. Total is 3. So the answer is 3."
    sents = split(cot)
    drop, status = parse_filter_output("Answer sentences: [3, 4]", len(sents))
    r = strip_with_drops(cot, drop, answer="3", status=status, sentences=sents)
    assert r.text == "Age 67 gives 1 point. Stroke gives 2 points." and r.status == "ok"
    assert r.answer_still_present is False
    drop, status = parse_filter_output("[4]", len(sents))
    r = strip_with_drops(cot, drop, answer="3", status=status, sentences=sents)
    assert r.answer_still_present is True  # the QC flag catches what the filter missed


def test_filter_reply_is_what_the_parser_reads():
    assert filter_reply({2, 1}) == "[2, 3]" and filter_reply([]) == "[]"
    assert parse_filter_output(filter_reply({0, 4}), 5) == ({0, 4}, "ok")


def test_render_filter_prompt_closes_thinking_after_the_template():
    from cotransfer.engine import load_tokenizer

    models = Path(__file__).resolve().parents[1] / "data/models"
    sents = split("6-1=5. 5-9=6. 6-7=9.")
    # the filter's template does not open the thinking section; toy_qwq's does (opened once)
    for name, tail in (("toy_filter", "<think></think>"), ("toy_qwq", "</think>")):
        tok = load_tokenizer(models / name)
        text = render_filter_prompt(tok, "plain", sents)
        rendered = tok.apply_chat_template(filter_prompt(sents), tokenize=False, add_generation_prompt=True)
        assert text.startswith(rendered) and text[len(rendered):] == tail
        assert "1. 6-1=5.\n2. 5-9=6.\n3. 6-7=9." in text and text.count("<think>") == 1


def test_filter_reply_budget_grows_with_the_sentence_count():
    """The whole list "[1, 2, ..., n]" plus EOS always fits, in a tokenizer that writes every
    digit as its own token (Qwen's, and the toy models'); the old fixed cap was 256 tokens."""
    from cotransfer.engine import load_tokenizer

    tok = load_tokenizer(Path(__file__).resolve().parents[1] / "data/models/toy_qwq")
    budgets = [filter_reply_budget(n) for n in (0, 1, 2, 9, 10, 99, 100, 400, 1000)]
    assert budgets == sorted(budgets) and len(set(budgets)) == len(budgets)
    for n in (1, 3, 10, 57, 120, 400):
        every = filter_reply(range(n))
        assert len(tok.encode(every + tok.eos_token, add_special_tokens=False)) < filter_reply_budget(n)
    assert filter_reply_budget(400) > 256


def test_filter_stage_sends_the_rendered_prompt_with_a_growing_budget(demo_config):
    """`stages._filter_model_drops`: one request per CoT, the prompt `render_filter_prompt`
    makes, the budget `filter_reply_budget` gives for its sentence count; replies parsed."""
    from cotransfer import stages
    from cotransfer.config import Study, validate
    from cotransfer.engine import Completion, load_tokenizer

    root = Path(__file__).resolve().parents[1]

    class Recorder:  # an engine that answers the last sentence's number
        tokenizer = load_tokenizer(root / "data/models/toy_filter")

        def __init__(self, replies):
            self.requests, self.replies = [], iter(replies)

        def generate(self, reqs, what=""):
            self.requests += reqs
            return [Completion(next(self.replies), 3, "stop") for _ in reqs]

    study = Study.from_dict(validate(demo_config))
    assert study.strip_method == "llm" and study.model(study.strip_model).family == "plain"
    cots = ["6-1=5.", "6-1=5. 5-9=6. 6-7=9.", " ".join(f"{i}+1={i + 1}." for i in range(40))]
    lists = [split(c) for c in cots] + [[]]
    engine = Recorder(["[1]", "[3]", "[40]", "[1]"])
    drops = stages._filter_model_drops(study, engine, lists)
    assert [r.max_tokens for r in engine.requests] == [filter_reply_budget(len(ss)) for ss in lists]
    assert engine.requests[2].max_tokens > filter_reply_budget(3)
    assert all(r.prompt == render_filter_prompt(engine.tokenizer, "plain", ss) for r, ss in zip(engine.requests, lists))
    assert drops[:3] == [({0}, "ok", None), ({2}, "ok", None), ({39}, "ok", None)]
    assert drops[3] == (set(), "empty_input", None)


def test_version_is_a_string():
    assert isinstance(STRIP_VERSION, str) and STRIP_VERSION


def test_stated_answer_is_the_last_standalone_number():
    assert stated_answer("4+2=6. 6*5=0. 0*3=0.") == "0"
    assert stated_answer("6 - 1 -> 5; 5 - 9 -> 4 ; 4 - 7 -> 7;") == "7"
    assert stated_answer("eGFR is about 72.35 mL/min.") == "72.35"
    assert stated_answer("no numbers here") is None and stated_answer(None) is None


def test_rule_strips_an_ensemble_thought_by_the_answer_it_states(tmp_path, demo_config):
    """An ensemble's thought has no answer phase: the rule method removes what the thought itself
    concludes (numeric datasets), so its stripped variant differs from the full one."""
    from cotransfer import plan, stages
    from cotransfer.config import Study, validate

    demo_config["study"]["results"] = str(tmp_path / "results")
    demo_config["strip"] = {"method": "rule"}  # the demo itself uses its filter model
    study = Study.from_dict(validate(demo_config))
    R, d = study.results, "toyarith"
    (ens,) = study.ensembles
    table = plan.CotTable(ens, "ensemble")
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": ["t0", "t1"], "system": [None, None], "user": ["q0", "q1"], "gold": ["0", "5"],
                  "meta": ["{}", "{}"]}).write_parquet(items)
    Path(table.cots(R, d)).parent.mkdir(parents=True)
    pl.DataFrame({"dataset": [d, d], "item_id": ["t0", "t1"], "sample": [0, 0], "cot_source": [ens, ens],
                  "cot": ["4+2=6. 6*5=0. 0*3=0.", "6 - 1 -> 5. 5 - 9 -> 4. 4 - 7 -> 7."],
                  "stop_reason": ["ends_thought"] * 2, "n_steps": [3, 3]}).write_parquet(table.cots(R, d))
    stages.split(study, d, "ensembles", [table.sentences(R, d)], {})
    stages.strip(study, d, "ensembles", str(items), [table.stripped(R, d)], {})
    out = pl.read_parquet(table.stripped(R, d))
    assert out["cot"].to_list() == ["4+2=6.", "6 - 1 -> 5. 5 - 9 -> 4."]
    assert out["answer_still_present"].to_list() == [False, False]



def test_ends_on_answer_is_the_sentence_arriving_at_it():
    from cotransfer.strip import ends_on_answer

    assert ends_on_answer("6-7=9.", "9") and ends_on_answer("So it is 9.0 mg.", "9")
    assert not ends_on_answer("5-9=6.", "9")  # 9 is an operand: the rule's token match would flag it
    assert not ends_on_answer("No numbers here.", "9") and not ends_on_answer("6-7=9.", None)
    assert ends_on_answer("The instruction is to rhyme.", "to rhyme")  # non-numeric: stated anywhere
