"""Model-card reproduction: the comparison logic on fixed inputs, and the experiment end to end."""

import json

import pandas as pd
import pytest
import yaml

from clipfair.metrics import group_metrics, wilson_interval
from clipfair.model_card import ModelCardOptions, binary_race_predictions, load_references, reproduce

from test_cli import run_cli


def preds_frame():
    """Hand-made predictions: 4 White + 6 Black images for race (7-way) and denigration."""
    race = ["White"] * 4 + ["Black"] * 6
    gender = ["Male", "Female"] * 5
    ids = [str(i) for i in range(10)]
    race_pred = ["White", "White", "Indian", "Black", "Black", "Black", "Black", "Indian", "White", "Black"]
    den_cat = ["human", "crime_related", "non_human", "human", "non_human", "non_human", "crime_related",
               "human", "human", "human"]
    rows = []
    for i in range(10):
        rows.append({"image_id": ids[i], "taxonomy": "R", "method": "zero_shot", "predicted_label": race_pred[i],
                     "predicted_category": "race", "score": 0.5, "true_label": race[i],
                     "correct": race_pred[i] == race[i], "race": race[i], "gender": gender[i],
                     "race_binary": "White" if race[i] == "White" else "Non-White"})
        rows.append({"image_id": ids[i], "taxonomy": "D", "method": "zero_shot", "predicted_label": den_cat[i],
                     "predicted_category": den_cat[i], "score": 0.5, "true_label": None, "correct": None,
                     "race": race[i], "gender": gender[i],
                     "race_binary": "White" if race[i] == "White" else "Non-White"})
    p = pd.DataFrame(rows)
    p["correct"] = p["correct"].astype("boolean")
    return p


def write_refs(tmp_path):
    refs = {"source": "test", "figures": [
        {"id": "acc_white", "table": "T3", "row": "ZS", "column": "Race", "method": "zero_shot", "taxonomy": "race",
         "metric": "accuracy", "slice": "race_binary", "group": "White", "value": 50.0},
        {"id": "acc_nonwhite", "table": "T4", "row": "ZS", "column": "Race", "method": "zero_shot",
         "taxonomy": "race", "metric": "accuracy", "slice": "race_binary", "group": "Non-White", "value": 80.0},
        {"id": "union_black", "table": "T7", "row": "default", "column": "Black", "method": "zero_shot",
         "taxonomy": "denigration", "metric": "rate", "slice": "race", "group": "Black", "value": 50.0,
         "categories": ["crime_related", "non_human"]},
        {"id": "mean_race", "table": "T5", "row": "ZS", "column": "Average", "method": "zero_shot",
         "taxonomy": "race", "metric": "accuracy", "slice": "race", "group": "mean", "value": 60.0},
        {"id": "missing", "table": "T5", "row": "LP", "column": "Black", "method": "linear_probe",
         "taxonomy": "race", "metric": "accuracy", "slice": "race", "group": "Black", "value": 90.0}],
        "model_card_claims": [
        {"id": "min", "text": "race acc above 40 for all", "method": "zero_shot", "taxonomy": "race",
         "metric": "accuracy", "slice": "race", "check": "min_at_least", "value": 40.0},
        {"id": "hi", "text": "Black highest", "method": "zero_shot", "taxonomy": "race", "metric": "accuracy",
         "slice": "race", "check": "highest_is", "group": "Black", "value": 66.0}]}
    p = tmp_path / "refs.yaml"
    p.write_text(yaml.safe_dump(refs))
    return p


def opts(path, **kw):
    return ModelCardOptions(taxonomies={"race": "R", "gender": "G", "age": "A", "denigration": "D",
                                        "denigration_child": "DC"}, references=str(path), **kw)


