"""Issue 21 (item 4, figures): the report's compact figures. Per taxonomy one figure with a panel per
attribute sliced (the user's own and derived ones too, groups in their declared order), intersections
as heat maps of metrics.csv's values (checked against a pandas groupby of the predictions), written as
small SVG through the one save function."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from clipfair.report.figures import save_figure
from clipfair.stats.metrics import disparities, group_metrics
from clipfair.utility.outputs import read_csv, write_csv
from clipfair.report.render import (
    ReportContext,
    accuracy_compact_figure,
    intersection_figure,
    rates_compact_figure,
    write_report,
)

TONES = [str(k) for k in range(1, 11)]  # declared 1..10: as strings "10" sorts before "2"
BANDS = {"1-3": TONES[:3], "4-7": TONES[3:7], "8-10": TONES[7:]}


def _svg_texts(path) -> list[str]:
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    return ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("}text")]


def test_a_custom_numeric_attribute_and_its_derived_band_get_panels_in_declared_order(tmp_path):
    """A CSV dataset's own skin_tone column (1..10) and a band derived from it, through evaluate, the
    written metrics.csv and the report: each gets its panel, groups 1, 2, ..., 10 (never 1, 10, 2)."""
    from clipfair.data import load_dataset
    from clipfair.run.pipeline import evaluate, write_outputs
    from clipfair.data.taxonomy import Taxonomy, TaxonomyClass
    from fixtures_datasets import MONK_VALUES, REGIONS, make_custom_csv
    from handmodel import hand_clip

    assert list(MONK_VALUES) == TONES
    csv = make_custom_csv(tmp_path / "data", n=90)
    ds = load_dataset("csv", path=str(csv), race_column=None,
                      attributes={"skin_tone": {"column": "monk", "values": TONES}, "region": {"values": list(REGIONS)},
                                  "colour": "colour"},
                      derived={"tone_band": {"from": "skin_tone", "groups": BANDS}})
    tax = Taxonomy("colour_target", ("a {} photo.",),
                   tuple(TaxonomyClass(c, (c,), "class") for c in ("red", "green", "blue")), target="colour")
    ev = evaluate(ds, hand_clip(), [tax], cache_dir=None, progress=False,
                  slices=["overall", "skin_tone", "region", "tone_band", ("tone_band", "region")])
    out = tmp_path / "run"
    written = write_outputs(ev, out, {"test": True}, taxonomies=[tax])
    assert out / "accuracy_colour_target.svg" in written
    met = read_csv(out / "metrics.csv")  # what a reader of the run's files has
    fig = accuracy_compact_figure(met, "colour_target")
    present = set(ds.table["skin_tone"].dropna().astype(str))
    assert len(present) >= 9  # the check below means something
    # the data each panel is drawn from: every declared attribute sliced, in the slices' order
    assert [sl for (mt, sl) in fig.panel_data if mt == "accuracy"] == ["skin_tone", "region", "tone_band"]
    tones = fig.panel_data[("accuracy", "skin_tone")]
    assert list(dict.fromkeys(tones["group"].astype(str))) == [t for t in TONES if t in present]
    bands = fig.panel_data[("accuracy", "tone_band")]
    assert list(dict.fromkeys(bands["group"].astype(str))) == [
        b for b in BANDS if b in set(ds.table["tone_band"].dropna())]
    # the n of each group is the dataset's count (an independent groupby)
    counts = ds.table["skin_tone"].astype(str).value_counts()
    assert {str(g): int(n) for g, n in zip(tones["group"], tones["n"])} == {t: int(counts[t]) for t in present}
    # the written figure draws its tick labels in that order: "1 (n)", "2 (n)", ..., "10 (n)"
    ticks = [t for t in _svg_texts(out / "accuracy_colour_target.svg") if re.fullmatch(r"\d+ \(\d+\)", t)]
    assert [t.split(" ")[0] for t in ticks] == [t for t in TONES if t in present]
    assert [t for t in _svg_texts(out / "accuracy_colour_target.svg") if t in ("skin_tone", "region", "tone_band")] \
        == ["skin_tone", "region", "tone_band"]  # panel titles


@pytest.fixture(scope="module")
def planted():
    """Predictions with planted intersection effects: Southeast Asian women misclassified, Black
    images put into non_human more often; a few tiny cells (age 'more than 70')."""
    rng = np.random.default_rng(3)
    n = 900
    race = rng.choice(["White", "Black", "Southeast Asian", "Indian"], n)
    gender = rng.choice(["Male", "Female"], n)
    age = rng.choice(["3-9", "20-29", "more than 70"], n, p=[0.3, 0.67, 0.03])
    correct = rng.random(n) < np.where((race == "Southeast Asian") & (gender == "Female"), 0.3, 0.95)
    harm = rng.random(n) < np.where(race == "Black", 0.3, 0.05)
    rows = []
    for i in range(n):
        rows.append({"image_id": str(i), "taxonomy": "gender", "method": "zero_shot", "predicted_category": "gender",
                     "predicted_label": gender[i] if correct[i] else "x", "true_label": gender[i],
                     "correct": bool(correct[i]), "race": race[i], "age": age[i], "gender": gender[i]})
        rows.append({"image_id": str(i), "taxonomy": "probe", "method": "zero_shot",
                     "predicted_category": "non_human" if harm[i] else "human", "race": race[i], "age": age[i],
                     "gender": gender[i]})
    preds = pd.DataFrame(rows)
    orders = {"race": ["White", "Black", "Indian", "Southeast Asian"], "gender": ["Male", "Female"],
              "age": ["3-9", "20-29", "more than 70"]}
    met = group_metrics(preds, {"gender": ["gender"], "probe": ["human", "non_human"]},
                        slices=["overall", "race", "gender", "age", ("race", "gender"), ("age", "gender")],
                        orders=orders)
    return preds, met, orders


def test_intersection_heat_map_holds_the_values_of_metrics_csv(planted, tmp_path):
    preds, met, orders = planted
    write_csv(met, tmp_path / "metrics.csv")
    back = read_csv(tmp_path / "metrics.csv")
    fig = intersection_figure(back, "gender", "accuracy", min_n=30)
    assert list(fig.panel_data) == [("race+gender", "zero_shot", ""), ("age+gender", "zero_shot", "")]
    g = preds[preds["taxonomy"] == "gender"]
    for (sl, _, _), (values, ns) in fig.panel_data.items():
        a, b = sl.split("+")
        assert list(values.index) == orders[a] and list(values.columns) == orders[b]  # declared order
        truth = g.groupby([a, b])["correct"].agg(["mean", "size"])
        for (va, vb), r in truth.iterrows():
            assert values.loc[va, vb] == pytest.approx(r["mean"], abs=1e-6)  # metrics.csv keeps 6 digits
            assert ns.loc[va, vb] == r["size"]
    # the planted cell is the lowest
    values, _ = fig.panel_data[("race+gender", "zero_shot", "")]
    assert values.stack().idxmin() == ("Southeast Asian", "Female")
    # every cell is annotated with its value and n; a cell of fewer than 30 images is marked "*"
    ax = fig.axes[1]  # age x gender
    values, ns = fig.panel_data[("age+gender", "zero_shot", "")]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == values.size
    for t, ((va, vb), v) in zip(texts, values.stack().items()):
        tiny = ns.loc[va, vb] < 30
        assert t == f"{100 * v:.0f}{'*' if tiny else ''}\nn={int(ns.loc[va, vb])}"
    assert any("*" in t for t in texts) and not all("*" in t for t in texts)
    # a share's heat map: one panel per intersection and declared-harm category
    rate = intersection_figure(back, "probe", "rate", min_n=30, categories=["non_human"])
    values, ns = rate.panel_data[("race+gender", "zero_shot", "non_human")]
    p = preds[preds["taxonomy"] == "probe"].assign(h=lambda d: d["predicted_category"] == "non_human")
    truth = p.groupby(["race", "gender"])["h"].mean()
    for (va, vb), v in truth.items():
        assert values.loc[va, vb] == pytest.approx(v, abs=1e-6)
    single = back[~back["slice"].isin(["race+gender", "age+gender"])]
    assert intersection_figure(single, "gender", "accuracy") is None  # no intersection rows: no figure


def test_write_report_shows_one_figure_per_taxonomy_and_intersections_folded(planted, tmp_path):
    preds, met, _ = planted
    harms = {"probe": {"non_human": True, "human": False}}
    ctx = ReportContext(model="m", harms=harms, n_classes={"gender": 2}, min_n=30)
    paths = write_report(met, disparities(met, harms=harms), tmp_path, ctx)
    svgs = [p.name for p in paths if p.suffix == ".svg"]
    assert svgs == ["accuracy_gender.svg", "intersections_gender_accuracy.svg", "rates_probe.svg",
                    "intersections_probe_rate.svg", "label_rate_gender.svg", "findings_forest.svg"]
    assert not list(tmp_path.glob("*.png"))
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count('<img src="data:image/svg+xml,') == len(svgs)
    # the intersection heat map sits in the folded "Intersections" details next to its table
    part = html.split("<summary>Intersections")[1].split("</details>")[0]
    assert "data:image/svg+xml," in part and "<table" in part
    rates = rates_compact_figure(met, "probe", harms=harms["probe"])
    assert list(rates.panel_data) == ["race", "gender", "age"]
    assert list(dict.fromkeys(rates.panel_data["age"]["group"])) == ["3-9", "20-29", "more than 70"]


def test_svg_figures_are_small_deterministic_text(tmp_path, planted):
    _, met, _ = planted
    a = save_figure(accuracy_compact_figure(met, "gender", n_classes=2), tmp_path / "a.svg")
    b = save_figure(accuracy_compact_figure(met, "gender", n_classes=2), tmp_path / "b.svg")
    assert a.read_bytes() == b.read_bytes()  # no date, fixed ids
    text = a.read_text(encoding="utf-8")
    assert text.startswith("<svg") and "\n" not in text and len(text) < 40_000
    assert "White (" in text and "chance 1/2" in text  # text stays text (searchable, small)
    ET.fromstring(text)
