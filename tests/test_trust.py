"""Issue 21, "One page a reader can trust": one test (or a few) per numbered defect fixed here.

Defect 1: random weights / accuracy at chance get a banner and no findings; 2: compare's tables
keyed by taxonomy and run; 3: collect never headlines label_rate; 4: a category routed on purpose
does not make its complement a harm; 6: labels carry their category and direction; 10: smaller
points (open_clip advice)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipfair.stats.metrics import METRIC_COLUMNS, disparities, group_metrics, wilson_interval
from clipfair.stats.sanity import AT_CHANCE_NOTE, annotate_findings, chance_gates, verdict


# --------------------------------------------------------------------------- defect 1: sanity gates

def _preds(tax: str, truth: list[str], pred: list[str], method: str = "zero_shot") -> pd.DataFrame:
    return pd.DataFrame({"taxonomy": tax, "method": method, "image_id": [f"{tax}{i}" for i in range(len(truth))],
                         "true_label": truth, "predicted_label": pred,
                         "correct": pd.array([t == p for t, p in zip(truth, pred)], dtype="boolean")})


def test_chance_gate_is_wilson_at_the_bonferroni_level_against_the_majority_share():
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(0)
    # a working 2-class model (90% right) and a 7-class model guessing at random
    t1 = rng.choice(["Male", "Female"], 200, p=[0.6, 0.4]).tolist()
    p1 = [t if rng.random() < 0.9 else ("Female" if t == "Male" else "Male") for t in t1]
    races = [f"r{i}" for i in range(7)]
    t2 = rng.choice(races, 300).tolist()
    p2 = rng.choice(races, 300).tolist()
    preds = pd.concat([_preds("gender", t1, p1), _preds("race", t2, p2)], ignore_index=True)
    g = chance_gates(preds, {"gender": 2, "race": 7}, 0.95).set_index("taxonomy")
    level = 1 - 0.05 / 2
    for tax, truth, pred in (("gender", t1, p1), ("race", t2, p2)):
        c, n = sum(a == b for a, b in zip(truth, pred)), len(truth)
        lo, hi = proportion_confint(c, n, alpha=1 - level, method="wilson")
        assert g.loc[tax, "accuracy"] == pytest.approx(c / n)
        assert (g.loc[tax, "adj_ci_low"], g.loc[tax, "adj_ci_high"]) == pytest.approx((lo, hi))
        majority = pd.Series(truth).value_counts().iloc[0] / n
        assert g.loc[tax, "chance"] == pytest.approx(max(majority, 1 / {"gender": 2, "race": 7}[tax]))
    assert bool(g.loc["gender", "above_chance"]) and not bool(g.loc["race", "above_chance"])
    v = verdict(g.reset_index())
    assert not v["ok"] and "race (zero_shot)" in v["banner"] and v["at_chance"] == [["race", "zero_shot"]]
    # a working model with random weights still fails
    ok = verdict(chance_gates(_preds("gender", t1, p1), {"gender": 2}), "open_clip: model.pretrained=null")
    assert not ok["ok"] and "randomly initialised" in ok["banner"]
    assert verdict(chance_gates(_preds("gender", t1, p1), {"gender": 2}))["ok"]


def test_a_model_at_chance_gets_a_banner_and_its_differences_are_noise(tmp_path):
    from clipfair.report.render import ReportContext, write_report

    rng = np.random.default_rng(1)
    n = 400
    race = rng.choice(["A", "B"], n)
    truth = rng.choice(["x", "y", "z"], n).tolist()
    pred = [("x" if r == "A" else "y") for r in race]  # ignores the image: at chance, but differs by group
    p = _preds("tax", truth, pred).assign(race=race, predicted_category="class")
    m = group_metrics(p, {"tax": ["class"]}, slices=["overall", "race"])
    d = disparities(m, min_n=10)
    g = chance_gates(p, {"tax": 3})
    s = verdict(g)
    assert not s["ok"]
    d = annotate_findings(d, {}, s)
    assert not d["finding"].any()
    assert (d.loc[d["significant"], "note"] == AT_CHANCE_NOTE).all()
    write_report(m, d, tmp_path, ReportContext(title="t", sanity=s))
    md = (tmp_path / "summary.md").read_text()
    first = md.split("\n## ")[0]
    assert "THE MODEL DOES NOT WORK" in first and "accuracy does not exceed chance" in first
    assert AT_CHANCE_NOTE in md.split("## Key findings")[1].split("\n## ")[0]
    html = (tmp_path / "report.html").read_text()
    body = html.split("<body>")[1]
    assert body.index('class="note danger"') < body.index("<h2")


def test_model_card_leads_with_the_banner(tmp_path):
    from test_model_card import fig, opts, preds_frame, write_refs

    from clipfair.methods.model_card import CardContext, write_model_card

    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [fig("w", "Table A", "race", "accuracy", "race_binary", "White", 99.9)],
                      tables={"Table A": "race accuracy"}, reference_models=["x"])
    o = opts(refs)
    (tmp_path / "bad").mkdir()
    write_model_card(p, met, o, tmp_path / "bad", CardContext(model="m", banner="THE MODEL DOES NOT WORK: x"))
    md = (tmp_path / "bad" / "model_card.md").read_text()
    body = md.split("\n", 2)[2].lstrip()
    assert body.startswith("> 🛑 **THE MODEL DOES NOT WORK: x**")
    (tmp_path / "good").mkdir()
    write_model_card(p, met, o, tmp_path / "good", CardContext(model="m"))
    assert "DOES NOT WORK" not in (tmp_path / "good" / "model_card.md").read_text()


def test_collect_leads_with_the_banner(tmp_path):
    from clipfair.run.collect import write_collected

    rows = [("fairface_gender", "zero_shot", "accuracy", "", "race", g, 100, k) for g, k in (("A", 95), ("B", 50))]
    met = pd.DataFrame(rows, columns=["taxonomy", "method", "metric", "category", "slice", "group", "n", "count"])
    met["value"] = met["count"] / met["n"]
    met["ci_low"], met["ci_high"] = wilson_interval(met["count"].to_numpy(), met["n"].to_numpy())
    met["small"] = False
    for name, banner in (("good", ""), ("bad", "THE MODEL DOES NOT WORK: random")):
        f = tmp_path / "sweep" / name
        f.mkdir(parents=True)
        met[list(METRIC_COLUMNS)].to_csv(f / "metrics.csv", index=False)
        (f / "disparities.csv").write_text("taxonomy\n")
        pd.DataFrame({"image_id": ["a"]}).to_parquet(f / "predictions.parquet")
        (f / "run.json").write_text(json.dumps({"overrides": [f"model.name_or_path={name}"],
                                                "model": {"name_or_path": name}, "dataset": {"name": "d"},
                                                "sanity": {"banner": banner, "ok": not banner}, "findings": {}}))
    write_collected([tmp_path / "sweep"], min_n=30)
    md = (tmp_path / "sweep" / "collected.md").read_text()
    assert md.split("\n## ")[0].count("THE MODEL DOES NOT WORK: random") == 1
    runs = md.split("## Runs\n")[1].split("\n## ")[0]
    assert re.search(r"\| model.name_or_path=bad \| bad \| \*\*NO\*\*", runs)
    assert "| model.name_or_path=good | good | yes |" in runs
    largest = md.split("## Largest disparity per run")[1]
    bad_line = [x for x in largest.splitlines() if x.startswith("| model.name_or_path=bad")][0]
    assert AT_CHANCE_NOTE in bad_line and "**yes**" not in bad_line
    good_line = [x for x in largest.splitlines() if x.startswith("| model.name_or_path=good")][0]
    assert "**yes**" in good_line


def test_hf_checkpoint_with_missing_weights_needs_allow_random(tmp_path, tiny_model_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from clipfair.models import ModelError, load_model

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    w = load_file(str(broken / "model.safetensors"))
    dropped = sorted(k for k in w if k.endswith("text_projection.weight"))
    assert dropped
    save_file({k: v for k, v in w.items() if k not in dropped}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing from the checkpoint.*model\.allow_random=true"):
        load_model(loader="hf", name_or_path=str(broken), device="cpu", dtype="float32")
    m = load_model(loader="hf", name_or_path=str(broken), device="cpu", dtype="float32", allow_random=True)
    assert "text_projection" in m.describe()["random_weights"]
    whole = load_model(loader="hf", name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    assert "random_weights" not in whole.describe()


def test_open_clip_without_pretrained_needs_allow_random(monkeypatch):
    from clipfair.models import ModelError, load_model
    from clipfair.models import open_clip_backend as ocb

    class FakeOpenClip:
        @staticmethod
        def get_model_config(name):
            return {"embed_dim": 8}

    monkeypatch.setattr(ocb, "_import_open_clip", lambda: FakeOpenClip)
    with pytest.raises(ModelError, match=r"random weights.*model\.allow_random=true"):
        load_model(loader="open_clip", name="ViT-B-32", pretrained=None, device="cpu")


def test_random_tiny_model_run_leads_with_the_banner(tmp_path, tiny_model_dir, fairface_root):
    """End to end: a seeded random tiny CLIP (at chance on the synthetic faces) gets the banner in
    summary.md and report.html, run.json records the gates, and no row of disparities.csv is a finding."""
    from clipfair.cli import main

    out = tmp_path / "run"
    assert main(["run", f"model.name_or_path={tiny_model_dir}", f"dataset.root={fairface_root}",
                 f"hydra.run.dir={out}", "progress=false", "taxonomies=[fairface_race,clip_denigration]"]) == 0
    run = json.loads((out / "run.json").read_text())
    gates = {g["taxonomy"]: g for g in run["sanity"]["gates"]}
    pred = pd.read_parquet(out / "predictions.parquet")
    race = pred[pred["taxonomy"] == "fairface_race"]
    assert gates["fairface_race"]["accuracy"] == pytest.approx(race["correct"].astype(bool).mean())
    assert not gates["fairface_race"]["above_chance"] and not run["sanity"]["ok"]
    assert run["findings"]["clip_denigration"] == ["non_human", "crime_related"]
    assert "THE MODEL DOES NOT WORK" in (out / "summary.md").read_text().split("\n## ")[0]
    d = pd.read_csv(out / "disparities.csv", keep_default_na=False)
    assert {"finding", "note"} <= set(d.columns) and not d["finding"].astype(str).eq("True").any()


# --------------------------------------------------------------------------- defect 2: compare

def test_compare_two_runs_renders_the_csv_values_under_the_right_headers(tmp_path):
    from clipfair.methods.compare import comparison_sections, compare_runs, side_by_side, write_comparison
    from clipfair.report.document import Document, to_markdown

    def run(folder: Path, model: str, acc: dict) -> Path:
        folder.mkdir(parents=True)
        rows = []
        for tax, groups in acc.items():
            for g, (k, n) in groups.items():
                rows.append((tax, "zero_shot", "accuracy", "", "race", g, n, k))
        met = pd.DataFrame(rows, columns=["taxonomy", "method", "metric", "category", "slice", "group", "n", "count"])
        met["value"] = met["count"] / met["n"]
        met["ci_low"], met["ci_high"] = wilson_interval(met["count"].to_numpy(), met["n"].to_numpy())
        met["small"] = False
        met[list(METRIC_COLUMNS)].to_csv(folder / "metrics.csv", index=False)
        (folder / "disparities.csv").write_text("taxonomy\n")
        pd.DataFrame({"image_id": ["a", "b"], "taxonomy": list(acc)}).to_parquet(folder / "predictions.parquet")
        (folder / "run.json").write_text(json.dumps({"model": {"name_or_path": model},
                                                     "dataset": {"name": "d", "fingerprint": None}}))
        return folder

    # race and gender accuracies of two models, every value different, same groups and slice
    a = run(tmp_path / "a", "model-a", {"fairface_race": {"White": (80, 100), "Black": (61, 100)},
                                        "fairface_gender": {"White": (97, 100), "Black": (92, 100)}})
    b = run(tmp_path / "b", "model-b", {"fairface_race": {"White": (70, 100), "Black": (55, 100)},
                                        "fairface_gender": {"White": (99, 100), "Black": (90, 100)}})
    from clipfair.utility import outputs

    orig = outputs.require_finished_run
    outputs.require_finished_run = lambda d: None
    try:
        cmp = compare_runs([a, b])
    finally:
        outputs.require_finished_run = orig
    out = tmp_path / "cmp"
    write_comparison(cmp, out, "holm", 0.05)
    csv = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    assert set(csv["taxonomy"]) == {"fairface_race", "fairface_gender"}
    assert set(csv["baseline_label"]) == {"model-a"} and set(csv["variant_label"]) == {"model-b"}
    md = (out / "comparison.md").read_text()
    for tax in ("fairface_race", "fairface_gender"):
        sec = md.split(f"Side by side: {tax} · accuracy")[1].split("\n#")[0]
        assert "| slice | group | n | model-a | model-b |" in sec  # headers are the runs, not a taxonomy
        for r in csv[csv["taxonomy"] == tax].itertuples():
            line = [x for x in sec.splitlines() if x.startswith(f"| race | {r.group} |")]
            assert len(line) == 1
            cells = [c.strip() for c in line[0].strip("|").split("|")]
            assert cells[3] == f"{100 * r.baseline_value:.1f}%"
            assert cells[4].rstrip("*") == f"{100 * r.variant_value:.1f}%"
    wide = side_by_side(cmp).set_index(["taxonomy", "group"])
    assert wide.loc[("fairface_gender", "White"), "model-a"] == pytest.approx(0.97)  # baseline's gender: present
    assert wide.loc[("fairface_race", "White"), "model-b"] == pytest.approx(0.70)
    assert (out / "compare_fairface_race_accuracy_race.png").exists()
    assert (out / "compare_fairface_gender_accuracy_race.png").exists()
    assert to_markdown(Document("x", comparison_sections(cmp, "holm", 0.05)[0].blocks)).count("Side by side") == 2


# --------------------------------------------------------------------------- defect 3: collect

def test_collect_never_headlines_a_target_taxonomys_label_rate(tmp_path):
    from clipfair.run.collect import candidate_rows, largest_disparities

    rows = [("run", "fixture_race", "zero_shot", "label_rate", "White", "race", g, 100, k)
            for g, k in (("White", 98), ("Black", 0))]
    rows += [("run", "fixture_race", "zero_shot", "accuracy", "", "race", g, 100, k) for g, k in (("White", 98),
                                                                                                 ("Black", 80))]
    rows += [("run", "den", "zero_shot", "rate", "human", "age", g, 100, k) for g, k in (("3-9", 0), ("20-29", 100))]
    t = pd.DataFrame(rows, columns=["label", "taxonomy", "method", "metric", "category", "slice", "group", "n",
                                    "count"])
    t["value"] = t["count"] / t["n"]
    cand = candidate_rows(t, {"run": {"den": ["non_human"]}})
    assert list(cand) == [False, False, True, True, False, False]
    d = largest_disparities(t, 30, findings={"run": {"den": ["non_human"]}})
    assert len(d) == 1 and d["metric"].item() == "accuracy" and d["gap"].item() == pytest.approx(0.18)


# --------------------------------------------------------------------------- defect 4: routed categories

def test_a_category_routed_on_purpose_does_not_make_its_complement_a_finding():
    from clipfair.data.taxonomy import load_taxonomy

    child = load_taxonomy("clip_denigration_child")
    assert child.findings == ("non_human", "crime_related")
    rng = np.random.default_rng(3)
    n = 300
    age = rng.choice(["3-9", "20-29"], n)
    cat = np.where(age == "3-9", "child", "human").astype(object)  # children go to 'child', as intended
    cat[:20] = "non_human"
    p = pd.DataFrame({"taxonomy": "clip_denigration_child", "method": "zero_shot", "image_id": range(n),
                      "age": age, "predicted_category": cat, "predicted_label": cat,
                      "true_label": None, "correct": pd.array([None] * n, dtype="boolean")})
    m = group_metrics(p, {"clip_denigration_child": child.categories}, slices=["overall", "age"])
    d = disparities(m, harms={child.name: dict(child.harms)})
    d = annotate_findings(d, {child.name: child.findings}, verdict(pd.DataFrame()))
    human = d[(d["category"] == "human") & (d["comparison"] == "worst_vs_best")]
    assert human["significant"].item() and not human["finding"].item()  # a difference, described, not a finding
    assert d.loc[d["category"] == "child", "finding"].eq(False).all()


# --------------------------------------------------------------------------- defect 6: labels

def test_label_tables_and_plots_name_category_and_direction():
    from clipfair.report.render import ReportContext, _rates_figure, summary_markdown
    from clipfair.data.taxonomy import load_taxonomy

    tax = load_taxonomy("clip_denigration")
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.choice(tax.labels, n)
    cat_of = {c.label: c.category for c in tax.classes}
    p = pd.DataFrame({"taxonomy": tax.name, "method": "zero_shot", "image_id": range(n),
                      "race": rng.choice(["A", "B"], n), "predicted_label": labels,
                      "predicted_category": [cat_of[x] for x in labels],
                      "true_label": None, "correct": pd.array([None] * n, dtype="boolean")})
    m = group_metrics(p, {tax.name: tax.categories}, slices=["overall", "race"], labels={tax.name: tax.labels})
    ctx = ReportContext(title="t", harms={tax.name: dict(tax.harms)}, label_categories={tax.name: cat_of})
    md = summary_markdown(m, disparities(m, harms={tax.name: dict(tax.harms)}), ctx)
    sec = md.split("## Predicted labels")[1]
    for label, want in (("gorilla", "non_human, harm"), ("thief", "crime_related, harm"),
                        ("criminal", "crime_related, harm"), ("White Male", "human, not a harm")):
        assert f"{label} ({want})" in sec
    assert "gorilla (neutral)" not in md
    fig = _rates_figure(m, tax.name, "race", metric="label_rate", harms=dict(tax.harms), label_categories=cat_of)
    ax = fig.axes[0]
    leg = ax.get_legend()
    assert leg.get_title().get_text() == "label (category, direction)"
    assert "predicted label" in ax.get_title() and "predicted category" not in ax.get_title()
    colors = {tuple(np.round(h.get_facecolor(), 4)) for h in ax.patches}
    assert len(colors) == len(tax.labels) == 21  # no colour reused


# --------------------------------------------------------------------------- defect 10: smaller points

def test_open_clip_error_advises_its_own_environment(monkeypatch):
    import builtins

    from clipfair.models import ModelError
    from clipfair.models import open_clip_backend as ocb

    real = builtins.__import__

    def no_open_clip(name, *a, **k):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ModelError) as e:
        ocb._import_open_clip()
    msg = str(e.value)
    assert ".venv-openclip" in msg and "scripts/setup.sh openclip" in msg and "pip install 'clipfair" not in msg


def test_an_unknown_value_error_counts_every_invalid_row(tmp_path):
    from fixtures_datasets import write_fairface_split

    from clipfair.data import DatasetError, load_dataset

    rows = [f"val/{i}.jpg,20-29,Male,{r},True" for i, r in enumerate(["Martian"] * 3 + ["Venusian"] * 2 + ["White"])]
    write_fairface_split(tmp_path, "val", rows)
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert "(and 2 more rows with this value)" in msg and "5 rows in all have a value of column 'race'" in msg


def test_retrieval_queries_without_enabled_run_retrieval_with_a_warning(caplog):
    import logging

    from clipfair.analyses.compose import shorthand_entries
    from clipfair.run.schema import RetrievalConfig

    class Cfg:
        taxonomies: list = []
        probe = type("P", (), {"enabled": False})()
        precision_audit = None
        compare = None
        template_sets: dict = {}
        model_card = None
        retrieval = RetrievalConfig(queries=["occupations_neutral"])

    with caplog.at_level(logging.WARNING, logger="clipfair"):
        out = shorthand_entries(Cfg())
    assert out["retrieval_bias"]["queries"] == ["occupations_neutral"]
    assert "without retrieval.enabled=true" in caplog.text


def test_vs_overall_is_explained_in_the_report():
    from clipfair.report.render import summary_markdown

    rng = np.random.default_rng(5)
    n = 300
    race = rng.choice(["A", "B", "C"], n)
    truth = rng.choice(["x", "y"], n).tolist()
    pred = [t if (r != "C" or rng.random() < 0.5) else ("x" if t == "y" else "y") for t, r in zip(truth, race)]
    p = _preds("tax", truth, pred).assign(race=race, predicted_category="class")
    m = group_metrics(p, {"tax": ["class"]}, slices=["overall", "race"])
    md = summary_markdown(m, disparities(m, min_n=10))
    sec = md.split("## Largest differences between groups")[1]
    assert "\"vs overall\"" in sec and "the rest of the images" in sec


def test_model_card_cells_show_the_interval_their_verdict_used(tmp_path):
    from test_model_card import fig, opts, preds_frame, write_refs

    from clipfair.methods.model_card import CardContext, write_model_card

    p = preds_frame()
    met = group_metrics(p, {"R": ["race"], "D": ["human", "non_human", "crime_related"]})
    refs = write_refs(tmp_path, [fig("w", "Table A", "race", "accuracy", "race_binary", "White", 99.9),
                                 fig("nw", "Table A", "race", "accuracy", "race_binary", "Non-White", 0.1)],
                      tables={"Table A": "race accuracy"}, reference_models=["x"])
    o = opts(refs)
    (tmp_path / "out").mkdir()
    write_model_card(p, met, o, tmp_path / "out", CardContext(model="m"))
    card = pd.read_csv(tmp_path / "out" / "model_card.csv")
    md = (tmp_path / "out" / "model_card.md").read_text()
    assert "verdict's interval (adjusted)" in md
    measured = card[(card["table"] == "Table A") & (card["n"] > 0)]
    assert len(measured)
    for r in measured.itertuples():
        cell = f"[{r.adj_ci_low:.1f}-{r.adj_ci_high:.1f}] ({100 * r.adj_confidence:.4g}%)"
        line = [x for x in md.splitlines() if x.startswith(f"| {r.row} |") and cell in x]
        assert line, cell
        # the verdict agrees with the interval shown: consistent iff the paper's value lies inside it
        inside = r.adj_ci_low <= r.reference_high and r.adj_ci_high >= r.reference_low
        assert (r.verdict == "consistent") == inside


# --------------------------------------------------------------------------- defect 4: the demo's findings

@pytest.mark.slow
def test_demo_key_findings_name_the_planted_biases_first(demo_run):
    md = (demo_run / "summary.md").read_text()
    items = [x for x in md.split("## Key findings")[1].split("\n## ")[0].splitlines() if re.match(r"^\d+\. ", x)]
    top = items[:3]
    # planted (a): children put into non-human classes by the probe without a 'child' class
    assert any("clip_denigration · zero_shot · rate of non_human by age" in x and "worst 3-9" in x for x in top), top
    # planted (b): Southeast Asian women captioned "man"
    assert any("fairface_gender · zero_shot · accuracy by race+gender" in x and "Southeast Asian+Female" in x
               for x in top), top
    # no artefact: neither the complement of a routed category nor a category without a direction
    assert not any("rate of human" in x or "rate of child" in x or "label_rate" in x for x in items)


def test_first_screen_leads_with_findings_when_the_model_works_and_with_the_gate_when_not(demo_run, tmp_path):
    """The first screen answers what differs, for whom, how much and how sure: a working model's
    report opens with its key findings (the passed gate follows); the contents list is folded."""
    html = (demo_run / "report.html").read_text()
    body = html.split("<body>")[1]
    assert body.index(">Key findings<") < body.index(">Does the model work")
    assert "<nav class=\"toc\"><details><summary>Contents</summary>" in body
    # a model at chance: the gate leads, before the findings
    from clipfair.report.render import ReportContext, write_report

    rng = np.random.default_rng(1)
    n = 400
    race = rng.choice(["A", "B"], n)
    truth = rng.choice(["x", "y", "z"], n).tolist()
    pred = [("x" if r == "A" else "y") for r in race]
    p = _preds("tax", truth, pred).assign(race=race, predicted_category="class")
    m = group_metrics(p, {"tax": ["class"]}, slices=["overall", "race"])
    s = verdict(chance_gates(p, {"tax": 3}))
    d = annotate_findings(disparities(m, min_n=10), {}, s)
    write_report(m, d, tmp_path, ReportContext(title="t", sanity=s))
    body = (tmp_path / "report.html").read_text().split("<body>")[1]
    assert body.index(">Does the model work") < body.index(">Key findings<")
