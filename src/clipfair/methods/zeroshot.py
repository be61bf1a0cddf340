"""Zero-shot classification: class embeddings (prompt ensembling), logits, predictions.

Layer: methods.

Logits and probabilities follow the model family's own scoring rule
(:class:`clipfair.models.Scoring`: softmax over ``logit_scale * cos`` for CLIP-style models,
``sigmoid(logit_scale * cos + logit_bias)`` for SigLIP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..data.attributes import PREDICTION_COLUMNS
from ..models.base import Scoring
from ..data.taxonomy import Taxonomy, TaxonomyError

TextEncoder = Callable[[Sequence[str]], np.ndarray]


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@dataclass(frozen=True)
class ClassEmbeddings:
    """One unit vector per class of a taxonomy (rows in class order)."""

    taxonomy: Taxonomy
    weights: np.ndarray  # (n_classes, dim), L2-normalised


def short_text(text: str, most: int = 80) -> str:
    """``text`` quoted for a one-line message: at most ``most`` characters of it, then how long
    it was (a 300-word prompt stays a short line)."""
    t = " ".join(str(text).split())
    return repr(t) if len(t) <= most else f"{t[:most]!r}... ({len(t):,} characters)"


def check_prompt_lengths(taxonomy: Taxonomy, token_count: Callable[[str], int], context_length: int) -> None:
    """Refuse prompts the text encoder would silently truncate; name file, class and text."""
    for cls, texts in zip(taxonomy.classes, taxonomy.class_texts()):
        for t in texts:
            n = token_count(t)
            if n > context_length:
                raise TaxonomyError(
                    f"{taxonomy.source} ({taxonomy.name}): class {short_text(cls.label, 40)}: prompt "
                    f"{short_text(t)} is {n} tokens, "
                    f"longer than the text encoder's context of {context_length}; shorten the prompt or template")


def class_embeddings(taxonomy: Taxonomy, encode: TextEncoder) -> ClassEmbeddings:
    """CLIP's prompt ensembling: for each class encode every template x prompt text,
    L2-normalise each, average, and re-normalise."""
    class_texts = taxonomy.class_texts()
    unique = list(dict.fromkeys(t for texts in class_texts for t in texts))
    emb = l2_normalize(encode(unique))
    row = {t: i for i, t in enumerate(unique)}
    weights = np.stack([emb[[row[t] for t in texts]].mean(axis=0) for texts in class_texts])
    return ClassEmbeddings(taxonomy, l2_normalize(weights))


def zero_shot_logits(image_embeddings: np.ndarray, classes: ClassEmbeddings, logit_scale: float,
                     logit_bias: float = 0.0) -> np.ndarray:
    """logit_scale x cosine similarity between each image and each class embedding (+ the
    family's logit_bias, SigLIP's; 0 for CLIP-style models)."""
    return float(logit_scale) * (l2_normalize(image_embeddings) @ classes.weights.T) + float(logit_bias)


def softmax(logits: np.ndarray) -> np.ndarray:
    return Scoring("softmax", 1.0).probabilities(logits)


def predictions_frame(table: pd.DataFrame, taxonomy: Taxonomy, probs: np.ndarray,
                      method: str, attributes: Sequence[str], logits: np.ndarray | None = None) -> pd.DataFrame:
    """Per-image predictions in the tidy schema shared by every method.

    Columns: image_id, taxonomy, method, predicted_label, predicted_category, score (the
    method's own probability of the predicted class: softmax or sigmoid for zero-shot), logit
    (the raw zero-shot logit of the predicted class; NaN for methods without one), true_label,
    correct, true_rank (rank of the right class among all classes by score, 1 = predicted; null
    without a target; for top-k accuracy), then the attribute columns.
    """
    labels = np.array(taxonomy.labels, dtype=object)
    cats = np.array([c.category for c in taxonomy.classes], dtype=object)
    idx = probs.argmax(axis=1)
    df = pd.DataFrame({
        "image_id": table["image_id"].astype(str).to_numpy(),
        "taxonomy": taxonomy.name,
        "method": method,
        "predicted_label": labels[idx],
        "predicted_category": cats[idx],
        "score": probs[np.arange(len(idx)), idx].astype(np.float64),
        "logit": (logits[np.arange(len(idx)), idx].astype(np.float64) if logits is not None
                  else np.full(len(idx), np.nan)),
    })
    if taxonomy.target and taxonomy.target in table.columns:
        truth = table[taxonomy.target].to_numpy(dtype=object)
        # which class is right for each target value (a class may match several values);
        # an image whose value no class matches has no correct answer: correct is NA
        right = {v: c.label for c in taxonomy.classes for v in c.correct_for}
        # true_label is the value a class can be right for; values no class matches (e.g.
        # Latino_Hispanic under the 4-way race grouping, UTKFace's "Others") have none, so
        # they stay out of accuracy (the raw value is still in the attribute column)
        df["true_label"] = pd.array([t if right.get(t) is not None else None for t in truth], dtype=object)
        df["correct"] = pd.array([None if right.get(t) is None else bool(right[t] == p)
                                  for t, p in zip(truth, df["predicted_label"])], dtype="boolean")
        df["true_rank"] = true_ranks(probs, [right.get(t) for t in truth], taxonomy.labels)
        second = getattr(taxonomy, "also_correct", None)
        if second and second in table.columns:
            # a second correct answer (e.g. FACET's class2): right as well; the rank is the better one
            alt = [right.get(v) if isinstance(v, str) else None for v in table[second].to_numpy(dtype=object)]
            hit = np.array([a is not None and a == p for a, p in zip(alt, df["predicted_label"])], dtype=bool)
            has = df["correct"].notna().to_numpy()
            df.loc[hit & has, "correct"] = True
            r2 = np.asarray(true_ranks(probs, alt, taxonomy.labels).fillna(10 ** 9), dtype=np.int64)
            r1 = np.asarray(df["true_rank"].fillna(10 ** 9), dtype=np.int64)
            better = has & (r2 < r1)
            df["true_rank"] = pd.array(np.where(better, r2, r1), dtype="Int64")
            df.loc[df["true_rank"] >= 10 ** 9, "true_rank"] = pd.NA
    else:
        df["true_label"] = pd.array([None] * len(df), dtype="object")
        df["correct"] = pd.array([None] * len(df), dtype="boolean")
        df["true_rank"] = pd.array([None] * len(df), dtype="Int64")
    if tuple(df.columns) != PREDICTION_COLUMNS:  # a new column must be a reserved name too
        raise AssertionError(f"prediction columns {list(df.columns)} differ from PREDICTION_COLUMNS")
    for a in attributes:
        if a in table.columns:
            df[a] = table[a].to_numpy()
    return df


def true_ranks(probs: np.ndarray, right: Sequence[str | None], labels: Sequence[str]) -> pd.arrays.IntegerArray:
    """Rank of each row's right class (1 = the argmax, ties broken by class order as
    argmax does); NA where the row has no right class."""
    col = {lab: j for j, lab in enumerate(labels)}
    idx = np.array([col.get(r, -1) if r is not None else -1 for r in right], dtype=np.int64)
    has = idx >= 0
    safe = np.where(has, idx, 0)
    p_true = probs[np.arange(len(idx)), safe][:, None]
    before = np.arange(probs.shape[1])[None, :] < safe[:, None]
    rank = 1 + (probs > p_true).sum(axis=1) + ((probs == p_true) & before).sum(axis=1)
    out = pd.array(rank, dtype="Int64")
    out[~has] = pd.NA
    return out


def zero_shot_predictions(table: pd.DataFrame, image_embeddings: np.ndarray, classes: ClassEmbeddings,
                          scoring: Scoring, attributes: Sequence[str]) -> pd.DataFrame:
    """Predicted class = the largest logit; ``score`` = the family's probability of it."""
    logits = zero_shot_logits(image_embeddings, classes, scoring.logit_scale, scoring.logit_bias)
    probs = scoring.probabilities(logits)
    return predictions_frame(table, classes.taxonomy, probs, "zero_shot", attributes, logits=logits)
