"""The one engine: per-unit outcomes + :class:`MetricSpec` -> per-group rows of
the one long results table (``metrics.csv``), with intervals stated per row.

Proportions (0/1 per unit): Wilson score intervals (``count`` = units with 1). Means (a real number
per unit): a t interval (``mean ± t(n-1) · sd/√n``) or a percentile bootstrap over units, as the
spec states (``interval`` column); ``count`` is empty and ``sd`` holds the group's standard
deviation, which :func:`clipfair.stats.metrics.disparities` uses for Welch's difference-of-means
interval. Every row carries the results-model key columns (:data:`KEY_COLUMNS`) and one column
per sliced attribute holding the group's value (the display name ``White+Male`` in ``group`` is
derived from those values, never parsed).

Layer: analyses.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

from .base import MEAN, PROPORTION, Analysis, AnalysisError, MetricSpec
from ..stats.specs import direction as spec_direction
from ..stats.specs import is_accuracy, metric_spec, register_metric

#: results-model columns added after clipfair.stats.metrics.METRIC_COLUMNS (existing columns keep their place)
KEY_COLUMNS: tuple[str, ...] = ("analysis", "direction", "kind", "interval", "sd")
#: key columns of analyses that have them (filled where they apply, else empty)
OPTIONAL_KEYS: tuple[str, ...] = ("variant", "template_set", "scoring", "k", "query_set", "query")

DEFAULT_BOOTSTRAP_B = 1000


def slice_attrs(s: Any) -> tuple[str, ...]:
    if isinstance(s, str):
        return () if s == "overall" else (s,)
    return tuple(s)


def slice_label(s: Any) -> str:
    a = slice_attrs(s)
    return "+".join(a) if a else "overall"


def _ordered(values: Sequence[str], order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(values))
    known = [v for v in (order or ()) if v in present]
    return known + sorted(v for v in present if v not in known)


def mean_interval(x: np.ndarray, confidence: float, method: str, rng: np.random.Generator,
                  B: int = DEFAULT_BOOTSTRAP_B) -> tuple[float, float]:
    """Interval of the mean of ``x`` (t or percentile bootstrap); NaN with fewer than 2 units."""
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    m = float(np.mean(x))
    if method == "bootstrap":
        means = np.empty(B)
        step = max(1, 2_000_000 // n)
        for s in range(0, B, step):
            b = min(step, B - s)
            means[s:s + b] = x[rng.integers(0, n, size=(b, n))].mean(axis=1)
        a = (1.0 - confidence) / 2.0
        return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))
    se = float(np.std(x, ddof=1)) / np.sqrt(n)
    t = float(st.t.ppf(0.5 + confidence / 2.0, n - 1))
    return m - t * se, m + t * se


def check_outcomes(analysis: Analysis, frame: pd.DataFrame) -> None:
    """One-line errors for a result frame that does not keep the contract."""
    who = f"analysis {analysis.name!r}"
    if not isinstance(frame, pd.DataFrame):
        raise AnalysisError(f"{who}: run() must return a pandas DataFrame, got {type(frame).__name__}")
    if analysis.unit not in frame.columns:
        raise AnalysisError(f"{who}: run()'s frame has no unit column {analysis.unit!r}; columns: "
                            f"{', '.join(map(str, frame.columns))}")
    for spec in analysis.outcomes:
        if spec.name not in frame.columns:
            raise AnalysisError(f"{who}: run()'s frame has no column for the declared outcome {spec.name!r}")
        col = pd.to_numeric(frame[spec.name], errors="coerce")
        bad = col.isna() & frame[spec.name].notna()
        if bad.any():
            raise AnalysisError(f"{who}: outcome {spec.name!r} has non-numeric values, e.g. "
                                f"{frame.loc[bad, spec.name].iloc[0]!r} at unit {frame.loc[bad, analysis.unit].iloc[0]!r}")
        if spec.kind == PROPORTION and not col.dropna().isin([0, 1]).all():
            raise AnalysisError(f"{who}: outcome {spec.name!r} is a proportion: each unit's value must be 0 or 1 "
                                "(or empty); declare kind='mean' for real numbers")


def outcome_metrics(frame: pd.DataFrame, analysis: Analysis, slices: Sequence[Any], *,
                    orders: Mapping[str, Sequence[str]] | None = None, confidence: float = 0.95,
                    small_n: int = 30, seed: int = 0) -> pd.DataFrame:
    """Per-group rows (``metrics.csv`` columns + :data:`KEY_COLUMNS` + attribute columns) of an
    analysis's per-unit outcomes, for every slice whose attributes the frame carries."""
    from ..stats.metrics import METRIC_COLUMNS
    from ..stats.inference import wilson_interval

    check_outcomes(analysis, frame)
    for spec in analysis.outcomes:
        register_metric(spec)
    orders = orders or {}
    rng = np.random.default_rng(seed)
    taxonomy = analysis.taxonomy or analysis.name
    method = analysis.method or analysis.name
    rows: list[dict[str, Any]] = []
    for s in slices:
        attrs = slice_attrs(s)
        if any(a not in frame.columns for a in attrs):
            continue
        if attrs:
            sub = frame.dropna(subset=list(attrs))
            values = {a: _ordered([str(v) for v in sub[a]], orders.get(a)) for a in attrs}
            keys = sub[list(attrs)].astype(str).apply(tuple, axis=1) if len(sub) else pd.Series([], dtype=object)
            present = set(keys)
            import itertools

            groups = [g for g in itertools.product(*(values[a] for a in attrs)) if g in present]
        else:
            sub, groups, keys = frame, [()], None
        for spec in analysis.outcomes:
            for g in groups:
                part = sub if keys is None else sub[(keys == g).to_numpy()]
                x = pd.to_numeric(part[spec.name], errors="coerce").dropna().to_numpy(float)
                n = len(x)
                if n == 0:
                    continue
                row: dict[str, Any] = {"taxonomy": taxonomy, "method": method, "metric": spec.name, "category": "",
                                       "slice": slice_label(s), "group": "+".join(g) if g else "all", "n": n,
                                       "analysis": analysis.name, "direction": spec.direction, "kind": spec.kind,
                                       "interval": spec.interval, "small": n < int(small_n)}
                if spec.kind == PROPORTION:
                    c = int(x.sum())
                    lo, hi = wilson_interval(np.array([c]), np.array([n]), confidence)
                    row.update(count=c, value=c / n, ci_low=float(lo[0]), ci_high=float(hi[0]),
                               sd=float(np.std(x, ddof=1)) if n > 1 else np.nan)
                else:
                    lo, hi = mean_interval(x, confidence, spec.interval, rng)
                    row.update(count=np.nan, value=float(x.mean()), ci_low=lo, ci_high=hi,
                               sd=float(np.std(x, ddof=1)) if n > 1 else np.nan)
                row.update({a: v for a, v in zip(attrs, g)})
                rows.append(row)
    cols = [*METRIC_COLUMNS, *KEY_COLUMNS]
    out = pd.DataFrame(rows)
    for c in cols:
        if c not in out.columns:
            out[c] = pd.Series(dtype=object)
    rest = [c for c in out.columns if c not in cols]
    out = out[cols + rest]
    out.attrs["confidence"] = float(confidence)
    return out


