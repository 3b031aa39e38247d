"""Figures F1-F12 of method.md §8.4, drawn from the metric tables (`metrics.all_tables()`), and
F13-F14 of the probes (which part of a CoT transfers), drawn from the tables of
`cotransfer.probe_metrics`.

Each figure has a builder, `<name>_figure(table, ...) -> Figure`, that only reshapes its table
(filters, pivots, and means over evaluators, sources or models for display) and draws it. No
metric is computed here, so a figure cannot disagree with the table it shows. Tests read the
drawn numbers back from the returned Figure.

`render_all(tables, out_dir)` is the entry point. It picks the figures that the tables support and
writes each one as PNG and PDF with the same stem. A consistency figure also gets a strict twin
(`<stem>_strict`, from the rows with `definition == "strict"`). It returns, and writes to
`out_dir/figures.json`, either the files or the reason each figure was not drawn. A figure
without data is skipped with a reason and never drawn as an empty placeholder.

Models keep one colour across every figure: `model_colors()` assigns colours to the sorted model
names, and `render_all` builds that map once from all the tables.

Single-PNG writers (`consistency_heatmaps`, `accuracy_chart`, `overview_bars`,
`ensemble_diagnostics`) remain for scripts that want one file; the pipeline does not use them.
They call the same builders and still draw a "no data" image for an empty table.

matplotlib is imported inside the functions, so importing this module stays cheap for CPU rules
and the CLI. Figures are built with `matplotlib.figure.Figure`, not pyplot. That means no GUI
backend, no global figure registry, and no change to the caller's backend, so it works headless.
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from cotransfer.io import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CONDITION_ORDER = ["empty", "default", "sampled", "transfer", "ensemble"]
VARIANT_ORDER = ["full", "stripped"]
DEFINITIONS = ("paper", "strict")
PANEL_KEYS = ["condition", "variant", "cot_source"]
DPI = 100
NAN_COLOR = "0.75"
MEAN_COLOR = "#333333"

# Figure id -> file stem. F4 and F11 write several figures; their extra stems are in EXTRA_STEMS.
FIGURES = {"F1": "overview", "F2": "consistency", "F3": "heatmap", "F4": "accuracy", "F5": "breakdown",
           "F6": "self_consistency", "F7": "involvement", "F8": "post_training", "F9": "transitions",
           "F10": "user_study", "F11": "ii_consistency", "F12": "ensemble", "F13": "prefix_transfer",
           "F14": "sentence_importance"}
EXTRA_STEMS = {"F4": ["accuracy_transfer"], "F11": ["ii_tasks", "ii_accuracy"]}
# Stems that get a strict twin `<stem>_strict` (the probe figures have none: agreement has one rule).
TWINNED = frozenset({"overview", "consistency", "heatmap", "self_consistency", "involvement", "post_training",
                     "ii_consistency", "ii_tasks"})

VARIANT_COLORS = {"full": "#4c72b0", "stripped": "#dd8452", None: "#8c8c8c"}
VARIANT_NAMES = {"full": "with answer (full)", "stripped": "without answer (stripped)", None: "no CoT (empty)"}
STRIPPED_HATCH = "///"
BREAKDOWN_CATEGORIES = {  # method.md §8.2; the first three make up paper consistency, the first two strict.
    "same_both_correct": ("same answer, both correct", "#1a9850"),
    "same_both_wrong": ("same answer, both wrong", "#91cf60"),
    "different_both_correct": ("different answers, both correct", "#d9ef8b"),
    "one_correct": ("one correct", "#fc8d59"),
    "different_both_wrong": ("different answers, both wrong", "#d73027"),
}
TRANSITION_CATEGORIES = {
    "wrong_to_correct": ("wrong → correct", "#1a9850"),
    "correct_to_correct": ("correct → correct", "#a6d96a"),
    "wrong_to_wrong_same": ("wrong → wrong (same answer)", "#fee08b"),
    "wrong_to_wrong_different": ("wrong → wrong (different)", "#bdbdbd"),
    "correct_to_wrong": ("correct → wrong", "#d73027"),
}
INVOLVEMENT_COLORS = {True: "#c44e52", False: "#8c8c8c"}


# --------------------------------------------------------------------------------------------
# colours, labels, ordering


def model_colors(names: Iterable[str | None]) -> dict[str, str]:
    """One colour per model, assigned in sorted name order (tab10 for up to 10 models, tab20 for up
    to 20, evenly spaced turbo beyond that). Pass the same names to get the same colours in every
    figure."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    models = sorted({n for n in names if n is not None})
    if len(models) <= 10:
        palette = [colormaps["tab10"](i) for i in range(len(models))]
    elif len(models) <= 20:
        palette = [colormaps["tab20"](i) for i in range(len(models))]
    else:
        palette = [colormaps["turbo"](i / (len(models) - 1)) for i in range(len(models))]
    return {m: to_hex(c) for m, c in zip(models, palette)}


def study_models(tables: Mapping[str, pl.DataFrame | pl.LazyFrame | None]) -> list[str]:
    """Every model name in the tables: evaluators, transfer sources, post-training sources and the
    probes' readers and sources. Ensemble names are not models and are left out."""
    names: set[str] = set()

    def add(key: str, *columns: str, condition: str | None = None) -> None:
        df = tables.get(key)
        if df is None:
            return
        df = _frame(df)
        if condition is not None and "condition" in df.columns:
            df = df.filter(pl.col("condition") == condition)
        for c in columns:
            if c in df.columns:
                names.update(v for v in df[c].unique().to_list() if v is not None)

    add("accuracy", "evaluator")
    add("accuracy", "cot_source", condition="transfer")
    add("consistency", "evaluator_a", "evaluator_b")
    add("consistency", "cot_source", condition="transfer")
    add("self_consistency", "evaluator")
    add("transitions", "evaluator")
    add("post_training", "source")
    add("ii_task_accuracy", "evaluator")
    add("prefix_transfer", "evaluator", "cot_source")
    add("sentence_importance", "evaluator", "cot_source")
    add("importance_correlation", "evaluator_a", "evaluator_b", "cot_source")
    return sorted(names)


def _frame(df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return df.collect() if isinstance(df, pl.LazyFrame) else df


def _wrap(text: str, width: int = 14) -> str:
    """Break a long name into lines of about `width` characters after `_`, `,`, `/`, `+`, `-` or a
    space, so condition and model names like "transfer/full/toy_qwq" stay readable as tick labels."""
    lines = []
    for raw in str(text).split("\n"):
        line = ""
        for token in re.split(r"(?<=[_,/+ \-])", raw):
            while len(token) > width and not line:
                lines.append(token[:width])
                token = token[width:]
            if line and len(line) + len(token) > width:
                lines.append(line.rstrip())
                line = ""
            line += token
        lines.append(line.rstrip())
    return "\n".join(lines)


def group_label(condition: str, variant: str | None = None, cot_source: str | None = None) -> str:
    """Tick label of a condition group: 'transfer · full' on one line and 'from <source>' below
    (ensembles: the config name). Pass variant=None when the variant is shown as colour."""
    head = condition if variant is None else f"{condition} · {variant}"
    if cot_source is None:
        return head
    tail = cot_source if condition == "ensemble" else f"from {cot_source}"
    return f"{head}\n{_wrap(tail)}"


def _n_text(values: Iterable[int | None], unit: str = "") -> str:
    ns = sorted({int(v) for v in values if v is not None})
    if not ns:
        return ""
    text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    return f"{text}{' ' + unit if unit else ''}"


def _rank(column: str, order: list[str]) -> pl.Expr:
    return pl.col(column).replace_strict(order, range(len(order)), default=len(order), return_dtype=pl.Int64)


def _canonical_order(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by dataset, definition, condition (method order), variant (full first), source; unknown
    values and nulls last."""
    rank = {"condition": _rank("condition", CONDITION_ORDER), "variant": _rank("variant", VARIANT_ORDER)}
    keys = [c for c in ["dataset", "definition", "condition", "variant", "cot_source"] if c in df.columns]
    by = [expr for c in keys for expr in ([rank[c]] if c in rank else []) + [pl.col(c)]]
    return df.sort(by, nulls_last=True, maintain_order=True) if by else df


def _label(sep: str) -> pl.Expr:
    """'transfer / full / from qwq'; null parts (empty's variant, own-CoT sources) are left out."""
    return pl.concat_str([pl.col("condition"), pl.col("variant"), "from " + pl.col("cot_source")],
                         separator=sep, ignore_nulls=True)


def _varying(df: pl.DataFrame, columns: list[str]) -> list[str]:
    """Those of `columns` that take more than one value, so titles name them only when needed."""
    return [c for c in columns if c in df.columns and df[c].n_unique() > 1]


def _definitions(df: pl.DataFrame) -> list[str]:
    """The definitions in the table with at least one non-null value, paper first."""
    if "definition" not in df.columns:
        return ["paper"]
    present = df["definition"].unique().drop_nulls().to_list()
    return [d for d in DEFINITIONS if d in present] + sorted(set(present) - set(DEFINITIONS))


def _by_definition(df: pl.DataFrame, definition: str | None) -> pl.DataFrame:
    if definition is None or "definition" not in df.columns:
        return df
    return df.filter(pl.col("definition") == definition)


def _variants(df: pl.DataFrame) -> list[str | None]:
    present = set(df["variant"].drop_nulls().to_list()) if "variant" in df.columns else set()
    ordered = [v for v in VARIANT_ORDER if v in present] + sorted(present - set(VARIANT_ORDER))
    return ordered or [None]


def _datasets(df: pl.DataFrame) -> list[str]:
    return sorted(df["dataset"].unique().drop_nulls()) if "dataset" in df.columns else [None]


def _in_panel(df: pl.DataFrame, variant: str | None) -> pl.DataFrame:
    """Rows of one answer-mode panel; the empty condition (no variant) appears in every panel."""
    if variant is None:
        return df
    return df.filter(pl.col("variant").eq_missing(variant) | pl.col("variant").is_null())


def _groups(df: pl.DataFrame, keys: list[str]) -> list[tuple]:
    """Distinct values of `keys`, in the method's order."""
    return _canonical_order(df.select(keys).unique()).rows()


def _def_title(definition: str | None) -> str:
    return "" if definition is None else f" ({definition} rule)"


# --------------------------------------------------------------------------------------------
# drawing helpers


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(max(width, 4.0), max(height, 2.5)), layout="constrained")


def _panels(fig: Figure, nrows: int, ncols: int, **kw) -> list[list[Axes]]:
    return [list(r) for r in fig.subplots(nrows, ncols, squeeze=False, **kw)]


def _fit(text: str, width_in: float, fontsize: float) -> str:
    """Wrap each line of `text` at spaces to fit `width_in` inches at `fontsize` points."""
    chars = max(int(width_in * 115 / fontsize), 12)
    return "\n".join(textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False) or line
                     for line in text.split("\n"))


def _panel_width(ax: Axes) -> float:
    """The panel's share of the figure width in inches (from its grid's width ratios)."""
    spec = ax.get_subplotspec()
    if spec is None:
        return ax.figure.get_figwidth()
    ratios = spec.get_gridspec().get_width_ratios() or [1] * spec.get_gridspec().ncols
    return ax.figure.get_figwidth() * sum(ratios[c] for c in spec.colspan) / sum(ratios)


def _title(ax: Axes, text: str, fontsize: float = 9, **kw) -> None:
    """Panel title wrapped to the panel's width."""
    ax.set_title(_fit(text, _panel_width(ax), fontsize), fontsize=fontsize, **kw)


def _suptitle(fig: Figure, text: str, fontsize: float = 10) -> None:
    fig.suptitle(_fit(text, fig.get_figwidth(), fontsize), fontsize=fontsize)


def _xticks(ax: Axes, labels: list[str]) -> None:
    """Category tick labels, rotated when they would collide; fewer than 3 categories keep a
    normal bar width (centred) instead of filling the panel."""
    longest = max((len(line) for s in labels for line in s.split("\n")), default=0)
    room = _panel_width(ax) * 14 / max(len(labels), 1)  # characters per category at 7 pt
    rotate = longest > room
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35 if rotate else 0,
                  ha="right" if rotate else "center", rotation_mode="anchor" if rotate else "default")
    pad = 0.6 + max(0, 3 - len(labels)) / 2
    ax.set_xlim(-pad, len(labels) - 1 + pad)


