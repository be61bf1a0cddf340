"""The run's report: ``summary.md`` and ``report.html`` from one document, plus PNG plots.

Layer: report.

Everything here only reads the frames :func:`clipfair.stats.metrics.group_metrics` and
:func:`clipfair.stats.metrics.disparities` produce (or their CSV copies); no metric is
recomputed. The report is built as :mod:`clipfair.report.document` sections; that module renders
them to Markdown and to one self-contained HTML page. Plots use matplotlib's object API
(``matplotlib.figure.Figure`` on the Agg canvas): no window, no pyplot global state.

The code is generic over slices, attributes and metrics: accuracy-like metrics (names
ending in ``accuracy``) get accuracy tables and plots; every other metric (``rate``,
``label_rate``, ...) gets per-category tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .document import Block, Bullets, Details, Document, Figure, Note, Section, Table, Text, to_html, to_markdown
from ..stats.specs import metric_spec
from .figures import DPI, save_figure
from ..stats.metrics import HIGHER, LOWER, METRIC_COLUMNS, NEUTRAL, SLICE_SUMMARY_PREFIX, TO_OVERALL, is_accuracy_metric
from ..utility.outputs import safe_filename

__all__ = [
    "ReportContext",
    "header_blocks",
    "summary_document",
    "summary_markdown",
    "plot_accuracy",
    "plot_category_rates",
    "write_report",
    "DEMO_BANNER",
]

TOP_FINDINGS = 15
TOP_DISPARITIES = 20

DEMO_BANNER = ("Demo run: a toy model trained for minutes on synthetic cartoon faces with planted biases. "
               "It says nothing about CLIP or any real model.")


@dataclass
class ReportContext:
    """What the report says besides the metrics: who/what/when, and how to read each category.

    ``header``: (field, value) rows shown at the top; ``model``: a short model label used
    in plot titles; ``harms``: taxonomy -> category -> harm (True: lower is better, False:
    higher is better; missing: neutral); ``n_classes``: taxonomy -> number of classes (the
    chance line of accuracy plots is 1 / n_classes). The report's figures have a panel for every
    attribute sliced (the dataset's own and derived ones too), groups in the declared order."""

    title: str = "clipfair results"
    model: str = ""
    min_n: int = 0  # groups with fewer images are marked "(small)" in tables
    header: list[tuple[str, str]] = field(default_factory=list)
    demo: bool = False
    disclaimer: str = ""
    skipped: Mapping[str, int] = field(default_factory=dict)
    harms: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    n_classes: Mapping[str, int] = field(default_factory=dict)
    #: run.json's ``sanity`` record (:func:`clipfair.stats.sanity.verdict`): its banner leads every document
    sanity: Mapping = field(default_factory=dict)
    #: taxonomy -> class label -> its category (label tables and plots name each label's category
    #: and the category's declared direction)
    label_categories: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def _clean(metrics: pd.DataFrame) -> pd.DataFrame:
    """The frame with an empty-string category for accuracy rows (a CSV round trip
    turns "" into NaN)."""
    m = metrics.copy() if "metric" in metrics.columns else pd.DataFrame(columns=list(METRIC_COLUMNS))
    if "category" in m.columns:
        m["category"] = m["category"].astype(object).where(m["category"].notna(), "")
    m.attrs = dict(getattr(metrics, "attrs", {}))
    return m


def _confidence(frame: pd.DataFrame) -> float | None:
    conf = frame.attrs.get("confidence") if hasattr(frame, "attrs") else None
    return float(conf) if isinstance(conf, (int, float)) and 0 < conf < 1 else None


def _confidence_label(frame: pd.DataFrame) -> str:
    conf = _confidence(frame)
    return f"{_num(conf * 100)}% CI" if conf else "CI"


def _num(x: float) -> str:
    """95.0 -> '95', 99.9 -> '99.9'."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _pct(x) -> str:
    return "–" if pd.isna(x) else f"{100.0 * float(x):.1f}%"


def _pct_bare(x) -> str:
    return "–" if pd.isna(x) else f"{100.0 * float(x):.1f}"


def _pp(x) -> str:
    return "–" if pd.isna(x) else f"{100.0 * float(x):+.1f}"


def _ci(lo, hi) -> str:
    return f"[{_pct_bare(lo)}–{_pct_bare(hi)}]"


def _value_ci(value, lo, hi) -> str:
    return f"{_pct(value)} {_ci(lo, hi)}"


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _acc_mask(m: pd.DataFrame) -> np.ndarray:
    """Rows of accuracy-like metrics (a boolean array, also for an empty frame), as the metric
    registry declares them."""
    return np.array([is_accuracy_metric(x) for x in m["metric"]], dtype=bool)


def _share_mask(m: pd.DataFrame) -> np.ndarray:
    """Rows of category / label shares (the registry's metrics whose direction is the taxonomy's
    harm declaration); other analyses' outcomes get their own sections."""
    return np.array([bool((s := metric_spec(x)) and s.direction_from_harm) for x in m["metric"]], dtype=bool)


def _n_cell(n, min_n: int) -> str:
    return f"{int(n)} (small)" if int(n) < min_n else str(int(n))


def _safe(name: str) -> str:
    return safe_filename(name)


def _select(metrics: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(metrics), dtype=bool)
    for col, val in eq.items():
        mask &= (metrics[col] == val).to_numpy(dtype=bool)
    return metrics[mask]


def _is_intersection(slice_name: str) -> bool:
    return "+" in str(slice_name)


def _metric_title(metric: str) -> str:
    return {"rate": "Predicted categories", "label_rate": "Predicted labels"}.get(metric, metric.replace("_", " "))


def _direction_word(direction: str) -> str:
    return {HIGHER: "higher is better", LOWER: "a harm: lower is better", NEUTRAL: "neutral"}.get(direction, direction)


# --------------------------------------------------------------------------- plots

def _tick_labels(groups: Sequence[str], ns: Sequence[int]) -> list[str]:
    """One line per attribute value (an intersection ``A+B`` becomes two lines), then n;
    never a break inside a value such as ``Latino_Hispanic`` or ``more than 70``."""
    return ["\n".join(str(g).split("+")) + f"\nn={int(n)}" for g, n in zip(groups, ns)]


_CHAR_IN = 0.075  # width of one 8.5 pt character in inches (about)
_MAX_WIDTH = 18.0


def _slot(labels: Sequence[str], n_series: int) -> float:
    """Inches per group: room for the longest label line, or the bars."""
    longest = max((len(line) for lab in labels for line in lab.split("\n")), default=0)
    return max(0.55 + 0.2 * n_series, longest * _CHAR_IN + 0.25)


def new_figure(labels: Sequence[str], n_series: int = 1, legend_right: bool = False) -> MplFigure:
    """A figure wide enough that every group label fits on its own lines (no label is
    broken inside a name); only past the maximum width are labels rotated instead."""
    width = min(max(4.2, 1.4 + len(labels) * _slot(labels, n_series)), _MAX_WIDTH)
    fig = MplFigure(figsize=(width + (1.9 if legend_right else 0.0), 4.8), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def style_axis(fig: MplFigure, ax, labels: Sequence[str], ylabel: str, title: str, n_series: int = 1) -> None:
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10.5)
    ax.set_xticks(np.arange(len(labels)))
    if 1.4 + len(labels) * _slot(labels, n_series) > _MAX_WIDTH:
        ax.set_xticklabels([lab.replace("\n", " · ") for lab in labels], rotation=35, ha="right",
                           rotation_mode="anchor", fontsize=8)
    else:
        ax.set_xticklabels(labels, fontsize=8.5)
    ax.yaxis.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _errors(values: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Asymmetric error-bar lengths in percent (0 where the CI is missing)."""
    lo = np.nan_to_num(values - lows, nan=0.0)
    hi = np.nan_to_num(highs - values, nan=0.0)
    return np.clip(np.vstack([lo, hi]) * 100.0, 0.0, None)


def _rows_or_raise(m: pd.DataFrame, metric: str, taxonomy: str, method: str, slice: str) -> pd.DataFrame:
    """The rows of one metric/taxonomy/method/slice; an error listing what exists if none."""
    rows = _select(m, metric=metric, taxonomy=taxonomy, method=method, slice=slice)
    if rows.empty:
        have = _select(m, metric=metric)
        combos = sorted(set(zip(have["taxonomy"], have["method"], have["slice"])))
        raise ValueError(
            f"no {metric} rows for taxonomy={taxonomy!r} method={method!r} slice={slice!r}; "
            f"available (taxonomy, method, slice): {combos[:20]}"
        )
    return rows


def _title(model: str, taxonomy: str, method: str, what: str) -> str:
    who = f"{model}: " if model else ""
    return f"{who}{taxonomy} ({method.replace('_', '-')})\n{what}"


def _accuracy_figure(metrics: pd.DataFrame, taxonomy: str, method: str, slice: str, model: str = "",
                     n_classes: int | None = None, metric: str = "accuracy") -> MplFigure:
    m = _clean(metrics)
    rows = _rows_or_raise(m, metric, taxonomy, method, slice)
    v = rows["value"].to_numpy(dtype=float)
    labels = _tick_labels(list(rows["group"]), list(rows["n"]))
    fig = new_figure(labels, legend_right=True)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    ax.bar(x, v * 100.0, width=0.65, color="#4C72B0", edgecolor="none", label=metric.replace("_", " "))
    ax.errorbar(x, v * 100.0, yerr=_errors(v, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)),
                fmt="none", ecolor="#222222", elinewidth=1.1, capsize=3, label="Wilson " + _confidence_label(m))
    overall = _select(m, metric=metric, taxonomy=taxonomy, method=method, slice="overall")
    if len(overall):
        ax.axhline(float(overall["value"].iloc[0]) * 100.0, color="#C44E52", linestyle="--",
                   linewidth=1.0, label=f"overall {_pct(overall['value'].iloc[0])}")
    if n_classes:
        ax.axhline(100.0 / n_classes, color="#555555", linestyle=":", linewidth=1.2,
                   label=f"chance 1/{n_classes} = {100.0 / n_classes:.1f}%")
    style_axis(fig, ax, labels, f"{metric.replace('_', ' ')} (%)",
               _title(model, taxonomy, method, f"{metric.replace('_', ' ')} by {slice}"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy(metrics: pd.DataFrame, taxonomy: str, method: str, slice: str, path, model: str = "",
                  n_classes: int | None = None) -> Path:
    """Per-group accuracy bars with Wilson CI error bars, n under each group, the overall
    value and the chance line (1 / n_classes) when given; PNG."""
    return save_figure(_accuracy_figure(metrics, taxonomy, method, slice, model, n_classes), path)


def series_colors(n: int) -> list:
    """``n`` distinct colours: matplotlib's 10-colour cycle up to 10, tab20 up to 20, then evenly
    spaced hues (never a repeated colour for two series of one plot)."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _harm_word(h: bool | None) -> str:
    return {True: "harm", False: "not a harm", None: "neutral"}[h]


def label_heading(label: str, taxonomy_labels: Mapping[str, str] | None, harms: Mapping[str, bool] | None) -> str:
    """A class label with its category and that category's declared direction, e.g.
    ``gorilla (non_human, harm)``; a label of unknown category: ``label (category unknown)``."""
    cat = (taxonomy_labels or {}).get(label)
    if cat is None:
        return f"{label} (category unknown)"
    return f"{label} ({cat}, {_harm_word((harms or {}).get(cat))})"


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, pd.DataFrame]], scale: float = 100.0) -> None:
    """Bars per group, one colour per series (:func:`series_colors`), with interval error bars.
    Each series is a label and its rows (``group``, ``value``, ``ci_low``, ``ci_high``); values
    times ``scale`` (default: proportions in percent; 1 for a mean's own scale)."""
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    colors = series_colors(len(series))
    for i, (label, rows) in enumerate(series):
        r = rows.set_index("group").reindex(groups)
        v = r["value"].to_numpy(dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, np.nan_to_num(v) * scale, width=width * 0.95, color=colors[i], label=label,
               edgecolor="none")
        ax.errorbar(pos, np.nan_to_num(v) * scale,
                    yerr=_errors(v, r["ci_low"].to_numpy(float), r["ci_high"].to_numpy(float)) * (scale / 100.0),
                    fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2)


