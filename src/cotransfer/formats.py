"""Chat/thinking formats, one per model family (method.md section 2).

A format turns an item's chat messages into prompt *strings that keep their special tokens*, and
knows the family's markers:

- `prompt(tok, messages)`: the rendered generation prompt with the thinking section opened
  (the opener is appended only if the template did not already open it: QwQ's does);
- `prefill(prompt, cot)`: the prompt with a given CoT placed inside the thinking section, closed,
  and the answer phase opened (`empty` is `prefill(prompt, "")`);
- `split(completion)`: a completion of `prompt()` split into thinking and answer text.

The CoT is placed directly after the opener and the closer directly after the CoT, with no added
whitespace (as in the original study). A prefilled CoT never goes through a chat template as an
assistant message: reasoning templates drop or rewrite earlier thinking.

Chosen by the model's `family` key in the config, never by substrings of model names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMATS: dict[str, "Format"] = {}


@dataclass(frozen=True, slots=True)
class Split:
    thinking: str
    answer: str
    closed: bool  # the close marker was generated


@dataclass(frozen=True, slots=True)
class Format:
    family: str
    version: str
    opener: str
    closer: str
    answer_opener: str = ""
    answer_closer: str = ""
    template_kwargs: tuple[tuple[str, Any], ...] = ()

    def prompt(self, tokenizer, messages: list[dict], *, dedupe_open: bool = True, **kwargs) -> str:
        """Render the generation prompt with the thinking section opened exactly once
        (`dedupe_open=False`: the original's unconditional opener, `compat.dedupe_open`)."""
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True,
            **dict(self.template_kwargs), **kwargs,
        )
        return self.open(text, dedupe=dedupe_open)

    def open(self, rendered: str, *, dedupe: bool = True) -> str:
        """Append the opener unless the rendered text (ignoring trailing whitespace) ends with it;
        `dedupe=False` appends it regardless, as the original did (QwQ: `<think>\n<think>`)."""
        if dedupe and self.opener and rendered.rstrip().endswith(self.opener):
            return rendered
        return rendered + self.opener

    def prefill(self, prompt: str, cot: str) -> str:
        return prompt + cot + self.closer + self.answer_opener

    def empty(self, prompt: str) -> str:
        return self.prefill(prompt, "")

    def split(self, completion: str) -> Split:
        """Thinking = text before the first close marker (all of it if never closed)."""
        head, sep, tail = completion.partition(self.closer) if self.closer else (completion, "", "")
        if not sep:
            return Split(thinking=completion, answer="", closed=False)
        return Split(thinking=head, answer=self.answer_text(tail), closed=True)

    def answer_text(self, text: str) -> str:
        """The answer segment without the answer opener/closer markers."""
        stripped = text.lstrip()
        if self.answer_opener and stripped.startswith(self.answer_opener.strip()):
            text = stripped[len(self.answer_opener.strip()):]
        if self.answer_closer:
            text = text.split(self.answer_closer, 1)[0]
        return text.strip()

    @property
    def stops(self) -> tuple[str, ...]:
        """Stop strings: only the answer closer, which cannot occur inside the thinking."""
        return (self.answer_closer,) if self.answer_closer else ()

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (self.opener, self.closer, self.answer_opener, self.answer_closer) if m)


def register(fmt: Format) -> Format:
    if FORMATS.setdefault(fmt.family, fmt) is not fmt:
        raise ValueError(f"format {fmt.family!r} registered twice")
    return fmt


def get_format(family: str) -> Format:
    try:
        return FORMATS[family]
    except KeyError:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(FORMATS)}") from None


# `<think>` ... `</think>`: QwQ, DAPO, Nemotron-Research-Reasoning, DeepSeek-R1 distills.
THINK = register(Format(family="think", version="1", opener="<think>", closer="</think>"))

# OpenThinker: begin/end of thought, answer inside begin/end of solution.
OPENTHINKER = register(Format(
    family="openthinker", version="1",
    opener="<|begin_of_thought|>", closer="<|end_of_thought|>",
    answer_opener="<|begin_of_solution|>", answer_closer="<|end_of_solution|>",
))

# Instruct models without a thinking mode are asked (in their prompt) to reason inside one
# <think></think> block before answering (method.md section 2.2); they share the markers.
PLAIN = register(Format(family="plain", version="1", opener="<think>", closer="</think>"))

@dataclass(frozen=True, slots=True)
class HarmonyFormat(Format):
    """gpt-oss: the prompt is rendered by the harmony library (the `openai_harmony` module that
    vLLM depends on), not by the tokenizer's chat template, so that the date is pinned and the
    reasoning effort explicit (method.md section 2.1): the task's system text is the model
    identity, the user turn is the only message, and the prompt ends with `<|start|>assistant`.
    The CoT goes into the analysis channel and the answer into the final channel, as real
    channel tokens (kept as special-token text in the prompt string)."""

    def prompt(self, tokenizer, messages: list[dict], *, reasoning_effort: str = "low",
               conversation_date: str = "2025-06-28", dedupe_open: bool = True, **_) -> str:
        import openai_harmony as h

        enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
        system = h.SystemContent.new().with_reasoning_effort(
            {"low": h.ReasoningEffort.LOW, "medium": h.ReasoningEffort.MEDIUM,
             "high": h.ReasoningEffort.HIGH}[reasoning_effort]).with_conversation_start_date(conversation_date)
        sys_text = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        if sys_text:
            system = system.with_model_identity(sys_text)
        convo = [h.Message.from_role_and_content(h.Role.SYSTEM, system)]
        convo += [h.Message.from_role_and_content(h.Role.USER, m["content"]) for m in messages if m["role"] == "user"]
        ids = enc.render_conversation_for_completion(h.Conversation.from_messages(convo), h.Role.ASSISTANT)
        return self.open(enc.decode(ids), dedupe=dedupe_open)

    def literal_prefill(self, prompt: str, cot: str) -> str:
        """The original's MedCalc prefill (`compat.oss_format`): it had decoded OSS text with
        special tokens stripped, so the channel headers became the plain words `analysis` and
        `assistantfinal` around the CoT, after the prompt's `<|start|>assistant`."""
        return prompt.removesuffix(self.opener) + "analysis" + cot + "assistantfinal"


# gpt-oss harmony: analysis channel for the CoT, final channel for the answer.
HARMONY = register(HarmonyFormat(
    family="harmony", version="1",
    opener="<|channel|>analysis<|message|>",
    closer="<|end|>",
    answer_opener="<|start|>assistant<|channel|>final<|message|>",
    answer_closer="<|return|>",
))
