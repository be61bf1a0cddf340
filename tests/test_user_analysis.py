"""Done-when of issue 20: an analysis in the user's own module (written to a temporary folder at
test time, no edit to clipfair), named by ``_target_`` under ``analyses``, gets its per-group rows
with intervals, its disparities, a report section and ``clipfair collect`` rows. Numbers are
checked against scipy / statsmodels computed here from the outcomes the module itself saves."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

USER_MODULE = '''
import numpy as np
import pandas as pd

from clipfair.analyses import Analysis, MetricSpec, Needs


class PromptAffinity(Analysis):
    """How close each image is to one prompt: the cosine similarity (a mean per group) and
    whether it is above the run's median (a share per group)."""

    name = "affinity"
    outcomes = [MetricSpec("affinity", "neutral", "mean", "cosine similarity to the prompt"),
                MetricSpec("above_median", "lower_is_better", "proportion", "similarity above the median")]
    needs = Needs(image_embeddings="projected", text=True)

    def __init__(self, prompt="a photo of a person", save_to=None):
        super().__init__(prompt=prompt)
        self.prompt, self.save_to = prompt, save_to

    def run(self, ctx):
        text = ctx.encode_text([self.prompt])[0]
        sim = ctx.image_embeddings @ text
        out = pd.DataFrame({"image_id": ctx.table["image_id"],
                            **{a: ctx.table[a] for a in ctx.attributes},
                            "affinity": sim, "above_median": (sim > np.median(sim)).astype(int)})
        if self.save_to:
            out.to_csv(self.save_to, index=False)
        return out

    @classmethod
    def collect(cls, runs, base, out_dir):
        """clipfair collect's hook: one row per run that recorded this analysis."""
        from clipfair.report.document import Section, Text

        path = out_dir / "collected_affinity_runs.csv"
        pd.DataFrame({"label": [r.label for r in runs], "model": [r.model for r in runs]}).to_csv(path, index=False)
        return [path], [Section("Affinity across runs", [Text(f"{len(runs)} run(s) measured affinity.")])]
