"""FACET (Gustafson et al., ICCV 2023; Meta; research and evaluation only): people in whole
scenes, one unit per annotated person.

Layer: data.

Layout (``dataset=facet dataset.root=<root>``): ``<root>/annotations/annotations.csv`` with
columns ``person_id, filename, class1, class2, bounding_box`` (a JSON or Python-dict string
``{x, y, width, height}`` in pixels), ``gender_presentation_{masc,fem,non_binary,na}``,
``skin_tone_1 ... skin_tone_10, skin_tone_na``, ``age_presentation_{young,middle,older,na}``,
``lighting_{underexposed,dimly_lit,well_lit,overexposed,na}`` (annotator counts) and the
hair / has_* / visible_* columns (kept as they are); the images in ``dataset.images``
(default: the first of ``<root>/images``, ``<root>/imgs``, ``<root>/imgs_1``, ``imgs_2``,
``imgs_3`` and ``<root>`` that holds the file).

Each person is one row (``image_id`` = ``person_id``). ``crop: person`` (default) evaluates the
person's bounding box, widened by ``crop_margin`` (a share of the box's width / height on each
side) and clipped to the image; ``crop: image`` the whole image (every person of an image then
shares its embedding). The reader returns the crop's pixels encoded as PNG, so the embedding
cache (keyed by the sha256 of the bytes a reader returns) keys on the crop: a person crop and the
whole image are different entries, and the same crop is found again.

Declared attributes (labels are annotators' perceptions, not facts about the person):

``class1``
    the person class (FACET's 52); ``class2`` (a second class some persons have) stays a plain
    column: the ``facet_classes`` taxonomy counts a prediction equal to it as correct too.
``gender_presentation`` (masculine / feminine / non-binary), ``age_presentation`` (young /
middle / older), ``lighting`` (underexposed / dimly lit / well lit / overexposed)
    the annotators' majority: the value with the most votes; a tie for the most votes, or the
    most votes for ``na``, or no votes, is missing (counted per reason).
``skin_tone``
    by the named rule ``skin_tone_rule`` over the Monk skin-tone votes (``skin_tone_1..10``;
    ``skin_tone_na`` votes are not tones and are left out): ``monk_3`` (default) the votes' mean
    tone rounded to the nearest level (halves up), then banded 1-3 / 4-6 / 7-10; ``monk_10``
    that rounded level itself; ``monk_argmax`` the level with the most votes (a tie is
    missing). A person with fewer than ``min_annotators`` tone votes has no skin tone.

The rule and the thresholds are in ``FaceDataset.source`` (run.json's dataset record); the rules
in words (:func:`rules`) and the missing counts (:func:`missing_counts`, from the
``<attribute>_missing_reason`` columns) in run.json's ``facet`` and the FACET report section.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .adapters import DATASETS, RowIssues, finish_dataset, match_columns, read_label_csv
from .attributes import Attribute, LabelError
from .base import DatasetError, FaceDataset, read_file
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError, decode_image

log = logging.getLogger(__name__)

#: FACET's 52 person classes, as the annotations spell them (class1 / class2)
FACET_CLASSES: tuple[str, ...] = (
    "astronaut", "backpacker", "ballplayer", "bartender", "basketball_player", "boatman", "carpenter",
    "cheerleader", "climber", "computer_user", "craftsman", "dancer", "disk_jockey", "doctor", "drummer",
    "electrician", "farmer", "fireman", "flutist", "gardener", "guard", "guitarist", "gymnast", "hairdresser",
    "horseman", "judge", "laborer", "lawman", "lifeguard", "machinist", "motorcyclist", "nurse", "painter",
    "patient", "prayer", "referee", "repairman", "reporter", "retailer", "runner", "sculptor", "seller",
    "singer", "skateboarder", "soccer_player", "soldier", "speaker", "student", "teacher", "tennis_player",
    "trumpeter", "waiter",
)

#: majority-vote attributes: name -> ((value, count column suffix), ...), in declared order; the
#: count columns are ``<prefix>_<suffix>`` and ``<prefix>_na``
MAJORITY: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "gender_presentation": ("gender_presentation", (("masculine", "masc"), ("feminine", "fem"),
                                                    ("non-binary", "non_binary"))),
    "age_presentation": ("age_presentation", (("young", "young"), ("middle", "middle"), ("older", "older"))),
    "lighting": ("lighting", (("underexposed", "underexposed"), ("dimly lit", "dimly_lit"),
                              ("well lit", "well_lit"), ("overexposed", "overexposed"))),
}
SKIN_TONE_RULES: dict[str, str] = {
    "monk_3": "the mean of the annotators' Monk skin-tone votes rounded to the nearest level (halves up), "
              "then banded 1-3 / 4-6 / 7-10",
    "monk_10": "the mean of the annotators' Monk skin-tone votes rounded to the nearest level (halves up)",
    "monk_argmax": "the Monk level with the most annotator votes (a tie is missing)",
}
MONK_3: tuple[str, ...] = ("1-3", "4-6", "7-10")
MONK_10: tuple[str, ...] = tuple(str(k) for k in range(1, 11))
SKIN_COLUMNS: tuple[str, ...] = tuple(f"skin_tone_{k}" for k in range(1, 11))
CROPS = ("person", "image")
_IMAGE_DIRS = ("images", "imgs", "imgs_1", "imgs_2", "imgs_3", ".")
_BOX_KEYS = ("x", "y", "width", "height")
#: the slices ``slices: auto`` computes first: each attribute, then per-class recall by group
FACET_SLICES: tuple = ("overall", "class1", "gender_presentation", "skin_tone", "age_presentation", "lighting",
                       ("class1", "gender_presentation"), ("class1", "skin_tone"), ("class1", "age_presentation"),
                       ("class1", "lighting"))
#: the stratum attributes: ``class1+gender_presentation`` is recall per class by group, compared
#: within a class only (see clipfair.stats.metrics.disparities)
FACET_STRATA: tuple[str, ...] = ("class1", "class2")
FACET_PLOT_SLICES: dict[str, tuple[str, ...]] = {
    "accuracy": ("gender_presentation", "skin_tone", "age_presentation", "lighting"),
    "rate": ("gender_presentation", "skin_tone")}


def class_attribute(name: str, allow_missing: bool) -> Attribute:
    """A person-class attribute (FACET's 52 classes; case, spaces, '_' and '-' tolerated)."""
    return Attribute(name, values=FACET_CLASSES, allow_missing=allow_missing,
                     missing_values=("", "none", "None", "nan", "NaN", "null", "NA", "N/A"))


# ------------------------------------------------------------------------ attribute rules


def majority(counts: pd.DataFrame, values: Sequence[str], na_column: str | None) -> tuple[list[Any], list[Any]]:
    """The annotators' majority per row: ``counts`` has one count column per value of
    ``values`` (same order) and ``na_column`` (if given) the ``na`` votes. Returns (the value or
    None per row, why it is missing per row: ``tie``, ``na``, ``no_votes`` or None)."""
    cols = list(counts.columns)
    m = counts.to_numpy(float)
    top = m.max(axis=1) if m.shape[1] else np.zeros(len(m))
    n_top = (m == top[:, None]).sum(axis=1)
    arg = m.argmax(axis=1)
    out: list[Any] = []
    why: list[Any] = []
    na_idx = cols.index(na_column) if na_column in cols else -1
    for i in range(len(m)):
        reason = ("no_votes" if top[i] <= 0 else "tie" if n_top[i] > 1 else "na" if arg[i] == na_idx else None)
        out.append(None if reason else values[arg[i]])
        why.append(reason)
    return out, why


def skin_tone(counts: pd.DataFrame, rule: str, min_annotators: int) -> tuple[list[Any], list[Any]]:
    """The skin-tone value per row by ``rule`` (see the module docstring) from the ten
    ``skin_tone_k`` count columns (in order), and why it is missing per row (``no_votes``,
    ``too_few_annotators``, ``tie`` or None)."""
    if rule not in SKIN_TONE_RULES:
        raise DatasetError(f"dataset.skin_tone_rule must be one of {', '.join(SKIN_TONE_RULES)}, got {rule!r}")
    m = counts.to_numpy(float)
    votes = m.sum(axis=1)
    levels = np.arange(1, 11, dtype=float)
    out: list[Any] = []
    why: list[Any] = []
    for i in range(len(m)):
        if votes[i] <= 0 or votes[i] < min_annotators:
            out.append(None)
            why.append("too_few_annotators" if votes[i] > 0 else "no_votes")
            continue
        why.append(None)
        if rule == "monk_argmax":
            hits = np.flatnonzero(m[i] == m[i].max())
            if len(hits) > 1:
                out.append(None)
                why[-1] = "tie"
                continue
            out.append(str(int(hits[0]) + 1))
            continue
        mean = float((m[i] * levels).sum() / votes[i])
        level = int(math.floor(mean + 0.5))
        out.append(str(level) if rule == "monk_10" else MONK_3[0 if level <= 3 else 1 if level <= 6 else 2])
    return out, why


# ------------------------------------------------------------------------ bounding boxes


def parse_box(text: object) -> tuple[float, float, float, float]:
    """``{x, y, width, height}`` from a JSON or Python-dict string; ValueError saying why."""
    s = "" if text is None else str(text).strip()
    if not s:
        raise ValueError("empty bounding_box")
    try:
        obj = json.loads(s)
    except ValueError:
        try:
            obj = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"bounding_box {s[:80]!r} is neither JSON nor a Python dict") from None
    if not isinstance(obj, dict):
        raise ValueError(f"bounding_box {s[:80]!r} is not a mapping with keys x, y, width, height")
    missing = [k for k in _BOX_KEYS if k not in obj]
    if missing:
        raise ValueError(f"bounding_box {s[:80]!r} has no {', '.join(missing)}")
    try:
        vals = tuple(float(obj[k]) for k in _BOX_KEYS)
    except (TypeError, ValueError):
        raise ValueError(f"bounding_box {s[:80]!r}: x, y, width and height must be numbers") from None
    if not all(math.isfinite(v) for v in vals) or vals[2] <= 0 or vals[3] <= 0:
        raise ValueError(f"bounding_box {s[:80]!r}: width and height must be positive finite numbers")
    return vals  # type: ignore[return-value]


