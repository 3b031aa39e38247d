"""Sentence splitting with character offsets (method.md section 6).

Answer removal (section 5) works on whole sentences and rebuilds the stripped CoT from their
original spans, so the splitter must be deterministic, offline and exact about offsets. It is a
small rule-based scanner rather than a model: every rule below is visible and testable, and the
whole split is linear in the text length (a 30k-character CoT takes milliseconds).

Two passes:

1. **Protected regions**, where no sentence boundary may fall (paragraph breaks excepted):
   inline and display math (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`), double-quoted strings
   (`"..."`, `\u201c...\u201d`, on one line, JSON escapes allowed; a `"` right after a letter or
   digit, as in the height 5'10", never opens one), and matched brackets `()`, `[]`, `{}` (so
   JSON fragments are protected by their braces). Brackets never match across a blank line, an
   opener that is never closed protects nothing, and `(`/`[` pairs longer than a few hundred
   characters are treated as mismatched, so one stray bracket cannot swallow a CoT.
2. **Boundaries**, outside protected regions:
   - after a run of `.`, `!`, `?` or `\u2026` plus any closing quotes/brackets (which stay with the
     sentence), when whitespace follows and then the end, an uppercase letter, a digit, or a
     list marker, bullet or other line-opening markup (`#`, `*`, `(`, `$`, a quote, ...).
     A `.` is *not* a boundary after: a list marker that opens its line or its sentence (`1.`,
     `a.`, `Step 3.`, which stays attached to its step); an abbreviation that never ends a
     sentence (`e.g.`, `i.e.`, `vs.`, `approx.`, `Dr.`, ...); `No.`/`Fig.`/`Eq.`-style
     abbreviations when a number follows; a dotted initialism (`U.S.`, `a.m.`, `p.m.`) or a
     single initial (`J. Smith`, `John F. Kennedy`) unless the next word is a common
     sentence opener ("The", "So", "Therefore", ...), which shows the dot ends a sentence
     (`... class C. Therefore ...`, `... at 9 p.m. The patient ...`);
   - at every blank line (paragraph break), even inside a protected region;
   - at a newline followed by a list marker, bullet, Markdown heading, bold run, an uppercase
     letter or a digit. LLM reasoning does not hard-wrap prose, so a line that starts like that
     is a new statement ("Weight: 70 kg" / "Height: 170 cm" / "Answer: 4"); answer removal
     needs them apart. Continuation lines (`= 76.9`, `x (72 x 1.2)`) stay attached.

Decimals (`1.73`, `.5`) and units (`mL/min/1.73 m\u00b2`, `10^9/L`) never split because their dots
are not followed by whitespace. A sentence ending in a number ("... the score is 72.") splits
like any other.

Spans exclude surrounding whitespace and the gaps between spans are whitespace only, so the
input is rebuilt exactly from the spans and the gaps. Two consecutive sentences are always
separated by at least one whitespace character (every boundary sits at whitespace), which is
what lets answer removal promise that its output is never longer than its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLITTER_VERSION = "2"


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence: `text == source[start:end]`, without surrounding whitespace."""

    index: int
    start: int
    end: int
    text: str


# Abbreviations that (almost) never end a sentence: no boundary after them.
ALWAYS_ABBREVIATIONS = frozenset(
    "e.g i.e eg ie vs approx dr mr mrs ms prof sr jr cf al viz resp incl".split())
# Abbreviations that do not end a sentence when a number follows ("No. 5", "Fig. 3", "Eq. 2"),
# but may otherwise ("Is he on dialysis? No. So ...").
NUMBER_ABBREVIATIONS = frozenset("no nos fig figs eq eqs vol ref refs p pp pg ch sec tab wt ht".split())
# Words that start sentences and never follow an initial inside a name: after "U.S." or a single
# initial they show that the dot ends a sentence.
SENTENCE_OPENERS = frozenset("""
the this that these those then so therefore thus hence next now we it its let let's since
however because but and also in for to from with if after finally first second third given
using here there our my which what when where why how wait okay ok yes step note adding
plugging substituting rounding converting multiplying dividing subtracting looking checking
""".split())