def _grouped_bars(ax: Axes, cats: list, hues: list, cells: Mapping[tuple, tuple], *,
                  color: Callable[[object, object], str], hatch: Callable[[object, object], str | None] | None = None,
                  label: Callable[[object], str] = str) -> dict[tuple, float]:
    """Bars for `cells[(category, hue)] = (value, err_low, err_high)`, one bar container per hue
    (labelled `label(hue)`). The hues present in a category share its slot, so a category with one
    hue (the empty condition among full and stripped) gets one centred bar. Errors may be None.
    Returns each bar's x position."""
    width = 0.8 / max(len(hues), 1)
    where: dict[tuple, float] = {}
    for hue in hues:
        xs, ys, lo, hi, colors, hatches = [], [], [], [], [], []
        for i, cat in enumerate(cats):
            if (cat, hue) not in cells:
                continue
            present = [h for h in hues if (cat, h) in cells]
            x = i - width * len(present) / 2 + (present.index(hue) + 0.5) * width
            value, e_lo, e_hi = cells[(cat, hue)]
            xs.append(x)
            ys.append(math.nan if value is None else value)
            lo.append(math.nan if e_lo is None else e_lo)
            hi.append(math.nan if e_hi is None else e_hi)
            colors.append(color(cat, hue))
            hatches.append(hatch(cat, hue) if hatch else None)
            where[(cat, hue)] = x
        if not xs:
            continue
        # Nested lists, not an array: matplotlib 3.11 warns on a (2, 1) array for a single bar.
        yerr = None if all(math.isnan(v) for v in lo + hi) else [lo, hi]
        bars = ax.bar(xs, ys, width, yerr=yerr, capsize=2, color=colors, label=label(hue),
                      edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 0.8})
        for patch, h in zip(bars.patches, hatches):
            if h:
                patch.set_hatch(h)
    return where


def _stacked_bars(ax: Axes, cats: list, categories: Mapping[str, tuple[str, str]],
                  shares: Mapping[tuple, float]) -> None:
    """One stacked bar per category of `cats`; `shares[(cat, category)]` (missing = 0), stacked in
    the order of `categories` (name -> (legend label, colour))."""
    bottom = [0.0] * len(cats)
    for name, (text, colour) in categories.items():
        heights = [shares.get((cat, name)) or 0.0 for cat in cats]
        ax.bar(range(len(cats)), heights, 0.7, bottom=bottom, color=colour, label=text,
               edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]


def _variant_legend(ax: Axes, variants: Iterable[str | None], *, hatched: bool, **kw) -> None:
    """Legend of answer modes drawn as hatching (models are the colours) or as colours."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="0.6" if hatched else VARIANT_COLORS[v], edgecolor="white",
                     hatch=STRIPPED_HATCH if hatched and v == "stripped" else None, label=VARIANT_NAMES[v])
               for v in variants]
    ax.legend(handles=handles, fontsize=7, **kw)


def _heatmap(ax: Axes, matrix: list[list[float]], rows: list[str], cols: list[str], *,
             blank_diagonal: bool = False, aspect: str = "auto", cmap: str = "viridis",
             vmin: float = 0.0, vmax: float = 1.0):
    """Values in [vmin, vmax] (default [0, 1]) with the number in each cell; NaN = grey '–'. A
    range that includes negative values is read as diverging (white text at both ends). Returns the
    image."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    values = np.ma.masked_invalid(np.array(matrix, dtype=float).reshape(len(rows), len(cols)))
    image = ax.imshow(values, cmap=colormaps[cmap].with_extremes(bad=NAN_COLOR), vmin=vmin, vmax=vmax, aspect=aspect)
    annotate = len(rows) * len(cols) <= 400
    for i in range(len(rows)):
        for j in range(len(cols)):
            if blank_diagonal and i == j:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="white"))
                continue
            if annotate:
                v = matrix[i][j]
                dark = abs(v) > 0.6 * max(abs(vmin), abs(vmax)) if vmin < 0 else v < 0.6
                text, colour = ("–", "black") if math.isnan(v) else (f"{v:.2f}", "white" if dark else "black")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(cols)), [_wrap(c, 16) for c in cols], rotation=45 if len(cols) > 2 else 0,
                  ha="right" if len(cols) > 2 else "center", fontsize=7)
    ax.set_yticks(range(len(rows)), [_wrap(r, 24) for r in rows], fontsize=7)
    return image


def _matrix(df: pl.DataFrame, row: str, col: str, value: str, rows: list, cols: list) -> list[list[float]]:
    """Pivot `value` into rows x cols (mean over duplicates, for display); NaN where absent."""
    cell = {(r, c): v for r, c, v in df.group_by(row, col).agg(pl.col(value).mean()).iter_rows()}
    return [[math.nan if cell.get((r, c)) is None else cell[(r, c)] for c in cols] for r in rows]


def _pair_summary(consistency: pl.DataFrame, *, pool_sources: bool, pool_variants: bool = False) -> pl.DataFrame:
    """Mean over evaluator pairs ± population std and stderr, per condition group (for display).

    Pairs with a null consistency (no valid rows) are not counted. `pool_sources` pools the pairs
    of every Transfer source and Ensemble config (F1). `pool_variants` pools full with stripped
    (F1 under `fig1.pooling: paper`). `n_rows` is the largest number of valid rows of one pair."""
    df = consistency
    if pool_variants:
        df = df.with_columns(variant=pl.when(pl.col("variant").is_not_null()).then(pl.lit("full+stripped")))
    keys = [k for k in ["dataset", "condition", "variant", "cot_source"] if not (pool_sources and k == "cot_source")]
    keys += ["definition"] if "definition" in df.columns else []
    value = pl.col("consistency").drop_nulls()
    return (df.group_by(keys)
            .agg(n_pairs=value.len().cast(pl.Int64), mean=value.mean(), std=value.std(ddof=0),
                 n_rows=pl.col("n").max() if "n" in df.columns else pl.lit(None, pl.Int64))
            .with_columns(stderr=pl.col("std") / pl.col("n_pairs").sqrt())
            .pipe(_canonical_order))


def _pair_matrix(panel: pl.DataFrame) -> tuple[list[str], list[list[float]]]:
    """Evaluators (sorted) and the symmetric consistency matrix of one panel; NaN = no value."""
    evaluators = sorted(set(panel["evaluator_a"]) | set(panel["evaluator_b"]))
    index = {e: i for i, e in enumerate(evaluators)}
    matrix = [[math.nan] * len(evaluators) for _ in evaluators]
    for a, b, value in panel.select("evaluator_a", "evaluator_b", "consistency").iter_rows():
        v = math.nan if value is None else value
        matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = v
    return evaluators, matrix