def crop_box(size: tuple[int, int], box: tuple[float, float, float, float],
             margin: float) -> tuple[int, int, int, int] | None:
    """The pixel box (left, top, right, bottom) of ``box`` widened by ``margin`` x its width /
    height on each side and clipped to an image of ``size`` (w, h); None when nothing is left."""
    w_img, h_img = size
    x, y, w, h = box
    left = max(0, int(math.floor(x - margin * w)))
    top = max(0, int(math.floor(y - margin * h)))
    right = min(int(w_img), int(math.ceil(x + w + margin * w)))
    bottom = min(int(h_img), int(math.ceil(y + h + margin * h)))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


@dataclass
class CropReader:
    """Image ``i`` is the file ``paths[i]``, cropped to ``boxes[i]`` (None: the whole file, its
    bytes as stored). A crop is returned as PNG (lossless, deterministic), so its bytes, and
    the cache key made from them, depend on the crop. The last few decoded images are kept
    (the persons of one image are read one after another)."""

    paths: list[Path]
    boxes: list[tuple[float, float, float, float] | None]
    margin: float = 0.0
    ids: list[str] = field(default_factory=list)
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES
    _decoded: "OrderedDict[str, Any] | None" = field(default=None, repr=False)
    _lock: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: no lock, no decoded images
        return {**self.__dict__, "_decoded": None, "_lock": None}

    def _raw(self, i: int) -> bytes:
        return read_file(self.paths[i], self.max_bytes, self.describe(i), "dataset.root / dataset.images")

    def _image(self, i: int) -> Any:
        if self._lock is None:
            self._lock = threading.Lock()
        key = str(self.paths[i])
        with self._lock:
            if self._decoded is None:
                self._decoded = OrderedDict()
            if key in self._decoded:
                self._decoded.move_to_end(key)
                return self._decoded[key]
        img = decode_image(self._raw(i), self.describe(i))
        with self._lock:
            self._decoded[key] = img
            while len(self._decoded) > 4:
                self._decoded.popitem(last=False)
        return img

    def read(self, i: int) -> bytes:
        box = self.boxes[i]
        if box is None:
            return self._raw(i)
        img = self._image(i)
        px = crop_box(img.size, box, self.margin)
        if px is None:
            raise ImageError(self.describe(i), f"the bounding box {box} lies outside the {img.width}x{img.height} "
                             "image", "fix the row's bounding_box, or set dataset.on_error=skip")
        buf = io.BytesIO()
        img.crop(px).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def describe(self, i: int) -> str:
        who = f" (person {self.ids[i]})" if self.ids else ""
        return f"{self.paths[i]}{who}"

    def shared_source(self, i: int) -> str | None:
        """The file every row reading it whole shares (crop=image), else None: rows of one
        source file with the same content are not duplicates by mistake."""
        return str(self.paths[i]) if self.boxes[i] is None else None

    def subset(self, indices: Sequence[int]) -> "CropReader":
        idx = list(indices)
        return CropReader([self.paths[i] for i in idx], [self.boxes[i] for i in idx], self.margin,
                          [self.ids[i] for i in idx] if self.ids else [], self.max_bytes)


