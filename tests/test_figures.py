"""Unit tests for cotransfer.figures.

The tables are built by hand, following the metric tables' spec. Each figure's test reads the
drawn numbers back from the Figure (bar heights, heatmap arrays) and compares them with the
table, so a figure that draws the wrong column or the wrong group fails."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from cotransfer import figures as F

EVALUATORS = ["dapo", "oss", "qwq"]
SOURCES = ["oss", "qwq"]
ENSEMBLE = "qwq_dapo__oss"
GROUPS = ([("empty", None, None)] + [(c, v, None) for c in ("default", "sampled") for v in ("full", "stripped")]
          + [("transfer", v, s) for s in SOURCES for v in ("full", "stripped")]
          + [("ensemble", v, ENSEMBLE) for v in ("full", "stripped")])
PAIRS = list(itertools.combinations(EVALUATORS, 2))
GROUP_COLS = ["dataset", "condition", "variant", "cot_source"]


def _key(g):
    return dict(zip(GROUP_COLS, ("medcalc", *g)))


def make_consistency(dataset="medcalc"):
    rng = np.random.default_rng(len(dataset))  # the II copy differs from medcalc
    rows = []
    for g in GROUPS:
        for a, b in PAIRS:
            paper = float(np.round(rng.uniform(0.4, 0.9), 3))
            for definition, value in (("paper", paper), ("strict", paper - 0.1)):
                rows.append({**_key(g), "dataset": dataset, "evaluator_a": a, "evaluator_b": b, "n": 20,
                             "consistency": value, "definition": definition})
    return pl.DataFrame(rows)


def make_summary(cons):
    return (cons.group_by(*GROUP_COLS, "definition", maintain_order=True)
            .agg(n_pairs=pl.len(), mean=pl.col("consistency").mean(), std=pl.col("consistency").std(ddof=0))
            .with_columns(stderr=pl.col("std") / pl.col("n_pairs").sqrt(),
                          ci_low=pl.col("mean") - 0.05, ci_high=pl.col("mean") + 0.05))


def make_accuracy():
    rows = []
    for k, (g, ev) in enumerate(itertools.product(GROUPS, EVALUATORS)):
        p = (k % 7) / 10 + 0.2
        rows.append({**_key(g), "evaluator": ev, "n": 20, "n_expected": 20, "n_missing": 0, "n_valid": 19,
                     "n_correct": int(p * 20), "accuracy": p, "se": math.sqrt(p * (1 - p) / 20),
                     "ci_low": p - 0.1, "ci_high": p + 0.1})
    return pl.DataFrame(rows)


def make_breakdown():
    rows = []
    for k, g in enumerate(GROUPS):
        counts = [k + 1, 2, 1, 3, 4]
        for cat, n in zip(F.BREAKDOWN_CATEGORIES, counts):
            rows.append({**_key(g), "category": cat, "n": n, "share": n / sum(counts), "n_rows": sum(counts),
                         "same_diff_correctness": 0})
    return pl.DataFrame(rows)


def make_self_consistency():
    rows = []
    combos = itertools.product(EVALUATORS, ("full", "stripped"), ("paper", "strict"))
    for k, (ev, variant, definition) in enumerate(combos):
        rate = 0.3 + 0.05 * k
        rows.append({"dataset": "medcalc", "evaluator": ev, "variant": variant, "definition": definition, "n": 18,
                     "rate": rate, "ci_low": rate - 0.1, "ci_high": rate + 0.1})
    return pl.DataFrame(rows)


def make_transitions():
    rows = []
    for g in GROUPS[1:]:
        for j, ev in enumerate(EVALUATORS):
            counts = [2 + j, 5, 8, 1, 4 - j]
            for cat, n in zip(F.TRANSITION_CATEGORIES, counts):
                rows.append({**_key(g), "evaluator": ev, "category": cat, "n": n, "share": n / 20})
    return pl.DataFrame(rows)


def make_involvement():
    rows = []
    combos = [("transfer", s, "source") for s in SOURCES] + [
        ("ensemble", "dapo,qwq", "source"), ("ensemble", "dapo,oss,qwq", "creator")]
    for k, ((condition, creators, version), variant, involved, definition) in enumerate(
            itertools.product(combos, ("full", "stripped"), (True, False), ("paper", "strict"))):
        rows.append({"dataset": "medcalc", "condition": condition, "variant": variant, "creators": creators,
                     "version": version, "involved": involved, "definition": definition,
                     "n_pairs": 2 if involved else 1, "mean": 0.2 + 0.01 * k, "stderr": 0.05})
    return pl.DataFrame(rows)


def make_post_training(tags=("base", "grpo", "base", "grpo")):
    rows = []
    for k, ((source, tag), variant, definition) in enumerate(itertools.product(
            zip(["llama", "llama_grpo", "qwen", "qwen_grpo"], tags), ("full", "stripped"), ("paper", "strict"))):
        rows.append({"dataset": "medcalc", "variant": variant, "source": source, "post_training": tag,
                     "n_targets": 3, "target_accuracy": 0.1 + 0.02 * k, "agreement": 0.5 + 0.01 * k,
                     "definition": definition})
    return pl.DataFrame(rows)


def make_preference():
    sources = ["dapo_transfer", "ens_a", "oss_transfer"]
    criteria = ["Clarity of Steps", "Best overall"]
    means = pl.DataFrame([{"source": s, "criterion": c, "n": 30, "mean": 2.0 + i + 0.5 * j, "sd": 0.5}
                          for i, s in enumerate(sources) for j, c in enumerate(criteria)])
    tests = pl.DataFrame([
        {"criterion": "Clarity of Steps", "source_a": "dapo_transfer", "source_b": "oss_transfer", "test": "t_test",
         "statistic": 5.0, "p_value": 0.0001, "p_adjusted": 0.0003, "cohens_d": 1.2},
        {"criterion": "Clarity of Steps", "source_a": "dapo_transfer", "source_b": "ens_a", "test": "t_test",
         "statistic": 1.0, "p_value": 0.3, "p_adjusted": 0.9, "cohens_d": 0.2},
        {"criterion": "Best overall", "source_a": "ens_a", "source_b": "oss_transfer", "test": "t_test",
         "statistic": 3.0, "p_value": 0.004, "p_adjusted": 0.012, "cohens_d": 0.8},
        {"criterion": "Best overall", "source_a": "ens_a", "source_b": "oss_transfer", "test": "wilcoxon",
         "statistic": 3.0, "p_value": 0.004, "p_adjusted": 0.012, "cohens_d": None}])
    correlation = pl.DataFrame([{"variant": "stripped", "metric": "consistency", "pearson_r": 0.87,
                                 "spearman_rho": 0.5, "ci_low": 0.1, "ci_high": 0.99, "n_sources": 3}])
    points = pl.DataFrame([{"source": s, "criterion": c, "mean_rating": 2.0 + i + 0.5 * j, "consistency": 0.5 + 0.1 * i}
                           for i, s in enumerate(sources) for j, c in enumerate(criteria)])
    return {"preference_means": means, "preference_tests": tests, "preference_correlation": correlation,
            "preference_points": points}


def make_diagnostics():
    return pl.DataFrame({"dataset": ["medcalc"] * 5, "ensemble": [ENSEMBLE] * 5,
                         "kind": ["generator_wins", "generator_wins", "steps", "stop_reason", "strip_char_ratio"],
                         "label": ["qwq", "dapo", "10", "ends_thought", "mean"], "n": [3, 1, 2, 2, 2],
                         "share": [0.75, 0.25, 1.0, 1.0, 0.8]})


def make_ii():
    cons = make_consistency("ii")
    tasks = ["antonyms", "larger_animal"]
    task_cons = pl.DataFrame([{**_key(g), "dataset": "ii", "task": t, "definition": d,
                               "evaluator_a": a, "evaluator_b": b,
                               "consistency": 0.1 * (i + 1) + (0.05 if d == "strict" else 0)}
                              for g in GROUPS for i, t in enumerate(tasks) for d in ("paper", "strict")
                              for a, b in PAIRS])
    task_acc = pl.DataFrame([{**_key(g), "dataset": "ii", "task": t, "evaluator": e, "accuracy": 0.2 * i + 0.1 * j}
                             for g in GROUPS for i, t in enumerate(tasks) for j, e in enumerate(EVALUATORS)])
    return cons, task_cons, task_acc


def _probe_schemas():
    """The probe tables' schemas (`cotransfer.probe_metrics`)."""
    from cotransfer import probe_metrics as module

    return module.PREFIX_TRANSFER_SCHEMA, module.IMPORTANCE_SCHEMA, module.IMPORTANCE_CORRELATION_SCHEMA


