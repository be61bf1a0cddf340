"""The CLIP paper's FairFace figures and the model card's claims beside this run's values.

Layer: methods.

Reference figures live in a data file (``references/clip_paper.yaml``) with their source
(table, row, column, and the paper's words for figures from the text). Each is mapped onto
clipfair's outputs (taxonomy role, method, metric, slice, group), measured as a count of n
with a Wilson interval, and given an interval-aware verdict:

``consistent``
    the paper's value (read at its stated resolution) lies inside the reproduced interval;
    where the reference file gives the paper's own sample size (``paper_n``), the paper's
    value is a count too and the verdict reads the two-sample (Newcombe) interval of the
    difference instead: consistent when it meets the value's rounding range
    (:func:`two_sample_verdict`); where ``paper_n`` is not given, the paper's value is
    treated as exact (the one-sample rule) and the card says so;
``differs``
    the interval excludes it; the difference and its interval are given;
``not measured``
    this run has no images for that figure.

Intervals for verdicts are Bonferroni-adjusted over the measured cells of each reference
table, so that "Table 6 differs" is a family-wise statement, and the headline counts tables,
not cells. The tolerance option is an additional practical-equivalence margin, reported in
its own column. Claims (thresholds, ranks) are checked as stated: a threshold is never
widened, and a rank is ``inconclusive`` where the ranked groups' intervals overlap. An
approximate claim ("about 93%", resolution r) is read as x ± r/2 and needs a precise enough
measurement: ``not reproduced`` when the interval misses x ± r/2, ``inconclusive`` when the
interval is wider than the claim's precision band x ± r (:func:`approx_verdict`), else
``reproduced``.

Everything the card says is built as :mod:`clipfair.report.document` sections
(:func:`card_sections`) and rendered to ``model_card.md`` / ``model_card.html`` by
:mod:`clipfair.report.document`; ``report.html`` can include the same sections.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.attributes import FAIRFACE_ORDERS, FAIRFACE_SLICES, race_binary
from ..report.document import Bullets, Details, Document, Figure, Note, Section, Table, Text, to_html, to_markdown
from ..report.figures import DPI, save_figure
from ..stats.metrics import group_metrics, wilson_interval
from ..utility.outputs import safe_filename, write_csv
from ..stats.inference import newcombe_diff
from ..utility.yamlio import load_yaml_file

ROLES = ("race", "gender", "age", "denigration", "denigration_child")
#: metric name of race accuracy scored White vs Non-White (metrics.csv and the card)
BINARY_RACE_METRIC = "accuracy_race_binary"
SCORING_LABELS = {"7way": "7-way", "binary": "White vs Non-White"}
VERDICTS = ("consistent", "differs", "not measured")
CLAIM_VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not measured")
_JUDGED = ("adj_confidence", "adj_ci_low", "adj_ci_high", "difference", "diff_low", "diff_high", "verdict",
           "equivalence")
CARD_COLUMNS = ("kind", "id", "table", "row", "column", "scoring", "primary", "method", "taxonomy", "metric",
                "slice", "group", "reference", "reference_low", "reference_high", "paper_interval", "paper_n", "quote",
                "reproduced", "count", "n", "ci_low", "ci_high", "adj_confidence", "adj_ci_low", "adj_ci_high",
                "difference", "diff_low", "diff_high", "verdict", "tolerance", "equivalence", "note")


class ModelCardError(ValueError):
    """A model-card option or reference file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ModelCardOptions:
    """The scoring choices the paper did not state (all recorded in run.json and the card)."""

    taxonomies: Mapping[str, str] = field(default_factory=lambda: {
        "race": "fairface_race", "gender": "fairface_gender", "age": "fairface_age",
        "denigration": "clip_denigration", "denigration_child": "clip_denigration_child"})
    race_accuracy: str = "7way"  # the scoring the headline counts; both are always shown
    rate_denominator: str = "group"  # or "flagged": share of the flagged images
    tolerance_pp: float = 2.0  # practical-equivalence margin, in percentage points
    references: str | None = None  # a YAML path; default: the bundled clip_paper.yaml
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.race_accuracy not in SCORING_LABELS:
            raise ModelCardError(f"model_card.race_accuracy must be 7way or binary, got {self.race_accuracy!r}")
        if self.rate_denominator not in ("group", "flagged"):
            raise ModelCardError(f"model_card.rate_denominator must be group or flagged, got {self.rate_denominator!r}")
        if not self.tolerance_pp >= 0:
            raise ModelCardError(f"model_card.tolerance_pp must be >= 0, got {self.tolerance_pp!r}")
        missing = [r for r in ROLES if r not in self.taxonomies]
        if missing:
            raise ModelCardError(f"model_card.taxonomies lacks role(s) {missing}; give a taxonomy name for each of {ROLES}")


@dataclass
class References:
    figures: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    source: str
    about: dict[str, str] = field(default_factory=dict)
    reference_models: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)
    #: derived attributes the figures slice by, which a run must declare (name -> source attribute)
    derived_slices: dict[str, str] = field(default_factory=dict)


REQUIRED = ("id", "table", "row", "column", "method", "taxonomy", "metric", "slice", "group", "value")
CLAIM_REQUIRED = ("id", "text", "method", "taxonomy", "metric", "slice", "check", "value")
CHECKS = ("all_above", "all_below", "highest_is", "lowest_is", "approx")


def read_references(path: str | Path | None = None) -> References:
    """The reference file (safe loader, data only), validated."""
    p = Path(path) if path else Path(str(importlib.resources.files("clipfair") / "references" / "clip_paper.yaml"))
    data = load_yaml_file(p)  # data only, aliases capped
    figs = list(data["figures"])
    seen: set[str] = set()
    for i, f in enumerate(figs):
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise ModelCardError(f"{p}: figures[{i}] lacks {missing}")
        if f["id"] in seen:
            raise ModelCardError(f"{p}: duplicate reference id {f['id']!r}")
        pn = f.get("paper_n")
        if pn is not None and not (isinstance(pn, (int, float)) and not isinstance(pn, bool) and pn >= 1):
            raise ModelCardError(f"{p}: figures[{i}] ({f['id']}): paper_n must be a number of images >= 1 "
                                 f"(or left out where the paper does not state it), got {pn!r}")
        seen.add(f["id"])
    claims = list(data.get("model_card_claims", []))
    for i, c in enumerate(claims):
        missing = [k for k in CLAIM_REQUIRED if k not in c]
        if missing:
            raise ModelCardError(f"{p}: model_card_claims[{i}] lacks {missing}")
        if c["check"] not in CHECKS:
            raise ModelCardError(f"{p}: model_card_claims[{i}] ({c['id']}): unknown check {c['check']!r}; "
                             f"one of {', '.join(CHECKS)}")
    return References(figs, claims, str(data.get("source", p)), dict(data.get("about") or {}),
                      list(data.get("reference_models") or []), dict(data.get("tables") or {}),
                      {str(k): str(v) for k, v in (data.get("derived_slices") or {}).items()})