def _grid(n_panels: int, panel_w: float, panel_h: float) -> tuple[Figure, list[Axes]]:
    """A near-square grid for 1..n panels, unused cells hidden."""
    ncols = math.ceil(math.sqrt(n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = _figure(ncols * panel_w, nrows * panel_h)
    axes = [ax for row in _panels(fig, nrows, ncols) for ax in row]
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


# --------------------------------------------------------------------------------------------
# F1-F12


def overview_figure(consistency: pl.DataFrame, *, definition: str | None = "paper",
                    pool_variants: bool = False) -> Figure:
    """F1: mean pairwise consistency per condition ± stderr over the pooled pairs.

    Transfer is pooled over its sources and Ensemble over its configs, within one answer mode
    (`pool_variants=True` pools both modes, as `fig1.pooling: paper` does). There is one panel per
    dataset (rows) and answer mode (columns), and Empty, which has no mode, appears in every panel.
    With `definition=None` and both rules in the table, the paper and strict bars stand side by
    side. Tick labels give the number of pooled pairs."""
    df = _by_definition(_frame(consistency), definition)
    summary = _pair_summary(df, pool_sources=True, pool_variants=pool_variants)
    definitions = _definitions(summary)
    variants, datasets = _variants(summary), _datasets(summary)
    fig = _figure(1.2 + 4.2 * len(variants), 0.6 + 3.4 * len(datasets))
    axes = _panels(fig, len(datasets), len(variants), sharey=True)
    for row, ds in zip(axes, datasets):
        for ax, variant in zip(row, variants):
            sub = _in_panel(summary.filter(pl.col("dataset") == ds), variant)
            conditions = sub["condition"].unique(maintain_order=True).to_list()
            cells = {(r["condition"], r.get("definition", "paper")): (r["mean"], r["stderr"], r["stderr"])
                     for r in sub.iter_rows(named=True)}
            if len(definitions) > 1:
                _grouped_bars(ax, conditions, definitions, cells, color=lambda c, d: f"C{definitions.index(d)}")
            else:
                _grouped_bars(ax, conditions, definitions, cells,
                              color=lambda c, d: VARIANT_COLORS.get(None if c == "empty" else variant, "C2"))
            _xticks(ax, [f"{c}\n{_n_text(sub.filter(condition=c)['n_pairs'], 'pairs')}" for c in conditions])
            ax.set_ylim(0, 1.05)
            _title(ax, " · ".join(str(p) for p in (ds, VARIANT_NAMES.get(variant, variant)) if p is not None),
                         fontsize=9)
        row[0].set_ylabel("mean pairwise consistency")
    if len(definitions) > 1:
        axes[0][-1].legend(title="definition", fontsize=7, title_fontsize=8)
    rows = _n_text(summary["n_rows"], "valid rows per pair").replace("n=", "")
    _suptitle(fig, f"F1 · mean pairwise consistency{_def_title(definition)} ± stderr over pooled pairs "
                 f"(Transfer: all sources, Ensemble: all configs){'; ' + rows if rows else ''}", fontsize=10)
    return fig


def consistency_figure(summary: pl.DataFrame, *, definition: str | None = "paper", figure_id: str = "F2",
                       what: str = "pairwise consistency") -> Figure:
    """F2 (and F11's first panel): per condition group, every Transfer source and Ensemble config
    on its own, the mean over evaluator pairs ± population std over pairs, with full and stripped
    side by side.

    Reads `consistency_summary` (GROUP, definition, n_pairs, mean, std, optional ci_low and
    ci_high). A bootstrap CI, where present, is drawn as a thick grey line beside the bar, next to
    the paper-style error bar rather than instead of it. One panel per dataset."""
    df = _by_definition(_frame(summary), definition)
    datasets = _datasets(df)
    has_ci = {"ci_low", "ci_high"} <= set(df.columns) and df["ci_low"].drop_nulls().len() > 0
    n_cats = max(df.filter(pl.col("dataset") == d).select("condition", "cot_source").unique().height for d in datasets)
    fig = _figure(1.5 + 0.75 * n_cats, 0.6 + 3.8 * len(datasets))
    axes = [row[0] for row in _panels(fig, len(datasets), 1)]
    for ax, ds in zip(axes, datasets):
        sub = df.filter(pl.col("dataset") == ds)
        cats = _groups(sub, ["condition", "cot_source"])
        hues = [v for v in [None, *VARIANT_ORDER] if v in sub["variant"].to_list()] + sorted(
            set(sub["variant"].drop_nulls()) - set(VARIANT_ORDER))
        cells = {((r["condition"], r["cot_source"]), r["variant"]): (r["mean"], r["std"], r["std"])
                 for r in sub.iter_rows(named=True)}
        where = _grouped_bars(ax, cats, hues, cells, color=lambda c, v: VARIANT_COLORS.get(v, "C2"),
                              label=lambda v: VARIANT_NAMES.get(v, v))
        if has_ci:
            for r in sub.iter_rows(named=True):
                x = where.get(((r["condition"], r["cot_source"]), r["variant"]))
                if x is not None and r["ci_low"] is not None and r["ci_high"] is not None:
                    ax.plot([x + 0.08] * 2, [r["ci_low"], r["ci_high"]], color="black", lw=2.5, alpha=0.45,
                            solid_capstyle="butt")
        labels = []
        for c, s in cats:
            n = sub.filter(pl.col("condition") == c, pl.col("cot_source").eq_missing(s))["n_pairs"]
            labels.append(f"{group_label(c, None, s)}\n{_n_text(n, 'pairs')}")
        _xticks(ax, labels)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"mean {what}")
        _title(ax, f"{ds}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ci = "; thick grey line: bootstrap 95% CI over items" if has_ci else ""
    _suptitle(fig, f"{figure_id} · {what}{_def_title(definition)} per condition: mean ± std over evaluator pairs{ci}",
                 fontsize=10)
    return fig


def heatmap_figure(consistency: pl.DataFrame, *, definition: str | None = "paper",
                   dataset: str | None = None) -> Figure:
    """F3: one evaluator × evaluator consistency heatmap per (condition, variant, cot_source).

    The matrix is symmetric. The diagonal (an evaluator with itself) is blank, and pairs with no
    value (no valid rows) are grey. `dataset` restricts the table to one dataset. Panel titles name
    the dataset and the definition only when the table mixes several, and give the largest number
    of valid rows of any pair."""
    df = _by_definition(_frame(consistency), definition)
    if dataset is not None:
        df = df.filter(pl.col("dataset") == dataset)
    prefix = _varying(df, ["dataset", "definition"])
    keys = prefix + PANEL_KEYS
    panels = (_canonical_order(df.select(keys).unique())
              .with_row_index("panel")
              .with_columns(title=pl.concat_str([*prefix, _label(" / ")], separator=" · ")))
    parts = df.join(panels, on=keys, nulls_equal=True).partition_by("panel", as_dict=True)
    k_max = max(df["evaluator_a"].n_unique(), df["evaluator_b"].n_unique()) + 1
    side = 1.8 + 0.45 * k_max
    fig, axes = _grid(panels.height, side, side)
    image = None
    for ax, (panel, title) in zip(axes, panels.select("panel", "title").iter_rows()):
        part = parts[(panel,)]
        evaluators, matrix = _pair_matrix(part)
        image = _heatmap(ax, matrix, evaluators, evaluators, blank_diagonal=True, aspect="equal")
        _title(ax, f"{_wrap(title, 36)}\n{_n_text([part['n'].max()] if 'n' in part.columns else [], 'rows')}",
                     fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"pairwise consistency{_def_title(definition)}")
    _suptitle(fig, f"F3 · pairwise consistency{_def_title(definition)} per evaluator pair; "
                   "n = most valid rows of a pair")
    return fig


def accuracy_figure(accuracy: pl.DataFrame, *, colors: Mapping[str, str] | None = None) -> Figure:
    """F4 (bars): accuracy per condition group, one bar per evaluator in its model colour, error bar
    = binomial SE. One panel per dataset. A group that lacks an evaluator has no bar there."""
    df = _canonical_order(_frame(accuracy))
    colors = colors or model_colors(df["evaluator"])
    datasets = _datasets(df)
    evaluators = sorted(df["evaluator"].unique())
    n_groups = max(df.filter(pl.col("dataset") == d).select(PANEL_KEYS).unique().height for d in datasets)
    fig = _figure(2.0 + n_groups * (0.35 + 0.16 * len(evaluators)), 0.6 + 4.0 * len(datasets))
    axes = [row[0] for row in _panels(fig, len(datasets), 1)]
    denominator = "n_expected" if "n_expected" in df.columns else "n"
    for ax, ds in zip(axes, datasets):
        sub = df.filter(pl.col("dataset") == ds)
        cats = _groups(sub, PANEL_KEYS)
        cells = {((r["condition"], r["variant"], r["cot_source"]), r["evaluator"]): (r["accuracy"], r["se"], r["se"])
                 for r in sub.iter_rows(named=True)}
        _grouped_bars(ax, cats, evaluators, cells, color=lambda c, e: colors.get(e, MEAN_COLOR))
        _xticks(ax, [group_label(*c) for c in cats])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        _title(ax, f"{ds}: accuracy per evaluator ± binomial SE ({_n_text(sub[denominator], 'items × samples')})",
                     fontsize=9)
        ax.legend(title="evaluator", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, "F4 · accuracy per evaluator and condition", fontsize=10)
    return fig


def transfer_accuracy_figure(accuracy: pl.DataFrame) -> Figure:
    """F4 (heatmap): accuracy of each target evaluator (columns) reading each source's CoT (rows)
    under Transfer. One panel per dataset (rows) and answer mode (columns)."""
    df = _frame(accuracy).filter(pl.col("condition") == "transfer")
    datasets, variants = _datasets(df), _variants(df)
    sources, targets = sorted(df["cot_source"].drop_nulls().unique()), sorted(df["evaluator"].unique())
    side_w, side_h = 1.8 + 0.55 * len(targets), 2.0 + 0.5 * len(sources)
    fig = _figure(side_w * len(variants) + 1.2, side_h * len(datasets) + 0.8)
    axes = _panels(fig, len(datasets), len(variants))
    image = None
    denominator = "n_expected" if "n_expected" in df.columns else "n"
    for row, ds in zip(axes, datasets):
        for ax, variant in zip(row, variants):
            sub = df.filter(pl.col("dataset") == ds, pl.col("variant").eq_missing(variant))
            image = _heatmap(ax, _matrix(sub, "cot_source", "evaluator", "accuracy", sources, targets),
                             sources, targets, aspect="equal")
            ax.set_xlabel("target (evaluator)", fontsize=8)
            ax.set_ylabel("source of the CoT", fontsize=8)
            _title(ax, f"{ds} · {VARIANT_NAMES.get(variant, variant)}\n{_n_text(sub[denominator], 'items')}",
                         fontsize=8)
    fig.colorbar(image, ax=[a for r in axes for a in r], shrink=0.8, label="accuracy")
    _suptitle(fig, "F4 · Transfer accuracy: source × target", fontsize=10)
    return fig


PAPER_BREAKDOWN_CATEGORIES = {  # the original's grouping: tolerance agreement drawn as inconsistent
    "same_both_correct": BREAKDOWN_CATEGORIES["same_both_correct"],
    "same_both_wrong": BREAKDOWN_CATEGORIES["same_both_wrong"],
    "different_both_correct": ("different answers, both correct", "#fdae61"),
    "one_correct": BREAKDOWN_CATEGORIES["one_correct"],
    "different_both_wrong": BREAKDOWN_CATEGORIES["different_both_wrong"],
}


def breakdown_figure(breakdown: pl.DataFrame, *, paper_grouping: bool = False) -> Figure:
    """F5: per condition group, the pair-rows pooled over evaluator pairs split into the five
    agreement categories of §8.2, as stacked shares. Green = consistent under the paper rule, with
    the two darkest also consistent under the strict rule. One panel per dataset (rows) and answer
    mode (columns). A non-zero sanity count (same answer, different correctness) is flagged in the
    panel title. `paper_grouping` (`compat.breakdown_grouping`) draws tolerance agreement in an
    inconsistent colour, as the original did, so the green bars are the strict consistency."""
    df = _frame(breakdown)
    datasets, variants = _datasets(df), _variants(df)
    categories = dict(PAPER_BREAKDOWN_CATEGORIES if paper_grouping else BREAKDOWN_CATEGORIES)
    for extra in sorted(set(df["category"].unique()) - set(categories)):
        categories[extra] = (extra, "#756bb1")
    n_cats = max(_in_panel(df.filter(pl.col("dataset") == d), v).select("condition", "cot_source").unique().height
                 for d in datasets for v in variants)
    fig = _figure(2.8 + (0.2 + 0.75 * n_cats) * len(variants), 0.8 + 3.8 * len(datasets))
    axes = _panels(fig, len(datasets), len(variants), sharey=True)
    for row, ds in zip(axes, datasets):
        for ax, variant in zip(row, variants):
            sub = _in_panel(df.filter(pl.col("dataset") == ds), variant)
            cats = _groups(sub, ["condition", "cot_source"])
            shares = {((r["condition"], r["cot_source"]), r["category"]): r["share"] for r in sub.iter_rows(named=True)}
            _stacked_bars(ax, cats, categories, shares)
            labels = []
            for c, s in cats:
                n = sub.filter(pl.col("condition") == c, pl.col("cot_source").eq_missing(s))["n_rows"]
                labels.append(f"{group_label(c, None, s)}\n{_n_text(n, 'pair-rows')}")
            _xticks(ax, labels)
            ax.set_ylim(0, 1.02)
            sanity = int(sub["same_diff_correctness"].max() or 0) if "same_diff_correctness" in sub.columns else 0
            warn = f"\n⚠ {sanity} same-answer rows differ in correctness" if sanity else ""
            _title(ax, f"{ds} · {VARIANT_NAMES.get(variant, variant)}{warn}", fontsize=9,
                         color="red" if sanity else "black")
        row[0].set_ylabel("share of valid pair-rows")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, "F5 · consistency breakdown (pooled over evaluator pairs)", fontsize=10)
    return fig


def self_consistency_figure(self_consistency: pl.DataFrame, *, definition: str | None = "paper",
                            colors: Mapping[str, str] | None = None) -> Figure:
    """F6: self-consistency per model (Default sample 0 vs the Sampled samples), with the answer
    (full, solid) and without it (stripped, hatched), with bootstrap CIs where present, plus the
    mean ± std over models (dark bar). One panel per dataset."""
    df = _by_definition(_frame(self_consistency), definition)
    colors = colors or model_colors(df["evaluator"])
    datasets, variants = _datasets(df), _variants(df)
    models = sorted(df["evaluator"].unique())
    fig = _figure(2.5 + 0.9 * (len(models) + 1), 0.6 + 3.6 * len(datasets))
    axes = [row[0] for row in _panels(fig, len(datasets), 1)]
    mean_key = "mean over models"
    for ax, ds in zip(axes, datasets):
        sub = df.filter(pl.col("dataset") == ds)
        cells = {}
        for r in sub.iter_rows(named=True):
            lo = None if r.get("ci_low") is None else r["rate"] - r["ci_low"]
            hi = None if r.get("ci_high") is None else r["ci_high"] - r["rate"]
            cells[(r["evaluator"], r["variant"])] = (r["rate"], lo, hi)
        means = sub.group_by("variant").agg(m=pl.col("rate").mean(), s=pl.col("rate").std(ddof=0))
        for v, m, s in means.iter_rows():
            cells[(mean_key, v)] = (m, s, s)
        cats = [*models, mean_key]
        _grouped_bars(ax, cats, variants, cells,
                      color=lambda c, v: MEAN_COLOR if c == mean_key else colors.get(c, MEAN_COLOR),
                      hatch=lambda c, v: STRIPPED_HATCH if v == "stripped" else None,
                      label=lambda v: VARIANT_NAMES.get(v, v))
        labels = [f"{_wrap(m)}\n{_n_text(sub.filter(evaluator=m)['n'], 'rows')}" for m in models]
        _xticks(ax, [*labels, f"mean ± std\nover {len(models)} models"])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("self-consistency rate")
        _title(ax, f"{ds}: Default (sample 0) vs Sampled answers of the same model", fontsize=9)
        _variant_legend(ax, variants, hatched=True, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, f"F6 · self-consistency{_def_title(definition)} per model; n = rows where both answers parse",
                 fontsize=10)
    return fig


def involvement_figure(involvement: pl.DataFrame, *, definition: str | None = "paper") -> Figure:
    """F7: mean consistency of the evaluator pairs that include a creator of the CoT (involved)
    vs those that do not, ± stderr, per Transfer source and per Ensemble creator set. Rows are
    dataset × answer mode, and columns are the version: `source` (Transfer: the source model;
    Ensemble: its generators) and `creator` (Ensemble: generators ∪ evaluators). Tick labels give
    the number of involved and not-involved pairs."""
    df = _by_definition(_frame(involvement), definition)
    datasets = _datasets(df)
    versions = [v for v in ["source", "creator"] if v in df["version"].to_list()] + sorted(
        set(df["version"].unique()) - {"source", "creator"})
    rows = [(ds, v) for ds in datasets for v in _variants(df.filter(pl.col("dataset") == ds))]
    n_cats = df.select("condition", "creators").unique().height
    fig = _figure(2.5 + (0.5 + 0.6 * n_cats) * len(versions), 0.6 + 3.4 * len(rows))
    axes = _panels(fig, len(rows), len(versions), sharey=True)
    hues = [True, False]
    for row, (ds, variant) in zip(axes, rows):
        for ax, version in zip(row, versions):
            sub = df.filter(pl.col("dataset") == ds, pl.col("variant").eq_missing(variant),
                            pl.col("version") == version)
            cats = sub.select("condition", "creators").unique().sort(
                _rank("condition", CONDITION_ORDER), "creators").rows()
            cells = {((r["condition"], r["creators"]), r["involved"]): (r["mean"], r["stderr"], r["stderr"])
                     for r in sub.iter_rows(named=True)}
            _grouped_bars(ax, cats, hues, cells, color=lambda c, h: INVOLVEMENT_COLORS[h],
                          label=lambda h: "pair includes a creator" if h else "pair includes no creator")
            labels = []
            for c, creators in cats:
                n = dict(sub.filter(condition=c, creators=creators).select("involved", "n_pairs").rows())
                labels.append(f"{c}\n{_wrap(creators.replace(',', ', '))}\n"
                              f"pairs: {n.get(True, 0)} in, {n.get(False, 0)} out")
            _xticks(ax, labels)
            ax.set_ylim(0, 1.05)
            _title(ax, f"{ds} · {VARIANT_NAMES.get(variant, variant)}\n{version} version", fontsize=9)
            if not cats:
                ax.text(0.5, 0.5, f"no {version}-version rows", ha="center", va="center", transform=ax.transAxes)
        row[0].set_ylabel("mean pairwise consistency")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, f"F7 · creator involvement{_def_title(definition)}: mean ± stderr over pairs", fontsize=10)
    return fig


