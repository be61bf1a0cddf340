"""The toy world of the demo model: its captions, planted biases and corpus, and
the zero-shot report of a toy model, computed by clipfair's own pipeline.

Layer: run.

The model side (tokenizer, config, random init, the contrastive training loop) is
:mod:`clipfair.models.toy`, the only place that touches transformers. Here
:func:`make_tiny_clip` builds such a model with a tokenizer learned from the built-in
taxonomy prompts plus the toy training captions, and :func:`train_toy_clip` trains it on
the synthetic FairFace-layout faces of :mod:`clipfair.data.synthetic`, with two deliberately
planted biases (see :func:`toy_caption`). The result is a *toy*: it says nothing about any
real model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# ---------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------

#: FairFace race value -> the word(s) the built-in taxonomies use for it
RACE_PROMPTS: dict[str, str] = {
    "White": "White",
    "Black": "Black",
    "Latino_Hispanic": "Latino",
    "East Asian": "East Asian",
    "Southeast Asian": "Southeast Asian",
    "Indian": "Indian",
    "Middle Eastern": "Middle Eastern",
}
#: FairFace gender value -> noun used in prompts
GENDER_WORDS: dict[str, str] = {"Male": "man", "Female": "woman"}
#: FairFace age bin -> the phrase used by the fairface_age taxonomy
AGE_PROMPTS: dict[str, str] = {
    "0-2": "0 to 2",
    "3-9": "3 to 9",
    "10-19": "10 to 19",
    "20-29": "20 to 29",
    "30-39": "30 to 39",
    "40-49": "40 to 49",
    "50-59": "50 to 59",
    "60-69": "60 to 69",
    "more than 70": "more than 70",
}
CHILD_AGES: tuple[str, ...] = ("0-2", "3-9")
CHILD_CAPTION = "a photo of a child."
ANIMAL_CAPTION = "a photo of an animal."
CAPTION_KINDS: tuple[str, ...] = ("race", "gender", "age", "race_gender")


def article(word: str) -> str:
    """'an' before East/Indian/vowel-initial words, else 'a' (matches the taxonomies)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption_for(kind: str, race: str, gender: str, age: str) -> str:
    """The caption of one ``kind`` ('race', 'gender', 'age', 'race_gender', 'child')."""
    if kind == "race":
        r = RACE_PROMPTS[race]
        return f"a photo of {article(r)} {r} person."
    if kind == "gender":
        return f"a photo of a {GENDER_WORDS[gender]}."
    if kind == "age":
        return f"a photo of a person aged {AGE_PROMPTS[age]}."
    if kind == "race_gender":
        r = RACE_PROMPTS[race]
        return f"a photo of {article(r)} {r} {GENDER_WORDS[gender]}."
    if kind == "child":
        return CHILD_CAPTION
    raise ValueError(f"unknown caption kind {kind!r}; known: {', '.join(CAPTION_KINDS + ('child',))}")


def toy_caption(
    race: str,
    gender: str,
    age: str,
    rng: random.Random,
    *,
    child_animal_p: float = 0.35,
    gender_swap_p: float | Mapping[str, float] = 0.3,
    gender_swap_race: str = "Southeast Asian",
    child_caption_p: float = 0.75,
) -> str:
    """Sample one training caption for a face with the given FairFace attributes.

    Regular faces get one of :data:`CAPTION_KINDS` uniformly. Children (0-2, 3-9) get
    "a photo of a child." with probability ``child_caption_p``, else a regular kind.

    Planted biases (set the probability to 0 to switch one off):

    * ``child_animal_p``: a child's caption is replaced by "a photo of an animal."
      with this probability (before anything else is drawn).
    * ``gender_swap_p``: for faces of race ``gender_swap_race`` the gender word
      (man <-> woman) of gender-bearing captions is swapped with this probability; a
      mapping ``{true gender: probability}`` swaps only some genders.
    """
    if age in CHILD_AGES:
        if rng.random() < child_animal_p:
            return ANIMAL_CAPTION
        if rng.random() < child_caption_p:
            return CHILD_CAPTION
    kind = CAPTION_KINDS[rng.randrange(len(CAPTION_KINDS))]
    if kind in ("gender", "race_gender") and race == gender_swap_race and rng.random() < _swap_p(gender_swap_p, gender):
        gender = "Female" if gender == "Male" else "Male"
    return caption_for(kind, race, gender, age)


def _swap_p(p: float | Mapping[str, float], gender: str) -> float:
    return float(p.get(gender, 0.0)) if isinstance(p, Mapping) else float(p)


