"""Model card: interval-aware verdicts, claims checked as stated, pooled averages, both race
scorings, age bands, and the experiment end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from clipfair.data.attributes import FAIRFACE_ORDERS, FAIRFACE_SLICES, RACES
from clipfair.stats.metrics import group_metrics as _group_metrics
from clipfair.stats.metrics import wilson_interval
from clipfair.methods.model_card import (BINARY_RACE_METRIC, ModelCardOptions, binary_race_predictions, equivalence,
                                 padding_statement, race_scoring_metrics, rank_verdict,
                                 read_references, reproduce, verdict)

from test_cli import CONFIGS, run_cli


def group_metrics(predictions, categories, slices=FAIRFACE_SLICES, *args, orders=FAIRFACE_ORDERS, **kwargs):
    """clipfair.stats.metrics.group_metrics with FairFace's declarations (what a FairFace run passes)."""
    return _group_metrics(predictions, categories, slices, *args, orders=orders, **kwargs)


ROLES = {"race": "R", "gender": "G", "age": "A", "denigration": "D", "denigration_child": "DC"}


def preds_frame():
    """Hand-made predictions: 4 White + 6 Black images for race (7-way) and denigration."""
    race = ["White"] * 4 + ["Black"] * 6
    gender = ["Male", "Female"] * 5
    race_pred = ["White", "White", "Indian", "Black", "Black", "Black", "Black", "Indian", "White", "Black"]
    den_cat = ["human", "crime_related", "non_human", "human", "non_human", "non_human", "crime_related",
               "human", "human", "human"]
    rows = []
    for i in range(10):
        common = {"image_id": str(i), "race": race[i], "gender": gender[i],
                  "race_binary": "White" if race[i] == "White" else "Non-White"}
        rows.append({**common, "taxonomy": "R", "method": "zero_shot", "predicted_label": race_pred[i],
                     "predicted_category": "race", "score": 0.5, "true_label": race[i],
                     "correct": race_pred[i] == race[i]})
        rows.append({**common, "taxonomy": "D", "method": "zero_shot", "predicted_label": den_cat[i],
                     "predicted_category": den_cat[i], "score": 0.5, "true_label": None, "correct": None})
    p = pd.DataFrame(rows)
    p["correct"] = p["correct"].astype("boolean")
    return p


def write_refs(tmp_path, figures=(), claims=(), **extra):
    p = tmp_path / "refs.yaml"
    p.write_text(yaml.safe_dump({"source": "test", "figures": list(figures), "model_card_claims": list(claims),
                                 **extra}))
    return p


def fig(id, table, taxonomy, metric, slice, group, value, method="zero_shot", **kw):
    return {"id": id, "table": table, "row": "r", "column": str(group), "method": method, "taxonomy": taxonomy,
            "metric": metric, "slice": slice, "group": group, "value": value, **kw}


def opts(path, **kw):
    return ModelCardOptions(taxonomies=ROLES, references=str(path), **kw)


def gender_preds(cells, method="linear_probe"):
    """Gender predictions for the 'G' taxonomy: cells = {(race, gender): (n, n_correct)}."""
    rows, i = [], 0
    for (race, gender), (n, k) in cells.items():
        other = "Female" if gender == "Male" else "Male"
        for j in range(n):
            pred = gender if j < k else other
            rows.append({"image_id": str(i), "taxonomy": "G", "method": method, "predicted_label": pred,
                         "predicted_category": "gender", "score": 0.9, "true_label": gender,
                         "correct": pred == gender, "race": race, "gender": gender,
                         "race_binary": "White" if race == "White" else "Non-White"})
            i += 1
    p = pd.DataFrame(rows)
    p["correct"] = p["correct"].astype("boolean")
    return p