def post_training_figure(post_training: pl.DataFrame, *, definition: str | None = "paper",
                         colors: Mapping[str, str] | None = None) -> Figure:
    """F8: per post-training source, grouped by its tag (e.g. base, grpo), the target accuracy
    (mean over target evaluators reading its CoT) and the agreement between the targets' answers
    and the source's own answer, full (solid) and stripped (hatched). After each group comes the
    group mean (dark bar, a display mean over its sources). Rows without a tag are not drawn."""
    df = _by_definition(_frame(post_training), definition).filter(pl.col("post_training").is_not_null())
    colors = colors or model_colors(df["source"])
    datasets, variants = _datasets(df), _variants(df)
    metrics = [("target_accuracy", "target accuracy"),
               ("agreement", f"agreement with the source{_def_title(definition)}")]
    n_cats = df.select("source").n_unique() + df.select("post_training").n_unique()
    fig = _figure(2.5 + 2 * (0.6 + 0.6 * n_cats), 0.6 + 3.6 * len(datasets))
    axes = _panels(fig, len(datasets), len(metrics), sharey=True)
    for row, ds in zip(axes, datasets):
        sub = df.filter(pl.col("dataset") == ds)
        tags = sorted(sub["post_training"].unique())
        cats, labels = [], []
        for tag in tags:
            members = sorted(sub.filter(post_training=tag)["source"].unique())
            cats += [(tag, s) for s in members] + [(tag, None)]
            labels += [f"{_wrap(s)}\n({tag})" for s in members] + [f"mean\n{tag}\n({len(members)} sources)"]
        for ax, (column, title) in zip(row, metrics):
            cells = {((r["post_training"], r["source"]), r["variant"]): (r[column], None, None)
                     for r in sub.iter_rows(named=True)}
            for (tag, v), m in sub.group_by("post_training", "variant").agg(pl.col(column).mean()).rows_by_key(
                    ["post_training", "variant"], unique=True).items():
                cells[((tag, None), v)] = (m[0], None, None)
            _grouped_bars(ax, cats, variants, cells,
                          color=lambda c, v: MEAN_COLOR if c[1] is None else colors.get(c[1], MEAN_COLOR),
                          hatch=lambda c, v: STRIPPED_HATCH if v == "stripped" else None,
                          label=lambda v: VARIANT_NAMES.get(v, v))
            _xticks(ax, labels)
            ax.set_ylim(0, 1.05)
            _title(ax, f"{ds}: {title}\n({_n_text(sub['n_targets'], 'targets')} per source)", fontsize=9)
        row[-1].yaxis.set_tick_params(labelleft=True)
        _variant_legend(row[-1], variants, hatched=True, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, "F8 · post-training: Transfer from base and fine-tuned sources", fontsize=10)
    return fig


