"""FACET's per-class recall disparity: for each person class, how the model's zero-shot recall
differs between groups of one perceived attribute (gender presentation, skin tone, age group,
lighting).

Layer: analyses.

Recall of class c for group g is the target taxonomy's accuracy on the persons whose ``class1`` is
c and who are in g: exactly the ``accuracy`` row of the intersection slice ``[class1, <attribute>]``
in ``metrics.csv`` (the ``facet_classes`` taxonomy counts a prediction equal to the person's
``class2`` as correct too). This analysis reads those rows (it computes no recall of its own) and,
per class, compares every pair of groups (in the attribute's declared order, ``group - reference``)
where both have at least ``min_n`` persons (FACET's rule: 50): the difference with Newcombe's hybrid
score interval, a pooled two-proportion z-test, p-values adjusted (the run's
``disparity_correction``, Holm or BH) over every comparison of this table, and intervals at the
multiplicity-adjusted level. Pairs with a smaller group are listed, never compared.

Outputs: ``facet_recall.csv`` (one row per class x attribute x pair), ``facet_recall_gaps.png``
(per attribute, the classes with the largest gaps and their adjusted intervals), a report
section that states the rules (majority, skin-tone rule, class2, min_n) and the missing counts;
``run.json`` gets ``facet`` (the dataset's rules and the missing counts among evaluated persons).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..stats.inference import CORRECTIONS
from .base import Analysis, AnalysisError, Needs, RunContext, Written
from .registry import register_analysis

log = logging.getLogger(__name__)

#: the attributes compared by default (those the dataset declares)
DEFAULT_ATTRIBUTES: tuple[str, ...] = ("gender_presentation", "skin_tone", "age_presentation", "lighting")
CLASS = "class1"
PNG = "facet_recall_gaps.png"
COLUMNS = ["taxonomy", "attribute", "class1", "group", "reference", "n", "x", "recall", "reference_n",
           "reference_x", "reference_recall", "compared", "not_compared_because", "difference", "ci_low",
           "ci_high", "p_value", "p_adjusted", "adj_ci_low", "adj_ci_high", "significant"]


class FacetError(AnalysisError):
    """A FACET analysis that cannot run as configured (one line from the CLI)."""


def recall_gaps(metrics: pd.DataFrame, taxonomy: str, attributes: Sequence[str], orders: dict[str, Sequence[str]],
                min_n: int, confidence: float = 0.95, correction: str = "holm") -> pd.DataFrame:
    """The per-class recall comparisons (see the module docstring) from ``metrics`` rows:
    metric ``accuracy`` of ``taxonomy`` in slices ``class1+<attribute>``, whose attribute
    columns hold each group's values."""
    from ..stats.inference import adjusted_confidence, newcombe_diff, two_proportion_z

    if correction not in CORRECTIONS:
        raise FacetError(f"analysis facet: correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    m = metrics
    rows: list[dict[str, Any]] = []
    for attr in attributes:
        sl = m[(m["taxonomy"] == taxonomy) & (m["metric"] == "accuracy") & (m["slice"] == f"{CLASS}+{attr}")]
        if sl.empty or attr not in sl.columns or CLASS not in sl.columns:
            continue
        order = list(orders.get(attr) or sorted(sl[attr].astype(str).unique()))
        for cls, part in sl.groupby(CLASS, sort=False):
            by = {str(r[attr]): r for r in part.to_dict("records")}
            present = [g for g in order if g in by] + sorted(g for g in by if g not in order)
            for a, b in itertools.combinations(present, 2):
                ra, rb = by[a], by[b]
                na, nb = int(ra["n"]), int(rb["n"])
                small = [f"{g} n={n}" for g, n in ((a, na), (b, nb)) if n < min_n]
                rows.append({"taxonomy": taxonomy, "attribute": attr, "class1": str(cls), "group": a, "reference": b,
                             "n": na, "x": int(round(float(ra["count"]))), "recall": float(ra["value"]),
                             "reference_n": nb, "reference_x": int(round(float(rb["count"]))),
                             "reference_recall": float(rb["value"]), "compared": not small,
                             "not_compared_because": (f"{' and '.join(small)} below min_n={min_n}" if small else "")})
    d = pd.DataFrame(rows, columns=COLUMNS[:13])
    for c in COLUMNS[13:]:
        d[c] = np.nan
    d["significant"] = False
    if d.empty:
        d.attrs.update(confidence=confidence, correction=correction, min_n=min_n, tests=0)
        return d[COLUMNS]
    ok = d["compared"].to_numpy(bool)
    x1, n1 = d["x"].to_numpy(float), d["n"].to_numpy(float)
    x2, n2 = d["reference_x"].to_numpy(float), d["reference_n"].to_numpy(float)
    lo, hi = newcombe_diff(x1, n1, x2, n2, confidence)
    p = np.where(ok, two_proportion_z(x1, n1, x2, n2), np.nan)
    p_adj = CORRECTIONS[correction](p)
    alpha = 1.0 - float(confidence)
    m_tests = int(ok.sum())
    level = adjusted_confidence(correction, confidence, m_tests, int(np.sum(p_adj[ok] < alpha)))
    alo, ahi = newcombe_diff(x1, n1, x2, n2, level)
    d["difference"] = np.where(ok, d["recall"] - d["reference_recall"], np.nan)
    d["ci_low"], d["ci_high"] = np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
    d["p_value"], d["p_adjusted"] = p, p_adj
    d["adj_ci_low"], d["adj_ci_high"] = np.where(ok, alo, np.nan), np.where(ok, ahi, np.nan)
    d["significant"] = ok & (np.nan_to_num(p_adj, nan=1.0) < alpha) & ((d["adj_ci_low"] > 0) | (d["adj_ci_high"] < 0))
    d.attrs.update(confidence=float(confidence), correction=correction, min_n=int(min_n), tests=m_tests,
                   adjusted_confidence=float(level))
    return d[COLUMNS]


@register_analysis
class Facet(Analysis):
    """FACET's per-class recall by group: for each person class, the difference in zero-shot recall
    between groups of each perceived attribute, compared only where both groups have at least
    ``min_n`` persons."""

    name = "facet"
    outcomes = []  # reads the classification rows of metrics.csv; writes facet_recall.csv
    needs = Needs(image_embeddings="none", text=False)
    errors = (FacetError,)

    def __init__(self, min_n: int = 50, attributes: Sequence[str] | None = None, taxonomy: str | None = None,
                 correction: str | None = None, top: int = 10) -> None:
        super().__init__(min_n=min_n, attributes=None if attributes is None else list(attributes),
                         taxonomy=taxonomy, correction=correction, top=top)
        if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1:
            raise FacetError(f"analyses.facet.min_n must be a whole number >= 1, got {min_n!r}")
        if correction is not None and correction not in CORRECTIONS:
            raise FacetError(f"analyses.facet.correction must be {' or '.join(CORRECTIONS)} (null: the run's "
                             f"disparity_correction), got {correction!r}")
        self.min_n, self.top = int(min_n), int(top)
        self.attributes = None if attributes is None else [str(a) for a in attributes]
        self.taxonomy, self.correction = taxonomy, correction
        self.table: pd.DataFrame | None = None
        self.info: dict[str, Any] = {}

    def _attributes(self, declared: Sequence[str]) -> list[str]:
        if self.attributes is not None:
            bad = [a for a in self.attributes if a not in declared]
            if bad:
                raise FacetError(f"analyses.facet.attributes: the dataset has no {', '.join(bad)}; its attributes: "
                                 f"{', '.join(declared)}")
            return list(self.attributes)
        return [a for a in DEFAULT_ATTRIBUTES if a in declared]

    def _target(self, taxonomies: Sequence[Any]) -> Any:
        hits = [t for t in taxonomies if (t.name == self.taxonomy if self.taxonomy else t.target == CLASS)]
        if not hits:
            want = f"taxonomy {self.taxonomy!r}" if self.taxonomy else f"a taxonomy with target {CLASS}"
            raise FacetError(f"analysis facet needs {want} among the run's taxonomies (e.g. taxonomies=[facet_classes])")
        return hits[0]

    def check(self, ctx: RunContext) -> None:
        declared = list(getattr(ctx.dataset, "attributes", []) or [])
        if ctx.dataset is not None and CLASS not in declared:
            raise FacetError(f"analysis facet: dataset {getattr(ctx.dataset, 'name', '?')!r} has no {CLASS!r} "
                             "attribute; use dataset=facet")
        self._target(ctx.taxonomies)
        from ..stats.metrics import slice_name

        have = {slice_name(s) for s in ctx.slices}
        need = [f"{CLASS}+{a}" for a in self._attributes(declared)]
        lack = [s for s in need if s not in have]
        if lack:
            raise FacetError("analysis facet reads the accuracy of the slices "
                             f"{', '.join('[' + s.replace('+', ', ') + ']' for s in lack)}; add them to slices "
                             "(slices: auto has them on dataset=facet)")

    def run(self, ctx: RunContext) -> None:
        return None

    def finish(self, ev: Any, ctx: RunContext) -> None:
        from ..data.facet import missing_counts, rules

        tax = self._target(ctx.taxonomies)
        correction = self.correction or str(getattr(ctx.config, "disparity_correction", None) or "holm")
        attrs = self._attributes(list(ctx.attributes))
        self.table = recall_gaps(ev.metrics, tax.name, attrs, ctx.orders, self.min_n, ctx.confidence, correction)
        source = dict(getattr(ctx.dataset, "source", {}) or {})
        table = ctx.table if ctx.table is not None else pd.DataFrame()
        self.info = {**(rules(source) if source.get("adapter") == "facet" else {}),
                     "taxonomy": tax.name, "also_correct": getattr(tax, "also_correct", None),
                     "min_n": self.min_n, "correction": correction, "attributes": attrs,
                     "comparisons": int(self.table["compared"].sum()) if len(self.table) else 0,
                     "pairs_too_small": int((~self.table["compared"].astype(bool)).sum()) if len(self.table) else 0,
                     "missing_among_evaluated": missing_counts(table),
                     "persons_evaluated": int(len(table))}
        if "class2" in table.columns:
            self.info["persons_with_class2"] = int(table["class2"].notna().sum())
        ctx.info["facet"] = self.info

    # ------------------------------------------------------------------ outputs
    def tables(self) -> dict[str, pd.DataFrame]:
        return {} if self.table is None else {"facet_recall": self.table}

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..utility.outputs import write_csv

        if self.table is None:
            return Written()
        out = Path(out_dir)
        write_csv(self.table, out / "facet_recall.csv")
        paths = [out / "facet_recall.csv"]
        png = plot_gaps(self.table, out / PNG, self.top)
        if png is not None:
            paths.append(png)
        return Written(paths, [section(self.table, self.info, ctx.confidence, self.top, png is not None)])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "outputs": ["facet_recall.csv", PNG]}


