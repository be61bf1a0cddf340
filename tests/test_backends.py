"""Model families through the backend contract (transformers: CLIP, SigLIP, SigLIP 2).

Golden equivalence: on tiny random-weight checkpoints saved with ``save_pretrained`` and loaded
through the user's path (``load_model(name_or_path=folder)``), clipfair's image and text
embeddings and zero-shot logits equal the library's own forward in float32:
``model(**processor(text=..., images=..., padding="max_length")).logits_per_image``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipfair.data import load_dataset
from clipfair.run.embed import embed_images, text_namespace
from clipfair.models import ModelError, TextSettings, load_model
from clipfair.run.pipeline import evaluate
from clipfair.data.taxonomy import load_taxonomies
from clipfair.methods.zeroshot import class_embeddings, l2_normalize, zero_shot_logits

from tiny_families import (make_tiny_align, make_tiny_altclip, make_tiny_bert, make_tiny_siglip, make_tiny_siglip2,
                           make_tiny_vit)

PROMPTS = ["a photo of a man.", "a photo of a woman.", "a photo of a child wearing a hat.", "an animal"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny")


@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory) -> Path:
    return make_tiny_siglip2(tmp_path_factory.mktemp("siglip2") / "tiny")


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    sizes = [(40, 52), (33, 33), (64, 30), (31, 45)]
    return [Image.fromarray(rng.randint(0, 256, (*sizes[i % 4], 3), dtype=np.uint8)) for i in range(n)]


def _golden_taxonomy(tmp_path: Path):
    """One template '{}' and one prompt per class: class embedding = the prompt's embedding."""
    spec = {"name": "golden", "templates": ["{}"],
            "classes": [{"label": f"c{i}", "prompts": [p]} for i, p in enumerate(PROMPTS)]}
    path = tmp_path / "golden.yaml"
    path.write_text(json.dumps(spec))
    return load_taxonomies([str(path)])[0]