FRACTIONS = (0.0, 0.5, 1.0)


def make_prefix():
    """2 sources x 3 readers x 3 fractions. CIs: dapo everywhere, oss all but 0.5, qwq nowhere;
    qwq has no transfer point in the CoT of oss."""
    rows = []
    for s, (j, r), f in itertools.product(SOURCES, enumerate(EVALUATORS), FRACTIONS):
        a = round(0.2 + 0.3 * f + 0.1 * j + (0.2 if r == s else 0.0), 6)
        ci = r == "dapo" or (r == "oss" and f != 0.5)
        tp = None if (s, r) == ("oss", "qwq") else (0.5 if r != s else 1.0)
        rows.append({"dataset": "medcalc", "cot_source": s, "fraction": f, "evaluator": r, "n": 10,
                     "source_agreement": a, "agreement_lo": a - 0.1 if ci else None,
                     "agreement_hi": min(a + 0.1, 1.0) if ci else None, "accuracy": 0.5, "kept_share": f,
                     "transfer_point": tp})
    return pl.DataFrame(rows, schema=_probe_schemas()[0])


def make_importance(positions=(0.0, 0.5, 1.0), items=("i1", "i2")):
    """Two 3-sentence CoTs per source; the last sentence of i1 states the answer."""
    rows = []
    for s, item, (k, pos), (j, r) in itertools.product(SOURCES, items, enumerate(positions), enumerate(EVALUATORS)):
        imp = round(0.1 * k + 0.05 * j + (0.1 if item == "i2" else 0.0) + (0.02 if s == "qwq" else 0.0), 6)
        rows.append({"dataset": "medcalc", "cot_source": s, "item_id": item, "sentence_idx": k,
                     "n_sentences": len(positions), "position": pos, "text": f"sentence {k}",
                     "states_answer": k == len(positions) - 1 and item == "i1", "evaluator": r, "n_samples": 1,
                     "agreement_full": 1.0, "agreement_dropped": 1.0 - imp, "importance": imp})
    return pl.DataFrame(rows, schema=_probe_schemas()[1])


