"""Image and text embeddings, computed once and cached by content.

Images are keyed by the sha256 of their bytes within a namespace of (model fingerprint,
preprocessing, dtype), so a rerun encodes nothing, a changed image is re-encoded alone, and
a changed model or preprocessing uses a fresh namespace. Encoding runs in chunks that are
persisted as they finish: an interrupted run resumes from the last finished chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cache import EmbeddingStore, sha256_hex
from .data.base import FaceDataset
from .data.images import ImageError
from .models import ClipModel

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    """Embeddings of the usable images of a dataset, in dataset order."""

    indices: np.ndarray  # dataset row of each embedding
    embeddings: np.ndarray  # (len(indices), dim) float32, unnormalised
    errors: list[dict[str, str]] = field(default_factory=list)  # skipped images: id, where, reason
    encoded: int = 0  # images sent through the image encoder in this call
    cached: int = 0  # images found in the cache

    @property
    def skipped(self) -> dict[str, int]:
        return dict(Counter(e["reason_key"] for e in self.errors))


@dataclass
class EmbedStats:
    """Counts of encoder calls, for tests and run.json."""

    image_batches: int = 0
    images: int = 0
    texts: int = 0


def _reason_key(err: ImageError) -> str:
    r = err.reason
    for key, needle in (("missing_file", "not found"), ("empty_file", "empty"),
                        ("not_an_image", "not an image"), ("corrupt_image", "corrupt"),
                        ("not_a_file", "directory")):
        if needle in r:
            return key
    return "bad_image"


class _Decoded(Dataset):
    """Reads, decodes and preprocesses images (in DataLoader workers when num_workers > 0)."""

    def __init__(self, dataset: FaceDataset, rows: Sequence[int], model: ClipModel) -> None:
        self.dataset, self.rows = dataset, list(rows)
        self.image_processor = model.image_processor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[int, Any, str]:
        i = self.rows[j]
        try:
            img = self.dataset.load_image(i)
            pv = self.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]
            return i, pv, ""
        except ImageError as e:
            return i, None, f"{_reason_key(e)}\t{e}"


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    ok = [(i, pv) for i, pv, err in batch if pv is not None]
    bad = [(i, err) for i, pv, err in batch if pv is None]
    pixels = torch.stack([pv for _, pv in ok]) if ok else None
    return [i for i, _ in ok], pixels, bad


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def content_keys(dataset: FaceDataset, on_error: str, threads: int = 4) -> tuple[list[str | None], list[dict[str, str]]]:
    """sha256 of each image's bytes (None where unreadable, with the error recorded)."""
    def one(i: int) -> tuple[str | None, str]:
        try:
            return sha256_hex(dataset.read_bytes(i)), ""
        except ImageError as e:
            return None, f"{_reason_key(e)}\t{e}"

    with ThreadPoolExecutor(max_workers=threads) as ex:
        results = list(ex.map(one, range(len(dataset))))
    keys, errors = [], []
    for i, (k, err) in enumerate(results):
        keys.append(k)
        if err:
            _record_error(dataset, i, err, on_error, errors)
    return keys, errors


def _record_error(dataset: FaceDataset, i: int, err: str, on_error: str, errors: list[dict[str, str]]) -> None:
    key, msg = err.split("\t", 1)
    if on_error != "skip":
        raise ImageError(dataset.reader.describe(i), msg.split(": ", 1)[-1])
    errors.append({"image_id": str(dataset.table["image_id"].iloc[i]), "reason_key": key, "message": msg})


def image_namespace(model: ClipModel) -> dict[str, Any]:
    return {"model": model.fingerprint, "model_name": model.name_or_path,
            "preprocess": model.preprocess_fingerprint,
            "dtype": str(model.dtype).replace("torch.", ""), "device_type": model.device.type}


