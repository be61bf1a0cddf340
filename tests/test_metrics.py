"""Tests of clipfair.stats.metrics: per-group metrics and Wilson intervals."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, count, selection_rate
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score

from clipfair.data.attributes import AGE_BINS, FAIRFACE_ORDERS, FAIRFACE_SLICES, GENDERS, RACES
from clipfair.stats.metrics import (
    METRIC_COLUMNS,
    disparities,
    slice_name,
    value_order,
    wilson_interval,
)
from clipfair.stats.metrics import group_metrics as _group_metrics

#: these tests use FairFace's attributes: its declared slice preference and value orders
DEFAULT_SLICES = FAIRFACE_SLICES


def group_metrics(predictions, categories, slices=FAIRFACE_SLICES, *args, orders=FAIRFACE_ORDERS, **kwargs):
    """clipfair.stats.metrics.group_metrics with FairFace's declarations (what a FairFace dataset passes)."""
    return _group_metrics(predictions, categories, slices, *args, orders=orders, **kwargs)

CATEGORIES = {
    "race_cls": ["race", "non_human", "crime_related"],  # crime_related: never predicted
    "denig": ["human", "non_human", "crime_related", "child"],  # child: never predicted
}


def make_predictions(seed: int = 0, n: int = 300) -> pd.DataFrame:
    """Synthetic long predictions: race_cls (target: race; zero_shot and linear_probe)
    and denig (no target; zero_shot). No Indian women (an empty intersection); a few
    images have no age."""
    rng = np.random.default_rng(seed)
    race = rng.choice(np.array(RACES, dtype=object), n)
    gender = rng.choice(np.array(GENDERS, dtype=object), n)
    gender[race == "Indian"] = "Male"
    age = rng.choice(np.array(AGE_BINS[:5], dtype=object), n)
    age[rng.random(n) < 0.05] = None
    attrs = pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(n)],
        "race": race,
        "gender": gender,
        "age": age,
        "race_binary": np.where(race == "White", "White", "Non-White").astype(object),
    })
    frames = []
    for method, p_right in (("zero_shot", 0.6), ("linear_probe", 0.8)):
        right = rng.random(n) < p_right
        other = rng.choice(np.array(list(RACES) + ["gorilla"], dtype=object), n)
        label = np.where(right, race, other)
        frames.append(attrs.assign(
            taxonomy="race_cls", method=method, predicted_label=label,
            predicted_category=np.where(label == "gorilla", "non_human", "race"),
            score=rng.random(n), true_label=race, correct=label == race,
        ))
    label = rng.choice(np.array(["person", "animal", "thief"], dtype=object), n, p=[0.6, 0.25, 0.15])
    frames.append(attrs.assign(
        taxonomy="denig", method="zero_shot", predicted_label=label,
        predicted_category=pd.Series(label).map(
            {"person": "human", "animal": "non_human", "thief": "crime_related"}).to_numpy(),
        score=rng.random(n), true_label=None, correct=np.nan,
    ))
    cols = ["image_id", "taxonomy", "method", "predicted_label", "predicted_category", "score",
            "true_label", "correct", "race", "gender", "age", "race_binary"]
    return pd.concat(frames, ignore_index=True)[cols]


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    return make_predictions()


@pytest.fixture(scope="module")
def metrics(preds) -> pd.DataFrame:
    return group_metrics(preds, CATEGORIES)


def _lookup(metrics, **eq):
    m = metrics
    for k, v in eq.items():
        m = m[m[k] == v]
    return m


# --------------------------------------------------------------------------- shape

def test_columns_and_dtypes(metrics):
    assert list(metrics.columns) == list(METRIC_COLUMNS)
    assert metrics["n"].dtype == np.int64 and metrics["count"].dtype == np.int64
    assert (metrics["n"] > 0).all()
    assert metrics[["value", "ci_low", "ci_high"]].notna().all().all()
    assert ((metrics["ci_low"] <= metrics["value"]) & (metrics["value"] <= metrics["ci_high"])).all()
    np.testing.assert_allclose(metrics["value"], metrics["count"] / metrics["n"])


def test_slice_names():
    assert slice_name("overall") == "overall"
    assert slice_name("race") == "race"
    assert slice_name(("race", "gender")) == "race+gender"
    assert [slice_name(s) for s in DEFAULT_SLICES] == [
        "overall", "race", "gender", "age", "race_binary", "race+gender",
        "race_binary+gender", "age+gender"]
    with pytest.raises(ValueError):
        slice_name(())