def add_result_columns(met: pd.DataFrame, table: pd.DataFrame | None, slices: Sequence[Any], *,
                       analysis: Mapping[str, str] | str = "",
                       harms: Mapping[str, Mapping[str, bool | None]] | None = None,
                       n_classes: Mapping[str, int] | None = None) -> pd.DataFrame:
    """The results-model key columns of rows made by another engine (the classification
    metrics): ``analysis`` (from the method), ``direction`` / ``kind`` / ``interval`` from the
    metric registry (a rate's direction: the taxonomy's harm declaration of its category),
    ``scoring`` (with ``n_classes``, taxonomy -> number of classes: how an accuracy row scores a
    prediction against the annotation, ``<n>-way``: right when the one class chosen among the
    taxonomy's n is right; empty where no prediction is scored against a truth, e.g. a rate),
    and each sliced attribute's value, looked up from the values in ``table`` (the display name
    is built from them, never split)."""
    out = met.copy()
    harms = harms or {}

    def todo(col: str) -> np.ndarray:
        """Rows whose ``col`` is not filled yet (rows of another engine)."""
        if col not in out.columns:
            out[col] = pd.Series([None] * len(out), index=out.index, dtype=object)
        v = out[col]
        return (v.isna() | (v.astype(str) == "")).to_numpy()

    rows = todo("analysis")
    if rows.any():
        out.loc[rows, "analysis"] = ([analysis] * int(rows.sum()) if isinstance(analysis, str)
                                     else [analysis.get(m, m) for m in out.loc[rows, "method"]])
    rows = todo("direction")
    if rows.any():
        part = out.loc[rows]
        cat = part["category"].astype(object).where(part["category"].notna(), "")
        out.loc[rows, "direction"] = [spec_direction(m, c, harms.get(t)) for t, m, c in
                                      zip(part["taxonomy"], part["metric"], cat)]
    for col, get in (("kind", lambda s: s.kind), ("interval", lambda s: s.interval)):
        rows = todo(col)
        if rows.any():
            out.loc[rows, col] = [get(metric_spec(m)) if metric_spec(m) else "" for m in out.loc[rows, "metric"]]
    if "sd" not in out.columns:
        out["sd"] = np.nan
    if n_classes is not None:
        rows = todo("scoring")
        if rows.any():
            part = out.loc[rows]
            out.loc[rows, "scoring"] = [f"{int(n_classes[t])}-way" if is_accuracy(m) and t in n_classes else ""
                                        for t, m in zip(part["taxonomy"], part["metric"])]
    if table is not None:
        for s in slices:
            attrs = slice_attrs(s)
            if not attrs or any(a not in table.columns for a in attrs):
                continue
            combos = table[list(attrs)].dropna().drop_duplicates()
            lookup = {"+".join(str(v) for v in vals): tuple(str(v) for v in vals)
                      for vals in combos.itertuples(index=False, name=None)}
            rows = (out["slice"] == slice_label(s)).to_numpy()
            if not rows.any():
                continue
            found = [lookup.get(g) for g in out.loc[rows, "group"]]
            for j, a in enumerate(attrs):
                if a not in out.columns:
                    out[a] = ""
                out.loc[rows, a] = [f[j] if f is not None else "" for f in found]
    return out


