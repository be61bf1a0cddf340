"""Class taxonomies: label sets with prompt templates, loaded from data-only YAML.

Layer: data.

File format (see README)::

    name: fairface_race              # unique; appears in every output
    templates: ["a photo of a {} person."]
    target: race                     # optional: the dataset attribute the classes predict
    classes:
      - label: East Asian            # for a target taxonomy, a canonical value of the attribute
        prompts: [East Asian]        # optional, default [label]
        category: race               # optional reporting category

A variant reuses a base file instead of copying it::

    include: clip_denigration        # a built-in name or a path relative to this file
    name: clip_denigration_child
    add_classes: [{label: child, prompts: [a child], category: child}]
    remove_classes: [gorilla]        # optional

Reporting direction: a top-level ``categories`` mapping declares, per reporting category,
whether being predicted into it is a harm (``harm: true``: lower is better for a group), not
a harm with higher better (``harm: false``), or neutral (``harm: null``, the same as not
declaring it): reports describe a neutral category's highest and lowest group and never
rank groups best / worst::

    categories:
      non_human: {harm: true}
      human: {harm: false}
      child: {harm: null}

A variant inherits its base's declarations (those of categories it still has) and may
override or add its own.

Findings: ``findings: [non_human, crime_related]`` names the categories whose rate is the harm
a key finding may be about (default: the categories declared ``harm: true``). A rate of any
other category (e.g. ``human``, whose complement includes a ``child`` class routed on purpose)
is described, never a finding.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..utility.registry import Registry, RegistryError, yaml_files
from ..utility.yamlio import YamlError, load_yaml_file

log = logging.getLogger(__name__)

#: set to 1 to let ``include:`` read taxonomy files outside the including file's folder tree
ALLOW_INCLUDE_ENV = "CLIPFAIR_ALLOW_INCLUDE_ANYWHERE"

TOP_KEYS = {"name", "description", "templates", "target", "also_correct", "classes", "include",
            "add_classes", "remove_classes", "categories", "findings"}
CATEGORY_KEYS = {"harm"}
CLASS_KEYS = {"label", "prompts", "category", "matches"}
DEFAULT_CATEGORY = "class"


class TaxonomyError(ValueError):
    """A malformed taxonomy; the message names the file and the entry."""


@dataclass(frozen=True)
class TaxonomyClass:
    label: str
    prompts: tuple[str, ...]
    category: str
    #: target values for which predicting this class is correct (default: the label itself);
    #: e.g. a 4-way race class "Asian" matches [East Asian, Southeast Asian]
    matches: tuple[str, ...] = ()

    @property
    def correct_for(self) -> tuple[str, ...]:
        return self.matches or (self.label,)


@dataclass(frozen=True)
class Taxonomy:
    name: str
    templates: tuple[str, ...]
    classes: tuple[TaxonomyClass, ...]
    target: str | None = None
    description: str = ""
    source: str = "<python>"
    #: declared direction per reporting category: (category, harm) pairs; harm=True means
    #: lower is better, False higher is better, None neutral (as undeclared categories)
    harms: tuple[tuple[str, bool | None], ...] = ()
    #: the categories whose rate counts as the harm for a finding (``findings:`` in the YAML);
    #: empty: those declared ``harm: true``. A category routed on purpose (e.g. ``child``) does
    #: not turn its complement (``human``) into a harm: only these rates become findings.
    finding_categories: tuple[str, ...] = ()
    #: an attribute holding a second correct answer (e.g. FACET's ``class2``): a prediction that
    #: is right for that value counts as correct too, as one right for the target's value
    also_correct: str | None = None

    @property
    def findings(self) -> tuple[str, ...]:
        """The categories a rate finding may be about (declared, else the harms)."""
        return self.finding_categories or tuple(c for c, h in self.harms if h)

    def harm(self, category: str) -> bool | None:
        """True (a harm: lower is better), False (not a harm: higher is better) or None
        (neutral: no direction declared)."""
        return dict(self.harms).get(category)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    @property
    def categories(self) -> list[str]:
        """Distinct categories in class order."""
        return list(dict.fromkeys(c.category for c in self.classes))

    def class_texts(self) -> list[list[str]]:
        """For each class, every template x prompt text (ensembled at zero-shot time)."""
        return [[t.format(p) for t in self.templates for p in c.prompts] for c in self.classes]

    def all_texts(self) -> list[str]:
        return list(dict.fromkeys(t for texts in self.class_texts() for t in texts))

    def with_templates(self, templates: Sequence[str], name: str | None = None) -> "Taxonomy":
        tax = replace(self, templates=tuple(templates), name=name or self.name)
        validate(tax)
        return tax

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "templates": list(self.templates)}
        if self.target:
            d["target"] = self.target
        if self.also_correct:
            d["also_correct"] = self.also_correct
        d["classes"] = [{"label": c.label, "prompts": list(c.prompts), "category": c.category,
                         **({"matches": list(c.matches)} if c.matches else {})} for c in self.classes]
        if self.harms:
            d["categories"] = {c: {"harm": h} for c, h in self.harms}
        if self.finding_categories:
            d["findings"] = list(self.finding_categories)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def builtin_dir() -> Path:
    """Built-in taxonomy files (package data; kept out of configs/ so Hydra does not read
    them as a config group)."""
    return Path(str(importlib.resources.files("clipfair") / "taxonomies"))


BUILTINS = yaml_files("taxonomy", builtin_dir())


def read_yaml_mapping(path: Path, kind: str = "taxonomy", error: type[ValueError] = TaxonomyError,
                      expect: str = "name, templates, classes") -> dict[str, Any]:
    """One data-only YAML mapping; ``kind``/``error``/``expect`` let other YAML data files
    (query sets) share this loader and its messages."""
    try:  # data only, aliases capped, YAML 1.2 booleans (see clipfair.utility.yamlio)
        data = load_yaml_file(path)
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found") from None
    except YamlError as e:
        raise error(str(e)) from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {kind} file must be a mapping with {expect}")
    return data


def locate_file(spec: str, relative_to: Path | None = None, builtins: Registry[Path] | None = None,
                kind: str = "taxonomy", error: type[ValueError] = TaxonomyError) -> Path:
    """A path (absolute, or relative to the including file / cwd) or a built-in name."""
    builtins = BUILTINS if builtins is None else builtins
    cands = []
    if relative_to is not None:
        cands += [relative_to / spec, relative_to / f"{spec}.yaml"]
    cands += [Path(spec)]
    for c in cands:
        if c.is_file():
            return c.resolve()
    if spec in builtins:
        return builtins.get(spec)
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        raise error(f"{kind} file {spec!r} not found")
    raise error(str(RegistryError(
        f"unknown {kind} {spec!r}; available built-ins: {', '.join(builtins.names())} "
        "(or give a path to a YAML file)")))


def scalar_text(value: Any, where: str, key: str, error: type[ValueError] = TaxonomyError) -> str:
    """A string, number or date read as text; anything else (a list, a mapping, a boolean,
    null) is an ``error`` naming ``where`` and ``key``, never a repr."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict, set, tuple)):
        what = {type(None): "empty", bool: f"the boolean {value}"}.get(type(value), f"a {type(value).__name__}")
        raise error(f"{where}: {key!r} must be a string, got {what}"
                            + (" (put it in quotes)" if isinstance(value, bool) else ""))
    return str(value)


