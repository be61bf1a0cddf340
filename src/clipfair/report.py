"""Markdown tables and PNG plots from the long metrics and disparities frames.

Everything here only reads the frames :func:`clipfair.metrics.group_metrics` and
:func:`clipfair.metrics.disparities` produce (or their CSV/parquet copies); no metric is
recomputed. Plots use matplotlib's object API (``matplotlib.figure.Figure`` rendered by
the Agg canvas), so they never open a window, never touch pyplot's global state and work
on headless machines whatever backend is configured.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .outputs import safe_filename

__all__ = [
    "summary_markdown",
    "plot_accuracy",
    "plot_category_rates",
    "write_report",
    "ACCURACY_PLOT_SLICES",
    "RATE_PLOT_SLICES",
]

#: slices that get an accuracy plot (when present) and a category-rate plot/table
ACCURACY_PLOT_SLICES: tuple[str, ...] = ("race", "gender", "age")
RATE_PLOT_SLICES: tuple[str, ...] = ("race", "age")
RATE_TABLE_SLICES: tuple[str, ...] = ("race", "age")
DPI = 120
TOP_DISPARITIES = 10


# --------------------------------------------------------------------------- helpers

def _clean(metrics: pd.DataFrame) -> pd.DataFrame:
    """The frame with an empty-string category for accuracy rows (a CSV round trip
    turns "" into NaN) and plain string key columns."""
    m = metrics.copy()
    if "category" in m.columns:
        m["category"] = m["category"].astype(object).where(m["category"].notna(), "")
    return m


def _confidence_label(metrics: pd.DataFrame) -> str:
    conf = metrics.attrs.get("confidence") if hasattr(metrics, "attrs") else None
    if isinstance(conf, (int, float)) and 0 < conf < 1:
        return f"{_num(conf * 100)}% CI"
    return "CI"


def _num(x: float) -> str:
    """95.0 -> '95', 99.9 -> '99.9'."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _pct(x) -> str:
    if pd.isna(x):
        return "–"
    return f"{100.0 * float(x):.1f}%"


def _pct_bare(x) -> str:
    if pd.isna(x):
        return "–"
    return f"{100.0 * float(x):.1f}"


def _cell(text) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None) -> list[str]:
    header = [_cell(h) for h in header]
    align = list(align) if align is not None else ["l"] * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        out.append("| " + " | ".join(_cell(c) for c in r) + " |")
    return out


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _acc_cell(row) -> str:
    return f"{_pct(row.value)} [{_pct_bare(row.ci_low)}–{_pct_bare(row.ci_high)}] ({int(row.n)})"


def _safe(name: str) -> str:
    return safe_filename(name)


def _select(metrics: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(metrics), dtype=bool)
    for col, val in eq.items():
        mask &= (metrics[col] == val).to_numpy(dtype=bool)
    return metrics[mask]


_WRAP_MAX_GROUPS = 9  # more groups than this: one-line labels, rotated


def _wrap(text: str, width: int = 11) -> str:
    """Break a group name after spaces/underscores into lines of about ``width``."""
    lines: list[str] = []
    for part in text.split("+"):
        cur = ""
        for tok in re.split(r"(?<=[ _])", part):
            if cur and len(cur) + len(tok) > width:
                lines.append(cur.rstrip())
                cur = ""
            cur += tok
        if cur:
            lines.append(cur.rstrip())
    return "\n".join(lines)


def _tick_labels(groups: Sequence[str], ns: Sequence[int]) -> list[str]:
    if len(groups) <= _WRAP_MAX_GROUPS:
        return [f"{_wrap(str(g))}\nn={int(n)}" for g, n in zip(groups, ns)]
    return [f"{str(g).replace('+', ' + ')} (n={int(n)})" for g, n in zip(groups, ns)]