def analysis_rows(analysis: Analysis, rows: pd.DataFrame, small_n: int = 30) -> pd.DataFrame:
    """An analysis's own per-group rows (:meth:`~clipfair.analyses.Analysis.result_rows`) as rows
    of the results table: ``analysis`` is the analysis's name; ``direction``, ``kind`` and
    ``interval`` come from the metric registry (every metric must be registered: a one-line
    :class:`AnalysisError` otherwise); ``small`` also flags groups of fewer than ``small_n``
    units (``n``). Columns keep the order of :func:`outcome_metrics`'s rows."""
    from ..stats.metrics import METRIC_COLUMNS

    who = f"analysis {analysis.name!r}"
    if not isinstance(rows, pd.DataFrame):
        raise AnalysisError(f"{who}: result_rows() must return a pandas DataFrame or None, got {type(rows).__name__}")
    need = ("taxonomy", "method", "metric", "slice", "group", "n", "value", "ci_low", "ci_high")
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise AnalysisError(f"{who}: result_rows() lacks column(s) {', '.join(missing)}")
    out = rows.copy()
    unknown = sorted({str(m) for m in out["metric"] if metric_spec(str(m)) is None})
    if unknown:
        raise AnalysisError(f"{who}: result_rows() has metric(s) {', '.join(unknown)} that no MetricSpec declares; "
                            "register them (clipfair.stats.specs.register_metric) or list them in outcomes")
    specs = [metric_spec(str(m)) for m in out["metric"]]
    out["analysis"] = analysis.name
    out["direction"] = [x.direction for x in specs]
    out["kind"] = [x.kind for x in specs]
    out["interval"] = [x.interval for x in specs]
    if "sd" not in out.columns:
        out["sd"] = np.nan
    if "count" not in out.columns:
        out["count"] = np.nan
    if "category" not in out.columns:
        out["category"] = ""
    few = out["n"].to_numpy(float) < int(small_n)
    out["small"] = (out["small"].fillna(False).astype(bool).to_numpy() | few) if "small" in out.columns else few
    cols = [*METRIC_COLUMNS, *KEY_COLUMNS]
    return out[cols + [c for c in out.columns if c not in cols]].reset_index(drop=True)