'''


@pytest.fixture
def user_run(tmp_path, monkeypatch, compose):
    from clipfair.cli import run_from_config

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_affinity.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    saved = tmp_path / "outcomes.csv"
    overrides = ["progress=false", "dataset.limit=160", "taxonomies=[fairface_gender]",
                 "slices=[overall,gender,race]", "disparity_min_n=20", f"cache.dir={tmp_path / 'cache'}",
                 "+analyses.affinity._target_=my_affinity.PromptAffinity",
                 "+analyses.affinity.prompt='a photo of a smiling person'",
                 f"+analyses.affinity.save_to={saved}"]
    out = tmp_path / "run"
    run_from_config(compose(overrides), out, overrides)
    return out, pd.read_csv(saved)


def test_user_analysis_gets_rows_disparities_report_and_collect(user_run, tmp_path):
    from statsmodels.stats.proportion import proportion_confint
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    out, units = user_run
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    mine = met[met["analysis"] == "affinity"]
    assert set(mine["metric"]) == {"affinity", "above_median"}
    assert set(mine["slice"]) == {"overall", "gender", "race"}
    # the classification rows are still there, with their own analysis
    assert set(met.loc[met["taxonomy"] == "fairface_gender", "analysis"]) == {"zero_shot"}
    # the key column scoring: accuracies score one class among the taxonomy's n; elsewhere empty
    from clipfair.data.taxonomy import load_taxonomies

    n_classes = len(load_taxonomies(["fairface_gender"])[0].classes)
    acc = met[met["metric"].isin(["accuracy", "worst_group_accuracy"])]
    assert len(acc) and (acc["scoring"] == f"{n_classes}-way").all()
    assert met.loc[~met["metric"].isin(["accuracy", "worst_group_accuracy", "topk_accuracy"]), "scoring"].isna().all()
    # means: t interval per group, stated in the interval column
    for g, part in units.groupby("gender"):
        row = mine[(mine["metric"] == "affinity") & (mine["slice"] == "gender") & (mine["group"] == g)].iloc[0]
        x = part["affinity"].to_numpy()
        lo, hi = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
        assert (row["n"], row["kind"], row["interval"]) == (len(x), "mean", "t")
        assert row["value"] == pytest.approx(x.mean(), rel=1e-5)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, rel=1e-4), pytest.approx(hi, rel=1e-4))
        assert row["gender"] == g  # the group's value in its own column
    # proportions: Wilson
    for r, part in units.groupby("race"):
        row = mine[(mine["metric"] == "above_median") & (mine["slice"] == "race") & (mine["group"] == r)].iloc[0]
        k, n = int(part["above_median"].sum()), len(part)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (row["count"], row["n"], row["interval"]) == (k, n, "wilson")
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
        assert bool(row["small"]) == (n < 30)

    # disparities: Welch's difference of means for the mean outcome, highest vs lowest (neutral)
    disp = pd.read_csv(out / "disparities.csv", keep_default_na=False, na_values=[""])
    d = disp[(disp["taxonomy"] == "affinity") & (disp["metric"] == "affinity") & (disp["slice"] == "gender")
             & (disp["comparison"] == "highest_vs_lowest")].iloc[0]
    assert d["kind"] == "mean" and d["direction"] == "neutral"
    a = units.loc[units["gender"] == d["group"], "affinity"].to_numpy()
    b = units.loc[units["gender"] == d["reference"], "affinity"].to_numpy()
    assert a.mean() >= b.mean()
    lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(alpha=0.05, usevar="unequal")
    assert d["difference"] == pytest.approx(a.mean() - b.mean(), rel=1e-4)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(lo, rel=1e-3), pytest.approx(hi, rel=1e-3))
    assert d["p_value"] == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-3)
    # the proportion outcome: lower is better (declared), worst vs best with Newcombe
    p = disp[(disp["taxonomy"] == "affinity") & (disp["metric"] == "above_median") & (disp["slice"] == "gender")
             & (disp["comparison"] == "worst_vs_best")].iloc[0]
    assert p["direction"] == "lower_is_better" and p["value"] >= p["reference_value"]
    # one adjustment over the whole table: the user's rows are among the classification rows
    tested = disp[disp["p_value"].notna()]
    from clipfair.stats.inference import holm

    assert np.allclose(tested["p_adjusted"].to_numpy(float), holm(tested["p_value"].to_numpy(float)))

    # the report section
    summary = (out / "summary.md").read_text()
    assert "Analysis: affinity" in summary and "cosine similarity to the prompt" in summary
    assert "Analysis: affinity" in (out / "report.html").read_text()

    # collect rows
    from clipfair.run.collect import write_collected

    res = write_collected([out.parent], tmp_path / "collected", metric="affinity", slices=["gender"])
    col = pd.read_csv(res["paths"][0], keep_default_na=False, na_values=[""])
    rows = col[(col["analysis"] == "affinity") & (col["metric"] == "affinity")]
    assert len(rows) == len(mine[mine["metric"] == "affinity"])
    md = (tmp_path / "collected" / "collected.md").read_text()
    assert "affinity across runs" in md
    # the analysis's own collect hook (Analysis.collect): its file and its section, no edit to clipfair
    hooked = tmp_path / "collected" / "collected_affinity_runs.csv"
    assert hooked in res["paths"]
    assert len(pd.read_csv(hooked)) == 1
    assert "Affinity across runs" in md and "1 run(s) measured affinity." in md
    assert "Affinity across runs" in (tmp_path / "collected" / "collected.html").read_text()


def test_a_contract_breach_is_one_line_naming_the_analysis(tmp_path, monkeypatch, compose):
    from clipfair.analyses import AnalysisError
    from clipfair.cli import run_from_config

    (tmp_path / "bad_mod.py").write_text(textwrap.dedent('''
        import pandas as pd
        from clipfair.analyses import Analysis, MetricSpec

        class Bad(Analysis):
            name = "bad"
            outcomes = [MetricSpec("hit", "higher_is_better", "proportion")]

            def run(self, ctx):
                return pd.DataFrame({"image_id": ctx.table["image_id"], "hit": 0.5})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["progress=false", "dataset.limit=40", "taxonomies=[]", f"cache.dir={tmp_path / 'cache'}",
                 "+analyses.bad._target_=bad_mod.Bad"]
    with pytest.raises(AnalysisError, match="analysis 'bad': outcome 'hit' is a proportion"):
        run_from_config(compose(overrides), tmp_path / "run", overrides)
    with pytest.raises(AnalysisError, match="cannot import 'no_such_mod'"):
        run_from_config(compose([*overrides[:-1], "+analyses.bad._target_=no_such_mod.X"]), tmp_path / "run2",
                        overrides)
    with pytest.raises(AnalysisError, match="kind must be one of"):
        from clipfair.analyses import MetricSpec

        MetricSpec("x", "higher_is_better", "ratio")


