"""CLIP-style models behind one contract (:class:`ImageTextModel`, see :mod:`.base`).

Layer: models.

``load_model(loader="hf", ...)``: transformers CLIP / MetaCLIP / SigLIP / SigLIP 2 (:mod:`.hf`);
``load_model(loader="open_clip", ...)``: open_clip (:mod:`.open_clip_backend`, needs
``pip install clipfair[open_clip]``). Only these backend modules import transformers or open_clip.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .base import (DEFAULT_MAX_PARAMS, MODELS, PICKLE_SUFFIXES, ImageTextModel, ModelError, Pixels, Scoring, TextSettings,
                   resolve_device, resolve_dtype)
from .hf import FAMILIES, ClipModel, features, load_hf_clip
from . import open_clip_backend  # noqa: F401  (registers the "open_clip" loader; imports open_clip lazily)


log = logging.getLogger(__name__)


def model_config_keys() -> tuple[str, ...]:
    """Every key of the ``model`` config group: the arguments of all registered loaders."""
    return tuple(sorted({p for name in MODELS.names() for p in inspect.signature(MODELS.get(name)).parameters}))


def load_model(loader: str = "hf", **kwargs: Any) -> ImageTextModel:
    """Load a model with the named backend (``hf`` or ``open_clip``).

    The model config group shares one set of keys across loaders (so that
    ``model.loader=open_clip model.name=... model.pretrained=...`` works from any model config);
    keys the chosen loader does not take are dropped, with a warning when they are set.
    """
    fn = MODELS.get(loader)
    params = inspect.signature(fn).parameters
    for k, v in kwargs.items():
        if k == "max_params" and v == DEFAULT_MAX_PARAMS:
            continue  # the shared default (the open_clip loader does not check it)
        if k not in params and v not in (None, False):
            log.warning("model.%s=%r does not apply to model.loader=%s; ignored", k, v, loader)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


__all__ = ["FAMILIES", "model_config_keys", "MODELS", "PICKLE_SUFFIXES", "ClipModel", "ImageTextModel", "ModelError", "Pixels",
           "Scoring", "TextSettings", "features", "load_hf_clip", "load_model", "resolve_device",
           "resolve_dtype"]
