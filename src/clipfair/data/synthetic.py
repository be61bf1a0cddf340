"""Synthetic, stylised FairFace-like faces and a writer for FairFace's official layout.

Layer: data.

The faces are cartoons whose attributes are visually learnable by a tiny model:

* race   -> skin-tone colour and background hue (East Asian / Southeast Asian and
            Latino_Hispanic / Middle Eastern are deliberately close, so race is not
            trivially separable);
* gender -> hair shape (long hair falling beside the face vs. a short cap);
* age    -> face size (children are smaller), grey hair and wrinkle lines (older).

Every image has random jitter (position, size, colours, pixel noise). The mapping from
attributes to drawing is arbitrary and exists only to test the harness: it is not a
model of how real people look.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipfair.data.attributes import AGE_BINS, GENDERS, RACES

#: race -> (skin RGB, background hue in degrees). Two close pairs:
#: East Asian ~ Southeast Asian, Latino_Hispanic ~ Middle Eastern.
RACE_STYLE: dict[str, tuple[tuple[int, int, int], float]] = {
    "White": ((242, 208, 186), 215.0),
    "Black": ((92, 58, 40), 35.0),
    "Latino_Hispanic": ((202, 150, 110), 120.0),
    "East Asian": ((236, 204, 160), 285.0),
    "Southeast Asian": ((214, 172, 124), 305.0),
    "Indian": ((150, 100, 70), 0.0),
    "Middle Eastern": ((192, 142, 104), 145.0),
}
#: race -> base hair colours (RGB) to pick from
HAIR_COLOURS: dict[str, Sequence[tuple[int, int, int]]] = {
    "White": ((120, 80, 40), (200, 160, 90), (70, 45, 25)),
    "Black": ((25, 20, 18), (40, 30, 25)),
    "Latino_Hispanic": ((45, 30, 20), (70, 45, 25)),
    "East Asian": ((20, 18, 18), (35, 28, 24)),
    "Southeast Asian": ((22, 18, 16), (40, 30, 24)),
    "Indian": ((22, 18, 16), (40, 30, 24)),
    "Middle Eastern": ((35, 25, 20), (60, 40, 25)),
}
#: age bin -> (face scale, grey-hair fraction, wrinkle lines)
AGE_STYLE: dict[str, tuple[float, float, int]] = {
    "0-2": (0.58, 0.0, 0),
    "3-9": (0.72, 0.0, 0),
    "10-19": (0.86, 0.0, 0),
    "20-29": (1.0, 0.0, 0),
    "30-39": (1.0, 0.05, 1),
    "40-49": (1.0, 0.2, 1),
    "50-59": (1.0, 0.45, 2),
    "60-69": (1.0, 0.75, 3),
    "more than 70": (1.0, 0.95, 4),
}
#: approximate FairFace proportions (train split, Kärkkäinen & Joo 2021)
RACE_P: dict[str, float] = {"White": 0.19, "Black": 0.141, "Latino_Hispanic": 0.154, "East Asian": 0.142,
                            "Southeast Asian": 0.124, "Indian": 0.142, "Middle Eastern": 0.107}
GENDER_P: dict[str, float] = {"Male": 0.53, "Female": 0.47}
AGE_P: dict[str, float] = {"0-2": 0.021, "3-9": 0.12, "10-19": 0.105, "20-29": 0.295, "30-39": 0.222,
                           "40-49": 0.124, "50-59": 0.072, "60-69": 0.032, "more than 70": 0.01}
COLUMNS: tuple[str, ...] = ("file", "age", "gender", "race", "service_test")


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(63))
    return np.random.default_rng(rng)


def _hsv(h_deg: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _jit(c: Sequence[float], rng: np.random.Generator, sd: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(x + rng.normal(0, sd), 0, 255)) for x in c)  # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def render_face(race: str, gender: str, age_bin: str, rng=None, size: int = 64) -> Image.Image:
    """Draw one stylised face (RGB, ``size`` x ``size``).

    ``rng``: a ``numpy.random.Generator`` (or ``random.Random`` / seed). Attribute
    values are FairFace's strings (:data:`clipfair.data.attributes.RACES` etc.).
    """
    if race not in RACE_STYLE:
        raise ValueError(f"unknown race {race!r}; allowed: {', '.join(RACES)}")
    if gender not in GENDERS:
        raise ValueError(f"unknown gender {gender!r}; allowed: {', '.join(GENDERS)}")
    if age_bin not in AGE_STYLE:
        raise ValueError(f"unknown age bin {age_bin!r}; allowed: {', '.join(AGE_BINS)}")
    g = _rng(rng)
    S = 2 * size  # draw at 2x and downsample (anti-aliasing)
    u = S / 128.0  # drawing unit: coordinates below are for a 128 px canvas

    skin_base, hue = RACE_STYLE[race]
    bg = _hsv(hue + g.normal(0, 9), 0.45 + g.normal(0, 0.06), 0.85 + g.normal(0, 0.05))
    skin = _jit(skin_base, g, 9)
    scale, grey, lines = AGE_STYLE[age_bin]
    scale *= float(np.clip(g.normal(1.0, 0.04), 0.9, 1.1))
    cols = HAIR_COLOURS[race]
    hair = _jit(cols[int(g.integers(len(cols)))], g, 6)
    grey_t = float(np.clip(grey + g.normal(0, 0.08), 0, 1)) if grey > 0 else 0.0
    hair = _mix(hair, (215, 215, 215), grey_t)

    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    cx = 64 * u + g.normal(0, 3.0) * u
    cy = 68 * u + g.normal(0, 3.0) * u + (1 - scale) * 14 * u  # children sit lower
    fw, fh = 30 * u * scale, 38 * u * scale  # face half-width / half-height

    # shoulders / clothes
    shirt = _hsv(float(g.uniform(0, 360)), 0.35, 0.55)
    d.ellipse([cx - 2.1 * fw, cy + 0.85 * fh, cx + 2.1 * fw, cy + 3.2 * fh], fill=shirt)
    # hair behind the face
    long_hair = gender == "Female"
    if long_hair:
        length = fh * float(np.clip(g.normal(1.55, 0.12), 1.25, 1.9))
        width = fw * float(np.clip(g.normal(1.32, 0.05), 1.2, 1.45))
        d.rounded_rectangle([cx - width, cy - 1.22 * fh, cx + width, cy + length],
                            radius=int(width * 0.9), fill=hair)
    else:
        d.ellipse([cx - 1.08 * fw, cy - 1.28 * fh, cx + 1.08 * fw, cy + 0.1 * fh], fill=hair)
    # ears + neck + face
    d.rectangle([cx - 0.38 * fw, cy + 0.6 * fh, cx + 0.38 * fw, cy + 1.1 * fh], fill=skin)
    if not long_hair:
        d.ellipse([cx - 1.13 * fw, cy - 0.2 * fh, cx - 0.85 * fw, cy + 0.25 * fh], fill=skin)
        d.ellipse([cx + 0.85 * fw, cy - 0.2 * fh, cx + 1.13 * fw, cy + 0.25 * fh], fill=skin)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    # fringe / cap on top of the face
    if long_hair:
        d.chord([cx - 1.02 * fw, cy - 1.12 * fh, cx + 1.02 * fw, cy - 0.05 * fh], 180, 360, fill=hair)
    else:
        d.chord([cx - 1.02 * fw, cy - 1.18 * fh, cx + 1.02 * fw, cy - 0.25 * fh], 180, 360, fill=hair)
    # eyes, brows, nose, mouth
    ey = cy - 0.12 * fh
    ex = 0.4 * fw
    er = max(1.5 * u, 0.11 * fw * (1.25 if scale < 0.8 else 1.0))
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - er, ey - er, cx + sx * ex + er, ey + er], fill=(250, 250, 250))
        pr = er * 0.6
        d.ellipse([cx + sx * ex - pr, ey - pr, cx + sx * ex + pr, ey + pr], fill=(30, 25, 25))
        d.line([cx + sx * ex - 1.4 * er, ey - 2.0 * er, cx + sx * ex + 1.4 * er, ey - 2.2 * er],
               fill=_mix(hair, (0, 0, 0), 0.3), width=max(1, int(1.6 * u)))
    dark = _mix(skin, (0, 0, 0), 0.45)
    d.line([cx, ey + 0.15 * fh, cx - 0.06 * fw, cy + 0.3 * fh], fill=dark, width=max(1, int(1.5 * u)))
    mouth = (170, 60, 70) if gender == "Female" and scale > 0.8 else _mix(skin, (90, 30, 30), 0.5)
    my = cy + 0.55 * fh
    d.arc([cx - 0.3 * fw, my - 0.12 * fh, cx + 0.3 * fw, my + 0.12 * fh], 20, 160, fill=mouth,
          width=max(1, int(2.4 * u)))
    # wrinkles: forehead lines, then cheek lines
    wr = _mix(skin, (0, 0, 0), 0.5)
    w = max(1, int(2.0 * u))
    for k in range(min(lines, 3)):
        y = cy - (0.55 + 0.13 * k) * fh
        d.line([cx - 0.45 * fw, y, cx + 0.45 * fw, y], fill=wr, width=w)
    if lines >= 4:
        for sx in (-1, 1):
            d.line([cx + sx * 0.55 * fw, cy + 0.2 * fh, cx + sx * 0.45 * fw, cy + 0.62 * fh], fill=wr, width=w)

    img = img.resize((size, size), Image.LANCZOS)
    if g.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(g.uniform(0.3, 0.8))))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * float(g.normal(1.0, 0.04)) + g.normal(0, 4.0, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _exact_counts(n: int, probs: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of n over ``probs``; every value gets >= 1 when
    n >= len(probs)."""
    keys = list(probs)
    total = sum(probs.values())
    raw = {k: n * probs[k] / total for k in keys}
    counts = {k: int(raw[k]) for k in keys}
    if n >= len(keys):
        for k in keys:
            counts[k] = max(counts[k], 1)
    while sum(counts.values()) > n:  # the minimums overshot: take from the largest
        k = max(keys, key=lambda k: (counts[k], k))
        counts[k] -= 1
    for k in sorted(keys, key=lambda k: (-(raw[k] - int(raw[k])), keys.index(k))):
        if sum(counts.values()) >= n:
            break
        counts[k] += 1
    while sum(counts.values()) < n:
        counts[max(keys, key=lambda k: probs[k])] += 1
    return counts


