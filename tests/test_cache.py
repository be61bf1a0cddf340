"""The embedding cache: zero encoder calls on a rerun, exact invalidation, `clipfair cache`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clipfair.run.cache import EmbeddingStore, list_entries
from clipfair.cli import main
from clipfair.data import load_dataset
from clipfair.run.embed import EmbedStats
from clipfair.models import load_model
from clipfair.run.pipeline import evaluate
from clipfair.data.taxonomy import load_taxonomy


@pytest.fixture
def data(tmp_path, fairface_root):
    """A private copy of the synthetic FairFace layout (tests modify image bytes)."""
    root = tmp_path / "ff"
    shutil.copytree(fairface_root, root)
    return root


def run(root, model, cache, taxonomies=("fairface_gender",)):
    stats = EmbedStats()
    ds = load_dataset("fairface", root=str(root), split="val", limit=30)
    ev = evaluate(ds, model, [load_taxonomy(t) for t in taxonomies], cache_dir=cache, progress=False,
                  stats=stats, num_workers=0)
    return ev, stats


def test_rerun_makes_zero_encoder_calls_and_variants_encode_only_new_prompts(data, tiny_model_dir, tmp_path):
    model = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    cache = tmp_path / "cache"
    ev1, s1 = run(data, model, cache, ["clip_denigration"])
    assert (s1.images, s1.texts) == (30, 21)
    ev2, s2 = run(data, model, cache, ["clip_denigration"])
    assert (s2.images, s2.texts, s2.image_batches) == (0, 0, 0)
    assert ev2.metrics.equals(ev1.metrics)
    # the 'child' variant shares 21 prompts: only "a photo of a child." is new
    _, s3 = run(data, model, cache, ["clip_denigration_child"])
    assert (s3.images, s3.texts) == (0, 1)


def test_changed_image_bytes_reencode_exactly_those_images(data, tiny_model_dir, tmp_path):
    model = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    cache = tmp_path / "cache"
    ev1, _ = run(data, model, cache)
    for name in ("val/3.jpg", "val/7.jpg"):
        p = data / name
        Image.open(p).transpose(Image.FLIP_LEFT_RIGHT).save(p, "JPEG", quality=90)
    ev2, s2 = run(data, model, cache)
    assert s2.images == 2
    assert ev2.counts["images_from_cache"] == 28


def test_model_or_preprocessing_change_invalidates(data, tiny_model_dir, tmp_path):
    from clipfair.run.toy import make_tiny_clip

    cache = tmp_path / "cache"
    base = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    run(data, base, cache)
    other = load_model(name_or_path=str(make_tiny_clip(tmp_path / "m2", seed=1)), device="cpu", dtype="float32")
    assert other.fingerprint != base.fingerprint
    _, s = run(data, other, cache)
    assert s.images == 30 and s.texts == 2  # new weights: nothing reused, text neither
    # same weights, different preprocessing (crop size): images re-encoded, texts reused
    m3 = tmp_path / "m3"
    shutil.copytree(tiny_model_dir, m3)
    for f in ("preprocessor_config.json", "processor_config.json"):
        p = m3 / f
        if p.exists():
            d = json.loads(p.read_text())
            ip = d.get("image_processor", d)
            ip["do_center_crop"] = not ip.get("do_center_crop", True)
            p.write_text(json.dumps(d))
    pre = load_model(name_or_path=str(m3), device="cpu", dtype="float32")
    assert pre.fingerprint == base.fingerprint and pre.preprocess_fingerprint != base.preprocess_fingerprint
    _, s = run(data, pre, cache)
    assert s.images == 30 and s.texts == 0
    # and the original still hits its own entries
    _, s = run(data, base, cache)
    assert s.images == 0


def test_store_roundtrip_and_cache_command(tmp_path, capsys):
    store = EmbeddingStore(tmp_path, "image", {"model": "m"}, {"model_name": "demo-model"})
    keys = ["a", "b", "c"]
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.put(keys, emb)
    again = EmbeddingStore(tmp_path, "image", {"model": "m"}, {"model_name": "elsewhere"})  # same entry
    np.testing.assert_array_equal(again.get(["c", "a"]), emb[[2, 0]])
    assert again.missing(["a", "z"]) == ["z"]
    EmbeddingStore(tmp_path, "text", {"model": "other"}, {"model_name": "x"})
    assert main(["cache", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 entries" in out and "demo-model" in out
    assert main(["cache", "clear", "--dir", str(tmp_path), "--match", "demo-model"]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert [e.meta["model_name"] for e in list_entries(tmp_path)] == ["x"]
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert list_entries(tmp_path) == []