def _scalars(value: Any, where: str, key: str) -> list[str]:
    """One string or a list of strings (see :func:`scalar_text`)."""
    items = value if isinstance(value, list) else [value]
    return [scalar_text(v, where, f"{key}[{i}]" if isinstance(value, list) else key) for i, v in enumerate(items)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_include(found: Path, spec: str, including: Path, top: Path, allow_anywhere: bool) -> None:
    """An include must stay in the top file's folder tree or the built-ins, unless allowed."""
    if allow_anywhere or os.environ.get(ALLOW_INCLUDE_ENV, "").lower() in ("1", "true", "yes"):
        return
    real = found.resolve()
    if _inside(real, builtin_dir().resolve()) or _inside(real, top.resolve().parent):
        return
    raise TaxonomyError(
        f"{including}: include {spec!r} is outside {top.resolve().parent} (the taxonomy's folder) and "
        f"not a built-in; copy the file there, or set {ALLOW_INCLUDE_ENV}=1 to allow it")


def check_template(template: Any, where: str, error: type[ValueError] = TaxonomyError) -> None:
    """A prompt template: a string with exactly one '{}' and no other braces."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise error(f"{where}: template {template!r} must contain '{{}}' exactly once "
                    "(it receives each prompt), e.g. 'a photo of a {} person.'")
    rest = template.replace("{}", "")
    if "{" in rest or "}" in rest:
        raise error(f"{where}: template {template!r} has braces other than one '{{}}'")


def _parse_classes(raw: Any, path: Path, key: str) -> list[TaxonomyClass]:
    if not isinstance(raw, list) or not raw:
        raise TaxonomyError(f"{path}: '{key}' must be a non-empty list of classes")
    out = []
    for i, c in enumerate(raw):
        where = f"{path}: {key}[{i}]"
        if isinstance(c, (str, int, float)) and not isinstance(c, bool):  # a number: its text as written
            c = {"label": str(c)}
        if not isinstance(c, dict):
            raise TaxonomyError(f"{where}: a class must be a mapping with 'label' (and optional prompts, category)")
        unknown = set(c) - CLASS_KEYS
        if unknown:
            raise TaxonomyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(CLASS_KEYS)}")
        label = c.get("label")
        if label is None or (isinstance(label, str) and label.strip() == ""):
            raise TaxonomyError(f"{where}: 'label' is required and must be a non-empty string")
        label = scalar_text(label, where, "label")
        prompts = c.get("prompts", [label])
        if prompts == [] or isinstance(prompts, dict):
            raise TaxonomyError(f"{where} ({label}): 'prompts' must be a non-empty list of strings")
        prompts = _scalars(prompts, f"{where} ({label})", "prompts")
        category = scalar_text(c.get("category", DEFAULT_CATEGORY), f"{where} ({label})", "category")
        matches = c.get("matches", [])
        if isinstance(matches, dict):
            raise TaxonomyError(f"{where} ({label}): 'matches' must be a list of target values")
        matches = _scalars(matches, f"{where} ({label})", "matches") if matches != [] else []
        out.append(TaxonomyClass(label, tuple(prompts), category, tuple(matches)))
    return out


def _parse_categories(raw: Any, path: Path) -> dict[str, bool | None]:
    """``categories: {name: {harm: true|false|null}}`` -> {name: harm}."""
    if not isinstance(raw, dict):
        raise TaxonomyError(f"{path}: 'categories' must be a mapping like {{non_human: {{harm: true}}}}")
    out: dict[str, bool] = {}
    for name, spec in raw.items():
        where = f"{path}: categories.{name}"
        if not isinstance(spec, dict):
            raise TaxonomyError(f"{where}: must be a mapping like {{harm: true}}")
        unknown = set(spec) - CATEGORY_KEYS
        if unknown:
            raise TaxonomyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(CATEGORY_KEYS)}")
        if "harm" not in spec or not (spec["harm"] is None or isinstance(spec["harm"], bool)):
            raise TaxonomyError(f"{where}: 'harm' is required and must be true (a harm: lower is better), "
                                "false (not a harm: higher is better) or null (neutral: described, not ranked)")
        out[str(name)] = spec["harm"]
    return out


def _parse_findings(raw: Any, classes: Sequence[TaxonomyClass], path: Path) -> list[str]:
    """``findings: [non_human, crime_related]``: categories of the taxonomy's classes."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise TaxonomyError(f"{path}: 'findings' must be a list of category names, e.g. [non_human, crime_related]")
    have = {c.category for c in classes}
    stray = [x for x in raw if x not in have]
    if stray:
        raise TaxonomyError(f"{path}: findings: {stray} are not categories of its classes; class categories: "
                            f"{sorted(have)}")
    return list(dict.fromkeys(raw))


def _check_declared(declared: dict[str, bool | None], classes: Sequence[TaxonomyClass], path: Path) -> None:
    have = {c.category for c in classes}
    stray = sorted(set(declared) - have)
    if stray:
        raise TaxonomyError(f"{path}: categories {stray} are declared but no class has them; "
                            f"class categories: {sorted(have)}")


def _load_dict(path: Path, stack: tuple[Path, ...] = (), allow_include_anywhere: bool = False) -> dict[str, Any]:
    """Read a file and resolve its include chain into one flat dict. Includes stay in the
    first file's folder tree or the built-ins unless ``allow_include_anywhere``."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise TaxonomyError(f"include cycle: {chain}")
    data = read_yaml_mapping(path)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise TaxonomyError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    if "include" in data:
        inc = data["include"]
        if not isinstance(inc, str):
            raise TaxonomyError(f"{path}: 'include' must be one taxonomy name or path")
        found = locate_file(inc, path.parent)
        _check_include(found, inc, path, (stack or (path,))[0], allow_include_anywhere)
        base = _load_dict(found, (*stack, path), allow_include_anywhere)
        merged = {k: v for k, v in base.items() if k not in ("name", "description")}
        for k in ("name", "description", "templates", "target", "also_correct"):
            if k in data:
                merged[k] = data[k]
        if "classes" in data:
            merged["classes"] = _parse_classes(data["classes"], path, "classes")
        classes = list(merged["classes"])
        if "remove_classes" in data:
            rm = data["remove_classes"]
            if not isinstance(rm, list):
                raise TaxonomyError(f"{path}: 'remove_classes' must be a list of labels")
            rm = _scalars(rm, str(path), "remove_classes")
            have = [c.label for c in classes]
            missing = [r for r in rm if r not in have]
            if missing:
                raise TaxonomyError(f"{path}: remove_classes: {missing} not in {inc!r} (labels: {have})")
            classes = [c for c in classes if c.label not in set(rm)]
        if "add_classes" in data:
            classes += _parse_classes(data["add_classes"], path, "add_classes")
        merged["classes"] = classes
        have = {c.category for c in classes}
        harms = {c: h for c, h in base.get("harms", {}).items() if c in have}  # inherited, still present
        own = _parse_categories(data["categories"], path) if "categories" in data else {}
        _check_declared(own, classes, path)
        merged["harms"] = {**harms, **own}
        if "findings" in data:
            merged["findings"] = _parse_findings(data["findings"], classes, path)
        elif base.get("findings"):
            merged["findings"] = [c for c in base["findings"] if c in have]
        merged["source"] = f"{path} (includes {base['source']})"
        return merged
    for k in ("add_classes", "remove_classes"):
        if k in data:
            raise TaxonomyError(f"{path}: '{k}' needs 'include' (a base taxonomy to modify)")
    if "classes" not in data:
        raise TaxonomyError(f"{path}: 'classes' is required")
    out = dict(data)
    out["classes"] = _parse_classes(data["classes"], path, "classes")
    out["harms"] = _parse_categories(data["categories"], path) if "categories" in data else {}
    _check_declared(out["harms"], out["classes"], path)
    if "findings" in data:
        out["findings"] = _parse_findings(data["findings"], out["classes"], path)
    out["source"] = str(path)
    return out


def validate(tax: Taxonomy) -> Taxonomy:
    where = tax.source
    if not isinstance(tax.name, str) or not tax.name.strip():
        raise TaxonomyError(f"{where}: 'name' is required and must be a non-empty string")
    if not tax.templates:
        raise TaxonomyError(f"{where} ({tax.name}): 'templates' must be a non-empty list")
    for t in tax.templates:
        check_template(t, f"{where} ({tax.name})")
    seen: set[str] = set()
    for c in tax.classes:
        if c.label in seen:
            raise TaxonomyError(f"{where} ({tax.name}): duplicate class label {c.label!r}; labels must be unique")
        seen.add(c.label)
    if tax.target is not None:
        if not isinstance(tax.target, str) or not tax.target.strip():
            raise TaxonomyError(f"{where} ({tax.name}): 'target' must be an attribute name")
        claimed: dict[str, str] = {}
        for c in tax.classes:
            for v in c.correct_for:
                if v in claimed:
                    raise TaxonomyError(f"{where} ({tax.name}): target value {v!r} is matched by both "
                                        f"{claimed[v]!r} and {c.label!r}")
                claimed[v] = c.label
    elif any(c.matches for c in tax.classes):
        raise TaxonomyError(f"{where} ({tax.name}): 'matches' needs a 'target'")
    if tax.also_correct is not None and (not tax.target or not str(tax.also_correct).strip()):
        raise TaxonomyError(f"{where} ({tax.name}): 'also_correct' must name an attribute and needs a 'target'")
    return tax


def check_target(tax: Taxonomy, attributes: Mapping[str, Sequence[str]], dataset: str = "the dataset",
                 tolerated: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Check a target taxonomy against the dataset it is evaluated on (at evaluation time).

    ``attributes``: the dataset's attributes -> their declared values (empty: values not
    declared). A class label (or ``matches`` value) must be a declared value of the
    target, or one of the values the dataset tolerates (``tolerated``, its declaration
    :attr:`clipfair.data.base.FaceDataset.tolerated_values`: FairFace's values, so the
    built-in FairFace taxonomies run on datasets with other race values, e.g. UTKFace,
    where such classes are simply never right). Otherwise a TaxonomyError names the file,
    class and allowed values. Without declared values nothing can be checked. Returns
    whether the dataset has the target attribute (when it does not, the pipeline
    evaluates the taxonomy without accuracy, with a warning).
    """
    if tax.target is None or tax.target not in attributes:
        return False
    declared = tuple(attributes[tax.target])
    if not declared:
        return True
    allowed = set(declared) | set((tolerated or {}).get(tax.target, ()))
    for c in tax.classes:
        for v in c.correct_for:
            if v not in allowed:
                what = f"class {c.label!r}" if not c.matches else f"class {c.label!r}: matches value {v!r}"
                raise TaxonomyError(
                    f"{tax.source} ({tax.name}): {what} is not a value of target "
                    f"{tax.target!r} in {dataset}; allowed values: {', '.join(declared)} "
                    "(use 'matches' to map a class onto several values)")
    return True


def load_taxonomy(spec: str | Path, allow_include_anywhere: bool = False) -> Taxonomy:
    """Load a built-in taxonomy by name, or a user's YAML file by path. ``include:`` may
    read only the built-ins and files in the taxonomy's folder tree, unless
    ``allow_include_anywhere`` (or the environment variable CLIPFAIR_ALLOW_INCLUDE_ANYWHERE=1)."""
    path = locate_file(str(spec)) if not isinstance(spec, Path) else spec.resolve()
    d = _load_dict(path, allow_include_anywhere=allow_include_anywhere)
    if d.get("name") is None or (isinstance(d["name"], str) and not d["name"].strip()):
        raise TaxonomyError(f"{path}: 'name' is required and must be a non-empty string")
    name = scalar_text(d["name"], str(path), "name")
    templates = d.get("templates")
    if not isinstance(templates, (str, list)):
        raise TaxonomyError(f"{path} ({name}): 'templates' must be a list of strings containing '{{}}'")
    templates = _scalars(templates, f"{path} ({name})", "templates")
    target = d.get("target")
    tax = Taxonomy(
        name=name,
        templates=tuple(templates),
        classes=tuple(d["classes"]),
        target=None if target is None else scalar_text(target, f"{path} ({name})", "target"),
        description=scalar_text(d.get("description", ""), f"{path} ({name})", "description"),
        source=d["source"],
        harms=tuple(d.get("harms", {}).items()),
        finding_categories=tuple(d.get("findings") or ()),
        also_correct=(None if d.get("also_correct") is None
                      else scalar_text(d["also_correct"], f"{path} ({name})", "also_correct")),
    )
    validate(tax)
    if len(tax.classes) == 1:
        log.warning("%s (%s): only one class (%s): every image is scored 1.0 for it; add classes to "
                    "compare against", tax.source, tax.name, tax.classes[0].label)
    return tax


def load_taxonomies(specs: Iterable[str | Path], allow_include_anywhere: bool = False) -> list[Taxonomy]:
    """Load several taxonomies; duplicate names are an error (never silently overwritten)."""
    out: list[Taxonomy] = []
    names: dict[str, str] = {}
    for s in specs:
        t = load_taxonomy(s, allow_include_anywhere)
        if t.name in names:
            raise TaxonomyError(
                f"two taxonomies are named {t.name!r}: {names[t.name]} and {t.source}; names must be unique")
        names[t.name] = t.source
        out.append(t)
    if not out:
        raise TaxonomyError("no taxonomies given; list at least one, e.g. taxonomies=[fairface_race]")
    return out
