"""Zero-shot classification: every taxonomy of the run scored on the shared
image embeddings by the model family's own rule; rows of predictions.parquet, scored by the
core's classification metrics (accuracy, top-k, rates, label rates, worst-group accuracy).

Layer: analyses.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ..data.attributes import PREDICTION_COLUMNS
from .base import Analysis, Needs, RunContext
from .registry import register_analysis

log = logging.getLogger(__name__)



@register_analysis
class ZeroShot(Analysis):
    """Zero-shot classification of every taxonomy (method ``zero_shot``)."""

    name = "zero_shot"
    method = "zero_shot"
    predictions = True
    needs = Needs(image_embeddings="projected", splits=("eval",), text=True)

    def check(self, ctx: RunContext) -> None:
        from ..methods.zeroshot import check_prompt_lengths

        if ctx.model is None:  # before the model is loaded: nothing to check yet
            return
        for t in ctx.taxonomies:  # fail fast, before any image is encoded
            check_prompt_lengths(t, ctx.model.token_count, ctx.model.context_length)
            if t.target and t.target not in ctx.dataset.attributes:
                log.warning("taxonomy %s: dataset %r has no %r attribute (its attributes: %s); evaluated "
                            "without accuracy", t.name, ctx.dataset.name, t.target, ", ".join(ctx.dataset.attributes))

    def run(self, ctx: RunContext) -> pd.DataFrame:
        from ..methods.zeroshot import class_embeddings, zero_shot_predictions

        if not ctx.taxonomies:  # e.g. a retrieval-only run
            return pd.DataFrame(columns=[*PREDICTION_COLUMNS, *ctx.attributes])
        frames = [zero_shot_predictions(ctx.table, ctx.image_embeddings, class_embeddings(t, ctx.text_embedder),
                                        ctx.model.scoring, ctx.attributes) for t in ctx.taxonomies]
        return pd.concat(frames, ignore_index=True)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