def test_accuracy_only_where_target(metrics, preds):
    acc = metrics[metrics["metric"] == "accuracy"]
    assert set(acc["taxonomy"]) == {"race_cls"}
    assert (acc["category"] == "").all()
    overall = _lookup(acc, method="zero_shot", slice="overall")
    assert list(overall["group"]) == ["all"]
    sub = preds[(preds.taxonomy == "race_cls") & (preds.method == "zero_shot")]
    assert int(overall["n"].iloc[0]) == len(sub)
    assert int(overall["count"].iloc[0]) == int(sub["correct"].sum())


# --------------------------------------------------------------------------- vs fairlearn

@pytest.mark.parametrize("features", [["race"], ["gender"], ["race", "gender"]])
@pytest.mark.parametrize("method", ["zero_shot", "linear_probe"])
def test_accuracy_matches_fairlearn(preds, metrics, features, method):
    sub = preds[(preds.taxonomy == "race_cls") & (preds.method == method)]
    mf = MetricFrame(metrics={"acc": accuracy_score, "n": count},
                     y_true=sub["true_label"], y_pred=sub["predicted_label"],
                     sensitive_features=sub[features])
    expected = mf.by_group.dropna()
    got = _lookup(metrics, taxonomy="race_cls", method=method, metric="accuracy",
                  slice="+".join(features))
    got = got.set_index("group")
    exp_groups = ["+".join(k) if isinstance(k, tuple) else k for k in expected.index]
    assert sorted(got.index) == sorted(exp_groups)
    for key, g in zip(expected.index, exp_groups):
        assert got.at[g, "value"] == pytest.approx(expected.loc[key, "acc"], abs=1e-12)
        assert got.at[g, "n"] == expected.loc[key, "n"]


@pytest.mark.parametrize("features", [["race"], ["gender"], ["race", "gender"]])
@pytest.mark.parametrize("taxonomy,method", [("race_cls", "zero_shot"), ("race_cls", "linear_probe"),
                                             ("denig", "zero_shot")])
def test_rates_match_fairlearn(preds, metrics, features, taxonomy, method):
    sub = preds[(preds.taxonomy == taxonomy) & (preds.method == method)]
    for cat in CATEGORIES[taxonomy]:
        indicator = (sub["predicted_category"] == cat).astype(int)
        mf = MetricFrame(metrics=lambda yt, yp: selection_rate(yt, yp, pos_label=1),
                         y_true=indicator, y_pred=indicator, sensitive_features=sub[features])
        expected = mf.by_group.dropna()
        got = _lookup(metrics, taxonomy=taxonomy, method=method, metric="rate", category=cat,
                      slice="+".join(features)).set_index("group")["value"]
        exp = {("+".join(k) if isinstance(k, tuple) else k): v for k, v in expected.items()}
        assert set(got.index) == set(exp)
        for g, v in exp.items():
            assert got[g] == pytest.approx(v, abs=1e-12), (cat, g)


# --------------------------------------------------------------------------- vs pandas

def _independent(preds: pd.DataFrame, slices) -> dict:
    """(taxonomy, method, metric, category, slice, group) -> (n, count), by plain groupby;
    label rates over each taxonomy's observed labels."""
    out = {}
    labels = {t: sorted(p["predicted_label"].unique()) for t, p in preds.groupby("taxonomy")}
    for (tax, meth), sub in preds.groupby(["taxonomy", "method"], sort=False):
        for s in slices:
            attrs = [] if s == "overall" else ([s] if isinstance(s, str) else list(s))
            name = "overall" if not attrs else "+".join(attrs)
            if attrs:
                d = sub.dropna(subset=attrs)
                grouped = [("+".join(k if isinstance(k, tuple) else (k,)), g)
                           for k, g in d.groupby(attrs if len(attrs) > 1 else attrs[0])]
            else:
                grouped = [("all", sub)]
            for gname, g in grouped:
                if len(g) == 0:
                    continue
                tgt = g[g["true_label"].notna()]
                if len(tgt):
                    out[(tax, meth, "accuracy", "", name, gname)] = (
                        len(tgt), int((tgt["predicted_label"] == tgt["true_label"]).sum()))
                for cat in CATEGORIES[tax]:
                    out[(tax, meth, "rate", cat, name, gname)] = (
                        len(g), int((g["predicted_category"] == cat).sum()))
                for lab in labels[tax]:
                    out[(tax, meth, "label_rate", lab, name, gname)] = (
                        len(g), int((g["predicted_label"] == lab).sum()))
    return out


