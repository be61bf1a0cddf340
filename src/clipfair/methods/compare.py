"""Side-by-side comparison of taxonomy variants, with significance tests.

Layer: methods.

Two variants evaluated on the *same images* are compared image by image: for every group the
difference in a rate (or accuracy) is tested with McNemar's exact test on the discordant
images (those the two variants treat differently), with Newcombe's square-and-add interval
for a paired difference (method 10; not of zero width when no image is discordant).
Variants evaluated on different images are compared with the pooled two-proportion z-test
and Newcombe's hybrid score interval. Intervals use ``confidence``. p-values are corrected
for multiple comparisons over the whole table (Holm-Bonferroni by default, or
Benjamini-Hochberg); the test and the correction are written into every row and into the
report section.

``clipfair compare RUN_DIR...`` pairs each taxonomy with the same-named taxonomy of the
other runs (a run is labelled by its model, and dataset when they differ, from run.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..report.document import Document, Figure, Section, Table, Text, to_markdown
from ..report.figures import DPI, save_figure
from ..stats.metrics import slice_attrs, slice_name, value_order
from ..stats.inference import (CORRECTION_NAMES, CORRECTIONS, benjamini_hochberg, holm, mcnemar_exact,  # noqa: F401
                    newcombe_diff, newcombe_paired_diff, two_proportion_z)
from ..utility.outputs import read_csv, safe_filename, write_csv

log = logging.getLogger(__name__)


class CompareError(ValueError):
    """A user's mistake with ``clipfair compare`` (not a run folder, nothing to pair)."""

COMPARISON_COLUMNS = ("baseline", "variant", "metric", "category", "slice", "group", "n",
                      "baseline_value", "variant_value", "diff", "diff_ci_low", "diff_ci_high",
                      "test", "p_value", "p_adjusted", "significant", "taxonomy", "baseline_label", "variant_label")
#: what one comparison row is about: the taxonomy compared (across runs: the shared taxonomy; within a
#: run: the baseline taxonomy), and the column headers of its two sides (across runs: the run labels;
#: within a run: the taxonomy names). Every rendered table and plot is keyed by these columns.
LABEL_KEYS = ("taxonomy", "baseline_label", "variant_label")


def slice_groups(frame: pd.DataFrame, s: Any) -> pd.Series | None:
    """Group label of each row for slice ``s`` (NA where an attribute is missing);
    None when the frame lacks one of the slice's attribute columns."""
    attrs = slice_attrs(s)
    if not attrs:
        return pd.Series("all", index=frame.index, dtype=object)
    if any(a not in frame.columns for a in attrs):
        return None
    parts = [frame[a].astype(object) for a in attrs]
    missing = np.zeros(len(frame), dtype=bool)
    for p in parts:
        missing |= p.isna().to_numpy()
    label = parts[0].astype(str)
    for p in parts[1:]:
        label = label + "+" + p.astype(str)
    return label.where(~missing, other=None)