def _rates_figure(metrics: pd.DataFrame, taxonomy: str, slice: str,
                  categories: Sequence[str] | None = None, method: str = "zero_shot", model: str = "",
                  metric: str = "rate", harms: Mapping[str, bool] | None = None,
                  label_categories: Mapping[str, str] | None = None) -> MplFigure:
    m = _clean(metrics)
    rows = _rows_or_raise(m, metric, taxonomy, method, slice)
    present = _unique(rows["category"])
    cats = present if categories is None else list(categories)
    unknown = [c for c in cats if c not in present]
    if unknown:
        raise ValueError(f"taxonomy {taxonomy!r} has no categories {unknown}; it has {present}")
    if not cats:
        raise ValueError("no categories to plot")
    groups = _unique(rows["group"])
    n_by_group = rows.drop_duplicates("group").set_index("group")["n"]
    labels = _tick_labels(groups, [n_by_group[g] for g in groups])
    fig = new_figure(labels, len(cats), legend_right=True)
    ax = fig.add_subplot(1, 1, 1)
    suffix = {True: " (harm)", False: "", None: " (neutral)"}
    is_label = metric == "label_rate"
    names = [label_heading(c, label_categories, harms) if is_label else c + suffix[(harms or {}).get(c)]
             for c in cats]
    grouped_bars(ax, groups, [(name, rows[rows["category"] == cat]) for name, cat in zip(names, cats)])
    what = "predicted label" if is_label else "predicted category"
    style_axis(fig, ax, labels, "share of group's images (%)",
                _title(model, taxonomy, method, f"{what} by {slice} "
                                                 f"(error bars: Wilson {_confidence_label(m)})"), len(cats))
    ax.legend(title="label (category, direction)" if is_label else "category (direction)", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8, ncol=2 if len(cats) > 14 else 1)
    fig.tight_layout()
    return fig


def plot_category_rates(metrics: pd.DataFrame, taxonomy: str, slice: str, path,
                        categories: Sequence[str] | None = None, method: str = "zero_shot", model: str = "",
                        harms: Mapping[str, bool] | None = None) -> Path:
    """Grouped bars: per group, the share of images put into each category, with CIs; PNG."""
    return save_figure(_rates_figure(metrics, taxonomy, slice, categories, method, model, harms=harms), path)


# --------------------------------------------------------------------------- compact figures (the report's)
#
# The report shows per taxonomy ONE figure of small multiples (one panel per attribute sliced, its
# groups in the dataset's declared order: the order of metrics.csv's rows, never sorted as strings),
# points with interval bars, methods side by side; intersections of two attributes as one heat map
# per taxonomy and metric; a target taxonomy's label shares as one heat map. Every figure carries the
# data it was drawn from in ``fig.panel_data`` (panel key -> frame), so a test can read back what is
# drawn. Written as SVG (text kept as text: small, sharp, fast).

METHOD_COLORS = {"zero_shot": "#4C72B0", "linear_probe": "#DD8452"}
_GROUP_IN = 0.34  # inches per group in a panel
_PANEL_PAD_IN = 0.45
_MAX_COMPACT_W = 15.0


def _method_color(method: str, i: int) -> str:
    return METHOD_COLORS.get(method, f"C{(i + 2) % 10}")


def _single_slices(frame: pd.DataFrame) -> list[str]:
    """The single-attribute slices of ``frame`` in its row order (every declared attribute,
    the user's own and derived ones too), without ``overall`` and intersections."""
    return [s for s in _unique(frame["slice"].astype(str)) if s != "overall" and not _is_intersection(s)]


def _tick_text(g, n) -> str:
    return f"{g} ({int(n)})" if not pd.isna(n) else str(g)


