"""Retrieval bias: rank the evaluation images for each neutral query and measure how skewed
the top k is (:mod:`clipfair.methods.retrieval`: Skew@k, MaxSkew, MinSkew, NDKL, Bias@K, each beside its
null of no association with an adjusted test); writes retrieval.csv, retrieval.md and heat maps.

Layer: analyses.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..methods.retrieval import RetrievalError
from .base import Analysis, Needs, RunContext, Written
from .registry import register_analysis

log = logging.getLogger(__name__)


@register_analysis
class RetrievalBias(Analysis):
    """Retrieval bias of neutral query sets over the evaluation images."""

    name = "retrieval_bias"
    errors = (RetrievalError,)
    needs = Needs(image_embeddings="projected", splits=("eval",), text=True)

    def __init__(self, options: Any = None, query_sets: Sequence[Any] | None = None, **block: Any) -> None:
        """Either the ``retrieval:`` config block's keys (queries, k, attributes, desired, absent,
        prompts, pool, bootstrap, chunk_size, preset), or ready ``options``
        (:class:`clipfair.methods.retrieval.RetrievalOptions`) and ``query_sets``."""
        from ..methods.retrieval import load_query_sets, options_from_config

        super().__init__(**block)
        self.block = {k: v for k, v in block.items() if k != "enabled"}
        self.opts = options if options is not None else options_from_config({**self.block, "enabled": True})
        # validate (and read) the query sets before the slow parts
        self.query_sets = list(query_sets) if query_sets is not None else load_query_sets(self.opts.queries)
        self.table: pd.DataFrame | None = None

    def check(self, ctx: RunContext) -> None:
        from ..methods.retrieval import options_from_config
        from ..methods.zeroshot import check_prompt_lengths

        if self.block and self.opts.confidence != ctx.confidence:
            self.opts = options_from_config({**self.block, "enabled": True}, ctx.confidence,
                                            correction=self.opts.correction)
        if ctx.dataset is not None:
            from ..methods.retrieval import check_bootstrap_size

            check_bootstrap_size(self.opts, len(ctx.dataset))
        if ctx.model is None:  # before the model is loaded
            return
        for q in self.query_sets:
            check_prompt_lengths(q.as_taxonomy(), ctx.model.token_count, ctx.model.context_length)

    def run(self, ctx: RunContext) -> None:
        from ..methods.retrieval import retrieval_bias

        correction = getattr(ctx.config, "disparity_correction", None)  # the run's, for the tests' adjustment
        if correction and str(correction) != self.opts.correction:
            self.opts = replace(self.opts, correction=str(correction))
        with ctx.timed("retrieval"):
            self.table = retrieval_bias(ctx.table, ctx.image_embeddings, self.query_sets, ctx.text_embedder,
                                        self.opts, attributes=ctx.attributes, orders=ctx.orders,
                                        progress=bool(ctx.progress))
        ctx.info["retrieval"] = {**self.opts.to_dict(), "query_sets": [
            {"name": q.name, "source": q.source, "fingerprint": q.fingerprint()} for q in self.query_sets]}
        return None

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"retrieval": self.table} if self.table is not None else {}

    def result_rows(self, ctx: RunContext) -> pd.DataFrame | None:
        """retrieval.csv's figures as rows of the one results table (:func:`result_rows`)."""
        if self.table is None:
            return None
        specs = self.opts.attributes if self.opts.attributes is not None else ctx.attributes
        return result_rows(self.table, ctx.table, specs, name=self.name)

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..report.render import header_blocks
        from ..methods.retrieval import retrieval_sections, write_retrieval

        if self.table is None:
            return Written()
        with ctx.timed("retrieval_report"):
            sections = retrieval_sections(self.table, out_dir, ev.info.get("retrieval"))
            paths = write_retrieval(self.table, out_dir, ev.info.get("retrieval"), intro=header_blocks(report),
                                    sections=sections)
        return Written(paths, [], sections)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.opts.to_dict()}


#: retrieval.csv columns carried into its metrics.csv rows under their own names: the row's
#: desired distribution and conventions, and its test of no association (issue 21)
CARRIED = ("desired", "desired_share", "absent", "pool", "prompts", "null_mean", "excess", "p_value", "p_adjusted",
           "significant", "p_method", "interval_method")
#: the group of a figure of a whole attribute (MaxSkew, MinSkew, NDKL)
SUMMARY_GROUP = "all"


