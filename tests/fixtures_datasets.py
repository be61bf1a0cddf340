"""Tiny face-dataset fixtures in each real on-disk layout, with solid-colour images.

Every image is a small solid-colour picture, so a test can check that row i of a dataset
reads the right file by looking at one pixel (JPEG shifts colours by a few levels: compare
with a tolerance, see :func:`close_to`). The ``make_*`` functions write a default layout
whose content is documented in their docstrings; the ``write_*`` functions write exactly
what they are given, for tests of malformed input.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from PIL import Image

Color = tuple[int, int, int]

RED: Color = (255, 0, 0)
GREEN: Color = (0, 255, 0)
BLUE: Color = (0, 0, 255)
YELLOW: Color = (255, 255, 0)
CYAN: Color = (0, 255, 255)
MAGENTA: Color = (255, 0, 255)
GREY: Color = (128, 128, 128)
WHITE: Color = (255, 255, 255)
#: distinct colours, used in order by the make_* helpers
PALETTE: tuple[Color, ...] = (RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA, GREY, WHITE)

#: the header of the official FairFace label CSVs
FAIRFACE_HEADER = "file,age,gender,race,service_test"

#: HuggingFaceM4/FairFace's ClassLabel orders (its integers mean these names)
HF_FAIRFACE_RACES = ("East Asian", "Indian", "Black", "White", "Middle Eastern",
                     "Latino_Hispanic", "Southeast Asian")
HF_FAIRFACE_GENDERS = ("Male", "Female")
HF_FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69",
                    "more than 70")

#: the three malformed file names of the real UTKFace (race code missing)
UTKFACE_MALFORMED = ("39_1_20170116174525125.jpg.chip.jpg",
                     "61_1_20170109150557335.jpg.chip.jpg",
                     "61_1_20170109142408075.jpg.chip.jpg")


def close_to(pixel: Sequence[int], color: Color, tol: int = 12) -> bool:
    """Whether an RGB pixel is within ``tol`` levels of ``color`` in every channel."""
    return all(abs(int(p) - c) <= tol for p, c in zip(pixel, color))


def image_bytes(color: Color, size: int = 8, fmt: str = "JPEG") -> bytes:
    """Encoded bytes of a ``size`` x ``size`` solid-colour image."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, fmt, quality=95)
    return buf.getvalue()


