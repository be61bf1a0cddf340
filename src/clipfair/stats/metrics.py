"""Per-group metrics with Wilson confidence intervals, and between-group disparities.

Layer: stats.

Pure functions on pandas DataFrames. The input is the long per-image predictions frame
(one row per image x taxonomy x method); the output is a long metrics frame with one row
per taxonomy x method x metric x category x slice x group (see :func:`group_metrics`).

Metrics computed (the ``metric`` column):

``accuracy``
    share of a group's images with a target (``true_label`` not null) that were
    classified correctly; ``category`` is the empty string.
``topk_accuracy``
    share of those images whose right class is among the k highest-scored classes
    (``true_rank <= k``); ``category`` is ``top-k`` (e.g. ``top-5``). Emitted for each
    requested k smaller than the taxonomy's number of classes (at k >= the number of
    classes it is 1 by construction).
``worst_group_accuracy``
    per taxonomy x method x slice (not overall), the accuracy row of the group with the
    lowest accuracy among groups of at least ``small_n`` images (among all groups, and
    then flagged small, when every group is smaller); ``group`` names that group.
``rate``
    share of a group's images that were put into a reporting category
    (``predicted_category``), for every category of every taxonomy, including
    categories nobody was predicted into (count 0, value 0).
``label_rate``
    the same for each class label (``predicted_label``; ``category`` holds the label):
    P(predicted label | group), for every label of every taxonomy, zero-filled. Within a
    group the label rates of a taxonomy sum to 1.

Every row carries ``small``: whether its group has fewer than ``small_n`` images (such
groups are reported and flagged, never hidden; groups with no images have no rows).
Groups are ordered by the dataset's declared value orders (``orders``).

A *slice* is ``"overall"`` (one group, ``"all"``), an attribute column (``"race"``) or a
tuple of attribute columns (an intersection, named ``"race+gender"``, groups named like
``"White+Male"``).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

import difflib

from clipfair.stats.specs import BUILTIN_METRICS
from clipfair.stats.specs import direction as spec_direction
from clipfair.stats.specs import is_accuracy as spec_is_accuracy
from clipfair.stats.specs import is_ranked, kind as spec_kind
from clipfair.data.base import SliceError
from clipfair.stats.inference import (CORRECTIONS, adjusted_confidence, katz_ratio, newcombe_diff, two_proportion_z,
                            welch_diff, wilson_interval)

__all__ = [
    "METRIC_COLUMNS",
    "DISPARITY_COLUMNS",
    "metric_direction",
    "is_accuracy_metric",
    "HIGHER_IS_BETTER",
    "CONFUSION_COLUMNS",
    "SMALL_GROUP_N",
    "wilson_interval",
    "slice_name",
    "slice_attrs",
    "value_order",
    "resolve_slices",
    "group_metrics",
    "confusion",
    "disparities",
]

METRIC_COLUMNS: tuple[str, ...] = (
    "taxonomy", "method", "metric", "category", "slice", "group",
    "n", "count", "value", "ci_low", "ci_high", "small",
)
CONFUSION_COLUMNS: tuple[str, ...] = (
    "taxonomy", "method", "slice", "group", "true_label", "predicted_label", "count",
)
#: groups with fewer images are flagged ``small`` (config ``small_group_n``)
SMALL_GROUP_N = 30
#: metric names in row order within a taxonomy x method
METRICS: tuple[str, ...] = ("accuracy", "topk_accuracy", "rate", "label_rate", "worst_group_accuracy")
#: metrics disparities leave out: worst-group accuracy summarises a slice already, and a
#: label's share has no declared direction (harm or not), so its groups are not ranked
UNRANKED_METRICS: frozenset[str] = frozenset(s.name for s in BUILTIN_METRICS if not s.ranked)


_REQUIRED = ("taxonomy", "method", "predicted_category")


# --------------------------------------------------------------------------- slices

def slice_attrs(s) -> tuple[str, ...]:
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
    attrs = slice_attrs(s)
    return "+".join(attrs) if attrs else "overall"


def resolve_slices(spec, available: Sequence[str], dataset: str = "the dataset", preferred: Sequence = ()) -> list:
    """The slices to compute. ``"auto"`` (or None): ``"overall"``, then the dataset's
    ``preferred`` slices (its declaration, :attr:`clipfair.data.base.FaceDataset.default_slices`)
    whose attributes ``available`` has, then every other available attribute on its own.
    A list: checked, a slice naming an attribute not in ``available`` raises
    :class:`SliceError` naming the slice and listing the available attributes."""
    available = list(available)
    if spec is None or (isinstance(spec, str) and spec == "auto"):
        out: list = []
        for s in ("overall", *preferred):
            s = s if isinstance(s, str) else tuple(s)
            if s not in out and all(a in available for a in slice_attrs(s)):
                out.append(s)
        return out + [a for a in available if a not in out]
    if isinstance(spec, str):
        spec = [spec]
    out = []
    for s in spec:
        attrs = slice_attrs(s)
        twice = sorted({a for a in attrs if attrs.count(a) > 1})
        if twice:
            raise SliceError(f"slice {list(attrs)}: names {', '.join(twice)} twice; an intersection crosses "
                             "different attributes, e.g. [race, gender]: fix the slices setting")
        missing = [a for a in attrs if a not in available]
        if missing:
            hint = difflib.get_close_matches(missing[0], available, n=1)
            raise SliceError(
                f"slice {slice_name(s)!r}: {dataset} has no attribute "
                f"{', '.join(map(repr, missing))}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available attributes: {', '.join(available) or 'none'}; "
                "fix the slices setting, or declare the attribute (dataset.attributes / dataset.derived)")
        out.append(s if isinstance(s, str) else tuple(s))
    return out


def value_order(attribute: str, values: Iterable[str],
                 orders: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Declared values present first (declared order), then undeclared ones sorted.
    ``orders``: attribute -> declared values (the dataset's declarations; none: sorted)."""
    present = set(values)
    canon = tuple((orders or {}).get(attribute, ()))
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
    tax: pd.Categorical, pcat: pd.Categorical, what: str = "categories",
) -> dict[str, list[str]]:
    """Each taxonomy's categories (or labels): declared order, then undeclared observed
    ones sorted."""
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
            raise ValueError(f"taxonomy {t!r}: duplicate {what} in {declared}")
        seen = observed.get(t, [])
        extra = [c for c in seen if c not in declared]
        if extra:
            if t in categories:
                warnings.warn(
                    f"taxonomy {t!r}: predicted {what} {extra} are not among its declared "
                    f"{what} {declared}; they are reported after them",
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
    df["small"] = df["small"].astype(bool)
    return df


def _correct_flags(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(has a target, classified correctly) per row."""
    if "true_label" in df.columns:
        has_target = df["true_label"].notna().to_numpy(dtype=bool)
    else:
        has_target = np.zeros(len(df), dtype=bool)
    is_correct = np.zeros(len(df), dtype=bool)
    if not has_target.any():
        return has_target, is_correct
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
    return has_target, is_correct & has_target


class _Items:
    """Each taxonomy's items (categories or labels) as indices into one sorted list,
    flattened with offsets, and every row's item code (-1: none)."""

    def __init__(self, lists: Mapping[str, list[str]], tax_order: Sequence[str], col: pd.Categorical):
        self.names = sorted({c for cs in lists.values() for c in cs})
        index = {c: i for i, c in enumerate(self.names)}
        self.len = np.array([len(lists[t]) for t in tax_order], dtype=np.int64)
        self.off = np.concatenate([[0], np.cumsum(self.len)[:-1]]).astype(np.int64)
        self.flat = np.array([index[c] for t in tax_order for c in lists[t]], dtype=np.int64)
        self.codes = np.asarray(col.set_categories(self.names).codes, dtype=np.int64)


def _share_rows(items: _Items, metric: int, gid: np.ndarray, valid: np.ndarray, n_groups: int,
                g_tax: np.ndarray, g_meth: np.ndarray, n: np.ndarray, label: np.ndarray,
                s_idx: int, name: str) -> dict[str, np.ndarray]:
    """One row per group x item of the group's taxonomy: images of the group whose
    predicted item is that item (zero-filled)."""
    n_items = max(len(items.names), 1)
    cv = items.codes[valid]
    has = cv >= 0
    counts = np.bincount(gid[has] * n_items + cv[has], minlength=n_groups * n_items)
    reps = items.len[g_tax]
    row_g = np.repeat(np.arange(n_groups), reps)
    starts = np.repeat(np.cumsum(reps) - reps, reps)
    pos = np.arange(row_g.size) - starts
    row_c = items.flat[items.off[g_tax[row_g]] + pos]
    return {
        "tax": g_tax[row_g], "meth": g_meth[row_g], "metric": np.full(row_g.size, metric, np.int64),
        "cat_pos": pos, "category": np.asarray(items.names, dtype=object)[row_c] if items.names else
        np.empty(0, dtype=object),
        "slice_idx": np.full(row_g.size, s_idx), "slice": np.full(row_g.size, name, dtype=object),
        "grank": row_g, "group": label[row_g], "n": n[row_g],
        "count": counts[row_g * n_items + row_c],
    }


def _hit_rows(hit: np.ndarray, usable: np.ndarray, metric: int, cat_pos: int, category: str,
              gid: np.ndarray, valid: np.ndarray, n_groups: int, g_tax: np.ndarray,
              g_meth: np.ndarray, label: np.ndarray, s_idx: int, name: str,
              keep_tax: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
    """One row per group with usable rows: n usable, count hits (accuracy, top-k)."""
    u = usable[valid]
    if not u.any():
        return None
    n_t = np.bincount(gid[u], minlength=n_groups)
    k_t = np.bincount(gid[(hit & usable)[valid]], minlength=n_groups)
    ok = n_t > 0
    if keep_tax is not None:
        ok &= keep_tax[g_tax]
    sel = np.flatnonzero(ok)
    return {
        "tax": g_tax[sel], "meth": g_meth[sel], "metric": np.full(sel.size, metric, np.int64),
        "cat_pos": np.full(sel.size, cat_pos), "category": np.full(sel.size, category, dtype=object),
        "slice_idx": np.full(sel.size, s_idx), "slice": np.full(sel.size, name, dtype=object),
        "grank": sel, "group": label[sel], "n": n_t[sel], "count": k_t[sel],
    }


def _worst_rows(cols: dict[str, np.ndarray], small_n: int) -> dict[str, np.ndarray] | None:
    """worst_group_accuracy: per taxonomy x method x slice (not overall), the accuracy row
    of the lowest-accuracy group among groups with n >= small_n (all groups when none is
    that large); ties go to the first group in order."""
    acc = np.flatnonzero((cols["metric"] == 0) & (cols["slice"] != "overall"))
    if acc.size == 0:
        return None
    frame = pd.DataFrame({"tax": cols["tax"][acc], "meth": cols["meth"][acc],
                          "slice_idx": cols["slice_idx"][acc], "grank": cols["grank"][acc],
                          "value": cols["count"][acc] / cols["n"][acc],
                          "big": cols["n"][acc] >= small_n, "row": acc})
    # big groups first, then lowest value, then group order
    frame = frame.sort_values(["tax", "meth", "slice_idx", "big", "value", "grank"],
                              ascending=[True, True, True, False, True, True], kind="stable")
    rows = frame.drop_duplicates(["tax", "meth", "slice_idx"])["row"].to_numpy()
    out = {k: v[rows] for k, v in cols.items()}
    out["metric"] = np.full(rows.size, METRICS.index("worst_group_accuracy"), np.int64)
    out["grank"] = np.zeros(rows.size, np.int64)
    return out


def group_metrics(
    predictions: pd.DataFrame,
    categories: Mapping[str, Sequence[str]],
    slices: Iterable = ("overall",),
    confidence: float = 0.95,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    orders: Mapping[str, Sequence[str]] | None = None,
    topk: Sequence[int] = (),
    small_n: int = SMALL_GROUP_N,
) -> pd.DataFrame:
    """Accuracy, top-k and worst-group accuracy, category rates and label rates per
    demographic group, with Wilson intervals (see the module docstring for each metric).

    ``predictions``: one row per image x taxonomy x method with columns ``taxonomy``,
    ``method``, ``predicted_category`` and optionally ``image_id``, ``true_label``,
    ``correct``, ``predicted_label`` (for label rates), ``true_rank`` (for top-k) and
    attribute columns.
    ``categories``: taxonomy -> ordered list of all its reporting categories; a predicted
    category missing from the list is reported after the declared ones (with a warning);
    a taxonomy missing from the mapping gets its observed categories, sorted.
    ``labels``: the same for class labels (default: the observed labels, sorted).
    ``slices``: the slices to compute (the dataset's, see :func:`resolve_slices`).
    ``orders``: attribute -> declared value order (the dataset's declarations,
    :meth:`clipfair.data.base.FaceDataset.value_orders`; none: values sorted). ``topk``: the
    k of top-k accuracy. ``small_n``: groups
    with fewer images are flagged ``small``.

    Returns a frame with columns :data:`METRIC_COLUMNS`. A slice whose attribute columns
    are absent is skipped (the pipeline refuses such slices earlier, see
    :func:`resolve_slices`); rows with a null attribute are left out of that slice; only
    groups that occur in the data get rows. Rows are ordered by taxonomy and method
    (first appearance), metric (:data:`METRICS` order), category (given order), slice
    (given order) and group (declared attribute order, undeclared values after, sorted).
    """
    missing = [c for c in _REQUIRED if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    slices = list(slices)
    attrs_per_slice = [slice_attrs(s) for s in slices]
    if len({slice_name(s) for s in slices}) != len(slices):
        raise ValueError(f"duplicate slices in {slices!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    ks = sorted({int(k) for k in topk})
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k accuracy needs k >= 1, got {list(topk)}")
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
    tax_order = list(tax.categories)
    pcat = _factor(df["predicted_category"], order=sorted)
    cat_items = _Items(_category_lists(tax_order, categories, tax, pcat), tax_order, pcat)
    label_items = None
    if "predicted_label" in df.columns:
        plab = _factor(df["predicted_label"], order=sorted)
        label_items = _Items(_category_lists(tax_order, labels or {}, tax, plab, "labels"), tax_order, plab)

    t_codes = np.asarray(tax.codes, dtype=np.int64)
    m_codes = np.asarray(meth.codes, dtype=np.int64)
    n_tax, n_meth = len(tax_order), len(meth.categories)
    has_target, is_correct = _correct_flags(df)
    rank = None
    if ks and "true_rank" in df.columns:
        rank = pd.to_numeric(df["true_rank"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    n_classes = label_items.len if label_items is not None else np.zeros(n_tax, np.int64)

    used_attrs = sorted({a for attrs in attrs_per_slice for a in attrs if a in df.columns})
    attr_cats: dict[str, pd.Categorical] = {
        a: _factor(df[a], order=lambda vals, a=a: value_order(a, vals, orders)) for a in used_attrs
    }

    conf = float(confidence)
    pieces: list[dict[str, np.ndarray]] = []
    for s_idx, (s, attrs) in enumerate(zip(slices, attrs_per_slice)):
        if any(a not in df.columns for a in attrs):
            continue  # dataset lacks this attribute (resolve_slices refuses it earlier)
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
        # group ids in key order (= taxonomy, method, declared attribute order)
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
        common = (gid, valid, n_groups, g_tax, g_meth)

        pieces.append(_share_rows(cat_items, METRICS.index("rate"), *common, n, label, s_idx, name))
        if label_items is not None:
            pieces.append(_share_rows(label_items, METRICS.index("label_rate"), *common, n, label, s_idx, name))
        acc = _hit_rows(is_correct, has_target, METRICS.index("accuracy"), -1, "", *common, label, s_idx, name)
        if acc is not None:
            pieces.append(acc)
        if rank is not None:
            usable = has_target & ~np.isnan(rank)
            for j, k in enumerate(ks):
                top = _hit_rows(usable & (rank <= k), usable, METRICS.index("topk_accuracy"), j,
                                f"top-{k}", *common, label, s_idx, name, keep_tax=k < n_classes)
                if top is not None:
                    pieces.append(top)

    if not pieces:
        out = _empty_metrics()
        out.attrs["confidence"] = conf
        return out
    cols = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    worst = _worst_rows(cols, small_n)
    if worst is not None:
        cols = {k: np.concatenate([cols[k], worst[k]]) for k in cols}
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
            "metric": np.array(METRICS, dtype=object)[cols["metric"][order]],
            "category": cols["category"][order],
            "slice": cols["slice"][order],
            "group": cols["group"][order],
            "n": n,
            "count": k,
            "value": k / n,  # n >= 1: only groups that occur get rows
            "ci_low": low,
            "ci_high": high,
            "small": n < int(small_n),
        }
    )
    out.attrs["confidence"] = conf
    return out


def confusion(
    predictions: pd.DataFrame,
    slices: Iterable = ("overall",),
    *,
    orders: Mapping[str, Sequence[str]] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    true_class: Mapping[str, Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """Confusion counts per taxonomy x method x slice x group, over images with a target.

    ``true_label`` in the result is the class that is right for the image's target value
    (``true_class[taxonomy][value]``; the value itself when the taxonomy has no such
    mapping), so the diagonal (true_label == predicted_label) counts exactly the correct
    images. Only non-zero cells are listed; a group's counts sum to its accuracy n.
    Rows are ordered by taxonomy and method (first appearance), slice (given order),
    group (declared ``orders``), then labels (``labels[taxonomy]`` order, others sorted).
    Returns columns :data:`CONFUSION_COLUMNS`.
    """
    empty = pd.DataFrame({c: pd.Series(dtype="int64" if c == "count" else object) for c in CONFUSION_COLUMNS})
    if any(c not in predictions.columns for c in ("taxonomy", "method", "true_label", "predicted_label")):
        return empty
    df = predictions[predictions["true_label"].notna()]
    slices = [s for s in slices if all(a in df.columns for a in slice_attrs(s))]
    frames = []
    for tax in pd.unique(df["taxonomy"]):
        part = df[df["taxonomy"] == tax]
        mapping = (true_class or {}).get(tax) or {}
        truth = part["true_label"].astype(object).map(lambda v: mapping.get(v, v)).astype(str)
        pred = part["predicted_label"].astype(object).astype(str)
        declared = [str(x) for x in (labels or {}).get(tax, ())]
        label_order = declared + sorted(set(truth).union(pred).difference(declared))
        base = pd.DataFrame({"true_label": pd.Categorical(truth, categories=label_order),
                             "predicted_label": pd.Categorical(pred, categories=label_order)},
                            index=part.index)
        for meth in pd.unique(part["method"]):
            rows = (part["method"] == meth).to_numpy()
            for s in slices:
                attrs = list(slice_attrs(s))
                keys = base[rows].copy()
                for a in attrs:
                    keys[a] = _factor(part.loc[rows, a], order=lambda vals, a=a: value_order(a, vals, orders))
                counts = (keys.groupby([*attrs, "true_label", "predicted_label"], observed=True, sort=True)
                          .size().rename("count").reset_index())
                counts = counts[counts["count"] > 0]
                group = pd.Series("all", index=counts.index, dtype=object)
                if attrs:
                    group = counts[attrs[0]].astype(str)
                    for a in attrs[1:]:
                        group = group + "+" + counts[a].astype(str)
                frames.append(pd.DataFrame({
                    "taxonomy": tax, "method": meth, "slice": slice_name(s), "group": group.astype(object),
                    "true_label": counts["true_label"].astype(object),
                    "predicted_label": counts["predicted_label"].astype(object),
                    "count": counts["count"].astype("int64")}))
    if not frames:
        return empty
    return pd.concat(frames, ignore_index=True)[list(CONFUSION_COLUMNS)]



# --------------------------------------------------------------------------- disparities

DISPARITY_COLUMNS: tuple[str, ...] = (
    "taxonomy", "method", "metric", "category", "direction", "slice", "comparison",
    "group", "n", "value", "reference", "reference_n", "reference_value",
    "difference", "ci_low", "ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
    "p_value", "p_adjusted", "adj_ci_low", "adj_ci_high", "significant", "n_groups", "too_small",
    "kind",
)

#: directions in disparities.csv: which value of a metric is better for a group
HIGHER, LOWER, NEUTRAL = "higher_is_better", "lower_is_better", "neutral"
#: comparisons in disparities.csv
WORST_VS_BEST, HIGHEST_VS_LOWEST, TO_OVERALL = "worst_vs_best", "highest_vs_lowest", "to_overall"
DEFAULT_DISPARITY_MIN_N = 30
#: the metrics whose direction does not depend on a declaration (True: higher is better);
#: a rate's direction is the taxonomy's ``harm`` declaration of its category. Derived from the
#: metric registry (:mod:`clipfair.stats.specs`), kept for readers of this name.
HIGHER_IS_BETTER: dict[str, bool] = {s.name: s.direction == HIGHER for s in BUILTIN_METRICS
                                     if s.kind == "proportion" and s.ranked}
#: metrics that already summarise a slice in one row (e.g. ``worst_group_accuracy``): no
#: differences between groups are computed for them
SLICE_SUMMARY_PREFIX = "worst_group"


def is_accuracy_metric(metric: str) -> bool:
    """An accuracy-like metric (``accuracy``, ``topk_accuracy``, ``accuracy_race_binary``, ...),
    as the metric registry declares it."""
    return spec_is_accuracy(str(metric))


def metric_direction(metric: str, category: str, harms: Mapping[str, bool | None] | None = None) -> str:
    """Whether higher or lower is better for a group, or neutral (no ranking), from the metric
    registry: accuracies are higher-is-better; a rate of a category (``rate``, ``label_rate``)
    follows the taxonomy's declared direction (``harms[category]``: True = a harm, lower is
    better; False = higher is better); undeclared categories and unknown metrics are neutral.
    """
    return spec_direction(str(metric), category, harms)


def _empty_disparities() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in DISPARITY_COLUMNS})
    for c in ("n", "reference_n", "n_groups"):
        df[c] = df[c].astype("float64")
    for c in ("value", "reference_value", "difference", "ci_low", "ci_high", "ratio", "ratio_ci_low",
              "ratio_ci_high", "p_value", "p_adjusted", "adj_ci_low", "adj_ci_high"):
        df[c] = df[c].astype(float)
    df["significant"] = df["significant"].astype(bool)
    return df



def stratum_values(part: pd.DataFrame, attrs: list[str], at: list[int]) -> list[tuple[str, ...] | None]:
    """Each row's stratum value (the values of the stratum attributes ``attrs[at]``): the frame's
    attribute columns where filled, else the group label split on ``+`` when it has one piece per
    attribute; None when neither tells."""
    out: list[tuple[str, ...] | None] = []
    for pos in range(len(part)):
        row = part.iloc[pos]
        vals: list[str] | None = []
        for i in at:
            a = attrs[i]
            v = row[a] if a in part.columns else None
            if v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == "":
                pieces = str(row["group"]).split("+")
                if len(pieces) != len(attrs):
                    vals = None
                    break
                v = pieces[i]
            vals.append(str(v))
        out.append(tuple(vals) if vals is not None else None)
    return out


def disparities(metrics: pd.DataFrame, min_n: int = DEFAULT_DISPARITY_MIN_N,
                harms: Mapping[str, Mapping[str, bool | None]] | None = None,
                confidence: float | None = None, correction: str = "holm",
                strata: Sequence[str] = ()) -> pd.DataFrame:
    """Differences and ratios between groups, with intervals and adjusted p-values.

    Per taxonomy x method x metric x category x slice (not ``overall``), over the groups
    with ``n >= min_n`` (smaller groups are listed in ``too_small`` as ``group (n=3)``,
    never compared), two rows:

    - ``worst_vs_best`` (direction declared: accuracy, or a category whose taxonomy
      declares ``harm``) or ``highest_vs_lowest`` (neutral): ``group`` is the worst (or
      highest) group, ``reference`` the best (or lowest); ties go to the group first in
      the frame's order.
    - ``to_overall`` (as fairlearn's ``method="to_overall"``): the group farthest from the
      overall value; ``reference`` is ``overall``. Its interval and test compare the group
      with the rest of the images (independent samples) and are mapped exactly onto
      ``group - overall`` (= (1 - w)(group - rest), w = the group's share) and
      ``group / overall``.

    ``difference = value - reference_value`` with Newcombe's hybrid score interval;
    ``ratio = value / reference_value`` with the Katz log interval (NaN when a count is 0);
    ``p_value``: pooled two-proportion z-test; ``p_adjusted``: ``correction`` (``holm`` or
    ``bh``) over every row of the table; ``adj_ci_*``: the difference's interval at the
    multiplicity-adjusted level (:func:`clipfair.stats.inference.adjusted_confidence`);
    ``significant``: adjusted p < 1 - confidence and the adjusted interval excludes 0.
    Keys with fewer than two comparable groups, or whose groups all tie, keep one
    ``worst_vs_best`` / ``highest_vs_lowest`` row with empty group, reference and numbers (so
    their small groups stay listed): a group is never compared with itself, and such rows
    are not tests, so the correction runs over the comparisons actually made.
    ``harms``: taxonomy -> category -> harm (see :func:`metric_direction`).
    ``confidence``: default the metrics frame's ``attrs["confidence"]`` or 0.95.

    ``strata``: the dataset's *stratum attributes* (:attr:`clipfair.data.base.FaceDataset.strata`,
    e.g. FACET's ``class1``): a slice that names one is a per-stratum breakdown, and groups of
    different strata are never compared (``nurse+fem`` vs ``lawman+masc`` says nothing about
    gender). In such a slice the rows above are made within each stratum value (the groups that
    share it, e.g. every ``nurse+...`` group), one set per stratum, in the frame's order; ``to_overall``
    then compares with the stratum's own row (slice = the stratum attributes, e.g. ``class1``,
    group ``nurse``; ``reference`` names it) and is left out when the frame lacks that row. A
    slice made of stratum attributes only (e.g. ``class1``) gets no rows at all: each group is a
    stratum of its own. A group's stratum value comes from the frame's attribute column when it
    has one, else from the group label split on ``+``; a group whose value cannot be told is
    listed in ``too_small`` as ``group (n=.., stratum unknown)``, never compared. The correction
    runs over the comparisons actually made, so these slices add only within-stratum tests.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    need = ["taxonomy", "method", "metric", "category", "slice", "group", "n", "value"]
    missing = [c for c in need if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics frame lacks column(s) {missing}")
    if confidence is None:
        confidence = float(getattr(metrics, "attrs", {}).get("confidence", 0.95))
    harms = harms or {}
    m = metrics.copy()
    # a metrics CSV read back with pandas turns the empty accuracy category into NaN
    m["category"] = m["category"].astype(object).where(m["category"].notna(), "")
    ranked = np.array([is_ranked(x) for x in m["metric"]], dtype=bool)
    m = m[m["value"].notna() & (m["n"] > 0) & ranked & ~m["metric"].isin(UNRANKED_METRICS)
          & ~m["metric"].astype(str).str.startswith(SLICE_SUMMARY_PREFIX)].reset_index(drop=True)
    # the kind (proportion / mean) and a row's direction: the results table's own columns where it
    # has them (a user analysis's rows), else the metric registry
    if "kind" not in m.columns:
        m["kind"] = [spec_kind(x) for x in m["metric"]]
    m["kind"] = m["kind"].astype(object).where(m["kind"].notna() & (m["kind"].astype(str) != ""),
                                               [spec_kind(x) for x in m["metric"]])
    if "sd" not in m.columns:
        m["sd"] = np.nan
    if "count" not in m.columns:
        m["count"] = np.rint(m["value"].to_numpy(float) * m["n"].to_numpy(float))
    is_mean = (m["kind"] == "mean").to_numpy()
    m.loc[is_mean, "count"] = m.loc[is_mean, "value"].astype(float) * m.loc[is_mean, "n"].astype(float)  # sums
    row_direction = m["direction"] if "direction" in m.columns else None
    keys = ["taxonomy", "method", "metric", "category"]
    overall = {tuple(k): (float(r["n"]), float(r["count"]), float(r["value"]), float(r["sd"]))
               for k, r in zip(m.loc[m["slice"] == "overall", keys].itertuples(index=False, name=None),
                               m.loc[m["slice"] == "overall", ["n", "count", "value", "sd"]].to_dict("records"))}
    strata = tuple(strata or ())
    # each stratum's own row (slice = stratum attributes only): the reference of to_overall within it
    stratum_rows = {}
    if strata:
        only = m["slice"].astype(str).map(lambda x: x != "overall" and all(a in strata for a in x.split("+")))
        for k, r in zip(m.loc[only, keys + ["slice", "group"]].itertuples(index=False, name=None),
                        m.loc[only, ["n", "count", "value", "sd"]].to_dict("records")):
            stratum_rows[tuple(k)] = (float(r["n"]), float(r["count"]), float(r["value"]), float(r["sd"]))
    m = m[m["slice"] != "overall"]
    rows: list[dict] = []

    def compare(part: pd.DataFrame, base: dict, direction: str, mean_kind: bool, o, ref_label: str,
                unknown: str = "") -> None:
        ok = part[part["n"] >= min_n]
        small = part[part["n"] < min_n]
        too_small = "; ".join(f"{g} (n={int(n)})" for g, n in zip(small["group"], small["n"]))
        base = {**base, "n_groups": len(ok), "too_small": "; ".join(x for x in (too_small, unknown) if x)}
        v = ok["value"].to_numpy(float)
        if len(ok) < 2 or bool(np.all(v == v[0])):
            # nothing to compare: one group, or every group ties (no self-pair, no group-vs-all-equal
            # rows; the correction runs over the comparisons actually made)
            rows.append({**base, "comparison": HIGHEST_VS_LOWEST if direction == NEUTRAL else WORST_VS_BEST,
                         "group": "", "reference": ""})
            return
        i_hi, i_lo = int(np.argmax(v)), int(np.argmin(v))
        if direction == NEUTRAL:
            comp, a, b = HIGHEST_VS_LOWEST, i_hi, i_lo
        elif direction == HIGHER:
            comp, a, b = WORST_VS_BEST, i_lo, i_hi
        else:
            comp, a, b = WORST_VS_BEST, i_hi, i_lo
        ra, rb = ok.iloc[a], ok.iloc[b]
        rows.append({**base, "comparison": comp, "group": ra["group"], "n": ra["n"], "x": ra["count"],
                     "value": ra["value"], "reference": rb["group"], "reference_n": rb["n"],
                     "rx": rb["count"], "reference_value": rb["value"], "kind": "mean" if mean_kind else "proportion",
                     "sd1": ra["sd"], "sd2": rb["sd"]})
        if o is not None:
            on, ox, ov, osd = o
            far = int(np.argmax(np.abs(v - ov)))
            rf = ok.iloc[far]
            rest_n, rest_x = on - float(rf["n"]), ox - float(rf["count"])
            if mean_kind and rest_n > 1:
                # the rest of the units' mean and sd, from the overall and the group's sums of squares
                n1, m1, s1 = float(rf["n"]), float(rf["value"]), float(rf["sd"])
                ss = (on - 1) * osd ** 2 + on * ov ** 2 - ((n1 - 1) * s1 ** 2 + n1 * m1 ** 2)
                rest_mean = rest_x / rest_n
                rest_var = max((ss - rest_n * rest_mean ** 2) / (rest_n - 1), 0.0)
                rows.append({**base, "comparison": TO_OVERALL, "group": rf["group"], "n": rf["n"],
                             "x": rf["count"], "value": rf["value"], "reference": ref_label,
                             "reference_n": on, "rx": ox, "reference_value": ov, "rest_n": rest_n,
                             "rest_x": rest_x, "kind": "mean", "sd1": s1, "sd2": np.sqrt(rest_var)})
            elif not mean_kind and rest_n > 0 and 0 <= rest_x <= rest_n:
                rows.append({**base, "comparison": TO_OVERALL, "group": rf["group"], "n": rf["n"],
                             "x": rf["count"], "value": rf["value"], "reference": ref_label,
                             "reference_n": on, "rx": ox, "reference_value": ov,
                             "rest_n": rest_n, "rest_x": rest_x, "kind": "proportion"})

    for key, part in m.groupby(keys + ["slice"], sort=False, dropna=False):
        tax, meth, metric, cat, sl = key
        given = row_direction.loc[part.index[0]] if row_direction is not None else None
        direction = (str(given) if isinstance(given, str) and given
                     else metric_direction(metric, cat, harms.get(tax)))
        mean_kind = part["kind"].iloc[0] == "mean"
        base = {"taxonomy": tax, "method": meth, "metric": metric, "category": cat, "direction": direction,
                "slice": sl}
        attrs = str(sl).split("+")
        at = [i for i, a in enumerate(attrs) if a in strata]
        if not at:
            compare(part, base, direction, mean_kind, overall.get((tax, meth, metric, cat)), "overall")
            continue
        if len(at) == len(attrs):
            continue  # a slice of strata only: every group is a stratum of its own, nothing to compare
        labels = stratum_values(part, attrs, at)
        unknown = "; ".join(f"{g} (n={int(n)}, stratum unknown)"
                            for g, n, lab in zip(part["group"], part["n"], labels) if lab is None)
        stratum_slice = "+".join(attrs[i] for i in at)
        seen: dict[tuple, list[int]] = {}
        for j, lab in enumerate(labels):
            if lab is not None:
                seen.setdefault(lab, []).append(j)
        for lab, idx in seen.items():
            ref = "+".join(lab)
            compare(part.iloc[idx], base, direction, mean_kind,
                    stratum_rows.get((tax, meth, metric, cat, stratum_slice, ref)), ref, unknown)
            unknown = ""  # listed once per key
    if not rows:
        out = _empty_disparities()  # the reading rules still travel (the report header quotes min_n)
        out.attrs.update(confidence=float(confidence), correction=correction, min_n=int(min_n))
        return out
    d = pd.DataFrame(rows)
    for c in ("n", "x", "reference_n", "rx", "rest_n", "rest_x", "value", "reference_value", "sd1", "sd2"):
        if c not in d.columns:
            d[c] = np.nan
        d[c] = d[c].astype(float)
    # the second sample of each test: the reference group, or the rest of the images
    to_ov = (d["comparison"] == TO_OVERALL).to_numpy()
    n2 = np.where(to_ov, d["rest_n"], d["reference_n"])
    x2 = np.where(to_ov, d["rest_x"], d["rx"])
    n1, x1 = d["n"].to_numpy(float), d["x"].to_numpy(float)
    mean_rows = (d["kind"] == "mean").to_numpy() if "kind" in d.columns else np.zeros(len(d), bool)
    if mean_rows.any():  # x holds a mean row's sums: the proportion formulas below get a placeholder
        mu1, mu2 = x1 / n1, x2 / n2
        x1, x2 = np.where(mean_rows, 0.0, x1), np.where(mean_rows, 0.0, x2)
    w = np.where(to_ov, n1 / np.where(to_ov, d["reference_n"], 1.0), 0.0)  # group share of overall
    scale = 1.0 - w  # group - overall = (1 - w) * (group - rest)
    lo, hi = newcombe_diff(x1, n1, x2, n2, confidence)
    d["difference"] = d["value"] - d["reference_value"]
    d["ci_low"], d["ci_high"] = scale * lo, scale * hi
    rr, rlo, rhi = katz_ratio(x1, n1, x2, n2, confidence)  # group / (reference or rest)
    with np.errstate(divide="ignore", invalid="ignore"):
        d["ratio"] = np.where(d["reference_value"] > 0, d["value"] / d["reference_value"], np.nan)
        # group / overall = 1 / (w + (1 - w) / RR), increasing in RR = group / rest
        to_overall_ratio = lambda r: 1.0 / (w + (1.0 - w) / r)  # noqa: E731
        d["ratio_ci_low"] = np.where(to_ov, to_overall_ratio(rlo), rlo)
        d["ratio_ci_high"] = np.where(to_ov, to_overall_ratio(rhi), rhi)
    d["p_value"] = two_proportion_z(x1, n1, x2, n2)
    if mean_rows.any():  # means: Welch's difference of means, group vs reference (or vs the rest)
        s1, s2 = d["sd1"].to_numpy(float), d["sd2"].to_numpy(float)
        wlo, whi, wp = welch_diff(mu1, s1, n1, mu2, s2, n2, confidence)
        d.loc[mean_rows, "ci_low"] = (scale * wlo)[mean_rows]
        d.loc[mean_rows, "ci_high"] = (scale * whi)[mean_rows]
        d.loc[mean_rows, "p_value"] = wp[mean_rows]
        d.loc[mean_rows, ["ratio_ci_low", "ratio_ci_high"]] = np.nan
    p_adj = CORRECTIONS[correction](d["p_value"].to_numpy(float))
    d["p_adjusted"] = p_adj
    alpha = 1.0 - float(confidence)
    tested = ~np.isnan(p_adj)
    selected = int(np.sum(p_adj[tested] < alpha))
    level = adjusted_confidence(correction, confidence, int(tested.sum()), selected)
    alo, ahi = newcombe_diff(x1, n1, x2, n2, level)
    d["adj_ci_low"], d["adj_ci_high"] = scale * alo, scale * ahi
    if mean_rows.any():
        walo, wahi, _ = welch_diff(mu1, s1, n1, mu2, s2, n2, level)
        d.loc[mean_rows, "adj_ci_low"] = (scale * walo)[mean_rows]
        d.loc[mean_rows, "adj_ci_high"] = (scale * wahi)[mean_rows]
    d["significant"] = (p_adj < alpha) & ((d["adj_ci_low"] > 0) | (d["adj_ci_high"] < 0)).to_numpy()
    out = d.reindex(columns=list(DISPARITY_COLUMNS))
    out["significant"] = out["significant"].astype(bool)
    out.attrs.update(confidence=float(confidence), correction=correction, min_n=int(min_n),
                     adjusted_confidence=float(level))
    return out