def transitions_figure(transitions: pl.DataFrame) -> Figure:
    """F9: per condition group, the shares of items moving from their Empty-CoT outcome to the
    condition's outcome, in five categories, averaged over evaluators (a display mean) and stacked.
    One panel per dataset (rows) and answer mode (columns)."""
    df = _frame(transitions)
    datasets, variants = _datasets(df), _variants(df)
    categories = dict(TRANSITION_CATEGORIES)
    for extra in sorted(set(df["category"].unique()) - set(categories)):
        categories[extra] = (extra, "#756bb1")
    mean = df.group_by("dataset", "condition", "variant", "cot_source", "category").agg(
        share=pl.col("share").mean(), n_evaluators=pl.col("evaluator").n_unique())
    items = df.group_by("dataset", "condition", "variant", "cot_source", "evaluator").agg(pl.col("n").sum())
    n_cats = max(df.filter(pl.col("dataset") == d, pl.col("variant").eq_missing(v)).select(
        "condition", "cot_source").unique().height for d in datasets for v in variants)
    fig = _figure(3.0 + (0.2 + 0.75 * n_cats) * len(variants), 0.8 + 3.8 * len(datasets))
    axes = _panels(fig, len(datasets), len(variants), sharey=True)
    for row, ds in zip(axes, datasets):
        for ax, variant in zip(row, variants):
            sub = mean.filter(pl.col("dataset") == ds, pl.col("variant").eq_missing(variant))
            cats = _groups(sub, ["condition", "cot_source"])
            shares = {((r["condition"], r["cot_source"]), r["category"]): r["share"] for r in sub.iter_rows(named=True)}
            _stacked_bars(ax, cats, categories, shares)
            _xticks(ax, [group_label(c, None, s) for c, s in cats])
            ax.set_ylim(0, 1.02)
            n = items.filter(pl.col("dataset") == ds, pl.col("variant").eq_missing(variant))["n"]
            k = _n_text(sub["n_evaluators"], "evaluators").replace("n=", "")
            _title(ax, f"{ds} · {VARIANT_NAMES.get(variant, variant)}\n"
                       f"mean over {k}; {_n_text(n, 'items per evaluator')}", fontsize=9)
        row[0].set_ylabel("share of items (mean over evaluators)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _suptitle(fig, "F9 · Empty → condition transitions", fontsize=10)
    return fig


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def user_study_figure(means: pl.DataFrame, tests: pl.DataFrame | None = None,
                      correlation: pl.DataFrame | None = None, points: pl.DataFrame | None = None, *,
                      test: str | None = None, alpha: float = 0.05) -> Figure:
    """F10: left, the mean rating per source for each criterion ± SD, with a bracket and stars over
    every pair of sources whose adjusted p (`p_adjusted`, else `p_value`) of `test` is below
    `alpha` (default test: the first one in the table). Right, given `points`, a scatter of each
    source's pipeline consistency against its mean rating (one marker per criterion), with the
    correlation rows (Pearson r, Spearman ρ, CI) written beside it."""
    means = _frame(means)
    sources = sorted(means["source"].unique())
    criteria = means["criterion"].unique(maintain_order=True).to_list()
    palette = {s: c for s, c in zip(sources, _source_palette(len(sources)))}
    has_points = points is not None and not _frame(points).is_empty()
    fig = _figure(2.5 + 1.1 * len(criteria) * max(1, len(sources) / 3) + (5.0 if has_points else 0), 4.6)
    axes = _panels(fig, 1, 2 if has_points else 1, width_ratios=[1.6, 1] if has_points else None)[0]
    ax = axes[0]
    cells = {(r["criterion"], r["source"]): (r["mean"], r["sd"], r["sd"]) for r in means.iter_rows(named=True)}
    where = _grouped_bars(ax, criteria, sources, cells, color=lambda c, s: palette[s])
    _xticks(ax, [f"{_wrap(c)}\n{_n_text(means.filter(criterion=c)['n'], 'ratings')}" for c in criteria])
    top = max((m + (s or 0) for m, s, _ in cells.values() if m is not None), default=5.0)
    marked = ""
    if tests is not None and not _frame(tests).is_empty():
        tests = _frame(tests)
        test = test or tests["test"][0]
        p_col = "p_adjusted" if "p_adjusted" in tests.columns else "p_value"
        level: dict[str, int] = {}
        for r in tests.filter(pl.col("test") == test).iter_rows(named=True):
            p, c = r[p_col] if r[p_col] is not None else r["p_value"], r["criterion"]
            xa, xb = where.get((c, r["source_a"])), where.get((c, r["source_b"]))
            if p is None or p >= alpha or xa is None or xb is None:
                continue
            y = top + 0.15 + 0.35 * level.get(c, 0)
            level[c] = level.get(c, 0) + 1
            ax.plot([xa, xa, xb, xb], [y - 0.08, y, y, y - 0.08], color="black", lw=0.8)
            ax.text((xa + xb) / 2, y, _stars(p), ha="center", va="bottom", fontsize=8, gid="significance")
        top += 0.35 * max(level.values(), default=0)
        marked = f"; marks: {test}, {p_col.replace('_', ' ')} * <.05 ** <.01 *** <.001"
    ax.set_ylim(0, max(5.0, top + 0.4))
    ax.set_ylabel("mean rating (1–5) ± SD")
    _title(ax, f"mean rating per source and criterion{marked}", fontsize=9)
    ax.legend(title="source", fontsize=7, title_fontsize=8, loc="lower left")
    if has_points:
        sc = axes[1]
        pts = _frame(points)
        markers = "osD^vP*X"
        for k, crit in enumerate(pts["criterion"].unique(maintain_order=True).to_list()):
            part = pts.filter(criterion=crit)
            sc.scatter(part["consistency"].to_list(), part["mean_rating"].to_list(),
                       c=[palette.get(s, MEAN_COLOR) for s in part["source"]], marker=markers[k % len(markers)],
                       label=crit, edgecolors="black", linewidths=0.5)
        sc.set_xlabel("pipeline consistency of the source")
        sc.set_ylabel("mean rating")
        sc.legend(title="criterion", fontsize=7, title_fontsize=8, loc="lower right")
        lines = []
        if correlation is not None and not _frame(correlation).is_empty():
            for r in _frame(correlation).iter_rows(named=True):
                ci = "" if r.get("ci_low") is None else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                rho = "" if r.get("spearman_rho") is None else f", ρ = {r['spearman_rho']:.2f}"
                r_text = "n/a" if r.get("pearson_r") is None else f"{r['pearson_r']:.2f}"
                lines.append(f"{r['metric']} ({r['variant']}): r = {r_text}{ci}{rho}, {r['n_sources']} sources")
        _title(sc, "consistency vs mean rating\n" + "\n".join(lines), fontsize=8)
    _suptitle(fig, f"F10 · user study ({len(sources)} sources, {len(criteria)} criteria)", fontsize=10)
    return fig


def _source_palette(n: int) -> list[str]:
    """Colours for explanation sources (not models), distinct from the model palette."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["Set2"] if n <= 8 else colormaps["viridis"]
    return [to_hex(cmap(i if n <= 8 else i / max(n - 1, 1))) for i in range(n)]


def ii_task_figure(task_consistency: pl.DataFrame, *, definition: str | None = "paper") -> Figure:
    """F11 (per task): a task × condition-group heatmap of pairwise consistency. When the table has
    evaluator pairs, cells show the mean over pairs (for display). One panel per dataset."""
    df = _by_definition(_frame(task_consistency), definition)
    datasets = _datasets(df)
    n_tasks = df["task"].n_unique()
    n_groups = df.select(PANEL_KEYS).unique().height
    fig = _figure(3.0 + 0.6 * n_groups, (1.5 + 0.3 * n_tasks) * len(datasets))
    axes = [row[0] for row in _panels(fig, len(datasets), 1)]
    image = None
    for ax, ds in zip(axes, datasets):
        sub = df.filter(pl.col("dataset") == ds).with_columns(
            group=pl.concat_str([pl.col("condition"), pl.col("variant")], separator=" · ", ignore_nulls=True)
            + pl.when(pl.col("cot_source").is_not_null()).then("\n" + pl.col("cot_source")).otherwise(pl.lit("")))
        groups = _canonical_order(sub.select(*PANEL_KEYS, "group").unique())["group"].to_list()
        tasks = sorted(sub["task"].unique())
        image = _heatmap(ax, _matrix(sub, "task", "group", "consistency", tasks, groups), tasks, groups)
        pairs = sub.select("evaluator_a", "evaluator_b").unique().height if "evaluator_a" in sub.columns else None
        _title(ax, f"{ds}: per-task consistency{_def_title(definition)}, {len(tasks)} tasks"
                     + (f", mean over {pairs} pairs" if pairs else ""), fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="consistency")
    _suptitle(fig, "F11 · Instruction Induction: consistency per task", fontsize=10)
    return fig


def ii_accuracy_figure(task_accuracy: pl.DataFrame) -> Figure:
    """F11 (accuracy): per-task accuracy of each model, a task × evaluator heatmap per dataset and
    (condition, variant). Transfer and Ensemble cells are the mean over their sources/configs (for
    display), which the panel title says."""
    df = _frame(task_accuracy)
    panels = _canonical_order(df.select("dataset", "condition", "variant").unique()).rows()
    tasks = sorted(df["task"].unique())
    evaluators = sorted(df["evaluator"].unique())
    fig, axes = _grid(len(panels), 1.8 + 0.6 * len(evaluators), 1.4 + 0.28 * len(tasks))
    image = None
    for ax, (ds, condition, variant) in zip(axes, panels):
        sub = df.filter(pl.col("dataset") == ds, pl.col("condition") == condition,
                        pl.col("variant").eq_missing(variant))
        image = _heatmap(ax, _matrix(sub, "task", "evaluator", "accuracy", tasks, evaluators), tasks, evaluators)
        n_src = sub["cot_source"].n_unique() if sub["cot_source"].null_count() < sub.height else 0
        pooled = f"\nmean over {n_src} sources" if n_src > 1 else ""
        _title(ax, f"{ds} · {group_label(condition, variant)}{pooled}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    _suptitle(fig, "F11 · Instruction Induction: accuracy per task and model", fontsize=10)
    return fig


def ensemble_figure(diag: pl.DataFrame) -> Figure:
    """F12: per ensemble (rows), the share of steps won by each generator, the items by step
    count, the items by stop reason and, where recorded, the mean share of characters that answer
    removal kept (columns). Data from `metrics.ensemble_diagnostics`."""
    diag = _frame(diag)
    groups = diag.select("dataset", "ensemble").unique(maintain_order=True).rows()
    kinds = [("generator_wins", "share of steps won"), ("steps", "items by step count"),
             ("stop_reason", "items by stop reason")]
    if "strip_char_ratio" in diag["kind"].to_list():
        kinds.append(("strip_char_ratio", "answer removal: kept share of characters"))
    fig = _figure(3.2 * len(kinds), 0.6 + 3.0 * len(groups))
    axes = _panels(fig, len(groups), len(kinds))
    for row, (ds, ens) in zip(axes, groups):
        for ax, (kind, title) in zip(row, kinds):
            sub = diag.filter(dataset=ds, ensemble=ens, kind=kind)
            if kind == "steps":
                sub = sub.sort(pl.col("label").cast(pl.Int64, strict=False))
            share = kind in ("generator_wins", "strip_char_ratio")
            ax.bar(range(sub.height), sub["share" if share else "n"].to_numpy(), color="#4c72b0")
            _xticks(ax, [_wrap(x) for x in sub["label"].to_list()])
            count = "steps" if kind == "generator_wins" else "items"
            _title(ax, f"{ds} · {ens}\n{title} (n = {int(sub['n'].sum())} {count})", fontsize=8)
            if share:
                ax.set_ylim(0, 1.05)
    _suptitle(fig, "F12 · ensemble diagnostics", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# F13-F14: which part of a CoT transfers (cotransfer.probe_metrics)

PROBE_WRAP = 4  # panels per row before the probe figures wrap
SELF_LW, READER_LW = 2.6, 1.2


def _probe_panels(df: pl.DataFrame) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """The (dataset, cot_source) panels of a probe table in order, its datasets and sources."""
    datasets = sorted(df["dataset"].unique().drop_nulls())
    sources = sorted(df["cot_source"].unique().drop_nulls())
    panels = sorted(df.select("dataset", "cot_source").unique().drop_nulls().rows())
    return panels, datasets, sources


def _probe_title(ds: str, source: str, several: bool) -> str:
    return f"{ds} · CoT of {source}" if several else f"CoT of {source}"


def _reader_style(reader: str, source: str, colors: Mapping[str, str]) -> dict:
    """A reader's line: its model colour; the source reading its own CoT thicker and on top."""
    own = reader == source
    return {"color": colors.get(reader, MEAN_COLOR), "lw": SELF_LW if own else READER_LW,
            "ls": "-", "zorder": 3 if own else 2, "alpha": 1.0 if own else 0.9}


def _reader_handles(readers: list[str], sources: list[str], colors: Mapping[str, str]) -> list:
    """Legend handles of the readers (not added to any axes)."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=colors.get(r, MEAN_COLOR), marker="o", ms=4,
                   lw=SELF_LW if r in sources else READER_LW,
                   label=f"{r} (thick: reading its own CoT)" if r in sources else r) for r in readers]


def prefix_transfer_figure(prefix: pl.DataFrame, colors: Mapping[str, str] | None = None) -> Figure:
    """F13: how much of a source's CoT a reader needs to reach the source's answer.

    One panel per (dataset, cot_source): datasets as rows and sources as columns, or rows of
    `PROBE_WRAP` panels when there are more sources (or the datasets have different sources). x
    is the share of the source's CoT that the reader saw (characters, cut at sentence ends), y the
    reader's agreement with the source's own answer, one line per reader (`evaluator`) in its
    model colour; the source reading its own CoT is drawn thicker. The shaded band is the
    bootstrap CI (`agreement_lo`-`agreement_hi`, where present) and a hollow marker on the line is
    the reader's transfer point (the first fraction reaching 90% of its value at 1.0). Reads
    `probe_metrics.prefix_transfer`."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    df = _frame(prefix).filter(pl.col("source_agreement").is_not_null())
    colors = colors or model_colors([*df["evaluator"], *df["cot_source"]])
    panels, datasets, sources = _probe_panels(df)
    readers = sorted(df["evaluator"].unique().drop_nulls())
    several = len(datasets) > 1
    if len(sources) <= PROBE_WRAP and len(panels) == len(datasets) * len(sources):
        nrows, ncols = len(datasets), len(sources)
        where = {(ds, s): (i, j) for i, ds in enumerate(datasets) for j, s in enumerate(sources)}
    else:  # many sources, or datasets with different sources: wrapped rows of panels
        ncols = min(len(panels), PROBE_WRAP)
        nrows = math.ceil(len(panels) / ncols)
        where = {p: divmod(k, ncols) for k, p in enumerate(panels)}
    fig = _figure(1.2 + 3.4 * ncols + 2.2, 0.8 + 3.0 * nrows)
    axes = _panels(fig, nrows, ncols, sharey=True)
    for r, row in enumerate(axes):
        for c, ax in enumerate(row):
            if (r, c) not in where.values():
                ax.set_visible(False)
    for (ds, source), (r, c) in where.items():
        ax = axes[r][c]
        sub = df.filter(pl.col("dataset") == ds, pl.col("cot_source") == source)
        for reader in [x for x in readers if x in set(sub["evaluator"])]:
            part = sub.filter(pl.col("evaluator") == reader).sort("fraction")
            style = _reader_style(reader, source, colors)
            x = part["fraction"].to_numpy()
            y = part["source_agreement"].to_numpy()
            ax.plot(x, y, marker="o", ms=3.5, label=reader, **style)
            lo = part["agreement_lo"].to_numpy().astype(float)
            hi = part["agreement_hi"].to_numpy().astype(float)
            known = ~(np.isnan(lo) | np.isnan(hi))
            if known.any():
                ax.fill_between(x, np.where(known, lo, y), np.where(known, hi, y), where=known,
                                color=style["color"], alpha=0.15, lw=0, zorder=1, gid=f"band:{reader}")
            point = part["transfer_point"].drop_nulls()
            if point.len():
                tp = float(point[0])
                at = part.filter(pl.col("fraction") == tp)["source_agreement"]
                y_tp = float(at[0]) if at.len() else float(np.interp(tp, x, y))
                ax.scatter([tp], [y_tp], s=90, facecolors="none", edgecolors=style["color"], linewidths=1.4,
                           zorder=4, gid=f"transfer_point:{reader}")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, lw=0.5)
        ax.set_xlabel("share of the source's CoT\n(characters, cut at sentence ends)", fontsize=8)
        ax.yaxis.set_tick_params(labelleft=True)
        if c == 0:
            ax.set_ylabel("agreement with the source's own answer", fontsize=8)
        _title(ax, f"{_probe_title(ds, source, several)} ({_n_text(sub['n'], 'items')})", fontsize=9)
    handles = _reader_handles(readers, sources, colors)
    handles += [Patch(facecolor="0.5", alpha=0.3, label="bootstrap CI over items"),
                Line2D([], [], ls="none", marker="o", ms=8, mfc="none", mec="0.3",
                       label="transfer point (first fraction at\n90% of the value at 1.0)")]
    anchor = axes[0][max(c for r, c in where.values() if r == 0)]
    anchor.legend(handles=handles, title="reader", fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0))
    _suptitle(fig, "F13 · prefix transfer: agreement with the source's answer after reading a share of its CoT "
                   "(0: no thought, 1: the whole CoT, as in Transfer)", fontsize=10)
    return fig


