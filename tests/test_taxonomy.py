"""Taxonomy loading, include resolution and validation errors."""

from pathlib import Path

import pytest

from clipfair.data.taxonomy import BUILTINS, TaxonomyError, load_taxonomies, load_taxonomy


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", BUILTINS.names())
def test_every_builtin_validates(name):
    t = load_taxonomy(name)
    assert t.name == name
    assert len(t.classes) >= 2
    for texts in t.class_texts():
        assert texts and all("{}" not in s for s in texts)


def test_builtin_contents_match_the_paper():
    d = load_taxonomy("clip_denigration")
    assert len(d.classes) == 21
    by_cat = {c: [k.label for k in d.classes if k.category == c] for c in d.categories}
    assert by_cat["non_human"] == ["animal", "gorilla", "chimpanzee", "orangutan"]
    assert by_cat["crime_related"] == ["thief", "criminal", "suspicious person"]
    assert len(by_cat["human"]) == 14
    child = load_taxonomy("clip_denigration_child")
    assert child.labels == d.labels + ["child"]
    assert load_taxonomy("fairface_race").target == "race"
    assert len(load_taxonomy("fairface_age").classes) == 9


def test_ensembled_texts_are_templates_times_prompts(tmp_path):
    p = write(tmp_path, "t.yaml", """
name: t
templates: ["a {}.", "the {}!"]
classes:
  - {label: A, prompts: [x, y]}
  - label: B
""")
    t = load_taxonomy(p)
    assert t.class_texts() == [["a x.", "a y.", "the x!", "the y!"], ["a B.", "the B!"]]
    assert t.categories == ["class"]


def test_include_add_remove_and_override(tmp_path):
    write(tmp_path, "base.yaml", """
name: base
templates: ["a {}."]
classes: [{label: a, category: c1}, {label: b, category: c2}, {label: c, category: c2}]
""")
    p = write(tmp_path, "var.yaml", """
include: base.yaml
name: var
templates: ["the {}."]
remove_classes: [b]
add_classes: [{label: d, category: c3}]
""")
    t = load_taxonomy(p)
    assert t.name == "var" and t.templates == ("the {}.",)
    assert t.labels == ["a", "c", "d"]
    assert t.categories == ["c1", "c2", "c3"]
    assert "includes" in t.source


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "include: a.yaml\nname: b\n")
    with pytest.raises(TaxonomyError, match="include cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_taxonomy(tmp_path / "a.yaml")


@pytest.mark.parametrize("body, message", [
    ("name: t\ntemplates: ['a {}']\nclasses: [{label: x}]\ncolour: red\n", r"unknown key\(s\) \['colour'\]"),
    ("name: t\ntemplates: ['a {}']\nclasses: [{label: x, prompt: [y]}]\n", r"classes\[0\]: unknown key\(s\) \['prompt'\]"),
    ("name: t\ntemplates: ['a {}']\nclasses: [{label: x}, {label: x}]\n", "duplicate class label 'x'"),
    ("name: t\ntemplates: ['a photo']\nclasses: [{label: x}]\n", r"must contain '\{\}' exactly once"),
    ("name: t\ntemplates: ['a {} {}']\nclasses: [{label: x}]\n", r"must contain '\{\}' exactly once"),
    # a target's labels are checked against the dataset's declared values when a run starts
    # (taxonomy.check_target; tests/test_attributes.py), not at load time
    ("templates: ['a {}']\nclasses: [{label: x}]\n", "'name' is required"),
    ("name: t\ntemplates: ['a {}']\n", "'classes' is required"),
    ("name: t\ntemplates: ['a {}']\nclasses: []\n", "must be a non-empty list"),
    ("name: t\ntemplates: ['a {}']\nadd_classes: [{label: x}]\n", "needs 'include'"),
    ("name: t\ntemplates: ['a {}']\nclasses: [{label: x}]\nbad: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_validation_errors_name_the_file_and_entry(tmp_path, body, message):
    p = write(tmp_path, "bad.yaml", body)
    with pytest.raises(TaxonomyError, match=message) as e:
        load_taxonomy(p)
    assert "bad.yaml" in str(e.value)


def test_remove_unknown_class_is_an_error(tmp_path):
    p = write(tmp_path, "v.yaml", "include: fairface_gender\nname: v\nremove_classes: [Other]\n")
    with pytest.raises(TaxonomyError, match=r"remove_classes: \['Other'\] not in 'fairface_gender'"):
        load_taxonomy(p)


def test_duplicate_names_and_unknown_builtin(tmp_path):
    p = write(tmp_path, "dup.yaml", "include: fairface_race\nname: fairface_race\n")
    with pytest.raises(TaxonomyError, match="two taxonomies are named 'fairface_race'"):
        load_taxonomies(["fairface_race", p])
    with pytest.raises(TaxonomyError, match="unknown taxonomy 'nope'; available built-ins: clip_denigration"):
        load_taxonomy("nope")
    with pytest.raises(TaxonomyError, match="no taxonomies given"):
        load_taxonomies([])
    # a variant must be named: it never silently inherits its base's name
    q = write(tmp_path, "unnamed.yaml", "include: fairface_race\n")
    with pytest.raises(TaxonomyError, match="unnamed.yaml: 'name' is required"):
        load_taxonomy(q)
