"""Canonical demographic values (FairFace's strings) and normalisation helpers."""

from __future__ import annotations

import math
import re
from typing import Iterable

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
ATTRIBUTES: tuple[str, ...] = ("race", "gender", "age")


class LabelError(ValueError):
    """A label value that is not one of an attribute's allowed values."""


def _key(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower())


_LOOKUP: dict[str, dict[str, str]] = {
    attr: {_key(v): v for v in values} for attr, values in CANONICAL.items()
}
# common spellings seen in public copies of FairFace
_LOOKUP["race"].update({_key("Latino"): "Latino_Hispanic", _key("Latino/Hispanic"): "Latino_Hispanic"})
_LOOKUP["gender"].update({"man": "Male", "woman": "Female", "m": "Male", "f": "Female"})
_LOOKUP["age"].update({_key("70+"): "more than 70", _key("over 70"): "more than 70"})


def normalize_value(attribute: str, value: object, where: str = "") -> str:
    """Map a raw label to its canonical string; tolerant of case, whitespace and '_'/'-'.

    Raises LabelError naming ``where`` and listing the allowed values.
    """
    if attribute not in _LOOKUP:
        raise LabelError(f"unknown attribute {attribute!r}; known: {', '.join(CANONICAL)}")
    if isinstance(value, str):
        hit = _LOOKUP[attribute].get(_key(value.replace("\ufeff", "")))
        if hit is not None:
            return hit
    loc = f"{where}: " if where else ""
    raise LabelError(
        f"{loc}unknown {attribute} value {value!r}; allowed values: {', '.join(CANONICAL[attribute])}"
    )


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
    return "White" if race == "White" else "Non-White"
