"""Every ``experiment=`` config composed and run end to end on a tiny slice of the demo data (as
lightning-hydra-template's sweep tests do): each composes its analyses from the registry and
writes their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import clipfair.configs

EXPERIMENTS = sorted(p.stem for p in (Path(clipfair.configs.__file__).parent / "experiment").glob("*.yaml"))
TINY = ["model=demo", "progress=false", "probe.train_limit=120",
        "probe.Cs=[1.0]", "probe.refine_steps_per_decade=0", "probe.features=projected",
        "retrieval.bootstrap.B=10", "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5]",
        "precision_audit.n=8", "disparity_min_n=10"]
#: what each experiment must have written (beyond metrics.csv, disparities.csv, report.html, run.json)
FILES = {"compare_denigration": ["comparison.csv"], "compare_race": ["comparison.csv"],
         "model_card": ["model_card.csv", "model_card.md"], "prompt_sensitivity": ["sensitivity.csv"],
         "retrieval_bias": ["retrieval.csv", "retrieval.md"],
         "counterfactual": ["counterfactual.csv", "counterfactual_sets.parquet"],
         "visogender": ["counterfactual.csv", "counterfactual_sets.parquet"],
         "association": ["associations.csv", "markedness.csv", "associations_forest.png"],
         "dollar_street": ["datacomp_geo.csv", "predictions.parquet"], "geode": ["datacomp_geo.csv", "predictions.parquet"],
         "facet": ["facet_recall.csv"]}


def _dataset_overrides(experiment: str, tmp_path: Path) -> list[str]:
    """The tiny demo slice, or a tiny fixture of the experiment's own dataset layout."""
    if experiment == "counterfactual":
        from test_counterfactual import make_pairs

        return ["dataset=pairs", f"dataset.root={make_pairs(tmp_path / 'pairs')}"]
    if experiment == "visogender":
        from test_counterfactual import make_visogender

        return ["dataset=visogender", f"dataset.root={make_visogender(tmp_path / 'vg')}"]
    if experiment == "facet":
        from fixtures_facet import make_facet

        return ["dataset=facet", f"dataset.root={make_facet(tmp_path / 'facet')}", "analyses.facet.min_n=3"]
    if experiment == "dollar_street":
        import geo_fixtures as gf

        root = gf.make_ds_wds(tmp_path / "ds")
        gf.write_taxonomy(root, gf.DS_CLASSES, "dollar_street_classes")
        return [f"dataset.root={root}"]
    if experiment == "geode":
        import geo_fixtures as gf

        return [f"dataset.root={gf.make_geode_csv(tmp_path / 'geode')}"]
    return ["dataset=demo", "dataset.limit=60"]


def test_every_experiment_is_listed():
    assert set(EXPERIMENTS) == set(FILES), "add the new experiment to FILES in this test"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_a_tiny_fixture(experiment, tmp_path, compose):
    from clipfair.cli import run_from_config

    overrides = [f"experiment={experiment}", *_dataset_overrides(experiment, tmp_path), *TINY,
                 f"cache.dir={tmp_path / 'cache'}"]
    out = tmp_path / "run"
    run_from_config(compose(overrides), out, overrides)
    for f in ["metrics.csv", "disparities.csv", "summary.md", "report.html", "run.json", *FILES[experiment]]:
        assert (out / f).exists(), f"{experiment}: no {f}"
    run = json.loads((out / "run.json").read_text())
    names = [a["name"] for a in run["analyses"]]
    assert names, experiment
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    assert set(met["analysis"]) <= set(names)
    assert met["direction"].isin(["higher_is_better", "lower_is_better", "neutral"]).all()
