"""The dataset object every adapter returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import pandas as pd
from PIL import Image

from .attributes import ATTRIBUTES
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError, decode_image, read_image_file


class ImageReader(Protocol):
    """Reads the encoded bytes (JPEG/PNG/...) of image ``i`` of a dataset."""

    def read(self, i: int) -> bytes: ...

    def describe(self, i: int) -> str:
        """Where image i lives (a file path, or dataset[row]), for error messages."""
        ...

    def subset(self, indices: Sequence[int]) -> "ImageReader": ...


@dataclass
class FileReader:
    """Images stored as files; ``paths[i]`` is the file of row i. A file larger than
    ``max_bytes`` (None: no limit) is refused from its size, before it is read."""

    paths: list[Path]
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES

    def read(self, i: int) -> bytes:
        p = self.paths[i]
        try:
            return read_image_file(p, self.max_bytes)
        except ImageError:
            raise
        except FileNotFoundError:
            raise ImageError(str(p), "file not found",
                             "check dataset.root, or set dataset.on_error=skip") from None
        except IsADirectoryError:
            raise ImageError(str(p), "is a directory, not an image file",
                             "check the image paths, or set dataset.on_error=skip") from None
        except (OSError, ValueError) as e:  # permissions, over-long names, NUL bytes, I/O errors
            raise ImageError(str(p), f"cannot read the file ({type(e).__name__}: {e})",
                             "check the path and its permissions, or set dataset.on_error=skip"
                             ) from None

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def subset(self, indices: Sequence[int]) -> "FileReader":
        return FileReader([self.paths[i] for i in indices], self.max_bytes)


class DatasetError(ValueError):
    """A dataset that cannot be read: missing column, bad label, empty dataset, ..."""


@dataclass
class FaceDataset:
    """Images plus one row of attributes per image.

    ``table`` has a unique string column ``image_id``, the canonical attribute columns
    ``race``, ``gender``, ``age`` (FairFace strings; a column may be absent if the source
    lacks it), ``race_binary`` when ``race`` is present, and any other source columns.
    Row i of ``table`` is image i of ``reader``.
    """

    name: str
    table: pd.DataFrame
    reader: ImageReader
    source: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    #: the rows dropped at load time, by name: {image_id, reason_key, message}
    skipped_items: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
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
        return [a for a in (*ATTRIBUTES, "race_binary") if a in self.table.columns]

    def read_bytes(self, i: int) -> bytes:
        return self.reader.read(i)

    def load_image(self, i: int) -> Image.Image:
        return decode_image(self.reader.read(i), self.reader.describe(i))

    def limit(self, n: int | None) -> "FaceDataset":
        """The first n rows (all rows when n is None)."""
        if n is None or n >= len(self):
            return self
        idx = list(range(int(n)))
        return FaceDataset(self.name, self.table.iloc[idx].copy(), self.reader.subset(idx),
                           {**self.source, "limit": int(n)}, dict(self.skipped), list(self.skipped_items))

    def sample(self, n: int | None, seed: int = 0) -> "FaceDataset":
        """A seeded random subset of n rows, kept in dataset order (all rows when n is None)."""
        if n is None or n >= len(self):
            return self
        import numpy as np

        idx = sorted(np.random.default_rng(seed).choice(len(self), size=int(n), replace=False).tolist())
        return FaceDataset(self.name, self.table.iloc[idx].copy(), self.reader.subset(idx),
                           {**self.source, "subset": {"n": int(n), "seed": int(seed)}}, dict(self.skipped),
                           list(self.skipped_items))

    def duplicate_contents(self, keys: Sequence[str | None]) -> list[list[str]]:
        """Groups of image ids whose files have equal content (``keys[i]``: a hash of image
        i's bytes, None where unreadable): one image listed under several names."""
        groups: dict[str, list[str]] = {}
        ids = self.table["image_id"].astype(str).tolist()
        for i, k in enumerate(keys):
            if k is not None:
                groups.setdefault(k, []).append(ids[i])
        return [g for g in groups.values() if len(g) > 1]

    def fingerprint(self) -> str:
        """Hash of the image list and labels (cheap: reads no image content)."""
        cols = ["image_id", *[a for a in ATTRIBUTES if a in self.table.columns]]
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.table[cols].astype(str), index=False).values.tobytes())
        return h.hexdigest()[:16]

    def file_list_hash(self) -> str:
        """Hash of the ordered image ids (the file list)."""
        return hashlib.sha256("\n".join(self.table["image_id"].astype(str)).encode()).hexdigest()[:16]

    def label_hash(self) -> str:
        cols = [a for a in ATTRIBUTES if a in self.table.columns]
        h = hashlib.sha256(self.table[cols].astype(str).to_csv(index=False).encode())
        return h.hexdigest()[:16]
