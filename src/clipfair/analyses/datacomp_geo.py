"""datacomp's geographic figures: Dollar Street top-5 accuracy overall, per income group and in
the worst group (``acc_top5_avg``, ``acc_top5_income_ds:<g>``, ``acc_top5_wg``: datacomp's main
Dollar Street metric), and GeoDE top-1 accuracy overall, per region and in the worst region
(``acc_avg``, ``acc_region:<g>``, ``acc_wg``: its main GeoDE metric), named as datacomp's
``eval_utils/fairness_eval.py`` names them (through the WILDS metric naming it uses). Each figure
carries its n and Wilson interval (from the core's metrics rows), and the worst group is compared
with the best one (difference with Newcombe's interval and the run's adjusted p-value, from
``disparities.csv``), which datacomp does not report.

Where clipfair and datacomp differ by design: datacomp's worst group is the minimum over every
group with at least one image; clipfair shows the same minimum, flags groups below
``small_group_n``, and its worst-vs-best comparison (disparities.csv) compares only groups with at
least ``disparity_min_n`` images. datacomp groups Dollar Street by the shards' ``income_ds`` codes,
whose bucket definition could not be confirmed; where a dataset has no ``income_ds`` (a CSV
without it), the income groups are clipfair's ``income_band`` (quartiles or your cut points) and
the table says so.

Layer: analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import Analysis, AnalysisError, Needs, RunContext, Written
from .registry import register_analysis

#: per benchmark: datacomp's metric name, clipfair's metric, k, and the grouping fields in preference order
BENCHMARKS: dict[str, dict[str, Any]] = {
    "dollar_street": {"prefix": "acc_top5", "metric": "topk_accuracy", "k": 5,
                      "group_by": ("income_ds", "income_band"), "title": "Dollar Street (datacomp's figures)",
                      "what": "top-5 accuracy"},
    "geode": {"prefix": "acc", "metric": "accuracy", "k": None, "group_by": ("region",),
              "title": "GeoDE (datacomp's figures)", "what": "top-1 accuracy"},
}
COLUMNS = ("benchmark", "figure", "taxonomy", "slice", "group", "n", "count", "value", "ci_low", "ci_high", "small",
           "reference", "reference_value", "difference", "diff_ci_low", "diff_ci_high", "p_adjusted", "note")


def _rows(metrics: pd.DataFrame, taxonomy: str, metric: str, k: int | None, slice_: str) -> pd.DataFrame:
    m = metrics[(metrics["taxonomy"] == taxonomy) & (metrics["method"] == "zero_shot")
                & (metrics["metric"] == metric) & (metrics["slice"] == slice_)]
    if k is not None:
        m = m[m["category"].astype(str) == f"top-{k}"]
    return m


def datacomp_figures(metrics: pd.DataFrame, disparities: pd.DataFrame | None, benchmark: str, taxonomy: str,
                     group_by: str) -> pd.DataFrame:
    """The datacomp-named figures of one target taxonomy from the run's metrics rows (see the
    module docstring); ``group_by``: the slice whose groups datacomp's figures run over."""
    spec = BENCHMARKS[benchmark]
    prefix, metric, k = spec["prefix"], spec["metric"], spec["k"]
    out: list[dict[str, Any]] = []
    base = {"benchmark": benchmark, "taxonomy": taxonomy}
    overall = _rows(metrics, taxonomy, metric, k, "overall")
    for r in overall.itertuples():
        out.append({**base, "figure": f"{prefix}_avg", "slice": "overall", "group": "all", "n": r.n,
                    "count": r.count, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "small": bool(r.small)})
    groups = _rows(metrics, taxonomy, metric, k, group_by)
    groups = groups[groups["n"] > 0]
    for r in groups.itertuples():
        out.append({**base, "figure": f"{prefix}_{group_by}:{r.group}", "slice": group_by, "group": r.group,
                    "n": r.n, "count": r.count, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "small": bool(r.small)})
    if len(groups):
        w = groups.iloc[int(np.argmin(groups["value"].to_numpy(dtype=float)))]
        row = {**base, "figure": f"{prefix}_wg", "slice": group_by, "group": w["group"], "n": w["n"],
               "count": w["count"], "value": w["value"], "ci_low": w["ci_low"], "ci_high": w["ci_high"],
               "small": bool(w["small"]),
               "note": "datacomp's worst group: the lowest over every group with an image"}
        d = pd.DataFrame() if disparities is None or not len(disparities) else disparities[
            (disparities["taxonomy"] == taxonomy) & (disparities["method"] == "zero_shot")
            & (disparities["metric"] == metric) & (disparities["slice"] == group_by)
            & (disparities["comparison"] == "worst_vs_best")]
        if k is not None and len(d):
            d = d[d["category"].astype(str) == f"top-{k}"]
        d = d[d["group"].notna() & (d["group"].astype(str) != "")] if len(d) else d
        if len(d):
            g = d.iloc[0]
            row.update({"reference": g["reference"], "reference_value": g["reference_value"],
                        "difference": g["difference"], "diff_ci_low": g["ci_low"], "diff_ci_high": g["ci_high"],
                        "p_adjusted": g["p_adjusted"]})
            if str(g["group"]) != str(w["group"]):
                row["note"] += (f"; the worst-vs-best comparison (groups of at least disparity_min_n images) "
                                f"is {g['group']} vs {g['reference']}")
        else:
            row["note"] += "; no worst-vs-best comparison: fewer than two groups of at least disparity_min_n images"
        out.append(row)
    df = pd.DataFrame(out, columns=list(COLUMNS))
    if group_by == "income_band":
        df["note"] = df["note"].fillna("")
        df.loc[df["slice"] == "income_band", "note"] = (
            df.loc[df["slice"] == "income_band", "note"].str.cat(
                ["income groups: clipfair's income_band (the dataset has no income_ds, datacomp's groups)"]
                * int((df["slice"] == "income_band").sum()), sep="; ").str.lstrip("; "))
    return df