_EVENT = re.compile(r"\n|[.!?\u2026]+[\"')\]}\u201d\u2019]*")
_BLANK_AFTER = re.compile(r"[ \t\r\f\v]*\n")
# What may open a line that starts a new unit after a newline (markers, bullets, headings, bold,
# a capital or a digit); leading indentation allowed.
_LINE_OPENER = re.compile(
    r"[ \t]*(?:[-*+\u2022\u25e6\u2023\u25aa]\s|#{1,6}\s|\*\*\S|__\S|\(?(?:\d{1,3}|[A-Za-z])[.)]\s"
    r"|(?i:step)\s*\d|[A-Z]|\d)")
# What may follow the whitespace after terminal punctuation for it to end a sentence.
_NEXT_OPENER = re.compile(r"[A-Z0-9]|[-*+\u2022#>$\\(\[\"'\u201c`_]")
# A list marker that makes up the whole text before its dot: "1", "a", "Step 3", "iv".
_MARKER_BODY = re.compile(r"\s*(?:[#>*]+\s*)?(?:(?i:step)\s*\d{1,3}|\d{1,3}|[A-Za-z]|[ivxIVX]{1,4})")
_DOTTED_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")

# Protected-region detectors. Each is linear: the inline forms cannot cross a newline or their
# own delimiter, and the delimited forms are matched by `_pairs` with bounded lookups.
_INLINE_DOLLAR = re.compile(r"(?<![\\$\w])\$(?=[^\s$])[^$\n]*?(?<=[^\s\\$])\$(?![\d$])")
# code: a fenced block (``` ... ```, over lines) and inline `code` are never split
_FENCED_CODE = re.compile(r"```[\s\S]{0,20000}?```")
_INLINE_CODE = re.compile(r"(?<!`)`(?!`)[^`\n]{1,1000}`(?!`)")
_QUOTED = re.compile(r"(?<![\w\\])\"(?:[^\"\\\n]|\\.)*\"|\u201c[^\u201c\u201d\n]*\u201d")
_BRACKET_EVENT = re.compile(r"[()\[\]{}]|\n[ \t\r\f\v]*\n")
_PAIRS = {")": "(", "]": "[", "}": "{"}
_MAX_SPAN = {"(": 1000, "[": 2000, "{": None}  # None: braces (JSON) may be long
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"))
_MATH_LIMIT = 4000
_LIST_CLOSER = re.compile(r"[ \t]*(?:\d{1,3}|[A-Za-z])")  # the "2" of a line-start "2)" marker


def _pairs(text: str, opener: str, closer: str, limit: int, spans: list[tuple[int, int]]) -> None:
    """Append the spans of `opener ... closer` pairs whose closer is at most `limit` chars away."""
    last = text.rfind(closer)
    pos = 0
    while True:
        a = text.find(opener, pos)
        if a < 0 or a >= last:
            return
        body = a + len(opener)
        b = text.find(closer, body, body + limit + len(closer))
        if b < 0:
            pos = body
            continue
        spans.append((a, b + len(closer)))
        pos = b + len(closer)