def make_importance_correlation():
    """Every reader pair per source; dapo-qwq has no value (null)."""
    rows = []
    for s in SOURCES:
        for (a, b), rho in zip(PAIRS, (0.5, None, -0.25)):
            rows.append({"dataset": "medcalc", "cot_source": s, "evaluator_a": a, "evaluator_b": b,
                         "kind": "self" if s in (a, b) else "others", "n": 6, "spearman": rho,
                         "p_value": None if rho is None else 0.3})
    return pl.DataFrame(rows, schema=_probe_schemas()[2])


@pytest.fixture(scope="module")
def tables():
    ii_cons, task_cons, task_acc = make_ii()
    cons = pl.concat([make_consistency(), ii_cons])
    return {"consistency": cons, "consistency_summary": make_summary(cons), "accuracy": make_accuracy(),
            "breakdown": make_breakdown(), "self_consistency": make_self_consistency(),
            "transitions": make_transitions(), "involvement": make_involvement(),
            "post_training": make_post_training(), "ensemble_diagnostics": make_diagnostics(),
            "ii_task_consistency": task_cons, "ii_task_accuracy": task_acc, **make_preference(),
            "prefix_transfer": make_prefix(), "sentence_importance": make_importance(),
            "importance_correlation": make_importance_correlation()}


@pytest.fixture(scope="module")
def built(tables):
    return F.build_all(tables, ii_datasets=["ii"])


# -- helpers that read the drawn numbers back ---------------------------------------------------


def ticks(ax):
    return [" ".join(t.get_text().split()) for t in ax.get_xticklabels()]


def bars(ax):
    """{container label: {tick label: [bar heights at that tick]}} (nearest tick of each bar's centre)."""
    from matplotlib.container import BarContainer

    names = ticks(ax)
    out = {}
    for container in ax.containers:
        if not isinstance(container, BarContainer):
            continue
        per = out.setdefault(container.get_label(), {})
        for patch in container.patches:
            x = patch.get_x() + patch.get_width() / 2
            per.setdefault(names[int(round(x))], []).append(patch.get_height())
    return out


def tick_value(per_tick, prefix):
    (match,) = [v for k, v in per_tick.items() if k.startswith(prefix)]
    (value,) = match
    return value


def title(ax):
    return " ".join(ax.get_title().split())


def figure(built, fid, stem):
    return dict(built[fid])[stem]


def first(df, **eq):
    row = df.filter(*[pl.col(k).eq_missing(v) for k, v in eq.items()])
    assert row.height == 1, (eq, row)
    return row.row(0, named=True)


# -- generic behaviour -------------------------------------------------------------------------


def test_import_is_cheap():
    code = "import sys, cotransfer.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pair_matrix_symmetric_with_blank_diagonal_and_nan():
    panel = pl.DataFrame({"evaluator_a": ["a", "a", "b"], "evaluator_b": ["b", "c", "c"],
                          "consistency": [0.5, None, 0.25]})
    evaluators, matrix = F._pair_matrix(panel)
    assert evaluators == ["a", "b", "c"]
    assert matrix[0][1] == matrix[1][0] == 0.5
    assert matrix[1][2] == matrix[2][1] == 0.25
    assert math.isnan(matrix[0][2]) and math.isnan(matrix[2][0])
    assert all(math.isnan(matrix[i][i]) for i in range(3))


def test_model_colors_follow_sorted_names():
    a = F.model_colors(["qwq", "dapo", "oss", None, "qwq"])
    b = F.model_colors(["oss", "qwq", "dapo"])
    assert a == b and list(a) == ["dapo", "oss", "qwq"] and len(set(a.values())) == 3
    many = F.model_colors([f"m{i:02d}" for i in range(25)])
    assert len(set(many.values())) == 25


def test_wrap_and_group_label():
    assert F._wrap("transfer/full/toy_qwq", 10) == "transfer/\nfull/toy_\nqwq"
    assert F.group_label("transfer", "full", "toy_qwq") == "transfer · full\nfrom toy_qwq"
    assert F.group_label("ensemble", None, "qwq_dapo__oss") == "ensemble\nqwq_dapo__oss"
    assert F.group_label("empty") == "empty"


def test_render_all_writes_png_pdf_strict_twins_and_json(tables, tmp_path):
    result = F.render_all(tables, tmp_path / "figs", ii_datasets=["ii"])
    assert set(result) == set(F.FIGURES) and all(isinstance(v, list) for v in result.values()), result
    for fid, stem in F.FIGURES.items():
        stems = {p.stem for p in result[fid]}
        expected = {stem, *F.EXTRA_STEMS.get(fid, [])}
        expected |= {f"{s}_strict" for s in expected if s in F.TWINNED}
        assert stems == expected, (fid, stems)
        for s in stems:
            png, pdf = tmp_path / "figs" / f"{s}.png", tmp_path / "figs" / f"{s}.pdf"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, s
            assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, s
    listing = json.loads((tmp_path / "figs" / "figures.json").read_text())
    assert listing == {k: [str(p) for p in v] for k, v in result.items()}
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".tmp-")]


