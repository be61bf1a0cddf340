"""CLIP-style models behind one contract (:class:`ImageTextModel`, see :mod:`.base`).

``load_model(loader="hf", ...)``: transformers CLIP / MetaCLIP / SigLIP / SigLIP 2 (:mod:`.hf`);
``load_model(loader="open_clip", ...)``: open_clip (:mod:`.open_clip_backend`, needs
``pip install clipfair[open_clip]``). Only these backend modules import transformers or open_clip.
"""

from __future__ import annotations

from typing import Any

from .base import (MODELS, PICKLE_SUFFIXES, ImageTextModel, ModelError, Pixels, Scoring, TextSettings,
                   resolve_device, resolve_dtype)
from .hf import FAMILIES, ClipModel, _features, features, load_hf_clip
from . import open_clip_backend  # noqa: F401  (registers the "open_clip" loader; imports open_clip lazily)


def load_model(loader: str = "hf", **kwargs: Any) -> ImageTextModel:
    """Load a model with the named backend (``hf`` or ``open_clip``)."""
    return MODELS.get(loader)(**kwargs)


__all__ = ["FAMILIES", "MODELS", "PICKLE_SUFFIXES", "ClipModel", "ImageTextModel", "ModelError", "Pixels",
           "Scoring", "TextSettings", "_features", "features", "load_hf_clip", "load_model", "resolve_device",
           "resolve_dtype"]
