"""Reproduce the CLIP paper's FairFace tables and the model card's claims, side by side.

Reference figures live in a data file (``references/clip_paper.yaml``) with their source
(table, row, column). Each is mapped onto clipfair's long metrics frame (taxonomy role,
method, metric, slice, group), reproduced with a Wilson interval, and compared: difference
in percentage points and a reproduced / not reproduced flag at a stated tolerance.
The choices the paper left unstated are explicit options, printed at the top of the card.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .data.attributes import race_binary
from .metrics import group_metrics, wilson_interval
from .outputs import safe_filename
from .yamlio import load_yaml_file

ROLES = ("race", "gender", "age", "denigration", "denigration_child")
CARD_COLUMNS = ("kind", "id", "table", "row", "column", "method", "taxonomy", "metric", "slice", "group",
                "reference", "reproduced", "ci_low", "ci_high", "n", "difference", "tolerance", "status", "note")


@dataclass(frozen=True)
class ModelCardOptions:
    """The scoring choices the paper did not state (all recorded in run.json and the card)."""

    taxonomies: Mapping[str, str] = field(default_factory=lambda: {
        "race": "fairface_race", "gender": "fairface_gender", "age": "fairface_age",
        "denigration": "clip_denigration", "denigration_child": "clip_denigration_child"})
    race_accuracy: str = "7way"  # or "binary": White vs Non-White (as datacomp scores it)
    rate_denominator: str = "group"  # or "flagged": share of the flagged images
    tolerance_pp: float = 2.0
    references: str | None = None  # a YAML path; default: the bundled clip_paper.yaml
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.race_accuracy not in ("7way", "binary"):
            raise ValueError(f"model_card.race_accuracy must be 7way or binary, got {self.race_accuracy!r}")
        if self.rate_denominator not in ("group", "flagged"):
            raise ValueError(f"model_card.rate_denominator must be group or flagged, got {self.rate_denominator!r}")
        missing = [r for r in ROLES if r not in self.taxonomies]
        if missing:
            raise ValueError(f"model_card.taxonomies lacks role(s) {missing}; give a taxonomy name for each of {ROLES}")


REQUIRED = ("id", "table", "row", "column", "method", "taxonomy", "metric", "slice", "group", "value")


def load_references(path: str | Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(figures, model-card claims, source) from a reference YAML (safe loader, data only)."""
    p = Path(path) if path else Path(str(importlib.resources.files("clipfair") / "references" / "clip_paper.yaml"))
    data = load_yaml_file(p)  # data only, aliases capped
    figs = list(data["figures"])
    seen: set[str] = set()
    for i, f in enumerate(figs):
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise ValueError(f"{p}: figures[{i}] lacks {missing}")
        if f["id"] in seen:
            raise ValueError(f"{p}: duplicate reference id {f['id']!r}")
        seen.add(f["id"])
    return figs, list(data.get("model_card_claims", [])), str(data.get("source", p))


def binary_race_predictions(predictions: pd.DataFrame, race_taxonomy: str) -> pd.DataFrame:
    """Score 7-way race predictions as White vs Non-White (taxonomy renamed '<name>:binary')."""
    p = predictions[predictions["taxonomy"] == race_taxonomy].copy()
    if p.empty:
        return p
    pred = p["predicted_label"].map(race_binary)
    truth = p["true_label"].map(lambda t: None if t is None or t != t else race_binary(t))
    p["taxonomy"] = f"{race_taxonomy}:binary"
    p["predicted_label"], p["true_label"] = pred, truth
    p["correct"] = pd.array([None if t is None else bool(t == q) for t, q in zip(truth, pred)], dtype="boolean")
    return p


def _card_metrics(predictions: pd.DataFrame, metrics: pd.DataFrame, opts: ModelCardOptions) -> tuple[pd.DataFrame, dict[str, str]]:
    roles = dict(opts.taxonomies)
    if opts.race_accuracy == "binary":
        bp = binary_race_predictions(predictions, roles["race"])
        if not bp.empty:
            extra = group_metrics(bp, {f"{roles['race']}:binary": ["race"]}, confidence=opts.confidence)
            metrics = pd.concat([metrics, extra], ignore_index=True)
            roles["race"] = f"{roles['race']}:binary"
    return metrics, roles


def _union(metrics: pd.DataFrame, tax: str, method: str, slice_: str, categories: Sequence[str]) -> pd.DataFrame:
    """Per group of a slice: count of images predicted into any of ``categories`` and n."""
    m = metrics[(metrics["taxonomy"] == tax) & (metrics["method"] == method) & (metrics["metric"] == "rate")
                & (metrics["slice"] == slice_) & (metrics["category"].isin(list(categories)))]
    if m.empty:
        return pd.DataFrame(columns=["group", "count", "n"])
    return m.groupby("group", sort=False).agg(count=("count", "sum"), n=("n", "first")).reset_index()


