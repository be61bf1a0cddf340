"""Variant comparison and prompt sensitivity on inputs whose answers are known."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from clipfair.compare import (benjamini_hochberg, compare_paired, compare_runs, holm, mcnemar_exact,
                              side_by_side, two_proportion_z, write_comparison)
from clipfair.sensitivity import expand_template_sets, findings, spread
from clipfair.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError


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
    from clipfair.outputs import OutputError

    with pytest.raises(OutputError, match="predictions.parquet"):
        compare_runs([tmp_path / "r1", tmp_path])
    # the command-line form writes the same table
    from clipfair.cli import main

    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--out", str(tmp_path / "cli")]) == 0
    cli_table = pd.read_csv(tmp_path / "cli" / "comparison.csv", keep_default_na=False)
    assert len(cli_table) == len(paired)
    assert cli_table.query("slice == 'race' and group == 'A'")["diff"].item() == pytest.approx(-0.6)
    written = write_comparison(paired, tmp_path / "out", "holm", 0.05)
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert f"Holm-Bonferroni over all {len(paired)} comparisons" in md and "| -60.0 [" in md
    assert "| race | A | 100 | 100.0% | 40.0%* |" in md  # the side-by-side table
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in written)


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
            rows.append({"taxonomy": f"t@{s}", "method": "zero_shot", "metric": "rate", "category": "c",
                         "slice": "race", "group": g, "value": v})
    spr = spread(pd.DataFrame(rows))
    a = spr[spr["group"] == "A"].iloc[0]
    assert (a["min"], a["max"], a["min_set"], a["max_set"]) == (0.05, 0.2, "s2", "s1")
    assert a["std"] == pytest.approx(np.std([0.1, 0.2, 0.05]))
    disp = pd.DataFrame([{"taxonomy": f"t@{s}", "method": "zero_shot", "metric": "rate", "category": "c",
                          "slice": "race", "worst_group": w} for s, w in (("default", "B"), ("s1", "B"), ("s2", "B"))]
                        + [{"taxonomy": f"t@{s}", "method": "zero_shot", "metric": "rate", "category": "d",
                            "slice": "race", "worst_group": w} for s, w in (("default", "A"), ("s1", "B"), ("s2", "A"))])
    f = findings(disp)
    assert f.set_index("category")["robust"].to_dict() == {"c": True, "d": False}
    assert f.set_index("category")["worst_group"]["c"] == "B"