def load_references(path: str | Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(figures, model-card claims, source) from a reference YAML."""
    r = read_references(path)
    return r.figures, r.claims, r.source


# --------------------------------------------------------------------------- measuring

def binary_race_predictions(predictions: pd.DataFrame, race_taxonomy: str) -> pd.DataFrame:
    """The race taxonomy's predictions scored White vs Non-White (labels mapped, ``correct``
    recomputed; the taxonomy name is kept)."""
    p = predictions[predictions["taxonomy"] == race_taxonomy].copy()
    if p.empty:
        return p
    pred = p["predicted_label"].map(race_binary)
    truth = p["true_label"].map(lambda t: None if t is None or t != t else race_binary(t))
    p["predicted_label"], p["true_label"] = pred, truth
    p["correct"] = pd.array([None if t is None else bool(t == q) for t, q in zip(truth, pred)], dtype="boolean")
    return p


def race_scoring_metrics(predictions: pd.DataFrame, race_taxonomy: str, slices: Sequence[Any],
                         confidence: float = 0.95,
                         orders: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Race accuracy scored White vs Non-White, as metrics rows labelled
    ``metric = accuracy_race_binary`` (the 7-way scoring is the plain ``accuracy`` rows).
    ``orders``: the dataset's declared value orders (default FairFace's, whose figures the
    card reproduces)."""
    bp = binary_race_predictions(predictions, race_taxonomy)
    if bp.empty:
        return bp.iloc[0:0]
    m = group_metrics(bp, {}, slices=slices, confidence=confidence,
                      orders=FAIRFACE_ORDERS if orders is None else orders)
    m = m[m["metric"] == "accuracy"].copy()
    m["metric"] = BINARY_RACE_METRIC
    return m.reset_index(drop=True)


def _missing_derived(name: str, source: str) -> ModelCardError:
    return ModelCardError(
        f"the model card's figures need the slice {name!r} (a derived attribute of {source!r}, declared as "
        f"dataset.derived.{name} by experiment=model_card) and this run has none: restore "
        f"dataset.derived.{name} and keep {name!r} in slices (slices=auto includes it)")


def check_slices(refs: References, slices: Sequence[Any]) -> None:
    """Before a model-card run: every derived attribute the references slice by must be
    one of the run's slices (ModelCardError otherwise, naming the config key to restore)."""
    have = {s for s in slices if isinstance(s, str)}
    for name, source in refs.derived_slices.items():
        if name not in have:
            raise _missing_derived(name, source)


def derived_groups(predictions: pd.DataFrame, metrics: pd.DataFrame, name: str, source: str) -> str:
    """The groups of the derived attribute ``name`` as this run's images fall, e.g.
    ``0-20 = 0-2, 3-9, 10-19; ...`` (groups and members in metrics.csv's order)."""
    if name not in predictions.columns or source not in predictions.columns:
        return ""
    def ordered(values: Any, slice_: str) -> list[str]:
        order = {g: i for i, g in enumerate(dict.fromkeys(metrics.loc[metrics["slice"] == slice_, "group"]))}
        return sorted(map(str, values), key=lambda x: (order.get(x, len(order)), x))

    pairs = predictions[[name, source]].dropna().drop_duplicates().astype(str)
    members = pairs.groupby(name)[source].agg(lambda v: ordered(v, source))
    return "; ".join(f"{g} = {', '.join(members[g])}" for g in ordered(members.index, name))


def _union(metrics: pd.DataFrame, tax: str, method: str, slice_: str, categories: Sequence[str]) -> pd.DataFrame:
    """Per group of a slice: count of images predicted into any of ``categories`` and n."""
    m = metrics[(metrics["taxonomy"] == tax) & (metrics["method"] == method) & (metrics["metric"] == "rate")
                & (metrics["slice"] == slice_) & (metrics["category"].isin(list(categories)))]
    if m.empty:
        return pd.DataFrame(columns=["group", "count", "n"])
    return m.groupby("group", sort=False).agg(count=("count", "sum"), n=("n", "first")).reset_index()


def _group_counts(metrics: pd.DataFrame, refs: References, tax: str,
                  spec: Mapping[str, Any], metric: str, opts: ModelCardOptions) -> pd.DataFrame:
    """(group, count, n) of every group of a figure's or claim's slice."""
    method, slice_ = spec["method"], spec["slice"]
    if spec["metric"] == "accuracy":
        m = metrics[(metrics["taxonomy"] == tax) & (metrics["method"] == method)
                    & (metrics["metric"] == metric) & (metrics["slice"] == slice_)]
        return m[["group", "count", "n"]].reset_index(drop=True)
    if slice_ in refs.derived_slices and (metrics["taxonomy"] == tax).any() \
            and not (metrics["slice"] == slice_).any():
        raise _missing_derived(slice_, refs.derived_slices[slice_])
    u = _union(metrics, tax, method, slice_, list(spec.get("categories") or []))
    if opts.rate_denominator == "flagged" and len(u):
        u = u.assign(n=u["count"].sum())
    return u


def _interval(count: float, n: float, confidence: float) -> tuple[float, float]:
    lo, hi = wilson_interval(count, n, confidence)
    return 100 * lo, 100 * hi


def _reference_range(spec: Mapping[str, Any]) -> tuple[float, float]:
    v, r = float(spec["value"]), float(spec.get("resolution", 0) or 0)
    return v - r / 2, v + r / 2


def verdict(lo: float, hi: float, ref_low: float, ref_high: float) -> str:
    """``consistent`` when the interval [lo, hi] meets the reference range, else ``differs``;
    ``not measured`` when the interval is undefined."""
    if lo != lo or hi != hi:
        return "not measured"
    return "consistent" if lo <= ref_high and hi >= ref_low else "differs"