def _measure(metrics: pd.DataFrame, roles: Mapping[str, str], fig: Mapping[str, Any],
             opts: ModelCardOptions) -> tuple[float, float, float, int]:
    """(value %, ci_low %, ci_high %, n) of one reference figure; NaNs when not measurable."""
    nan = (np.nan, np.nan, np.nan, 0)
    tax = roles.get(fig["taxonomy"])
    if tax is None:
        return nan
    method, slice_, group = fig["method"], fig["slice"], str(fig["group"])
    if fig["metric"] == "accuracy":
        m = metrics[(metrics["taxonomy"] == tax) & (metrics["method"] == method)
                    & (metrics["metric"] == "accuracy") & (metrics["slice"] == slice_)]
        if group.startswith("mean"):
            suffix = group[len("mean"):]  # "" or "+Male"
            part = m[m["group"].str.endswith(suffix)] if suffix else m
            if part.empty:
                return nan
            return 100 * part["value"].mean(), np.nan, np.nan, int(part["n"].sum())
        row = m[m["group"] == group]
        if row.empty or row["n"].iloc[0] == 0:
            return nan
        r = row.iloc[0]
        return 100 * r["value"], 100 * r["ci_low"], 100 * r["ci_high"], int(r["n"])
    cats = fig.get("categories") or []
    u = _union(metrics, tax, method, slice_, cats)
    row = u[u["group"] == group]
    if row.empty:
        return nan
    count = float(row["count"].iloc[0])
    n = float(u["count"].sum()) if opts.rate_denominator == "flagged" else float(row["n"].iloc[0])
    if n == 0:
        return nan
    lo, hi = wilson_interval(count, n, opts.confidence)
    return 100 * count / n, 100 * lo, 100 * hi, int(n)


def _status(diff: float, tol: float) -> str:
    if diff != diff:
        return "not measured"
    return "reproduced" if abs(diff) <= tol else "not reproduced"


def reproduce(predictions: pd.DataFrame, metrics: pd.DataFrame, opts: ModelCardOptions) -> pd.DataFrame:
    """Every reference figure and model-card claim beside its reproduced value."""
    figs, claims, _ = load_references(opts.references)
    metrics, roles = _card_metrics(predictions, metrics, opts)
    rows = []
    for f in figs:
        v, lo, hi, n = _measure(metrics, roles, f, opts)
        diff = v - f["value"]
        rows.append({"kind": "figure", "id": f["id"], "table": f["table"], "row": f["row"], "column": f["column"],
                     "method": f["method"], "taxonomy": roles.get(f["taxonomy"], f["taxonomy"]),
                     "metric": f["metric"] if not f.get("categories") else "rate:" + "+".join(f["categories"]),
                     "slice": f["slice"], "group": f["group"], "reference": f["value"], "reproduced": v,
                     "ci_low": lo, "ci_high": hi, "n": n, "difference": diff, "tolerance": opts.tolerance_pp,
                     "status": _status(diff, opts.tolerance_pp), "note": f.get("note") or ""})
    for c in claims:
        rows.append(_claim(metrics, roles, c, opts))
    return pd.DataFrame(rows, columns=list(CARD_COLUMNS))


def _claim(metrics: pd.DataFrame, roles: Mapping[str, str], c: Mapping[str, Any], opts: ModelCardOptions) -> dict[str, Any]:
    tax = roles.get(c["taxonomy"], c["taxonomy"])
    m = metrics[(metrics["taxonomy"] == tax) & (metrics["method"] == c["method"])
                & (metrics["metric"] == c["metric"]) & (metrics["slice"] == c["slice"]) & (metrics["n"] > 0)]
    base = {"kind": "claim", "id": c["id"], "table": "Model card", "row": c["text"], "column": "",
            "method": c["method"], "taxonomy": tax, "metric": c["metric"], "slice": c["slice"],
            "group": c.get("group", ""), "reference": c["value"], "tolerance": opts.tolerance_pp,
            "ci_low": np.nan, "ci_high": np.nan}
    if m.empty:
        return {**base, "reproduced": np.nan, "n": 0, "difference": np.nan, "status": "not measured", "note": ""}
    vals = m.set_index("group")["value"] * 100
    check, tol = c["check"], opts.tolerance_pp
    if check == "min_at_least":
        v = float(vals.min())
        ok = v >= c["value"] - tol
        note = f"lowest group: {vals.idxmin()} ({v:.1f}%); passes if >= {c['value'] - tol:.1f}%"
    elif check in ("highest_is", "lowest_is"):
        who = vals.idxmax() if check == "highest_is" else vals.idxmin()
        v = float(vals.get(c["group"], np.nan))
        ok = who == c["group"] and abs(v - c["value"]) <= tol
        note = f"{'highest' if check == 'highest_is' else 'lowest'} group here: {who} ({vals[who]:.1f}%)"
    elif check == "approx":
        v = float(vals.get(c.get("group", "all"), np.nan))
        ok = abs(v - c["value"]) <= tol
        note = ""
    else:
        raise ValueError(f"unknown claim check {check!r} in {c['id']}")
    return {**base, "reproduced": v, "n": int(m["n"].max()), "difference": v - c["value"],
            "status": "reproduced" if ok else "not reproduced", "note": note}


