"""The fast, bounded-memory image pipeline: its fast paths agree with the model's own
processor within the stated tolerances, results do not depend on workers or batch size,
the cache stays content-addressed and chunked, and memory does not grow with the dataset.

No performance numbers are asserted here (see scripts/bench.py for those).
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import clipfair.run.embed as E
from clipfair.run.cache import EmbeddingStore
from clipfair.data.base import FaceDataset, FileReader
from clipfair.run.embed import EmbedStats, auto_num_workers, embed_images, image_namespace, plan_preprocessing
from clipfair.models import load_hf_clip
from clipfair.models.hf import spec_from_image_processor
from clipfair.models.preprocess import (DRAFT_TOLERANCE_MEAN_LEVELS, DRAFT_TOLERANCE_P99_LEVELS, EXACT_TOLERANCE,
                                 compare_draft, processor_pixels)
from clipfair.data.synthetic import render_face
from clipfair.models.toy import clip_image_processor


# -- helpers -------------------------------------------------------------------------------

def _face(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    races = ["White", "Black", "East Asian", "Indian"]
    return render_face(races[seed % 4], ["Male", "Female"][seed % 2], "20-29", rng, size=size)


def _dataset(folder: Path, n: int, size: int = 32, fmt: str = "JPEG", seed: int = 0,
             names: list[str] | None = None) -> FaceDataset:
    """n synthetic faces saved as files (faces repeat every 64 images: cheap to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    cache: dict[int, bytes] = {}
    paths = []
    for i in range(n):
        j = (seed + i) % 64
        if j not in cache:
            buf = io.BytesIO()
            _face(j, size).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            cache[j] = buf.getvalue()
        # a unique trailing byte keeps every file's content (its cache key) distinct
        data = cache[j] + i.to_bytes(4, "little") if fmt == "JPEG" else cache[j]
        p = folder / (names[i] if names else f"{i}.{fmt.lower()[:3]}")
        p.write_bytes(data)
        paths.append(p)
    table = pd.DataFrame({"image_id": [p.name for p in paths]})
    return FaceDataset("speed", table, FileReader(paths))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny models are slowed down badly by thread contention on a busy
    machine, and these tests measure agreement, not speed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipfair.run.toy import make_tiny_clip

    d = make_tiny_clip(tmp_path_factory.mktemp("speed-models") / "tiny", seed=0)
    return load_hf_clip(str(d), device="cpu", dtype="float32", batch_size=16)


def _images() -> list[Image.Image]:
    """Sizes and shapes that exercise every branch: up/down-scaling, both orientations,
    odd sizes, smaller than the crop (zero padding) and non-RGB modes."""
    rng = np.random.default_rng(1)
    out = [_face(0, 64), _face(1, 448), _face(2, 31)]
    for h, w in ((100, 300), (301, 97), (20, 20), (225, 224), (7, 500)):
        out.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    out.append(Image.fromarray(rng.integers(0, 255, (50, 60), dtype=np.uint8), "L").convert("RGB"))
    return out


# -- fast preprocessing reproduces the processor ----------------------------------------------

@pytest.mark.parametrize("image_size", [32, 224])
def test_fast_uint8_preprocessing_matches_the_clip_processor(image_size):
    proc = clip_image_processor(image_size)
    spec = spec_from_image_processor(proc)
    assert spec is not None
    ims = _images()
    for im in ims:  # one at a time: images of any size
        ref = processor_pixels(proc, [im])
        fast = spec([im])
        assert fast.dtype == torch.float32 and fast.shape == ref.shape == (1, 3, image_size, image_size)
        assert (fast - ref).abs().max().item() <= EXACT_TOLERANCE
        u8 = spec.to_uint8(im)
        assert u8.dtype == np.uint8 and u8.shape == (3, image_size, image_size)


def test_processor_without_a_fast_equivalent_uses_the_processor():
    class Odd:
        backend = "torchvision"

    assert spec_from_image_processor(Odd()) is None
    proc = clip_image_processor(32)
    proc.do_pad = True
    assert spec_from_image_processor(proc) is None


def test_device_resize_is_close_to_pil():
    """The GPU path resizes decoded tensors with torch's antialiased bicubic: close to PIL."""
    spec = spec_from_image_processor(clip_image_processor(224))
    for im in _images():
        ref = spec.to_uint8(im).astype(np.int16)
        t = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        got = spec.resize_crop_tensor(t)
        assert got.dtype == torch.uint8 and tuple(got.shape) == ref.shape
        d = np.abs(ref - got.numpy().astype(np.int16))
        # PIL rounds and clips between its horizontal and vertical passes, torch does not:
        # upscaled pixel noise differs by up to ~20 levels in places, faces by ~1
        assert d.mean() <= 0.5 and np.percentile(d, 99) <= 3


# -- JPEG draft decoding ----------------------------------------------------------------------

def test_draft_decoding_is_within_its_stated_tolerance(tmp_path, tiny):
    """Large JPEGs: draft decoding is used by fast_decode=auto, is within the pixel tolerance,
    and changes the embeddings only slightly; small JPEGs: draft is a no-op, not used."""
    big = _dataset(tmp_path / "big", 12, size=160)  # 5x the tiny model's 32 px: scale 1/4
    spec = spec_from_image_processor(tiny.image_processor)
    stats = compare_draft(spec, [big.read_bytes(i) for i in range(len(big))])
    assert stats["reduced"] == 12
    assert stats["mean_levels"] <= DRAFT_TOLERANCE_MEAN_LEVELS and stats["p99_levels"] <= DRAFT_TOLERANCE_P99_LEVELS
    keys, _ = E.content_keys(big, "raise")
    assert plan_preprocessing(big, tiny, keys).info["decode"] == "jpeg_draft"
    assert plan_preprocessing(big, tiny, keys, fast_decode=False).info["decode"] == "full"
    ref = embed_images(big, tiny, progress=False, fast_decode=False).embeddings
    fast = embed_images(big, tiny, progress=False, fast_decode=True).embeddings
    cos = (ref * fast).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(fast, axis=1)
    assert cos.min() >= 0.99
    small = _dataset(tmp_path / "small", 4, size=32)
    skeys, _ = E.content_keys(small, "raise")
    assert plan_preprocessing(small, tiny, skeys).info["decode"] == "full"


def test_draft_decoding_has_its_own_cache_namespace(tmp_path, tiny):
    big = _dataset(tmp_path / "big", 6, size=160)
    store = EmbeddingStore(tmp_path / "cache", "image", image_namespace(tiny))
    a = embed_images(big, tiny, store, progress=False, fast_decode=False)
    b = embed_images(big, tiny, store, progress=False, fast_decode=True)
    c = embed_images(big, tiny, store, progress=False, fast_decode=True)
    assert (a.encoded, b.encoded, c.encoded, c.cached) == (6, 6, 0, 6)
    assert a.info["decode"] == "full" and b.info["decode"] == "jpeg_draft"


# -- results do not depend on workers, batch size or the path taken -------------------------

def test_results_identical_across_workers_batch_sizes_and_paths(tmp_path, tiny):
    ds = _dataset(tmp_path / "d", 40, size=48)
    ref = embed_images(ds, tiny, progress=False, num_workers=0, batch_size=40, fast_preprocess=False)
    assert ref.info["preprocess"] == "processor"
    for nw, bs in ((0, 1), (0, 7), (1, 16), (2, 5), ("auto", 64)):
        got = embed_images(ds, tiny, progress=False, num_workers=nw, batch_size=bs)
        assert got.info["preprocess"] == "fast_uint8"
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.embeddings, ref.embeddings, rtol=1e-4, atol=1e-5)


