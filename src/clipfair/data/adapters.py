"""Dataset adapters: turn FairFace-style sources into :class:`FaceDataset` objects.

Layer: data.

Each adapter is a function registered in :data:`DATASETS` under a short name. It takes
keyword arguments only (they come straight from the Hydra config group ``dataset``) and
returns a :class:`FaceDataset` whose table holds a unique string ``image_id``, one
column per declared attribute (:mod:`clipfair.data.attributes`: FairFace's canonical
``race`` / ``gender`` / ``age``, the derived ``race_binary`` (White / Non-White) when race
is known, and the user's own attributes for ``csv`` and ``hf``), and every other source
column. ``load_dataset(..., derived=...)`` adds derived attributes to any adapter.

Adapters registered here:

``fairface``
    the official FairFace download (label CSVs plus ``train/`` and ``val/`` folders);
``hf``
    any Hugging Face ``datasets`` source: a hub id, a ``save_to_disk`` folder or a
    folder (or file) of parquet files;
``utkface``
    a folder of UTKFace ``[age]_[gender]_[race]_[datetime].jpg`` files;
``csv``
    any CSV with an image-path column and attribute columns.

Rows that cannot be used (malformed file names, unknown labels, missing image files)
either raise a :class:`DatasetError` naming the file / row / field (``on_error="raise"``)
or are dropped and counted in ``FaceDataset.skipped`` by reason (``on_error="skip"``).
Problems with the whole dataset (missing files or columns, duplicate ids, image paths
outside the root) always raise. Images are never decoded at load time.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..utility.registry import Registry
from .attributes import (
    AGE_ATTRIBUTE,
    BUILTIN,
    FAIRFACE_ATTRIBUTES,
    GENDER_ATTRIBUTE,
    RACE_BINARY_ATTRIBUTE,
    Attribute,
    AttributeDeclarationError,
    LabelError,
    age_to_bin,
    parse_attributes,
    parse_derived,
)
from .base import DatasetError, FaceDataset, FileReader, ImageReader
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError, read_image_file

if TYPE_CHECKING:  # `datasets` is imported lazily: it is slow to import
    import datasets

__all__ = [
    "DATASETS",
    "ON_ERROR",
    "UTKFACE_RACES",
    "HFReader",
    "load_dataset",
    "fairface",
    "hf",
    "utkface",
    "csv_file",
]

_log = logging.getLogger(__name__)

#: every dataset adapter, by name: ``DATASETS.get(name)(**kwargs) -> FaceDataset``
DATASETS: Registry[Callable[..., FaceDataset]] = Registry("dataset")

#: accepted values of every adapter's ``on_error`` argument
ON_ERROR: tuple[str, ...] = ("raise", "skip")

#: UTKFace's race names by code (Asian and Others are not FairFace classes)
UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
_UTKFACE_GENDERS: tuple[str, ...] = ("Male", "Female")
#: UTKFace's race attribute: its own five values, in code order
UTKFACE_RACE_ATTRIBUTE = Attribute("race", values=UTKFACE_RACES, allow_missing=False)

_FAIRFACE_URL = "https://github.com/joojs/fairface"
_UTKFACE_URL = "https://susanqq.github.io/UTKFace/"
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_SPLIT_ALIASES = {"val": "validation", "validation": "val", "valid": "validation"}
_EXAMPLES = 5  # how many offending rows an error message lists
_SHOW_CHARS = 80  # longest value echoed in an error message

Converter = Callable[[object], str]
"""Maps one raw label to its canonical string; raises LabelError if it cannot."""


# --------------------------------------------------------------------------- loading

def _with_missing_values(kwargs: dict[str, Any], spellings: Any, takes_attributes: bool) -> dict[str, Any]:
    """``kwargs`` with ``dataset.missing_values`` put into every declared attribute that does
    not list its own."""
    if isinstance(spellings, (str, bytes)) or not isinstance(spellings, Sequence) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in spellings):
        raise DatasetError(f"dataset.missing_values must be a list of spellings, e.g. [NaN, N/A, None], "
                           f"got {spellings!r}")
    from .attributes import plain_data

    attrs = plain_data(kwargs.get("attributes"))
    if not takes_attributes or not isinstance(attrs, Mapping):
        return kwargs  # a malformed declaration is the adapter's error to report
    out = {}
    for attr_name, body in attrs.items():
        if body is None or isinstance(body, (str, int)):
            body = {} if body is None else {"column": str(body)}
        if isinstance(body, Mapping) and "missing_values" not in body:
            body = {**body, "missing_values": [str(v) for v in spellings]}
        out[attr_name] = body
    return {**kwargs, "attributes": out}



def load_dataset(name: str, derived: Mapping[str, Any] | None = None, **kwargs: Any) -> FaceDataset:
    """Build the dataset adapter ``name`` with ``kwargs`` and apply ``limit`` (first N rows).

    ``derived`` (any adapter): derived attributes, ``{name: {from: attribute, groups:
    {group: [values]}, other: group (optional)}}`` (see
    :func:`clipfair.data.attributes.parse_derived`).
    Unknown names raise a RegistryError listing the registered adapters; unknown or
    missing arguments raise a DatasetError listing the ones the adapter accepts.
    ``max_image_bytes`` (every adapter): image files larger than this are refused from their
    size before they are read (None: no limit).
    ``missing_values`` (adapters with ``attributes``): the spellings that mean a missing
    value in every declared attribute without its own ``missing_values`` (None: the default
    :data:`clipfair.data.attributes.DEFAULT_MISSING_VALUES`; ``[]``: only empty cells).
    Missing values are left out of the attribute's slices and counted in the log.
    """
    try:
        derived_attrs = parse_derived(derived)
    except AttributeDeclarationError as e:
        raise DatasetError(str(e)) from None
    max_image_bytes = kwargs.pop("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)
    if max_image_bytes is not None and (isinstance(max_image_bytes, bool) or int(max_image_bytes) < 1):
        raise DatasetError(f"dataset.max_image_bytes must be a positive number of bytes or null, "
                           f"got {max_image_bytes!r}")
    adapter = DATASETS.get(name)
    signature = inspect.signature(adapter)
    missing_values = kwargs.pop("missing_values", None)
    if missing_values is not None:
        kwargs = _with_missing_values(kwargs, missing_values, "attributes" in signature.parameters)
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(signature.parameters)
        raise DatasetError(f"dataset {name!r}: {e}; accepted arguments: {accepted}") from None
    # adapters apply limit themselves; this guards adapters registered elsewhere
    ds = adapter(**kwargs).limit(kwargs.get("limit")).with_derived(derived_attrs)
    for a in ds.declared:
        if a.name in ds.table.columns and (n := int(ds.table[a.name].isna().sum())):
            _log.info("dataset %r: %d of %d images have no %s value (empty or one of %s); they are left "
                      "out of its slices", name, n, len(ds.table), a.name,
                      ", ".join(getattr(a, "missing_values", ())) or "-")
    if hasattr(ds.reader, "max_bytes"):
        ds.reader.max_bytes = None if max_image_bytes is None else int(max_image_bytes)
    return ds


# ------------------------------------------------------------------ shared machinery


@dataclass
class _RowIssues:
    """Rows that cannot be used: raise at the first problem, or drop and count them.

    Each dropped row is counted once, under the first reason it was flagged with, so the
    counts add up to the number of rows dropped.
    """

    on_error: str
    counts: Counter[str] = field(default_factory=Counter)
    bad: set[int] = field(default_factory=set)
    why: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (reason, message)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise DatasetError(
                f"on_error must be one of {', '.join(ON_ERROR)}; got {self.on_error!r}"
            )

    def flag(self, rows: Iterable[int], reason: str, message: str) -> None:
        """Raise ``message`` (on_error=raise) or drop ``rows`` counting them under ``reason``."""
        rows = [int(r) for r in rows]
        if not rows:
            return
        if self.on_error == "raise":
            raise DatasetError(
                f"{message}; fix the data, or set dataset.on_error=skip to drop such rows "
                "(they are counted in FaceDataset.skipped)"
            )
        for r in rows:
            if r not in self.bad:
                self.bad.add(r)
                self.counts[reason] += 1
                self.why[r] = (reason, _clip(message, 300))

    def items(self, image_ids: Sequence[object]) -> list[dict[str, str]]:
        """The dropped rows by name (image id), reason and message, in row order."""
        return [{"image_id": _clip(str(image_ids[r]), 300), "reason_key": reason, "message": msg}
                for r, (reason, msg) in sorted(self.why.items())]

    def kept(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.bad]


def _clip(text: str, n: int = _SHOW_CHARS) -> str:
    """``text`` cut to ``n`` characters (with the number left out), for messages."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text) - n:,} more characters)"