def test_render_all_gives_reasons_and_draws_no_placeholders(tmp_path):
    cons = make_consistency().filter(pl.col("definition") == "paper")
    tables = {"consistency": cons, "accuracy": make_accuracy().filter(pl.col("condition") != "transfer"),
              "breakdown": make_breakdown().clear(), "post_training": make_post_training((None,) * 4),
              "ensemble_diagnostics": make_diagnostics().clear()}
    result = F.render_all(tables, tmp_path)
    assert [p.name for p in result["F1"]] == ["overview.png", "overview.pdf"]  # no strict rows: no twin
    assert [p.stem for p in result["F2"]] == ["consistency", "consistency"]  # summary derived from pairs
    assert [p.stem for p in result["F4"]] == ["accuracy", "accuracy"]  # no transfer: no source x target map
    assert result["F5"].startswith("no valid pair-rows")
    assert result["F6"] == "no self_consistency table"
    assert result["F7"] == "no involvement table"
    assert result["F8"] == "no post_training tags"
    assert result["F9"] == "no transitions table"
    assert result["F10"] == "no ratings file"
    assert result["F11"] == "no Instruction Induction dataset"
    assert result["F12"] == "no ensembles"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(["figures.json"] + [p.name for v in result.values() if isinstance(v, list) for p in v])
    assert json.loads((tmp_path / "figures.json").read_text())["F10"] == "no ratings file"

    again = F.render_all({"consistency": cons}, tmp_path)  # an earlier run's figures do not survive
    assert not (tmp_path / "accuracy.png").exists() and again["F4"] == "no accuracy table"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["figures.json"] + [p.name for v in again.values() if isinstance(v, list) for p in v])

    empty = {k: v.clear() for k, v in (("self_consistency", make_self_consistency()),
                                           ("involvement", make_involvement()), ("transitions", make_transitions()))}
    reasons = F.render_all(empty, tmp_path / "empty")
    assert reasons["F6"] == "no Sampled condition" and reasons["F7"] == "no Transfer or Ensemble pairs"
    assert reasons["F9"].startswith("no transitions (needs the Empty condition")

    nothing = F.render_all({}, tmp_path / "none")
    assert nothing["F1"] == "no consistency table" and nothing["F4"] == "no accuracy table"
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["figures.json"]
    null_pairs = F.render_all({"consistency": cons.with_columns(consistency=pl.lit(None, pl.Float64))}, tmp_path / "n")
    assert null_pairs["F1"] == null_pairs["F3"] == "no valid evaluator pairs"


def test_same_model_same_colour_in_every_figure(built):
    from matplotlib.colors import to_hex

    colours = F.model_colors(EVALUATORS + ["llama", "llama_grpo", "qwen", "qwen_grpo"])
    acc = figure(built, "F4", "accuracy").axes[0]
    by_label = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in acc.containers if hasattr(c, "patches")}
    assert by_label == {e: colours[e] for e in EVALUATORS}
    sc = figure(built, "F6", "self_consistency").axes[0]
    names = ticks(sc)
    for c in sc.containers:
        if hasattr(c, "patches"):
            for patch in c.patches:
                model = names[int(round(patch.get_x() + patch.get_width() / 2))].split()[0]
                if model in colours:
                    assert to_hex(patch.get_facecolor()) == colours[model]
    pt = figure(built, "F8", "post_training").axes[0]
    names = ticks(pt)
    llama = [p for c in pt.containers if hasattr(c, "patches") for p in c.patches
             if names[int(round(p.get_x() + p.get_width() / 2))].startswith("llama (base)")]
    assert llama and all(to_hex(p.get_facecolor()) == colours["llama"] for p in llama)


# -- one numeric check per figure ----------------------------------------------------------------


def test_f1_overview_bars_are_pooled_means(built, tables):
    fig = figure(built, "F1", "overview")
    cons = tables["consistency"].filter(dataset="medcalc", definition="paper")
    (full,) = [ax for ax in fig.axes if title(ax) == "medcalc · with answer (full)"]
    heights = bars(full)["paper"]
    pooled = cons.filter(condition="transfer", variant="full")["consistency"]
    assert tick_value(heights, "transfer") == pytest.approx(pooled.mean())
    assert tick_value(heights, "empty") == pytest.approx(cons.filter(condition="empty")["consistency"].mean())
    assert any(t.startswith("transfer n=6 pairs") for t in ticks(full))  # 2 sources x 3 pairs
    strict = figure(built, "F1", "overview_strict")
    (full,) = [ax for ax in strict.axes if title(ax) == "medcalc · with answer (full)"]
    assert tick_value(bars(full)["strict"], "transfer") == pytest.approx(pooled.mean() - 0.1)


