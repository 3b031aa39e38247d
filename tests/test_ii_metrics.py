"""Tests of the Instruction Induction pairwise consistency (`cotransfer.ii_metrics`, method.md 8.3).

One answers table (three evaluators, two tasks with unequal item counts, the empty, transfer,
sampled and default conditions, an answer shorter than 3 characters, an invalid answer, missing
rows) goes through `ii_consistency` with the `exact` backend, against numbers worked out by hand,
and with the `embedding` backend on a tiny random BERT built here (no network), against a hand
computation with the same model.
"""

from __future__ import annotations

import polars as pl
import pytest

from cotransfer.ii_metrics import ii_consistency
from cotransfer.similarity import get_backend

KEYS = ["dataset", "condition", "variant", "cot_source", "evaluator_a", "evaluator_b"]
BIG, LARGER, PICK = "write the bigger animal", "write the larger animal", "pick the larger animal"
REV, REVW, OUT = "reverse the word", "reverse word", "output the animal"

# (condition, variant, cot_source, item_id, sample, evaluator, answer, valid)
ROWS = [
    # empty: larger_animal has two items, reverse_word one, so the mean over tasks is not the
    # mean over items; e3 answers "ab" (valid, but shorter than 3 characters) and then nothing
    ("empty", None, None, "larger_animal:1", 0, "e1", BIG, True),
    ("empty", None, None, "larger_animal:1", 0, "e2", BIG, True),
    ("empty", None, None, "larger_animal:1", 0, "e3", "ab", True),
    ("empty", None, None, "larger_animal:2", 0, "e1", PICK, True),
    ("empty", None, None, "larger_animal:2", 0, "e2", BIG, True),
    ("empty", None, None, "larger_animal:2", 0, "e3", None, False),
    ("empty", None, None, "reverse_word:1", 0, "e1", REV, True),
    ("empty", None, None, "reverse_word:1", 0, "e2", REV, True),
    ("empty", None, None, "reverse_word:1", 0, "e3", REV, True),
    # transfer from e1, full: e3 has no larger_animal row
    ("transfer", "full", "e1", "larger_animal:1", 0, "e1", OUT, True),
    ("transfer", "full", "e1", "larger_animal:1", 0, "e2", OUT, True),
    ("transfer", "full", "e1", "reverse_word:1", 0, "e1", REV, True),
    ("transfer", "full", "e1", "reverse_word:1", 0, "e2", REVW, True),
    ("transfer", "full", "e1", "reverse_word:1", 0, "e3", REVW, True),
    # sampled, stripped: joined sample by sample; e1 lacks reverse_word:1 sample 1
    ("sampled", "stripped", None, "larger_animal:1", 0, "e1", BIG, True),
    ("sampled", "stripped", None, "larger_animal:1", 0, "e2", BIG, True),
    ("sampled", "stripped", None, "larger_animal:1", 1, "e1", BIG, True),
    ("sampled", "stripped", None, "larger_animal:1", 1, "e2", LARGER, True),
    ("sampled", "stripped", None, "reverse_word:1", 0, "e1", REV, True),
    ("sampled", "stripped", None, "reverse_word:1", 0, "e2", REV, True),
    ("sampled", "stripped", None, "reverse_word:1", 1, "e2", REVW, True),
    # default, full: the two evaluators share no item
    ("default", "full", None, "larger_animal:1", 0, "e1", BIG, True),
    ("default", "full", None, "reverse_word:1", 0, "e2", REV, True),
]


def answers() -> pl.DataFrame:
    cols = ["condition", "variant", "cot_source", "item_id", "sample", "evaluator", "answer", "valid"]
    df = pl.DataFrame([dict(zip(cols, r)) for r in ROWS],
                      schema={"condition": pl.String, "variant": pl.String, "cot_source": pl.String,
                              "item_id": pl.String, "sample": pl.Int64, "evaluator": pl.String,
                              "answer": pl.String, "valid": pl.Boolean})
    return df.with_columns(dataset=pl.lit("ii"), correct=pl.lit(False),
                           score=pl.lit(0.0), category=pl.lit(None, pl.String))


