"""Issue 20, part 3 (one results model) for retrieval bias: retrieval.csv's figures are also rows of
the one long results table (metrics.csv), keyed by columns (analysis, query_set, query, k, desired,
metric, slice, the group's attribute values), with direction and interval method from the metric
registry; `clipfair collect` tabulates them across runs and `clipfair compare` reads runs that
have them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

RETRIEVAL_METRICS = {"share", "skew", "max_skew", "min_skew", "ndkl", "bias"}
OVERRIDES = ["progress=false", "taxonomies=[fairface_gender]", "precision_audit.n=8",
             "retrieval.enabled=true", "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5,all]",
             "retrieval.bootstrap.B=20", "retrieval.attributes=[race,gender,[race,gender]]"]


def _run(out: Path, cache: Path, extra: list[str]) -> Path:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    register_resolvers()
    overrides = [*OVERRIDES, *extra, f"cache.dir={cache}"]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    run_from_config(cfg, out, overrides)
    return out


# --------------------------------------------------------------------------- a ranking known by construction

# ten images, image i scores 0.95 - 0.05 i for query "q": the top 4 is M M F M (by hand)
GENDERS = ["Male", "Male", "Female", "Male", "Male", "Female", "Female", "Male", "Female", "Female"]
RACES = ["White", "White", "White", "Black", "White", "Black", "Indian", "Black", "Indian", "Indian"]


def test_result_rows_of_a_hand_ranking():
    from clipfair.methods import retrieval as R
    from clipfair.analyses import get_analysis
    from clipfair.analyses.engine import analysis_rows
    from clipfair.analyses.retrieval_bias import result_rows

    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(10)], "gender": GENDERS, "race": RACES})
    s = np.array([0.95 - 0.05 * j for j in range(10)])
    emb = np.stack([s, np.sqrt(1 - s ** 2)], axis=1).astype(np.float32)
    qs = R.QuerySet("hand", ("{}",), (R.Query("q", ("q",), "test"),))
    opts = R.RetrievalOptions(bootstrap=0, k=(4,), attributes=("gender", ("race", "gender")))
    df = R.retrieval_bias(table, emb, [qs], lambda t: np.array([[1.0, 0.0] for _ in t], np.float32), opts,
                          orders={"gender": ["Male", "Female"], "race": ["White", "Black", "Indian"]})
    rows = analysis_rows(get_analysis("retrieval_bias"), result_rows(df, table, opts.attributes), small_n=30)
    one = rows[(rows["query"] == "q") & (rows["desired"] == "dataset")]

    def get(metric, sl, group):
        r = one[(one["metric"] == metric) & (one["slice"] == sl) & (one["group"] == group)]
        assert len(r) == 1, (metric, sl, group)
        return r.iloc[0]

    # by hand: top 4 = M M F M; dataset shares M 5/10, F 5/10
    assert get("share", "gender", "Male")["value"] == pytest.approx(0.75)
    assert get("skew", "gender", "Female")["value"] == pytest.approx(math.log(0.25 / 0.5))
    assert get("max_skew", "gender", "all")["value"] == pytest.approx(math.log(0.75 / 0.5))
    assert get("bias", "gender", "Male - Female")["value"] == pytest.approx((3 - 1) / 4)
    # top 4 by race+gender: White+Male, White+Male, White+Female, Black+Male; White+Male is 3 of 10 images
    wm = get("share", "race+gender", "White+Male")
    assert (wm["value"], wm["race"], wm["gender"], wm["n"]) == (pytest.approx(0.5), "White", "Male", 10)
    assert wm["desired_share"] == pytest.approx(0.3) and bool(wm["small"])  # 0.3 x 4 < 5 expected; n 10 < 30
    assert get("max_skew", "race+gender", "all")["race"] == ""  # a whole-slice figure has no group value
    assert (one["analysis"] == "retrieval_bias").all() and (one["taxonomy"] == "hand").all()
    assert set(one["k"].astype(str)) == {"4"} and (one["count"].isna()).all()
    # no bootstrap: no interval, and the row says why
    assert one["ci_low"].isna().all() and one["interval_method"].str.startswith("none").all()


def test_analysis_rows_need_registered_metrics_and_keep_integer_columns():
    from clipfair.analyses import get_analysis
    from clipfair.analyses.base import AnalysisError
    from clipfair.analyses.engine import analysis_rows, append_rows

    a = get_analysis("retrieval_bias")
    own = pd.DataFrame({"taxonomy": ["qs"], "method": ["retrieval_bias"], "metric": ["no_such_metric"],
                        "slice": ["race"], "group": ["all"], "n": [3], "value": [0.5], "ci_low": [np.nan],
                        "ci_high": [np.nan]})
    with pytest.raises(AnalysisError, match="no_such_metric.*no MetricSpec declares"):
        analysis_rows(a, own)
    with pytest.raises(AnalysisError, match="lacks column"):
        analysis_rows(a, own.drop(columns=["value"]))
    rows = analysis_rows(a, own.assign(metric="ndkl"))
    assert (rows["direction"].iloc[0], rows["kind"].iloc[0], rows["interval"].iloc[0]) == \
        ("lower_is_better", "mean", "bootstrap") and bool(rows["small"].iloc[0])
    met = pd.DataFrame({"taxonomy": ["t"], "method": ["zero_shot"], "metric": ["accuracy"], "slice": ["overall"],
                        "group": ["all"], "n": [1234567], "count": [1234000], "value": [0.99], "ci_low": [0.9],
                        "ci_high": [1.0]})
    met.attrs["confidence"] = 0.9
    out = append_rows(met, [rows])
    assert list(out.columns[: len(met.columns)]) == list(met.columns) and out.attrs["confidence"] == 0.9
    assert str(out["count"].iloc[0]) == "1234000" and pd.isna(out["count"].iloc[1])  # never 1.234e+06
    assert out["n"].tolist() == [1234567, 3]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished runs with retrieval (different numbers of images), in one sweep folder."""
    root = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("cache")
    for i, limit in enumerate((80, 60)):
        _run(root / str(i), cache, [f"dataset.limit={limit}"])
    return root


