"""Rendered prompts per family, on the project's toy tokenizer (its ChatML template)."""

import pytest

from cotransfer.formats import get_format

MSGS = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Start with 3. Add 4."}]
HEAD = "<|im_start|>system\nBe careful.<|im_end|>\n<|im_start|>user\nStart with 3. Add 4.<|im_end|>\n<|im_start|>assistant\n"


class Tok:
    """Renders like the toy tokenizers: ChatML, optionally opening the thinking section."""

    def __init__(self, opens: str = ""):
        self.opens = opens

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
        assert tokenize is False and add_generation_prompt is True
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + "<|im_start|>assistant\n" + self.opens


def test_think_adds_opener_once_when_template_does_not():
    f = get_format("think")
    assert f.prompt(Tok(), MSGS) == HEAD + "<think>"


def test_think_does_not_double_opener_when_template_opens_it():
    f = get_format("think")
    p = f.prompt(Tok("<think>\n"), MSGS)
    assert p == HEAD + "<think>\n"
    assert p.count("<think>") == 1


@pytest.mark.parametrize("opens", ["", "<think>\n"])
def test_prefill_places_cot_once_closed_before_answer(opens):
    f = get_format("think")
    cot = "Start is 3. Then 3 + 4 = 7."
    p = f.prefill(f.prompt(Tok(opens), MSGS), cot)
    assert p.count(cot) == 1 and p.count("<think>") == 1 and p.count("</think>") == 1
    assert p.index("<think>") < p.index(cot) < p.index("</think>")
    assert p.endswith(cot + "</think>")


def test_openthinker_prefill_and_empty():
    f = get_format("openthinker")
    base = f.prompt(Tok(), MSGS)
    assert base == HEAD + "<|begin_of_thought|>"
    assert f.empty(base) == HEAD + "<|begin_of_thought|><|end_of_thought|><|begin_of_solution|>"
    p = f.prefill(base, "X.")
    assert p.endswith("<|begin_of_thought|>X.<|end_of_thought|><|begin_of_solution|>")
    assert f.stops == ("<|end_of_solution|>",)


def test_harmony_uses_channel_markers():
    f = get_format("harmony")
    p = f.prefill(f.open("PROMPT<|start|>assistant"), "Think.")
    assert p == ("PROMPT<|start|>assistant<|channel|>analysis<|message|>Think.<|end|>"
                 "<|start|>assistant<|channel|>final<|message|>")


@pytest.mark.parametrize("family, completion, thinking, answer, closed", [
    ("think", "Let me add. 3+4=7.</think>The answer is 7.", "Let me add. 3+4=7.", "The answer is 7.", True),
    ("think", "Let me add and never stop", "Let me add and never stop", "", False),
    ("think", "</think>", "", "", True),
    ("openthinker", "a<|end_of_thought|><|begin_of_solution|>7<|end_of_solution|>", "a", "7", True),
    ("harmony", "a<|end|><|start|>assistant<|channel|>final<|message|>7", "a", "7", True),
])
def test_split(family, completion, thinking, answer, closed):
    s = get_format(family).split(completion)
    assert (s.thinking, s.answer, s.closed) == (thinking, answer, closed)


def test_unknown_family_lists_known():
    with pytest.raises(KeyError, match="known:.*think"):
        get_format("llama")


HARMONY_HEAD = (
    "<|start|>system<|message|>Be careful.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\n"
    "Reasoning: low\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message."
    "<|end|><|start|>user<|message|>Start with 3. Add 4.<|end|><|start|>assistant"
)


def test_harmony_snapshot_own_empty_and_transferred():
    f = get_format("harmony")
    own = f.prompt(None, MSGS, reasoning_effort="low", conversation_date="2025-06-28")
    assert own == HARMONY_HEAD + "<|channel|>analysis<|message|>"
    assert f.empty(own) == HARMONY_HEAD + ("<|channel|>analysis<|message|><|end|>"
                                          "<|start|>assistant<|channel|>final<|message|>")
    cot = "Three plus four is seven."
    other = f.prefill(own, cot)
    assert other == HARMONY_HEAD + ("<|channel|>analysis<|message|>Three plus four is seven.<|end|>"
                                    "<|start|>assistant<|channel|>final<|message|>")
    assert "assistantanalysis" not in other and other.count(cot) == 1


def test_harmony_markers_are_single_special_tokens():
    import openai_harmony as h

    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    f = get_format("harmony")
    text = f.prefill(f.prompt(None, MSGS), "Seven.")
    ids = enc.encode(text, allowed_special="all")
    specials = {enc.encode(t, allowed_special="all")[0] for t in
                ("<|channel|>", "<|message|>", "<|end|>", "<|start|>")}
    assert all(len(enc.encode(t, allowed_special="all")) == 1 for t in ("<|channel|>", "<|message|>", "<|end|>"))
    assert sum(i in specials for i in ids) >= 12
    # the effort and the date are explicit and pinned: another effort renders another prompt
    assert "Reasoning: medium" in f.prompt(None, MSGS, reasoning_effort="medium")
    assert f.prompt(None, MSGS) == f.prompt(None, MSGS)


@pytest.mark.parametrize("family, opens, own_tail, empty_tail, other_tail", [
    ("think", "", "<think>", "<think></think>", "<think>C.</think>"),
    ("think", "<think>\n", "<think>\n", "<think>\n</think>", "<think>\nC.</think>"),
    ("openthinker", "", "<|begin_of_thought|>", "<|begin_of_thought|><|end_of_thought|><|begin_of_solution|>",
     "<|begin_of_thought|>C.<|end_of_thought|><|begin_of_solution|>"),
    ("plain", "", "<think>", "<think></think>", "<think>C.</think>"),
])
def test_snapshot_own_empty_and_transferred(family, opens, own_tail, empty_tail, other_tail):
    f = get_format(family)
    own = f.prompt(Tok(opens), MSGS)
    assert own == HEAD + own_tail
    assert f.empty(own) == HEAD + empty_tail
    assert f.prefill(own, "C.") == HEAD + other_tail
    assert f.prefill(own, "C.").count(f.opener) == 1
