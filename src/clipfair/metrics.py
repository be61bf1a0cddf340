"""Per-group metrics with Wilson confidence intervals, and between-group disparities.

Pure functions on pandas DataFrames. The input is the long per-image predictions frame
(one row per image x taxonomy x method); the output is a long metrics frame with one row
per taxonomy x method x metric x category x slice x group (see :func:`group_metrics`).

Two metrics are computed:

``accuracy``
    share of a group's images with a target (``true_label`` not null) that were
    classified correctly; ``category`` is the empty string.
``rate``
    share of a group's images that were put into a reporting category
    (``predicted_category``), for every category of every taxonomy, including
    categories nobody was predicted into (count 0, value 0).

A *slice* is ``"overall"`` (one group, ``"all"``), an attribute column (``"race"``) or a
tuple of attribute columns (an intersection, named ``"race+gender"``, groups named like
``"White+Male"``).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from clipfair.data.attributes import AGE_BINS, GENDERS, RACE_BINARY, RACES

__all__ = [
    "DEFAULT_SLICES",
    "METRIC_COLUMNS",
    "DISPARITY_COLUMNS",
    "HIGHER_IS_BETTER",
    "wilson_interval",
    "slice_name",
    "group_metrics",
    "disparities",
]

DEFAULT_SLICES: tuple = (
    "overall",
    "race",
    "gender",
    "age",
    "race_binary",
    ("race", "gender"),
    ("race_binary", "gender"),
    ("age", "gender"),
)

METRIC_COLUMNS: tuple[str, ...] = (
    "taxonomy", "method", "metric", "category", "slice", "group",
    "n", "count", "value", "ci_low", "ci_high",
)
DISPARITY_COLUMNS: tuple[str, ...] = (
    "taxonomy", "method", "metric", "category", "slice", "n_groups",
    "best_group", "best_value", "worst_group", "worst_value", "gap", "ratio",
)

#: whether a higher value of a metric is the better outcome for a group. A rate is the
#: share of a group's images put into a category: lower = less often labelled so.
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "rate": False,
                                     # race accuracy scored White vs Non-White (model card runs)
                                     "accuracy_race_binary": True}

#: canonical group order of the known attributes; unknown values come after, sorted
CANONICAL_ORDER: dict[str, tuple[str, ...]] = {
    "race": RACES,
    "gender": GENDERS,
    "age": AGE_BINS,
    "race_binary": RACE_BINARY,
}

_REQUIRED = ("taxonomy", "method", "predicted_category")


# --------------------------------------------------------------------------- Wilson CI

def wilson_interval(count, n, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion ``count / n``.

    ``count`` and ``n`` may be scalars (returns a pair of floats) or array-likes
    (returns a pair of float arrays, broadcast). ``n == 0`` gives ``(nan, nan)``.
    The critical value is ``z = norm.ppf(1 - (1 - confidence) / 2)``.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    scalar = np.ndim(count) == 0 and np.ndim(n) == 0
    k = np.asarray(count, dtype=float)
    m = np.asarray(n, dtype=float)
    k, m = np.broadcast_arrays(k, m)
    bad = (m < 0) | (k < 0) | (k > m)
    if np.any(bad & ~np.isnan(k) & ~np.isnan(m)):
        raise ValueError("wilson_interval needs 0 <= count <= n")
    z = float(norm.ppf(1.0 - (1.0 - float(confidence)) / 2.0))
    z2 = z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / m
        denom = 1.0 + z2 / m
        center = (p + z2 / (2.0 * m)) / denom
        half = z * np.sqrt(p * (1.0 - p) / m + z2 / (4.0 * m * m)) / denom
        low = np.clip(center - half, 0.0, 1.0)
        high = np.clip(center + half, 0.0, 1.0)
    # exact bounds at the edges (the closed form gives them up to rounding)
    low = np.where(k == 0, 0.0, low)
    high = np.where(k == m, 1.0, high)
    empty = ~(m > 0)
    low = np.where(empty, np.nan, low)
    high = np.where(empty, np.nan, high)
    if scalar:
        return float(low), float(high)
    return low, high


# --------------------------------------------------------------------------- slices

def _slice_attrs(s) -> tuple[str, ...]:
    """Attribute columns of a slice: () for overall."""
    if isinstance(s, str):
        return () if s == "overall" else (s,)
    attrs = tuple(s)
    if not attrs or not all(isinstance(a, str) for a in attrs):
        raise ValueError(f"a slice is 'overall', an attribute name or a tuple of names; got {s!r}")
    if "overall" in attrs:
        raise ValueError(f"'overall' cannot be part of an intersection: {s!r}")
    return attrs


def slice_name(s) -> str:
    """``"overall"``, ``"race"``, or ``"race+gender"`` for a tuple slice."""
    attrs = _slice_attrs(s)
    return "+".join(attrs) if attrs else "overall"


def _value_order(attribute: str, values: Iterable[str]) -> list[str]:
    """Canonical values present first (canonical order), then unknown ones sorted."""
    present = set(values)
    canon = CANONICAL_ORDER.get(attribute, ())
    known = [v for v in canon if v in present]
    rest = sorted(present.difference(canon))
    return known + rest


def _as_str(v) -> str:
    return v if isinstance(v, str) else str(v)


def _factor(col: pd.Series, order=None) -> pd.Categorical:
    """Categorical of a column's values as strings (nulls stay null).

    ``order(values) -> list`` fixes the category order; default: first appearance.
    Works on the unique values only, so it is fast on millions of rows.
    """
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    names = [_as_str(u) for u in uniques]
    distinct = list(dict.fromkeys(names))
    cats = list(order(distinct)) if order is not None else distinct
    pos = {c: i for i, c in enumerate(cats)}
    remap = np.array([pos[nm] for nm in names] + [-1], dtype=np.int64)
    return pd.Categorical.from_codes(remap[codes], categories=cats)


# --------------------------------------------------------------------------- metrics

def _category_lists(
    tax_order: Sequence[str], categories: Mapping[str, Sequence[str]],
    tax: pd.Categorical, pcat: pd.Categorical,
) -> dict[str, list[str]]:
    """Each taxonomy's categories: declared order, then undeclared observed ones sorted."""
    pairs = pd.DataFrame({"t": tax.codes, "c": pcat.codes})
    pairs = pairs[pairs["c"] >= 0].drop_duplicates()
    observed: dict[str, list[str]] = {t: [] for t in tax_order}
    for t_code, c_code in zip(pairs["t"].to_numpy(), pairs["c"].to_numpy()):
        observed[tax_order[t_code]].append(pcat.categories[c_code])
    observed = {t: sorted(cs) for t, cs in observed.items()}
    out: dict[str, list[str]] = {}
    for t in tax_order:
        declared = [str(c) for c in categories.get(t, ())]
        if len(set(declared)) != len(declared):
            raise ValueError(f"taxonomy {t!r}: duplicate categories in {declared}")
        seen = observed.get(t, [])
        extra = [c for c in seen if c not in declared]
        if extra:
            if t in categories:
                warnings.warn(
                    f"taxonomy {t!r}: predicted categories {extra} are not among its declared "
                    f"categories {declared}; they are reported after them",
                    stacklevel=3,
                )
        out[t] = declared + extra
    return out