def _show(value: object) -> str:
    """repr of a value for an error message, cut to _SHOW_CHARS characters."""
    r = repr(value)
    return r if len(r) <= _SHOW_CHARS else _clip(r)


def _examples(items: Sequence[object], total: int | None = None) -> str:
    """``'a', 'b', ... (N in total)`` for error messages."""
    total = len(items) if total is None else total
    shown = ", ".join(repr(_clip(str(x), 4 * _SHOW_CHARS)) for x in items[:_EXAMPLES])
    return f"{shown}{', ...' if total > _EXAMPLES else ''} ({total} in total)"


def _require(value: object, arg: str, adapter: str, hint: str) -> None:
    if value is None or value == "":
        raise DatasetError(f"dataset {adapter!r} needs dataset.{arg}: {hint}")


def _pick_split(requested: str, available: Iterable[str], where: str) -> str:
    """``requested`` if available, else its val/validation alias, else a DatasetError."""
    available = list(available)
    if requested in available:
        return requested
    alias = _SPLIT_ALIASES.get(requested)
    if alias in available:
        return alias
    raise DatasetError(
        f"{where}: no split {requested!r}; available splits: {', '.join(map(str, available))}"
    )


def _match_columns(found: Sequence[str], wanted: Mapping[str, str], where: str,
                   hint: str = "") -> dict[str, str]:
    """Map each wanted column name (value of ``wanted``) to the column actually present.

    Exact names win; otherwise the match is case-insensitive (and must be unambiguous).
    Returns ``{wanted name: found name}``. Missing columns raise a DatasetError naming
    ``where``, the missing columns and the columns found.
    """
    by_lower: dict[str, list[str]] = {}
    for col in found:
        by_lower.setdefault(str(col).lower(), []).append(str(col))
    out: dict[str, str] = {}
    missing: list[str] = []
    for name in wanted.values():
        if name in found:
            out[name] = name
            continue
        hits = by_lower.get(name.lower(), [])
        if len(hits) == 1:
            out[name] = hits[0]
        elif len(hits) > 1:
            raise DatasetError(f"{where}: column {name!r} is ambiguous, it matches {hits}")
        else:
            missing.append(name)
    if missing:
        raise DatasetError(
            f"{where}: missing column(s) {', '.join(map(repr, missing))}; "
            f"columns found: {', '.join(map(str, found))}" + (f". {hint}" if hint else "")
        )
    return out


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _years_to_bin(value: object) -> str:
    """An age in years (number or numeric string) -> FairFace age bin."""
    if isinstance(value, str):
        try:
            value = float(value.replace("\ufeff", "").strip())
        except ValueError:
            raise LabelError(f"age {value!r} is not a number of years") from None
    if _is_missing(value) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LabelError(f"age {value!r} is not a number of years")
    return age_to_bin(float(value))


