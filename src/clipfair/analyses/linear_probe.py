"""Linear probes: a logistic regression per target taxonomy on the train split's
image features (projected, or the image tower's output before the projection), predicting the
evaluation images (method ``linear_probe``; rows of predictions.parquet).

Layer: analyses.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from .base import Analysis, AnalysisError, Needs, RunContext
from .registry import register_analysis

log = logging.getLogger(__name__)


@register_analysis
class LinearProbe(Analysis):
    """Linear probes of every target taxonomy (the CLIP paper's appendix A.3 protocol)."""

    name = "linear_probe"
    method = "linear_probe"
    predictions = True
    needs = Needs(image_embeddings="projected", splits=("eval", "train"), text=False)
    run_inputs = ("train",)

    def __init__(self, train: Any = None, features: str = "projected", **options: Any) -> None:
        """``train``: the training split (a :class:`clipfair.data.base.FaceDataset`, built at the
        CLI edge from ``probe.train_split`` / ``probe.train_dataset``); ``features``: projected or
        pre_projection; the rest: :func:`clipfair.methods.linear_probe.fit_probe`'s options (Cs, holdout,
        seed, max_iter, sweep_max_train, refine_steps_per_decade)."""
        from ..methods.linear_probe import FEATURES

        super().__init__(features=features, **options)
        if train is None:
            raise AnalysisError("the linear probe needs a train split (probe.train_split or probe.train_dataset)")
        if features not in FEATURES:
            raise ValueError(f"probe.features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.train, self.features, self.fit_options = train, str(features), dict(options)

    def _encoder(self, model: Any) -> tuple[Any, dict[str, Any] | None]:
        """The encoder of the probe's features and its cache variant (None: the run's own)."""
        if self.features != "pre_projection":
            return model, None
        from ..methods.linear_probe import PreProjectionView

        return PreProjectionView(model), {"features": self.features}

    def embed_jobs(self, dataset: Any, model: Any) -> list[tuple[Any, Any, Any]]:
        if self.features == "pre_projection":
            view, variant = self._encoder(model)
            return [(dataset, view, variant), (self.train, view, variant)]
        return [(self.train, model, None)]

    def check(self, ctx: RunContext) -> None:
        if not [t for t in ctx.taxonomies if t.target]:
            raise ValueError("linear probe requested but no taxonomy has a target (e.g. fairface_race)")

    def run(self, ctx: RunContext) -> pd.DataFrame:
        from ..methods.linear_probe import fit_probe, probe_predictions

        targets = [t for t in ctx.taxonomies if t.target]
        encoder, variant = self._encoder(ctx.model)
        embed = ctx.service("embed")
        eval_feats = ctx.image_embeddings
        if self.features == "pre_projection":
            with ctx.timed("embed_eval_pre_projection"):
                eemb = embed(ctx.dataset, encoder, variant)
            pos = {int(i): j for j, i in enumerate(eemb.indices)}
            eval_feats = eemb.embeddings[[pos[int(i)] for i in ctx.indices]]
        with ctx.timed("embed_train"):
            temb = embed(self.train, encoder, variant)
        ttable = self.train.table.iloc[temb.indices].reset_index(drop=True)
        frames, info = [], {"n_train_images": int(len(temb.indices)), "features": self.features}
        with ctx.timed("linear_probe"):
            for t in targets:
                if t.target not in ttable.columns or t.target not in ctx.table.columns:
                    log.warning("linear probe for %s skipped: the dataset has no %r column", t.name, t.target)
                    info[t.name] = {"skipped": f"the dataset has no {t.target!r} column"}
                    continue
                fit = fit_probe(t, temb.embeddings, ttable[t.target].tolist(), features=self.features,
                                normalize=self.features == "projected", **self.fit_options)
                frames.append(probe_predictions(fit, ctx.table, eval_feats, ctx.attributes))
                info[t.name] = {"C": fit.C, "holdout_accuracy": fit.holdout_accuracy, "n_train": fit.n_train,
                                "fit_seconds": round(fit.fit_seconds, 3), **fit.info}
        ctx.info["linear_probe"] = info
        for k, v in {**self.train.skipped, **temb.skipped}.items():
            ctx.skipped[f"train_{k}"] = ctx.skipped.get(f"train_{k}", 0) + v
        ctx.counts.update(train_images=len(self.train), train_images_encoded=temb.encoded,
                          train_images_from_cache=temb.cached)
        return (pd.concat(frames, ignore_index=True) if frames
                else pd.DataFrame(columns=["image_id", "taxonomy"]))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "features": self.features, **self.fit_options}
