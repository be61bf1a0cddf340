"""Precision audit: a planted bfloat16 flip is found; agreement and margins against numpy."""

import dataclasses

import numpy as np
import pytest
import torch

from clipfair.stats.metrics import wilson_interval
from clipfair.methods.precision import audit_embeddings, audit_precision, run_precision_audit, top2_margins

from handmodel import hand_clip

CLASSES = np.eye(3)  # red, green, blue: the hand model's text embeddings of the colour words


def test_audit_detects_a_planted_bfloat16_flip():
    # image 0: green 0.501 vs red 0.500 -> float32 says green; bfloat16 rounds both to 0.5
    # (a tie, first class wins) -> red. Image 1: a clear red, the same under both.
    pixels = torch.zeros(2, 3, 4, 4)
    pixels[0, 0], pixels[0, 1] = 0.500, 0.501
    pixels[1, 0] = 0.9
    fp32 = hand_clip()
    bf16 = dataclasses.replace(hand_clip(), dtype=torch.bfloat16)
    res = audit_precision(bf16.encode_pixels, fp32.encode_pixels, pixels, {"colour": CLASSES}, ["tie", "red"])
    a = res["taxonomies"]["colour"]
    assert a["n"] == 2 and a["agree"] == 1 and a["flipped"] == 1 and a["flips_example"] == "tie"
    lo, hi = wilson_interval(1, 2)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((lo, hi))
    assert a["margin_quantiles"]["min"] == pytest.approx(0.0, abs=1e-9)  # the tie at bfloat16
    # the same model at float32 on both sides: nothing flips
    same = audit_precision(fp32.encode_pixels, fp32.encode_pixels, pixels, {"colour": CLASSES})
    assert same["taxonomies"]["colour"]["agree"] == 2


def test_margins_and_agreement_against_numpy():
    rng = np.random.default_rng(0)
    run = rng.normal(size=(50, 8))
    ref = run + rng.normal(size=(50, 8)) * 0.3
    w = rng.normal(size=(5, 8))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    res = audit_embeddings(run, ref, {"t": w})["taxonomies"]["t"]
    sims = (run / np.linalg.norm(run, axis=1, keepdims=True)) @ w.T
    srt = np.sort(sims, axis=1)
    margins = srt[:, -1] - srt[:, -2]
    agree = (sims.argmax(1) == ((ref / np.linalg.norm(ref, axis=1, keepdims=True)) @ w.T).argmax(1)).sum()
    assert res["agree"] == agree and res["n"] == 50
    assert res["margin_quantiles"]["p50"] == pytest.approx(np.median(margins))
    assert res["margin_quantiles"]["min"] == pytest.approx(margins.min())
    top, m = top2_margins(run, w)
    np.testing.assert_allclose(m, margins, rtol=1e-5, atol=1e-6)


def test_hook_skips_float32_runs_and_samples_with_a_seed(tmp_path):
    from test_zeroshot import colour_dataset

    specs = [((200, 10, 10), "White", "Male"), ((10, 200, 10), "Black", "Female")] * 10
    ds = colour_dataset(tmp_path, specs)
    weights = lambda: {"colour": CLASSES}  # noqa: E731
    skipped = run_precision_audit(ds, hand_clip(), np.arange(20), weights, n=8)
    assert skipped["dtype"] == "float32" and "nothing to compare" in skipped["skipped"]
    bf16 = dataclasses.replace(hand_clip(), dtype=torch.bfloat16)
    res = run_precision_audit(ds, bf16, np.arange(20), weights, n=8, seed=1)
    again = run_precision_audit(ds, bf16, np.arange(20), weights, n=8, seed=1)
    assert res["n_images"] == 8 and res["taxonomies"]["colour"]["agree"] == 8  # clear colours: no flips
    assert res == again
    assert "cast up" in res["reference"]


def test_pipeline_hook_on_a_bfloat16_hf_model(tiny_model_dir, fairface_root):
    from clipfair.data import load_dataset
    from clipfair.models import load_model
    from clipfair.run.pipeline import evaluate
    from clipfair.data.taxonomy import load_taxonomy

    model = load_model("hf", name_or_path=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    ds = load_dataset("fairface", root=str(fairface_root), split="val", limit=20)
    ev = evaluate(ds, model, [load_taxonomy("fairface_gender")], cache_dir=None, progress=False,
                  precision_audit={"n": 8, "seed": 0})
    rec = ev.info["precision"]
    assert rec["dtype"] == "bfloat16" and rec["n_images"] == 8 and "cast up" in rec["reference"]
    a = rec["taxonomies"]["fairface_gender"]
    assert a["n"] == 8 and 0 <= a["agree"] <= 8 and a["flipped"] == 8 - a["agree"]
    # the run's model is untouched: its image tower still bfloat16 (the text tower is float32 by design)
    assert model.dtype == torch.bfloat16 and next(model.model.vision_model.parameters()).dtype == torch.bfloat16
