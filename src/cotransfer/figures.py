"""Figures from the metric tables (method.md §8.4): F1 overview bars, F3 pair heatmaps, F4 accuracy bars,
F12 ensemble diagnostics.

Every function takes a metric table from `cotransfer.metrics`, writes one PNG atomically (temporary
file in the destination directory, then rename, through `cotransfer.io.atomic_path`) and returns its
path. An empty table gives a figure that says so, never a crash, so a run with no valid pairs
still produces its report.

matplotlib is imported inside the functions, so importing this module stays cheap for CPU rules
and the CLI. Figures are built with `matplotlib.figure.Figure`, not pyplot: no GUI backend, no
global figure registry, and nothing changes the caller's backend, so this works headless.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from cotransfer.io import atomic_path
from cotransfer.metrics import condition_summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CONDITION_ORDER = ["empty", "default", "sampled", "transfer", "ensemble"]
VARIANT_ORDER = ["full", "stripped"]
PANEL_KEYS = ["condition", "variant", "cot_source"]
DPI = 100
NAN_COLOR = "0.75"


def _canonical_order(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by dataset, condition (method order), variant (full first), source; unknown values last."""
    rank = {
        "condition": pl.col("condition").replace_strict(
            CONDITION_ORDER, range(len(CONDITION_ORDER)), default=len(CONDITION_ORDER), return_dtype=pl.Int64),
        "variant": pl.col("variant").replace_strict(
            VARIANT_ORDER, range(len(VARIANT_ORDER)), default=len(VARIANT_ORDER), return_dtype=pl.Int64),
    }
    keys = [c for c in ["dataset", "definition", "condition", "variant", "cot_source"] if c in df.columns]
    by = [expr for c in keys for expr in ([rank[c]] if c in rank else []) + [pl.col(c)]]
    return df.sort(by, nulls_last=True, maintain_order=True)


def _label(sep: str) -> pl.Expr:
    """'transfer / full / from qwq'; null parts (empty's variant, own-CoT sources) are left out."""
    return pl.concat_str([pl.col("condition"), pl.col("variant"), "from " + pl.col("cot_source")],
                         separator=sep, ignore_nulls=True)


def _varying(df: pl.DataFrame, columns: list[str]) -> list[str]:
    """Those of `columns` that take more than one value, so titles name them only when needed."""
    return [c for c in columns if c in df.columns and df[c].n_unique() > 1]


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(out_png)


def _empty_figure(message: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)
    return fig