def _block_positions(groups: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """x positions of each attribute's groups, the attributes side by side with a one-slot gap."""
    out, pos = {}, 0
    for sl, gr in groups.items():
        out[sl] = pos + np.arange(len(gr), dtype=float)
        pos += len(gr) + 1
    return out


def _blocks_figure(groups: Mapping[str, Sequence[str]], n_rows: int, longest: int, row_h: float = 1.9):
    """A figure with ``n_rows`` axes, one above the other, each holding a block (a panel) per attribute
    sliced, as wide as its number of groups; fixed margins (room for rotated group labels of
    ``longest`` characters below the bottom row). One axes per row instead of one per panel, and no
    layout pass: a figure is drawn once for its size and once to the file."""
    slots = sum(len(g) for g in groups.values()) + len(groups) - 1
    left, right, top = 0.6, 0.15, 0.85
    bottom = 0.3 + 0.04 * longest
    inner = min(_MAX_COMPACT_W - left - right, max(3.2, _GROUP_IN * (slots + 1.2)))
    w = left + inner + right
    h = top + n_rows * row_h + (n_rows - 1) * 0.2 + bottom
    fig = MplFigure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_axes((left / w, (bottom + (n_rows - 1 - i) * (row_h + 0.2)) / h, inner / w, row_h / h))
            for i in range(n_rows)]
    return fig, axes


