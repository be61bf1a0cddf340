"""Tiny offline CLIP models, synthetic FairFace-layout faces and the shipped demo assets."""

from __future__ import annotations

import hashlib
import json
import random
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipfair.data import synthetic
from clipfair.run import toy
from clipfair.data.attributes import AGE_BINS, GENDERS, RACES
from clipfair.models import toy as mtoy

DEMO = Path(str(files("clipfair") / "demo"))


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_files_are_clip_format(tmp_path):
    mtoy.build_tokenizer(tmp_path, ["a photo of a Southeast Asian woman."])
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    alphabet = list(mtoy.bytes_to_unicode().values())
    assert len(alphabet) == 256
    first = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])[:512]]
    assert first == alphabet + [c + "</w>" for c in alphabet]
    assert vocab["<|endoftext|>"] == len(vocab) - 1 and vocab["<|startoftext|>"] == len(vocab) - 2
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    for line in merges[1:]:
        a, b = line.split(" ")
        assert a + b in vocab


def test_tokenizer_corpus_words_are_single_tokens_and_unseen_text_falls_back(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer

    corpus = ["a photo of a Southeast Asian woman.", "A photo of an Orangutan", "more than 70 suspicious"]
    tok = mtoy.build_tokenizer(tmp_path, corpus)
    assert isinstance(tok, CLIPTokenizer)
    for word in ["a", "photo", "of", "southeast", "Asian", "WOMAN", "orangutan", "an", "suspicious", "7", "0"]:
        assert tok.tokenize(word) == [word.lower() + "</w>"], word
    text = "Zebra quux 42!"
    pieces = tok.tokenize(text)
    assert len(pieces) > 4 and tok.unk_token not in pieces
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "zebraquux42!"
    # the same files load through CLIPTokenizer and AutoTokenizer with identical ids
    for loaded in (CLIPTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded("a photo of an orangutan.")["input_ids"] == tok("a photo of an orangutan.")["input_ids"]


def test_default_corpus_covers_all_taxonomy_prompts(tmp_path):
    tok = mtoy.build_tokenizer(tmp_path, toy.default_corpus())
    words = {w for text in toy.default_corpus() for w in mtoy._pretokenize(text)}
    assert {"photo", "southeast", "gorilla", "child", "animal", "woman"} <= words
    for w in words:
        assert len(tok.tokenize(w)) == 1, w


def test_learn_bpe_respects_n_merges():
    assert len(mtoy.learn_bpe({"photo": 3, "phone": 1}, n_merges=2)) == 2
    full = mtoy.learn_bpe({"photo": 3, "phone": 1})
    assert full[0] == ("h", "o")  # 'ph' and 'ho' both occur 4 times: the smaller pair wins
    assert {"photo</w>", "phone</w>"} <= {a + b for a, b in full}
    assert len(full) == len(set(full)) <= len("photo") + len("phone")


# ------------------------------------------------------------------ configs and models


def test_architectures_have_the_real_shapes():
    b32 = mtoy.arch_config("ViT-B/32")
    assert (b32.vision_config.hidden_size, b32.vision_config.num_hidden_layers, b32.vision_config.patch_size,
            b32.vision_config.image_size) == (768, 12, 32, 224)
    assert (b32.text_config.hidden_size, b32.text_config.num_hidden_layers, b32.projection_dim) == (512, 12, 512)
    l14 = mtoy.arch_config("ViT-L/14")
    v = l14.vision_config
    shape = (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size)
    assert shape == (1024, 24, 16, 14, 224)
    assert (l14.text_config.hidden_size, l14.text_config.num_hidden_layers, l14.projection_dim) == (768, 12, 768)
    assert "tiny" in mtoy.ARCHITECTURES
    with pytest.raises(KeyError):
        mtoy.arch_config("ViT-Z/99")


def test_tiny_clip_config_overrides():
    cfg = mtoy.tiny_clip_config(100, image_size=48, patch_size=16, hidden=32, layers=1, heads=4, projection_dim=8,
                               max_position_embeddings=20, logit_scale_init_value=1.0)
    assert cfg.text_config.vocab_size == 100 and cfg.text_config.max_position_embeddings == 20
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (48, 16)
    assert cfg.vision_config.hidden_size == cfg.text_config.hidden_size == 32
    assert cfg.vision_config.num_hidden_layers == 1 and cfg.text_config.num_attention_heads == 4
    assert cfg.projection_dim == 8 and cfg.logit_scale_init_value == 1.0


def _embed(path):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    img = Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3) % 251)
    with torch.no_grad():
        px = proc(images=[img], return_tensors="pt")["pixel_values"]
        enc = proc.tokenizer(["a photo of a woman.", "a photo of a zebra."], padding=True, return_tensors="pt")
        ie = _features(model.get_image_features(pixel_values=px))
        te = _features(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    return model, proc, px, ie, te


def test_make_tiny_clip_loads_like_a_hub_checkpoint_and_is_deterministic(tmp_path):
    from transformers import CLIPModel

    a = toy.make_tiny_clip(tmp_path / "a", seed=0)
    b = toy.make_tiny_clip(tmp_path / "b", seed=0)
    c = toy.make_tiny_clip(tmp_path / "c", seed=1)
    names = {p.name for p in a.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    model, proc, px, ie_a, te_a = _embed(a)
    assert isinstance(model, CLIPModel)
    assert tuple(px.shape) == (1, 3, 32, 32)
    assert ie_a.shape == (1, 32) and te_a.shape == (2, 32)
    assert model.config.text_config.eos_token_id == proc.tokenizer.eos_token_id
    assert proc.tokenizer.model_max_length == model.config.text_config.max_position_embeddings
    _, _, _, ie_b, te_b = _embed(b)
    _, _, _, ie_c, _ = _embed(c)
    assert torch.equal(ie_a, ie_b) and torch.equal(te_a, te_b)
    assert not torch.allclose(ie_a, ie_c)


def test_make_tiny_clip_custom_image_size(tmp_path):
    from transformers import AutoProcessor

    p = toy.make_tiny_clip(tmp_path, seed=0, image_size=16)
    proc = AutoProcessor.from_pretrained(p)
    px = proc(images=[Image.new("RGB", (64, 40))], return_tensors="pt")["pixel_values"]
    assert tuple(px.shape) == (1, 3, 16, 16)


# ------------------------------------------------------------------ captions


def test_toy_captions_use_the_taxonomy_prompts():
    texts = {t for name in ("fairface_race", "fairface_gender", "fairface_age", "clip_denigration",
                            "clip_denigration_child") for ts in toy.taxonomy_classes(name)[1] for t in ts}
    assert set(toy.all_toy_captions()) <= texts
    assert toy.caption_for("race_gender", "East Asian", "Female", "20-29") == "a photo of an East Asian woman."
    assert toy.caption_for("race", "Latino_Hispanic", "Male", "20-29") == "a photo of a Latino person."
    assert toy.caption_for("age", "White", "Male", "more than 70") == "a photo of a person aged more than 70."


def test_planted_biases_are_switchable():
    rng = random.Random(0)
    kids = [toy.toy_caption("White", "Male", "3-9", rng) for _ in range(2000)]
    share = kids.count(toy.ANIMAL_CAPTION) / len(kids)
    assert 0.3 < share < 0.4
    assert toy.CHILD_CAPTION in kids
    off = {toy.toy_caption("White", "Male", "0-2", rng, child_animal_p=0) for _ in range(500)}
    adults = {toy.toy_caption("White", "Male", "30-39", rng, child_animal_p=1) for _ in range(200)}
    assert toy.ANIMAL_CAPTION not in off | adults
    assert {toy.toy_caption("White", "Male", "0-2", rng, child_animal_p=1) for _ in range(50)} == {toy.ANIMAL_CAPTION}

    def genders(race, gender, p):
        caps = [toy.toy_caption(race, gender, "30-39", rng, gender_swap_p=p) for _ in range(1000)]
        return {w for c in caps for w in ("man", "woman") if c.endswith(f" {w}.")}

    assert genders("Southeast Asian", "Female", 0.0) == {"woman"}
    assert genders("Southeast Asian", "Female", 1.0) == {"man"}
    assert genders("Southeast Asian", "Female", 0.3) == {"man", "woman"}
    assert genders("East Asian", "Female", 1.0) == {"woman"}
    assert genders("Southeast Asian", "Male", {"Female": 1.0}) == {"man"}
    assert genders("Southeast Asian", "Female", {"Female": 1.0}) == {"man"}


# ------------------------------------------------------------------ synthetic faces


def test_render_face_size_and_attribute_cues():
    g = np.random.default_rng(0)
    img = synthetic.render_face("Black", "Female", "20-29", g, size=48)
    assert img.size == (48, 48) and img.mode == "RGB"
    corner = lambda im: np.asarray(im)[:6, :6].reshape(-1, 3).mean(0)  # background  # noqa: E731
    white = [corner(synthetic.render_face("White", "Male", "20-29", g)) for _ in range(5)]
    black = [corner(synthetic.render_face("Black", "Male", "20-29", g)) for _ in range(5)]
    # background hue differs by race (White: blue, Black: orange)
    assert np.mean([c[2] - c[0] for c in white]) > 30 > np.mean([c[2] - c[0] for c in black])
    with pytest.raises(ValueError):
        synthetic.render_face("Martian", "Male", "20-29", g)


def test_write_fairface_layout(tmp_path):
    train, val = synthetic.write_fairface_layout(tmp_path / "a", 20, 12, seed=3, size=40)
    for split, df, n in (("train", train, 20), ("val", val, 12)):
        csv = tmp_path / "a" / f"fairface_label_{split}.csv"
        assert csv.read_text().splitlines()[0] == "file,age,gender,race,service_test"
        back = pd.read_csv(csv)
        assert list(back.columns) == ["file", "age", "gender", "race", "service_test"]
        assert back["file"].tolist() == [f"{split}/{i}.jpg" for i in range(1, n + 1)]
        assert back["service_test"].dtype == bool
        assert set(back["race"]) <= set(RACES) and set(back["gender"]) <= set(GENDERS)
        assert set(back["age"]) <= set(AGE_BINS)
        pd.testing.assert_frame_equal(back, df.reset_index(drop=True))
        for f in back["file"]:
            with Image.open(tmp_path / "a" / f) as im:
                assert im.format == "JPEG" and im.size == (40, 40) and im.mode == "RGB"
    assert set(val["age"]) == set(AGE_BINS) and set(val["race"]) == set(RACES) and set(val["gender"]) == set(GENDERS)
    # deterministic given the seed, different for another seed
    synthetic.write_fairface_layout(tmp_path / "b", 20, 12, seed=3, size=40)
    synthetic.write_fairface_layout(tmp_path / "c", 20, 12, seed=4, size=40)
    same = lambda x, y, f: (tmp_path / x / f).read_bytes() == (tmp_path / y / f).read_bytes()  # noqa: E731
    assert same("a", "b", "fairface_label_val.csv") and same("a", "b", "val/7.jpg")
    assert not same("a", "c", "val/7.jpg")


def test_sample_attributes_proportions():
    df = synthetic.sample_attributes(1000, 0)
    assert abs((df["gender"] == "Male").mean() - 0.53) < 0.01
    assert abs((df["age"] == "20-29").mean() - synthetic.AGE_P["20-29"]) < 0.01
    assert df["age"].nunique() == 9 and df["race"].nunique() == 7


# ------------------------------------------------------------------ training


def test_train_toy_clip_runs_and_saves(tmp_path):
    from safetensors.torch import load_file

    synthetic.write_fairface_layout(tmp_path / "ff", 48, 9, seed=0, size=32)
    md = toy.make_tiny_clip(tmp_path / "m", seed=0)
    before = load_file(md / "model.safetensors")
    seen = []

    def captions(race, gender, age, rng):
        seen.append((race, gender, age))
        return toy.caption_for("gender", race, gender, age)

    out = toy.train_toy_clip(md, tmp_path / "ff", epochs=2, seed=0, captions_fn=captions, batch_size=16,
                             num_threads=1)
    after = load_file(md / "model.safetensors")
    assert out["steps"] == 6 and len(out["losses"]) == 2 and all(np.isfinite(out["losses"]))
    assert len(seen) == 96
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.get_num_threads() == 1


# ------------------------------------------------------------------ shipped demo assets


def test_demo_assets_present_small_and_checksummed():
    lines = (DEMO / "SHA256SUMS").read_text().splitlines()
    assert len(lines) > 2000
    total = 0
    for line in lines:
        digest, rel = line.split("  ", 1)
        data = (DEMO / rel).read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == digest, rel
    assert total <= 5_500_000
    model_files = {p.name for p in (DEMO / "model").iterdir()}
    assert "model.safetensors" in model_files and not any(n.endswith(".bin") for n in model_files)
    readme = (DEMO / "README.md").read_text()
    assert "NOTHING" in readme and "Planted biases" in readme


def test_demo_model_zero_shot_gender_accuracy():
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(DEMO / "model").eval()
    proc = AutoProcessor.from_pretrained(DEMO / "model")
    val = pd.read_csv(DEMO / "fairface" / "fairface_label_val.csv")
    images = []
    for f in val["file"]:
        with Image.open(DEMO / "fairface" / f) as im:
            images.append(im.convert("RGB"))
    with torch.no_grad():
        px = proc(images=images, return_tensors="pt")["pixel_values"]
        ie = _features(model.get_image_features(pixel_values=px))
        enc = proc.tokenizer(["a photo of a man.", "a photo of a woman."], padding=True, return_tensors="pt")
        te = _features(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    ie = ie / ie.norm(dim=-1, keepdim=True)
    te = te / te.norm(dim=-1, keepdim=True)
    pred = np.where((ie @ te.T).argmax(1).numpy() == 0, "Male", "Female")
    ok = pred == val["gender"].to_numpy()
    assert ok.mean() > 0.80
    # planted bias (b): Southeast Asian faces lose gender accuracy
    sea = (val["race"] == "Southeast Asian").to_numpy()
    assert ok[sea].mean() < ok[~sea].mean() - 0.1


def test_demo_planted_child_animal_effect():
    rep = toy.zero_shot_report(DEMO / "model", DEMO / "fairface", "val")
    assert rep["race_acc"] > 0.5 and rep["age_acc"] > 0.25
    assert rep["probe_non_human_rate_young"] > 0.6
    assert rep["probe_child_non_human_rate_young"] < 0.2
    assert rep["probe_non_human_rate_adult"] < 0.1