def _new_figure(n_groups: int, n_series: int = 1, legend_right: bool = False) -> Figure:
    per_group = 0.45 + 0.22 * n_series if n_groups <= _WRAP_MAX_GROUPS else 0.3 + 0.18 * n_series
    width = min(max(3.8, 1.2 + n_groups * per_group), 16.0) + (1.8 if legend_right else 0.0)
    fig = Figure(figsize=(width, 4.6), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _style_axis(ax, labels: Sequence[str], ylabel: str, title: str) -> None:
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.set_xticks(np.arange(len(labels)))
    if len(labels) <= _WRAP_MAX_GROUPS:
        ax.set_xticklabels(labels, fontsize=8.5)
    else:
        ax.set_xticklabels(labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.yaxis.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", metadata={"Software": None})
    return path


def _errors(values: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Asymmetric error-bar lengths in percent (0 where the CI is missing)."""
    lo = np.nan_to_num(values - lows, nan=0.0)
    hi = np.nan_to_num(highs - values, nan=0.0)
    return np.clip(np.vstack([lo, hi]) * 100.0, 0.0, None)


# --------------------------------------------------------------------------- plots

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


def _accuracy_figure(metrics: pd.DataFrame, taxonomy: str, method: str, slice: str) -> Figure:
    m = _clean(metrics)
    rows = _rows_or_raise(m, "accuracy", taxonomy, method, slice)
    v = rows["value"].to_numpy(dtype=float)
    fig = _new_figure(len(rows), legend_right=True)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    ax.bar(x, v * 100.0, width=0.65, color="#4C72B0", edgecolor="none", label="accuracy")
    ax.errorbar(x, v * 100.0, yerr=_errors(v, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float)),
                fmt="none", ecolor="#222222", elinewidth=1.1, capsize=3, label="Wilson " + _confidence_label(metrics))
    overall = _select(m, metric="accuracy", taxonomy=taxonomy, method=method, slice="overall")
    if len(overall):
        ax.axhline(float(overall["value"].iloc[0]) * 100.0, color="#C44E52", linestyle="--",
                   linewidth=1.0, label=f"overall {_pct(overall['value'].iloc[0])}")
    labels = _tick_labels(list(rows["group"]), list(rows["n"]))
    _style_axis(ax, labels, "accuracy (%)", f"{taxonomy} · {method}: accuracy by {slice}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy(metrics: pd.DataFrame, taxonomy: str, method: str, slice: str, path) -> Path:
    """Per-group accuracy bars with Wilson CI error bars and n under each group; PNG."""
    return _save(_accuracy_figure(metrics, taxonomy, method, slice), path)


def _rates_figure(metrics: pd.DataFrame, taxonomy: str, slice: str,
                  categories: Sequence[str] | None = None, method: str = "zero_shot") -> Figure:
    m = _clean(metrics)
    rows = _rows_or_raise(m, "rate", taxonomy, method, slice)
    present = _unique(rows["category"])
    cats = present if categories is None else list(categories)
    unknown = [c for c in cats if c not in present]
    if unknown:
        raise ValueError(f"taxonomy {taxonomy!r} has no categories {unknown}; it has {present}")
    if not cats:
        raise ValueError("no categories to plot")
    groups = _unique(rows["group"])
    n_by_group = rows.drop_duplicates("group").set_index("group")["n"]
    fig = _new_figure(len(groups), len(cats), legend_right=True)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    width = 0.8 / len(cats)
    colors = [f"C{i % 10}" for i in range(len(cats))]
    for i, cat in enumerate(cats):
        r = rows[rows["category"] == cat].set_index("group").reindex(groups)
        v = r["value"].to_numpy(dtype=float)
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(v) * 100.0, width=width * 0.95,
               color=colors[i], label=cat, edgecolor="none")
        ax.errorbar(x - 0.4 + width * (i + 0.5), np.nan_to_num(v) * 100.0,
                    yerr=_errors(v, r["ci_low"].to_numpy(float), r["ci_high"].to_numpy(float)),
                    fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2)
    labels = _tick_labels(groups, [n_by_group[g] for g in groups])
    _style_axis(ax, labels, "share of group's images (%)",
                f"{taxonomy} · {method}: predicted category by {slice}\n"
                f"(error bars: Wilson {_confidence_label(metrics)})")
    ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_category_rates(metrics: pd.DataFrame, taxonomy: str, slice: str, path,
                        categories: Sequence[str] | None = None, method: str = "zero_shot") -> Path:
    """Grouped bars: per group, the share of images put into each category, with CIs; PNG."""
    return _save(_rates_figure(metrics, taxonomy, slice, categories, method), path)


# --------------------------------------------------------------------------- markdown

def _summary(metrics: pd.DataFrame, disp: pd.DataFrame, title: str, header_lines: Sequence[str],
             images: Mapping[tuple, str]) -> str:
    m = _clean(metrics)
    ci = _confidence_label(metrics)
    out: list[str] = [f"# {title}", ""]
    for line in header_lines:
        out += [str(line), ""]

    acc = m[m["metric"] == "accuracy"]
    rate = m[m["metric"] == "rate"]

    if len(acc):
        out += ["## Accuracy", "",
                f"Cells: accuracy [Wilson {ci}] (n = images with a target in the group).", ""]
        for tax in _unique(acc["taxonomy"]):
            for meth in _unique(acc.loc[acc["taxonomy"] == tax, "method"]):
                rows = acc[(acc["taxonomy"] == tax) & (acc["method"] == meth)]
                out += [f"### {tax} · {meth}", ""]
                out += _table(["slice", "group", f"accuracy [{ci}] (n)"],
                              [(r.slice, r.group, _acc_cell(r)) for r in rows.itertuples(index=False)],
                              ["l", "l", "r"])
                out.append("")
                for sl in ACCURACY_PLOT_SLICES:
                    img = images.get(("accuracy", tax, meth, sl))
                    if img:
                        out += [f"![{tax} {meth} accuracy by {sl}]({img})", ""]

    multi = _rate_plot_taxonomies(rate) if len(rate) else []
    single = [t for t in _unique(rate["taxonomy"]) if t not in multi] if len(rate) else []
    if multi:
        out += ["## Predicted categories", "",
                "Cells: share of the group's images whose prediction falls in each category.", ""]
        if single:
            out += ["Taxonomies with a single category (every prediction falls in it) are left "
                    "out: " + ", ".join(single) + ".", ""]
        for tax in multi:
            for meth in _unique(rate.loc[rate["taxonomy"] == tax, "method"]):
                sub = rate[(rate["taxonomy"] == tax) & (rate["method"] == meth)]
                cats = _unique(sub["category"])
                for sl in RATE_TABLE_SLICES:
                    rows = sub[sub["slice"].isin(["overall", sl])]
                    if not (rows["slice"] == sl).any():
                        continue
                    wide = {(g, c): v for g, c, v in zip(rows["group"], rows["category"], rows["value"])}
                    groups = _unique(rows["group"])
                    n_by_group = rows.drop_duplicates("group").set_index("group")["n"]
                    out += [f"### {tax} · {meth} — by {sl}", ""]
                    out += _table(
                        [sl, "n", *cats],
                        [(g, int(n_by_group[g]), *(_pct(wide.get((g, c), float("nan"))) for c in cats))
                         for g in groups],
                        ["l", "r", *(["r"] * len(cats))],
                    )
                    out.append("")
                    img = images.get(("rate", tax, meth, sl))
                    if img:
                        out += [f"![{tax} {meth} categories by {sl}]({img})", ""]

    d = _clean(disp) if len(disp) else disp
    if len(d):
        d = d[d["n_groups"] >= 2]
    if len(d):
        out += ["## Largest disparities", "",
                "Per slice, the best and worst group (accuracy: highest is best; category "
                "rate: lowest is best), gap = max − min in percentage points, ratio = min / max.",
                ""]
        for metric in _unique(d["metric"]):
            dm = d[d["metric"] == metric].sort_values("gap", ascending=False, kind="stable")
            dm = dm.head(TOP_DISPARITIES)
            out += [f"### {metric}", ""]
            out += _table(
                ["taxonomy", "method", "category", "slice", "best", "worst", "gap (pp)", "ratio", "groups"],
                [
                    (r.taxonomy, r.method, r.category or "–", r.slice,
                     f"{r.best_group} {_pct(r.best_value)}", f"{r.worst_group} {_pct(r.worst_value)}",
                     _pct_bare(r.gap), "–" if pd.isna(r.ratio) else f"{float(r.ratio):.2f}",
                     int(r.n_groups))
                    for r in dm.itertuples(index=False)
                ],
                ["l", "l", "l", "l", "l", "l", "r", "r", "r"],
            )
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def summary_markdown(metrics: pd.DataFrame, disparities: pd.DataFrame, title: str = "clipfair results",
                     header_lines: Sequence[str] = ()) -> str:
    """Readable Markdown: accuracy tables per taxonomy x method (every slice), category-rate
    tables by race and by age per taxonomy x method (taxonomies with more than one
    category), and the largest disparities per metric (top 10 by gap, slices with at
    least two groups). ``header_lines`` go right under the title, one paragraph each."""
    return _summary(metrics, disparities, title, header_lines, {})


def _rate_plot_taxonomies(rate: pd.DataFrame) -> list[str]:
    """Taxonomies with more than one reporting category (probes like denigration); a
    target taxonomy whose classes share a single category has nothing to compare."""
    out = []
    for tax in _unique(rate["taxonomy"]):
        if rate.loc[rate["taxonomy"] == tax, "category"].nunique() > 1:
            out.append(tax)
    return out


def write_report(metrics: pd.DataFrame, disparities: pd.DataFrame, out_dir,
                 header_lines: Sequence[str] = (), title: str = "clipfair results") -> list[Path]:
    """Write ``summary.md`` and its plots into ``out_dir``; return the written paths
    (plots in the order written, then ``summary.md``).

    Plots: ``accuracy_<taxonomy>_<method>_<slice>.png`` for every taxonomy with a target,
    every method and the slices race, gender, age that are present; and
    ``rates_<taxonomy>_<slice>.png`` by race and by age for every taxonomy with more
    than one category (zero-shot rates, or the first method if there is no zero-shot).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = _clean(metrics)
    m.attrs = dict(getattr(metrics, "attrs", {}))
    written: list[Path] = []
    images: dict[tuple, str] = {}
    used_names: set[str] = set()

    def fname(stem: str) -> str:
        name, i = f"{stem}.png", 2
        while name in used_names:  # two taxonomies whose names sanitise alike
            name, i = f"{stem}_{i}.png", i + 1
        used_names.add(name)
        return name

    acc = m[m["metric"] == "accuracy"]
    for tax in _unique(acc["taxonomy"]):
        for meth in _unique(acc.loc[acc["taxonomy"] == tax, "method"]):
            have = set(acc.loc[(acc["taxonomy"] == tax) & (acc["method"] == meth), "slice"])
            for sl in ACCURACY_PLOT_SLICES:
                if sl not in have:
                    continue
                name = fname(f"accuracy_{_safe(tax)}_{_safe(meth)}_{_safe(sl)}")
                written.append(plot_accuracy(m, tax, meth, sl, out_dir / name))
                images[("accuracy", tax, meth, sl)] = name

    rate = m[m["metric"] == "rate"]
    for tax in _rate_plot_taxonomies(rate):
        methods = _unique(rate.loc[rate["taxonomy"] == tax, "method"])
        meth = "zero_shot" if "zero_shot" in methods else methods[0]
        have = set(rate.loc[(rate["taxonomy"] == tax) & (rate["method"] == meth), "slice"])
        for sl in RATE_PLOT_SLICES:
            if sl not in have:
                continue
            name = fname(f"rates_{_safe(tax)}_{_safe(sl)}")
            written.append(plot_category_rates(m, tax, sl, out_dir / name, method=meth))
            images[("rate", tax, meth, sl)] = name

    summary = out_dir / "summary.md"
    summary.write_text(_summary(m, disparities, title, header_lines, images), encoding="utf-8")
    written.append(summary)
    return written
