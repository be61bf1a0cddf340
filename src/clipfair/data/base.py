"""The dataset object every adapter returns.

Layer: data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import pandas as pd
from PIL import Image

from .attributes import (
    BUILTIN,
    FAIRFACE_PLOT_SLICES,
    FAIRFACE_SLICES,
    FAIRFACE_TAXONOMY_VALUES,
    RACE_BINARY_ATTRIBUTE,
    AnyAttribute,
    AttributeDeclarationError,
    DerivedAttribute,
    value_orders,
)
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError, decode_image, read_image_file


class ImageReader(Protocol):
    """Reads the encoded bytes (JPEG/PNG/...) of image ``i`` of a dataset."""

    def read(self, i: int) -> bytes: ...

    def describe(self, i: int) -> str:
        """Where image i lives (a file path, or dataset[row]), for error messages."""
        ...

    def subset(self, indices: Sequence[int]) -> "ImageReader": ...


def read_file(path: Path, max_bytes: int | None, where: str | None = None, roots: str = "dataset.root") -> bytes:
    """The bytes of the image file ``path`` (refused from its size above ``max_bytes``); a file
    that cannot be read is an :class:`ImageError` naming ``where`` (default: the path) and what to
    check (``roots``: the config keys that place the file)."""
    where = str(path) if where is None else where
    try:
        return read_image_file(path, max_bytes)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(where, "file not found", f"check {roots}, or set dataset.on_error=skip") from None
    except IsADirectoryError:
        raise ImageError(where, "is a directory, not an image file",
                         "check the image paths, or set dataset.on_error=skip") from None
    except (OSError, ValueError) as e:  # permissions, over-long names, NUL bytes, I/O errors
        raise ImageError(where, f"cannot read the file ({type(e).__name__}: {e})",
                         "check the path and its permissions, or set dataset.on_error=skip") from None


@dataclass
class FileReader:
    """Images stored as files; ``paths[i]`` is the file of row i. A file larger than
    ``max_bytes`` (None: no limit) is refused from its size, before it is read."""

    paths: list[Path]
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES

    def read(self, i: int) -> bytes:
        return read_file(self.paths[i], self.max_bytes)

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def subset(self, indices: Sequence[int]) -> "FileReader":
        return FileReader([self.paths[i] for i in indices], self.max_bytes)


class DatasetError(ValueError):
    """A dataset that cannot be read: missing column, bad label, empty dataset, ..."""


class SliceError(DatasetError):
    """A slice (or derived attribute) that names an attribute the dataset does not have."""


def _default_declared(table: pd.DataFrame) -> tuple[AnyAttribute, ...]:
    """The built-in FairFace declarations whose columns a table has (for datasets built
    by hand without declarations)."""
    out: list[AnyAttribute] = [a for n, a in BUILTIN.items() if n != "race_binary" and n in table.columns]
    if "race_binary" in table.columns:
        out.append(RACE_BINARY_ATTRIBUTE)
    return tuple(out)


@dataclass
class FaceDataset:
    """Images plus one row of attributes per image.

    ``table`` has a unique string column ``image_id``, one column per declared attribute
    (``declared``: the adapter's :class:`~clipfair.data.attributes.Attribute` and
    :class:`~clipfair.data.attributes.DerivedAttribute` objects, e.g. FairFace's ``race``,
    ``gender``, ``age`` and the derived ``race_binary``) and any other source columns.
    Row i of ``table`` is image i of ``reader``. Without ``declared``, the built-in
    FairFace attributes whose columns the table has are declared.
    """

    name: str
    table: pd.DataFrame
    reader: ImageReader
    source: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    #: the rows dropped at load time, by name: {image_id, reason_key, message}
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    declared: tuple[AnyAttribute, ...] = ()
    #: the slices ``slices: auto`` computes first (those whose attributes are declared), then
    #: every other declared attribute: the layout's declaration (FairFace's intersections)
    default_slices: tuple = FAIRFACE_SLICES
    #: the slices that get plots, by kind (``accuracy``, ``rate``): the layout's declaration
    plot_slices: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(FAIRFACE_PLOT_SLICES))
    #: stratum attributes: a slice naming one is a per-stratum breakdown (FACET's per-class recall
    #: by group), whose groups the core disparities compare only within a stratum value
    #: (:func:`clipfair.stats.metrics.disparities`); the layout's declaration
    strata: tuple[str, ...] = ()
    #: attribute -> values a target taxonomy may name though this dataset lacks them (FairFace's,
    #: so the built-in FairFace taxonomies run here; see clipfair.data.taxonomy.check_target)
    tolerated_values: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(FAIRFACE_TAXONOMY_VALUES))

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
        self.declared = tuple(self.declared) or _default_declared(self.table)
        names = [a.name for a in self.declared]
        if len(set(names)) != len(names):
            raise DatasetError(f"dataset {self.name!r}: attributes declared twice in {names}")
        missing = [n for n in names if n not in self.table.columns]
        if missing:
            raise DatasetError(f"dataset {self.name!r}: declared attribute(s) {missing} have no column")
        if "image_id" not in self.table.columns:
            raise DatasetError(f"dataset {self.name!r}: table has no image_id column")
        dup = self.table["image_id"][self.table["image_id"].duplicated()]
        if len(dup):
            raise DatasetError(
                f"dataset {self.name!r}: duplicate image ids, e.g. {list(dup.astype(str)[:5])}; "
                "each image must appear once"
            )

    def __len__(self) -> int:
        return len(self.table)

    @property
    def attributes(self) -> list[str]:
        """Names of the declared attributes (source and derived), in declaration order."""
        return [a.name for a in self.declared]

    def attribute(self, name: str) -> AnyAttribute:
        for a in self.declared:
            if a.name == name:
                return a
        raise SliceError(f"dataset {self.name!r} has no attribute {name!r}; "
                         f"its attributes: {', '.join(self.attributes) or 'none'}")

    def value_orders(self) -> dict[str, tuple[str, ...]]:
        """Attribute -> declared value order (attributes without declared values are absent)."""
        return value_orders(self.declared)

    @property
    def label_attributes(self) -> list[str]:
        """The attributes read from the source (not derived)."""
        return [a.name for a in self.declared if not isinstance(a, DerivedAttribute)]

    def with_derived(self, derived: Sequence[DerivedAttribute]) -> "FaceDataset":
        """This dataset with derived attribute columns added (one of the same name replaces
        the existing one, e.g. a user's own ``race_binary``). Unknown source attributes,
        source values in no group (without ``other``) and group members that are not
        declared values of the source are errors naming them."""
        if not derived:
            return self
        table = self.table.copy()
        declared = list(self.declared)
        for d in derived:
            if any(a.name == d.name and not isinstance(a, DerivedAttribute) for a in declared):
                raise DatasetError(f"derived attribute {d.name!r} would replace the attribute {d.name!r} "
                                   f"of dataset {self.name!r}; choose another name")
            declared = [a for a in declared if a.name != d.name]
            src = next((a for a in declared if a.name == d.source), None)
            if src is None:
                raise SliceError(f"derived attribute {d.name!r}: dataset {self.name!r} has no attribute "
                                 f"{d.source!r} to derive it from; its attributes: "
                                 f"{', '.join(a.name for a in declared) or 'none'}")
            observed = [str(v) for v in pd.unique(table[d.source].dropna())]
            try:
                if src.values:
                    d.check(src.values, declared=True)
                d.check(observed, declared=False)
            except AttributeDeclarationError as e:
                raise DatasetError(f"dataset {self.name!r}: {e}") from None
            column = d.apply(table[d.source])
            if d.name in table.columns:
                table[d.name] = column
            else:
                pos = max(list(table.columns).index(a.name) for a in declared) + 1
                table.insert(pos, d.name, column)
            declared.append(d)
        return replace(self, table=table, declared=tuple(declared))

    def read_bytes(self, i: int) -> bytes:
        return self.reader.read(i)

    def load_image(self, i: int) -> Image.Image:
        return decode_image(self.reader.read(i), self.reader.describe(i))

    def limit(self, n: int | None) -> "FaceDataset":
        """The first n rows (all rows when n is None)."""
        if n is None or n >= len(self):
            return self
        sets = self._sets()
        if sets is not None:  # counterfactual sets stay whole: n counts sets
            keep = set(pd.unique(sets)[:int(n)])
            idx = [i for i, s in enumerate(sets) if s in keep]
        else:
            idx = list(range(int(n)))
        return replace(self, table=self.table.iloc[idx].copy(), reader=self.reader.subset(idx),
                       source={**self.source, "limit": int(n)}, skipped=dict(self.skipped),
                       skipped_items=list(self.skipped_items))

    def _sets(self) -> "np.ndarray | None":
        """The set id of each row when the dataset is made of counterfactual sets (its source
        names a ``set_column`` the table has), else None."""
        col = self.source.get("set_column")
        if not col or col not in self.table.columns:
            return None
        return self.table[col].astype(str).to_numpy()

    def sample(self, n: int | None, seed: int = 0) -> "FaceDataset":
        """A seeded random subset of n rows, kept in dataset order (all rows when n is None)."""
        if n is None or n >= len(self):
            return self
        import numpy as np

        sets = self._sets()
        if sets is not None:  # counterfactual sets stay whole: n counts sets
            ids = pd.unique(sets)
            if n >= len(ids):
                return self
            keep = set(ids[np.random.default_rng(seed).choice(len(ids), size=int(n), replace=False)])
            idx = [i for i, s in enumerate(sets) if s in keep]
        else:
            idx = sorted(np.random.default_rng(seed).choice(len(self), size=int(n), replace=False).tolist())
        return replace(self, table=self.table.iloc[idx].copy(), reader=self.reader.subset(idx),
                       source={**self.source, "subset": {"n": int(n), "seed": int(seed)}},
                       skipped=dict(self.skipped), skipped_items=list(self.skipped_items))

    def duplicate_contents(self, keys: Sequence[str | None]) -> list[list[str]]:
        """Groups of image ids whose files have equal content (``keys[i]``: a hash of image
        i's bytes, None where unreadable): one image listed under several names."""
        groups: dict[str, list[int]] = {}
        ids = self.table["image_id"].astype(str).tolist()
        for i, k in enumerate(keys):
            if k is not None:
                groups.setdefault(k, []).append(i)
        # rows that read one shared source file whole by design (e.g. FACET's persons with
        # crop=image: ``reader.shared_source(i)``) are not duplicates by mistake
        shared = getattr(self.reader, "shared_source", None)

        def by_design(rows: list[int]) -> bool:
            if shared is None:
                return False
            srcs = {shared(i) for i in rows}
            return len(srcs) == 1 and None not in srcs

        return [[ids[i] for i in g] for g in groups.values() if len(g) > 1 and not by_design(g)]

    def fingerprint(self) -> str:
        """Hash of the image list and labels (cheap: reads no image content)."""
        cols = ["image_id", *self.label_attributes]
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.table[cols].astype(str), index=False).values.tobytes())
        return h.hexdigest()[:16]

    def file_list_hash(self) -> str:
        """Hash of the ordered image ids (the file list)."""
        return hashlib.sha256("\n".join(self.table["image_id"].astype(str)).encode()).hexdigest()[:16]

    def label_hash(self) -> str:
        cols = self.label_attributes
        h = hashlib.sha256(self.table[cols].astype(str).to_csv(index=False).encode())
        return h.hexdigest()[:16]
