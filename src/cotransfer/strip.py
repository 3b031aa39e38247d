"""Answer removal (method.md section 5).

The stripped CoT is always an *ordered subset of the original sentences*, each byte-identical,
joined by a joiner: no model-written text can enter it. Two ways to choose what to drop:

- `strip_rule` (CPU, the demo's default): drop every sentence that states the final answer,
  i.e. that contains the source's parsed answer as a standalone token (numbers compare by value:
  answer "2" matches "is 2." and "2.0", not "12" or "2.5"; text answers match case-insensitively
  on word boundaries), and every sentence with an explicit answer cue ("the answer is", "final
  answer"). With no parsed answer, only cue sentences are dropped.
- the filter model (index mode): `filter_prompt` shows the numbered sentences (numbered from 1)
  and asks for a JSON list of the numbers that state the answer; `parse_filter_output` reads the
  last such list from the model's *new* text only (never the prompt: pitfall 11), never raises
  and never evaluates anything; `strip_with_drops` applies it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from cotransfer.sentences import Sentence, split

STRIP_VERSION = "1"

_CUES = re.compile(r"\b(?:the\s+(?:final\s+)?answer\s+is|final\s+answer|answer\s*:)", re.I)
_NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")
_LIST = re.compile(r"\[[\s\d,]*\]")


@dataclass(frozen=True, slots=True)
class StripResult:
    text: str
    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    n_in: int
    n_out: int
    char_ratio: float
    status: str  # ok | nothing_removed | empty_input | bad_filter_output
    answer_still_present: bool | None


def _as_number(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def states_answer(sentence: str, answer: str | None) -> bool:
    """Whether `answer` occurs in `sentence` as a standalone token (numbers by value)."""
    if not answer:
        return False
    value = _as_number(answer)
    if value is not None:
        return any(_as_number(tok) == value for tok in _NUM.findall(sentence))
    return re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", sentence, re.I) is not None


def rebuild(cot: str, sentences: list[Sentence], keep: list[int] | tuple[int, ...], joiner: str = " ") -> str:
    return joiner.join(cot[sentences[i].start: sentences[i].end] for i in sorted(keep))


def strip_with_drops(cot: str, drop: set[int], *, joiner: str = " ", answer: str | None = None,
                     status: str = "ok", sentences: list[Sentence] | None = None) -> StripResult:
    sents = split(cot) if sentences is None else sentences
    if not sents:
        return StripResult("", (), (), 0, 0, 0.0, "empty_input", None)
    keep = tuple(i for i in range(len(sents)) if i not in drop)
    dropped = tuple(i for i in range(len(sents)) if i in drop)
    text = rebuild(cot, sents, keep, joiner)
    if status == "ok" and not dropped:
        status = "nothing_removed"
    ratio = len(text) / len(cot) if cot else 0.0
    assert ratio <= 1.0, "a stripped CoT can never be longer than its source"
    present = states_answer(text, answer) if answer else None
    return StripResult(text, keep, dropped, len(sents), len(keep), ratio, status, present)


def has_answer_cue(sentence: str) -> bool:
    return _CUES.search(sentence) is not None


def strip_rule(cot: str, answer: str | None, *, joiner: str = " ",
               sentences: list[Sentence] | None = None) -> StripResult:
    sents = split(cot) if sentences is None else sentences
    drop = {s.index for s in sents if has_answer_cue(s.text) or states_answer(s.text, answer)}
    return strip_with_drops(cot, drop, joiner=joiner, answer=answer, sentences=sents)


SYSTEM = (
    "You edit step-by-step explanations. Each numbered sentence is either a hint/explanation, "
    "which guides the reader toward solving the problem without giving the final result, or an "
    "answer sentence, which states the final answer, result, solution or conclusion. The hints "
    "will be kept exactly as written and in their original order; every answer statement must be "
    "dropped; nothing may be added."
)


def filter_prompt(sentences: list[Sentence]) -> list[dict]:
    numbered = "\n".join(f"{i + 1}. {s.text}" for i, s in enumerate(sentences))
    user = (f"Sentences:\n{numbered}\n\nReply with only a JSON list of the numbers of the answer "
            "sentences to drop, for example [3, 7], or [] if there are none.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_filter_output(text: str | None, n: int) -> tuple[set[int], str]:
    """The 0-based indices to drop, from the last JSON list of integers in the model's new text.

    The prompt numbers sentences from 1; numbers outside 1..n make the whole reply invalid.
    """
    if not text:
        return set(), "bad_filter_output"
    for m in reversed(list(_LIST.finditer(text))):
        try:
            nums = json.loads(m.group(0))
        except ValueError:
            continue
        if all(isinstance(x, int) and 1 <= x <= n for x in nums):
            return {x - 1 for x in nums}, "ok"
        return set(), "bad_filter_output"
    return set(), "bad_filter_output"
