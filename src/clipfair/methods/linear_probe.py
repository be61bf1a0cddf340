"""Linear probes: logistic regression on image features (the CLIP paper's 'LR CLIP').

Layer: methods.

For a target taxonomy (race, gender, age, ...), fit multinomial logistic regression (L2,
scikit-learn's objective) on the train split's image features and predict the evaluation split.
``probe.solver``: ``torch`` (default) minimises it by full-batch L-BFGS in torch on the run's
device (CUDA when present, else CPU threads): float32 features centred and rotated once into
their covariance's eigenbasis, the weights rescaled per C so the problem is well conditioned
(the same objective, a change of variables: ~10 iterations a fit where correlated features
needed hundreds), warm starts along the C path; ``sklearn`` is scikit-learn's
LogisticRegression itself, the reference the torch solver is tested against
(tests/test_probe_torch.py). The held-out accuracy of every C fitted is kept: the refinement
fits only Cs not already on the curve.
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

from ..data.taxonomy import Taxonomy
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


SOLVERS = ("torch", "sklearn")


def probe_device(device: str | None = None) -> str:
    """The torch solver's device: ``device`` if given, else CUDA when present, else the CPU
    (torch's threads)."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _TorchLogistic:
    """scikit-learn's L2 logistic regression, fitted by full-batch L-BFGS in torch.

    The objective is exactly scikit-learn's (``lbfgs``, multinomial for 3+ classes, one
    weight vector for 2): ``C * sum(log-loss) + 0.5 * ||W||^2``, intercept unpenalised, here
    divided by ``C * n`` as scikit-learn does before handing it to L-BFGS.

    Conditioning. Pre-projection features are strongly correlated, so plain L-BFGS on the raw
    (or per-feature standardised) weights needs hundreds of iterations. The features are
    centred and rotated once into the eigenbasis of their covariance (float32 features,
    eigendecomposition in float64, on ``device``): ``U = (X - mu) V``. An orthogonal rotation
    keeps the penalty as it is (``||W||^2 = ||V^T W||^2``), so in that basis the objective is
    still exactly scikit-learn's. Each fit then rescales the rotated weights by
    ``s_i = 1 / sqrt(c * lambda_i + 1/(C n))`` (``lambda_i`` the covariance's eigenvalues with a
    floor, ``c`` the log-loss curvature at uniform probabilities): the optimiser's variable is
    ``theta = (V^T W) / s``, whose Hessian is close to the identity at every C. This is a
    change of variables (a preconditioner), not a change of objective: the penalty is
    ``0.5 * ||s * theta||^2`` and the optimum maps back to the same raw-feature weights.

    Stopping. A fit has converged when the largest entry of the gradient with respect to
    ``theta`` (and the scaled intercept) is at most ``tol * grad_scale`` or the float32 loss
    stops changing, before ``max_iter`` iterations. In this well-conditioned basis the
    gradient measures the distance to the optimum (objective gap ~ ``0.5 * ||g||^2``), so the
    rule is at least as strict as scikit-learn's ``tol`` on the raw gradient, which stops
    early on correlated features (its objective gap is larger; see tests/test_probe_torch.py).
    Warm starts along the C path carry the rotated weights ``V^T W`` (independent of C)."""

    #: the preconditioned gradient tolerance as a multiple of ``tol``
    grad_scale = 0.1

    def __init__(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray, device: str,
                 tol: float, max_iter: int) -> None:
        import torch

        self.torch, self.device, self.tol, self.max_iter = torch, device, float(tol), int(max_iter)
        Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=device)
        self.mu = Xt.mean(0)
        Xt = Xt - self.mu  # centred (a copy: never the caller's array)
        cov = (Xt.T @ Xt).double() / Xt.shape[0]
        evals, V = torch.linalg.eigh(cov)
        self.evals = evals.clamp_min(float(evals.max()) * 1e-10 + 1e-30)
        self.V = V  # float64: raw weights W = V @ Wrot
        self.U = Xt @ V.to(Xt.dtype)  # centred features in the eigenbasis, float32
        del Xt
        self.classes = classes
        self.binary = len(classes) == 2
        codes = np.searchsorted(classes, y)
        self.y = torch.as_tensor(codes, device=device)
        self.k = 1 if self.binary else len(classes)
        kk = len(classes)
        self.curv = 0.25 if self.binary else (1.0 / kk) * (1.0 - 1.0 / kk)

    def rows(self, idx: np.ndarray) -> tuple[Any, Any]:
        t = self.torch.as_tensor(idx, device=self.device)
        return self.U.index_select(0, t), self.y.index_select(0, t)

    def fit(self, U: Any, y: Any, C: float, init: tuple[Any, Any] | None = None) -> tuple[tuple[Any, Any], int, bool]:
        """Fit on rows ``U`` (rotated, centred features) at ``C``; ``init``: rotated weights and
        intercept to start from. Returns ((rotated weights, intercept), iterations, converged)."""
        torch = self.torch
        F = torch.nn.functional
        n, d = U.shape
        lam = 1.0 / (float(C) * n)
        s = (1.0 / torch.sqrt(self.curv * self.evals + lam)).to(U.dtype)[:, None]
        sb = 1.0 / math.sqrt(self.curv)
        if init is None:
            theta = torch.zeros(d, self.k, device=self.device, dtype=U.dtype)
            beta = torch.zeros(self.k, device=self.device, dtype=U.dtype)
        else:
            theta, beta = (init[0] / s).to(U.dtype), (init[1] / sb).to(U.dtype)
        theta.requires_grad_(True)
        beta.requires_grad_(True)
        target = y.to(U.dtype) if self.binary else y
        max_eval = self.max_iter * 5 // 4 + 1
        opt = torch.optim.LBFGS([theta, beta], lr=1.0, max_iter=self.max_iter, max_eval=max_eval,
                                tolerance_grad=self.tol * self.grad_scale, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Any:
            opt.zero_grad()
            W = s * theta
            logits = torch.addmm(beta * sb, U, W)
            if self.binary:
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], target)
            else:
                loss = F.cross_entropy(logits, target)
            loss = loss + 0.5 * lam * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        state = opt.state[opt._params[0]]
        n_iter = int(state.get("n_iter", 0))
        evals = int(state.get("func_evals", 0))
        converged = n_iter < self.max_iter and evals < max_eval
        with torch.no_grad():
            return (s * theta, beta * sb), n_iter, bool(converged)

    def predict_codes(self, params: tuple[Any, Any], U: Any) -> Any:
        with self.torch.no_grad():
            logits = self.torch.addmm(params[1], U, params[0])
            return (logits[:, 0] > 0).long() if self.binary else logits.argmax(1)

    def accuracy(self, params: tuple[Any, Any], U: Any, y: Any) -> float:
        return float((self.predict_codes(params, U) == y).double().mean().item())

    def to_sklearn(self, params: tuple[Any, Any], C: float, n_iter: int) -> LogisticRegression:
        """The fit as a fitted scikit-learn estimator on the raw features (float64)."""
        Wrot, b = (p.double() for p in params)
        coef = self.V @ Wrot  # raw-feature weights
        intercept = b - self.mu.double() @ coef
        clf = LogisticRegression(C=C, max_iter=self.max_iter, tol=self.tol)
        clf.classes_ = self.classes
        clf.coef_ = coef.T.cpu().numpy()
        clf.intercept_ = intercept.cpu().numpy()
        clf.n_features_in_ = int(coef.shape[0])
        clf.n_iter_ = np.array([n_iter], dtype=np.int32)
        return clf