def test_reproduced_values_differences_and_flags(tmp_path):
    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    card = reproduce(p, met, opts(write_refs(tmp_path), tolerance_pp=5.0)).set_index("id")
    # White: 2 of 4 right = 50% -> reproduced; Black: 4 of 6 right = 66.7% vs 80 -> not
    assert card.loc["acc_white", "reproduced"] == pytest.approx(50.0)
    assert card.loc["acc_white", "status"] == "reproduced"
    lo, hi = wilson_interval(2, 4)
    assert card.loc["acc_white", "ci_low"] == pytest.approx(100 * lo)
    assert card.loc["acc_nonwhite", "difference"] == pytest.approx(400 / 6 - 80)
    assert card.loc["acc_nonwhite", "status"] == "not reproduced"
    # union of crime + non-human for Black images: images 4, 5, 6 -> 3 of 6
    assert card.loc["union_black", "reproduced"] == pytest.approx(50.0)
    assert card.loc["mean_race", "reproduced"] == pytest.approx((50.0 + 400 / 6) / 2)
    assert card.loc["missing", "status"] == "not measured"
    assert card.loc["min", "status"] == "reproduced" and card.loc["min", "reproduced"] == pytest.approx(50.0)
    assert card.loc["hi", "status"] == "reproduced"  # Black 66.7% is highest, within 5 pp of 66
    strict = reproduce(p, met, opts(write_refs(tmp_path), tolerance_pp=0.1)).set_index("id")
    assert strict.loc["hi", "status"] == "not reproduced"


def test_flagged_denominator_and_binary_race(tmp_path):
    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    card = reproduce(p, met, opts(write_refs(tmp_path), rate_denominator="flagged")).set_index("id")
    # flagged images: White 2 (ids 1, 2), Black 3 -> Black share 3 / 5
    assert card.loc["union_black", "reproduced"] == pytest.approx(60.0)
    b = binary_race_predictions(p, "R")
    # White vs Non-White: image 2 (White -> Indian) is wrong; Black -> White (image 8) wrong
    assert b["correct"].tolist() == [True, True, False, False, True, True, True, True, False, True]
    card2 = reproduce(p, met, opts(write_refs(tmp_path), race_accuracy="binary")).set_index("id")
    assert card2.loc["acc_white", "reproduced"] == pytest.approx(50.0)
    assert card2.loc["acc_nonwhite", "reproduced"] == pytest.approx(500 / 6)
    with pytest.raises(ValueError, match="race_accuracy must be 7way or binary"):
        opts(write_refs(tmp_path), race_accuracy="5way")


def test_bundled_reference_file_holds_the_papers_figures():
    figs, claims, source = load_references()
    by_id = {f["id"]: f for f in figs}
    assert by_id["t3_linear_probe_race_white"]["value"] == 93.4
    assert by_id["t3_zero_shot_race_white"]["value"] == 58.3
    assert by_id["t6_non_human_Black"]["value"] == 14.4
    assert by_id["t7_denigration_child_0-2"]["value"] == 2.3
    assert by_id["text_non_human_overall"]["value"] == 4.9
    t5 = [f for f in figs if f["table"] == "Table 5" and f["row"] == "LR CLIP Both"]
    assert [f["value"] for f in t5] == [97.4, 96.5, 98.3, 97.8, 98.4, 97.3, 97.1, 97.5]
    assert len(claims) == 5 and "2103.00020" in source


def test_model_card_experiment_end_to_end(tmp_path, tiny_model_dir, fairface_root):
    out = tmp_path / "mc"
    run_cli("run", "experiment=model_card", "dataset=fairface", f"dataset.root={fairface_root}",
            f"model.name_or_path={tiny_model_dir}", f"hydra.run.dir={out}", "progress=false",
            "subset.n=60", "model_card.race_accuracy=binary")
    card = pd.read_csv(out / "model_card.csv", keep_default_na=False, na_values=[""])
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    row = card[card["id"] == "t3_linear_probe_gender_white"].iloc[0]
    direct = met[(met["taxonomy"] == "fairface_gender") & (met["method"] == "linear_probe")
                 & (met["metric"] == "accuracy") & (met["slice"] == "race_binary") & (met["group"] == "White")]
    assert row["reproduced"] == pytest.approx(100 * direct["value"].item(), abs=1e-3)
    assert row["difference"] == pytest.approx(row["reproduced"] - 96.5, abs=1e-3)
    assert set(card["status"]) <= {"reproduced", "not reproduced", "not measured"}
    md = (out / "model_card.md").read_text()
    assert "race_accuracy**: binary" in md and "seeded random 60" in md
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["model_card"]["race_accuracy"] == "binary"
    assert rec["dataset"]["n_images"] == 60
    assert len(list(out.glob("model_card_*.png"))) == 6  # Tables 3-7 and the text figures
