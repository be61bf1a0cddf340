"""The open_clip backend against open_clip's own forward, on tiny random-weight models from a
custom model config, saved and loaded as a user would (a weights file + ``model.config_file``,
or a ``local-dir:`` folder in open_clip's hub layout).

Needs open_clip_torch and a working torchvision: ``scripts/test.sh`` runs these in
``.venv-openclip`` (``pytest -m open_clip``); in the core venv they are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

try:
    import open_clip
except Exception as e:  # noqa: BLE001 - not installed, or torchvision does not import with this torch
    pytest.skip(f"open_clip unavailable ({type(e).__name__}); run in .venv-openclip", allow_module_level=True)

from clipfair.data import load_dataset
from clipfair.run.embed import embed_images
from clipfair.models import ModelError, load_model
from clipfair.run.pipeline import evaluate
from clipfair.models.preprocess import ClipPreprocess
from clipfair.data.taxonomy import load_taxonomies
from clipfair.methods.zeroshot import class_embeddings, l2_normalize, zero_shot_logits

pytestmark = pytest.mark.open_clip

ATOL = 1e-5
CLASSES = ["man", "woman", "child", "animal"]
TEMPLATES = ["a photo of a {}.", "a picture of a {}, a person."]
TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def _build(folder: Path, name: str, extra: dict | None = None, seed: int = 0) -> dict[str, Path]:
    """A tiny open_clip model: its config JSON, a safetensors weights file, and a folder in the
    layout of open_clip's hub repos (open_clip_config.json + open_clip_model.safetensors, as
    open_clip's save_for_hf writes them; that helper itself also saves an HF tokenizer, which a
    CLIP-BPE model does not have)."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**TINY, **(extra or {})}
    cfg_file = folder / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))  # not the init value: a test notices if it is ignored
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-3.0)
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    hub_dir = folder / "saved"
    hub_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(hub_dir / "open_clip_model.safetensors"))
    save_config_for_hf(model, hub_dir / "open_clip_config.json", cfg)
    return {"config": cfg_file, "weights": weights, "dir": hub_dir}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("oc"), "clipfair-tiny-test")


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> dict[str, Path]:
    # (no "siglip" in the name: open_clip would then fetch the SigLIP SentencePiece vocabulary)
    return _build(tmp_path_factory.mktemp("ocs"), "clipfair-tiny-bias-test", {"init_logit_bias": -10.0}, seed=1)


def _load(files: dict[str, Path], name: str, **kw):
    return load_model(loader="open_clip", name=name, pretrained=str(files["weights"]),
                      config_file=str(files["config"]), device="cpu", dtype="float32", **kw)


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    # (40, 44): resized to 32 x 35, so the center crop's offset is 1.5 -> torchvision rounds it to 2
    return [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(40, 44), (52, 40), (33, 33), (30, 64)]]


def _taxonomy(tmp_path: Path):
    spec = {"name": "oc_golden", "templates": TEMPLATES, "classes": [{"label": c} for c in CLASSES]}
    path = tmp_path / "oc_golden.yaml"
    path.write_text(json.dumps(spec))
    return load_taxonomies([str(path)])[0]


def _reference(name: str, weights: Path):
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=str(weights))
    return model.eval(), transform, open_clip.get_tokenizer(name)


def test_embeddings_and_zero_shot_logits_equal_open_clips_own(tiny, tmp_path):
    name = "clipfair-tiny-test"
    m = _load(tiny, name)
    assert m.family == "open_clip" and m.scoring.rule == "softmax"
    assert m.scoring.logit_scale == pytest.approx(20.0, rel=1e-6)
    ref, transform, tok = _reference(name, tiny["weights"])
    images = _images()
    with torch.no_grad():
        ref_img = ref.encode_image(torch.stack([transform(im) for im in images])).numpy()
        ref_txt = ref.encode_text(tok(CLASSES)).numpy()
        classifier = open_clip.build_zero_shot_classifier(ref, tok, CLASSES, TEMPLATES, device="cpu")
        ref_logits = (ref.logit_scale.exp() * torch.from_numpy(l2_normalize(ref_img)) @ classifier).numpy()
    img = m.encode_images(images)
    np.testing.assert_allclose(img, ref_img, atol=ATOL)
    np.testing.assert_allclose(m.encode_texts(CLASSES), ref_txt, atol=ATOL)
    ce = class_embeddings(_taxonomy(tmp_path), m.encode_texts)
    logits = zero_shot_logits(img, ce, m.scoring.logit_scale, m.scoring.logit_bias)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL * 20)


def test_a_local_dir_in_open_clips_hub_layout_loads_the_same_model(tiny):
    a = _load(tiny, "clipfair-tiny-test")
    b = load_model(loader="open_clip", name=f"local-dir:{tiny['dir']}", device="cpu", dtype="float32")
    assert a.fingerprint == b.fingerprint  # what the weights are, not where they came from
    np.testing.assert_allclose(b.encode_images(_images()), a.encode_images(_images()), atol=ATOL)
    np.testing.assert_allclose(b.encode_texts(CLASSES), a.encode_texts(CLASSES), atol=ATOL)


