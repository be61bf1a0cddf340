"""Linear probes: logistic regression on image features (the CLIP paper's 'LR CLIP').

Layer: analyses.

For a target taxonomy (race, gender, age, ...), fit scikit-learn's multinomial logistic
regression on the train split's image features and predict the evaluation split.
Predictions use the same tidy schema as zero-shot (``method = linear_probe``), so every
slice and interval comes for free.

The protocol follows the paper's appendix A.3 where it is stated:

features (``probe.features``)
    ``pre_projection``: the image tower's pooled output before the projection head,
    unnormalised (the paper's protocol; needs a backend that exposes it, see
    :class:`PreProjectionView`); ``projected``: the embeddings zero-shot uses, L2-normalised.
C search
    a wide coarse grid (default 1e-6 ... 1e6, two decades apart) on a stratified held-out
    part of train, then refined around the best value by halving the step until it reaches
    ``refine_steps_per_decade`` steps per decade (the paper: 8).
regularisation consistent with the final fit size
    scikit-learn's C multiplies the *summed* loss, so a C chosen on m rows means the same
    regularisation on N rows at ``C * m / N``; the final fit on all of train uses that.
convergence
    fits that stop at ``max_iter`` are recorded (``converged``, ``sweep_not_converged``) and
    reported with a warning, never silenced.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from .taxonomy import Taxonomy
from .zeroshot import l2_normalize, predictions_frame

log = logging.getLogger(__name__)

FEATURES = ("pre_projection", "projected")
#: the coarse grid of the C search: 1e-6 ... 1e6, two decades apart (the paper's start)
DEFAULT_CS = tuple(10.0 ** k for k in range(-6, 7, 2))
DEFAULT_STEPS_PER_DECADE = 8


@dataclass
class ProbeFit:
    taxonomy: Taxonomy
    C: float  # the final fit's C (rescaled from the sweep's to the final fit's row count)
    holdout_accuracy: dict[float, float]  # sweep C -> held-out accuracy
    classifier: LogisticRegression
    n_train: int
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    normalize: bool = True

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(embeddings) if self.normalize else np.asarray(embeddings, dtype=np.float32)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities over the taxonomy's classes in class order (unseen classes get 0)."""
        p = self.classifier.predict_proba(self.features(embeddings))
        out = np.zeros((len(p), len(self.taxonomy.classes)), dtype=np.float64)
        col = {c: i for i, c in enumerate(self.taxonomy.labels)}
        for j, c in enumerate(self.classifier.classes_):
            out[:, col[c]] = p[:, j]
        return out


class PreProjectionView:
    """A model seen through its image features before the projection head: ``encode_pixels``
    returns ``model.encode_pixels_pre_projection`` (the backend's optional method) and the
    fingerprint differs, so these features get their own cache namespace. Everything else
    (preprocessing, device, dtype, batch size) is the model's."""

    _image_features = None  # never the compiled projected tower

    def __init__(self, model: Any) -> None:
        if not callable(getattr(model, "encode_pixels_pre_projection", None)):
            raise ValueError(f"model {getattr(model, 'name_or_path', model)!r} does not expose image features "
                             "before the projection; use probe.features=projected")
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def fingerprint(self) -> str:
        return f"{self._model.fingerprint}:pre_projection"

    def compile_image_encoder(self, **options: Any) -> None:  # the view runs eagerly
        return None

    def encode_pixels(self, pixel_values: Any) -> np.ndarray:
        return self._model.encode_pixels_pre_projection(pixel_values)


def probe_labels(taxonomy: Taxonomy, truth: Sequence[Any]) -> np.ndarray:
    """Class label for each target value (None where no class matches it)."""
    right = {v: c.label for c in taxonomy.classes for v in c.correct_for}
    return np.array([right.get(t) for t in truth], dtype=object)


def _fit(clf: LogisticRegression, X: np.ndarray, y: np.ndarray) -> tuple[LogisticRegression, bool]:
    """Fit; returns (classifier, converged). Non-convergence is returned, not swallowed: the
    caller records it and warns once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(X, y)
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return clf, converged


def _split(y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(first ``size`` rows, the rest), stratified by ``y`` where every class has 2+ rows."""
    idx = np.arange(len(y))
    _, counts = np.unique(y, return_counts=True)
    strat = bool(counts.min() >= 2 and size >= len(counts) and len(y) - size >= len(counts))
    a, b = train_test_split(idx, train_size=size, random_state=seed, shuffle=True,
                            stratify=y if strat else None)
    return np.sort(a), np.sort(b), strat


def refine_search(score: Callable[[float], float], coarse: Sequence[float],
                  steps_per_decade: int = DEFAULT_STEPS_PER_DECADE) -> tuple[float, dict[float, float]]:
    """Best C by ``score`` (higher is better): the coarse grid, then around the best value at
    half the previous step until the step is 1/``steps_per_decade`` decade (0: coarse only).
    Ties go to the C nearest 1 (on the log scale)."""
    scores: dict[float, float] = {}

    def pick() -> float:
        return max(scores, key=lambda c: (scores[c], -abs(math.log10(c))))

    grid = sorted(float(c) for c in coarse)
    for C in grid:
        scores[C] = score(C)
    best = pick()
    if steps_per_decade <= 0 or len(grid) < 2:
        return best, scores
    step = min(math.log10(b) - math.log10(a) for a, b in zip(grid, grid[1:]))
    target = 1.0 / steps_per_decade
    while step > target * (1 + 1e-9):
        step /= 2
        for C in (best * 10 ** -step, best * 10 ** step):
            C = float(f"{C:.10g}")
            if C not in scores:
                scores[C] = score(C)
        best = pick()
    return best, dict(sorted(scores.items()))


