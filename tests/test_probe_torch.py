"""The torch solver against scikit-learn's LogisticRegression: the same objective, the same
chosen C and the same predictions (issue 22's equivalence tests)."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression

from clipfair.methods import linear_probe
from clipfair.methods.linear_probe import fit_probe
from clipfair.data.taxonomy import load_taxonomy


def planted(n, labels, rng, dim=24, signal=0.35):
    """Class means plus noise: accuracy well above chance and below 100%."""
    means = {lab: rng.normal(size=dim) * signal for lab in labels}
    y = np.array(labels, dtype=object)[rng.integers(0, len(labels), n)]
    X = np.stack([means[v] for v in y]) + rng.normal(size=(n, dim))
    return (X * 3 + 1).astype(np.float32), y  # unstandardised, off-centre (pre-projection-like)


def correlated(n, dim, labels, rng, signal, structure=None):
    """scripts/bench_probe.py's generator, small: class means under anisotropic noise (scales
    over a factor of 15) and shared high-variance nuisance factors, so the features are strongly
    correlated, unstandardised and off-centre like CLIP's pre-projection features. Pass
    ``structure`` back to draw evaluation rows of the same classes."""
    if structure is None:
        structure = {"scale": np.exp(rng.uniform(np.log(0.2), np.log(3.0), dim)),
                     "factors": rng.standard_normal((4, dim)) * 1.5, "offset": rng.standard_normal(dim),
                     "means": rng.standard_normal((len(labels), dim)) * signal}
    codes = rng.integers(0, len(labels), n)
    X = rng.standard_normal((n, dim)) * structure["scale"] + rng.standard_normal((n, 4)) @ structure["factors"]
    X += structure["offset"] + structure["means"][codes]
    return X.astype(np.float32), np.array(labels, dtype=object)[codes], structure


def objective(clf, X, y, C):
    """scikit-learn's objective written out: C * summed log-loss + 0.5 * ||W||^2 (intercept free)."""
    X = np.asarray(X, dtype=np.float64)
    codes = np.searchsorted(clf.classes_, np.asarray(y, dtype=str))
    if len(clf.classes_) == 2:  # one weight vector, as scikit-learn fits binary targets
        z = X @ clf.coef_[0] + clf.intercept_[0]
        ll = np.logaddexp(0.0, -z * (2 * codes - 1)).sum()
    else:
        Z = X @ clf.coef_.T + clf.intercept_
        ll = (logsumexp(Z, axis=1) - Z[np.arange(len(codes)), codes]).sum()
    return C * ll + 0.5 * float((clf.coef_ ** 2).sum())


@pytest.mark.parametrize("name", ["fairface_gender", "fairface_race", "fairface_age"])
def test_torch_matches_sklearn_on_the_refined_path(name):
    tax = load_taxonomy(name)
    rng = np.random.default_rng(len(tax.labels))
    X, y = planted(1500, tax.labels, rng)
    Xe, ye = planted(600, tax.labels, np.random.default_rng(len(tax.labels)))  # same means, new noise
    Xe, ye = Xe[:600], ye[:600]
    opts = dict(Cs=(1e-4, 1e-2, 1.0, 100.0), refine_steps_per_decade=8, holdout=0.2, seed=1,
                sweep_max_train=800, normalize=False, features="pre_projection")
    ft = fit_probe(tax, X, y, solver="torch", **opts)
    fs = fit_probe(tax, X, y, solver="sklearn", **opts)
    assert ft.info["solver"] == "torch" and fs.info["solver"] == "sklearn"
    assert ft.info["converged"] and fs.info["converged"]
    acc_t, acc_s = ft.holdout_accuracy[ft.info["C_sweep"]], fs.holdout_accuracy[fs.info["C_sweep"]]
    assert 1.0 / len(tax.labels) + 0.05 < acc_s < 0.99  # neither chance nor perfect
    # the same chosen C, or an equal held-out accuracy within 0.1 points
    assert ft.info["C_sweep"] == fs.info["C_sweep"] or abs(acc_t - acc_s) <= 0.001
    # the held-out curve itself: equal at every C both fitted, to one image in the held-out part
    common = set(ft.holdout_accuracy) & set(fs.holdout_accuracy)
    assert len(common) >= 4
    one = 1.0 / ft.info["holdout_rows"]
    for C in common:
        assert abs(ft.holdout_accuracy[C] - fs.holdout_accuracy[C]) <= one + 1e-12, C
    # predictions on the evaluation images agree on >= 99.5% (same C when the searches agree)
    agree = (ft.classifier.predict(Xe) == fs.classifier.predict(Xe)).mean()
    assert agree >= 0.995
    # the objective at the solution: as low as scikit-learn's, to a relative 1e-5
    if ft.C == fs.C:
        ot, os_ = objective(ft.classifier, X, y, ft.C), objective(fs.classifier, X, y, fs.C)
        exact = LogisticRegression(C=fs.C, tol=1e-10, max_iter=20000).fit(X.astype(np.float64), y)
        oe = objective(exact, X, y, fs.C)
        assert ot == pytest.approx(os_, rel=1e-5)
        assert oe <= min(ot, os_) + 1e-9 and ot - oe <= 1e-5 * abs(oe)
        assert (ft.classifier.predict(Xe) == exact.predict(Xe)).mean() >= 0.995


