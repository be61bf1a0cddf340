"""Tests of clipfair.report.render: summary.md / report.html from one document, and the PNG plots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipfair.report.document import Details, Table, to_markdown
from clipfair.stats.metrics import METRIC_COLUMNS, disparities, group_metrics
from clipfair.report.render import (
    ReportContext,
    _accuracy_figure,
    _rates_figure,
    plot_accuracy,
    plot_category_rates,
    summary_document,
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



def _ctx(**kw) -> ReportContext:
    return ReportContext(**{"title": "Run 7", "model": "test-model", **kw})


def planted_predictions(seed: int = 0) -> pd.DataFrame:
    """Groups A, B, C (200 images each) and D (10). Planted: B is put into the harmful
    'non_human' 40% of the time (others 5%); C into the *neutral* 'decoy' 60% of the time
    (others 10%); gender accuracy is exactly 90% in every group and gender."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = {"A": 200, "B": 200, "C": 200, "D": 10}
    i = 0
    for g, n in sizes.items():
        p_nh = 0.4 if g == "B" else 0.05
        p_dec = 0.6 if g == "C" else 0.1
        for k in range(n):
            u = rng.random()
            cat = "non_human" if u < p_nh else "decoy" if u < p_nh + p_dec else "human"
            gender = "Male" if k % 2 else "Female"
            ok = k % 20 not in (0, 1)  # 90% right, alike for Male (even k) and Female (odd k)
            common = {"image_id": str(i), "race": g, "gender": gender, "age": "20-29" if i % 3 else "more than 70"}
            rows.append({**common, "taxonomy": "probe", "method": "zero_shot", "predicted_category": cat})
            rows.append({**common, "taxonomy": "gender", "method": "zero_shot", "predicted_category": "gender",
                         "true_label": gender, "correct": ok, "predicted_label": gender if ok else "other"})
            rows.append({**common, "taxonomy": "gender", "method": "linear_probe", "predicted_category": "gender",
                         "true_label": gender, "correct": k % 20 not in (3, 4)})
            i += 1
    return pd.DataFrame(rows)


HARMS = {"probe": {"non_human": True, "human": False}}  # 'decoy' undeclared: neutral


@pytest.fixture(scope="module")
def planted():
    m = group_metrics(planted_predictions(), {"probe": ["human", "non_human", "decoy"], "gender": ["gender"]},
                      slices=["overall", "race", "gender", "age", ("race", "gender")])
    return m, disparities(m, harms=HARMS)


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    nxt = md.find("\n## ", start + 3)
    return md[start:] if nxt < 0 else md[start:nxt]


def test_header_banner_and_disclaimer(hand_metrics):
    ctx = _ctx(header=[("model", "`org/clip`"), ("family", "open_clip"), ("images", "12 evaluated, 1 skipped")],
               demo=True, disclaimer="Not for surveillance.", skipped={"corrupt": 1})
    md = summary_markdown(hand_metrics, disparities(hand_metrics, min_n=1), ctx)
    lines = md.splitlines()
    assert lines[0] == "# Run 7"
    assert "toy model" in md and "says nothing about CLIP or any real model" in md  # the demo banner
    assert md.index("toy model") < md.index("Not for surveillance.") < md.index("| **model** | `org/clip` |")
    assert "| **family** | open_clip |" in md and "Skipped 1 item(s) (corrupt: 1)" in md
    assert md.index("Skipped") < md.index("## Key findings") < md.index("## Accuracy")


