"""Numeric precision audit: does the run's dtype change zero-shot predictions?

Layer: methods.

On a seeded sample of images (default 256), the image tower encodes the same preprocessed
pixels twice, at the run's precision and in float32; both sets of embeddings are scored
against the run's class embeddings. Recorded per taxonomy: how many predictions agree (with
a Wilson interval), which images flipped, and the distribution of top-2 margins (the cosine
gap between the best and second-best class at the run's precision: small margins are where
precision can flip a prediction).

:func:`audit_embeddings` and :func:`audit_precision` are pure (arrays and callables in, a
JSON-ready dict out); :func:`run_precision_audit` is the pipeline's hook.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..stats.metrics import wilson_interval
from .zeroshot import l2_normalize

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 256
QUANTILES = {"min": 0.0, "p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5}


def top2_margins(image_embeddings: np.ndarray, class_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, top-1 minus top-2 cosine similarity) per image."""
    sims = l2_normalize(np.asarray(image_embeddings, dtype=np.float64)) @ np.asarray(class_weights, np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")
    top = order[:, 0]
    if sims.shape[1] < 2:
        return top, np.full(len(sims), np.inf)
    rows = np.arange(len(sims))
    return top, sims[rows, order[:, 0]] - sims[rows, order[:, 1]]


def audit_embeddings(run: np.ndarray, reference: np.ndarray, class_weights: Mapping[str, np.ndarray],
                     image_ids: Sequence[str] | None = None, confidence: float = 0.95,
                     max_examples: int = 5) -> dict[str, Any]:
    """Per taxonomy (``class_weights``: name -> L2-normalised class embeddings), agreement of
    the argmax class between ``run`` and ``reference`` image embeddings, and the run's top-2
    margins. Ties go to the first class, as in zero-shot prediction."""
    run, reference = np.asarray(run), np.asarray(reference)
    if run.shape != reference.shape:
        raise ValueError(f"run embeddings {run.shape} and reference {reference.shape} differ in shape")
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(run))]
    out: dict[str, Any] = {}
    cos = np.sum(l2_normalize(run.astype(np.float64)) * l2_normalize(reference.astype(np.float64)), axis=1)
    for name, w in class_weights.items():
        a, margin = top2_margins(run, w)
        b, ref_margin = top2_margins(reference, w)
        same = a == b
        k, n = int(same.sum()), int(len(same))
        lo, hi = wilson_interval(k, n, confidence) if n else (np.nan, np.nan)
        flipped = [ids[i] for i in np.flatnonzero(~same)]
        finite = margin[np.isfinite(margin)]
        out[name] = {
            "n": n, "agree": k, "agreement": k / n if n else np.nan, "ci_low": lo, "ci_high": hi,
            "flipped": len(flipped), "flips_example": ", ".join(flipped[:max_examples]),
            "margin_quantiles": {q: float(np.quantile(finite, p)) if len(finite) else None
                                 for q, p in QUANTILES.items()},
            "flipped_margin_max": float(margin[~same].max()) if (~same).any() else None,
            "reference_margin_quantiles": {q: float(np.quantile(ref_margin[np.isfinite(ref_margin)], p))
                                           if np.isfinite(ref_margin).any() else None
                                           for q, p in QUANTILES.items()},
        }
    return {"embedding_cosine_min": float(cos.min()) if len(cos) else None, "taxonomies": out}


def audit_precision(encode_run: Callable[[Any], np.ndarray], encode_reference: Callable[[Any], np.ndarray],
                    pixels: Any, class_weights: Mapping[str, np.ndarray], image_ids: Sequence[str] | None = None,
                    batch_size: int = 64, confidence: float = 0.95) -> dict[str, Any]:
    """Encode the same preprocessed ``pixels`` (N, 3, H, W) with both encoders (batched) and
    compare their zero-shot predictions (:func:`audit_embeddings`)."""
    def enc(f: Callable[[Any], np.ndarray]) -> np.ndarray:
        parts = [np.asarray(f(pixels[i:i + batch_size]), dtype=np.float32) for i in range(0, len(pixels), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return audit_embeddings(enc(encode_run), enc(encode_reference), class_weights, image_ids, confidence)


def float32_twin(model: Any) -> tuple[Any, str]:
    """A float32 copy of ``model`` for the reference pass, and what it is. A backend may offer
    ``with_dtype(torch.float32)`` (e.g. the original float32 weights); otherwise the run's
    weights are copied and cast up, so only the computation is float32, not the weights."""
    import torch

    if callable(getattr(model, "with_dtype", None)):
        return model.with_dtype(torch.float32), "float32 weights and computation (backend with_dtype)"
    twin = copy.copy(model)  # any backend object (the contract's models are not dataclasses)
    twin.model, twin.dtype, twin._image_features = copy.deepcopy(model.model).float(), torch.float32, None
    return twin, (f"float32 computation on the run's weights cast up from "
                  f"{str(model.dtype).replace('torch.', '')} (the original float32 weights are not kept)")


def run_precision_audit(dataset: Any, model: Any, rows: Sequence[int],
                        class_weights: Callable[[], Mapping[str, np.ndarray]], n: int = DEFAULT_SAMPLE, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The pipeline's hook: a seeded sample of ``n`` of ``rows`` (readable images) encoded at
    the run's dtype and in float32 (``class_weights()`` gives the taxonomies' class embeddings).
    A float32 run records that there is nothing to compare."""
    import torch

    dtype = str(model.dtype).replace("torch.", "")
    base = {"dtype": dtype, "seed": int(seed), "requested": int(n)}
    if n <= 0:
        return {**base, "skipped": "turned off (precision_audit.n = 0)"}
    if model.dtype == torch.float32:
        return {**base, "skipped": "the run is float32: nothing to compare"}
    weights = class_weights()
    if not weights:
        return {**base, "skipped": "no taxonomy to predict"}
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(np.asarray(rows), size=min(int(n), len(rows)), replace=False))
    pixels = model.preprocess([dataset.load_image(int(i)) for i in pick])
    try:
        twin, reference = float32_twin(model)
    except (TypeError, ValueError, AttributeError) as e:  # a backend that can be neither copied nor re-typed
        log.warning("precision audit skipped: no float32 copy of the model (%s)", e)
        return {**base, "skipped": f"no float32 copy of this backend ({type(e).__name__}: {e})"}
    ids = [str(dataset.table["image_id"].iloc[int(i)]) if "image_id" in dataset.table.columns else str(int(i))
           for i in pick]
    res = audit_precision(model.encode_pixels, twin.encode_pixels, pixels, weights, ids,
                          batch_size=int(getattr(model, "batch_size", 64)), confidence=confidence)
    del twin
    log.info("precision audit (%s vs float32, %d images): %s", dtype, len(pick),
             ", ".join(f"{t} {a['agree']}/{a['n']}" for t, a in res["taxonomies"].items()))
    return {**base, "n_images": int(len(pick)), "reference": reference,
            "text": "the run's class embeddings for both", **res}