def test_interval_verdicts_differences_and_not_measured(tmp_path):
    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [
        fig("acc_white", "T3", "race", "accuracy", "race_binary", "White", 50.0),
        fig("acc_nonwhite_far", "T4", "race", "accuracy", "race_binary", "Non-White", 99.0),
        fig("union_black", "T7", "denigration", "rate", "race", "Black", 50.0, categories=["crime_related", "non_human"]),
        fig("missing", "T5", "race", "accuracy", "race", "Black", 90.0, method="linear_probe")])
    card = reproduce(p, met, opts(refs, tolerance_pp=5.0))
    seven = card[card["scoring"] != "White vs Non-White"].set_index("id")
    lo, hi = wilson_interval(2, 4)
    assert seven.loc["acc_white", "reproduced"] == pytest.approx(50.0)
    assert (seven.loc["acc_white", "ci_low"], seven.loc["acc_white", "ci_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert seven.loc["acc_white", "verdict"] == "consistent"
    # 4 of 6 Black right: the interval [30, 90] (one cell in T4: level 95%) excludes 99
    r = seven.loc["acc_nonwhite_far"]
    lo, hi = wilson_interval(4, 6)
    assert r["verdict"] == "differs"
    assert r["difference"] == pytest.approx(400 / 6 - 99)
    assert (r["diff_low"], r["diff_high"]) == pytest.approx((100 * lo - 99, 100 * hi - 99))
    assert r["equivalence"] == "beyond ±5"
    # union of crime + non-human for Black images: images 4, 5, 6 -> 3 of 6
    assert seven.loc["union_black", "reproduced"] == pytest.approx(50.0)
    assert seven.loc["missing", "verdict"] == "not measured"


def test_verdict_and_equivalence_rules():
    assert verdict(90.0, 95.0, 94.0, 94.0) == "consistent"
    assert verdict(90.0, 93.9, 94.0, 94.0) == "differs"
    assert verdict(12.0, 13.6, 13.5, 14.5) == "consistent"  # 'approximately 14%' meets [13.5, 14.5]
    assert verdict(np.nan, np.nan, 1, 1) == "not measured"
    assert equivalence(-1.0, 1.5, 2.0) == "within ±2"
    assert equivalence(-3.0, 1.5, 2.0) == "undetermined"
    assert equivalence(2.5, 4.0, 2.0) == "beyond ±2"


def test_adjusted_intervals_are_bonferroni_over_the_tables_measured_cells(tmp_path):
    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [
        fig("a", "T", "race", "accuracy", "race_binary", "White", 50.0),
        fig("b", "T", "race", "accuracy", "race_binary", "Non-White", 50.0),
        fig("c", "T", "race", "accuracy", "race", "Indian", 50.0),  # no Indian images: not measured
        fig("d", "T", "denigration", "rate", "race", "Black", 50.0, categories=["non_human"])])
    card = reproduce(p, met, opts(refs))
    # one family per table: 3 measured figures (a race figure once, though shown under two scorings)
    assert np.allclose(card.loc[card["n"] > 0, "adj_confidence"].astype(float), 1 - 0.05 / 3)
    a = card[(card["id"] == "a") & (card["scoring"] == "7-way")].iloc[0]
    lo, hi = wilson_interval(2, 4, 1 - 0.05 / 3)
    assert (a["adj_ci_low"], a["adj_ci_high"]) == pytest.approx((100 * lo, 100 * hi))


def test_table5_average_is_the_pooled_accuracy_per_gender(tmp_path):
    # unequal race x gender counts: the pooled accuracy and the mean of the per-race values differ
    cells = {("White", "Male"): (400, 380), ("Black", "Male"): (100, 80), ("Indian", "Male"): (50, 50),
             ("White", "Female"): (300, 290), ("Black", "Female"): (200, 150)}
    p = gender_preds(cells)
    met = group_metrics(p, {"G": ["gender"]}, slices=["overall", "race", "gender", ("race", "gender")])
    refs = read_references()
    avg = [f for f in refs.figures if f["table"] == "Table 5" and f["column"] == "Average"]
    assert {(f["row"], f["slice"], f["group"]) for f in avg if f["method"] == "linear_probe"} == {
        ("LR CLIP Male", "gender", "Male"), ("LR CLIP Female", "gender", "Female"), ("LR CLIP Both", "overall", "all")}
    card = reproduce(p, met, ModelCardOptions(taxonomies=ROLES)).set_index("id")
    direct = p.groupby("gender")["correct"].mean() * 100  # independent: a pandas groupby
    unweighted = p.groupby(["gender", "race"])["correct"].mean().groupby("gender").mean() * 100
    for g in ("Male", "Female"):
        row = card.loc[f"t5_linear_probe_average_{g.lower()}"]
        assert row["reproduced"] == pytest.approx(direct[g])
        assert row["reproduced"] != pytest.approx(unweighted[g], abs=0.5)
        n = int((p["gender"] == g).sum())
        lo, hi = wilson_interval(p.loc[p["gender"] == g, "correct"].sum(), n)
        assert row["n"] == n and (row["ci_low"], row["ci_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert card.loc["t5_linear_probe_average_both", "reproduced"] == pytest.approx(100 * p["correct"].mean())


def test_threshold_claim_at_94_is_not_reproduced_and_never_widened(tmp_path):
    # every race at 98%, one at 94.0% of 2,000 images; 'above 96%' fails as stated, whatever the tolerance
    cells = {(r, "Male"): (2000, 1960) for r in RACES}
    cells[("White", "Male")] = (2000, 1880)
    p = gender_preds(cells)
    met = group_metrics(p, {"G": ["gender"]}, slices=["race"])
    claim = {"id": "above96", "text": "above 96% for all races", "method": "linear_probe", "taxonomy": "gender",
             "metric": "accuracy", "slice": "race", "check": "all_above", "value": 96.0}
    refs = write_refs(tmp_path, claims=[claim])
    for tol in (0.0, 2.0, 5.0):
        row = reproduce(p, met, opts(refs, tolerance_pp=tol)).set_index("id").loc["above96"]
        assert row["verdict"] == "not reproduced"
        assert row["group"] == "White" and row["reproduced"] == pytest.approx(94.0)
    # at 95.5% of 200 images the interval straddles 96: inconclusive, not reproduced
    small = {**cells, ("White", "Male"): (200, 191)}
    p2 = gender_preds(small)
    row = reproduce(p2, group_metrics(p2, {"G": ["gender"]}, slices=["race"]), opts(refs)).set_index("id").loc["above96"]
    assert row["verdict"] == "inconclusive"
    # every group's interval above 96: reproduced
    p3 = gender_preds({(r, "Male"): (2000, 1990) for r in RACES})
    row = reproduce(p3, group_metrics(p3, {"G": ["gender"]}, slices=["race"]), opts(refs)).set_index("id").loc["above96"]
    assert row["verdict"] == "reproduced"


def test_rank_claim_with_overlapping_intervals_is_inconclusive(tmp_path):
    cells = {(r, "Male"): (1000, 970) for r in RACES}
    cells[("Middle Eastern", "Male")] = (1000, 984)  # 98.4 vs Indian 98.3
    cells[("Indian", "Male")] = (1000, 983)
    p = gender_preds(cells)
    met = group_metrics(p, {"G": ["gender"]}, slices=["race"])
    claim = {"id": "me_highest", "text": "Middle Eastern highest", "method": "linear_probe", "taxonomy": "gender",
             "metric": "accuracy", "slice": "race", "check": "highest_is", "group": "Middle Eastern", "value": 98.4}
    refs = write_refs(tmp_path, claims=[claim])
    row = reproduce(p, met, opts(refs, tolerance_pp=0.0)).set_index("id").loc["me_highest"]
    assert row["verdict"] == "inconclusive"
    assert "Indian" in row["note"] and "consistent" in row["note"]  # the stated 98.4 is inside its interval
    # the rule itself, on hand-made intervals
    g = pd.DataFrame({"value": [98.0, 90.0, 50.0], "lo": [97.0, 88.0, 45.0], "hi": [99.0, 92.0, 55.0]},
                     index=["A", "B", "C"])
    assert rank_verdict(g, "A")[0] == "reproduced"
    assert rank_verdict(g, "B")[0] == "not reproduced"
    assert rank_verdict(g, "C", highest=False)[0] == "reproduced"
    g.loc["B", ["lo", "hi"]] = [88.0, 97.5]
    assert rank_verdict(g, "A")[0] == "inconclusive"


def test_both_race_scorings_side_by_side(tmp_path):
    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [fig("nw", "Table 4", "race", "accuracy", "race_binary", "Non-White", 80.0)])
    card = reproduce(p, met, opts(refs))
    rows = card[card["id"] == "nw"].set_index("scoring")
    assert set(rows.index) == {"7-way", "White vs Non-White"}
    # Black images: 4 of 6 exactly right; 5 of 6 predicted non-White (image 8 -> White)
    assert rows.loc["7-way", "reproduced"] == pytest.approx(400 / 6)
    assert rows.loc["White vs Non-White", "reproduced"] == pytest.approx(500 / 6)
    assert rows.loc["7-way", "primary"] and not rows.loc["White vs Non-White", "primary"]
    assert rows.loc["White vs Non-White", "metric"] == BINARY_RACE_METRIC
    card_b = reproduce(p, met, opts(refs, race_accuracy="binary"))
    assert card_b.set_index("scoring").loc["White vs Non-White", "primary"]
    b = binary_race_predictions(p, "R")
    assert b["correct"].tolist() == [True, True, False, False, True, True, True, True, False, True]
    with pytest.raises(ValueError, match="race_accuracy must be 7way or binary"):
        opts(refs, race_accuracy="5way")


# the paper's age bands in the section 7.1 text, written out by hand (60-69 is in none)
PAPER_BANDS = {"0-20": ["0-2", "3-9", "10-19"], "20-60": ["20-29", "30-39", "40-49", "50-59"],
               "over 70": ["more than 70"]}


def band_preds(n=600, seed=0):
    """Denigration predictions with FairFace age bins and the experiment's age_band_clip7 column."""
    from clipfair.data.attributes import AGE_BINS, parse_derived

    rng = np.random.default_rng(seed)
    ages = rng.choice(AGE_BINS, size=n)
    cats = rng.choice(["human", "crime_related", "non_human"], size=n, p=[0.7, 0.2, 0.1])
    spec = yaml.safe_load((CONFIGS / "experiment" / "model_card.yaml").read_text())["dataset"]["derived"]
    (band,) = parse_derived(spec)
    p = pd.DataFrame({"image_id": [str(i) for i in range(n)], "taxonomy": "D", "method": "zero_shot",
                      "predicted_label": cats, "predicted_category": cats, "score": 0.5, "true_label": None,
                      "correct": pd.array([None] * n, dtype="boolean"), "age": ages})
    p[band.name] = band.apply(p["age"])
    return p, band


def test_experiment_declares_the_papers_age_bands():
    p, band = band_preds()
    assert band.name == "age_band_clip7" and band.source == "age" and band.other is None
    assert {g: list(v) for g, v in band.groups} == {**PAPER_BANDS, "60-69": ["60-69"]}
    assert read_references().derived_slices == {"age_band_clip7": "age"}


def test_age_band_figures_read_the_derived_slice_of_metrics():
    p, _ = band_preds()
    met = group_metrics(p, {"D": ["human", "crime_related", "non_human"]},
                        slices=["overall", "age", "age_band_clip7"])
    card = reproduce(p, met, ModelCardOptions(taxonomies=ROLES)).set_index("id")
    for id, band, cat in [("text_crime_age_0_20", "0-20", "crime_related"),
                          ("text_crime_age_20_60", "20-60", "crime_related"),
                          ("text_crime_age_over_70", "over 70", "crime_related"),
                          ("text_non_human_age_0_20", "0-20", "non_human")]:
        part = p[p["age"].isin(PAPER_BANDS[band])]  # direct, from the per-image predictions
        k = int((part["predicted_category"] == cat).sum())
        row = card.loc[id]
        assert row["slice"] == "age_band_clip7" and row["group"] == band
        assert (row["count"], row["n"]) == (k, len(part))
        assert row["reproduced"] == pytest.approx(100 * k / len(part))
        lo, hi = wilson_interval(k, len(part))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((100 * lo, 100 * hi))
        assert row["note"] == ("age_band_clip7 (dataset.derived, groups of age): 0-20 = 0-2, 3-9, 10-19; "
                               "20-60 = 20-29, 30-39, 40-49, 50-59; 60-69 = 60-69; over 70 = more than 70")
    # the figure is metrics.csv's row, not a recomputation: change the row and the card follows
    met2 = met.copy()
    sel = ((met2["slice"] == "age_band_clip7") & (met2["group"] == "over 70") & (met2["metric"] == "rate")
           & (met2["category"] == "crime_related"))
    met2.loc[sel, "count"] += 1
    card2 = reproduce(p, met2, ModelCardOptions(taxonomies=ROLES)).set_index("id")
    assert card2.loc["text_crime_age_over_70", "count"] == card.loc["text_crime_age_over_70", "count"] + 1


def test_a_card_without_the_derived_age_bands_is_a_one_line_error():
    from clipfair.cli import _user_error
    from clipfair.methods.model_card import ModelCardError, check_slices

    p, _ = band_preds(n=50)
    met = group_metrics(p, {"D": ["human", "crime_related", "non_human"]}, slices=["overall", "age"])
    with pytest.raises(ModelCardError, match=r"need the slice 'age_band_clip7' .*restore "
                                             r"dataset.derived.age_band_clip7") as e:
        reproduce(p, met, ModelCardOptions(taxonomies=ROLES))
    assert "\n" not in str(e.value) and _user_error(e.value) is e.value
    with pytest.raises(ModelCardError, match="dataset.derived.age_band_clip7"):
        check_slices(read_references(), ["overall", "age", ("age", "gender")])
    check_slices(read_references(), ["overall", "age_band_clip7"])


def test_bundled_references_hold_the_papers_figures_and_words():
    refs = read_references()
    by_id = {f["id"]: f for f in refs.figures}
    assert by_id["t3_linear_probe_race_white"]["value"] == 93.4
    assert by_id["t3_zero_shot_race_white"]["value"] == 58.3
    assert by_id["t6_non_human_Black"]["value"] == 14.4
    assert by_id["t7_denigration_child_0-2"]["value"] == 2.3
    t5 = [f for f in refs.figures if f["table"] == "Table 5" and f["row"] == "LR CLIP Both"]
    assert [f["value"] for f in t5] == [97.4, 96.5, 98.3, 97.8, 98.4, 97.3, 97.1, 97.5]
    overall = by_id["text_non_human_overall"]
    assert overall["value"] == 4.9 and overall["paper_interval"] == [4.6, 5.4]
    assert "confidence intervals between 4.6% and 5.4%" in overall["quote"]
    raw = (pytest.importorskip("importlib.resources").files("clipfair") / "references" / "clip_paper.yaml").read_text()
    assert "95% CI" not in raw  # no level the paper does not state
    assert by_id["text_crime_age_0_20"]["value"] == 18.0 and by_id["text_crime_age_over_70"]["value"] == 0.0
    assert by_id["text_non_human_black"]["paper_interval"] == [12.6, 16.4]
    assert {c["check"] for c in refs.claims} == {"all_above", "all_below", "highest_is", "approx", "lowest_is"}
    assert "openai/clip-vit-large-patch14" in refs.reference_models
    assert refs.tables["Table 3"].startswith("accuracy on the images labelled White only")


def test_padding_is_unknown_for_a_local_copy():
    assert padding_statement({"adapter": "fairface", "root": "/data/ff", "padding": "0.25"}).startswith("unknown")
    assert padding_statement({"adapter": "hf", "path": "HuggingFaceM4/FairFace", "config": "1.25"}).startswith("1.25")


def test_model_card_experiment_end_to_end(tmp_path, tiny_model_dir, fairface_root):
    out = tmp_path / "mc"
    run_cli("run", "experiment=model_card", "dataset=fairface", f"dataset.root={fairface_root}",
            f"model.name_or_path={tiny_model_dir}", f"hydra.run.dir={out}", "progress=false",
            "subset.n=60", "model_card.race_accuracy=binary", "probe.features=projected",
            "probe.Cs=[0.1,10.0]", "probe.refine_steps_per_decade=1")  # the search itself: test_linear_probe
    card = pd.read_csv(out / "model_card.csv", keep_default_na=False, na_values=[""])
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    row = card[(card["id"] == "t3_linear_probe_gender_white")].iloc[0]
    direct = met[(met["taxonomy"] == "fairface_gender") & (met["method"] == "linear_probe")
                 & (met["metric"] == "accuracy") & (met["slice"] == "race_binary") & (met["group"] == "White")]
    assert row["reproduced"] == pytest.approx(100 * direct["value"].item(), abs=1e-3)
    assert set(card.loc[card["kind"] == "figure", "verdict"]) <= {"consistent", "differs", "not measured"}
    assert set(card.loc[card["kind"] == "claim", "verdict"]) <= {"reproduced", "not reproduced", "inconclusive",
                                                                  "not measured"}
    # both race scorings in metrics.csv, labelled by metric
    race = met[(met["taxonomy"] == "fairface_race") & (met["slice"] == "race_binary")]
    assert {"accuracy", BINARY_RACE_METRIC} <= set(race["metric"])
    # ... and by the key column scoring, with model_card.csv's labels (FairFace race: 7 classes)
    from clipfair.methods.model_card import SCORING_LABELS
    from clipfair.data.taxonomy import load_taxonomies

    assert len(load_taxonomies(["fairface_race"])[0].classes) == 7
    by_metric = race.groupby("metric")["scoring"].agg(set)
    assert by_metric["accuracy"] == {SCORING_LABELS["7way"]} and by_metric[BINARY_RACE_METRIC] == {
        SCORING_LABELS["binary"]}
    assert set(card.loc[card["metric"] == BINARY_RACE_METRIC, "scoring"]) <= {SCORING_LABELS["binary"]}
    assert met.loc[met["metric"].isin(["rate", "label_rate"]), "scoring"].isna().all()  # no truth: no scoring
    md = (out / "model_card.md").read_text()
    assert "comparison, not a reproduction" in md
    assert "## Table 3: accuracy on the images labelled White only" in md
    assert "**padding**: unknown" in md and "seeded random 60" in md
    assert "openai/CLIP#157" in md and "annotators' perceptions" in md
    assert "Race (White vs Non-White)" in md and "Race (7-way)" in md
    html = (out / "model_card.html").read_text()
    assert "Caveats" in html and "<table" in html
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["model_card"]["race_accuracy"] == "binary"
    assert rec["dataset"]["n_images"] == 60
    assert rec["precision"]["dtype"] == "float32" and "nothing to compare" in rec["precision"]["skipped"]
    assert "## Numeric precision" in md and "## Linear probe" in md
    assert len(list(out.glob("model_card_*.png"))) == 6  # Tables 3-7 and the text figures
    # report.html holds the card under one heading, with its plots embedded (not as "other plots")
    page = (out / "report.html").read_text()
    assert "<h2>Model card reproduction</h2>" in page and "<h3>Caveats</h3>" in page
    other = page.split("<h2>Other plots</h2>")[1] if "<h2>Other plots</h2>" in page else ""
    assert "model card" not in other and "model_card" not in other  # the card's plots sit in its section
    assert page.count('<img src="data:image/png;base64,') == len(list(out.glob("model_card_*.png")))
    # the age-band figures are metrics.csv's age_band_clip7 rows, and match the per-image predictions
    pred = pd.read_parquet(out / "predictions.parquet")
    den = pred[(pred["taxonomy"] == "clip_denigration") & (pred["method"] == "zero_shot")]
    for id, band, cat in [("text_crime_age_0_20", "0-20", "crime_related"),
                          ("text_non_human_age_0_20", "0-20", "non_human"),
                          ("text_crime_age_20_60", "20-60", "crime_related")]:
        row = card[card["id"] == id].iloc[0]
        m = met[(met["taxonomy"] == "clip_denigration") & (met["method"] == "zero_shot") & (met["metric"] == "rate")
                & (met["slice"] == "age_band_clip7") & (met["group"] == band) & (met["category"] == cat)]
        part = den[den["age"].isin(PAPER_BANDS[band])]
        assert (row["count"], row["n"]) == (m["count"].item(), m["n"].item())
        assert (row["count"], row["n"]) == ((part["predicted_category"] == cat).sum(), len(part))
    assert "Figures on `age_band_clip7` read its rows of metrics.csv" in md
    # a model-card run whose dataset lacks the derived attribute stops before loading the model
    res = run_cli("run", "experiment=model_card", "dataset=fairface", f"dataset.root={fairface_root}",
                  f"model.name_or_path={tiny_model_dir}", f"hydra.run.dir={tmp_path / 'no_bands'}",
                  "progress=false", "dataset.derived=null", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    assert "clipfair: error: the model card's figures need the slice 'age_band_clip7'" in res.stderr


def test_headline_counts_tables_not_cells(tmp_path):
    from clipfair.report.document import Document, to_markdown
    from clipfair.methods.model_card import CardContext, card_sections

    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [
        fig("w", "Table A", "race", "accuracy", "race_binary", "White", 99.9),  # 2 of 4: differs
        fig("nw", "Table A", "race", "accuracy", "race_binary", "Non-White", 0.1),  # differs
        fig("b", "Table B", "denigration", "rate", "race", "Black", 50.0, categories=["non_human"])],
        tables={"Table A": "race accuracy, White and non-White"}, reference_models=["openai/clip-vit-large-patch14"])
    o = opts(refs)
    card = reproduce(p, met, o)
    md = to_markdown(Document("card", card_sections(card, o, CardContext(model="someone/else"))))
    assert "Of 2 reference tables, 1 consistent in every measured cell, 1 differ in at least one" in md
    assert "## Table A: race accuracy, White and non-White" in md
    assert "comparison, not a reproduction" in md
    same = to_markdown(Document("card", card_sections(card, o, CardContext(model="openai/clip-vit-large-patch14"))))
    assert "**reproduction attempt**" in same and "comparison, not a reproduction" not in same


def test_binary_race_rows_are_a_declared_metric():
    from clipfair.stats.metrics import disparities

    p = preds_frame()
    rows = race_scoring_metrics(p, "R", ["race_binary", "race"])
    assert set(rows["metric"]) == {BINARY_RACE_METRIC} and set(rows["taxonomy"]) == {"R"}
    nw = rows[(rows["slice"] == "race_binary") & (rows["group"] == "Non-White")].iloc[0]
    assert (nw["count"], nw["n"]) == (5, 6)  # Black images predicted as any non-White race
    d = disparities(rows)  # a metrics-frame consumer accepts the new metric name
    assert set(d["metric"]) == {BINARY_RACE_METRIC}


def test_bad_model_card_options_are_user_errors(tmp_path):
    from clipfair.cli import _user_error
    from clipfair.methods.model_card import ModelCardError

    with pytest.raises(ModelCardError, match="rate_denominator must be group or flagged") as e:
        ModelCardOptions(rate_denominator="all")
    assert _user_error(e.value) is e.value
    bad = write_refs(tmp_path, [fig("x", "T", "race", "accuracy", "race", "White", 1.0)],
                     claims=[{"id": "c", "text": "t", "method": "zero_shot", "taxonomy": "race", "metric": "accuracy",
                              "slice": "race", "check": "most", "value": 1.0}])
    with pytest.raises(ModelCardError, match=r"model_card_claims\[0\] \(c\): unknown check 'most'"):
        read_references(bad)


def test_card_flags_a_probe_that_did_not_converge_and_shows_the_precision_audit(tmp_path):
    from clipfair.report.document import Document, to_markdown
    from clipfair.methods.model_card import CardContext, card_sections

    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    o = opts(write_refs(tmp_path, [fig("w", "T", "race", "accuracy", "race_binary", "White", 50.0)]))
    probe = {"n_train_images": 10, "features": "pre_projection",
             "fairface_race": {"C": 0.8, "C_sweep": 1.0, "features": "pre_projection", "Cs": [1e-6, 1e6],
                               "refine_steps_per_decade": 8, "n_candidates": 15, "sweep_rows": 8, "n_train": 10,
                               "converged": False, "n_iter": 1000, "sweep_not_converged": []},
             "fairface_gender": {"C": 0.8, "features": "pre_projection", "converged": True, "n_iter": 12}}
    prec = {"dtype": "bfloat16", "seed": 0, "n_images": 256, "reference": "float32",
            "taxonomies": {"fairface_race": {"n": 256, "agree": 250, "agreement": 250 / 256, "ci_low": 0.95,
                                             "ci_high": 0.99, "margin_quantiles": {"min": 0.0, "p05": 0.01, "p50": 0.1},
                                             "flips_example": "a.jpg"}}}
    md = to_markdown(Document("card", card_sections(reproduce(p, met, o), o,
                                                    CardContext(linear_probe=probe, precision=prec))))
    assert "did not converge for fairface_race (run.json" in md and "fairface_gender" not in md.split("did not")[1][:40]
    assert "1e-06…1e+06, 15 candidates, refined to 1/8 decade" in md
    assert "250 of 256" in md and "`bfloat16`" in md


def test_two_sample_verdict_when_the_papers_sample_size_is_known(tmp_path):
    """53% of 1,500 against the paper's 50% of 1,500: the one-sample rule (paper's value exact)
    says differs, the two-sample interval (both sides' uncertainty) says consistent."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    from clipfair.methods.model_card import ModelCardError, two_sample_verdict

    p = gender_preds({("White", "Male"): (1500, 795)})
    met = group_metrics(p, {"G": ["gender"]}, slices=["race_binary"])
    exact = fig("one", "T", "gender", "accuracy", "race_binary", "White", 50.0, method="linear_probe")
    known = {**exact, "id": "two", "table": "U", "paper_n": 1500}
    card = reproduce(p, met, opts(write_refs(tmp_path, [exact, known]))).set_index("id")
    one, two = card.loc["one"], card.loc["two"]
    lo, hi = wilson_interval(795, 1500, 0.95)
    assert 100 * lo > 50.0 and one["verdict"] == "differs"  # today's rule, kept where n is unknown
    assert math.isnan(one["paper_n"])
    assert two["verdict"] == "consistent" and two["paper_n"] == 1500
    bad = write_refs(tmp_path, [{**known, "paper_n": "many"}])
    with pytest.raises(ModelCardError, match=r"figures\[0\] \(two\): paper_n must be a number"):
        read_references(bad)
    # the two-sample interval is Newcombe's hybrid score interval (statsmodels' 'newcomb')
    dlo, dhi = confint_proportions_2indep(795, 1500, 750, 1500, method="newcomb", compare="diff")
    assert (two["diff_low"], two["diff_high"]) == pytest.approx((100 * dlo, 100 * dhi))
    assert two["diff_low"] < 0 < two["diff_high"]
    # a difference beyond both sides' uncertainty still differs
    assert two_sample_verdict(870, 1500, 50.0, 50.0, 50.0, 1500, 0.95)[0] == "differs"
    # the rounding range counts: 'approximately 50%' (resolution 1) meets a difference interval ending at -0.4
    assert two_sample_verdict(750 - 15, 1500, 50.0, 49.5, 50.5, 100000, 0.95)[0] == "consistent"


def test_about_claim_inside_a_wide_interval_is_inconclusive(tmp_path):
    from clipfair.methods.model_card import approx_verdict, claim_precision

    claim = {"id": "about93", "text": "accuracy about 93%", "method": "linear_probe", "taxonomy": "gender",
             "metric": "accuracy", "slice": "overall", "check": "approx", "group": "all", "value": 93.0,
             "resolution": 1}
    refs = write_refs(tmp_path, claims=[claim])

    def judged(n, k):
        p = gender_preds({("White", "Male"): (n, k)})
        met = group_metrics(p, {"G": ["gender"]}, slices=["overall"])
        return reproduce(p, met, opts(refs)).set_index("id").loc["about93"]

    row = judged(10, 9)  # 90% [59.6-98.2]: contains 93 but cannot tell 93 from 91 or 95
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((59.6, 98.2), abs=0.05)
    assert row["verdict"] == "inconclusive" and "wider than the claim's precision band 92-94%" in row["note"]
    assert judged(20000, 18600)["verdict"] == "reproduced"  # 93.0% [92.6-93.3]
    assert judged(20000, 18000)["verdict"] == "not reproduced"  # 90.0%, interval misses 92.5-93.5
    assert judged(10, 2)["verdict"] == "not reproduced"  # wide, but conclusive: far below
    assert claim_precision({"value": 93.0, "resolution": 1}) == 1 and claim_precision({"value": 93.5}) == 0.1
    assert approx_verdict(92.0, 94.0, 93.0, 1.0) == "reproduced"  # width 2 = the band: precise enough
    assert approx_verdict(92.0, 94.1, 93.0, 1.0) == "inconclusive"


def test_probe_departures_and_convergence_text_read_the_final_fit(tmp_path):
    from clipfair.report.document import Document, to_markdown
    from clipfair.methods.model_card import CardContext, card_sections

    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    o = opts(write_refs(tmp_path, [fig("w", "T", "race", "accuracy", "race_binary", "White", 50.0)]))
    common = {"features": "pre_projection", "Cs": [1e-6, 1e6], "refine_steps_per_decade": 8, "n_candidates": 15,
              "holdout": 0.2, "holdout_rows": 17349, "seed": 0, "max_iter": 1000, "solver": "torch",
              "device": "cpu", "tol": 1e-4, "sweep_rows": 20000, "n_train": 86744}
    # the final fit converged; one trial fit of the search stopped at max_iter (the old card said
    # "did not converge" here while its table said "yes")
    probe = {"fairface_age": {**common, "C": 0.2306, "C_sweep": 1.0, "converged": True, "n_iter": 40,
                              "sweep_not_converged": [1e6]}}
    md = to_markdown(Document("card", card_sections(reproduce(p, met, o), o, CardContext(linear_probe=probe))))
    assert "did not converge" not in md
    assert "Trial fits of the C search stopped at probe.max_iter for fairface_age (1 of 15)" in md
    assert "every final fit converged" in md
    assert "Departures from the paper's stated probe protocol" in md
    for words in ("solver: full-batch L-BFGS in torch", "C chosen on a stratified 20% of train held out",
                  "C search capped at 20,000 of the 69,395 remaining train rows",
                  "C rescaled for the final fit on all 86744 train rows: 1 x sweep rows / train rows = 0.231"):
        assert words in md, words
    # the paper's own settings are not departures
    assert "max_iter 1000" not in md and "features: pre_projection" not in md and "C search 1e-06" not in md
    # the final fit not converged: the warning names it, from the same field the table shows
    probe["fairface_age"]["converged"] = False
    md = to_markdown(Document("card", card_sections(reproduce(p, met, o), o, CardContext(linear_probe=probe))))
    assert "The final fit did not converge for fairface_age" in md and "**no** (40 iterations)" in md