def test_matches_independent_groupby(preds, metrics):
    expected = _independent(preds, DEFAULT_SLICES)
    per_group = metrics[metrics["metric"] != "worst_group_accuracy"]
    got = {
        tuple(r[:6]): (int(r[6]), int(r[7]))
        for r in per_group[list(METRIC_COLUMNS[:8])].itertuples(index=False, name=None)
    }
    assert len(got) == len(per_group)  # no duplicate keys
    assert got == expected


def test_never_predicted_category_has_zero_rows(metrics):
    for tax, cat in (("race_cls", "crime_related"), ("denig", "child")):
        rows = _lookup(metrics, taxonomy=tax, metric="rate", category=cat)
        assert len(rows) > 0
        assert (rows["count"] == 0).all() and (rows["value"] == 0).all()
        assert (rows["ci_low"] == 0).all() and (rows["ci_high"] > 0).all()
        # as many rows as the category that is predicted
        other = _lookup(metrics, taxonomy=tax, metric="rate", category=CATEGORIES[tax][0])
        assert len(rows) == len(other)


def test_rates_of_a_group_sum_to_one(metrics):
    rate = metrics[metrics["metric"] == "rate"]
    sums = rate.groupby(["taxonomy", "method", "slice", "group"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)


# --------------------------------------------------------------------------- edge cases

def test_empty_intersection_gives_no_row(metrics, preds):
    assert not ((preds.race == "Indian") & (preds.gender == "Female")).any()
    rg = metrics[metrics["slice"] == "race+gender"]
    assert "Indian+Male" in set(rg["group"])
    assert "Indian+Female" not in set(rg["group"])
    assert np.isfinite(metrics["value"]).all()


def test_slice_with_one_image_and_all_null_attribute():
    preds = make_predictions(n=40)
    preds["age"] = None  # an attribute with no known value: no age groups at all
    m = group_metrics(preds, CATEGORIES)
    assert not m["slice"].isin(["age", "age+gender"]).any()
    assert (m["n"] > 0).all()
    tiny = make_predictions(n=1)
    m1 = group_metrics(tiny, CATEGORIES)
    assert (m1["n"] == 1).all()


def test_missing_attribute_column_is_skipped(preds, metrics):
    no_age = group_metrics(preds.drop(columns=["age"]), CATEGORIES)
    assert not no_age["slice"].isin(["age", "age+gender"]).any()
    kept = metrics[~metrics["slice"].isin(["age", "age+gender"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(no_age, kept)


def test_null_attribute_rows_are_left_out_of_that_slice(preds, metrics):
    n_age = preds.loc[(preds.taxonomy == "denig"), "age"].notna().sum()
    assert 0 < n_age < (preds.taxonomy == "denig").sum()
    rows = _lookup(metrics, taxonomy="denig", metric="rate", category="human", slice="age")
    assert rows["n"].sum() == n_age
    rows = _lookup(metrics, taxonomy="denig", metric="rate", category="human", slice="race")
    assert rows["n"].sum() == (preds.taxonomy == "denig").sum()


def test_group_and_category_order(metrics):
    m = metrics
    assert list(pd.unique(m["taxonomy"])) == ["race_cls", "denig"]
    assert list(pd.unique(m.loc[m.taxonomy == "race_cls", "method"])) == ["zero_shot", "linear_probe"]
    sub = m[(m.taxonomy == "race_cls") & (m.method == "zero_shot")]
    assert list(pd.unique(sub["metric"])) == ["accuracy", "rate", "label_rate", "worst_group_accuracy"]
    assert list(pd.unique(sub.loc[sub.metric == "rate", "category"])) == CATEGORIES["race_cls"]
    race_groups = list(_lookup(sub, metric="accuracy", slice="race")["group"])
    assert race_groups == [r for r in RACES if r in race_groups] and len(race_groups) == 7
    assert list(_lookup(sub, metric="accuracy", slice="age")["group"]) == list(AGE_BINS[:5])
    rg = list(_lookup(sub, metric="accuracy", slice="race+gender")["group"])
    assert rg[:3] == ["White+Male", "White+Female", "Black+Male"]
    assert list(pd.unique(sub.loc[sub.metric == "rate", "slice"])) == [
        slice_name(s) for s in DEFAULT_SLICES]


def test_unknown_attribute_values_after_canonical_sorted():
    preds = make_predictions(n=60)
    preds.loc[preds.index[:3], "race"] = "Zeta"
    preds.loc[preds.index[3:6], "race"] = "Alpha"
    m = group_metrics(preds, CATEGORIES, slices=["race"])
    groups = list(_lookup(m, taxonomy="race_cls", method="zero_shot", metric="accuracy")["group"])
    known = [g for g in groups if g in RACES]
    assert groups == known + ["Alpha", "Zeta"]
    assert known == [r for r in RACES if r in known]


def test_undeclared_category_is_kept_with_warning():
    preds = make_predictions(n=50)
    preds.loc[preds.index[-1], "predicted_category"] = "mystery"  # a denig row
    with pytest.warns(UserWarning, match="mystery"):
        m = group_metrics(preds, CATEGORIES, slices=["overall"])
    cats = list(_lookup(m, taxonomy="denig", metric="rate")["category"])
    assert cats == CATEGORIES["denig"] + ["mystery"]
    assert _lookup(m, taxonomy="denig", metric="rate", category="mystery")["count"].tolist() == [1]


def test_correct_column_is_used_and_null_falls_back_to_labels():
    preds = make_predictions(n=50)
    base = group_metrics(preds, CATEGORIES, slices=["overall"])
    p2 = preds.copy()
    p2["correct"] = p2["correct"].astype(object)
    idx = p2.index[(p2.taxonomy == "race_cls")][:10]
    p2.loc[idx, "correct"] = None  # derived from predicted_label == true_label
    pd.testing.assert_frame_equal(group_metrics(p2, CATEGORIES, slices=["overall"]), base)
    p3 = preds.copy()
    flip = p3.index[(p3.taxonomy == "race_cls") & (p3.method == "zero_shot")][:1]
    p3.loc[flip, "correct"] = ~p3.loc[flip, "correct"].astype(bool)
    m3 = group_metrics(p3, CATEGORIES, slices=["overall"])
    a0 = _lookup(base, metric="accuracy", method="zero_shot")["count"].iloc[0]
    a3 = _lookup(m3, metric="accuracy", method="zero_shot")["count"].iloc[0]
    assert abs(int(a3) - int(a0)) == 1


def test_duplicate_rows_raise(preds):
    with pytest.raises(ValueError, match="duplicate"):
        group_metrics(pd.concat([preds, preds.iloc[:1]]), CATEGORIES)


def test_empty_predictions_give_empty_frame(preds):
    m = group_metrics(preds.iloc[:0], CATEGORIES)
    assert list(m.columns) == list(METRIC_COLUMNS) and len(m) == 0


# --------------------------------------------------------------------------- determinism

def test_deterministic_csv(preds):
    a = group_metrics(preds, CATEGORIES).to_csv(index=False)
    b = group_metrics(preds.copy(), CATEGORIES).to_csv(index=False)
    assert a == b
    # row order within a taxonomy x method does not matter
    rng = np.random.default_rng(1)
    shuffled = preds.iloc[rng.permutation(len(preds))]
    key = shuffled["taxonomy"].map({"race_cls": 0, "denig": 1}) * 2 + \
        shuffled["method"].map({"zero_shot": 0, "linear_probe": 1})
    shuffled = shuffled.iloc[np.argsort(key.to_numpy(), kind="stable")]
    assert list(pd.unique(shuffled["taxonomy"])) == ["race_cls", "denig"]
    assert not shuffled["image_id"].equals(preds["image_id"])
    assert group_metrics(shuffled, CATEGORIES).to_csv(index=False) == a


@pytest.mark.slow
def test_large_input_shape_and_spot_check():
    """100 taxonomies x 11,000 images (the variant-comparison scale); speed is measured in
    scripts/bench_variants.py, not asserted here."""
    n_img, n_tax = 11_000, 100
    rng = np.random.default_rng(0)
    race = rng.choice(np.array(RACES, dtype=object), n_img)
    gender = rng.choice(np.array(GENDERS, dtype=object), n_img)
    age = rng.choice(np.array(AGE_BINS, dtype=object), n_img)
    cats = np.array(["human", "non_human", "crime_related"], dtype=object)
    preds = pd.DataFrame({
        "image_id": np.tile(np.arange(n_img).astype(str).astype(object), n_tax),
        "taxonomy": np.repeat(np.array([f"t{i:03d}" for i in range(n_tax)], dtype=object), n_img),
        "method": "zero_shot",
        "predicted_category": cats[rng.integers(0, 3, n_img * n_tax)],
        "true_label": np.tile(race, n_tax),
        "correct": rng.random(n_img * n_tax) < 0.5,
        "race": np.tile(race, n_tax), "gender": np.tile(gender, n_tax), "age": np.tile(age, n_tax),
        "race_binary": np.tile(np.where(race == "White", "White", "Non-White").astype(object), n_tax),
    })
    m = group_metrics(preds, {f"t{i:03d}": list(cats) for i in range(n_tax)})
    # 1 + 7 + 2 + 9 + 2 + 14 + 4 + 18 = 57 groups, x (1 accuracy + 3 categories), plus one
    # worst-group accuracy per slice other than overall (no predicted_label: no label rates)
    assert len(m) == n_tax * (57 * 4 + 7)
    part = preds[preds["taxonomy"] == "t042"]
    sel = part[(part["race"] == "Indian") & (part["gender"] == "Female")]
    row = m.query("taxonomy == 't042' and metric == 'rate' and category == 'non_human' "
                  "and slice == 'race+gender' and group == 'Indian+Female'")
    assert row["count"].item() == int((sel["predicted_category"] == "non_human").sum())
    assert row["n"].item() == len(sel)


# --------------------------------------------------------------------------- Wilson

def _wilson_quadratic(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Independent: the Wilson bounds are the roots p of (phat - p)^2 = z^2 p (1-p) / n."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    phat = k / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k,n,low,high", [
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (81, 263, 0.2553, 0.3662),   # Newcombe (1998), example (c)
    (10, 10, 0.7225, 1.0),
])
def test_wilson_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    qlo, qhi = _wilson_quadratic(k, n, 0.95)
    assert lo == pytest.approx(qlo, abs=1e-9) and hi == pytest.approx(qhi, abs=1e-9)


def test_wilson_n_zero_is_nan_and_vectorised():
    lo, hi = wilson_interval(0, 0)
    assert math.isnan(lo) and math.isnan(hi)
    k = np.array([0, 5, 81, 0])
    n = np.array([10, 10, 263, 0])
    lo, hi = wilson_interval(k, n)
    assert lo.shape == (4,) and hi.shape == (4,)
    for i in range(3):
        qlo, qhi = _wilson_quadratic(int(k[i]), int(n[i]), 0.95)
        assert lo[i] == pytest.approx(qlo, abs=1e-9) and hi[i] == pytest.approx(qhi, abs=1e-9)
    assert math.isnan(lo[3]) and math.isnan(hi[3])


def test_wilson_confidence_sets_z():
    for conf in (0.5, 0.9, 0.99):
        lo, hi = wilson_interval(30, 100, confidence=conf)
        qlo, qhi = _wilson_quadratic(30, 100, conf)
        assert lo == pytest.approx(qlo, abs=1e-9) and hi == pytest.approx(qhi, abs=1e-9)
    assert wilson_interval(30, 100, 0.99)[1] > wilson_interval(30, 100, 0.95)[1]
    with pytest.raises(ValueError):
        wilson_interval(3, 10, confidence=1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), conf=st.floats(0.5, 0.999))
def test_wilson_property(n, frac, conf):
    k = int(round(frac * n))
    lo, hi = wilson_interval(k, n, conf)
    qlo, qhi = _wilson_quadratic(k, n, conf)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo == pytest.approx(max(qlo, 0.0), abs=1e-9)
    assert hi == pytest.approx(min(qhi, 1.0), abs=1e-9)


def test_group_metrics_ci_uses_confidence(preds):
    m99 = group_metrics(preds, CATEGORIES, slices=["race"], confidence=0.99)
    r = m99.iloc[0]
    lo, hi = _wilson_quadratic(int(r["count"]), int(r["n"]), 0.99)
    assert r["ci_low"] == pytest.approx(max(lo, 0), abs=1e-9)
    assert r["ci_high"] == pytest.approx(min(hi, 1), abs=1e-9)

# disparities (differences with intervals, multiplicity, directions): tests/test_disparities.py


# --------------------------------------------------------------------------- any attribute

from clipfair.data import SliceError  # noqa: E402
from clipfair.stats.metrics import CONFUSION_COLUMNS, confusion, resolve_slices  # noqa: E402
from clipfair.methods.zeroshot import predictions_frame  # noqa: E402
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass  # noqa: E402

TONES = tuple(str(k) for k in range(1, 11))          # declared order; as text it sorts 1, 10, 2
REGIONS = ("Europe", "Africa", "Asia", "Americas")   # declared order, not alphabetical


def custom_predictions(seed: int = 3, n: int = 400):
    """A 5-class target taxonomy ('occupation', target column 'job') zero-shot on images
    with custom attributes skin_tone and region (some missing); probabilities random."""
    rng = np.random.default_rng(seed)
    jobs = ("nurse", "pilot", "chef", "teacher", "farmer")
    tax = Taxonomy("occupation", ("a photo of a {}.",),
                   tuple(TaxonomyClass(j, (j,), "class") for j in jobs), target="job")
    region = rng.choice(np.array(REGIONS, dtype=object), n)
    region[rng.random(n) < 0.05] = None
    table = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)],
                          "skin_tone": rng.choice(np.array(TONES[:7], dtype=object), n),
                          "region": region, "job": rng.choice(np.array(jobs, dtype=object), n)})
    probs = rng.dirichlet(np.ones(len(jobs)) * 0.7, n)
    return tax, probs, predictions_frame(table, tax, probs, "zero_shot", ["skin_tone", "region"])