def _importance_curve(part: pl.DataFrame, exact: list[float] | None) -> tuple[list[float], list[float]]:
    """Mean importance per position (`exact` positions) or per fifth of [0, 1] (bin centres)."""
    if exact is not None:
        means = part.group_by("position").agg(pl.col("importance").mean())
        cell = dict(means.rows())
        xs = [p for p in exact if cell.get(p) is not None]
        return xs, [cell[p] for p in xs]
    binned = (part.with_columns(bin=(pl.col("position").clip(0.0, 1.0) * 5).floor().clip(0, 4).cast(pl.Int64))
              .group_by("bin").agg(pl.col("importance").mean()).sort("bin"))
    return [(b + 0.5) / 5 for b in binned["bin"]], binned["importance"].to_list()


def _correlation_matrix(part: pl.DataFrame) -> tuple[list[str], list[list[float]]]:
    """Readers (sorted) and the symmetric Spearman matrix of one (dataset, source); diagonal 1,
    NaN where the pair has no value."""
    readers = sorted(set(part["evaluator_a"].drop_nulls()) | set(part["evaluator_b"].drop_nulls()))
    index = {r: i for i, r in enumerate(readers)}
    matrix = [[1.0 if i == j else math.nan for j in range(len(readers))] for i in range(len(readers))]
    for a, b, rho in part.select("evaluator_a", "evaluator_b", "spearman").iter_rows():
        if a is None or b is None or a == b:
            continue
        matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = math.nan if rho is None else rho
    return readers, matrix


