"""Issue 20, part 5: defaults are defined once. configs/config.yaml states every default the typed
schema (clipfair.run.schema) has, with the same value, so the two cannot drift (ProbeConfig.Cs once did);
and the composed analyses read the typed config."""

from __future__ import annotations

import dataclasses

import pytest


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            v = f.default_factory()  # type: ignore[misc]
            out[f.name] = _defaults(type(v)) if dataclasses.is_dataclass(v) else v
    return out


def test_config_yaml_states_the_schema_defaults(compose):
    from omegaconf import OmegaConf

    from clipfair.run.schema import RunConfig

    cfg = OmegaConf.to_container(compose([]), resolve=False)
    defaults = _defaults(RunConfig)
    skip = {("cache", "dir"), ("model_card",), ("compare",)}
    checked = 0
    for key, value in defaults.items():
        if isinstance(value, dict) and key not in ("template_sets", "analyses"):
            for sub, v in value.items():
                if (key, sub) in skip or (key == "retrieval" and sub == "bootstrap"):
                    continue
                assert cfg[key][sub] == v, f"{key}.{sub}: config.yaml {cfg[key][sub]!r} != schema {v!r}"
                checked += 1
        elif (key,) not in skip:
            if key == "taxonomies":
                continue  # the demo's list; the schema's default is empty on purpose
            assert cfg[key] == value, f"{key}: config.yaml {cfg[key]!r} != schema {value!r}"
            checked += 1
    assert checked > 30


def test_the_probe_options_come_from_the_typed_config(compose):
    from omegaconf import OmegaConf

    from clipfair.analyses import compose as C
    from clipfair.run.schema import validate

    run = validate(OmegaConf.to_container(compose(["probe.enabled=true", "probe.Cs=[0.5]",
                                                   "+analyses.precision_audit=null"]), resolve=True))
    e = C.entries(run)
    assert e["linear_probe"]["Cs"] == [0.5] and e["linear_probe"]["refine_steps_per_decade"] == 0
    assert "precision_audit" not in e  # an entry set to null turns a shorthand off
    assert list(e)[:2] == ["zero_shot", "linear_probe"]


def test_an_unknown_analysis_is_one_line_listing_the_available(compose):
    from clipfair.analyses import build_analysis
    from clipfair.utility.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown analysis 'nope'; available: .*linear_probe.*zero_shot"):
        build_analysis("nope", {})


def test_loader_arguments_the_cli_reads_default_to_the_loaders_own():
    """cli.py reads ``dataset.on_error`` (image decoding) and ``model.loader`` through the loader's
    signature, never a literal fallback of its own (it had ``on_error`` 'raise' for every dataset,
    while utkface's loader skips by default)."""
    import inspect

    from clipfair.data import DATASETS
    from clipfair.models import load_model
    from clipfair.run.schema import loader_argument

    utk = {"_target_": "clipfair.data.load_dataset", "name": "utkface"}
    assert loader_argument(utk, "on_error") == inspect.signature(DATASETS.get("utkface")).parameters[
        "on_error"].default == "skip"
    assert loader_argument({**utk, "on_error": "raise"}, "on_error") == "raise"  # configured wins
    assert loader_argument({"_target_": "clipfair.data.load_dataset", "name": "fairface"}, "on_error") == "raise"
    assert loader_argument({"_target_": "no.such.loader"}, "on_error") is None
    model = {"_target_": "clipfair.models.load_model", "name_or_path": "x"}
    assert loader_argument(model, "loader") == inspect.signature(load_model).parameters["loader"].default
    assert loader_argument({**model, "loader": "open_clip"}, "loader") == "open_clip"


def test_cli_has_no_literal_fallback_for_a_config_value():
    """No ``x.get("key", <literal>)`` in cli.py other than an empty one ("" / None / {} / []) or a
    display placeholder ("?"): a default belongs to the schema, config.yaml or the loader's signature."""
    import ast
    from pathlib import Path

    import clipfair.cli

    tree = ast.parse(Path(clipfair.cli.__file__).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
            d = node.args[1]
            empty = (isinstance(d, ast.Constant) and d.value in ("", None, "?")) or (
                isinstance(d, (ast.Dict, ast.List, ast.Tuple)) and not (getattr(d, "keys", None) or getattr(d, "elts", None)))
            if not empty:
                found.append(f"cli.py:{node.lineno} .get({node.args[0].value!r}, {ast.unparse(d)})")
    assert found == []
