"""Prefix transfer and sentence importance (docs/probe.md): the cutting rule, the drop-one
construction, and the tables on hand-built answers."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotransfer import metrics
from cotransfer.config import ConfigError, ProbeSpec
from cotransfer.probe import FULL, drop_one_cots, drop_sentence, importance_items, prefix_cots, prefix_cut, spans_by_cot
from cotransfer.probe_metrics import (importance_correlation, prefix_summary, prefix_transfer,
                                      sentence_importance)
from cotransfer.sentences import split

COT = "First, 6-1=5. Then 5-9=6.\n\nSo 6-7=9. Done."  # 4 sentences, ends 13, 25, 36, 42


# -- the cutting rule ----------------------------------------------------------------------------


def test_prefix_cut_rounds_to_the_nearest_sentence_end():
    ss = split(COT)
    ends = [s.end for s in ss]
    assert ends == [13, 25, 36, 42]
    assert prefix_cut(COT, ss, 0.0) == 0
    assert prefix_cut(COT, ss, 1.0) == len(COT)
    assert prefix_cut(COT, ss, 0.1) == 0  # 4.2 chars: nearer to 0 than to 13
    assert prefix_cut(COT, ss, 0.2) == 13  # 8.4
    assert prefix_cut(COT, ss, 0.5) == 25  # 21
    assert prefix_cut(COT, ss, 0.8) == 36  # 33.6
    assert prefix_cut(COT, ss, 0.95) == 42  # 39.9: the last sentence's end, not the text's


def test_prefix_cut_tie_goes_to_the_longer_prefix():
    cot = "ab. cd."  # ends 3 and 7
    ss = split(cot)
    assert prefix_cut(cot, ss, 5 / 7) == 7  # 5 chars: 2 from both 3 and 7
    with pytest.raises(ValueError):
        prefix_cut(cot, ss, 1.5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["4+1=5.", "so x is 3!", "Then we add", "ok?", "\n", " ", "Step 2. Carry."]),
                min_size=0, max_size=12),
       st.floats(min_value=0, max_value=1))
def test_prefix_is_never_cut_inside_a_sentence(parts, fraction):
    cot = " ".join(parts)
    ss = split(cot)
    cut = prefix_cut(cot, ss, fraction)
    assert cut in {0, len(cot), *(s.end for s in ss)}
    assert not any(s.start < cut < s.end for s in ss)
    kept = cot[:cut]
    assert [s.text for s in ss if s.end <= cut] == [s.text for s in split(kept)] or cut == len(cot)


def test_prefix_cots_table():
    cots = pl.DataFrame({"dataset": ["d", "d"], "item_id": ["a", "b"], "sample": [0, 0], "cot_source": ["m", "m"],
                         "cot": [COT, ""]})
    sents = _sentence_table(cots)
    out = prefix_cots(cots, spans_by_cot(sents), [0.0, 0.5, 1.0])
    assert out.columns == ["item_id", "sample", "cot", "fraction", "kept_share"]
    a = out.filter(pl.col("item_id") == "a")
    assert a["cot"].to_list() == ["", COT[:25], COT]
    assert a["kept_share"].to_list() == [0.0, 25 / len(COT), 1.0]
    assert out.filter(pl.col("item_id") == "b")["cot"].to_list() == ["", "", ""]


def test_mismatched_sentence_table_names_the_source_and_item():
    cots = pl.DataFrame({"dataset": ["d"], "item_id": ["a"], "sample": [0], "cot_source": ["m"], "cot": [COT]})
    sents = _sentence_table(cots.with_columns(cot=pl.lit("Other text. Here.")))
    with pytest.raises(ValueError, match=r"m, item a: the sentence table does not match"):
        prefix_cots(cots, spans_by_cot(sents), [0.5])


# -- the drop-one construction -------------------------------------------------------------------


def test_drop_sentence_keeps_every_other_sentence_in_order():
    ss = split(COT)
    assert drop_sentence(COT, ss, 0) == "Then 5-9=6.\n\nSo 6-7=9. Done."
    assert drop_sentence(COT, ss, 1) == "First, 6-1=5. So 6-7=9. Done."
    assert drop_sentence(COT, ss, 3) == "First, 6-1=5. Then 5-9=6.\n\nSo 6-7=9."
    assert drop_sentence("Only one.", split("Only one."), 0) == ""
    with pytest.raises(IndexError):
        drop_sentence(COT, ss, 4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["4+1=5.", "so x is 3!", "Then we add", "ok?", "\n\n", " ", "Dr. Smith came."]),
                min_size=1, max_size=10))
def test_drop_one_is_an_ordered_subset_of_spans(parts):
    cot = " ".join(parts)
    ss = split(cot)
    for i in range(len(ss)):
        text = drop_sentence(cot, ss, i)
        rest = [s.text for j, s in enumerate(ss) if j != i]
        pos = 0  # every other sentence appears, verbatim and in order
        for t in rest:
            k = text.find(t, pos)
            assert k >= 0, (cot, i, text, t)
            pos = k + len(t)
        # and nothing else but the whitespace between them
        leftover = text
        for t in rest:
            leftover = leftover.replace(t, "", 1)
        assert leftover.strip() == "" and len(text) < len(cot)


def test_drop_one_cots_table():
    cots = pl.DataFrame({"dataset": ["d"] * 3, "item_id": ["a", "b", "c"], "sample": [0, 0, 0],
                         "cot_source": ["m"] * 3, "cot": [COT, "One. Two.", "Skip me."]})
    spans = spans_by_cot(_sentence_table(cots))
    out = drop_one_cots(cots, spans, ["a", "b"], samples=2)
    assert set(out["item_id"]) == {"a", "b"}
    a0 = out.filter((pl.col("item_id") == "a") & (pl.col("sample") == 0))
    assert a0["dropped"].to_list() == [FULL, 0, 1, 2, 3]
    assert a0["cot"][0] == COT and a0["dropped_text"][0] is None
    assert a0["dropped_text"].to_list()[1:] == [s.text for s in split(COT)]
    assert a0["n_sentences"].unique().to_list() == [4]
    assert out.filter(pl.col("item_id") == "b").height == 2 * 3
    assert out.select("item_id", "sample", "dropped").is_duplicated().sum() == 0


def test_importance_items_is_a_seeded_subset():
    ids = [f"i{k:03d}" for k in range(50)]
    pick = importance_items(ids, 20, seed=3)
    assert len(pick) == 20 and pick == sorted(pick) and set(pick) <= set(ids)
    assert pick == importance_items(list(reversed(ids)), 20, seed=3)
    assert pick != importance_items(ids, 20, seed=4)
    assert importance_items(ids, None, 3) == ids == importance_items(ids, 80, 3)


# -- config --------------------------------------------------------------------------------------


def test_probe_config():
    spec = ProbeSpec.from_config(None, None)
    assert spec.prefix and spec.importance and spec.fractions[-1] == 1.0 and spec.importance_items == 20
    assert ProbeSpec.from_config({}, {"n_items": "all"}).importance_items is None
    for bad, msg in (([0.5, 0.2, 1.0], "increasing"), ([0, 0.5], "must include 1.0"), ([0, 1.2, 1.0], r"\[0, 1\]")):
        with pytest.raises(ConfigError, match=rf"prefix.fractions: .*{msg}"):
            ProbeSpec.from_config({"fractions": bad}, None)
    with pytest.raises(ConfigError, match="importance.n_items"):
        ProbeSpec.from_config(None, {"n_items": 0})
    off = ProbeSpec.from_config({"enabled": False, "fractions": [0.5]}, {"enabled": False})
    assert not off.enabled and off.params() == {"prefix": False, "importance": False}


# -- the tables on hand-built answers ------------------------------------------------------------


def _sentence_table(cots: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for r in cots.iter_rows(named=True):
        for s in split(r["cot"] or ""):
            rows.append({"item_id": r["item_id"], "sample": r["sample"], "sentence_idx": s.index,
                         "char_start": s.start, "char_end": s.end, "text": s.text})
    return pl.DataFrame(rows, schema={"item_id": pl.String, "sample": pl.Int64, "sentence_idx": pl.Int64,
                                      "char_start": pl.Int64, "char_end": pl.Int64, "text": pl.String})


def _row(item, condition, evaluator, answer, *, source=None, fraction=None, dropped=None, sample=0, text=None,
         n=None, gold="9"):
    return {"dataset": "d", "item_id": item, "condition": condition,
            "variant": None if condition == "empty" else "full", "cot_source": source, "evaluator": evaluator,
            "sample": sample, "fraction": fraction, "dropped": dropped, "answer": answer,
            "valid": answer is not None, "correct": answer == gold, "kept_share": fraction,
            "dropped_text": text, "n_sentences": n}


SCHEMA = {"dataset": pl.String, "item_id": pl.String, "condition": pl.String, "variant": pl.String,
          "cot_source": pl.String, "evaluator": pl.String, "sample": pl.Int64, "fraction": pl.Float64,
          "dropped": pl.Int64, "answer": pl.String, "valid": pl.Boolean, "correct": pl.Boolean,
          "kept_share": pl.Float64, "dropped_text": pl.String, "n_sentences": pl.Int64}


def _prefix_answers() -> pl.DataFrame:
    """Source A (answers 9 on items 1-4, invalid on item 5); readers A, B, C.
    B agrees with A on 0/4, 2/4, 4/4 items at fractions 0, 0.5, 1 (never on item 5, where A is
    invalid and B answers 9 too: an invalid source answer is a disagreement); C agrees on 1/4, 1/4, 3/4."""
    rows = [_row(f"i{k}", "default", "A", "9" if k < 5 else None) for k in range(1, 6)]
    agree = {("B", 0.0): 0, ("B", 0.5): 2, ("B", 1.0): 4, ("C", 0.0): 1, ("C", 0.5): 1, ("C", 1.0): 3,
             ("A", 0.0): 0, ("A", 0.5): 4, ("A", 1.0): 4}
    for (reader, f), n_agree in agree.items():
        for k in range(1, 6):
            answer = "9" if (k <= n_agree or k == 5) else str(k)
            rows.append(_row(f"i{k}", "prefix", reader, answer, source="A", fraction=f))
    return pl.DataFrame(rows, schema=SCHEMA)


def test_prefix_transfer_table():
    answers = _prefix_answers()
    t = prefix_transfer(answers, bootstrap=200, seed=0)
    got = {(r["evaluator"], r["fraction"]): r for r in t.iter_rows(named=True)}
    assert got[("B", 0.0)]["source_agreement"] == 0.0
    assert got[("B", 0.5)]["source_agreement"] == pytest.approx(2 / 5)
    assert got[("B", 1.0)]["source_agreement"] == pytest.approx(4 / 5)
    assert got[("C", 1.0)]["source_agreement"] == pytest.approx(3 / 5)
    assert all(r["n"] == 5 for r in got.values())
    # accuracy: gold 9, so item 5's "9" is correct even though it is a disagreement
    assert got[("B", 0.0)]["accuracy"] == pytest.approx(1 / 5)
    # transfer point: the first fraction at >= 90% of the value at 1.0
    assert got[("B", 0.0)]["transfer_point"] == 1.0  # 0.4 < 0.72
    assert got[("A", 0.0)]["transfer_point"] == 0.5
    assert got[("C", 0.0)]["transfer_point"] == 1.0  # 0.2 < 0.54
    b = got[("B", 0.5)]
    assert b["agreement_lo"] <= b["source_agreement"] <= b["agreement_hi"] and b["agreement_lo"] < b["agreement_hi"]
    assert got[("B", 0.0)]["agreement_lo"] == got[("B", 0.0)]["agreement_hi"] == 0.0
    assert prefix_transfer(answers, bootstrap=200, seed=0).equals(t)  # seeded
    assert prefix_transfer(answers, bootstrap=0)["agreement_lo"].null_count() == t.height


def test_prefix_summary_table():
    answers = _prefix_answers()
    s = prefix_summary(answers, prefix_transfer(answers, bootstrap=0))
    one = s.filter(pl.col("fraction") == 1.0).row(0, named=True)
    assert one["n_readers"] == 3
    assert one["mean_agreement"] == pytest.approx((4 + 4 + 3) / 15)
    assert one["mean_agreement_others"] == pytest.approx((4 + 3) / 10)
    # consistency (paper: equal answers or both correct) over the 3 reader pairs, 5 items each
    cons = metrics.consistency(answers.filter(pl.col("condition") == "prefix"))
    f1 = cons.filter(pl.col("condition") == "prefix@1.0")
    assert f1.height == 3 and one["n_pairs"] == 3
    assert one["consistency"] == pytest.approx(f1["consistency"].mean())


def test_probe_rows_fold_into_their_own_condition_groups():
    answers = _prefix_answers()
    # without folding, three fractions share one answer key: the table would be refused
    with pytest.raises(ValueError, match="duplicate keys"):
        metrics.validate_answers(answers.drop("fraction", "dropped"))
    groups = set(metrics.prepare_answers(answers).groups["condition"])
    assert groups == {"default", "prefix@0.0", "prefix@0.5", "prefix@1.0"}


def _importance_answers(samples: int = 1) -> pl.DataFrame:
    """Source A's CoT on items x, y: 3 sentences, the last states the answer 9. Reader B loses
    the answer without the last sentence only; reader C without sentences 0 and 2."""
    texts = ["6-1=5.", "5-9=6.", "6-7=9."]
    rows = []
    for item in ("x", "y"):
        rows.append(_row(item, "default", "A", "9"))
        for reader, hurts in (("B", {2}), ("C", {0, 2})):
            for s in range(samples):
                rows.append(_row(item, "drop_one", reader, "9", source="A", dropped=FULL, sample=s, n=3))
                for i, t in enumerate(texts):
                    wrong = i in hurts and not (samples > 1 and s == 0 and i == 0)
                    rows.append(_row(item, "drop_one", reader, "6" if wrong else "9", source="A", dropped=i,
                                     sample=s, text=t, n=3))
    return pl.DataFrame(rows, schema=SCHEMA)


def test_sentence_importance_table():
    imp = sentence_importance(_importance_answers())
    assert imp.height == 2 * 2 * 3
    b = imp.filter(pl.col("evaluator") == "B").group_by("sentence_idx").agg(pl.col("importance").mean()).sort("sentence_idx")
    assert b["importance"].to_list() == [0.0, 0.0, 1.0]
    assert imp.filter(pl.col("sentence_idx") == 2)["states_answer"].all()
    assert not imp.filter(pl.col("sentence_idx") < 2)["states_answer"].any()
    assert sorted(set(imp["position"])) == [0.0, 0.5, 1.0]
    # several samples: importance is the drop of the per-sample mean agreement
    imp2 = sentence_importance(_importance_answers(samples=2))
    c0 = imp2.filter((pl.col("evaluator") == "C") & (pl.col("sentence_idx") == 0))
    assert c0["importance"].to_list() == [0.5, 0.5] and c0["n_samples"].to_list() == [2, 2]


def test_importance_correlation_table():
    imp = sentence_importance(_importance_answers())
    corr = importance_correlation(imp)
    row = corr.row(0, named=True)
    assert (row["evaluator_a"], row["evaluator_b"], row["kind"], row["n"]) == ("B", "C", "others", 6)
    # B: 0,0,1 per item; C: 1,0,1: Spearman of the ranks
    assert row["spearman"] == pytest.approx(0.5)
    # a reader with constant importance has no rank correlation
    flat = imp.with_columns(importance=pl.when(pl.col("evaluator") == "B").then(0.0).otherwise(pl.col("importance")))
    assert importance_correlation(flat)["spearman"].to_list() == [None]
    # the source reading its own CoT is a `self` pair
    selfish = pl.concat([imp, imp.filter(pl.col("evaluator") == "B").with_columns(evaluator=pl.lit("A"))])
    kinds = dict(zip(zip(*importance_correlation(selfish).select("evaluator_a", "evaluator_b")), importance_correlation(selfish)["kind"]))
    assert kinds[("A", "B")] == "self" and kinds[("B", "C")] == "others"
    assert not any(math.isnan(v) for v in corr["spearman"].drop_nulls())


def test_no_probe_rows_give_empty_tables():
    plain = _prefix_answers().filter(pl.col("condition") == "default").drop("fraction", "dropped")
    assert prefix_transfer(plain).is_empty() and sentence_importance(plain).is_empty()


def test_each_probe_can_be_switched_off(demo_config):
    """prefix.enabled / importance.enabled: the probe job's outputs, the tables and the figures
    follow the switches; with both off there is no probe job at all."""
    from cotransfer import plan
    from cotransfer.config import Study, validate

    def study(prefix: bool, importance: bool) -> Study:
        cfg = {**demo_config, "prefix": {"enabled": prefix}, "importance": {"enabled": importance}}
        return Study.from_dict(validate(cfg, inputs=False))

    both = study(True, True)
    assert {c.condition for c in plan.prefill_cells(both, "probe")} == {"prefix", "drop_one"}
    assert len(plan.prefill_cells(both, "probe")) == 2 * len(both.models)
    assert {"prefix_transfer", "sentence_importance"} <= set(plan.metric_tables(both))
    no_prefix = study(False, True)
    assert {c.condition for c in plan.prefill_cells(no_prefix, "probe")} == {"drop_one"}
    assert "prefix_transfer" not in plan.metric_tables(no_prefix) and "sentence_importance" in plan.metric_tables(no_prefix)
    assert plan.figures_planned(no_prefix)["prefix_transfer"] and plan.figures_planned(no_prefix)["sentence_importance"] is None
    off = study(False, False)
    assert plan.prefill_cells(off, "probe") == [] and plan.probe_sentences(off, "results", "toyarith") == []
    assert not {"prefix_transfer", "prefix_summary", "sentence_importance", "importance_correlation"} & set(
        plan.metric_tables(off))


# -- the probe's units through the inference run --------------------------------------------------


def _scripted_job(demo_config, counting):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_malformed import Scripted

    from cotransfer.config import Study, validate
    from cotransfer.engine import Completion
    from cotransfer.inference import Job

    class Counting(Scripted):
        def count_tokens(self, text):
            counting.append(text)
            return super().count_tokens(text)

    study = Study.from_dict(validate({**demo_config, "datasets": {"toyarith": {
        **demo_config["datasets"]["toyarith"], "decoding": {"max_input_tokens": 4096}}}}, inputs=False))
    return Job(study, "toyarith", "toy_dapo", Counting(Completion("x", 1, "stop"), Completion("The answer is 7.", 5, "stop")))


ITEMS = [{"item_id": f"t{k}", "system": None, "user": f"Start with {k}. Add 4."} for k in range(3)]


def test_a_jobs_cells_share_their_rendered_prompts(demo_config):
    """Every cell of a prefill job (each source and variant, each probe) renders and checks the
    same prompts: once per job, not once per cell."""
    from cotransfer.inference import prefill_units

    counted: list[str] = []
    job = _scripted_job(demo_config, counted)
    cots = pl.DataFrame({"item_id": ["t0", "t1", "t2"], "sample": [0, 0, 0], "cot": ["a. b.", "c.", "d. e."]})
    for source in ("m1", "m2", "m3"):
        prefill_units(job, ITEMS, cots, condition="transfer", variant="full", cot_source=source)
    prompt_checks = [t for t in counted if t.startswith("<")]  # the max_input_tokens check of whole prompts
    assert len(prompt_checks) == len(ITEMS)


def test_probe_columns_survive_a_source_without_a_cot(demo_config):
    """An item the source has no CoT for is one flagged row; its output keeps the probe's
    columns whichever unit comes last."""
    from cotransfer.inference import prefill_units, run

    job = _scripted_job(demo_config, [])
    cots = pl.DataFrame({"item_id": ["t0", "t1"], "sample": [0, 0], "cot": ["a. b.", "c."]})  # none for t2
    frame = prefix_cots(cots.with_columns(cot_source=pl.lit("m")), spans_by_cot(_sentence_table(
        cots.with_columns(cot_source=pl.lit("m")))), [0.0, 1.0])
    units = prefill_units(job, ITEMS, frame, condition="prefix", variant="full", cot_source="m",
                          prompt_condition="transfer")
    assert units[-1].missing_cot and units[-1].extra == ()
    out = run(job, units)[("prefix", "full", "m")]
    assert {"fraction", "kept_share"} <= set(out.columns)
    assert out.filter(pl.col("item_id") == "t2")["flag"].to_list() == ["no_source_cot"]
    assert out.filter(pl.col("item_id") == "t0")["fraction"].to_list() == [0.0, 1.0]
