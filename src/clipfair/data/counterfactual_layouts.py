"""Counterfactual-set layouts: datasets whose images come in sets that differ in one or two
attributes and hold everything else fixed.

Layer: data.

Every layout declares the attributes ``set_id`` (the set; ``limit`` / ``subset.n`` count sets,
which stay whole), ``subject`` (what the set depicts, e.g. an occupation), ``varies`` (which
attributes vary within the set) and one attribute per varied dimension (``race``, ``gender``,
``physical``, ...; empty where a set does not vary it). :mod:`clipfair.analyses.counterfactual`
measures them. ``dataset=csv dataset.set_column=...`` reads any user's sets (see
:func:`clipfair.data.adapters.csv_file`).

``social_counterfactuals``
    the Hugging Face parquet shards of SocialCounterfactuals (Howard et al., CVPR 2024):
    ``<root>/data/train-*.parquet`` with columns ``image`` (HF Image: ``{bytes, path}``),
    ``a1_type``, ``a1``, ``a2_type``, ``a2``, ``a1a2``, ``counterfactual_set``, ``caption``,
    ``dataset_segment`` (and optionally ``subject``). Only the small columns are read at load
    time; an image's bytes are read from its shard's row group when it is encoded.
``pairs``
    PAIRS: ``<root>/data/<category>/<scenario>/{black,white}_{man,woman}.png``; a set of 4
    per scenario, race (Black / White) x gender (Male / Female), subject = scenario.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .adapters import DATASETS, RowIssues, finish_dataset
from .attributes import Attribute
from .base import DatasetError, FaceDataset, FileReader
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError

log = logging.getLogger(__name__)

SC_COLUMNS = ("a1_type", "a1", "a2_type", "a2", "a1a2", "counterfactual_set", "caption", "dataset_segment")
#: words that open a caption's template rather than name its subject
_LEADING = {"a", "an", "the", "photo", "picture", "image", "of", "portrait", "who", "is", "as", "working"}
_WORD = re.compile(r"[A-Za-z0-9'-]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(str(text))]


def subject_from_captions(captions: Sequence[str], attribute_values: Sequence[str]) -> str:
    """The subject of a set from its members' captions: the words every caption shares, in the
    first caption's order, without the attribute values' words and the template's opening
    words ("a photo of a ..."). Captions that differ only in the attribute words give the
    rest of the caption, e.g. "doctor"."""
    if not len(captions):
        return ""
    common = set(_words(captions[0]))
    for c in captions[1:]:
        common &= set(_words(c))
    drop = {w for v in attribute_values for w in _words(v)}
    words = [w for w in _words(captions[0]) if w in common and w not in drop]
    while words and words[0] in _LEADING:
        words.pop(0)
    return " ".join(words)


# ------------------------------------------------------------------- SocialCounterfactuals


@dataclass
class ParquetImageReader:
    """Image ``i`` is row ``rows[i]`` of row group ``groups[i]`` of shard ``shards[i]``; a row
    group's image column is read when one of its images is first needed (the last few are
    kept). HF Image cells are ``{bytes, path}``: bytes when stored, else the path under
    ``root``."""

    files: list[str]
    shards: np.ndarray
    groups: np.ndarray
    rows: np.ndarray
    root: str
    column: str = "image"
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES
    _cache: "OrderedDict[tuple[int, int], list[Any]]" = field(default_factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def _group(self, shard: int, group: int) -> list[Any]:
        key = (shard, group)
        if key not in self._cache:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.files[shard])
            self._cache[key] = pf.read_row_group(group, columns=[self.column]).column(0).to_pylist()
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return self._cache[key]

    def read(self, i: int) -> bytes:
        cell = self._group(int(self.shards[i]), int(self.groups[i]))[int(self.rows[i])]
        if isinstance(cell, dict):
            data, path = cell.get("bytes"), cell.get("path")
        else:
            data, path = cell, None
        if data is None and path:
            p = Path(self.root) / str(path)
            if not p.is_file():
                raise ImageError(f"{self.describe(i)}: image path {path!r} not found under {self.root}")
            data = p.read_bytes()
        if data is None:
            raise ImageError(f"{self.describe(i)}: the image cell has neither bytes nor a path")
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise ImageError(f"{self.describe(i)}: image of {len(data)} bytes is larger than "
                             f"dataset.max_image_bytes={self.max_bytes}")
        return bytes(data)

    def describe(self, i: int) -> str:
        return f"{self.files[int(self.shards[i])]} row group {int(self.groups[i])} row {int(self.rows[i])}"

    def subset(self, indices: Sequence[int]) -> "ParquetImageReader":
        idx = np.asarray(list(indices), dtype=int)
        return ParquetImageReader(self.files, self.shards[idx], self.groups[idx], self.rows[idx], self.root,
                                  self.column, self.max_bytes)


def _sc_shards(root: Path) -> list[Path]:
    files = sorted((root / "data").glob("train-*.parquet")) or sorted(root.glob("train-*.parquet"))
    if not files:
        raise DatasetError(f"no SocialCounterfactuals shards (data/train-*.parquet) under {root}; download the "
                           "dataset (huggingface-cli download Intel/SocialCounterfactuals --repo-type dataset "
                           "--local-dir <root>) and set dataset.root to that folder")
    return files


@DATASETS.register("social_counterfactuals")
def social_counterfactuals(*, root: str | None = None, limit: int | None = None, on_error: str = "raise",
                           image_column: str = "image") -> FaceDataset:
    """SocialCounterfactuals' parquet shards under ``root`` (see the module docstring).
    ``limit`` counts sets (the first ``limit`` sets in shard order)."""
    import pyarrow.parquet as pq

    if not root:
        raise DatasetError("dataset social_counterfactuals needs dataset.root: the folder holding "
                           "data/train-*.parquet")
    root_path = Path(str(root)).expanduser()
    files = _sc_shards(root_path)
    frames, shards, groups, rows = [], [], [], []
    n_sets_seen: set[str] = set()
    for si, f in enumerate(files):
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DatasetError(f"cannot read parquet shard {f}: {str(e)[:200]}") from None
        names = pf.schema_arrow.names
        missing = [c for c in ("counterfactual_set", "a1_type", "a1", image_column) if c not in names]
        if missing:
            raise DatasetError(f"{f}: no column(s) {', '.join(missing)}; this is not a SocialCounterfactuals "
                               f"shard (its columns: {', '.join(names)})")
        cols = [c for c in (*SC_COLUMNS, "subject") if c in names]
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=cols).to_pandas()
            frames.append(t)
            shards.append(np.full(len(t), si))
            groups.append(np.full(len(t), g))
            rows.append(np.arange(len(t)))
            n_sets_seen.update(t["counterfactual_set"].astype(str))
        if limit is not None and len(n_sets_seen) > int(limit):
            # later shards could still hold members of a set begun here: a set is taken whole
            # from the shards read; sets are stored contiguously in the published shards
            break
    frame = pd.concat(frames, ignore_index=True).astype(object)
    frame = frame.where(frame.notna(), None)
    shard_a, group_a, row_a = np.concatenate(shards), np.concatenate(groups), np.concatenate(rows)
    set_ids = frame["counterfactual_set"].astype(str)
    types = sorted({str(v) for c in ("a1_type", "a2_type") if c in frame for v in frame[c] if v not in (None, "")})
    labels: dict[str, list[Any]] = {t: [None] * len(frame) for t in types}
    for c_type, c_val in (("a1_type", "a1"), ("a2_type", "a2")):
        if c_type not in frame or c_val not in frame:
            continue
        for i, (ty, v) in enumerate(zip(frame[c_type], frame[c_val])):
            if ty not in (None, "") and v not in (None, ""):
                labels[str(ty)][i] = str(v)
    if "subject" in frame:
        subject = frame["subject"].astype(str).tolist()
    else:
        subject = [""] * len(frame)
        vals = {t: labels[t] for t in types}
        for sid, idx in set_ids.groupby(set_ids).groups.items():
            idx = list(idx)
            words = [vals[t][i] for t in types for i in idx if vals[t][i]]
            s = subject_from_captions([frame["caption"][i] for i in idx], words) if "caption" in frame else ""
            for i in idx:
                subject[i] = s or str(sid)
    varies = (frame["dataset_segment"].astype(str).tolist() if "dataset_segment" in frame
              else _varies(set_ids, labels))
    image_ids = [f"{s}/{i}" for s, i in zip(set_ids, range(len(frame)))]
    declared = [Attribute("set_id", allow_missing=False), Attribute("subject"), Attribute("varies"),
                *[Attribute(t) for t in types]]
    issues = RowIssues(on_error)
    lab = {"set_id": set_ids.tolist(), "subject": subject, "varies": varies, **labels}
    source = {"adapter": "social_counterfactuals", "root": str(root_path), "shards": [str(f) for f in files],
              "set_column": "set_id"}
    reader = ParquetImageReader([str(f) for f in files], shard_a, group_a, row_a, str(root_path), image_column)
    frame = frame.drop(columns=[c for c in frame.columns if c in lab])
    return finish_dataset("social_counterfactuals", frame, image_ids, lab, {}, lambda kept: reader.subset(kept), issues,
                   source, limit, declared)


def _varies(set_ids: pd.Series, labels: dict[str, list[Any]]) -> list[str]:
    """Per row: the attributes (joined by '-') that take more than one value in its set."""
    df = pd.DataFrame({"set": set_ids.to_numpy(), **labels})
    out = pd.Series("", index=df.index, dtype=object)
    for sid, part in df.groupby("set"):
        v = "-".join(t for t in labels if part[t].dropna().nunique() > 1)
        out[part.index] = v or "none"
    return out.tolist()


# ------------------------------------------------------------------------------- PAIRS

_PAIRS_NAME = re.compile(r"(?P<race>black|white)_(?P<gender>man|woman)\.(png|jpe?g)$", re.IGNORECASE)


@DATASETS.register("pairs")
def pairs(*, root: str | None = None, limit: int | None = None, on_error: str = "raise") -> FaceDataset:
    """PAIRS: ``<root>/data/<category>/<scenario>/{black,white}_{man,woman}.png`` (``root/data``
    or ``root`` itself holds the category folders). One set of 4 per scenario."""
    if not root:
        raise DatasetError("dataset pairs needs dataset.root: the folder holding data/<category>/<scenario>/")
    root_path = Path(str(root)).expanduser()
    base = root_path / "data" if (root_path / "data").is_dir() else root_path
    files = sorted(p for p in base.glob("*/*/*") if p.is_file() and _PAIRS_NAME.match(p.name))
    if not files:
        raise DatasetError(f"no PAIRS images ({{black,white}}_{{man,woman}}.png in <category>/<scenario>/ "
                           f"folders) under {base}; check dataset.root")
    rows = []
    for p in files:
        m = _PAIRS_NAME.match(p.name)
        rows.append({"file": str(p.relative_to(base)), "category": p.parent.parent.name,
                     "scenario": p.parent.name, "race": m["race"].capitalize(),
                     "gender": "Male" if m["gender"].lower() == "man" else "Female"})
    frame = pd.DataFrame(rows)
    set_ids = (frame["category"] + "/" + frame["scenario"]).tolist()
    lab = {"set_id": set_ids, "subject": frame["scenario"].str.replace("_", " ").tolist(),
           "varies": ["race-gender"] * len(frame), "race": frame["race"].tolist(),
           "gender": frame["gender"].tolist()}
    declared = [Attribute("set_id", allow_missing=False), Attribute("subject"), Attribute("varies"),
                Attribute("race", values=("Black", "White"), allow_missing=False),
                Attribute("gender", values=("Male", "Female"), allow_missing=False)]
    paths = [base / f for f in frame["file"]]
    issues = RowIssues(on_error)
    return finish_dataset("pairs", frame.drop(columns=["race", "gender"]), frame["file"].tolist(), lab, {},
                   lambda kept: FileReader([paths[i] for i in kept]), issues,
                   {"adapter": "pairs", "root": str(root_path), "set_column": "set_id"}, limit, declared)


# --------------------------------------------------------------------------- VisoGender

#: perceived-gender spellings of the VisoGender TSVs -> masculine / feminine
_VG_GENDER = {"masculine": "masculine", "male": "masculine", "man": "masculine", "m": "masculine",
              "feminine": "feminine", "female": "feminine", "woman": "feminine", "f": "feminine"}
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def _vg_gender(value: object, where: str) -> str:
    v = str(value or "").strip().lower()
    if v not in _VG_GENDER:
        raise DatasetError(f"{where}: perceived gender {value!r} is not one of masculine / feminine (or male / "
                           "female); fix the row")
    return _VG_GENDER[v]


@DATASETS.register("visogender")
def visogender(*, root: str | None = None, images: str | None = None, limit: int | None = None,
               on_error: str = "skip") -> FaceDataset:
    """VisoGender (Hall et al., NeurIPS 2023 D&B; CC-BY-4.0; images by URL). ``root`` holds its
    TSVs, ``OP_*.tsv`` (occupation + participant: columns ``IDX, Sector, Specialisation,
    Occupation, Participant, URL ..., Occupation_perceived_gender,
    Participant_perceived_gender``) and/or ``OO_*.tsv`` (occupation + object: ``Object`` and
    no participant gender); ``images`` (default ``root/images``) the images you downloaded
    from the TSVs' URLs, each named by its ``IDX`` (``<IDX>.jpg`` / ``.png`` / ...). Rows whose
    image is not there are skipped and counted (``on_error=skip``, the default: many URLs have
    gone) or an error (``on_error=raise``). Attributes: ``set_id`` (IDX), ``subject`` (the
    occupation), ``scene`` (``one-person`` / ``two-person``), ``occupation_gender``,
    ``participant_gender`` and ``gender_pair`` (``same`` / ``different``; two-person only),
    ``other`` (the participant or object)."""
    if not root:
        raise DatasetError("dataset visogender needs dataset.root: the folder holding OP_*.tsv / OO_*.tsv")
    root_path = Path(str(root)).expanduser()
    img_dir = Path(str(images)).expanduser() if images else root_path / "images"
    tsvs = sorted(root_path.glob("OP_*.tsv")) + sorted(root_path.glob("OO_*.tsv"))
    if not tsvs:
        raise DatasetError(f"no VisoGender TSVs (OP_*.tsv / OO_*.tsv) in {root_path}; check dataset.root")
    on_disk = {}
    if img_dir.is_dir():
        for p in img_dir.iterdir():
            if p.suffix.lower() in _IMAGE_EXT:
                on_disk.setdefault(p.stem, p)
    recs = []
    for tsv in tsvs:
        kind = tsv.name[:2]
        try:
            df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read VisoGender TSV {tsv}: {str(e)[:200]}") from None
        df.columns = [c.strip() for c in df.columns]
        other = "Participant" if kind == "OP" else "Object"
        need = ["IDX", "Occupation", other, "Occupation_perceived_gender"] + (
            ["Participant_perceived_gender"] if kind == "OP" else [])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise DatasetError(f"{tsv}: no column(s) {', '.join(missing)} (its columns: {', '.join(df.columns)}); "
                               "this is not a VisoGender TSV")
        for i, r in enumerate(df.to_dict("records")):
            where = f"{tsv} row {i + 1}"
            og = _vg_gender(r["Occupation_perceived_gender"], where)
            pg = _vg_gender(r["Participant_perceived_gender"], where) if kind == "OP" else None
            recs.append({"idx": str(r["IDX"]).strip(), "occupation": r["Occupation"].strip(),
                         "other": r[other].strip(), "scene": "two-person" if kind == "OP" else "one-person",
                         "occupation_gender": og, "participant_gender": pg,
                         "gender_pair": (None if pg is None else "same" if pg == og else "different"),
                         "sector": r.get("Sector", ""), "tsv": tsv.name})
    frame = pd.DataFrame(recs)
    issues = RowIssues(on_error)
    where = [f"{r['tsv']} IDX {r['idx']}" for r in recs]
    missing_rows = [i for i, r in enumerate(recs) if r["idx"] not in on_disk]
    issues.flag(missing_rows, "missing_image",
                f"{len(missing_rows)} VisoGender images not found in {img_dir} (named by IDX, e.g. "
                f"{recs[missing_rows[0]]['idx'] if missing_rows else ''}.jpg); download them from the TSVs' URLs "
                "(see the README) or set dataset.images")
    _check = {}
    for i, r in enumerate(recs):
        if r["idx"] in _check:
            raise DatasetError(f"{where[i]}: IDX {r['idx']!r} appears twice (also {where[_check[r['idx']]]})")
        _check[r["idx"]] = i
    paths = [on_disk.get(r["idx"]) for r in recs]
    lab = {"set_id": frame["idx"].tolist(), "subject": frame["occupation"].tolist(), "scene": frame["scene"].tolist(),
           "occupation_gender": frame["occupation_gender"].tolist(),
           "participant_gender": frame["participant_gender"].tolist(), "gender_pair": frame["gender_pair"].tolist(),
           "other": frame["other"].tolist()}
    declared = [Attribute("set_id", allow_missing=False), Attribute("subject"), Attribute("scene"),
                Attribute("occupation_gender", values=("masculine", "feminine")),
                Attribute("participant_gender", values=("masculine", "feminine")),
                Attribute("gender_pair", values=("same", "different")), Attribute("other")]
    return finish_dataset("visogender", frame.drop(columns=["occupation", "other", "scene", "occupation_gender",
                                                     "participant_gender", "gender_pair"]),
                   frame["idx"].tolist(), lab, {}, lambda kept: FileReader([paths[i] for i in kept]), issues,
                   {"adapter": "visogender", "root": str(root_path), "images": str(img_dir),
                    "tsvs": [str(t) for t in tsvs], "set_column": "set_id"}, limit, declared)