def two_sample_verdict(count: float, n: float, reference: float, ref_low: float, ref_high: float,
                       paper_n: float, confidence: float) -> tuple[str, float, float]:
    """The paper's value as a count of ``paper_n`` images too: (verdict, low, high) of the
    Newcombe hybrid score interval for ``this run - paper`` in points. ``consistent`` when that
    interval meets the paper value's rounding range (``ref_low - reference`` ...
    ``ref_high - reference``), else ``differs``. Both samples' uncertainty counts: with 1,500
    images on each side, 53% against the paper's 50% is consistent here although the one-sample
    rule (the paper's 50% taken as exact) calls it ``differs``."""
    if not n or n != n or not paper_n or paper_n != paper_n:
        return "not measured", np.nan, np.nan
    x2 = float(np.clip(round(reference / 100 * paper_n), 0, paper_n))
    lo, hi = newcombe_diff(count, n, x2, paper_n, confidence)
    lo, hi = 100 * float(lo), 100 * float(hi)
    ok = lo <= ref_high - reference and hi >= ref_low - reference
    return ("consistent" if ok else "differs"), lo, hi


def claim_precision(spec: Mapping[str, Any]) -> float:
    """The precision, in points, an approximate claim is stated to: its ``resolution`` when
    the reference gives one ('about 93%' stated to the whole point: 1), else the unit of the
    value's last printed digit (93 -> 1, 93.5 -> 0.1)."""
    r = float(spec.get("resolution", 0) or 0)
    if r > 0:
        return r
    text = f"{float(spec['value']):g}"
    return 10.0 ** -(len(text.split(".")[1]) if "." in text else 0)


def approx_verdict(lo: float, hi: float, value: float, precision: float) -> str:
    """'About ``value``%' against this run's interval [lo, hi]: ``not reproduced`` when the
    interval misses value ± precision/2 (the claim as read), ``inconclusive`` when it meets it
    but is wider than the claim's precision band value ± precision (it cannot tell 'about 93%'
    from 91% or 95%: e.g. 9 of 10 correct, interval 59.6-98.2), else ``reproduced``."""
    if lo != lo or hi != hi:
        return "not measured"
    if hi < value - precision / 2 or lo > value + precision / 2:
        return "not reproduced"
    if hi - lo > 2 * precision:
        return "inconclusive"
    return "reproduced"


def equivalence(diff_low: float, diff_high: float, tolerance: float) -> str:
    """Practical equivalence at ``tolerance`` points: ``within`` when the whole difference
    interval lies inside ±tolerance, ``beyond`` when it lies wholly outside, else
    ``undetermined``."""
    if diff_low != diff_low:
        return ""
    if -tolerance <= diff_low and diff_high <= tolerance:
        return f"within ±{tolerance:g}"
    if diff_low > tolerance or diff_high < -tolerance:
        return f"beyond ±{tolerance:g}"
    return "undetermined"


def _scorings(fig: Mapping[str, Any], opts: ModelCardOptions) -> list[tuple[str, str, bool]]:
    """(scoring label, metric name, counts toward the headline) for a figure."""
    if fig["taxonomy"] == "race" and fig["metric"] == "accuracy":
        return [(SCORING_LABELS[s], "accuracy" if s == "7way" else BINARY_RACE_METRIC, s == opts.race_accuracy)
                for s in ("7way", "binary")]
    return [("", "accuracy", True)]


def reproduce(predictions: pd.DataFrame, metrics: pd.DataFrame, opts: ModelCardOptions,
              slices: Sequence[Any] = FAIRFACE_SLICES) -> pd.DataFrame:
    """Every reference figure and claim beside this run's value, interval and verdict.
    Race accuracy scored White vs Non-White is computed over ``slices`` unless ``metrics``
    already holds it (``metric = accuracy_race_binary``)."""
    refs = read_references(opts.references)
    roles = dict(opts.taxonomies)
    if not (metrics["metric"] == BINARY_RACE_METRIC).any():
        metrics = pd.concat([metrics, race_scoring_metrics(predictions, roles["race"], slices, opts.confidence)],
                            ignore_index=True)
    bands = {name: f"{name} (dataset.derived, groups of {source}): {groups}"
             for name, source in refs.derived_slices.items()
             if (groups := derived_groups(predictions, metrics, name, source))}
    rows = []
    for f in refs.figures:
        tax = roles.get(f["taxonomy"])
        ref_low, ref_high = _reference_range(f)
        for scoring, metric, primary in _scorings(f, opts):
            count, n = np.nan, 0
            if tax is not None:
                g = _group_counts(metrics, refs, tax, f, metric, opts)
                hit = g[g["group"] == str(f["group"])]
                if len(hit) and hit["n"].iloc[0] > 0:
                    count, n = float(hit["count"].iloc[0]), int(hit["n"].iloc[0])
            v = 100 * count / n if n else np.nan
            lo, hi = _interval(count, n, opts.confidence) if n else (np.nan, np.nan)
            pi = f.get("paper_interval")
            pn = f.get("paper_n")
            rows.append({"kind": "figure", "id": f["id"], "table": f["table"], "row": f["row"],
                         "column": f["column"], "scoring": scoring, "primary": primary, "method": f["method"],
                         "taxonomy": tax or f["taxonomy"],
                         "metric": metric if not f.get("categories") else "rate:" + "+".join(f["categories"]),
                         "slice": f["slice"], "group": f["group"], "reference": float(f["value"]),
                         "reference_low": ref_low, "reference_high": ref_high,
                         "paper_interval": f"{pi[0]:g}-{pi[1]:g}" if pi else "",
                         "paper_n": float(pn) if pn else np.nan, "quote": f.get("quote", ""),
                         "reproduced": v, "count": count, "n": n, "ci_low": lo, "ci_high": hi,
                         "tolerance": opts.tolerance_pp,
                         "note": f.get("note") or bands.get(f["slice"], "")})
    card = pd.DataFrame(rows, columns=[c for c in CARD_COLUMNS if c not in _JUDGED])
    card = _adjust_and_judge(card, opts)
    claims = [_claim(predictions, metrics, refs, roles, c, opts) for c in refs.claims]
    out = pd.concat([card, pd.DataFrame(claims)], ignore_index=True) if claims else card
    return out.reindex(columns=list(CARD_COLUMNS))