def test_auto_workers():
    assert auto_num_workers("cpu", cpus=2) == 0
    assert auto_num_workers("cpu", cpus=4) == 1
    assert auto_num_workers("cpu", cpus=64) == 4
    assert auto_num_workers("cuda", cpus=2) == 1
    assert auto_num_workers("cuda", cpus=32) == 8
    with pytest.raises(ValueError, match="num_workers"):
        E.resolve_num_workers(-1, "cpu")


# -- cache: content-addressed, chunked, resumable -------------------------------------------

def test_chunks_persist_and_interrupted_run_resumes(tmp_path, tiny, monkeypatch):
    ds = _dataset(tmp_path / "d", 50, size=32)
    store = EmbeddingStore(tmp_path / "cache", "image", image_namespace(tiny))
    real = tiny.encode_pixels
    calls = {"n": 0}

    def flaky(pv):
        calls["n"] += 1
        if calls["n"] == 5:  # batches of 8, chunks of 16: two whole chunks are on disk
            raise KeyboardInterrupt
        return real(pv)

    monkeypatch.setattr(tiny, "encode_pixels", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_images(ds, tiny, store, progress=False, batch_size=8, chunk_size=16)
    monkeypatch.setattr(tiny, "encode_pixels", real)
    assert len(list(store.dir.glob("chunk-*.npz"))) == 2
    store2 = EmbeddingStore(tmp_path / "cache", "image", image_namespace(tiny))
    stats = EmbedStats()
    res = embed_images(ds, tiny, store2, progress=False, batch_size=8, chunk_size=16, stats=stats)
    assert (res.encoded, res.cached, stats.images) == (18, 32, 18)
    full = embed_images(ds, tiny, progress=False)
    np.testing.assert_allclose(res.embeddings, full.embeddings, rtol=1e-5, atol=1e-6)
    again = embed_images(ds, tiny, EmbeddingStore(tmp_path / "cache", "image", image_namespace(tiny)),
                         progress=False)
    assert (again.encoded, again.cached) == (0, 50)
    # a changed image is re-encoded alone; duplicated content is encoded once
    _face(63, 32).save(ds.reader.paths[3], "JPEG")
    ds.reader.paths[7].write_bytes(ds.reader.paths[3].read_bytes())
    changed = embed_images(ds, tiny, store2, progress=False)
    assert changed.encoded == 1 and changed.cached == 48
    np.testing.assert_array_equal(changed.embeddings[3], changed.embeddings[7])


def test_bad_images_are_dropped_in_place_and_the_result_can_be_a_memmap(tmp_path, tiny):
    ds = _dataset(tmp_path / "d", 30, size=32)
    good = embed_images(ds, tiny, progress=False)
    for i in (0, 11, 12, 29):
        ds.reader.paths[i].write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "emb.npy"
    res = embed_images(ds, tiny, progress=False, on_error="skip", num_workers=2, batch_size=4,
                       out_path=out)
    keep = [i for i in range(30) if i not in (0, 11, 12, 29)]
    assert res.indices.tolist() == keep and len(res.errors) == 4
    np.testing.assert_allclose(res.embeddings, good.embeddings[keep], rtol=1e-5, atol=1e-6)
    assert isinstance(res.embeddings, np.memmap)
    np.testing.assert_allclose(np.load(out)[:len(keep)], res.embeddings)


def test_gpu_decode_plumbing_with_a_stand_in_decoder(tmp_path, tiny, monkeypatch):
    """The GPU path (bytes to the device, decode there, resize there) run on the CPU with a
    PIL stand-in for torchvision's decode_jpeg: close to the reference, errors still named."""
    def fake_decoder(device):
        def decode(datas):
            return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                                     .copy()).permute(2, 0, 1) for d in datas]
        return decode

    monkeypatch.setattr(E, "_device_jpeg_decoder", fake_decoder)
    ds = _dataset(tmp_path / "d", 12, size=80)
    _face(5, 40).save(ds.reader.paths[4], "PNG")  # not a JPEG: decoded on the CPU
    ds.reader.paths[6].write_bytes(b"\xff\xd8\xff broken")
    ref = embed_images(ds, tiny, progress=False, on_error="skip", fast_decode=False)
    got = embed_images(ds, tiny, progress=False, on_error="skip", gpu_decode=True, batch_size=5)
    assert got.info["decode"] == "gpu_jpeg"
    assert got.indices.tolist() == ref.indices.tolist() == [i for i in range(12) if i != 6]
    assert [e["reason_key"] for e in got.errors] == [e["reason_key"] for e in ref.errors] == ["not_an_image"]
    cos = (ref.embeddings * got.embeddings).sum(1) / (np.linalg.norm(ref.embeddings, axis=1)
                                                      * np.linalg.norm(got.embeddings, axis=1))
    assert cos.min() >= 0.99
    np.testing.assert_allclose(got.embeddings[4], ref.embeddings[4], rtol=1e-4, atol=1e-5)  # CPU-decoded PNG


