"""Prompt sensitivity: the same taxonomy under several template sets.

Layer: methods.

A taxonomy ``t`` evaluated with template set ``s`` is named ``t@s`` (a display name: its rows carry
``t`` and ``s`` in the key columns ``variant_of`` and ``template_set``). For every group the
spread of its rate/accuracy across sets is reported (min, max, standard deviation). A
*finding* (which group is worst for a metric in a slice) exists only where a direction is
declared (accuracy, or a category the taxonomy declares a harm or not); it is **robust**
when the same group is worst under every set and its gap to the next group (Newcombe's
hybrid score interval at ``confidence``) excludes 0 under every set. Categories with the
same value for every group under every set say nothing about groups and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..report.document import Figure, Section, Table, Text
from ..report.figures import DPI, save_figure
from ..stats.metrics import DEFAULT_DISPARITY_MIN_N, HIGHER, NEUTRAL, is_accuracy_metric, metric_direction
from ..stats.inference import newcombe_diff
from ..data.taxonomy import Taxonomy, TaxonomyError
from ..utility.outputs import safe_filename, write_csv

SEP = "@"
SPREAD_COLUMNS = ("taxonomy", "method", "metric", "category", "slice", "group", "n_sets",
                  "min", "max", "mean", "std", "range", "min_set", "max_set")
FINDING_COLUMNS = ("taxonomy", "method", "metric", "category", "direction", "slice", "n_sets", "worst_group",
                   "worst_groups_by_set", "gap_by_set", "robust")


def expand_template_sets(taxonomies: Sequence[Taxonomy],
                         template_sets: Mapping[str, Mapping[str, Sequence[str]]] | None) -> list[Taxonomy]:
    """Replace each taxonomy named in ``template_sets`` by one variant per set, plus its own
    templates as set ``default``; other taxonomies pass through unchanged. Two sets with the
    same templates (in any order), or a set equal to the taxonomy's own templates, are an
    error: they would count one measurement twice."""
    if not template_sets:
        return list(taxonomies)
    names = {t.name for t in taxonomies}
    unknown = set(template_sets) - names
    if unknown:
        raise TaxonomyError(f"template_sets names taxonomies that are not in this run: {sorted(unknown)}; "
                            f"taxonomies: {sorted(names)}")
    out: list[Taxonomy] = []
    for t in taxonomies:
        sets = template_sets.get(t.name)
        if not sets:
            out.append(t)
            continue
        if "default" in sets:
            raise TaxonomyError(f"template set name 'default' is reserved for {t.name}'s own templates")
        seen: dict[frozenset, str] = {frozenset(t.templates): "default (the taxonomy's own templates)"}
        out.append(t.with_templates(t.templates, name=variant_name(t.name, "default")))
        for set_name, templates in sets.items():
            if isinstance(templates, str):
                templates = [templates]
            key = frozenset(templates)
            if key in seen:
                raise TaxonomyError(
                    f"template_sets.{t.name}.{set_name}: the same templates as set {seen[key]}; "
                    "remove it or change its templates (identical sets would count one result twice)")
            seen[key] = repr(set_name)
            out.append(t.with_templates(list(templates), name=variant_name(t.name, set_name)))
    made: set[str] = set()
    for t in out:  # e.g. taxonomy 'a@b' with set 'c' and taxonomy 'a' with set 'b@c'
        if t.name in made:
            raise TaxonomyError(f"template_sets: two taxonomies of this run would both be named {t.name!r}; "
                                f"rename a taxonomy or a template set (a {SEP!r} in a name can do this)")
        made.add(t.name)
    return out


def variant_name(taxonomy: str, template_set: str) -> str:
    """The display name of ``taxonomy`` under ``template_set`` (``t@s``): built from the two
    values, never split again (the rows carry them in ``variant_of`` / ``template_set``)."""
    return f"{taxonomy}{SEP}{template_set}"


def _text(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), "").astype(str)


def _split(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of template-set variants, with their base taxonomy in ``base`` and their set in
    ``template_set``, read from the key columns ``variant_of`` and ``template_set`` (set by the
    prompt sensitivity analysis); a table without them has no variants."""
    if "template_set" not in frame.columns or "variant_of" not in frame.columns or frame.empty:
        return frame.iloc[0:0].assign(base=pd.Series(dtype=object), template_set=pd.Series(dtype=object))
    tset, base = _text(frame["template_set"]), _text(frame["variant_of"])
    keep = ((tset != "") & (base != "")).to_numpy()
    frame = frame.assign(base=base, template_set=tset)[keep]
    if "category" in frame.columns:
        frame = frame.assign(category=frame["category"].astype(object).where(frame["category"].notna(), ""))
    return frame


