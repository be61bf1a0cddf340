"""A tiny FACET in its real layout: ``annotations/annotations.csv`` (FACET's columns, annotator
counts per value) and ``images/`` (JPEGs generated with PIL: a grey scene with one coloured
rectangle per annotated person at its bounding box, so a person crop and the whole image differ).

:func:`make_facet` writes ``n_images`` images with ``per_image`` persons each (default 16 x 3 =
48 persons), classes cycling over :data:`CLASSES`, seeded random annotator counts that include
ties, ``na`` majorities, persons without skin-tone votes and persons with a single vote, and
bounding boxes written alternately as JSON and as Python dicts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("doctor", "nurse", "guitarist", "basketball_player")
GENDER = ("masc", "fem", "non_binary", "na")
AGE = ("young", "middle", "older", "na")
LIGHTING = ("underexposed", "dimly_lit", "well_lit", "overexposed", "na")
HAIR_COLOR = ("brown", "blonde", "grey", "na", "black", "colored", "red")
HAIRTYPE = ("coily", "dreadlocks", "bald", "straight", "curly", "wavy", "na")
HAS = ("facial_hair", "tattoo", "cap", "mask", "headscarf", "eyeware")
VISIBLE = ("torso", "face", "minimal")
W, H = 96, 64


def header() -> list[str]:
    return (["person_id", "filename", "class1", "class2", "bounding_box"]
            + [f"gender_presentation_{g}" for g in GENDER]
            + [f"skin_tone_{k}" for k in range(1, 11)] + ["skin_tone_na"]
            + [f"age_presentation_{a}" for a in AGE]
            + [f"hair_color_{c}" for c in HAIR_COLOR] + [f"hairtype_{t}" for t in HAIRTYPE]
            + [f"has_{h}" for h in HAS] + [f"visible_{v}" for v in VISIBLE]
            + [f"lighting_{x}" for x in LIGHTING])


def _votes(rng: np.random.Generator, k: int) -> list[int]:
    """Annotator counts over ``k`` options (the last is ``na``): mostly a clear majority for one
    value, sometimes a tie for the most votes (~15%) or a majority for ``na`` (~10%)."""
    counts = [0] * k
    u = rng.random()
    main = k - 1 if u < 0.1 else int(rng.integers(0, k - 1))
    counts[main] = int(rng.integers(1, 4))
    if u > 0.85:  # a tie
        other = int(rng.integers(0, k - 1))
        other = other if other != main else (main + 1) % (k - 1)
        counts[other] = counts[main]
    elif rng.random() < 0.3 and counts[main] > 1:  # a minority vote
        counts[(main + 1) % k] += 1
    return counts


def person_rows(n_images: int = 16, per_image: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    pid = 0
    for img in range(n_images):
        for j in range(per_image):
            x, y = 4 + 30 * j, 6 + (img % 3) * 4
            box = {"x": x, "y": y, "width": 24 + (pid % 3), "height": 40 + (pid % 5)}
            if pid % 7 == 6:  # a box reaching past the image's right and bottom edges: clipped
                box = {"x": W - 10, "y": H - 12, "width": 30, "height": 30}
            text = json.dumps(box) if pid % 2 == 0 else repr({k: float(v) for k, v in box.items()})
            r: dict[str, Any] = {"person_id": str(1000 + pid), "filename": f"sa_{img:04d}.jpg",
                                 "class1": CLASSES[pid % len(CLASSES)],
                                 "class2": CLASSES[(pid + 1) % len(CLASSES)] if pid % 5 == 0 else "",
                                 "bounding_box": text}
            r.update({f"gender_presentation_{g}": v for g, v in zip(GENDER, _votes(rng, 4))})
            n_skin = 0 if pid % 11 == 3 else int(rng.integers(1, 4))
            centre = int(rng.integers(0, 10))  # votes near one level, as annotators' are
            tones = np.bincount(np.clip(centre + rng.integers(-1, 2, size=n_skin), 0, 9), minlength=10).tolist()
            r.update({f"skin_tone_{k + 1}": v for k, v in enumerate(tones)})
            r["skin_tone_na"] = int(pid % 13 == 0)
            r.update({f"age_presentation_{a}": v for a, v in zip(AGE, _votes(rng, 4))})
            r.update({f"hair_color_{c}": int(i == pid % 7) for i, c in enumerate(HAIR_COLOR)})
            r.update({f"hairtype_{t}": int(i == pid % 7) for i, t in enumerate(HAIRTYPE)})
            r.update({f"has_{h}": int(rng.integers(0, 2)) for h in HAS})
            r.update({f"visible_{v}": int(i == 0) for i, v in enumerate(VISIBLE)})
            r.update({f"lighting_{x}": v for x, v in zip(LIGHTING, _votes(rng, 5))})
            rows.append(r)
            pid += 1
    return rows


def write_facet(root: Path, rows: Sequence[dict[str, Any]], images: bool = True) -> Path:
    """Write ``rows`` as annotations/annotations.csv and (``images``) one JPEG per file name."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cols = header()
    extra = [c for r in rows for c in r if c not in cols]
    cols += list(dict.fromkeys(extra))
    with open(root / "annotations" / "annotations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in cols if any(c in r for r in rows)])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    if images:
        by_file: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_file.setdefault(r["filename"], []).append(r)
        (root / "images").mkdir(exist_ok=True)
        for k, (name, persons) in enumerate(by_file.items()):
            arr = np.full((H, W, 3), 90 + 5 * (k % 10), dtype=np.uint8)
            for j, r in enumerate(persons):
                try:
                    b = json.loads(r["bounding_box"])
                except ValueError:
                    import ast

                    b = ast.literal_eval(r["bounding_box"])
                x0, y0 = int(b["x"]), int(b["y"])
                x1, y1 = min(W, x0 + int(b["width"])), min(H, y0 + int(b["height"]))
                arr[y0:y1, x0:x1] = ((60 * j + 40 * k) % 256, (200 - 30 * j) % 256, (20 * k) % 256)
            Image.fromarray(arr).save(root / "images" / name, quality=95)
    return root


def make_facet(root: Path, n_images: int = 16, per_image: int = 3, seed: int = 0) -> Path:
    """The default tiny FACET (see the module docstring) under ``root``."""
    return write_facet(root, person_rows(n_images, per_image, seed))
