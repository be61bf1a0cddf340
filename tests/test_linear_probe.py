"""Linear probe against a direct scikit-learn computation."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from clipfair.linear_probe import fit_probe, probe_labels, probe_predictions
from clipfair.taxonomy import load_taxonomy


def clusters(n, rng, labels, dim=16, spread=1.2):
    centers = {lab: rng.normal(size=dim) * 2 for lab in labels}
    y = rng.choice(labels, size=n)
    X = np.stack([centers[v] for v in y]) + rng.normal(size=(n, dim)) * spread
    return X.astype(np.float32), y


def test_probe_matches_direct_sklearn():
    rng = np.random.default_rng(0)
    tax = load_taxonomy("fairface_gender")
    X, y = clusters(600, rng, ["Male", "Female"])
    Xe, ye = X[:200] + rng.normal(size=(200, 16)).astype(np.float32) * 0.5, y[:200]
    Cs = (0.01, 1.0, 100.0)
    fit = fit_probe(tax, X, y, Cs=Cs, holdout=0.25, seed=3, sweep_max_train=None)
    # the same protocol written out directly
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    perm = np.random.default_rng(3).permutation(600)
    hold, tr = perm[:150], perm[150:]
    direct = {C: LogisticRegression(C=C, max_iter=1000).fit(Xn[tr], y[tr]).score(Xn[hold], y[hold]) for C in Cs}
    for C in Cs:
        assert fit.holdout_accuracy[C] == pytest.approx(direct[C], abs=0.01)
    assert fit.C == max(direct, key=lambda c: (direct[c], -abs(np.log10(c))))
    final = LogisticRegression(C=fit.C, max_iter=1000).fit(Xn, y)
    table = pd.DataFrame({"image_id": [str(i) for i in range(200)], "gender": ye})
    pred = probe_predictions(fit, table, Xe, ["gender"])
    Xen = Xe / np.linalg.norm(Xe, axis=1, keepdims=True)
    assert pred["predicted_label"].tolist() == final.predict(Xen).tolist()
    assert (pred["method"] == "linear_probe").all()
    assert pred["correct"].mean() == pytest.approx((final.predict(Xen) == ye).mean())
    np.testing.assert_allclose(pred["score"], final.predict_proba(Xen).max(axis=1), rtol=1e-6)


def test_probe_labels_follow_matches_and_need_a_target():
    race4 = load_taxonomy("fairface_race4")
    assert probe_labels(race4, ["East Asian", "Latino_Hispanic", "White"]).tolist() == ["Asian", None, "White"]
    with pytest.raises(ValueError, match="has no target"):
        fit_probe(load_taxonomy("clip_denigration"), np.zeros((4, 2)), ["a"] * 4)
    with pytest.raises(ValueError, match="fewer than two classes"):
        fit_probe(load_taxonomy("fairface_gender"), np.ones((4, 2)), ["Male"] * 4)


def test_probe_for_a_target_the_dataset_lacks_is_skipped_not_a_crash(tmp_path):
    from clipfair.pipeline import evaluate

    from handmodel import hand_clip
    from test_zeroshot import colour_dataset

    rng = np.random.default_rng(0)
    specs = [(tuple(int(v) for v in rng.integers(0, 255, 3)), "White", g) for g in ["Male", "Female"] * 10]
    ds = colour_dataset(tmp_path, specs)  # has race and gender, no age column
    ev = evaluate(ds, hand_clip(), [load_taxonomy("fairface_gender"), load_taxonomy("fairface_age")],
                  cache_dir=None, progress=False, probe_train=ds, probe_options={"Cs": [1.0]})
    assert set(ev.predictions.query("method == 'linear_probe'")["taxonomy"]) == {"fairface_gender"}
    assert ev.info["linear_probe"]["fairface_age"] == {"skipped": "the dataset has no 'age' column"}