# ------------------------------------------------------------------------------ the layout


def _image_index(root: Path, images: str | None) -> tuple[list[Path], dict[str, Path]]:
    """The folders searched for images and {file name: path} over them (first folder wins)."""
    if images:
        dirs = [Path(str(images)).expanduser()]
        if not dirs[0].is_dir():
            raise DatasetError(f"dataset.images {dirs[0]} is not a folder; point it at FACET's image folder")
    else:
        dirs = [root / d for d in _IMAGE_DIRS if (root / d).is_dir()]
    index: dict[str, Path] = {}
    for d in dirs:
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_file() and not e.name.startswith("."):
                        index.setdefault(e.name, Path(e.path))
        except OSError as e:
            raise DatasetError(f"cannot list image folder {d}: {e}") from None
    return dirs, index


def _counts(frame: pd.DataFrame, columns: Sequence[str], csv: Path, issues: RowIssues,
            ids: Sequence[str]) -> pd.DataFrame:
    """The count columns as non-negative integers (a bad cell is flagged as ``bad_count`` and
    read as 0 in a skipped row)."""
    out = {}
    for c in columns:
        raw = frame[c]
        num = pd.to_numeric(raw.where(raw != "", "0"), errors="coerce")
        bad = num.isna() | (num < 0) | (num != np.floor(num.fillna(0)))
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            r = int(rows[0])
            issues.flag(rows, "bad_count", f"{csv} row {r + 1} (person_id {ids[r]}), column {c!r}: "
                        f"{raw.iloc[r]!r} is not a non-negative whole number of annotators"
                        + (f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""))
        out[c] = num.where(~bad, 0).astype(int)
    return pd.DataFrame(out, index=frame.index)