def test_custom_attributes_sliced_and_intersected_match_groupby():
    tax, _, p = custom_predictions()
    orders = {"skin_tone": TONES, "region": REGIONS}
    slices = ["overall", "skin_tone", "region", ("skin_tone", "region")]
    m = group_metrics(p, {tax.name: tax.categories}, slices, labels={tax.name: tax.labels},
                      orders=orders, small_n=10)
    for s in slices[1:]:
        cols = [s] if isinstance(s, str) else list(s)
        d = p.dropna(subset=cols)
        g = d.groupby(cols)
        n = g.size()
        acc = g["correct"].apply(lambda c: int(c.astype(bool).sum()))
        got = m[(m.metric == "accuracy") & (m.slice == slice_name(s))].set_index("group")
        names = ["+".join(k) if isinstance(k, tuple) else k for k in n.index]
        assert sorted(got.index) == sorted(names)
        for k, name in zip(n.index, names):
            assert got.at[name, "n"] == n[k] and got.at[name, "count"] == acc[k]
            assert bool(got.at[name, "small"]) == (n[k] < 10)
        for lab in tax.labels:
            lr = m[(m.metric == "label_rate") & (m.category == lab) & (m.slice == slice_name(s))]
            lr = lr.set_index("group")["count"]
            direct = d.assign(hit=d["predicted_label"] == lab).groupby(cols)["hit"].sum()
            assert {nm: int(direct[k]) for k, nm in zip(direct.index, names)} == lr.to_dict()
    # groups follow the declared orders, not text order
    tone_groups = list(m[(m.metric == "accuracy") & (m.slice == "skin_tone")]["group"])
    assert tone_groups == [t for t in TONES if t in tone_groups]
    assert list(m[(m.metric == "accuracy") & (m.slice == "region")]["group"]) == list(REGIONS)
    inter = list(m[(m.metric == "accuracy") & (m.slice == "skin_tone+region")]["group"])
    assert inter[:4] == [f"1+{r}" for r in REGIONS]
    # without declared orders: sorted as text (the old behaviour for unknown attributes)
    plain = group_metrics(p, {tax.name: tax.categories}, ["skin_tone"], labels={tax.name: tax.labels})
    assert list(plain[(plain.metric == "accuracy")]["group"]) == sorted(tone_groups)


