"""The model card reproduction: the CLIP paper's / model card's FairFace tables
and claims reproduced from this run's metrics, with verdicts (:mod:`clipfair.methods.model_card`:
model_card.csv, model_card.md, plots; a section of report.html).

Layer: analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..methods.model_card import ModelCardError
from .base import Analysis, Needs, RunContext, Written
from .registry import register_analysis


@register_analysis
class ModelCard(Analysis):
    """Reproduce the paper's FairFace tables and claims from this run."""

    name = "model_card"
    errors = (ModelCardError,)
    needs = Needs(image_embeddings="none", splits=(), text=False)
    run_inputs = ("confidence", "image_subset")

    def __init__(self, image_subset: str = "", confidence: float | None = None, **block: Any) -> None:
        """``block``: the ``model_card:`` config keys (taxonomies, race_accuracy, rate_denominator,
        tolerance_pp, references); ``image_subset``: how the evaluated images were chosen (the CLI
        states it from ``subset``)."""
        from ..methods.model_card import ModelCardOptions, read_references

        super().__init__(**block)
        self.block = dict(block)
        self.opts = ModelCardOptions(**self.block, **({} if confidence is None else {"confidence": confidence}))
        self.refs = read_references(self.opts.references)  # validate before the slow parts
        self.image_subset = image_subset

    def check(self, ctx: RunContext) -> None:
        from dataclasses import replace

        from ..methods.model_card import check_slices

        if self.opts.confidence != ctx.confidence:
            self.opts = replace(self.opts, confidence=ctx.confidence)
        check_slices(self.refs, ctx.slices)  # e.g. the paper's age bands (dataset.derived)

    def run(self, ctx: RunContext) -> None:
        return None

    def finish(self, ev: Any, ctx: RunContext) -> None:
        from ..methods.model_card import SCORING_LABELS, race_scoring_metrics
        from .engine import add_result_columns

        # both race scorings in metrics.csv: accuracy (7-way) and accuracy_race_binary, told apart by
        # the key column scoring (the labels of model_card.csv's scoring column)
        extra = race_scoring_metrics(ev.predictions, self.opts.taxonomies["race"], ctx.slices, ctx.confidence,
                                     orders=ctx.orders)
        extra["scoring"] = SCORING_LABELS["binary"]
        extra = add_result_columns(extra, ctx.table, ctx.slices, analysis=self.name)
        ev.metrics = pd.concat([ev.metrics, extra], ignore_index=True)

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Written:
        from ..report.document import Section
        from ..methods.model_card import CardContext, padding_statement, write_model_card

        ds, model = ctx.dataset, ctx.model
        context = CardContext(
            model=model.name_or_path, dataset=f"{ds.name} {ds.source}", padding=padding_statement(ds.source),
            image_subset=self.image_subset or f"all {len(ds)} images",
            templates={t.name: list(t.templates) for t in ctx.taxonomies}, demo=bool(report.demo),
            linear_probe=ev.info.get("linear_probe") or {}, precision=ev.info.get("precision") or {},
            extra_choices={"model dtype": str(model.dtype).replace("torch.", "")},
            banner=str((ev.info.get("sanity") or {}).get("banner") or ""))
        paths, sections = write_model_card(ev.predictions, ev.metrics, self.opts, out_dir, context)
        return Written(paths, [], [Section("Model card reproduction", list(sections))] if sections else [])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.block}