def test_key_findings_hold_only_significant_differences(planted):
    m, d = planted
    md = summary_markdown(m, d, _ctx(harms=HARMS))
    findings = _section(md, "Key findings")
    items = [line for line in findings.splitlines() if re.match(r"^\d+\. ", line)]
    assert items, findings
    sig = d[d["significant"]]
    for line in items:
        tax, meth, what, sl = re.match(r"^\d+\. \*\*(\S+) · (\S+) · (.+?) by (\S+)\*\*", line).groups()
        cat = what.split(" of ")[1] if " of " in what else ""
        rows = sig[(sig.taxonomy == tax) & (sig.method == meth) & (sig.category == cat) & (sig.slice == sl)]
        assert len(rows), line
        assert re.search(r"\(n=\d+\).*\(n=\d+\)", line) and "adjusted interval [" in line
    # surest first: the end of the adjusted interval nearest 0 (issue 21: "how sure"), harm rates before accuracies
    sure = [min(abs(float(a)), abs(float(b))) for a, b in
            (re.search(r"adjusted interval \[([+-]?\d+\.\d), ([+-]?\d+\.\d)\]", x).groups() for x in items)]
    assert sure == sorted(sure, reverse=True)
    # the planted harm is found; gender accuracy (no real difference) is not a finding
    assert any("rate of non_human by race**: worst B" in x for x in items)
    assert not any("accuracy" in x for x in items)
    assert not d[(d.metric == "accuracy")]["significant"].any()


def test_planted_neutral_category_is_never_called_worst(planted):
    m, d = planted
    md = summary_markdown(m, d, _ctx(harms=HARMS))
    decoy = [line for line in md.splitlines() if "decoy" in line and ("worst" in line or "highest" in line)]
    assert decoy and all("worst" not in line and "best" not in line for line in decoy)
    # issue 21: a category without a declared direction is described (highest vs lowest in the table of
    # differences), never a key finding (this test used to expect it among the key findings)
    assert any("| race | highest: C" in line for line in decoy)
    assert "decoy" not in _section(md, "Key findings")
    assert "decoy (neutral)" in md and "non_human (harm)" in md
    # without any declaration nothing is ranked at all, and no rate is a finding
    md0 = summary_markdown(m, disparities(m), _ctx())
    rates = [line for line in md0.splitlines() if "rate ·" in line and "| race |" in line]
    assert rates and not any("worst" in line for line in rates)
    assert "rate of" not in _section(md0, "Key findings")


def test_no_significant_difference_says_so(hand_metrics):
    md = summary_markdown(hand_metrics, disparities(hand_metrics, min_n=1), _ctx())
    assert "No difference between groups is significant" in _section(md, "Key findings")


def test_accuracy_methods_side_by_side_with_intervals(hand_metrics):
    md = summary_markdown(hand_metrics, disparities(hand_metrics, min_n=1), _ctx(n_classes={"fairface_race": 7}))
    acc = _section(md, "Accuracy")
    assert "| slice | group | n | zero shot | linear probe |" in acc
    assert _md_rows(acc, ("race", "White")) == [["race", "White", "8", "75.0% [40.9–92.9]", "100.0% [40.9–92.9]"]]
    assert _md_rows(acc, ("overall", "all")) == [["overall", "all", "12", "58.3% [30.0–80.0]", "91.7% [30.0–80.0]"]]
    assert "7 classes: chance is 14.3%." in acc
    assert "Cannot show" in acc  # says what the table cannot show


def test_rate_tables_with_intervals_directions_and_collapsed_intersections(planted):
    m, d = planted
    doc = summary_document(m, d, _ctx(harms=HARMS))
    md = to_markdown(doc)
    rates = _section(md, "Predicted categories")
    assert "| slice | group | n | human | non_human (harm) | decoy (neutral) |" in rates
    b = m[(m.taxonomy == "probe") & (m.slice == "race") & (m.group == "B") & (m.category == "non_human")].iloc[0]
    row = _md_rows(rates, ("race", "B"))[0]
    assert row[4] == f"{100 * b.value:.1f}% [{100 * b.ci_low:.1f}–{100 * b.ci_high:.1f}]"
    assert _md_rows(rates, ("race", "D"))[0][2] == "10 (small)"  # a tiny group is flagged
    assert "Left out" not in rates and "single category" in rates and "gender" in rates
    # intersections are collapsed (a <details> element), not in the main table
    assert "<summary>Intersections" in rates
    main_tables = [b for s in doc.sections if s.title == "Predicted categories" for sub in s.blocks
                   if hasattr(sub, "blocks") for b in sub.blocks if isinstance(b, Table)]
    assert main_tables and all("+" not in str(r[0]) for t in main_tables for r in t.rows)
    assert any(isinstance(b, Details) for s in doc.sections for sub in getattr(s, "blocks", [])
               for b in getattr(sub, "blocks", []))


