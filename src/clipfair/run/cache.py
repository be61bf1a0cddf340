"""A content-addressed on-disk store for embeddings.

Layer: run.

Layout: ``<root>/<kind>/<namespace-hash>/`` holds ``meta.json`` (what the namespace is:
model fingerprint, preprocessing, dtype, ...) and ``chunk-*.npz`` files, each mapping keys
(sha256 of an image's bytes, or of a prompt string) to float32 embeddings.

- Writes are atomic (temporary file + fsync + ``os.replace``) and every chunk is uniquely
  named, so an interrupted (even SIGKILLed) run leaves only whole chunks and two runs sharing
  a cache never write the same file; a per-namespace file lock serialises namespace
  creation, chunk writes and clearing.
- Each chunk carries a sha256 of its payload, verified on read; a damaged chunk is
  moved aside with a warning and its entries are simply recomputed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: images are decoded with their EXIF orientation applied
#: every entry's meta.json carries this key (value: the kind of entry); `cache clear` removes
#: only folders whose meta.json has it, a cache_version and the files the cache writes
MARKER = "clipfair_cache"
_ENTRY_FILE = re.compile(r"^(meta\.json|\.lock|chunk-[0-9a-f]{32}\.npz(\.damaged)?|\.(meta\.json|chunk-[0-9a-f]{32}\.npz)\..*\.tmp)$")


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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC and not e.filename:  # name the file in the message
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwritable_reason(root: Path | str) -> str | None:
    """Why files cannot be written under the cache folder ``root`` (None: they can)."""
    try:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


class EmbeddingStore:
    """Embeddings of one namespace (e.g. one model + preprocessing + dtype), keyed by content."""

    def __init__(self, root: Path | str, kind: str, namespace: dict[str, Any],
                 info: dict[str, Any] | None = None) -> None:
        """``namespace`` decides what the embeddings are (it is hashed into the folder name);
        ``info`` only describes them in meta.json (e.g. the model's path or hub id)."""
        self.root = Path(root).expanduser()
        self.kind = kind
        self.namespace = {"cache_version": CACHE_VERSION, "kind": kind, **namespace}
        ns_hash = sha256_hex(json.dumps(self.namespace, sort_keys=True, default=str))[:20]
        self.info = dict(info or {})
        self.dir = self.root / kind / ns_hash
        self._index: dict[str, tuple[Path, int]] | None = None
        self._arrays: dict[Path, np.ndarray] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "meta.json").exists():
            with self._lock():
                self._ensure_meta()

    def _lock(self) -> FileLock:
        """The namespace's lock: held to create it, to add a chunk and to clear it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".lock"))

    def _ensure_meta(self) -> None:
        meta = self.dir / "meta.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps({**self.info, **self.namespace, MARKER: self.kind}, indent=2, sort_keys=True,
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
            if emb.ndim != 2 or len(keys) != len(emb):
                raise ValueError(f"keys {keys.shape} and embeddings {emb.shape} do not match")
            return keys, emb
        except FileNotFoundError:  # set aside or cleared by another process meanwhile
            return None
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
        return np.stack([self._array(p)[i] for p, i in rows]).astype(np.float32, copy=False)

    def _array(self, path: Path) -> np.ndarray:
        arr = self._arrays.get(path)
        if arr is None:  # a chunk put() by this process: read it back
            loaded = self._load_chunk(path)
            if loaded is None:
                raise KeyError(f"cache chunk {path} disappeared or is damaged; run again to recompute it")
            arr = self._arrays[path] = loaded[1]
        return arr

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
        with self._lock():  # never races `clear`; a cleared namespace is re-created whole
            self._ensure_meta()
            atomic_write_bytes(path, buf.getvalue())
        if self._index is not None:  # indexed, but not kept in memory: a long run writing many
            # chunks stays flat; get() reads the chunk back if it is ever asked for
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
    recognised: bool = True  # False: a folder that looks like an entry but lacks the cache's marker


def _recognised(d: Path, meta: dict[str, Any], files: list[Path]) -> bool:
    """A cache entry written by this cache: meta.json with the marker naming its kind folder and a
    cache_version, and nothing in the folder but the files the cache writes."""
    return (meta.get(MARKER) == d.parent.name and isinstance(meta.get("cache_version"), int)
            and all(p.is_file() and not p.is_symlink() and _ENTRY_FILE.match(p.name) for p in d.iterdir())
            and bool(files))


def list_entries(root: Path | str | None = None, unrecognised: bool = False) -> list[CacheEntry]:
    """The cache's entries under ``root`` (with ``unrecognised``: also folders ``*/*/meta.json``
    that are not, flagged ``recognised=False``; they are never removed)."""
    root = Path(root) if root else default_cache_dir()
    out = []
    for meta in sorted(root.glob("*/*/meta.json")):
        d = meta.parent
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            m = {}
        m = m if isinstance(m, dict) else {}
        files = [p for p in d.iterdir() if p.is_file()]
        ok = _recognised(d, m, files)
        if ok or unrecognised:
            out.append(CacheEntry(d.parent.name, d, m, sum(p.name.startswith("chunk-") and p.suffix == ".npz"
                                                           for p in files), sum(p.stat().st_size for p in files),
                                  ok))
    return out


def clear(root: Path | str | None = None, match: str | None = None) -> int:
    """Remove cache namespaces (all, or those whose meta mentions ``match``). Returns count.
    Only folders carrying the cache's marker are removed (see :func:`list_entries`)."""
    n = 0
    for e in list_entries(root):
        if match and match not in json.dumps(e.meta) and match not in str(e.path):
            continue
        with FileLock(str(e.path / ".lock")):
            shutil.rmtree(e.path, ignore_errors=True)
        n += 1
    return n
