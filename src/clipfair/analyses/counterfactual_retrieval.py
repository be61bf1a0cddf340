"""Pooled-ranking retrieval measures of counterfactual sets, through :mod:`clipfair.methods.retrieval`.

Layer: analyses (used by :mod:`clipfair.analyses.counterfactual`).

Image sets (``retrieval.preset=social_counterfactuals``'s conventions: desired = the pool's own
shares, an absent value's skew 0)
    for each subject (e.g. an occupation) and each attribute combination that varies
    (``varies``), one ranking: every image of the subject's sets of that kind, ordered by
    cosine similarity with the subject's neutral query (``subject_templates``, e.g. "a photo of
    a doctor."; ties by dataset order). MaxSkew@K by each varied attribute and by their
    intersection (SocialCounterfactuals' groups, e.g. race+gender), each beside the retrieval
    code's test of no association (exact multivariate hypergeometric where the top-K count
    vectors are few enough, else label shuffles), adjusted over every subject x varies x
    attribute x K with the run's correction. K: ``groups`` (the default, as the authors' code:
    the number of intersectional groups of the varied attributes) or integers. The mean over
    subjects (their reported number) has a percentile bootstrap interval over subjects.

Caption sets (VisoGender; ``retrieval.preset=visogender``'s conventions, as ``src/metrics.py``
``calculate_retrieval_bias`` of oxai/visogender)
    per occupation and image kind (two-person: occupation-first and participant-first
    templates; one-person: occupation-first), one ranking of that occupation's own images
    for the neutral caption ("The doctor and their patient", the participant / object of the
    occupation's first image), by the occupation's perceived gender: Bias@5, Bias@10
    ((masculine - feminine) / (masculine + feminine), 0 when neither), MaxSkew@5, MaxSkew@10
    (desired = the occupation's own gender shares; an absent gender's share taken as 1/K) and
    NDKL over the whole ranking. Reported as VisoGender's ``summary_stats.py`` does: the mean
    and the SD (ddof = 1) over occupations; an occupation whose images all have one perceived
    gender is included with the values their code gives it (MaxSkew 0, NDKL 0, Bias +-1) and
    has no test.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

#: separates the parts of a pool value (subject, varies) in the hidden pool column
SEP = " \u00b7 "
POOL = "_cf_pool"
#: VisoGender's reported metrics: (retrieval metric, k, reported name)
VG_METRICS = (("bias", 5, "bias@5"), ("bias", 10, "bias@10"), ("max_skew", 5, "max_skew@5"),
              ("max_skew", 10, "max_skew@10"), ("ndkl", "all", "ndkl"))
NEUTRAL_PRONOUN = "their"
#: a mean over fewer subjects (occupations) than this is marked small
MIN_SUBJECTS = 5


class _Opts:
    """The counterfactual analysis's ``retrieval`` block: ``enabled``, ``k`` (image sets only;
    VisoGender's K are fixed: 5, 10 and the whole ranking), ``bootstrap`` (replicates of the
    interval of a mean over subjects, and of VisoGender's per-occupation Bias@K image bootstrap),
    ``permutations`` (label shuffles of the null where it is not exact)."""

    def __init__(self, block: Mapping[str, Any] | None) -> None:
        from ..methods.retrieval import RetrievalError

        b = dict(block or {})
        unknown = set(b) - {"enabled", "k", "bootstrap", "permutations"}
        if unknown:
            raise RetrievalError(f"analyses.counterfactual.retrieval: unknown key(s) {sorted(unknown)}; allowed: "
                                 "enabled, k, bootstrap, permutations")
        self.enabled = bool(b.get("enabled", True))
        k = b.get("k", ["groups"])
        self.k = list(k) if isinstance(k, (list, tuple)) else [k]
        for x in self.k:
            if not (x in ("groups", "all") or (isinstance(x, int) and not isinstance(x, bool) and x > 0)):
                raise RetrievalError(f"analyses.counterfactual.retrieval.k: {x!r} is not a positive integer, "
                                     "'groups' or 'all'")
        self.bootstrap = int(b.get("bootstrap", 1000))
        self.permutations = int(b.get("permutations", 1000))
        if self.bootstrap < 0 or self.permutations < 0:
            raise RetrievalError("analyses.counterfactual.retrieval: bootstrap and permutations must be >= 0")


def parse_options(block: Mapping[str, Any] | None) -> _Opts:
    return _Opts(block)


def _options(preset: str, confidence: float, correction: str, seed: int, bootstrap: int, permutations: int,
             **over: Any):
    from ..methods.retrieval import options_from_config

    o = options_from_config({"enabled": True, "preset": preset, "queries": [], "permutations": permutations,
                             "bootstrap": {"B": bootstrap, "seed": seed}}, confidence, correction=correction)
    return replace(o, **over)


def _one_pool(table: pd.DataFrame, emb: np.ndarray, encode: Callable, query_set: str, query: str,
              prompts: Sequence[str], templates: Sequence[str], pool: str, options: Any,
              orders: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """The retrieval table of one query ranking the images whose pool column is ``pool``."""
    from ..methods.retrieval import Query, QuerySet, retrieval_bias

    idx = np.flatnonzero((table[POOL] == pool).to_numpy())
    qs = QuerySet(query_set, tuple(templates), (Query(query, tuple(prompts), pool=pool),))
    return retrieval_bias(table.iloc[idx].reset_index(drop=True), emb[idx], [qs], encode, options,
                          orders=orders)


def readjust(df: pd.DataFrame, correction: str, confidence: float, families: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """p_adjusted / significant recomputed over the rows of several retrieval tables joined:
    each family (name -> the metrics whose per-query rows with a p-value are its tests, each row
    one test) adjusted with the run's correction, as one retrieval run adjusts its own."""
    from ..stats.inference import CORRECTIONS

    out = df.copy()
    out["p_adjusted"] = np.nan
    for metrics in families.values():
        rows = np.flatnonzero(out["metric"].isin(list(metrics)).to_numpy() & out["p_value"].notna().to_numpy())
        if len(rows):
            out.iloc[rows, out.columns.get_loc("p_adjusted")] = CORRECTIONS[correction](
                out["p_value"].to_numpy(float)[rows])
    out["significant"] = np.nan_to_num(out["p_adjusted"].to_numpy(float), nan=1.0) < 1.0 - confidence
    return out