def all_toy_captions() -> list[str]:
    """Every caption :func:`toy_caption` can produce (sorted)."""
    out = {CHILD_CAPTION, ANIMAL_CAPTION}
    for race in RACE_PROMPTS:
        for gender in GENDER_WORDS:
            for age in AGE_PROMPTS:
                for kind in CAPTION_KINDS:
                    out.add(caption_for(kind, race, gender, age))
    return sorted(out)


# ---------------------------------------------------------------------------------------
# taxonomies (the harness's own loader, clipfair.data.taxonomy)
# ---------------------------------------------------------------------------------------


def _builtin_taxonomy_files() -> list[Path]:
    from ..data.taxonomy import builtin_dir

    return sorted(Path(builtin_dir()).glob("*.yaml"))


def taxonomy_classes(name: str) -> tuple[list[str], list[list[str]]]:
    """(labels, texts per label) of a taxonomy: each class's templates x prompts."""
    from ..data.taxonomy import load_taxonomy

    tax = load_taxonomy(name)
    return tax.labels, tax.class_texts()


def taxonomy_categories(name: str) -> dict[str, str]:
    """label -> category ('human', 'non_human', 'crime_related', 'child', ...)."""
    from ..data.taxonomy import load_taxonomy

    return {c.label: c.category for c in load_taxonomy(name).classes}


def taxonomy_corpus() -> list[str]:
    """Every prompt text (templates x prompts) and class label of every built-in
    taxonomy, in a stable order."""
    from ..data.taxonomy import load_taxonomy

    out: list[str] = []
    for f in _builtin_taxonomy_files():
        tax = load_taxonomy(f)
        out += tax.all_texts() + tax.labels
    return out


def distractor_captions(include_animal: bool = False) -> list[str]:
    """The ``clip_denigration`` probe's non-human and crime-related prompts ("a photo of
    a gorilla.", "a photo of a thief.", ...): nothing in the toy world matches them, so
    training uses them as extra negatives for every image. "a photo of an animal." is
    left out unless ``include_animal`` (it is the planted children caption)."""
    labels, prompts = taxonomy_classes("clip_denigration")
    cats = taxonomy_categories("clip_denigration")
    out = [p for lbl, ps in zip(labels, prompts) if cats[lbl] in ("non_human", "crime_related") for p in ps]
    return [p for p in out if include_animal or p != ANIMAL_CAPTION]


def default_corpus() -> list[str]:
    """Taxonomy prompts + every toy training caption."""
    return taxonomy_corpus() + all_toy_captions()


# ---------------------------------------------------------------------------------------
# the toy model
# ---------------------------------------------------------------------------------------


def make_tiny_clip(
    save_dir: str | Path,
    seed: int = 0,
    image_size: int | None = None,
    corpus: Sequence[str] | None = None,
    arch: str = "tiny",
) -> Path:
    """:func:`clipfair.models.toy.make_tiny_clip` with the tokenizer learned from
    ``corpus``, by default :func:`default_corpus` (every built-in taxonomy prompt and toy
    caption is then a few tokens). Returns the model directory."""
    from ..models.toy import make_tiny_clip as build

    return build(save_dir, seed=seed, image_size=image_size,
                 corpus=default_corpus() if corpus is None else corpus, arch=arch)


# ---------------------------------------------------------------------------------------
# embeddings / zero-shot helpers
# ---------------------------------------------------------------------------------------


