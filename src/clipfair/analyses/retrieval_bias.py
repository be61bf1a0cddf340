"""Retrieval bias: rank the evaluation images for each neutral query and measure how skewed
the top k is (:mod:`clipfair.retrieval`: Skew@k, MaxSkew, MinSkew, NDKL, Bias@K, each beside its
null of no association with an adjusted test); writes retrieval.csv, retrieval.md and heat maps.

Layer: analyses.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..retrieval import RetrievalError
from .base import Analysis, Needs, RunContext, Written
from .registry import register_analysis


@register_analysis
class RetrievalBias(Analysis):
    """Retrieval bias of neutral query sets over the evaluation images."""

    name = "retrieval_bias"
    errors = (RetrievalError,)
    needs = Needs(image_embeddings="projected", splits=("eval",), text=True)

    def __init__(self, options: Any = None, query_sets: Sequence[Any] | None = None, **block: Any) -> None:
        """Either the ``retrieval:`` config block's keys (queries, k, attributes, desired, absent,
        prompts, pool, bootstrap, chunk_size, preset), or ready ``options``
        (:class:`clipfair.retrieval.RetrievalOptions`) and ``query_sets``."""
        from ..retrieval import load_query_sets, options_from_config

        super().__init__(**block)
        self.block = {k: v for k, v in block.items() if k != "enabled"}
        self.opts = options if options is not None else options_from_config({**self.block, "enabled": True})
        # validate (and read) the query sets before the slow parts
        self.query_sets = list(query_sets) if query_sets is not None else load_query_sets(self.opts.queries)
        self.table: pd.DataFrame | None = None

    def check(self, ctx: RunContext) -> None:
        from ..retrieval import options_from_config
        from ..zeroshot import check_prompt_lengths

        if self.block and self.opts.confidence != ctx.confidence:
            self.opts = options_from_config({**self.block, "enabled": True}, ctx.confidence,
                                            correction=self.opts.correction)
        if ctx.dataset is not None:
            from ..retrieval import check_bootstrap_size

            check_bootstrap_size(self.opts, len(ctx.dataset))
        if ctx.model is None:  # before the model is loaded
            return
        for q in self.query_sets:
            check_prompt_lengths(q.as_taxonomy(), ctx.model.token_count, ctx.model.context_length)

    def run(self, ctx: RunContext) -> None:
        from ..retrieval import retrieval_bias

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

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..report import header_blocks
        from ..retrieval import retrieval_sections, write_retrieval

        if self.table is None:
            return Written()
        with ctx.timed("retrieval_report"):
            sections = retrieval_sections(self.table, out_dir, ev.info.get("retrieval"))
            paths = write_retrieval(self.table, out_dir, ev.info.get("retrieval"), intro=header_blocks(report),
                                    sections=sections)
        return Written(paths, [], sections)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.opts.to_dict()}