def _canonical_labels(frame: pd.DataFrame, columns: Mapping[str, str],
                      converters: Mapping[str, Converter], where: Callable[[int], str],
                      issues: _RowIssues,
                      declared: Mapping[str, Attribute]) -> dict[str, list[str | None]]:
    """Values of each attribute ``attr`` read from ``frame[columns[attr]]``.

    ``converters[attr]`` (optional) first maps a raw value (a code to its name, years to
    an age bin); then ``declared[attr].convert`` checks it against the declared values.
    Each distinct raw value is converted once. Rows whose value fails are flagged in
    ``issues`` as ``unknown_<attr>`` and get None.
    """
    out: dict[str, list[str | None]] = {}
    for attr, col in columns.items():
        first = converters.get(attr)
        check = declared[attr].convert

        def convert(raw: object, first: Converter | None = first, check: Any = check) -> str:
            return check(first(raw) if first is not None else raw)

        codes, uniques = pd.factorize(frame[col].astype(object), use_na_sentinel=False)
        mapped: list[str | None] = []
        failed: list[tuple[np.ndarray, str]] = []
        for k, raw in enumerate(uniques):
            try:
                mapped.append(convert(raw))
            except LabelError as e:
                mapped.append(None)
                msg = str(e).replace(repr(raw), _show(raw))  # a huge cell is not echoed whole
                failed.append((np.flatnonzero(codes == k), msg))
        total = sum(len(rows) for rows, _ in failed)
        for rows, msg in failed:
            also = f" (and {len(rows) - 1} more rows with this value)" if len(rows) > 1 else ""
            every = (f"; {total} rows in all have a value of column {col!r} that is not allowed"
                     if len(failed) > 1 else "")
            issues.flag(rows, f"unknown_{attr}",
                        f"{where(int(rows[0]))}{also}, column {col!r}: {_clip(msg, 400)}{every}")
        out[attr] = [mapped[c] for c in codes]
    return out


