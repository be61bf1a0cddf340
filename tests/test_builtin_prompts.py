"""Built-in taxonomies: grammatical prompts, and each documents its prompt choice."""

import re

import pytest
import yaml

from clipfair.data.taxonomy import builtin_dir, load_taxonomy

BUILTINS = sorted(p.stem for p in builtin_dir().glob("*.yaml"))
VOWEL_SOUND = re.compile(r"\ba ([AEIOUaeiou]\w*)")  # "a East Asian", "a Indian", "a orangutan"
CONSONANT_AN = re.compile(r"\ban ([^AEIOUaeiou\W]\w*)")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_prompts_are_grammatical_and_documented(name):
    tax = load_taxonomy(name)
    for text in tax.all_texts():
        assert not VOWEL_SOUND.search(text), f"{name}: {text!r}"
        assert not CONSONANT_AN.search(text), f"{name}: {text!r}"
    assert "prompt" in tax.description.lower(), f"{name} does not document its prompt choice"
    raw = (builtin_dir() / f"{name}.yaml").read_text()
    assert "rompts" in raw.split("name:")[0], f"{name}: the header comment says nothing about prompts"


def test_sensitivity_template_sets_stay_grammatical():
    from pathlib import Path

    import clipfair.configs as cfgs

    sets = yaml.safe_load((Path(cfgs.__file__).parent / "experiment" / "prompt_sensitivity.yaml").read_text())
    for name, by_set in sets["template_sets"].items():
        for templates in by_set.values():
            tax = load_taxonomy(name).with_templates(templates)
            for text in tax.all_texts():
                assert not VOWEL_SOUND.search(text) and " a a " not in text and " a an " not in text, text
