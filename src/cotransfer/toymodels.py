"""Tiny causal LMs the project builds itself, for the demo and the tests.

A toy model is a Hugging Face Qwen2 checkpoint (an architecture vLLM serves on CPU and GPU) with
a byte-level BPE tokenizer trained on text of the toy task, and a chat template of its family's
format. Two kinds:

- `build()`: random weights, deterministic from the seed (tests, benchmarks, `toy:` models in a
  config). A wide init makes the output depend on the prompt; it is still noise.
- `train()`: the same architecture trained on CPU, in 2 to 6 minutes on one thread, to solve the
  `toyarith` task with a chain of thought in the model's own phrasing (`STYLES`) and thinking
  format. These are the demo's models (`RECIPES`), committed under `data/models/` and rebuilt
  with `cotransfer train-toys data/models`.

What training teaches, and so what the demo can measure:

- *own CoT* (85% of the examples): the question, the model's own step-by-step CoT, the close
  marker and "The answer is N." (loss on the completion). Chains of 1 to 3 steps: the short
  ones are learned first and make the long ones easier. Its own greedy CoT then solves the task.
- *reading* (10%): a CoT in any of the styles, half of them with a wrong step carried through,
  followed by the answer that CoT arrives at (loss on the answer only). A model thus answers from
  the thinking it is given, so a transferred CoT pulls it toward the source's answer, and a CoT
  in another model's phrasing is still readable.
- *empty* (5%): the closed, empty thinking section and the gold answer (loss on the answer). Two
  layers cannot compute the answer from the question alone, so this teaches the answer format
  and a guess: the empty condition measures what a model knows without its reasoning.

The weak model has half the training of the others: its CoTs contain errors, and it follows
them.

The demo's answer-removal filter (`FILTER_RECIPES`, `train_filter`) is the same architecture
with one layer more, an instruct model of the `plain` family with thinking closed. It reads
exactly the prompt the strip stage renders (method.md section 5, index mode: numbered sentences
from `cotransfer.sentences`) and answers the JSON list of the sentences to drop, then EOS; the
labels are the rule method's choices (`strip_rule` with the value the CoT arrives at), on
`toyarith` CoTs in every style, own, flawed and noisy, mixed as in an ensemble's thought, some
cut off. What it learns in its few minutes is to drop the sentence that states the result (the
last one); the rule also drops earlier sentences that happen to write the answer's digit (an
operand or an intermediate value), which it mostly does not (`evaluate_filter`).

Tokenizer: transformers loads a tokenizer of a `qwen2` checkpoint as `Qwen2Tokenizer`, which
replaces the saved pre-tokenizer with Qwen2's (single digits). We build the tokenizer with exactly
that pre-tokenizer and encode training text with the tokenizer as loaded back from disk, i.e. as
vLLM will see it (`load_tokenizer`).

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
from cotransfer.engine import load_tokenizer  # the one loader (what vLLM sees)

log = logging.getLogger(__name__)

TOY_VERSION = "3"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
           "<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>"]
# transformers' Qwen2Tokenizer pre-tokenization (it overrides the saved one on load).
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                           r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

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
#: How each model phrases one step (value before, operation, operand, value after).
STYLES = {
    "symbols": lambda b, op, x, a: f"{b}{_SYMBOL[op]}{x}={a}.",
    "arrows": lambda b, op, x, a: f"{b} {_SYMBOL[op]} {x} -> {a};",
    "words": lambda b, op, x, a: f"{b} {_WORD[op]} {x} is {a}.",
}

#: The demo's models: different seeds, phrasings, formats and capacities; one weak model.
RECIPES: dict[str, dict] = {
    "toy_qwq": {"family": "think", "seed": 1, "style": "symbols", "opens_thinking": True, "steps": 1200},
    "toy_dapo": {"family": "think", "seed": 2, "style": "arrows", "steps": 1300},
    "toy_opent": {"family": "openthinker", "seed": 6, "style": "words", "steps": 1800},
    "toy_weak": {"family": "think", "seed": 4, "style": "symbols", "steps": 600},  # half the training
}
#: The demo's answer-removal filter (`strip.method: llm`): an instruct model, thinking off, that
#: reads numbered sentences and answers the JSON list of those that state the answer (see
#: `train_filter`). `cotransfer train-toys data/models toy_filter` rebuilds it.
FILTER_RECIPES: dict[str, dict] = {
    "toy_filter": {"family": "plain", "seed": 11, "steps": 900},
}
#: The task the recipes train on (the demo's `toyarith` options must match).
TASK = {"steps": 3, "modulus": 10}
TRAIN_DEFAULTS = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "head_dim": 32, "batch_size": 32,
                  "lr": 2e-3, "warmup": 100, "reading_fraction": 0.1, "error_rate": 0.5,
                  "empty_fraction": 0.05}
#: The filter's defaults: one layer more than the reasoning models, a vocabulary that also covers
#: the prompt's English, and the CoTs it sees (`filter_cot`).
FILTER_DEFAULTS = {"task": "filter", "hidden_size": 128, "num_layers": 3, "num_heads": 4, "head_dim": 32,
                   "batch_size": 32, "lr": 2e-3, "warmup": 50, "vocab_size": 768, "max_chain": 4,
                   "flawed_fraction": 0.25, "noisy_fraction": 0.15, "mixed_fraction": 0.3,
                   "truncated_fraction": 0.15}


def cot_text(chain, style: str, trace=None) -> str:
    """The chain of thought of a `toyarith` chain in one phrasing (its own trace by default)."""
    step = STYLES[style]
    trace = chain.trace if trace is None else trace
    return " ".join(step(b, op, x, a) for (op, x), b, a in zip(chain.ops, trace[:-1], trace[1:]))


def flawed_trace(chain, rng: random.Random, modulus: int) -> tuple[int, ...]:
    """The chain's trace with one step's result wrong and every later step computed from it."""
    from cotransfer.datasets.toyarith import OPS

    fns = dict(OPS)
    k = rng.randrange(1, len(chain.trace))
    trace = list(chain.trace[:k])
    wrong = rng.choice([v for v in range(modulus) if v != chain.trace[k]])
    trace.append(wrong)
    for op, x in chain.ops[k:]:
        trace.append(fns[op](trace[-1], x) % modulus)
    return tuple(trace)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Training text for the tokenizer: questions and solutions of the toy task, every style."""
    from cotransfer.datasets.toyarith import SYSTEM, make_chain

    rng = random.Random(seed)
    lines = [SYSTEM]
    for _ in range(n):
        c = make_chain(rng, TASK["steps"], TASK["modulus"])
        lines += [c.question, *(cot_text(c, s) for s in STYLES), f"The answer is {c.answer}."]
    return lines


