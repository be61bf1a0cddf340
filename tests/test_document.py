"""document.py: the one report model, rendered to Markdown and to self-contained HTML."""

from __future__ import annotations

import base64
import re

import pytest
from PIL import Image

from clipfair.report.document import (Bullets, Details, Document, Figure, Note, Section, Table, Text, to_html,
                               to_markdown)


def _doc():
    return Document("Results <1>", [
        Section("Accuracy", [
            Text("Cells: **bold** and `code` and *em*."),
            Table(["group", "value"], [["A|B", "98.2%"], ["C", 5]], align="lr", caption="Per group."),
            Figure("plot.png", "Accuracy by race"),
            Section("Nested", [Bullets(["one", "two"], ordered=True)]),
        ]),
        Section("More", [Details("Intersections (2 groups)", [Table(["g"], [["A+B"]])])]),
    ], intro=[Note("Toy model.", kind="warning"), Note("Disclaimer.")])


def test_markdown():
    md = to_markdown(_doc())
    lines = md.splitlines()
    assert lines[0] == "# Results <1>"
    assert lines.index("> **Warning:** Toy model.") < lines.index("> Disclaimer.") < lines.index("## Accuracy")
    assert "### Nested" in lines and "1. one" in lines and "2. two" in lines
    assert "| group | value |" in lines and "| --- | ---: |" in lines and "| A\\|B | 98.2% |" in lines
    assert "![Accuracy by race](plot.png)" in lines and "*Accuracy by race*" not in lines  # no repeat
    assert "<summary>Intersections (2 groups)</summary>" in lines and "| A+B |" in lines
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_html_is_self_contained_and_escaped(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "plot.png")
    page = to_html(_doc(), base_dir=tmp_path)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<title>Results &lt;1&gt;</title>" in page
    src = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="Accuracy by race">', page).group(1)
    assert base64.b64decode(src) == (tmp_path / "plot.png").read_bytes()
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page and "<em>em</em>" in page
    assert "<td>A|B</td>" in page and '<td class="num">98.2%</td>' in page
    assert '<div class="note warning">Toy model.</div>' in page
    assert "<h3>Nested</h3>" in page and "<details><summary>Intersections (2 groups)</summary>" in page
    assert '<nav class="toc">' in page and 'href="#accuracy"' in page
    assert "http" not in page  # nothing to fetch


def test_missing_image_keeps_the_page_and_bad_tables_fail():
    page = to_html(Document("x", [Figure("nope.png", "gone")]))
    assert 'src="nope.png" alt="gone"' in page
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        Table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align"):
        Table(["a"], [["x"]], align="q")
    with pytest.raises(TypeError, match="not a document block"):
        to_markdown(Document("x", [object()]))
