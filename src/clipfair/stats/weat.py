"""Association statistics: WEAT, SC-WEAT and markedness on embeddings (numpy/scipy only, no I/O).

Layer: stats.

Notation (Caliskan et al. 2017): target sets X, Y and attribute sets A, B of unit vectors;
``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` is one target item's association.

WEAT
    ``u = s(x, A, B)`` for x in X, ``v = s(y, A, B)`` for y in Y; effect size
    ``d = (mean u - mean v) / SD``. SC-WEAT (one target w against A/B) is the same two-sample
    statistic on ``u = cos(w, a)``, ``v = cos(w, b)``: ``d = (mean u - mean v) / SD`` over
    all of w's similarities. So both go through :func:`two_sample`.

Each choice is named, so every output can say which variant produced it (:class:`Variant`):

``sd``
    ``joint``: the SD of all items together (``u`` and ``v`` concatenated; Caliskan, Ghate
    et al.); ``pooled``: ``sqrt((SS_u + SS_v) / (n_u + n_v - 2*ddof))`` with ``SS`` the sums of
    squared deviations from each set's own mean (the two-sample pooled SD for ddof 1).
``ddof``
    1 (sample SD) or 0.
``p``
    ``permutation``: one-sided, the share of the partitions of the pooled items into sets of
    sizes ``n_u``, ``n_v`` whose mean difference is at least the observed one (ties counted as
    greater). All ``C(n_u + n_v, n_u)`` partitions are enumerated when that number is at most
    ``max_exact`` (the observed partition is one of them, so p >= 1 / C); otherwise
    ``n_permutations`` random partitions are drawn and ``p = (1 + #{>=}) / (n_permutations + 1)``
    (the +1 correction). This is Ghate et al.'s (NAACL 2025) sc_weat.py convention.
    With equal set sizes the mean difference orders partitions as Caliskan's sum difference does.
    ``welch_t``: one-sided Welch t-test of ``u`` against ``v`` (unequal variances, H1: mean u >
    mean v), as in Wolfe & Caliskan's american_white code.
    ``normal_fit``: a normal fitted (mean, SD with ddof 1) to the same permutation distribution
    and ``p = P(N >= observed)``, as ML-EAT (Wolfe et al. 2024) does with 1,000 permutations.

The interval for d is a percentile bootstrap over the items (the target items for WEAT, the
attribute items for SC-WEAT), each set resampled with replacement separately, the other sets
held fixed: it describes uncertainty from the choice of items, not from the model.

Markedness (Wolfe & Caliskan 2022): for each image, which prompt is closest among an unmarked
prompt ("a photo of a person") and one prompt per group; per group, the share of images whose
closest prompt is the unmarked one, with a Wilson interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations, islice
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["Variant", "VARIANTS", "DEFAULT_VARIANT", "Result", "normalise", "cosine", "associations",
           "effect_size", "n_partitions", "permutation_null", "p_value", "bootstrap_interval",
           "two_sample", "weat", "sc_weat", "markedness"]

SD_KINDS = ("joint", "pooled")
P_METHODS = ("permutation", "welch_t", "normal_fit")
#: permutation nulls are built in blocks of at most this many numbers (memory)
_BLOCK = 2_000_000


@dataclass(frozen=True)
class Variant:
    """One named way to compute d and its p-value (see the module docstring)."""

    name: str = "ghate2025"
    sd: str = "joint"
    ddof: int = 1
    p: str = "permutation"

    def __post_init__(self) -> None:
        if self.sd not in SD_KINDS:
            raise ValueError(f"variant {self.name!r}: sd must be one of {', '.join(SD_KINDS)}, got {self.sd!r}")
        if self.ddof not in (0, 1) or isinstance(self.ddof, bool):
            raise ValueError(f"variant {self.name!r}: ddof must be 0 or 1, got {self.ddof!r}")
        if self.p not in P_METHODS:
            raise ValueError(f"variant {self.name!r}: p must be one of {', '.join(P_METHODS)}, got {self.p!r}")

    @property
    def label(self) -> str:
        """What the ``variant`` column says, e.g. ``ghate2025 (sd=joint, ddof=1, p=permutation)``."""
        return f"{self.name} (sd={self.sd}, ddof={self.ddof}, p={self.p})"


#: named variants: Ghate et al. 2025 (the default), Wolfe & Caliskan 2022's american_white,
#: ML-EAT (Wolfe et al. 2024)
VARIANTS: dict[str, Variant] = {
    "ghate2025": Variant("ghate2025", "joint", 1, "permutation"),
    "american_white": Variant("american_white", "pooled", 1, "welch_t"),
    "mleat": Variant("mleat", "joint", 1, "normal_fit"),
}
DEFAULT_VARIANT = VARIANTS["ghate2025"]


@dataclass(frozen=True)
class Result:
    effect_size: float
    ci_low: float
    ci_high: float
    p_value: float
    p_method: str
    n_permutations: float   # partitions used (enumerated or drawn); NaN for welch_t
    n_x: int
    n_y: int
    n_a: int
    n_b: int
    difference: float       # mean u - mean v (the numerator of d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- embeddings

def normalise(E: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); a zero row is an error."""
    E = np.atleast_2d(np.asarray(E, dtype=np.float64))
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("an embedding has zero or non-finite norm")
    return E / norms