def group_order(frame: pd.DataFrame, s: Any, labels: Sequence[str],
                orders: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Groups of a slice in the dataset's declared value ``orders`` (e.g. FairFace's race
    order, age bins ascending); undeclared values sorted."""
    attrs = slice_attrs(s)
    if not attrs:
        return ["all"]
    orders = [value_order(a, frame[a].dropna().astype(str).unique(), orders) for a in attrs]
    rank = {}
    import itertools

    for i, combo in enumerate(itertools.product(*orders)):
        rank["+".join(combo)] = i
    return sorted(set(labels), key=lambda g: (rank.get(g, len(rank)), g))


def _indicators(pred: pd.DataFrame, metric: str, category: str) -> tuple[np.ndarray, np.ndarray]:
    """(value 0/1, usable mask) per row for a metric."""
    if metric == "accuracy":
        corr = pred["correct"]
        usable = corr.notna().to_numpy()
        return corr.fillna(False).astype(bool).to_numpy().astype(float), usable
    return (pred["predicted_category"].to_numpy() == category).astype(float), np.ones(len(pred), bool)


def _metric_specs(tax_b: pd.DataFrame, tax_v: pd.DataFrame, categories: Mapping[str, Sequence[str]],
                  b: str, v: str) -> list[tuple[str, str]]:
    specs = []
    tb = tax_b["true_label"].notna().any() if "true_label" in tax_b else False
    tv = tax_v["true_label"].notna().any() if "true_label" in tax_v else False
    if tb and tv:
        specs.append(("accuracy", ""))
    cb = categories.get(b) or list(dict.fromkeys(tax_b["predicted_category"]))
    cv = set(categories.get(v) or tax_v["predicted_category"].unique())
    specs += [("rate", c) for c in cb if c in cv]
    return specs


def _paired_rows(pred: pd.DataFrame, baseline: str, variants: Sequence[str],
                 categories: Mapping[str, Sequence[str]], slices: Sequence[Any],
                 confidence: float, orders: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    base = pred[pred["taxonomy"] == baseline].set_index("image_id")
    if base.empty:
        raise ValueError(f"baseline taxonomy {baseline!r} not in predictions; have "
                         f"{sorted(pred['taxonomy'].unique())}")
    rows = []
    for v in variants:
        var = pred[pred["taxonomy"] == v].set_index("image_id")
        if var.empty:
            raise ValueError(f"variant taxonomy {v!r} not in predictions")
        common = base.index.intersection(var.index)
        bb, vv = base.loc[common], var.loc[common]
        for metric, cat in _metric_specs(bb, vv, categories, baseline, v):
            xb, ub = _indicators(bb, metric, cat)
            xv, uv = _indicators(vv, metric, cat)
            usable = ub & uv
            for s in slices:
                g = slice_groups(bb, s)
                if g is None:
                    continue
                df = pd.DataFrame({"g": g.to_numpy(), "xb": xb, "xv": xv, "u": usable})
                df = df[df["u"] & df["g"].notna()]
                if df.empty:
                    continue
                df["b"] = (df["xb"] == 1) & (df["xv"] == 0)
                df["c"] = (df["xb"] == 0) & (df["xv"] == 1)
                df["a"] = (df["xb"] == 1) & (df["xv"] == 1)
                agg = df.groupby("g", sort=False).agg(n=("xb", "size"), sb=("xb", "sum"), sv=("xv", "sum"),
                                                      a=("a", "sum"), b=("b", "sum"), c=("c", "sum"))
                for grp in group_order(bb, s, agg.index.tolist(), orders):
                    r = agg.loc[grp]
                    n, a_, b_, c_ = float(r["n"]), float(r["a"]), float(r["b"]), float(r["c"])
                    # variant - baseline: the variant is the "first" proportion of the pair
                    lo, hi = newcombe_paired_diff(a_, c_, b_, n - a_ - b_ - c_, confidence)
                    rows.append({"baseline": baseline, "variant": v, "metric": metric, "category": cat,
                                 "slice": slice_name(s), "group": grp, "n": int(n),
                                 "baseline_value": r["sb"] / n, "variant_value": r["sv"] / n,
                                 "diff": (c_ - b_) / n, "diff_ci_low": float(lo), "diff_ci_high": float(hi),
                                 "test": "mcnemar_exact", "p_value": float(mcnemar_exact(b_, c_))})
    return rows


def compare_paired(predictions: pd.DataFrame, baseline: str, variants: Sequence[str],
                   categories: Mapping[str, Sequence[str]] | None = None,
                   slices: Sequence[Any] = ("overall",), method: str = "zero_shot",
                   confidence: float = 0.95, correction: str = "holm", alpha: float = 0.05,
                   orders: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Compare each variant taxonomy with ``baseline`` on the same images (McNemar exact).
    ``slices`` and ``orders``: the dataset's (see :func:`clipfair.stats.metrics.group_metrics`).

    Accuracy is compared when both have a target; rates for every category both share.
    diff = variant - baseline with Newcombe's paired square-and-add interval at ``confidence``.
    """
    pred = predictions[predictions["method"] == method] if "method" in predictions else predictions
    rows = _paired_rows(pred, baseline, variants, categories or {}, slices, confidence, orders)
    return _finish(rows, correction, alpha, confidence)


def _unpaired_rows(metrics: pd.DataFrame, baseline: str, variants: Sequence[str],
                   confidence: float) -> list[dict[str, Any]]:
    key = ["metric", "category", "slice", "group"]
    base = metrics[metrics["taxonomy"] == baseline].set_index(key)
    rows = []
    for v in variants:
        var = metrics[metrics["taxonomy"] == v].set_index(key)
        j = base.join(var, lsuffix="_b", rsuffix="_v", how="inner")
        if j.empty:
            continue
        lo, hi = newcombe_diff(j["count_v"], j["n_v"], j["count_b"], j["n_b"], confidence)
        pv = two_proportion_z(j["count_b"], j["n_b"], j["count_v"], j["n_v"])
        for (metric, cat, sl, grp), r, l_, h_, p in zip(j.index, j.itertuples(), lo, hi, pv):
            rows.append({"baseline": baseline, "variant": v, "metric": metric, "category": cat, "slice": sl,
                         "group": grp, "n": int(min(r.n_b, r.n_v)), "baseline_value": r.value_b,
                         "variant_value": r.value_v, "diff": r.value_v - r.value_b, "diff_ci_low": float(l_),
                         "diff_ci_high": float(h_), "test": "two_proportion_z", "p_value": float(p)})
    return rows


