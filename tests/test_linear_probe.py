"""Linear probe against a direct scikit-learn computation."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from clipfair.methods.linear_probe import fit_probe, probe_labels, probe_predictions, refine_search
from clipfair.data.taxonomy import load_taxonomy


def clusters(n, rng, labels, dim=16, spread=1.2):
    centers = {lab: rng.normal(size=dim) * 2 for lab in labels}
    y = rng.choice(labels, size=n)
    X = np.stack([centers[v] for v in y]) + rng.normal(size=(n, dim)) * spread
    return X.astype(np.float32), y


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_probe_matches_direct_sklearn(solver):
    rng = np.random.default_rng(0)
    tax = load_taxonomy("fairface_gender")
    X, y = clusters(600, rng, ["Male", "Female"])
    Xe, ye = X[:200] + rng.normal(size=(200, 16)).astype(np.float32) * 0.5, y[:200]
    Cs = (0.01, 1.0, 100.0)
    fit = fit_probe(tax, X, y, Cs=Cs, refine_steps_per_decade=0, holdout=0.25, seed=3, sweep_max_train=None,
                    solver=solver)
    # the same protocol written out directly: stratified 25% held out, C swept on the rest
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    hold, tr = train_test_split(np.arange(600), train_size=150, stratify=y, random_state=3)
    direct = {C: LogisticRegression(C=C, max_iter=1000).fit(Xn[tr], y[tr]).score(Xn[hold], y[hold]) for C in Cs}
    for C in Cs:
        assert fit.holdout_accuracy[C] == pytest.approx(direct[C], abs=0.01)
    best = max(direct, key=lambda c: (direct[c], -abs(np.log10(c))))
    assert fit.info["C_sweep"] == best
    # the same regularisation on all 600 rows: C scales the summed loss
    assert fit.C == pytest.approx(best * 450 / 600)
    assert fit.info["stratified"] and fit.info["sweep_rows"] == 450 and fit.info["converged"]
    final = LogisticRegression(C=best * 450 / 600, max_iter=1000).fit(Xn, y)
    table = pd.DataFrame({"image_id": [str(i) for i in range(200)], "gender": ye})
    pred = probe_predictions(fit, table, Xe, ["gender"])
    Xen = Xe / np.linalg.norm(Xe, axis=1, keepdims=True)
    agree = (pred["predicted_label"].to_numpy() == final.predict(Xen)).mean()
    assert agree == 1.0 if solver == "sklearn" else agree >= 0.995
    assert (pred["method"] == "linear_probe").all()
    assert pred["correct"].mean() == pytest.approx((final.predict(Xen) == ye).mean(), abs=1 - agree + 1e-12)
    # the same objective to scikit-learn's tolerance: probabilities agree closely either way
    np.testing.assert_allclose(pred["score"], final.predict_proba(Xen).max(axis=1),
                               **({"rtol": 1e-5} if solver == "sklearn" else {"atol": 5e-3}))
    assert fit.info["solver"] == solver


def test_holdout_and_sweep_subsample_are_stratified_and_C_rescaled():
    rng = np.random.default_rng(1)
    tax = load_taxonomy("fairface_gender")
    X, _ = clusters(1000, rng, ["Male", "Female"])
    y = np.array(["Male"] * 900 + ["Female"] * 100)  # 10% minority
    fit = fit_probe(tax, X, y, Cs=(1.0,), refine_steps_per_decade=0, holdout=0.2, seed=0, sweep_max_train=200)
    assert fit.info["holdout_rows"] == 200 and fit.info["sweep_rows"] == 200 and fit.info["stratified"]
    assert fit.C == pytest.approx(1.0 * 200 / 1000)


def test_refined_search_reaches_eighth_decade_steps():
    peak = 10 ** 0.37
    calls = []

    def score(C):
        calls.append(C)
        return -abs(np.log10(C) - np.log10(peak))

    coarse = [10.0 ** k for k in range(-6, 7, 2)]
    best, scores = refine_search(score, coarse, 8)
    assert abs(np.log10(best) - 0.37) <= 1 / 16 + 1e-9  # within half of the final 1/8-decade step
    assert len(calls) == len(set(calls)) <= len(coarse) + 8
    assert refine_search(score, coarse, 0)[0] == 1.0  # the grid only


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_nonconvergence_is_flagged_and_warned_not_silenced(solver):
    rng = np.random.default_rng(0)
    X, y = clusters(300, rng, ["Male", "Female"], spread=3.0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        fit = fit_probe(load_taxonomy("fairface_gender"), X * 50, y, Cs=(1e4,), refine_steps_per_decade=0,
                        max_iter=1, normalize=False, features="pre_projection", solver=solver)
    assert fit.info["converged"] is False and fit.info["sweep_not_converged"] == [1e4]


def test_feature_option_changes_features_as_stated(tmp_path, tiny_model_dir, fairface_root):
    from clipfair.data import load_dataset
    from clipfair.models import load_model
    from clipfair.run.pipeline import evaluate

    model = load_model("hf", name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=40)
    pv = model.preprocess([ds.load_image(i) for i in range(4)])
    pre = model.encode_pixels_pre_projection(pv)
    proj = model.encode_pixels(pv)
    # pre-projection features: the vision tower's pooled output; projecting them gives the embedding
    assert pre.shape[1] == model.model.config.vision_config.hidden_size != proj.shape[1]
    with torch.no_grad():
        again = model.model.visual_projection(torch.from_numpy(pre)).numpy()
    np.testing.assert_allclose(again, proj, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(pre, axis=1), 1.0)
    tax = load_taxonomy("fairface_gender")
    runs = {}
    for features in ("pre_projection", "projected"):
        ev = evaluate(ds, model, [tax], cache_dir=tmp_path / "cache", progress=False, probe_train=ds,
                      probe_options={"features": features, "Cs": [1.0], "refine_steps_per_decade": 0})
        info = ev.info["linear_probe"]
        assert info["features"] == features and info[tax.name]["normalized"] == (features == "projected")
        runs[features] = ev.predictions.query("method == 'linear_probe'")
    # the probe on pre-projection features equals a direct fit on the unnormalised pooled output
    allpv = model.preprocess([ds.load_image(i) for i in range(len(ds))])
    feats = model.encode_pixels_pre_projection(allpv)
    truth = ds.table["gender"].to_numpy()
    hold, tr = train_test_split(np.arange(len(ds)), train_size=8, stratify=truth, random_state=0)
    fit = LogisticRegression(C=1.0 * len(tr) / len(ds), max_iter=1000).fit(feats, truth)
    assert runs["pre_projection"]["predicted_label"].tolist() == fit.predict(feats).tolist()


def test_pre_projection_needs_a_backend_that_exposes_it(tmp_path):
    from clipfair.models import ModelError
    from clipfair.run.pipeline import evaluate

    from handmodel import hand_clip
    from test_zeroshot import colour_dataset

    specs = [((200, 10, 10), "White", g) for g in ["Male", "Female"] * 4]
    ds = colour_dataset(tmp_path, specs)
    with pytest.raises(ModelError, match="probe.features=projected"):
        evaluate(ds, hand_clip(), [load_taxonomy("fairface_gender")], cache_dir=None, progress=False,
                 probe_train=ds, probe_options={"features": "pre_projection", "Cs": [1.0]})


def test_probe_labels_follow_matches_and_need_a_target():
    race4 = load_taxonomy("fairface_race4")
    assert probe_labels(race4, ["East Asian", "Latino_Hispanic", "White"]).tolist() == ["Asian", None, "White"]
    with pytest.raises(ValueError, match="has no target"):
        fit_probe(load_taxonomy("clip_denigration"), np.zeros((4, 2)), ["a"] * 4)
    with pytest.raises(ValueError, match="fewer than two classes"):
        fit_probe(load_taxonomy("fairface_gender"), np.ones((4, 2)), ["Male"] * 4)


def test_probe_for_a_target_the_dataset_lacks_is_skipped_not_a_crash(tmp_path):
    from clipfair.run.pipeline import evaluate

    from handmodel import hand_clip
    from test_zeroshot import colour_dataset

    rng = np.random.default_rng(0)
    specs = [(tuple(int(v) for v in rng.integers(0, 255, 3)), "White", g) for g in ["Male", "Female"] * 10]
    ds = colour_dataset(tmp_path, specs)  # has race and gender, no age column
    ev = evaluate(ds, hand_clip(), [load_taxonomy("fairface_gender"), load_taxonomy("fairface_age")],
                  cache_dir=None, progress=False, probe_train=ds, probe_options={"Cs": [1.0]})
    assert set(ev.predictions.query("method == 'linear_probe'")["taxonomy"]) == {"fairface_gender"}
    assert ev.info["linear_probe"]["fairface_age"] == {"skipped": "the dataset has no 'age' column"}