def result_rows(retrieval: pd.DataFrame, table: pd.DataFrame | None,
                attributes: Sequence[Any] = (), name: str = "retrieval_bias") -> pd.DataFrame:
    """The rows of retrieval.csv (``retrieval``) as rows of the one results table, keyed by
    columns (nothing to split):

    ``taxonomy`` and ``query_set``: the query set; ``method``: ``name``; ``query``: the query
    (or a query set's ``(mean over queries)`` / ``(worst over queries)``); ``category``: the
    query's category; ``k`` (an integer or ``all``); ``desired``; ``metric``; ``slice``: the
    attribute (``race+gender`` for an intersection); ``group``: the attribute's value for
    ``share`` / ``skew`` (display name, e.g. ``White+Male``), retrieval's label of the
    difference for ``bias`` (e.g. ``Male - Female``: Bias@K is the first value's share of the two
    minus the second's), ``all`` for the metrics of the whole attribute (``max_skew``,
    ``min_skew``, ``ndkl``); one column per attribute of
    the slice holding the value (looked up from ``table``'s values, never split from the name);
    ``n``: the ranked images; ``count``: empty (means).

    ``value``; ``ci_low`` / ``ci_high``: the interval retrieval stands behind (retrieval.csv's
    ``interval_low`` / ``interval_high``; empty where its ``interval_method`` says ``none: ...``);
    ``spread_low`` / ``spread_high``: retrieval.csv's ``ci_low`` / ``ci_high`` (the bootstrap
    percentile spread, always); ``small``: a value expected fewer than
    :data:`clipfair.methods.retrieval.TINY_EXPECTED` times in the top k (share / skew rows, as the
    retrieval report flags it). Plus :data:`CARRIED`. ``attributes``: the measured attribute
    specs (a tuple of names: an intersection)."""
    from ..methods.retrieval import COLUMNS, TINY_EXPECTED

    from ..stats.specs import metric_spec

    df = retrieval.copy()
    unknown = sorted({str(m) for m in df["metric"] if metric_spec(str(m)) is None}) if len(df) else []
    if unknown:  # a metric without a declared direction is not put in the results table unlabelled
        log.warning("retrieval: metric(s) %s have no MetricSpec (clipfair.stats.specs); they are in "
                    "retrieval.csv but left out of metrics.csv", ", ".join(unknown))
        df = df[~df["metric"].astype(str).isin(unknown)]
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series([np.nan] * len(df), index=df.index, dtype=object)
    value = df["attribute_value"]
    per_value = (df["metric"].isin(["share", "skew"]) & value.notna() & (value.astype(str) != "")).to_numpy()
    is_bias = (df["metric"] == "bias").to_numpy()
    labelled = (value.notna() & (value.astype(str) != "")).to_numpy()
    kk = np.array([float(n) if str(k) == "all" else float(k) for k, n in zip(df["k"], df["n_images"])])
    tiny = per_value & (df["desired_share"].to_numpy(np.float64) * kk < TINY_EXPECTED)
    out = pd.DataFrame({
        "taxonomy": df["query_set"].astype(str).to_numpy(),
        "method": name,
        "metric": df["metric"].astype(str).to_numpy(),
        "category": df["category"].astype(object).where(df["category"].notna(), "").astype(str).to_numpy(),
        "slice": df["attribute"].astype(str).to_numpy(),
        "group": np.where(per_value | (is_bias & labelled), value.astype(object).where(value.notna(), "")
                          .astype(str).to_numpy(), SUMMARY_GROUP),
        "n": df["n_images"].astype(np.int64).to_numpy(),
        "count": np.nan,
        "value": df["value"].to_numpy(np.float64),
        "ci_low": pd.to_numeric(df["interval_low"], errors="coerce").to_numpy(np.float64),
        "ci_high": pd.to_numeric(df["interval_high"], errors="coerce").to_numpy(np.float64),
        "small": tiny,
        "k": df["k"].astype(object).to_numpy(),
        "query_set": df["query_set"].astype(str).to_numpy(),
        "query": df["query"].astype(str).to_numpy(),
        "spread_low": df["ci_low"].to_numpy(np.float64),
        "spread_high": df["ci_high"].to_numpy(np.float64),
        **{c: df[c].to_numpy() for c in CARRIED},
    })
    # one column per attribute of the slice, holding the group's value
    reserved = set(out.columns)  # an attribute named like a key column keeps only its display name
    parts = {}
    for a in attributes:
        t = (a,) if isinstance(a, str) else tuple(a)
        parts["+".join(t)] = t
    for sl in dict.fromkeys(out["slice"]):
        attrs = parts.get(sl, (sl,))
        rows = (out["slice"] == sl).to_numpy() & per_value
        if table is None or any(a not in table.columns for a in attrs) or not rows.any():
            continue
        combos = table[list(attrs)].dropna().drop_duplicates()
        lookup = {"+".join(str(v) for v in vals): tuple(str(v) for v in vals)
                  for vals in combos.itertuples(index=False, name=None)}
        found = [lookup.get(g) for g in out.loc[rows, "group"]]
        for j, a in enumerate(attrs):
            if a in reserved:
                continue
            if a not in out.columns:
                out[a] = ""
            out.loc[rows, a] = [f[j] if f is not None else "" for f in found]
    return out
