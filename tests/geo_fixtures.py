"""Tiny Dollar Street / GeoDE fixtures in both real layouts: webdataset shards (as
CLIP_benchmark's ``convert_dataset`` writes them, plus datacomp's ``.npy`` metadata vector) and a
CSV + image folder. Images are generated with PIL; everything is seeded."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

#: 8 classes (k=5 top-5 needs more than 5), spelled as a shard's classnames.txt might
DS_CLASSES = ["toothbrush", "stove_hob", "bed", "toilet", "sofa", "wall_clock", "lamp", "refrigerator"]
GEODE_CLASSES = ["bag", "hand_soap", "dustbin", "toothbrush", "chair", "stove", "car", "dog"]
GEODE_REGIONS = ["Africa", "Americas", "EastAsia", "Europe", "SouthEastAsia", "WestAsia"]


def _png(rng: np.random.Generator, fmt: str = "PNG") -> bytes:
    arr = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _npy(vec) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vec, dtype=np.int64))
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def ds_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Per sample: class index, income (monthly $), datacomp's income group code, region code."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        income = int(rng.choice([27, 45, 80, 120, 200, 350, 600, 1100, 2400, 5000]) + rng.integers(0, 9))
        income_ds = int(np.searchsorted([100, 400, 1500], income, side="right"))  # a stand-in: 4 groups
        rows.append({"cls": int(rng.integers(0, len(DS_CLASSES))), "income": income, "income_ds": income_ds,
                     "region": int(rng.integers(0, 4))})
    return rows


def geode_rows(n: int = 48, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        region = int(rng.integers(0, len(GEODE_REGIONS)))
        rows.append({"cls": int(rng.integers(0, len(GEODE_CLASSES))), "region": region,
                     "country": 3 * region + int(rng.integers(0, 3))})
    return rows


def _write_wds(root: Path, classes: list[str], rows: list[dict], fields: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed + 100)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    half = (len(rows) + 1) // 2
    for si, part in enumerate((rows[:half], rows[half:])):
        with tarfile.open(root / "test" / f"{si}.tar", "w") as tf:
            for j, r in enumerate(part):
                key = f"s{si * half + j:07d}"
                fmt, ext = ("JPEG", "jpg") if j % 5 == 0 else ("PNG", "png")
                _add(tf, f"{key}.{ext}", _png(rng, fmt))
                _add(tf, f"{key}.cls", str(r["cls"]).encode())
                _add(tf, f"{key}.npy", _npy([r[f] for f in fields]))
    (root / "test" / "nshards.txt").write_text("2\n")
    return root


def make_ds_wds(root: Path, n: int = 48, seed: int = 0) -> Path:
    """Dollar Street shards: .npy = [income_ds, income_meta, region] (datacomp's fields)."""
    rows = [{**r, "income_meta": r["income"]} for r in ds_rows(n, seed)]
    return _write_wds(root, DS_CLASSES, rows, ["income_ds", "income_meta", "region"], seed)


def make_geode_wds(root: Path, n: int = 48, seed: int = 1) -> Path:
    return _write_wds(root, GEODE_CLASSES, geode_rows(n, seed), ["region", "country"], seed)


def _write_csv(root: Path, header: list[str], lines: list[list[object]], images: list[bytes]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = [",".join(header)]
    for i, (line, img) in enumerate(zip(lines, images)):
        (root / "images" / f"{i:04d}.png").write_bytes(img)
        out.append(",".join([f"images/{i:04d}.png", *map(str, line)]))
    (root / "metadata.csv").write_text("\n".join(out) + "\n")
    return root


def make_ds_csv(root: Path, n: int = 48, seed: int = 0) -> Path:
    """Dollar Street as a CSV: file, object, income, region (names), country."""
    rng = np.random.default_rng(seed + 200)
    rows = ds_rows(n, seed)
    lines = [[DS_CLASSES[r["cls"]].replace("_", " "), r["income"], GEODE_REGIONS[r["region"]], f"C{r['region']}"]
             for r in rows]
    return _write_csv(root, ["file", "object", "income", "region", "country"], lines, [_png(rng) for _ in rows])


def make_geode_csv(root: Path, n: int = 48, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed + 200)
    rows = geode_rows(n, seed)
    lines = [[GEODE_CLASSES[r["cls"]], GEODE_REGIONS[r["region"]], f"country{r['country']}"] for r in rows]
    return _write_csv(root, ["file", "object", "region", "country"], lines, [_png(rng) for _ in rows])


def write_taxonomy(root: Path, classes: list[str], name: str) -> Path:
    """A target taxonomy of ``classes`` (what ``python -m clipfair.data.geo_layouts`` writes)."""
    from clipfair.data.geo_layouts import class_name

    lines = [f"name: {name}", 'templates: ["a photo of a {}."]', "target: object", "classes:"]
    lines += [f"  - {{label: {class_name(c)}, category: object}}" for c in classes]
    path = root / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
