"""Identities travel as key columns, never as strings split again (issue 20, "Why" bullet 3): a
taxonomy, template set, attribute or group value whose name holds '@', '+' or ':' comes out of
prompt sensitivity and compare keyed by its own name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipfair.data.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError

TAX = "occ@v2:a+b"          # a taxonomy name with every separator
SET = "s@1+x:y"             # a template set name with every separator
SOLO = "solo@x"             # a taxonomy without template sets whose name looks like a variant
RACES = np.array(["A+B", "C@D", "E:F"], dtype=object)  # group values with the separators


def _tax(name: str) -> Taxonomy:
    return Taxonomy(name, ("a photo of {}.",), (TaxonomyClass("person", ("a person",), "human"),
                                                TaxonomyClass("ape", ("an ape",), "non_human")),
                    harms=(("human", False), ("non_human", True)))


def _predictions(names: list[str], n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    race = np.resize(RACES, n)
    frames = []
    for i, name in enumerate(names):
        nh = rng.random(n) < np.where(race == "C@D", 0.5 + 0.05 * i, 0.05)  # C@D clearly worst everywhere
        frames.append(pd.DataFrame({"image_id": [f"i{j}" for j in range(n)], "taxonomy": name, "method": "zero_shot",
                                    "predicted_label": np.where(nh, "ape", "person"),
                                    "predicted_category": np.where(nh, "non_human", "human"), "race": race}))
    return pd.concat(frames, ignore_index=True)


def test_prompt_sensitivity_keys_variants_by_columns_end_to_end(tmp_path):
    from clipfair.analyses import build_analysis
    from clipfair.run.pipeline import Evaluation, score, write_outputs

    ps = build_analysis("prompt_sensitivity", {"template_sets": {TAX: {SET: ["the {}!"]}}})
    taxa = ps.adjust_taxonomies([_tax(TAX), _tax(SOLO)])
    names = [t.name for t in taxa]
    assert names == [f"{TAX}@default", f"{TAX}@{SET}", SOLO]
    met, disp = score(_predictions(names), taxa, ["overall", "race"])
    ev = Evaluation(_predictions(names), met, disp, counts={"images_evaluated": 300}, skipped={}, analyses=[ps])
    ps.finish(ev, None)
    variants = ev.metrics[ev.metrics["template_set"] != ""]
    assert set(variants["variant_of"]) == {TAX} and set(variants["template_set"]) == {"default", SET}
    assert (ev.metrics.loc[ev.metrics["taxonomy"] == SOLO, "template_set"] == "").all()
    write_outputs(ev, tmp_path, {"model": {"name_or_path": "m"}}, taxonomies=taxa, slices=["overall", "race"])

    from clipfair.utility.outputs import read_csv

    spr = read_csv(tmp_path / "sensitivity.csv", keep_default_na=False)
    assert set(spr["taxonomy"]) == {TAX}  # the base taxonomy whole; the plain taxonomy has no variants
    assert set(spr["min_set"]) | set(spr["max_set"]) <= {"default", SET}
    assert (spr["n_sets"].astype(int) == 2).all()
    assert set(spr.loc[spr["slice"] == "race", "group"]) == set(RACES)
    fnd = read_csv(tmp_path / "sensitivity_findings.csv", keep_default_na=False)
    row = fnd[(fnd["category"] == "non_human") & (fnd["slice"] == "race")].iloc[0]
    assert row["taxonomy"] == TAX and row["worst_group"] == "C@D" and row["robust"] in (True, "True")
    assert row["worst_groups_by_set"] == f"default: C@D; {SET}: C@D"


def test_variant_names_that_would_collide_are_refused():
    from clipfair.methods.sensitivity import expand_template_sets

    with pytest.raises(TaxonomyError, match="would both be named 'a@b@c'"):
        expand_template_sets([_tax("a@b"), _tax("a")], {"a@b": {"c": ["the {}."]}, "a": {"b@c": ["an {}."]}})


def test_compare_reads_variants_and_slices_from_the_record_not_the_names(tmp_path):
    from clipfair.methods.compare import Run, run_slices_and_orders

    met = pd.DataFrame({"taxonomy": [f"{TAX}@{SET}", f"{TAX}@default", SOLO, SOLO],
                        "variant_of": [TAX, TAX, "", ""], "template_set": [SET, "default", "", ""],
                        "method": "zero_shot", "metric": "rate", "category": "human",
                        "slice": ["overall", "overall", "age+band", "age+band:x"],
                        "group": ["all", "all", "0-9", "0-9+p"]})
    classes = [{"label": "person", "prompts": ["a person"], "category": "human"},
               {"label": "ape", "prompts": ["an ape"], "category": "non_human"}]
    record = {"taxonomies": [{"name": TAX, "templates": ["a photo of {}."], "classes": classes},
                             {"name": SOLO, "templates": ["{}"], "classes": classes}],
              "config": {"template_sets": {TAX: {SET: ["the {}!"]}}},
              "slice_attributes": {"overall": [], "age+band": ["age+band"], "age+band:x": ["age+band", "x"]},
              "value_orders": {"age+band": ["0-9"], "x": ["p"]}}
    run = Run(tmp_path, pd.DataFrame(), met, record)
    assert run.taxonomy_spec(f"{TAX}@{SET}")["templates"] == ["the {}!"]
    assert run.taxonomy_spec(f"{TAX}@default")["templates"] == ["a photo of {}."]
    assert run.taxonomy_spec(SOLO)["templates"] == ["{}"]  # its own record, not a variant of 'solo'
    # the same from the recorded sets alone (a run whose metrics.csv has no key columns)
    old = Run(tmp_path, pd.DataFrame(), met.drop(columns=["variant_of", "template_set"]), record)
    assert old.taxonomy_spec(f"{TAX}@{SET}")["templates"] == ["the {}!"]
    slices, _ = run_slices_and_orders(run)
    assert slices == ["overall", "age+band", ("age+band", "x")]
