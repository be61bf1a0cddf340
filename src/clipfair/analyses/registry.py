"""The analysis registry: names -> :class:`~clipfair.analyses.base.Analysis`
subclasses. Built-in analyses register when their module is first imported (lazily, like the
model backends); a user's class is named by its import path (config ``_target_``).

Layer: analyses.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ..utility.registry import Registry, RegistryError
from .base import Analysis, AnalysisError

log = logging.getLogger(__name__)

A = TypeVar("A", bound=type)

ANALYSES: Registry[type[Analysis]] = Registry("analysis")

#: built-in analysis name -> the module that registers it (imported on first lookup)
BUILTIN_MODULES: dict[str, str] = {
    "zero_shot": "clipfair.analyses.zero_shot",
    "linear_probe": "clipfair.analyses.linear_probe",
    "retrieval_bias": "clipfair.analyses.retrieval_bias",
    "prompt_sensitivity": "clipfair.analyses.prompt_sensitivity",
    "variant_comparison": "clipfair.analyses.variant_comparison",
    "precision_audit": "clipfair.analyses.precision_audit",
    "model_card": "clipfair.analyses.model_card",
    "datacomp_geo": "clipfair.analyses.datacomp_geo",
}


def register_analysis(cls: A | None = None, *, name: str | None = None) -> Any:
    """Class decorator: ``@register_analysis`` registers ``cls`` under ``cls.name``."""

    def deco(c: A) -> A:
        if not (isinstance(c, type) and issubclass(c, Analysis)):
            raise AnalysisError(f"{c!r} is not a subclass of clipfair.analyses.Analysis")
        key = name or c.name
        if not key:
            raise AnalysisError(f"analysis class {c.__qualname__} has no name")
        if key in ANALYSES and ANALYSES.get(key) is c:
            return c
        ANALYSES.add(key, c)
        return c

    return deco(cls) if cls is not None else deco


def import_path(path: str) -> Any:
    """The object at ``package.module.Name`` (one-line errors)."""
    mod, _, attr = str(path).rpartition(".")
    if not mod:
        raise AnalysisError(f"_target_ {path!r} is not an import path like my_module.MyAnalysis")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise AnalysisError(f"_target_ {path!r}: cannot import {mod!r} ({e}); put its folder on PYTHONPATH") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AnalysisError(f"_target_ {path!r}: module {mod!r} has no {attr!r}") from None


def get_analysis(name: str) -> type[Analysis]:
    """The analysis class registered as ``name``, or at the import path ``name``."""
    if name not in ANALYSES and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    elif name not in ANALYSES and name.isidentifier() and name not in _NOT_ANALYSES:
        # a module of this package named like the analysis registers it on import (a new built-in
        # analysis is one file in clipfair/analyses/, no edit here)
        from importlib.util import find_spec

        if find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}")
    if name in ANALYSES:
        return ANALYSES.get(name)
    if "." in name:
        cls = import_path(name)
        if not (isinstance(cls, type) and issubclass(cls, Analysis)):
            raise AnalysisError(f"_target_ {name!r} is not a subclass of clipfair.analyses.Analysis")
        return cls
    raise RegistryError(f"unknown analysis {name!r}; available: {', '.join(available())}; or give "
                        "_target_: my_module.MyAnalysis")


def recorded_analyses(records: Sequence[Mapping[str, Any]]) -> list[tuple[type[Analysis], list[int]]]:
    """The analysis classes that finished runs recorded (``run.json``'s ``analyses``: name and
    class), each with the indices of the records that list it, in order of first appearance.
    A class is found at its recorded import path, else by its registered name; one that cannot
    be imported here (a user's module not on the path) is left out with a warning. A record
    without ``analyses`` (an older run) lists every built-in analysis (their collect hooks look
    for their own files)."""
    found: dict[type[Analysis], list[int]] = {}
    missing: dict[str, None] = {}
    for i, rec in enumerate(records):
        entries = rec.get("analyses") if isinstance(rec, Mapping) else None
        if not isinstance(entries, list):  # a run from before run.json recorded its analyses
            entries = [{"name": n, "builtin": True} for n in sorted({*BUILTIN_MODULES, *_package_modules()})]
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            name, path = str(entry.get("name") or ""), str(entry.get("class") or "")
            if path.split(".")[0] in sys.stdlib_module_names:  # a run.json is data: never import e.g. antigravity
                path = ""
            cls = None
            for how, lookup in ((path, import_path), (name, get_analysis)):
                if not how:
                    continue
                try:
                    c = lookup(how)
                except (AnalysisError, RegistryError):
                    continue
                if isinstance(c, type) and issubclass(c, Analysis):
                    cls = c
                    break
            if cls is None:
                if not entry.get("builtin"):
                    missing[path or name] = None
                continue
            if i not in found.setdefault(cls, []):
                found[cls].append(i)
    for what in missing:
        log.warning("analysis %s recorded in a run cannot be imported here; its collect output is left out "
                    "(put its module on PYTHONPATH)", what)
    return list(found.items())


def user_errors() -> tuple[type[BaseException], ...]:
    """The user-error types of every built-in and registered analysis (and AnalysisError)."""
    for name in {*BUILTIN_MODULES, *_package_modules()}:
        try:
            get_analysis(name)
        except Exception:  # a module that registers nothing under its own name
            continue
    found: list[type[BaseException]] = [AnalysisError]
    for name in ANALYSES.names():
        found += [e for e in ANALYSES.get(name).errors if e not in found]
    return tuple(found)


#: modules of this package that are not analyses
_NOT_ANALYSES = frozenset({"base", "compose", "engine", "registry", "specs"})


def _package_modules() -> list[str]:
    import pkgutil
    from pathlib import Path

    return [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
            if m.name not in _NOT_ANALYSES and not m.name.startswith("_")]


def available() -> list[str]:
    return sorted({*ANALYSES.names(), *BUILTIN_MODULES, *_package_modules()})


def build_analysis(key: str, options: dict[str, Any] | None) -> Analysis:
    """An analysis instance from a config entry ``analyses.<key>: {_target_?, ...options}``."""
    opts = dict(options or {})
    target = opts.pop("_target_", None)
    cls = get_analysis(str(target) if target else key)
    try:
        return cls(**opts)
    except TypeError as e:
        raise AnalysisError(f"analyses.{key}: {e}") from None


__all__ = ["ANALYSES", "BUILTIN_MODULES", "available", "user_errors", "build_analysis", "get_analysis", "import_path",
           "recorded_analyses", "register_analysis"]
