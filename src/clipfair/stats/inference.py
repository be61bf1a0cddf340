"""Intervals and tests for differences and ratios of proportions, and multiplicity corrections.

Layer: stats.

Vectorised over numpy arrays (scalars work too). Every interval takes ``confidence``.

- :func:`newcombe_diff`: Newcombe's hybrid score interval for ``p1 - p2`` of two
  independent proportions (Newcombe 1998, method 10: square-and-add of Wilson intervals).
- :func:`newcombe_paired_diff`: Newcombe's square-and-add interval for a difference of two
  proportions measured on the same items (Newcombe 1998b, method 10, with the phi
  correlation term). Its width is not zero when there are no discordant items.
- :func:`katz_ratio`: the Katz log interval for a ratio of proportions ``p1 / p2``
  (undefined, NaN, when either count is 0).
- :func:`two_proportion_z`: the pooled (score) two-proportion z-test.
- :func:`mcnemar_exact`: McNemar's exact test on the discordant counts.
- :func:`holm`, :func:`benjamini_hochberg`: adjusted p-values over a whole table.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import binom, norm

__all__ = ["z_value", "wilson_interval", "wilson", "newcombe_diff", "welch_diff", "newcombe_paired_diff", "katz_ratio",
           "two_proportion_z", "mcnemar_exact", "holm", "benjamini_hochberg", "CORRECTIONS", "CORRECTION_NAMES",
           "adjusted_confidence"]


def z_value(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return float(norm.ppf(0.5 + float(confidence) / 2.0))


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


def wilson(count, n, confidence: float = 0.95):
    """Wilson score interval as float arrays (:func:`wilson_interval`)."""
    lo, hi = wilson_interval(np.asarray(count, float), np.asarray(n, float), confidence)
    return np.asarray(lo, float), np.asarray(hi, float)


def _arrays(*xs):
    return np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in xs))


def newcombe_diff(x1, n1, x2, n2, confidence: float = 0.95):
    """(low, high) of Newcombe's hybrid score interval for ``x1/n1 - x2/n2``."""
    x1, n1, x2, n2 = _arrays(x1, n1, x2, n2)
    l1, u1 = wilson(x1, n1, confidence)
    l2, u2 = wilson(x2, n2, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)


def welch_diff(m1, s1, n1, m2, s2, n2, confidence: float = 0.95):
    """(low, high, p) of Welch's interval and two-sided t-test for a difference of means
    ``m1 - m2`` (standard deviations ``s1``, ``s2``; NaN where a group has fewer than 2 units)."""
    from scipy.stats import t as t_dist

    m1, s1, n1, m2, s2, n2 = _arrays(m1, s1, n1, m2, s2, n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
        se = np.sqrt(v1 + v2)
        df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
        d = m1 - m2
        q = t_dist.ppf(0.5 + float(confidence) / 2.0, df)
        p = 2.0 * t_dist.sf(np.abs(d / se), df)
    bad = (n1 < 2) | (n2 < 2) | ~np.isfinite(se)
    zero = ~bad & (se == 0)  # no spread at all: the difference is exact
    low, high = np.where(zero, d, d - q * se), np.where(zero, d, d + q * se)
    p = np.where(zero, np.where(d == 0, 1.0, 0.0), p)
    nan = np.full_like(d, np.nan)
    return np.where(bad, nan, low), np.where(bad, nan, high), np.where(bad, nan, p)


def newcombe_paired_diff(a, b, c, d, confidence: float = 0.95):
    """(low, high) for ``p1 - p2`` on paired items: ``a`` both 1, ``b`` first 1 second 0,
    ``c`` first 0 second 1, ``d`` both 0; ``p1 = (a+b)/n``, ``p2 = (a+c)/n``
    (Newcombe 1998b, method 10; agrees with contingencytables' Newcombe_square_and_add_CI_paired_2x2)."""
    a, b, c, d = _arrays(a, b, c, d)
    n = a + b + c + d
    l1, u1 = wilson(a + b, n, confidence)
    l2, u2 = wilson(a + c, n, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = (a + b) / n, (a + c) / n
        denom = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
        # Newcombe's phi: ad - bc shrunk by n/2 towards 0 when positive (as in his method 10)
        cross = a * d - b * c
        num = np.where(cross > n / 2, cross - n / 2, np.where(cross < 0, cross, 0.0))
        phi = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 0.0)
    delta = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    low = delta - np.sqrt(np.maximum(dl1 ** 2 - 2 * phi * dl1 * du2 + du2 ** 2, 0.0))
    high = delta + np.sqrt(np.maximum(du1 ** 2 - 2 * phi * du1 * dl2 + dl2 ** 2, 0.0))
    return np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)


def katz_ratio(x1, n1, x2, n2, confidence: float = 0.95):
    """(ratio, low, high): ``(x1/n1) / (x2/n2)`` with the Katz log interval; NaN where a
    count is 0 (the log interval is undefined there)."""
    x1, n1, x2, n2 = _arrays(x1, n1, x2, n2)
    z = z_value(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (x1 / n1) / (x2 / n2)
        se = np.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
        ok = (x1 > 0) & (x2 > 0)
        low = np.where(ok, ratio * np.exp(-z * se), np.nan)
        high = np.where(ok, ratio * np.exp(z * se), np.nan)
    return np.where(x2 > 0, ratio, np.nan), low, high


def two_proportion_z(x1, n1, x2, n2):
    """Two-sided pooled (score) two-proportion z-test p-value; 1 when both proportions are
    equal at 0 or 1, NaN when a group is empty."""
    x1, n1, x2, n2 = _arrays(x1, n1, x2, n2)
    with np.errstate(invalid="ignore", divide="ignore"):
        pool = (x1 + x2) / (n1 + n2)
        se = np.sqrt(pool * (1 - pool) * (1 / n1 + 1 / n2))
        z = (x2 / n2 - x1 / n1) / se
        p = 2 * norm.sf(np.abs(z))
        same = (se == 0) & (x1 / np.where(n1 == 0, np.nan, n1) == x2 / np.where(n2 == 0, np.nan, n2))
    return np.where(same, 1.0, p)


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    b, c = _arrays(b, c)
    n = b + c
    with np.errstate(invalid="ignore"):
        p = 2.0 * binom.cdf(np.minimum(b, c), n, 0.5)
    return np.where(n == 0, 1.0, np.minimum(p, 1.0))


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
CORRECTION_NAMES = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg"}


def adjusted_confidence(correction: str, confidence: float, m: int, n_selected: int) -> float:
    """The level of the multiplicity-adjusted intervals of a table of ``m`` tests.

    ``holm``: simultaneous Bonferroni intervals, level ``1 - alpha/m``; ``bh``: the
    Benjamini-Yekutieli false-coverage-rate intervals for the ``n_selected`` rejected rows,
    level ``1 - n_selected * alpha / m`` (``1 - alpha/m`` when none is selected).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    alpha = 1.0 - float(confidence)
    m = max(int(m), 1)
    k = max(int(n_selected), 1) if correction == "bh" else 1
    return 1.0 - k * alpha / m
