"""Retrieval bias: rank a dataset's images for neutral text queries and measure how skewed
the top k is by each demographic attribute (Geyik et al. 2019, arXiv:1905.01989).

Layer: methods.

Ranking: images are ordered by cosine similarity between their (L2-normalised) embedding
and the query's text embedding, highest first; **ties are broken by dataset order** (the
earlier row ranks higher). Images whose value of an attribute is missing are left out of
that attribute's ranking. With ``pool`` set, each query ranks only the images whose pool
column equals the query's pool value (default: the query itself).

Metrics, per query x attribute x k x desired distribution (``q``):

- ``share``: p_a, the share of the top k with value a;
- ``skew``: Skew@k(a) = ln(p_a / q_a); a value absent from the top k (p_a = 0) gets
  ``-inf`` (``absent=neg_inf``), ln((1/k) / q_a) (``inverse_k``, Berg et al. 2022 /
  VisoGender) or 0 (``zero``, SocialCounterfactuals);
- ``max_skew`` / ``min_skew``: max / min over the values;
- ``ndkl``: (1/Z) sum_{i=1..k} KL(D_top-i || q) / log2(i + 1), Z = sum_{i=1..k} 1/log2(i + 1),
  KL with natural logarithms and 0 log 0 = 0 (the absent convention does not apply);
- ``bias`` (attributes with exactly two values a, b): Bias@k = (n_a - n_b) / (n_a + n_b) in
  [-1, 1], a and b in the attribute's declared order (the dataset's declaration, e.g. FairFace's
  Male - Female), else sorted order.

``desired``: ``dataset`` (each value's share of the ranked images: demographic parity) or
``uniform`` (1 / number of values present: equal representation). ``k`` may be ``all``
(the whole ranking). Prompts: ``ensemble`` (one embedding per query: every template x prompt
encoded, normalised, averaged, re-normalised, as zero-shot classes are) or ``per_template``
(one ranking per template; the query's value is the mean over its templates, as Berg et al.
average over their 319 prompts).

Intervals: a seeded percentile bootstrap over images. Each replicate resamples the ranked
images with replacement (exact multinomial counts; per pool when pools are on), re-ranks
them (a copy of an image ranks with it; ties keep dataset order), recomputes the desired
``dataset`` shares and every metric; query-set means and worsts are computed on the same
replicates. Interval ends are order statistics (``inverted_cdf``), which keeps ``-inf`` exact.

Speed and memory: text embeddings are computed once per unique prompt; scores are computed
in chunks of ``chunk_size`` queries (a chunk x n_images float32 block); the top ``k`` of each
row comes from a partial sort (``np.argpartition``) of the chunk, with exact tie handling at
the boundary; bootstrap counts are kept as uint8 (B x n_images bytes).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..utility.registry import yaml_files
from ..data.taxonomy import Taxonomy, TaxonomyClass, check_template, locate_file, read_yaml_mapping, scalar_text
from ..utility.yamlio import load_yaml_file

log = logging.getLogger(__name__)

__all__ = ["QuerySetError", "RetrievalError", "Query", "QuerySet", "RetrievalOptions", "load_query_set",
           "load_query_sets", "options_from_config", "PRESETS", "rank_top", "ranked_metrics", "prefix_metrics",
           "retrieval_bias", "retrieval_sections", "write_retrieval", "COLUMNS"]

TOP_KEYS = {"name", "description", "source", "templates", "queries"}
QUERY_KEYS = {"query", "prompts", "category", "pool"}
DEFAULT_CATEGORY = "query"
DESIRED = ("dataset", "uniform")
ABSENT = ("neg_inf", "inverse_k", "zero")
PROMPT_MODES = ("ensemble", "per_template")
METRICS = ("share", "skew", "max_skew", "min_skew", "ndkl", "bias")
AGGREGATED = ("max_skew", "min_skew", "ndkl", "bias")
MEAN_ROW, WORST_ROW = "(mean over queries)", "(worst over queries)"
BASE_COLUMNS = ["query_set", "query", "category", "attribute", "attribute_value", "k", "metric", "value",
                "ci_low", "ci_high", "n_images", "desired_share", "desired", "absent", "pool", "prompts"]
#: columns added by issue 21 (after :data:`BASE_COLUMNS`): each row's null expectation, its test of
#: no association (adjusted), and the interval the report shows (which may be none, with the reason)
NULL_COLUMNS = ["null_mean", "excess", "p_value", "p_adjusted", "significant", "p_method",
                "interval_low", "interval_high", "interval_method"]
COLUMNS = BASE_COLUMNS + NULL_COLUMNS


class RetrievalError(ValueError):
    """A bad retrieval option or a dataset that cannot support it; the message says which."""


class QuerySetError(RetrievalError):
    """A malformed query set; the message names the file and the entry."""


# --------------------------------------------------------------------------- query sets

@dataclass(frozen=True)
class Query:
    text: str
    prompts: tuple[str, ...]
    category: str = DEFAULT_CATEGORY
    pool: str | None = None  # the pool column's value this query ranks within (default: text)


@dataclass(frozen=True)
class QuerySet:
    name: str
    templates: tuple[str, ...]
    queries: tuple[Query, ...]
    description: str = ""
    citation: str = ""
    source: str = "<python>"

    def as_taxonomy(self, templates: Sequence[str] | None = None) -> Taxonomy:
        """The queries as taxonomy classes, so prompt-length checks and prompt ensembling are
        the zero-shot stage's own (:func:`clipfair.methods.zeroshot.class_embeddings`)."""
        return Taxonomy(self.name, tuple(templates or self.templates),
                        tuple(TaxonomyClass(q.text, q.prompts, q.category) for q in self.queries),
                        source=self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "templates": list(self.templates),
                "queries": [{"query": q.text, "prompts": list(q.prompts), "category": q.category,
                             **({"pool": q.pool} if q.pool is not None else {})} for q in self.queries]}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def builtin_dir() -> Path:
    return Path(str(importlib.resources.files("clipfair") / "queries"))


BUILTINS = yaml_files("query set", builtin_dir())


def _strings(raw: Any, where: str, what: str) -> list[str]:
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if (not isinstance(raw, list) or not raw
            or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) and str(x).strip()
                       for x in raw)):
        raise QuerySetError(f"{where}: '{what}' must be a non-empty list of non-empty strings")
    return [str(x) for x in raw]


def _parse_query(raw: Any, where: str) -> Query:
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = {"query": raw}
    if not isinstance(raw, dict):
        raise QuerySetError(f"{where}: a query must be a string or a mapping with 'query' "
                            "(and optional prompts, category, pool)")
    unknown = set(raw) - QUERY_KEYS
    if unknown:
        raise QuerySetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(QUERY_KEYS)}")
    text = raw.get("query")
    if not isinstance(text, (str, int, float)) or isinstance(text, bool) or not str(text).strip():
        raise QuerySetError(f"{where}: 'query' is required and must be a non-empty string")
    text = str(text)
    prompts = _strings(raw.get("prompts", [text]), f"{where} ({text})", "prompts")
    pool = raw.get("pool")
    category = scalar_text(raw.get("category", DEFAULT_CATEGORY), where, "category", QuerySetError)
    return Query(text, tuple(prompts), category, None if pool is None else scalar_text(pool, where, "pool", QuerySetError))


def load_query_set(spec: str | Path) -> QuerySet:
    """A built-in query set by name, or a user's YAML file by path. Errors name the file and
    the entry."""
    path = (locate_file(str(spec), builtins=BUILTINS, kind="query set", error=QuerySetError)
            if not isinstance(spec, Path) else spec.resolve())
    data = read_yaml_mapping(path, kind="query set", error=QuerySetError, expect="name, templates, queries")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise QuerySetError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    name = data.get("name")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)  # the text as written (clipfair.utility.yamlio)
    if not isinstance(name, str) or not name.strip():
        raise QuerySetError(f"{path}: 'name' is required and must be a non-empty string")
    templates = _strings(data.get("templates"), f"{path} ({name})", "templates")
    for i, t in enumerate(templates):
        check_template(t, f"{path} ({name}): templates[{i}]", error=QuerySetError)
    raw = data.get("queries")
    if not isinstance(raw, list) or not raw:
        raise QuerySetError(f"{path} ({name}): 'queries' must be a non-empty list")
    queries, seen = [], set()
    for i, q in enumerate(raw):
        query = _parse_query(q, f"{path} ({name}): queries[{i}]")
        if query.text in seen:
            raise QuerySetError(f"{path} ({name}): queries[{i}]: duplicate query {query.text!r}; "
                                "queries must be unique")
        seen.add(query.text)
        queries.append(query)
    text = {k: "" if data.get(k) is None else scalar_text(data[k], f"{path} ({name})", k, QuerySetError)
            for k in ("description", "source")}
    return QuerySet(name, tuple(templates), tuple(queries), text["description"], text["source"], str(path))


def load_query_sets(specs: Iterable[str | Path]) -> list[QuerySet]:
    out: list[QuerySet] = []
    names: dict[str, str] = {}
    for s in specs:
        qs = load_query_set(s)
        if qs.name in names:
            raise QuerySetError(f"two query sets are named {qs.name!r}: {names[qs.name]} and {qs.source}; "
                                "names must be unique")
        names[qs.name] = qs.source
        out.append(qs)
    if not out:
        raise QuerySetError("retrieval.queries is empty; list at least one query set, e.g. [occupations_neutral]")
    return out


# --------------------------------------------------------------------------- options and presets

def _load_presets() -> dict[str, dict[str, Any]]:
    path = Path(str(importlib.resources.files("clipfair") / "references" / "retrieval_presets.yaml"))
    return load_yaml_file(path)


PRESETS: dict[str, dict[str, Any]] = _load_presets()
DEFAULT_QUERIES = ("occupations_neutral", "trait_adjectives", "clip_denigration_words")
DEFAULTS: dict[str, Any] = {"queries": DEFAULT_QUERIES, "k": (10, 100, 1000), "attributes": None,
                            "desired": ("dataset", "uniform"), "absent": "neg_inf", "prompts": "ensemble", "pool": None}


