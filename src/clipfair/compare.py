"""Side-by-side comparison of taxonomy variants, with significance tests.

Two variants evaluated on the *same images* are compared image by image: for every group the
difference in a rate (or accuracy) is tested with McNemar's exact test on the discordant
images (those the two variants treat differently). Variants evaluated on different images
are compared with a two-proportion z-test. p-values are corrected for multiple comparisons
over the whole table (Holm-Bonferroni by default, or Benjamini-Hochberg); both the test and
the correction are written into every row and into the Markdown header.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom, norm

from .metrics import DEFAULT_SLICES, _slice_attrs, _value_order, slice_name
from .outputs import safe_filename

log = logging.getLogger(__name__)

COMPARISON_COLUMNS = ("baseline", "variant", "metric", "category", "slice", "group", "n",
                      "baseline_value", "variant_value", "diff", "diff_ci_low", "diff_ci_high",
                      "test", "p_value", "p_adjusted", "significant")


def slice_groups(frame: pd.DataFrame, s: Any) -> pd.Series | None:
    """Group label of each row for slice ``s`` (NA where an attribute is missing);
    None when the frame lacks one of the slice's attribute columns."""
    attrs = _slice_attrs(s)
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


def group_order(frame: pd.DataFrame, s: Any, labels: Sequence[str]) -> list[str]:
    """Groups of a slice in canonical order (e.g. FairFace's race order, age bins ascending)."""
    attrs = _slice_attrs(s)
    if not attrs:
        return ["all"]
    orders = [_value_order(a, frame[a].dropna().astype(str).unique()) for a in attrs]
    rank = {}
    import itertools

    for i, combo in enumerate(itertools.product(*orders)):
        rank["+".join(combo)] = i
    return sorted(set(labels), key=lambda g: (rank.get(g, len(rank)), g))


def _adjust(p: np.ndarray, step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply a step-wise correction to the non-NaN p-values (sorted ascending), keep NaNs."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    if len(q) == 0:
        return out
    order = np.argsort(q, kind="mergesort")
    res = np.empty(len(q))
    res[order] = np.minimum(step(q[order], len(q)), 1.0)
    out[ok] = res
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error)."""
    return _adjust(p, lambda q, m: np.maximum.accumulate((m - np.arange(m)) * q))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate)."""
    return _adjust(p, lambda q, m: np.minimum.accumulate((q * m / np.arange(1, m + 1))[::-1])[::-1])


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}