def test_collect_finds_each_recorded_analysis_once_and_skips_unimportable(tmp_path, monkeypatch, caplog):
    """clipfair collect calls the collect hook of the analyses each run's run.json records (by
    import path, else by registered name), with the runs that recorded it; a class that cannot
    be imported is left out with a warning; a run.json without ``analyses`` (an older run)
    offers its run to every built-in analysis."""
    import logging

    from clipfair.analyses import recorded_analyses
    from clipfair.analyses.registry import BUILTIN_MODULES

    (tmp_path / "hook_mod.py").write_text(textwrap.dedent('''
        from clipfair.analyses import Analysis

        class Hooked(Analysis):
            name = "hooked"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    records = [{"analyses": [{"name": "hooked", "class": "hook_mod.Hooked"},
                             {"name": "zero_shot", "class": "no_such_module.ZeroShot"}]},
               {"analyses": [{"name": "gone", "class": "not_there.Gone"}, {"name": "hooked", "class": "hook_mod.Hooked"}]},
               {"model": {}},
               {"analyses": [{"name": "zen", "class": "this.Zen"}]}]  # a standard module is never imported
    import sys

    had_this = "this" in sys.modules
    with caplog.at_level(logging.WARNING):
        found = dict((c.__qualname__, which) for c, which in recorded_analyses(records))
    assert found["Hooked"] == [0, 1]
    from clipfair.analyses import get_analysis

    zs = get_analysis("zero_shot").__qualname__
    assert found[zs] == [0, 2]  # recorded by name (its path did not import), and the older run
    assert len(found) >= len(BUILTIN_MODULES) + 1  # the older run is offered to every built-in
    assert "not_there.Gone" in caplog.text and "no_such_module" not in caplog.text
    assert "zen" in caplog.text and ("this" in sys.modules) == had_this


def test_run_inputs_reach_every_analysis_that_declares_them(tmp_path, monkeypatch):
    """The CLI builds run-level inputs (a train split, the run's confidence, ...) by name; compose
    hands each analysis the ones its ``run_inputs`` declares (a user's class too), never by the
    analysis's name, and builds no input nobody declares."""
    from clipfair.analyses import compose, get_analysis

    (tmp_path / "needy_mod.py").write_text(textwrap.dedent('''
        from clipfair.analyses import Analysis

        class Needy(Analysis):
            name = "needy"
            run_inputs = ("confidence", "train")

            def __init__(self, confidence=None, train=None, level=1):
                super().__init__(level=level)
                self.confidence, self.train = confidence, train
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    asked = []

    def never(opts):
        asked.append(opts)
        raise AssertionError("an input no analysis declares was built")

    built = compose.build({"needy": {"_target_": "needy_mod.Needy", "level": 2}, "zero_shot": {}},
                          inputs={"confidence": lambda o: 0.9, "train": lambda o: ("train split", o["level"]),
                                  "image_subset": never})
    needy = next(a for a in built if a.name == "needy")
    assert (needy.confidence, needy.train) == (0.9, ("train split", 2))
    assert [a.name for a in built] == ["zero_shot", "needy"] and not asked
    assert get_analysis("linear_probe").run_inputs == ("train",)