def largest(table: pd.DataFrame, attr: str, top: int) -> pd.DataFrame:
    """The compared pairs of ``attr`` with the largest absolute gaps (adjusted p breaks ties)."""
    t = table[(table["attribute"] == attr) & table["compared"].astype(bool)].copy()
    t["abs"] = t["difference"].abs()
    return t.sort_values(["abs", "p_adjusted"], ascending=[False, True]).head(top)


def plot_gaps(table: pd.DataFrame, path: Path, top: int) -> Path | None:
    """Per attribute, the ``top`` classes' largest recall gaps with their multiplicity-adjusted
    intervals (filled: significant after adjustment)."""
    attrs = [a for a in dict.fromkeys(table["attribute"]) if len(largest(table, a, top))]
    if not attrs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import save_figure

    parts = [largest(table, a, top) for a in attrs]
    fig, axes = plt.subplots(len(attrs), 1, figsize=(7.5, sum(1.3 + 0.3 * len(p) for p in parts) + 0.5),
                             squeeze=False, constrained_layout=True,
                             gridspec_kw={"height_ratios": [1.3 + 0.3 * len(p) for p in parts]})
    for ax, a, p in zip(axes[:, 0], attrs, parts):
        y = np.arange(len(p))[::-1]
        v = p["difference"].to_numpy(float)
        err = [np.nan_to_num(v - p["adj_ci_low"].to_numpy(float)), np.nan_to_num(p["adj_ci_high"].to_numpy(float) - v)]
        sig = p["significant"].to_numpy(bool)
        ax.errorbar(v, y, xerr=err, fmt="none", ecolor="0.4")
        ax.scatter(v[sig], y[sig], color="C3", zorder=3, label="significant (adjusted)")
        ax.scatter(v[~sig], y[~sig], facecolors="white", edgecolors="C0", zorder=3, label="not significant")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-0.7, len(p) - 0.3)
        ax.set_yticks(y, [f"{c}: {g} - {r} (n={n}/{rn})" for c, g, r, n, rn in
                          zip(p["class1"], p["group"], p["reference"], p["n"], p["reference_n"])], fontsize=8)
        ax.set_title(f"recall gap by {a}", fontsize=9)
        ax.set_xlabel("recall difference (group - reference), multiplicity-adjusted interval", fontsize=8)
    axes[0, 0].legend(loc="best", fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
    return path


def _pct(v: Any) -> str:
    return "–" if v is None or pd.isna(v) else f"{100 * float(v):.1f}%"


def section(table: pd.DataFrame, info: dict[str, Any], confidence: float, top: int, has_png: bool) -> Any:
    from ..report.document import Bullets, Figure, Note, Section, Table, Text, inline_markdown as md

    conf = f"{100 * confidence:g}%"
    adj = table.attrs.get("adjusted_confidence")
    corr = {"holm": "Holm", "bh": "Benjamini-Hochberg"}.get(info.get("correction", "holm"), "Holm")
    rules = [
        "Unit: one annotated person (FACET's person_id), evaluated on "
        + ("the person's bounding box" + (f" widened by {info.get('crop_margin'):g} of its size on each side"
                                         if info.get("crop_margin") else "") + ", clipped to the image"
           if info.get("crop") == "person" else "the whole image (every person of an image shares its embedding)")
        + ".",
        "Recall of a class for a group: the share of the group's persons of that class (class1) whom the model "
        "classifies as that class; the accuracy row of the slice [class1, attribute] in metrics.csv.",
        "class2: " + str(info.get("class2_rule") or "a prediction equal to the person's class2 counts as correct")
        + (f" ({info['persons_with_class2']} evaluated persons have a class2)" if "persons_with_class2" in info else "")
        + ".",
        "Gender presentation, age group and lighting: " + str(info.get("majority_rule", "the annotators' majority"))
        + ".",
        f"Skin tone: rule {info.get('skin_tone_rule', '?')}: {info.get('skin_tone_rule_text', '')}; at least "
        f"{info.get('min_annotators', 1)} tone vote(s) per person (skin_tone_na votes are not tones).",
        f"Compared only where both groups have at least {info.get('min_n')} persons (FACET's rule is 50); pairs with "
        "a smaller group are listed in facet_recall.csv, never compared. Differences carry Newcombe "
        f"{conf} intervals; p-values (pooled two-proportion z-test) are {corr}-adjusted over the "
        f"{info.get('comparisons', 0)} comparisons of this table"
        + (f", and the adjusted intervals are at the {100 * adj:.4g}% level." if adj else "."),
        "Labels are annotators' perceptions of a person's presentation, not facts about them; FACET is for "
        "research and evaluation only, not for face recognition or identifying anyone.",
    ]
    blocks: list[Any] = [Text("For each person class, how the model's zero-shot recall differs between groups of "
                              "persons by perceived attribute."), Bullets(rules)]
    missing = info.get("missing_among_evaluated") or {}
    if missing:
        blocks.append(Table(["attribute", "missing (persons)", "why"],
                            [[md(a), sum(w.values()), ", ".join(f"{k}: {v}" for k, v in sorted(w.items()))]
                             for a, w in missing.items() if w], align="lrl",
                            caption=f"Persons left out of an attribute's groups (of {info.get('persons_evaluated')} "
                                    "evaluated)"))
    compared = table[table["compared"].astype(bool)] if len(table) else table
    if not len(compared):
        blocks.append(Note(f"No class has two groups of at least {info.get('min_n')} persons for any attribute: "
                           "nothing is compared (see facet_recall.csv for the group sizes).", "warning"))
    for a in dict.fromkeys(compared["attribute"]) if len(compared) else []:
        p = largest(table, a, top)
        blocks.append(Table(["class", "group", "recall (n)", "reference", "recall (n)", f"difference [{conf} CI]",
                             "adjusted CI", "p adj.", "significant"],
                            [[md(r.class1), md(r.group), f"{_pct(r.recall)} ({r.n})", md(r.reference),
                              f"{_pct(r.reference_recall)} ({r.reference_n})",
                              f"{_pct(r.difference)} [{_pct(r.ci_low)}, {_pct(r.ci_high)}]",
                              f"[{_pct(r.adj_ci_low)}, {_pct(r.adj_ci_high)}]", f"{r.p_adjusted:.2g}",
                              "yes" if r.significant else ""] for r in p.itertuples()], align="llrlrrrrc",
                            caption=f"{md(a)}: the classes with the largest recall gaps"))
    if has_png:
        blocks.append(Figure(PNG, "Largest per-class recall gaps with multiplicity-adjusted intervals",
                             "per-class recall gaps"))
    blocks.append(Bullets(["facet_recall.csv: every class x attribute x pair of groups, compared or not (why)",
                           "metrics.csv: the recall of every class in every group (slices class1+<attribute>)"]))
    return Section("FACET: per-class recall by group", blocks, anchor="facet")