@pytest.mark.parametrize("labels", [["Male", "Female"], ["White", "Black", "East Asian"]])
def test_same_objective_at_a_fixed_C_binary_and_multiclass(labels):
    """One C, all rows: the torch fit minimises scikit-learn's objective (binary: one weight
    vector, not a two-class softmax, which would halve the penalty)."""
    name = "fairface_gender" if len(labels) == 2 else "fairface_race"
    rng = np.random.default_rng(5)
    X, y = planted(900, labels, rng, dim=12)
    for C in (1e-3, 0.1, 10.0):
        ft = fit_probe(load_taxonomy(name), X, y, Cs=(C,), refine_steps_per_decade=0, sweep_max_train=None,
                       normalize=False, features="pre_projection", solver="torch")
        exact = LogisticRegression(C=ft.C, tol=1e-10, max_iter=20000).fit(X.astype(np.float64), y)
        assert ft.classifier.coef_.shape == exact.coef_.shape
        oe = objective(exact, X, y, ft.C)
        assert objective(ft.classifier, X, y, ft.C) == pytest.approx(oe, rel=1e-5)
        np.testing.assert_allclose(ft.classifier.predict_proba(X), exact.predict_proba(X), atol=2e-3)


def test_device_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert linear_probe.probe_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert linear_probe.probe_device() == "cpu"
    assert linear_probe.probe_device("cuda:1") == "cuda:1"


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match="probe.solver must be one of torch, sklearn"):
        fit_probe(load_taxonomy("fairface_gender"), np.ones((4, 2)), ["Male", "Female"] * 2, solver="liblinear")


def _exact(X, y, C):
    """scikit-learn run to a tight tolerance in float64: the objective's true optimum."""
    return LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(X.astype(np.float64), y)