def _grid(n_panels: int, panel_w: float, panel_h: float) -> tuple[Figure, list[Axes]]:
    """A near-square grid for 1..n panels, unused cells hidden."""
    from matplotlib.figure import Figure

    ncols = math.ceil(math.sqrt(n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(ncols * panel_w, nrows * panel_h), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _pair_matrix(panel: pl.DataFrame) -> tuple[list[str], list[list[float]]]:
    """Evaluators (sorted) and the symmetric consistency matrix of one panel; NaN = no value."""
    evaluators = sorted(set(panel["evaluator_a"]) | set(panel["evaluator_b"]))
    index = {e: i for i, e in enumerate(evaluators)}
    matrix = [[math.nan] * len(evaluators) for _ in evaluators]
    for a, b, value in panel.select("evaluator_a", "evaluator_b", "consistency").iter_rows():
        v = math.nan if value is None else value
        matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = v
    return evaluators, matrix


def consistency_heatmaps(consistency_df: pl.DataFrame, out_png: str | os.PathLike, *,
                         dataset: str | None = None) -> Path:
    """F3: one evaluator × evaluator consistency heatmap per (condition, variant, cot_source).

    The matrix is symmetric; the diagonal (an evaluator with itself) is left blank and pairs
    without a value (no valid rows) are grey. `dataset` restricts the table to one dataset; the
    dataset and the definition appear in the panel titles only when the table mixes several.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    if dataset is not None:
        consistency_df = consistency_df.filter(pl.col("dataset") == dataset)
    if consistency_df.is_empty():
        return _save(_empty_figure("no valid pairs"), out_png)
    prefix = _varying(consistency_df, ["dataset", "definition"])
    keys = prefix + PANEL_KEYS
    panels = (_canonical_order(consistency_df.select(keys).unique())
              .with_row_index("panel")
              .with_columns(title=pl.concat_str([*prefix, _label(" / ")], separator=" · ")))
    parts = consistency_df.join(panels, on=keys, nulls_equal=True).partition_by("panel", as_dict=True)
    k_max = max(consistency_df["evaluator_a"].n_unique(), consistency_df["evaluator_b"].n_unique()) + 1
    side = 1.6 + 0.45 * k_max
    fig, axes = _grid(panels.height, side, side)
    cmap = colormaps["viridis"].with_extremes(bad=NAN_COLOR)
    for ax, (panel, title) in zip(axes, panels.select("panel", "title").iter_rows()):
        evaluators, matrix = _pair_matrix(parts[(panel,)])
        values = np.ma.masked_invalid(np.array(matrix, dtype=float))
        image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0)
        for i in range(len(evaluators)):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, color="white"))
            for j in range(len(evaluators)):
                if i != j:
                    v = matrix[i][j]
                    text, color = ("–", "black") if math.isnan(v) else (f"{v:.2f}", "white" if v < 0.6 else "black")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(len(evaluators)), evaluators, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(evaluators)), evaluators, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="pairwise consistency")
    return _save(fig, out_png)


def accuracy_chart(accuracy_df: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F4 (bars): accuracy per condition group, one bar per evaluator, error bar = binomial SE.

    One panel per dataset. A condition group lacking an evaluator simply has no bar there.
    """
    from matplotlib.figure import Figure

    if accuracy_df.is_empty():
        return _save(_empty_figure("no answers"), out_png)
    df = _canonical_order(accuracy_df).with_columns(label=_label(" / "))
    datasets = df["dataset"].unique(maintain_order=True).to_list()
    evaluators = sorted(df["evaluator"].unique())
    n_groups = max(df.filter(dataset=d)["label"].n_unique() for d in datasets)
    width = 0.8 / len(evaluators)
    fig = Figure(figsize=(max(6.0, 1.0 + n_groups * (0.3 + 0.15 * len(evaluators))), 4.6 * len(datasets)),
                 layout="constrained")
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for ax, ds in zip(axes, datasets):
        sub = df.filter(dataset=ds)
        labels = sub["label"].unique(maintain_order=True).to_list()
        position = {lab: i for i, lab in enumerate(labels)}
        for k, ev in enumerate(evaluators):
            bars = sub.filter(evaluator=ev)
            x = [position[lab] - 0.4 + (k + 0.5) * width for lab in bars["label"]]
            ax.bar(x, bars["accuracy"].to_numpy(), width, yerr=bars["se"].to_numpy(), capsize=2, label=ev)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(ds, fontsize=10)
        ax.legend(title="evaluator", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out_png)


def overview_bars(consistency_df: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F1: mean pairwise consistency per condition ± stderr over the pooled pairs.

    Transfer is pooled over its sources and Ensemble over its configs (`condition_summary(...,
    pool_sources=True)`), within one answer mode: one panel per variant (columns) and dataset
    (rows). The empty condition has no variant and is shown in every panel. When the table holds
    both definitions, paper and strict bars stand side by side.
    """
    from matplotlib.figure import Figure

    if consistency_df.is_empty():
        return _save(_empty_figure("no valid pairs"), out_png)
    summary = condition_summary(consistency_df, pool_sources=True)
    variants = [v for v in VARIANT_ORDER if v in summary["variant"]] + sorted(
        set(summary["variant"].drop_nulls()) - set(VARIANT_ORDER))
    no_variant = summary.filter(pl.col("variant").is_null())
    if variants:
        summary = pl.concat([summary.filter(pl.col("variant").is_not_null())]
                            + [no_variant.with_columns(variant=pl.lit(v)) for v in variants])
    else:
        variants = [None]
    summary = _canonical_order(summary)
    datasets = summary["dataset"].unique(maintain_order=True).to_list()
    definitions = summary["definition"].unique(maintain_order=True).to_list()
    width = 0.8 / len(definitions)
    fig = Figure(figsize=(4.2 * len(variants), 3.4 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(variants), squeeze=False, sharey=True)
    for row, ds in zip(axes, datasets):
        for ax, variant in zip(row, variants):
            sub = summary.filter(pl.col("dataset") == ds, pl.col("variant").eq_missing(variant))
            conditions = sub["condition"].unique(maintain_order=True).to_list()
            for k, definition in enumerate(definitions):
                bars = sub.filter(definition=definition)
                x = [conditions.index(c) - 0.4 + (k + 0.5) * width for c in bars["condition"]]
                ax.bar(x, bars["mean"].to_numpy(), width, yerr=bars["stderr"].to_numpy(), capsize=3, label=definition)
            ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_title(" · ".join(str(p) for p in (ds, variant) if p is not None), fontsize=10)
        row[0].set_ylabel("mean pairwise consistency")
    axes[0][-1].legend(title="definition", fontsize=7, title_fontsize=8)
    return _save(fig, out_png)


def ensemble_diagnostics(diag: pl.DataFrame, out_png: str | os.PathLike) -> Path:
    """F12: per ensemble (rows), the share of steps won by each generator, the items by step
    count, and by stop reason (columns), from `metrics.ensemble_diagnostics`."""
    from matplotlib.figure import Figure

    if diag.is_empty():
        return _save(_empty_figure("no ensembles"), out_png)
    groups = diag.select("dataset", "ensemble").unique(maintain_order=True).rows()
    kinds = [("generator_wins", "share of steps won"), ("steps", "items by step count"),
             ("stop_reason", "items by stop reason")]
    fig = Figure(figsize=(12, 3.2 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(kinds), squeeze=False)
    for row, (ds, ens) in zip(axes, groups):
        for ax, (kind, title) in zip(row, kinds):
            sub = diag.filter(dataset=ds, ensemble=ens, kind=kind)
            if kind == "steps":
                sub = sub.sort(pl.col("label").cast(pl.Int64))
            ax.bar(range(sub.height), sub["share" if kind == "generator_wins" else "n"].to_numpy())
            ax.set_xticks(range(sub.height), sub["label"].to_list(), rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{ds} · {ens}: {title}", fontsize=9)
            if kind == "generator_wins":
                ax.set_ylim(0, 1.05)
    return _save(fig, out_png)
