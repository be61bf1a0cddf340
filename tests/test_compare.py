"""Variant comparison and prompt sensitivity on inputs whose answers are known."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from clipfair.methods.compare import (CompareError, benjamini_hochberg, compare_paired, compare_runs, holm, mcnemar_exact,
                              side_by_side, two_proportion_z, write_comparison)
from clipfair.methods.sensitivity import expand_template_sets, findings, spread
from clipfair.stats.inference import newcombe_diff, newcombe_paired_diff
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError


def test_mcnemar_exact_matches_binomial_test():
    for b, c in [(0, 60), (3, 9), (10, 10), (1, 0), (25, 40)]:
        expected = binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(0, 0) == 1.0


def test_multiple_comparison_corrections_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(holm(p)[:4], [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(benjamini_hochberg(p)[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert np.isnan(holm(p)[4]) and np.isnan(benjamini_hochberg(p)[4])


def test_two_proportion_z_by_hand():
    # pooled p = 0.4, se = sqrt(0.4 * 0.6 * 0.02), z = 0.2 / se = 2.88675
    assert two_proportion_z(30, 100, 50, 100) == pytest.approx(0.0038924, rel=1e-4)
    assert two_proportion_z(5, 10, 5, 10) == pytest.approx(1.0)


def paired_predictions():
    """200 images: race A (100) and B (100). The variant moves 60 A images and 1 B image
    from 'human' into 'child'."""
    n = 200
    race = np.array(["A"] * 100 + ["B"] * 100, dtype=object)
    base = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "taxonomy": "base", "method": "zero_shot",
                         "predicted_label": "person", "predicted_category": "human", "score": 0.9,
                         "true_label": None, "correct": pd.array([None] * n, dtype="boolean"),
                         "race": race, "gender": np.where(np.arange(n) % 2, "Male", "Female")})
    var = base.copy()
    var["taxonomy"] = "var"
    moved = list(range(60)) + [150]
    var.loc[moved, "predicted_label"] = "child"
    var.loc[moved, "predicted_category"] = "child"
    return pd.concat([base, var], ignore_index=True)


def test_paired_comparison_known_answer():
    cmp = compare_paired(paired_predictions(), "base", ["var"], {"base": ["human"], "var": ["human", "child"]},
                         slices=["overall", "race"])
    # only 'human' is shared by both variants
    assert set(cmp["category"]) == {"human"}
    a = cmp[(cmp["slice"] == "race") & (cmp["group"] == "A")].iloc[0]
    b = cmp[(cmp["slice"] == "race") & (cmp["group"] == "B")].iloc[0]
    assert (a["baseline_value"], a["variant_value"], a["diff"]) == (1.0, 0.4, pytest.approx(-0.6))
    assert a["p_value"] == pytest.approx(binomtest(0, 60, 0.5).pvalue)
    assert bool(a["significant"]) and not bool(b["significant"])
    assert b["diff"] == pytest.approx(-0.01) and b["p_value"] == 1.0
    assert a["diff_ci_low"] < -0.6 < a["diff_ci_high"] < 0
    # Newcombe's paired interval: variant - baseline with a=40 both, 0 variant-only, 60 baseline-only
    lo, hi = newcombe_paired_diff(40, 0, 60, 0)
    assert (a["diff_ci_low"], a["diff_ci_high"]) == (pytest.approx(float(lo)), pytest.approx(float(hi)))
    # holm over the 3 rows (overall, A, B)
    np.testing.assert_allclose(cmp["p_adjusted"], holm(cmp["p_value"].to_numpy()))
    assert (cmp["test"] == "mcnemar_exact").all()
    wide = side_by_side(cmp).set_index(["slice", "group"])
    assert wide.loc[("race", "A"), "base"] == 1.0 and wide.loc[("race", "A"), "var"] == pytest.approx(0.4)
    assert bool(wide.loc[("race", "A"), "var significant"]) and not bool(wide.loc[("race", "B"), "var significant"])


def test_compare_runs_paired_and_unpaired(tmp_path):
    pred = paired_predictions()
    for name, tax, fp in (("r1", "base", "same"), ("r2", "var", "same"), ("r3", "var", "other")):
        d = tmp_path / name
        d.mkdir()
        part = pred[pred["taxonomy"] == tax].assign(taxonomy="t")
        part.to_parquet(d / "predictions.parquet")
        rows = []
        for g, grp in part.groupby("race"):
            k = int((grp["predicted_category"] == "human").sum())
            rows.append({"taxonomy": "t", "method": "zero_shot", "metric": "rate", "category": "human",
                         "slice": "race", "group": g, "n": len(grp), "count": k, "value": k / len(grp),
                         "ci_low": 0, "ci_high": 1})
        pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
        (d / "run.json").write_text(json.dumps({"dataset": {"fingerprint": fp}}))
    paired = compare_runs([tmp_path / "r1", tmp_path / "r2"])
    assert set(paired["test"]) == {"mcnemar_exact"}
    assert paired.query("slice == 'race' and group == 'A'")["diff"].item() == pytest.approx(-0.6)
    unpaired = compare_runs([tmp_path / "r1", tmp_path / "r3"])
    assert set(unpaired["test"]) == {"two_proportion_z"}
    row = unpaired.query("group == 'A'").iloc[0]
    assert row["p_value"] == pytest.approx(two_proportion_z(100, 100, 40, 100))
    from clipfair.utility.outputs import OutputError

    with pytest.raises(OutputError, match="predictions.parquet"):
        compare_runs([tmp_path / "r1", tmp_path])
    # the command-line form writes the same table
    from clipfair.cli import main

    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--out", str(tmp_path / "cli")]) == 0
    cli_table = pd.read_csv(tmp_path / "cli" / "comparison.csv", keep_default_na=False)
    assert len(cli_table) == len(paired)
    assert cli_table.query("slice == 'race' and group == 'A'")["diff"].item() == pytest.approx(-0.6)
    assert set(cli_table["baseline"]) == {"r1: t"} and set(cli_table["variant"]) == {"r2: t"}
    written = write_comparison(paired, tmp_path / "out", "holm", 0.05)
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert f"Holm-Bonferroni over all {len(paired)} comparisons" in md and "| -60.0 [" in md
    assert md.startswith("# Taxonomy variant comparison\n")
    assert "| race | A | 100 | 100.0% | 40.0%* |" in md  # the side-by-side table
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in written)


def test_paired_interval_uses_confidence_and_is_not_zero_width_without_discordant_images():
    pred = paired_predictions()
    same = pred[pred["taxonomy"] == "base"].assign(taxonomy="copy")
    both = pd.concat([pred, same], ignore_index=True)
    c95 = compare_paired(both, "base", ["copy"], slices=["race"])
    c99 = compare_paired(both, "base", ["copy"], slices=["race"], confidence=0.99)
    a95, a99 = c95.iloc[0], c99.iloc[0]
    assert a95["diff"] == 0 and a95["p_value"] == 1.0
    assert a95["diff_ci_low"] < 0 < a95["diff_ci_high"]  # 100 identical images: a real interval
    assert a99["diff_ci_low"] < a95["diff_ci_low"] and a99["diff_ci_high"] > a95["diff_ci_high"]
    assert c95.attrs["confidence"] == 0.95


def _fake_run(d, model, dataset, fp, taxonomies, rate_by_tax):
    """A finished run folder: predictions.parquet, metrics.csv, run.json."""
    d.mkdir(parents=True)
    preds, mets = [], []
    for tax in taxonomies:
        k = rate_by_tax[tax]
        p = pd.DataFrame({"image_id": [f"i{i}" for i in range(100)], "taxonomy": tax, "method": "zero_shot",
                          "predicted_category": ["flag" if i < k else "ok" for i in range(100)],
                          "race": ["A"] * 50 + ["B"] * 50})
        preds.append(p)
        for g, part in p.groupby("race"):
            for cat in ("flag", "ok"):
                c = int((part["predicted_category"] == cat).sum())
                mets.append({"taxonomy": tax, "method": "zero_shot", "metric": "rate", "category": cat,
                             "slice": "race", "group": g, "n": len(part), "count": c, "value": c / len(part),
                             "ci_low": 0.0, "ci_high": 1.0})
    pd.concat(preds).to_parquet(d / "predictions.parquet")
    pd.DataFrame(mets).to_csv(d / "metrics.csv", index=False)
    (d / "run.json").write_text(json.dumps({"model": {"name_or_path": model},
                                            "dataset": {"name": dataset, "fingerprint": fp}}))
    return d


def test_compare_pairs_taxonomies_by_name_across_runs_of_different_models(tmp_path, capsys):
    # run 1 lists gender then race; run 2 race then gender: each is compared with its namesake
    r1 = _fake_run(tmp_path / "0", "org/model-a", "fairface", "fp", ["fairface_gender", "fairface_race"],
                   {"fairface_gender": 10, "fairface_race": 30})
    r2 = _fake_run(tmp_path / "1", "/models/model-b", "fairface", "fp", ["fairface_race", "fairface_gender"],
                   {"fairface_gender": 40, "fairface_race": 30})
    cmp = compare_runs([r1, r2])
    pairs = set(zip(cmp["baseline"], cmp["variant"]))
    assert pairs == {("org/model-a: fairface_gender", "model-b: fairface_gender"),
                     ("org/model-a: fairface_race", "model-b: fairface_race")}
    race = cmp[cmp["baseline"].str.endswith("fairface_race")]
    assert (race["diff"] == 0).all() and not race["significant"].any()  # the same predictions
    gender = cmp[(cmp["baseline"].str.endswith("gender")) & (cmp["category"] == "flag") & (cmp["group"] == "A")]
    assert gender["diff"].item() == pytest.approx(40 / 50 - 10 / 50)
    assert set(cmp["test"]) == {"mcnemar_exact"}  # same images
    # --baseline picks the baseline run (by folder or by label)
    other = compare_runs([r1, r2], baseline=str(r2))
    assert set(other["baseline"].str.split(": ").str[0]) == {"model-b"}
    assert set(compare_runs([r1, r2], baseline="model-b")["baseline"]) == set(other["baseline"])
    with pytest.raises(CompareError, match="--baseline 'nope' is none of the runs"):
        compare_runs([r1, r2], baseline="nope")
    # different datasets: labelled by model and dataset, compared from counts
    r3 = _fake_run(tmp_path / "2", "org/model-a", "utkface", "fp2", ["fairface_race"], {"fairface_race": 10})
    c3 = compare_runs([r1, r3])
    assert set(c3["variant"]) == {"org/model-a on utkface: fairface_race"}
    assert set(c3["test"]) == {"two_proportion_z"}
    row = c3[(c3["category"] == "flag") & (c3["group"] == "A")].iloc[0]
    lo, hi = newcombe_diff(10, 50, 30, 50)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == (pytest.approx(float(lo)), pytest.approx(float(hi)))
    # a folder that is not a finished run, or a baseline that is none of the runs: one line, exit 2
    from clipfair.cli import main

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "predictions.parquet").write_bytes(b"")
    capsys.readouterr()  # what earlier calls printed or logged
    for argv, says in (([str(r1), str(tmp_path / "half")], "not a clipfair run folder: metrics.csv, run.json missing"),
                       ([str(r1), str(r2), "--baseline", "nope"], "--baseline 'nope' is none of the runs")):
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clipfair: error:") and says in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    # runs that share no taxonomy name
    r4 = _fake_run(tmp_path / "3", "org/model-c", "fairface", "fp", ["other"], {"other": 5})
    with pytest.raises(CompareError, match="share no taxonomy name"):
        compare_runs([r4, r1])


def test_template_set_expansion_and_spread():
    t = Taxonomy("t", ("a {}.",), (TaxonomyClass("x", ("x",), "c"), TaxonomyClass("y", ("y",), "d")))
    out = expand_template_sets([t], {"t": {"s1": ["the {}!"], "s2": "{}"}})
    assert [o.name for o in out] == ["t@default", "t@s1", "t@s2"]
    assert out[2].templates == ("{}",)
    with pytest.raises(TaxonomyError, match="not in this run"):
        expand_template_sets([t], {"u": {"s": ["{}"]}})
    with pytest.raises(TaxonomyError, match=r"must contain '\{\}'"):
        expand_template_sets([t], {"t": {"s": ["no slot"]}})

    rows = []
    vals = {"default": (0.1, 0.3), "s1": (0.2, 0.5), "s2": (0.05, 0.4)}
    for s, (va, vb) in vals.items():
        for g, v in (("A", va), ("B", vb)):
            rows.append({"taxonomy": f"t@{s}", "variant_of": "t", "template_set": s, "method": "zero_shot",
                         "metric": "rate", "category": "c", "slice": "race", "group": g, "value": v})
    spr = spread(pd.DataFrame(rows))
    a = spr[spr["group"] == "A"].iloc[0]
    assert (a["min"], a["max"], a["min_set"], a["max_set"]) == (0.05, 0.2, "s2", "s1")
    assert a["std"] == pytest.approx(np.std([0.1, 0.2, 0.05]))


def test_identical_template_sets_are_refused():
    t = Taxonomy("t", ("a photo of {}.",), (TaxonomyClass("x", ("x",), "c"), TaxonomyClass("y", ("y",), "d")))
    with pytest.raises(TaxonomyError, match=r"template_sets.t.b: the same templates as set 'a'"):
        expand_template_sets([t], {"t": {"a": ["{}", "the {}"], "b": ["the {}", "{}"]}})
    with pytest.raises(TaxonomyError, match="the same templates as set default"):
        expand_template_sets([t], {"t": {"photo_of": ["a photo of {}."]}})


def _sens_rows(values: dict) -> pd.DataFrame:
    """values: (category, set) -> {group: count of 100}"""
    rows = []
    for (cat, s), by_group in values.items():
        for g, k in by_group.items():
            rows.append({"taxonomy": f"t@{s}", "variant_of": "t", "template_set": s, "method": "zero_shot",
                         "metric": "rate", "category": cat, "slice": "race", "group": g, "n": 100, "count": k,
                         "value": k / 100})
    return pd.DataFrame(rows)


def test_robust_only_when_the_same_group_is_clearly_worst_under_every_set():
    m = _sens_rows({
        ("harm", "default"): {"A": 5, "B": 40, "C": 8},    # B clearly worst under every set: robust
        ("harm", "s1"): {"A": 6, "B": 35, "C": 9},
        ("close", "default"): {"A": 5, "B": 12, "C": 10},  # B worst everywhere, but not clear of C
        ("close", "s1"): {"A": 6, "B": 13, "C": 11},
        ("flip", "default"): {"A": 40, "B": 5, "C": 5},    # the worst group changes
        ("flip", "s1"): {"A": 5, "B": 40, "C": 5},
        ("flat", "default"): {"A": 100, "B": 100, "C": 100},  # the same for every group: left out
        ("flat", "s1"): {"A": 100, "B": 100, "C": 100},
        ("plain", "default"): {"A": 5, "B": 60, "C": 5},   # no declared direction: never ranked
        ("plain", "s1"): {"A": 5, "B": 60, "C": 5},
    })
    harms = {"t": {"harm": True, "close": True, "flip": True, "flat": False}}
    f = findings(m, harms, min_n=30).set_index("category")
    assert set(f.index) == {"harm", "close", "flip"}
    assert f.loc["harm", "robust"] and f.loc["harm", "worst_group"] == "B"
    assert not f.loc["close", "robust"] and f.loc["close", "worst_group"] == ""
    assert "vs C" in f.loc["close", "gap_by_set"]
    assert not f.loc["flip", "robust"] and f.loc["flip", "worst_groups_by_set"] == "default: A; s1: B"
    # directions come from the base taxonomy's declaration, also when keyed by the expanded names
    f2 = findings(m, {"t@default": harms["t"], "t@s1": harms["t"]}, min_n=30)
    assert set(f2["category"]) == set(f.index)
    # groups below min_n are not ranked
    assert findings(m, harms, min_n=101).empty


def test_builtin_prompt_sensitivity_sets_are_all_distinct():
    """The shipped experiment expands without an identical set (it had two)."""
    from pathlib import Path

    import yaml

    from clipfair.data.taxonomy import load_taxonomies

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "experiment" / "prompt_sensitivity.yaml")
                         .read_text())
    taxa = expand_template_sets(load_taxonomies(cfg["taxonomies"]), cfg["template_sets"])
    assert len(taxa) == sum(len(s) + 1 for s in cfg["template_sets"].values())
