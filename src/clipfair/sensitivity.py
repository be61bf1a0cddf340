"""Prompt sensitivity: the same taxonomy under several template sets.

A taxonomy ``t`` evaluated with template set ``s`` is named ``t@s``. For every group the
spread of its rate/accuracy across sets is reported (min, max, standard deviation), and a
*finding* (which group is worst for a metric in a slice) is marked robust when it holds
under every template set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .taxonomy import Taxonomy, TaxonomyError
from .outputs import safe_filename

SEP = "@"
SPREAD_COLUMNS = ("taxonomy", "method", "metric", "category", "slice", "group", "n_sets",
                  "min", "max", "mean", "std", "range", "min_set", "max_set")
FINDING_COLUMNS = ("taxonomy", "method", "metric", "category", "slice", "n_sets", "worst_group",
                   "worst_groups_by_set", "robust")


def expand_template_sets(taxonomies: Sequence[Taxonomy],
                         template_sets: Mapping[str, Mapping[str, Sequence[str]]] | None) -> list[Taxonomy]:
    """Replace each taxonomy named in ``template_sets`` by one variant per set, plus its own
    templates as set ``default``; other taxonomies pass through unchanged."""
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
        out.append(t.with_templates(t.templates, name=f"{t.name}{SEP}default"))
        for set_name, templates in sets.items():
            if isinstance(templates, str):
                templates = [templates]
            out.append(t.with_templates(list(templates), name=f"{t.name}{SEP}{set_name}"))
    return out


def _split(frame: pd.DataFrame) -> pd.DataFrame:
    parts = frame["taxonomy"].astype(str).str.split(SEP, n=1, expand=True)
    if parts.shape[1] < 2:
        return frame.iloc[0:0].assign(base=[], template_set=[])
    frame = frame.assign(base=parts[0], template_set=parts[1])
    return frame[frame["template_set"].notna()]


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


def findings(disparities: pd.DataFrame) -> pd.DataFrame:
    """Is the worst group of each metric/slice the same under every template set?"""
    d = _split(disparities)
    if d.empty:
        return pd.DataFrame(columns=list(FINDING_COLUMNS))
    rows = []
    for key, part in d.groupby(["base", "method", "metric", "category", "slice"], sort=False):
        worst = part["worst_group"].astype(str).tolist()
        by_set = "; ".join(f"{s}: {w}" for s, w in zip(part["template_set"], worst))
        robust = len(set(worst)) == 1 and len(worst) > 1
        rows.append((*key, len(worst), worst[0] if robust else "", by_set, robust))
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def sensitivity_markdown(spr: pd.DataFrame, fnd: pd.DataFrame, max_rows: int = 40) -> str:
    lines = ["## Prompt sensitivity", "",
             "Each taxonomy below was evaluated under several template sets. A finding is **robust** "
             "when the worst-off group is the same under every set.", ""]
    if not fnd.empty:
        lines += ["| taxonomy | metric | category | slice | worst group | robust | by template set |",
                  "|---|---|---|---|---|:---:|---|"]
        for r in fnd.itertuples():
            lines.append(f"| {r.taxonomy} | {r.metric} | {r.category or '-'} | {r.slice} | "
                         f"{r.worst_group or '(varies)'} | {'robust' if r.robust else 'not robust'} | "
                         f"{r.worst_groups_by_set} |")
        lines.append("")
    if not spr.empty:
        top = spr.sort_values("range", ascending=False, kind="mergesort").head(max_rows)
        lines += ["Largest spreads across template sets:", "",
                  "| taxonomy | metric | category | slice | group | min | max | std | min set | max set |",
                  "|---|---|---|---|---|---:|---:|---:|---|---|"]
        for r in top.itertuples():
            lines.append(f"| {r.taxonomy} | {r.metric} | {r.category or '-'} | {r.slice} | {r.group} | "
                         f"{100 * r.min:.1f}% | {100 * r.max:.1f}% | {100 * r.std:.1f} | {r.min_set} | {r.max_set} |")
        lines.append("")
    return "\n".join(lines)


def plot_spread(metrics: pd.DataFrame, taxonomy: str, metric: str, category: str, slice: str,
                path: Path) -> Path:
    """Each group's value under every template set (dots) and its range (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = _split(metrics)
    m = m[(m["base"] == taxonomy) & (m["metric"] == metric) & (m["category"] == category) & (m["slice"] == slice)]
    if m.empty:
        raise ValueError(f"no rows for {taxonomy}/{metric}/{category}/{slice}")
    groups = list(dict.fromkeys(m["group"]))
    sets = list(dict.fromkeys(m["template_set"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(groups) + 2.5), 4.5), dpi=120)
    cmap = plt.get_cmap("tab10")
    for gi, g in enumerate(groups):
        vals = 100 * m[m["group"] == g]["value"].to_numpy(float)
        ax.plot([gi, gi], [np.nanmin(vals), np.nanmax(vals)], color="0.6", lw=3, zorder=1)
    for si, s in enumerate(sets):
        ms = m[m["template_set"] == s].set_index("group")["value"]
        ax.scatter(range(len(groups)), [100 * ms.get(g, np.nan) for g in groups], color=cmap(si % 10),
                   label=s, zorder=2, s=28)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    what = "accuracy" if metric == "accuracy" else f"rate of '{category}'"
    ax.set_ylabel(f"{what} (%)")
    ax.set_title(f"{taxonomy}: {what} by {slice} under {len(sets)} template sets")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="template set", bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_sensitivity(metrics: pd.DataFrame, disparities: pd.DataFrame, out_dir: Path) -> tuple[list[Path], str]:
    spr, fnd = spread(metrics), findings(disparities)
    if spr.empty:
        return [], ""
    out_dir = Path(out_dir)
    written = [out_dir / "sensitivity.csv", out_dir / "sensitivity_findings.csv"]
    spr.to_csv(written[0], index=False, float_format="%.6g", lineterminator="\n")
    fnd.to_csv(written[1], index=False, lineterminator="\n")
    for (tax, metric, cat), _ in spr.groupby(["taxonomy", "metric", "category"], sort=False):
        for sl in ("race", "age"):
            if ((spr["taxonomy"] == tax) & (spr["metric"] == metric) & (spr["category"] == cat)
                    & (spr["slice"] == sl)).any():
                if metric == "rate" and cat in ("human", "race", "gender", "age", "class"):
                    continue  # the complement of the probe categories; skip to keep plots few
                name = safe_filename(f"sensitivity_{tax}_{metric}{'_' + cat if cat else ''}_{sl}", ".png")
                written.append(plot_spread(metrics, tax, metric, cat, sl, out_dir / name))
    return written, sensitivity_markdown(spr, fnd)
