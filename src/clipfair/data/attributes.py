"""Attribute declarations: which columns a dataset's images are described by.

Layer: data.

A dataset declares its attributes as typed objects:

:class:`Attribute`
    a column read from the source: its name, the source column, an optional ordered list
    of allowed values (which also orders every table and plot) and an optional mapping of
    raw values onto those values (tolerant of case, whitespace, ``_`` and ``-``).
:class:`DerivedAttribute`
    a grouping of another attribute's values (``age_band`` from ``age``,
    ``race_binary`` from ``race``); values not listed in any group go to the ``other``
    group when one is given, and are an error otherwise.

FairFace's race, gender and age (and the default derived ``race_binary``) are built-in
instances (:data:`FAIRFACE_ATTRIBUTES`, :data:`RACE_BINARY_ATTRIBUTE`); CSV and Hugging
Face datasets add the user's own from config (:func:`parse_attributes`,
:func:`parse_derived`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

RACES: tuple[str, ...] = (
    "White",
    "Black",
    "Latino_Hispanic",
    "East Asian",
    "Southeast Asian",
    "Indian",
    "Middle Eastern",
)
GENDERS: tuple[str, ...] = ("Male", "Female")
AGE_BINS: tuple[str, ...] = (
    "0-2",
    "3-9",
    "10-19",
    "20-29",
    "30-39",
    "40-49",
    "50-59",
    "60-69",
    "more than 70",
)
RACE_BINARY: tuple[str, ...] = ("White", "Non-White")

#: canonical values of every attribute a dataset adapter yields
CANONICAL: dict[str, tuple[str, ...]] = {
    "race": RACES,
    "gender": GENDERS,
    "age": AGE_BINS,
    "race_binary": RACE_BINARY,
}
#: FairFace's attribute names (declared by :data:`FAIRFACE_ATTRIBUTES`)
ATTRIBUTES: tuple[str, ...] = ("race", "gender", "age")


class LabelError(ValueError):
    """A label value that is not one of an attribute's allowed values."""


class AttributeDeclarationError(LabelError):
    """A malformed attribute or derived-attribute declaration (a config mistake)."""


def _key(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower())


def normalize_value(attribute: str, value: object, where: str = "") -> str:
    """Map a raw label of a built-in FairFace attribute (race, gender, age, race_binary)
    to its canonical string; tolerant of case, whitespace and '_'/'-'.

    Raises LabelError naming ``where`` and listing the allowed values.
    """
    if attribute not in BUILTIN:
        raise LabelError(f"unknown attribute {attribute!r}; known: {', '.join(CANONICAL)}")
    return BUILTIN[attribute].convert(value, where)


def normalize_column(attribute: str, values: Iterable[object], where: str = "") -> list[str]:
    out = []
    for i, v in enumerate(values):
        out.append(normalize_value(attribute, v, f"{where} row {i}" if where else f"row {i}"))
    return out


def age_to_bin(age: float | int) -> str:
    """Put an integer age (years) into FairFace's bins."""
    if age is None or (isinstance(age, float) and math.isnan(age)) or age < 0:
        raise LabelError(f"age must be a non-negative number of years, got {age!r}")
    edges = [(2, "0-2"), (9, "3-9"), (19, "10-19"), (29, "20-29"), (39, "30-39"),
             (49, "40-49"), (59, "50-59"), (69, "60-69")]
    for hi, label in edges:
        if age <= hi:
            return label
    return "more than 70"


def race_binary(race: str) -> str:
    return RACE_BINARY_ATTRIBUTE.group_of(race)


# --------------------------------------------------------------------- declarations


#: the columns every prediction has (predictions.parquet), in order; the attribute columns follow
PREDICTION_COLUMNS: tuple[str, ...] = ("image_id", "taxonomy", "method", "predicted_label", "predicted_category",
                                       "score", "logit", "true_label", "correct", "true_rank")
#: names an attribute cannot have: every prediction column and the overall slice
RESERVED_NAMES: tuple[str, ...] = (*PREDICTION_COLUMNS, "overall")


#: spellings of a missing value in a data file (besides an empty cell); ``dataset.missing_values``
#: replaces the list for a dataset's custom attributes, an attribute's own ``missing_values`` for it
DEFAULT_MISSING_VALUES: tuple[str, ...] = ("NaN", "nan", "NAN", "None", "none", "null", "Null", "NULL",
                                           "N/A", "n/a", "NA", "<NA>", "#N/A")


def _text(value: object) -> str:
    """A raw value as text: numbers without a spurious '.0', strings stripped."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace("\ufeff", "").strip()


def _is_blank(value: object) -> bool:
    """None, NaN, NA or an empty / whitespace-only string."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