def test_label_rates_sum_to_one_and_include_never_predicted_labels():
    tax, _, p = custom_predictions(n=60)
    labels = {tax.name: [*tax.labels, "astronaut"]}  # a declared label nobody gets
    m = group_metrics(p, {tax.name: tax.categories}, ["overall", "region", ("skin_tone", "region")],
                      labels=labels)
    lr = m[m.metric == "label_rate"]
    sums = lr.groupby(["taxonomy", "method", "slice", "group"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    per_group = lr.groupby(["slice", "group"])["category"].apply(list)
    assert all(cats == labels[tax.name] for cats in per_group)
    astro = lr[lr.category == "astronaut"]
    assert (astro["count"] == 0).all() and (astro["ci_high"] > 0).all()


def test_topk_accuracy_matches_direct_computation():
    tax, probs, p = custom_predictions()
    m = group_metrics(p, {tax.name: tax.categories}, ["overall", "region"],
                      labels={tax.name: tax.labels}, topk=[1, 2, 3, 5, 9])
    true_idx = np.array([tax.labels.index(t) for t in p["true_label"]])
    order = np.argsort(-probs, axis=1, kind="stable")
    for k in (1, 2, 3):
        hit = (order[:, :k] == true_idx[:, None]).any(axis=1)
        row = m[(m.metric == "topk_accuracy") & (m.category == f"top-{k}") & (m.slice == "overall")]
        assert row["n"].item() == len(p) and row["count"].item() == int(hit.sum())
        for reg in REGIONS:
            sel = (p["region"] == reg).to_numpy()
            r = m[(m.metric == "topk_accuracy") & (m.category == f"top-{k}") & (m.group == reg)]
            assert r["count"].item() == int(hit[sel].sum()) and r["n"].item() == int(sel.sum())
    top1 = m[(m.metric == "topk_accuracy") & (m.category == "top-1")].reset_index(drop=True)
    acc = m[m.metric == "accuracy"].reset_index(drop=True)
    assert top1["count"].tolist() == acc["count"].tolist()  # top-1 is accuracy
    # k >= the number of classes is 1 by construction: no rows
    assert not m["category"].isin(["top-5", "top-9"]).any()
    assert list(pd.unique(m.loc[m.metric == "topk_accuracy", "category"])) == ["top-1", "top-2", "top-3"]


def test_true_rank_ties_follow_argmax():
    tax = Taxonomy("t", ("{}",), tuple(TaxonomyClass(c, (c,), "class") for c in "abc"), target="x")
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.2, 0.3, 0.5]])
    p = predictions_frame(pd.DataFrame({"image_id": ["1", "2", "3"], "x": ["a", "b", "a"]}),
                          tax, probs, "zero_shot", [])
    assert p["predicted_label"].tolist() == ["a", "a", "c"]
    assert p["true_rank"].tolist() == [1, 2, 3]
    assert p["correct"].tolist() == [True, False, False]