def _adjust_and_judge(card: pd.DataFrame, opts: ModelCardOptions) -> pd.DataFrame:
    """Bonferroni-adjusted intervals over the measured figures of each table,
    the verdict on the adjusted interval, the difference interval and equivalence."""
    card = card.copy()
    alpha = 1 - opts.confidence
    for col in ("adj_confidence", "adj_ci_low", "adj_ci_high", "difference", "diff_low", "diff_high"):
        card[col] = np.nan
    card["verdict"], card["equivalence"] = "not measured", ""
    for _, idx in card.groupby("table", sort=False).groups.items():
        part = card.loc[idx]
        measured = part[part["n"] > 0]
        # one family per table: its measured figures (a race cell counts once, whatever the scoring)
        m = max(1, len(measured.drop_duplicates("id")))
        level = 1 - alpha / m
        for i, r in measured.iterrows():
            lo, hi = _interval(r["count"], r["n"], level)
            card.loc[i, ["adj_confidence", "adj_ci_low", "adj_ci_high"]] = [level, lo, hi]
            card.loc[i, "difference"] = r["reproduced"] - r["reference"]
            pn = r.get("paper_n", np.nan)
            if pn == pn and pn and pn > 0:  # the paper's sample size is known: both sides' uncertainty
                v, dlo, dhi = two_sample_verdict(r["count"], r["n"], r["reference"], r["reference_low"],
                                                 r["reference_high"], pn, level)
            else:  # unknown: the paper's value taken as exact (the one-sample rule)
                v = verdict(lo, hi, r["reference_low"], r["reference_high"])
                dlo, dhi = lo - r["reference"], hi - r["reference"]
            card.loc[i, "verdict"] = v
            card.loc[i, ["diff_low", "diff_high"]] = [dlo, dhi]
            card.loc[i, "equivalence"] = equivalence(dlo, dhi, opts.tolerance_pp)
    return card


def _claim(predictions: pd.DataFrame, metrics: pd.DataFrame, refs: References, roles: Mapping[str, str],
           c: Mapping[str, Any], opts: ModelCardOptions) -> dict[str, Any]:
    """One claim checked as stated. Every group of the slice (less ``exclude``) gets a Wilson
    interval Bonferroni-adjusted over those k groups."""
    tax = roles.get(c["taxonomy"], c["taxonomy"])
    race_acc = c["taxonomy"] == "race" and c["metric"] == "accuracy"
    acc_metric = BINARY_RACE_METRIC if race_acc and opts.race_accuracy == "binary" else "accuracy"
    metric = acc_metric if c["metric"] == "accuracy" else "rate:" + "+".join(c.get("categories") or [])
    base = {"kind": "claim", "id": c["id"], "table": "Claims", "row": c["text"], "column": c.get("source", ""),
            "scoring": SCORING_LABELS[opts.race_accuracy] if race_acc else "",
            "primary": True, "method": c["method"], "taxonomy": tax, "metric": metric, "slice": c["slice"],
            "group": c.get("group", ""), "reference": float(c["value"]), "tolerance": np.nan,
            "quote": c["text"] if c.get("source", "").startswith("CLIP paper") else ""}
    g = _group_counts(metrics, refs, tax, c, acc_metric, opts)
    g = g[(g["n"] > 0) & ~g["group"].isin([str(x) for x in c.get("exclude") or []])].reset_index(drop=True)
    if g.empty:
        return {**base, "reproduced": np.nan, "n": 0, "verdict": "not measured", "note": "no images for this claim"}
    k = len(g)
    level = 1 - (1 - opts.confidence) / k
    v = 100 * g["count"] / g["n"]
    lo, hi = wilson_interval(g["count"].to_numpy(float), g["n"].to_numpy(float), level)
    g = g.assign(value=v, lo=100 * np.asarray(lo), hi=100 * np.asarray(hi)).set_index("group")
    x, check = float(c["value"]), c["check"]
    ci = f"{100 * level:.4g}% intervals (Bonferroni over {k} group{'s' * (k != 1)})"
    if check in ("all_above", "all_below"):
        above = check == "all_above"
        worst = g["value"].idxmin() if above else g["value"].idxmax()
        if above:
            status = ("reproduced" if (g["lo"] > x).all() else "not reproduced" if (g["hi"] < x).any()
                      else "inconclusive")
        else:
            status = ("reproduced" if (g["hi"] < x).all() else "not reproduced" if (g["lo"] > x).any()
                      else "inconclusive")
        w = g.loc[worst]
        note = (f"{'lowest' if above else 'highest'} group: {worst} {w['value']:.1f}% "
                f"[{w['lo']:.1f}-{w['hi']:.1f}], n={int(w['n'])}; needs every group's interval "
                f"{'above' if above else 'below'} {x:g}% as stated; {ci}")
        return {**base, "group": worst, "reproduced": float(w["value"]), "count": float(w["count"]),
                "n": int(w["n"]), "adj_confidence": level, "adj_ci_low": float(w["lo"]),
                "adj_ci_high": float(w["hi"]), "verdict": status, "note": note}
    if check in ("highest_is", "lowest_is"):
        who = str(c["group"])
        if who not in g.index:
            return {**base, "reproduced": np.nan, "n": 0, "verdict": "not measured",
                    "note": f"no images of {who}"}
        status, detail = rank_verdict(g[["value", "lo", "hi"]], who, highest=check == "highest_is")
        r = g.loc[who]
        ref_low, ref_high = _reference_range(c)
        value_v = verdict(float(r["lo"]), float(r["hi"]), ref_low, ref_high)
        note = f"{detail}; stated value {x:g}%: {value_v}; {ci}"
        return {**base, "reproduced": float(r["value"]), "count": float(r["count"]), "n": int(r["n"]),
                "adj_confidence": level, "adj_ci_low": float(r["lo"]), "adj_ci_high": float(r["hi"]),
                "difference": float(r["value"]) - x, "verdict": status, "note": note}
    # approx: about x, read at the claim's resolution
    who = str(c.get("group", "all"))
    if who not in g.index:
        return {**base, "reproduced": np.nan, "n": 0, "verdict": "not measured", "note": f"no group {who}"}
    r = g.loc[who]
    lo1, hi1 = _interval(r["count"], r["n"], opts.confidence)
    prec = claim_precision(c)
    ref_low, ref_high = x - prec / 2, x + prec / 2
    status = approx_verdict(lo1, hi1, x, prec)
    why = {"inconclusive": f"; the interval is wider than the claim's precision band {x - prec:g}-{x + prec:g}%",
           "not reproduced": "; the interval misses it"}.get(status, "")
    return {**base, "reproduced": float(r["value"]), "count": float(r["count"]), "n": int(r["n"]),
            "ci_low": lo1, "ci_high": hi1, "reference_low": ref_low, "reference_high": ref_high,
            "difference": float(r["value"]) - x, "verdict": status,
            "note": f"'about {x:g}%' read as {ref_low:g}-{ref_high:g}%; "
                    f"{100 * opts.confidence:g}% interval {lo1:.1f}-{hi1:.1f}{why}; "
                    "the paper's sample size for it is not stated (its value taken as exact)"}


