"""Image and text embeddings, computed once and cached by content.

Layer: run.

Images are keyed by the sha256 of their bytes within a namespace of (model fingerprint,
preprocessing, dtype), so a rerun encodes nothing, a changed image is re-encoded alone, and
a changed model or preprocessing uses a fresh namespace. Encoding runs in chunks that are
persisted as they finish: an interrupted run resumes from the last finished chunk.

The image pipeline: DataLoader workers read, decode (optionally JPEG draft mode) and resize /
crop images to uint8 while the model encodes the previous batch; each uint8 batch is moved
(pinned, non-blocking on a GPU) and normalised on the model's device; embeddings are written in
place into one preallocated result and persisted per chunk. See docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cache import EmbeddingStore, sha256_hex
from ..data.base import FaceDataset
from ..data.images import ImageError, decode_image, has_exif_rotation
from ..models.base import ImageTextModel, Pixels
from ..models.preprocess import EXACT_TOLERANCE, ClipPreprocess, compare_draft, draft_within_tolerance, max_abs_diff

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    """Embeddings of the usable images of a dataset, in dataset order."""

    indices: np.ndarray  # dataset row of each embedding
    embeddings: np.ndarray  # (len(indices), dim) float32, unnormalised
    errors: list[dict[str, str]] = field(default_factory=list)  # skipped images: id, where, reason
    encoded: int = 0  # images sent through the image encoder in this call
    cached: int = 0  # images found in the cache
    info: dict[str, Any] = field(default_factory=dict)  # workers, preprocessing/decode path, timings

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
    for key, needle in (("missing_file", "not found"), ("empty_file", "empty"), ("too_large", "-byte limit"),
                        ("not_an_image", "not an image"), ("corrupt_image", "corrupt"),
                        ("not_a_file", "directory")):
        if needle in r:
            return key
    return "bad_image"


_JPEG_MAGIC = b"\xff\xd8\xff"


class _Decoded(Dataset):
    """Reads, decodes and preprocesses images (in DataLoader workers when num_workers > 0).

    Items are ``(row, pixels, error)``. With a fast ``spec`` the pixels are the resized and
    center-cropped uint8 (3, H, W), normalised later, per batch, on the model's device (4x less
    data to move than float32); without one, the model's own preprocessing of the image (a
    float32 tensor, or named tensors).
    ``draft``: JPEG draft-mode decoding at reduced size. ``device_decode``: JPEG bytes are
    passed on undecoded, as ``("jpeg", uint8 tensor)``, to be decoded on the GPU.
    """

    def __init__(self, dataset: FaceDataset, rows: Sequence[int], model: ImageTextModel,
                 spec: ClipPreprocess | None = None, draft: tuple[int, int] | None = None,
                 device_decode: bool = False) -> None:
        self.dataset, self.rows = dataset, list(rows)
        self.preprocess = model.preprocessor()  # light and picklable: workers need no weights
        self.spec, self.draft, self.device_decode = spec, draft, device_decode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[int, Any, str]:
        i = self.rows[j]
        try:
            if self.device_decode:
                data = self.dataset.read_bytes(i)
                if data[:3] == _JPEG_MAGIC and not has_exif_rotation(data):  # rotated: CPU decode
                    return i, ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)), ""
            if self.draft is not None:
                img = decode_image(self.dataset.read_bytes(i), self.dataset.reader.describe(i),
                                   draft=self.draft)
            else:
                img = self.dataset.load_image(i)
            if self.spec is not None:
                return i, torch.from_numpy(self.spec.to_uint8(img)), ""
            return i, _first(self.preprocess([img])), ""
        except ImageError as e:
            return i, None, f"{_reason_key(e)}\t{e}"


def _first(pixels: Pixels) -> Pixels:
    """The first item of a batch of model input (a tensor, or named tensors)."""
    if isinstance(pixels, torch.Tensor):
        return pixels[0]
    return {k: v[0] for k, v in pixels.items()}


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """(rows, pixels, bad): pixels stacked into one tensor (or named tensors, each stacked), or
    a list when they cannot be (JPEG bytes for device decoding)."""
    ok = [(i, pv) for i, pv, err in batch if pv is not None]
    bad = [(i, err) for i, pv, err in batch if pv is None]
    pvs = [pv for _, pv in ok]
    if not pvs:
        pixels = None
    elif all(isinstance(p, dict) for p in pvs):
        pixels = {k: torch.stack([p[k] for p in pvs]) for k in pvs[0]}
    elif all(isinstance(p, torch.Tensor) for p in pvs) and len({tuple(p.shape) for p in pvs}) == 1:
        pixels = torch.stack(pvs)
    else:
        pixels = pvs
    return [i for i, _ in ok], pixels, bad


def _worker_init(_: int, nice: int = 0) -> None:
    # one thread per worker: the workers' parallelism is the processes, and torch's
    # intra-op threads in the main process already use the cores for the encoder
    torch.set_num_threads(1)
    if nice:  # CPU encoder: decode in the encoder's idle gaps rather than preempting its threads
        try:
            os.nice(nice)
        except OSError:
            pass


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_num_workers(device: torch.device | str, cpus: int | None = None) -> int:
    """DataLoader workers for ``embed.num_workers=auto``.

    GPU: the encoder is fast and decoding is the bottleneck: one worker per spare core, at
    most 8. CPU: the encoder is compute bound and its intra-op threads already use every core,
    so decoding (~1 ms per image) only adds to the same cores' work wherever it runs. On 2
    cores one worker made bf16 ViT-B/32 slower (12.7 -> 16.3 ms per image, median of 5
    alternating rounds; its decoding preempts the encoder's threads), so 0. With more
    cores the encoder gets faster per image while decoding in the main thread does not, so one
    worker per 4 cores (at most 4) decodes in parallel, at lower priority (niced) so that it
    fills the encoder's idle moments rather than preempting its threads.
    """
    cpus = available_cpus() if cpus is None else int(cpus)
    if torch.device(device).type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 2 else max(1, min(4, cpus // 4))


def resolve_num_workers(num_workers: int | str | None, device: torch.device | str) -> int:
    if num_workers is None or (isinstance(num_workers, str) and num_workers.lower() == "auto"):
        return auto_num_workers(device)
    n = int(num_workers)
    if n < 0:
        raise ValueError(f"embed.num_workers must be >= 0 or 'auto', got {num_workers!r}")
    return n


def _tristate(value: bool | str | None, name: str) -> bool | str:
    """'auto' | True | False from config values (true/false/auto, yes/no, 1/0)."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v == "auto":
        return "auto"
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"embed.{name} must be auto, true or false, got {value!r}")