@dataclass(frozen=True, eq=False)
class Attribute:
    """One attribute a dataset declares.

    ``name``: the column name in the dataset table, predictions and metrics (slice names).
    ``column``: the source column it is read from (default: ``name``).
    ``values``: ordered allowed values (optional). When given, every raw value must map
    onto one of them (matching is tolerant of case, whitespace, '_' and '-'), and this
    order is the order of groups in every table and plot. Without it any value is
    kept as text and groups are sorted.
    ``mapping``: raw value -> value (optional canonicalisation, e.g. ``{F: Female}`` or
    ``{"1": light, "2": light}``), applied before the check against ``values``.
    ``allow_missing``: an empty cell is a missing value (left out of this attribute's
    slices) instead of an error.
    ``missing_values``: the spellings that mean a missing value, like an empty cell
    (default :data:`DEFAULT_MISSING_VALUES`: NaN, None, null, N/A, NA, ...); a spelling
    that ``values`` or ``mapping`` names is a value.
    """

    name: str
    column: str | None = None
    values: tuple[str, ...] = ()
    mapping: Mapping[str, str] = field(default_factory=dict)
    allow_missing: bool = True
    missing_values: tuple[str, ...] = DEFAULT_MISSING_VALUES

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise AttributeDeclarationError(f"an attribute needs a non-empty name, got {self.name!r}")
        if "+" in self.name:
            raise AttributeDeclarationError(
                f"attribute name {self.name!r} contains '+' (it joins the attributes of an intersection)")
        if self.name in RESERVED_NAMES:
            raise AttributeDeclarationError(
                f"attribute name {self.name!r} is reserved (a column of every prediction or the "
                f"'overall' slice: {', '.join(RESERVED_NAMES)}); choose another name")
        object.__setattr__(self, "values", tuple(_text(v) for v in self.values))
        if isinstance(self.missing_values, str) or not all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in self.missing_values):
            raise AttributeDeclarationError(f"attribute {self.name!r}: missing_values must be a list of "
                                            f"spellings, e.g. [NaN, N/A], got {self.missing_values!r}")
        object.__setattr__(self, "missing_values", tuple(str(v).strip() for v in self.missing_values))
        object.__setattr__(self, "mapping", {_text(k): _text(v) for k, v in dict(self.mapping).items()})
        if len(set(self.values)) != len(self.values):
            raise AttributeDeclarationError(f"attribute {self.name!r}: duplicate values in {list(self.values)}")
        if self.values:
            bad = sorted({v for v in self.mapping.values() if v not in self.values})
            if bad:
                raise AttributeDeclarationError(
                    f"attribute {self.name!r}: mapping targets {bad} are not among its values "
                    f"{', '.join(self.values)}")
        lookup: dict[str, str] = {}
        if self.values:
            lookup.update({_key(v): v for v in self.values})
        lookup.update({_key(k): v for k, v in self.mapping.items()})
        object.__setattr__(self, "_lookup", lookup)

    @property
    def source_column(self) -> str:
        return self.column or self.name

    def with_column(self, column: str | None) -> "Attribute":
        return Attribute(self.name, column, self.values, self.mapping, self.allow_missing, self.missing_values)

    def is_missing(self, value: object) -> bool:
        """An empty cell or one of ``missing_values`` (unless ``values``/``mapping`` name it)."""
        if _is_blank(value):
            return True
        text = _text(value)
        return text in self.missing_values and _key(text) not in self._lookup  # type: ignore[attr-defined]

    def convert(self, value: object, where: str = "") -> str | None:
        """The attribute's value for a raw ``value`` (None: missing); LabelError naming
        ``where`` if it is missing (and missing values are not allowed) or not an allowed
        value."""
        loc = f"{where}: " if where else ""
        if self.is_missing(value):
            if self.allow_missing:
                return None
            raise LabelError(f"{loc}missing {self.name} value; allowed values: {', '.join(self.values)}")
        text = _text(value)
        hit = self._lookup.get(_key(text))  # type: ignore[attr-defined]
        if hit is not None:
            return hit
        if not self.values:
            return text
        raise LabelError(f"{loc}unknown {self.name} value {value!r}; allowed values: {', '.join(self.values)}")