def test_worst_group_accuracy_and_small_flags():
    tax, _, p = custom_predictions()
    m = group_metrics(p, {tax.name: tax.categories}, ["overall", "skin_tone", "region"],
                      labels={tax.name: tax.labels}, small_n=58)
    assert (m["small"] == (m["n"] < 58)).all()
    acc = m[m.metric == "accuracy"]
    for s in ("skin_tone", "region"):
        groups = acc[acc.slice == s]
        big = groups[~groups["small"]]
        pool = big if len(big) else groups
        worst = m[(m.metric == "worst_group_accuracy") & (m.slice == s)]
        assert len(worst) == 1
        assert worst["value"].item() == pool["value"].min()
        assert worst["group"].item() == pool.loc[pool["value"].idxmin(), "group"]
        assert bool(worst["small"].item()) == (len(big) == 0)
    assert not ((m.metric == "worst_group_accuracy") & (m.slice == "overall")).any()
    # every group is tiny: the worst of all groups, flagged small
    all_small = group_metrics(p, {tax.name: tax.categories}, ["region"], small_n=10_000)
    w = all_small[all_small.metric == "worst_group_accuracy"]
    assert bool(w["small"].item())
    a = all_small[all_small.metric == "accuracy"]
    assert w["value"].item() == a["value"].min()
    # disparities leave summary and label rows out, and keep working
    d = disparities(m)
    assert set(d["metric"]) == {"accuracy", "rate"}