@dataclass(frozen=True)
class RetrievalOptions:
    queries: tuple[str, ...] = DEFAULT_QUERIES
    k: tuple[int | str, ...] = (10, 100, 1000)
    # None: every attribute column the dataset declares; a tuple of names is an intersection
    attributes: tuple[str | tuple[str, ...], ...] | None = None
    desired: tuple[str, ...] = ("dataset", "uniform")
    absent: str = "neg_inf"
    prompts: str = "ensemble"
    pool: str | None = None
    bootstrap: int = 1000
    seed: int = 0
    confidence: float = 0.95
    chunk_size: int = 128
    preset: str | None = None
    from_preset: tuple[str, ...] = field(default=())
    permutations: int = 1000   # label shuffles of the permutation null (NDKL; MaxSkew where not exact)
    correction: str = "holm"   # the run's disparity_correction: holm | bh
    normalize_images: bool = True  # False: rank by unnormalised image features (Berg et al.'s code)

    def __post_init__(self) -> None:
        bad = [d for d in self.desired if d not in DESIRED]
        if bad or not self.desired:
            raise RetrievalError(f"retrieval.desired: {bad or '[]'} not allowed; use any of {list(DESIRED)}")
        if self.absent not in ABSENT:
            raise RetrievalError(f"retrieval.absent: {self.absent!r} not allowed; use one of {list(ABSENT)}")
        if self.prompts not in PROMPT_MODES:
            raise RetrievalError(f"retrieval.prompts: {self.prompts!r} not allowed; use one of {list(PROMPT_MODES)}")
        if not self.k:
            raise RetrievalError("retrieval.k is empty; give e.g. [10, 100, 1000] or [all]")
        for k in self.k:
            if k != "all" and not (isinstance(k, int) and not isinstance(k, bool) and k > 0):
                raise RetrievalError(f"retrieval.k: {k!r} is not a positive integer or 'all'")
        if self.bootstrap < 0:
            raise RetrievalError(f"retrieval.bootstrap.B: {self.bootstrap} must be >= 0 (0: no intervals)")
        if not 0 < self.confidence < 1:
            raise RetrievalError(f"confidence {self.confidence} must be between 0 and 1")
        if self.chunk_size < 1:
            raise RetrievalError("retrieval.chunk_size must be >= 1")
        if self.permutations < 0:
            raise RetrievalError(f"retrieval.permutations: {self.permutations} must be >= 0 (0: no NDKL test)")
        if self.correction not in ("holm", "bh"):
            raise RetrievalError(f"correction {self.correction!r} not allowed; use holm or bh")
        for a in self.attributes or ():
            if isinstance(a, tuple) and (len(a) < 2 or not all(isinstance(x, str) and x for x in a)):
                raise RetrievalError(f"retrieval.attributes: {list(a)} must be an attribute name or a list of "
                                     "two or more names (an intersection, e.g. [race, gender])")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: ([list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v)
                for k, v in d.items()}


def _k_value(x: Any) -> int | str:
    if isinstance(x, str) and x.strip().lower() == "all":
        return "all"
    if isinstance(x, str) and x.strip().isdigit():
        return int(x)
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _attribute_spec(a: Any) -> str | tuple[str, ...]:
    """An attribute name, or an intersection given as a list of names."""
    if isinstance(a, (list, tuple)):
        return tuple(str(x) for x in a)
    return str(a)


