"""Tiny causal LMs the project builds itself, for the demo and the tests.

A toy model is a Hugging Face Qwen2 checkpoint (an architecture vLLM serves on CPU and GPU) with
a byte-level BPE tokenizer trained on text of the toy task, and a chat template of its family's
format. Weights are random but deterministic (seeded), so a rebuilt model is identical: the demo
then measures noise, but every stage runs on a real model through real vLLM.
`TOY_VERSION` is part of every toy model's identity (rule params): bump it when a change here
changes the weights or the tokenizer.

Constraints from vLLM's CPU backend: head_dim must be 32 or 64; dtype float32 on CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

from cotransfer.formats import get_format

TOY_VERSION = "2"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
           "<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>"]

# A Qwen-style ChatML template. `{opener}` is filled per family when the template should open
# the thinking section itself (like QwQ's), to exercise the opener de-duplication.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{opener}{% endif %}"
)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Training text for the tokenizer: questions and step-by-step solutions of the toy task."""
    from cotransfer.datasets.toyarith import make_item

    rng = random.Random(seed)
    lines = ["You are a careful calculator. Think step by step, then state the final answer."]
    for _ in range(n):
        q, ans, trace = make_item(rng, 4, 10)
        steps = " ".join(f"Now the value is {v}." for v in trace)
        lines += [q, f"Let me work through it. {steps} So the result is {ans}.", f"The answer is {ans}."]
    return lines


def build(out_dir: str | Path, family: str, params: dict) -> Path:
    """Build tokenizer and random-weight model into `out_dir` (created); return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    fmt = get_format(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(params.get("seed", 0))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(params.get("vocab_size", 512)), special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    opener = (fmt.opener + "\n") if params.get("opens_thinking") else ""
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, chat_template=CHAT_TEMPLATE.replace("{opener}", opener),
    )
    hidden = int(params.get("hidden_size", 64))
    heads = int(params.get("num_heads", 2))
    head_dim = int(params.get("head_dim", 32))
    cfg = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=int(params.get("num_layers", 2)), num_attention_heads=heads,
        num_key_value_heads=1, head_dim=head_dim, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id, bos_token_id=None, torch_dtype="float32",
        # A wide init: with the default 0.02 the logits are nearly flat and greedy decoding
        # repeats one token for every prompt; at 0.5 the output depends on the prompt, so the
        # demo's answers differ between items and models (still noise: nothing is trained).
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return out
