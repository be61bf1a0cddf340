"""write_outputs: summary.md and report.html from one document, with the comparison and
prompt-sensitivity sections that compare.py and sensitivity.py contribute."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from clipfair.run.pipeline import Evaluation, score, write_outputs
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass


def _tax(name: str) -> Taxonomy:
    return Taxonomy(name, ("a photo of {}.",), (TaxonomyClass("person", ("a person",), "human"),
                                                TaxonomyClass("ape", ("an ape",), "non_human")),
                    harms=(("human", False), ("non_human", True)))


def test_write_outputs_one_document_with_comparison_and_sensitivity(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    race = np.array(["A", "B", "C"] * (n // 3), dtype=object)
    frames = []
    for name, boost in (("probe@default", 0.3), ("probe@s1", 0.35), ("probe@s2", 0.25)):
        nh = rng.random(n) < np.where(race == "B", boost + 0.1, 0.05)
        frames.append(pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "taxonomy": name, "method": "zero_shot",
                                    "predicted_label": np.where(nh, "ape", "person"),
                                    "predicted_category": np.where(nh, "non_human", "human"), "race": race}))
    preds = pd.concat(frames, ignore_index=True)
    taxa = [_tax("probe@default"), _tax("probe@s1"), _tax("probe@s2")]
    met, disp = score(preds, taxa, ["overall", "race"])
    # the results model's key columns of template-set variants (set by the prompt sensitivity analysis)
    met["variant_of"], met["template_set"] = "probe", met["taxonomy"].map(
        {"probe@default": "default", "probe@s1": "s1", "probe@s2": "s2"})
    ev = Evaluation(preds, met, disp, counts={"images_evaluated": n}, skipped={})
    record = {"created": "2026-01-01T00:00:00+00:00", "packages": {"clipfair": "9.9"},
              "model": {"name_or_path": "org/clip-x", "family": "open_clip", "scoring": "softmax", "dtype": "bf16"},
              "dataset": {"name": "fairface", "source": {"split": "val"}}}
    written = write_outputs(ev, tmp_path, record, demo=False, taxonomies=taxa,
                            compare={"baseline": "probe@default"}, slices=["overall", "race"])
    names = {p.name for p in written}
    assert {"summary.md", "report.html", "comparison.md", "sensitivity.csv", "sensitivity_findings.csv",
            "disparities.csv", "run.json"} <= names
    md = (tmp_path / "summary.md").read_text()
    # the header from run.json's record
    for text in ("# clipfair results: org/clip-x on fairface", "| **family** | open_clip |",
                 "| **scoring** | softmax |", "| **dtype** | bf16 |", "| **dataset** | fairface (split=val) |",
                 "240 evaluated, 0 skipped", "| **clipfair** | 9.9 |", "| **date** | 2026-01-01"):
        assert text in md, text
    # one heading level per nesting, no patched headings; the stages' sections are in both files
    assert md.count("\n## Taxonomy variant comparison\n") == 1 and md.count("\n## Prompt sensitivity\n") == 1
    assert "\n### probe@s1 vs probe@default\n" in md
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Taxonomy variant comparison</h2>" in html and "<h2>Prompt sensitivity</h2>" in html
    assert "toy model" not in md  # not a demo run: no demo banner
    # every plot of the run is in the page, and the compare plots sit in their section
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and html.count('<img src="data:image/png;base64,') == len(pngs)
    comp = html[html.index("<h2>Taxonomy variant comparison</h2>"):html.index("<h2>Prompt sensitivity</h2>")]
    assert "compare rate" in comp or 'alt="rate of' in comp
    assert "Other plots" not in html
    # the sensitivity finding: B worst under every set, clear of the next group
    fnd = pd.read_csv(tmp_path / "sensitivity_findings.csv", keep_default_na=False)
    nh = fnd[(fnd["category"] == "non_human") & (fnd["slice"] == "race")].iloc[0]
    assert nh["worst_group"] == "B" and bool(nh["robust"])
    assert re.search(r"\| probe \| zero_shot \| rate \| non_human \| race \| B \| robust \|", md)