def _bracket_spans(text: str, skip: bytearray, spans: list[tuple[int, int]]) -> None:
    """Matched bracket pairs outside math/quotes, never across a blank line."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKET_EVENT.finditer(text):
        p = m.start()
        c = text[p]
        if c == "\n":
            stack.clear()
            continue
        if skip[p]:
            continue
        if c in "([{":
            stack.append((c, p))
            continue
        if c == ")":  # the ")" of a line-start list marker "2)" closes nothing
            ls = text.rfind("\n", max(0, p - 6), p) + 1
            if (ls > 0 or p <= 5) and _LIST_CLOSER.fullmatch(text, ls, p):
                continue
        want = _PAIRS[c]
        for depth in range(len(stack) - 1, -1, -1):
            if stack[depth][0] == want:
                o = stack[depth][1]
                del stack[depth:]  # inner unmatched openers are dropped
                cap = _MAX_SPAN[want]
                if cap is None or p - o <= cap:
                    spans.append((o, p + 1))
                break


def _mark(n: int, spans: list[tuple[int, int]]) -> bytearray:
    """A 0/1 mask of the union of half-open spans (merged first, so marking stays linear)."""
    mask = bytearray(n + 1)
    end = -1
    for a, b in sorted(spans):
        a = max(a, end)
        if b > a:
            mask[a:b] = b"\x01" * (b - a)
            end = b
    return mask


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks, then inline code outside them."""
    spans = [m.span() for m in _FENCED_CODE.finditer(text)]
    fenced = _mark(len(text), spans)
    return spans + [m.span() for m in _INLINE_CODE.finditer(text) if not fenced[m.start()]]


def protected_mask(text: str) -> bytearray:
    """1 at every position inside code (fenced or inline), math, a quoted string or a matched
    bracket pair (delimiters included); length len(text) + 1, the last entry always 0."""
    spans = _code_spans(text)
    for opener, closer in _MATH_DELIMITERS:
        _pairs(text, opener, closer, _MATH_LIMIT, spans)
    spans += [m.span() for m in _INLINE_DOLLAR.finditer(text)]
    spans += [m.span() for m in _QUOTED.finditer(text)]
    skip = _mark(len(text), spans)
    _bracket_spans(text, skip, spans)
    return _mark(len(text), spans)


def _word_before(text: str, end: int, floor: int) -> tuple[int, str]:
    """The run of letters and dots ending at `end` (at most 15 chars, not below `floor`)."""
    a = end
    while a > max(floor, end - 15) and (text[a - 1].isalpha() or text[a - 1] == "."):
        a -= 1
    return a, text[a:end]


_WORD_AT = re.compile(r"\s*([A-Za-z']+)")


def _next_word(text: str, k: int) -> str:
    m = _WORD_AT.match(text, k, k + 64)
    return m.group(1).lower() if m else ""


def _previous_word_is_name_like(text: str, a: int, floor: int) -> bool:
    """For a single initial at `a`: no earlier word on its line/sentence, or a capitalized one
    ("John F.", "Dr. J."), means a name; a lowercase word ("class C.") does not."""
    k = a
    while k > floor and text[k - 1] in " \t":
        k -= 1
    if k <= floor or text[k - 1] == "\n":
        return True
    j = k
    while j > max(floor, k - 30) and not text[j - 1].isspace():
        j -= 1
    word = text[j:k]
    return word[:1].isupper() and word[-1] not in ":;,"


def _dot_ends_sentence(text: str, i: int, after: int, line_start: int, sent_start: int) -> bool:
    """Whether the `.` at i ends a sentence; `after` is the first non-space position after it."""
    for start in (line_start, sent_start):
        if i - start <= 40 and _MARKER_BODY.fullmatch(text, start, i):
            return False  # "1." / "Step 3." / "a." opening its line or sentence
    floor = min(line_start, sent_start)
    a, word = _word_before(text, i, floor)
    if not word or (a > 0 and (text[a - 1].isalnum() or text[a - 1] in "_/^")):
        return True  # "72." or "10^9/L." or "1st."
    key = word.lower()
    if key in ALWAYS_ABBREVIATIONS:
        return False
    if key in NUMBER_ABBREVIATIONS and after < len(text) and text[after].isdigit():
        return False
    initial = len(word) == 1 and word.isupper() and _previous_word_is_name_like(text, a, floor)
    if initial or _DOTTED_INITIALISM.fullmatch(word):
        return _next_word(text, after) in SENTENCE_OPENERS
    return True


