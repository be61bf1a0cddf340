"""metrics.disparities: differences and ratios between groups with intervals, checked against
statsmodels and fairlearn; multiplicity over the whole table; declared directions; small groups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from clipfair.stats.metrics import (DISPARITY_COLUMNS, HIGHER, LOWER, NEUTRAL, disparities, group_metrics,
                              metric_direction)
from clipfair.stats.inference import newcombe_diff, newcombe_paired_diff


def _m(metric, category, slice_, group, n, count, taxonomy="T"):
    return {"taxonomy": taxonomy, "method": "zero_shot", "metric": metric, "category": category,
            "slice": slice_, "group": group, "n": n, "count": count, "value": count / n,
            "ci_low": np.nan, "ci_high": np.nan}


@pytest.fixture()
def table() -> pd.DataFrame:
    return pd.DataFrame([
        _m("accuracy", "", "overall", "all", 142, 80),
        _m("accuracy", "", "race", "A", 50, 40),
        _m("accuracy", "", "race", "B", 60, 20),
        _m("accuracy", "", "race", "C", 30, 19),
        _m("accuracy", "", "race", "D", 2, 1),      # too small at min_n=30
        _m("accuracy", "", "gender", "M", 12, 6),   # every gender group too small
        _m("accuracy", "", "gender", "F", 10, 9),
        _m("rate", "bad", "overall", "all", 140, 30),
        _m("rate", "bad", "race", "A", 50, 5),
        _m("rate", "bad", "race", "B", 60, 20),
        _m("rate", "bad", "race", "C", 30, 5),
        _m("rate", "good", "race", "A", 50, 40),
        _m("rate", "good", "race", "B", 60, 35),
        _m("rate", "good", "race", "C", 30, 24),
        _m("rate", "plain", "race", "A", 50, 5),    # neutral: B is highest, never "worst"
        _m("rate", "plain", "race", "B", 60, 40),
        _m("rate", "plain", "race", "C", 30, 10),
    ])


HARMS = {"T": {"bad": True, "good": False}}


def _row(d, metric, category, slice_, comparison):
    r = d[(d.metric == metric) & (d.category == category) & (d.slice == slice_) & (d.comparison == comparison)]
    assert len(r) == 1, r
    return r.iloc[0]


def test_columns_and_directions(table):
    d = disparities(table, harms=HARMS)
    assert list(d.columns) == list(DISPARITY_COLUMNS)
    acc = _row(d, "accuracy", "", "race", "worst_vs_best")
    assert (acc.group, acc.reference, acc.direction) == ("B", "A", HIGHER)  # accuracy: lowest is worst
    bad = _row(d, "rate", "bad", "race", "worst_vs_best")
    assert (bad.group, bad.reference, bad.direction) == ("B", "A", LOWER)   # a harm: highest is worst
    good = _row(d, "rate", "good", "race", "worst_vs_best")
    assert (good.group, good.reference) == ("B", "A")                       # not a harm: lowest is worst
    plain = _row(d, "rate", "plain", "race", "highest_vs_lowest")
    assert (plain.group, plain.reference, plain.direction) == ("B", "A", NEUTRAL)
    assert not ((d.category == "plain") & (d.comparison == "worst_vs_best")).any()
    # directions come from the metric registry, never from a name's tokens (issue 20)
    assert metric_direction("topk_accuracy", "", None) == metric_direction("accuracy_race_binary", "", None) == HIGHER
    assert metric_direction("top5_accuracy", "", None) == NEUTRAL  # not a registered metric
    assert metric_direction("inaccuracy_score", "", None) == NEUTRAL
    assert metric_direction("label_rate", "x", {"x": True}) == LOWER


def test_planted_neutral_category_is_never_called_worst(table):
    # without declarations every rate is neutral: described highest/lowest only
    d = disparities(table)
    rates = d[d.metric == "rate"]
    assert set(rates["comparison"]) <= {"highest_vs_lowest", "to_overall"}
    assert set(rates["direction"]) == {NEUTRAL}


def test_intervals_and_tests_against_statsmodels(table):
    d = disparities(table, harms=HARMS, confidence=0.9)
    r = _row(d, "accuracy", "", "race", "worst_vs_best")  # B 20/60 vs A 40/50
    assert (r.n, r.reference_n) == (60, 50)
    assert r.difference == pytest.approx(20 / 60 - 40 / 50)
    lo, hi = confint_proportions_2indep(20, 60, 40, 50, method="newcomb", compare="diff", alpha=0.1)
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    rlo, rhi = confint_proportions_2indep(20, 60, 40, 50, method="log", compare="ratio", alpha=0.1)
    assert r.ratio == pytest.approx((20 / 60) / (40 / 50))
    assert (r.ratio_ci_low, r.ratio_ci_high) == (pytest.approx(rlo), pytest.approx(rhi))
    assert r.p_value == pytest.approx(proportions_ztest([20, 40], [60, 50])[1])
    # a count of 0: the log interval is undefined, left empty
    z = disparities(pd.DataFrame([_m("rate", "x", "race", "A", 40, 0), _m("rate", "x", "race", "B", 40, 8)]))
    assert math.isnan(z["ratio_ci_low"].iloc[0]) and not math.isnan(z["ci_low"].iloc[0])


def test_to_overall_matches_fairlearn_and_maps_the_group_vs_rest_interval():
    from fairlearn.metrics import MetricFrame, selection_rate

    rng = np.random.default_rng(3)
    n = 400
    race = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2])
    cat = np.where(rng.random(n) < np.select([race == "A", race == "B"], [0.1, 0.3], 0.5), "x", "y")
    preds = pd.DataFrame({"image_id": [str(i) for i in range(n)], "taxonomy": "T", "method": "zero_shot",
                          "predicted_category": cat, "race": race})
    met = group_metrics(preds, {"T": ["x", "y"]}, slices=["overall", "race"])
    d = disparities(met, harms={"T": {"x": True}})
    r = _row(d, "rate", "x", "race", "to_overall")
    mf = MetricFrame(metrics=selection_rate, y_true=(cat == "x").astype(int), y_pred=(cat == "x").astype(int),
                     sensitive_features=race)
    assert abs(r.difference) == pytest.approx(mf.difference(method="to_overall"))
    g = race == r.group
    xg, ng = int((cat[g] == "x").sum()), int(g.sum())
    xr, nr = int((cat[~g] == "x").sum()), int((~g).sum())
    lo, hi = confint_proportions_2indep(xg, ng, xr, nr, method="newcomb", compare="diff")
    w = ng / n
    assert (r.ci_low, r.ci_high) == (pytest.approx((1 - w) * lo), pytest.approx((1 - w) * hi))
    assert r.p_value == pytest.approx(proportions_ztest([xg, xr], [ng, nr])[1])
    assert r.ratio_ci_low < r.ratio < r.ratio_ci_high


def test_holm_over_the_whole_table(table):
    d = disparities(table, harms=HARMS)
    tested = d[d.p_value.notna()]
    assert tested["metric"].nunique() == 2 and len(tested) > 5  # several keys in one family
    np.testing.assert_allclose(tested["p_adjusted"], multipletests(tested["p_value"], method="holm")[1])
    bh = disparities(table, harms=HARMS, correction="bh")
    t2 = bh[bh.p_value.notna()]
    np.testing.assert_allclose(t2["p_adjusted"], multipletests(t2["p_value"], method="fdr_bh")[1])
    with pytest.raises(ValueError, match="correction"):
        disparities(table, correction="bonferroni")


def test_significant_means_adjusted_interval_excludes_zero(table):
    d = disparities(table, harms=HARMS)
    m = len(d[d.p_value.notna()])
    assert d.attrs["adjusted_confidence"] == pytest.approx(1 - 0.05 / m)
    for r in d.itertuples():
        if r.significant:
            assert r.p_adjusted < 0.05 and (r.adj_ci_low > 0 or r.adj_ci_high < 0)
        if not math.isnan(r.p_value):  # the adjusted interval contains the plain one
            assert r.adj_ci_low <= r.ci_low + 1e-12 and r.adj_ci_high >= r.ci_high - 1e-12
    # a difference significant alone but not after adjusting for the table
    r = _row(d, "rate", "good", "race", "worst_vs_best")  # B 35/60 vs A 40/50
    assert r.p_value < 0.05 and not r.significant
    lo, hi = newcombe_diff(35, 60, 40, 50, d.attrs["adjusted_confidence"])
    assert (r.adj_ci_low, r.adj_ci_high) == (pytest.approx(float(lo)), pytest.approx(float(hi)))


def test_min_n_lists_small_groups_and_never_compares_them(table):
    d = disparities(table, harms=HARMS)  # default min_n = 30
    assert d.attrs["min_n"] == 30
    acc = _row(d, "accuracy", "", "race", "worst_vs_best")
    assert acc.n_groups == 3 and acc.too_small == "D (n=2)"
    assert "D" not in set(d["group"]) | set(d["reference"])
    gender = d[(d.metric == "accuracy") & (d.slice == "gender")]
    assert len(gender) == 1 and gender.iloc[0].too_small == "M (n=12); F (n=10)"
    assert math.isnan(gender.iloc[0].difference) and not gender.iloc[0].significant
    d1 = disparities(table, min_n=1, harms=HARMS)
    r1 = _row(d1, "accuracy", "", "race", "worst_vs_best")
    assert (r1.n_groups, r1.too_small) == (4, "")


def test_equal_groups_and_csv_round_trip(table, tmp_path):
    eq = pd.DataFrame([_m("rate", "x", "race", g, 40, 40) for g in "AB"])
    d = disparities(eq)  # two groups that tie: nothing to compare (was A vs A, difference 0, p = 1)
    assert len(d) == 1
    r = d.iloc[0]
    assert r.group == "" and r.reference == "" and math.isnan(r.p_value) and not r.significant
    table.to_csv(tmp_path / "m.csv", index=False)
    back = pd.read_csv(tmp_path / "m.csv")
    pd.testing.assert_frame_equal(disparities(back, harms=HARMS), disparities(table, harms=HARMS))


def test_paired_interval_published_value_and_no_zero_width():
    # contingencytables::Newcombe_square_and_add_CI_paired_2x2(matrix(c(59, 6, 16, 80), 2, byrow=TRUE)):
    # estimate -0.0621, 95% CI -0.1186 to -0.0046 (Fagerland, Lydersen & Laake, chapter 8)
    lo, hi = newcombe_paired_diff(59, 6, 16, 80)
    assert (round(float(lo), 4), round(float(hi), 4)) == (-0.1186, -0.0046)
    lo, hi = newcombe_paired_diff(30, 0, 0, 70)  # no discordant pairs: a real interval around 0
    assert lo < -0.01 and hi > 0.01


def test_slice_summary_metrics_are_not_compared(table):
    wga = pd.DataFrame([_m("worst_group_accuracy", "", "race", "B", 60, 20)])
    d = disparities(pd.concat([table, wga], ignore_index=True), harms=HARMS)
    assert "worst_group_accuracy" not in set(d["metric"])
    pd.testing.assert_frame_equal(d, disparities(table, harms=HARMS))


def test_all_groups_tie_gives_no_self_pair_and_no_test():
    """Every group equal (White vs White, difference 0, before): one empty row, never a
    comparison of a group with itself or with an all-equal rest, and not counted by the correction."""
    tie = [_m("accuracy", "", "race", g, n, n // 2) for g, n in (("White", 40), ("Black", 60), ("Asian", 80))]
    tie.append(_m("accuracy", "", "overall", "all", 180, 90))
    d = disparities(pd.DataFrame(tie))
    assert len(d) == 1
    r = d.iloc[0]
    assert r["group"] == "" and r["reference"] == "" and r["n_groups"] == 3
    assert math.isnan(r["p_value"]) and math.isnan(r["difference"]) and not r["significant"]
    assert not (d["group"].astype(str) == d["reference"].astype(str)).any() or (d["group"] == "").all()
    # beside a real comparison, the tie adds no test: holm over one p-value is the p-value itself
    real = [_m("accuracy", "", "gender", "A", 50, 40), _m("accuracy", "", "gender", "B", 50, 25)]
    both = disparities(pd.DataFrame(tie + real))
    alone = disparities(pd.DataFrame(real))
    wvb = both[(both["slice"] == "gender") & (both["comparison"] == "worst_vs_best")]
    assert wvb["p_adjusted"].iloc[0] == pytest.approx(alone["p_adjusted"].iloc[0])
    assert wvb["p_adjusted"].iloc[0] == pytest.approx(proportions_ztest([25, 40], [50, 50])[1])
    named = both[both["group"] != ""]
    assert not (named["group"] == named["reference"]).any()


# ------------------------------------------------------------------ stratum attributes (FACET's class1)

def _strata_table() -> pd.DataFrame:
    return pd.DataFrame([
        _m("accuracy", "", "overall", "all", 400, 200),
        _m("accuracy", "", "class1", "nurse", 200, 150),
        _m("accuracy", "", "class1", "lawman", 200, 50),
        # within nurse: fem 0.85 vs masc 0.65; within lawman: fem 0.2 vs masc 0.3; across classes the
        # spread (0.85 vs 0.2) would be the largest, and meaningless
        _m("accuracy", "", "class1+gender", "nurse+fem", 100, 85),
        _m("accuracy", "", "class1+gender", "nurse+masc", 100, 65),
        _m("accuracy", "", "class1+gender", "lawman+fem", 100, 20),
        _m("accuracy", "", "class1+gender", "lawman+masc", 100, 30),
        _m("accuracy", "", "class1+gender", "lawman+nb", 4, 1),     # too small at min_n=30
        _m("accuracy", "", "gender", "fem", 200, 105),
        _m("accuracy", "", "gender", "masc", 200, 95),
    ])


def _stratum(label: str) -> str:
    return str(label).split("+")[0]


def test_strata_compare_within_a_stratum_only():
    t = _strata_table()
    d = disparities(t, strata=("class1",))
    sl = d[d["slice"] == "class1+gender"]
    made = sl[sl["group"] != ""]
    assert len(made) == 4  # worst_vs_best and to_overall for each class
    for r in made.itertuples():  # never a group of one class against another class
        ref = r.reference
        assert _stratum(r.group) == (ref if r.comparison == "to_overall" else _stratum(ref)), r
    wvb = made[made["comparison"] == "worst_vs_best"].set_index("reference")
    assert wvb.loc["nurse+fem", "group"] == "nurse+masc"
    assert wvb.loc["lawman+masc", "group"] == "lawman+fem"
    assert wvb.loc["nurse+fem", "difference"] == pytest.approx(0.65 - 0.85)
    # to_overall: against the class's own row (nurse 150/200), rest = the class minus the group
    to = made[made["comparison"] == "to_overall"].set_index("reference")
    assert to.loc["nurse", "reference_value"] == pytest.approx(0.75)
    assert to.loc["nurse", "reference_n"] == 200
    g = to.loc["nurse", "group"]
    x, n = (85, 100) if g == "nurse+fem" else (65, 100)
    z, p = proportions_ztest([x, 150 - x], [n, 200 - n])
    assert to.loc["nurse", "p_value"] == pytest.approx(p, rel=1e-6)
    assert "lawman+nb (n=4)" in sl.loc[sl["reference"].str.startswith("lawman"), "too_small"].iloc[0]
    # the slice of strata only gets no rows: nurse vs lawman is not a gap between groups
    assert not (d["slice"] == "class1").any()
    # the plain slice is compared as before
    assert (d[d["slice"] == "gender"]["group"] != "").sum() == 2
    # the correction runs over the comparisons made: 4 within-class tests + 2 gender tests
    tested = d["p_value"].notna()
    assert tested.sum() == 6
    assert np.allclose(d.loc[tested, "p_adjusted"], multipletests(d.loc[tested, "p_value"], method="holm")[1])


def test_without_strata_the_same_frame_compares_across_classes():
    d = disparities(_strata_table())  # the old behaviour: the test above can fail
    r = _row(d, "accuracy", "", "class1+gender", "worst_vs_best")
    assert _stratum(r["group"]) != _stratum(r["reference"])


def test_strata_prefer_attribute_columns_and_omit_a_missing_stratum_row():
    t = _strata_table()
    t = t[t["slice"] != "class1"].copy()  # no per-class rows: to_overall is left out
    t["class1"] = [_stratum(g) if s == "class1+gender" else "" for s, g in zip(t["slice"], t["group"])]
    t.loc[t["slice"] == "class1+gender", "group"] = t.loc[t["slice"] == "class1+gender", "group"].str.replace(
        "+", " & ", regex=False)  # labels that do not split: the column tells the class
    d = disparities(t, strata=("class1",))
    sl = d[(d["slice"] == "class1+gender") & (d["group"] != "")]
    assert set(sl["comparison"]) == {"worst_vs_best"} and len(sl) == 2
    for r in sl.itertuples():
        assert r.group.split(" & ")[0] == r.reference.split(" & ")[0]