def rank_verdict(groups: pd.DataFrame, who: str, highest: bool = True) -> tuple[str, str]:
    """Is ``who`` the highest (lowest) group? ``groups``: index group, columns value, lo, hi.
    ``reproduced`` when its interval lies wholly above (below) every other group's,
    ``not reproduced`` when another group's interval lies wholly above (below) its own,
    ``inconclusive`` when the intervals overlap."""
    s = groups if highest else groups.assign(value=-groups["value"], lo=-groups["hi"], hi=-groups["lo"])
    me, others = s.loc[who], s.drop(index=who)
    if others.empty:
        return "inconclusive", f"{who} is the only group"
    top = str(groups["value"].idxmax() if highest else groups["value"].idxmin())
    word = "highest" if highest else "lowest"
    beaten = others[others["lo"] > me["hi"]]
    if len(beaten):
        return "not reproduced", f"{', '.join(map(str, beaten.index))} {word} beyond {who}'s interval"
    overlap = others[others["hi"] >= me["lo"]]
    if len(overlap) == 0:
        return "reproduced", f"{who} is {word} and its interval clears every other group's"
    return "inconclusive", (f"{word} point estimate: {top}; intervals of {who} and "
                            f"{', '.join(map(str, overlap.index))} overlap")


# --------------------------------------------------------------------------- the card

@dataclass
class CardContext:
    """What the card says about the run beyond the numbers."""

    model: str = ""
    dataset: str = ""
    padding: str = "unknown"
    image_subset: str = ""
    templates: dict[str, list[str]] = field(default_factory=dict)
    demo: bool = False
    linear_probe: dict[str, Any] = field(default_factory=dict)  # run.json's linear_probe entry
    precision: dict[str, Any] = field(default_factory=dict)  # run.json's precision entry
    extra_choices: dict[str, Any] = field(default_factory=dict)
    #: run.json's sanity banner (random weights, accuracy at chance): leads the card when set
    banner: str = ""


def _f(v: float, nd: int = 1) -> str:
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def _table_verdicts(card: pd.DataFrame) -> pd.DataFrame:
    figs = card[(card["kind"] == "figure") & card["primary"].astype(bool)]
    rows = []
    for table, part in figs.groupby("table", sort=False):
        meas = part[part["verdict"] != "not measured"]
        nd = int((meas["verdict"] == "differs").sum())
        status = ("not measured" if meas.empty else "differs" if nd else "consistent")
        within = int(meas["equivalence"].astype(str).str.startswith("within").sum())
        rows.append({"table": table, "cells": len(part), "measured": len(meas), "differ": nd, "within": within,
                     "verdict": status})
    return pd.DataFrame(rows, columns=["table", "cells", "measured", "differ", "within", "verdict"])


def padding_statement(source: Mapping[str, Any]) -> str:
    """FairFace's crop padding where the source shows it (a hub dataset's config), else
    ``unknown``: a local folder or file does not say which download it came from."""
    if source.get("adapter") == "hf" and source.get("config") and not Path(str(source.get("path", ""))).exists():
        return f"{source['config']} (the hub dataset's config)"
    configured = source.get("padding") or source.get("config")
    return "unknown" + (f" (configured {configured!r}; a local copy cannot show which download it is)"
                        if configured else "")


def is_reference_model(model: str, refs: References) -> bool:
    return model.strip() in refs.reference_models