def _cut_points(text: str) -> list[int]:
    """Sentence end offsets (exclusive, before trimming), in increasing order."""
    n = len(text)
    mask = protected_mask(text)
    code = _mark(n, _code_spans(text)) if "`" in text else None  # not even a blank line cuts code
    cuts: list[int] = []
    line_start = 0
    for m in _EVENT.finditer(text):
        p = m.start()
        if text[p] == "\n":
            nxt = p + 1
            if (code is None or not code[p]) and (
                    _BLANK_AFTER.match(text, nxt) or (not mask[p] and _LINE_OPENER.match(text, nxt))):
                cuts.append(p)
            line_start = nxt
            continue
        k = m.end()  # after the punctuation and its closing quotes/brackets
        if k < n and (not text[k].isspace() or mask[k]):
            continue  # "e.g.," / "1.73" / inside a protected region
        after = k
        while after < n and text[after].isspace():
            after += 1
        if after < n and not (text[after].isupper() or _NEXT_OPENER.match(text, after)):
            continue  # lowercase continues the sentence
        sent_start = cuts[-1] if cuts else 0
        if text[p] == "." and not _dot_ends_sentence(text, p, after, line_start, sent_start):
            continue
        cuts.append(k)
    return cuts


def split(text: str) -> list[Sentence]:
    """Split `text` into sentences with exact character spans (rules in the module docstring).

    Whitespace-only or empty text gives []. `text[s.start:s.end] == s.text` for every sentence,
    and everything outside the spans is whitespace.
    """
    if not text or text.isspace():
        return []
    out: list[Sentence] = []
    start = 0
    for end in [*_cut_points(text), len(text)]:
        a, b = start, end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append(Sentence(len(out), a, b, text[a:b]))
        start = max(start, end)
    return out


_PAPER_CUT = re.compile(r"(?<!\d)[.!?](?=\s|$|[A-Z])")
_PAPER_ABBREVIATION = re.compile(r"\d+(?:\.\d+)?|[A-Za-z]{1,4}|(?:[A-Za-z]\.)+[A-Za-z]?")


_TERMINAL = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*$")


def truncate_to_complete(chunk: str) -> str:
    """An ensemble candidate cut back to its last complete sentence (method.md section 7, step 2,
    with the section 6 splitter): a chunk is cut at a token budget, so its last sentence is
    usually unfinished; drop it when an earlier sentence of the chunk is complete. A chunk with
    no sentence boundary is kept whole (nothing shorter is a sentence either).

    The paper's rule (`truncate_to_sentence`) never cuts after a digit, so a CoT whose sentences
    end in numbers ("4+1=5. 5*2") kept every half-written step: the next generator then
    continued another model's unfinished sentence in its own style.
    """
    sentences = split(chunk)
    if len(sentences) < 2 or _TERMINAL.search(sentences[-1].text):
        return chunk
    return chunk[: sentences[-2].end]


def truncate_to_sentence(chunk: str) -> str:
    """The original study's chunk truncation for ensemble candidates (method.md section 6, end).

    Reproduced as specified, not improved, because it shapes which candidates the ensemble sees:
    keep `chunk` up to and including the *last* `.`, `!` or `?` that is not preceded by a digit
    and is followed by whitespace, the end of the text, or an uppercase letter, skipping a cut
    point whose preceding whitespace-delimited token looks like an abbreviation (a decimal
    number, a word of 1-4 letters, or a dotted initialism such as `U.S`). With no cut point the
    whole chunk is kept.
    """
    for m in reversed(list(_PAPER_CUT.finditer(chunk))):
        end = m.start()
        a = end
        while a > 0 and not chunk[a - 1].isspace():
            a -= 1
        token = chunk[a:end]
        if token and _PAPER_ABBREVIATION.fullmatch(token):
            continue
        return chunk[: m.end()]
    return chunk