def _boot_mean(x: np.ndarray, B: int, confidence: float, rng: np.random.Generator) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if B <= 0 or len(x) < 2:
        return np.nan, np.nan
    m = x[rng.integers(0, len(x), size=(B, len(x)))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(m, [a, 1 - a])
    return float(lo), float(hi)


def _sd(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if len(x) >= 2 else np.nan


# ---------------------------------------------------------------------------- image sets

def set_retrieval(table: pd.DataFrame, emb: np.ndarray, encode: Callable, *, attrs: Sequence[str],
                  templates: Sequence[str], opts: _Opts, confidence: float, correction: str, seed: int,
                  orders: Mapping[str, Sequence[str]] | None = None, small: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MaxSkew@K of each subject x varies ranking (see the module docstring). Returns the rows of
    ``counterfactual.csv`` (:data:`clipfair.analyses.counterfactual.COLUMNS` plus ``k``,
    ``n_images``, ``null_mean``, ``p_value``, ``p_adjusted``, ``significant``, ``p_method``) and
    the joined retrieval table (every metric, p-values adjusted over all rankings)."""
    from ..methods.retrieval import COLUMNS as RCOLUMNS

    t = table.reset_index(drop=True)
    have = t["subject"].astype(str).str.len() > 0
    t = t.assign(**{POOL: t["subject"].astype(str) + SEP + t["varies"].astype(str)})
    parts = []
    sets_in: dict[str, int] = {}
    for (subject, varies), g in t[have].groupby(["subject", "varies"], sort=True):
        varied = [a for a in attrs if g[a].dropna().astype(str).replace("", np.nan).dropna().nunique() > 1]
        if not varied:
            continue
        specs: list[Any] = list(varied) + ([tuple(varied)] if len(varied) > 1 else [])
        groups = int(g[list(varied)].dropna().astype(str).drop_duplicates().shape[0])
        ks = sorted({groups if k == "groups" else k for k in opts.k}, key=lambda k: (k == "all", k if k != "all" else 0))
        # no image bootstrap: MaxSkew has no image-bootstrap interval (clipfair.methods.retrieval.I_NONE_STAT)
        o = _options("social_counterfactuals", confidence, correction, seed, 0, opts.permutations,
                     attributes=tuple(specs), pool=POOL, k=tuple(ks), prompts="ensemble")
        pool = str(subject) + SEP + str(varies)
        sets_in[pool] = int(g["set_id"].nunique())
        parts.append(_one_pool(t, emb, encode, str(varies), str(subject), (str(subject),), templates, pool, o,
                               orders))
    if not parts:
        return pd.DataFrame(), pd.DataFrame(columns=RCOLUMNS)
    rt = pd.concat(parts, ignore_index=True)
    rt = rt[~rt["query"].astype(str).str.startswith("(")].reset_index(drop=True)  # one query per call: no summaries
    rt = readjust(rt, correction, confidence, {"max_skew": ["max_skew"], "min_skew": ["min_skew"], "ndkl": ["ndkl"]})
    ms = rt[(rt["metric"] == "max_skew") & (rt["desired"] == "dataset")].copy()
    ms["sets"] = [sets_in.get(p.split("=", 1)[1], 0) for p in ms["pool"].astype(str)]
    rows: list[dict[str, Any]] = []
    base = {"analysis": "counterfactual", "taxonomy": "subject", "label": "(subject)", "attribute_value": "",
            "direction": "lower_is_better", "expected": np.nan, "diff_low": np.nan, "diff_high": np.nan,
            "favoured": ""}
    for r in ms.itertuples():
        rows.append({**base, "subject": r.query, "varies": r.query_set, "attribute": r.attribute,
                     "metric": f"max_skew@{r.k}", "value": float(r.value), "ci_low": np.nan, "ci_high": np.nan,
                     "n_sets": int(r.sets), "small": int(r.sets) < small, "k": str(r.k), "n_images": int(r.n_images),
                     "null_mean": float(r.null_mean), "p_value": float(r.p_value), "p_adjusted": float(r.p_adjusted),
                     "significant": bool(r.significant), "p_method": r.p_method, "sd": np.nan})
    rng = np.random.default_rng([seed, 23])
    for (varies, attr, k), g in ms.groupby(["query_set", "attribute", ms["k"].astype(str)], sort=True):
        x = g["value"].to_numpy(float)
        lo, hi = _boot_mean(x, opts.bootstrap, confidence, rng)
        rows.append({**base, "subject": "all", "varies": varies, "attribute": attr, "metric": f"max_skew@{k}",
                     "value": float(np.nanmean(x)), "ci_low": lo, "ci_high": hi, "n_sets": int(g["sets"].sum()),
                     "small": int(g["sets"].sum()) < small or len(g) < MIN_SUBJECTS, "k": k, "n_images": int(g["n_images"].sum()),
                     "null_mean": float(np.nanmean(g["null_mean"].to_numpy(float))), "p_value": np.nan,
                     "p_adjusted": np.nan, "significant": False,
                     "p_method": f"none: the mean over {len(g)} subjects (their own tests decide findings); "
                                 "interval: percentile bootstrap over subjects", "sd": _sd(x),
                     "n_subjects": len(g)})
    return pd.DataFrame(rows), rt


# ---------------------------------------------------------------------------- caption sets (VisoGender)

#: (query set name, scene, the caption template, how the caption reads)
VG_QUERIES = (("two-person/occupation_first", "two-person", "The {occupation} and {pronoun} {other}"),
              ("two-person/participant_first", "two-person", "The {other} and {pronoun} {occupation}"),
              ("one-person/occupation_first", "one-person", "The {occupation} and {pronoun} {other}"))


def visogender_metrics(genders: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """VisoGender's per-occupation values computed with :func:`clipfair.methods.retrieval.ranked_metrics`
    (ranking by score, ties by order; desired = the list's own shares; absent 1/K; values
    masculine, feminine). For an occupation with one perceived gender: MaxSkew 0, NDKL 0,
    Bias +-1, as their code gives."""
    from ..methods.retrieval import ranked_metrics

    g = np.asarray([str(x) for x in genders], dtype=object)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    values = ["masculine", "feminine"]
    codes = np.array([values.index(x) for x in g[order]], dtype=np.int64)
    q = np.bincount(codes, minlength=2) / len(codes)
    out: dict[str, float] = {}
    for metric, k, name in VG_METRICS:
        kk = len(codes) if k == "all" else min(int(k), len(codes))
        r = ranked_metrics(codes[None, :kk], np.array([kk]), q, "inverse_k")
        out[name] = float(r[metric][0])
    return out


def caption_retrieval(table: pd.DataFrame, emb: np.ndarray, encode: Callable, *, opts: _Opts, confidence: float,
                      correction: str, seed: int, orders: Mapping[str, Sequence[str]] | None = None,
                      small: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """VisoGender's retrieval Bias@K / MaxSkew@K / NDKL (see the module docstring): rows of
    ``counterfactual.csv`` per occupation x query set and the mean (with a bootstrap interval
    over occupations) and SD over occupations; and the joined retrieval table (tests of every
    two-gender occupation, adjusted over all rankings)."""
    t = table.reset_index(drop=True)
    t = t.assign(**{POOL: t["subject"].astype(str) + SEP + t["scene"].astype(str)})
    # Bias@K = masculine - feminine, as theirs, whatever order the run declares
    orders = {**dict(orders or {}), "occupation_gender": ["masculine", "feminine"]}
    X = np.asarray(emb, np.float32)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    rows: list[dict[str, Any]] = []
    parts = []
    base = {"analysis": "counterfactual", "taxonomy": "visogender", "label": "retrieval", "attribute": "occupation_gender",
            "attribute_value": "masculine - feminine", "expected": np.nan, "diff_low": np.nan, "diff_high": np.nan,
            "favoured": ""}
    o = _options("visogender", confidence, correction, seed, opts.bootstrap, opts.permutations,
                 attributes=("occupation_gender",), pool=POOL, prompts="ensemble")
    per: list[dict[str, Any]] = []
    for qs_name, scene, tpl in VG_QUERIES:
        sub = t[(t["scene"] == scene) & t["occupation_gender"].notna()]
        for occ, g in sub.groupby("subject", sort=True):
            caption = tpl.format(occupation=occ, other=g["other"].iloc[0], pronoun=NEUTRAL_PRONOUN)
            s = X[g.index.to_numpy()] @ np.asarray(encode([caption]), np.float32)[0]
            vals = visogender_metrics(g["occupation_gender"].tolist(), s)
            per.append({"query_set": qs_name, "subject": occ, "caption": caption, "n": len(g),
                        "one_gender": g["occupation_gender"].nunique() < 2, **vals})
            if g["occupation_gender"].nunique() > 1:
                parts.append(_one_pool(t, emb, encode, qs_name, caption, (caption,), ("{}",),
                                       occ + SEP + scene, o, orders))
    if not per:
        return pd.DataFrame(), pd.DataFrame()
    rt = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["query", "metric", "p_value"])
    if len(rt):
        rt = rt[~rt["query"].astype(str).str.startswith("(")].reset_index(drop=True)
        rt = readjust(rt, correction, confidence, {"count": ["bias"], "max_skew": ["max_skew"],
                                                   "min_skew": ["min_skew"], "ndkl": ["ndkl"]})
    P = pd.DataFrame(per)
    test = {}
    if len(rt):
        for r in rt[rt["metric"].isin(["bias", "max_skew", "ndkl"])].itertuples():
            if r.metric == "ndkl" and str(r.k) != "all":
                continue
            name = "ndkl" if r.metric == "ndkl" else f"{r.metric}@{r.k}"
            test[(r.query_set, r.query, name)] = r
    for r in P.itertuples():
        for _, k, name in VG_METRICS:
            tr = test.get((r.query_set, r.caption, name))
            lo = hi = np.nan
            if tr is not None and str(getattr(tr, "interval_method", "")).startswith("image bootstrap"):
                lo, hi = float(tr.interval_low), float(tr.interval_high)
            rows.append({**base, "subject": r.subject, "varies": r.query_set, "metric": name,
                         "value": float(P.loc[r.Index, name]),
                         "ci_low": lo, "ci_high": hi, "n_sets": int(r.n), "small": int(r.n) < small,
                         "direction": "neutral" if name.startswith("bias") else "lower_is_better",
                         "k": str(k), "n_images": int(r.n),
                         "null_mean": np.nan if tr is None else float(tr.null_mean),
                         "p_value": np.nan if tr is None else float(tr.p_value),
                         "p_adjusted": np.nan if tr is None else float(tr.p_adjusted),
                         "significant": False if tr is None else bool(tr.significant),
                         "p_method": ("none: one perceived gender among the occupation's images (VisoGender's "
                                      "values: MaxSkew 0, NDKL 0, Bias +-1)") if tr is None else tr.p_method,
                         "sd": np.nan, "query": r.caption})
    rng = np.random.default_rng([seed, 29])
    for qs_name, g in P.groupby("query_set", sort=False):
        for _, k, name in VG_METRICS:
            x = g[name].to_numpy(float)
            lo, hi = _boot_mean(x, opts.bootstrap, confidence, rng)
            rows.append({**base, "subject": "all", "varies": qs_name, "metric": name, "value": float(np.mean(x)),
                         "ci_low": lo, "ci_high": hi, "n_sets": int(len(g)), "small": len(g) < MIN_SUBJECTS,
                         "direction": "neutral" if name.startswith("bias") else "lower_is_better", "k": str(k),
                         "n_images": int(g["n"].sum()), "null_mean": np.nan, "p_value": np.nan,
                         "p_adjusted": np.nan, "significant": False,
                         "p_method": f"none: mean and SD over {len(g)} occupations (VisoGender's summary); "
                                     "interval: percentile bootstrap over occupations", "sd": _sd(x),
                         "n_subjects": int(len(g)), "query": ""})
    return pd.DataFrame(rows), rt
