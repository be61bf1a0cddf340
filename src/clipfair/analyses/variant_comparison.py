"""Variant comparison: taxonomy variants of one run compared image by image with
the baseline (:mod:`clipfair.methods.compare`: paired differences, McNemar tests, comparison.* files).

Layer: analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..methods.compare import CompareError
from .base import Analysis, Needs, RunContext, Written
from .registry import register_analysis


@register_analysis
class VariantComparison(Analysis):
    """Each variant taxonomy against the baseline, on the same images."""

    name = "variant_comparison"
    errors = (CompareError,)
    needs = Needs(image_embeddings="none", splits=(), text=False)

    def __init__(self, baseline: str | None = None, variants: Sequence[str] | None = None,
                 correction: str = "holm", alpha: float = 0.05) -> None:
        super().__init__(baseline=baseline, variants=None if variants is None else list(variants),
                         correction=correction, alpha=alpha)
        self.baseline, self.variants = baseline, None if variants is None else list(variants)
        self.correction, self.alpha = str(correction or "holm"), float(alpha)

    def run(self, ctx: RunContext) -> None:
        return None

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..methods.compare import compare_paired, comparison_sections, plot_keys, write_comparison

        names = [t.name for t in ctx.taxonomies]
        baseline = self.baseline or names[0]
        variants = self.variants or [n for n in names if n != baseline]
        for n in [baseline, *variants]:
            if n not in names:
                raise ValueError(f"compare: taxonomy {n!r} is not in this run; taxonomies: {', '.join(names)}")
        confidence = float(ev.metrics.attrs.get("confidence", ctx.confidence))
        plots = ev.info.get("plot_slices")
        rate_plots = None if plots is None else plots.get("rate", ())
        with ctx.timed("compare"):
            cmp = compare_paired(ev.predictions, baseline, variants, {t.name: t.categories for t in ctx.taxonomies},
                                 ctx.slices, correction=self.correction, alpha=self.alpha, confidence=confidence,
                                 orders=ev.info.get("value_orders"))
            paths = write_comparison(cmp, out_dir, self.correction, self.alpha, model=report.model,
                                     plot_slices=rate_plots)
        return Written(paths, comparison_sections(cmp, self.correction, self.alpha, max_rows=15,
                                                  images=plot_keys(cmp, rate_plots)))