def embed_images(dataset: FaceDataset, model: ClipModel, store: EmbeddingStore | None = None, *,
                 batch_size: int | None = None, num_workers: int = 0, chunk_size: int = 2048,
                 on_error: str = "raise", progress: bool = True,
                 stats: EmbedStats | None = None) -> ImageEmbeddings:
    """Embed every usable image of ``dataset``; reuse and extend ``store`` when given."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if len(dataset) == 0:
        raise ImageError(dataset.name, "the dataset has no images",
                         "check dataset.root / split / limit")
    keys, errors = content_keys(dataset, on_error)
    known = {k: None for k in keys if k is not None}
    todo_keys = set(store.missing(known)) if store is not None else set(known)
    cached = sum(1 for k in keys if k is not None and k not in todo_keys)
    # encode each distinct missing content once (first row holding it)
    first_row: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k is not None and k in todo_keys and k not in first_row:
            first_row[k] = i
    rows = sorted(first_row.values())
    bs = int(batch_size or model.batch_size)
    fresh: dict[str, np.ndarray] = {}
    bad_rows: set[int] = set()
    encoded = 0
    bar = tqdm(total=len(rows), desc="encoding images", unit="img", disable=not progress or not rows,
               dynamic_ncols=True)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        loader = DataLoader(_Decoded(dataset, chunk, model), batch_size=bs, num_workers=num_workers,
                            collate_fn=_collate, pin_memory=model.device.type == "cuda",
                            worker_init_fn=_worker_init if num_workers else None,
                            persistent_workers=False)
        ck, ce = [], []
        for idx, pixels, bad in loader:
            for i, err in bad:
                bad_rows.add(i)
                _record_error(dataset, i, err, on_error, errors)
            if pixels is not None:
                emb = model.encode_pixels(pixels)
                if stats is not None:
                    stats.image_batches += 1
                    stats.images += len(idx)
                encoded += len(idx)
                ck += [keys[i] for i in idx]
                ce.append(emb)
            bar.update(len(idx) + len(bad))
        if ck:
            arr = np.concatenate(ce)
            if store is not None:
                store.put(ck, arr)  # persisted: a later run resumes after this chunk
            fresh.update(zip(ck, arr))
    bar.close()
    bad_keys = {keys[i] for i in bad_rows}
    use = [i for i, k in enumerate(keys) if k is not None and k not in bad_keys]
    if not use:
        raise ImageError(dataset.name, f"none of the {len(dataset)} images could be read",
                         "see the errors above; check dataset.root")
    need_store = [keys[i] for i in use if keys[i] not in fresh]
    stored = dict(zip(need_store, store.get(need_store))) if (store is not None and need_store) else {}
    emb = np.stack([fresh[keys[i]] if keys[i] in fresh else stored[keys[i]] for i in use])
    return ImageEmbeddings(np.asarray(use, dtype=np.int64), emb.astype(np.float32), errors, encoded, cached)


class TextEmbedder:
    """Encodes prompt strings through a per-(model) store: each prompt is encoded once."""

    def __init__(self, model: ClipModel, store: EmbeddingStore | None = None,
                 stats: EmbedStats | None = None) -> None:
        self.model, self.store, self.stats = model, store, stats
        self._mem: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        keyed = {t: sha256_hex(t) for t in texts}
        todo = [t for t in dict.fromkeys(texts) if t not in self._mem]
        if self.store is not None and todo:
            hits = [t for t in todo if keyed[t] in self.store]
            if hits:
                for t, e in zip(hits, self.store.get([keyed[t] for t in hits])):
                    self._mem[t] = e
            todo = [t for t in todo if t not in self._mem]
        if todo:
            emb = self.model.encode_texts(todo)
            if self.stats is not None:
                self.stats.texts += len(todo)
            if self.store is not None:
                self.store.put([keyed[t] for t in todo], emb)
            self._mem.update(zip(todo, emb))
        return np.stack([self._mem[t] for t in texts]).astype(np.float32)


def text_namespace(model: ClipModel) -> dict[str, Any]:
    return {"model": model.fingerprint, "model_name": model.name_or_path,
            "dtype": str(model.dtype).replace("torch.", ""), "device_type": model.device.type}


def open_stores(model: ClipModel, cache_dir: Path | str | None) -> tuple[EmbeddingStore | None, EmbeddingStore | None]:
    if cache_dir is None:
        return None, None
    return (EmbeddingStore(cache_dir, "image", image_namespace(model)),
            EmbeddingStore(cache_dir, "text", text_namespace(model)))
