"""Any attribute, any label, end to end: declared attributes travel from the dataset into
predictions, metrics and confusion.csv; misspelt slices and target labels are refused
before the model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipfair.data import SliceError, load_dataset
from clipfair.data.attributes import FAIRFACE_TAXONOMY_VALUES
from clipfair.stats.metrics import CONFUSION_COLUMNS, METRIC_COLUMNS
from clipfair.run.pipeline import evaluate, write_outputs
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError, check_target, load_taxonomy
from fixtures_datasets import MONK_VALUES, REGIONS, make_custom_csv
from handmodel import hand_clip

CUSTOM = {"skin_tone": {"column": "monk", "values": list(MONK_VALUES)}, "region": {"values": list(REGIONS)},
          "colour": "colour"}
COLOUR_TAX = Taxonomy("colour_target", ("a {} photo.",),
                      tuple(TaxonomyClass(c, (c,), "class") for c in ("red", "green", "blue")), target="colour")


@pytest.fixture
def custom_ds(tmp_path):
    csv = make_custom_csv(tmp_path / "data", n=45)
    return load_dataset("csv", path=str(csv), race_column=None, attributes=CUSTOM,
                        derived={"tone_band": {"from": "skin_tone", "groups": {
                            "1-3": ["1", "2", "3"], "4-7": ["4", "5", "6", "7"], "8-10": ["8", "9", "10"]}}})


def test_custom_attributes_travel_into_predictions_metrics_and_confusion(custom_ds, tmp_path):
    slices = ["overall", "skin_tone", "region", "tone_band", ("tone_band", "region"), ("gender", "region")]
    ev = evaluate(custom_ds, hand_clip(), [COLOUR_TAX], cache_dir=None, slices=slices, progress=False,
                  topk=[2], small_group_n=10)
    p = ev.predictions
    for a in ("skin_tone", "region", "tone_band", "gender", "age", "colour"):
        assert a in p.columns
    m = ev.metrics
    # the existing columns first, then the results model's key columns and the group's values
    from clipfair.analyses.engine import KEY_COLUMNS

    assert list(m.columns[: len(METRIC_COLUMNS) + len(KEY_COLUMNS)]) == [*METRIC_COLUMNS, *KEY_COLUMNS]
    tr = m[m["slice"] == "tone_band+region"].iloc[0]
    assert tr["group"] == f"{tr['tone_band']}+{tr['region']}"  # the display name is built from the values
    assert list(pd.unique(m["slice"])) == ["overall", "skin_tone", "region", "tone_band", "tone_band+region",
                                          "gender+region"]
    # the hand model classifies solid red / green / blue exactly
    acc = m[m.metric == "accuracy"]
    assert (acc["value"] == 1.0).all()
    assert (m.loc[m.metric == "topk_accuracy", "category"] == "top-2").all()
    assert list(acc.loc[acc.slice == "tone_band", "group"]) == [
        g for g in ("1-3", "4-7", "8-10") if g in set(acc.loc[acc.slice == "tone_band", "group"])]
    # against a direct groupby of the dataset's table
    t = custom_ds.table
    n = t.dropna(subset=["tone_band", "region"]).groupby(["tone_band", "region"]).size()
    got = acc[acc.slice == "tone_band+region"].set_index("group")["n"]
    assert got.to_dict() == {f"{a}+{b}": v for (a, b), v in n.items()}
    assert (m["small"] == (m["n"] < 10)).all()
    # label rates exist for the target taxonomy's labels, per group
    lr = m[(m.metric == "label_rate") & (m.slice == "region")]
    assert set(lr["category"]) == {"red", "green", "blue"}
    # confusion
    c = ev.confusion
    assert list(c.columns) == list(CONFUSION_COLUMNS)
    assert (c["true_label"] == c["predicted_label"]).all()
    assert c[c.slice == "overall"]["count"].sum() == len(t)
    out = tmp_path / "out"
    written = write_outputs(ev, out, {"test": True}, taxonomies=[COLOUR_TAX], slices=slices)
    back = pd.read_csv(out / "confusion.csv", keep_default_na=False)
    assert list(back.columns) == list(CONFUSION_COLUMNS) and back["count"].sum() == c["count"].sum()
    assert out / "confusion_colour_target_zero_shot_overall.png" in written
    assert (out / "confusion_colour_target_zero_shot_worst.png").stat().st_size > 0
    assert "region" in pd.read_parquet(out / "predictions.parquet").columns


def test_auto_slices_cover_declared_attributes(custom_ds):
    ev = evaluate(custom_ds, hand_clip(), [COLOUR_TAX], cache_dir=None, progress=False)
    assert ev.info["slices"] == ["overall", "gender", "age", "age+gender", "skin_tone", "region", "colour",
                                 "tone_band"]


def test_the_dataset_declares_its_slice_preference_orders_and_plots(custom_ds, tmp_path):
    """Nothing downstream assumes FairFace: a dataset declaring its own preferred slices,
    value order and plotted slices gets them in metrics.csv, its group order and its plots."""
    from dataclasses import replace

    from clipfair.data.attributes import Attribute

    declared = tuple(Attribute("region", values=tuple(reversed(REGIONS))) if a.name == "region" else a
                     for a in custom_ds.declared)
    ds = replace(custom_ds, declared=declared, default_slices=(("region", "skin_tone"), "region"),
                 plot_slices={"accuracy": ("region",), "rate": ()})
    ev = evaluate(ds, hand_clip(), [COLOUR_TAX], cache_dir=None, progress=False)
    assert ev.info["slices"] == ["overall", "region+skin_tone", "region", "gender", "age", "skin_tone", "colour",
                                 "tone_band"]
    acc = ev.metrics[(ev.metrics["metric"] == "accuracy") & (ev.metrics["slice"] == "region")]
    present = set(custom_ds.table["region"])
    assert list(acc["group"]) == [r for r in reversed(REGIONS) if r in present]
    written = write_outputs(ev, tmp_path / "out", {"test": True}, taxonomies=[COLOUR_TAX])
    plots = sorted(p.name for p in written if p.name.startswith(("accuracy_", "rates_")))
    assert plots == ["accuracy_colour_target.svg"]  # one figure: a panel per attribute (test_report_figures)


def test_misspelt_slice_is_an_error_before_encoding(custom_ds):
    model = hand_clip()
    with pytest.raises(SliceError, match=r"slice 'gender\+regoin': dataset 'csv' has no attribute 'regoin' "
                                         r"\(did you mean 'region'\?\); available attributes: gender, age, "
                                         r"skin_tone, region, colour, tone_band"):
        evaluate(custom_ds, model, [COLOUR_TAX], cache_dir=None, slices=["overall", ["gender", "regoin"]],
                 progress=False)
    assert model.model.image_calls == 0


def test_target_labels_checked_against_declared_values(custom_ds, tmp_path):
    declared = {a.name: tuple(a.values) for a in custom_ds.declared}
    region_tax = Taxonomy("where", ("a photo taken in {}.",),
                          tuple(TaxonomyClass(r, (r,), "class") for r in ("Europe", "Africa", "Asia", "Oceania")),
                          target="region", source="where.yaml")
    with pytest.raises(TaxonomyError, match=r"where.yaml \(where\): class 'Oceania' is not a value of target "
                                            r"'region' in dataset 'csv'; allowed values: Europe, Africa, Asia, "
                                            r"Americas"):
        check_target(region_tax, declared, "dataset 'csv'")
    # values not declared: nothing to check against; a missing target attribute: no accuracy
    assert check_target(COLOUR_TAX, declared) is True
    assert check_target(load_taxonomy("fairface_race"), declared) is False
    # the built-in FairFace taxonomies keep FairFace's values on datasets with other ones, as
    # every built-in layout declares (FaceDataset.tolerated_values); without that declaration, no
    utk = {"race": ("White", "Black", "Asian", "Indian", "Others")}
    assert check_target(load_taxonomy("fairface_race"), utk, tolerated=FAIRFACE_TAXONOMY_VALUES)
    assert custom_ds.tolerated_values == FAIRFACE_TAXONOMY_VALUES
    with pytest.raises(TaxonomyError, match="'Latino_Hispanic' is not a value of target 'race'"):
        check_target(load_taxonomy("fairface_race"), utk)
    with pytest.raises(TaxonomyError, match="matches value 'Asain'"):
        check_target(Taxonomy("r", ("{}",), (TaxonomyClass("Asian", ("Asian",), "race", ("Asain",)),),
                              target="race"), {"race": ("White", "Asian")})


def test_derived_age_band_end_to_end(fairface_root):
    bands = {"age_band": {"from": "age", "groups": {
        "0-19": ["0-2", "3-9", "10-19"], "20-59": ["20-29", "30-39", "40-49", "50-59"],
        "60+": ["60-69", "more than 70"]}}}
    ds = load_dataset("fairface", root=str(fairface_root), split="val", derived=bands)
    tax = load_taxonomy("fairface_gender")
    ev = evaluate(ds, hand_clip(), [tax], cache_dir=None, slices=["overall", "age_band", ["age_band", "gender"]],
                  progress=False)
    acc = ev.metrics[(ev.metrics.metric == "accuracy") & (ev.metrics.slice == "age_band")]
    groups = bands["age_band"]["groups"]
    band = ds.table["age"].map({v: g for g, vs in groups.items() for v in vs})
    assert acc.set_index("group")["n"].to_dict() == band.value_counts().to_dict()
    assert list(acc["group"]) == [g for g in groups if g in set(band)]
    assert "age_band" in ev.predictions.columns


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from clipfair.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_misspelt_slice_and_bad_target_are_one_line_errors(tmp_path):
    """The issue's example: `slices=[overall, service_test, [gender, service_test]]` on the
    demo used to give only overall metrics and no warning. Both errors come before the
    model is loaded (the model path does not exist)."""
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ntarget: race\ntemplates: ['a {} person.']\nclasses: [White, Martian]\n")
    res = _run_cli("run", f"hydra.run.dir={tmp_path / 'run'}", "progress=false", "model.name_or_path=/no/model",
                   "slices=[overall,service_test,[gender,service_test]]")
    assert res.returncode == 2, res.stderr
    assert ("clipfair: error: slice 'service_test': dataset 'fairface' has no attribute 'service_test'; "
            "available attributes: race, gender, age, race_binary") in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    res = _run_cli("run", f"hydra.run.dir={tmp_path / 'run2'}", "progress=false", "model.name_or_path=/no/model",
                   f"taxonomies=['{bad}']")
    assert res.returncode == 2, res.stderr
    assert "class 'Martian' is not a value of target 'race' in dataset 'fairface'; allowed values: White" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_linear_probe_on_a_custom_target_column(custom_ds):
    two = Taxonomy("colour2", ("a {} photo.",), (TaxonomyClass("red", ("red",), "class"),
                                                  TaxonomyClass("green", ("green",), "class"),
                                                  TaxonomyClass("blue", ("blue",), "class")), target="colour")
    ev = evaluate(custom_ds, hand_clip(), [two], cache_dir=None, slices=["overall", "region"], progress=False,
                  probe_train=custom_ds, probe_options={"Cs": [100.0]}, topk=[2])
    p = ev.predictions[ev.predictions.method == "linear_probe"]
    assert len(p) == len(custom_ds) and p["true_rank"].notna().all()
    m = ev.metrics[(ev.metrics.method == "linear_probe") & (ev.metrics.slice == "overall")]
    acc = m[m.metric == "accuracy"]
    assert acc["n"].item() == len(custom_ds)
    assert acc["count"].item() == int((p["predicted_label"] == p["colour"]).sum())
    top2 = m[m.metric == "topk_accuracy"]
    assert top2["count"].item() == int((p["true_rank"] <= 2).sum())
    c = ev.confusion[(ev.confusion.method == "linear_probe") & (ev.confusion.slice == "overall")]
    assert c["count"].sum() == len(custom_ds)