def _reference(folder: Path, images, text_inputs=("input_ids", "attention_mask"), max_length: int | None = None,
               prompts: list[str] = PROMPTS):
    """The library's own forward: processor(text, images, padding="max_length") -> model(**inputs)."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    proc = AutoProcessor.from_pretrained(folder)
    kw = {"max_length": max_length} if max_length else {}
    inputs = proc(text=prompts, images=images, padding="max_length", return_tensors="pt", **kw)
    keep = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") or k in text_inputs}
    with torch.no_grad():
        out = model(**keep)
    return out, model, inputs


def _assert_golden(model, folder: Path, tmp_path: Path, **ref_kw) -> None:
    images = _images()
    out, _, _ = _reference(folder, images, max_length=model.context_length, **ref_kw)
    img = model.encode_images(images)
    txt = model.encode_texts(PROMPTS)
    np.testing.assert_allclose(l2_normalize(img), out.image_embeds.numpy(), atol=ATOL)
    np.testing.assert_allclose(l2_normalize(txt), out.text_embeds.numpy(), atol=ATOL)
    tax = _golden_taxonomy(tmp_path)
    ce = class_embeddings(tax, model.encode_texts)
    s = model.scoring
    logits = zero_shot_logits(img, ce, s.logit_scale, s.logit_bias)
    np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=ATOL * max(1.0, s.logit_scale))


# -- golden equivalence per family ----------------------------------------------------------------

def test_clip_matches_transformers_forward(tiny_model_dir, tmp_path):
    model = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    assert model.family == "clip" and model.scoring.rule == "softmax" and model.scoring.logit_bias == 0.0
    _assert_golden(model, tiny_model_dir, tmp_path)


def test_siglip_matches_transformers_forward(siglip_dir, tmp_path):
    model = load_model(name_or_path=str(siglip_dir), device="cpu", dtype="float32")
    assert model.family == "siglip"
    assert model.scoring.rule == "sigmoid"
    # scale and bias come from the checkpoint (tiny_families sets 10 and -2.5)
    assert model.scoring.logit_scale == pytest.approx(10.0, rel=1e-6)
    assert model.scoring.logit_bias == pytest.approx(-2.5, rel=1e-6)
    assert model.text_settings == TextSettings("max_length", attention_mask=False, lowercase=False)
    _, _, inputs = _reference(siglip_dir, _images(), max_length=model.context_length)
    assert "attention_mask" not in inputs  # the hub's SigLIP tokenizer config: input_ids only
    _assert_golden(model, siglip_dir, tmp_path)


def test_siglip_text_padded_to_the_longest_prompt_would_fail_the_golden_test(siglip_dir, tmp_path):
    """The golden comparison notices SigLIP text padded to the longest prompt (the old
    behaviour) and SigLIP text with an attention mask: both change the embeddings."""
    model = load_model(name_or_path=str(siglip_dir), device="cpu", dtype="float32")
    out, _, _ = _reference(siglip_dir, _images(), max_length=model.context_length)
    ref = out.text_embeds.numpy()
    np.testing.assert_allclose(l2_normalize(model.encode_texts(PROMPTS)), ref, atol=ATOL)
    # full-length padding with an attention mask (what a mask-returning tokenizer would give)
    from clipfair.models import features

    ids = model.tokenize(PROMPTS)["input_ids"]
    assert ids.shape[1] == model.context_length
    with torch.no_grad():
        masked = features(model.model.get_text_features(input_ids=ids, attention_mask=(ids != 1).long()))
    assert not np.allclose(l2_normalize(masked.numpy()), ref, atol=1e-3)
    for wrong in (TextSettings("longest", attention_mask=False), TextSettings("longest", attention_mask=True)):
        model.text = wrong
        assert model.tokenize(PROMPTS)["input_ids"].shape[1] < model.context_length
        got = l2_normalize(model.encode_texts(PROMPTS))
        assert not np.allclose(got, ref, atol=1e-3), wrong
        with pytest.raises(AssertionError):
            _assert_golden(model, siglip_dir, tmp_path)


def test_siglip_fast_uint8_path_reproduces_its_processor(siglip_dir, fairface_root):
    model = load_model(name_or_path=str(siglip_dir), device="cpu", dtype="float32")
    spec = model.preprocess_spec()
    assert spec is not None and spec.resize_hw == (32, 32) and spec.crop_hw is None
    images = _images()
    assert float((spec(images) - model.preprocess(images)).abs().max()) < 1e-4
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=8)
    fast = embed_images(ds, model, progress=False, fast_preprocess=True, fast_decode=False)
    slow = embed_images(ds, model, progress=False, fast_preprocess=False)
    assert fast.info["preprocess"] == "fast_uint8" and slow.info["preprocess"] == "processor"
    np.testing.assert_allclose(fast.embeddings, slow.embeddings, atol=ATOL)


def test_siglip2_naflex_matches_transformers_forward(siglip2_dir, tmp_path):
    model = load_model(name_or_path=str(siglip2_dir), device="cpu", dtype="float32")
    assert model.family == "siglip2" and model.scoring.rule == "sigmoid"
    assert model.text_settings.lowercase and not model.text_settings.attention_mask
    assert model.preprocess_spec() is None  # patch sequences: the processor is used
    # Siglip2Tokenizer also returns an attention mask; SigLIP 2's text tower was trained without
    # one (big_vision), so the reference is the library's forward on the input ids alone, of the
    # prompts canonicalised as big_vision / open_clip do (transformers' tokenizer does not)
    from clipfair.models.base import canonicalize_text

    _assert_golden(model, siglip2_dir, tmp_path, text_inputs=("input_ids",),
                   prompts=[canonicalize_text(p) for p in PROMPTS])


def test_siglip2_naflex_patches_go_through_the_embedding_pipeline(siglip2_dir, fairface_root):
    model = load_model(name_or_path=str(siglip2_dir), device="cpu", dtype="float32")
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=6)
    emb = embed_images(ds, model, progress=False, batch_size=4)
    assert emb.info["preprocess"] == "processor"
    direct = model.encode_images([ds.load_image(i) for i in range(len(ds))])
    np.testing.assert_allclose(emb.embeddings, direct, atol=ATOL)


@pytest.mark.parametrize("make, family", [(make_tiny_altclip, "altclip"), (make_tiny_align, "align")])
def test_altclip_and_align_match_transformers_forward(tmp_path, make, family):
    """[CLS]-pooling families: CLIP's text settings; ALIGN's scale is 1/temperature."""
    folder = make(tmp_path / family)
    model = load_model(name_or_path=str(folder), device="cpu", dtype="float32")
    assert model.family == family and model.scoring.rule == "softmax"
    assert model.scoring.logit_scale == pytest.approx(20.0, rel=1e-5)  # set in tiny_families
    if family == "align":  # EfficientNet rescales to [-1, 1]: not the fast path's arithmetic
        assert model.preprocess_spec() is None
    _assert_golden(model, folder, tmp_path)


# -- scores, run.json, cache keys -----------------------------------------------------------------

def test_predictions_carry_the_family_probability_and_the_raw_logit(siglip_dir, tiny_model_dir, fairface_root):
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=10)
    taxes = load_taxonomies(["fairface_gender"])
    for folder, rule in ((siglip_dir, "sigmoid"), (tiny_model_dir, "softmax")):
        model = load_model(name_or_path=str(folder), device="cpu", dtype="float32")
        p = evaluate(ds, model, taxes, progress=False).predictions
        assert {"score", "logit"} <= set(p.columns)
        if rule == "sigmoid":  # each class scored on its own: score = sigmoid(logit)
            np.testing.assert_allclose(p["score"], 1 / (1 + np.exp(-p["logit"])), rtol=1e-6)
        else:  # softmax over the two classes: the winner's probability is >= 1/2 and < sigmoid(gap)
            assert (p["score"] >= 0.5 - 1e-9).all()
            assert not np.allclose(p["score"], 1 / (1 + np.exp(-p["logit"])))


def test_describe_records_family_scoring_and_text_settings(siglip_dir):
    d = load_model(name_or_path=str(siglip_dir), device="cpu", dtype="float32").describe()
    assert d["family"] == "siglip" and d["scoring"]["rule"] == "sigmoid"
    assert d["scoring"]["logit_bias"] == pytest.approx(-2.5) and "sigmoid(10·cos - 2.5)" == d["scoring"]["formula"]
    assert d["text"] == {"padding": "max_length", "attention_mask": False, "lowercase": False, "canonicalize": False,
                         "context_length": 32, "dtype": "float32"}
    json.dumps(d)  # run.json-serialisable


def test_text_tower_runs_in_float32_when_images_run_in_bfloat16(tiny_model_dir):
    m32 = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    m16 = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert m16.text_dtype == torch.float32 and m16.dtype == torch.bfloat16
    assert next(m16.model.vision_model.parameters()).dtype == torch.bfloat16
    assert next(m16.model.text_model.parameters()).dtype == torch.float32
    np.testing.assert_allclose(m16.encode_texts(PROMPTS), m32.encode_texts(PROMPTS), atol=1e-6)
    img = _images()
    diff = np.abs(m16.encode_images(img) - m32.encode_images(img)).max()
    assert 0 < diff < 0.1  # the image tower did run in bfloat16
    # the text cache key names the text tower's precision: float32 either way
    assert text_namespace(m16)["dtype"] == text_namespace(m32)["dtype"] == "float32"
    assert m16.describe()["text"]["dtype"] == "float32" and m16.describe()["dtype"] == "bfloat16"


def test_clip_text_cache_key_is_unchanged_and_siglip_key_includes_its_settings(tiny_model_dir, siglip_dir):
    """CLIP's text cache key is still the vocabulary hash alone (caches made before stay valid);
    a family with other text settings gets them in its key."""
    import hashlib

    clip = load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32")
    vocab = sorted(clip.tokenizer.get_vocab().items())
    assert clip.text_fingerprint == hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
    sig = load_model(name_or_path=str(siglip_dir), device="cpu", dtype="float32")
    before = sig.text_fingerprint
    sig.text = TextSettings("longest", True, False)
    assert sig.text_fingerprint != before


# -- refused checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("make, kind", [(make_tiny_bert, "bert"), (make_tiny_vit, "vit")])
def test_a_checkpoint_that_is_not_a_contrastive_image_text_model_is_refused(tmp_path, make, kind):
    folder = make(tmp_path / kind)
    with pytest.raises(ModelError) as e:
        load_model(name_or_path=str(folder), device="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"model_type '{kind}'" in msg and "supported: clip" in msg and "siglip2" in msg and "align" in msg
    assert "model.allow_unknown_family=true" in msg


def test_allow_unknown_family_lets_a_user_try_and_is_recorded(tmp_path, tiny_model_dir):
    folder = make_tiny_bert(tmp_path / "bert")
    # past the family check, the BERT folder still is not an image-text model: a different,
    # still one-line error
    with pytest.raises(ModelError) as e:
        load_model(name_or_path=str(folder), device="cpu", allow_unknown_family=True)
    assert "supported:" not in str(e.value) and "preprocessor_config.json" in str(e.value)
    assert "\n" not in str(e.value)
    # a known family with the flag is loaded as usual, not marked
    m = load_model(name_or_path=str(tiny_model_dir), device="cpu", allow_unknown_family=True)
    assert "allow_unknown_family" not in m.describe()


def test_unknown_family_override_is_recorded_in_describe(tmp_path, tiny_model_dir, monkeypatch):
    """A model_type outside the table, tried with the override: CLIP's settings, recorded."""
    from clipfair.models import hf

    monkeypatch.setattr(hf, "FAMILIES", tuple(f for f in hf.FAMILIES if f is not hf.CLIP))  # CLIP "unknown"
    with pytest.raises(ModelError, match="model_type 'clip'"):
        load_model(name_or_path=str(tiny_model_dir), device="cpu")
    d = load_model(name_or_path=str(tiny_model_dir), device="cpu", allow_unknown_family=True).describe()
    assert d["allow_unknown_family"] is True and d["family"] == "clip" and d["model_type"] == "clip"