def sample_attributes(n: int, rng, race_p: Mapping[str, float] = RACE_P, gender_p: Mapping[str, float] = GENDER_P,
                      age_p: Mapping[str, float] = AGE_P, service_test_p: float = 0.5):
    """A DataFrame (age, gender, race, service_test) of ``n`` faces: each attribute has
    exactly its (rounded) share and every value appears when ``n`` allows, assigned
    independently at random."""
    import pandas as pd

    g = _rng(rng)
    cols = {}
    for name, probs in (("race", race_p), ("gender", gender_p), ("age", age_p)):
        counts = _exact_counts(n, probs)
        vals = np.array([k for k, c in counts.items() for _ in range(c)], dtype=object)
        cols[name] = list(vals[g.permutation(n)])
    return pd.DataFrame({"age": cols["age"], "gender": cols["gender"], "race": cols["race"],
                         "service_test": list(g.random(n) < service_test_p)})


def write_fairface_layout(
    root: str | Path,
    n_train: int,
    n_val: int,
    seed: int = 0,
    size: int = 64,
    quality: int = 85,
    service_test_p: float = 0.5,
):
    """Write synthetic faces in FairFace's official layout under ``root``:

    ``fairface_label_train.csv`` / ``fairface_label_val.csv`` with columns exactly
    ``file,age,gender,race,service_test`` (``file`` = ``train/1.jpg`` ... 1-indexed,
    ``service_test`` True/False) and the JPEGs in ``train/`` and ``val/``.
    Deterministic given ``seed`` (and the Pillow/libjpeg build). Returns
    ``(train_df, val_df)``.
    """
    root = Path(root)
    ss = np.random.SeedSequence(seed)
    out = []
    for split, n, child in (("train", n_train, ss.spawn(1)[0]), ("val", n_val, ss.spawn(1)[0])):
        g = np.random.default_rng(child)
        df = sample_attributes(n, g, service_test_p=service_test_p)
        df.insert(0, "file", [f"{split}/{i}.jpg" for i in range(1, n + 1)])
        (root / split).mkdir(parents=True, exist_ok=True)
        for f, race, gender, age in zip(df["file"], df["race"], df["gender"], df["age"]):
            img = render_face(race, gender, age, g, size=size)
            img.save(root / f, "JPEG", quality=quality, optimize=True)
        df = df[list(COLUMNS)]
        df.to_csv(root / f"fairface_label_{split}.csv", index=False)
        out.append(df)
    return out[0], out[1]


__all__ = ["RACE_STYLE", "AGE_STYLE", "COLUMNS", "render_face", "sample_attributes", "write_fairface_layout"]