def append_rows(met: pd.DataFrame, extra: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``met`` with ``extra`` rows (:func:`analysis_rows`) below it: ``met``'s columns keep their
    place, order and every value; new columns follow (empty in ``met``'s rows)."""
    extra = [e for e in extra if e is not None and len(e)]
    if not extra:
        return met
    attrs = dict(met.attrs)
    met = met.copy()
    extra = [e.copy() for e in extra]
    for c in met.columns:  # integer columns (n, count) stay integers, never 1.23457e+06 floats in the CSV
        if pd.api.types.is_integer_dtype(met[c]) and not pd.api.types.is_bool_dtype(met[c]):
            vals = [pd.to_numeric(e[c], errors="coerce") for e in extra if c in e.columns]
            if all(v.notna().eq(e[c].notna()).all() and (v.dropna() % 1 == 0).all()
                   for v, e in zip(vals, [e for e in extra if c in e.columns])):
                met[c] = met[c].astype("Int64")
                for e in extra:
                    if c in e.columns:
                        e[c] = pd.to_numeric(e[c], errors="coerce").astype("Int64")
    out = pd.concat([met, *extra], ignore_index=True)
    out = out[[*met.columns, *[c for c in out.columns if c not in met.columns]]]
    out.attrs.update(attrs)
    return out


def attribute_columns(met: pd.DataFrame, base: Sequence[str]) -> list[str]:
    """The per-attribute group value columns of a results table (those after the key columns)."""
    return [c for c in met.columns if c not in base and c not in KEY_COLUMNS and c not in OPTIONAL_KEYS]


def analysis_sections(analysis: Analysis, met: pd.DataFrame, disp: pd.DataFrame | None = None,
                      max_rows: int = 60) -> list[Any]:
    """A generic report section of one analysis: per outcome, every group's value with its
    interval and n, and its disparities rows (worst vs best, or highest vs lowest)."""
    from ..report.document import Section, Table, Text

    rows = met[met["analysis"] == analysis.name] if "analysis" in met.columns else met.iloc[0:0]
    if rows.empty:
        return []
    conf = float(met.attrs.get("confidence", 0.95))
    blocks: list[Any] = []
    doc = (type(analysis).__doc__ or "").strip().split("\n\n")[0]
    if doc:
        blocks.append(Text(" ".join(doc.split())))
    for spec in analysis.outcomes:
        r = rows[rows["metric"] == spec.name]
        if r.empty:
            continue
        fmt = (lambda v: "–" if pd.isna(v) else f"{100 * float(v):.1f}%") if spec.kind == PROPORTION else \
              (lambda v: "–" if pd.isna(v) else f"{float(v):.4g}")
        how = "Wilson" if spec.kind == PROPORTION else ("percentile bootstrap" if spec.interval == "bootstrap"
                                                         else "t")
        blocks.append(Text(f"**{spec.name}** ({spec.kind}, {spec.direction.replace('_', ' ')})"
                           + (f": {spec.description}" if spec.description else "")
                           + f". Cells: value [{how} {100 * conf:g}% interval]; n = the group's units; "
                             "(small): too few to compare."))
        blocks.append(Table(["slice", "group", "value [CI]", "n"],
                            [[x.slice, x.group, f"{fmt(x.value)} [{fmt(x.ci_low)}, {fmt(x.ci_high)}]",
                              f"{int(x.n)}" + (" (small)" if bool(x.small) else "")]
                             for x in r.head(max_rows).itertuples(index=False)], align="llrr"))
        if disp is not None and len(disp) and "metric" in disp.columns:
            d = disp[(disp["taxonomy"] == (analysis.taxonomy or analysis.name)) & (disp["metric"] == spec.name)
                     & disp["difference"].notna()]
            if len(d):
                blocks.append(Table(["slice", "comparison", "group", "reference", "difference [CI]", "p adj.",
                                     "significant"],
                                    [[x.slice, x.comparison, x.group, x.reference,
                                      f"{fmt(x.difference)} [{fmt(x.ci_low)}, {fmt(x.ci_high)}]",
                                      f"{x.p_adjusted:.2g}", "yes" if x.significant else ""]
                                     for x in d.itertuples(index=False)], align="lllllrc"))
    return [Section(f"Analysis: {analysis.name}", blocks)]


__all__ = ["KEY_COLUMNS", "OPTIONAL_KEYS", "add_result_columns", "analysis_rows", "append_rows", "analysis_sections", "attribute_columns",
           "check_outcomes", "mean_interval", "outcome_metrics"]