def _blocks_axis(ax, groups: Mapping[str, Sequence[str]], ns: Mapping[str, Sequence], ylabel: str,
                 titles: bool, xlabels: bool) -> None:
    """One row: group ticks (with n) of every block, a faint line between blocks, each block's
    attribute named above it (``titles``), percent from 0 to 100."""
    pos = _block_positions(groups)
    ticks = np.concatenate(list(pos.values()))
    ax.set_xticks(ticks)
    if xlabels:
        ax.set_xticklabels([_tick_text(g, n) for sl in groups for g, n in zip(groups[sl], ns[sl])],
                           rotation=40, ha="right", rotation_mode="anchor", fontsize=7)
    else:
        ax.set_xticklabels([])
    ax.set_xlim(-0.6, ticks[-1] + 0.6)
    ax.set_ylim(-2, 104)  # room for a point at 0 or 100
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.tick_params(axis="y", labelsize=7)
    ax.yaxis.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_ylabel(ylabel, fontsize=7.5)
    for sl, x in list(pos.items())[:-1]:
        ax.axvline(x[-1] + 1, color="#bbbbbb", linewidth=0.8)
    if titles:
        for sl, x in pos.items():
            ax.text((x[0] + x[-1]) / 2, 106, sl, ha="center", va="bottom", fontsize=8.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _points(ax, x, rows: pd.DataFrame, color, label: str, marker: str = "o") -> None:
    """Points (in percent) with their intervals as vertical lines: all intervals of a series one
    path (small SVG)."""
    v = rows["value"].to_numpy(dtype=float) * 100.0
    lo = rows["ci_low"].to_numpy(dtype=float) * 100.0
    hi = rows["ci_high"].to_numpy(dtype=float) * 100.0
    x = np.asarray(x, dtype=float)
    ax.plot(np.repeat(x, 3), np.column_stack([lo, hi, np.full_like(lo, np.nan)]).ravel(), color=color,
            linewidth=1.0, solid_capstyle="butt")
    ax.plot(x, v, linestyle="none", marker=marker, ms=3.6, color=color, label=label)


def accuracy_panels(metrics: pd.DataFrame, taxonomy: str) -> dict[tuple[str, str], pd.DataFrame]:
    """(metric, slice) -> rows (method, group, n, value, ci_low, ci_high) of one taxonomy's accuracy-like
    metrics by every single-attribute slice, groups in metrics.csv's order (the declared order)."""
    m = _clean(metrics)
    acc = m[_acc_mask(m) & (m["taxonomy"] == taxonomy).to_numpy(dtype=bool)]
    acc = acc[~acc["metric"].astype(str).str.startswith(SLICE_SUMMARY_PREFIX)]
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for metric in _unique(acc["metric"]):
        am = acc[acc["metric"] == metric]
        for sl in _single_slices(am):
            out[(metric, sl)] = am.loc[am["slice"].astype(str) == sl,
                                       ["method", "group", "n", "value", "ci_low", "ci_high"]].reset_index(drop=True)
    return out


def accuracy_compact_figure(metrics: pd.DataFrame, taxonomy: str, model: str = "",
                            n_classes: int | None = None) -> MplFigure:
    """One taxonomy's accuracies: a row of panels per accuracy-like metric, a panel per attribute
    sliced, a point and its interval per group and method (methods side by side); the chance line
    (1 / n_classes) on plain accuracy."""
    panels = accuracy_panels(metrics, taxonomy)
    if not panels:
        raise ValueError(f"no accuracy rows by an attribute for taxonomy {taxonomy!r}")
    mets = _unique(k[0] for k in panels)
    slices = _unique(k[1] for k in panels)
    groups = {sl: _unique(g for k, f in panels.items() if k[1] == sl for g in f["group"]) for sl in slices}
    longest = max(len(_tick_text(g, n)) for f in panels.values() for g, n in zip(f["group"], f["n"]))
    fig, axes = _blocks_figure(groups, len(mets), longest)
    methods = _unique(mt for f in panels.values() for mt in f["method"])
    pos = _block_positions(groups)
    off = 0.26 if len(methods) > 1 else 0.0
    ns = {}
    for sl in slices:
        f = pd.concat([panels[k] for k in panels if k[1] == sl]).drop_duplicates("group").set_index("group")
        ns[sl] = list(f["n"].reindex(groups[sl]))
    for i, (metric, ax) in enumerate(zip(mets, axes)):
        for k, mt in enumerate(methods):
            xs, rows = [], []
            for sl in slices:
                f = panels.get((metric, sl))
                if f is None:
                    continue
                rows.append(f[f["method"] == mt].drop_duplicates("group").set_index("group").reindex(groups[sl]))
                xs.append(pos[sl] + (k - (len(methods) - 1) / 2) * off)
            if rows:
                _points(ax, np.concatenate(xs), pd.concat(rows), _method_color(mt, k), mt.replace("_", " "))
        if metric == "accuracy" and n_classes:
            ax.axhline(100.0 / n_classes, color="#666666", linestyle=":", linewidth=1.0)
        _blocks_axis(ax, groups, ns, f"{metric.replace('_', ' ')} (%)", titles=i == 0, xlabels=i == len(mets) - 1)
    handles = [Line2D([], [], color=_method_color(mt, k), marker="o", ms=4, lw=1, label=mt.replace("_", " "))
               for k, mt in enumerate(methods)]
    if n_classes and "accuracy" in mets:
        handles.append(Line2D([], [], color="#666666", linestyle=":", label=f"chance 1/{n_classes}"))
    _title_and_legend(fig, f"{(model + ': ') if model else ''}{taxonomy}: accuracy (%) by group (n) "
                           f"with Wilson {_confidence_label(_clean(metrics))}", handles)
    fig.panel_data = panels
    return fig


def rate_panels(metrics: pd.DataFrame, taxonomy: str, metric: str = "rate",
                method: str | None = None) -> dict[str, pd.DataFrame]:
    """slice -> rows (category, group, n, value, ci_low, ci_high) of one taxonomy's category shares
    by every single-attribute slice (``method``: zero-shot where present), in metrics.csv's order."""
    m = _clean(metrics)
    r = m[(m["metric"] == metric).to_numpy(dtype=bool) & (m["taxonomy"] == taxonomy).to_numpy(dtype=bool)]
    if r.empty:
        return {}
    methods = _unique(r["method"])
    method = method or ("zero_shot" if "zero_shot" in methods else methods[0])
    r = r[r["method"] == method]
    return {sl: r.loc[r["slice"].astype(str) == sl, ["category", "group", "n", "value", "ci_low", "ci_high"]]
            .reset_index(drop=True) for sl in _single_slices(r)}


def rates_compact_figure(metrics: pd.DataFrame, taxonomy: str, model: str = "",
                         harms: Mapping[str, bool] | None = None, metric: str = "rate") -> MplFigure:
    """One taxonomy's category shares: a panel per attribute sliced, per group a point and interval
    per category (categories side by side; a declared harm drawn as a square and named "(harm)")."""
    panels = rate_panels(metrics, taxonomy, metric)
    if not panels:
        raise ValueError(f"no {metric} rows by an attribute for taxonomy {taxonomy!r}")
    slices = list(panels)
    cats = _unique(c for f in panels.values() for c in f["category"])
    colors = series_colors(len(cats))
    groups = {sl: _unique(panels[sl]["group"]) for sl in slices}
    longest = max(len(_tick_text(g, n)) for f in panels.values() for g, n in zip(f["group"], f["n"]))
    fig, (ax,) = _blocks_figure(groups, 1, longest, row_h=2.3)
    harms = harms or {}
    names = [c + {True: " (harm)", False: "", None: " (neutral)"}[harms.get(c)] for c in cats]
    step = min(0.8 / max(1, len(cats)), 0.22)
    pos = _block_positions(groups)
    for k, (c, name) in enumerate(zip(cats, names)):
        rows = [panels[sl][panels[sl]["category"] == c].drop_duplicates("group").set_index("group")
                .reindex(groups[sl]) for sl in slices]
        xs = [pos[sl] + (k - (len(cats) - 1) / 2) * step for sl in slices]
        _points(ax, np.concatenate(xs), pd.concat(rows), colors[k], name, marker="s" if harms.get(c) else "o")
    ns = {sl: list(panels[sl].drop_duplicates("group").set_index("group")["n"].reindex(groups[sl])) for sl in slices}
    _blocks_axis(ax, groups, ns, "share of images (%)", titles=True, xlabels=True)
    handles = [Line2D([], [], color=colors[k], marker="s" if harms.get(c) else "o", ms=4, lw=1, label=name)
               for k, (c, name) in enumerate(zip(cats, names))]
    _title_and_legend(fig, f"{(model + ': ') if model else ''}{taxonomy}: share (%) of each group's images "
                           f"predicted into each category, by group (n), with Wilson "
                           f"{_confidence_label(_clean(metrics))}", handles)
    fig.panel_data = panels
    return fig


def _split_pair(group: str, slice: str, row: pd.Series | None = None) -> tuple[str, str]:
    """An intersection group's two values: from the attribute columns where they rebuild the
    group's name, else the name split at its first ``+``."""
    a, b = str(slice).split("+", 1)
    if row is not None and a in row.index and b in row.index and not pd.isna(row[a]) and not pd.isna(row[b]):
        va, vb = str(row[a]), str(row[b])
        if f"{va}+{vb}" == str(group):
            return va, vb
    parts = str(group).split("+")
    na = len(a.split("+"))
    return "+".join(parts[:na]), "+".join(parts[na:])


def intersection_grid(metrics: pd.DataFrame, taxonomy: str, metric: str, method: str, slice: str,
                      category: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, n): one intersection slice ``A+B`` as two frames, rows the values of A and columns
    the values of B in metrics.csv's (declared) order; a missing cell is NaN."""
    m = _clean(metrics)
    rows = _select(m, taxonomy=taxonomy, metric=metric, method=method, slice=slice)
    rows = rows[rows["category"].astype(str) == str(category)]
    if rows.empty:
        raise ValueError(f"no {metric} rows for {taxonomy!r} ({method}) by {slice!r}")
    pairs = [_split_pair(g, slice, r) for g, (_, r) in zip(rows["group"], rows.iterrows())]
    ra, cb = _unique(p[0] for p in pairs), _unique(p[1] for p in pairs)
    values = pd.DataFrame(np.nan, index=ra, columns=cb)
    ns = pd.DataFrame(np.nan, index=ra, columns=cb)
    for (a, b), v, n in zip(pairs, rows["value"].astype(float), rows["n"].astype(float)):
        values.loc[a, b] = v
        ns.loc[a, b] = n
    return values, ns


def _heat(ax, values: pd.DataFrame, ns: pd.DataFrame | None, min_n: int, title: str, cmap: str = "viridis",
          fontsize: float = 6.5, annotate: bool = True):
    """A heat map of shares in percent, each cell annotated with its value (and n when given); a
    cell of fewer than ``min_n`` images is hatched and its value marked ``*``."""
    v = values.to_numpy(dtype=float) * 100.0
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    for (i, j), x in np.ndenumerate(v):
        if np.isnan(x) or not annotate:
            continue
        n = None if ns is None else ns.iat[i, j]
        tiny = n is not None and not pd.isna(n) and int(n) < min_n
        txt = f"{x:.0f}" + ("*" if tiny else "") + (f"\nn={int(n)}" if n is not None and not pd.isna(n) else "")
        ax.text(j, i, txt, ha="center", va="center", fontsize=fontsize, color="white" if x < 60 else "black")
        if tiny:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#d62728",
                                   linewidth=0.0))
    ax.set_xticks(np.arange(values.shape[1]))
    ax.set_xticklabels([str(c) for c in values.columns], rotation=40, ha="right", rotation_mode="anchor",
                       fontsize=7)
    ax.set_yticks(np.arange(values.shape[0]))
    ax.set_yticklabels([str(r) for r in values.index], fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    return im


def _heat_layout(panels: Sequence[tuple[int, int]], ncol: int, row_chars: int, col_chars: int,
                 cell_w: float = 0.5, cell_h: float = 0.34):
    """A figure for heat-map panels of (rows, columns) cells, ``ncol`` panels a row, fixed margins
    for row labels of ``row_chars`` and rotated column labels of ``col_chars`` characters, and an
    axis for the colour bar at the right; no layout pass."""
    nrow = -(-len(panels) // ncol)
    pw = cell_w * max(c for _, c in panels)
    ph = cell_h * max(r for r, _ in panels)
    left = 0.15 + 0.055 * row_chars
    below = 0.35 + 0.034 * col_chars
    top, cbar = 0.55, 1.1
    w = ncol * (left + pw) + cbar
    h = top + nrow * (ph + below + 0.25)
    fig = MplFigure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = []
    for i, (r, c) in enumerate(panels):
        row, col = divmod(i, ncol)
        x0 = col * (left + pw) + left
        y0 = h - top - row * (ph + 0.25 + below) - 0.25 - cell_h * r  # panels of a row top-aligned
        axes.append(fig.add_axes((x0 / w, y0 / h, cell_w * c / w, cell_h * r / h)))
    cax = fig.add_axes(((w - cbar + 0.4) / w, (h - top - 0.25 - ph) / h, 0.12 / w, ph / h))
    return fig, axes, cax


def _title_and_legend(fig: MplFigure, title: str, handles: Sequence = ()) -> None:
    """The figure's title at its top left and, below it, a one-line legend (fixed positions)."""
    h = fig.get_figheight()
    fig.text(0.01, 1 - 0.08 / h, title, fontsize=9, ha="left", va="top")
    if handles:
        fig.legend(handles=list(handles), loc="upper left", bbox_to_anchor=(0.0, 1 - 0.26 / h),
                   ncol=len(handles), fontsize=7.5, frameon=False, handlelength=1.5, columnspacing=1.2)


def intersection_figure(metrics: pd.DataFrame, taxonomy: str, metric: str, min_n: int = 0, model: str = "",
                        categories: Sequence[str] | None = None) -> MplFigure | None:
    """One heat map figure per taxonomy and metric: a panel per intersection slice of two
    attributes (of the zero-shot method where present; for a share, per category: ``categories``,
    default every one), each cell the group's value with its n; cells of fewer than ``min_n``
    images hatched and marked ``*``. None when the taxonomy has no such rows of ``metric``."""
    m = _clean(metrics)
    rows = m[(m["metric"] == metric).to_numpy(dtype=bool) & (m["taxonomy"] == taxonomy).to_numpy(dtype=bool)]
    inter = [s for s in _unique(rows["slice"].astype(str)) if _is_intersection(s) and s.count("+") == 1]
    if not inter:
        return None
    methods = _unique(rows["method"])
    mt = "zero_shot" if "zero_shot" in methods else methods[0]
    if is_accuracy_metric(metric):
        keys = [(sl, mt, "") for sl in inter if ((rows["slice"] == sl) & (rows["method"] == mt)).any()]
    else:
        cats = [c for c in (categories if categories is not None else _unique(rows["category"]))
                if c in set(rows["category"])]
        keys = [(sl, mt, c) for c in cats for sl in inter]
    if not keys:
        return None
    grids = {k: intersection_grid(m, taxonomy, metric, k[1], k[0], k[2]) for k in keys}
    ncol = min(len(keys), len(inter))
    row_chars = max(len(str(x)) for v, _ in grids.values() for x in v.index)
    col_chars = max(len(str(x)) for v, _ in grids.values() for x in v.columns)
    fig, axes, cax = _heat_layout([v.shape for v, _ in grids.values()], ncol, row_chars, col_chars)
    im = None
    for ax, k in zip(axes, keys):
        values, ns = grids[k]
        what = "" if is_accuracy_metric(metric) else f": {k[2]}"
        im = _heat(ax, values, ns, min_n, f"{k[0].replace('+', ' × ')}{what}",
                   cmap="viridis" if is_accuracy_metric(metric) else "magma")
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    tiny = f"; hatched and *: fewer than {min_n} images" if min_n else ""
    _title_and_legend(fig, f"{(model + ': ') if model else ''}{taxonomy} ({mt.replace('_', ' ')}): "
                           f"{metric.replace('_', ' ')} (%) of intersections (cell: value, n{tiny})")
    fig.panel_data = grids
    return fig


def label_heatmap_figure(metrics: pd.DataFrame, taxonomy: str, model: str = "",
                         harms: Mapping[str, bool] | None = None,
                         label_categories: Mapping[str, str] | None = None) -> MplFigure:
    """A taxonomy's label shares as one heat map: a row per class label (with its category and
    direction), a column per group of every attribute sliced (n in brackets), the colour the share
    of the group's images predicted as the label (values in the table beside it); a description of
    how the classifier answers, never a disparity."""
    panels = rate_panels(metrics, taxonomy, "label_rate")
    if not panels:
        raise ValueError(f"no label_rate rows by an attribute for taxonomy {taxonomy!r}")
    labels = _unique(c for f in panels.values() for c in f["category"])
    cols, values = [], {}
    for sl, f in panels.items():
        for g in _unique(f["group"]):
            sub = f[f["group"] == g]
            key = f"{sl}: {_tick_text(g, sub['n'].iloc[0])}"
            cols.append(key)
            values[key] = sub.drop_duplicates("category").set_index("category")["value"]
    grid = pd.DataFrame({c: values[c].reindex(labels) for c in cols}, index=labels)
    grid.index = [label_heading(lab, label_categories, harms) for lab in labels]
    fig, (ax,), cax = _heat_layout([grid.shape], 1, max(len(x) for x in grid.index),
                                   max(len(x) for x in grid.columns), cell_w=0.24, cell_h=0.17)
    im = _heat(ax, grid, None, 0, "", cmap="magma", annotate=False)
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    _title_and_legend(fig, f"{(model + ': ') if model else ''}{taxonomy}: share (%) of each group's images "
                           "predicted as each label; a description, not a disparity")
    fig.panel_data = {"label_rate": grid}
    return fig


# --------------------------------------------------------------------------- document

def header_blocks(ctx: ReportContext) -> list[Block]:
    """The top of a run's documents: demo banner, disclaimer, skipped items, the run table."""
    blocks: list[Block] = []
    if (ctx.sanity or {}).get("banner"):
        blocks.append(Note(ctx.sanity["banner"], kind="danger"))
    if ctx.demo:
        blocks.append(Note(DEMO_BANNER, kind="warning"))
    if ctx.disclaimer:
        blocks.append(Note(ctx.disclaimer))
    if ctx.skipped:
        what = ", ".join(f"{k}: {v}" for k, v in sorted(ctx.skipped.items()))
        blocks.append(Note(f"Skipped {sum(ctx.skipped.values())} item(s) ({what}); details in run.json.",
                           kind="warning"))
    if ctx.header:  # folded: the first screen is for whether the model works and what differs
        blocks.append(Details("Run details (model, dataset, images, date, intervals)",
                              [Table(["run", ""], [[f"**{k}**", v] for k, v in ctx.header], align="ll")]))
    return blocks


def _finding_text(r) -> str:
    where = f"**{r.taxonomy} · {r.method} · {r.metric}{f' of {r.category}' if r.category else ''} by {r.slice}**"
    if r.comparison == TO_OVERALL:
        what = (f"{r.group} {_pct(r.value)} (n={int(r.n)}) vs {r.reference or 'overall'} {_pct(r.reference_value)} "
                f"(n={int(r.reference_n)})")
    else:
        a, b = ("worst", "best") if r.direction != NEUTRAL else ("highest", "lowest")
        what = (f"{a} {r.group} {_pct(r.value)} (n={int(r.n)}) vs {b} {r.reference} "
                f"{_pct(r.reference_value)} (n={int(r.reference_n)})")
    return (f"{where}: {what}: difference {_pp(r.difference)} pp, adjusted interval "
            f"[{_pp(r.adj_ci_low)}, {_pp(r.adj_ci_high)}], adjusted p = {r.p_adjusted:.2g}")


def _distinct_findings(sig: pd.DataFrame) -> pd.DataFrame:
    """Findings in reading order, without repeats.

    Order: rates of the categories a taxonomy declares as a finding's harm first (what the audit
    is about), then accuracies; within each, by how sure the difference is at least as large (the
    end of the adjusted interval nearest 0), the first row of each taxonomy x method x metric x
    category before any second one (one headline per "what"). Left out: a slice's
    group-vs-overall row when its worst-vs-best (or highest-vs-lowest) row is already a finding,
    and the mirror image of a finding (the same two groups and size in a complementary
    category)."""
    from ..stats.specs import metric_spec

    if sig.empty:
        return sig
    lo = sig["adj_ci_low"].astype(float) if "adj_ci_low" in sig.columns else sig["difference"].astype(float)
    hi = sig["adj_ci_high"].astype(float) if "adj_ci_high" in sig.columns else sig["difference"].astype(float)
    sure = np.minimum(lo.abs(), hi.abs()).fillna(sig["difference"].abs())
    tier = [0 if (metric_spec(str(m)) is not None and metric_spec(str(m)).direction_from_harm) else 1
            for m in sig["metric"]]
    sig = sig.assign(_tier=tier, _sure=sure.to_numpy(), _size=sig["difference"].abs().to_numpy())
    sig = sig.sort_values(["_tier", "_sure", "_size"], ascending=[True, False, False], kind="stable")
    key = ["taxonomy", "method", "metric", "category", "slice"]
    ext = {tuple(k) for k in sig.loc[sig["comparison"] != TO_OVERALL, key].itertuples(index=False, name=None)}
    keep, seen = [], set()
    for i, r in zip(sig.index, sig.itertuples(index=False)):
        if r.comparison == TO_OVERALL and (r.taxonomy, r.method, r.metric, r.category, r.slice) in ext:
            continue
        mirror = (r.taxonomy, r.method, r.metric, r.slice, r.comparison == TO_OVERALL,
                  frozenset((r.group, r.reference)), round(abs(float(r.difference)), 9))
        if mirror in seen:
            continue
        seen.add(mirror)
        keep.append(i)
    out = sig.loc[keep]
    what = out[["taxonomy", "method", "metric", "category"]].astype(str).agg("|".join, axis=1)
    first = ~what.duplicated()
    out = pd.concat([out[first.to_numpy()], out[~first.to_numpy()]])
    return out.drop(columns=["_tier", "_sure", "_size"])


FOREST_MAX = 15
FOREST_SVG = "findings_forest.svg"


def forest_figure(findings: pd.DataFrame, model: str = "") -> MplFigure:
    """One forest plot of the findings (in reading order, first at the top): each difference in
    percentage points with its multiplicity-adjusted interval; red: a harm rate (higher is worse
    for the group), blue: an accuracy (lower is worse); the line at 0 is no difference."""
    f = findings.head(FOREST_MAX)
    labels = [f"{r.taxonomy} · {r.metric}{' of ' + r.category if r.category else ''} by {r.slice}: "
              f"{r.group} vs {r.reference}" for r in f.itertuples(index=False)]
    fig = MplFigure(figsize=(9.5, 0.42 * len(f) + 1.4), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(f))[::-1]
    d = 100 * f["difference"].to_numpy(float)
    lo = 100 * f["adj_ci_low"].to_numpy(float)
    hi = 100 * f["adj_ci_high"].to_numpy(float)
    colors = ["#c44e52" if str(x) == LOWER else "#4c72b0" for x in f["direction"]]
    for yi, di, l_, h_, c in zip(y, d, lo, hi, colors):
        ax.plot([l_, h_], [yi, yi], color=c, lw=2)
        ax.plot([di], [yi], "o", color=c, ms=6)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_xlabel("difference, percentage points (group − reference), with the adjusted interval")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color="#c44e52", marker="o", label="harm rate (higher is worse)"),
                       Line2D([], [], color="#4c72b0", marker="o", label="accuracy (lower is worse)")],
              loc="lower right", fontsize=7.5, frameon=False)
    ax.set_title((f"{model}: " if model else "") + "key findings, surest first", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def sanity_section(sanity: Mapping | None) -> Section | None:
    """"Does the model work?": overall accuracy per target taxonomy and method against chance."""
    from ..stats.sanity import CHANCE_RULE

    gates = list((sanity or {}).get("gates") or [])
    rw = (sanity or {}).get("random_weights")
    if not gates and not rw:
        return None
    blocks: list[Block] = []
    if rw:
        blocks.append(Note(f"Randomly initialised weights: {rw}.", kind="warning"))
    if gates:
        lvl = float(gates[0].get("adjusted_level", 0.95))
        blocks.append(Text(f"Overall accuracy per target taxonomy [Wilson interval at the Bonferroni-adjusted level "
                           f"{100 * lvl:.4g}% over the {len(gates)} gate(s)] against chance; {CHANCE_RULE}. A model "
                           "works on a taxonomy when the interval's lower end is above chance; otherwise its "
                           "differences between groups are noise, not findings."))
        blocks.append(Table(["taxonomy", "method", "n", "accuracy [adjusted CI]", "chance", "works?"],
                            [[g["taxonomy"], g["method"], str(int(g["n"])),
                              f"{_pct(g['accuracy'])} [{_pct_bare(g['adj_ci_low'])}, {_pct_bare(g['adj_ci_high'])}]",
                              f"{_pct(g['chance'])} ({'always ' + str(g['majority_class']) if g['majority_share'] >= 1.0 / g['n_classes'] else '1/' + str(g['n_classes'])})",
                              "yes" if g["above_chance"] and not rw else "**NO: at chance**" if not g["above_chance"]
                              else "**NO: random weights**"]
                             for g in gates], align="llrrrl"))
    return Section("Does the model work?", blocks)


def _findings_section(disp: pd.DataFrame, ctx: ReportContext | None = None,
                      images: Mapping[tuple, str] | None = None) -> Section:
    from ..stats.sanity import AT_CHANCE_NOTE, finding_rows, noise_keys

    conf = _confidence(disp) or 0.95
    corr = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg"}.get(disp.attrs.get("correction", "holm"),
                                                                      disp.attrs.get("correction", "holm"))
    level = disp.attrs.get("adjusted_confidence")
    tested = disp[disp["p_value"].notna()] if len(disp) else disp
    blocks: list[Block] = [Text(
        f"Candidate findings: differences between groups whose multiplicity-adjusted interval excludes 0, on a "
        f"metric with a declared direction (accuracies, and the rates of the categories each taxonomy declares as "
        f"the harm of a finding), harm rates first, then the surest (the end of the adjusted interval nearest 0) "
        f"first (of {len(tested)} comparisons in `disparities.csv`: worst vs best "
        f"group or highest vs lowest, and the group farthest from the rest of the images (\"vs overall\"); "
        f"p-values adjusted with {corr} over the whole table"
        + (f", intervals at the adjusted level {100 * level:.4g}%" if level else "") + "). "
        f"Groups smaller than {disp.attrs.get('min_n', 'the minimum')} images are not compared. "
        "Other significant rows (a category without a declared direction, or one a taxonomy routes on purpose) are "
        "described in the tables below, never findings. "
        "Cannot show: causes, differences among groups too small to compare, or whether the dataset's "
        "labels are right.")]
    everything, failed = noise_keys((ctx.sanity if ctx else None) or {})
    if everything:
        blocks.append(Note(f"No findings: {AT_CHANCE_NOTE} (see \"Does the model work?\").", kind="warning"))
        return Section("Key findings", blocks)
    if failed:
        blocks.append(Note("Left out, " + AT_CHANCE_NOTE + ": " + ", ".join(f"{t} ({m})" for t, m in sorted(failed))
                           + ".", kind="warning"))
    sig = _distinct_findings(finding_rows(disp))
    if sig.empty:
        blocks.append(Note(f"No difference between groups is significant at {_num(100 * conf)}% after adjustment. "
                           "That is not evidence that the groups are treated alike: small groups give wide intervals."))
    else:
        blocks.append(Bullets([_finding_text(r) for r in sig.head(TOP_FINDINGS).itertuples(index=False)],
                              ordered=True))
        if len(sig) > TOP_FINDINGS:
            blocks.append(Text(f"{len(sig) - TOP_FINDINGS} more findings in `disparities.csv` (column `finding`)."))
        forest = (images or {}).get(("forest",))
        if forest:
            blocks.append(Figure(forest, "The findings above: differences with their adjusted intervals "
                                         "(red: harm rates, blue: accuracies)"))
    return Section("Key findings", blocks)


