"""Answer removal (method.md section 5).

The stripped CoT is always an *ordered subset of the original sentences*, each byte-identical
to its span in the source, joined by a one-character whitespace joiner. No model-written text
can enter it, and it is never longer than its source (`char_ratio <= 1`, asserted): every two
sentences of the source are separated by at least one whitespace character (see
`cotransfer.sentences`), which the joiner at most replaces.

Two ways to choose the sentences to drop:

- `strip_rule`: a deterministic CPU rule (the demo's default; the exact rule is in its
  docstring).
- the filter model, index mode: `filter_prompt` builds the chat messages
  (`render_filter_prompt`: the whole prompt string, thinking closed), the caller runs the model
  with `filter_reply_budget` new tokens, `parse_filter_output` reads the reply (new text only)
  and `strip_with_drops` applies it. Sentences are shown numbered from 1, because models number that way; the parsed drop set
  is 0-based, like sentence indices everywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Callable, Iterable, Sequence

from cotransfer.sentences import Sentence, split

STRIP_VERSION = "1"


@dataclass(frozen=True, slots=True)
class StripResult:
    """One stripped CoT and the QC numbers section 5 asks to log."""

    text: str
    kept: tuple[int, ...]  # 0-based sentence indices, in order
    dropped: tuple[int, ...]
    n_in: int  # sentences in
    n_out: int  # sentences out
    char_ratio: float  # len(text) / len(source); 0.0 for an empty source
    status: str  # ok | nothing_removed | empty_input | bad_filter_output
    answer_still_present: bool | None  # None when there is no answer to look for


# -- matching the answer ------------------------------------------------------------------------

# A number written as a standalone token: not glued to a preceding letter, digit, "_" or "." ("x2",
# "12", "v.2"), not followed by more digits or a decimal part (so "2" is not read out of "2.5"), and
# not an ordinal ("2nd"). Letters right after are allowed, since they are usually units ("5mg").
# A sign is part of the token only where it cannot be a binary minus ("x = -3", not "5-3").
_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?!\d|\.\d|_|(?:st|nd|rd|th)\b)")
_NUMERIC_ANSWER = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_DATE_ANSWER = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_TUPLE_ANSWER = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_MONTHS = ("jan feb mar apr may jun jul aug sep oct nov dec").split()
_DATE_MDY = re.compile(r"(?<!\d)(\d{1,2})[/-](\d{1,2})[/-](\d{4})(?!\d)")
_DATE_ISO = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_DATE_WORDS = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})(?!\d)",
    re.I)

# Strong cues: the sentence announces the final answer whatever the answer is. These alone are
# used when the source's answer did not parse.
_STRONG_CUE = re.compile(
    r"\banswer\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be)(?=\s*[\w\"\u201c'$\\(:*-])"
    r"|\bfinal\s+answer\s*(?:is\b|:|=|\*\*|[.!]?\s*$)"
    r"|\banswer\b[\"\u201d'*]*\s*[:=]"
    r"|\\boxed\s*\{"
    r"|\bthe\s+instruction\s+(?:is|was|would\s+be|must\s+be|should\s+be)\s*(?::|to\b|that\b|[\"\u201c'])",
    re.I)
# Conclusion cues: a sentence that concludes ("therefore", "so the result is", "= x") and gives a
# number that is the answer up to rounding states the answer even when the digits differ.
_CONCLUSION_CUE = re.compile(
    r"\b(?:therefore|thus|hence|so|overall|finally|in\s+total|total|result|approximately|about"
    r"|roughly|around|rounded|rounding|gives|giving|yields|comes\s+to)\b|[=\u2248~]|\\approx",
    re.I)


def _to_float(token: str) -> float | None:
    try:
        x = float(token.replace(",", "").replace("\u2212", "-"))
    except ValueError:
        return None
    return x if x == x and abs(x) != float("inf") else None


def _decimals(token: str) -> int:
    """Digits after the decimal point as written ("72.35" -> 2, "4" -> 0)."""
    head = token.lower().split("e")[0]
    return len(head.split(".", 1)[1]) if "." in head else 0


def _rounds_equal(token: str, answer: str) -> bool:
    """Equal after rounding both to the shorter one's decimals, when that is at least one decimal:
    "72.35" ~ "72.3456", "1.5" ~ "1.47"; an integer never matches a decimal ("2" vs "2.4")."""
    d = min(_decimals(token), _decimals(answer))
    if d < 1 or _decimals(token) == _decimals(answer):
        return False
    try:
        q = Decimal(1).scaleb(-d)
        a = Decimal(token.replace(",", "").replace("\u2212", "-")).quantize(q, ROUND_HALF_UP)
        b = Decimal(answer.replace(",", "").replace("\u2212", "-")).quantize(q, ROUND_HALF_UP)
    except InvalidOperation:
        return False
    return a == b


def _date_matcher(m: int, d: int, y: int) -> Callable[[str], bool]:
    def matches(s: str) -> bool:
        for g in _DATE_MDY.finditer(s):
            if (int(g[1]), int(g[2]), int(g[3])) == (m, d, y):
                return True
        for g in _DATE_ISO.finditer(s):
            if (int(g[2]), int(g[3]), int(g[1])) == (m, d, y):
                return True
        for g in _DATE_WORDS.finditer(s):
            if (_MONTHS.index(g[1].lower()) + 1, int(g[2]), int(g[3])) == (m, d, y):
                return True
        return False
    return matches


def _tuple_matcher(w: int, d: int) -> Callable[[str], bool]:
    wp, dp = rf"0*{w}", rf"0*{d}"
    pattern = re.compile(
        rf"\(\s*{wp}\s*,\s*{dp}\s*\)"
        rf"|(?<![\w.]){wp}\s*(?:weeks?|wks?|w)\b[\s,]*(?:and\s+)?{dp}\s*(?:days?|d)\b", re.I)
    return lambda s: pattern.search(s) is not None


def _text_matcher(answer: str) -> Callable[[str], bool] | None:
    words = re.findall(r"[^\W_]+", answer)
    if not words:
        return None
    pattern = re.compile(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, words)) + r"(?![^\W_])", re.I)
    return lambda s: pattern.search(s) is not None


def answer_matcher(answer: str | None) -> Callable[[str], bool] | None:
    """A predicate "this text states `answer` as a standalone token", or None if there is nothing
    to look for (no answer, or an answer without a letter or digit).

    - numbers compare by value: "2" matches "2", "2.0", "+2" and "is 2.", never "12", "2.5",
      "x2" or "2nd"; "1234" matches "1,234";
    - dates (M/D/YYYY, MedCalc's normal form) match any M/D/YYYY, ISO or "Month D, YYYY"
      spelling of the same day, zero padding ignored;
    - (weeks, days) tuples match "(4, 3)" and "4 weeks and 3 days";
    - anything else matches case-insensitively on word boundaries, its words separated by any
      run of non-word characters (Instruction Induction answers are normalized without
      punctuation).
    """
    if answer is None:
        return None
    a = answer.strip()
    if _NUMERIC_ANSWER.fullmatch(a):
        value = _to_float(a)
        if value is not None:
            return lambda s: any(_to_float(t) == value for t in _NUMBER.findall(s))
    if m := _DATE_ANSWER.fullmatch(a):
        return _date_matcher(int(m[1]), int(m[2]), int(m[3]))
    if m := _TUPLE_ANSWER.fullmatch(a):
        return _tuple_matcher(int(m[1]), int(m[2]))
    return _text_matcher(a)


def states_answer(text: str, answer: str | None) -> bool:
    """Whether `text` contains `answer` as a standalone token (see `answer_matcher`)."""
    matcher = answer_matcher(answer)
    return matcher is not None and matcher(text)


def ends_on_answer(sentence: str, answer: str | None) -> bool:
    """Whether the sentence arrives at `answer`: for a numeric answer, its last number has the
    answer's value ("6-7=9." and "so it is 9 mg" for 9, not the step "5-9=6."); for any other
    answer, it states it (`states_answer`)."""
    if answer is None:
        return False
    a = answer.strip()
    value = _to_float(a) if _NUMERIC_ANSWER.fullmatch(a) else None
    if value is None:
        return states_answer(sentence, answer)
    numbers = _NUMBER.findall(sentence)
    return bool(numbers) and _to_float(numbers[-1]) == value


def has_answer_cue(sentence: str) -> bool:
    """Whether the sentence announces the final answer ("the answer is", "final answer:",
    "Answer: ...", `"answer": ...`, `\\boxed{...}`, "the instruction is to ...")."""
    return _STRONG_CUE.search(sentence) is not None


def concludes_with_answer(sentence: str, answer: str | None) -> bool:
    """A conclusion cue plus a number equal to the numeric `answer` up to rounding."""
    if answer is None or not _NUMERIC_ANSWER.fullmatch(answer.strip()):
        return False
    if not _CONCLUSION_CUE.search(sentence):
        return False
    return any(_rounds_equal(t, answer.strip()) for t in _NUMBER.findall(sentence))


# -- rebuilding -----------------------------------------------------------------------------------


def _check_joiner(joiner: str) -> None:
    # A longer joiner could make the output longer than the source, which breaks the section 5
    # guarantee (and the QC that relies on it); a non-space one would glue or alter sentences.
    if len(joiner) != 1 or not joiner.isspace():
        raise ValueError(f"strip joiner must be one whitespace character, got {joiner!r}")


def check_spans(cot: str, sentences: Sequence[Sentence]) -> None:
    """The sentences must be this CoT's: in order, inside it, apart, and matching its text."""
    prev_end = -1
    for pos, s in enumerate(sentences):
        if s.index != pos or not (prev_end < s.start < s.end <= len(cot)) or cot[s.start:s.end] != s.text:
            raise ValueError(f"sentence {pos} does not belong to this CoT (span {s.start}:{s.end})")
        prev_end = s.end


def rebuild(cot: str, sentences: Sequence[Sentence], keep_indices: Iterable[int], joiner: str = " ") -> str:
    """The kept sentences' original spans, in source order, joined by `joiner`.

    Reads the text from `cot` by span (not from `Sentence.text`), so what comes out is
    byte-identical to the source whatever the caller did to the sentence objects.
    """
    _check_joiner(joiner)
    return joiner.join(cot[sentences[i].start:sentences[i].end]
                       for i in sorted(set(keep_indices)) if 0 <= i < len(sentences))


def strip_with_drops(cot: str, drop: Iterable[int], joiner: str = " ", answer: str | None = None,
                     status: str = "ok", *, sentences: Sequence[Sentence] | None = None) -> StripResult:
    """Drop the sentences whose 0-based indices are in `drop` and rebuild the rest.

    `sentences` defaults to `split(cot)`; pass the split stage's spans to reuse them (they are
    checked against `cot`). Indices outside the sentence list are ignored. `status` is kept
    unless it is "ok" and nothing was dropped ("nothing_removed"); an empty or whitespace-only
    CoT gives "empty_input". `answer_still_present` checks the stripped text for `answer` with
    the same token rule as `strip_rule`.
    """
    _check_joiner(joiner)
    sents = split(cot) if sentences is None else list(sentences)
    check_spans(cot, sents)
    matcher = answer_matcher(answer)
    if not sents:
        return StripResult("", (), (), 0, 0, 0.0, "empty_input", False if matcher else None)
    drop_set = {i for i in drop if 0 <= i < len(sents)}
    kept = tuple(i for i in range(len(sents)) if i not in drop_set)
    dropped = tuple(sorted(drop_set))
    text = rebuild(cot, sents, kept, joiner)
    ratio = len(text) / len(cot)
    assert ratio <= 1.0, "a stripped CoT can never be longer than its source"
    if status == "ok" and not dropped:
        status = "nothing_removed"
    present = matcher(text) if matcher else None
    return StripResult(text, kept, dropped, len(sents), len(kept), ratio, status, present)


def stated_answer(thought: str | None) -> str | None:
    """The answer a thought states on its own, for a numeric dataset: its last standalone number
    (None if it has none). The rule method's answer for a thought with no answer phase of its own
    (an ensemble's), where a model's CoT uses the answer the model gave after it."""
    found = _NUMBER.findall(thought or "")
    return found[-1] if found else None


def strip_rule(cot: str, answer: str | None, joiner: str = " ", *,
               sentences: Sequence[Sentence] | None = None) -> StripResult:
    """Rule-based answer removal: drop every sentence that states the final answer.

    A sentence is dropped when any of these holds:

    1. it contains `answer` as a standalone token (`answer_matcher`: numbers by value, so with
       answer "2" the sentences "so it is 2." and "x = 2.0" go, "it is 12" and "it is 2.5"
       stay; dates and (weeks, days) in any usual spelling; text case-insensitively on word
       boundaries);
    2. it has a strong answer cue: "the answer is/would be ...", "final answer:", "Answer:",
       `"answer": ...`, `\\boxed{`, "the instruction is to/that/: ...";
    3. it has a conclusion cue ("therefore", "thus", "hence", "so", "the result", "total",
       "approximately", "=", "\u2248", ...) and a number equal to a numeric answer up to rounding
       to the less precise of the two, at least one decimal ("Therefore eGFR \u2248 72.35" when
       the answer is 72.3456). An integer never matches a decimal this way.

    With `answer` None (the source's answer did not parse) only rule 2 applies. The rule is
    conservative: with a numeric answer it also drops intermediate steps that happen to write
    the same number ("Add 4" when the answer is 4), which the LLM filter can tell apart.
    """
    sents = split(cot) if sentences is None else list(sentences)
    matcher = answer_matcher(answer)
    drop = {i for i, s in enumerate(sents)
            if has_answer_cue(s.text) or (matcher is not None and matcher(s.text))
            or concludes_with_answer(s.text, answer)}
    return strip_with_drops(cot, drop, joiner, answer, sentences=sents)


# -- the filter model (index mode) ------------------------------------------------------------------

FILTER_SYSTEM = (
    "You remove answer statements from a step-by-step explanation, sentence by sentence.\n"
    "Each sentence is one of two kinds:\n"
    "- a hint/explanation sentence guides the reader toward solving the problem without giving "
    "the final result;\n"
    "- an answer sentence states the final answer, result, solution or conclusion.\n"
    "The hint sentences will be kept exactly as written and in their original order. Every "
    "answer statement must be dropped. Nothing may be added or rewritten."
)


def filter_prompt(sentences: Sequence[Sentence | str]) -> list[dict]:
    """Chat messages (system + user) asking which numbered sentences state the answer.

    Sentences are numbered from 1. Whitespace inside a sentence is shown collapsed to one space
    so that a sentence spanning lines cannot be misread as several; the output is rebuilt from
    the original spans, so this affects only what the model sees.
    """
    lines = []
    for i, s in enumerate(sentences, start=1):
        text = s.text if isinstance(s, Sentence) else str(s)
        lines.append(f"{i}. {' '.join(text.split())}")
    numbered = "\n".join(lines) if lines else "(no sentences)"
    user = (
        f"Here is the explanation, one numbered sentence per line:\n\n{numbered}\n\n"
        "Which sentences are answer sentences? Reply with only a JSON list of their numbers, "
        "for example [3, 7], or [] if there are none."
    )
    return [{"role": "system", "content": FILTER_SYSTEM}, {"role": "user", "content": user}]


def render_filter_prompt(tokenizer, family: str, sentences: Sequence[Sentence | str]) -> str:
    """The filter model's whole prompt as a string: `filter_prompt` through the model's chat
    template, then its thinking section opened and closed empty (thinking off), so the reply is
    the answer itself. What the strip stage sends and what `toymodels` trains the toy filter on."""
    from cotransfer.formats import get_format

    fmt = get_format(family)
    rendered = tokenizer.apply_chat_template(filter_prompt(sentences), tokenize=False, add_generation_prompt=True)
    return fmt.empty(fmt.open(rendered))


def filter_reply(drop: Iterable[int]) -> str:
    """The canonical reply to `filter_prompt` for a 0-based drop set: the JSON list of the
    1-based numbers, ascending ("[2, 3]", "[]"); `parse_filter_output` reads it back."""
    return "[" + ", ".join(str(i + 1) for i in sorted(set(drop))) + "]"


#: Reply budget of the filter model (index mode): room for a list of every sentence number plus
#: a margin for a model that writes a few words around it.
FILTER_REPLY_MARGIN = 64


def filter_reply_budget(n: int) -> int:
    """New tokens the filter model may write for `n` numbered sentences: enough to list all of
    them ("[1, 2, ..., n]": each number's digits, one token each in the worst case, plus ", ")
    and `FILTER_REPLY_MARGIN`. Grows with the CoT, so a long CoT's list is never cut off (a
    reply cut off is a bad_filter_output); the engine caps it by what the context has left."""
    return max(n, 0) * (len(str(max(n, 1))) + 2) + FILTER_REPLY_MARGIN


_INT_LIST = re.compile(r"\[\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*)?\]")


def parse_filter_output(text: str | None, n: int) -> tuple[set[int], str]:
    """The 0-based sentence indices to drop, from the filter model's reply to `filter_prompt`.

    Pass only the model's newly generated text: parsing the prompt too would find the example
    list "[3, 7]". Any `<think>...</think>` part is ignored. The *last* list of integers in the
    reply is the answer (models restate or correct themselves); its numbers are the prompt's,
    1..n. Returns (set, "ok"), or (empty set, "bad_filter_output") when there is no such list
    or the last one holds a number outside 1..n. Never raises and never evaluates the text:
    the list is read with a regular expression and int().
    """
    bad: tuple[set[int], str] = (set(), "bad_filter_output")
    if not isinstance(text, str) or not text:
        return bad
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    last = None
    for last in _INT_LIST.finditer(text):
        pass
    if last is None:
        return bad
    numbers = re.findall(r"-?\d+", last.group(0))
    if any(len(x.lstrip("-")) > 9 for x in numbers):
        return bad
    values = {int(x) for x in numbers}
    if any(not 1 <= v <= n for v in values):
        return bad
    return {v - 1 for v in values}, "ok"


# -- the filter model (rewrite mode) ----------------------------------------------------------------


def rewrite_prompt(cot: str) -> list[dict]:
    """Chat messages for rewrite mode (method.md 5, closest to the original): the model gets the
    explanation as text and replies with the retained text only."""
    user = (
        f"Here is the explanation:\n\n{cot}\n\n"
        "Write it again with every answer sentence removed: reply with only the kept sentences, "
        "exactly as written and in their original order, and nothing else."
    )
    return [{"role": "system", "content": FILTER_SYSTEM}, {"role": "user", "content": user}]


def render_rewrite_prompt(tokenizer, family: str, cot: str) -> str:
    """`rewrite_prompt` through the model's chat template, thinking closed empty (as
    `render_filter_prompt`)."""
    from cotransfer.formats import get_format

    fmt = get_format(family)
    rendered = tokenizer.apply_chat_template(rewrite_prompt(cot), tokenize=False, add_generation_prompt=True)
    return fmt.empty(fmt.open(rendered))


def _normalized(text: str) -> str:
    """method.md 5's sentence matching key: lowercase, whitespace collapsed, trailing .,;: removed."""
    return " ".join(text.lower().split()).rstrip(".,;:").rstrip()


def parse_rewrite_output(text: str | None, sentences: Sequence[Sentence]) -> tuple[set[int], str, int]:
    """(0-based indices to drop, status, unmatched output sentences) from a rewrite-mode reply.

    The reply is split into sentences; each is matched to an original sentence by normalized
    exact match (`_normalized`), searching forward from the last match only, so the kept
    sentences are a subsequence of the original in its order. Output sentences that match
    nothing (paraphrases, additions, reorderings) are discarded and counted. An empty or
    missing reply is a bad_filter_output and drops nothing; a reply of only unmatched text
    drops everything it did not keep, like any other. Never evaluates the text."""
    from cotransfer.sentences import split as split_text

    if not isinstance(text, str) or not text.strip():
        return set(), "bad_filter_output", 0
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    keys = [_normalized(s.text) for s in sentences]
    kept, unmatched, pos = set(), 0, 0
    for out in split_text(text):
        key = _normalized(out.text)
        hit = next((j for j in range(pos, len(keys)) if key and keys[j] == key), None)
        if hit is None:
            unmatched += 1
            continue
        kept.add(hit)
        pos = hit + 1
    return set(range(len(sentences))) - kept, "ok", unmatched