def fit_probe(taxonomy: Taxonomy, train_embeddings: np.ndarray, train_truth: Sequence[Any], *,
              Cs: Sequence[float] = DEFAULT_CS, refine_steps_per_decade: int = DEFAULT_STEPS_PER_DECADE,
              holdout: float = 0.2, seed: int = 0, max_iter: int = 1000,
              sweep_max_train: int | None = 20000, normalize: bool = True,
              features: str = "projected") -> ProbeFit:
    """Fit a probe for ``taxonomy.target``; C chosen on a seeded, stratified held-out part of
    train (see the module docstring). ``sweep_max_train`` caps the rows each candidate C is
    fitted on (stratified); the final fit uses all of train with C rescaled to its size.
    ``normalize``: L2-normalise features (the projected embeddings); ``features`` is recorded."""
    if taxonomy.target is None:
        raise ValueError(f"taxonomy {taxonomy.name!r} has no target; a linear probe needs one")
    if features not in FEATURES:
        raise ValueError(f"probe.features must be one of {', '.join(FEATURES)}, got {features!r}")
    t0 = time.perf_counter()
    y = probe_labels(taxonomy, train_truth)
    keep = np.array([v is not None for v in y])
    Xraw = np.asarray(train_embeddings)[keep]
    X = l2_normalize(Xraw) if normalize else Xraw.astype(np.float32)
    y = y[keep].astype(str)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{taxonomy.name}: the training split has fewer than two classes of "
                         f"{taxonomy.target!r}; cannot fit a probe")
    n_hold = min(len(y) - 1, max(1, int(round(holdout * len(y)))))
    hold, tr, stratified = _split(y, n_hold, seed)
    if sweep_max_train is not None and len(tr) > sweep_max_train:
        sub, _, _ = _split(y[tr], int(sweep_max_train), seed)
        tr = tr[sub]
    sweep = LogisticRegression(max_iter=max_iter, tol=1e-4, warm_start=True)
    solutions: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    not_converged: list[float] = []

    def score(C: float) -> float:
        if solutions:  # warm start from the nearest C already fitted
            near = min(solutions, key=lambda c: abs(math.log10(c) - math.log10(C)))
            sweep.coef_, sweep.intercept_ = (a.copy() for a in solutions[near])
        _, ok = _fit(sweep.set_params(C=C), X[tr], y[tr])
        if not ok:
            not_converged.append(C)
        solutions[C] = (sweep.coef_.copy(), sweep.intercept_.copy())
        return float((sweep.predict(X[hold]) == y[hold]).mean())

    best, scores = refine_search(score, Cs, refine_steps_per_decade)
    C_final = best * len(tr) / len(y)  # the same regularisation per row on all of train
    final, converged = _fit(LogisticRegression(C=C_final, max_iter=max_iter, tol=1e-4), X, y)
    secs = time.perf_counter() - t0
    n_iter = int(np.max(final.n_iter_))
    if not converged or not_converged:
        what = [] if converged else [f"the final fit (C={C_final:.3g}, {n_iter} iterations)"]
        if not_converged:
            what.append(f"{len(not_converged)} of {len(scores)} sweep fits")
        warnings.warn(f"linear probe {taxonomy.name}: the solver did not converge for {' and '.join(what)} "
                      f"within max_iter={max_iter}; raise probe.max_iter (recorded in run.json)",
                      ConvergenceWarning, stacklevel=2)
    log.info("linear probe %s (%s features): C=%g on %d sweep rows -> %g on %d rows (held-out accuracy %.3f), "
             "%.1fs", taxonomy.name, features, best, len(tr), C_final, len(y), scores[best], secs)
    return ProbeFit(taxonomy, C_final, scores, final, int(len(y)), secs,
                    {"features": features, "normalized": bool(normalize), "C_sweep": best,
                     "holdout": holdout, "stratified": stratified, "seed": seed,
                     "Cs": sorted(float(c) for c in Cs), "refine_steps_per_decade": int(refine_steps_per_decade),
                     "n_candidates": len(scores), "sweep_rows": int(len(tr)), "holdout_rows": int(len(hold)),
                     "n_iter": n_iter, "max_iter": int(max_iter), "converged": bool(converged),
                     "sweep_not_converged": sorted(not_converged)},
                    normalize=normalize)


def probe_predictions(fit: ProbeFit, table: pd.DataFrame, embeddings: np.ndarray,
                      attributes: Sequence[str]) -> pd.DataFrame:
    return predictions_frame(table, fit.taxonomy, fit.predict_proba(embeddings), "linear_probe", attributes)