def compare_unpaired(metrics: pd.DataFrame, baseline: str, variants: Sequence[str],
                     correction: str = "holm", alpha: float = 0.05, confidence: float = 0.95,
                     method: str = "zero_shot") -> pd.DataFrame:
    """Compare variants evaluated on different images, from metrics counts (pooled
    two-proportion z-test; Newcombe's hybrid score interval at ``confidence``)."""
    rows = _unpaired_rows(metrics[metrics["method"] == method], baseline, variants, confidence)
    return _finish(rows, correction, alpha, confidence)


def _finish(rows: list[dict[str, Any]], correction: str, alpha: float, confidence: float = 0.95) -> pd.DataFrame:
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    df = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_adjusted", "significant")])
    df = with_labels(df)
    df["p_adjusted"] = CORRECTIONS[correction](df["p_value"].to_numpy(float)) if len(df) else []
    df["significant"] = df["p_adjusted"] < alpha
    df.attrs.update(correction=correction, alpha=alpha, confidence=confidence)
    return df[list(COMPARISON_COLUMNS)]


def with_labels(cmp: pd.DataFrame) -> pd.DataFrame:
    """``cmp`` with :data:`LABEL_KEYS` filled (a table from an older clipfair: the baseline
    taxonomy and the baseline / variant names)."""
    out = cmp.copy()
    for col, default in (("taxonomy", "baseline"), ("baseline_label", "baseline"), ("variant_label", "variant")):
        if col not in out.columns:
            out[col] = out[default] if default in out.columns else ""
        out[col] = out[col].astype(object)
        empty = out[col].isna() | (out[col].astype(str) == "")
        if empty.any() and default in out.columns:
            out.loc[empty, col] = out.loc[empty, default]
        out[col] = out[col].astype(str)
    return out


def side_by_side(cmp: pd.DataFrame) -> pd.DataFrame:
    """One row per taxonomy x metric x category x slice x group: the baseline's value and every
    variant's value side by side (columns named by ``baseline_label`` / ``variant_label``), each
    variant followed by its significance flag. Built from the rows' own key columns: a value
    sits only beside values of the same taxonomy, metric, category, slice and group."""
    key = ["taxonomy", "metric", "category", "slice", "group"]
    if cmp.empty:
        return pd.DataFrame(columns=key)
    cmp = with_labels(cmp)
    parts = []
    for tax, part in cmp.groupby("taxonomy", sort=False):
        base = part.drop_duplicates(key).set_index(key)[["n", "baseline_value"]]
        base = base.rename(columns={"baseline_value": str(part["baseline_label"].iloc[0])})
        cols = [base]
        for v, vp in part.groupby("variant_label", sort=False):
            vp = vp.set_index(key)
            cols.append(vp[["variant_value", "significant"]].rename(
                columns={"variant_value": str(v), "significant": f"{v} significant"}))
        parts.append(pd.concat(cols, axis=1).reset_index())
    return pd.concat(parts, ignore_index=True, sort=False)


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return "–" if x != x else f"{100 * x:+.1f}"