def test_a_model_path_that_is_a_file_says_so(tmp_path, tiny_model_dir):
    f = tmp_path / "model.safetensors"
    shutil.copy(tiny_model_dir / "model.safetensors", f)
    with pytest.raises(ModelError) as e:
        load_model(name_or_path=str(f), device="cpu")
    assert "is a file, not a folder" in str(e.value) and "does not exist" not in str(e.value)


def test_scoring_rules_against_a_hand_computation():
    from clipfair.models import Scoring

    cos = np.array([[0.2, -0.1, 0.05]], dtype=np.float32)
    soft, sig = Scoring("softmax", 20.0), Scoring("sigmoid", 10.0, -3.0)
    z = 20.0 * cos[0]
    np.testing.assert_allclose(soft.probabilities(soft.logits(cos))[0], np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    np.testing.assert_allclose(sig.probabilities(sig.logits(cos))[0],
                               [1 / (1 + math.exp(-(10 * c - 3))) for c in cos[0]], rtol=1e-6)
    with pytest.raises(ValueError):
        Scoring("argmax", 1.0)


@pytest.mark.slow
def test_cli_run_on_a_siglip_checkpoint_records_family_and_scoring(tmp_path, siglip_dir, fairface_root):
    import subprocess
    import sys

    import pandas as pd

    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from clipfair.cli import main; sys.exit(main())", "run",
           f"model=siglip_so400m", f"model.name_or_path={siglip_dir}", "model.device=cpu", "dataset=fairface",
           f"dataset.root={fairface_root}", "dataset.limit=8", f"hydra.run.dir={out}", "progress=false",
           "taxonomies=[fairface_gender]", f"cache.dir={tmp_path / 'cache'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["family"] == "siglip" and run["model"]["scoring"]["rule"] == "sigmoid"
    assert run["model"]["text"]["padding"] == "max_length"
    p = pd.read_parquet(out / "predictions.parquet")
    np.testing.assert_allclose(p["score"], 1 / (1 + np.exp(-p["logit"])), rtol=1e-6)
    assert "siglip" in (out / "summary.md").read_text()


def test_model_configs_compose_for_every_family():
    from hydra import compose, initialize_config_module

    from clipfair.cli import register_resolvers

    register_resolvers()
    want = {"siglip_so400m": ("hf", "google/siglip-so400m-patch14-384", None),
            "siglip2_b16": ("hf", "google/siglip2-base-patch16-224", None),
            "metaclip_b32": ("hf", "facebook/metaclip-b32-400m", None),
            "openclip_vit_b32_laion2b": ("open_clip", None, ("ViT-B-32", "laion2b_s34b_b79k")),
            "openclip_vit_l14_datacomp": ("open_clip", None, ("ViT-L-14", "datacomp_xl_s13b_b90k"))}
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        for name, (loader, path, oc) in want.items():
            m = compose(config_name="config", overrides=[f"model={name}"]).model
            assert m.loader == loader and m.name_or_path == path and m.allow_unknown_family is False
            if oc:
                assert (m.name, m.pretrained) == oc
        # the spelling from the default config: model.loader=open_clip model.name=... model.pretrained=...
        from omegaconf import OmegaConf

        from clipfair.cli import _require_model
        from clipfair.run.schema import ConfigError, validate

        over = ["model.loader=open_clip", "model.name=ViT-B-32", "model.pretrained=laion2b_s34b_b79k"]
        cfg = compose(config_name="config", overrides=over)
        m = cfg.model
        assert (m.loader, m.name, m.pretrained) == ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
        plain = OmegaConf.to_container(cfg, resolve=True)
        validate(plain)  # the schema takes every loader's keys in the shared model group
        # not the toy model on a real dataset: the toy guard does not apply to another loader
        _require_model({**plain, "dataset": {"name": "fairface", "root": "/data/fairface"}}, over)
        for name in want:
            validate(OmegaConf.to_container(compose(config_name="config", overrides=[f"model={name}"]), resolve=True))
        bad = OmegaConf.to_container(compose(config_name="config", overrides=["+model.pretraind=x"]), resolve=True)
        with pytest.raises(ConfigError, match="did you mean pretrained"):
            validate(bad)


def test_loader_keys_that_do_not_apply_are_ignored_with_a_warning(tiny_model_dir, caplog):
    m = load_model(loader="hf", name_or_path=str(tiny_model_dir), device="cpu", name="ViT-B-32",
                   pretrained=None, config_file=None)
    assert m.family == "clip"
    assert "model.name='ViT-B-32' does not apply to model.loader=hf" in caplog.text
    with pytest.raises(ModelError, match="needs model.name"):
        load_model(loader="open_clip", name_or_path=str(tiny_model_dir))
