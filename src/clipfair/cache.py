"""A content-addressed on-disk store for embeddings.

Layout: ``<root>/<kind>/<namespace-hash>/`` holds ``meta.json`` (what the namespace is:
model fingerprint, preprocessing, dtype, ...) and ``chunk-*.npz`` files, each mapping keys
(sha256 of an image's bytes, or of a prompt string) to float32 embeddings.

- Writes are atomic (temporary file + ``os.replace``) and every chunk is uniquely named, so
  an interrupted run leaves only whole chunks and two runs sharing a cache never write the
  same file; a lock serialises namespace creation and clearing.
- Each chunk carries a sha256 of its payload, verified on read; a damaged chunk is
  moved aside with a warning and its entries are simply recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("CLIPFAIR_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/clipfair").expanduser()


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def _digest(keys: np.ndarray, emb: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(keys.tolist()).encode())
    h.update(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EmbeddingStore:
    """Embeddings of one namespace (e.g. one model + preprocessing + dtype), keyed by content."""

    def __init__(self, root: Path | str, kind: str, namespace: dict[str, Any]) -> None:
        self.root = Path(root).expanduser()
        self.kind = kind
        self.namespace = {"cache_version": CACHE_VERSION, "kind": kind, **namespace}
        ns_hash = sha256_hex(json.dumps(self.namespace, sort_keys=True, default=str))[:20]
        self.dir = self.root / kind / ns_hash
        self._index: dict[str, tuple[Path, int]] | None = None
        self._arrays: dict[Path, np.ndarray] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            with FileLock(str(self.dir / ".lock")):
                if not meta.exists():
                    atomic_write_bytes(meta, json.dumps(self.namespace, indent=2, sort_keys=True,
                                                        default=str).encode())

    # -- reading -------------------------------------------------------------------------
    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.npz"))

    def _load_chunk(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, emb, digest = z["keys"], z["emb"], str(z["digest"])
            if _digest(keys, emb) != digest:
                raise ValueError("checksum mismatch")
            return keys, emb
        except Exception as e:  # damaged: set aside, recompute its entries
            log.warning("cache chunk %s is damaged (%s); its embeddings will be recomputed", path, e)
            try:
                path.rename(path.with_name(path.name + ".damaged"))
            except OSError:
                pass
            return None

    def refresh(self) -> None:
        self._index, self._arrays = {}, {}
        for p in self._chunks():
            loaded = self._load_chunk(p)
            if loaded is None:
                continue
            keys, emb = loaded
            self._arrays[p] = emb
            for i, k in enumerate(keys.tolist()):
                self._index.setdefault(k, (p, i))

    @property
    def index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self.refresh()
        assert self._index is not None
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def missing(self, keys: Iterable[str]) -> list[str]:
        idx = self.index
        return [k for k in dict.fromkeys(keys) if k not in idx]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Embeddings for ``keys`` (all must be present), float32 (len(keys), dim)."""
        idx = self.index
        rows = [idx[k] for k in keys]
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._arrays[p][i] for p, i in rows]).astype(np.float32, copy=False)

    # -- writing -------------------------------------------------------------------------
    def put(self, keys: Sequence[str], emb: np.ndarray) -> Path | None:
        """Persist one chunk atomically (an interrupted write leaves no partial chunk)."""
        if len(keys) == 0:
            return None
        karr = np.asarray(list(keys), dtype=str)
        earr = np.ascontiguousarray(emb, dtype=np.float32)
        if earr.shape[0] != len(karr):
            raise ValueError("keys and embeddings differ in length")
        import io

        buf = io.BytesIO()
        np.savez(buf, keys=karr, emb=earr, digest=np.asarray(_digest(karr, earr)))
        path = self.dir / f"chunk-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(path, buf.getvalue())
        if self._index is not None:
            self._arrays[path] = earr
            for i, k in enumerate(karr.tolist()):
                self._index.setdefault(k, (path, i))
        return path


@dataclass
class CacheEntry:
    kind: str
    path: Path
    meta: dict[str, Any]
    n_chunks: int
    size_bytes: int


def list_entries(root: Path | str | None = None) -> list[CacheEntry]:
    root = Path(root) if root else default_cache_dir()
    out = []
    for meta in sorted(root.glob("*/*/meta.json")):
        d = meta.parent
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            m = {}
        files = [p for p in d.iterdir() if p.is_file()]
        out.append(CacheEntry(d.parent.name, d, m, sum(p.name.startswith("chunk-") and p.suffix == ".npz"
                                                       for p in files), sum(p.stat().st_size for p in files)))
    return out


def clear(root: Path | str | None = None, match: str | None = None) -> int:
    """Remove cache namespaces (all, or those whose meta mentions ``match``). Returns count."""
    n = 0
    for e in list_entries(root):
        if match and match not in json.dumps(e.meta) and match not in str(e.path):
            continue
        with FileLock(str(e.path / ".lock")):
            shutil.rmtree(e.path, ignore_errors=True)
        n += 1
    return n