@dataclass
class _Plan:
    """How images are turned into model input for one embed_images call."""

    spec: ClipPreprocess | None = None  # fast uint8 path (None: the checkpoint's processor)
    draft: tuple[int, int] | None = None  # JPEG draft decoding at this size
    device_decode: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    namespace: dict[str, str] = field(default_factory=dict)  # extra cache namespace entries
    info: dict[str, Any] = field(default_factory=dict)


def _device_jpeg_decoder(device: torch.device) -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
    """torchvision's batched ``decode_jpeg(device="cuda")``, or None (no CUDA / torchvision)."""
    if device.type != "cuda":
        return None
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - torchvision is optional (pip install clipfair[gpu])
        return None

    def decode(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        try:  # batched decoding: torchvision >= 0.19
            out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except TypeError:  # older torchvision: one image per call
            out = [decode_jpeg(d, mode=ImageReadMode.RGB, device=device) for d in datas]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return decode


def _sample_rows(keys: Sequence[str | None], n: int) -> list[int]:
    return [i for i, k in enumerate(keys) if k is not None][:n]


def plan_preprocessing(dataset: FaceDataset, model: ImageTextModel, keys: Sequence[str | None], *,
                       fast_preprocess: bool | str = "auto", fast_decode: bool | str = "auto",
                       gpu_decode: bool | str = False, sample: int = 8) -> _Plan:
    """Choose the fast paths that reproduce the model's processor (see :mod:`clipfair.models.preprocess`).

    * fast preprocessing (uint8 resize/crop, normalise per batch on the device): used when the
      model states its preprocessing as a :class:`ClipPreprocess` (``model.preprocess_spec()``)
      and that reproduces ``model.preprocess`` on the first image within ``EXACT_TOLERANCE``;
      ``auto`` and ``true`` differ only in warning when it cannot be used.
    * JPEG draft decoding: ``auto`` uses it when, on the first ``sample`` images, it changes the
      preprocessed pixels by at most ``DRAFT_TOLERANCE_*`` (and actually reduces some image);
      ``true`` always. It changes the embeddings slightly, so it has its own cache namespace.
    * GPU JPEG decoding (``gpu_decode=true``, torchvision + CUDA): resizing with torch's
      antialiased kernels, close to PIL's but not equal; its own cache namespace. Opt-in.
    """
    fp = _tristate(fast_preprocess, "fast_preprocess")
    fd = _tristate(fast_decode, "fast_decode")
    gd = _tristate(gpu_decode, "gpu_decode")
    plan = _Plan()
    spec = model.preprocess_spec() if fp is not False else None
    if spec is not None and spec.output_hw is None:
        spec = None  # images of different sizes cannot be batched as uint8
    if spec is not None:
        diff = None
        for i in _sample_rows(keys, 3):
            try:
                img = dataset.load_image(i)
            except ImageError:
                continue
            ref = model.preprocess([img])
            diff = max_abs_diff(spec([img]), ref) if isinstance(ref, torch.Tensor) else float("inf")
            break
        if diff is not None and diff > EXACT_TOLERANCE:
            log.warning("fast preprocessing differs from the model's image processor by %.3g "
                        "(> %.0e); using the processor", diff, EXACT_TOLERANCE)
            spec = None
        elif diff is not None:
            plan.info["fast_preprocess_max_abs_diff"] = diff
    if spec is None and fp is True:
        log.warning("embed.fast_preprocess=true, but the preprocessing of %s (%s) is not one the fast "
                    "path reproduces; using the model's preprocessing", model.name_or_path, model.family)
    plan.spec = spec
    plan.info["preprocess"] = "fast_uint8" if spec is not None else "processor"
    decode = "full"
    if gd is True:
        decoder = _device_jpeg_decoder(model.device)
        if spec is None or decoder is None:
            log.warning("embed.gpu_decode=true needs a CUDA device, torchvision (pip install "
                        "clipfair[gpu]) and a CLIP-style image processor; decoding on the CPU")
        else:
            plan.device_decode, decode = decoder, "gpu_jpeg"
    if decode == "full" and fd is not False:
        if spec is None:
            if fd is True:
                log.warning("embed.fast_decode=true needs the fast preprocessing path; decoding fully")
        else:
            if fd is True:
                use = True
            else:
                datas = []
                for i in _sample_rows(keys, sample):
                    try:
                        datas.append(dataset.read_bytes(i))
                    except ImageError:
                        continue
                check = compare_draft(spec, datas)
                plan.info["fast_decode_check"] = check
                use = draft_within_tolerance(check)
            if use:
                plan.draft, decode = spec.draft_size(), "jpeg_draft"
    plan.info["decode"] = decode
    if decode != "full":
        plan.namespace["decode"] = decode
    return plan


def variant_store(store: EmbeddingStore, extra: dict[str, str]) -> EmbeddingStore:
    """The store of the same namespace plus ``extra`` (e.g. a different decoder)."""
    ns = {k: v for k, v in store.namespace.items() if k not in ("cache_version", "kind")}
    return EmbeddingStore(store.root, store.kind, {**ns, **extra}, store.info)


def content_keys(dataset: FaceDataset, on_error: str, threads: int = 4) -> tuple[list[str | None], list[dict[str, str]]]:
    """sha256 of each image's bytes (None where unreadable, with the error recorded)."""
    def one(i: int) -> tuple[str | None, str]:
        try:
            return sha256_hex(dataset.read_bytes(i)), ""
        except ImageError as e:
            return None, f"{_reason_key(e)}\t{e}"

    results: list[tuple[str | None, str]] = []
    with ThreadPoolExecutor(max_workers=threads) as ex:  # in blocks: few futures alive at a time
        for s in range(0, len(dataset), 256):
            results += ex.map(one, range(s, min(s + 256, len(dataset))))
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


def image_namespace(model: ImageTextModel) -> dict[str, Any]:
    """What an image embedding depends on: the weights (fingerprint, not the path they were
    loaded from), the preprocessing and the numeric precision."""
    return {"model": model.fingerprint, "preprocess": model.preprocess_fingerprint,
            "dtype": str(model.dtype).replace("torch.", ""), "device_type": model.device.type}


def embed_images(dataset: FaceDataset, model: ImageTextModel, store: EmbeddingStore | None = None, *,
                 batch_size: int | None = None, num_workers: int | str = 0, chunk_size: int = 2048,
                 on_error: str = "raise", progress: bool = True,
                 stats: EmbedStats | None = None, fast_preprocess: bool | str = "auto",
                 fast_decode: bool | str = "auto", gpu_decode: bool | str = False,
                 compile: bool = False, out_path: str | Path | None = None) -> ImageEmbeddings:
    """Embed every usable image of ``dataset``; reuse and extend ``store`` when given.

    Images are read and decoded by ``num_workers`` DataLoader workers (``"auto"``:
    :func:`auto_num_workers`) while the model encodes the previous batch; the fast paths are
    chosen by :func:`plan_preprocessing`. Every ``chunk_size`` new embeddings are persisted to
    ``store`` as they finish (an interrupted run resumes after the last whole chunk). The result
    is written in place into one preallocated array (a ``.npy`` memmap at ``out_path`` when
    given), so beyond the result itself memory does not grow with the dataset.
    ``compile``: run the image tower through ``torch.compile`` (first batch includes compiling).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(dataset) == 0:
        raise ImageError(dataset.name, "the dataset has no images",
                         "check dataset.root / split / limit")
    keys, errors = content_keys(dataset, on_error)
    plan = plan_preprocessing(dataset, model, keys, fast_preprocess=fast_preprocess,
                              fast_decode=fast_decode, gpu_decode=gpu_decode)
    if store is not None and plan.namespace:
        store = variant_store(store, plan.namespace)
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
    nw = resolve_num_workers(num_workers, model.device) if rows else 0
    info: dict[str, Any] = {**plan.info, "num_workers": nw, "batch_size": bs, "compile": bool(compile)}
    if dups := dataset.duplicate_contents(keys):  # one image under several names: counted twice
        log.warning("dataset %r: %d groups of images have identical content, e.g. %s; each copy is "
                    "counted (listed in run.json under duplicate_contents)", dataset.name, len(dups),
                    " = ".join(dups[0][:3]))
        info["duplicate_contents"] = {"groups": len(dups), "images": sum(map(len, dups)), "examples": dups[:50]}
    # the result: one row per readable image, in dataset order, filled in place
    candidates = np.asarray([i for i, k in enumerate(keys) if k is not None], dtype=np.int64)
    pos = np.full(len(keys), -1, dtype=np.int64)
    pos[candidates] = np.arange(len(candidates))
    out: np.ndarray | None = None

    def alloc(dim: int) -> np.ndarray:
        shape = (len(candidates), int(dim))
        if out_path is not None:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            return np.lib.format.open_memmap(str(out_path), mode="w+", dtype=np.float32, shape=shape)
        return np.empty(shape, dtype=np.float32)

    bad_rows: set[int] = set()
    bad_err: dict[str, tuple[int, str]] = {}  # bad content -> (row decoded, its error)
    pend_keys: list[str] = []  # encoded, not yet persisted (fewer than chunk_size + batch)
    pend_pos: list[int] = []
    encoded = 0

    def flush(final: bool) -> None:
        while pend_keys and (final or len(pend_keys) >= chunk_size):
            ck, cp = pend_keys[:chunk_size], pend_pos[:chunk_size]
            if store is not None:
                store.put(ck, out[cp])  # persisted: a later run resumes after this chunk
            del pend_keys[:chunk_size], pend_pos[:chunk_size]

    if rows:
        if compile and not model.image_encoder_compiled:
            model.compile_image_encoder(dynamic=False)
        loader = DataLoader(
            _Decoded(dataset, rows, model, plan.spec, plan.draft, plan.device_decode is not None),
            batch_size=bs, num_workers=nw, collate_fn=_collate,
            pin_memory=model.device.type == "cuda",
            worker_init_fn=partial(_worker_init, nice=_WORKER_NICE if model.device.type == "cpu" else 0)
            if nw else None,
            prefetch_factor=4 if nw else None, persistent_workers=False)
        bar = tqdm(total=len(rows), desc="encoding images", unit="img", disable=not progress,
                   dynamic_ncols=True, smoothing=0.05)
        t0 = time.perf_counter()
        try:
            for idx, pixels, bad in loader:
                with torch.inference_mode():
                    idx, pv, more_bad = _model_input(pixels, idx, plan, model, dataset)
                for i, err in bad + more_bad:
                    bad_rows.add(i)
                    bad_err.setdefault(keys[i], (i, err))
                    _record_error(dataset, i, err, on_error, errors)
                if pv is not None:
                    tb = time.perf_counter()
                    n = len(idx)
                    if compile and n < bs and isinstance(pv, torch.Tensor):  # one input shape: no recompiling
                        pv = torch.cat([pv, pv[-1:].expand(bs - n, *pv.shape[1:])])
                    emb = model.encode_pixels(pv)[:n]
                    if "first_batch_s" not in info:
                        info["first_batch_s"] = round(time.perf_counter() - tb, 4)
                    if stats is not None:
                        stats.image_batches += 1
                        stats.images += n
                    if out is None:
                        out = alloc(emb.shape[1])
                    p = pos[idx]
                    out[p] = emb
                    encoded += n
                    pend_keys += [keys[i] for i in idx]
                    pend_pos += p.tolist()
                    flush(False)
                bar.update(len(idx) + len(bad) + len(more_bad))
            flush(True)
        finally:
            bar.close()
        info["encode_s"] = round(time.perf_counter() - t0, 4)
        if encoded:
            info["images_per_s"] = round(encoded / max(info["encode_s"], 1e-9), 2)
    bad_keys = {keys[i] for i in bad_rows}
    for i, k in enumerate(keys):  # other rows with the same bad bytes: each skipped and counted
        if k in bad_err and i not in bad_rows:
            first, err = bad_err[k]
            reason, msg = err.split("\t", 1)
            prefix = f"{dataset.reader.describe(first)}: "
            msg = msg[len(prefix):] if msg.startswith(prefix) else msg
            _record_error(dataset, i, f"{reason}\t{dataset.reader.describe(i)}: {msg}", on_error, errors)
    use = [int(i) for i in candidates if keys[i] not in bad_keys]
    if not use:
        raise ImageError(dataset.name, f"none of the {len(dataset)} images could be read",
                         "see the errors above; check dataset.root")
    # rows whose content was encoded above under another row, and rows from the cache
    dup = [(pos[i], pos[first_row[keys[i]]]) for i in use if keys[i] in first_row and first_row[keys[i]] != i]
    from_store = [i for i in use if keys[i] not in first_row]
    for s in range(0, len(from_store), _BLOCK):
        blk = from_store[s:s + _BLOCK]
        emb = store.get([keys[i] for i in blk])  # type: ignore[union-attr]
        if out is None:
            out = alloc(emb.shape[1])
        out[pos[blk]] = emb
    for dst, src in dup:
        out[dst] = out[src]
    assert out is not None
    if len(use) < len(candidates):  # drop the rows of unreadable images, in place
        keep = pos[use]
        for s in range(0, len(keep), _BLOCK):
            blk = keep[s:s + _BLOCK]
            out[s:s + len(blk)] = out[blk]  # blk[j] >= s + j: never overwrites a row still to move
    if isinstance(out, np.memmap):
        out.flush()
    return ImageEmbeddings(np.asarray(use, dtype=np.int64), out[:len(use)], errors, encoded, cached, info)


_BLOCK = 4096  # rows copied at a time when assembling the result
_WORKER_NICE = 10  # niceness of DataLoader workers when the model runs on the CPU


def _model_input(pixels: Any, idx: list[int], plan: _Plan, model: ImageTextModel,
                 dataset: FaceDataset) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A collated batch -> (rows, model input on the device, rows that failed here)."""
    if pixels is None:
        return idx, None, []
    spec = plan.spec
    if isinstance(pixels, dict):  # named tensors of the model's own preprocessing
        return idx, pixels, []
    if isinstance(pixels, torch.Tensor):
        if spec is None:  # the model's float pixels: encode_pixels moves and casts them
            return idx, pixels, []
        return idx, spec.normalize(pixels.to(model.device, non_blocking=True), model.dtype), []
    # a list: JPEG bytes to decode on the device, and pixels decoded on the CPU
    assert spec is not None and plan.device_decode is not None
    jpeg = [j for j, p in enumerate(pixels) if isinstance(p, tuple)]
    decoded: dict[int, torch.Tensor | None] = {}
    if jpeg:
        try:
            decoded = dict(zip(jpeg, plan.device_decode([pixels[j][1] for j in jpeg])))
        except Exception:  # noqa: BLE001 - one bad JPEG fails the batch: decode one by one
            for j in jpeg:
                try:
                    decoded[j] = plan.device_decode([pixels[j][1]])[0]
                except Exception:  # noqa: BLE001 - decoded on the CPU below, errors reported there
                    decoded[j] = None
    ok, imgs, bad = [], [], []
    for j, (i, p) in enumerate(zip(idx, pixels)):
        if isinstance(p, tuple):
            img = decoded.get(j)
            if img is None:  # not decodable on the device: the CPU decoder names the problem
                try:
                    p = torch.from_numpy(spec.to_uint8(dataset.load_image(i)))
                except ImageError as e:
                    bad.append((i, f"{_reason_key(e)}\t{e}"))
                    continue
            else:
                p = spec.resize_crop_tensor(img.to(model.device))
        ok.append(i)
        imgs.append(p.to(model.device, non_blocking=True))
    if not ok:
        return [], None, bad
    return ok, spec.normalize(torch.stack(imgs), model.dtype), bad


class TextEmbedder:
    """Encodes prompt strings through a per-(model) store: each prompt is encoded once."""

    def __init__(self, model: ImageTextModel, store: EmbeddingStore | None = None,
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


def text_namespace(model: ImageTextModel) -> dict[str, Any]:
    """What a text embedding depends on: the weights, the tokenizer with the family's text
    settings, and the text tower's precision (float32)."""
    return {"model": model.fingerprint, "tokenizer": model.text_fingerprint,
            "dtype": str(model.text_dtype).replace("torch.", ""), "device_type": model.device.type}


def open_stores(model: ImageTextModel, cache_dir: Path | str | None) -> tuple[EmbeddingStore | None, EmbeddingStore | None]:
    if cache_dir is None:
        return None, None
    info = {"model_name": model.name_or_path}
    return (EmbeddingStore(cache_dir, "image", image_namespace(model), info),
            EmbeddingStore(cache_dir, "text", text_namespace(model), info))