# (condition, variant, cot_source, a, b) -> (n, exact consistency), worked out by hand:
# a row scores 1 when both answers are valid, >= 3 characters and equal; mean per task, then over tasks
EXACT = {
    ("default", "full", None, "e1", "e2"): (0, None),
    ("empty", None, None, "e1", "e2"): (3, ((1 + 0) / 2 + 1) / 2),  # 0.75 (per item: 2/3)
    ("empty", None, None, "e1", "e3"): (3, ((0 + 0) / 2 + 1) / 2),  # "ab" and the invalid answer score 0
    ("empty", None, None, "e2", "e3"): (3, ((0 + 0) / 2 + 1) / 2),
    ("sampled", "stripped", None, "e1", "e2"): (3, ((1 + 0) / 2 + 1) / 2),
    ("transfer", "full", "e1", "e1", "e2"): (2, (1 + 0) / 2),
    ("transfer", "full", "e1", "e1", "e3"): (1, 0.0),
    ("transfer", "full", "e1", "e2", "e3"): (1, 1.0),
}


def as_dict(out: pl.DataFrame, definition: str) -> dict:
    rows = out.filter(pl.col("definition") == definition).iter_rows(named=True)
    return {tuple(r[k] for k in KEYS[1:]): (r["n"], r["consistency"]) for r in rows}


def approx(expected: dict, abs=1e-9) -> dict:
    return {k: (n, None if v is None else pytest.approx(v, abs=abs)) for k, (n, v) in expected.items()}


def test_exact_backend_numbers():
    out = ii_consistency(answers(), get_backend({}))
    assert out.columns == [*KEYS, "n", "consistency", "definition"]
    assert out.schema["n"] == pl.Int64 and out.schema["consistency"] == pl.Float64
    assert out["definition"].to_list() == ["paper"] * len(EXACT) + ["strict"] * len(EXACT)
    assert set(out["dataset"]) == {"ii"}
    assert as_dict(out, "paper") == approx(EXACT)
    assert as_dict(out, "strict") == approx(EXACT)  # exact similarity is equality
    # sorted by the keys (nulls last), evaluator_a < evaluator_b
    paper = out.filter(pl.col("definition") == "paper")
    assert paper.equals(paper.sort(KEYS, nulls_last=True))
    assert (out["evaluator_a"] < out["evaluator_b"]).all()


def test_lazy_input_and_column_order_do_not_matter():
    df = answers()
    expected = ii_consistency(df, get_backend({}))
    assert ii_consistency(df.reverse().select(reversed(df.columns)).lazy(), get_backend({})).equals(expected)


def test_one_dataset_at_a_time():
    df = answers()
    with pytest.raises(ValueError, match=r"one dataset at a time.*\['ii', 'ii2'\]"):
        ii_consistency(pl.concat([df, df.with_columns(dataset=pl.lit("ii2"))]), get_backend({}))


def test_duplicate_rows_are_an_error():
    df = answers()
    with pytest.raises(ValueError, match="duplicate keys"):
        ii_consistency(pl.concat([df, df.head(1)]), get_backend({}))


def test_empty_table():
    out = ii_consistency(answers().head(0), get_backend({}))
    assert out.is_empty() and out.columns == [*KEYS, "n", "consistency", "definition"]


# -- embedding backend, end to end on a tiny local model ----------------------------------------------


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    from test_similarity import build_tiny_bert

    folder = build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
    return get_backend({"similarity": "embedding", "similarity_threshold": 0.5, "similarity_model": str(folder),
                        "similarity_device": "cpu"})


def by_hand(rows, same) -> dict:
    """8.3 in plain Python over ROWS: `same(a, b)` scores two answers that both count."""
    by_key = {}
    for cond, variant, source, item_id, sample, ev, answer, valid in rows:
        ok = answer if valid and answer is not None and len(answer) >= 3 else None
        by_key.setdefault((cond, variant, source), {}).setdefault((item_id, sample), {})[ev] = ok
    out = {}
    for group, cells in by_key.items():
        evaluators = sorted({ev for answers_ in cells.values() for ev in answers_})
        for i, a in enumerate(evaluators):
            for b in evaluators[i + 1:]:
                per_task = {}
                for (item_id, _), answers_ in cells.items():
                    if a in answers_ and b in answers_:
                        x, y = answers_[a], answers_[b]
                        score = 0.0 if x is None or y is None else same(x, y)
                        per_task.setdefault(item_id.split(":")[0], []).append(score)
                n = sum(len(v) for v in per_task.values())
                value = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task) if per_task else None
                out[(*group, a, b)] = (n, value)
    return out


def test_by_hand_reproduces_the_exact_numbers():
    assert by_hand(ROWS, lambda x, y: float(x == y)) == approx(EXACT)


