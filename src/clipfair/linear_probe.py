"""Linear probes: logistic regression on image embeddings (the CLIP paper's 'LR CLIP').

For a target taxonomy (race, gender, age, ...), fit scikit-learn's multinomial logistic
regression on the train split's image embeddings; choose the inverse regularisation C by
a sweep on a held-out part of train (the paper's protocol), refit on all of train with the
chosen C, and predict the evaluation split. Predictions use the same tidy schema as
zero-shot (``method = linear_probe``), so every slice and interval comes for free.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from .taxonomy import Taxonomy
from .zeroshot import l2_normalize, predictions_frame

log = logging.getLogger(__name__)

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)


@dataclass
class ProbeFit:
    taxonomy: Taxonomy
    C: float
    holdout_accuracy: dict[float, float]
    classifier: LogisticRegression
    n_train: int
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities over the taxonomy's classes in class order (unseen classes get 0)."""
        p = self.classifier.predict_proba(l2_normalize(embeddings))
        out = np.zeros((len(p), len(self.taxonomy.classes)), dtype=np.float64)
        col = {c: i for i, c in enumerate(self.taxonomy.labels)}
        for j, c in enumerate(self.classifier.classes_):
            out[:, col[c]] = p[:, j]
        return out


def probe_labels(taxonomy: Taxonomy, truth: Sequence[Any]) -> np.ndarray:
    """Class label for each target value (None where no class matches it)."""
    right = {v: c.label for c in taxonomy.classes for v in c.correct_for}
    return np.array([right.get(t) for t in truth], dtype=object)


def _fit(clf: LogisticRegression, X: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y)


def fit_probe(taxonomy: Taxonomy, train_embeddings: np.ndarray, train_truth: Sequence[Any], *,
              Cs: Sequence[float] = DEFAULT_CS, holdout: float = 0.2, seed: int = 0,
              max_iter: int = 1000, sweep_max_train: int | None = 20000) -> ProbeFit:
    """Fit a probe for ``taxonomy.target``; C chosen on a seeded held-out part of train.

    ``sweep_max_train`` caps the rows used to fit each candidate C (the final fit uses all
    of train), which keeps the sweep to seconds at FairFace's 86,744 training images.
    """
    if taxonomy.target is None:
        raise ValueError(f"taxonomy {taxonomy.name!r} has no target; a linear probe needs one")
    t0 = time.perf_counter()
    y = probe_labels(taxonomy, train_truth)
    keep = np.array([v is not None for v in y])
    X, y = l2_normalize(train_embeddings[keep]), y[keep].astype(str)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{taxonomy.name}: the training split has fewer than two classes of "
                         f"{taxonomy.target!r}; cannot fit a probe")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_hold = max(1, int(round(holdout * len(y))))
    hold, tr = perm[:n_hold], perm[n_hold:]
    if sweep_max_train is not None and len(tr) > sweep_max_train:
        tr = tr[:sweep_max_train]
    scores: dict[float, float] = {}
    sweep = LogisticRegression(max_iter=max_iter, tol=1e-4, warm_start=True)
    for C in sorted(float(c) for c in Cs):  # each C warm-starts from the previous solution
        _fit(sweep.set_params(C=C), X[tr], y[tr])
        scores[C] = float((sweep.predict(X[hold]) == y[hold]).mean())
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))  # ties: the milder C
    final = _fit(LogisticRegression(C=best, max_iter=max_iter, tol=1e-4), X, y)
    secs = time.perf_counter() - t0
    log.info("linear probe %s: C=%g (held-out accuracy %.3f), %d train images, %.1fs",
             taxonomy.name, best, scores[best], len(y), secs)
    return ProbeFit(taxonomy, best, scores, final, int(len(y)), secs,
                    {"holdout": holdout, "seed": seed, "Cs": sorted(float(c) for c in Cs),
                     "sweep_rows": int(len(tr)), "n_iter": int(np.max(final.n_iter_))})


def probe_predictions(fit: ProbeFit, table: pd.DataFrame, embeddings: np.ndarray,
                      attributes: Sequence[str]) -> pd.DataFrame:
    return predictions_frame(table, fit.taxonomy, fit.predict_proba(embeddings), "linear_probe", attributes)