def comparison_sections(cmp: pd.DataFrame, correction: str, alpha: float, max_rows: int = 60,
                        title: str = "Taxonomy variant comparison",
                        images: Mapping[tuple, str] | None = None) -> list[Section]:
    """The comparison as report sections: method, side-by-side tables (overall and
    single-attribute slices; * = significant), then per pair the largest differences."""
    tests = ", ".join(sorted(cmp["test"].unique())) if len(cmp) else "none"
    conf = cmp.attrs.get("confidence", 0.95)
    blocks: list[Any] = [Text(
        f"Test: {tests} (mcnemar_exact: paired, same images, with Newcombe's paired square-and-add "
        f"{100 * conf:g}% interval; two_proportion_z: unpaired, different images, with Newcombe's hybrid score "
        f"interval). Multiple-comparison correction: {CORRECTION_NAMES[correction]} over all {len(cmp)} "
        f"comparisons; significant = adjusted p < {alpha}. Covers the groups of the slices shown; cannot show "
        "why a variant moves a group, and a difference that is not significant is not evidence of no effect.")]
    cmp = with_labels(cmp)
    wide = side_by_side(cmp)
    for (tax, metric, cat), part in (wide.groupby(["taxonomy", "metric", "category"], sort=False) if len(cmp) else []):
        part = part[~part["slice"].astype(str).str.contains("+", regex=False)]
        if part.empty:
            continue
        rows_of = cmp[(cmp["taxonomy"] == tax) & (cmp["metric"] == metric) & (cmp["category"] == cat)]
        base = str(rows_of["baseline_label"].iloc[0])
        variants = [v for v in dict.fromkeys(rows_of["variant_label"]) if v in part.columns]
        across = base != tax  # across runs: the headers are run labels, the taxonomy is named in the title
        rows = []
        for r in part.to_dict("records"):
            cells = [_pct(r[base])] + [
                "–" if r.get(v) != r.get(v) else f"{_pct(r[v])}{'*' if r.get(f'{v} significant') is True else ''}"
                for v in variants]
            rows.append([r["slice"], r["group"], int(r["n"]), *cells])
        sec = [Table(["slice", "group", "n", base, *variants], rows, align="llr" + "r" * (1 + len(variants)))]
        for key, img in (images or {}).items():
            tt, mm, cc, sl = key if len(key) == 4 else (tax, *key)
            if (tt, mm, cc) == (tax, metric, cat):
                sec.append(Figure(img, f"{tax + ' · ' if across else ''}{metric}{f' of {cat}' if cat else ''} by {sl}"))
        blocks.append(Section(f"Side by side: {tax + ' · ' if across else ''}{metric}{f' of {cat!r}' if cat else ''} "
                              f"(* significant vs {base})", sec))
    for (b, v), part in (cmp.groupby(["baseline", "variant"], sort=False) if len(cmp) else []):
        sig = part[part["significant"]]
        show = part.reindex(part["diff"].abs().sort_values(ascending=False, kind="stable").index).head(max_rows)
        rows = [[r.metric, r.category or "–", r.slice, r.group, r.n, _pct(r.baseline_value), _pct(r.variant_value),
                 f"{_pp(r.diff)} [{_pp(r.diff_ci_low)}, {_pp(r.diff_ci_high)}]", f"{r.p_adjusted:.3g}",
                 "yes" if r.significant else ""] for r in show.itertuples()]
        bl, vl = str(part["baseline_label"].iloc[0]), str(part["variant_label"].iloc[0])
        blocks.append(Section(f"{v} vs {b}", [
            Text(f"{len(sig)} of {len(part)} group differences are significant; the {len(show)} largest:"),
            Table(["metric", "category", "slice", "group", "n", f"baseline ({bl})", f"variant ({vl})", "diff pp [CI]",
                   "p adj.", "significant"], rows, align="llllrrrrrc")]))
    return [Section(title, blocks)]


def comparison_markdown(cmp: pd.DataFrame, correction: str, alpha: float, max_rows: int = 60,
                        images: Mapping[tuple, str] | None = None) -> str:
    """``comparison.md``: :func:`comparison_sections` rendered as its own document."""
    secs = comparison_sections(cmp, correction, alpha, max_rows, images=images)
    return to_markdown(Document(secs[0].title, secs[0].blocks))