def _accuracy_sections(m: pd.DataFrame, images: Mapping[tuple, str], ctx: ReportContext) -> list[Section]:
    acc = m[_acc_mask(m)]
    if acc.empty:
        return []
    ci = _confidence_label(m)
    out = []
    drawn: set[str] = set()
    for metric in _unique(acc["metric"]):
        am = acc[acc["metric"] == metric]
        blocks: list[Block] = [Text(
            f"Cells: {metric.replace('_', ' ')} [Wilson {ci}] per method, side by side; n = the group's images with a "
            "target label; (small): too few images to compare with other groups (see below). Covers the images whose label a class of the taxonomy matches. Cannot show: whether "
            "the dataset's labels (for people: annotators' perceptions) are right, or why a group is misclassified.")]
        for tax in _unique(am["taxonomy"]):
            sub = am[am["taxonomy"] == tax]
            methods = _unique(sub["method"])
            key = ["slice", "group"]
            wide = sub.pivot_table(index=key, columns="method", values=["value", "ci_low", "ci_high", "n"],
                                   aggfunc="first", sort=False)
            order = _unique(zip(sub["slice"], sub["group"]))

            def rows_for(pred):
                rows = []
                for sl, g in order:
                    if not pred(sl):
                        continue
                    r = wide.loc[(sl, g)]
                    ns = _unique(int(r[("n", mt)]) for mt in methods if not pd.isna(r[("n", mt)]))
                    cells = [_value_ci(r[("value", mt)], r[("ci_low", mt)], r[("ci_high", mt)])
                             if not pd.isna(r[("value", mt)]) else "–" for mt in methods]
                    rows.append([sl, g, "/".join(_n_cell(n, ctx.min_n) for n in ns), *cells])
                return rows

            cols = ["slice", "group", "n", *[mt.replace("_", " ") for mt in methods]]
            al = "llr" + "r" * len(methods)
            tb: list[Block] = []
            k = ctx.n_classes.get(tax)
            if k:
                tb.append(Text(f"{k} classes: chance is {100.0 / k:.1f}%."))
            tb.append(Table(cols, rows_for(lambda s: not _is_intersection(s)), align=al))
            img = images.get(("accuracy", tax))
            if img and tax not in drawn:  # one figure per taxonomy: every accuracy-like metric's row of panels
                drawn.add(tax)
                tb.append(Figure(img, f"{tax}: accuracy by every attribute sliced (panels), methods side by side"))
            inter = rows_for(_is_intersection)
            if inter:
                heat = images.get(("intersections", metric, tax))
                tb.append(Details(f"Intersections ({len(inter)} groups)", [
                    *([Figure(heat, f"{tax}: {metric.replace('_', ' ')} of intersections")] if heat else []),
                    Table(cols, inter, align=al)]))
            blocks.append(Section(f"{tax}", tb))
        out.append(Section("Accuracy" if metric == "accuracy" else metric.replace("_", " ").capitalize(), blocks))
    return out


