"""`toyarith`: a synthetic multi-step arithmetic task, generated from a seed.

Each item is a chain of operations on a start value, stated in words, taken modulo 10 after every
step, so the answer cannot be read off without the intermediate steps:

    "Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?"  (mod 10 each step)

The gold answer is one digit. The demo's toy models answer with text such as "The answer is 2."
Parsing takes the last integer of the answer segment; anything else is invalid, never a crash.
Options: `steps` (default 4), `modulus` (default 10), `size` (default 1000). `n_items` defaults
to 40.

Size: a question is a start value (`modulus` choices) and `steps` operations, each one of 3
operations with an operand from 1 to `modulus - 1`, so there are `modulus * (3 * (modulus - 1))
** steps` distinct questions (196,830 for the demo's 3 steps mod 10; 5,314,410 for 4 steps).
Questions are drawn from the seeded generator in order, and a question already drawn is skipped
(version 2; version 1 kept repeats, e.g. 21,605 of 100,000 items with the demo's options), so
every item is a distinct question. A sample without repeats is the same under both versions.

The dataset is the first `size` distinct questions the seeded generator draws (default 1000,
at most the number of distinct questions), and its items are the first `n_items` of them, so a
bigger `size` keeps the items a smaller one gave. `n_items` above `size` is refused before any
job (`available`, `cotransfer.config.check_inputs`): a synthetic set is not endless by accident.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from cotransfer.datasets.base import DatasetAdapter, Scored, register

OPS = (("Add", lambda a, b: a + b), ("Subtract", lambda a, b: a - b), ("Multiply by", lambda a, b: a * b))
SYSTEM = "You are a careful calculator. Think step by step, then state the final answer."
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True, slots=True)
class Chain:
    """One question with its answer, the intermediate values and the operations applied."""

    question: str
    answer: int
    trace: tuple[int, ...]  # start value, then the value after every step
    ops: tuple[tuple[str, int], ...]  # (operation name, operand) per step


def make_chain(rng: random.Random, steps: int, modulus: int) -> Chain:
    value = rng.randrange(modulus)
    words = [f"Start with {value}."]
    trace, ops = [value], []
    for _ in range(steps):
        name, fn = rng.choice(OPS)
        operand = rng.randrange(1, modulus)
        value = fn(value, operand) % modulus
        words.append(f"{name} {operand}.")
        trace.append(value)
        ops.append((name, operand))
    question = " ".join(words) + f" Work modulo {modulus} after every step. What is the result?"
    return Chain(question, value, tuple(trace), tuple(ops))


def make_item(rng: random.Random, steps: int, modulus: int) -> tuple[str, int, list[int]]:
    """One question, its answer and the intermediate values (the ideal chain of thought)."""
    c = make_chain(rng, steps, modulus)
    return c.question, c.answer, list(c.trace)


DEFAULT_N_ITEMS = 40
DEFAULT_SIZE = 1000


def n_questions(steps: int, modulus: int) -> int:
    """How many distinct questions `make_chain` can draw: start values x (operations x operands) ** steps."""
    return modulus * (len(OPS) * (modulus - 1)) ** steps


@register("toyarith")
class ToyArith(DatasetAdapter):
    numeric_answers = True
    version = "2"  # 2: no question repeats (a repeat is skipped; samples without one are unchanged)
    local_path = None  # generated: a `path:` is not read
    size_unit = "questions (options.size; the generator's first distinct draws)"

    def options(self) -> tuple[int, int]:
        """(steps, modulus), checked: ValueError naming the option."""
        o, key = self.spec.opts, f"datasets.{self.spec.name}.options"
        steps, modulus = o.get("steps", 4), o.get("modulus", 10)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{key}.steps: expected an integer >= 1, got {steps!r}")
        if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
            raise ValueError(f"{key}.modulus: expected an integer >= 2, got {modulus!r}")
        size = o.get("size", DEFAULT_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{key}.size: expected an integer >= 1, got {size!r}")
        if size > n_questions(steps, modulus) and "size" in o:
            raise ValueError(f"{key}.size: {size} is more than the {n_questions(steps, modulus)} distinct questions "
                             f"of {steps} steps modulo {modulus}")
        return steps, modulus

    @property
    def n_items(self) -> int:
        return DEFAULT_N_ITEMS if self.spec.n_items is None else int(self.spec.n_items)

    def check_inputs(self) -> None:
        self.options()
        if self.spec.n_items is None and self.n_items > self.available():
            raise ValueError(f"datasets.{self.spec.name}.n_items: unset means {DEFAULT_N_ITEMS}, more than the "
                             f"{self.available()} questions of the dataset (options.size)")

    def available(self) -> int:
        """The dataset's questions: `options.size`, at most the distinct questions there are."""
        steps, modulus = self.options()
        return min(self.spec.opts.get("size", DEFAULT_SIZE), n_questions(steps, modulus))

    def load(self, raw: Path | None = None) -> pl.DataFrame:
        steps, modulus = self.options()
        n = self.n_items
        if n > self.available():
            raise ValueError(f"datasets.{self.spec.name}.n_items: {n} is more than the {self.available()} questions "
                             f"of the dataset (options.size; at most {n_questions(steps, modulus)} distinct "
                             f"questions of {steps} steps modulo {modulus})")
        rng = random.Random(self.spec.seed)
        rows, seen = [], set()
        while len(rows) < n:
            q, ans, trace = make_item(rng, steps, modulus)
            if q in seen:  # a repeat: skipped, so that every item is a distinct question
                continue
            seen.add(q)
            rows.append({"item_id": f"t{len(rows):04d}", "system": SYSTEM, "user": q, "gold": str(ans),
                         "meta": {"trace": trace, "modulus": modulus}})
        return self.items_frame(rows)

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        if not answer_text or not answer_text.strip():
            return Scored(None, False, False, "not_found")
        found = _INT.findall(answer_text)
        if not found:
            return Scored(None, False, False, "no_number")
        answer = str(int(found[-1]))
        return Scored(answer, True, answer == str(int(item["gold"])), "ok")