def options_from_config(block: Mapping[str, Any] | None, confidence: float = 0.95,
                        correction: str = "holm") -> RetrievalOptions | None:
    """The ``retrieval:`` config block as options (None when the block is off). A preset
    fills every option left null; options set explicitly win."""
    if not block or not block.get("enabled", False):
        return None
    allowed = {"enabled", "queries", "k", "attributes", "desired", "absent", "prompts", "pool", "bootstrap",
               "chunk_size", "preset", "permutations", "normalize_images"}
    unknown = set(block) - allowed
    if unknown:
        raise RetrievalError(f"retrieval: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    preset = block.get("preset")
    values = {k: block.get(k) for k in DEFAULTS}
    from_preset: list[str] = []
    if preset is not None:
        if preset not in PRESETS:
            raise RetrievalError(f"retrieval.preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
        for key, v in PRESETS[preset]["settings"].items():
            if values.get(key) is None:
                values[key] = v
                from_preset.append(key)
    for key, v in DEFAULTS.items():
        if values[key] is None and key not in from_preset:
            values[key] = v
    boot = block.get("bootstrap") or {}
    if not isinstance(boot, Mapping):
        raise RetrievalError("retrieval.bootstrap must be a mapping {B: 1000, seed: 0}")
    return RetrievalOptions(
        queries=tuple(str(q) for q in _tuple(values["queries"])),
        k=tuple(_k_value(k) for k in _tuple(values["k"])),
        attributes=None if values["attributes"] is None else tuple(_attribute_spec(a) for a in _tuple(values["attributes"])),
        desired=tuple(str(d) for d in _tuple(values["desired"])),
        absent=str(values["absent"]), prompts=str(values["prompts"]),
        pool=None if values["pool"] is None else str(values["pool"]),
        bootstrap=int(boot.get("B", 1000)), seed=int(boot.get("seed", 0)), confidence=float(confidence),
        chunk_size=int(block.get("chunk_size") or 128), preset=preset, from_preset=tuple(from_preset),
        permutations=int(1000 if block.get("permutations") is None else block["permutations"]),
        correction=str(correction),
        normalize_images=bool(True if block.get("normalize_images") is None else block["normalize_images"]))


# --------------------------------------------------------------------------- ranking

ROW_BATCH = 32  # rows of a score block partially sorted at once (bounds the index arrays)
CELLS = 4_000_000  # rows x positions x values per vectorised metric batch (bounds memory)


def rank_top(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` highest scores of each row, best first, ties broken by index
    (the earlier image first). A partial sort (``np.argpartition``) finds the boundary score;
    only the candidates at or above it are sorted, so the result equals a stable full sort."""
    s = np.atleast_2d(np.asarray(scores))
    n = s.shape[1]
    depth = min(int(depth), n)
    out = np.empty((s.shape[0], depth), dtype=np.int64)
    for r0 in range(0, s.shape[0], ROW_BATCH):
        blk = s[r0:r0 + ROW_BATCH]
        if depth > n // 4:
            out[r0:r0 + len(blk)] = np.argsort(-blk, axis=1, kind="stable")[:, :depth]
            continue
        part = np.argpartition(blk, n - depth, axis=1)[:, n - depth:]
        thr = np.take_along_axis(blk, part, axis=1).min(axis=1)
        for r in range(len(blk)):
            cand = np.flatnonzero(blk[r] >= thr[r])  # increasing index: a stable sort keeps dataset order
            out[r0 + r] = cand[np.argsort(-blk[r, cand], kind="stable")[:depth]]
    return out


def _expand(codes: np.ndarray, weights: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Ranked attribute codes of each replicate's resample: ranked image j appears
    ``weights[b, j]`` times; the first ``k`` positions (all when ``k`` is None). Returns
    (R, L) codes padded with -1, and each row's length."""
    w = weights.astype(np.int64)
    if k is not None:
        prev = np.cumsum(w, axis=1) - w
        w = np.clip(k - prev, 0, w)
    lengths = w.sum(axis=1)
    R, L = w.shape[0], int(lengths.max()) if len(lengths) else 0
    out = np.full((R, max(L, 1)), -1, dtype=np.int64)
    flat = np.repeat(np.tile(codes, R), w.ravel())
    rows = np.repeat(np.arange(R), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(flat)) - np.repeat(starts, lengths)
    out[rows, pos] = flat
    return out, lengths


def _skew_stats(counts: np.ndarray, kk: np.ndarray, q: np.ndarray, absent: str) -> dict[str, np.ndarray]:
    """share, skew (R, A), max_skew, min_skew, bias (R,) from top-k counts (R, A), k (R, 1)
    and desired shares q (R, A)."""
    R, A = counts.shape
    share = counts / np.maximum(kk, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.log(q)
        skew = np.log(share) - logq
        if absent == "neg_inf":
            fill = np.full_like(skew, -np.inf)
        elif absent == "inverse_k":
            fill = np.log(1.0 / np.maximum(kk, 1)) - logq
        else:
            fill = np.zeros_like(skew)
        skew = np.where(counts > 0, skew, fill)
        skew = np.where(q > 0, skew, np.nan)  # a value missing from a resample has no skew
    valid = ~np.isnan(skew)
    out = {"share": share, "skew": skew,
           "max_skew": np.where(valid.any(1), np.max(np.where(valid, skew, -np.inf), axis=1), np.nan),
           "min_skew": np.where(valid.any(1), np.min(np.where(valid, skew, np.inf), axis=1), np.nan)}
    if A == 2:
        tot = counts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["bias"] = np.where(tot > 0, (counts[:, 0] - counts[:, 1]) / tot, 0.0)
    else:
        out["bias"] = np.full(R, np.nan)
    return out


def _kl_terms(p: np.ndarray, plogp: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_i || q) at every prefix i: sum_a p log p - p log q, with 0 log 0 = 0 (a value with
    p > 0 always has q > 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
    return (plogp - p * logq[:, None, :]).sum(axis=2)


def _prefix(onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    L = onehot.shape[1]
    cum = np.cumsum(onehot, axis=1, dtype=np.float64)  # (R, L, A)
    i = np.arange(1, L + 1, dtype=np.float64)
    p = cum / i[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return cum, p, plogp, 1.0 / np.log2(i + 1.0)


def ranked_metrics(codes: np.ndarray, lengths: np.ndarray, desired: np.ndarray | Mapping[str, np.ndarray],
                   absent: str) -> dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]]:
    """Metrics of ranked lists of any lengths. ``codes``: (R, L) value codes in rank order,
    -1 past each row's length; ``lengths``: (R,) the k of each row; ``desired``: (R, A) or
    (A,) shares, or a mapping of such (counts are then computed once for all). Returns share,
    skew (R, A); max_skew, min_skew, ndkl, bias (R,) (bias NaN unless A == 2) — per desired
    name when ``desired`` is a mapping."""
    many = isinstance(desired, Mapping)
    qs = dict(desired) if many else {"_": desired}
    codes = np.atleast_2d(codes)
    R, L = codes.shape
    A = np.shape(next(iter(qs.values())))[-1]
    lengths = np.asarray(lengths, dtype=np.int64)
    onehot = codes[:, :, None] == np.arange(A)[None, None, :]
    counts = onehot.sum(axis=1).astype(np.float64)  # padding (-1) matches no value
    kk = lengths[:, None].astype(np.float64)
    cum, p, plogp, disc = _prefix(onehot)
    mask = np.arange(1, L + 1)[None, :] <= lengths[:, None]
    z = (disc[None, :] * mask).sum(axis=1)
    results = {}
    for name, q in qs.items():
        q = np.broadcast_to(np.asarray(q, dtype=np.float64), (R, A))
        out = _skew_stats(counts, kk, q, absent)
        out["ndkl"] = (_kl_terms(p, plogp, q) * disc * mask).sum(axis=1) / z
        results[name] = out
    return results if many else results["_"]


def prefix_metrics(codes: np.ndarray, cuts: Sequence[int], desired: Mapping[str, np.ndarray],
                   absent: str) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """:func:`ranked_metrics` of the top ``c`` of each row for every ``c`` in ``cuts`` from
    one pass (NDKL@c is a prefix sum of the discounted KL terms). ``codes``: (R, >= max cuts),
    no padding within the first max(cuts) positions."""
    codes = np.atleast_2d(codes)[:, :max(cuts)]
    R = codes.shape[0]
    A = np.shape(next(iter(desired.values())))[-1]
    onehot = codes[:, :, None] == np.arange(A)[None, None, :]
    cum, p, plogp, disc = _prefix(onehot)
    z = np.cumsum(disc)
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {c: {} for c in cuts}
    for name, q in desired.items():
        q = np.broadcast_to(np.asarray(q, dtype=np.float64), (R, A))
        ckd = np.cumsum(_kl_terms(p, plogp, q) * disc, axis=1)
        for c in cuts:
            m = _skew_stats(cum[:, c - 1], np.full((R, 1), float(c)), q, absent)
            m["ndkl"] = ckd[:, c - 1] / z[c - 1]
            out[c][name] = m
    return out


def _batched_prefix(codes: np.ndarray, cuts: Sequence[int], desired: Mapping[str, np.ndarray],
                    absent: str) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """:func:`prefix_metrics` over row batches of at most :data:`CELLS` cells."""
    R = codes.shape[0]
    A = np.shape(next(iter(desired.values())))[-1]
    step = max(1, CELLS // max(1, max(cuts) * A))
    parts = []
    for r0 in range(0, R, step):
        dq = {d: (q[r0:r0 + step] if np.ndim(q) == 2 else q) for d, q in desired.items()}
        parts.append(prefix_metrics(codes[r0:r0 + step], cuts, dq, absent))
    return {c: {d: {m: np.concatenate([p[c][d][m] for p in parts]) for m in parts[0][c][d]} for d in desired}
            for c in cuts}


# --------------------------------------------------------------------------- the stage

@dataclass
class _Attr:
    """One attribute within one pool: value codes per pool image (-1 missing) and values."""
    name: str
    values: list[str]
    codes: np.ndarray
    desired_point: dict[str, np.ndarray]
    desired_boot: dict[str, np.ndarray]  # (B, A)

    @property
    def n_valid(self) -> int:
        return int((self.codes >= 0).sum())


def _natural_key(v: str) -> tuple:
    """Numbers by value, then text: "2" before "10" (never lexical order for numbered values)."""
    import re

    return tuple((0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
                 for t in re.split(r"(\d+(?:\.\d+)?)", str(v)) if t != "")


def _value_order(attr: str, present: Iterable[str], orders: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The attribute's declared order (the dataset's declaration) for the values present, then
    undeclared values in natural order."""
    present = {str(v) for v in present}
    declared = [str(v) for v in ((orders or {}).get(attr) or ())]
    known = [v for v in declared if v in present]
    return known + sorted(present.difference(known), key=_natural_key)


#: the bootstrap's resample counts (B x images bytes) may take at most this much memory
MAX_BOOTSTRAP_BYTES = 2 * 1024**3


def check_bootstrap_size(options: RetrievalOptions, n_images: int) -> None:
    """Before any image is embedded: refuse a bootstrap whose resample counts (B x n_images
    bytes) would not fit in :data:`MAX_BOOTSTRAP_BYTES`."""
    need = int(options.bootstrap) * int(n_images)
    if need > MAX_BOOTSTRAP_BYTES:
        most = MAX_BOOTSTRAP_BYTES // max(1, n_images)
        raise RetrievalError(f"retrieval.bootstrap.B={options.bootstrap:,} over {n_images:,} images needs "
                             f"{need / 1024**3:.1f} GiB for the resample counts (at most "
                             f"{MAX_BOOTSTRAP_BYTES / 1024**3:.0f} GiB); set retrieval.bootstrap.B to at most "
                             f"{most:,} (1000 is usual)")


def _boot_counts(n: int, B: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) exact multinomial resample counts as uint8 (a count above 255 is clipped; with
    n images each count is Binomial(n, 1/n), so this never matters in practice)."""
    out = np.empty((B, n), dtype=np.uint8)
    for b in range(B):
        out[b] = np.minimum(np.bincount(rng.integers(0, n, n), minlength=n), 255)
    return out


def _quantiles(x: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (replicates), NaN-aware, order statistics only."""
    x = np.asarray(x, dtype=np.float64)
    a = (1.0 - confidence) / 2.0
    if not np.isnan(x).any():
        lo, hi = np.quantile(x, [a, 1.0 - a], axis=0, method="inverted_cdf")
        return lo, hi
    flat = x.reshape(x.shape[0], -1)
    lo, hi = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
    for j in range(flat.shape[1]):
        col = flat[:, j][~np.isnan(flat[:, j])]
        if len(col):
            lo[j], hi[j] = np.quantile(col, [a, 1.0 - a], method="inverted_cdf")
    return lo.reshape(x.shape[1:]), hi.reshape(x.shape[1:])


@dataclass
class _Unit:
    query_set: str
    query: Query
    embedding: np.ndarray
    qid: int  # the query's index (per-template mode: several units share one)
    last: bool  # the query's last unit


def _units(qsets: Sequence[QuerySet], encode: Callable[[Sequence[str]], np.ndarray], mode: str) -> list[_Unit]:
    from .zeroshot import class_embeddings

    units: list[_Unit] = []
    qid = 0
    for qs in qsets:
        if mode == "ensemble":
            w = class_embeddings(qs.as_taxonomy(), encode).weights
            per_t = [w]
        else:
            per_t = [class_embeddings(qs.as_taxonomy([t]), encode).weights for t in qs.templates]
        for i, q in enumerate(qs.queries):
            units += [_Unit(qs.name, q, per_t[j][i], qid, j == len(per_t) - 1) for j in range(len(per_t))]
            qid += 1
    return units


_WARNED: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)


#: attributes of the default list (every declared one) with more values than this are left out
MAX_DEFAULT_VALUES = 50


def retrieval_bias(table: pd.DataFrame, image_embeddings: np.ndarray, query_sets: Sequence[QuerySet],
                   encode: Callable[[Sequence[str]], np.ndarray], options: RetrievalOptions,
                   attributes: Sequence[str] | None = None,
                   orders: Mapping[str, Sequence[str]] | None = None, progress: bool = False) -> pd.DataFrame:
    """The long retrieval table (columns :data:`COLUMNS`) for ``query_sets`` ranked over the
    images of ``table`` (row i = ``image_embeddings[i]``). ``encode`` maps prompt strings to
    text embeddings (the zero-shot stage's cached :class:`clipfair.run.embed.TextEmbedder`).
    Attributes: ``options.attributes``, else ``attributes`` (the dataset's declared ones, less
    those with more than :data:`MAX_DEFAULT_VALUES` values: skipped with a warning unless named in
    ``options.attributes``); an entry that is a tuple of names is their intersection (values
    ``White+Male``). ``orders``: the dataset's declared value orders
    (:meth:`FaceDataset.value_orders`): values, tables and heat maps follow them. Every row
    carries its test of no association (:func:`_add_null_columns`). ``progress``: a progress bar
    over the queries."""
    from .zeroshot import l2_normalize

    if len(table) != len(image_embeddings):
        raise RetrievalError(f"{len(table)} table rows but {len(image_embeddings)} image embeddings")
    specs = list(options.attributes if options.attributes is not None else attributes or [])
    missing = [a for s in specs for a in ((s,) if isinstance(s, str) else s) if a not in table.columns]
    if missing:
        raise RetrievalError(f"retrieval.attributes: {missing} not in the dataset; its columns: "
                             f"{', '.join(map(str, table.columns))}")
    if options.attributes is None:  # the default: attributes with very many values are left out
        many = {a: int(table[a].nunique(dropna=True)) for a in specs}
        for a in [a for a in specs if many[a] > MAX_DEFAULT_VALUES]:
            log.warning("retrieval: attribute %r has %d distinct values (more than %d) and is left out; name it "
                        "in retrieval.attributes to measure it anyway (slow: every value is a group)",
                        a, many[a], MAX_DEFAULT_VALUES)
        specs = [a for a in specs if many[a] <= MAX_DEFAULT_VALUES]
    if not specs:
        raise RetrievalError("retrieval: no attribute to measure; set retrieval.attributes")
    table, vorders = _with_intersections(table, specs, dict(orders or {}))
    attrs = [s if isinstance(s, str) else "+".join(s) for s in specs]
    X = np.asarray(image_embeddings, dtype=np.float32)  # not copied: scores are scaled per image instead
    inv_norm = (1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", X, X)), 1e-12)).astype(np.float32)
    if not options.normalize_images:  # Berg et al.'s eval_ranking: unnormalised image . normalised text
        inv_norm = np.ones_like(inv_norm)
    units = _units(query_sets, encode, options.prompts)
    U = l2_normalize(np.stack([u.embedding for u in units]))
    acc = _Accumulator(units, options)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(units), desc="retrieval", unit="query", disable=not progress, leave=False)
    for pool_no, (pool_value, img_idx, unit_ids) in enumerate(_pools(table, units, options)):
        W = (_boot_counts(len(img_idx), options.bootstrap, np.random.default_rng([options.seed, pool_no]))
             if options.bootstrap else None)
        pinfo = _pool_attributes(table.iloc[img_idx], attrs, pool_value, W, options, vorders)
        for a_no, at in enumerate(pinfo):
            acc.nulls[(pool_value, at.name)] = _attribute_nulls(at, options, (options.seed, 21, pool_no, a_no))
        whole = pool_value is None
        Xp, inv = (X, inv_norm) if whole else (X[img_idx], inv_norm[img_idx])
        kmax = max([k for k in options.k if k != "all"] or [1])
        n = len(img_idx)
        depth = n if "all" in options.k else min(n, (2 * kmax + 64) if W is not None else kmax)
        for start in range(0, len(unit_ids), options.chunk_size):
            ids = unit_ids[start:start + options.chunk_size]
            S = (U[ids] @ Xp.T) * inv[None, :]
            orders = rank_top(S, depth)
            for at in pinfo:
                acc.add_points(ids, S, orders, at, pool_value)
            if W is not None:
                for r, uid in enumerate(ids):
                    acc.add_replicates(uid, S[r], orders[r], pinfo, W, pool_value)
            bar.update(len(ids))
    bar.close()
    df = _add_null_columns(acc.frame(), acc)
    df.attrs["confidence"] = options.confidence
    return df


def _with_intersections(table: pd.DataFrame, specs: Sequence[str | tuple[str, ...]],
                        orders: dict[str, Sequence[str]]) -> tuple[pd.DataFrame, dict[str, Sequence[str]]]:
    """``table`` with a column ``a+b`` for each intersection (value ``x+y``, missing when a part
    is), its declared order the product of the parts' orders (first part major)."""
    inter = [s for s in specs if not isinstance(s, str)]
    if not inter:
        return table, orders
    table = table.copy()
    for parts in inter:
        name = "+".join(parts)
        cols = [table[a] for a in parts]
        ok = np.logical_and.reduce([c.notna().to_numpy() for c in cols])
        joined = pd.Series(["+".join(str(c.iloc[i]) for c in cols) if ok[i] else None for i in range(len(table))],
                           index=table.index, dtype=object)
        table[name] = joined
        present = set(joined.dropna())
        order = [""]
        for a in parts:
            vals = _value_order(a, table[a].dropna().astype(str), orders)
            order = [f"{p}+{v}" if p else v for p in order for v in vals]
        orders[name] = [v for v in order if v in present]
    return table, orders


def _pool_attributes(sub: pd.DataFrame, attrs: Sequence[str], pool_value: str | None, W: np.ndarray | None,
                     options: RetrievalOptions, orders: Mapping[str, Sequence[str]] | None = None) -> list[_Attr]:
    out = []
    for a in attrs:
        fcodes, uniques = pd.factorize(sub[a], use_na_sentinel=True)  # missing -> -1
        names = [str(v) for v in uniques]
        values = _value_order(a, names, orders)
        if len(values) < 2:
            _warn_once(f"retrieval: attribute {a!r} has {len(values)} value(s)"
                       f"{f' in pool {pool_value!r}' if pool_value is not None else ''}; skew is not defined, left out")
            continue
        remap = np.array([values.index(v) for v in names] + [-1], dtype=np.int64)  # [-1] for missing
        codes = remap[np.asarray(fcodes, dtype=np.int64)]
        onehot = (codes[:, None] == np.arange(len(values))[None, :]).astype(np.float64)
        dp = {"dataset": onehot.sum(0) / onehot.sum(), "uniform": np.full(len(values), 1.0 / len(values))}
        db: dict[str, np.ndarray] = {}
        if W is not None:
            cnt = np.zeros((W.shape[0], len(values)))
            for b0 in range(0, W.shape[0], 64):
                cnt[b0:b0 + 64] = W[b0:b0 + 64].astype(np.float32) @ onehot.astype(np.float32)
            db = {"dataset": cnt / cnt.sum(axis=1, keepdims=True),
                  "uniform": np.broadcast_to(dp["uniform"], (W.shape[0], len(values)))}
        out.append(_Attr(a, values, codes, {d: dp[d] for d in options.desired}, {d: db[d] for d in options.desired} if db else {}))
    return out


def _pools(table: pd.DataFrame, units: list[_Unit], options: RetrievalOptions) -> list[tuple[str | None, np.ndarray, np.ndarray]]:
    if options.pool is None:
        return [(None, np.arange(len(table)), np.arange(len(units)))]
    if options.pool not in table.columns:
        raise RetrievalError(
            f"retrieval.pool: column {options.pool!r} is not in the dataset (columns: "
            f"{', '.join(map(str, table.columns))}); pools rank each query within the images of its own "
            "group (e.g. an occupation column): give a dataset with that column or set retrieval.pool=null")
    col = table[options.pool].astype(str).where(table[options.pool].notna(), None)
    groups: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        groups.setdefault(u.query.pool if u.query.pool is not None else u.query.text, []).append(i)
    present = set(col.dropna())
    out = []
    for value, ids in groups.items():
        if value not in present:
            u = units[ids[0]]
            raise RetrievalError(
                f"retrieval.pool: query {u.query.text!r} ({u.query_set}) ranks within "
                f"{options.pool}={value!r}, but no image has that value; values present: "
                f"{', '.join(sorted(present)[:20])}{' ...' if len(present) > 20 else ''} "
                "(set the query's 'pool' in its query set)")
        out.append((value, np.flatnonzero((col == value).to_numpy()), np.array(ids)))
    return out


def _first_valid(codes_rows: np.ndarray, kk: int, at: _Attr, scores: np.ndarray) -> np.ndarray:
    """(c, kk) codes of the first ``kk`` images with a value, per row; a row whose ranked
    prefix holds too few is re-ranked in full."""
    if (codes_rows[:, :kk] >= 0).all():
        return codes_rows[:, :kk]
    out = np.empty((len(codes_rows), kk), dtype=np.int64)
    for r, row in enumerate(codes_rows):
        v = row[row >= 0]
        if len(v) < kk:
            v = at.codes[np.argsort(-scores[r], kind="stable")]
            v = v[v >= 0]
        out[r] = v[:kk]
    return out


class _Accumulator:
    """Point values per unit (vectorised per chunk), interval ends per query (from the
    replicates, averaged over a query's units), and running aggregates per query set."""

    def __init__(self, units: list[_Unit], options: RetrievalOptions) -> None:
        self.units, self.o = units, options
        self.nq = units[-1].qid + 1 if units else 0
        self.qinfo = {u.qid: u for u in units}
        self.point: dict[tuple, dict[str, np.ndarray]] = {}   # (attr, d, k) -> metric -> (n_units, ...)
        self.ci: dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # (attr, d, k) -> metric -> (nq, ...)
        self.n: dict[tuple, np.ndarray] = {}      # (attr, k) -> n ranked per unit
        self.values: dict[str, list[str]] = {}
        self.desired_share: dict[tuple, np.ndarray] = {}  # (attr, d) -> (nq, A)
        self.pool: dict[int, str | None] = {}
        self.pending: dict[int, list] = {}
        self.agg: dict[tuple, dict[str, Any]] = {}
        self.pool_caps: dict[tuple, np.ndarray] = {}  # (pool value, attr) -> value counts of the pool
        self.nulls: dict[tuple, dict] = {}  # (pool value, attr) -> (k, desired) -> metric -> _Null
        self.set_ci: dict[tuple, tuple] = {}  # (set, attr, desired, k, metric) -> mean's interval

    def _slot(self, store: dict, key: tuple, metric: str, shape: tuple) -> np.ndarray:
        d = store.setdefault(key, {})
        if metric not in d:
            d[metric] = np.full(shape, np.nan)
        return d[metric]

    def _register(self, at: _Attr) -> None:
        if at.name in self.values and self.values[at.name] != at.values:
            merged = self.values[at.name] + [v for v in at.values if v not in self.values[at.name]]
            raise RetrievalError(f"retrieval: attribute {at.name!r} has different values in different pools "
                                 f"({self.values[at.name]} vs {at.values}); every pool must hold all of {merged}")
        self.values[at.name] = at.values

    def add_points(self, ids: np.ndarray, S: np.ndarray, orders: np.ndarray, at: _Attr, pool_value) -> None:
        self._register(at)
        self.pool_caps[(pool_value, at.name)] = np.bincount(at.codes[at.codes >= 0], minlength=len(at.values))
        A, nu = len(at.values), len(self.units)
        C = at.codes[orders]
        for uid in ids:
            self.pool[self.units[uid].qid] = pool_value
        for d in self.o.desired:
            ds = self._slot(self.desired_share, (at.name, d), "x", (self.nq, A))
            ds[[self.units[i].qid for i in ids]] = at.desired_point[d]
        cut = {}
        for k in self.o.k:
            kk = at.n_valid if k == "all" else int(k)
            if kk > at.n_valid:
                _warn_once(f"retrieval: k={k} is more than the {at.n_valid} images with a {at.name} value to rank"
                           f"{f' in pool {pool_value!r}' if pool_value is not None else ''}; that k is left out there")
                continue
            cut[k] = kk
        if not cut:
            return
        codes = _first_valid(C, max(cut.values()), at, S)
        res = _batched_prefix(codes, sorted(set(cut.values())), at.desired_point, self.o.absent)
        for k, kk in cut.items():
            self.n.setdefault((at.name, k), np.full(nu, -1))[ids] = at.n_valid
            for d, m in res[kk].items():
                for metric, v in m.items():
                    self._slot(self.point, (at.name, d, k), metric, (nu, *v.shape[1:]))[ids] = v

    def add_replicates(self, uid: int, s: np.ndarray, order: np.ndarray, pinfo: list[_Attr], W: np.ndarray,
                       pool_value) -> None:
        """Bootstrap replicates of one ranking: the numeric k from one expansion to the
        largest (the top k of a resample is a prefix of its top k'), ``all`` on its own."""
        u = self.units[uid]
        res: dict[tuple, dict[str, np.ndarray]] = {}
        full: list[np.ndarray] = []
        B = W.shape[0]
        for at in pinfo:
            ks = [k for k in self.o.k if (at.n_valid if k == "all" else int(k)) <= at.n_valid]
            numeric = sorted({int(k) for k in ks if k != "all"})
            ordv = order[at.codes[order] >= 0]
            for group in ([numeric] if numeric else []) + ([["all"]] if "all" in ks else []):
                kmax = None if group == ["all"] else max(group)
                wb = W[:, ordv]
                if len(ordv) < at.n_valid and (kmax is None or (wb.sum(axis=1, dtype=np.int64) < kmax).any()):
                    if not full:
                        full.append(np.argsort(-s, kind="stable"))
                    ordv = full[0][at.codes[full[0]] >= 0]
                    wb = W[:, ordv]
                codes = at.codes[ordv]
                L = kmax if kmax is not None else int(wb.sum(axis=1).max())
                step = max(1, CELLS // max(1, L * len(at.values)))
                parts = []
                for b0 in range(0, B, step):
                    c, lengths = _expand(codes, wb[b0:b0 + step], kmax)
                    dq = {d: q[b0:b0 + step] for d, q in at.desired_boot.items()}
                    parts.append(prefix_metrics(c, group, dq, self.o.absent) if kmax is not None
                                 else {"all": ranked_metrics(c, lengths, dq, self.o.absent)})
                for k in group:
                    for d in self.o.desired:
                        res[(at.name, d, k)] = {m: np.concatenate([p[k][d][m] for p in parts]) for m in METRICS}
        self.pending.setdefault(u.qid, []).append(res)
        if u.last:
            self._finish(u.qid, self.pending.pop(u.qid), pool_value)

    def _finish(self, qid: int, results: list[dict], pool_value) -> None:
        """Interval ends of one query (replicates averaged over its units), folded into its
        query set's running aggregates."""
        u = self.qinfo[qid]
        for key in results[0]:
            reps = {m: np.mean([r[key][m] for r in results], axis=0) for m in METRICS}
            for m, rep in reps.items():
                lo, hi = _quantiles(rep, self.o.confidence)
                nq_shape = (self.nq, *rep.shape[1:])
                self._slot(self.ci, key, m + "_lo", nq_shape)[qid] = lo
                self._slot(self.ci, key, m + "_hi", nq_shape)[qid] = hi
                if m in AGGREGATED:
                    a = self.agg.setdefault((u.query_set, *key, m), {})
                    _fold(a, rep)

    # ----------------------------------------------------------------- the long table
    def frame(self) -> pd.DataFrame:
        """The long table, built from numpy column blocks (one DataFrame at the end)."""
        o = self.o
        qids = np.array([u.qid for u in self.units])
        counts = np.bincount(qids, minlength=self.nq).astype(np.float64)
        qs_name = np.array([self.qinfo[q].query_set for q in range(self.nq)], dtype=object)
        q_text = np.array([self.qinfo[q].query.text for q in range(self.nq)], dtype=object)
        q_cat = np.array([self.qinfo[q].query.category for q in range(self.nq)], dtype=object)
        pool = np.array(["" if o.pool is None else f"{o.pool}={self.pool.get(q)}" for q in range(self.nq)],
                        dtype=object)
        blocks: list[dict[str, Any]] = []
        qorder = np.arange(self.nq)

        def block(mask, rep, **cols) -> None:
            n = int(mask.sum())
            out = {}
            for c, x in cols.items():
                if isinstance(x, np.ndarray):
                    out[c] = (np.repeat(x, rep) if rep > 1 and len(x) == self.nq else x)[mask]
                else:
                    if isinstance(x, _KObj):
                        x = x.k
                    arr = np.empty(n, dtype=object if isinstance(x, (str, int)) or x is None else np.float64)
                    arr[:] = x
                    out[c] = arr
            blocks.append(out)

        for (attr, d, k), metrics in self.point.items():
            values = self.values[attr]
            A = len(values)
            n_unit = self.n[(attr, k)]
            have = np.bincount(qids, weights=(n_unit >= 0).astype(float), minlength=self.nq) == counts
            n_q = np.zeros(self.nq, dtype=np.int64)
            n_q[qids] = n_unit
            ci = self.ci.get((attr, d, k), {})
            common = dict(query_set=qs_name, query=q_text, category=q_cat, attribute=attr, k=_KObj(k), n_images=n_q,
                          desired=d, absent=o.absent, pool=pool, prompts=o.prompts, _q=qorder)
            for m in METRICS:
                if m == "bias" and A != 2:
                    continue
                qv = _mean_by(metrics[m], qids, counts)
                lo = ci.get(m + "_lo", np.full(qv.shape, np.nan))
                hi = ci.get(m + "_hi", np.full(qv.shape, np.nan))
                if m in ("share", "skew"):
                    block(np.repeat(have, A), A, **common, attribute_value=np.tile(np.array(values, dtype=object), self.nq),
                          metric=m, value=qv.ravel(), ci_low=lo.ravel(), ci_high=hi.ravel(),
                          desired_share=self.desired_share[(attr, d)]["x"].ravel())
                    continue
                label = f"{values[0]} - {values[1]}" if m == "bias" else ""
                block(have, 1, **common, attribute_value=label, metric=m, value=qv, ci_low=lo, ci_high=hi,
                      desired_share=np.full(self.nq, np.nan))
                for qs in dict.fromkeys(qs_name[have]):
                    sel = have & (qs_name == qs)
                    self._set_interval((qs, attr, d, str(k), m), metrics[m], qids, qorder[sel])
                    blocks.extend(self._aggregates(qs, attr, d, k, m, label, qv[sel], n_q[sel], pool[sel]))
        if not blocks:
            return pd.DataFrame(columns=BASE_COLUMNS)
        cols = {c: np.concatenate([b[c] for b in blocks]) for c in [*BASE_COLUMNS, "_q"]}
        order = np.argsort(cols.pop("_q"), kind="stable")
        df = pd.DataFrame({c: v[order] for c, v in cols.items()})
        for c in ("value", "ci_low", "ci_high", "desired_share"):
            df[c] = df[c].astype(np.float64)
        df["n_images"] = df["n_images"].astype(np.int64)
        return df

    def _set_interval(self, key: tuple, unit_vals: np.ndarray, qids: np.ndarray, set_qids: np.ndarray) -> None:
        """The interval of a query set's mean that resamples its queries and, with per-template
        prompts, its templates (two-way: one template draw for every query of a replicate):
        the image-sampling noise enters through each query's observed value. Percentile, seeded."""
        o = self.o
        if not o.bootstrap:
            self.set_ci[key] = (math.nan, math.nan, I_NONE_B0)
            return
        rows = [np.asarray(unit_vals[qids == q], dtype=np.float64) for q in set_qids]
        rng = np.random.default_rng([o.seed, 7, len(self.set_ci)])
        B = o.bootstrap
        if len({len(r) for r in rows}) == 1 and len(rows[0]) > 1:
            V = np.stack(rows)
            qi = rng.integers(0, len(V), (B, len(V)))
            ti = rng.integers(0, V.shape[1], (B, V.shape[1]))
            reps = V[qi[:, :, None], ti[:, None, :]].mean(axis=(1, 2))
            how = I_QUERY.format(t=" and templates")
        else:
            v = np.array([r.mean() for r in rows])
            reps = v[rng.integers(0, len(v), (B, len(v)))].mean(axis=1)
            how = I_QUERY.format(t="")
        lo, hi = _quantiles(reps, o.confidence)
        self.set_ci[key] = (float(lo), float(hi), how)

    def _aggregates(self, qs: str, attr: str, d: str, k, m: str, label: str, pts: np.ndarray, n_q: np.ndarray,
                    pools: np.ndarray) -> list[dict[str, Any]]:
        """Mean and worst over a query set's queries, with intervals from the same replicates.
        Worst: the highest MaxSkew / NDKL, the lowest MinSkew, the Bias farthest from 0."""
        a = self.agg.get((qs, attr, d, k, m), {})
        mean_b = a["sum"] / a["count"] if "sum" in a else None
        worst_b = a.get(_worst_kind(m))
        n_img = int(pd.Series(n_q).groupby(pools).first().sum()) if self.o.pool else int(n_q.max())
        out = []
        for name, val, rep in ((MEAN_ROW, float(np.mean(pts)), mean_b), (WORST_ROW, _worst(m, pts), worst_b)):
            lo, hi = _quantiles(rep, self.o.confidence) if rep is not None else (math.nan, math.nan)
            row = dict(query_set=qs, query=name, category="", attribute=attr, attribute_value=label, k=k,
                       metric=m, value=val, ci_low=float(lo), ci_high=float(hi), n_images=n_img,
                       desired_share=math.nan, desired=d, absent=self.o.absent,
                       pool="" if self.o.pool is None else f"{self.o.pool}=*", prompts=self.o.prompts, _q=self.nq)
            out.append({c: np.array([v], dtype=object if isinstance(v, str) else None) for c, v in row.items()})
        return out


@dataclass(frozen=True)
class _KObj:
    """k as one object column value (an int, or "all")."""
    k: int | str


def _mean_by(v: np.ndarray, qids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over each query's units (templates) of a per-unit array; -inf stays -inf."""
    if len(counts) == len(qids):  # one unit per query (ensemble prompts)
        out = np.empty((len(counts), *v.shape[1:]))
        out[qids] = v
        return out
    out = np.zeros((len(counts), *v.shape[1:]))
    np.add.at(out, qids, v)
    return out / counts.reshape(-1, *([1] * (v.ndim - 1)))


def _fold(a: dict, b: np.ndarray) -> None:
    """Fold one query's replicates into the running sum / max / min / farthest-from-0 arrays
    of its query set, so aggregate intervals need memory per set, not per query."""
    if "sum" not in a:
        a.update(sum=b.copy(), count=1, max=b.copy(), min=b.copy(), absmax=b.copy())
        return
    a["sum"] = a["sum"] + b
    a["count"] += 1
    a["max"] = np.fmax(a["max"], b)
    a["min"] = np.fmin(a["min"], b)
    a["absmax"] = np.where(np.abs(b) > np.abs(a["absmax"]), b, a["absmax"])


def _worst_kind(metric: str) -> str:
    """How a set's worst query is chosen, from the metric registry's direction: ``min`` for a
    higher-is-better metric (MinSkew), ``max`` for a lower-is-better one (MaxSkew, NDKL);
    Bias@K, whose harm is distance from 0 either way, ``absmax``."""
    from ..stats.specs import HIGHER
    from ..stats.specs import direction

    if metric == "bias":
        return "absmax"
    return "min" if direction(metric) == HIGHER else "max"


def _worst(metric: str, xs: np.ndarray) -> float:
    how = _worst_kind(metric)
    if how == "min":
        return float(np.nanmin(xs))
    if how == "absmax":
        return float(xs[np.nanargmax(np.abs(xs))])
    return float(np.nanmax(xs))


# --------------------------------------------------------------------------- report

TINY_EXPECTED = 5.0  # a value expected fewer than this many times in the top k is flagged


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "−∞" if x < 0 else "∞"
    return f"{x:.{digits}f}".replace("-", "−")


def _with_ci(row: pd.Series) -> str:
    """The value with the interval the run decided to show (``interval_low/high``; the
    image bootstrap's ``ci_low/high`` only in tables written before issue 21): never an
    interval that excludes its point."""
    lo, hi = ("interval_low", "interval_high") if "interval_low" in row.index else ("ci_low", "ci_high")
    if pd.isna(row[lo]) or not (row[lo] <= row["value"] <= row[hi]):
        return _fmt(row["value"])
    return f"{_fmt(row['value'])} [{_fmt(row[lo])}, {_fmt(row[hi])}]"


def _with_null(row: pd.Series) -> str:
    """A set mean with its interval and its null expectation."""
    out = _with_ci(row)
    nm = row.get("null_mean", math.nan)
    return out if pd.isna(nm) else f"{out} (null {_fmt(nm)})"


def _report_k(df: pd.DataFrame) -> int | str:
    ks = [k for k in df["k"].unique() if k != "all"]
    return max(int(k) for k in ks) if ks else "all"


def _k_eq(df: pd.DataFrame, k: int | str) -> pd.Series:
    return df["k"].astype(str) == str(k)


def _heatmap(df: pd.DataFrame, query_set: str, attribute: str, desired: str, k: int | str, path: Path,
             max_rows: int = 40) -> Path | None:
    """Skew@k per query (rows, by MaxSkew) and value (columns, in the attribute's declared order:
    the table's row order). A cell whose adjusted test of no association rejects is marked ``*``
    (bold); a value expected fewer than :data:`TINY_EXPECTED` times in the top k is marked ``†``
    (grey text): one image moves its skew a lot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..report.figures import DPI, save_figure

    data = heat_data(df, query_set, attribute, desired, k, max_rows)
    if data is None:
        return None
    sel, queries, values, z, S, T = data
    finite = z[np.isfinite(z)]
    lim = max(0.1, float(np.abs(finite).max()) if finite.size else 1.0)
    fig = Figure(figsize=(min(2.5 + 0.9 * len(values), 14.0), 1.6 + 0.28 * len(queries)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(np.where(np.isfinite(z), z, np.nan)), cmap="RdBu_r", vmin=-lim, vmax=lim,
                   aspect="auto")
    ax.set_facecolor("#bbbbbb")
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j]
            text = "absent" if np.isneginf(v) else ("" if np.isnan(v) else f"{v:.2f}")
            text += ("*" if S[i, j] else "") + ("†" if T[i, j] else "")
            color = ("#555555" if T[i, j] else
                     "white" if np.isfinite(v) and abs(v) > 0.6 * lim else "black")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color,
                    fontweight="bold" if S[i, j] else "normal", fontstyle="italic" if T[i, j] else "normal")
    cats = sel.drop_duplicates("query").set_index("query")["category"]
    ax.set_yticks(np.arange(len(queries)))
    ax.set_yticklabels([f"{q} ({cats.get(q, '')})" for q in queries], fontsize=8)
    ax.set_xticks(np.arange(len(values)))
    ax.set_xticklabels(values, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"Skew@{k} by {attribute}: {query_set} (desired: {desired})\n"
                 "* adjusted test rejects no association · † expected < "
                 f"{TINY_EXPECTED:g} in the top {k}", fontsize=9)
    fig.colorbar(im, ax=ax, label="Skew@k = ln(share in top k / desired share)", shrink=0.8)
    return save_figure(fig, path)


def heat_data(df: pd.DataFrame, query_set: str, attribute: str, desired: str, k: int | str, max_rows: int = 40):
    """What a heat map shows: (rows of the selection, queries by MaxSkew, values in the table's
    order, Skew grid, significant cells, tiny cells); None without skew rows."""
    df = _ensure_null_columns(df.copy())
    sel = df[(df.query_set == query_set) & (df.attribute == attribute) & (df.desired == desired) & _k_eq(df, k)
             & ~df["query"].isin([MEAN_ROW, WORST_ROW])]
    skew = sel[sel.metric == "skew"]
    if skew.empty:
        return None
    mx = sel[sel.metric == "max_skew"].set_index("query")["value"]
    queries = list(mx.sort_values(ascending=False, kind="stable").index[:max_rows])
    values = list(dict.fromkeys(skew["attribute_value"]))

    def grid(col: pd.Series) -> pd.DataFrame:
        return (skew.assign(_v=col).pivot_table(index="query", columns="attribute_value", values="_v", aggfunc="first",
                                                sort=False).reindex(index=queries, columns=values))

    z = grid(skew["value"]).to_numpy(dtype=np.float64)
    S = grid(skew["significant"].astype(float)).fillna(0).to_numpy() > 0
    T = grid(pd.Series(_tiny(skew).astype(float), index=skew.index)).fillna(0).to_numpy() > 0
    return sel, queries, values, z, S, T


def _tiny(rows: pd.DataFrame) -> np.ndarray:
    """Per share / skew row: its value is expected fewer than TINY_EXPECTED times in the top k."""
    kk = np.array([float(n) if str(k) == "all" else float(k) for k, n in zip(rows["k"], rows["n_images"])])
    return (rows["desired_share"].to_numpy(np.float64) * kk) < TINY_EXPECTED


def _mix(df: pd.DataFrame, query_set: str, query: str, attribute: str, desired: str, k) -> str:
    sh = df[(df.query_set == query_set) & (df["query"] == query) & (df.attribute == attribute)
            & (df.desired == desired) & _k_eq(df, k) & (df.metric == "share")]
    return " · ".join(f"{r.attribute_value} {100 * r.value:.0f}% (vs {100 * r.desired_share:.0f}%)"
                      for r in sh.itertuples())


def _conventions(df: pd.DataFrame, options: Mapping[str, Any] | None) -> list[str]:
    o = dict(options or {})
    first = df.iloc[0] if len(df) else None
    corr = {"holm": "Holm-Bonferroni", "bh": "Benjamini-Hochberg"}.get(o.get("correction", "holm"), "Holm-Bonferroni")
    B = o.get("bootstrap", "?")
    items = [
        ("Ranking: cosine similarity between each image and the query's text embedding, highest first; "
         if o.get("normalize_images", True) else
         "Ranking: the unnormalised image features times the normalised text embedding (Berg et al.'s code as "
         "written; `retrieval.normalize_images=false`), highest first; ") +
        "ties broken by dataset order; images missing an attribute are left out of that attribute's ranking.",
        f"k: {', '.join(str(k) for k in o.get('k', sorted(df['k'].astype(str).unique())))} "
        "(`all` = the whole ranking).",
        f"Desired distribution: {', '.join(o.get('desired', sorted(df['desired'].unique())))} "
        "(`dataset`: each value's share of the ranked images; `uniform`: equal shares).",
        f"A value absent from the top k: `{o.get('absent', first['absent'] if first is not None else '')}` "
        "(`neg_inf`: Skew = −∞; `inverse_k`: its share counts as 1/k; `zero`: Skew = 0). NDKL uses 0·log 0 = 0.",
        f"Prompts: `{o.get('prompts', first['prompts'] if first is not None else '')}` (`ensemble`: one averaged "
        "embedding per query; `per_template`: one ranking per template, the metric averaged over templates).",
        "Pools: " + (f"each query ranks only the images whose `{o['pool']}` equals the query (or its `pool`)."
                     if o.get("pool") else "none (every query ranks the whole evaluation set)."),
        "Tests of no association (null: the attribute's labels are unrelated to the ranking, i.e. the top k is a "
        "random k of the ranked pool): each value's top-k count by the exact hypergeometric test (two-sided; one "
        "test for a two-valued attribute, also Bias@k's); MaxSkew and MinSkew by the exact multivariate "
        f"hypergeometric distribution of the top-k counts (by {o.get('permutations', 1000)} label shuffles when it "
        f"has more than {ENUM_LIMIT:,} count vectors); NDKL by {o.get('permutations', 1000)} label shuffles over "
        f"the pool's images (seed {o.get('seed', '?')}; smallest possible p = 1/(B+1)). p-values adjusted "
        f"({corr}) within each family (count tests, MaxSkew, MinSkew, NDKL) over every test of the run. "
        "`null mean`: the statistic's expectation under that null (MaxSkew and NDKL are ≥ 0 by construction, "
        "so 0 is not their null); `excess` in retrieval.csv = value − null mean."
        + (" Per-template prompts: a query's value is a mean over templates, tested against the null of one "
           "ranking (conservative)." if o.get("prompts") == "per_template" else ""),
        (f"Intervals ({int(o.get('confidence', 0.95) * 100)}%): per query, share / Skew / Bias show the percentile "
         f"bootstrap over images (B = {B}, seed {o.get('seed', '?')}) when it contains the point, else none; "
         "MaxSkew, MinSkew and NDKL per query show none (resampled rankings repeat images and run above the "
         "point: their spread stays in retrieval.csv's ci_low / ci_high); a query set's mean shows a bootstrap "
         "over its queries (and templates), whose values carry each query's image noise; the worst over queries "
         "shows none." if B != 0 else "Intervals: none (bootstrap B = 0)."),
    ]
    return items


def retrieval_sections(table: pd.DataFrame, out_dir: Path | str,
                       options: RetrievalOptions | Mapping[str, Any] | None = None,
                       max_queries: int = 10) -> list["Section"]:  # noqa: F821
    """The retrieval-bias report as :mod:`clipfair.report.document` sections (heat maps are written
    into ``out_dir`` as ``retrieval_skew_<set>_<attribute>.png``). Reads only ``table``
    (the :func:`retrieval_bias` frame or its CSV)."""
    from ..report.document import Bullets, Figure, Note, Section, Table, Text
    from ..utility.outputs import safe_filename

    out_dir = Path(out_dir)
    o = options.to_dict() if isinstance(options, RetrievalOptions) else dict(options or {})
    df = _ensure_null_columns(table.copy())
    df["k"] = [k if str(k) == "all" else int(k) for k in df["k"]]
    for c in ("category", "attribute_value", "pool"):
        df[c] = df[c].fillna("").astype(str)
    blocks: list[Any] = [
        Text("Which faces come back first for a neutral text query? Each query ranks the evaluation images by "
             "similarity; **Skew@k(a) = ln(share of value a in the top k / desired share)**: above 0 the value is "
             "over-represented, below 0 under-represented. MaxSkew / MinSkew are the largest / smallest skew over "
             "the values, NDKL a rank-discounted KL divergence of the top-i mix from the desired mix (0 = fair), "
             "Bias@k = (n_a − n_b)/(n_a + n_b) for a two-valued attribute (Geyik et al. 2019; Berg et al. 2022)."),
        Bullets(_conventions(df, o)),
        Note(f"A value is called a **finding** only when its adjusted test of no association rejects at "
             f"α = {1 - float(o.get('confidence', 0.95)):g} (not when an interval excludes 0: Skew of a pool's own "
             f"shares moves by chance, MaxSkew and NDKL are never below 0). Values expected fewer than "
             f"{TINY_EXPECTED:g} times in the top k (k × desired share) are marked † and never headlined: one "
             "image moves their skew a lot. Labels are annotators' perceptions; a ranking shows what the model "
             "associates with a query, not anything about the people pictured."),
    ]
    floor = _permutation_floor_note(df, o)
    if floor is not None:
        blocks.append(floor)
    if o.get("preset"):
        p = PRESETS[o["preset"]]
        blocks.append(Section(f"Conventions of {p['title']}", [
            Text(f"Preset `{o['preset']}` set: {', '.join(o.get('from_preset', [])) or 'nothing (all overridden)'}. "
                 f"Source: {p['source']}"),
            Note(f"What differs: {p['differs']}"),
            *_headline_table(df, p.get("headline") or []),
        ]))
    if df.empty:
        blocks.append(Note("No retrieval rows: no k fits the ranked images, or no attribute has two values.", "warning"))
        return [Section("Retrieval bias", blocks)]
    k = _report_k(df)
    desired0 = list(dict.fromkeys(df["desired"]))[0]
    for qs in dict.fromkeys(df["query_set"]):
        d = df[df.query_set == qs]
        sub: list[Any] = []
        agg = d[d["query"].isin([MEAN_ROW, WORST_ROW]) & d.metric.isin(["max_skew", "min_skew", "ndkl", "bias"])]
        per_q = d[~d["query"].isin([MEAN_ROW, WORST_ROW])]
        n_q = per_q["query"].nunique()
        rows = []
        for (attr, des, kk), g in agg.groupby(["attribute", "desired", "k"], sort=False):
            cell = {(r.query, r.metric): (_with_null(pd.Series(r._asdict())) if r.query == MEAN_ROW
                                          else _fmt(r.value)) for r in g.itertuples()}
            tested = per_q[(per_q.attribute == attr) & (per_q.desired == des) & _k_eq(per_q, kk)
                           & (per_q.metric == "max_skew")]
            found = f"{int(tested['significant'].astype(bool).sum())} / {len(tested)}"
            rows.append([attr, des, str(kk), int(g.n_images.iloc[0]), found,
                         *[cell.get((row, m), "–") for m in ("max_skew", "ndkl", "bias") for row in (MEAN_ROW, WORST_ROW)]])
        sub.append(Table(["attribute", "desired", "k", "n images", "queries with a MaxSkew finding", "MaxSkew mean",
                          "MaxSkew worst", "NDKL mean", "NDKL worst", "Bias mean", "Bias worst"], rows,
                         align="lllrrrrrrrr",
                         caption=f"Mean over the {n_q} queries [interval over queries] (null: the mean's expectation "
                                 "under no association), and the worst (highest MaxSkew / NDKL, Bias farthest from "
                                 "0; no interval). A finding: the query's adjusted test rejects no association."))
        for attr in dict.fromkeys(d["attribute"]):
            name = f"retrieval_skew_{safe_filename(qs)}_{safe_filename(attr)}.png"
            if _heatmap(d, qs, attr, desired0, k, out_dir / name) is not None:
                sub.append(Figure(name, f"Skew@{k} by {attr} for the {qs} queries (desired: {desired0}), values in "
                                        f"the attribute's declared order; grey 'absent' = no image with that value in "
                                        f"the top k; * = the adjusted test rejects no association; † = expected fewer "
                                        f"than {TINY_EXPECTED:g} times (grey italic, never headlined)."))
            sub.append(_most_skewed(d, qs, attr, desired0, k, max_queries))
        blocks.append(Section(f"Query set {qs}", sub))
    return [Section("Retrieval bias", blocks)]


def _most_skewed(d: pd.DataFrame, qs: str, attr: str, desired: str, k, max_queries: int):
    from ..report.document import Table, Text

    sel = d[(d.attribute == attr) & (d.desired == desired) & _k_eq(d, k) & ~d["query"].isin([MEAN_ROW, WORST_ROW])]
    skew = sel[sel.metric == "skew"].copy()
    skew["tiny"] = _tiny(skew)
    # headline: each query's largest skew among values that are not tiny; findings first
    ok = skew[~skew["tiny"] & np.isfinite(skew["value"])].copy()
    ok["sig_"] = ok["significant"].astype(bool)
    best = (ok.sort_values("value", ascending=False, kind="stable").drop_duplicates("query")
            .sort_values("sig_", ascending=False, kind="stable").head(max_queries))
    rows = []
    for r in best.itertuples():
        finding = "yes" if r.sig_ else "no"
        ms = sel[(sel["query"] == r.query) & (sel.metric == "min_skew")]
        tiny_vals = skew[(skew["query"] == r.query) & skew["tiny"]]["attribute_value"].tolist()
        rows.append([r.query, r.category, r.attribute_value, _with_ci(pd.Series(r._asdict())),
                     "–" if pd.isna(r.p_adjusted) else f"{r.p_adjusted:.2g}", finding,
                     _with_ci(ms.iloc[0]) if len(ms) else "–",
                     _mix(d, qs, r.query, attr, desired, k) + (f" (†: {', '.join(tiny_vals)})" if tiny_vals else ""),
                     int(r.n_images)])
    if not rows:
        return Text(f"No query has a {attr} value expected at least {TINY_EXPECTED:g} times in the top {k} "
                    f"(desired: {desired}); nothing is headlined. The full table is retrieval.csv.")
    return Table(["query", "category", "most over-represented", f"Skew@{k} [CI]", "p adj.", "finding",
                  f"MinSkew@{k}", f"top-{k} mix (vs desired)", "n images"], rows, align="lllrrlrlr",
                 caption=f"The {len(rows)} most skewed queries by {attr} at k = {k} (desired: {desired}): findings "
                         "(the value's adjusted exact test of no association rejects) first, then by the largest "
                         "skew over values that are not tiny (†).")


def _headline_table(df: pd.DataFrame, headline: Sequence[Sequence[Any]]) -> list[Any]:
    from ..report.document import Table

    from ..report.document import Note

    rows, missing = [], []
    per_q = df[~df["query"].isin([MEAN_ROW, WORST_ROW])]
    for metric, k in headline:
        sel = df[(df.metric == metric) & (df["query"] == MEAN_ROW)]
        if k is not None:
            sel = sel[_k_eq(sel, k)]
        if sel.empty:
            missing.append(f"{metric}@{k if k is not None else 'k'}")
        for r in sel.itertuples():
            vals = per_q[(per_q.query_set == r.query_set) & (per_q.attribute == r.attribute)
                         & (per_q.desired == r.desired) & (per_q.metric == metric) & _k_eq(per_q, r.k)]["value"]
            rows.append([r.query_set, r.attribute, r.desired, f"{metric}@{r.k}", _with_null(pd.Series(r._asdict())),
                         _fmt(sd_over_queries(vals)), int(len(vals)), int(r.n_images)])
    out: list[Any] = []
    if rows:
        out.append(Table(["query set", "attribute", "desired", "metric", "mean over queries [CI] (null)",
                          "SD over queries", "queries", "n images"], rows, align="llllrrrr",
                         caption="The paper's reported quantities, as computed here: the mean over queries and, as "
                                 "VisoGender reports beside it, the standard deviation over queries (occupations; "
                                 "ddof = 1, as their summary_stats.py)."))
    if missing:
        out.append(Note(f"Not computed in this run: {', '.join(missing)} (k larger than the ranked images, or the "
                        "metric's k was overridden).", "warning"))
    return out


def _permutation_floor_note(df: pd.DataFrame, o: Mapping[str, Any]):
    """A warning when Holm's first threshold is below the smallest p that B label shuffles can
    give (1 / (B + 1)): then no permutation-tested row can be a finding."""
    from ..report.document import Note

    if "p_method" not in df.columns or o.get("correction", "holm") != "holm":
        return None
    perm = df[df["p_method"].astype(str).str.startswith("permutation") & df["p_value"].notna()]
    if perm.empty:
        return None
    B = int(o.get("permutations", 1000))
    alpha = 1.0 - float(o.get("confidence", 0.95))
    worst = 0
    for _, g in perm.groupby("metric"):
        m = len(g.drop_duplicates(["query_set", "query", "attribute", "k", "desired"]))
        worst = max(worst, m)
    if 1.0 / (B + 1) <= alpha / worst:
        return None
    need = int(math.ceil(worst / alpha))
    return Note(f"With {B} label shuffles the smallest permutation p is 1/{B + 1}, above Holm's first threshold "
                f"α/m = {alpha:g}/{worst}: no permutation-tested row (NDKL) can be a finding in this run. "
                f"Set retrieval.permutations to at least {need} (or disparity_correction=bh).", "warning")


def sd_over_queries(values: Iterable[float]) -> float:
    """The sample standard deviation (ddof = 1) of per-query values (NaN below 2 finite values)."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else math.nan


def _ensure_null_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table written before issue 21 read back: the new columns, empty."""
    for c in NULL_COLUMNS:
        if c not in df.columns:
            df[c] = False if c == "significant" else ("" if c.endswith("method") else np.nan)
    df["significant"] = df["significant"].fillna(False).astype(bool)
    return df


def write_retrieval(table: pd.DataFrame, out_dir: Path | str,
                    options: RetrievalOptions | Mapping[str, Any] | None = None,
                    intro: Sequence[Any] = (), sections: Sequence[Any] | None = None) -> list[Path]:
    """``retrieval.csv`` (the long table), ``retrieval.md`` and its heat maps. ``sections``: the
    :func:`retrieval_sections` of ``table`` when the caller already built them (for report.html)."""
    from ..report.document import Document, to_markdown
    from ..utility.outputs import write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "retrieval.csv"
    write_csv(table, csv)
    before = set(out.glob("retrieval_skew_*.png"))
    if sections is None:
        sections = retrieval_sections(table, out, options)
    md = out / "retrieval.md"
    md.write_text(to_markdown(Document("clipfair retrieval bias", list(sections), intro=list(intro))), encoding="utf-8")
    pngs = sorted(set(out.glob("retrieval_skew_*.png")) - before) or sorted(out.glob("retrieval_skew_*.png"))
    return [csv, *pngs, md]


# --------------------------------------------------------------------------- tests of no association

#: count vectors enumerated at most for an exact MaxSkew / MinSkew null (else: permutations)
ENUM_LIMIT = 200_000
P_HYPERGEOM = "hypergeometric exact (two-sided, probability-ordered)"
P_HYPERGEOM_MEAN = "hypergeometric exact (two-sided) at the template mean's nearer integers, larger p"
P_EXACT = "multivariate hypergeometric exact (one-sided)"
P_PERM = "permutation (B={B}, one-sided)"
P_NONE_SET = "none: a summary over queries (its queries' own tests decide findings)"
I_BOOT = "image bootstrap percentile"
I_QUERY = "bootstrap over queries{t} (percentile)"
I_NONE_STAT = ("none: resampled rankings repeat images, so the image bootstrap of MaxSkew / MinSkew / NDKL runs "
               "off the point (spread: ci_low, ci_high); read the test and the excess over the null mean")
I_NONE_OUT = "none: the image bootstrap's percentile interval excludes the point (spread: ci_low, ci_high)"
I_NONE_WORST = "none: a maximum over queries has no resampling interval that covers it"
I_NONE_B0 = "none (bootstrap B = 0)"


def hypergeom_test(x: int, n: int, N: int, k: int) -> float:
    """Two-sided exact p of ``x`` successes in ``k`` draws without replacement from ``n``
    items of which ``N`` are successes: the summed probability of every count no more
    likely than ``x`` (the rule of Fisher's exact test)."""
    pmf = _hypergeom_pmf(n, N, k)
    return float(min(1.0, pmf[pmf <= pmf[int(x)] * (1 + 1e-7)].sum()))


_PMF: dict[tuple[int, int, int], np.ndarray] = {}


def _hypergeom_pmf(n: int, N: int, k: int) -> np.ndarray:
    """P(X = x) for x = 0..k (0 outside the support)."""
    key = (int(n), int(N), int(k))
    if key not in _PMF:
        from scipy.special import gammaln

        if len(_PMF) > 4096:
            _PMF.clear()
        n_, N_, k_ = key
        x = np.arange(k_ + 1, dtype=np.float64)
        ok = (x <= N_) & (k_ - x <= n_ - N_)
        xs = np.where(ok, x, 0.0)

        def lchoose(a, b):
            return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

        logp = lchoose(N_, xs) + lchoose(n_ - N_, k_ - xs) - lchoose(n_, k_)
        _PMF[key] = np.where(ok, np.exp(logp), 0.0)
    return _PMF[key]


def _count_p(x: float, n: int, N: int, k: int) -> float:
    """:func:`hypergeom_test` of a count; a non-integer count (the mean over templates) takes
    the larger p of its two nearer integers."""
    lo, hi = math.floor(x + 1e-9), math.ceil(x - 1e-9)
    return max(hypergeom_test(lo, n, N, k), hypergeom_test(hi, n, N, k))


def _skew_of_counts(x: np.ndarray, k: int, q: float, absent: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.log(x / k) - math.log(q)
    fill = {"neg_inf": -math.inf, "inverse_k": math.log(1.0 / k) - math.log(q), "zero": 0.0}[absent]
    return np.where(x > 0, s, fill)


def _expect(pmf: np.ndarray, values: np.ndarray) -> float:
    """E[values] under pmf; -inf / +inf when an infinite value has positive probability."""
    live = pmf > 0
    v = values[live]
    if np.isneginf(v).any():
        return -math.inf
    if np.isposinf(v).any():
        return math.inf
    return float(np.sum(pmf[live] * v))


def count_vectors(caps: Sequence[int], k: int) -> np.ndarray:
    """Every vector y with 0 <= y_a <= caps[a] and sum y = k, as rows (the support of the
    multivariate hypergeometric distribution)."""
    caps = np.asarray(caps, dtype=np.int64)
    after = np.concatenate([np.cumsum(caps[::-1])[::-1][1:], [0]])
    vecs, rem = np.zeros((1, 0), dtype=np.int64), np.array([int(k)], dtype=np.int64)
    for j, c in enumerate(caps):
        lo, hi = np.maximum(0, rem - after[j]), np.minimum(c, rem)
        cnt = np.maximum(hi - lo + 1, 0)
        idx = np.repeat(np.arange(len(vecs)), cnt)
        y = lo[idx] + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        vecs, rem = np.column_stack([vecs[idx], y]), rem[idx] - y
    return vecs


def n_count_vectors(caps: Sequence[int], k: int, limit: int = ENUM_LIMIT) -> int:
    """How many rows :func:`count_vectors` would return (counted up to ``limit + 1``)."""
    ways = np.zeros(int(k) + 1, dtype=np.float64)
    ways[0] = 1.0
    for c in caps:
        cs = np.concatenate([[0.0], np.cumsum(ways)])
        j = np.arange(int(k) + 1)
        ways = np.minimum(cs[j + 1] - cs[np.maximum(j - int(c), 0)], float(limit + 1))
    return int(min(ways[int(k)], limit + 1))


def mvhypergeom_logpmf(vecs: np.ndarray, caps: Sequence[int]) -> np.ndarray:
    from scipy.special import gammaln

    caps = np.asarray(caps, dtype=np.float64)
    n, k = caps.sum(), vecs[0].sum() if len(vecs) else 0

    def lchoose(a, b):
        return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

    return lchoose(caps[None, :], vecs).sum(axis=1) - lchoose(n, k)


@dataclass
class _Null:
    """The null distribution of one statistic: support values with probabilities (exact) or
    B permutation replicates (weights None)."""
    values: np.ndarray
    weights: np.ndarray | None
    method: str

    @property
    def mean(self) -> float:
        if self.weights is None:
            return _expect(np.full(len(self.values), 1.0 / len(self.values)), self.values)
        return _expect(self.weights, self.values)

    def p_many(self, obs: np.ndarray, upper: bool) -> np.ndarray:
        """:meth:`p` of each observed value."""
        return np.array([self.p(float(x), upper) for x in np.asarray(obs, dtype=np.float64)])

    def p(self, obs: float, upper: bool) -> float:
        """P(statistic at least as extreme as ``obs``) in the tail named (ties count)."""
        if np.isnan(obs):
            return math.nan
        tol = 1e-9 * max(1.0, abs(obs)) if np.isfinite(obs) else 0.0
        hit = self.values >= obs - tol if upper else self.values <= obs + tol
        if self.weights is None:
            return float((1 + hit.sum()) / (1 + len(self.values)))
        return float(min(1.0, self.weights[hit].sum()))


def permutation_null(codes: np.ndarray, cuts: Sequence[int], desired: Mapping[str, np.ndarray], absent: str,
                     B: int, rng: np.random.Generator) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Each metric of ``B`` rankings whose labels are the pool's labels (``codes``, no missing)
    shuffled at random: the null of no association between a ranking and the attribute.
    Returns cut -> desired -> metric -> (B,) replicates."""
    L, A = max(cuts), max(1, int(codes.max()) + 1 if len(codes) else 1)
    cuts = sorted(set(cuts))
    dq = {d: np.asarray(q) for d, q in desired.items()}
    step = max(1, CELLS // max(1, L * A))  # shuffles per batch: memory bounded as the bootstrap's
    parts = []
    for b0 in range(0, B, step):
        perm = np.empty((min(step, B - b0), L), dtype=np.int64)
        for b in range(len(perm)):
            perm[b] = rng.permutation(codes)[:L]
        parts.append(_batched_prefix(perm, cuts, dq, absent))
    return {c: {d: {m: np.concatenate([p[c][d][m] for p in parts]) for m in parts[0][c][d]} for d in dq}
            for c in cuts}


def _attribute_nulls(at: _Attr, options: "RetrievalOptions", seed: Sequence[int]) -> dict[tuple, dict[str, _Null]]:
    """(k, desired) -> metric -> :class:`_Null` for max_skew, min_skew (exact by enumeration of
    the top-k count vectors where there are at most :data:`ENUM_LIMIT`, else permutations) and
    ndkl (permutations), for one attribute in one pool. Query-independent: under the null the
    labels at the ranked positions are a random arrangement of the pool's labels."""
    valid = at.codes[at.codes >= 0]
    n = len(valid)
    caps = np.bincount(valid, minlength=len(at.values))
    ks = {k: (n if k == "all" else int(k)) for k in options.k if (n if k == "all" else int(k)) <= n}
    out: dict[tuple, dict[str, _Null]] = {}
    B = options.permutations
    perm = (permutation_null(valid, sorted(set(ks.values())), at.desired_point, options.absent, B,
                             np.random.default_rng(list(seed))) if ks and B > 0 else None)
    pm = P_PERM.format(B=B)
    for k, kk in ks.items():
        exact = n_count_vectors(caps, kk) <= ENUM_LIMIT
        if exact:
            vecs = count_vectors(caps, kk)
            w = np.exp(mvhypergeom_logpmf(vecs, caps))
        for d, q in at.desired_point.items():
            nulls: dict[str, _Null] = {}
            if exact:
                st = _skew_stats(vecs.astype(np.float64), np.full((len(vecs), 1), float(kk)),
                                 np.broadcast_to(q, vecs.shape), options.absent)
                nulls["max_skew"] = _Null(st["max_skew"], w, P_EXACT)
                nulls["min_skew"] = _Null(st["min_skew"], w, P_EXACT)
            elif perm is not None:
                nulls["max_skew"] = _Null(perm[kk][d]["max_skew"], None, pm)
                nulls["min_skew"] = _Null(perm[kk][d]["min_skew"], None, pm)
            if perm is not None:
                nulls["ndkl"] = _Null(perm[kk][d]["ndkl"], None, pm)
            out[(k, d)] = nulls
    return out


def _add_null_columns(df: pd.DataFrame, acc: "_Accumulator") -> pd.DataFrame:
    """Every row beside its null of no association (columns :data:`NULL_COLUMNS`).

    share / skew / bias rows: the exact hypergeometric test of the value's top-k count within
    the ranked pool (a two-valued attribute has one test; it does not depend on ``desired``);
    null_mean: the count's exact expectation under that null (share N_a / n; skew with the
    run's absent convention; bias 2 N_a / n - 1). max_skew / min_skew / ndkl rows: the harmful
    tail (direction from the metric registry) of :func:`_attribute_nulls`. p-values are
    adjusted with the run's correction within each family (count tests; MaxSkew; MinSkew;
    NDKL), each test counted once. Mean rows: the mean of their queries' null means, no test;
    worst rows: neither. Vectorised per (pool, attribute, k)."""
    from ..stats.specs import HIGHER
    from ..stats.specs import direction
    from ..stats.inference import CORRECTIONS

    o = acc.o
    nrow = len(df)
    null_mean, pval = np.full(nrow, np.nan), np.full(nrow, np.nan)
    ilo, ihi = np.full(nrow, np.nan), np.full(nrow, np.nan)
    pmeth, imeth = np.full(nrow, "", dtype=object), np.full(nrow, "", dtype=object)
    fam = np.full(nrow, "", dtype=object)
    test_id = np.full(nrow, "", dtype=object)
    if nrow == 0:
        return _set_null_columns(df, null_mean, pval, np.full(nrow, np.nan), o, pmeth, ilo, ihi, imeth)
    per_t = o.prompts == "per_template"
    metric = df["metric"].astype(str).to_numpy()
    ks = df["k"].astype(str).to_numpy()
    query = df["query"].astype(str).to_numpy()
    qset = df["query_set"].astype(str).to_numpy()
    attr = df["attribute"].astype(str).to_numpy()
    aval = df["attribute_value"].astype(str).to_numpy()
    desired = df["desired"].astype(str).to_numpy()
    value = df["value"].to_numpy(np.float64)
    dshare = df["desired_share"].to_numpy(np.float64)
    agg = np.isin(query, [MEAN_ROW, WORST_ROW])
    qid_of = {(u.query_set, u.query.text): u.qid for u in acc.units}
    pool_key = np.array([None if g else acc.pool.get(qid_of[(s_, q_)]) for s_, q_, g in zip(qset, query, agg)],
                        dtype=object)
    # each share / skew / bias row's observed count of its test's value: the share of that value
    is_count = np.isin(metric, ["share", "skew", "bias"]) & ~agg
    share_of = {(s_, q_, a_, v_, k_, d_): x for s_, q_, a_, v_, k_, d_, x, m_ in
                zip(qset, query, attr, aval, ks, desired, value, metric) if m_ == "share"}
    pool_str = np.array(["\x00" if v is None else str(v) for v in pool_key], dtype=object)
    grp = pd.Series(np.arange(nrow)).groupby([pool_str, attr, ks], sort=False, dropna=False)
    for _, idx in grp:
        idx = idx.to_numpy()
        idx = idx[~agg[idx]]
        if not len(idx):
            continue
        i0 = idx[0]
        pv, at = pool_key[i0], attr[i0]
        caps, values = acc.pool_caps[(pv, at)], acc.values[at]
        n = int(caps.sum())
        kk = n if ks[i0] == "all" else int(ks[i0])
        vindex = {v: j for j, v in enumerate(values)}
        # count tests
        c = idx[is_count[idx]]
        if len(c):
            own = np.array([0 if metric[i] == "bias" else vindex[aval[i]] for i in c])
            a = np.zeros(len(c), dtype=np.int64) if len(values) == 2 else own
            x = np.array([share_of[(qset[i], query[i], at, values[a_], ks[i], desired[i])] * kk
                          for i, a_ in zip(c, a)])
            keys = list(zip(a.tolist(), np.round(x, 9).tolist()))
            cache = {key: _count_p(key[1], n, int(caps[key[0]]), kk) for key in dict.fromkeys(keys)}
            pval[c] = [cache[key] for key in keys]
            pmeth[c] = P_HYPERGEOM_MEAN if per_t else P_HYPERGEOM
            fam[c] = "count"
            test_id[c] = [f"{qset[i]}\x1f{query[i]}\x1f{at}\x1f{a_}\x1f{ks[i]}" for i, a_ in zip(c, a)]
            m_c = metric[c]
            null_mean[c] = np.where(m_c == "share", caps[own] / n, np.where(m_c == "bias", 2 * caps[0] / n - 1, np.nan))
            sk = m_c == "skew"
            if sk.any():
                mkeys = list(zip(own[sk].tolist(), dshare[c][sk].tolist()))
                mcache = {key: _expect(_hypergeom_pmf(n, int(caps[key[0]]), kk),
                                       _skew_of_counts(np.arange(kk + 1, dtype=np.float64), kk, key[1], o.absent))
                          for key in dict.fromkeys(mkeys)}
                null_mean[c[sk]] = [mcache[key] for key in mkeys]
            if not o.bootstrap:
                imeth[c] = I_NONE_B0
            else:
                lo, hi = df["ci_low"].to_numpy(np.float64)[c], df["ci_high"].to_numpy(np.float64)[c]
                inside = (lo <= value[c]) & (value[c] <= hi)
                ilo[c], ihi[c] = np.where(inside, lo, np.nan), np.where(inside, hi, np.nan)
                imeth[c] = np.where(inside, I_BOOT, I_NONE_OUT)
        # MaxSkew / MinSkew / NDKL
        st = idx[~is_count[idx]]
        imeth[st] = I_NONE_B0 if not o.bootstrap else I_NONE_STAT
        nulls = acc.nulls.get((pv, at), {})
        for (d, m), sub in pd.Series(st).groupby([desired[st], metric[st]], sort=False, dropna=False):
            sub = sub.to_numpy()
            k_obj = "all" if ks[sub[0]] == "all" else int(ks[sub[0]])
            nul = nulls.get((k_obj, d), {}).get(m)
            if nul is None:
                continue
            null_mean[sub] = nul.mean
            pval[sub] = nul.p_many(value[sub], upper=direction(m) != HIGHER)  # the harmful tail
            pmeth[sub] = nul.method + ("; templates: the null of one ranking (conservative)" if per_t else "")
            fam[sub] = m
            test_id[sub] = [f"{qset[i]}\x1f{query[i]}\x1f{at}\x1f{ks[i]}\x1f{d}" for i in sub]
    # set-level rows: the mean of the queries' null means; the interval over queries (and templates)
    if agg.any():
        tmp = pd.DataFrame({"s": qset, "a": attr, "d": desired, "k": ks, "m": metric, "nm": null_mean})[~agg]
        means = {key: float(np.mean(g.to_numpy())) for key, g in tmp.groupby(["s", "a", "d", "k", "m"], sort=False)["nm"]}
        for i in np.flatnonzero(agg):
            key = (qset[i], attr[i], desired[i], ks[i], metric[i])
            pmeth[i] = P_NONE_SET
            if query[i] != MEAN_ROW:
                imeth[i] = I_NONE_WORST
                continue
            null_mean[i] = means.get(key, math.nan)
            lo, hi, how = acc.set_ci.get(key, (math.nan, math.nan, I_NONE_B0))
            if how.startswith("none") or (lo <= value[i] <= hi):
                ilo[i], ihi[i], imeth[i] = lo, hi, how
            else:
                imeth[i] = "none: the bootstrap over queries excludes the point"
    # adjustment within each family, each distinct test once
    padj = np.full(nrow, np.nan)
    for f in ("count", "max_skew", "min_skew", "ndkl"):
        rows = np.flatnonzero((fam == f) & ~np.isnan(pval))
        if not len(rows):
            continue
        ids, first, inv = np.unique(test_id[rows].astype(str), return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # tests in table order
        adj = np.empty(len(ids))
        adj[order] = CORRECTIONS[o.correction](pval[rows[first[order]]])
        padj[rows] = adj[inv.reshape(-1)]
    return _set_null_columns(df, null_mean, pval, padj, o, pmeth, ilo, ihi, imeth)


def _set_null_columns(df: pd.DataFrame, null_mean, pval, padj, o: "RetrievalOptions", pmeth, ilo, ihi,
                      imeth) -> pd.DataFrame:
    out = df.copy()
    v = out["value"].to_numpy(np.float64)
    fin = np.isfinite(null_mean) & np.isfinite(v)
    out["null_mean"] = null_mean
    out["excess"] = np.where(fin, v - np.where(fin, null_mean, 0.0), np.nan)
    out["p_value"], out["p_adjusted"] = pval, padj
    out["significant"] = np.nan_to_num(padj, nan=1.0) < 1.0 - o.confidence
    out["p_method"] = pmeth
    out["interval_low"], out["interval_high"], out["interval_method"] = ilo, ihi, imeth
    return out