def card_sections(card: pd.DataFrame, opts: ModelCardOptions, context: CardContext,
                  plots: Mapping[str, str] | None = None) -> list[Section]:
    """The model card as document sections (for ``model_card.md``/``.html`` and ``report.html``)."""
    refs = read_references(opts.references)
    plots = plots or {}
    conf = f"{100 * opts.confidence:g}%"
    same = is_reference_model(context.model, refs)
    about = refs.about
    framing = [
        Note(("**Demo run on a toy model and synthetic faces: nothing here says anything about CLIP or "
              "any real model.**"), "warning")] if context.demo else []
    framing += [
        Text(f"Model: `{context.model or 'unknown'}`. " + (
            "These are the weights the references name, so this is a **reproduction attempt** of published "
            "figures measured on other images with other prompts." if same else
            "This is **a comparison, not a reproduction**: the references were measured on a different model.")),
        Bullets([f"**Model of the references**: {about.get('model', 'see the source')}",
                 f"**Images of the references**: {about.get('images', 'see the source')}",
                 f"**Prompts of the references**: {about.get('prompts', 'not stated')}",
                 f"**Linear probe of the references**: {about.get('probe', 'not stated')}",
                 f"**Public reproductions**: {about.get('reproductions', 'none known')}",
                 f"**Source**: {refs.source}"]),
        Text("So an agreement says the numbers are compatible, not that the protocol was the same; a "
             "difference may come from the model, the images, the prompts or the probe protocol."),
    ]
    sections = [Section("What the references are and are not", framing)]
    verdict_text = [
        Text(f"Each figure is a count of n images with a Wilson interval. **consistent**: the paper's value "
             f"(read at the precision it is stated to, e.g. 'approximately 14%' as 13.5-14.5) lies inside the "
             f"interval; **differs**: the interval excludes it (the difference and its interval are given); "
             f"**not measured**: no images for it here. Verdicts use intervals Bonferroni-adjusted over the "
             f"measured cells of each table (level 1 - {1 - opts.confidence:g}/m), so a table that differs is "
             f"a family-wise finding; the cells show the {conf} interval and, beside it, the adjusted interval "
             f"the verdict used (its level in brackets)."),
        Text("The paper's own figures are measurements too. Where its sample size is known (the *paper n* "
             "shown beside the value, from the reference file's `paper_n`), the verdict reads the two-sample "
             "(Newcombe) interval of the difference, which counts both sides' uncertainty: consistent when it "
             "meets the value's rounding range. Where the paper's sample size is not stated (most cells: the "
             "sizes of its groups were never published), its value is treated as exact (the one-sample rule "
             "above), which calls a difference sooner than a two-sample comparison would."),
        Text(f"Practical equivalence (`model_card.tolerance_pp` = {opts.tolerance_pp:g} points, an additional "
             f"margin, not part of the verdict): *within* when the whole difference interval lies inside "
             f"±{opts.tolerance_pp:g}, *beyond* when wholly outside, else *undetermined*."),
        Text("Claims are checked as stated: a threshold ('above 96%') is reproduced only when every group's "
             "interval lies beyond it and not reproduced when some group's interval lies on the wrong side; a "
             "rank ('highest') is **inconclusive** where the ranked groups' intervals overlap. An approximate "
             "claim ('about 93%', stated to the whole point) is read as 92.5-93.5: **not reproduced** when the "
             "interval misses that, **inconclusive** when the interval is wider than the claim's own "
             "precision band (93 ± 1 point, i.e. wider than 2 points), else **reproduced**. The tolerance "
             "never widens a claim."),
    ]
    tv = _table_verdicts(card)
    counts = tv["verdict"].value_counts()
    claims = card[card["kind"] == "claim"]
    cc = claims["verdict"].value_counts()
    head = (f"Of {len(tv)} reference tables, {counts.get('consistent', 0)} consistent in every measured cell, "
            f"{counts.get('differs', 0)} differ in at least one, {counts.get('not measured', 0)} not measured. "
            f"Of {len(claims)} claims: " + ", ".join(f"{cc.get(v, 0)} {v}" for v in CLAIM_VERDICTS) + ". "
            f"Race accuracy counts under the {SCORING_LABELS[opts.race_accuracy]} scoring "
            f"(`model_card.race_accuracy`); both scorings are shown.")
    sections.append(Section("Headline (per table)", [
        Text(head),
        Table(["table", "covers", "cells", "measured", "verdict", "cells that differ",
               f"cells within ±{opts.tolerance_pp:g} pp"],
              [[r.table, refs.tables.get(r.table, ""), r.cells, r.measured, f"**{r.verdict}**", r.differ, r.within]
               for r in tv.itertuples()], align="llrrlrr"),
        Text(f"A table is *consistent* when no measured cell differs; with small groups that can simply mean "
             f"wide intervals: the last column counts the cells whose whole difference interval lies within "
             f"±{opts.tolerance_pp:g} points, i.e. that this run pins down as practically equal to the paper."),
        Details("How to read the verdicts", verdict_text)]))
    if len(claims):
        sections.append(Section("Claims of the model card and the paper's text, checked as stated", [
            Table(["claim", "source", "stated", f"here (n)", "verdict", "detail"],
                  [[r.row, r.column, f"{_f(r.reference)}%", f"{_f(r.reproduced)}% ({int(r.n)})",
                    f"**{r.verdict}**", r.note] for r in claims.itertuples()], align="llrrll")]))
    figs = card[card["kind"] == "figure"]
    for table, part in figs.groupby("table", sort=False):
        covers = refs.tables.get(table, "")
        blocks: list[Any] = []
        if table in ("Table 3", "Table 4"):
            blocks.append(Note("Race accuracy is shown under both scorings: 7-way (the predicted race must "
                               "equal the label) and White vs Non-White (as datacomp scores these tables). "
                               "For White images the two are the same."))
        for name in refs.derived_slices:
            notes = [str(n) for n in part.loc[part["slice"] == name, "note"] if n]
            if notes:
                blocks.append(Note(f"Figures on `{name}` read its rows of metrics.csv. {notes[0]}. A group the "
                                   "paper does not name is reported in metrics.csv, never compared."))
        rows = []
        for r in part.itertuples():
            ref = _f(r.reference) + (f" (paper: {r.paper_interval}, level not stated)" if r.paper_interval else "")
            pn = getattr(r, "paper_n", np.nan)
            if pn == pn and pn:
                ref += f" (paper n={int(pn):,}: two-sample)"
            if r.reference_high - r.reference_low > 0:
                ref += f" (≈, read as {r.reference_low:g}-{r.reference_high:g})"
            here = f"{_f(r.reproduced)} [{_f(r.ci_low)}-{_f(r.ci_high)}]" if r.n else "–"
            diff = (f"{r.difference:+.1f} [{r.diff_low:+.1f}, {r.diff_high:+.1f}]"
                    if r.verdict == "differs" else "")
            col = f"{r.column} ({r.scoring})" if r.scoring else r.column
            pn = getattr(r, "paper_n", np.nan)
            if r.n and pn == pn and pn and r.diff_low == r.diff_low:  # two-sample rule: the difference's interval
                used = (f"difference [{r.diff_low:+.1f}, {r.diff_high:+.1f}] (two-sample, "
                        f"{100 * r.adj_confidence:.4g}%)")
            else:
                used = (f"[{_f(r.adj_ci_low)}-{_f(r.adj_ci_high)}] ({100 * r.adj_confidence:.4g}%)"
                        if r.n and r.adj_ci_low == r.adj_ci_low else "–")
            rows.append([r.row, col, ref, here, int(r.n), used, f"**{r.verdict}**" if r.verdict == "differs"
                         else r.verdict, diff, r.equivalence])
        blocks.append(Table(["row", "column", "paper", f"here [{conf} CI]", "n", "verdict's interval (adjusted)",
                             "verdict", "difference [adjusted CI]", f"±{opts.tolerance_pp:g} pp"], rows,
                            align="llrrrrllr"))
        quotes = [f"{r.row}: “{r.quote}”" for r in part.drop_duplicates("id").itertuples() if r.quote]
        if quotes:
            blocks.append(Details("The paper's words", [Bullets(quotes)]))
        if table in plots:
            blocks.append(Figure(plots[table], f"{table}: this run against the paper, with {conf} intervals"))
        sections.append(Section(f"{table}: {covers}" if covers else table, blocks))
    sections += _probe_sections(context.linear_probe) + _precision_sections(context.precision)
    sections.append(Section("Caveats", [Bullets([
        "FairFace's race, gender and age labels are annotators' perceptions of a face, not how the people "
        "pictured identify.",
        "The categories are reductive: seven race groups, two genders and age bins cannot describe people; "
        "the paper's probe classes (non-human, crime-related) are harmful by design and measure harm.",
        "Public reproductions of these figures failed for the non-human rates: openai/CLIP#157 (ViT-B/16) "
        "and LAION-AI/CLIP_benchmark#15 (ViT-L-14-336) found them much lower than the paper's.",
        "The paper's prompts, image subset and probe code were never published; every choice made here is "
        "listed below.",
        "Small groups (e.g. ages 0-2, over 70) have wide intervals: a consistent verdict there says little.",
        "Not for surveillance, face recognition or identifying people; English prompts only."])]))
    choices = {"model": context.model or "unknown", "dataset": context.dataset or "unknown",
               "padding": context.padding, "image subset": context.image_subset or "unknown",
               "race accuracy (headline)": SCORING_LABELS[opts.race_accuracy],
               "rate denominator": opts.rate_denominator,
               "tolerance (practical equivalence)": f"±{opts.tolerance_pp:g} percentage points",
               "confidence": conf, **context.extra_choices}
    items = [f"**{k}**: {v}" for k, v in choices.items()]
    items += [f"**templates of {t}**: " + " | ".join(f"`{x}`" for x in tpl) for t, tpl in context.templates.items()]
    items += [f"**taxonomy for {role}**: `{name}`" for role, name in opts.taxonomies.items()]
    sections.append(Section("Choices the paper left unstated", [Bullets(items)]))
    return sections