def _rate_taxonomies(rate: pd.DataFrame) -> list[str]:
    """Taxonomies with more than one category: a taxonomy whose classes share a single
    category puts every image in it and has nothing to compare."""
    return [t for t in _unique(rate["taxonomy"]) if rate.loc[rate["taxonomy"] == t, "category"].nunique() > 1]


def _rate_sections(m: pd.DataFrame, images: Mapping[tuple, str], ctx: ReportContext) -> list[Section]:
    out = []
    ci = _confidence_label(m)
    for metric in _unique(m.loc[_share_mask(m), "metric"]):
        rate = m[m["metric"] == metric]
        taxes = _rate_taxonomies(rate)
        single = [t for t in _unique(rate["taxonomy"]) if t not in taxes]
        if not taxes:
            continue
        blocks: list[Block] = [Text(
            "Cells: share of the group's images predicted into each "
            + ("class label, headed by the label's category and that category's declared direction (harm, not a "
               "harm, neutral); a description of how the classifier answers, never a disparity"
               if metric == "label_rate" else "category") + f" [Wilson {ci}]; n = the group's "
            "images; (small): too few images to compare. A category declared a harm is marked (harm); one declared not a harm is plain; one without a "
            "declared direction is (neutral) and only described. Covers what the model picks among the offered "
            "classes only: a different class list or prompt wording can move these rates (see the comparison and "
            "prompt-sensitivity sections when present).")]
        if single:
            blocks.append(Text("Taxonomies with a single category (every prediction falls in it) are left out: "
                               + ", ".join(single) + "."))
        for tax in taxes:
            harms = ctx.harms.get(tax, {})
            tb: list[Block] = []
            for meth in _unique(rate.loc[rate["taxonomy"] == tax, "method"]):
                sub = rate[(rate["taxonomy"] == tax) & (rate["method"] == meth)]
                cats = _unique(sub["category"])
                if metric == "label_rate":  # a class label: its category and that category's direction
                    heads = [label_heading(c, ctx.label_categories.get(tax), harms) for c in cats]
                else:
                    heads = [c + {True: " (harm)", False: "", None: " (neutral)"}[harms.get(c)] for c in cats]
                cell = {(s, g, c): _value_ci(v, lo, hi) for s, g, c, v, lo, hi in
                        zip(sub["slice"], sub["group"], sub["category"], sub["value"], sub["ci_low"], sub["ci_high"])}
                nmap = {(s, g): int(n) for s, g, n in zip(sub["slice"], sub["group"], sub["n"])}
                order = _unique(zip(sub["slice"], sub["group"]))
                cols = ["slice", "group", "n", *heads]
                al = "llr" + "r" * len(cats)

                def rows_for(pred):
                    return [[s, g, _n_cell(nmap[(s, g)], ctx.min_n), *(cell.get((s, g, c), "–") for c in cats)]
                            for s, g in order if pred(s)]

                title = f"{tax} ({meth})"
                sec: list[Block] = [Table(cols, rows_for(lambda s: not _is_intersection(s)), align=al)]
                plotted = meth == _plotted_method(rate, tax)
                img = images.get((metric, tax)) if plotted else None
                if img:
                    sec.append(Figure(img, f"{tax} ({meth}): predicted "
                                           f"{'label' if metric == 'label_rate' else 'category'} by every "
                                           "attribute sliced"))
                inter = rows_for(_is_intersection)
                if inter:
                    heat = images.get(("intersections", metric, tax)) if plotted else None
                    sec.append(Details(f"Intersections ({len(inter)} groups)", [
                        *([Figure(heat, f"{tax} ({meth}): {metric.replace('_', ' ')} of intersections")]
                          if heat else []),
                        Table(cols, inter, align=al)]))
                tb.append(Section(title, sec))
            blocks += tb
        out.append(Section(_metric_title(metric), blocks))
    return out