def write_image(path: Path, color: Color, size: int = 8) -> Path:
    """Write a solid-colour JPEG (PNG if the suffix is .png), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, size, "PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def write_text(path: Path, lines: Iterable[str], bom: bool = False) -> Path:
    """Write ``lines`` joined by newlines (UTF-8, with a BOM if asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------- FairFace


def write_fairface_split(root: Path, split: str, lines: Sequence[str],
                         header: str = FAIRFACE_HEADER, bom: bool = False,
                         images: bool = True) -> Path:
    """Write ``root/fairface_label_{split}.csv`` with the raw data ``lines`` (exactly as
    given) and, if ``images``, one image per line at the path in its first field, coloured
    ``PALETTE[k]`` for line k. Returns the CSV path."""
    if images:
        for k, line in enumerate(lines):
            write_image(root / line.split(",")[0].strip(), PALETTE[k % len(PALETTE)])
    return write_text(root / f"fairface_label_{split}.csv", [header, *lines], bom=bom)


def make_fairface(root: Path) -> Path:
    """The official FairFace layout with 4 val and 2 train images; returns ``root``.

    ``fairface_label_val.csv`` has a BOM, stray whitespace in headers and values, and one
    lower-case row (line k is coloured PALETTE[k])::

        val/1.jpg  20-29         Male    White            (red)
        val/2.jpg  3-9           Female  East Asian       (green)
        val/3.jpg  more than 70  male    latino_hispanic  (blue)
        val/4.jpg  50-59         Female  Black            (yellow)

    ``fairface_label_train.csv`` (plain)::

        train/1.jpg  30-39  Male    Indian            (red)
        train/2.jpg  0-2    Female  Southeast Asian   (green)
    """
    write_fairface_split(root, "val", [
        "val/1.jpg,20-29,Male,White,True",
        " val/2.jpg , 3-9 ,Female, East Asian ,False",
        "val/3.jpg,more than 70,male,latino_hispanic,True",
        "val/4.jpg,50-59,Female,Black,False",
    ], header=" file , age,gender ,race,service_test", bom=True)
    write_fairface_split(root, "train", [
        "train/1.jpg,30-39,Male,Indian,True",
        "train/2.jpg,0-2,Female,Southeast Asian,False",
    ])
    return root


# ---------------------------------------------------------------- Hugging Face

#: one HF row: (race index, gender index, age index, colour), in HF_FAIRFACE_* order
HFRow = tuple[int, int, int, Color]

#: default rows of :func:`hf_fairface_dataset`
HF_ROWS: tuple[HFRow, ...] = (
    (0, 0, 3, RED),      # East Asian, Male, 20-29
    (3, 1, 8, GREEN),    # White, Female, more than 70
    (5, 0, 1, BLUE),     # Latino_Hispanic, Male, 3-9
    (2, 1, 0, YELLOW),   # Black, Female, 0-2
)


def hf_fairface_dataset(rows: Sequence[HFRow] = HF_ROWS, image_fmt: str = "JPEG"):
    """A ``datasets.Dataset`` shaped like HuggingFaceM4/FairFace: an ``Image()`` column
    and ClassLabel race/gender/age columns in its order, plus ``service_test``."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({
        "image": datasets.Image(),
        "age": datasets.ClassLabel(names=list(HF_FAIRFACE_AGES)),
        "gender": datasets.ClassLabel(names=list(HF_FAIRFACE_GENDERS)),
        "race": datasets.ClassLabel(names=list(HF_FAIRFACE_RACES)),
        "service_test": datasets.Value("bool"),
    })
    return datasets.Dataset.from_dict({
        "image": [{"bytes": image_bytes(c, fmt=image_fmt), "path": None} for *_, c in rows],
        "age": [a for _, _, a, _ in rows],
        "gender": [g for _, g, _, _ in rows],
        "race": [r for r, _, _, _ in rows],
        "service_test": [k % 2 == 0 for k in range(len(rows))],
    }, features=features)


def save_hf_to_disk(path: Path, splits: Mapping[str, object] | None = None) -> Path:
    """``DatasetDict(splits).save_to_disk(path)``; default: HF_ROWS as ``validation`` and
    the first two HF_ROWS as ``train``."""
    import datasets

    if splits is None:
        splits = {"validation": hf_fairface_dataset(), "train": hf_fairface_dataset(HF_ROWS[:2])}
    datasets.DatasetDict(dict(splits)).save_to_disk(str(path))
    return path


def write_hf_parquet(folder: Path, splits: Mapping[str, object] | None = None) -> Path:
    """The hub's parquet layout: ``folder/data/{split}-00000-of-00001.parquet`` per split
    (same defaults as :func:`save_hf_to_disk`)."""
    if splits is None:
        splits = {"validation": hf_fairface_dataset(), "train": hf_fairface_dataset(HF_ROWS[:2])}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        target = folder / "data" / f"{split}-00000-of-00001.parquet"
        ds.to_parquet(str(target))  # type: ignore[attr-defined]
    return folder


# ------------------------------------------------------------------------- UTKFace

#: default well-formed UTKFace names (image k coloured PALETTE[k])
UTKFACE_NAMES = (
    "1_0_2_20161219140623097.jpg.chip.jpg",     # 1 y, Male, Asian
    "25_1_0_20170116000000000.jpg.chip.jpg",    # 25 y, Female, White
    "72_0_4_20170117000000001.jpg.chip.jpg",    # 72 y, Male, Others
    "part2/45_1_3_20170118000000002.jpg",       # 45 y, Female, Indian (in a subfolder)
)


def make_utkface(root: Path, names: Sequence[str] = UTKFACE_NAMES + UTKFACE_MALFORMED) -> Path:
    """A UTKFace folder: one image per name (relative paths allowed; image k coloured
    PALETTE[k]) plus a non-image ``README.txt`` that adapters must ignore. The default
    names are UTKFACE_NAMES followed by the three real malformed names."""
    for k, name in enumerate(names):
        write_image(root / name, PALETTE[k % len(PALETTE)])
    write_text(root / "README.txt", ["not an image"])
    return root


# --------------------------------------------------------------------- generic CSV

#: header of :func:`make_generic_csv`'s CSV (custom names, different case from config)
GENERIC_HEADER = "Photo,Ethnicity,Sex,Years,subject"


def make_generic_csv(root: Path) -> Path:
    """``root/meta/labels.csv`` whose image paths are relative to ``root/`` (not to the
    CSV's folder), with custom column names; returns the CSV path. Rows (colour)::

        imgs/a.png  Black        F     34  s1   (red)
        imgs/b.png  Indian       Male   8  s2   (green)
        imgs/c.png  White        Woman 70  s3   (blue)
    """
    rows = [("imgs/a.png", "Black", "F", "34", "s1"),
            ("imgs/b.png", "Indian", "Male", "8", "s2"),
            ("imgs/c.png", "White", "Woman", "70", "s3")]
    for k, row in enumerate(rows):
        write_image(root / row[0], PALETTE[k])
    return write_text(root / "meta" / "labels.csv", [GENERIC_HEADER, *(",".join(r) for r in rows)])


# ------------------------------------------------------------- custom attributes

#: Monk skin tone scale values in their declared order (as strings they sort 1, 10, 2, ...)
MONK_VALUES = tuple(str(k) for k in range(1, 11))
#: regions of :func:`make_custom_csv` in their declared order (not alphabetical)
REGIONS = ("Europe", "Africa", "Asia", "Americas")
#: RGB colours the hand model of tests/handmodel.py classifies as red / green / blue
HAND_COLOURS: Mapping[str, Color] = {"red": RED, "green": GREEN, "blue": BLUE}


def make_custom_csv(root: Path, n: int = 60, seed: int = 0) -> Path:
    """``root/labels.csv`` with the user's own attribute columns and one image per row;
    returns the CSV path. Columns::

        file     imgs/{i}.png (a solid red, green or blue image: the column ``colour``)
        monk     Monk skin tone as an integer 1..10 (raw; declare mapping/values to read it)
        region   one of REGIONS, some lower-case, one row per 15 empty (missing)
        gender   Male / Female
        age      FairFace age bins
        colour   red / green / blue: the image's colour (a target column)

    Values are seeded-random, so groups differ in size; every region occurs.
    """
    import random

    rng = random.Random(seed)
    ages = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
    lines = ["file,monk,region,gender,age,colour"]
    for i in range(n):
        colour = rng.choice(list(HAND_COLOURS))
        region = REGIONS[i % len(REGIONS)] if i < len(REGIONS) else rng.choice(REGIONS)
        if i % 15 == 14:
            region = ""
        elif i % 7 == 3:
            region = region.lower()
        write_image(root / "imgs" / f"{i}.png", HAND_COLOURS[colour])
        lines.append(f"imgs/{i}.png,{rng.randint(1, 10)},{region},{rng.choice(['Male', 'Female'])},"
                     f"{rng.choice(ages)},{colour}")
    return write_text(root / "labels.csv", lines)