#: the paper's probe protocol where it is stated (appendix A.3): scikit-learn's L-BFGS, 1,000
#: iterations, L2 strength swept over 1e-6 ... 1e6 on validation sets (refined: 8 steps per decade)
PAPER_PROBE = {"max_iter": 1000, "Cs": (1e-6, 1e6), "refine_steps_per_decade": 8, "features": "pre_projection"}


def probe_departures(f: Mapping[str, Any]) -> list[str]:
    """Every choice of one probe fit (run.json's ``linear_probe`` entry) that the paper does
    not state, named as a departure from it."""
    out = []
    solver = f.get("solver", "sklearn")
    if solver == "torch":
        out.append(f"solver: full-batch L-BFGS in torch on {f.get('device', 'the run device')} (float32, "
                   f"features standardised, scikit-learn's objective, tol {f.get('tol', 1e-4):g}); the paper used "
                   "scikit-learn's L-BFGS (tests/test_probe_torch.py: same C and predictions on fixtures)")
    else:
        out.append("solver: scikit-learn's LogisticRegression (L-BFGS), as the paper; its settings beyond "
                   f"max_iter (tol {f.get('tol', 1e-4):g}, warm starts along the C path) are not stated there")
    hold = f.get("holdout")
    where = f"a stratified {100 * float(hold):g}% of train" if hold is not None else "a part of train"
    out.append(f"C chosen on {where} held out ({f.get('holdout_rows', '?')} rows, seed {f.get('seed', '?')}); "
               "the paper chose it on validation sets it does not describe further")
    n_train, rows, hold_rows = f.get("n_train"), f.get("sweep_rows"), f.get("holdout_rows")
    if isinstance(n_train, int) and isinstance(rows, int) and isinstance(hold_rows, int) \
            and rows < n_train - hold_rows:
        out.append(f"C search capped at {rows:,} of the {n_train - hold_rows:,} remaining train rows "
                   "(probe.sweep_max_train, stratified)")
    if f.get("C_sweep") is not None and f.get("C") != f.get("C_sweep"):
        out.append(f"C rescaled for the final fit on all {n_train if n_train is not None else '?'} train rows: "
                   f"{f['C_sweep']:.3g} x sweep rows / train rows = {f['C']:.3g} (the same regularisation per "
                   "row; the paper does not say how it refit)")
    cs = f.get("Cs") or []
    k = int(f.get("refine_steps_per_decade", 0) or 0)
    if cs and (min(cs) > PAPER_PROBE["Cs"][0] or max(cs) < PAPER_PROBE["Cs"][1]
               or k < PAPER_PROBE["refine_steps_per_decade"]):
        out.append(f"C search {min(cs):.0e}…{max(cs):.0e}" + (f" refined to 1/{k} decade" if k else ", grid only")
                   + " (the paper: 1e-06…1e+06, 8 steps per decade)")
    if f.get("features") and f.get("features") != PAPER_PROBE["features"]:
        out.append(f"features: {f['features']} (the paper: before the projection)")
    if f.get("max_iter") is not None and int(f["max_iter"]) != PAPER_PROBE["max_iter"]:
        out.append(f"max_iter {f['max_iter']} (the paper: 1,000)")
    return out


def _probe_sections(info: Mapping[str, Any]) -> list[Section]:
    fits = {k: v for k, v in (info or {}).items() if isinstance(v, dict) and "C" in v}
    if not fits:
        return []
    rows, warn, trials = [], [], []
    for name, f in fits.items():
        conv = bool(f.get("converged", True))  # the final fit's flag: the table and the text read it
        cs, k = f.get("Cs") or [f["C"]], int(f.get("refine_steps_per_decade", 0) or 0)
        search = (f"{min(cs):.0e}…{max(cs):.0e}, {f.get('n_candidates', len(cs))} candidates"
                  + (f", refined to 1/{k} decade" if k else ", grid only"))
        rows.append([name, f.get("features", "?"), f.get("solver", "sklearn"), search, f"{f['C']:.3g}",
                     f"{f.get('C_sweep', f['C']):.3g}", f.get("sweep_rows", "?"), f.get("n_train", "?"),
                     "yes" if conv else f"**no** ({f.get('n_iter', '?')} iterations)"])
        if not conv:
            warn.append(name)
        if f.get("sweep_not_converged"):
            trials.append(f"{name} ({len(f['sweep_not_converged'])} of {f.get('n_candidates', '?')})")
    blocks: list[Any] = [
        Text("Logistic regression on image features (the paper's 'LR CLIP'): *pre_projection* = the image "
             "tower's output before the projection, unnormalised (the paper's appendix A.3); *projected* = the "
             "zero-shot embeddings, L2-normalised. C is chosen on a stratified held-out part of train, then "
             "rescaled to the final fit's size (C_final = C_sweep × sweep rows / train rows, since "
             "scikit-learn's C multiplies the summed loss). *converged* is the final fit's."),
        Table(["taxonomy", "features", "solver", "C search", "C (final)", "C (sweep)", "sweep rows", "train rows",
               "converged"], rows, align="llllrrrrl")]
    if trials:
        blocks.append(Note("Trial fits of the C search stopped at probe.max_iter for " + ", ".join(trials)
                           + "; they only rank candidate C values (run.json: sweep_not_converged)"
                           + ("" if warn else "; every final fit converged") + "."))
    if warn:
        blocks.insert(0, Note(f"The final fit did not converge for {', '.join(warn)} (run.json: linear_probe); "
                              "raise probe.max_iter before trusting these probes.", "warning"))
    deps = {name: probe_departures(f) for name, f in fits.items()}
    common = [d for d in next(iter(deps.values())) if all(d in v for v in deps.values())]
    items = [f"**all probes**: {d}" for d in common]
    items += [f"**{name}**: {d}" for name, v in deps.items() for d in v if d not in common]
    if items:
        blocks += [Text("**Departures from the paper's stated probe protocol** (choices it does not state, or "
                        "states otherwise):"), Bullets(items)]
    return [Section("Linear probe", blocks)]