@pytest.mark.parametrize("labels", [["Male", "Female"], ["White", "Black", "East Asian", "Indian"]])
def test_correlated_features_few_iterations_and_the_true_optimum(labels):
    """Correlated features: the torch fit (covariance eigenbasis, rescaled per C) reaches the
    optimum in a few dozen L-BFGS iterations where plain L-BFGS on standardised weights needed
    hundreds; its objective is no higher than scikit-learn's, and scikit-learn's own default
    ``tol`` stops short of the optimum (the cause of its few disagreeing predictions)."""
    name = "fairface_gender" if len(labels) == 2 else "fairface_race"
    rng = np.random.default_rng(7)
    X, y, st = correlated(1600, 40, labels, rng, 0.08)
    Xe, _, _ = correlated(2000, 40, labels, rng, 0.08, st)
    C = 0.05
    ft = fit_probe(load_taxonomy(name), X, y, Cs=(C,), refine_steps_per_decade=0, sweep_max_train=None,
                   normalize=False, features="pre_projection", solver="torch")
    assert ft.info["converged"] and ft.info["sweep_n_iter"] <= 40, ft.info["sweep_n_iter"]
    assert ft.info["n_iter"] <= 40, ft.info["n_iter"]  # the final fit, warm-started
    sk = LogisticRegression(C=ft.C, max_iter=1000).fit(X, y)  # scikit-learn's defaults (tol=1e-4)
    ex = _exact(X, y, ft.C)
    ot, os_, oe = (objective(m, X, y, ft.C) for m in (ft.classifier, sk, ex))
    assert ot - oe <= 1e-7 * abs(oe)  # torch: at the optimum (float32 features)
    assert ot <= os_ + 1e-9 * abs(oe)  # never worse than scikit-learn's stopping point
    assert (ft.classifier.predict(Xe) == ex.predict(Xe)).mean() >= 0.999
    assert (sk.predict(Xe) == ex.predict(Xe)).mean() >= 0.99  # the reference is close, not exact


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fairface_gender", "fairface_race"])
def test_equivalence_on_correlated_features(name):
    """Issue 22's equivalence on pre-projection-like (correlated) features, binary and
    multiclass: the same chosen C or an equal held-out accuracy within 0.1 points, and
    predictions agreeing on >= 99.5% of evaluation images with scikit-learn at the same C.

    On a flat held-out curve the two searches may pick different Cs of equal accuracy: in the
    race case here scikit-learn's warm-started fit at C=1 stops (tol 1e-4) one held-out image
    short of the optimum's accuracy, so its search settles at C=1.78 instead of 1 (a fit at
    C=1 run to the optimum, by either solver, has torch's accuracy). Final fits 0.25 decades
    apart then differ on ~0.6% of images; at the same C they agree on >= 99.5%."""
    tax = load_taxonomy(name)
    rng = np.random.default_rng(11)
    signal = 0.08 if len(tax.labels) == 2 else 0.12
    X, y, st = correlated(2000, 40, list(tax.labels), rng, signal)
    Xe, _, _ = correlated(2000, 40, list(tax.labels), rng, signal, st)
    opts = dict(Cs=(1e-4, 1e-2, 1.0, 100.0), refine_steps_per_decade=4, holdout=0.25, seed=2,
                sweep_max_train=None, normalize=False, features="pre_projection")
    ft = fit_probe(tax, X, y, solver="torch", **opts)
    fs = fit_probe(tax, X, y, solver="sklearn", **opts)
    acc_t, acc_s = ft.holdout_accuracy[ft.info["C_sweep"]], fs.holdout_accuracy[fs.info["C_sweep"]]
    assert 1.0 / len(tax.labels) + 0.05 < acc_s < 0.99
    assert ft.info["C_sweep"] == fs.info["C_sweep"] or abs(acc_t - acc_s) <= 0.001
    same_C = fs.classifier if ft.C == fs.C else LogisticRegression(C=ft.C, max_iter=1000).fit(X, y)
    assert (ft.classifier.predict(Xe) == same_C.predict(Xe)).mean() >= 0.995
    if ft.C == fs.C:
        assert (ft.classifier.predict(Xe) == fs.classifier.predict(Xe)).mean() >= 0.995
    # the torch path needs a fraction of scikit-learn's iterations
    assert ft.info["sweep_n_iter"] + ft.info["n_iter"] <= 0.3 * (fs.info["sweep_n_iter"] + fs.info["n_iter"])


def test_fit_leaves_the_callers_features_alone():
    rng = np.random.default_rng(0)
    X, y = planted(200, ["Male", "Female"], rng, dim=6)
    before = X.copy()
    fit_probe(load_taxonomy("fairface_gender"), X, y, Cs=(1.0,), refine_steps_per_decade=0, normalize=False,
              features="pre_projection", solver="torch")
    np.testing.assert_array_equal(X, before)
