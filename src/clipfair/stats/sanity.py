"""Sanity gates before any finding (issue 21, build 1), and which disparities are findings (build 2).

Layer: stats.

A model that does not work has nothing to report about groups: its differences are noise. Per
target taxonomy and method, :func:`chance_gates` tests overall accuracy against **chance = the
most common right class's share** of the evaluated images (the accuracy of always answering that
class; never below 1/number of classes) with a Wilson interval at the Bonferroni-adjusted level
over the gates. A gate passes when that interval's lower end exceeds chance.
A model whose weights were randomly initialised (recorded by its backend in ``run.json``'s
``model.random_weights``) fails every gate.

:func:`annotate_findings` adds two columns to ``disparities.csv``: ``finding`` (a candidate finding:
significant after adjustment, a declared direction, an accuracy or a rate of a category the
taxonomy declares as a finding's harm, and a model that passed its gate) and ``note`` (why a
significant row is not a finding, e.g. :data:`AT_CHANCE_NOTE`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .specs import is_accuracy, metric_spec

AT_CHANCE_NOTE = "model at chance: differences are noise"
NOT_A_HARM_NOTE = "rate of a category not declared a harm for findings: described, not a finding"
NO_DIRECTION_NOTE = "no declared direction: described, not a finding"
CHANCE_RULE = ("chance = the share of the most common right class among the evaluated images (the accuracy of "
               "always answering it; at least 1/number of classes)")

GATE_COLUMNS = ("taxonomy", "method", "n", "correct", "accuracy", "ci_low", "ci_high", "adjusted_level",
                "adj_ci_low", "adj_ci_high", "n_classes", "majority_class", "majority_share", "chance",
                "above_chance")


def chance_gates(predictions: pd.DataFrame, n_classes: Mapping[str, int], confidence: float = 0.95
                 ) -> pd.DataFrame:
    """One row per target taxonomy x method: overall accuracy vs chance (see the module doc).

    ``predictions``: ``predictions.parquet``'s columns ``taxonomy``, ``method`` (absent: zero-shot),
    ``true_label`` (the right class) and ``correct``; ``n_classes``: taxonomy -> its number of
    classes (taxonomies not in it have no target and get no gate)."""
    from .metrics import wilson_interval

    rows: list[dict[str, Any]] = []
    if predictions is None or predictions.empty or "correct" not in predictions.columns:
        return pd.DataFrame(columns=list(GATE_COLUMNS))
    p = predictions[predictions["taxonomy"].isin(list(n_classes)) & predictions["correct"].notna()]
    method = p["method"] if "method" in p.columns else pd.Series("zero_shot", index=p.index)
    for (tax, meth), part in p.groupby([p["taxonomy"], method], sort=False):
        n = int(len(part))
        if n == 0:
            continue
        c = int(part["correct"].astype(bool).sum())
        shares = part["true_label"].astype(str).value_counts()
        k = int(n_classes[tax])
        rows.append({"taxonomy": tax, "method": meth, "n": n, "correct": c, "accuracy": c / n,
                     "n_classes": k, "majority_class": str(shares.index[0]),
                     "majority_share": float(shares.iloc[0]) / n})
    out = pd.DataFrame(rows, columns=[c for c in GATE_COLUMNS if c in ("taxonomy", "method", "n", "correct",
                                                                        "accuracy", "n_classes", "majority_class",
                                                                        "majority_share")])
    if out.empty:
        return pd.DataFrame(columns=list(GATE_COLUMNS))
    level = 1.0 - (1.0 - confidence) / len(out)  # Bonferroni over the gates
    lo, hi = wilson_interval(out["correct"].to_numpy(), out["n"].to_numpy(), confidence)
    alo, ahi = wilson_interval(out["correct"].to_numpy(), out["n"].to_numpy(), level)
    out["ci_low"], out["ci_high"] = np.asarray(lo, float), np.asarray(hi, float)
    out["adjusted_level"] = level
    out["adj_ci_low"], out["adj_ci_high"] = np.asarray(alo, float), np.asarray(ahi, float)
    out["chance"] = np.maximum(out["majority_share"].to_numpy(float), 1.0 / out["n_classes"].to_numpy(float))
    out["above_chance"] = out["adj_ci_low"].to_numpy(float) > out["chance"].to_numpy(float)
    return out[list(GATE_COLUMNS)]


def verdict(gates: pd.DataFrame, random_weights: str | None = None) -> dict[str, Any]:
    """run.json's ``sanity`` record: the gates, the failures and the banner ('' when the model works)."""
    failed = [] if gates is None or gates.empty else [
        f"{r.taxonomy} ({r.method}) {100 * r.accuracy:.1f}% [{100 * r.adj_ci_low:.1f}, {100 * r.adj_ci_high:.1f}] "
        f"vs chance {100 * r.chance:.1f}%" for r in gates.itertuples(index=False) if not bool(r.above_chance)]
    why = []
    if random_weights:
        why.append(f"its weights were randomly initialised ({random_weights})")
    if failed:
        why.append("its accuracy does not exceed chance (adjusted interval) on " + "; ".join(failed))
    banner = ("THE MODEL DOES NOT WORK: " + " and ".join(why) + ". Differences between groups below are "
              f"labelled \"{AT_CHANCE_NOTE}\", not findings.") if why else ""
    at_chance = [] if gates is None or gates.empty else [
        [r.taxonomy, r.method] for r in gates.itertuples(index=False) if not bool(r.above_chance)]
    return {"chance_rule": CHANCE_RULE, "random_weights": random_weights or None,
            "gates": [] if gates is None or gates.empty else json.loads(gates.to_json(orient="records")),
            "at_chance": at_chance, "all_at_chance": bool(gates is not None and len(gates) and len(at_chance) == len(gates)),
            "ok": not why, "banner": banner}