def test_small_groups_listed_as_too_small(planted):
    m, d = planted
    md = summary_markdown(m, d, _ctx(harms=HARMS))
    sec = _section(md, "Largest differences between groups")
    assert "Groups too small to compare (fewer than 30 images)" in sec
    assert _md_rows(sec, ("probe", "race")) == [["probe", "race", "D (n=10)"]]
    assert "D " not in _section(md, "Key findings")


def test_summary_same_after_csv_round_trip(planted, tmp_path):
    m, d = planted
    m.to_csv(tmp_path / "m.csv", index=False)
    d.to_csv(tmp_path / "d.csv", index=False)
    back_m = pd.read_csv(tmp_path / "m.csv", keep_default_na=True)
    back_d = pd.read_csv(tmp_path / "d.csv", keep_default_na=False, na_values=[""])
    back_m.attrs, back_d.attrs = m.attrs, d.attrs
    assert summary_markdown(back_m, back_d, _ctx(harms=HARMS)) == summary_markdown(m, d, _ctx(harms=HARMS))


def test_pipe_in_group_name_is_escaped(hand_metrics):
    m = hand_metrics.copy()
    m.loc[m["group"] == "White", "group"] = "Wh|te"
    md = summary_markdown(m, disparities(m, min_n=1))
    assert "| race | Wh\\|te | 8 | 75.0% [40.9–92.9] |" in md


def test_label_rate_rows_of_a_category_less_taxonomy_are_rendered(hand_metrics):
    extra = pd.DataFrame([_row("open", "zero_shot", "label_rate", lab, "race", g, 10, k, 0.1, 0.9)
                          for g, ks in (("White", (6, 4)), ("Black", (2, 8))) for lab, k in zip(("doctor", "nurse"), ks)])
    m = pd.concat([hand_metrics, extra], ignore_index=True)
    # issue 21 (defect 6): a label is headed by its category and that category's direction, not "(neutral)"
    md = summary_markdown(m, disparities(m, min_n=1),
                          _ctx(label_categories={"open": {"doctor": "occupation", "nurse": "occupation"}}))
    sec = _section(md, "Predicted labels")
    assert "| slice | group | n | doctor (occupation, neutral) | nurse (occupation, neutral) |" in sec
    assert _md_rows(sec, ("race", "Black"))[0][3] == "20.0% [10.0–90.0]"


# --------------------------------------------------------------------------- figures

def test_accuracy_figure_content(hand_metrics):
    fig = _accuracy_figure(hand_metrics, "fairface_race", "zero_shot", "race", model="org/clip-b32", n_classes=7)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([75.0, 25.0])
    assert ax.get_ylim() == (0.0, 100.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["White\nn=8", "Black\nn=4"]
    segs = [c for c in ax.collections if c.get_segments()]
    spans = sorted((round(s[0][1], 2), round(s[1][1], 2)) for c in segs for s in c.get_segments())
    assert spans == [(4.56, 69.94), (40.93, 92.85)]
    # the chance line (1 / number of classes) and a title naming the model and the taxonomy
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 7)
    assert "org/clip-b32" in ax.get_title() and "fairface_race" in ax.get_title() and "race" in ax.get_title()