@DATASETS.register("facet")
def facet(*, root: str | None = None, images: str | None = None, crop: str = "person", crop_margin: float = 0.0,
          skin_tone_rule: str = "monk_3", min_annotators: int = 1, limit: int | None = None,
          on_error: str = "raise") -> FaceDataset:
    """FACET's annotations and images (see the module docstring)."""
    if not root:
        raise DatasetError("dataset facet needs dataset.root: the folder holding annotations/annotations.csv "
                           "(download FACET from https://facet.metademolab.com/, research and evaluation only)")
    if crop not in CROPS:
        raise DatasetError(f"dataset.crop must be one of {', '.join(CROPS)}, got {crop!r}")
    try:
        margin = float(crop_margin)
    except (TypeError, ValueError):
        raise DatasetError(f"dataset.crop_margin must be a number >= 0, got {crop_margin!r}") from None
    if not math.isfinite(margin) or margin < 0:
        raise DatasetError(f"dataset.crop_margin must be a number >= 0, got {crop_margin!r}")
    if skin_tone_rule not in SKIN_TONE_RULES:
        raise DatasetError(f"dataset.skin_tone_rule must be one of {', '.join(SKIN_TONE_RULES)}, "
                           f"got {skin_tone_rule!r}")
    if isinstance(min_annotators, bool) or not isinstance(min_annotators, int) or min_annotators < 1:
        raise DatasetError(f"dataset.min_annotators must be a whole number >= 1, got {min_annotators!r}")
    root_path = Path(str(root)).expanduser()
    csv = root_path / "annotations" / "annotations.csv"
    frame = read_label_csv(csv, "dataset.root must hold annotations/annotations.csv (FACET's layout)")
    count_cols = [f"{prefix}_{suffix}" for prefix, vals in MAJORITY.values() for _, suffix in vals] + \
                 [f"{prefix}_na" for prefix, _ in MAJORITY.values()] + list(SKIN_COLUMNS)
    wanted = {c: c for c in ("person_id", "filename", "class1", "bounding_box", *count_cols)}
    actual = match_columns(list(frame.columns), wanted, f"FACET annotations {csv}",
                            "this is not FACET's annotations.csv")
    frame = frame.rename(columns={v: k for k, v in actual.items()})
    has_class2 = "class2" in frame.columns
    if not len(frame):
        raise DatasetError(f"FACET annotations {csv} has no rows")
    ids = frame["person_id"].astype(str).tolist()
    issues = RowIssues(on_error)
    seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if not pid:
            raise DatasetError(f"{csv} row {i + 1}, column 'person_id': empty; every person needs an id")
        if pid in seen:
            raise DatasetError(f"{csv} rows {seen[pid] + 1} and {i + 1}, column 'person_id': {pid!r} appears twice; "
                               "each person must appear once")
        seen[pid] = i

    def where(i: int) -> str:
        return f"{csv} row {i + 1} (person_id {ids[i]})"

    # bounding boxes
    boxes: list[tuple[float, float, float, float] | None] = []
    for i, text in enumerate(frame["bounding_box"]):
        try:
            boxes.append(parse_box(text))
        except ValueError as e:
            boxes.append(None)
            issues.flag([i], "bad_bounding_box", f"{where(i)}, column 'bounding_box': {e}")
    # images
    dirs, index = _image_index(root_path, images)
    paths: list[Path | None] = []
    missing = []
    real_root = os.path.realpath(root_path)
    for i, name in enumerate(frame["filename"]):
        name = str(name)
        if "/" in name or os.sep in name:
            p = Path(os.path.normpath(root_path / name))
            if not os.path.realpath(p).startswith(real_root.rstrip(os.sep) + os.sep):
                raise DatasetError(f"{where(i)}, column 'filename': {name!r} leaves the dataset root {root_path}")
            p = p if p.is_file() else None
        else:
            p = index.get(name)
        paths.append(p)
        if p is None:
            missing.append(i)
    if missing:
        r = missing[0]
        issues.flag(missing, "missing_image",
                    f"{where(r)}, column 'filename': image {frame['filename'].iloc[r]!r} not found in "
                    f"{', '.join(str(d) for d in dirs) or root_path}"
                    + (f" ({len(missing) - 1} more rows' images are missing too)" if len(missing) > 1 else "")
                    + "; set dataset.images to FACET's image folder")
    # classes
    labels: dict[str, list[Any]] = {}
    c1 = class_attribute("class1", allow_missing=False)
    c2 = class_attribute("class2", allow_missing=True)
    for attr, col in [(c1, "class1"), *([(c2, "class2")] if has_class2 else [])]:
        vals: list[Any] = []
        for i, raw in enumerate(frame[col]):
            try:
                vals.append(attr.convert(raw))
            except LabelError as e:
                vals.append(None)
                issues.flag([i], f"unknown_{col}", f"{where(i)}, column {col!r}: {str(e)[:300]}")
        labels[col] = vals
    # annotator counts -> attributes
    counts = _counts(frame, count_cols, csv, issues, ids)
    reasons: dict[str, list[Any]] = {}
    for name, (prefix, vals) in MAJORITY.items():
        cols = [f"{prefix}_{s}" for _, s in vals] + [f"{prefix}_na"]
        labels[name], reasons[name] = majority(counts[cols], [v for v, _ in vals], f"{prefix}_na")
    labels["skin_tone"], reasons["skin_tone"] = skin_tone(counts[list(SKIN_COLUMNS)], skin_tone_rule,
                                                          int(min_annotators))
    declared = [c1,
                Attribute("gender_presentation", values=tuple(v for v, _ in MAJORITY["gender_presentation"][1])),
                Attribute("skin_tone", values=MONK_3 if skin_tone_rule == "monk_3" else MONK_10),
                Attribute("age_presentation", values=tuple(v for v, _ in MAJORITY["age_presentation"][1])),
                Attribute("lighting", values=tuple(v for v, _ in MAJORITY["lighting"][1]))]
    table_labels = {a.name: labels[a.name] for a in declared}
    rest = frame.drop(columns=["class1"])
    if has_class2:
        rest["class2"] = labels["class2"]
    for name, why in reasons.items():  # why each missing value is missing, person by person
        rest[missing_column(name)] = why
    source = {"adapter": "facet", "root": str(root_path), "csv": str(csv), "images": ", ".join(str(d) for d in dirs),
              "crop": crop, "crop_margin": margin, "skin_tone_rule": skin_tone_rule,
              "min_annotators": int(min_annotators)}
    reader_paths = [p if p is not None else Path(str(n)) for p, n in zip(paths, frame["filename"])]
    use_boxes = boxes if crop == "person" else [None] * len(boxes)

    def make_reader(kept: list[int]) -> CropReader:
        return CropReader([reader_paths[i] for i in kept], [use_boxes[i] for i in kept], margin,
                          [ids[i] for i in kept])

    ds = finish_dataset("facet", rest, ids, table_labels, {"class1": "class1"}, make_reader, issues, source,
                        limit, declared)
    ds.default_slices = FACET_SLICES
    ds.plot_slices = dict(FACET_PLOT_SLICES)
    ds.strata = FACET_STRATA
    ds.tolerated_values = {}
    for a, why in missing_counts(ds.table).items():  # over the persons kept (after skips and limit)
        if why:
            log.info("dataset 'facet': %s missing for %d persons (%s)", a, sum(why.values()),
                     ", ".join(f"{k}={v}" for k, v in sorted(why.items())))
    return ds