def plot_variant_shift(cmp: pd.DataFrame, metric: str, category: str, slice: str, path: Path,
                       model: str = "", taxonomy: str | None = None) -> Path:
    """Each group's value under the baseline and every variant: dodged points per group (the
    variants are not ordered, so nothing joins them); a ring marks a significant change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    cmp = with_labels(cmp)
    part = cmp[(cmp["metric"] == metric) & (cmp["category"] == category) & (cmp["slice"] == slice)]
    if taxonomy is not None:
        part = part[part["taxonomy"] == taxonomy]
    if part.empty:
        raise ValueError(f"no comparison rows for {taxonomy or ''}/{metric}/{category}/{slice}")
    if part["taxonomy"].nunique() > 1:
        raise ValueError(f"comparison rows of several taxonomies ({', '.join(part['taxonomy'].unique())}) for "
                         f"{metric}/{category}/{slice}: name one")
    tax = str(part["taxonomy"].iloc[0])
    variants = [part["baseline_label"].iloc[0], *dict.fromkeys(part["variant_label"])]
    groups = list(dict.fromkeys(part["group"]))
    fig = MplFigure(figsize=(max(5.5, 0.9 * len(groups) * max(1, len(variants) / 3) + 3.5), 4.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        xs, ys, sig = [], [], []
        for i, g in enumerate(groups):
            pg = part[part["group"] == g]
            if j == 0:
                y, s_ = pg["baseline_value"].iloc[0], False
            else:
                pv = pg[pg["variant_label"] == v]
                if pv.empty:
                    continue
                y, s_ = pv["variant_value"].iloc[0], bool(pv["significant"].iloc[0])
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * y)
            sig.append(s_)
        color = f"C{j % 10}"
        ax.scatter(xs, ys, color=color, s=30, zorder=3, label=str(v) + (" (baseline)" if j == 0 else ""))
        sx = [x for x, s_ in zip(xs, sig) if s_]
        sy = [y for y, s_ in zip(ys, sig) if s_]
        if sx:
            ax.scatter(sx, sy, facecolors="none", edgecolors="#222222", s=110, linewidths=1.2, zorder=4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(["\n".join(str(g).split("+")) for g in groups], fontsize=8.5,
                       rotation=30 if max(len(str(g)) for g in groups) * len(groups) > 90 else 0,
                       ha="right" if max(len(str(g)) for g in groups) * len(groups) > 90 else "center")
    for i in range(1, len(groups)):
        ax.axvline(i - 0.5, color="#eeeeee", lw=0.8, zorder=0)
    what = "accuracy" if metric == "accuracy" else f"rate of '{category}'"
    ax.set_ylabel(f"{what} (%)")
    across = str(variants[0]) != tax
    ax.set_title(f"{model + ': ' if model else ''}{tax + ': ' if across else ''}{what} by {slice}, "
                 f"baseline {variants[0]} and {'other runs' if across else 'variants'}\n"
                 "(ringed: significant change vs baseline)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_name(metric: str, category: str, slice: str, taxonomy: str = "") -> str:
    """File name of the comparison plot of one (taxonomy,) metric / category / slice."""
    return safe_filename(f"compare_{taxonomy + '_' if taxonomy else ''}{metric}{'_' + category if category else ''}"
                         f"_{slice}", ".png")


def plot_keys(cmp: pd.DataFrame, plot_slices: Sequence[str] | None = None) -> dict[tuple, str]:
    """(taxonomy, metric, category, slice) -> plot file name, for the slices that get a plot: the
    dataset's declared ``plot_slices`` (None: every single-attribute slice); across runs the name
    carries the taxonomy."""
    if not len(cmp):
        return {}
    cmp = with_labels(cmp)
    keys = cmp[["taxonomy", "metric", "category", "slice", "baseline_label"]].drop_duplicates(
        ["taxonomy", "metric", "category", "slice"])
    return {(t, m, c, s): plot_name(m, c, s, t if t != b else "") for t, m, c, s, b in
            keys.itertuples(index=False, name=None)
            if (s in plot_slices if plot_slices is not None else s != "overall" and "+" not in s)}


def write_comparison(cmp: pd.DataFrame, out_dir: Path, correction: str, alpha: float,
                     plot_slices: Sequence[str] | None = None, model: str = "") -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "comparison.csv", out_dir / "comparison.md", out_dir / "comparison_side_by_side.csv"]
    write_csv(cmp, written[0])
    write_csv(side_by_side(cmp), written[2])
    images = plot_keys(cmp, plot_slices)
    for (tax, metric, cat, sl), name in images.items():
        written.append(plot_variant_shift(cmp, metric, cat, sl, out_dir / name, model, taxonomy=tax))
    written[1].write_text(comparison_markdown(cmp, correction, alpha, images=images))
    return written


# --------------------------------------------------------------------------- across runs

@dataclass
class Run:
    path: Path
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    record: dict[str, Any]
    label: str = ""

    @property
    def model(self) -> str:
        name = str((self.record.get("model") or {}).get("name_or_path") or "")
        return (Path(name).name if Path(name).is_absolute() else name) or self.path.name

    @property
    def dataset(self) -> str:
        return str((self.record.get("dataset") or {}).get("name") or "")

    @property
    def fingerprint(self) -> Any:
        return (self.record.get("dataset") or {}).get("fingerprint")

    @property
    def template_sets(self) -> dict[str, Any]:
        """The run's template sets (run.json's config): taxonomy -> set name -> templates."""
        sets = (self.record.get("config") or {}).get("template_sets")
        return {str(k): v for k, v in sets.items() if isinstance(v, Mapping)} if isinstance(sets, Mapping) else {}

    @property
    def variants(self) -> dict[str, tuple[str, str]]:
        """Template-set variant name -> (taxonomy, template set): from metrics.csv's key columns
        ``variant_of`` / ``template_set``, else built from the recorded sets (never split from the name)."""
        from .sensitivity import variant_name

        out = {variant_name(t, s): (t, str(s)) for t, sets in self.template_sets.items() for s in ["default", *sets]}
        m = self.metrics
        if "variant_of" in m.columns and "template_set" in m.columns:
            keys = m[["taxonomy", "variant_of", "template_set"]].astype(object).where(m[["taxonomy", "variant_of",
                                                                                          "template_set"]].notna(), "")
            for tax, base, tset in keys.drop_duplicates().itertuples(index=False, name=None):
                if str(base) and str(tset):
                    out[str(tax)] = (str(base), str(tset))
        return out

    def taxonomy_spec(self, name: str) -> dict[str, Any] | None:
        """What a taxonomy of this run asked: its classes (label, prompts, category) and its
        templates, from run.json (a template-set variant ``name@set``: the base taxonomy's
        classes with the set's templates); None when run.json does not record it."""
        recs = {str(t.get("name")): t for t in (self.record.get("taxonomies") or []) if isinstance(t, Mapping)}
        base, tset = self.variants.get(name, (name, ""))
        rec = recs.get(name) or (recs.get(base) if tset else None)
        if rec is None or not isinstance(rec.get("classes"), list):
            return None
        templates = rec.get("templates")
        if rec is not recs.get(name) and tset != "default":
            sets = self.template_sets.get(base) or {}
            templates = sets.get(tset)
            templates = [templates] if isinstance(templates, str) else templates
        classes = [(str(c.get("label")), [str(p) for p in c.get("prompts") or []], str(c.get("category")))
                   for c in rec["classes"] if isinstance(c, Mapping)]
        return {"classes": classes, "templates": None if templates is None else [str(t) for t in templates]}


def taxonomy_difference(base: Run, other: Run, name: str) -> str | None:
    """"different classes" / "different prompts" when the two runs' taxonomies ``name`` ask a
    different question (classes, or prompts and templates, differ; see :meth:`Run.taxonomy_spec`),
    else None. A run whose run.json does not record the taxonomy is compared with a warning."""
    a, b = base.taxonomy_spec(name), other.taxonomy_spec(name)
    if a is None or b is None:
        log.warning("taxonomy %s: %s does not record its classes and prompts in run.json; compared "
                    "without checking that both runs asked the same question", name,
                    base.label if a is None else other.label)
        return None
    if [(lab, cat) for lab, _, cat in a["classes"]] != [(lab, cat) for lab, _, cat in b["classes"]]:
        return "different classes"
    if [p for _, p, _ in a["classes"]] != [p for _, p, _ in b["classes"]] or (
            a["templates"] is not None and b["templates"] is not None and a["templates"] != b["templates"]):
        return "different prompts"
    return None


#: the metrics.csv columns compare reads
COMPARE_COLUMNS = ("taxonomy", "method", "metric", "category", "slice", "group", "n", "count", "value")


def load_run(run_dir: Path | str) -> Run:
    """A finished run folder (its outputs are moved in only when all are written);
    :class:`clipfair.utility.outputs.OutputError` otherwise."""
    from ..utility.outputs import require_finished_run

    from ..stats.runfolder import read_metrics, read_record

    run_dir = Path(run_dir)
    require_finished_run(run_dir)
    rec = read_record(run_dir)  # RunFolderError: one line naming the file
    met = read_metrics(run_dir, COMPARE_COLUMNS).fillna({"category": ""})
    try:
        pred = pd.read_parquet(run_dir / "predictions.parquet")
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        raise CompareError(f"{run_dir / 'predictions.parquet'}: not readable ({type(e).__name__}); "
                           "was it written by `clipfair run`?") from None
    return Run(run_dir, pred, met, rec)


def readable_runs(run_dirs: Sequence[Path], method: str = "zero_shot") -> list[Path]:
    """The run folders that `compare` can read, each other one skipped with a one-line
    warning naming it and why (CompareError when fewer than two are left). A run without
    results of ``method`` (e.g. linear_probe without probe.enabled) is an error."""
    from ..utility.outputs import require_finished_run
    from ..stats.runfolder import RunFolderError, read_metrics, read_record

    good, skipped = [], []
    for d in map(Path, run_dirs):
        require_finished_run(d)  # an unfinished or missing run: an error, as before
        try:
            read_record(d)
            met = read_metrics(d, COMPARE_COLUMNS)
        except RunFolderError as e:  # a foreign or damaged run folder: skipped with one line
            skipped.append(" ".join(str(e).split()))
            continue
        methods = sorted(set(met["method"].astype(str)))
        if method not in methods:
            hint = " (run with probe.enabled=true)" if method == "linear_probe" else ""
            raise CompareError(f"--method {method}: {d} has no {method} results{hint}; its methods: "
                               f"{', '.join(methods) or 'none'}")
        good.append(d)
    if skipped and len(good) < 2:
        raise CompareError(f"{skipped[0]}; fewer than two readable run folders left to compare")
    for why in skipped:
        print(f"clipfair: skipped {why}", file=sys.stderr)
    return good


def _label_runs(runs: Sequence[Run]) -> None:
    """Label by model, plus dataset when the runs' datasets differ; numbered when equal."""
    with_data = len({r.dataset for r in runs}) > 1
    labels = [f"{r.model} on {r.dataset}" if with_data and r.dataset else r.model for r in runs]
    for r, lab in zip(runs, labels):
        r.label = lab if labels.count(lab) == 1 else f"{lab} ({r.path.name})"
    seen: dict[str, int] = {}
    for r in runs:  # still equal (same model, same folder name): number them
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"


def run_slices_and_orders(run: Run) -> tuple[list[Any], dict[str, list[str]]]:
    """The slices a finished run computed (as its ``metrics.csv`` lists them) and its
    dataset's declared value orders (``run.json``'s ``value_orders``; for older runs, the
    group order of ``metrics.csv``, which follows the declarations)."""
    met = run.metrics
    recorded = run.record.get("slice_attributes")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    # the results model (issue 20, part 3): only the rows of the methods compare reads (the
    # predictions'); other analyses' rows (e.g. retrieval_bias, keyed by query) name no slice of them
    if "method" in met.columns and "method" in run.predictions.columns and len(run.predictions):
        met = met[met["method"].isin(set(run.predictions["method"].astype(str)))]
    slices: list[Any] = []
    for name in dict.fromkeys(met["slice"].astype(str)) if "slice" in met else ():
        # the slice's attributes as run.json records them; older runs: split from the name
        attrs = tuple(map(str, recorded[name])) if isinstance(recorded.get(name), list) else tuple(name.split("+"))
        slices.append(name if len(attrs) <= 1 else attrs)
    declared = run.record.get("value_orders")
    if isinstance(declared, dict):
        return slices, {str(a): [str(v) for v in vs] for a, vs in declared.items()}
    orders = {name: list(dict.fromkeys(met.loc[met["slice"] == name, "group"].astype(str)))
              for name in slices if isinstance(name, str) and name != "overall"}
    return slices, orders


def compare_runs(run_dirs: Sequence[Path], baseline: str | None = None, correction: str = "holm",
                 alpha: float = 0.05, method: str = "zero_shot", confidence: float = 0.95,
                 slices: Sequence[Any] | None = None, allow_different_taxonomies: bool = False) -> pd.DataFrame:
    """Compare each taxonomy of the baseline run with the same-named taxonomy of every other
    run. ``baseline``: a run folder (or its label); default the first. Rows are named
    ``<run label>: <taxonomy>``. Runs on the same images (equal dataset fingerprints) are
    compared image by image, others from their counts. One correction over all rows.
    Same-named taxonomies whose classes or prompts differ (run.json) are refused, or with
    ``allow_different_taxonomies`` compared with the row named ``<run label>: <taxonomy>
    (different classes)`` / ``(different prompts)``.
    ``slices``: default the baseline run's; groups follow its declared value orders
    (:func:`run_slices_and_orders`)."""
    if len(run_dirs) < 2:
        raise CompareError("give at least two run folders to compare")
    runs = [load_run(d) for d in run_dirs]
    _label_runs(runs)
    base = runs[0]
    if baseline is not None:
        hits = [r for r in runs if r.label == baseline or r.path.resolve() == Path(baseline).resolve()]
        if not hits:
            raise CompareError(f"--baseline {baseline!r} is none of the runs; give one of the run folders "
                               f"({', '.join(str(r.path) for r in runs)}) or labels ({', '.join(r.label for r in runs)})")
        base = hits[0]
    others = [r for r in runs if r is not base]
    base_slices, orders = run_slices_and_orders(base)
    slices = base_slices if slices is None else slices
    rows: list[dict[str, Any]] = []
    paired_any = False
    base_taxes = list(dict.fromkeys(base.predictions["taxonomy"].astype(str)))
    for tax in base_taxes:
        bname = f"{base.label}: {tax}"
        for r in others:
            if tax not in set(r.predictions["taxonomy"].astype(str)):
                log.warning("%s has no taxonomy %s; not compared", r.label, tax)
                continue
            vname = f"{r.label}: {tax}"
            differs = taxonomy_difference(base, r, tax)
            if differs and not allow_different_taxonomies:
                raise CompareError(
                    f"taxonomy {tax} has {differs} in {base.label} ({base.path}) and {r.label} ({r.path}): "
                    "the runs asked different questions; rerun one with the other's taxonomy, or pass "
                    "--allow-different-taxonomies to compare them anyway (labelled in the table)")
            if differs:
                vname = f"{vname} ({differs})"
                log.warning("taxonomy %s: %s has %s than %s; compared as asked, labelled", tax, r.label,
                            differs, base.label)
            if base.fingerprint is not None and base.fingerprint == r.fingerprint:
                bp = base.predictions[base.predictions["taxonomy"] == tax].assign(taxonomy=bname)
                vp = r.predictions[r.predictions["taxonomy"] == tax].assign(taxonomy=vname)
                pred = pd.concat([bp, vp], ignore_index=True)
                pred = pred[pred["method"] == method] if "method" in pred else pred
                new = _paired_rows(pred, bname, [vname], {}, slices, confidence, orders)
                paired_any = True
            else:
                bm = base.metrics[(base.metrics["taxonomy"] == tax) & (base.metrics["method"] == method)]
                vm = r.metrics[(r.metrics["taxonomy"] == tax) & (r.metrics["method"] == method)]
                met = pd.concat([bm.assign(taxonomy=bname), vm.assign(taxonomy=vname)], ignore_index=True)
                new = _unpaired_rows(met, bname, [vname], confidence)
            rows += [{**x, "taxonomy": tax, "baseline_label": base.label, "variant_label": r.label} for x in new]
    if not rows:
        raise CompareError(f"the runs share no taxonomy name with the baseline {base.label} "
                           f"(its taxonomies: {', '.join(base_taxes)})")
    out = _finish(rows, correction, alpha, confidence)
    out.attrs.update(paired=paired_any, runs={r.label: str(r.path) for r in runs}, baseline_run=base.label)
    return out


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipfair compare",
                                 description="Compare runs: each taxonomy against the same-named taxonomy of the "
                                             "other runs (runs labelled by model, from run.json).")
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (each with run.json)")
    ap.add_argument("--baseline", default=None, help="the run to compare against: its folder or label "
                                                     "(default: the first)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: <baseline run>/compare)")
    ap.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--confidence", type=float, default=0.95, help="level of the difference intervals")
    ap.add_argument("--method", default="zero_shot", help="zero_shot or linear_probe")
    ap.add_argument("--allow-different-taxonomies", action="store_true",
                    help="compare same-named taxonomies whose classes or prompts differ, labelled "
                         "'(different classes)' / '(different prompts)' in the table (default: refused)")
    a = ap.parse_args(list(argv))
    if not 0 < a.confidence < 1 or not 0 < a.alpha < 1:
        raise CompareError("--confidence and --alpha must be between 0 and 1")
    # a user's mistake (CompareError, OutputError) becomes one line in clipfair.cli.main
    runs = readable_runs(a.runs, a.method)
    cmp = compare_runs(runs, a.baseline, a.correction, a.alpha, a.method, a.confidence,
                       allow_different_taxonomies=a.allow_different_taxonomies)
    out = a.out or (Path(cmp.attrs["runs"][cmp.attrs["baseline_run"]]) / "compare")
    written = write_comparison(cmp, out, a.correction, a.alpha)
    print(f"{int(cmp['significant'].sum())} of {len(cmp)} differences significant "
          f"({a.correction}, alpha {a.alpha}); wrote {written[1]}")
    return 0