# -- memory does not grow with the dataset ----------------------------------------------------

def test_peak_memory_stays_flat(tmp_path, tiny, monkeypatch):
    """tracemalloc peak (numpy arrays and Python objects) while embedding 200 vs 2000 small
    images with a store, the tiny model's embeddings widened to 1024 dims so that holding them
    is what would show. Held in memory, the result costs dim*4 bytes per image and the rest
    (keys, store index, bookkeeping) well under 1 kB; written to a memmap (``out_path``), only
    that bookkeeping remains. The old implementation held every embedding 3-4 times (per-key
    dict, store, stack, astype): >= 12 kB per image here."""
    real = tiny.encode_pixels
    dim = 1024
    monkeypatch.setattr(tiny, "encode_pixels", lambda pv: np.tile(real(pv), (1, dim // 32)))
    embed_images(_dataset(tmp_path / "warm", 4, size=16), tiny, progress=False)  # imports, caches
    peaks = {}
    for n in (200, 2000):
        ds = _dataset(tmp_path / f"d{n}", n, size=16)
        for mode in ("array", "memmap"):
            store = EmbeddingStore(tmp_path / f"cache{n}{mode}", "image", image_namespace(tiny))
            out = tmp_path / f"emb{n}.npy" if mode == "memmap" else None
            tracemalloc.start()
            try:
                res = embed_images(ds, tiny, store, progress=False, batch_size=64, chunk_size=128,
                                   out_path=out)
                peaks[n, mode] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert res.encoded == n and res.embeddings.shape == (n, dim)
    growth = {m: (peaks[2000, m] - peaks[200, m]) / 1800 for m in ("array", "memmap")}
    assert growth["array"] <= dim * 4 + 1024, (peaks, growth)
    assert growth["memmap"] <= 1024, (peaks, growth)
    assert peaks[2000, "memmap"] < 4 * peaks[200, "memmap"], peaks  # 10x the images