#: the rules, in words (run.json and the report)
MAJORITY_RULE = ("the value with the most annotator votes; a tie for the most, the most votes for 'na', or no "
                 "votes: missing")
CLASS2_RULE = ("a prediction equal to the person's class2 (a second class some persons have) counts as correct, "
               "as one equal to class1")


def rules(source: dict[str, Any]) -> dict[str, Any]:
    """The rules a FACET dataset was read with (from its ``source``), in words."""
    rule = source.get("skin_tone_rule", "monk_3")
    return {"crop": source.get("crop"), "crop_margin": source.get("crop_margin"), "skin_tone_rule": rule,
            "skin_tone_rule_text": SKIN_TONE_RULES.get(rule, ""), "min_annotators": source.get("min_annotators"),
            "majority_rule": MAJORITY_RULE, "class2_rule": CLASS2_RULE}


def missing_column(attribute: str) -> str:
    """The table column saying why a person's ``attribute`` is missing (empty: not missing)."""
    return f"{attribute}_missing_reason"


RULE_ATTRIBUTES: tuple[str, ...] = (*MAJORITY, "skin_tone")


def missing_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{attribute: {reason: persons}} of the rule-made attributes among ``table``'s persons."""
    out: dict[str, dict[str, int]] = {}
    for a in RULE_ATTRIBUTES:
        col = missing_column(a)
        if col in table.columns:
            out[a] = {str(k): int(v) for k, v in table[col].dropna().value_counts().sort_index().items()}
    return out