def importance_figure(importance: pl.DataFrame, correlation: pl.DataFrame | None = None,
                      colors: Mapping[str, str] | None = None) -> Figure:
    """F14: which sentences of a source's CoT carry its answer, for each reader.

    Top: one panel per (dataset, cot_source), the mean importance of a sentence (the drop in the
    reader's agreement with the source's answer when the sentence is left out) against its
    relative position in the CoT, one line per reader in its model colour. Positions are binned
    into fifths of [0, 1] (x = bin centre), or kept as they are when they take at most 5 values.
    A star per reader marks the mean importance of the sentences that state the source's answer,
    at their mean position. Bottom (when `correlation` has rows): per panel, the reader × reader
    Spearman correlation of the sentences' importance (`probe_metrics.importance_correlation`; diagonal
    1, grey: no value), so one can see whether what carries A's CoT for B also carries it for C.
    Reads `probe_metrics.sentence_importance`; panels wrap after `PROBE_WRAP` per row."""
    from matplotlib.lines import Line2D

    df = _frame(importance).filter(pl.col("importance").is_not_null(), pl.col("position").is_not_null())
    corr = _frame(correlation) if correlation is not None else None
    corr = corr if corr is not None and corr.height else None
    colors = colors or model_colors([*df["evaluator"], *df["cot_source"]])
    panels, datasets, sources = _probe_panels(df)
    readers = sorted(df["evaluator"].unique().drop_nulls())
    several = len(datasets) > 1
    ncols = min(len(panels), PROBE_WRAP)
    blocks = math.ceil(len(panels) / ncols)
    per_block = 2 if corr is not None else 1
    side = 0.8 + 0.42 * len(readers)
    heights = ([3.0, max(side, 2.2)] if corr is not None else [3.0]) * blocks
    fig = _figure(1.2 + 3.6 * ncols + 2.4, 0.8 + sum(heights))
    axes = _panels(fig, blocks * per_block, ncols, height_ratios=heights)
    used: set[tuple[int, int]] = set()
    heat_axes, image = [], None
    for k, (ds, source) in enumerate(panels):
        block, c = divmod(k, ncols)
        ax = axes[block * per_block][c]
        used.add((block * per_block, c))
        sub = df.filter(pl.col("dataset") == ds, pl.col("cot_source") == source)
        positions = sorted(sub["position"].drop_nulls().unique())
        exact = positions if len(positions) <= 5 else None
        ax.axhline(0, color="0.6", lw=0.6, zorder=0, gid="zero")
        for reader in [x for x in readers if x in set(sub["evaluator"])]:
            part = sub.filter(pl.col("evaluator") == reader)
            style = _reader_style(reader, source, colors)
            xs, ys = _importance_curve(part, exact)
            ax.plot(xs, ys, marker="o", ms=3.5, label=reader, **style)
            stated = part.filter(pl.col("states_answer").fill_null(False))
            if stated.height:
                ax.scatter([stated["position"].mean()], [stated["importance"].mean()], marker="*", s=140,
                           color=style["color"], edgecolors="black", linewidths=0.6, zorder=5,
                           gid=f"states_answer:{reader}")
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3, lw=0.5)
        ax.set_xlabel("relative position of the sentence in its CoT\n(0 first, 1 last"
                      + ("" if exact is not None else "; mean per fifth") + ")", fontsize=8)
        if c == 0:
            ax.set_ylabel("drop in agreement when\nthe sentence is left out", fontsize=8)
        n_cots = sub.select("item_id").n_unique()
        n_sentences = sub.select("item_id", "sentence_idx").unique().height
        _title(ax, f"{_probe_title(ds, source, several)}\n{n_cots} CoTs, {n_sentences} sentences", fontsize=9)
        if corr is None:
            continue
        hax = axes[block * per_block + 1][c]
        used.add((block * per_block + 1, c))
        part = corr.filter(pl.col("dataset") == ds, pl.col("cot_source") == source)
        if not part.height:
            hax.set_axis_off()
            hax.text(0.5, 0.5, "no reader pairs", ha="center", va="center", transform=hax.transAxes, fontsize=8)
            continue
        names, matrix = _correlation_matrix(part)
        labels = [f"{n} (source)" if n == source else n for n in names]
        image = _heatmap(hax, matrix, labels, labels, aspect="equal", cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        heat_axes.append(hax)
        _title(hax, f"rank correlation of importance\n({_n_text(part['n'], 'sentences')})", fontsize=8)
    for r, row in enumerate(axes):
        for c, ax in enumerate(row):
            if (r, c) not in used:
                ax.set_visible(False)
    handles = _reader_handles(readers, sources, colors)
    handles.append(Line2D([], [], ls="none", marker="*", ms=11, mfc="0.6", mec="black",
                          label="mean of the sentences that\nstate the source's answer"))
    axes[0][ncols - 1].legend(handles=handles, title="reader", fontsize=7, title_fontsize=8, loc="upper left",
                              bbox_to_anchor=(1.02, 1.0))
    if image is not None:
        fig.colorbar(image, ax=heat_axes, shrink=0.8, label="Spearman ρ over sentences")
    _suptitle(fig, "F14 · sentence importance: how much agreement with the source's answer drops "
                   "when one sentence of its CoT is left out", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# render_all

Plan = dict[str, "list[tuple[str, Callable[[], Figure]]] | str"]


def _table(tables: Mapping, key: str) -> pl.DataFrame | None:
    df = tables.get(key)
    if df is None:
        return None
    df = _frame(df)
    return None if df.is_empty() else df


def _twins(stem: str, df: pl.DataFrame, build: Callable[[str], Figure],
           has_value: str | None = None) -> list[tuple[str, Callable[[], Figure]]]:
    """One figure per definition with data: `stem` for paper, `stem_<definition>` for the others."""
    out = []
    for d in _definitions(df):
        part = _by_definition(df, d)
        if has_value is not None and part[has_value].drop_nulls().is_empty():
            continue
        out.append((stem if d == "paper" else f"{stem}_{d}", lambda d=d: build(d)))
    return out


def plan_figures(tables: Mapping[str, pl.DataFrame | pl.LazyFrame | None], *,
                 ii_datasets: Iterable[str] | None = None,
                 colors: Mapping[str, str] | None = None, pool_variants: bool = False,
                 paper_grouping: bool = False) -> Plan:
    """For each figure id: the (stem, builder) pairs that its tables support, or why it is not drawn.

    Table keys (the spec's table names): consistency, consistency_summary, accuracy, breakdown,
    self_consistency, involvement, post_training, transitions, preference_means, preference_tests,
    preference_correlation, preference_points (alias `points`), ensemble_diagnostics, for F11
    ii_task_consistency and ii_task_accuracy (optional), for F13 prefix_transfer and for F14
    sentence_importance and importance_correlation (optional; `cotransfer.probe_metrics`).
    `ii_datasets` names the Instruction Induction datasets (adapter instruction_induction).
    Datasets in the ii_task_* tables count too.
    `consistency_summary` is derived from `consistency` (mean/std over pairs) when it is not
    given."""
    colors = dict(colors) if colors is not None else model_colors(study_models(tables))
    t = {k: _table(tables, k) for k in tables}
    plan: Plan = {}

    cons = t.get("consistency")
    if cons is not None and cons["consistency"].drop_nulls().is_empty():
        cons = None
    no_pairs = "no consistency table" if "consistency" not in tables else "no valid evaluator pairs"
    summary = t.get("consistency_summary")
    if summary is None and cons is not None:
        summary = _pair_summary(cons, pool_sources=False)
    if summary is not None and summary["mean"].drop_nulls().is_empty():
        summary = None

    def absent(key: str, empty: str) -> str:
        """Why a figure is missing: its table was not given at all, or it holds no rows."""
        return f"no {key} table" if key not in tables else empty

    def twins(stem, df, build, value):
        return _twins(stem, df, build, value) or f"no values in the {stem} table"

    plan["F1"] = twins("overview", cons, lambda d: overview_figure(cons, definition=d, pool_variants=pool_variants),
                       "consistency") \
        if cons is not None else no_pairs
    plan["F2"] = twins("consistency", summary, lambda d: consistency_figure(summary, definition=d), "mean") \
        if summary is not None else no_pairs
    plan["F3"] = twins("heatmap", cons, lambda d: heatmap_figure(cons, definition=d), "consistency") \
        if cons is not None else no_pairs

    acc = t.get("accuracy")
    if acc is None:
        plan["F4"] = absent("accuracy", "no answers (accuracy table empty)")
    else:
        plan["F4"] = [("accuracy", lambda: accuracy_figure(acc, colors=colors))]
        if acc.filter(pl.col("condition") == "transfer").height:
            plan["F4"].append(("accuracy_transfer", lambda: transfer_accuracy_figure(acc)))

    br = t.get("breakdown")
    plan["F5"] = [("breakdown", lambda: breakdown_figure(br, paper_grouping=paper_grouping))] if br is not None \
        else absent("breakdown", "no valid pair-rows")

    sc = t.get("self_consistency")
    plan["F6"] = twins("self_consistency", sc, lambda d: self_consistency_figure(sc, definition=d, colors=colors),
                       "rate") if sc is not None else absent("self_consistency", "no Sampled condition")

    inv = t.get("involvement")
    plan["F7"] = twins("involvement", inv, lambda d: involvement_figure(inv, definition=d), "mean") \
        if inv is not None else absent("involvement", "no Transfer or Ensemble pairs")

    pt = t.get("post_training")
    if pt is not None:
        pt = pt.filter(pl.col("post_training").is_not_null())
    plan["F8"] = twins("post_training", pt, lambda d: post_training_figure(pt, definition=d, colors=colors),
                       "target_accuracy") if pt is not None and pt.height else "no post_training tags"

    tr = t.get("transitions")
    plan["F9"] = [("transitions", lambda: transitions_figure(tr))] if tr is not None \
        else absent("transitions", "no transitions (needs the Empty condition and another one)")

    means = t.get("preference_means")
    points = t.get("preference_points", t.get("points"))
    plan["F10"] = [("user_study", lambda: user_study_figure(means, t.get("preference_tests"),
                                                            t.get("preference_correlation"), points))] \
        if means is not None else "no ratings file"

    task_cons, task_acc = t.get("ii_task_consistency"), t.get("ii_task_accuracy")
    ii = set(ii_datasets or ())
    for extra in (task_cons, task_acc):
        if extra is not None:
            ii |= set(extra["dataset"].unique())
    if not ii:
        plan["F11"] = "no Instruction Induction dataset"
    else:
        keep = pl.col("dataset").is_in(sorted(ii))
        ii_summary = summary.filter(keep) if summary is not None else None
        files: list = []
        if ii_summary is not None and ii_summary.height:
            files += _twins("ii_consistency", ii_summary, lambda d: consistency_figure(
                ii_summary, definition=d, figure_id="F11 · Instruction Induction",
                what="BERTScore consistency"), "mean")
        if task_cons is not None and task_cons.filter(keep).height:
            tc = task_cons.filter(keep)
            files += _twins("ii_tasks", tc, lambda d: ii_task_figure(tc, definition=d), "consistency")
        if task_acc is not None and task_acc.filter(keep).height:
            ta = task_acc.filter(keep)
            files.append(("ii_accuracy", lambda: ii_accuracy_figure(ta)))
        plan["F11"] = files or f"no consistency rows for the Instruction Induction datasets {sorted(ii)}"

    diag = t.get("ensemble_diagnostics")
    plan["F12"] = [("ensemble", lambda: ensemble_figure(diag))] if diag is not None else "no ensembles"

    prefix = t.get("prefix_transfer")
    if prefix is not None:
        prefix = prefix.filter(pl.col("source_agreement").is_not_null())
    plan["F13"] = [("prefix_transfer", lambda: prefix_transfer_figure(prefix, colors=colors))] \
        if prefix is not None and prefix.height else absent("prefix_transfer", "no prefix-transfer answers")

    imp = t.get("sentence_importance")
    if imp is not None:
        imp = imp.filter(pl.col("importance").is_not_null(), pl.col("position").is_not_null())
    corr = t.get("importance_correlation")
    plan["F14"] = [("sentence_importance", lambda: importance_figure(imp, corr, colors=colors))] \
        if imp is not None and imp.height else absent("sentence_importance", "no sentence-importance answers")
    return plan


def build_all(tables: Mapping[str, pl.DataFrame | pl.LazyFrame | None], *,
              ii_datasets: Iterable[str] | None = None) -> dict[str, list[tuple[str, Figure]] | str]:
    """`plan_figures` with every figure built: (stem, Figure) pairs, or the reason for its absence."""
    return {fid: [(stem, build()) for stem, build in entry] if isinstance(entry, list) else entry
            for fid, entry in plan_figures(tables, ii_datasets=ii_datasets).items()}


def save_figure(fig: Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write `out_dir/<stem>.png` and `.pdf`, each atomically."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(out_dir) / f"{stem}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        paths.append(path)
    return paths


def render_all(tables: Mapping[str, pl.DataFrame | pl.LazyFrame | None], out_dir: str | os.PathLike, *,
               ii_datasets: Iterable[str] | None = None, pool_variants: bool = False,
               paper_grouping: bool = False) -> dict[str, list[Path] | str]:
    """Draw every figure F1-F14 the tables support into `out_dir` as PNG and PDF.

    Returns, for each figure id, the files written (a consistency figure's strict twin included)
    or the reason it was not drawn, and writes the same mapping (paths as strings) to
    `out_dir/figures.json`, so a report can say why a figure is missing. See `plan_figures` for
    the table keys. Figures are built and saved one at a time.

    Files that the previous `figures.json` in `out_dir` listed and that this run did not write
    are deleted, so a figure whose data has gone does not survive from an earlier run. No other
    file in `out_dir` is touched."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _listed_files(out_dir / "figures.json")
    result: dict[str, list[Path] | str] = {}
    for fid, entry in plan_figures(tables, ii_datasets=ii_datasets, pool_variants=pool_variants,
                                   paper_grouping=paper_grouping).items():
        if isinstance(entry, str):
            result[fid] = entry
            continue
        result[fid] = [path for stem, build in entry for path in save_figure(build(), out_dir, stem)]
    listing = {fid: [str(p) for p in v] if isinstance(v, list) else v for fid, v in result.items()}
    write_text(out_dir / "figures.json", json.dumps(listing, indent=2) + "\n")
    written = {p.name for v in result.values() if isinstance(v, list) for p in v}
    for name in previous - written:
        (out_dir / name).unlink(missing_ok=True)
    return result


def _listed_files(listing: Path) -> set[str]:
    """File names (no directories) that an earlier figures.json listed; empty if none or unreadable."""
    try:
        entries = json.loads(listing.read_text()).values()
    except (OSError, ValueError, AttributeError):
        return set()
    return {Path(p).name for v in entries if isinstance(v, list) for p in v if isinstance(p, str)}


# --------------------------------------------------------------------------------------------
# single-PNG writers (for scripts; the pipeline uses render_all)


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(out_png)


def _empty_figure(message: str) -> Figure:
    fig = _figure(6, 3)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)
    return fig


def consistency_heatmaps(consistency_df: pl.DataFrame, out_png: str | os.PathLike, *,
                         dataset: str | None = None) -> Path:
    """F3 as one PNG, all definitions in the table (legacy; `render_all` writes F3 per definition)."""
    df = consistency_df if dataset is None else consistency_df.filter(pl.col("dataset") == dataset)
    if df.is_empty():
        return _save(_empty_figure("no valid pairs"), out_png)
    return _save(heatmap_figure(df, definition=None), out_png)


def accuracy_chart(accuracy_df: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F4's bars as one PNG (legacy)."""
    if accuracy_df.is_empty():
        return _save(_empty_figure("no answers"), out_png)
    return _save(accuracy_figure(accuracy_df), out_png)


def overview_bars(consistency_df: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F1 as one PNG; paper and strict side by side when the table has both (legacy)."""
    if consistency_df.is_empty():
        return _save(_empty_figure("no valid pairs"), out_png)
    return _save(overview_figure(consistency_df, definition=None), out_png)


def ensemble_diagnostics(diag: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F12 as one PNG (legacy)."""
    if diag.is_empty():
        return _save(_empty_figure("no ensembles"), out_png)
    return _save(ensemble_figure(diag), out_png)