def _write_tokenizer(out: Path, family: str, params: dict) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(params.get("vocab_size", 512)), special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = (filter_corpus if params.get("task") == "filter" else corpus)(seed=int(params.get("seed", 0)))
    tok.train_from_iterator(text, trainer=trainer)
    opener = (get_format(family).opener + "\n") if params.get("opens_thinking") else ""
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, chat_template=CHAT_TEMPLATE.replace("{opener}", opener),
    ).save_pretrained(out)


def _model(tok, params: dict, initializer_range: float):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden = int(params.get("hidden_size", 64))
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=int(params.get("num_layers", 2)), num_attention_heads=int(params.get("num_heads", 2)),
        num_key_value_heads=1, head_dim=int(params.get("head_dim", 32)),
        max_position_embeddings=int(params.get("max_positions", 2048)),
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, torch_dtype="float32", initializer_range=initializer_range,
    )
    torch.manual_seed(int(params.get("seed", 0)))
    return Qwen2ForCausalLM(cfg)


def _prepare(out_dir: str | Path, family: str, params: dict):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out, family, params)
    return out, load_tokenizer(out)


def build(out_dir: str | Path, family: str, params: dict) -> Path:
    """Build tokenizer and random-weight model into `out_dir` (created); return the path.

    A wide init (0.5): with the default 0.02 the logits are nearly flat and greedy decoding
    repeats one token for every prompt; at 0.5 the output depends on the prompt.
    """
    out, tok = _prepare(out_dir, family, params)
    _model(tok, params, initializer_range=0.5).save_pretrained(out, safe_serialization=True)
    return out


def _messages(chain) -> list[dict]:
    """The chat messages of a toy item, as the pipeline builds them (`inference.messages`)."""
    from cotransfer.datasets.toyarith import SYSTEM
    from cotransfer.inference import messages

    return messages({"system": SYSTEM, "user": chain.question})