def _disparity_sections(disp: pd.DataFrame) -> list[Section]:
    if disp.empty:
        return []
    ci = _confidence_label(disp)
    ext = disp[(disp["comparison"] != TO_OVERALL) & disp["difference"].notna()]
    blocks: list[Block] = [Text(
        "Per taxonomy, method, metric, category and slice: the worst vs the best group (direction declared) or the "
        f"highest vs the lowest (neutral), among groups of at least {disp.attrs.get('min_n', '?')} images. "
        f"Difference in percentage points with Newcombe's hybrid score {ci} and the multiplicity-adjusted "
        f"interval; ratio with the Katz log {ci}. Largest {TOP_DISPARITIES} by size; every row, and each slice's "
        "group farthest from overall, are in `disparities.csv`. \"vs overall\" (comparison `to_overall`): the "
        "group's value against the value over all images; its interval and test compare the group with the rest "
        "of the images (the other groups together, independent samples), mapped onto group − overall. "
        "Cannot show: differences between groups that were too small to compare, or causes.")]
    if len(ext):
        top = ext.reindex(ext["difference"].abs().sort_values(ascending=False, kind="stable").index)
        top = top.head(TOP_DISPARITIES)
        rows = []
        for r in top.itertuples(index=False):
            a, b = ("worst", "best") if r.direction != NEUTRAL else ("highest", "lowest")
            rows.append([f"{r.taxonomy} · {r.method}", f"{r.metric}{' · ' + r.category if r.category else ''}",
                         r.slice, f"{a}: {r.group} {_pct(r.value)} (n={int(r.n)})",
                         f"{b}: {r.reference} {_pct(r.reference_value)} (n={int(r.reference_n)})",
                         f"{_pp(r.difference)} [{_pp(r.ci_low)}, {_pp(r.ci_high)}]",
                         f"[{_pp(r.adj_ci_low)}, {_pp(r.adj_ci_high)}]",
                         "–" if pd.isna(r.ratio) else f"{r.ratio:.2f} " + (
                             "[–]" if pd.isna(r.ratio_ci_low) else f"[{r.ratio_ci_low:.2f}, {r.ratio_ci_high:.2f}]"),
                         f"{r.p_adjusted:.2g}", "yes" if r.significant else ""])
        blocks.append(Table(["taxonomy · method", "metric", "slice", "group", "compared with",
                             "difference pp [CI]", "adjusted CI", "ratio [CI]", "p adj.", "significant"],
                            rows, align="lllllrrrrc"))
    small = disp[disp["too_small"].fillna("").astype(str) != ""].drop_duplicates(["taxonomy", "slice", "too_small"])
    if len(small):
        blocks.append(Details(
            f"Groups too small to compare (fewer than {disp.attrs.get('min_n', '?')} images)",
            [Table(["taxonomy", "slice", "groups (n)"],
                   [[r.taxonomy, r.slice, r.too_small] for r in small.itertuples(index=False)])]))
    return [Section("Largest differences between groups", blocks)]