def _metrics(folder: Path) -> pd.DataFrame:
    from clipfair.utility.outputs import read_csv

    return read_csv(folder / "metrics.csv", keep_default_na=False, na_values=[""], dtype={"k": str})


def _retrieval(folder: Path) -> pd.DataFrame:
    from clipfair.utility.outputs import read_csv

    return read_csv(folder / "retrieval.csv", keep_default_na=False, na_values=[""], dtype={"k": str})


@pytest.mark.slow
def test_metrics_rows_equal_retrieval_csv_for_the_same_keys(runs):
    from clipfair.stats.specs import metric_spec

    run = runs / "0"
    met, ret = _metrics(run), _retrieval(run)
    mine = met[met["analysis"] == "retrieval_bias"].copy()
    assert set(mine["metric"]) == RETRIEVAL_METRICS and set(ret["metric"]) == RETRIEVAL_METRICS
    # the classification rows are still there, first, with their own analysis; none of them is keyed by a query
    assert set(met.loc[met["taxonomy"] == "fairface_gender", "analysis"]) == {"zero_shot"}
    assert met.loc[met["analysis"] != "retrieval_bias", "query"].isna().all()

    # an independent join on the keys, spelled as retrieval.csv spells them
    per_value = mine["metric"].isin(["share", "skew", "bias"])
    left = mine.assign(attribute=mine["slice"], attribute_value=mine["group"].where(per_value, ""))
    right = ret.assign(attribute_value=ret["attribute_value"].fillna(""))
    keys = ["query_set", "query", "attribute", "attribute_value", "k", "desired", "metric"]
    assert not right.duplicated(keys).any() and not left.duplicated(keys).any()
    j = left.merge(right, on=keys, how="outer", suffixes=("", "_r"), indicator=True)
    assert (j["_merge"] == "both").all(), j.loc[j["_merge"] != "both", keys].head()
    assert len(j) == len(ret) == len(mine)

    def same(a: pd.Series, b: pd.Series) -> bool:
        a, b = a.to_numpy(float), b.to_numpy(float)
        return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))

    assert same(j["value"], j["value_r"]) and np.isneginf(j["value"]).any()  # -inf skews kept as -inf
    assert same(j["n"], j["n_images"])
    # ci_low / ci_high: the interval retrieval stands behind; the bootstrap spread beside it
    assert same(j["ci_low"], j["interval_low"]) and same(j["ci_high"], j["interval_high"])
    assert same(j["spread_low"], j["ci_low_r"]) and same(j["spread_high"], j["ci_high_r"])
    for c in ("null_mean", "excess", "p_value", "p_adjusted", "desired_share"):
        assert same(j[c], j[f"{c}_r"]), c
    assert (j["significant"].astype(str) == j["significant_r"].astype(str)).all()
    for c in ("p_method", "interval_method", "absent", "prompts"):
        assert (j[c].fillna("") == j[f"{c}_r"].fillna("")).all(), c
    assert (j["category"].fillna("") == j["category_r"].fillna("")).all()
    assert j["interval_method"].str.startswith("none").any() and j["ci_low"].isna().any()
    assert (j["taxonomy"] == j["query_set"]).all() and (j["method"] == "retrieval_bias").all()
    # the metrics of a whole attribute are the group "all"; Bias@K keeps retrieval's label of the difference
    whole = j[j["metric"].isin(["max_skew", "min_skew", "ndkl"])]
    assert (whole["group"] == "all").all() and len(whole)
    assert set(j.loc[j["metric"] == "bias", "group"]) == {"Male - Female"}

    # direction, kind and interval method from the metric registry, as declared
    for m, part in mine.groupby("metric"):
        spec = metric_spec(m)
        assert set(part["direction"]) == {spec.direction} and set(part["interval"]) == {spec.interval}
        assert set(part["kind"]) == {"mean"}
    want = {"share": "neutral", "skew": "neutral", "max_skew": "lower_is_better", "ndkl": "lower_is_better",
            "min_skew": "higher_is_better", "bias": "neutral"}
    assert dict(mine.groupby("metric")["direction"].first()) == want
    assert set(mine["interval"]) == {"bootstrap"}

    # each sliced attribute's value in its own column (never split from the name)
    inter = mine[(mine["slice"] == "race+gender") & mine["metric"].isin(["share", "skew"])]
    assert len(inter) and (inter["race"] + "+" + inter["gender"] == inter["group"]).all()
    gender = mine[(mine["slice"] == "gender") & mine["metric"].isin(["share", "skew"])]
    assert (gender["gender"] == gender["group"]).all() and gender["race"].isna().all()
    # small: a value expected fewer than 5 times in the top k (as the retrieval report flags it)
    sh = j[j["metric"].isin(["share", "skew"])]
    kk = np.where(sh["k"] == "all", sh["n_images"], pd.to_numeric(sh["k"], errors="coerce")).astype(float)
    assert (sh["small"].astype(bool).to_numpy() == (sh["desired_share"].to_numpy(float) * kk < 5)).all()

    # disparities.csv does not compare retrieval rows again (retrieval tests each row itself)
    disp = pd.read_csv(run / "disparities.csv", keep_default_na=False)
    assert not set(disp["metric"]) & RETRIEVAL_METRICS and len(disp)