@register_analysis
class DatacompGeo(Analysis):
    """datacomp's Dollar Street / GeoDE figures from the zero-shot rows (option ``benchmark``)."""

    name = "datacomp_geo"
    needs = Needs(image_embeddings="none", splits=(), text=False)

    def __init__(self, benchmark: str = "dollar_street", taxonomy: str | None = None,
                 group_by: str | None = None) -> None:
        if benchmark not in BENCHMARKS:
            raise AnalysisError(f"analyses.datacomp_geo.benchmark must be one of {', '.join(BENCHMARKS)}, "
                                f"got {benchmark!r}")
        super().__init__(benchmark=benchmark, taxonomy=taxonomy, group_by=group_by)
        self.benchmark, self.taxonomy_name, self.group_by = benchmark, taxonomy, group_by
        self.table = pd.DataFrame(columns=list(COLUMNS))

    def _pick(self, ctx: RunContext) -> tuple[str, str]:
        targets = [t for t in ctx.taxonomies if t.target and t.target in ctx.dataset.attributes]
        names = [t.name for t in targets]
        if self.taxonomy_name and self.taxonomy_name not in names:
            raise AnalysisError(f"analyses.datacomp_geo.taxonomy {self.taxonomy_name!r} is not a target taxonomy "
                                f"of this run (target taxonomies: {', '.join(names) or 'none'})")
        if not names:
            raise AnalysisError("analyses.datacomp_geo needs a target taxonomy (target: object), e.g. "
                                "taxonomies=[geode_classes]; this run has none")
        tax = self.taxonomy_name or names[0]
        options = [self.group_by] if self.group_by else list(BENCHMARKS[self.benchmark]["group_by"])
        have = [g for g in options if g in ctx.dataset.attributes]
        if not have:
            raise AnalysisError(f"analyses.datacomp_geo: dataset {ctx.dataset.name!r} has no "
                                f"{' or '.join(options)} attribute (its attributes: "
                                f"{', '.join(ctx.dataset.attributes)})")
        sl = have[0]
        if sl not in [s for s in ctx.slices if isinstance(s, str)]:
            raise AnalysisError(f"analyses.datacomp_geo groups by {sl!r}: add it to slices (or use slices=auto)")
        return tax, sl

    def check(self, ctx: RunContext) -> None:
        self._pick(ctx)
        if BENCHMARKS[self.benchmark]["k"] is not None and ctx.config is not None:
            ks = [int(k) for k in getattr(ctx.config, "topk", [])]
            if 5 not in ks:
                raise AnalysisError("analyses.datacomp_geo (dollar_street) reports top-5 accuracy: set topk=[5]")

    def run(self, ctx: RunContext) -> None:
        return None

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..report.document import Note, Section, Table
        from ..utility.outputs import write_csv

        tax, sl = self._pick(ctx)
        self.table = datacomp_figures(ev.metrics, ev.disparities, self.benchmark, tax, sl)
        path = Path(out_dir) / "datacomp_geo.csv"
        write_csv(self.table, path)
        spec = BENCHMARKS[self.benchmark]
        conf = int(round(100 * ctx.confidence))

        def pct(x: Any) -> str:
            return "" if pd.isna(x) else f"{100 * float(x):.1f}"

        rows = []
        for r in self.table.itertuples():
            diff = "" if pd.isna(r.difference) else (f"{100 * float(r.difference):+.1f} pp vs {r.reference} "
                                                    f"[{pct(r.diff_ci_low)}, {pct(r.diff_ci_high)}], "
                                                    f"p_adj={float(r.p_adjusted):.3g}")
            rows.append([f"`{r.figure}`", str(r.group) + (" (small)" if r.small else ""), int(r.n), pct(r.value),
                         f"[{pct(r.ci_low)}, {pct(r.ci_high)}]", diff])
        blocks: list[Any] = [Table(["figure (datacomp's name)", "group", "n", f"{spec['what']} %", f"{conf}% CI",
                                    "worst vs best"], rows, align="llrrll",
                                   caption=f"taxonomy {tax}, zero-shot, groups: {sl}. Wilson intervals; the "
                                           "difference has Newcombe's interval and the run's adjusted p-value.")]
        notes = []
        if sl == "income_ds":
            notes.append("Income groups are the shards' income_ds codes, as datacomp groups them; how those "
                         "buckets were cut could not be confirmed from public code. income_band (quartiles of the "
                         "dataset's income, or your cut points) is in metrics.csv beside them.")
        elif sl == "income_band":
            notes.append("This dataset has no income_ds (datacomp's income groups): the groups are clipfair's "
                         "income_band, so these figures are not datacomp's numbers for the same buckets.")
        notes.append("datacomp's worst group is the minimum over every group with at least one image, however "
                     "small; small groups are marked, and the worst-vs-best comparison uses only groups with at "
                     "least disparity_min_n images.")
        blocks += [Note(n) for n in notes]
        return Written([path], [Section(spec["title"], blocks)])

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"datacomp_geo": self.table}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "benchmark": self.benchmark, "taxonomy": self.taxonomy_name,
                "group_by": self.group_by}
