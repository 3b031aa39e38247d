"""`toyarith`: a synthetic multi-step arithmetic task, generated from a seed.

Each item is a chain of operations on a start value, stated in words, taken modulo 10 after every
step, so the answer cannot be read off without the intermediate steps:

    "Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?"  (mod 10 each step)

The gold answer is one digit. The demo's toy models answer with text such as "The answer is 2."
Parsing takes the last integer of the answer segment; anything else is invalid, never a crash.
Options: `steps` (default 4), `modulus` (default 10). `n_items` defaults to 40.
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


@register("toyarith")
class ToyArith(DatasetAdapter):
    numeric_answers = True
    version = "1"

    def load(self, raw: Path | None = None) -> pl.DataFrame:
        o = self.spec.opts
        steps, modulus = int(o.get("steps", 4)), int(o.get("modulus", 10))
        rng = random.Random(self.spec.seed)
        rows = []
        for i in range(self.spec.n_items or 40):
            q, ans, trace = make_item(rng, steps, modulus)
            rows.append({"item_id": f"t{i:04d}", "system": SYSTEM, "user": q, "gold": str(ans),
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