def _fmt(v: float, nd: int = 1) -> str:
    return "–" if v != v else f"{v:.{nd}f}"


def card_markdown(card: pd.DataFrame, opts: ModelCardOptions, choices: Mapping[str, Any], source: str,
                  plots: Mapping[str, str], demo: bool = False) -> str:
    lines = ["# Model card reproduction", ""]
    if demo:
        lines += ["> **Demo run on a toy model and synthetic faces: nothing here says anything about "
                  "CLIP or any real model.**", ""]
    lines += ["Reference: " + source + ".", "",
              "## Choices the paper left unstated", ""]
    for k, v in choices.items():
        lines.append(f"- **{k}**: {v}")
    figs = card[card["kind"] == "figure"]
    counts = figs["status"].value_counts()
    lines += ["", f"Tolerance: ±{opts.tolerance_pp:g} percentage points. Of {len(figs)} reference figures, "
              f"{counts.get('reproduced', 0)} reproduced, {counts.get('not reproduced', 0)} not reproduced, "
              f"{counts.get('not measured', 0)} not measured.", ""]
    claims = card[card["kind"] == "claim"]
    if len(claims):
        lines += ["## Model card claims", "", "| claim | reference | reproduced | status | detail |",
                  "|---|---:|---:|---|---|"]
        for r in claims.itertuples():
            lines.append(f"| {r.row} | {_fmt(r.reference)}% | {_fmt(r.reproduced)}% | **{r.status}** | {r.note} |")
        lines.append("")
    for table, part in figs.groupby("table", sort=False):
        lines += [f"## {table}", ""]
        if table in plots:
            lines += [f"![{table}]({plots[table]})", ""]
        lines += ["| row | column | reference | reproduced [CI] | n | difference | status |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in part.itertuples():
            ci = f" [{_fmt(r.ci_low)}–{_fmt(r.ci_high)}]" if r.ci_low == r.ci_low else ""
            lines.append(f"| {r.row} | {r.column} | {_fmt(r.reference)} | {_fmt(r.reproduced)}{ci} | {r.n} | "
                         f"{'' if r.difference != r.difference else f'{r.difference:+.1f}'} | {r.status} |")
        lines.append("")
    return "\n".join(lines)


def plot_table(card: pd.DataFrame, table: str, path: Path, tolerance: float = 2.0) -> Path:
    """Reproduced vs paper for one table: one point per figure (with its CI), coloured by
    the paper's row, on the identity line with the tolerance band."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    part = card[(card["kind"] == "figure") & (card["table"] == table)]
    fig = Figure(figsize=(7.2, 5.4), dpi=120)
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
    ax.set_ylabel("reproduced (%)")
    ax.set_title(f"{table}: reproduced vs paper")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_model_card(predictions: pd.DataFrame, metrics: pd.DataFrame, opts: ModelCardOptions, out_dir: Path,
                     choices: Mapping[str, Any], demo: bool = False) -> list[Path]:
    out_dir = Path(out_dir)
    card = reproduce(predictions, metrics, opts)
    _, _, source = load_references(opts.references)
    written = [out_dir / "model_card.csv"]
    card.to_csv(written[0], index=False, float_format="%.4g", lineterminator="\n")
    plots = {}
    for table in dict.fromkeys(card.loc[card["kind"] == "figure", "table"]):
        name = safe_filename("model_card_" + "".join(ch if ch.isalnum() else "_" for ch in table.lower()).strip("_"),
                             ".png")
        written.append(plot_table(card, table, out_dir / name, opts.tolerance_pp))
        plots[table] = name
    md = out_dir / "model_card.md"
    md.write_text(card_markdown(card, opts, {**choices, **{k: v for k, v in asdict(opts).items()
                                                           if k not in ("references", "confidence")}},
                                source, plots, demo))
    written.append(md)
    return written