def fit_probe(taxonomy: Taxonomy, train_embeddings: np.ndarray, train_truth: Sequence[Any], *,
              Cs: Sequence[float] = DEFAULT_CS, refine_steps_per_decade: int = DEFAULT_STEPS_PER_DECADE,
              holdout: float = 0.2, seed: int = 0, max_iter: int = 1000,
              sweep_max_train: int | None = 20000, normalize: bool = True,
              features: str = "projected", solver: str = "torch", device: str | None = None,
              tol: float = 1e-4) -> ProbeFit:
    """Fit a probe for ``taxonomy.target``; C chosen on a seeded, stratified held-out part of
    train (see the module docstring). ``sweep_max_train`` caps the rows each candidate C is
    fitted on (stratified); the final fit uses all of train with C rescaled to its size.
    ``normalize``: L2-normalise features (the projected embeddings); ``features`` is recorded.
    ``solver``: ``torch`` (full-batch L-BFGS on ``device``, default CUDA when present, else
    the CPU; see :class:`_TorchLogistic`) or ``sklearn`` (scikit-learn's LogisticRegression,
    the reference). Both minimise the same objective and warm-start along the C path."""
    if taxonomy.target is None:
        raise ValueError(f"taxonomy {taxonomy.name!r} has no target; a linear probe needs one")
    if features not in FEATURES:
        raise ValueError(f"probe.features must be one of {', '.join(FEATURES)}, got {features!r}")
    if solver not in SOLVERS:
        raise ValueError(f"probe.solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
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
    not_converged: list[float] = []
    solutions: dict[float, Any] = {}
    sweep_iters: list[int] = []  # L-BFGS iterations of each sweep fit, in fitting order

    def nearest(C: float) -> float | None:
        if not solutions:
            return None
        return min(solutions, key=lambda c: abs(math.log10(c) - math.log10(C)))

    dev = None
    if solver == "torch":
        dev = probe_device(device)
        lr = _TorchLogistic(X, y, np.unique(y), dev, tol, max_iter)
        Ztr, ytr = lr.rows(tr)
        Zho, yho = lr.rows(hold)

        def score(C: float) -> float:
            near = nearest(C)  # warm start from the nearest C already fitted
            params, it, ok = lr.fit(Ztr, ytr, C, None if near is None else solutions[near])
            sweep_iters.append(it)
            if not ok:
                not_converged.append(C)
            solutions[C] = params
            return lr.accuracy(params, Zho, yho)
    else:
        sweep = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)

        def score(C: float) -> float:
            near = nearest(C)
            if near is not None:  # warm start from the nearest C already fitted
                sweep.coef_, sweep.intercept_ = (a.copy() for a in solutions[near])
            _, ok = _fit(sweep.set_params(C=C), X[tr], y[tr])
            sweep_iters.append(int(np.max(sweep.n_iter_)))
            if not ok:
                not_converged.append(C)
            solutions[C] = (sweep.coef_.copy(), sweep.intercept_.copy())
            return float((sweep.predict(X[hold]) == y[hold]).mean())

    t_sweep = time.perf_counter()
    best, scores = refine_search(score, Cs, refine_steps_per_decade)
    sweep_secs = time.perf_counter() - t_sweep
    C_final = best * len(tr) / len(y)  # the same regularisation per row on all of train
    t_final = time.perf_counter()
    if solver == "torch":
        # the same per-row regularisation: the sweep's solution at the chosen C is a warm start
        params, n_iter, converged = lr.fit(lr.U, lr.y, C_final, solutions[best])
        final = lr.to_sklearn(params, C_final, n_iter)
        del lr, Ztr, Zho
    else:
        final, converged = _fit(LogisticRegression(C=C_final, max_iter=max_iter, tol=tol), X, y)
        n_iter = int(np.max(final.n_iter_))
    final_secs = time.perf_counter() - t_final
    secs = time.perf_counter() - t0
    if not converged or not_converged:
        what = [] if converged else [f"the final fit (C={C_final:.3g}, {n_iter} iterations)"]
        if not_converged:
            what.append(f"{len(not_converged)} of {len(scores)} sweep fits")
        warnings.warn(f"linear probe {taxonomy.name}: the solver did not converge for {' and '.join(what)} "
                      f"within max_iter={max_iter}; raise probe.max_iter (recorded in run.json)",
                      ConvergenceWarning, stacklevel=2)
    log.info("linear probe %s (%s features, %s solver): C=%g on %d sweep rows -> %g on %d rows "
             "(held-out accuracy %.3f), %.1fs", taxonomy.name, features, solver, best, len(tr), C_final,
             len(y), scores[best], secs)
    return ProbeFit(taxonomy, C_final, scores, final, int(len(y)), secs,
                    {"features": features, "normalized": bool(normalize), "C_sweep": best,
                     "holdout": holdout, "stratified": stratified, "seed": seed,
                     "Cs": sorted(float(c) for c in Cs), "refine_steps_per_decade": int(refine_steps_per_decade),
                     "n_candidates": len(scores), "sweep_rows": int(len(tr)), "holdout_rows": int(len(hold)),
                     "n_iter": n_iter, "sweep_n_iter": int(sum(sweep_iters)), "max_iter": int(max_iter), "converged": bool(converged),
                     "sweep_not_converged": sorted(not_converged), "solver": solver,
                     **({"device": dev} if dev else {}), "tol": float(tol),
                     "sweep_seconds": round(sweep_secs, 3), "final_seconds": round(final_secs, 3)},
                    normalize=normalize)


def probe_predictions(fit: ProbeFit, table: pd.DataFrame, embeddings: np.ndarray,
                      attributes: Sequence[str]) -> pd.DataFrame:
    return predictions_frame(table, fit.taxonomy, fit.predict_proba(embeddings), "linear_probe", attributes)
