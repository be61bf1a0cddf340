"""Confusion plots by group, from the long ``confusion.csv`` frame.

Layer: report.

Reads only the frames :func:`clipfair.stats.metrics.confusion` and
:func:`clipfair.stats.metrics.group_metrics` produce (or their CSV copies); nothing is
recomputed from predictions. Figures use matplotlib's object API
(``matplotlib.figure.Figure`` on the Agg canvas), like :mod:`clipfair.report.render`, so the
report can embed them.

Each plot is one taxonomy x method x group: rows are the right class (``true_label``),
columns the predicted label, cells the share of the row's images (row-normalised, so
groups of different sizes compare) with the count written in each cell; the title
carries the group's n. Rows are only the classes the group has images of.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .figures import DPI, save_figure

__all__ = ["confusion_matrix", "plot_confusion", "worst_group", "write_confusion_plots"]


def confusion_matrix(conf: pd.DataFrame, taxonomy: str, method: str, slice: str = "overall",
                     group: str = "all", labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts as a true_label x predicted_label table (zero-filled), in ``labels`` order
    (default: the frame's order of appearance)."""
    rows = conf[(conf["taxonomy"] == taxonomy) & (conf["method"] == method)
                & (conf["slice"] == slice) & (conf["group"] == group)]
    if rows.empty:
        raise ValueError(f"no confusion rows for taxonomy={taxonomy!r} method={method!r} "
                         f"slice={slice!r} group={group!r}")
    order = list(labels) if labels is not None else []
    seen = list(dict.fromkeys([*rows["true_label"], *rows["predicted_label"]]))
    order += [x for x in seen if x not in order]
    table = rows.pivot_table(index="true_label", columns="predicted_label", values="count",
                             aggfunc="sum", fill_value=0)
    true_order = [x for x in order if x in table.index]
    return table.reindex(index=true_order, columns=order, fill_value=0).astype("int64")


def plot_confusion(conf: pd.DataFrame, taxonomy: str, method: str, slice: str = "overall",
                   group: str = "all", labels: Sequence[str] | None = None,
                   title: str | None = None) -> Figure:
    """A row-normalised confusion heatmap of one group, counts written in the cells."""
    mat = confusion_matrix(conf, taxonomy, method, slice, group, labels)
    counts = mat.to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(totals, 1)
    n_rows, n_cols = counts.shape
    fig = Figure(figsize=(max(5.5, 0.55 * n_cols + 3.0), max(3.2, 0.45 * n_rows + 2.2)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share * 100.0, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "#222222")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(list(mat.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([f"{t} (n={int(c)})" for t, c in zip(mat.index, totals[:, 0])], fontsize=8)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("right class")
    where = "all images" if slice == "overall" else f"{slice} = {group}"
    ax.set_title(title or f"{taxonomy} · {method}\n{where} (n={int(totals.sum())})", fontsize=9)
    fig.colorbar(im, ax=ax, label="% of the row's images")
    fig.tight_layout()
    return fig


def worst_group(metrics: pd.DataFrame, taxonomy: str, method: str) -> tuple[str, str] | None:
    """(slice, group) of the lowest ``worst_group_accuracy`` row of a taxonomy x method,
    preferring groups not flagged small (ties: the first row); None without such rows."""
    rows = metrics[(metrics["metric"] == "worst_group_accuracy") & (metrics["taxonomy"] == taxonomy)
                   & (metrics["method"] == method)]
    if rows.empty:
        return None
    small = rows["small"].astype(str).str.lower().eq("true") if "small" in rows else pd.Series(False, rows.index)
    rows = rows.assign(_small=small.to_numpy()).sort_values(["_small", "value"], kind="stable")
    r = rows.iloc[0]
    return str(r["slice"]), str(r["group"])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def write_confusion_plots(conf: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path | str,
                          labels: dict[str, Sequence[str]] | None = None) -> list[Path]:
    """For every taxonomy x method in ``conf``: ``confusion_{taxonomy}_{method}_overall.png``
    and ``confusion_{taxonomy}_{method}_worst.png`` (the group of :func:`worst_group`)."""
    out, written = Path(out_dir), []
    if conf is None or conf.empty:
        return written
    for (tax, meth), _ in conf.groupby(["taxonomy", "method"], sort=False):
        lab = (labels or {}).get(tax)
        stem = f"confusion_{_safe(tax)}_{_safe(meth)}"
        if ((conf["taxonomy"] == tax) & (conf["method"] == meth) & (conf["slice"] == "overall")).any():
            written.append(save_figure(plot_confusion(conf, tax, meth, labels=lab), out / f"{stem}_overall.png",
                                       tight=False))
        wg = worst_group(metrics, tax, meth)
        if wg is not None:
            sl, grp = wg
            hit = (conf["taxonomy"] == tax) & (conf["method"] == meth) & (conf["slice"] == sl) & (conf["group"] == grp)
            if hit.any():
                fig = plot_confusion(conf, tax, meth, sl, grp, lab,
                                     title=f"{tax} · {meth}\nworst group: {sl} = {grp} "
                                           f"(n={int(conf.loc[hit, 'count'].sum())})")
                written.append(save_figure(fig, out / f"{stem}_worst.png", tight=False))
    return written
