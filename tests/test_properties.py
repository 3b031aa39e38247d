"""Property tests (hypothesis) of the guarantees answer removal rests on (method.md sections 5
and 6): the splitter's spans reproduce any text exactly, code is never split, and a stripped CoT
is an ordered subset of the original sentences, byte for byte, whatever the filter replies."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cotransfer.sentences import split
from cotransfer.strip import parse_filter_output, strip_with_drops

# texts rich in what the splitter reacts to: terminators, newlines, brackets, quotes, math, code
ALPHABET = st.sampled_from(list("aAbBzZ019 .!?\n\t,;:()[]{}\"'`$\\-*#>") + ["e.g.", "1.73", "Dr.", "```", "\u2026"])
TEXTS = st.lists(ALPHABET, max_size=200).map("".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(TEXTS)
def test_spans_reproduce_any_text(text):
    sents = split(text)
    pos = 0
    for i, s in enumerate(sents):
        assert s.index == i and text[s.start:s.end] == s.text and s.text == s.text.strip() and s.text
        assert pos <= s.start and text[pos:s.start].strip() == ""  # only whitespace between spans
        pos = s.end
    assert text[pos:].strip() == ""


CODE = st.lists(st.sampled_from(list("aB1 .!?;:=()") + ["x. Y", "1. 2", "Then."]), min_size=1, max_size=30) \
    .map("".join).filter(lambda c: c.strip() == c and c)


@SETTINGS
@given(TEXTS.filter(lambda t: "`" not in t), CODE, TEXTS.filter(lambda t: "`" not in t), st.booleans())
def test_inline_code_and_fenced_blocks_are_never_split(before, code, after, fenced):
    span = f"```\n{code}\n\n{code}\n```" if fenced else f"`{code}`"
    text = f"{before} {span} {after}"
    a = len(before) + 1
    b = a + len(span)
    for s in split(text):
        assert s.end <= a or s.start >= b or (s.start <= a and s.end >= b), (text, s)


REPLIES = st.one_of(
    st.none(), st.text(max_size=80),
    st.lists(st.integers(-5, 40), max_size=12).map(str),  # a list, maybe out of range
    st.lists(st.integers(1, 12), max_size=12).map(lambda xs: f"<think>[1, 2]</think> Drop {xs}, then {sorted(xs)}"),
)


@SETTINGS
@given(TEXTS, REPLIES, st.sampled_from([" ", "\n"]))
def test_the_stripped_cot_is_an_ordered_subset_of_the_original_sentences(cot, reply, joiner):
    sents = split(cot)
    drop, status = parse_filter_output(reply, len(sents))
    assert status in ("ok", "bad_filter_output") and all(0 <= i < len(sents) for i in drop)
    res = strip_with_drops(cot, drop, joiner, status=status, sentences=sents)
    kept = [cot[s.start:s.end] for s in sents if s.index not in drop]
    assert res.text == joiner.join(kept)  # byte-identical sentences, in source order, nothing added
    assert len(res.text) <= len(cot) + len(joiner) * len(kept)
