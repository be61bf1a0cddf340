"""The precision audit: zero-shot predictions at the run's dtype against float32
on a seeded sample of images (:mod:`clipfair.methods.precision`); recorded in run.json and on the model card.

Layer: analyses.
"""

from __future__ import annotations

from typing import Any

from .base import Analysis, Needs, RunContext
from .registry import register_analysis


@register_analysis
class PrecisionAudit(Analysis):
    """Agreement of the run's dtype with float32 on a sample of images."""

    name = "precision_audit"
    needs = Needs(image_embeddings="projected", splits=("eval",), text=True)

    def __init__(self, n: int = 256, seed: int = 0) -> None:
        super().__init__(n=n, seed=seed)
        self.n, self.seed = int(n), int(seed)

    def check(self, ctx: RunContext) -> None:
        if not ctx.taxonomies:  # e.g. text-only association tests: no image embedding needed for it
            self.needs = Needs(image_embeddings="none", splits=("eval",), text=False)

    def run(self, ctx: RunContext) -> None:
        from ..methods.precision import run_precision_audit
        from ..methods.zeroshot import class_embeddings

        if not ctx.taxonomies:
            ctx.info["precision"] = {"skipped": "the run has no taxonomies: no zero-shot predictions to audit"}
            return None
        ctx.info["precision"] = run_precision_audit(
            ctx.dataset, ctx.model, ctx.indices,
            lambda: {t.name: class_embeddings(t, ctx.text_embedder).weights for t in ctx.taxonomies},
            confidence=ctx.confidence, n=self.n, seed=self.seed)
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "seed": self.seed}
