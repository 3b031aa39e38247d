"""Unit tests for cotransfer.figures: every figure writes a readable PNG, also from empty tables."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from cotransfer.figures import _pair_matrix, accuracy_chart, consistency_heatmaps, overview_bars
from cotransfer.metrics import accuracy, consistency

EVALUATORS = ["dapo", "oss", "qwq", "r1", "skywork"]


def synthetic_answers(sources: list[str], n_items: int = 6) -> pl.DataFrame:
    """Empty, default and transfer-from-each-source answers of five evaluators, pseudo-random."""
    rng = np.random.default_rng(0)
    groups = [("empty", None, None)] + [("default", v, None) for v in ("full", "stripped")]
    groups += [("transfer", v, s) for s in sources for v in ("full", "stripped")]
    rows = []
    for (condition, variant, source), ev, item in itertools.product(groups, EVALUATORS, range(n_items)):
        answer = int(rng.integers(0, 3))
        rows.append({"dataset": "medcalc", "item_id": f"i{item}", "condition": condition, "variant": variant,
                     "cot_source": source, "evaluator": ev, "sample": 0, "answer": str(answer),
                     "valid": bool(rng.random() > 0.1), "correct": answer == 0})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def answers() -> pl.DataFrame:
    return synthetic_answers(["qwq", "oss"])


def read_png(path):
    from matplotlib.image import imread

    assert path.exists() and path.stat().st_size > 0
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def assert_drawn(image, min_h=150, min_w=300):
    h, w = image.shape[:2]
    assert h >= min_h and w >= min_w, image.shape
    assert np.ptp(image[..., :3]) > 0.5  # not a blank canvas


def no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")] == []


def test_import_is_cheap():
    code = "import sys, cotransfer.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pair_matrix_symmetric_with_blank_diagonal_and_nan():
    panel = pl.DataFrame({"evaluator_a": ["a", "a", "b"], "evaluator_b": ["b", "c", "c"],
                          "consistency": [0.5, None, 0.25]})
    evaluators, matrix = _pair_matrix(panel)
    assert evaluators == ["a", "b", "c"]
    assert matrix[0][1] == matrix[1][0] == 0.5
    assert matrix[1][2] == matrix[2][1] == 0.25
    assert math.isnan(matrix[0][2]) and math.isnan(matrix[2][0])
    assert all(math.isnan(matrix[i][i]) for i in range(3))


def test_consistency_heatmaps(answers, tmp_path):
    cons = consistency(answers)
    out = consistency_heatmaps(cons, tmp_path / "figs" / "f3.png", dataset="medcalc")
    assert out == tmp_path / "figs" / "f3.png"
    image = read_png(out)
    assert_drawn(image, 500, 500)  # 7 panels in a 3 x 3 grid
    assert no_temp_files(out.parent)


def test_consistency_heatmaps_thirty_panels_grow_the_grid(tmp_path):
    cons = consistency(synthetic_answers([f"src{i}" for i in range(11)], n_items=3))
    cons = pl.concat([cons, consistency(synthetic_answers(["qwq"], n_items=3), "strict")])
    n_panels = cons.select("definition", "condition", "variant", "cot_source").unique().height
    assert n_panels == 25 + 5
    single = read_png(consistency_heatmaps(cons.filter(condition="empty", definition="paper"), tmp_path / "one.png"))
    many = read_png(consistency_heatmaps(cons, tmp_path / "many.png"))
    assert many.shape[0] > 4 * single.shape[0] and many.shape[1] > 4 * single.shape[1]


def test_consistency_heatmaps_other_dataset_and_empty(answers, tmp_path):
    cons = consistency(answers)
    for table, kw in [(cons, {"dataset": "ii"}), (cons.clear(), {})]:
        image = read_png(consistency_heatmaps(table, tmp_path / "empty.png", **kw))
        assert_drawn(image, 100, 300)


def test_consistency_heatmaps_all_pairs_null(tmp_path):
    cons = consistency(synthetic_answers([]).with_columns(valid=pl.lit(False)))
    assert cons["consistency"].null_count() == cons.height > 0
    assert_drawn(read_png(consistency_heatmaps(cons, tmp_path / "null.png")))


def test_accuracy_chart(answers, tmp_path):
    acc = accuracy(answers)
    image = read_png(accuracy_chart(acc, tmp_path / "f4.png"))
    assert_drawn(image, 300, 600)
    assert image.shape[1] > image.shape[0]  # one wide panel of grouped bars
    two = pl.concat([acc, acc.with_columns(dataset=pl.lit("ii"))])
    stacked = read_png(accuracy_chart(two, tmp_path / "f4_two.png"))
    assert stacked.shape[0] > 1.5 * image.shape[0]  # one panel per dataset
    assert no_temp_files(tmp_path)


def test_accuracy_chart_empty(answers, tmp_path):
    assert_drawn(read_png(accuracy_chart(accuracy(answers).clear(), tmp_path / "empty.png")), 100, 300)


def test_overview_bars(answers, tmp_path):
    both = pl.concat([consistency(answers, "paper"), consistency(answers, "strict")])
    image = read_png(overview_bars(both, tmp_path / "f1.png"))
    assert_drawn(image, 250, 600)
    assert image.shape[1] > image.shape[0]  # full and stripped panels side by side


def test_overview_bars_empty_condition_only_and_empty_table(answers, tmp_path):
    cons = consistency(answers)
    only_empty = read_png(overview_bars(cons.filter(condition="empty"), tmp_path / "only_empty.png"))
    assert_drawn(only_empty, 200, 300)
    assert_drawn(read_png(overview_bars(cons.clear(), tmp_path / "none.png")), 100, 300)


def test_ensemble_diagnostics_figure(tmp_path):
    from cotransfer.figures import ensemble_diagnostics
    from cotransfer.metrics import ENSEMBLE_DIAGNOSTICS_SCHEMA

    diag = pl.DataFrame({"dataset": ["d"] * 4, "ensemble": ["e"] * 4,
                         "kind": ["generator_wins", "generator_wins", "steps", "stop_reason"],
                         "label": ["gq", "gd", "10", "ends_thought"], "n": [3, 1, 2, 2],
                         "share": [0.75, 0.25, 1.0, 1.0]}, schema=ENSEMBLE_DIAGNOSTICS_SCHEMA)
    for name, df in (("some", diag), ("none", diag.clear())):
        out = ensemble_diagnostics(df, tmp_path / f"{name}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