def test_group_labels_are_never_split_inside_a_name():
    groups = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
    rows = [_row("t", "zero_shot", "accuracy", "", "race", g, 50, 40, 0.7, 0.9) for g in groups]
    rows += [_row("t", "zero_shot", "accuracy", "", "age", g, 50, 40, 0.7, 0.9)
             for g in ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]]
    rows += [_row("t", "zero_shot", "accuracy", "", "race+gender", f"{g}+{s}", 50, 40, 0.7, 0.9)
             for g in groups for s in ("Male", "Female")]
    m = pd.DataFrame(rows)
    for sl, names in (("race", groups), ("age", ["more than 70"]), ("race+gender", ["Latino_Hispanic"])):
        fig = _accuracy_figure(m, "t", "zero_shot", sl)
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        lines = {line for lab in labels for line in lab.replace(" · ", "\n").split("\n")}
        for name in names:
            assert name in lines, (sl, name, labels)
        # and the labels do not overlap once drawn
        fig.canvas.draw()
        ticks = fig.axes[0].get_xticklabels()
        boxes = [t.get_window_extent() for t in ticks]
        rot = ticks[0].get_rotation()
        if rot == 0:  # side by side: the boxes are apart
            assert all(a.x1 <= b.x0 + 1 for a, b in zip(boxes, boxes[1:])), (sl, labels)
        else:  # parallel slanted lines: their distance exceeds the text height
            dx = boxes[1].x1 - boxes[0].x1
            height = ticks[0].get_fontsize() * fig.dpi / 72
            assert dx * np.sin(np.radians(rot)) > 1.2 * height, (sl, dx, rot)


def test_rates_figure_content(hand_metrics):
    fig = _rates_figure(hand_metrics, "denig", "race", harms={"non_human": True, "human": False})
    ax = fig.axes[0]
    heights = [round(p.get_height(), 3) for p in ax.patches]
    assert heights == [87.5, 33.333, 12.5, 33.333, 0.0, 33.333]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["human", "non_human (harm)",
                                                                   "crime_related (neutral)"]
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


def _check_svg(path):
    """A figure as SVG: parses as XML, text kept as text, drawn (paths), no editor metadata."""
    import xml.etree.ElementTree as ET

    text = path.read_text(encoding="utf-8")
    root = ET.fromstring(text)
    assert root.tag.endswith("svg") and "<path" in text and "<text" in text
    assert "<metadata" not in text and "\n" not in text.strip()
    return root


def test_write_report(hand_metrics, tmp_path):
    out = tmp_path / "report"
    (out).mkdir()
    Image.new("RGB", (320, 240), "white").save(out / "model_card_table_3.png")  # another stage's plot
    paths = write_report(hand_metrics, disparities(hand_metrics, min_n=1), out, _ctx())
    names = [p.name for p in paths]
    # one compact figure per taxonomy (a panel per attribute sliced), not one per slice and method
    expected_plots = ["accuracy_fairface_race.svg", "rates_denig.svg"]
    assert names == expected_plots + ["summary.md", "report.html"]
    for p in paths[:-2]:
        _check_svg(p)
    md = (out / "summary.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(expected_plots)
    assert md.index("accuracy_fairface_race.svg") > md.index("### fairface_race")
    html = (out / "report.html").read_text(encoding="utf-8")
    # everything summary.md says, its figures embedded; every other plot in the folder linked, not embedded
    assert html.count('<img src="data:image/svg+xml,') == len(expected_plots)
    assert "data:image/png" not in html
    assert "Other plots" in html and '<a href="model_card_table_3.png">model card table 3</a>' in html
    for heading in re.findall(r"^#+ (.+)$", md, flags=re.M):
        assert heading.replace("&", "&amp;") in html


def test_write_report_sanitises_names(hand_metrics, tmp_path):
    m = hand_metrics[hand_metrics["taxonomy"] == "denig"].copy()
    m["taxonomy"] = "my probe/v2"
    paths = write_report(m, disparities(m), tmp_path)
    assert [p.name for p in paths] == ["rates_my_probe_v2.svg", "summary.md", "report.html"]
    _check_svg(paths[0])


def test_a_run_without_taxonomies_still_gets_its_report(tmp_path):
    """(e.g. a retrieval-only run): no metrics at all, header and page still written."""
    paths = write_report(pd.DataFrame(), pd.DataFrame(), tmp_path, _ctx(demo=True))
    assert [p.name for p in paths] == ["summary.md", "report.html"]
    assert "toy model" in (tmp_path / "summary.md").read_text()