def test_embedding_backend_end_to_end(embedding, monkeypatch):
    def cosine(x, y):  # each text embedded alone, not in the metric's batch
        return max(0.0, float(embedding.embed([x])[0] @ embedding.embed([y])[0]))

    calls = []
    real = embedding.pair_similarity
    monkeypatch.setattr(embedding, "pair_similarity", lambda a, b: calls.append(list(zip(a, b))) or real(a, b))
    out = ii_consistency(answers(), embedding)
    expected = by_hand(ROWS, cosine)
    assert as_dict(out, "paper") == approx(expected, abs=1e-5)
    assert as_dict(out, "strict") == approx(EXACT)
    # the similarity is graded: pairs with different answers score strictly between 0 and 1
    paper = as_dict(out, "paper")
    assert 0.5 < paper[("empty", None, None, "e1", "e2")][1] < 1.0
    assert paper[("transfer", "full", "e1", "e1", "e2")][1] > EXACT[("transfer", "full", "e1", "e1", "e2")][1]
    # one batched backend call over the distinct unordered pairs of valid answers
    assert len(calls) == 1
    pairs = calls[0]
    assert len(pairs) == len({frozenset(p) for p in pairs})
    assert {frozenset(p) for p in pairs} == {frozenset(p) for p in [(BIG, BIG), (BIG, PICK), (REV, REV), (OUT, OUT),
                                                                      (REV, REVW), (REVW, REVW), (BIG, LARGER)]}


def test_the_pipeline_metric_step_uses_the_configured_embedding_backend(embedding, demo_config, tmp_path):
    """End to end through the aggregate step's metric call (`stages.metric_tables`): a config with
    an Instruction Induction dataset on the `embedding` backend gets §8.3 consistency for it (the
    graded similarity, not equality), while the toy dataset keeps the §8.1 rule; both land in one
    consistency table, and accuracy is the mean score."""
    from conftest import ROOT

    from cotransfer import stages
    from cotransfer.config import Study, validate

    demo_config["datasets"]["ii"] = {
        "adapter": "instruction_induction", "path": str(ROOT / "tests/fixtures/instruction_induction"), "seed": 0,
        "options": {"similarity": "embedding", "similarity_threshold": 0.5, "similarity_device": "cpu",
                    "similarity_model": str(embedding.model)}}
    study = Study.from_dict(validate(demo_config))
    toy = pl.DataFrame({"dataset": "toyarith", "item_id": ["t0", "t0"], "condition": "empty", "variant": None,
                        "cot_source": None, "evaluator": ["e1", "e2"], "sample": 0, "answer": ["4", "5"],
                        "valid": True, "correct": [True, False], "score": [1.0, 0.0], "category": None},
                       schema_overrides={"variant": pl.String, "cot_source": pl.String, "category": pl.String,
                                         "sample": pl.Int64})
    ii = answers().with_columns(score=pl.when(pl.col("valid")).then(0.75).otherwise(0.0))
    tables = stages.metric_tables(study, pl.concat([toy, ii.select(toy.columns)]), bootstrap=0, permutations=0, seed=0)
    cons = tables["consistency"]
    paper = as_dict(cons.filter(pl.col("dataset") == "ii"), "paper")
    assert 0.5 < paper[("empty", None, None, "e1", "e2")][1] < 1.0  # graded similarity
    assert as_dict(cons.filter(pl.col("dataset") == "ii"), "strict") == approx(EXACT)
    assert cons.filter(dataset="toyarith", definition="paper")["consistency"].to_list() == [0.0]
    acc = tables["accuracy"].filter(dataset="ii", condition="empty", evaluator="e1")
    assert acc["accuracy"].item() == pytest.approx(0.75)  # the mean score, not a thresholded boolean
    tasks = tables["ii_task_consistency"].filter(condition="empty", evaluator_a="e1", evaluator_b="e2",
                                                 definition="strict")
    assert dict(zip(tasks["task"], tasks["consistency"])) == {"larger_animal": 0.5, "reverse_word": 1.0}
    # F11 is drawn from these tables (consistency per condition and the per-task heatmap)
    from cotransfer import figures

    drawn = figures.render_all({k: v for k, v in tables.items()}, tmp_path / "fig", ii_datasets=["ii"])
    assert {p.name for p in drawn["F11"]} >= {"ii_consistency.png", "ii_tasks.png", "ii_tasks_strict.pdf",
                                              "ii_accuracy.png"}
    acc = tables["ii_task_accuracy"].filter(condition="empty", evaluator="e3")  # e3's second answer is invalid
    assert dict(zip(acc["task"], acc["accuracy"])) == {"larger_animal": pytest.approx(0.375), "reverse_word": 0.75}