def spread(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per base taxonomy x method x metric x category x slice x group: spread across sets."""
    m = _split(metrics)
    if m.empty:
        return pd.DataFrame(columns=list(SPREAD_COLUMNS))
    key = ["base", "method", "metric", "category", "slice", "group"]
    g = m.groupby(key, sort=False)
    out = g["value"].agg(n_sets="count", min="min", max="max", mean="mean",
                         std=lambda v: float(np.std(v, ddof=0))).reset_index()
    idx_min = g["value"].idxmin()
    idx_max = g["value"].idxmax()
    out["range"] = out["max"] - out["min"]
    out["min_set"] = m.loc[idx_min.to_numpy(), "template_set"].to_numpy()
    out["max_set"] = m.loc[idx_max.to_numpy(), "template_set"].to_numpy()
    return out.rename(columns={"base": "taxonomy"})[list(SPREAD_COLUMNS)]


def findings(metrics: pd.DataFrame, harms: Mapping[str, Mapping[str, bool]] | None = None,
             confidence: float = 0.95, min_n: int = DEFAULT_DISPARITY_MIN_N) -> pd.DataFrame:
    """Is the worst group of each metric/slice the same under every template set, and is its
    gap to the next group clear of 0 under every set? Only groups of at least ``min_n``
    images; only declared directions (``harms``: base taxonomy -> category -> harm)."""
    m = _split(metrics)
    m = m[(m["slice"] != "overall") & (m["n"] >= min_n) & m["value"].notna()] if len(m) else m
    if m.empty:
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    if "count" not in m.columns:
        m = m.assign(count=np.rint(m["value"] * m["n"]))
    harms = harms or {}
    rows = []
    for key, part in m.groupby(["base", "method", "metric", "category", "slice"], sort=False):
        base, meth, metric, cat, sl = key
        declared = harms.get(base) or next((harms[t] for t in dict.fromkeys(part["taxonomy"].astype(str))
                                            if t in harms), None)
        direction = metric_direction(metric, cat, declared)
        if direction == NEUTRAL:
            continue
        if part["value"].nunique() <= 1:
            continue  # the same value for every group under every set: nothing about groups
        worst, gaps, clear = [], [], []
        for ts, p in part.groupby("template_set", sort=False):
            if len(p) < 2:
                continue
            p = p.sort_values("value", ascending=direction == HIGHER, kind="stable")  # worst first
            w, nxt = p.iloc[0], p.iloc[1]
            lo, hi = newcombe_diff(w["count"], w["n"], nxt["count"], nxt["n"], confidence)
            worst.append((ts, str(w["group"])))
            gaps.append(f"{ts}: {100 * (w['value'] - nxt['value']):+.1f} [{100 * float(lo):+.1f}, "
                        f"{100 * float(hi):+.1f}] vs {nxt['group']}")
            clear.append(bool(lo > 0 or hi < 0))
        if len(worst) < 2:
            continue
        names = {w for _, w in worst}
        robust = len(names) == 1 and all(clear)
        rows.append((base, meth, metric, cat, direction, sl, len(worst), worst[0][1] if robust else "",
                     "; ".join(f"{s}: {w}" for s, w in worst), "; ".join(gaps), robust))
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def sensitivity_sections(spr: pd.DataFrame, fnd: pd.DataFrame, max_rows: int = 40, confidence: float = 0.95,
                         images: Sequence[str] = ()) -> list[Section]:
    blocks: list[Any] = [Text(
        "Each taxonomy below was evaluated under several template sets. A finding (the worst-off group) is "
        "**robust** when the same group is worst under every set and its gap to the next group excludes 0 "
        f"({100 * confidence:g}% Newcombe interval) under every set. Only categories with a declared direction "
        "are ranked; categories with the same value for every group are left out. Covers only the template sets "
        "tried: a robust finding can still change under wordings not tried.")]
    if not fnd.empty:
        blocks.append(Table(
            ["taxonomy", "method", "metric", "category", "slice", "worst group", "robust", "gap to next, by set"],
            [[r.taxonomy, r.method, r.metric, r.category or "–", r.slice, r.worst_group or "(varies)",
              "robust" if r.robust else "not robust", r.gap_by_set] for r in fnd.itertuples()]))
    else:
        blocks.append(Text("No finding to test: no category with a declared direction differs between groups."))
    if not spr.empty:
        top = spr.sort_values("range", ascending=False, kind="mergesort").head(max_rows)
        blocks.append(Section("Largest spreads across template sets", [Table(
            ["taxonomy", "method", "metric", "category", "slice", "group", "min", "max", "std", "min set", "max set"],
            [[r.taxonomy, r.method, r.metric, r.category or "–", r.slice, r.group, f"{100 * r.min:.1f}%",
              f"{100 * r.max:.1f}%", f"{100 * r.std:.1f}", r.min_set, r.max_set] for r in top.itertuples()],
            align="llllllrrrll")]))
    blocks += [Figure(p, Path(p).stem.replace("_", " ")) for p in images]
    return [Section("Prompt sensitivity", blocks)]


def plot_spread(metrics: pd.DataFrame, taxonomy: str, metric: str, category: str, slice: str,
                path: Path, model: str = "", method: str = "zero_shot") -> Path:
    """Each group's value under every template set (dots) and its range (a bar per group)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    m = _split(metrics)
    m = m[(m["base"] == taxonomy) & (m["metric"] == metric) & (m["category"] == category) & (m["slice"] == slice)
          & (m["method"] == method)]
    if m.empty:
        raise ValueError(f"no rows for {taxonomy}/{metric}/{category}/{slice}")
    groups = list(dict.fromkeys(m["group"]))
    sets = list(dict.fromkeys(m["template_set"]))
    fig = MplFigure(figsize=(max(5.5, 0.9 * len(groups) + 3.0), 4.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    for gi, g in enumerate(groups):
        vals = 100 * m[m["group"] == g]["value"].to_numpy(float)
        ax.plot([gi, gi], [np.nanmin(vals), np.nanmax(vals)], color="0.75", lw=5, zorder=1, solid_capstyle="round")
    for si, s in enumerate(sets):
        ms = m[m["template_set"] == s].set_index("group")["value"]
        ax.scatter(range(len(groups)), [100 * ms.get(g, np.nan) for g in groups], color=f"C{si % 10}",
                   label=s, zorder=2, s=28)
    long = max(len(str(g)) for g in groups) * len(groups) > 90
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(["\n".join(str(g).split("+")) for g in groups], rotation=30 if long else 0,
                       ha="right" if long else "center", fontsize=8.5)
    what = metric.replace("_", " ") if is_accuracy_metric(metric) else f"rate of '{category}'"
    ax.set_ylabel(f"{what} (%)")
    ax.set_title(f"{model + ': ' if model else ''}{taxonomy} ({method.replace('_', '-')}): {what} by {slice}\n"
                 f"under {len(sets)} template sets",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="template set", bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_sensitivity(metrics: pd.DataFrame, out_dir: Path, harms: Mapping[str, Mapping[str, bool]] | None = None,
                      confidence: float = 0.95, model: str = "",
                      min_n: int = DEFAULT_DISPARITY_MIN_N,
                      plot_slices: Sequence[str] | None = None) -> tuple[list[Path], list[Section]]:
    """sensitivity.csv, sensitivity_findings.csv and spread plots by each of ``plot_slices``
    (the dataset's declared ones, e.g. FairFace's race and age; None: every single-attribute
    slice); returns the paths and the report sections (nothing when no taxonomy had
    template sets)."""
    spr, fnd = spread(metrics), findings(metrics, harms, confidence, min_n)
    if spr.empty:
        return [], []
    out_dir = Path(out_dir)
    written = [out_dir / "sensitivity.csv", out_dir / "sensitivity_findings.csv"]
    write_csv(spr, written[0])
    write_csv(fnd, written[1], float_format=None)
    images = []  # a spread plot per taxonomy x method x metric x category, by each plotted slice
    for r in spr.drop_duplicates(["taxonomy", "method", "metric", "category", "slice"]).itertuples():
        if (r.slice not in plot_slices) if plot_slices is not None else (r.slice == "overall" or "+" in r.slice):
            continue
        meth = "" if r.method == "zero_shot" else f"_{r.method}"
        name = safe_filename(f"sensitivity_{r.taxonomy}{meth}_{r.metric}{'_' + r.category if r.category else ''}"
                             f"_{r.slice}", ".png")
        written.append(plot_spread(metrics, r.taxonomy, r.metric, r.category, r.slice, out_dir / name, model,
                                   r.method))
        images.append(name)
    return written, sensitivity_sections(spr, fnd, confidence=confidence, images=images)