@pytest.mark.slow
def test_collect_tabulates_a_retrieval_metric_across_runs(runs, tmp_path):
    from clipfair.run.collect import main as collect_main

    out = tmp_path / "collected"
    assert collect_main([str(runs), "--out", str(out), "--metric", "max_skew", "--key", "k=5",
                         "--key", "desired=dataset", "--slice", "race"]) == 0
    table = pd.read_csv(out / "collected.csv", keep_default_na=False, na_values=[""], dtype={"k": str})
    assert set(table["label"]) == {"dataset.limit=80", "dataset.limit=60"}
    for folder, label in (("0", "dataset.limit=80"), ("1", "dataset.limit=60")):
        own = _metrics(runs / folder)
        own = own[own["analysis"] == "retrieval_bias"]
        got = table[(table["label"] == label) & (table["analysis"] == "retrieval_bias")]
        keys = ["query_set", "query", "slice", "group", "k", "desired", "metric"]
        j = got.merge(own, on=keys, how="outer", suffixes=("", "_run"), indicator=True)
        assert (j["_merge"] == "both").all() and len(j) == len(own)
        v, w = j["value"].to_numpy(float), j["value_run"].to_numpy(float)
        assert np.all((v == w) | (np.isnan(v) & np.isnan(w)))
    # the two runs differ (different images), so the labels cannot be swapped unnoticed
    a = table[(table["label"] == "dataset.limit=80") & (table["metric"] == "max_skew")]
    b = table[(table["label"] == "dataset.limit=60") & (table["metric"] == "max_skew")]
    assert set(a["n"]) == {80} and set(b["n"]) == {60}
    # collected.md: one table per query (keys named), runs as rows, each cell its run's value and n
    md = (out / "collected.md").read_text()
    sec = md.split("max_skew of crime_related · clip_denigration_words · retrieval_bias by race (k=5, "
                   "query=thief, desired=dataset)")[1].split("###")[0]
    for label, n in (("dataset.limit=80", 80), ("dataset.limit=60", 60)):
        row = table[(table["label"] == label) & (table["metric"] == "max_skew") & (table["query"] == "thief")
                    & (table["k"] == "5") & (table["desired"] == "dataset") & (table["slice"] == "race")]
        assert len(row) == 1
        assert f"| {label} | {float(row['value'].iloc[0]):.4g} (n={n}) |" in sec
    assert "(mean over queries)" in md and "k=all" not in md and "desired=uniform" not in md
    assert "%" not in sec  # a mean on its own scale, not a percentage
    assert "Cells without an interval: none: resampled rankings repeat images" in sec  # MaxSkew: says why
    # the classification rows are collected as before
    acc = table[(table["metric"] == "accuracy") & (table["taxonomy"] == "fairface_gender")]
    assert set(acc["label"]) == {"dataset.limit=80", "dataset.limit=60"} and (acc["analysis"] == "zero_shot").all()