def noise_keys(sanity: Mapping[str, Any] | None) -> tuple[bool, set[tuple[str, str]]]:
    """(every row is noise, {(taxonomy, method)} whose gate failed) of a ``sanity`` record."""
    if not sanity:
        return False, set()
    everything = bool(sanity.get("random_weights")) or bool(sanity.get("all_at_chance"))
    return everything, {(str(t), str(m)) for t, m in sanity.get("at_chance", [])}


def annotate_findings(disp: pd.DataFrame, findings: Mapping[str, Sequence[str]],
                      sanity: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``disparities.csv`` plus ``finding`` and ``note`` (see the module doc). ``findings``:
    taxonomy -> the categories whose rate may be a finding (:attr:`Taxonomy.findings`)."""
    d = disp.copy()
    attrs = dict(getattr(disp, "attrs", {}))
    if d.empty:
        d["finding"] = pd.Series(dtype=bool)
        d["note"] = pd.Series(dtype=object)
        d.attrs = attrs
        return d
    everything, failed = noise_keys(sanity)
    sig = d["significant"].fillna(False).astype(bool).to_numpy()
    cat = d["category"].astype(object).where(d["category"].notna(), "").astype(str)
    notes, flags = [], []
    for i, r in enumerate(d.itertuples(index=False)):
        spec = metric_spec(str(r.metric))
        directed = str(r.direction) in ("higher_is_better", "lower_is_better")
        if spec is not None and spec.direction_from_harm:
            candidate = directed and cat.iloc[i] in set(findings.get(str(r.taxonomy), ()))
            why = "" if candidate else (NOT_A_HARM_NOTE if directed else NO_DIRECTION_NOTE)
        else:
            candidate = directed
            why = "" if directed else NO_DIRECTION_NOTE
        if everything or (str(r.taxonomy), str(r.method)) in failed:
            candidate, why = False, AT_CHANCE_NOTE
        flags.append(bool(candidate and sig[i]))
        notes.append(why if sig[i] or why == AT_CHANCE_NOTE else "")
    d["finding"] = flags
    d["note"] = notes
    d.attrs = attrs
    return d


def finding_rows(disp: pd.DataFrame) -> pd.DataFrame:
    """The rows that are findings (the ``finding`` column; older tables: significant rows with a
    declared direction, accuracies and harm rates only)."""
    if disp is None or disp.empty:
        return disp
    if "finding" in disp.columns:
        return disp[disp["finding"].fillna(False).astype(bool)]
    directed = disp["direction"].astype(str).isin(["higher_is_better", "lower_is_better"])
    ok = [is_accuracy(m) or d == "lower_is_better" for m, d in zip(disp["metric"], disp["direction"])]
    return disp[disp["significant"].fillna(False).astype(bool) & directed & np.array(ok, dtype=bool)]


__all__ = ["AT_CHANCE_NOTE", "CHANCE_RULE", "GATE_COLUMNS", "NOT_A_HARM_NOTE", "annotate_findings",
           "chance_gates", "finding_rows", "noise_keys", "verdict"]