def training_example(tok, family: str, chain, style: str | None, trace=None) -> tuple[list[int], list[int], int]:
    """(prompt ids, completion ids, index in the completion where the answer starts).

    The completion is the CoT (of `trace`, default the chain's own; none if `style` is None),
    the family's close marker and answer markers, and "The answer is N." with N the CoT's final
    value (the gold answer for an empty CoT).
    """
    fmt = get_format(family)
    trace = chain.trace if trace is None else trace
    prompt = fmt.prompt(tok, _messages(chain))
    cot = "" if style is None else cot_text(chain, style, trace)
    thinking = tok.encode(cot + fmt.closer + fmt.answer_opener, add_special_tokens=False)
    answer = tok.encode(f"The answer is {trace[-1]}." + fmt.answer_closer + tok.eos_token, add_special_tokens=False)
    return tok.encode(prompt, add_special_tokens=False), thinking + answer, len(thinking)


def _batch(tok, family: str, params: dict, rng: random.Random):
    """One training batch: own-CoT examples and reading examples (see the module doc)."""
    import torch

    from cotransfer.datasets.toyarith import make_chain

    rows = []
    for _ in range(int(params["batch_size"])):
        # shorter chains too: the first steps are learned first, and they make the later ones easier
        chain = make_chain(rng, rng.randint(1, TASK["steps"]), TASK["modulus"])
        draw = rng.random()
        if draw < float(params["reading_fraction"]):
            trace = flawed_trace(chain, rng, TASK["modulus"]) if rng.random() < float(params["error_rate"]) else None
            p, c, answer_at = training_example(tok, family, chain, rng.choice(list(STYLES)), trace)
        elif draw < float(params["reading_fraction"]) + float(params["empty_fraction"]):
            p, c, answer_at = training_example(tok, family, chain, None)
        else:
            p, c, answer_at = training_example(tok, family, chain, params["style"])
            answer_at = 0
        rows.append((p, c, answer_at))
    width = max(len(p) + len(c) for p, c, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c, answer_at) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) + answer_at: len(p) + len(c)] = torch.tensor(c[answer_at:])
        mask[i, : len(p) + len(c)] = 1
    return ids, mask, labels


def train(out_dir: str | Path, family: str, params: dict) -> Path:
    """Train a toy reasoning model on `toyarith` with CoT into `out_dir`; return the path.

    Deterministic for a given seed and torch thread count. About 4 minutes for 1200 steps of
    batch 32 on one thread (2 layers, width 128).
    """
    params = {**TRAIN_DEFAULTS, **params}
    out, tok = _prepare(out_dir, family, params)
    return _fit(out, tok, family, params, _batch)


def _lm_loss(model, batch):
    ids, mask, labels = batch
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _fit(out: Path, tok, family: str, params: dict, make_batch, loss_fn=_lm_loss) -> Path:
    """The training loop shared by the reasoning models and the filter: AdamW, linear warmup
    then cosine decay, gradient clipping at 1; `make_batch(tok, family, params, rng)` gives a
    batch and `loss_fn(model, batch)` its loss (default: (ids, attention mask, labels with -100
    where there is no loss) through the model)."""
    import torch

    model = _model(tok, params, initializer_range=0.02)
    seed, steps, peak, warmup = int(params["seed"]), int(params["steps"]), float(params["lr"]), int(params["warmup"])
    rng = random.Random(seed * 7919)
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        batch = make_batch(tok, family, params, rng)
        lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 4))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.info("%s: step %d/%d loss %.4f (%.0f s)", out.name, step + 1, steps, loss.item(),
                     time.perf_counter() - t0)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    _record(out, family, params, losses, time.perf_counter() - t0)
    return out


def _record(out: Path, family: str, params: dict, losses: list[float], seconds: float) -> None:
    """`training.json`: how the weights next to it were made (recipe, versions, loss curve)."""
    import platform

    import torch
    import transformers

    from cotransfer import io

    io.write_json(out / "training.json", {
        "family": family, "recipe": params, "task": TASK, "toy_version": TOY_VERSION,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "seconds": round(seconds, 1),
        "loss_first": losses[0], "loss_last": losses[-1], "loss_every_50": losses[::50],
    })


def evaluate(model_dir: str | Path, family: str, n: int = 50, seed: int = 999) -> dict[str, float]:
    """Quick held-out check through transformers (greedy): accuracy with the model's own CoT and
    with an empty one. The pipeline measures the same through vLLM; this is for `train-toys`."""
    import torch
    from transformers import AutoModelForCausalLM

    from cotransfer.datasets.toyarith import make_chain

    tok, fmt = load_tokenizer(model_dir), get_format(family)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    rng = random.Random(seed)
    hits = {"own": 0, "empty": 0}
    for _ in range(n):
        chain = make_chain(rng, TASK["steps"], TASK["modulus"])
        prompt = fmt.prompt(tok, _messages(chain))
        for kind, text, budget in (("own", prompt, 96), ("empty", fmt.empty(prompt), 16)):
            ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=budget, do_sample=False, pad_token_id=tok.pad_token_id)
            completion = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)
            answer = fmt.split(completion).answer if kind == "own" else fmt.answer_text(completion)
            hits[kind] += answer.startswith(f"The answer is {chain.answer}.")
    return {k: v / n for k, v in hits.items()}


