"""Issue 20, part 5: defaults are defined once. configs/config.yaml states every default the typed
schema (clipfair.schema) has, with the same value, so the two cannot drift (ProbeConfig.Cs once did);
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

    from clipfair.schema import RunConfig

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
    from clipfair.schema import validate

    run = validate(OmegaConf.to_container(compose(["probe.enabled=true", "probe.Cs=[0.5]",
                                                   "+analyses.precision_audit=null"]), resolve=True))
    e = C.entries(run)
    assert e["linear_probe"]["Cs"] == [0.5] and e["linear_probe"]["refine_steps_per_decade"] == 0
    assert "precision_audit" not in e  # an entry set to null turns a shorthand off
    assert list(e)[:2] == ["zero_shot", "linear_probe"]


def test_an_unknown_analysis_is_one_line_listing_the_available(compose):
    from clipfair.analyses import build_analysis
    from clipfair.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown analysis 'nope'; available: .*linear_probe.*zero_shot"):
        build_analysis("nope", {})
