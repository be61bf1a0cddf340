"""Zero-shot classification against computations whose answers are known."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipfair.data.base import FaceDataset, FileReader
from clipfair.run.embed import EmbedStats, embed_images
from clipfair.run.pipeline import evaluate
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError
from clipfair.methods.zeroshot import class_embeddings, softmax, zero_shot_logits

from handmodel import colour_image, hand_clip

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def colour_taxonomy(templates=("a {} photo.",)) -> Taxonomy:
    return Taxonomy("colours", tuple(templates),
                    tuple(TaxonomyClass(c, (c,), "warm" if c == "red" else "cool") for c in COLOURS))


def colour_dataset(tmp_path: Path, specs) -> FaceDataset:
    """specs: list of (rgb, race, gender)."""
    paths = []
    for i, (rgb, _, _) in enumerate(specs):
        p = tmp_path / f"{i}.png"
        colour_image(rgb).save(p)
        paths.append(p)
    table = pd.DataFrame({"image_id": [f"{i}.png" for i in range(len(specs))],
                          "race": [s[1] for s in specs], "gender": [s[2] for s in specs]})
    table["race_binary"] = np.where(table["race"] == "White", "White", "Non-White")
    return FaceDataset("hand", table, FileReader(paths))


def test_prompt_ensembling_matches_direct_computation():
    rng = np.random.default_rng(0)
    vecs = {}

    def encode(texts):
        for t in texts:
            vecs.setdefault(t, rng.normal(size=5).astype(np.float32) * rng.uniform(0.5, 3))
        return np.stack([vecs[t] for t in texts])

    tax = Taxonomy("t", ("a {}.", "the {}!"), (TaxonomyClass("A", ("x", "y"), "c"),
                                                 TaxonomyClass("B", ("z",), "c")))
    ce = class_embeddings(tax, encode)
    for row, texts in zip(ce.weights, [["a x.", "a y.", "the x!", "the y!"], ["a z.", "the z!"]]):
        unit = [vecs[t] / np.linalg.norm(vecs[t]) for t in texts]
        mean = np.mean(unit, axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-6)
    img = rng.normal(size=(4, 5)).astype(np.float32)
    logits = zero_shot_logits(img, ce, 7.5)
    direct = 7.5 * (img / np.linalg.norm(img, axis=1, keepdims=True)) @ ce.weights.T
    np.testing.assert_allclose(logits, direct, rtol=1e-5)
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1.0, rtol=1e-6)


def test_hand_model_predictions_known_by_construction(tmp_path):
    specs = [(COLOURS["red"], "White", "Male"), (COLOURS["green"], "Black", "Female"),
             (COLOURS["blue"], "Black", "Male"), ((200, 40, 0), "White", "Female"),
             ((0, 30, 220), "Indian", "Female")]
    ds = colour_dataset(tmp_path, specs)
    model = hand_clip(scale=7.0)
    ev = evaluate(ds, model, [colour_taxonomy()], cache_dir=None, progress=False)
    p = ev.predictions
    assert p["predicted_label"].tolist() == ["red", "green", "blue", "red", "blue"]
    assert p["predicted_category"].tolist() == ["warm", "cool", "cool", "warm", "cool"]
    # score = softmax(logit_scale * cosine) computed by hand for the orange-ish image
    v = np.array([200, 40, 0]) / 255.0
    cos = v / np.linalg.norm(v)  # class embeddings are the unit axes
    e = np.exp(7.0 * cos - (7.0 * cos).max())
    assert p["score"].iloc[3] == pytest.approx(e[0] / e.sum(), rel=1e-5)
    # the logit scale comes from the model: another scale gives another score
    ev2 = evaluate(ds, hand_clip(scale=30.0), [colour_taxonomy()], cache_dir=None, progress=False)
    assert ev2.predictions["score"].iloc[3] > p["score"].iloc[3]
    rate = ev.metrics.query("metric == 'rate' and slice == 'race' and group == 'White' and category == 'warm'")
    assert rate["value"].item() == 1.0 and rate["n"].item() == 2


def test_images_are_encoded_once_for_all_taxonomies(tmp_path):
    specs = [(COLOURS[c], "White", "Male") for c in ("red", "green", "blue", "red")]
    ds = colour_dataset(tmp_path, specs)
    model, stats = hand_clip(), EmbedStats()
    taxa = [colour_taxonomy(), Taxonomy("c2", ("{}",), colour_taxonomy().classes)]
    ev = evaluate(ds, model, taxa, cache_dir=None, progress=False, stats=stats)
    # 4 images, 3 distinct contents (two identical red images): each content encoded once
    assert model.model.image_calls == 3 and stats.images == 3
    assert len(ev.predictions) == 8
    assert ev.predictions.query("taxonomy == 'c2'")["predicted_label"].tolist() == ["red", "green", "blue", "red"]
    assert set(ev.predictions["taxonomy"]) == {"colours", "c2"}


def test_prompt_longer_than_context_is_refused(tmp_path):
    ds = colour_dataset(tmp_path, [(COLOURS["red"], "White", "Male")])
    long = Taxonomy("long", ("a very very very very very very very long photo of {}.",),
                    colour_taxonomy().classes, source="long.yaml")
    with pytest.raises(TaxonomyError, match=r"long.yaml \(long\): class 'red': prompt .* is 14 tokens, "
                                            r"longer than the text encoder's context of 12"):
        evaluate(ds, hand_clip(context=12), [long], cache_dir=None, progress=False)


def test_embed_images_uses_store_and_skips_nothing_on_rerun(tmp_path):
    specs = [(COLOURS[c], "White", "Male") for c in ("red", "green", "blue")]
    ds = colour_dataset(tmp_path, specs)
    from clipfair.run.embed import open_stores

    model = hand_clip()
    store, _ = open_stores(model, tmp_path / "cache")
    a = embed_images(ds, model, store, progress=False)
    b = embed_images(ds, model, store, progress=False)
    assert (a.encoded, b.encoded, b.cached) == (3, 0, 3)
    np.testing.assert_allclose(a.embeddings, b.embeddings)


def test_values_no_class_matches_stay_out_of_accuracy():
    """fairface_race4: 'Asian' is right for East/Southeast Asian; Latino_Hispanic and
    Middle Eastern images have no right class, so they count in rates, not in accuracy."""
    from clipfair.stats.metrics import group_metrics
    from clipfair.data.taxonomy import load_taxonomy
    from clipfair.methods.zeroshot import predictions_frame

    race4 = load_taxonomy("fairface_race4")
    table = pd.DataFrame({"image_id": list("abcd"),
                          "race": ["White", "East Asian", "Latino_Hispanic", "Middle Eastern"]})
    probs = np.zeros((4, len(race4.labels)))
    for i, lab in enumerate(["White", "Asian", "White", "White"]):
        probs[i, race4.labels.index(lab)] = 1.0
    p = predictions_frame(table, race4, probs, "zero_shot", ["race"])
    assert p["correct"].tolist() == [True, True, pd.NA, pd.NA]
    assert p["true_label"].tolist()[:2] == ["White", "East Asian"] and p["true_label"].isna().tolist()[2:] == [True, True]
    m = group_metrics(p, {"fairface_race4": ["race"]}, slices=["overall", "race"])
    acc = m[m["metric"] == "accuracy"].set_index(["slice", "group"])
    assert (acc.loc[("overall", "all"), "n"], acc.loc[("overall", "all"), "value"]) == (2, 1.0)
    assert ("race", "Latino_Hispanic") not in acc.index
    rate = m[(m["metric"] == "rate") & (m["slice"] == "overall")]
    assert rate["n"].item() == 4