@dataclass(frozen=True, eq=False)
class DerivedAttribute:
    """An attribute computed by grouping another attribute's values.

    ``groups``: ordered (group name, member values) pairs; the group order is the value
    order. ``other``: the group of every value not listed (None: a value not listed is an
    error naming it).
    """

    name: str
    source: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    other: str | None = None

    def __post_init__(self) -> None:
        Attribute(self.name)  # same name rules
        groups = tuple((_text(g), tuple(_text(v) for v in vs)) for g, vs in self.groups)
        object.__setattr__(self, "groups", groups)
        if not groups and self.other is None:
            raise AttributeDeclarationError(f"derived attribute {self.name!r}: 'groups' is empty")
        names = [g for g, _ in groups] + ([self.other] if self.other is not None else [])
        if len(set(names)) != len(names):
            raise AttributeDeclarationError(f"derived attribute {self.name!r}: duplicate group names {names}")
        member: dict[str, str] = {}
        for g, vs in groups:
            for v in vs:
                if v in member:
                    raise AttributeDeclarationError(
                        f"derived attribute {self.name!r}: value {v!r} is in both groups "
                        f"{member[v]!r} and {g!r}")
                member[v] = g
        object.__setattr__(self, "_member", member)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.groups) + ((self.other,) if self.other is not None else ())

    def group_of(self, value: str) -> str:
        hit = self._member.get(value)  # type: ignore[attr-defined]
        if hit is not None:
            return hit
        if self.other is not None:
            return self.other
        raise LabelError(f"derived attribute {self.name!r}: value {value!r} of {self.source!r} is in no group")

    def check(self, source_values: Iterable[str], declared: bool) -> None:
        """Every source value must be grouped (or go to ``other``), and every listed
        member must be a value of the source when the source declares its values."""
        source_values = list(source_values)
        if self.other is None:
            loose = [v for v in source_values if v not in self._member]  # type: ignore[attr-defined]
            if loose:
                raise AttributeDeclarationError(
                    f"derived attribute {self.name!r}: values of {self.source!r} in no group: "
                    f"{', '.join(map(repr, loose))}; list them in a group or add an 'other' group")
        if declared:
            unknown = [v for v in self._member if v not in set(source_values)]  # type: ignore[attr-defined]
            if unknown:
                raise AttributeDeclarationError(
                    f"derived attribute {self.name!r}: {', '.join(map(repr, unknown))} "
                    f"{'is' if len(unknown) == 1 else 'are'} not a value of {self.source!r}; "
                    f"its values: {', '.join(source_values)}")

    def apply(self, source: pd.Series) -> pd.Series:
        """The derived column of a source column (nulls stay null)."""
        uniques = [v for v in pd.unique(source.dropna())]
        mapping = {v: self.group_of(_text(v)) for v in uniques}
        return source.map(mapping).astype(object).where(source.notna(), None)


AnyAttribute = Attribute | DerivedAttribute

#: FairFace's attributes with its canonical values and common spellings of public copies
RACE_ATTRIBUTE = Attribute("race", values=RACES, allow_missing=False,
                           mapping={"Latino": "Latino_Hispanic", "Latino/Hispanic": "Latino_Hispanic"})
GENDER_ATTRIBUTE = Attribute("gender", values=GENDERS, allow_missing=False,
                             mapping={"man": "Male", "woman": "Female", "m": "Male", "f": "Female"})
AGE_ATTRIBUTE = Attribute("age", values=AGE_BINS, allow_missing=False,
                          mapping={"70+": "more than 70", "over 70": "more than 70"})
FAIRFACE_ATTRIBUTES: tuple[Attribute, ...] = (RACE_ATTRIBUTE, GENDER_ATTRIBUTE, AGE_ATTRIBUTE)
#: the default derived attribute of every dataset with a race column
RACE_BINARY_ATTRIBUTE = DerivedAttribute("race_binary", "race", (("White", ("White",)),), other="Non-White")
#: every built-in declaration by name
BUILTIN: dict[str, Attribute] = {
    **{a.name: a for a in FAIRFACE_ATTRIBUTES},
    "race_binary": Attribute("race_binary", values=RACE_BINARY, allow_missing=False),
}


def value_orders(declared: Sequence[AnyAttribute]) -> dict[str, tuple[str, ...]]:
    """Attribute name -> declared value order, for the declarations that have one."""
    return {a.name: tuple(a.values) for a in declared if a.values}


