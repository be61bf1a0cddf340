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
TINY = ["dataset=demo", "model=demo", "progress=false", "dataset.limit=60", "probe.train_limit=120",
        "probe.Cs=[1.0]", "probe.refine_steps_per_decade=0", "probe.features=projected",
        "retrieval.bootstrap.B=10", "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5]",
        "precision_audit.n=8", "disparity_min_n=10"]
#: what each experiment must have written (beyond metrics.csv, disparities.csv, report.html, run.json)
FILES = {"compare_denigration": ["comparison.csv"], "compare_race": ["comparison.csv"],
         "model_card": ["model_card.csv", "model_card.md"], "prompt_sensitivity": ["sensitivity.csv"],
         "retrieval_bias": ["retrieval.csv", "retrieval.md"]}


def test_every_experiment_is_listed():
    assert set(EXPERIMENTS) == set(FILES), "add the new experiment to FILES in this test"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_a_tiny_fixture(experiment, tmp_path, compose):
    from clipfair.cli import run_from_config

    overrides = [f"experiment={experiment}", *TINY, f"cache.dir={tmp_path / 'cache'}"]
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