def test_confusion_sums_to_n_and_diagonal_is_accuracy():
    tax, _, p = custom_predictions()
    slices = ["overall", "skin_tone", ("skin_tone", "region")]
    m = group_metrics(p, {tax.name: tax.categories}, slices, labels={tax.name: tax.labels})
    c = confusion(p, slices, labels={tax.name: tax.labels})
    assert list(c.columns) == list(CONFUSION_COLUMNS)
    assert (c["count"] > 0).all()
    acc = m[m.metric == "accuracy"].set_index(["slice", "group"])
    tot = c.groupby(["slice", "group"])["count"].sum()
    diag = c[c.true_label == c.predicted_label].groupby(["slice", "group"])["count"].sum()
    assert set(tot.index) == set(acc.index)
    for key in acc.index:
        assert tot[key] == acc.at[key, "n"]
        assert diag.get(key, 0) == acc.at[key, "count"]
    # direct crosstab for one group
    sub = p[p.skin_tone == "3"]
    direct = pd.crosstab(sub["true_label"], sub["predicted_label"]).stack()
    got = c[(c.slice == "skin_tone") & (c.group == "3")].set_index(["true_label", "predicted_label"])["count"]
    assert got.to_dict() == {k: v for k, v in direct.items() if v > 0}


def test_confusion_maps_values_onto_classes_with_matches():
    from clipfair.data.taxonomy import load_taxonomy

    race4 = load_taxonomy("fairface_race4")
    table = pd.DataFrame({"image_id": list("abcde"),
                          "race": ["White", "East Asian", "Southeast Asian", "Latino_Hispanic", "Black"]})
    probs = np.zeros((5, len(race4.labels)))
    for i, lab in enumerate(["White", "Asian", "White", "White", "Black"]):
        probs[i, race4.labels.index(lab)] = 1.0
    p = predictions_frame(table, race4, probs, "zero_shot", ["race"])
    right = {v: c.label for c in race4.classes for v in c.correct_for}
    c = confusion(p, ["overall"], labels={race4.name: race4.labels}, true_class={race4.name: right})
    cells = {(r.true_label, r.predicted_label): r.count for r in c.itertuples()}
    assert cells == {("White", "White"): 1, ("Asian", "Asian"): 1, ("Asian", "White"): 1, ("Black", "Black"): 1}
    assert sum(v for (t, q), v in cells.items() if t == q) == int(p["correct"].fillna(False).sum())


