"""The reporting direction declared in taxonomy YAML (`categories: {name: {harm: ...}}`)."""

from __future__ import annotations

import pytest

from clipfair.data.taxonomy import TaxonomyError, load_taxonomies, load_taxonomy


def test_builtin_directions():
    by_name = {t.name: t for t in load_taxonomies(["clip_denigration", "clip_denigration_child",
                                                   "clip_denigration_crime_only", "clip_denigration_decoys",
                                                   "fairface_race"])}
    d = by_name["clip_denigration"]
    assert (d.harm("non_human"), d.harm("crime_related"), d.harm("human")) == (True, True, False)
    child = by_name["clip_denigration_child"]
    assert child.harm("non_human") is True and child.harm("child") is None  # declared neutral
    assert dict(child.harms)["child"] is None and "child" in dict(child.harms)
    # a variant keeps the declarations of the categories it still has
    assert dict(by_name["clip_denigration_crime_only"].harms) == {"human": False, "crime_related": True}
    decoys = by_name["clip_denigration_decoys"]
    assert decoys.harm("neutral") is None and "neutral" not in dict(decoys.harms)  # undeclared: neutral
    assert by_name["fairface_race"].harms == ()
    assert d.to_dict()["categories"]["non_human"] == {"harm": True}


def _write(tmp_path, text, name="t.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """name: t
templates: ["a photo of {}."]
classes:
  - {label: a, category: good}
  - {label: b, category: bad}
"""


def test_declarations_parse_and_override(tmp_path):
    _write(tmp_path, BASE + "categories:\n  bad: {harm: true}\n  good: {harm: false}\n", "base.yaml")
    t = load_taxonomy(tmp_path / "base.yaml")
    assert (t.harm("bad"), t.harm("good")) == (True, False)
    v = _write(tmp_path, "include: base.yaml\nname: v\ncategories:\n  bad: {harm: null}\n"
               "add_classes: [{label: c, category: new}]\n", "v.yaml")
    tv = load_taxonomy(v)
    assert tv.harm("bad") is None and tv.harm("good") is False and tv.harm("new") is None


@pytest.mark.parametrize("block, message", [
    ("categories:\n  bad: {harm: yes please}\n", "'harm' is required and must be true"),
    ("categories:\n  bad: {}\n", "'harm' is required"),
    ("categories:\n  bad: {harm: true, colour: red}\n", r"categories.bad: unknown key\(s\) \['colour'\]"),
    ("categories:\n  ugly: {harm: true}\n", r"categories \['ugly'\] are declared but no class has them"),
    ("categories: [bad]\n", "'categories' must be a mapping"),
    ("categories:\n  bad: true\n", "categories.bad: must be a mapping"),
])
def test_bad_declarations_name_the_file_and_entry(tmp_path, block, message):
    p = _write(tmp_path, BASE + block)
    with pytest.raises(TaxonomyError, match=message) as e:
        load_taxonomy(p)
    assert str(p) in str(e.value)
