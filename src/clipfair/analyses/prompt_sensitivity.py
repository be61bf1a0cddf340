"""Prompt sensitivity: each listed taxonomy evaluated under its own templates and
under every template set (variants named ``taxonomy@set``), and the spread of each group's figure
across the sets (:mod:`clipfair.methods.sensitivity`: sensitivity.csv, findings and plots).

Layer: analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .base import Analysis, Needs, RunContext, Written
from .registry import register_analysis


@register_analysis
class PromptSensitivity(Analysis):
    """How much each group's figures move when only the prompt templates change."""

    name = "prompt_sensitivity"
    needs = Needs(image_embeddings="none", splits=(), text=False)

    def __init__(self, template_sets: Mapping[str, Mapping[str, list[str]]] | None = None) -> None:
        super().__init__(template_sets=dict(template_sets or {}))
        self.template_sets = dict(template_sets or {})

    def adjust_taxonomies(self, taxonomies: list[Any]) -> list[Any]:
        from ..methods.sensitivity import expand_template_sets

        if not self.template_sets:
            return taxonomies
        out = expand_template_sets(taxonomies, self.template_sets)
        # variant name -> (taxonomy, template set): the names are built from the values, never split
        from ..methods.sensitivity import variant_name

        self.variants = {variant_name(t.name, set_name): (t.name, set_name) for t in taxonomies
                         if t.name in self.template_sets for set_name in ["default", *self.template_sets[t.name]]}
        return out

    def run(self, ctx: RunContext) -> None:
        return None

    def finish(self, ev: Any, ctx: RunContext) -> None:
        """The results-model key columns ``variant_of`` and ``template_set`` of the variants' rows."""
        variants = getattr(self, "variants", {})
        if not variants or not len(ev.metrics):
            return
        tax = ev.metrics["taxonomy"]
        ev.metrics["variant_of"] = [variants.get(t, ("", ""))[0] for t in tax]
        ev.metrics["template_set"] = [variants.get(t, ("", ""))[1] for t in tax]

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..stats.metrics import DEFAULT_DISPARITY_MIN_N
        from ..methods.sensitivity import write_sensitivity

        plots = ev.info.get("plot_slices")
        rate_plots = None if plots is None else plots.get("rate", ())
        with ctx.timed("sensitivity"):
            paths, sections = write_sensitivity(
                ev.metrics, out_dir, harms={t.name: dict(t.harms) for t in ctx.taxonomies}, confidence=ctx.confidence, model=report.model,
                plot_slices=rate_plots, min_n=int(ev.disparities.attrs.get("min_n", DEFAULT_DISPARITY_MIN_N)))
        return Written(paths, sections)
