import pytest

from cotransfer.sentences import split
from cotransfer.strip import filter_prompt, parse_filter_output, states_answer, strip_rule, strip_with_drops

COT = ("Start with 3. Add 4 to get 7. Multiply by 2 to get 14, which is 4 mod 10. "
       "So the answer is 4. Double-check: 14 mod 10 = 4.")


def test_rule_drops_answer_sentences_keeps_reasoning():
    r = strip_rule(COT, "4")
    assert r.text == "Start with 3."
    # "Add 4" states 4 as a token too: the rule is conservative (it drops any sentence stating it)
    assert r.dropped == (1, 2, 3, 4) and r.status == "ok"
    assert r.answer_still_present is False


def test_rule_with_other_answer_keeps_more():
    r = strip_rule(COT, "14")
    assert r.text == "Start with 3. Add 4 to get 7."
    assert 0 < r.char_ratio < 1 and r.n_in == 5 and r.n_out == 2


@pytest.mark.parametrize("sentence, answer, hit", [
    ("the value is 2.", "2", True), ("it is 2.0 now", "2", True), ("it is 12", "2", False),
    ("it is 2.5", "2", False), ("x = -3", "-3", True), ("so 1.50 it is", "1.5", True),
    ("The instruction is to rhyme", "rhyme", True), ("rhymes are fun", "rhyme", False),
    ("anything", None, False),
])
def test_states_answer(sentence, answer, hit):
    assert states_answer(sentence, answer) is hit


def test_no_answer_drops_only_cues():
    r = strip_rule("We add 3 and 4. The final answer is 7.", None)
    assert r.text == "We add 3 and 4." and r.answer_still_present is None


def test_ordered_subset_and_ratio():
    cot = "A one.  B two!\n\nC three? D four."
    sents = split(cot)
    for drop in [set(), {0}, {1, 3}, {0, 1, 2, 3}]:
        r = strip_with_drops(cot, drop, joiner=" ")
        kept = [s.text for s in sents if s.index not in drop]
        assert r.text == " ".join(kept) and r.char_ratio <= 1
    assert strip_with_drops(cot, set()).status == "nothing_removed"
    assert strip_with_drops("", set()).status == "empty_input"


def test_filter_prompt_numbers_from_one():
    msgs = filter_prompt(split("First. Second."))
    assert msgs[0]["role"] == "system" and "1. First.\n2. Second." in msgs[1]["content"]


@pytest.mark.parametrize("text, n, expected", [
    ("[2]", 3, ({1}, "ok")),
    ("Sure. The answer sentences are [1, 3].", 3, ({0, 2}, "ok")),
    ("[]", 3, (set(), "ok")),
    ("first [1] then corrected [2, 3]", 3, ({1, 2}, "ok")),
    ("[4]", 3, (set(), "bad_filter_output")),
    ("[0]", 3, (set(), "bad_filter_output")),
    ("\x00\xff junk \ufffd", 3, (set(), "bad_filter_output")),
    ("__import__('os').system('echo pwned')", 3, (set(), "bad_filter_output")),
    ("", 3, (set(), "bad_filter_output")),
    (None, 3, (set(), "bad_filter_output")),
])
def test_parse_filter_output(text, n, expected):
    assert parse_filter_output(text, n) == expected