def mcnemar_exact(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Two-sided exact McNemar p-value from discordant counts b and c (1.0 when b + c == 0)."""
    b, c = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    n = b + c
    with np.errstate(invalid="ignore"):
        p = 2.0 * binom.cdf(np.minimum(b, c), n, 0.5)
    return np.where(n == 0, 1.0, np.minimum(p, 1.0))


def two_proportion_z(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Two-sided pooled two-proportion z-test p-value (NaN when undefined)."""
    x1, n1, x2, n2 = (np.asarray(a, dtype=float) for a in (x1, n1, x2, n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        pool = (x1 + x2) / (n1 + n2)
        se = np.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
        z = (x2 / n2 - x1 / n1) / se
        p = 2 * norm.sf(np.abs(z))
    same = (se == 0) & (x1 / np.where(n1 == 0, np.nan, n1) == x2 / np.where(n2 == 0, np.nan, n2))
    return np.where(same, 1.0, p)


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


def compare_paired(predictions: pd.DataFrame, baseline: str, variants: Sequence[str],
                   categories: Mapping[str, Sequence[str]] | None = None,
                   slices: Sequence[Any] = DEFAULT_SLICES, method: str = "zero_shot",
                   confidence: float = 0.95, correction: str = "holm", alpha: float = 0.05) -> pd.DataFrame:
    """Compare each variant taxonomy with ``baseline`` on the same images (McNemar exact).

    Accuracy is compared when both have a target; rates for every category both share.
    diff = variant - baseline; its CI is the Wald interval of a paired difference.
    """
    categories = categories or {}
    pred = predictions[predictions["method"] == method] if "method" in predictions else predictions
    base = pred[pred["taxonomy"] == baseline].set_index("image_id")
    if base.empty:
        raise ValueError(f"baseline taxonomy {baseline!r} not in predictions; have "
                         f"{sorted(pred['taxonomy'].unique())}")
    z = norm.ppf(0.5 + confidence / 2)
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
                agg = df.groupby("g", sort=False).agg(n=("xb", "size"), sb=("xb", "sum"), sv=("xv", "sum"),
                                                      b=("b", "sum"), c=("c", "sum"))
                for grp in group_order(bb, s, agg.index.tolist()):
                    r = agg.loc[grp]
                    n, b_, c_ = float(r["n"]), float(r["b"]), float(r["c"])
                    diff = (c_ - b_) / n
                    se = np.sqrt(max(b_ + c_ - (c_ - b_) ** 2 / n, 0.0)) / n
                    rows.append({"baseline": baseline, "variant": v, "metric": metric, "category": cat,
                                 "slice": slice_name(s), "group": grp, "n": int(n),
                                 "baseline_value": r["sb"] / n, "variant_value": r["sv"] / n,
                                 "diff": diff, "diff_ci_low": diff - z * se, "diff_ci_high": diff + z * se,
                                 "test": "mcnemar_exact", "p_value": float(mcnemar_exact(b_, c_))})
    return _finish(rows, correction, alpha)


def compare_unpaired(metrics: pd.DataFrame, baseline: str, variants: Sequence[str],
                     correction: str = "holm", alpha: float = 0.05, confidence: float = 0.95,
                     method: str = "zero_shot") -> pd.DataFrame:
    """Compare variants evaluated on different images, from metrics counts (two-proportion z)."""
    m = metrics[metrics["method"] == method]
    key = ["metric", "category", "slice", "group"]
    base = m[m["taxonomy"] == baseline].set_index(key)
    z = norm.ppf(0.5 + confidence / 2)
    rows = []
    for v in variants:
        var = m[m["taxonomy"] == v].set_index(key)
        j = base.join(var, lsuffix="_b", rsuffix="_v", how="inner")
        if j.empty:
            continue
        p1, p2 = j["count_b"] / j["n_b"], j["count_v"] / j["n_v"]
        se = np.sqrt(p1 * (1 - p1) / j["n_b"] + p2 * (1 - p2) / j["n_v"])
        pv = two_proportion_z(j["count_b"], j["n_b"], j["count_v"], j["n_v"])
        for (metric, cat, sl, grp), r, d, s_, p in zip(j.index, j.itertuples(), p2 - p1, se, pv):
            rows.append({"baseline": baseline, "variant": v, "metric": metric, "category": cat, "slice": sl,
                         "group": grp, "n": int(min(r.n_b, r.n_v)), "baseline_value": r.value_b,
                         "variant_value": r.value_v, "diff": d, "diff_ci_low": d - z * s_,
                         "diff_ci_high": d + z * s_, "test": "two_proportion_z", "p_value": p})
    return _finish(rows, correction, alpha)


def _finish(rows: list[dict[str, Any]], correction: str, alpha: float) -> pd.DataFrame:
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    df = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_adjusted", "significant")])
    df["p_adjusted"] = CORRECTIONS[correction](df["p_value"].to_numpy()) if len(df) else []
    df["significant"] = df["p_adjusted"] < alpha
    df.attrs.update(correction=correction, alpha=alpha)
    return df[list(COMPARISON_COLUMNS)]


def side_by_side(cmp: pd.DataFrame) -> pd.DataFrame:
    """One row per metric x category x slice x group; the baseline's value and every
    variant's value side by side, each variant followed by its significance flag."""
    key = ["metric", "category", "slice", "group"]
    if cmp.empty:
        return pd.DataFrame(columns=key)
    base = cmp.drop_duplicates(key).set_index(key)[["n", "baseline_value"]]
    base = base.rename(columns={"baseline_value": str(cmp["baseline"].iloc[0])})
    cols = [base]
    for v, part in cmp.groupby("variant", sort=False):
        part = part.set_index(key)
        cols.append(part[["variant_value", "significant"]].rename(
            columns={"variant_value": str(v), "significant": f"{v} significant"}))
    return pd.concat(cols, axis=1).reset_index()


def comparison_markdown(cmp: pd.DataFrame, correction: str, alpha: float, max_rows: int = 60) -> str:
    tests = ", ".join(sorted(cmp["test"].unique())) if len(cmp) else "none"
    corr = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg"}[correction]
    lines = ["# Taxonomy variant comparison", "",
             f"Test: {tests} (mcnemar_exact: paired, same images; two_proportion_z: unpaired). "
             f"Multiple-comparison correction: {corr} over all {len(cmp)} comparisons; "
             f"significant = adjusted p < {alpha}.", ""]
    wide = side_by_side(cmp)
    variants = list(dict.fromkeys(cmp["variant"])) if len(cmp) else []
    for (metric, cat), part in wide.groupby(["metric", "category"], sort=False):
        part = part[part["slice"].isin(["overall", "race", "gender", "age"])]
        if part.empty:
            continue
        base = str(cmp["baseline"].iloc[0])
        lines += [f"## Side by side: {metric}{f' of {cat!r}' if cat else ''} (* significant vs {base})", "",
                  "| slice | group | n | " + " | ".join([base, *variants]) + " |",
                  "|---|---|---:|" + "---:|" * (1 + len(variants))]
        for r in part.to_dict("records"):
            cells = [f"{100 * r[base]:.1f}%"] + [
                "–" if r.get(v) != r.get(v) else f"{100 * r[v]:.1f}%{'*' if r.get(f'{v} significant') is True else ''}"
                for v in variants]
            lines.append(f"| {r['slice']} | {r['group']} | {int(r['n'])} | " + " | ".join(cells) + " |")
        lines.append("")
    for (b, v), part in cmp.groupby(["baseline", "variant"], sort=False):
        sig = part[part["significant"]]
        lines += [f"## {v} vs {b}", "",
                  f"{len(sig)} of {len(part)} group differences are significant.", ""]
        show = part.reindex(part["diff"].abs().sort_values(ascending=False).index).head(max_rows)
        lines += ["| metric | category | slice | group | n | baseline | variant | diff [CI] | p adj. | sig. |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|:---:|"]
        for r in show.itertuples():
            lines.append(f"| {r.metric} | {r.category or '-'} | {r.slice} | {r.group} | {r.n} | "
                         f"{100 * r.baseline_value:.1f}% | {100 * r.variant_value:.1f}% | "
                         f"{100 * r.diff:+.1f} [{100 * r.diff_ci_low:+.1f}, {100 * r.diff_ci_high:+.1f}] | "
                         f"{r.p_adjusted:.3g} | {'✔' if r.significant else ''} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_variant_shift(cmp: pd.DataFrame, metric: str, category: str, slice: str, path: Path) -> Path:
    """Each group's value moving from the baseline across the variants (a slope chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = cmp[(cmp["metric"] == metric) & (cmp["category"] == category) & (cmp["slice"] == slice)]
    if part.empty:
        raise ValueError(f"no comparison rows for {metric}/{category}/{slice}")
    variants = [part["baseline"].iloc[0], *dict.fromkeys(part["variant"])]
    groups = list(dict.fromkeys(part["group"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(variants) + 3), 4.5), dpi=120)
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for i, g in enumerate(groups):
        pg = part[part["group"] == g].set_index("variant")
        ys = [pg["baseline_value"].iloc[0]] + [pg["variant_value"].get(v, np.nan) for v in variants[1:]]
        ax.plot(range(len(variants)), 100 * np.asarray(ys, float), marker="o", color=cmap(i % cmap.N), label=g)
        for j, v in enumerate(variants[1:], start=1):
            if v in pg.index and bool(pg.loc[v, "significant"]):
                ax.plot(j, 100 * pg.loc[v, "variant_value"], marker="*", ms=13, color=cmap(i % cmap.N))
    ax.set_xticks(range(len(variants)), variants, rotation=15, ha="right")
    what = "accuracy" if metric == "accuracy" else f"rate of '{category}'"
    ax.set_ylabel(f"{what} (%)")
    ax.set_title(f"{what} by {slice} across taxonomy variants (★ significant vs baseline)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_comparison(cmp: pd.DataFrame, out_dir: Path, correction: str, alpha: float,
                     plot_slices: Sequence[str] = ("race", "age")) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "comparison.csv", out_dir / "comparison.md", out_dir / "comparison_side_by_side.csv"]
    cmp.to_csv(written[0], index=False, float_format="%.6g", lineterminator="\n")
    side_by_side(cmp).to_csv(written[2], index=False, float_format="%.6g", lineterminator="\n")
    written[1].write_text(comparison_markdown(cmp, correction, alpha))
    for (metric, cat, sl), _ in cmp.groupby(["metric", "category", "slice"], sort=False):
        if sl not in plot_slices:
            continue
        name = safe_filename(f"compare_{metric}{'_' + cat if cat else ''}_{sl}", ".png")
        written.append(plot_variant_shift(cmp, metric, cat, sl, out_dir / name))
    return written


def _load_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from .outputs import require_finished_run

    require_finished_run(run_dir)
    rec = json.loads((run_dir / "run.json").read_text())
    return (pd.read_parquet(run_dir / "predictions.parquet"),
            pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, na_values=[""]).fillna({"category": ""}),
            rec)


def compare_runs(run_dirs: Sequence[Path], baseline: str | None = None, correction: str = "holm",
                 alpha: float = 0.05, method: str = "zero_shot") -> pd.DataFrame:
    """Compare every taxonomy of several run directories against ``baseline``.

    Variants are named ``<run>/<taxonomy>``. Runs on the same dataset (equal fingerprints)
    are compared image by image; otherwise from their counts.
    """
    preds, mets, fps = [], [], set()
    for d in run_dirs:
        p, m, rec = _load_run(Path(d))
        tag = Path(d).name
        p = p.assign(taxonomy=tag + "/" + p["taxonomy"].astype(str))
        m = m.assign(taxonomy=tag + "/" + m["taxonomy"].astype(str))
        preds.append(p)
        mets.append(m)
        fps.add((rec.get("dataset") or {}).get("fingerprint"))
    pred, met = pd.concat(preds, ignore_index=True), pd.concat(mets, ignore_index=True)
    names = list(dict.fromkeys(pred["taxonomy"]))
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError("need at least two taxonomy variants with distinct <run>/<taxonomy> names")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} not found; variants: {', '.join(names)}")
    variants = [n for n in names if n != baseline]
    if len(fps) == 1 and None not in fps:
        return compare_paired(pred, baseline, variants, correction=correction, alpha=alpha, method=method)
    return compare_unpaired(met, baseline, variants, correction=correction, alpha=alpha, method=method)


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipfair compare",
                                 description="Compare taxonomy variants across clipfair run directories.")
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (each with predictions.parquet)")
    ap.add_argument("--baseline", default=None, help="variant to compare against, as <run>/<taxonomy> "
                                                     "(default: the first)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: <first run>/compare)")
    ap.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm")
    ap.add_argument("--alpha", type=float, default=0.05)
    a = ap.parse_args(list(argv))
    cmp = compare_runs(a.runs, a.baseline, a.correction, a.alpha)
    out = a.out or (a.runs[0] / "compare")
    written = write_comparison(cmp, out, a.correction, a.alpha)
    print(f"{int(cmp['significant'].sum())} of {len(cmp)} differences significant "
          f"({a.correction}, alpha {a.alpha}); wrote {written[1]}")
    return 0
