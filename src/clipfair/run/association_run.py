"""Association tests without the CLI: a dataset and a model in, associations.csv out.

Layer: run.

:func:`run_association` runs :class:`clipfair.analyses.association.AssociationAnalysis` with
the model's cached text embedder; the dataset's images are encoded (or read from the cache)
only when a test uses them, so text-only tests encode no image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..analyses.association import FOREST_PNG, AssociationAnalysis, write_association
from ..analyses.base import RunContext
from ..methods.association_tests import AssociationError

__all__ = ["run_association"]


class _LazyImagesContext(RunContext):
    """A RunContext whose image embeddings are computed (or read from the cache) on first use."""

    def __init__(self, table: pd.DataFrame, compute: Any, dim: int, **kw: Any) -> None:
        self._compute, self._images, self._dim = compute, None, dim
        super().__init__(table, np.zeros((0, dim), np.float32), **kw)

    @property
    def image_embeddings(self) -> np.ndarray:
        if self._images is None:
            self._images = self._compute()
        return self._images

    @image_embeddings.setter
    def image_embeddings(self, value: np.ndarray) -> None:
        if len(value):
            self._images = value

    @property
    def images_computed(self) -> bool:
        return self._images is not None


def run_association(dataset: Any, model: Any, out_dir: Path | str, options: Mapping[str, Any] | None = None, *,
                    cache_dir: Path | str | None = None, confidence: float = 0.95, seed: int = 0,
                    progress: bool = False) -> dict[str, Any]:
    """Run the association analysis on a dataset and model without the CLI: text embeddings
    through the model's cached text embedder, image embeddings encoded (or read from the cache)
    only when a test uses images. Writes ``associations.csv``, ``markedness.csv`` (when any)
    and ``associations.md`` (with the forest plot) into ``out_dir``; returns
    ``{"paths", "outcome", "images_encoded", "info"}``."""
    from ..report.document import Document, to_markdown
    from .embed import TextEmbedder, embed_images, open_stores

    analysis = AssociationAnalysis(**dict(options or {}))
    image_store, text_store = open_stores(model, cache_dir)
    emb_holder: dict[str, Any] = {}

    def images() -> np.ndarray:
        emb = embed_images(dataset, model, image_store, progress=progress)
        emb_holder["emb"] = emb
        if len(emb.indices) != len(dataset.table):
            raise AssociationError(f"{len(dataset.table) - len(emb.indices)} images could not be encoded; "
                                   "association tests need every image of the table")
        return emb.embeddings
    out = Path(out_dir)
    ctx = _LazyImagesContext(dataset.table.reset_index(drop=True), images, 0, attributes=list(dataset.attributes),
                             orders=dataset.value_orders(), encode_text=TextEmbedder(model, text_store),
                             confidence=confidence, seed=seed, out_dir=out, services={
                                 "image_store": lambda: image_store,
                                 "embed": lambda ds, encoder=None, store=None: embed_images(
                                     ds, model if encoder is None else encoder, store, progress=progress)})
    analysis.run(ctx)
    assert analysis.outcome is not None
    paths = write_association(analysis.outcome, out)
    md = out / "associations.md"
    md.write_text(to_markdown(Document("clipfair association tests", analysis.report_sections(out))),
                  encoding="utf-8")
    paths.append(md)
    if (out / FOREST_PNG).is_file():
        paths.append(out / FOREST_PNG)
    return {"paths": paths, "outcome": analysis.outcome, "images_encoded": ctx.images_computed,
            "info": ctx.info.get("association", {})}