def test_siglip_style_open_clip_model_is_scored_with_its_sigmoid_and_bias(tiny_siglip):
    name = "clipfair-tiny-bias-test"
    m = _load(tiny_siglip, name)
    assert m.scoring.rule == "sigmoid" and m.scoring.logit_bias == pytest.approx(-3.0)
    ref, transform, tok = _reference(name, tiny_siglip["weights"])
    images = _images()
    with torch.no_grad():
        img_f, txt_f, scale, bias = ref(torch.stack([transform(im) for im in images]), tok(CLASSES))
        ref_logits = (scale * img_f @ txt_f.T + bias).numpy()
    cos = l2_normalize(m.encode_images(images)) @ l2_normalize(m.encode_texts(CLASSES)).T
    np.testing.assert_allclose(m.scoring.logits(cos), ref_logits, atol=ATOL * 20)


def test_fast_uint8_path_reproduces_open_clips_transform(tiny, fairface_root):
    m = _load(tiny, "clipfair-tiny-test")
    spec = m.preprocess_spec()
    assert spec is not None and spec.shortest_edge == 32 and spec.crop_hw == (32, 32)
    images = _images()
    assert float((spec(images) - m.preprocess(images)).abs().max()) < 1e-4
    # torchvision rounds the crop offset (1.5 -> 2); transformers' floor would be a pixel off
    floor = ClipPreprocess(**{**spec.__dict__, "crop_offset": "floor"})
    assert float((floor(images[:1]) - m.preprocess(images[:1])).abs().max()) > 1e-2
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=6)
    fast = embed_images(ds, m, progress=False, fast_preprocess=True, fast_decode=False)
    slow = embed_images(ds, m, progress=False, fast_preprocess=False)
    assert fast.info["preprocess"] == "fast_uint8" and slow.info["preprocess"] == "processor"
    np.testing.assert_allclose(fast.embeddings, slow.embeddings, atol=ATOL)


def test_token_count_and_context_length_follow_open_clips_tokenizer(tiny):
    m = _load(tiny, "clipfair-tiny-test")
    tok = open_clip.get_tokenizer("clipfair-tiny-test")
    text = "a photo of a Southeast Asian woman."
    ids = tok([text])[0]
    assert m.context_length == 24
    assert m.token_count(text) == int((ids != 0).sum())
    with pytest.raises(ModelError, match="context is 24"):
        m.encode_texts(["word " * 30])


def test_text_tower_in_float32_when_the_image_tower_runs_in_bfloat16(tiny):
    m32 = _load(tiny, "clipfair-tiny-test")
    m16 = load_model(loader="open_clip", name="clipfair-tiny-test", pretrained=str(tiny["weights"]),
                     config_file=str(tiny["config"]), device="cpu", dtype="bfloat16")
    assert next(m16.model.visual.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(m16.encode_texts(CLASSES), m32.encode_texts(CLASSES), atol=1e-6)
    assert m16.describe()["text"]["dtype"] == "float32"


def test_open_clip_model_runs_the_whole_evaluation(tiny, fairface_root):
    m = _load(tiny, "clipfair-tiny-test")
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=8)
    ev = evaluate(ds, m, load_taxonomies(["fairface_gender"]), progress=False)
    p = ev.predictions
    assert len(p) == 8 and p["logit"].notna().all() and (p["score"] >= 0.5 - 1e-9).all()
    d = m.describe()
    assert d["loader"] == "open_clip" and d["scoring"]["rule"] == "softmax" and d["family"] == "open_clip"
    json.dumps(d)


def test_unknown_names_and_folders_are_one_line_errors(tmp_path, tiny):
    with pytest.raises(ModelError, match="unknown open_clip model 'ViT-Nope'"):
        load_model(loader="open_clip", name="ViT-Nope", device="cpu")
    with pytest.raises(ModelError, match="is a file, not a folder"):
        load_model(loader="open_clip", name=f"local-dir:{tiny['weights']}", device="cpu")
    with pytest.raises(ModelError, match="no open_clip_config.json"):
        load_model(loader="open_clip", name=f"local-dir:{tmp_path}", device="cpu")


@pytest.mark.slow
def test_cli_runs_an_open_clip_model_as_the_issue_spells_it(tmp_path, tiny, fairface_root):
    import subprocess
    import sys

    import pandas as pd

    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from clipfair.cli import main; sys.exit(main())", "run",
           "model.loader=open_clip", "model.name=clipfair-tiny-test", f"model.pretrained={tiny['weights']}",
           f"model.config_file={tiny['config']}", "model.device=cpu", "dataset=fairface",
           f"dataset.root={fairface_root}", "dataset.limit=8", f"hydra.run.dir={out}", "progress=false",
           "taxonomies=[fairface_gender]", f"cache.dir={tmp_path / 'cache'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["loader"] == "open_clip" and run["model"]["family"] == "open_clip"
    assert run["model"]["scoring"]["rule"] == "softmax" and run["model"]["logit_scale"] == pytest.approx(20.0)
    assert run["embed_images"]["preprocess"] == "fast_uint8"
    p = pd.read_parquet(out / "predictions.parquet")
    assert len(p) == 8 and p["logit"].notna().all()
