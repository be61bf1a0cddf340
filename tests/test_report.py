"""Tests of clipfair.report: Markdown summary and PNG plots from the long frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipfair.metrics import METRIC_COLUMNS, disparities
from clipfair.report import (
    _accuracy_figure,
    _rates_figure,
    plot_accuracy,
    plot_category_rates,
    summary_markdown,
    write_report,
)


def _row(tax, method, metric, category, slice_, group, n, count, lo, hi):
    return dict(taxonomy=tax, method=method, metric=metric, category=category, slice=slice_,
                group=group, n=n, count=count, value=count / n, ci_low=lo, ci_high=hi, small=n < 30)


@pytest.fixture()
def hand_metrics() -> pd.DataFrame:
    """A target taxonomy (2 methods, slices overall/race/gender, no age), a probe with
    3 categories (slices overall/race) and a single-category taxonomy."""
    rows = []
    for meth, (kw, kb, kf, km) in {"zero_shot": (6, 1, 3, 4), "linear_probe": (8, 3, 5, 6)}.items():
        rows += [
            # Wilson 95% for 6/8: (0.409275, 0.928521); values are given, not recomputed
            _row("fairface_race", meth, "accuracy", "", "overall", "all", 12, kw + kb, 0.3, 0.8),
            _row("fairface_race", meth, "accuracy", "", "race", "White", 8, kw, 0.409275, 0.928521),
            _row("fairface_race", meth, "accuracy", "", "race", "Black", 4, kb, 0.045587, 0.699358),
            _row("fairface_race", meth, "accuracy", "", "gender", "Male", 6, km, 0.3, 0.9),
            _row("fairface_race", meth, "accuracy", "", "gender", "Female", 6, kf, 0.2, 0.8),
            _row("fairface_race", meth, "rate", "race", "overall", "all", 12, 12, 0.75, 1.0),
            _row("fairface_race", meth, "rate", "race", "race", "White", 8, 8, 0.67, 1.0),
            _row("fairface_race", meth, "rate", "race", "race", "Black", 4, 4, 0.51, 1.0),
        ]
    probe = {"White": (8, [7, 1, 0]), "Black": (3, [1, 1, 1])}
    rows.append(_row("denig", "zero_shot", "rate", "human", "overall", "all", 11, 8, 0.4, 0.9))
    rows.append(_row("denig", "zero_shot", "rate", "non_human", "overall", "all", 11, 2, 0.05, 0.5))
    rows.append(_row("denig", "zero_shot", "rate", "crime_related", "overall", "all", 11, 1, 0.02, 0.4))
    for i, cat in enumerate(["human", "non_human", "crime_related"]):
        for g, (n, counts) in probe.items():
            rows.append(_row("denig", "zero_shot", "rate", cat, "race", g, n, counts[i],
                             max(0.0, counts[i] / n - 0.2), min(1.0, counts[i] / n + 0.2)))
    m = pd.DataFrame(rows)[list(METRIC_COLUMNS)]
    return m


def _md_rows(md: str, first_cells: tuple) -> list[list[str]]:
    """Table rows whose leading cells equal first_cells, split into cells."""
    out = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if tuple(cells[: len(first_cells)]) == first_cells:
                out.append(cells)
    return out


def test_summary_accuracy_cells(hand_metrics):
    md = summary_markdown(hand_metrics, disparities(hand_metrics))
    assert md.startswith("# clipfair results\n")
    white = _md_rows(md, ("race", "White"))
    # zero_shot first, then linear_probe (order of first appearance)
    assert white[0] == ["race", "White", "75.0% [40.9–92.9] (8)"]
    assert white[1] == ["race", "White", "100.0% [40.9–92.9] (8)"]
    assert _md_rows(md, ("race", "Black"))[0] == ["race", "Black", "25.0% [4.6–69.9] (4)"]
    assert _md_rows(md, ("overall", "all"))[0] == ["overall", "all", "58.3% [30.0–80.0] (12)"]
    assert md.index("### fairface_race · zero_shot") < md.index("### fairface_race · linear_probe")


def test_summary_rate_tables_and_disparities(hand_metrics):
    md = summary_markdown(hand_metrics, disparities(hand_metrics))
    sec = md[md.index("## Predicted categories"):md.index("## Largest disparities")]
    assert "### denig · zero_shot — by race" in sec
    assert "| race | n | human | non_human | crime_related |" in sec
    assert _md_rows(sec, ("White",)) == [["White", "8", "87.5%", "12.5%", "0.0%"]]
    assert _md_rows(sec, ("Black",)) == [["Black", "3", "33.3%", "33.3%", "33.3%"]]
    assert _md_rows(sec, ("all",)) == [["all", "11", "72.7%", "18.2%", "9.1%"]]
    # single-category taxonomy: no table, but named
    assert "fairface_race · zero_shot — by race" not in sec
    assert "left out: fairface_race." in sec
    dis = md[md.index("## Largest disparities"):]
    # accuracy by race, linear_probe: White 100% vs Black 75%; zero_shot: 75% vs 25%
    acc_rows = _md_rows(dis, ("fairface_race", "zero_shot", "–", "race"))
    assert acc_rows == [["fairface_race", "zero_shot", "–", "race", "White 75.0%", "Black 25.0%",
                         "50.0", "0.33", "2"]]
    # rates: lowest share is best
    hum = _md_rows(dis, ("denig", "zero_shot", "human", "race"))
    assert hum == [["denig", "zero_shot", "human", "race", "Black 33.3%", "White 87.5%",
                    "54.2", "0.38", "2"]]
    crime = _md_rows(dis, ("denig", "zero_shot", "crime_related", "race"))
    assert crime[0][4:6] == ["White 0.0%", "Black 33.3%"]
    # sorted by gap within the accuracy table
    acc_sec = dis[dis.index("### accuracy"):dis.index("### rate")]
    gaps = [float(r[6]) for r in _md_rows(acc_sec, ("fairface_race",))]
    assert gaps == sorted(gaps, reverse=True) and len(gaps) == 4


def test_summary_header_lines_and_title(hand_metrics):
    md = summary_markdown(hand_metrics, disparities(hand_metrics), title="Run 7",
                          header_lines=["**Warning:** tiny groups.", "Skipped: age (absent)."])
    lines = md.splitlines()
    assert lines[0] == "# Run 7"
    assert lines.index("**Warning:** tiny groups.") < lines.index("Skipped: age (absent).") \
        < lines.index("## Accuracy")


def test_summary_same_after_csv_round_trip(hand_metrics, tmp_path):
    d = disparities(hand_metrics)
    hand_metrics.to_csv(tmp_path / "m.csv", index=False)
    d.to_csv(tmp_path / "d.csv", index=False)
    back_m = pd.read_csv(tmp_path / "m.csv", keep_default_na=True)
    back_d = pd.read_csv(tmp_path / "d.csv")
    assert summary_markdown(back_m, back_d) == summary_markdown(hand_metrics, d)


def test_summary_uses_confidence_from_attrs(hand_metrics):
    m = hand_metrics.copy()
    m.attrs["confidence"] = 0.9
    md = summary_markdown(m, disparities(m))
    assert "accuracy [90% CI] (n)" in md
    assert "accuracy [CI] (n)" in summary_markdown(hand_metrics, disparities(hand_metrics))


def test_pipe_in_group_name_is_escaped(hand_metrics):
    m = hand_metrics.copy()
    m.loc[m["group"] == "White", "group"] = "Wh|te"
    md = summary_markdown(m, disparities(m))
    assert "| race | Wh\\|te | 75.0% [40.9–92.9] (8) |" in md


# --------------------------------------------------------------------------- figures

def test_accuracy_figure_content(hand_metrics):
    fig = _accuracy_figure(hand_metrics, "fairface_race", "zero_shot", "race")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([75.0, 25.0])
    assert ax.get_ylim() == (0.0, 100.0)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["White\nn=8", "Black\nn=4"]
    # error bars span the CI
    segs = [c for c in ax.collections if c.get_segments()]
    spans = sorted((round(s[0][1], 2), round(s[1][1], 2)) for c in segs for s in c.get_segments())
    assert spans == [(4.56, 69.94), (40.93, 92.85)]
    assert ax.yaxis.get_gridlines()[0].get_visible()
    assert "accuracy" in ax.get_ylabel() and "race" in ax.get_title()


def test_rates_figure_content(hand_metrics):
    fig = _rates_figure(hand_metrics, "denig", "race")
    ax = fig.axes[0]
    heights = [round(p.get_height(), 3) for p in ax.patches]
    # category by category, groups in order
    assert heights == [87.5, 33.333, 12.5, 33.333, 0.0, 33.333]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["human", "non_human", "crime_related"]
    fig2 = _rates_figure(hand_metrics, "denig", "race", categories=["crime_related"])
    assert [round(p.get_height(), 3) for p in fig2.axes[0].patches] == [0.0, 33.333]
    with pytest.raises(ValueError, match="child"):
        _rates_figure(hand_metrics, "denig", "race", categories=["child"])


def test_plot_missing_combination_raises(hand_metrics, tmp_path):
    with pytest.raises(ValueError, match="available"):
        plot_accuracy(hand_metrics, "fairface_race", "zero_shot", "age", tmp_path / "a.png")
    with pytest.raises(ValueError, match="available"):
        plot_category_rates(hand_metrics, "denig", "race", tmp_path / "b.png", method="linear_probe")
    assert not any(tmp_path.iterdir())


def _check_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= 300 and h >= 200
        arr = np.asarray(im.convert("RGB"))
    # not blank: bars in colour, text in black
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20
    return w, h


def test_write_report(hand_metrics, tmp_path):
    out = tmp_path / "report"
    paths = write_report(hand_metrics, disparities(hand_metrics), out,
                         header_lines=["**Synthetic.**"])
    names = [p.name for p in paths]
    expected_plots = [
        "accuracy_fairface_race_zero_shot_race.png",
        "accuracy_fairface_race_zero_shot_gender.png",
        "accuracy_fairface_race_linear_probe_race.png",
        "accuracy_fairface_race_linear_probe_gender.png",
        "rates_denig_race.png",
    ]
    assert names == expected_plots + ["summary.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for p in paths[:-1]:
        _check_png(p)
    md = (out / "summary.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(expected_plots)
    assert "**Synthetic.**" in md
    assert _md_rows(md, ("race", "White"))[0] == ["race", "White", "75.0% [40.9–92.9] (8)"]
    # a plot link sits after its table
    assert md.index("accuracy_fairface_race_zero_shot_race.png") > md.index("### fairface_race · zero_shot")


def test_write_report_sanitises_names(hand_metrics, tmp_path):
    m = hand_metrics[hand_metrics["taxonomy"] == "denig"].copy()
    m["taxonomy"] = "my probe/v2"
    paths = write_report(m, disparities(m), tmp_path)
    assert [p.name for p in paths] == ["rates_my_probe_v2_race.png", "summary.md"]
    _check_png(paths[0])


def test_plots_from_group_metrics(tmp_path):
    """End to end with the metrics stage: every slice present gets its plot."""
    from clipfair.metrics import group_metrics
    rng = np.random.default_rng(0)
    n = 120
    race = rng.choice(["White", "Black", "Indian"], n)
    df = pd.DataFrame({
        "image_id": [str(i) for i in range(n)], "taxonomy": "t", "method": "zero_shot",
        "predicted_label": race, "predicted_category": rng.choice(["human", "non_human"], n),
        "true_label": race, "correct": rng.random(n) < 0.7, "race": race,
        "gender": rng.choice(["Male", "Female"], n), "age": rng.choice(["20-29", "3-9"], n),
    })
    m = group_metrics(df, {"t": ["human", "non_human"]})
    paths = write_report(m, disparities(m), tmp_path)
    assert [p.name for p in paths] == [
        "accuracy_t_zero_shot_race.png", "accuracy_t_zero_shot_gender.png",
        "accuracy_t_zero_shot_age.png", "rates_t_race.png", "rates_t_age.png", "summary.md"]
    sizes = [_check_png(p) for p in paths[:-1]]
    assert all(w > h for w, h in sizes)
    md = paths[-1].read_text(encoding="utf-8")
    acc = m[(m.metric == "accuracy") & (m.slice == "race") & (m.group == "White")].iloc[0]
    assert f"{acc.value * 100:.1f}% [{acc.ci_low * 100:.1f}–{acc.ci_high * 100:.1f}] ({acc.n})" in md
    assert "accuracy [95% CI] (n)" in md
    # age groups in canonical order (3-9 before 20-29)
    assert md.index("| age | 3-9 |") < md.index("| age | 20-29 |")