def _empty_metrics() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in METRIC_COLUMNS})
    for c in ("n", "count"):
        df[c] = df[c].astype("int64")
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype(float)
    return df


def group_metrics(
    predictions: pd.DataFrame,
    categories: Mapping[str, Sequence[str]],
    slices: Iterable = DEFAULT_SLICES,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Accuracy and category rates per demographic group, with Wilson intervals.

    ``predictions``: one row per image x taxonomy x method with columns ``taxonomy``,
    ``method``, ``predicted_category`` and optionally ``image_id``, ``true_label``,
    ``correct``, ``predicted_label`` and attribute columns.
    ``categories``: taxonomy -> ordered list of all its reporting categories; a predicted
    category missing from the list is reported after the declared ones (with a warning);
    a taxonomy missing from the mapping gets its observed categories, sorted.

    Returns a frame with columns :data:`METRIC_COLUMNS`. A slice whose attribute columns
    are absent is skipped; rows with a null attribute are left out of that slice; only
    groups that occur in the data get rows. Rows are ordered by taxonomy and method
    (first appearance), metric (accuracy, rate), category (given order), slice (given
    order) and group (canonical attribute order, unknown values after, sorted).
    """
    missing = [c for c in _REQUIRED if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    slices = list(slices)
    slice_attrs = [_slice_attrs(s) for s in slices]
    if len({slice_name(s) for s in slices}) != len(slices):
        raise ValueError(f"duplicate slices in {slices!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if len(predictions) == 0:
        out = _empty_metrics()
        out.attrs["confidence"] = float(confidence)
        return out

    df = predictions
    if df["taxonomy"].isna().any() or df["method"].isna().any():
        raise ValueError("predictions have null taxonomy or method values")
    if "image_id" in df.columns:
        dup = df.duplicated(["image_id", "taxonomy", "method"])
        if dup.any():
            ex = df.loc[dup, ["image_id", "taxonomy", "method"]].head(3).to_dict("records")
            raise ValueError(
                f"{int(dup.sum())} duplicate image x taxonomy x method rows, e.g. {ex}; "
                "each image must appear once per taxonomy and method"
            )

    tax = _factor(df["taxonomy"])
    meth = _factor(df["method"])
    pcat = _factor(df["predicted_category"], order=sorted)
    tax_order = list(tax.categories)
    cat_lists = _category_lists(tax_order, categories, tax, pcat)
    all_cats = sorted({c for cs in cat_lists.values() for c in cs})

    t_codes = np.asarray(tax.codes, dtype=np.int64)
    m_codes = np.asarray(meth.codes, dtype=np.int64)
    pcat = pcat.set_categories(all_cats)
    c_codes = np.asarray(pcat.codes, dtype=np.int64)  # -1: no predicted category
    n_tax, n_meth, n_cat = len(tax_order), len(meth.categories), len(all_cats)

    # accuracy inputs
    if "true_label" in df.columns:
        has_target = df["true_label"].notna().to_numpy(dtype=bool)
    else:
        has_target = np.zeros(len(df), dtype=bool)
    is_correct = np.zeros(len(df), dtype=bool)
    if has_target.any():
        derived = None
        if "predicted_label" in df.columns:
            derived = (df["predicted_label"].astype(object) == df["true_label"].astype(object)).to_numpy(dtype=bool)
        if "correct" in df.columns:
            corr = df["correct"].astype(object)
            corr_na = corr.isna().to_numpy(dtype=bool)
            is_correct = corr.where(~corr_na, False).astype(bool).to_numpy(dtype=bool)
            need = corr_na & has_target
            if need.any():
                if derived is None:
                    raise ValueError(
                        "rows with a true_label but a null 'correct' and no predicted_label column"
                    )
                is_correct = np.where(need, derived, is_correct)
        elif derived is not None:
            is_correct = derived
        else:
            raise ValueError("predictions with a true_label need a 'correct' or 'predicted_label' column")
        is_correct = is_correct & has_target

    used_attrs = sorted({a for attrs in slice_attrs for a in attrs if a in df.columns})
    attr_cats: dict[str, pd.Categorical] = {
        a: _factor(df[a], order=lambda vals, a=a: _value_order(a, vals)) for a in used_attrs
    }

    # each taxonomy's categories as indices into all_cats, flattened with offsets
    cat_index = {c: i for i, c in enumerate(all_cats)}
    cat_len = np.array([len(cat_lists[t]) for t in tax_order], dtype=np.int64)
    cat_off = np.concatenate([[0], np.cumsum(cat_len)[:-1]]).astype(np.int64)
    cat_flat = np.array([cat_index[c] for t in tax_order for c in cat_lists[t]], dtype=np.int64)

    conf = float(confidence)
    pieces: list[dict[str, np.ndarray]] = []
    for s_idx, (s, attrs) in enumerate(zip(slices, slice_attrs)):
        if any(a not in df.columns for a in attrs):
            continue  # dataset lacks this attribute: skip silently
        name = slice_name(s)
        shape = [n_tax, n_meth] + [len(attr_cats[a].categories) for a in attrs]
        if int(np.prod([float(x) for x in shape])) >= 2**62:
            raise ValueError(f"slice {name!r} has too many possible groups to index")
        valid = np.ones(len(df), dtype=bool)
        key = t_codes * n_meth + m_codes
        for a in attrs:
            codes = np.asarray(attr_cats[a].codes, dtype=np.int64)
            valid &= codes >= 0
            key = key * len(attr_cats[a].categories) + codes
        key = key[valid]
        if key.size == 0:
            continue
        # group ids in key order (= taxonomy, method, canonical attribute order)
        gkeys, gid = np.unique(key, return_inverse=True)
        gid = gid.reshape(-1)
        n_groups = len(gkeys)
        n = np.bincount(gid, minlength=n_groups)
        decoded = np.unravel_index(gkeys, shape)
        g_tax, g_meth = decoded[0].astype(np.int64), decoded[1].astype(np.int64)
        if attrs:
            label = np.asarray(attr_cats[attrs[0]].categories, dtype=object)[decoded[2]]
            for j, a in enumerate(attrs[1:], start=3):
                label = label + "+" + np.asarray(attr_cats[a].categories, dtype=object)[decoded[j]]
        else:
            label = np.full(n_groups, "all", dtype=object)

        # rate: every category of the group's taxonomy, zero-filled
        cv = c_codes[valid]
        has_cat = cv >= 0
        counts = np.bincount(gid[has_cat] * max(n_cat, 1) + cv[has_cat],
                             minlength=n_groups * max(n_cat, 1))
        reps = cat_len[g_tax]
        row_g = np.repeat(np.arange(n_groups), reps)
        starts = np.repeat(np.cumsum(reps) - reps, reps)
        pos = np.arange(row_g.size) - starts
        row_c = cat_flat[cat_off[g_tax[row_g]] + pos]
        pieces.append({
            "tax": g_tax[row_g], "meth": g_meth[row_g], "metric": np.ones(row_g.size, np.int64),
            "cat_pos": pos, "category": np.asarray(all_cats, dtype=object)[row_c] if n_cat else
            np.empty(0, dtype=object),
            "slice_idx": np.full(row_g.size, s_idx), "slice": np.full(row_g.size, name, dtype=object),
            "grank": row_g, "group": label[row_g], "n": n[row_g],
            "count": counts[row_g * max(n_cat, 1) + row_c],
        })

        # accuracy over the images with a target
        tv = has_target[valid]
        if tv.any():
            n_t = np.bincount(gid[tv], minlength=n_groups)
            k_t = np.bincount(gid[is_correct[valid]], minlength=n_groups)
            sel = np.flatnonzero(n_t > 0)
            pieces.append({
                "tax": g_tax[sel], "meth": g_meth[sel], "metric": np.zeros(sel.size, np.int64),
                "cat_pos": np.full(sel.size, -1), "category": np.full(sel.size, "", dtype=object),
                "slice_idx": np.full(sel.size, s_idx), "slice": np.full(sel.size, name, dtype=object),
                "grank": sel, "group": label[sel], "n": n_t[sel], "count": k_t[sel],
            })

    if not pieces:
        out = _empty_metrics()
        out.attrs["confidence"] = conf
        return out
    cols = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    order = np.lexsort(
        (cols["grank"], cols["slice_idx"], cols["cat_pos"], cols["metric"], cols["meth"], cols["tax"])
    )
    n = cols["n"][order].astype(np.int64)
    k = cols["count"][order].astype(np.int64)
    low, high = wilson_interval(k, n, conf)
    out = pd.DataFrame(
        {
            "taxonomy": np.asarray(tax_order, dtype=object)[cols["tax"][order]],
            "method": np.asarray(meth.categories, dtype=object)[cols["meth"][order]],
            "metric": np.array(["accuracy", "rate"], dtype=object)[cols["metric"][order]],
            "category": cols["category"][order],
            "slice": cols["slice"][order],
            "group": cols["group"][order],
            "n": n,
            "count": k,
            "value": k / n,  # n >= 1: only groups that occur get rows
            "ci_low": low,
            "ci_high": high,
        }
    )
    out.attrs["confidence"] = conf
    return out



# --------------------------------------------------------------------------- disparities

def _empty_disparities() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in DISPARITY_COLUMNS})
    df["n_groups"] = df["n_groups"].astype("int64")
    for c in ("best_value", "worst_value", "gap", "ratio"):
        df[c] = df[c].astype(float)
    return df


def disparities(metrics: pd.DataFrame, min_n: int = 1) -> pd.DataFrame:
    """Best and worst group per taxonomy x method x metric x category x slice.

    Only groups with ``n >= min_n`` and a non-null value count; the ``overall`` slice is
    left out. For accuracy the best group has the highest value, for a rate the lowest
    (see :data:`HIGHER_IS_BETTER`). ``gap = max - min`` and ``ratio = min / max`` (NaN
    when max is 0). Ties go to the group that comes first in the frame's row order
    (:func:`group_metrics` emits groups in canonical order).
    """
    need = ["taxonomy", "method", "metric", "category", "slice", "group", "n", "value"]
    missing = [c for c in need if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics frame lacks column(s) {missing}")
    unknown = sorted(set(metrics["metric"].dropna().astype(str)) - set(HIGHER_IS_BETTER))
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}: add them to clipfair.metrics.HIGHER_IS_BETTER"
        )
    m = metrics.loc[:, need].copy()
    # a metrics CSV read back with pandas turns the empty accuracy category into NaN
    m["category"] = m["category"].astype(object).where(m["category"].notna(), "")
    m = m[(m["slice"] != "overall") & (m["n"] >= min_n) & m["value"].notna()]
    m = m.reset_index(drop=True)
    if len(m) == 0:
        return _empty_disparities()
    keys = ["taxonomy", "method", "metric", "category", "slice"]
    g = m.groupby(keys, sort=False, dropna=False)["value"]
    i_max = g.idxmax()
    i_min = g.idxmin()
    stats = pd.DataFrame({"i_max": i_max, "i_min": i_min, "n_groups": g.size()}).reset_index()
    higher = stats["metric"].map(HIGHER_IS_BETTER).astype(bool).to_numpy()
    best_i = np.where(higher, stats["i_max"], stats["i_min"])
    worst_i = np.where(higher, stats["i_min"], stats["i_max"])
    vmax = m["value"].to_numpy(dtype=float)[stats["i_max"].to_numpy()]
    vmin = m["value"].to_numpy(dtype=float)[stats["i_min"].to_numpy()]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(vmax > 0, vmin / np.where(vmax > 0, vmax, 1.0), np.nan)
    groups = m["group"].to_numpy(dtype=object)
    values = m["value"].to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "taxonomy": stats["taxonomy"].to_numpy(dtype=object),
            "method": stats["method"].to_numpy(dtype=object),
            "metric": stats["metric"].to_numpy(dtype=object),
            "category": stats["category"].to_numpy(dtype=object),
            "slice": stats["slice"].to_numpy(dtype=object),
            "n_groups": stats["n_groups"].to_numpy(dtype=np.int64),
            "best_group": groups[best_i],
            "best_value": values[best_i],
            "worst_group": groups[worst_i],
            "worst_value": values[worst_i],
            "gap": vmax - vmin,
            "ratio": ratio,
        }
    )
    return out