def cosine(U: Any, V: Any) -> np.ndarray:
    """Cosine similarities, ``len(U) x len(V)``."""
    return normalise(U) @ normalise(V).T


def associations(W: Any, A: Any, B: Any) -> np.ndarray:
    """``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` for each row w of W."""
    return cosine(W, A).mean(axis=1) - cosine(W, B).mean(axis=1)


# ---------------------------------------------------------------------------- statistics

def _sd(u: np.ndarray, v: np.ndarray, sd: str, ddof: int) -> float:
    if sd == "joint":
        both = np.concatenate([u, v])
        return float(np.std(both, ddof=ddof)) if len(both) > ddof else math.nan
    dof = len(u) + len(v) - 2 * ddof
    if dof <= 0:
        return math.nan
    ss = float(((u - u.mean()) ** 2).sum() + ((v - v.mean()) ** 2).sum())
    return math.sqrt(ss / dof)


def effect_size(u: Any, v: Any, sd: str = "joint", ddof: int = 1) -> float:
    """``(mean u - mean v) / SD`` (NaN when the SD is 0 or undefined)."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    if len(u) == 0 or len(v) == 0:
        return math.nan
    s = _sd(u, v, sd, ddof)
    if not np.isfinite(s) or s <= 0:
        return math.nan
    return float((u.mean() - v.mean()) / s)


def n_partitions(n_u: int, n_v: int) -> int:
    """``C(n_u + n_v, n_u)``: the number of ways to split the pooled items into sets of these sizes."""
    return math.comb(n_u + n_v, n_u)


def _diffs(pooled: np.ndarray, idx_u: np.ndarray, n_u: int, n_v: int) -> np.ndarray:
    """Mean difference for each row of indices ``idx_u`` (the items put in the first set)."""
    total = pooled.sum()
    su = pooled[idx_u].sum(axis=1)
    return su / n_u - (total - su) / n_v


def permutation_null(u: Any, v: Any, max_exact: int = 10_000, n_permutations: int = 10_000,
                     rng: np.random.Generator | int | None = 0) -> tuple[np.ndarray, bool, float]:
    """The permutation distribution of ``mean u - mean v``: (values, exact, observed).

    Exact (every partition enumerated, the observed one included) when
    ``C(n_u + n_v, n_u) <= max_exact``, else ``n_permutations`` random partitions. The observed
    value is computed with the same arithmetic as the null values, so a tie with itself is exact.
    """
    u, v = np.asarray(u, float), np.asarray(v, float)
    n_u, n_v = len(u), len(v)
    if n_u == 0 or n_v == 0:
        raise ValueError("both sets need at least one item")
    pooled = np.concatenate([u, v])
    n = n_u + n_v
    observed = float(_diffs(pooled, np.arange(n_u)[None, :], n_u, n_v)[0])
    total = n_partitions(n_u, n_v)
    if total <= max_exact:
        out = []
        it = combinations(range(n), n_u)
        step = max(1, _BLOCK // max(n_u, 1))
        while True:
            block = list(islice(it, step))
            if not block:
                break
            out.append(_diffs(pooled, np.asarray(block, dtype=np.int64), n_u, n_v))
        return np.concatenate(out), True, observed
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = []
    step = max(1, _BLOCK // n)
    left = int(n_permutations)
    while left > 0:
        k = min(step, left)
        perm = gen.permuted(np.broadcast_to(pooled, (k, n)), axis=1)
        su = perm[:, :n_u].sum(axis=1)
        out.append(su / n_u - (pooled.sum() - su) / n_v)
        left -= k
    return np.concatenate(out), False, observed


def _tol(x: float) -> float:
    # the same partition computed in another order may differ in the last bits; count those as ties
    return 1e-12 * max(1.0, abs(x))


def p_value(u: Any, v: Any, method: str = "permutation", max_exact: int = 10_000,
            n_permutations: int = 10_000, rng: np.random.Generator | int | None = 0) -> tuple[float, str, float]:
    """One-sided p-value for ``mean u > mean v``: (p, p_method, partitions used).

    ``p_method`` is ``permutation_exact``, ``permutation_sampled``, ``welch_t``,
    ``normal_fit_exact`` or ``normal_fit_sampled``.
    """
    u, v = np.asarray(u, float), np.asarray(v, float)
    if method == "welch_t":
        if len(u) < 2 or len(v) < 2:
            return math.nan, "welch_t", math.nan
        res = sps.ttest_ind(u, v, equal_var=False, alternative="greater")
        return float(res.pvalue), "welch_t", math.nan
    if method not in ("permutation", "normal_fit"):
        raise ValueError(f"unknown p-value method {method!r}; choose {', '.join(P_METHODS)}")
    null, exact, obs = permutation_null(u, v, max_exact, n_permutations, rng)
    kind = "exact" if exact else "sampled"
    if method == "permutation":
        ge = int(np.count_nonzero(null >= obs - _tol(obs)))
        p = ge / len(null) if exact else (ge + 1) / (len(null) + 1)
        return float(p), f"permutation_{kind}", float(len(null))
    mu, sd = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else 0.0
    if not sd > 0:
        return math.nan, f"normal_fit_{kind}", float(len(null))
    return float(sps.norm.sf(obs, loc=mu, scale=sd)), f"normal_fit_{kind}", float(len(null))


def bootstrap_interval(u: Any, v: Any, sd: str = "joint", ddof: int = 1, B: int = 1000,
                       confidence: float = 0.95, rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for d, resampling ``u`` and ``v`` separately with
    replacement (NaN when B is 0 or fewer than half the replicates give a finite d)."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    if B <= 0 or len(u) == 0 or len(v) == 0:
        return math.nan, math.nan
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ds = np.empty(B)
    step = max(1, _BLOCK // (len(u) + len(v)))
    for start in range(0, B, step):
        k = min(step, B - start)
        bu = u[gen.integers(0, len(u), size=(k, len(u)))]
        bv = v[gen.integers(0, len(v), size=(k, len(v)))]
        ds[start:start + k] = _effect_rows(bu, bv, sd, ddof)
    ok = ds[np.isfinite(ds)]
    if len(ok) < B / 2:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _effect_rows(U: np.ndarray, V: np.ndarray, sd: str, ddof: int) -> np.ndarray:
    """:func:`effect_size` for each row pair of U and V (vectorised)."""
    nu, nv = U.shape[1], V.shape[1]
    mu, mv = U.mean(axis=1), V.mean(axis=1)
    if sd == "joint":
        s = np.concatenate([U, V], axis=1).std(axis=1, ddof=ddof) if nu + nv > ddof else np.full(len(U), np.nan)
    else:
        dof = nu + nv - 2 * ddof
        ss = ((U - mu[:, None]) ** 2).sum(axis=1) + ((V - mv[:, None]) ** 2).sum(axis=1)
        s = np.sqrt(ss / dof) if dof > 0 else np.full(len(U), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, (mu - mv) / s, np.nan)


def two_sample(u: Any, v: Any, variant: Variant = DEFAULT_VARIANT, *, max_exact: int = 10_000,
               n_permutations: int = 10_000, bootstrap: int = 1000, confidence: float = 0.95,
               seed: int = 0, sizes: tuple[int, int, int, int] | None = None) -> Result:
    """d, its bootstrap interval and its p-value for the per-item values ``u`` and ``v``.

    ``sizes``: (n_x, n_y, n_a, n_b) to record (default: len(u), len(v), 0, 0)."""
    u, v = np.asarray(u, float).ravel(), np.asarray(v, float).ravel()
    # separate streams: the p-value does not change with the number of bootstrap replicates
    boot_rng, perm_rng = (np.random.default_rng([seed, k]) for k in (1, 2))
    d = effect_size(u, v, variant.sd, variant.ddof)
    lo, hi = bootstrap_interval(u, v, variant.sd, variant.ddof, bootstrap, confidence, boot_rng)
    p, how, n_perm = p_value(u, v, variant.p, max_exact, n_permutations, perm_rng)
    n_x, n_y, n_a, n_b = sizes if sizes is not None else (len(u), len(v), 0, 0)
    diff = float(u.mean() - v.mean()) if len(u) and len(v) else math.nan
    return Result(d, lo, hi, p, how, n_perm, int(n_x), int(n_y), int(n_a), int(n_b), diff)


def weat(X: Any, Y: Any, A: Any, B: Any, variant: Variant = DEFAULT_VARIANT, **kw: Any) -> Result:
    """WEAT of targets X, Y against attributes A, B (rows are embeddings); keyword arguments
    as :func:`two_sample`. Positive d: X is closer to A (and Y to B) than the reverse."""
    X, Y, A, B = (np.atleast_2d(np.asarray(M, float)) for M in (X, Y, A, B))
    u, v = associations(X, A, B), associations(Y, A, B)
    return two_sample(u, v, variant, sizes=(len(X), len(Y), len(A), len(B)), **kw)


def sc_weat(w: Any, A: Any, B: Any, variant: Variant = DEFAULT_VARIANT, **kw: Any) -> Result:
    """SC-WEAT of one target w against A, B: ``(mean cos(w,A) - mean cos(w,B)) / SD`` of all
    of w's similarities (joint SD; ``variant.sd='pooled'`` pools within A and B); the p-value
    and bootstrap permute / resample the attribute items. n_x = 1, n_y = 0."""
    w = np.atleast_2d(np.asarray(w, float))
    if len(w) != 1:
        raise ValueError(f"SC-WEAT takes one target vector, got {len(w)}")
    A, B = np.atleast_2d(np.asarray(A, float)), np.atleast_2d(np.asarray(B, float))
    u, v = cosine(w, A)[0], cosine(w, B)[0]
    return two_sample(u, v, variant, sizes=(1, 0, len(A), len(B)), **kw)


# ---------------------------------------------------------------------------- markedness

def markedness(image_embeddings: Any, groups: Sequence[Any], prompt_embeddings: Any,
               group_order: Sequence[Any] | None = None, confidence: float = 0.95,
               balanced: int | bool = False, seed: int = 0) -> pd.DataFrame:
    """Per group, the share of images whose closest prompt is the unmarked one.

    ``prompt_embeddings``: row 0 the unmarked prompt, then one row per group prompt.
    ``groups``: each image's group (missing values are left out). ``balanced``: True draws,
    without replacement, as many images from each group as the smallest group has (their
    balanced-resample design); an int draws that many (groups smaller than it are kept
    whole and flagged ``short``). Columns: group, n, n_unmarked, share, ci_low, ci_high
    (Wilson), n_group_total, design; ``attrs['p_homogeneity']``: chi-square test of equal
    shares across groups (NaN when it cannot be computed).
    """
    from .inference import wilson

    E = normalise(image_embeddings)
    P = normalise(prompt_embeddings)
    g = pd.Series(list(groups), dtype=object)
    if len(g) != len(E):
        raise ValueError(f"{len(g)} group labels for {len(E)} images")
    closest = np.argmax(E @ P.T, axis=1)
    unmarked = closest == 0
    order = list(group_order) if group_order is not None else list(dict.fromkeys(g.dropna()))
    rng = np.random.default_rng(seed)
    sizes = {k: int((g == k).sum()) for k in order}
    present = [k for k in order if sizes[k] > 0]
    target = None
    if balanced is True:
        target = min((sizes[k] for k in present), default=0)
    elif balanced and not isinstance(balanced, bool):
        target = int(balanced)
    rows = []
    for k in order:
        idx = np.flatnonzero((g == k).to_numpy())
        design = "all images"
        if target is not None and len(idx):
            if len(idx) > target:
                idx = np.sort(rng.choice(idx, size=target, replace=False))
            design = f"balanced: {target} per group" + (" (short)" if sizes[k] < target else "")
        n, x = len(idx), int(unmarked[idx].sum())
        lo, hi = wilson(x, n, confidence)
        rows.append({"group": k, "n": n, "n_unmarked": x, "share": x / n if n else math.nan,
                     "ci_low": float(lo), "ci_high": float(hi), "n_group_total": sizes[k], "design": design})
    df = pd.DataFrame(rows, columns=["group", "n", "n_unmarked", "share", "ci_low", "ci_high",
                                     "n_group_total", "design"])
    table = np.array([[r["n_unmarked"], r["n"] - r["n_unmarked"]] for r in rows if r["n"] > 0], float)
    p = math.nan
    if len(table) >= 2 and (table.sum(axis=0) > 0).all():
        p = float(sps.chi2_contingency(table, correction=False)[1])
    df.attrs["p_homogeneity"] = p
    return df


def variant_from(spec: Any = None, **overrides: Any) -> Variant:
    """A :class:`Variant` from a name (``ghate2025``, ``american_white``, ``mleat``), a mapping
    ``{name?, sd?, ddof?, p?}`` (unset keys from the default, or from the named base), or None."""
    if spec is None:
        base = DEFAULT_VARIANT
        fields: Mapping[str, Any] = {}
    elif isinstance(spec, str):
        if spec not in VARIANTS:
            raise ValueError(f"unknown variant {spec!r}; choose {', '.join(VARIANTS)} or give "
                             "{sd: joint|pooled, ddof: 1|0, p: permutation|welch_t|normal_fit}")
        base, fields = VARIANTS[spec], {}
    elif isinstance(spec, Mapping):
        fields = dict(spec)
        base = VARIANTS.get(str(fields.get("name")), DEFAULT_VARIANT)
    else:
        raise ValueError(f"variant must be a name or a mapping, got {type(spec).__name__}")
    merged = {"name": base.name, "sd": base.sd, "ddof": base.ddof, "p": base.p}
    unknown = set(fields) - set(merged)
    if unknown:
        raise ValueError(f"variant: unknown keys {sorted(unknown)}; use name, sd, ddof, p")
    merged.update({k: v for k, v in fields.items() if v is not None})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    named = VARIANTS.get(str(merged["name"]))
    if named is not None and (merged["sd"], merged["ddof"], merged["p"]) != (named.sd, named.ddof, named.p):
        merged["name"] = "custom"   # a built-in name keeps its meaning: changed settings are not it
    return Variant(str(merged["name"]), str(merged["sd"]), merged["ddof"], str(merged["p"]))