@pytest.mark.slow
def test_collect_bad_key_is_a_one_line_error(runs, tmp_path):
    from clipfair.run.collect import CollectError, write_collected

    with pytest.raises(CollectError, match="COLUMN=VALUE with COLUMN one of"):
        write_collected([runs], tmp_path / "c", metric="share", keys=["colour=red"])


@pytest.mark.slow
def test_compare_reads_runs_with_retrieval_rows(runs):
    from clipfair.methods.compare import compare_runs, run_slices_and_orders, load_run

    cmp = compare_runs([runs / "0", runs / "1"])
    assert set(cmp["taxonomy"]) == {"fairface_gender"}
    runs_ = cmp.attrs["runs"]  # label -> folder: one label per run, the baseline the first
    assert sorted(Path(v).name for v in runs_.values()) == ["0", "1"] and len(set(runs_)) == 2
    assert Path(runs_[cmp.attrs["baseline_run"]]).name == "0"
    assert set(cmp["variant_label"]) == {k for k, v in runs_.items() if Path(v).name == "1"}
    assert not set(cmp["metric"]) & RETRIEVAL_METRICS
    slices, _ = run_slices_and_orders(load_run(runs / "0"))
    met = _metrics(runs / "0")
    own = list(dict.fromkeys(met.loc[met["analysis"] == "zero_shot", "slice"]))
    assert [s if isinstance(s, str) else "+".join(s) for s in slices] == own
    # the compared values are the runs' zero-shot rows (different images: compared from metrics.csv)
    row = cmp[(cmp["metric"] == "accuracy") & (cmp["slice"] == "overall")].iloc[0]
    acc = met[(met["analysis"] == "zero_shot") & (met["metric"] == "accuracy") & (met["slice"] == "overall")]
    assert float(row["baseline_value"]) == pytest.approx(float(acc["value"].iloc[0]), abs=1e-6)
    assert not math.isnan(float(row["diff"]))


def test_a_retrieval_metric_without_a_spec_stays_out_of_the_results_table(caplog):
    from clipfair.analyses.retrieval_bias import result_rows

    base = dict(query_set="s", query="q", category="c", attribute="gender", attribute_value=np.nan, k=5,
                value=0.3, ci_low=0.1, ci_high=0.5, n_images=40, desired_share=np.nan, desired="dataset",
                absent="neg_inf", pool="", prompts="ensemble", interval_low=0.1, interval_high=0.5)
    ret = pd.DataFrame([{**base, "metric": "ndkl"}, {**base, "metric": "not_registered_skew"}])
    with caplog.at_level("WARNING"):
        rows = result_rows(ret, None, ["gender"])
    assert rows["metric"].tolist() == ["ndkl"] and rows["group"].tolist() == ["all"]
    assert "not_registered_skew have no MetricSpec" in caplog.text
    assert (rows["ci_low"].iloc[0], rows["spread_high"].iloc[0], rows["n"].iloc[0]) == (0.1, 0.5, 40)