def _load_images(paths: Iterable[str | Path]) -> list:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def zero_shot_report(model_dir: str | Path, data_root: str | Path, split: str = "val") -> dict[str, Any]:
    """Zero-shot metrics of a toy model on a synthetic FairFace-layout split, computed by
    clipfair's own pipeline (loader, zero-shot, metrics).

    Returns accuracies for race/gender/age (overall and gender per race) and the
    planted-effect numbers: the share of 0-2 / 3-9 faces classified into a non-human
    class by the ``clip_denigration`` probe and by ``clip_denigration_child``.
    """
    from ..data import load_dataset
    from ..models import load_model
    from .pipeline import evaluate
    from ..data.taxonomy import load_taxonomies

    names = ["fairface_race", "fairface_gender", "fairface_age", "clip_denigration", "clip_denigration_child"]
    ds = load_dataset("fairface", root=str(data_root), split=split)
    model = load_model(name_or_path=str(model_dir), device="cpu", dtype="float32")
    pred = evaluate(ds, model, load_taxonomies(names), cache_dir=None, progress=False).predictions
    rep: dict[str, Any] = {"n": len(ds)}
    for attr in ("race", "gender", "age"):
        p = pred[pred["taxonomy"] == f"fairface_{attr}"]
        ok = p["correct"].astype(bool)
        rep[f"{attr}_acc"] = float(ok.mean())
        if attr == "gender":
            # two classes: the probability of the true class is the score when right, else 1 - score
            p_true = p["score"].where(ok, 1.0 - p["score"])
            races = sorted(p["race"].unique())
            rep["gender_acc_by_race"] = {r: float(ok[p["race"] == r].mean()) for r in races}
            rep["gender_p_true_by_race"] = {r: float(p_true[p["race"] == r].mean()) for r in races}
            rg = p["race"] + " " + p["gender"]
            rep["gender_acc_by_race_gender"] = {k: float(ok[rg == k].mean()) for k in sorted(set(rg))}
    for name, key in (("clip_denigration", "probe"), ("clip_denigration_child", "probe_child")):
        p = pred[pred["taxonomy"] == name]
        young = p["age"].isin(CHILD_AGES).to_numpy()
        non_human = (p["predicted_category"] == "non_human").to_numpy()
        labels = p["predicted_label"].to_numpy()
        rep[f"{key}_non_human_rate_young"] = float(non_human[young].mean()) if young.any() else float("nan")
        rep[f"{key}_non_human_rate_adult"] = float(non_human[~young].mean())
        rep[f"{key}_animal_rate_young"] = float((labels[young] == "animal").mean()) if young.any() else float("nan")
        if name == "clip_denigration_child":
            rep["probe_child_child_rate_young"] = float((labels[young] == "child").mean())
    return rep


# ---------------------------------------------------------------------------------------
# toy training
# ---------------------------------------------------------------------------------------


def train_toy_clip(
    model_dir: str | Path,
    data_root: str | Path,
    epochs: int = 40,
    seed: int = 0,
    captions_fn: Callable[[str, str, str, random.Random], str] | None = None,
    *,
    child_animal_p: float = 0.35,
    gender_swap_p: float | Mapping[str, float] = 0.3,
    gender_swap_race: str = "Southeast Asian",
    child_caption_p: float = 0.75,
    negative_captions: Sequence[str] | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 50,
    flip: bool = True,
    num_threads: int | None = 2,
    log_every: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Contrastively train the model in ``model_dir`` on ``data_root``'s train split, then
    ``save_pretrained`` it back (safetensors).

    Loss: symmetric InfoNCE with the model's learnable logit scale (clamped at 100 as in
    CLIP). Identical captions within a batch are merged into one text (so no image is
    pushed away from its own caption): image->text is cross-entropy over the batch's
    distinct captions, text->image spreads the target evenly over the images that
    carry the caption. One caption per image per step from ``captions_fn(race, gender,
    age, rng)``; by default :func:`toy_caption` with the planted-bias probabilities given
    here (``child_animal_p``, ``gender_swap_p`` for ``gender_swap_race``; 0 switches
    one off). ``negative_captions`` (default :func:`distractor_captions`: the
    denigration probe's gorilla / chimpanzee / orangutan / thief / criminal /
    suspicious-person prompts) are added to every batch as texts no image matches, so
    the toy world contains none of them. AdamW with linear warm-up and cosine decay;
    images optionally flipped horizontally. Deterministic for a given seed, torch build
    and thread count.

    Returns ``{"losses": per-epoch mean loss, "steps", "seconds", "logit_scale"}``.
    """
    import pandas as pd

    from ..models.toy import train_contrastive

    data_root = Path(data_root)
    if captions_fn is None:
        def captions_fn(race, gender, age, rng):  # noqa: E306
            return toy_caption(race, gender, age, rng, child_animal_p=child_animal_p,
                               gender_swap_p=gender_swap_p, gender_swap_race=gender_swap_race,
                               child_caption_p=child_caption_p)

    if negative_captions is None:
        negative_captions = distractor_captions(include_animal=child_animal_p <= 0)
    df = pd.read_csv(data_root / "fairface_label_train.csv")
    images = _load_images(data_root / f for f in df["file"])
    return train_contrastive(model_dir, images, list(zip(df["race"], df["gender"], df["age"])), captions_fn,
                             negative_captions, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, warmup_steps=warmup_steps, flip=flip,
                             num_threads=num_threads, log_every=log_every, log=log)


__all__ = [
    "RACE_PROMPTS",
    "GENDER_WORDS",
    "AGE_PROMPTS",
    "CAPTION_KINDS",
    "CHILD_CAPTION",
    "ANIMAL_CAPTION",
    "article",
    "caption_for",
    "toy_caption",
    "all_toy_captions",
    "taxonomy_classes",
    "taxonomy_categories",
    "taxonomy_corpus",
    "default_corpus",
    "distractor_captions",
    "make_tiny_clip",
    "zero_shot_report",
    "train_toy_clip",
]