def test_resolve_slices_auto_and_misspelt_slice_error():
    avail = ["race", "gender", "age", "race_binary", "skin_tone"]
    assert resolve_slices("auto", avail, preferred=FAIRFACE_SLICES) == [*FAIRFACE_SLICES, "skin_tone"]
    assert resolve_slices("auto", ["gender", "region"], preferred=FAIRFACE_SLICES) == ["overall", "gender", "region"]
    # no declared preference: overall and each attribute; a preference names its own intersections
    assert resolve_slices("auto", avail) == ["overall", *avail]
    assert resolve_slices("auto", ["gender", "region"], preferred=[["region", "gender"], "overall"]) == [
        "overall", ("region", "gender"), "gender", "region"]
    assert resolve_slices(["overall", ["gender", "skin_tone"]], avail) == ["overall", ("gender", "skin_tone")]
    with pytest.raises(SliceError, match=r"slice 'gender\+skintone': dataset 'x' has no attribute "
                                         r"'skintone' \(did you mean 'skin_tone'\?\); available "
                                         r"attributes: race, gender, age, race_binary, skin_tone"):
        resolve_slices(["overall", ["gender", "skintone"]], avail, "dataset 'x'")
    with pytest.raises(SliceError, match="slice 'service_test'.*available attributes: gender;"):
        resolve_slices(["service_test"], ["gender"])


def test_group_order_comes_from_the_declared_orders_not_from_fairface():
    """metrics knows no dataset: without declared orders values are sorted; with them,
    declared values first in their order, undeclared ones after, sorted."""
    vals = ["White", "Black", "Indian", "zz"]
    assert value_order("race", vals) == sorted(vals)
    assert value_order("race", vals, FAIRFACE_ORDERS) == ["White", "Black", "Indian", "zz"]
    assert value_order("race", vals, {"race": ("Indian", "White")}) == ["Indian", "White", "Black", "zz"]
    p = pd.DataFrame({"taxonomy": "t", "method": "zero_shot", "predicted_category": "c",
                      "race": ["White", "Black", "Indian", "White"]})
    plain = _group_metrics(p, {"t": ["c"]}, ["race"])
    assert list(plain.loc[plain.metric == "rate", "group"]) == ["Black", "Indian", "White"]
    declared = _group_metrics(p, {"t": ["c"]}, ["race"], orders={"race": ("White", "Indian", "Black")})
    assert list(declared.loc[declared.metric == "rate", "group"]) == ["White", "Indian", "Black"]
    assert list(_group_metrics(p, {"t": ["c"]})["slice"].unique()) == ["overall"]  # no slice assumed