def test_f1_legacy_both_definitions_side_by_side(tables, tmp_path):
    cons = tables["consistency"].filter(dataset="medcalc")
    fig = F.overview_figure(cons, definition=None)
    assert set(bars(fig.axes[0])) == {"paper", "strict"}
    out = F.overview_bars(cons, tmp_path / "f1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert F.overview_bars(cons.clear(), tmp_path / "empty.png").stat().st_size > 1000
    pooled = F.overview_figure(cons, pool_variants=True)  # fig1.pooling: paper
    assert len(pooled.axes) == 1
    both_modes = cons.filter(condition="transfer", definition="paper")["consistency"].mean()
    assert tick_value(bars(pooled.axes[0])["paper"], "transfer") == pytest.approx(both_modes)


def test_f2_consistency_per_source_with_std_and_ci(built, tables):
    fig = figure(built, "F2", "consistency")
    (ax,) = [a for a in fig.axes if title(a) == "medcalc"]
    summary = tables["consistency_summary"].filter(dataset="medcalc", definition="paper")
    drawn = bars(ax)
    row = first(summary, condition="transfer", variant="stripped", cot_source="qwq")
    assert tick_value(drawn["without answer (stripped)"], "transfer from qwq") == pytest.approx(row["mean"])
    row = first(summary, condition="ensemble", variant="full", cot_source=ENSEMBLE)
    assert tick_value(drawn["with answer (full)"], f"ensemble {ENSEMBLE}") == pytest.approx(row["mean"])
    assert tick_value(drawn["no CoT (empty)"], "empty") == pytest.approx(first(summary, condition="empty")["mean"])
    container = next(c for c in ax.containers if c.get_label() == "with answer (full)")
    segments = container.errorbar.lines[2][0].get_segments()
    spreads = sorted(round((s[1][1] - s[0][1]) / 2, 9) for s in segments)
    expected = sorted(round(v, 9) for v in summary.filter(variant="full")["std"])
    assert spreads == pytest.approx(expected)
    assert len(ax.lines) >= summary.height  # one bootstrap-CI line per bar
    strict = figure(built, "F2", "consistency_strict")
    row = first(tables["consistency_summary"], dataset="medcalc", definition="strict", condition="empty")
    (ax,) = [a for a in strict.axes if title(a) == "medcalc"]
    assert tick_value(bars(ax)["no CoT (empty)"], "empty") == pytest.approx(row["mean"])


def test_f3_heatmap_values(built, tables, tmp_path):
    fig = figure(built, "F3", "heatmap")
    titles = [title(ax) for ax in fig.axes if ax.images]
    index = next(i for i, t in enumerate(titles) if t.startswith("medcalc · transfer / full / from oss"))
    matrix = np.ma.filled(fig.axes[index].images[0].get_array(), np.nan)
    row = first(tables["consistency"], dataset="medcalc", definition="paper", condition="transfer", variant="full",
                cot_source="oss", evaluator_a="dapo", evaluator_b="qwq")
    assert matrix[0, 2] == matrix[2, 0] == pytest.approx(row["consistency"])
    assert np.isnan(matrix[1, 1])
    strict = figure(built, "F3", "heatmap_strict")
    strict_matrix = np.ma.filled(strict.axes[index].images[0].get_array(), np.nan)
    assert strict_matrix[0, 2] == pytest.approx(row["consistency"] - 0.1)
    legacy = F.consistency_heatmaps(tables["consistency"], tmp_path / "f3.png", dataset="medcalc")
    assert legacy.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert F.consistency_heatmaps(tables["consistency"], tmp_path / "none.png", dataset="gsm8k").exists()


def test_f4_accuracy_bars_and_transfer_heatmap(built, tables, tmp_path):
    acc = tables["accuracy"]
    ax = figure(built, "F4", "accuracy").axes[0]
    row = first(acc, condition="sampled", variant="stripped", evaluator="oss")
    assert tick_value(bars(ax)["oss"], "sampled · stripped") == pytest.approx(row["accuracy"])
    heat = figure(built, "F4", "accuracy_transfer")
    panels = [a for a in heat.axes if a.images]
    assert [title(a) for a in panels] == ["medcalc · with answer (full) n=20 items",
                                          "medcalc · without answer (stripped) n=20 items"]
    matrix = np.ma.filled(panels[1].images[0].get_array(), np.nan)  # rows sources oss, qwq; cols dapo, oss, qwq
    row = first(acc, condition="transfer", variant="stripped", cot_source="qwq", evaluator="dapo")
    assert matrix.shape == (2, 3) and matrix[1, 0] == pytest.approx(row["accuracy"])
    assert F.accuracy_chart(acc, tmp_path / "f4.png").stat().st_size > 10_000


def test_f5_breakdown_stacks_shares(built, tables):
    fig = figure(built, "F5", "breakdown")
    full = fig.axes[0]
    drawn = bars(full)
    table = tables["breakdown"]
    for category, (label, _) in F.BREAKDOWN_CATEGORIES.items():
        row = first(table, condition="transfer", variant="full", cot_source="oss", category=category)
        assert tick_value(drawn[label], "transfer from oss") == pytest.approx(row["share"])
    row = first(table, condition="empty", category="same_both_correct")
    assert tick_value(drawn["same answer, both correct"], "empty") == pytest.approx(row["share"])
    assert ticks(full)[0] == "empty n=11 pair-rows"
    flagged = F.breakdown_figure(table.with_columns(same_diff_correctness=pl.lit(2)))
    assert "⚠ 2 same-answer rows differ in correctness" in title(flagged.axes[0])


def test_f6_self_consistency_per_model_and_mean(built, tables):
    ax = figure(built, "F6", "self_consistency").axes[0]
    sc = tables["self_consistency"].filter(definition="paper")
    drawn = bars(ax)
    assert tick_value(drawn["without answer (stripped)"], "oss") == pytest.approx(
        first(sc, evaluator="oss", variant="stripped")["rate"])
    assert tick_value(drawn["with answer (full)"], "mean") == pytest.approx(sc.filter(variant="full")["rate"].mean())
    strict = figure(built, "F6", "self_consistency_strict").axes[0]
    assert tick_value(bars(strict)["with answer (full)"], "qwq") == pytest.approx(
        first(tables["self_consistency"], evaluator="qwq", variant="full", definition="strict")["rate"])


def test_f7_involvement(built, tables):
    fig = figure(built, "F7", "involvement")
    inv = tables["involvement"].filter(definition="paper")
    titles = [title(a) for a in fig.axes]
    stripped_source = fig.axes[titles.index("medcalc · without answer (stripped) source version")]
    drawn = bars(stripped_source)
    row = first(inv, condition="transfer", creators="qwq", variant="stripped", involved=False)
    assert tick_value(drawn["pair includes no creator"], "transfer qwq") == pytest.approx(row["mean"])
    row = first(inv, condition="ensemble", creators="dapo,qwq", variant="stripped", involved=True)
    assert tick_value(drawn["pair includes a creator"], "ensemble dapo, qwq") == pytest.approx(row["mean"])
    assert "pairs: 2 in, 1 out" in " ".join(ticks(stripped_source))
    creator = fig.axes[titles.index("medcalc · with answer (full) creator version")]
    assert [t.split(" pairs:")[0] for t in ticks(creator)] == ["ensemble dapo, oss, qwq"]


def test_f8_post_training_groups_and_means(built, tables):
    fig = figure(built, "F8", "post_training")
    acc_ax, agree_ax = fig.axes[:2]
    pt = tables["post_training"].filter(definition="paper")
    assert [t.split(" (")[0] for t in ticks(acc_ax)] == ["llama", "qwen", "mean base", "llama_grpo", "qwen_grpo",
                                                          "mean grpo"]
    assert tick_value(bars(acc_ax)["with answer (full)"], "qwen_grpo") == pytest.approx(
        first(pt, source="qwen_grpo", variant="full")["target_accuracy"])
    grpo = pt.filter(post_training="grpo", variant="stripped")["agreement"].mean()
    assert tick_value(bars(agree_ax)["without answer (stripped)"], "mean grpo") == pytest.approx(grpo)
    strict = figure(built, "F8", "post_training_strict").axes[1]
    assert tick_value(bars(strict)["with answer (full)"], "llama (base)") == pytest.approx(
        first(tables["post_training"], source="llama", variant="full", definition="strict")["agreement"])


def test_f9_transitions_mean_over_evaluators(built, tables):
    fig = figure(built, "F9", "transitions")
    drawn = bars(fig.axes[1])  # stripped panel
    tr = tables["transitions"].filter(condition="transfer", variant="stripped", cot_source="oss")
    for category, (label, _) in F.TRANSITION_CATEGORIES.items():
        expected = tr.filter(category=category)["share"].mean()
        assert tick_value(drawn[label], "transfer from oss") == pytest.approx(expected)
    assert title(fig.axes[1]) == ("medcalc · without answer (stripped) mean over 3 evaluators; "
                                  "n=20 items per evaluator")
    assert not any(t.startswith("empty") for t in ticks(fig.axes[0]))


def test_f10_user_study(built, tables):
    fig = figure(built, "F10", "user_study")
    bars_ax, scatter = fig.axes[:2]
    means = tables["preference_means"]
    drawn = bars(bars_ax)
    assert tick_value(drawn["oss_transfer"], "Best overall") == pytest.approx(
        first(means, source="oss_transfer", criterion="Best overall")["mean"])
    marks = sorted(t.get_text() for t in bars_ax.texts if t.get_gid() == "significance")
    assert marks == ["*", "***"]  # t_test rows below .05 after adjustment; the wilcoxon row is not used
    assert "r = 0.87 [0.10, 0.99], ρ = 0.50, 3 sources" in title(scatter)
    offsets = np.concatenate([c.get_offsets() for c in scatter.collections])
    points = tables["preference_points"]
    assert sorted(map(tuple, offsets.tolist())) == sorted(points.select("consistency", "mean_rating").rows())
    only_means = F.user_study_figure(means)
    assert len(only_means.axes) == 1


def test_f11_instruction_induction(built, tables):
    ii = figure(built, "F11", "ii_consistency")
    assert [title(a) for a in ii.axes if a.containers] == ["ii"]  # only the II dataset
    row = first(tables["consistency_summary"], dataset="ii", definition="paper", condition="default", variant="full")
    assert tick_value(bars(ii.axes[0])["with answer (full)"], "default") == pytest.approx(row["mean"])
    tasks = figure(built, "F11", "ii_tasks").axes[0]
    matrix = np.ma.filled(tasks.images[0].get_array(), np.nan)
    assert matrix.shape == (2, len(GROUPS)) and matrix[1, 0] == pytest.approx(0.2)  # larger_animal, empty
    strict = np.ma.filled(figure(built, "F11", "ii_tasks_strict").axes[0].images[0].get_array(), np.nan)
    assert strict[0, 0] == pytest.approx(0.15)
    acc = figure(built, "F11", "ii_accuracy")
    panel = next(a for a in acc.axes if a.images and title(a).startswith("ii · transfer · full"))
    assert title(panel).endswith("mean over 2 sources")
    assert np.ma.filled(panel.images[0].get_array(), np.nan)[1, 2] == pytest.approx(0.4)  # larger_animal, qwq


def test_f12_ensemble(built, tables, tmp_path):
    fig = figure(built, "F12", "ensemble")
    wins, steps, stops, ratio = fig.axes
    assert [p.get_height() for p in wins.patches] == [0.75, 0.25]
    assert [p.get_height() for p in ratio.patches] == [0.8]
    assert title(wins).endswith("share of steps won (n = 4 steps)")
    for name, df in (("some", tables["ensemble_diagnostics"]), ("none", tables["ensemble_diagnostics"].clear())):
        out = F.ensemble_diagnostics(df, tmp_path / f"{name}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000


def test_partial_tables_still_draw(tables):
    """Old-style tables (no n_expected, no CIs), one answer mode, only Transfer involvement, the
    empty condition alone: every figure draws what is there."""
    acc = tables["accuracy"].drop("n_expected", "ci_low", "ci_high").filter(pl.col("variant").is_null())
    assert bars(F.accuracy_figure(acc).axes[0])["qwq"]
    summary = tables["consistency_summary"].drop("ci_low", "ci_high").filter(dataset="medcalc")
    fig = F.consistency_figure(summary.filter(pl.col("variant") != "stripped"))
    assert set(bars(fig.axes[0])) == {"with answer (full)"}  # empty has a null variant: filtered out
    only_empty = F.overview_figure(tables["consistency"].filter(condition="empty", dataset="medcalc"))
    assert len(only_empty.axes) == 1 and ticks(only_empty.axes[0]) == ["empty n=3 pairs"]
    sc = tables["self_consistency"].filter(variant="full")
    assert set(bars(F.self_consistency_figure(sc).axes[0])) == {"with answer (full)"}
    inv = tables["involvement"].filter(condition="transfer")
    assert len(F.involvement_figure(inv).axes) == 2  # two modes x the source version only


def test_report_captions_render():
    """One caption per figure stem; each renders as Jinja2 then RST without warnings, with the
    params it declares given and with them missing; it uses only the params it declares."""
    import re
    import types
    from pathlib import Path

    jinja2 = pytest.importorskip("jinja2")
    core = pytest.importorskip("docutils.core")
    report = Path(__file__).resolve().parents[1] / "report"
    stems = set(F.FIGURES.values()) | {s for extra in F.EXTRA_STEMS.values() for s in extra}
    tables = {"consistency_summary", "accuracy_table", "figures_listing", "strip_qc"}  # the report's table items
    assert {p.stem for p in report.glob("*.rst")} == stems | tables | {"workflow"}
    from cotransfer.plan import figures_planned
    from cotransfer.config import Study, validate
    from conftest import load_yaml

    planned = figures_planned(Study.from_dict(validate(load_yaml("config/demo.yaml"))))
    assert {s.removesuffix("_strict") for s in planned} <= stems  # every figure the rule can declare has one
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as snakemake's report
    params = {"n_items": "100 (medcalc)", "n_pairs": 10, "n_evaluators": 5, "n_sources": 5, "n_ensembles": 2,
              "n_samples": 1}
    for path in sorted(report.glob("*.rst")):
        text = path.read_text()
        used = set(re.findall(r"snakemake\.params\.(\w+)", text))
        declared = re.match(r"\{# params: (.*) #\}", text)
        if path.stem == "workflow":
            assert not used  # the front page sees snakemake.config only
        else:
            assert declared and used <= {p.strip() for p in declared.group(1).split(",")}, path.name
        for given in (params, {}):
            sm = types.SimpleNamespace(params=types.SimpleNamespace(**given), config={"study": {"name": "demo"}},
                                       wildcards=types.SimpleNamespace())
            rst = env.from_string(text).render(snakemake=sm)
            html = core.publish_parts(rst, writer="html",
                                      settings_overrides={"report_level": 2, "halt_level": 2})["body"]
            assert "params:" not in html and html.strip(), path.name
            if given and used:
                assert str(given[sorted(used)[0]]) in html, path.name


# -- F13-F14: which part of a CoT transfers ------------------------------------------------------


def reader_lines(ax):
    """{reader: Line2D} of the lines labelled with a reader (not the zero line, not legend proxies)."""
    return {line.get_label(): line for line in ax.lines if line.get_label() in EVALUATORS}


def by_gid(ax, prefix):
    """{suffix: artist} of the collections whose gid is `prefix:suffix`."""
    return {c.get_gid().split(":", 1)[1]: c for c in ax.collections
            if isinstance(c.get_gid(), str) and c.get_gid().startswith(prefix + ":")}


def test_f13_prefix_transfer_lines_bands_and_points(built, tables, tmp_path):
    from matplotlib.colors import to_hex

    fig = figure(built, "F13", "prefix_transfer")
    prefix = tables["prefix_transfer"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [title(ax) for ax in panels] == ["CoT of oss (n=10 items)", "CoT of qwq (n=10 items)"]
    ax = panels[0]
    assert len(ax.lines) == len(EVALUATORS)  # one line per reader, nothing else
    lines = reader_lines(ax)
    assert sorted(lines) == EVALUATORS
    for reader, line in lines.items():
        part = prefix.filter(cot_source="oss", evaluator=reader).sort("fraction")
        assert list(line.get_xdata()) == list(FRACTIONS)
        assert list(line.get_ydata()) == pytest.approx(part["source_agreement"].to_list())
    colours = F.model_colors(F.study_models(tables))
    assert {r: to_hex(line.get_color()) for r, line in lines.items()} == {r: colours[r] for r in EVALUATORS}
    assert lines["oss"].get_linewidth() > lines["dapo"].get_linewidth() == lines["qwq"].get_linewidth()
    assert reader_lines(panels[1])["qwq"].get_linewidth() > reader_lines(panels[1])["oss"].get_linewidth()
    bands = by_gid(ax, "band")
    assert sorted(bands) == ["dapo", "oss"]  # qwq has no CI at all
    lo, hi = (prefix.filter(cot_source="oss", evaluator="dapo")[c] for c in ("agreement_lo", "agreement_hi"))
    ys = np.concatenate([path.vertices[:, 1] for path in bands["dapo"].get_paths()])
    assert ys.min() == pytest.approx(lo.min()) and ys.max() == pytest.approx(hi.max())
    points = by_gid(ax, "transfer_point")
    assert sorted(points) == ["dapo", "oss"]  # qwq's transfer point is null
    assert np.asarray(points["dapo"].get_offsets()).ravel().tolist() == pytest.approx([0.5, 0.35])
    assert np.asarray(points["oss"].get_offsets()).ravel().tolist() == pytest.approx([1.0, 0.8])
    assert ax.get_ylim() == pytest.approx((0.0, 1.05))
    legend = [t.get_text() for t in panels[-1].get_legend().get_texts()]
    assert legend[:3] == ["dapo", "oss (thick: reading its own CoT)", "qwq (thick: reading its own CoT)"]
    two = F.prefix_transfer_figure(pl.concat([prefix, prefix.with_columns(dataset=pl.lit("gsm8k"))]))
    assert [title(a).split(" (")[0] for a in two.axes] == [  # datasets as rows, sources as columns
        "gsm8k · CoT of oss", "gsm8k · CoT of qwq", "medcalc · CoT of oss", "medcalc · CoT of qwq"]
    many = pl.concat([prefix.filter(cot_source="oss").with_columns(cot_source=pl.lit(f"m{k}")) for k in range(6)])
    wrapped = F.prefix_transfer_figure(many)
    assert len(wrapped.axes) == 8 and sum(a.get_visible() for a in wrapped.axes) == 6  # 2 rows of 4


def test_f14_sentence_importance_curves_stars_and_heatmap(built, tables):
    fig = figure(built, "F14", "sentence_importance")
    imp = tables["sentence_importance"]
    top = [ax for ax in fig.axes if reader_lines(ax)]
    heat = [ax for ax in fig.axes if ax.images]
    assert len(top) == len(heat) == 2 and title(top[0]) == "CoT of oss 2 CoTs, 6 sentences"
    ax = top[0]
    lines = reader_lines(ax)
    assert sorted(lines) == EVALUATORS and len(lines) == 3
    for reader, line in lines.items():
        means = (imp.filter(cot_source="oss", evaluator=reader).group_by("position")
                 .agg(pl.col("importance").mean()).sort("position"))
        assert list(line.get_xdata()) == [0.0, 0.5, 1.0]  # three positions: exact, not binned
        assert list(line.get_ydata()) == pytest.approx(means["importance"].to_list())
    stars = by_gid(ax, "states_answer")
    assert sorted(stars) == EVALUATORS
    row = first(imp, cot_source="oss", evaluator="qwq", states_answer=True)
    star = np.asarray(stars["qwq"].get_offsets()).ravel().tolist()
    assert star == pytest.approx([row["position"], row["importance"]])
    assert any("state the source's answer" in t.get_text() for t in top[-1].get_legend().get_texts())
    matrix = np.ma.filled(heat[0].images[0].get_array(), np.nan)
    assert matrix.shape == (3, 3) and list(np.diag(matrix)) == [1.0, 1.0, 1.0]
    assert matrix[0, 1] == matrix[1, 0] == pytest.approx(0.5)  # dapo-oss
    assert matrix[1, 2] == matrix[2, 1] == pytest.approx(-0.25)  # oss-qwq
    assert np.isnan(matrix[0, 2]) and np.isnan(matrix[2, 0])  # dapo-qwq: null, grey
    assert title(heat[0]).startswith("rank correlation of importance")
    assert ticks(heat[0]) == ["dapo", "oss (source)", "qwq"]
    cells = sorted(t.get_text() for t in heat[0].texts)
    assert cells == sorted(["1.00"] * 3 + ["0.50"] * 2 + ["-0.25"] * 2 + ["–"] * 2)

    alone = F.importance_figure(imp)  # no correlation table: no bottom row
    assert not [a for a in alone.axes if a.images] and len(alone.axes) == 2
    positions = [k / 6 for k in range(7)]  # seven positions: binned into fifths
    binned = F.importance_figure(make_importance(positions=positions), make_importance_correlation().clear())
    line = reader_lines(binned.axes[0])["dapo"]
    assert list(line.get_xdata()) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert not [a for a in binned.axes if a.images]


def test_probe_figures_reasons_and_models(tmp_path):
    result = F.render_all({}, tmp_path / "none")
    assert result["F13"] == "no prefix_transfer table" and result["F14"] == "no sentence_importance table"
    empty = F.render_all({"prefix_transfer": make_prefix().clear(), "sentence_importance": make_importance().clear(),
                          "importance_correlation": make_importance_correlation()}, tmp_path / "empty")
    assert empty["F13"] == "no prefix-transfer answers" and empty["F14"] == "no sentence-importance answers"
    listing = json.loads((tmp_path / "empty" / "figures.json").read_text())
    assert listing["F13"] == "no prefix-transfer answers" and listing["F14"] == "no sentence-importance answers"
    drawn = F.render_all({"prefix_transfer": make_prefix(), "sentence_importance": make_importance()}, tmp_path / "d")
    assert [p.name for p in drawn["F13"]] == ["prefix_transfer.png", "prefix_transfer.pdf"]
    assert [p.name for p in drawn["F14"]] == ["sentence_importance.png", "sentence_importance.pdf"]
    for p in drawn["F13"] + drawn["F14"]:
        assert p.stat().st_size > 5_000, p
    assert (tmp_path / "d" / "prefix_transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not {"prefix_transfer", "sentence_importance"} & F.TWINNED
    assert not list((tmp_path / "d").glob("*_strict.*"))
    models = F.study_models({"prefix_transfer": make_prefix().with_columns(cot_source=pl.lit("zeta")),
                             "importance_correlation": make_importance_correlation().with_columns(
                                 evaluator_b=pl.lit("omega"))})
    assert models == ["dapo", "omega", "oss", "qwq", "zeta"]