def _precision_sections(info: Mapping[str, Any]) -> list[Section]:
    if not info:
        return []
    if info.get("skipped"):
        return [Section("Numeric precision", [Text(f"Precision audit: {info['skipped']}.")])]
    rows = []
    for t, a in (info.get("taxonomies") or {}).items():
        q = a.get("margin_quantiles", {})
        rows.append([t, f"{a['agree']} of {a['n']}", f"{100 * a['agreement']:.1f}% "
                     f"[{100 * a['ci_low']:.1f}-{100 * a['ci_high']:.1f}]",
                     " / ".join(_f(q.get(k), 3) for k in ("min", "p05", "p50")), a.get("flips_example", "")])
    return [Section("Numeric precision", [
        Text(f"Zero-shot predictions at the run's precision (`{info.get('dtype')}`) against float32 on a seeded "
             f"sample of {info.get('n_images')} images (seed {info.get('seed')}); reference: "
             f"{info.get('reference', 'float32')}. Margin: the top-1 minus top-2 probability at the run's "
             "precision; small margins are where precision can flip a prediction."),
        Table(["taxonomy", "same prediction", "agreement [95% CI]", "top-2 margin min / p5 / median",
               "flipped images"], rows, align="lrrrl")])]


def plot_table(card: pd.DataFrame, table: str, path: Path, tolerance: float = 2.0) -> Path:
    """This run vs paper for one table (primary scoring): one point per figure with its CI,
    coloured by the paper's row, on the identity line with the tolerance band."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    part = card[(card["kind"] == "figure") & (card["table"] == table) & card["primary"].astype(bool)]
    fig = MplFigure(figsize=(7.2, 5.4), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ref = part["reference"].to_numpy(float)
    rep = part["reproduced"].to_numpy(float)
    hi = float(np.nanmax(np.r_[ref, rep, part["ci_high"].to_numpy(float), 1.0]))
    lo = float(np.nanmin(np.r_[ref, rep, part["ci_low"].to_numpy(float), hi]))
    pad = 0.06 * (hi - lo + 1e-9)
    span = np.array([max(lo - pad, 0.0) if lo > 0 else 0.0, hi + pad])
    ax.fill_between(span, span - tolerance, span + tolerance, color="#c6f6d5", alpha=0.7,
                    label=f"within ±{tolerance:g} pp")
    ax.plot(span, span, color="0.4", lw=1, ls="--")
    cmap = matplotlib.colormaps["tab10"]
    for i, (row, g) in enumerate(part.groupby("row", sort=False)):
        x, y = g["reference"].to_numpy(float), g["reproduced"].to_numpy(float)
        err = np.vstack([np.clip(y - g["ci_low"].to_numpy(float), 0, None),
                         np.clip(g["ci_high"].to_numpy(float) - y, 0, None)])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", ms=5, capsize=2, color=cmap(i % 10), label=row)
        if len(part) <= 24:
            for xi, yi, c in zip(x, y, g["column"]):
                if yi == yi:
                    ax.annotate(str(c), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlim(*span)
    ax.set_ylim(*span)
    ax.set_xlabel("paper (%)")
    ax.set_ylabel("this run (%)")
    ax.set_title(f"{table}: this run vs paper")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def card_title(context: CardContext, opts: ModelCardOptions) -> str:
    same = is_reference_model(context.model, read_references(opts.references))
    return "Model card: reproduction attempt of the CLIP paper's FairFace figures" if same else \
        "Model card: comparison with the CLIP paper's FairFace figures (not a reproduction)"


def write_model_card(predictions: pd.DataFrame, metrics: pd.DataFrame, opts: ModelCardOptions, out_dir: Path,
                     context: CardContext) -> tuple[list[Path], list[Section]]:
    """model_card.csv, one plot per table, model_card.md and model_card.html; returns the
    paths and the sections (for report.html)."""
    out_dir = Path(out_dir)
    card = reproduce(predictions, metrics, opts)
    written = [out_dir / "model_card.csv"]
    write_csv(card, written[0])
    plots = {}
    for table in dict.fromkeys(card.loc[card["kind"] == "figure", "table"]):
        name = safe_filename("model_card_" + "".join(ch if ch.isalnum() else "_" for ch in table.lower()).strip("_"),
                             ".png")
        written.append(plot_table(card, table, out_dir / name, opts.tolerance_pp))
        plots[table] = name
    sections = card_sections(card, opts, context, plots)
    doc = Document(card_title(context, opts), sections,
                   intro=[Note(context.banner, "danger")] if context.banner else [])
    (out_dir / "model_card.md").write_text(to_markdown(doc))
    (out_dir / "model_card.html").write_text(to_html(doc, base_dir=out_dir))
    written += [out_dir / "model_card.md", out_dir / "model_card.html"]
    return written, sections


__all__ = ["ModelCardError", "ModelCardOptions", "CardContext", "References", "read_references", "load_references", "reproduce",
           "race_scoring_metrics", "binary_race_predictions", "check_slices", "derived_groups", "verdict", "equivalence",
           "rank_verdict", "card_sections", "write_model_card", "plot_table", "BINARY_RACE_METRIC",
           "padding_statement"]