def _train_recipe(out_root: str, name: str) -> tuple[Path, dict]:
    import torch

    torch.set_num_threads(1)  # one thread per model: determinism does not depend on the machine
    if not logging.getLogger().handlers:  # a spawned worker: report progress like the parent
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if name in FILTER_RECIPES:
        recipe = dict(FILTER_RECIPES[name])
        family = recipe.pop("family")
        path = train_filter(Path(out_root) / name, family, recipe)
        return path, evaluate_filter(path, family)
    recipe = dict(RECIPES[name])
    family = recipe.pop("family")
    path = train(Path(out_root) / name, family, recipe)
    return path, evaluate(path, family)


def train_recipes(out_root: str | Path, names: list[str] | None = None, jobs: int | None = None
                  ) -> list[tuple[Path, dict]]:
    """Train the demo's models (`RECIPES` and `FILTER_RECIPES`, default all) into
    `out_root/<name>`, `jobs` at a time (default: one per core), each on one thread; return
    (path, held-out scores) per model: `evaluate`'s accuracies for a reasoning model,
    `evaluate_filter`'s exact-match and parseable shares for the filter."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    names = names or [*RECIPES, *FILTER_RECIPES]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_train_recipe, [str(out_root)] * len(names), names))


# -- the answer-removal filter ---------------------------------------------------------------------


def filter_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Tokenizer text for the filter: the toy task's text and, often enough for whole-word
    merges, the fixed text of the filter prompt (`strip.filter_prompt`)."""
    from cotransfer.strip import filter_prompt

    fixed = [m["content"] for m in filter_prompt(["1+2=3.", "3 - 1 -> 2;", "2 times 2 is 4."])]
    return corpus(n, seed) + fixed * 50 + ["[1, 2, 3]", "[]", "[2]", "[1, 3]"] * 20


def filter_cot(rng: random.Random, params: dict | None = None) -> str:
    """A CoT of the kind the demo's filter must strip: a `toyarith` chain of 1 to `max_chain`
    steps in one style (or, `mixed_fraction` of the time, a style per step, as in an ensemble's
    thought), with its own trace, a flawed one (one wrong step carried through) or a noisy one
    (every value random, as a weak model writes them); `truncated_fraction` of them cut off at a
    random character, as when the thinking budget runs out."""
    from cotransfer.datasets.toyarith import make_chain

    p = {**FILTER_DEFAULTS, **(params or {})}
    m = TASK["modulus"]
    chain = make_chain(rng, rng.randint(1, int(p["max_chain"])), m)
    draw = rng.random()
    if draw < float(p["flawed_fraction"]) and len(chain.trace) > 2:
        trace = flawed_trace(chain, rng, m)
        values = list(zip(trace[:-1], trace[1:]))
    elif draw < float(p["flawed_fraction"]) + float(p["noisy_fraction"]):
        values = [(rng.randrange(m), rng.randrange(m)) for _ in chain.ops]
    else:
        values = list(zip(chain.trace[:-1], chain.trace[1:]))
    names = list(STYLES)
    one = rng.choice(names)
    mixed = rng.random() < float(p["mixed_fraction"])
    text = " ".join(STYLES[rng.choice(names) if mixed else one](b, op, x, a) for (op, x), (b, a) in zip(chain.ops, values))
    if rng.random() < float(p["truncated_fraction"]) and len(text) > 2:
        text = text[: rng.randrange(2, len(text))].rstrip()
    return text


def filter_labels(cot: str, sentences=None) -> tuple[int, ...]:
    """The 0-based sentences the filter should drop: the project's rule method (`strip_rule`)
    with the answer the CoT itself arrives at (`stated_answer`: its last number), which is how
    the rule method strips a thought with no answer phase of its own."""
    from cotransfer.strip import stated_answer, strip_rule

    return strip_rule(cot, stated_answer(cot), sentences=sentences).dropped


