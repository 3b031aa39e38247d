"""Sentence splitting with character offsets (method.md section 6).

A single left-to-right scan, linear in the text length, deterministic and offline. It tracks
bracket depth, inline math (`$...$`, `\\(...\\)`) and double-quoted strings, and only considers a
boundary outside all of them:

- after `.`, `!` or `?` (plus any closing quotes or brackets, which stay with the sentence)
  followed by whitespace and then an uppercase letter, a digit, a list marker or the end;
  except after a decimal's dot, an abbreviation (`e.g.`, `Dr.`, `vs.`, `approx.`, ...), a single
  initial, or a list marker that starts a line (`1.`, `2)`, `Step 3.`, `a.`), which stays
  attached to its step;
- at a blank line (paragraph break);
- at a newline followed by a list marker or bullet.

Spans exclude surrounding whitespace; the gaps between spans are whitespace only, so the text is
rebuilt exactly from the spans and the gaps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPLITTER_VERSION = "1"

ABBREVIATIONS = frozenset("""
e.g i.e vs etc approx dr mr mrs ms prof fig figs no nos eq eqs st vol pp ca cf al inc ltd jr sr
u.s u.k a.m p.m min max dept est sec hr hrs wt ht yr yrs mo mos
""".split())
_LIST_MARKER = re.compile(r"(?:[-*+\u2022]\s|(?:step\s+)?(?:\d{1,3}|[a-zA-Z])[.)]\s)", re.I)
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_TRAILING = "\"')]}\u201d\u2019"


@dataclass(frozen=True, slots=True)
class Sentence:
    index: int
    start: int
    end: int
    text: str


def _is_list_marker_at(text: str, pos: int) -> bool:
    return bool(_LIST_MARKER.match(text, pos))


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _dot_is_boundary(text: str, i: int, sentence_start: int) -> bool:
    """Whether the `.` at i ends a sentence (the caller checks what follows)."""
    prev = text[i - 1] if i > 0 else ""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if prev.isdigit() and nxt.isdigit():
        return False  # decimal
    # a list marker that starts its line or its sentence ("1.", "a.", "Step 3.") stays attached
    for start in (_line_start(text, i), sentence_start):
        if re.fullmatch(r"(?:step\s+)?(?:\d{1,3}|[a-zA-Z])\.", text[start: i + 1].strip(), re.I):
            return False
    m = _WORD_BEFORE.search(text, max(0, i - 12), i + 1)
    if m:
        word = m.group(1).lower()
        if word in ABBREVIATIONS or word.rstrip(".") in ABBREVIATIONS:
            return False
        before = text[m.start() - 1] if m.start() > 0 else " "
        if len(word) == 1 and m.group(1).isupper() and (before.isspace() or before in "(\"'"):
            return False  # a single initial: "J. Smith" (not the unit in "10^9/L.")
        if re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
            return False  # dotted initialism: "U.S."
    return True


def _boundary_follows(text: str, j: int) -> bool:
    """After terminal punctuation ending at j: whitespace, then a capital, digit, marker or end."""
    n = len(text)
    if j >= n:
        return True
    if not text[j].isspace():
        return False
    k = j
    while k < n and text[k].isspace():
        k += 1
    if k >= n:
        return True
    c = text[k]
    return c.isupper() or c.isdigit() or c in "-*+\u2022#>$\\(\"'\u201c`" or _is_list_marker_at(text, k)


def _closes_sentence(text: str, i: int, cuts: list[int]) -> bool:
    """A closing quote or bracket at i right after terminal punctuation ends the sentence when a
    boundary follows: 'He said "stop." Then ...'. Records the cut after the closer(s)."""
    if i == 0 or text[i - 1] not in ".!?":
        return False
    j = i + 1
    while j < len(text) and text[j] in _TRAILING:
        j += 1
    if text[i - 1] == "." and not _dot_is_boundary(text, i - 1, cuts[-1] if cuts else 0):
        return False
    if not _boundary_follows(text, j):
        return False
    cuts.append(j)
    return True


def split(text: str) -> list[Sentence]:
    n = len(text)
    cuts: list[int] = []  # end offsets (exclusive) of sentences, before trimming whitespace
    depth = 0
    stack: list[str] = []
    in_dollar = in_paren_math = in_quote = False
    i = 0
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "()":
            in_paren_math = text[i + 1] == "("
            i += 2
            continue
        if c == "$" and not in_paren_math:
            in_dollar = not in_dollar
        elif c == '"' and not (in_dollar or in_paren_math):
            in_quote = not in_quote
            if not in_quote and depth == 0 and _closes_sentence(text, i, cuts):
                i += 1
                continue
        elif c in _OPENERS and not in_quote:
            stack.append(c)
            depth += 1
        elif c in _CLOSERS and stack and stack[-1] == _CLOSERS[c]:
            stack.pop()
            depth -= 1
            if depth == 0 and _closes_sentence(text, i, cuts):
                i += 1
                continue
        elif c == "\n":
            # hard boundaries: blank line, or a newline before a list marker or bullet
            k = i + 1
            while k < n and text[k] in " \t\r":
                k += 1
            blank = k < n and text[k] == "\n"
            if blank or (k < n and _is_list_marker_at(text, k)):
                cuts.append(i)
                depth, stack = 0, []
                in_dollar = in_paren_math = in_quote = False
        if c in ".!?" and depth == 0 and not (in_dollar or in_paren_math or in_quote):
            j = i + 1
            while j < n and text[j] in ".!?":
                j += 1
            while j < n and text[j] in _TRAILING:
                j += 1
            sentence_start = cuts[-1] if cuts else 0
            if (c != "." or _dot_is_boundary(text, i, sentence_start)) and _boundary_follows(text, j):
                cuts.append(j)
                i = j
                continue
        i += 1
    cuts.append(n)

    out: list[Sentence] = []
    start = 0
    for end in cuts:
        a, b = start, end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append(Sentence(len(out), a, b, text[a:b]))
        start = max(start, end)
    return out


_CUT = re.compile(r"(?<!\d)[.!?](?=\s|$|[A-Z])")
_ABBREV_TOKEN = re.compile(r"(?:\d+(?:\.\d+)?|[A-Za-z]{1,4}|(?:[A-Za-z]\.)+[A-Za-z]?)$")


def truncate_to_sentence(chunk: str) -> str:
    """The original's chunk truncation for ensemble candidates (method.md section 6, end).

    Keep the chunk up to the *last* `.`, `!` or `?` that is not preceded by a digit and is
    followed by whitespace, the end, or an uppercase letter, skipping cut points whose preceding
    token looks like an abbreviation (a number, a word of 1-4 letters, a dotted initialism).
    Without a cut point the whole chunk is kept.
    """
    for m in reversed(list(_CUT.finditer(chunk))):
        before = chunk[: m.start()].split()
        token = before[-1] if before else ""
        if token and _ABBREV_TOKEN.fullmatch(token):
            continue
        return chunk[: m.end()]
    return chunk
