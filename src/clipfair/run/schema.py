"""The typed schema of `clipfair run`'s config, checked before any work.

Layer: run.

One dataclass per config group; its fields are the group's keys with their types and
defaults (documented in configs/config.yaml), its ``check`` method the value constraints.
:func:`validate` checks a composed config (a plain dict) against them and raises a one-line
:class:`ConfigError` for the first problem: a missing required value (``???``), an unknown
key (with "did you mean ...?"), a value of the wrong type, or out of range.

The ``dataset`` and ``model`` groups hold a ``_target_`` and the keyword arguments of a
loader: their common keys are checked here, the rest against the loader's own signature
(so a new loader needs no change here).

To add a key: add a field to its group's dataclass (and the key, with a comment, to
configs/config.yaml). To add a group: a dataclass, and a field of that type in RunConfig.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

AUTO = Literal["auto"]
_UNIONS = (Union, types.UnionType)


class ConfigError(ValueError):
    """A config value that is missing, unknown, of the wrong type or out of range."""


#: seeds go to numpy's generators: 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
#: retrieval bootstrap replicates: percentile intervals need a few thousand; more only costs time
MAX_BOOTSTRAP = 100_000


def _check_seed(value: Any, key: str) -> None:
    _require(0 <= value <= MAX_SEED, key, f"a seed between 0 and {MAX_SEED}", value)


# ------------------------------------------------------------------------------- groups


def _require(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {value!r}")


@dataclass
class SubsetConfig:
    n: int | None = None
    seed: int = 0

    def check(self, at: str) -> None:
        _require(self.n is None or self.n >= 1, f"{at}.n", "a number of images >= 1 or null", self.n)
        _check_seed(self.seed, f"{at}.seed")


@dataclass
class CompareConfig:
    baseline: str | None = None
    variants: list[str] | None = None
    correction: Literal["holm", "bh"] = "holm"
    alpha: float = 0.05

    def check(self, at: str) -> None:
        _require(0 < self.alpha < 1, f"{at}.alpha", "between 0 and 1 (exclusive)", self.alpha)


@dataclass
class ProbeConfig:
    enabled: bool = False
    train_split: str = "train"
    train_dataset: dict[str, Any] | None = None
    train_limit: int | None = None
    Cs: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    holdout: float = 0.2
    seed: int = 0
    max_iter: int = 1000
    sweep_max_train: int | None = 20000
    features: Literal["projected", "pre_projection"] = "projected"
    refine_steps_per_decade: int = 0
    solver: Literal["torch", "sklearn"] = "torch"

    def check(self, at: str) -> None:
        _check_seed(self.seed, f"{at}.seed")
        _require(self.refine_steps_per_decade >= 0, f"{at}.refine_steps_per_decade", "a number >= 0 (0: grid only)",
                 self.refine_steps_per_decade)
        _require(bool(self.Cs) and all(c > 0 for c in self.Cs), f"{at}.Cs", "a non-empty list of numbers > 0",
                 self.Cs)
        _require(0 < self.holdout < 1, f"{at}.holdout", "between 0 and 1 (exclusive)", self.holdout)
        _require(self.max_iter >= 1, f"{at}.max_iter", ">= 1", self.max_iter)
        _require(self.train_limit is None or self.train_limit >= 1, f"{at}.train_limit", ">= 1 or null",
                 self.train_limit)
        _require(self.sweep_max_train is None or self.sweep_max_train >= 1, f"{at}.sweep_max_train",
                 ">= 1 or null", self.sweep_max_train)


@dataclass
class PrecisionAuditConfig:
    n: int = 256
    seed: int = 0

    def check(self, at: str) -> None:
        _require(self.n >= 0, f"{at}.n", "a number of images >= 0 (0: off)", self.n)
        _check_seed(self.seed, f"{at}.seed")


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = "~/.cache/clipfair"

    def check(self, at: str) -> None:
        pass


@dataclass
class EmbedConfig:
    num_workers: Union[int, AUTO] = "auto"
    chunk_size: int = 2048
    fast_preprocess: Union[bool, AUTO] = "auto"
    fast_decode: Union[bool, AUTO] = "auto"
    gpu_decode: Union[bool, AUTO] = False
    compile: bool = False

    def check(self, at: str) -> None:
        _require(self.num_workers == "auto" or self.num_workers >= 0, f"{at}.num_workers",
                 "auto or a number >= 0", self.num_workers)
        _require(self.chunk_size >= 1, f"{at}.chunk_size", "a number of images >= 1", self.chunk_size)


@dataclass
class DistributedConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_min: float = 720.0

    def check(self, at: str) -> None:
        _require(self.timeout_min > 0, f"{at}.timeout_min", "a number of minutes > 0", self.timeout_min)


@dataclass
class RetrievalBootstrapConfig:
    B: int = 1000
    seed: int = 0

    def check(self, at: str) -> None:
        _require(0 <= self.B <= MAX_BOOTSTRAP, f"{at}.B",
                 f"a number of replicates between 0 and {MAX_BOOTSTRAP:,} (e.g. 1000; 0: no intervals)", self.B)
        _check_seed(self.seed, f"{at}.seed")


@dataclass
class RetrievalConfig:
    enabled: bool = False
    queries: list[str] | None = None
    k: list[Union[int, Literal["all"]]] | None = None
    attributes: list[Union[str, list[str]]] | None = None  # a list of names: their intersection
    desired: list[Literal["dataset", "uniform"]] | None = None
    absent: Literal["neg_inf", "inverse_k", "zero"] | None = None
    prompts: Literal["ensemble", "per_template"] | None = None
    pool: str | None = None
    bootstrap: RetrievalBootstrapConfig = field(default_factory=RetrievalBootstrapConfig)
    chunk_size: int = 128
    preset: Literal["berg2022", "social_counterfactuals", "visogender"] | None = None
    permutations: int = 1000
    normalize_images: bool = True

    def check(self, at: str) -> None:
        _require(self.k is None or all(k == "all" or k >= 1 for k in self.k), f"{at}.k",
                 "a list of numbers >= 1 or 'all'", self.k)
        _require(self.chunk_size >= 1, f"{at}.chunk_size", "a number of queries >= 1", self.chunk_size)
        _require(self.permutations >= 0, f"{at}.permutations", "a number of label shuffles >= 0", self.permutations)


@dataclass
class RunConfig:
    """The top level of configs/config.yaml."""

    dataset: dict[str, Any]
    model: dict[str, Any]
    taxonomies: list[str] = field(default_factory=list)
    slices: Union[AUTO, list[Union[str, list[str]]]] = "auto"
    confidence: float = 0.95
    disparity_min_n: int = 30
    disparity_correction: Literal["holm", "bh"] = "holm"
    topk: list[int] = field(default_factory=lambda: [5])
    small_group_n: int = 30
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    model_card: dict[str, Any] | None = None
    template_sets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    compare: CompareConfig | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    precision_audit: PrecisionAuditConfig | None = field(default_factory=PrecisionAuditConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    progress: bool = True
    overwrite: bool = False
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    #: analyses by name: {name: {options}} (``_target_: my_module.MyAnalysis`` for a user's own;
    #: null turns a shorthand's analysis off); see clipfair.analyses.compose
    analyses: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def check(self, at: str) -> None:
        _require(0 < self.confidence < 1, "confidence", "between 0 and 1 (exclusive), e.g. 0.95", self.confidence)
        _require(self.disparity_min_n >= 1, "disparity_min_n", "a number of images >= 1", self.disparity_min_n)
        _require(all(k >= 1 for k in self.topk), "topk", "a list of k >= 1, e.g. [5]", self.topk)
        _require(self.slices != [], "slices", "'auto' or a non-empty list, e.g. [race, gender, [race, gender]]",
                 self.slices)
        _require(self.small_group_n >= 0, "small_group_n", "a number of images >= 0", self.small_group_n)
        for s in self.slices if isinstance(self.slices, list) else []:
            twice = sorted({a for a in s if s.count(a) > 1}) if isinstance(s, list) else []
            _require(not twice, "slices", f"a list of attributes or intersections of different attributes "
                     f"(e.g. [race, gender]); {', '.join(twice)} is named twice in", s)
        _require(bool(self.taxonomies) or self.retrieval.enabled or any(v is not None for v in self.analyses.values()),
                 "taxonomies", "a non-empty list, e.g. [fairface_race] (or retrieval.enabled=true, or analyses)",
                 self.taxonomies)


#: keys of the dataset / model groups checked here; the others are the loader's arguments
DATASET_KEYS = {"_target_": str, "name": str}
MODEL_KEYS = {"_target_": str, "loader": str, "batch_size": int}
#: keys of every dataset group that load_dataset takes itself (not the adapter)
DATASET_EXTRA = ("max_image_bytes", "derived", "missing_values")
#: the smallest value of integer loader arguments (null is allowed: the loader's default)
LOADER_MINIMUM = {"batch_size": 1, "limit": 0, "max_image_bytes": 1}
#: the allowed values of loader arguments that take one of a few words
LOADER_CHOICES = {"on_error": ("raise", "skip")}


# ----------------------------------------------------------------------------- checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    if origin in _UNIONS:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return {list: "a list", dict: "a mapping"}[origin]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _conforms(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return any(_conforms(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if origin is dict:
        args = typing.get_args(tp)
        return isinstance(value, dict) and all(_conforms(v, args[1] if args else Any) for v in value.values())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, tp)


def unknown_key(key: str, at: str, allowed: list[str]) -> ConfigError:
    """'unknown config key <at><key>: did you mean ...?' (or the allowed keys)."""
    near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else f"allowed keys: {', '.join(sorted(allowed))}"
    return ConfigError(f"unknown config key {at}{key}: {hint}")


def _check_group(cls: type, values: Any, at: str) -> Any:
    """Build ``cls`` from ``values`` (a mapping), checking keys, types and constraints."""
    prefix = f"{at}." if at else ""
    if not isinstance(values, dict):
        raise ConfigError(f"{at} must be a mapping of its keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in values:
        if k not in hints:
            raise unknown_key(str(k), prefix, names)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"{prefix}{f.name} is required")
            continue
        v, tp = values[f.name], hints[f.name]
        if not _conforms(v, tp):
            raise ConfigError(f"{prefix}{f.name} must be {_type_name(tp)}, got {v!r}")
        sub = next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)
        kwargs[f.name] = _check_group(sub, v, f"{prefix}{f.name}") if sub is not None and v is not None else v
    obj = cls(**kwargs)
    obj.check(at)
    return obj


def _target(path: str) -> Callable[..., Any] | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def loader_for(values: Mapping[str, Any]) -> Callable[..., Any] | None:
    """The function whose keyword arguments the rest of a ``dataset`` / ``model`` group is."""
    target = values.get("_target_")
    if target == "clipfair.data.load_dataset":
        from ..data import DATASETS

        return DATASETS.get(values["name"]) if values.get("name") in DATASETS else None
    if target == "clipfair.models.load_model":
        from ..models import MODELS

        from ..models import load_model

        loader = values.get("loader") or signature_default(load_model, "loader")
        return MODELS.get(loader) if loader in MODELS else None
    return _target(target) if isinstance(target, str) else None


def signature_default(fn: Callable[..., Any] | None, key: str) -> Any:
    """The default of ``fn``'s keyword ``key`` (None: no such keyword, or no default): a loader's
    defaults are defined once, in its signature."""
    if fn is None:
        return None
    try:
        p = inspect.signature(fn).parameters.get(key)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def loader_argument(values: Mapping[str, Any], key: str) -> Any:
    """A ``dataset`` / ``model`` group's value of the loader argument ``key``: as configured, else
    the default of the loader it names (:func:`loader_for`; ``loader``: :func:`clipfair.models.load_model`'s),
    else None. The CLI reads loader arguments it also needs itself (e.g. ``on_error`` for
    decoding images) through this, never with a literal fallback of its own."""
    if values.get(key) is not None:
        return values[key]
    if key == "loader" and values.get("_target_") == "clipfair.models.load_model":
        from ..models import load_model

        return signature_default(load_model, "loader")
    return signature_default(loader_for(values), key)


def _check_loader_group(group: str, values: Any, common: Mapping[str, type],
                        extra: tuple[str, ...] = ()) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{group} must be a mapping with _target_, got {values!r}")
    for k, tp in common.items():
        if k in values and not _conforms(values[k], tp):
            raise ConfigError(f"{group}.{k} must be {_type_name(tp)}, got {values[k]!r}")
    for k, lo in LOADER_MINIMUM.items():
        v = values.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ConfigError(f"{group}.{k} must be an integer >= {lo}, got {v!r}")
    for k, choices in LOADER_CHOICES.items():
        if k in values and values[k] not in choices:
            raise ConfigError(f"{group}.{k} must be one of {', '.join(choices)}, got {values[k]!r}")
    fn = loader_for(values)
    if fn is None:
        return
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [*params, *common, *extra]
    for k in values:
        if k not in accepted:
            raise unknown_key(str(k), f"{group}.", [a for a in accepted if a != "_target_"])


def validate(cfg: Mapping[str, Any], missing: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Check a composed `clipfair run` config (plain dict, resolved; ``missing``: the dotted
    keys still ``???``). Returns the typed top level; raises ConfigError."""
    for key in missing:
        example = {"dataset.root": "dataset.root=/data/fairface", "dataset.path": "dataset.path=faces.csv"}
        raise ConfigError(f"{key} is required: set it on the command line, e.g. "
                          f"{example.get(key, key + '=...')}")
    run = _check_group(RunConfig, {k: v for k, v in cfg.items() if k != "hydra"}, "")
    _check_loader_group("dataset", cfg["dataset"], DATASET_KEYS, DATASET_EXTRA)
    from ..models import model_config_keys

    # the model group's keys are shared by every loader (each ignores the ones it does not take)
    _check_loader_group("model", cfg["model"], MODEL_KEYS, model_config_keys())
    if run.probe.train_dataset is not None:
        _check_loader_group("probe.train_dataset", run.probe.train_dataset, DATASET_KEYS, DATASET_EXTRA)
    return run
