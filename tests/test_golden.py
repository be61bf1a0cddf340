"""Done-when of issue 20: the outputs of small runs on the demo data equal, in every column they had
before the analyses refactor, the files recorded from the old code (tests/golden/, made by
tests/golden/cases.py from main at 1d8f7c6 (probe merged), the code without the analyses refactor; first recorded at 6b14feb). New columns may be added; rows and values may not change."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from cases import CASES, run_case  # noqa: E402


def read(path: Path) -> pd.DataFrame:
    from clipfair.utility.outputs import read_csv  # recorded with write_csv's CSV-injection quoting

    return read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_equal_the_recorded_ones(case, tmp_path):
    out = run_case(case, tmp_path / case, tmp_path / "cache")
    recorded = sorted((GOLDEN / case).glob("*.csv.gz"))
    assert recorded, f"no recorded outputs for {case}"
    for gz in recorded:
        name = gz.name[: -len(".gz")]
        old = read(gz)
        assert (out / name).exists(), f"{case}: {name} is no longer written"
        from clipfair.utility.outputs import read_csv  # undoes the CSV-injection quoting of text cells (main, f7adab4)

        new = read_csv(out / name, dtype=str, keep_default_na=False)
        if name == "metrics.csv" and "analysis" in new.columns:
            # retrieval's figures are also rows of the one results table now (issue 20, part 3): new
            # rows, each equal to its retrieval.csv row (tests/test_results_retrieval.py); the other rows
            # must stay exactly as recorded, in their order
            added = (new["analysis"] == "retrieval_bias").to_numpy()
            assert added.any() == (GOLDEN / case / "retrieval.csv.gz").exists()
            new = new[~added].reset_index(drop=True)
        missing = [c for c in old.columns if c not in new.columns]
        assert not missing, f"{case}/{name}: columns {missing} are gone"
        assert len(new) == len(old), f"{case}/{name}: {len(new)} rows, recorded {len(old)}"
        for c in old.columns:
            diff = (new[c].to_numpy() != old[c].to_numpy())
            assert not diff.any(), (f"{case}/{name}: column {c!r} differs in {int(diff.sum())} rows, e.g. row "
                                    f"{int(diff.argmax())}: {new[c].iloc[diff.argmax()]!r} != {old[c].iloc[diff.argmax()]!r}")
        if name == "metrics.csv":  # the results model's key columns (issue 20, part 3)
            assert new["analysis"].isin(["zero_shot", "linear_probe", "model_card"]).all()
            own = new[new["metric"] != "accuracy_race_binary"]  # the model card's rescoring is its own
            assert (own.loc[own["method"] == "linear_probe", "analysis"] == "linear_probe").all()
            assert (new.loc[new["metric"] == "accuracy_race_binary", "analysis"] == "model_card").all()
            top = new[new["metric"] == "topk_accuracy"]
            assert (top["k"] == top["category"].str.removeprefix("top-")).all() and len(top)
            if case == "sensitivity_probe_retrieval":
                var = new[new["taxonomy"].str.contains("@")]
                assert (var["variant_of"] + "@" + var["template_set"] == var["taxonomy"]).all() and len(var)
                assert (new.loc[~new["taxonomy"].str.contains("@"), "template_set"] == "").all()
            inter = new[new["slice"] == "race+gender"]
            assert (inter["race"] + "+" + inter["gender"] == inter["group"]).all() and len(inter)