def filter_example(tok, family: str, cot: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one filter example: the prompt the strip stage sends
    (`strip.render_filter_prompt` over `cotransfer.sentences.split`), and the canonical reply
    (`strip.filter_reply` of `filter_labels`) followed by EOS."""
    from cotransfer.sentences import split
    from cotransfer.strip import filter_reply, render_filter_prompt

    sents = split(cot)
    prompt = render_filter_prompt(tok, family, sents)
    reply = filter_reply(filter_labels(cot, sents)) + tok.eos_token
    return tok.encode(prompt, add_special_tokens=False), tok.encode(reply, add_special_tokens=False)


def _filter_batch(tok, family: str, params: dict, rng: random.Random):
    """One filter batch: (the prompt prefix every row shares, then per row the rest of the
    prompt and the reply, right-padded, with its attention mask and labels). Loss on the reply
    (and its EOS) only."""
    import torch

    rows = [filter_example(tok, family, filter_cot(rng, params)) for _ in range(int(params["batch_size"]))]
    # the system prompt and the start of the user turn are the same in every row: computed once
    # per batch (`_filter_loss`), which makes a step about three times cheaper
    first = rows[0][0]
    shared = min(len(p) for p, _ in rows) - 1
    for p, _ in rows:
        shared = next((k for k in range(shared) if p[k] != first[k]), shared)
    rows = [(p[shared:], c) for p, c in rows]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
        mask[i, : len(p) + len(c)] = 1
    return torch.tensor(first[:shared]), ids, mask, labels


def _filter_loss(model, batch):
    """The loss of a `_filter_batch`: the shared prefix once, its keys and values repeated for
    every row, then the rows (exactly the full forward pass: the prefix sees only itself)."""
    import torch

    prefix, ids, mask, labels = batch
    n, shared = ids.shape[0], prefix.shape[0]
    cache = model(input_ids=prefix[None], use_cache=True).past_key_values
    cache.batch_repeat_interleave(n)
    full_mask = torch.cat([torch.ones((n, shared), dtype=mask.dtype), mask], dim=1)
    positions = torch.arange(shared, shared + ids.shape[1])[None].expand(n, -1)
    return model(input_ids=ids, attention_mask=full_mask, past_key_values=cache, position_ids=positions,
                 labels=labels).loss


def train_filter(out_dir: str | Path, family: str, params: dict) -> Path:
    """Train the toy answer-removal filter into `out_dir`; return the path.

    Index mode of method.md section 5: the prompt is exactly what the strip stage renders for
    the CoT's sentences (`strip.render_filter_prompt`, numbered by `cotransfer.sentences`), the
    target is the JSON list of the 1-based numbers of the sentences that state the answer, then
    EOS. "States the answer" is decided by the project's rule method (`filter_labels`), on
    `toyarith` CoTs in every style (`filter_cot`). The same architecture as the reasoning models
    (Qwen2, float32, head_dim 32), one layer more. Deterministic for a given seed and thread count;
    about 4 minutes for 900 steps of batch 32 on one thread (the prompt prefix every row shares is
    computed once per batch, `_filter_loss`).
    """
    params = {**FILTER_DEFAULTS, **params}
    out, tok = _prepare(out_dir, family, params)
    return _fit(out, tok, family, params, _filter_batch, _filter_loss)


def evaluate_filter(model_dir: str | Path, family: str, n: int = 200, seed: int = 4242,
                    params: dict | None = None) -> dict[str, float]:
    """Held-out check through transformers (greedy) on `n` CoTs from `filter_cot` with a seed
    training does not use: the shares of replies that parse (`strip.parse_filter_output`), whose
    drop set equals the rule's exactly, that drop the last sentence (which states the value the
    CoT arrives at), and that drop a sentence the rule keeps. The pipeline runs the same
    through vLLM."""
    import torch
    from transformers import AutoModelForCausalLM

    from cotransfer.sentences import split
    from cotransfer.strip import filter_reply_budget, parse_filter_output, render_filter_prompt

    tok, fmt = load_tokenizer(model_dir), get_format(family)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    rng = random.Random(seed)
    parsed = exact = last = extra = 0
    for _ in range(n):
        cot = filter_cot(rng, params)
        sents = split(cot)
        ids = torch.tensor([tok.encode(render_filter_prompt(tok, family, sents), add_special_tokens=False)])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=filter_reply_budget(len(sents)), do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        reply = fmt.answer_text(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        drop, status = parse_filter_output(reply, len(sents))
        labels = set(filter_labels(cot, sents))
        parsed += status == "ok"
        exact += status == "ok" and drop == labels
        last += len(sents) - 1 in drop
        extra += bool(drop - labels)
    return {"exact_match": exact / n, "parseable": parsed / n, "last_sentence_dropped": last / n,
            "drops_a_kept_sentence": extra / n}