def _check_unique(ids: Sequence[str], where: Callable[[int], str], what: str) -> None:
    """Duplicate ids are a broken dataset, never skipped: raise naming the rows."""
    seen: dict[str, int] = {}
    dups: list[str] = []
    for i, x in enumerate(ids):
        if x in seen:
            dups.append(f"{_show(x)} at {where(seen[x])} and {where(i)}")
        else:
            seen[x] = i
    if dups:
        shown = "; ".join(dups[:_EXAMPLES])
        raise DatasetError(
            f"duplicate {what} ({len(dups)} in total), e.g. {shown}; each image must appear once"
        )


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False (not an exception) for names the OS rejects
    (too long, NUL bytes) or cannot stat."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def normalise_relpath(value: str) -> str:
    """An image path as written in a label file, normalised (``./val/5.jpg`` and
    ``val//5.jpg`` are ``val/5.jpg``); empty stays empty."""
    return os.path.normpath(value).replace(os.sep, "/") if value else value


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _link_outside(path: str, real_base: str) -> str | None:
    """Where ``path`` really is, if a symbolic link takes it outside ``real_base``."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return None
    return None if _inside(real, real_base) else real


def _image_paths(values: Sequence[str], root: Path, allow_outside_root: bool,
                 where: Callable[[int], str], issues: _RowIssues) -> list[Path]:
    """Paths of image files given relative to ``root``.

    Paths that leave ``root`` (``..``, absolute, or a symbolic link - of the file or of a
    folder on its way - that points outside ``root``) raise unless ``allow_outside_root``.
    Empty and missing paths are flagged as ``missing_image``.
    """
    base = os.path.abspath(root)
    real_base = os.path.realpath(base)
    paths: list[Path] = []
    outside: list[str] = []
    empty: list[int] = []
    for i, v in enumerate(values):
        full = os.path.normpath(os.path.join(base, v))
        if not v:
            empty.append(i)
        elif not _inside(full, base):
            outside.append(f"{_clip(v)} ({where(i)})")
        elif not allow_outside_root and (real := _link_outside(full, real_base)) is not None:
            outside.append(f"{_clip(v)} ({where(i)}, a symbolic link to {_clip(real)})")
        paths.append(Path(full))
    if outside and not allow_outside_root:
        raise DatasetError(
            f"image paths outside the dataset root {base}: {_examples(outside)}; "
            "set dataset.allow_outside_root=true if that is intended"
        )
    if empty:
        issues.flag(empty, "missing_image", f"{where(empty[0])}: empty image path")
    no_path = set(empty)
    missing = [i for i, p in enumerate(paths) if i not in no_path and not _is_file(p)]
    issues.flag(missing, "missing_image",
                f"image files not found (or not files) under {base}: "
                f"{_examples([str(paths[i]) for i in missing])}; check dataset.root")
    return paths


def _finish(name: str, frame: pd.DataFrame, image_ids: Sequence[str],
            labels: Mapping[str, Sequence[str | None]], sources: Mapping[str, str],
            make_reader: Callable[[list[int]], ImageReader], issues: _RowIssues,
            source: dict[str, Any], limit: int | None,
            declared: Sequence[Attribute]) -> FaceDataset:
    """Assemble the table, drop flagged rows, log skips and build the FaceDataset.

    ``sources[attr]`` is the source column ``attr`` was read from; a source column that
    has an attribute's name (image_id, a declared attribute, race, gender, age,
    race_binary) but is not the source of that column is kept as ``<name>_source``, so
    those names always mean the declared attribute. ``make_reader(kept_rows)`` builds the
    reader of the kept rows. A dataset with ``race`` gets the default derived
    ``race_binary`` (when its race values include White).
    """
    reserved = list(dict.fromkeys(("image_id", *(a.name for a in declared), *BUILTIN)))
    replaced = [c for c in reserved if c in frame.columns and sources.get(c) == c]
    clash = {c: f"{c}_source" for c in reserved if c in frame.columns and c not in replaced}
    derived = pd.DataFrame({"image_id": list(image_ids), **{a: list(v) for a, v in labels.items()}},
                           index=frame.index)
    table = pd.concat([derived, frame.drop(columns=replaced).rename(columns=clash)], axis=1)
    kept = issues.kept(len(table))
    table = table.iloc[kept].reset_index(drop=True)
    table["image_id"] = table["image_id"].astype(str)
    skipped = dict(sorted(issues.counts.items()))
    if skipped:
        _log.warning("dataset %r: skipped %d rows: %s", name, sum(skipped.values()),
                     ", ".join(f"{k}={v}" for k, v in skipped.items()))
    if limit is not None and int(limit) < 0:
        raise DatasetError(f"dataset.limit must be a non-negative number of rows, got {limit!r}")
    if not len(table):
        raise DatasetError(f"dataset {name!r} ({source}) has no usable rows"
                           + (f"; skipped: {skipped}" if skipped else ""))
    race = next((a for a in declared if a.name == "race"), None)
    default = [RACE_BINARY_ATTRIBUTE] if race is not None and (not race.values or "White" in race.values) else []
    ds = FaceDataset(name, table, make_reader(kept), source, skipped, declared=tuple(declared))
    ds.skipped_items = issues.items(image_ids)
    return ds.with_derived(default).limit(limit)


#: public names of the shared machinery, for layouts in other modules of this package
#: (e.g. :mod:`clipfair.data.counterfactual_layouts`)
RowIssues = _RowIssues
finish_dataset = _finish


# ---------------------------------------------------------------- CSV (fairface, csv)


def _read_csv(path: Path, missing_hint: str) -> pd.DataFrame:
    """A label CSV as strings: BOM removed, whitespace stripped from headers and values."""
    if not path.is_file():
        raise DatasetError(f"label CSV not found: {path}. {missing_hint}")
    _check_csv_shape(path)
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read CSV {path}: {_clip(str(e), 300)}") from None
    df.columns = [str(c).replace("\ufeff", "").strip() for c in df.columns]
    return df.apply(lambda s: s.str.strip())


def _check_csv_shape(path: Path) -> None:
    """Every row is UTF-8 and has as many fields as the header; else a DatasetError naming
    the row and line (pandas would report a byte offset, or shift the columns of a row with
    an extra field so that its values land under the wrong names)."""
    import csv

    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{path} line {n}" + (f" (row {n - 1})" if n > 1 else " (the header)")
                    + f": byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8; save the file "
                    "as UTF-8 (e.g. from Latin-1: iconv -f latin1 -t utf-8)") from None
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and len(row) != len(header):
                    raise DatasetError(
                        f"{path} row {reader.line_num - 1} (line {reader.line_num}) has {len(row)} fields, "
                        f"the header has {len(header)}; quote values that contain commas, or fix the row")
        except csv.Error as e:
            raise DatasetError(f"cannot read CSV {path} line {reader.line_num}: {e}") from None


def _from_label_csv(name: str, csv_path: Path, *, root: Path, image_column: str,
                    declared: Sequence[Attribute], id_column: str | None,
                    on_error: str, allow_outside_root: bool, age_years: bool,
                    limit: int | None, source: dict[str, Any], missing_hint: str,
                    column_hint: str) -> FaceDataset:
    """The CSV routine shared by the ``fairface`` and ``csv`` adapters.

    ``declared``: the attributes and the CSV column each is read from. image_id is the
    ``id_column`` value if given, else the image path as written in the CSV.
    """
    issues = _RowIssues(on_error)
    frame = _read_csv(csv_path, missing_hint)
    wanted = {"image": image_column, **{f"attribute {a.name}": a.source_column for a in declared}}
    if id_column:
        wanted["id"] = id_column
    actual = _match_columns(list(frame.columns), wanted, f"CSV {csv_path}", column_hint)
    frame = frame.rename(columns={v: k for k, v in actual.items()})  # configured names

    def where(i: int) -> str:
        return f"{csv_path} row {i + 1} (line {i + 2})"

    image_values = [normalise_relpath(v) for v in frame[image_column].tolist()]
    image_ids = frame[id_column].tolist() if id_column else image_values
    _check_unique(image_ids, where, f"image ids in {csv_path}")
    if id_column:  # two ids for one file are one image counted twice
        _check_unique([v or f"\0{i}" for i, v in enumerate(image_values)], where, f"image paths in {csv_path}")
    columns = {a.name: a.source_column for a in declared}
    converters = {"age": _years_to_bin} if age_years and "age" in columns else {}
    labels = _canonical_labels(frame, columns, converters, where, issues, {a.name: a for a in declared})
    paths = _image_paths(image_values, root, allow_outside_root, where, issues)
    sources = {**columns, **({"image_id": id_column} if id_column else {})}
    return _finish(name, frame, image_ids, labels, sources,
                   lambda kept: FileReader([paths[i] for i in kept]), issues, source, limit, declared)


def _declare(builtin_columns: Mapping[str, str | None], attributes: Mapping[str, Any] | None,
             where: str) -> list[Attribute]:
    """The built-in FairFace attributes read from ``builtin_columns`` (None: absent), then
    the user's ``attributes`` (see :func:`clipfair.data.attributes.parse_attributes`); a
    user declaration replaces a built-in one of the same name."""
    try:
        user = parse_attributes(attributes)
    except AttributeDeclarationError as e:
        raise DatasetError(f"{where}: {e}") from None
    mine = {a.name for a in user}
    return [BUILTIN[n].with_column(c) for n, c in builtin_columns.items() if c and n not in mine] + user


@DATASETS.register("fairface")
def fairface(*, root: str | None = None, split: str = "val", limit: int | None = None,
             on_error: str = "raise", allow_outside_root: bool = False,
             padding: str | None = None) -> FaceDataset:
    """The official FairFace download.

    ``root`` holds ``fairface_label_{train,val}.csv`` (columns file, age, gender, race,
    service_test; ``file`` like ``val/12.jpg``) and the ``train/`` and ``val/`` image
    folders. ``split`` is train or val (``validation`` is accepted for val). The 0.25 and
    1.25 padding downloads share this layout; ``padding`` is only recorded in ``source``.
    image_id is the ``file`` value.
    """
    hint = (f"Download FairFace from {_FAIRFACE_URL} (CC BY 4.0): the images "
            "(padding 0.25 or 1.25) and the label CSVs, and unzip them into one folder")
    _require(root, "root", "fairface", "the folder holding fairface_label_val.csv and val/. "
             + hint)
    split = _pick_split(split, ("train", "val"), "fairface")
    root_path = Path(str(root)).expanduser()
    csv_path = root_path / f"fairface_label_{split}.csv"
    return _from_label_csv(
        "fairface", csv_path, root=root_path, image_column="file",
        declared=FAIRFACE_ATTRIBUTES, id_column=None,
        on_error=on_error, allow_outside_root=allow_outside_root, age_years=False,
        limit=limit,
        source={"adapter": "fairface", "root": str(root_path), "split": split,
                "csv": str(csv_path), "padding": padding},
        missing_hint=f"dataset.root must hold fairface_label_{split}.csv and {split}/. {hint}",
        column_hint="this is not a FairFace label CSV (expected columns "
                    "file, age, gender, race, service_test)")


@DATASETS.register("csv")
def csv_file(*, path: str | None = None, root: str | None = None, image_column: str = "file",
             race_column: str | None = "race", gender_column: str | None = "gender",
             age_column: str | None = "age", id_column: str | None = None,
             attributes: Mapping[str, Any] | None = None,
             limit: int | None = None, on_error: str = "raise",
             allow_outside_root: bool = False, age_years: bool = False,
             set_column: str | None = None, subject_column: str | None = None) -> FaceDataset:
    """Any CSV with an image-path column and attribute columns.

    ``set_column`` (optional): the column naming each image's counterfactual set (the
    attribute ``set_id``; ``limit`` / ``subset.n`` then count sets, which stay whole), and
    ``subject_column`` its subject (the attribute ``subject``, e.g. an occupation); see
    :mod:`clipfair.analyses.counterfactual`.

    Image paths are relative to ``root`` (default: the CSV's folder). ``race_column``,
    ``gender_column``, ``age_column`` declare FairFace's attributes (canonical values;
    None: absent). ``attributes`` declares any others, ``{name: column}`` or ``{name:
    {column, values, mapping, allow_missing}}``; an entry named race/gender/age replaces
    the ``*_column`` one. With ``age_years`` the age column holds ages in years, binned
    into FairFace's bins (the raw column stays in the table under its own name unless it
    is called ``age``).
    """
    _require(path, "path", "csv", "the CSV file with one row per image")
    csv_path = Path(str(path)).expanduser()
    root_path = Path(str(root)).expanduser() if root else csv_path.parent
    builtin = {"race": race_column, "gender": gender_column, "age": age_column}
    attributes = dict(attributes or {})
    if set_column:
        attributes["set_id"] = {"column": str(set_column), "allow_missing": False}
    if subject_column:
        attributes["subject"] = str(subject_column)
    declared = _declare(builtin, attributes, f"CSV {csv_path}")
    return _from_label_csv(
        "csv", csv_path, root=root_path, image_column=image_column, declared=declared,
        id_column=id_column, on_error=on_error, allow_outside_root=allow_outside_root,
        age_years=age_years, limit=limit,
        source={"adapter": "csv", "path": str(csv_path), "root": str(root_path),
                "image_column": image_column, "id_column": id_column,
                **{f"{a}_column": c for a, c in builtin.items()},
                "attributes": {a.name: a.source_column for a in declared}, "age_years": age_years,
                **({"set_column": "set_id"} if set_column else {})},
        missing_hint="check dataset.path",
        column_hint="set dataset.image_column / race_column / gender_column / age_column / "
                    "id_column to the CSV's column names (null for an absent attribute)")


# ------------------------------------------------------------------------- UTKFace

_UTK_NAME = re.compile(
    r"(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<datetime>\d+)\.jpg(?:\.chip\.jpg)?",
    re.IGNORECASE,
)


def _image_files(root: Path, recursive: bool) -> list[Path]:
    """Image files under ``root`` (hidden files skipped), sorted by relative path."""
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in candidates if p.suffix.lower() in _IMAGE_SUFFIXES
             and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _code_names(names: Sequence[str]) -> Converter:
    """A converter from an integer code to ``names[code]``."""
    allowed = ", ".join(f"{k} {n}" for k, n in enumerate(names))

    def convert(code: object) -> str:
        if _is_missing(code) or not 0 <= int(code) < len(names):  # type: ignore[arg-type]
            raise LabelError(f"unknown code {code!r}; allowed codes: {allowed}")
        return names[int(code)]  # type: ignore[arg-type]

    return convert


@DATASETS.register("utkface")
def utkface(*, root: str | None = None, limit: int | None = None, on_error: str = "skip",
            recursive: bool = True) -> FaceDataset:
    """A folder of UTKFace ``[age]_[gender]_[race]_[datetime].jpg(.chip.jpg)`` files.

    gender 0 Male / 1 Female; ``race`` holds UTKFace's own names (White, Black, Asian,
    Indian, Others; Asian and Others are not FairFace classes) and ``race_code`` the raw
    code; ages are binned into FairFace's bins and ``age_years`` keeps the raw age.
    Malformed names (the real dataset has three) are skipped by default and counted as
    ``malformed_filename``. Files are sorted by path; image_id is the path relative to
    ``root``. Non-image and hidden files are ignored.
    """
    _require(root, "root", "utkface", f"the folder of UTKFace images ({_UTKFACE_URL})")
    issues = _RowIssues(on_error)
    root_path = Path(str(root)).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"UTKFace folder not found: {root_path}; download UTKFace from "
                           f"{_UTKFACE_URL} and set dataset.root to the folder of images")
    files = _image_files(root_path, recursive)
    if not files:
        raise DatasetError(f"no .jpg/.jpeg/.png files in {root_path} (recursive={recursive})")
    real_root = os.path.realpath(root_path)
    links = [f"{_clip(str(p))} -> {_clip(real)}" for p in files
             if (real := _link_outside(str(p), real_root)) is not None]
    if links:
        raise DatasetError(f"symbolic links in {root_path} point outside it: {_examples(links)}; "
                           "copy the images into the folder, or remove the links")
    image_ids = [p.relative_to(root_path).as_posix() for p in files]
    parsed = [_UTK_NAME.fullmatch(p.name) for p in files]
    malformed = [i for i, m in enumerate(parsed) if m is None]
    issues.flag(malformed, "malformed_filename",
                f"file names in {root_path} do not match UTKFace's "
                "[age]_[gender]_[race]_[datetime].jpg pattern: "
                f"{_examples([image_ids[i] for i in malformed])}")

    def field_of(group: str) -> list[str | None]:
        return [m[group] if m else None for m in parsed]

    frame = pd.DataFrame({
        "age_years": pd.array([int(v) if v else None for v in field_of("age")], dtype="Int64"),
        "gender_code": pd.array([int(v) if v else None for v in field_of("gender")], dtype="Int64"),
        "race_code": pd.array([int(v) if v else None for v in field_of("race")], dtype="Int64"),
        "datetime": field_of("datetime"),
    })
    columns = {"race": "race_code", "gender": "gender_code", "age": "age_years"}
    converters = {"race": _code_names(UTKFACE_RACES), "gender": _code_names(_UTKFACE_GENDERS),
                  "age": _years_to_bin}
    declared = [UTKFACE_RACE_ATTRIBUTE.with_column("race_code"), GENDER_ATTRIBUTE.with_column("gender_code"),
                AGE_ATTRIBUTE.with_column("age_years")]
    labels = _canonical_labels(frame, columns, converters, lambda i: str(files[i]), issues,
                               {a.name: a for a in declared})
    return _finish("utkface", frame, image_ids, labels, columns,
                   lambda kept: FileReader([files[i] for i in kept]), issues,
                   {"adapter": "utkface", "root": str(root_path), "recursive": recursive},
                   limit, declared)


# ------------------------------------------------------------------ Hugging Face


def _hf_where(path: str, split: str, i: int) -> str:
    return f"{path}[{split}][{i}]"


@dataclass
class HFReader:
    """Encoded image bytes of rows of a Hugging Face ``datasets.Dataset``.

    ``images`` holds only the image column, cast to ``Image(decode=False)`` so a row is
    ``{"bytes", "path"}`` (when bytes is None the path is read); ``indices[i]`` is the
    dataset row of image i. Build one with :meth:`from_dataset`.
    """

    images: "datasets.Dataset" = field(repr=False)
    image_column: str
    name: str
    split: str
    indices: list[int]
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES

    @classmethod
    def from_dataset(cls, dataset: "datasets.Dataset", image_column: str, name: str,
                     split: str, indices: Sequence[int] | None = None) -> "HFReader":
        """A reader of ``dataset[image_column]``; rows ``indices`` (default: all)."""
        from datasets import Image

        images = dataset.select_columns([image_column])
        feature = images.features[image_column]
        if not (isinstance(feature, Image) and not feature.decode):
            images = images.cast_column(image_column, Image(decode=False))  # metadata only
        rows = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        return cls(images, image_column, name, split, rows)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> bytes:
        value = self.images[self.indices[i]][self.image_column] or {}
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        path = value.get("path")
        if not path:
            raise ImageError(self.describe(i), "no image stored in this row",
                             "fix the dataset, or set dataset.on_error=skip")
        try:
            return read_image_file(path, self.max_bytes)
        except OSError as e:
            raise ImageError(self.describe(i), f"cannot read image file {path} ({e})",
                             "fix the dataset, or set dataset.on_error=skip") from None

    def describe(self, i: int) -> str:
        return _hf_where(self.name, self.split, self.indices[i])

    def subset(self, indices: Sequence[int]) -> "HFReader":
        return replace(self, indices=[self.indices[i] for i in indices])


def _hf_converter(feature: object, attribute: Attribute, column: str) -> Converter | None:
    """How to read ``attribute`` from a column of this ``datasets`` feature type (before
    the declaration's own check of the value).

    ClassLabel integers are named through the dataset's own class names; plain integer
    ages (FairFace's age attribute) are binned; numbers in a column whose declared values
    are names (FairFace's race, gender) are an error; anything else is read as text
    (None: no converter).
    """
    attr = attribute.name
    from datasets import ClassLabel, Value

    if isinstance(feature, ClassLabel):
        def by_class_name(value: object) -> str:
            if _is_missing(value):
                raise LabelError("missing value")
            try:
                name = feature.int2str(int(value))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                raise LabelError(f"{value!r} is not a class of {column!r} "
                                 f"(classes: {', '.join(feature.names)})") from None
            return name
        return by_class_name
    dtype = getattr(feature, "dtype", "") if isinstance(feature, Value) else ""
    if re.match(r"u?int|float", str(dtype)):
        if attr == "age" and attribute.values == AGE_ATTRIBUTE.values:
            return _years_to_bin
        numeric = [v for v in (*attribute.values, *attribute.mapping) if re.fullmatch(r"-?\d+(\.\d+)?", v)]
        if not attribute.values or numeric:
            return None
        raise DatasetError(f"column {column!r} ({attr}) holds numbers without class names "
                           f"(feature {feature}); use a string or ClassLabel column")
    return None


def _plain_data_files(data_files: Any) -> str | list[str] | dict[str, str | list[str]] | None:
    """``data_files`` as plain str / list / dict (Hydra passes ListConfig / DictConfig)."""
    if data_files is None or isinstance(data_files, str):
        return data_files
    if isinstance(data_files, Mapping):
        return {str(k): v if isinstance(v, str) else [str(x) for x in v]
                for k, v in data_files.items()}
    return [str(x) for x in data_files]


def _hf_load(path: str, config: str | None, split: str, data_files: Any,
             streaming: bool, trust_remote_code: bool, cache_dir: str | None,
             image_column: str, limit: int | None) -> tuple["datasets.Dataset", str, str]:
    """Load one split; returns (dataset, split name used, source format)."""
    import datasets

    local = Path(path).expanduser()
    if path.startswith(("/", ".", "~")) and not local.exists():
        raise DatasetError(f"dataset.path {path!r} looks like a local path but does not exist")
    if local.is_dir() and any((local / f).is_file() for f in
                              ("dataset_info.json", "state.json", "dataset_dict.json")):
        obj = datasets.load_from_disk(str(local))
        if isinstance(obj, datasets.DatasetDict):
            split = _pick_split(split, obj.keys(), f"save_to_disk folder {local}")
            obj = obj[split]
        return obj, split, "save_to_disk"
    if data_files is not None and not isinstance(data_files, Mapping):
        data_files = {split: data_files}  # a file or list of files makes up the requested split
    kwargs: dict[str, Any] = {"split": split, "cache_dir": cache_dir}
    if local.is_dir() or (local.is_file() and local.suffix == ".parquet"):
        if local.is_file():
            data_files = {split: str(local)}
        elif data_files is None and not any(local.rglob("*.parquet")):
            raise DatasetError(
                f"{local} is neither a save_to_disk folder (dataset_info.json / state.json / "
                "dataset_dict.json) nor a folder of .parquet files")
        fmt = "parquet"
        args: tuple[Any, ...] = ("parquet",)
        kwargs.update(data_dir=str(local) if local.is_dir() else None, data_files=data_files)
    else:
        fmt = "hub"
        args = (path, config or None)
        kwargs.update(data_files=data_files, streaming=streaming)
        if trust_remote_code:
            if int(datasets.__version__.split(".")[0]) >= 4:
                _log.warning("dataset.trust_remote_code ignored: datasets %s no longer runs "
                             "dataset scripts", datasets.__version__)
            else:
                kwargs["trust_remote_code"] = True
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many types (network, FileNotFound, ValueError)
        raise DatasetError(
            f"cannot load Hugging Face dataset {path!r} (config {config!r}, split {split!r}): "
            f"{type(e).__name__}: {e}. Without network access, point dataset.path to a folder "
            "written by Dataset.save_to_disk or to a folder of parquet files") from e
    if streaming and fmt == "hub":
        ds, fmt = _materialise(ds, image_column, limit), "hub-streaming"
    return ds, split, fmt


def _materialise(stream: "datasets.IterableDataset", image_column: str,
                 limit: int | None) -> "datasets.Dataset":
    """The first ``limit`` rows (all without a limit) of a stream, images kept encoded."""
    import datasets

    if stream.features is not None and image_column in stream.features:
        stream = stream.cast_column(image_column, datasets.Image(decode=False))
    if limit is None:
        _log.warning("dataset.streaming without dataset.limit reads the whole split into memory")
    rows = list(stream.take(int(limit)) if limit is not None else stream)
    return datasets.Dataset.from_list(rows, features=stream.features)


@DATASETS.register("hf")
def hf(*, path: str = "HuggingFaceM4/FairFace", config: str | None = "0.25",
       split: str = "validation", image_column: str = "image",
       race_column: str | None = "race", gender_column: str | None = "gender",
       age_column: str | None = "age", id_column: str | None = None,
       attributes: Mapping[str, Any] | None = None,
       data_files: str | list[str] | dict[str, Any] | None = None, limit: int | None = None,
       on_error: str = "raise", trust_remote_code: bool = False, streaming: bool = False,
       cache_dir: str | None = None) -> FaceDataset:
    """A Hugging Face ``datasets`` source: hub id, ``save_to_disk`` folder or parquet.

    ``path`` is a hub id (``config`` and ``split`` as for ``datasets.load_dataset``), a
    folder written by ``save_to_disk`` (a DatasetDict is indexed by ``split``), or a
    folder / file of parquet files (split inferred from file names such as
    ``validation-00000.parquet``, or given by ``data_files``). ClassLabel columns are
    named through the dataset's own class names, then normalised; integer ages that are
    not ClassLabel are binned. image_id is the ``id_column`` value, else
    ``"{split}/{row}"``. With ``streaming`` only the first ``limit`` rows are read
    (before any skipping). Images stay encoded; the reader returns their bytes.
    ``attributes`` declares more attributes (any HF dataset's columns), as for the
    ``csv`` adapter: ``{name: column}`` or ``{name: {column, values, mapping,
    allow_missing}}``.
    """
    issues = _RowIssues(on_error)
    path, data_files = str(path), _plain_data_files(data_files)
    ds, split, fmt = _hf_load(path, config, split, data_files, streaming, trust_remote_code,
                              cache_dir, image_column, limit)
    builtin = {"race": race_column, "gender": gender_column, "age": age_column}
    declared = _declare(builtin, attributes, f"Hugging Face dataset {path!r}")
    wanted = {"image": image_column, **{f"attribute {a.name}": a.source_column for a in declared}}
    if id_column:
        wanted["id"] = id_column
    actual = _match_columns(ds.column_names, wanted, f"Hugging Face dataset {path!r}",
                            "set dataset.image_column / race_column / gender_column / "
                            "age_column / id_column to the dataset's column names")
    image_col = actual[image_column]
    columns = {a.name: actual[a.source_column] for a in declared}
    by_name = {a.name: a for a in declared}
    frame = ds.remove_columns([image_col]).to_pandas()

    def where(i: int) -> str:
        return _hf_where(path, split, i)

    image_ids = (frame[actual[id_column]].astype(str).tolist() if id_column
                 else [f"{split}/{i}" for i in range(len(frame))])
    _check_unique(image_ids, where, f"image ids in {path!r}")
    converters = {a: conv for a, c in columns.items()
                  if (conv := _hf_converter(ds.features[c], by_name[a], c)) is not None}
    labels = _canonical_labels(frame, columns, converters, where, issues, by_name)
    source = {"adapter": "hf", "path": path, "config": config, "split": split, "format": fmt,
              "image_column": image_col, "id_column": id_column,
              **{f"{a}_column": c for a, c in builtin.items()},
              "attributes": {a.name: a.source_column for a in declared},
              "data_files": data_files, "streaming": streaming}
    sources = {**columns, **({"image_id": actual[id_column]} if id_column else {})}
    return _finish("hf", frame, image_ids, labels, sources,
                   lambda kept: HFReader.from_dataset(ds, image_col, path, split, kept),
                   issues, source, limit, declared)


#: public names of the CSV machinery, for layouts in other modules of this package
#: (e.g. :mod:`clipfair.data.facet`)
read_label_csv = _read_csv
match_columns = _match_columns
