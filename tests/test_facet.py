"""FACET: the layout (attribute rules, crops, bad input), the class2 rule, the per-class recall
gaps and experiment=facet end to end, each checked against an independent computation (pandas,
statsmodels, PIL)."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipfair.data import DatasetError, load_dataset
from clipfair.data.facet import missing_counts
from fixtures_facet import LIGHTING, make_facet, person_rows, write_facet

MAJ = {"gender_presentation": ("gender_presentation", {"masc": "masculine", "fem": "feminine",
                                                       "non_binary": "non-binary"}),
       "age_presentation": ("age_presentation", {"young": "young", "middle": "middle", "older": "older"}),
       "lighting": ("lighting", {x: x.replace("_", " ") for x in LIGHTING if x != "na"})}


@pytest.fixture(scope="module")
def facet_root(tmp_path_factory) -> Path:
    return make_facet(tmp_path_factory.mktemp("facet") / "facet")


def _csv(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "annotations" / "annotations.csv", dtype={"person_id": str})


def expected_majority(df: pd.DataFrame, prefix: str, names: dict[str, str]) -> pd.Series:
    """pandas: the column with the most votes, unless tied for the most, 'na' or no votes."""
    cols = [f"{prefix}_{k}" for k in names] + [f"{prefix}_na"]
    cnt = df[cols]
    top = cnt.max(axis=1)
    ties = cnt.eq(top, axis=0).sum(axis=1) > 1
    win = cnt.idxmax(axis=1).str[len(prefix) + 1:]
    ok = (top > 0) & ~ties & (win != "na")
    return win.map(names).where(ok)


def expected_skin(df: pd.DataFrame, rule: str, min_annotators: int) -> pd.Series:
    cnt = df[[f"skin_tone_{k}" for k in range(1, 11)]].to_numpy(float)
    votes = cnt.sum(axis=1)
    enough = (votes > 0) & (votes >= min_annotators)
    if rule == "monk_argmax":
        top = cnt.max(axis=1)
        tie = (cnt == top[:, None]).sum(axis=1) > 1
        val = pd.Series((cnt.argmax(axis=1) + 1).astype(str)).where(enough & ~tie)
        return val
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cnt * np.arange(1, 11)).sum(axis=1) / votes
    level = pd.Series(np.floor(mean + 0.5))
    if rule == "monk_10":
        return level.map(lambda v: str(int(v)) if v == v else None).where(enough)
    return pd.cut(level, [0, 3, 6, 10], labels=["1-3", "4-6", "7-10"]).astype(object).where(enough)


@pytest.mark.parametrize("rule, min_annotators", [("monk_3", 1), ("monk_10", 1), ("monk_argmax", 1), ("monk_3", 2)])
def test_attribute_rules_match_an_independent_pandas_computation(facet_root, rule, min_annotators):
    ds = load_dataset("facet", root=str(facet_root), skin_tone_rule=rule, min_annotators=min_annotators)
    df = _csv(facet_root)
    got = ds.table.set_index("image_id")
    assert list(got.index) == list(df["person_id"])  # one unit per person, in file order
    for attr, (prefix, names) in MAJ.items():
        exp = expected_majority(df, prefix, names)
        pd.testing.assert_series_equal(got[attr].reset_index(drop=True).astype(object),
                                       exp.reset_index(drop=True).astype(object), check_names=False)
        assert sum(missing_counts(ds.table)[attr].values()) == int(exp.isna().sum())
    skin = expected_skin(df, rule, min_annotators)
    pd.testing.assert_series_equal(got["skin_tone"].reset_index(drop=True).astype(object),
                                   skin.reset_index(drop=True).astype(object), check_names=False)
    assert sum(missing_counts(ds.table)["skin_tone"].values()) == int(skin.isna().sum())
    assert ds.source["skin_tone_rule"] == rule and ds.source["min_annotators"] == min_annotators
    # declared orders for every attribute
    orders = ds.value_orders()
    assert orders["gender_presentation"] == ("masculine", "feminine", "non-binary")
    assert orders["age_presentation"] == ("young", "middle", "older")
    assert orders["lighting"] == ("underexposed", "dimly lit", "well lit", "overexposed")
    assert orders["skin_tone"] == (("1-3", "4-6", "7-10") if rule == "monk_3" else tuple(map(str, range(1, 11))))
    assert len(orders["class1"]) == 52


def _row(pid: str, **counts) -> dict:
    r = person_rows(1, 1)[0]
    r.update(person_id=pid, filename="sa_0000.jpg")
    for k in list(r):
        if k.startswith(("skin_tone_", "gender_presentation_", "age_presentation_", "lighting_")):
            r[k] = 0
    r.update({"gender_presentation_masc": 1, "age_presentation_young": 1, "lighting_well_lit": 1})
    r.update(counts)
    return r


def _vals(col: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in col]


def test_known_answers_of_the_rules(tmp_path):
    rows = [_row("a", skin_tone_2=1, skin_tone_3=1),                # mean 2.5 -> 3 (halves up) -> 1-3
            _row("b", skin_tone_3=1, skin_tone_4=1),                # mean 3.5 -> 4 -> 4-6; argmax tie
            _row("c", skin_tone_6=2, skin_tone_10=1),               # mean 7.33 -> 7 -> 7-10; argmax 6
            _row("d", skin_tone_na=3),                              # no tone votes: missing
            _row("e", skin_tone_5=1, gender_presentation_masc=1, gender_presentation_fem=1),  # gender tie
            _row("f", skin_tone_1=1, gender_presentation_masc=0, gender_presentation_na=2)]   # gender na
    root = write_facet(tmp_path / "f", rows)
    t = load_dataset("facet", root=str(root)).table.set_index("image_id")
    assert _vals(t["skin_tone"]) == ["1-3", "4-6", "7-10", None, "4-6", "1-3"]
    assert _vals(t["gender_presentation"]) == ["masculine"] * 4 + [None, None]
    assert _vals(t["gender_presentation_missing_reason"])[4:] == ["tie", "na"]
    t10 = load_dataset("facet", root=str(root), skin_tone_rule="monk_10").table
    assert _vals(t10["skin_tone"]) == ["3", "4", "7", None, "5", "1"]
    ta = load_dataset("facet", root=str(root), skin_tone_rule="monk_argmax")
    assert _vals(ta.table["skin_tone"]) == [None, None, "6", None, "5", "1"]
    assert missing_counts(ta.table)["skin_tone"] == {"no_votes": 1, "tie": 2}
    t2 = load_dataset("facet", root=str(root), min_annotators=2).table
    assert _vals(t2["skin_tone"]) == ["1-3", "4-6", "7-10", None, None, None]


# ------------------------------------------------------------------------------ crops and the cache


def test_person_crop_is_the_box_clipped_to_the_image(facet_root):
    df = _csv(facet_root)
    person = load_dataset("facet", root=str(facet_root))
    margin = load_dataset("facet", root=str(facet_root), crop_margin=0.25)
    whole = load_dataset("facet", root=str(facet_root), crop="image")
    for i in (0, 1, 6):  # row 6 has a box reaching past the image's right and bottom edges
        box = ast.literal_eval(df["bounding_box"].iloc[i])
        full = Image.open(facet_root / "images" / df["filename"].iloc[i]).convert("RGB")
        x0, y0 = math.floor(box["x"]), math.floor(box["y"])
        x1 = min(full.width, math.ceil(box["x"] + box["width"]))
        y1 = min(full.height, math.ceil(box["y"] + box["height"]))
        ref = np.asarray(full.crop((x0, y0, x1, y1)))
        np.testing.assert_array_equal(np.asarray(person.load_image(i)), ref)  # PNG: lossless
        mw, mh = 0.25 * box["width"], 0.25 * box["height"]
        assert margin.load_image(i).size == (min(full.width, math.ceil(box["x"] + box["width"] + mw))
                                             - max(0, math.floor(box["x"] - mw)),
                                             min(full.height, math.ceil(box["y"] + box["height"] + mh))
                                             - max(0, math.floor(box["y"] - mh)))
        assert whole.load_image(i).size == full.size


def test_the_cache_keys_on_the_crop(facet_root, tmp_path):
    from handmodel import hand_clip

    from clipfair.run.cache import EmbeddingStore
    from clipfair.run.embed import embed_images, image_namespace

    model = hand_clip()
    store = EmbeddingStore(tmp_path / "cache", "image", image_namespace(model))
    person = load_dataset("facet", root=str(facet_root))
    e1 = embed_images(person, model, store, progress=False)
    assert (e1.encoded, e1.cached) == (len(person), 0)
    again = embed_images(load_dataset("facet", root=str(facet_root)), model, store, progress=False)
    assert (again.encoded, again.cached) == (0, len(person))  # the same crop hits the cache
    np.testing.assert_array_equal(again.embeddings, e1.embeddings)
    whole = load_dataset("facet", root=str(facet_root), crop="image")
    e3 = embed_images(whole, model, store, progress=False)
    n_files = _csv(facet_root)["filename"].nunique()
    assert (e3.encoded, e3.cached) == (n_files, 0)  # a new entry per image, shared by its persons
    assert "duplicate_contents" not in e3.info  # persons sharing their image are no duplicates
    assert not np.allclose(e3.embeddings, e1.embeddings, atol=1e-3)
    margin = embed_images(load_dataset("facet", root=str(facet_root), crop_margin=0.5), model, store,
                          progress=False)
    assert margin.encoded > 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("change, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "skin_tone_5"} for r in rows],
     "missing column(s) 'skin_tone_5'"),
    (lambda rows: rows[:2] + [{**rows[2], "bounding_box": "{'x': 1, 'y': 2, 'width': 3"}] + rows[3:],
     "row 3 (person_id 1002), column 'bounding_box': bounding_box \"{'x': 1, 'y': 2, 'width': 3\" is neither JSON"),
    (lambda rows: rows[:1] + [{**rows[1], "bounding_box": '{"x": 1, "y": 2, "width": 0, "height": 4}'}] + rows[2:],
     "row 2 (person_id 1001), column 'bounding_box'"),
    (lambda rows: rows[:4] + [{**rows[4], "filename": "gone.jpg"}] + rows[5:],
     "row 5 (person_id 1004), column 'filename': image 'gone.jpg' not found"),
    (lambda rows: rows[:1] + [{**rows[1], "lighting_na": "two"}] + rows[2:],
     "row 2 (person_id 1001), column 'lighting_na': 'two' is not a non-negative whole number"),
    (lambda rows: rows[:3] + [{**rows[3], "class1": "astronomer"}] + rows[4:],
     "row 4 (person_id 1003), column 'class1': unknown class1 value 'astronomer'"),
])
def test_bad_input_is_one_line_naming_file_row_and_field(tmp_path, change, message):
    rows = person_rows(4, 2)
    root = write_facet(tmp_path / "f", rows)  # images of the good rows
    write_facet(root, change(rows), images=False)
    with pytest.raises(DatasetError) as e:
        load_dataset("facet", root=str(root))
    text = str(e.value)
    assert message in text and "\n" not in text
    assert str(root / "annotations" / "annotations.csv") in text


def test_skip_drops_bad_rows_and_counts_them(tmp_path):
    rows = person_rows(4, 2)
    root = write_facet(tmp_path / "f", rows)
    rows[2]["bounding_box"] = "not a box"
    rows[5]["filename"] = "gone.jpg"
    write_facet(root, rows, images=False)
    ds = load_dataset("facet", root=str(root), on_error="skip")
    assert len(ds) == 6 and ds.skipped == {"bad_bounding_box": 1, "missing_image": 1}
    assert {"1002", "1005"}.isdisjoint(ds.table["image_id"])


def test_bad_options_are_one_line_errors(facet_root):
    for kw, msg in [({"crop": "face"}, "dataset.crop must be one of person, image"),
                    ({"crop_margin": -1}, "dataset.crop_margin must be a number >= 0"),
                    ({"skin_tone_rule": "fitzpatrick"}, "dataset.skin_tone_rule must be one of monk_3"),
                    ({"min_annotators": 0}, "dataset.min_annotators must be a whole number >= 1")]:
        with pytest.raises(DatasetError, match=msg):
            load_dataset("facet", root=str(facet_root), **kw)


# ------------------------------------------------------------------------------ class2


def test_a_prediction_equal_to_class2_counts_as_correct():
    from clipfair.data.taxonomy import load_taxonomy
    from clipfair.methods.zeroshot import predictions_frame

    tax = load_taxonomy("facet_classes")
    assert len(tax.classes) == 52 and tax.target == "class1" and tax.also_correct == "class2"
    assert "a photo of a basketball player." in tax.all_texts()
    j = {c: i for i, c in enumerate(tax.labels)}
    table = pd.DataFrame({"image_id": ["p1", "p2", "p3", "p4"],
                          "class1": ["doctor", "doctor", "nurse", "nurse"],
                          "class2": ["nurse", None, None, "doctor"]})
    probs = np.full((4, 52), 0.001)
    probs[0, j["nurse"]], probs[0, j["doctor"]] = 0.6, 0.3     # class2 predicted: correct, rank 1
    probs[1, j["nurse"]], probs[1, j["doctor"]] = 0.6, 0.3     # no class2: wrong, rank 2
    probs[2, j["nurse"]] = 0.9                                 # class1 predicted: correct
    probs[3, j["waiter"]], probs[3, j["doctor"]], probs[3, j["nurse"]] = 0.5, 0.3, 0.1  # neither; class2 ranks 2
    df = predictions_frame(table, tax, probs, "zero_shot", ["class1"])
    assert df["correct"].tolist() == [True, False, True, False]
    assert df["true_label"].tolist() == ["doctor", "doctor", "nurse", "nurse"]
    assert df["true_rank"].tolist() == [1, 2, 1, 2]


# ------------------------------------------------------------------------------ recall gaps


def _synthetic_metrics(min_slices=("class1", "gender_presentation")):
    """Classification rows scored by the core from random predictions with group-dependent accuracy."""
    from clipfair.analyses.engine import add_result_columns
    from clipfair.run.pipeline import score
    from clipfair.data.taxonomy import load_taxonomy

    rng = np.random.default_rng(3)
    tax = load_taxonomy("facet_classes")
    n = 700
    cls = rng.choice(["doctor", "nurse", "guitarist"], size=n, p=[0.5, 0.35, 0.15])
    gen = rng.choice(["masculine", "feminine", "non-binary"], size=n, p=[0.48, 0.48, 0.04])
    p = 0.4 + 0.3 * (gen == "masculine") * (cls == "doctor") + 0.2 * (cls == "nurse")
    correct = rng.random(n) < p
    pred = np.where(correct, cls, "waiter")
    preds = pd.DataFrame({"image_id": [str(i) for i in range(n)], "taxonomy": tax.name, "method": "zero_shot",
                          "predicted_label": pred, "predicted_category": "person_class", "score": 0.5,
                          "logit": 1.0, "true_label": cls, "correct": pd.array(correct, dtype="boolean"),
                          "true_rank": pd.array(np.where(correct, 1, 2), dtype="Int64"),
                          "class1": cls, "gender_presentation": gen})
    slices = ["overall", tuple(min_slices)]
    orders = {"gender_presentation": ["masculine", "feminine", "non-binary"]}
    met, _ = score(preds, [tax], slices, 0.95, 30, "holm", orders=orders)
    met = add_result_columns(met, preds, slices, analysis={"zero_shot": "zero_shot"})
    return preds, met, orders


def test_core_disparities_of_the_facet_layout_stay_within_a_class():
    from clipfair.data.facet import FACET_STRATA
    from clipfair.run.pipeline import score
    from clipfair.data.taxonomy import load_taxonomy

    preds, _, orders = _synthetic_metrics()
    slices = ["overall", "class1", ("class1", "gender_presentation")]
    met, disp = score(preds, [load_taxonomy("facet_classes")], slices, 0.95, 30, "holm", orders=orders,
                      strata=FACET_STRATA)
    assert not (disp["slice"] == "class1").any()
    made = disp[(disp["slice"] == "class1+gender_presentation") & (disp["group"] != "")]
    assert len(made) and set(made["comparison"]) >= {"worst_vs_best", "to_overall"}
    for r in made.itertuples():
        ref = r.reference if r.comparison == "to_overall" else r.reference.split("+")[0]
        assert r.group.split("+")[0] == ref, r
    # to_overall's reference is the class's own row of the metrics table
    acc = met[(met["metric"] == "accuracy") & (met["slice"] == "class1")].set_index("group")
    for r in made[(made["comparison"] == "to_overall") & (made["metric"] == "accuracy")].itertuples():
        assert (r.reference_n, r.reference_value) == (acc.loc[r.reference, "n"], acc.loc[r.reference, "value"])


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_recall_gaps_match_pandas_and_statsmodels(correction):
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    from clipfair.analyses.facet import recall_gaps

    preds, met, orders = _synthetic_metrics()
    min_n = 40
    got = recall_gaps(met, "facet_classes", ["gender_presentation"], orders, min_n, 0.95, correction)
    g = preds.groupby(["class1", "gender_presentation"])["correct"].agg(["sum", "count"])
    exp = []
    for cls in ["doctor", "nurse", "guitarist"]:
        groups = [x for x in orders["gender_presentation"] if (cls, x) in g.index]
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                (x1, n1), (x2, n2) = g.loc[(cls, a)], g.loc[(cls, b)]
                exp.append({"class1": cls, "group": a, "reference": b, "x": x1, "n": n1, "reference_x": x2,
                            "reference_n": n2, "compared": n1 >= min_n and n2 >= min_n})
    exp = pd.DataFrame(exp)
    got = got.merge(exp, on=["class1", "group", "reference"], suffixes=("", "_exp"), validate="1:1")
    assert len(got) == len(exp)
    for c in ("x", "n", "reference_x", "reference_n", "compared"):
        assert (got[c] == got[f"{c}_exp"]).all(), c
    # the small non-binary groups are listed, never compared (min_n)
    assert not got.loc[got["reference"] == "non-binary", "compared"].any()
    ok = got[got["compared"]]
    assert len(ok) == 3 and ok["p_adjusted"].notna().all() and got.loc[~got["compared"], "p_adjusted"].isna().all()
    p = [proportions_ztest([r.x, r.reference_x], [r.n, r.reference_n])[1] for r in ok.itertuples()]
    np.testing.assert_allclose(ok["p_value"], p, rtol=1e-9)
    np.testing.assert_allclose(ok["p_adjusted"], multipletests(p, method="fdr_bh" if correction == "bh"
                                                                else "holm")[1], rtol=1e-9)
    for r in ok.itertuples():
        lo, hi = confint_proportions_2indep(r.x, r.n, r.reference_x, r.reference_n, method="newcomb", compare="diff")
        assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi), abs=1e-9)
        assert r.difference == pytest.approx(r.x / r.n - r.reference_x / r.reference_n)
    doc = ok[(ok["class1"] == "doctor") & (ok["group"] == "masculine")].iloc[0]
    assert doc["difference"] > 0.15 and bool(doc["significant"])  # the planted gap is found


def test_a_smaller_min_n_compares_more_pairs():
    from clipfair.analyses.facet import recall_gaps

    _, met, orders = _synthetic_metrics()
    big = recall_gaps(met, "facet_classes", ["gender_presentation"], orders, 40)
    small = recall_gaps(met, "facet_classes", ["gender_presentation"], orders, 5)
    assert small["compared"].sum() > big["compared"].sum()
    assert (big.loc[~big["compared"], "not_compared_because"].str.contains("below min_n=40")).all()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_experiment_facet_runs_through_the_cli(facet_root, tmp_path):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "clipfair", "run", "experiment=facet", f"dataset.root={facet_root}",
                          "model=demo", "progress=false", "analyses.facet.min_n=3", "disparity_min_n=3", "precision_audit.n=8",
                          f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for f in ("metrics.csv", "disparities.csv", "facet_recall.csv", "facet_recall_gaps.png", "summary.md",
              "report.html", "run.json", "predictions.parquet"):
        assert (out / f).exists(), f
    preds = pd.read_parquet(out / "predictions.parquet")
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    gaps = pd.read_csv(out / "facet_recall.csv")
    for attr in ("gender_presentation", "skin_tone"):
        acc = met[(met["metric"] == "accuracy") & (met["slice"] == f"class1+{attr}")]
        g = preds.dropna(subset=[attr]).groupby(["class1", attr])["correct"].agg(["sum", "count"])
        assert len(acc) == len(g)
        for r in acc.itertuples():
            x, n = g.loc[(r.class1, getattr(r, attr))]
            assert (r.n, r.count) == (n, x)
        sub = gaps[gaps["attribute"] == attr]
        assert len(sub) and (sub["compared"] == ((sub["n"] >= 3) & (sub["reference_n"] >= 3))).all()
        for r in sub.itertuples():
            assert (r.n, r.x) == tuple(g.loc[(r.class1, r.group)][["count", "sum"]])
    # the core's disparities never compare groups of different classes
    disp = pd.read_csv(out / "disparities.csv", keep_default_na=False, na_values=[""])
    assert not (disp["slice"] == "class1").any()
    by_class = disp[disp["slice"].str.startswith("class1+") & disp["group"].notna()]
    assert len(by_class)
    for r in by_class.itertuples():
        ref = r.reference if r.comparison == "to_overall" else r.reference.split("+")[0]
        assert r.group.split("+")[0] == ref, r
    run = json.loads((out / "run.json").read_text())
    assert run["strata"] == ["class1", "class2"]
    assert run["facet"]["skin_tone_rule"] == "monk_3" and run["facet"]["min_n"] == 3
    assert run["facet"]["missing_among_evaluated"]["gender_presentation"]
    summary = (out / "summary.md").read_text()
    assert "FACET: per-class recall by group" in summary and "Skin tone: rule monk_3" in summary
    assert "class2: a prediction equal to the person's class2" in summary


def test_experiment_facet_bad_root_is_a_one_line_cli_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "clipfair", "run", "experiment=facet", "model=demo",
                          f"dataset.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}", "progress=false"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "clipfair: error: label CSV not found" in res.stderr and "Traceback" not in res.stderr


def test_collect_largest_disparity_stays_within_a_class():
    """collect's "largest disparity per run" (computed from metrics.csv) compares groups of one
    class only in a run whose dataset declares strata (run.json ``strata``): across classes the
    gap would be 90 points (nurse+fem vs lawman+masc), within a class it is 20 (lawman)."""
    import pandas as pd
    import pytest

    from clipfair.run.collect import largest_disparities

    rows = [("run", "facet_classes", "zero_shot", "accuracy", "", "class1+gender_presentation", f"{c}+{g}", c, g, 100, k)
            for c, g, k in (("nurse", "fem", 95), ("nurse", "masc", 90), ("lawman", "fem", 5), ("lawman", "masc", 25))]
    rows += [("run", "facet_classes", "zero_shot", "accuracy", "", "class1", c, c, None, 200, k)
             for c, k in (("nurse", 185), ("lawman", 30))]
    t = pd.DataFrame(rows, columns=["label", "taxonomy", "method", "metric", "category", "slice", "group", "class1",
                                    "gender_presentation", "n", "count"])
    t["value"] = t["count"] / t["n"]
    across = largest_disparities(t, 30)
    assert across["gap"].item() == pytest.approx(0.90)  # without strata: nurse+fem vs lawman+fem, across classes
    within = largest_disparities(t, 30, strata={"run": ["class1", "class2"]})
    assert len(within) == 1
    d = within.iloc[0]
    assert (d["high_group"], d["low_group"]) == ("lawman+masc", "lawman+fem")
    assert d["gap"] == pytest.approx(0.20) and d["pairs"] == 2  # one pair per class, no class-vs-class pair
