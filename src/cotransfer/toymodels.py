"""Tiny causal LMs the project builds itself, for the demo and the tests.

A toy model is a Hugging Face Qwen2 checkpoint (an architecture vLLM serves on CPU and GPU) with
a byte-level BPE tokenizer trained on text of the toy task, and a chat template of its family's
format. Two kinds:

- `build()`: random weights, deterministic from the seed (tests, benchmarks, `toy:` models in a
  config). A wide init makes the output depend on the prompt; it is still noise.
- `train()`: the same architecture trained on CPU, in a few minutes, to solve the `toyarith`
  task with a chain of thought in the model's own phrasing (`STYLES`) and thinking format. These
  are the demo's models (`RECIPES`), committed under `data/models/` and rebuilt with
  `cotransfer train-toys data/models`. Without its CoT a trained model has to answer from the
  question alone, which it was never taught: that is the gap the demo measures.

Constraints from vLLM's CPU backend: head_dim must be 32 or 64; dtype float32 on CPU.
`TOY_VERSION` is part of every random toy model's identity (rule params): bump it when a change
here changes the weights or the tokenizer.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

from cotransfer.formats import get_format

log = logging.getLogger(__name__)

TOY_VERSION = "3"
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

_SYMBOL = {"Add": "+", "Subtract": "-", "Multiply by": "*"}
_WORD = {"Add": "plus", "Subtract": "minus", "Multiply by": "times"}
#: How each model phrases one step (value before, operation, operand, value after mod 10).
STYLES = {
    "symbols": lambda b, op, x, a: f"{b}{_SYMBOL[op]}{x}={a}.",
    "arrows": lambda b, op, x, a: f"{b} {_SYMBOL[op]} {x} -> {a};",
    "words": lambda b, op, x, a: f"{b} {_WORD[op]} {x} is {a}.",
}

#: The demo's models: different seeds, phrasings, formats and capacities; one weak model.
RECIPES: dict[str, dict] = {
    "toy_qwq": {"family": "think", "seed": 1, "style": "symbols", "opens_thinking": True, "steps": 1000},
    "toy_dapo": {"family": "think", "seed": 2, "style": "arrows", "steps": 1000},
    "toy_opent": {"family": "openthinker", "seed": 3, "style": "words", "steps": 1200},
    "toy_weak": {"family": "think", "seed": 4, "style": "symbols", "steps": 250, "hidden_size": 64,
                 "num_layers": 1},
}
TASK = {"steps": 3, "modulus": 10}


def cot_text(chain, style: str) -> str:
    """The ideal chain of thought of a `toyarith` chain in one phrasing."""
    step = STYLES[style]
    return " ".join(step(b, op, x, a) for (op, x), b, a in zip(chain.ops, chain.trace[:-1], chain.trace[1:]))


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Training text for the tokenizer: questions and solutions of the toy task, every style."""
    from cotransfer.datasets.toyarith import SYSTEM, make_chain

    rng = random.Random(seed)
    lines = [SYSTEM]
    for _ in range(n):
        c = make_chain(rng, TASK["steps"], TASK["modulus"])
        lines += [c.question, *(cot_text(c, s) for s in STYLES), f"The answer is {c.answer}."]
    return lines


def _tokenizer(family: str, params: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(params.get("vocab_size", 512)), special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=int(params.get("seed", 0))), trainer=trainer)
    opener = (get_format(family).opener + "\n") if params.get("opens_thinking") else ""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, chat_template=CHAT_TEMPLATE.replace("{opener}", opener),
    )


def _model(tok, params: dict, initializer_range: float):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden = int(params.get("hidden_size", 64))
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=int(params.get("num_layers", 2)), num_attention_heads=int(params.get("num_heads", 2)),
        num_key_value_heads=1, head_dim=int(params.get("head_dim", 32)), max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, torch_dtype="float32", initializer_range=initializer_range,
    )
    torch.manual_seed(int(params.get("seed", 0)))
    return Qwen2ForCausalLM(cfg)


def build(out_dir: str | Path, family: str, params: dict) -> Path:
    """Build tokenizer and random-weight model into `out_dir` (created); return the path.

    A wide init (0.5): with the default 0.02 the logits are nearly flat and greedy decoding
    repeats one token for every prompt; at 0.5 the output depends on the prompt.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(family, params)
    _model(tok, params, initializer_range=0.5).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def training_example(tok, family: str, chain, style: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion is the CoT, closed, and the answer."""
    from cotransfer.datasets.toyarith import SYSTEM

    fmt = get_format(family)
    prompt = fmt.prompt(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": chain.question}])
    completion = (cot_text(chain, style) + fmt.closer + fmt.answer_opener + f"The answer is {chain.answer}."
                  + fmt.answer_closer + tok.eos_token)
    return tok.encode(prompt, add_special_tokens=False), tok.encode(completion, add_special_tokens=False)


def train(out_dir: str | Path, family: str, params: dict) -> Path:
    """Train a toy reasoning model on `toyarith` with CoT; deterministic for a given seed and
    thread count. About 2 minutes for 1000 steps of batch 32 on 2 cores (2 layers, width 128)."""
    import torch

    from cotransfer.datasets.toyarith import make_chain

    params = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "head_dim": 32, **params}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(family, params)
    model = _model(tok, params, initializer_range=0.02)
    seed, steps, batch = int(params["seed"]), int(params["steps"]), int(params.get("batch_size", 32))
    peak = float(params.get("lr", 5e-3))
    rng = random.Random(seed * 7919)
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        examples = [training_example(tok, family, make_chain(rng, TASK["steps"], TASK["modulus"]), params["style"])
                    for _ in range(batch)]
        width = max(len(p) + len(c) for p, c in examples)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (p, c) in enumerate(examples):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            labels[i, len(p): len(p) + len(c)] = torch.tensor(c)  # loss on the completion only
            mask[i, : len(p) + len(c)] = 1
        lr = peak * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 100 == 0:
            log.info("%s: step %d/%d loss %.4f (%.0f s)", out.name, step + 1, steps, loss.item(),
                     time.perf_counter() - t0)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def train_recipes(out_root: str | Path, names: list[str] | None = None) -> list[Path]:
    """Train the demo's models (`RECIPES`) into `out_root/<name>`."""
    import torch

    torch.set_num_threads(2)  # the recipes' timings and determinism assume 2 threads
    out = []
    for name in names or list(RECIPES):
        recipe = dict(RECIPES[name])
        out.append(train(Path(out_root) / name, recipe.pop("family"), recipe))
    return out