#: FairFace's declared value orders (race, gender, age bins ascending, race_binary)
FAIRFACE_ORDERS: dict[str, tuple[str, ...]] = value_orders(list(BUILTIN.values()))
#: the slices ``slices: auto`` computes first for a dataset with FairFace's attributes (those
#: whose attributes the dataset declares; then every other declared attribute on its own):
#: the overall row, each attribute, and the intersections the CLIP paper reports. Every
#: built-in layout (FairFace, UTKFace, CSV and Hugging Face datasets) declares this
#: preference (:attr:`clipfair.data.base.FaceDataset.default_slices`).
FAIRFACE_SLICES: tuple = (
    "overall",
    "race",
    "gender",
    "age",
    "race_binary",
    ("race", "gender"),
    ("race_binary", "gender"),
    ("age", "gender"),
)
#: values a target taxonomy may name though a dataset does not have them: FairFace's, so the
#: built-in FairFace taxonomies run on datasets with other race values (e.g. UTKFace), where
#: such classes are simply never right (:attr:`clipfair.data.base.FaceDataset.tolerated_values`)
FAIRFACE_TAXONOMY_VALUES: dict[str, tuple[str, ...]] = dict(CANONICAL)
#: the single-attribute slices that get a plot, by kind (``accuracy``: accuracy plots, ``rate``:
#: category-rate, variant-shift and prompt-sensitivity plots); the rest are tables only
FAIRFACE_PLOT_SLICES: dict[str, tuple[str, ...]] = {"accuracy": ("race", "gender", "age"), "rate": ("race", "age")}


def plain_data(obj: Any) -> Any:
    """Hydra's DictConfig / ListConfig as plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [plain_data(v) for v in obj]
    return obj


_ATTRIBUTE_KEYS = ("column", "values", "mapping", "allow_missing", "missing_values")


def parse_attributes(spec: Mapping[str, Any] | None) -> list[Attribute]:
    """Declarations from config: ``{name: column}`` or ``{name: {column, values, mapping,
    allow_missing}}``. A built-in name (race, gender, age) given only a column keeps its
    canonical values and spellings."""
    out: list[Attribute] = []
    for name, body in (plain_data(spec) or {}).items():
        where = f"dataset.attributes.{name}"
        if body is None or isinstance(body, (str, int)):
            column = None if body is None else str(body)
            out.append(BUILTIN[name].with_column(column) if name in ATTRIBUTES
                       else Attribute(name, column))
            continue
        if not isinstance(body, Mapping):
            raise AttributeDeclarationError(
                f"{where}: give a column name or a mapping with keys {', '.join(_ATTRIBUTE_KEYS)}")
        unknown = sorted(set(body) - set(_ATTRIBUTE_KEYS))
        if unknown:
            raise AttributeDeclarationError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(_ATTRIBUTE_KEYS)}")
        values = body.get("values") or []
        mapping = body.get("mapping") or {}
        if not isinstance(values, list) or not isinstance(mapping, Mapping):
            raise AttributeDeclarationError(f"{where}: 'values' must be a list and 'mapping' a mapping")
        base = BUILTIN.get(name) if name in ATTRIBUTES else None
        if base is not None and not values:
            values, mapping = list(base.values), {**base.mapping, **mapping}
        try:
            mv = body.get("missing_values")
            out.append(Attribute(name, body.get("column"), tuple(values), mapping,
                                 bool(body.get("allow_missing", base is None)),
                                 DEFAULT_MISSING_VALUES if mv is None else
                                 (tuple(mv) if isinstance(mv, list) else mv)))
        except AttributeDeclarationError as e:
            raise AttributeDeclarationError(f"{where}: {e}") from None
    return out


_DERIVED_KEYS = ("from", "groups", "other")


def parse_derived(spec: Mapping[str, Any] | None) -> list[DerivedAttribute]:
    """Derived attributes from config: ``{name: {from: attribute, groups: {group: [values]},
    other: group name (optional)}}``."""
    out: list[DerivedAttribute] = []
    for name, body in (plain_data(spec) or {}).items():
        where = f"dataset.derived.{name}"
        if not isinstance(body, Mapping):
            raise AttributeDeclarationError(f"{where}: must be a mapping with 'from' and 'groups'")
        unknown = sorted(set(body) - set(_DERIVED_KEYS))
        if unknown:
            raise AttributeDeclarationError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(_DERIVED_KEYS)}")
        if not body.get("from"):
            raise AttributeDeclarationError(f"{where}: 'from' (the attribute whose values are grouped) is required")
        groups = body.get("groups") or {}
        if not isinstance(groups, Mapping) or not all(isinstance(v, list) for v in groups.values()):
            raise AttributeDeclarationError(f"{where}: 'groups' must map each group name to a list of values")
        other = body.get("other")
        try:
            out.append(DerivedAttribute(str(name), str(body["from"]),
                                        tuple((str(g), tuple(vs)) for g, vs in groups.items()),
                                        None if other is None else str(other)))
        except AttributeDeclarationError as e:
            raise AttributeDeclarationError(f"{where}: {e}") from None
    return out