def summary_document(metrics: pd.DataFrame, disparities: pd.DataFrame, ctx: ReportContext | None = None,
                     images: Mapping[tuple, str] | None = None,
                     extra_sections: Sequence[Section] = ()) -> Document:
    """The report as a document: header, key findings, accuracy (methods side by side),
    category rates, largest differences, then ``extra_sections`` (comparison, prompt
    sensitivity, model card, ...). ``images``: (metric, taxonomy, method, slice) -> PNG."""
    ctx = ctx or ReportContext()
    m = _clean(metrics)
    d = _clean(disparities) if len(disparities) else disparities
    if len(d) and "kind" in d.columns:  # differences of means are in their analysis's own section
        d = d[d["kind"].fillna("proportion").astype(str) != "mean"]
    if not ctx.min_n and "min_n" in getattr(disparities, "attrs", {}):
        ctx = replace(ctx, min_n=int(disparities.attrs["min_n"]))
    if len(d) and "comparison" not in d.columns:
        raise ValueError("disparities frame is from an older clipfair (no 'comparison' column); rerun the run")
    d.attrs = dict(getattr(disparities, "attrs", {}))
    images = images or {}
    sections: list[Section] = []
    gate = sanity_section(ctx.sanity)
    findings = _findings_section(d, ctx, images) if len(d) else None
    # the first screen: what differs, for whom, how much, how sure, and whether the model works.
    # A failed gate leads (its banner is already at the top); a passed one follows the findings.
    failed = bool((ctx.sanity or {}).get("banner"))
    for sec in ([gate, findings] if failed else [findings, gate]):
        if sec is not None:
            sections.append(sec)
    rest = [*_accuracy_sections(m, images, ctx), *_rate_sections(m, images, ctx), *_disparity_sections(d),
            *extra_sections]
    for sec in rest:  # report.html: everything after the findings is folded (summary.md is unchanged)
        sec.folded = True
    sections += rest
    return Document(ctx.title, sections, intro=header_blocks(ctx))


def summary_markdown(metrics: pd.DataFrame, disparities: pd.DataFrame, ctx: ReportContext | None = None) -> str:
    """``summary.md``'s text (without plots)."""
    return to_markdown(summary_document(metrics, disparities, ctx))


def _plotted_method(rate: pd.DataFrame, taxonomy: str) -> str:
    """The method whose shares a taxonomy's figure shows: zero-shot where present."""
    methods = _unique(rate.loc[rate["taxonomy"] == taxonomy, "method"])
    return "zero_shot" if "zero_shot" in methods else (methods[0] if methods else "")


def _plots(m: pd.DataFrame, out_dir: Path, ctx: ReportContext) -> tuple[list[Path], dict[tuple, str]]:
    """The report's compact figures (SVG): per taxonomy one figure of its accuracies (a panel per
    attribute sliced), one of its category shares or a heat map of its label shares, and a heat map
    of its intersections per metric. ``images`` keys: ("accuracy", taxonomy), (metric, taxonomy),
    ("intersections", metric, taxonomy)."""
    written: list[Path] = []
    images: dict[tuple, str] = {}
    used: set[str] = set()

    def save(fig, stem: str, key: tuple) -> None:
        name, i = f"{stem}.svg", 2
        while name in used:  # two taxonomies whose names sanitise alike
            name, i = f"{stem}_{i}.svg", i + 1
        used.add(name)
        written.append(save_figure(fig, out_dir / name))
        images[key] = name

    min_n = ctx.min_n
    acc = m[_acc_mask(m)]
    for tax in _unique(acc["taxonomy"]):
        if accuracy_panels(acc, tax):
            save(accuracy_compact_figure(m, tax, ctx.model, ctx.n_classes.get(tax)), f"accuracy_{_safe(tax)}",
                 ("accuracy", tax))
        fig = intersection_figure(m, tax, "accuracy", min_n, ctx.model)
        if fig is not None:
            save(fig, f"intersections_{_safe(tax)}_accuracy", ("intersections", "accuracy", tax))
    for metric in _unique(m.loc[_share_mask(m), "metric"]):
        rate = m[m["metric"] == metric]
        for tax in _rate_taxonomies(rate):
            if not rate_panels(rate, tax, metric, _plotted_method(rate, tax)):
                continue
            harms = ctx.harms.get(tax) or {}
            if metric == "label_rate":
                save(label_heatmap_figure(m, tax, ctx.model, harms, ctx.label_categories.get(tax)),
                     f"label_rate_{_safe(tax)}", (metric, tax))
                continue
            prefix = "rates" if metric == "rate" else _safe(metric)
            save(rates_compact_figure(m, tax, ctx.model, harms, metric), f"{prefix}_{_safe(tax)}", (metric, tax))
            harmful = [c for c, h in harms.items() if h]
            fig = intersection_figure(m, tax, metric, min_n, ctx.model, harmful or None)
            if fig is not None:
                save(fig, f"intersections_{_safe(tax)}_{_safe(metric)}", ("intersections", metric, tax))
    return written, images


def _other_plots(doc: Document, out_dir: Path) -> Section | None:
    """Every plot in ``out_dir`` the document does not show yet (confusion matrices, ...), as links
    to the files beside the page (embedded they would make it megabytes)."""
    shown: set[str] = set()

    def walk(blocks):
        for b in blocks:
            if isinstance(b, Figure):
                shown.add(b.path)
            elif isinstance(b, (Section, Details)):
                walk(b.blocks)

    walk(doc.sections)
    rest = sorted(p.name for p in [*out_dir.glob("*.png"), *out_dir.glob("*.svg")] if p.name not in shown)
    if not rest:
        return None
    return Section("Other plots", [
        Text(f"{len(rest)} more plot(s), files beside this page (open each in the browser):"),
        Bullets([f"[{n.rsplit('.', 1)[0].replace('_', ' ')}]({n})" for n in rest])])


def write_report(metrics: pd.DataFrame, disparities: pd.DataFrame, out_dir, ctx: ReportContext | None = None,
                 extra_sections: Sequence[Section] = (), html_sections: Sequence[Section] = ()) -> list[Path]:
    """Write the plots, ``summary.md`` and ``report.html`` into ``out_dir``; return the
    written paths (plots in the order written, then ``summary.md``, ``report.html``).

    Plots (SVG, see :func:`_plots`): ``accuracy_<taxonomy>.svg`` (a panel per attribute sliced, methods
    side by side) for every taxonomy with a target; ``rates_<taxonomy>.svg`` for every taxonomy with
    more than one category; ``label_rate_<taxonomy>.svg`` (a heat map of label shares);
    ``intersections_<taxonomy>_<metric>.svg`` (heat maps of two-attribute slices);
    ``findings_forest.svg``. ``extra_sections`` go into both files (comparison, prompt sensitivity);
    ``html_sections`` into ``report.html`` only (the model card, which has its own
    ``model_card.md``). ``report.html`` also links every other plot in ``out_dir``.
    """
    ctx = ctx or ReportContext()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = _clean(metrics)
    written, images = _plots(m, out_dir, ctx)
    if len(disparities) and "comparison" in disparities.columns:
        from ..stats.sanity import finding_rows, noise_keys

        everything, _ = noise_keys(ctx.sanity)
        found = _distinct_findings(finding_rows(_clean(disparities)))
        if not everything and len(found):
            written.append(save_figure(forest_figure(found, ctx.model), out_dir / FOREST_SVG))
            images[("forest",)] = FOREST_SVG
    doc = summary_document(m, disparities, ctx, images, extra_sections)
    summary = out_dir / "summary.md"
    summary.write_text(to_markdown(doc), encoding="utf-8")
    written.append(summary)
    for sec in html_sections:
        sec.folded = True
    doc.sections += list(html_sections)
    other = _other_plots(doc, out_dir)
    if other is not None:
        other.folded = True
        doc.sections.append(other)
    page = out_dir / "report.html"
    page.write_text(to_html(doc, base_dir=out_dir), encoding="utf-8")
    written.append(page)
    return written
