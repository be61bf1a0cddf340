"""Geographic layouts: objects photographed across the world, with the household's income
(Dollar Street) or the region and country (GeoDE); what datacomp's evaluation reports as
geographic fairness (:mod:`clipfair.analyses.datacomp_geo` names its figures).

Layer: data.

Both layouts read either form users have:

``wds`` (webdataset shards, as datacomp and CLIP_benchmark read them: ``djghosh/wds_dollar_street_test``,
    ``djghosh/wds_geode_test``)
    ``<root>/test/nshards.txt`` and ``<root>/test/0.tar ...`` (or any ``*.tar`` under ``<root>/test`` or
    ``<root>``), ``<root>/classnames.txt`` (one class name a line; line i is class i) and optionally
    ``<root>/zeroshot_classification_templates.txt``. Each sample of a shard is the tar members
    sharing a key (``s0000000.webp``, ``s0000000.cls``, ``s0000000.npy``): the image (webp / png /
    jpg / jpeg), the class index as text (``.cls``) and the metadata vector (``.npy``, a NumPy array
    of integer codes). The metadata fields are datacomp's (``eval_utils/fairness_eval.py``):
    Dollar Street ``[income_ds, income_meta, region]``, GeoDE ``[region, country]``. The shards
    are read with the standard library's ``tarfile``: headers and the small members at load
    time, an image's bytes (by offset) when it is encoded.
``csv``
    a CSV (``dataset.csv``, default ``<root>/metadata.csv``) with an image-path column (relative to
    ``root``), the class name, and ``income`` (Dollar Street; a number, the household's monthly
    income) or ``region`` / ``country`` (GeoDE); an ``income_ds`` column (datacomp's income group)
    is kept when present.

Attributes: ``object`` (the class name; a taxonomy's ``target: object``), Dollar Street's
``income_band`` (bands of the numeric ``income`` column: quartiles computed on the dataset, or
the user's cut points ``dataset.income_bands: [..]``; the cut points go to run.json's dataset
source) and ``income_ds`` (datacomp's own income group codes, where the source has them),
``region`` and ``country``.

What the shards' integer codes mean was not confirmed: datacomp's code groups by them as they
are and never names them (its ``metadata_map`` is unset), so they stay codes (``"0"``, ``"1"``,
...) unless ``dataset.region_names`` / ``dataset.country_names`` map them onto names, and
datacomp's ``income_ds`` bucket definition (how the shards' income groups were cut) could not be
confirmed from any public code; ``income_meta`` is read as the numeric income (also
unconfirmed; see the README).
"""

from __future__ import annotations

import io
import logging
import math
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .adapters import DATASETS, RowIssues, finish_dataset
from .attributes import Attribute, plain_data
from .base import DatasetError, FaceDataset, FileReader
from .images import DEFAULT_MAX_IMAGE_BYTES, ImageError

log = logging.getLogger(__name__)

#: datacomp's metadata fields of each set's ``.npy`` vector (eval_utils/fairness_eval.py)
WDS_FIELDS: dict[str, tuple[str, ...]] = {
    "dollar_street": ("income_ds", "income_meta", "region"),
    "geode": ("region", "country"),
}
#: GeoDE's six regions (Ramaswamy et al., 2023), the declared order when a dataset's regions are these
GEODE_REGIONS: tuple[str, ...] = ("Africa", "Americas", "EastAsia", "Europe", "SouthEastAsia", "WestAsia")
#: GeoDE's 40 objects in its published order (the built-in taxonomy geode_classes has these labels)
GEODE_OBJECTS: tuple[str, ...] = (
    "bag", "hand soap", "dustbin", "toothbrush", "toothpaste toothpowder", "hairbrush comb", "chair", "hat",
    "light fixture", "light switch", "plate of food", "spices", "stove", "cooking pot", "cleaning equipment",
    "lighter", "medicine", "candle", "toy", "jug", "streetlight lantern", "front door", "tree", "house", "backyard",
    "truck", "waste container", "car", "fence", "road sign", "dog", "wheelbarrow", "religious building", "stall",
    "boat", "monument", "flag", "bus", "storefront", "bicycle")
_IMAGE_EXT = ("webp", "png", "jpg", "jpeg")
LAYOUTS = ("auto", "wds", "csv")
#: the largest .cls / .npy member read at load time (a real one is a few bytes)
MAX_META_BYTES = 1 << 20


# ------------------------------------------------------------------------ webdataset shards


@dataclass
class TarMemberReader:
    """Image ``i`` is ``sizes[i]`` bytes at ``offsets[i]`` of tar file ``files[shards[i]]``
    (an uncompressed tar stores each member's data contiguously)."""

    files: list[str]
    shards: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    names: list[str]
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int) -> bytes:
        size = int(self.sizes[i])
        if self.max_bytes is not None and size > self.max_bytes:
            raise ImageError(self.describe(i), f"image of {size} bytes is larger than dataset.max_image_bytes="
                             f"{self.max_bytes}", "raise dataset.max_image_bytes, or set dataset.on_error=skip")
        try:
            with open(self.files[int(self.shards[i])], "rb") as f:
                f.seek(int(self.offsets[i]))
                data = f.read(size)
        except OSError as e:
            raise ImageError(self.describe(i), f"cannot read the shard ({type(e).__name__}: {e})",
                             "check dataset.root") from None
        if len(data) != size:
            raise ImageError(self.describe(i), "the shard ends before the image does (truncated tar)",
                             "download the shard again")
        return data

    def describe(self, i: int) -> str:
        return f"{self.files[int(self.shards[i])]}:{self.names[i]}"

    def subset(self, indices: Sequence[int]) -> "TarMemberReader":
        idx = np.asarray(list(indices), dtype=int)
        return TarMemberReader(self.files, self.shards[idx], self.offsets[idx], self.sizes[idx],
                               [self.names[j] for j in idx], self.max_bytes)


def _shards(root: Path) -> list[Path]:
    test = root / "test"
    ns = test / "nshards.txt"
    if ns.is_file():
        try:
            n = int(ns.read_text().strip())
        except ValueError:
            raise DatasetError(f"{ns}: not a number of shards; it should hold e.g. 1") from None
        files = [test / f"{i}.tar" for i in range(n)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"{ns} says {n} shard(s) but {', '.join(missing[:3])} "
                               f"{'is' if len(missing) == 1 else 'are'} missing; download the shards again")
        return files
    return sorted(test.glob("*.tar")) or sorted(root.glob("*.tar"))


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's key and extension of a member: the base name up to its first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def read_wds(files: Sequence[Path]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """One row per sample of the shards: ``key``, ``cls`` (int or None), ``meta`` (the .npy
    vector or None), ``shard``; and the image's shard, offset, size and member name."""
    rows: list[dict[str, Any]] = []
    shards, offsets, sizes, names = [], [], [], []
    for si, path in enumerate(files):
        samples: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        try:
            with tarfile.open(path, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_key(m.name)
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    s = samples[key]
                    if ext in _IMAGE_EXT and "image" not in s:
                        s["image"] = (m.offset_data, m.size, m.name)
                    elif ext in ("cls", "npy"):
                        if m.size > MAX_META_BYTES:
                            raise DatasetError(f"shard {path}: member {m.name} is {m.size} bytes; a .{ext} "
                                               f"member holds a class index or a short metadata vector (at most "
                                               f"{MAX_META_BYTES} bytes read); this is not a datacomp shard")
                        s[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError) as e:
            raise DatasetError(f"cannot read shard {path}: {str(e)[:200]}; download it again") from None
        for key in order:
            s = samples[key]
            cls = meta = None
            if "cls" in s:
                try:
                    cls = int(s["cls"].decode("utf-8").strip())
                except (UnicodeDecodeError, ValueError):
                    cls = None
            if "npy" in s:
                try:
                    meta = np.atleast_1d(np.load(io.BytesIO(s["npy"]), allow_pickle=False))
                except (ValueError, OSError, EOFError):
                    meta = None
            img = s.get("image")
            rows.append({"key": key, "cls": cls, "meta": meta, "shard": path.name,
                         "has_image": img is not None, "has_cls": "cls" in s, "has_npy": "npy" in s})
            shards.append(si)
            offsets.append(img[0] if img else 0)
            sizes.append(img[1] if img else 0)
            names.append(img[2] if img else key)
    return (pd.DataFrame(rows), np.asarray(shards, dtype=int), np.asarray(offsets, dtype=np.int64),
            np.asarray(sizes, dtype=np.int64), names)


def class_name(raw: object) -> str:
    """A class name as clipfair keys it: lower case, '_' as a space, single spaces
    (``Hand_Soap`` -> ``hand soap``), so shards, CSVs and taxonomies spelled either way meet."""
    return " ".join(str(raw).replace("_", " ").split()).lower()


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


# ------------------------------------------------------------------------------ income bands


def _fmt(x: float) -> str:
    return f"{x:g}"


def band_labels(cuts: Sequence[float], prefix: str) -> list[str]:
    """Labels of the bands cut at ``cuts`` (right-closed: ``(a-b]``; the first band is ``<=c1``,
    the last ``>ck``)."""
    cuts = list(cuts)
    if not cuts:
        return [f"{prefix}1 (all)"]
    out = [f"{prefix}1 (<={_fmt(cuts[0])})"]
    out += [f"{prefix}{i + 2} ({_fmt(a)}-{_fmt(b)}]" for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    out.append(f"{prefix}{len(cuts) + 1} (>{_fmt(cuts[-1])})")
    return out


def band_cuts(income: pd.Series, spec: Any) -> tuple[list[float], list[str], str]:
    """The cut points, ordered band labels and rule of ``spec`` on ``income``: ``quartiles``
    (default: the 25th/50th/75th percentiles of the incomes given, numpy's default linear
    interpolation) or a list of increasing cut points (a band is ``(previous cut, cut]``)."""
    known = pd.to_numeric(income, errors="coerce").dropna().to_numpy(dtype=float)
    spec = plain_data(spec)
    if spec in (None, "quartiles"):
        if not len(known):
            raise DatasetError("dataset.income_bands=quartiles: no row has a numeric income")
        q = [float(v) for v in np.quantile(known, [0.25, 0.5, 0.75])]
        cuts = sorted(set(q))
        if len(cuts) < 3:
            log.warning("income quartiles tie (%s): %d bands instead of 4", q, len(cuts) + 1)
        return cuts, band_labels(cuts, "Q"), "quartiles"
    if isinstance(spec, list) and spec and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                               and math.isfinite(c) for c in spec):
        cuts = [float(c) for c in spec]
        if any(b <= a for a, b in zip(cuts, cuts[1:])):
            raise DatasetError(f"dataset.income_bands: cut points must increase, got {spec}")
        return cuts, band_labels(cuts, "B"), "cut points"
    raise DatasetError(f"dataset.income_bands must be 'quartiles' or a list of increasing numbers "
                       f"(cut points), got {spec!r}")


def assign_bands(income: pd.Series, cuts: Sequence[float], labels: Sequence[str]) -> list[str | None]:
    """The band of each income (None: no income): band i is ``(cuts[i-1], cuts[i]]``."""
    values = pd.to_numeric(income, errors="coerce").to_numpy(dtype=float)
    idx = np.searchsorted(np.asarray(cuts, dtype=float), values, side="left")
    return [None if math.isnan(v) else labels[int(i)] for v, i in zip(values, idx)]


# ------------------------------------------------------------------------------ the adapters


def _code_map(spec: Any, what: str) -> dict[str, str]:
    spec = plain_data(spec)
    if spec is None:
        return {}
    if isinstance(spec, list):
        return {str(i): str(v) for i, v in enumerate(spec)}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    raise DatasetError(f"dataset.{what} must map codes to names ({{0: Africa, ...}}) or list the names in "
                       f"code order, got {spec!r}")


def _code_text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    f = float(v)
    return str(int(f)) if f.is_integer() else _fmt(f)


def _order(values: Sequence[str | None], known: Sequence[str] = ()) -> tuple[str, ...]:
    present = sorted({v for v in values if v is not None},
                     key=lambda s: (0, float(s), s) if _is_number(s) else (1, 0.0, s))
    if known and set(present) <= set(known):
        return tuple(known)
    return tuple(present)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _load_geo(benchmark: str, *, root: str | None, layout: str, csv: str | None, image_column: str,
              class_column: str, income_column: str, region_column: str, country_column: str,
              income_bands_spec: Any, region_names: Any, country_names: Any, classnames: str | None,
              limit: int | None, on_error: str) -> FaceDataset:
    if not root:
        raise DatasetError(f"dataset {benchmark} needs dataset.root: the folder holding the webdataset shards "
                           f"(test/*.tar and classnames.txt) or the images of dataset.csv")
    if layout not in LAYOUTS:
        raise DatasetError(f"dataset.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    root_path = Path(str(root)).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"dataset.root {root_path} is not a folder; check the path")
    files = _shards(root_path) if layout in ("auto", "wds") else []
    if layout == "wds" and not files:
        raise DatasetError(f"no webdataset shards (test/nshards.txt and test/0.tar ..., or *.tar) under {root_path}; "
                           f"download {('djghosh/wds_' + benchmark + '_test')} there, or set dataset.layout=csv")
    issues = RowIssues(on_error)
    region_map, country_map = _code_map(region_names, "region_names"), _code_map(country_names, "country_names")
    source: dict[str, Any] = {"adapter": benchmark, "root": str(root_path)}
    if files:
        frame, sh, off, size, names = read_wds(files)
        if not len(frame):
            raise DatasetError(f"the shards under {root_path} hold no samples; download them again")
        cn_path = Path(classnames).expanduser() if classnames else root_path / "classnames.txt"
        if not cn_path.is_file():
            raise DatasetError(f"{cn_path} not found: the shards' class names (one a line, line i = class i) come "
                               "with the webdataset (classnames.txt next to test/); download it or set "
                               "dataset.classnames")
        class_names = [class_name(c) for c in _lines(cn_path)]
        where = [f"{r.shard}:{r.key}" for r in frame.itertuples()]
        for col, what in (("has_image", "no image member (webp/png/jpg)"), ("has_cls", "no .cls member"),
                          ("has_npy", "no .npy metadata member")):
            bad = [i for i, ok in enumerate(frame[col]) if not ok]
            issues.flag(bad, col.replace("has_", "missing_"), f"samples with {what}: "
                        + ", ".join(where[i] for i in bad[:5]))
        badcls = [i for i, (ok, c) in enumerate(zip(frame["has_cls"], frame["cls"]))
                  if ok and (c is None or not 0 <= c < len(class_names))]
        issues.flag(badcls, "bad_class", f"samples whose .cls is not a class index 0..{len(class_names) - 1} of "
                    f"{cn_path.name}: " + ", ".join(where[i] for i in badcls[:5]))
        fields = WDS_FIELDS[benchmark]
        badmeta = [i for i, (ok, m) in enumerate(zip(frame["has_npy"], frame["meta"]))
                   if ok and (m is None or len(m) < len(fields))]
        issues.flag(badmeta, "bad_metadata", f"samples whose .npy is not a vector of {len(fields)} numbers "
                    f"({', '.join(fields)}): " + ", ".join(where[i] for i in badmeta[:5]))
        meta = {f: [None if m is None or len(m) < len(fields) else m[j].item() for m in frame["meta"]]
                for j, f in enumerate(fields)}
        objects = [class_names[c] if c is not None and 0 <= c < len(class_names) else None for c in frame["cls"]]
        table = pd.DataFrame({"key": frame["key"], "shard": frame["shard"], "class_index": frame["cls"]})
        image_ids = [f"{r.shard}/{r.key}" for r in frame.itertuples()]
        income = pd.Series(meta.get("income_meta", [None] * len(frame)), dtype=float) if benchmark == "dollar_street" \
            else None
        income_ds = [_code_text(v) for v in meta["income_ds"]] if "income_ds" in meta else None
        region = [_code_text(v) for v in meta["region"]]
        country = [_code_text(v) for v in meta["country"]] if "country" in meta else None
        reader = TarMemberReader([str(f) for f in files], sh, off, size, names)
        make_reader = lambda kept: reader.subset(kept)  # noqa: E731
        templates = root_path / "zeroshot_classification_templates.txt"
        source.update({"layout": "wds", "shards": [str(f) for f in files], "classnames": str(cn_path),
                       "metadata_fields": list(fields),
                       "templates": _lines(templates) if templates.is_file() else None})
    else:
        csv_path = Path(csv).expanduser() if csv else root_path / "metadata.csv"
        if not csv_path.is_file():
            raise DatasetError(f"no webdataset shards under {root_path} and no CSV {csv_path}; give dataset.csv "
                               "(a CSV with image path, class and income / region columns) or the shards' folder")
        try:
            table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise DatasetError(f"cannot read {csv_path}: {str(e)[:200]}") from None
        table.columns = [c.strip() for c in table.columns]
        need = [image_column, class_column] + ([income_column] if benchmark == "dollar_street" else [region_column])
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise DatasetError(f"{csv_path}: no column(s) {', '.join(missing)} (its columns: "
                               f"{', '.join(table.columns)}); set dataset.image_column / class_column / "
                               f"{'income_column' if benchmark == 'dollar_street' else 'region_column'}")
        where = [f"{csv_path} row {i + 2}" for i in range(len(table))]
        rel = table[image_column].str.strip().tolist()
        paths = [root_path / p for p in rel]
        absent = [i for i, p in enumerate(paths) if not rel[i] or not p.is_file()]
        issues.flag(absent, "missing_image", "image files not found under " f"{root_path}: "
                    + ", ".join(f"{where[i]} ({rel[i]!r})" for i in absent[:5]))
        objects = [class_name(v) or None for v in table[class_column]]
        noclass = [i for i, v in enumerate(objects) if v is None]
        issues.flag(noclass, "missing_class", f"rows without a {class_column}: " + ", ".join(where[i] for i in noclass[:5]))
        income = None
        if benchmark == "dollar_street":
            raw = table[income_column].str.strip()
            income = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
            bad = [i for i, (r, v) in enumerate(zip(raw, income)) if r and math.isnan(v)]
            issues.flag(bad, "bad_income", f"{income_column} values that are not numbers: "
                        + ", ".join(f"{where[i]} ({raw[i]!r})" for i in bad[:5]))
        income_ds = ([v.strip() or None for v in table["income_ds"]] if "income_ds" in table.columns else None)
        region = ([v.strip() or None for v in table[region_column]] if region_column in table.columns else None)
        country = ([v.strip() or None for v in table[country_column]] if country_column in table.columns else None)
        image_ids = rel
        make_reader = lambda kept: FileReader([paths[i] for i in kept])  # noqa: E731
        table = table.drop(columns=[c for c in ("income_ds",) if c in table.columns])
        source.update({"layout": "csv", "csv": str(csv_path)})
    if region is not None and region_map:
        region = [region_map.get(v, v) if v is not None else None for v in region]
    if country is not None and country_map:
        country = [country_map.get(v, v) if v is not None else None for v in country]
    labels: dict[str, list[Any]] = {"object": objects}
    class_order = tuple(dict.fromkeys(class_names)) if files else _order(objects)
    if benchmark == "geode" and set(class_order) <= set(GEODE_OBJECTS):
        class_order = GEODE_OBJECTS  # so the built-in geode_classes runs on a part of GeoDE too
    declared: list[Attribute] = [Attribute("object", values=class_order, allow_missing=False)]
    if benchmark == "dollar_street":
        assert income is not None
        ok = [i for i in range(len(objects)) if i not in issues.bad]
        cuts, band_order, rule = band_cuts(income.iloc[ok] if ok else income, income_bands_spec)
        labels["income_band"] = assign_bands(income, cuts, band_order)
        declared.append(Attribute("income_band", values=tuple(band_order)))
        table = table.assign(income=income.to_numpy())
        source["income_bands"] = {"rule": rule, "cut_points": cuts, "bands": band_order,
                                  "computed_on": "the dataset's rows after unusable rows were dropped"}
        if income_ds is not None:
            labels["income_ds"] = income_ds
            declared.append(Attribute("income_ds", values=_order(income_ds)))
    if region is not None:
        labels["region"] = region
        declared.append(Attribute("region", values=_order(region, GEODE_REGIONS if benchmark == "geode" else ())))
    if country is not None:
        labels["country"] = country
        declared.append(Attribute("country", values=_order(country)))
    ds = finish_dataset(benchmark, table, image_ids, labels, {}, make_reader, issues, source, limit, declared)
    # slices: auto = overall, the income / region groups datacomp reports, then country and object
    return replace(ds, default_slices=("overall", "income_band", "income_ds", "region", "country", "object"),
                   plot_slices={"accuracy": ("income_band", "income_ds", "region"), "rate": ()},
                   tolerated_values={})


def _adapter(benchmark: str):
    def adapter(*, root: str | None = None, layout: str = "auto", csv: str | None = None, image_column: str = "file",
                class_column: str = "object", income_column: str = "income", region_column: str = "region",
                country_column: str = "country", income_bands: Any = "quartiles", region_names: Any = None,
                country_names: Any = None, classnames: str | None = None, limit: int | None = None,
                on_error: str = "raise") -> FaceDataset:
        return _load_geo(benchmark, root=root, layout=layout, csv=csv, image_column=image_column,
                         class_column=class_column, income_column=income_column, region_column=region_column,
                         country_column=country_column, income_bands_spec=income_bands, region_names=region_names,
                         country_names=country_names, classnames=classnames, limit=limit, on_error=on_error)

    adapter.__name__ = benchmark
    adapter.__doc__ = f"{benchmark}: webdataset shards or a CSV + image folder (see clipfair.data.geo_layouts)."
    return adapter


dollar_street = DATASETS.register("dollar_street")(_adapter("dollar_street"))
geode = DATASETS.register("geode")(_adapter("geode"))


# --------------------------------------------------------------- a taxonomy from classnames.txt


def taxonomy_yaml(root: str | Path, name: str, template: str = "a photo of a {}.") -> str:
    """A target taxonomy (``target: object``) of the classes in ``<root>/classnames.txt``, in
    its order, for a webdataset whose class list is not built in."""
    import yaml

    names = list(dict.fromkeys(class_name(c) for c in _lines(Path(root) / "classnames.txt")))
    body = {"name": name, "description": f"the {len(names)} classes of {Path(root) / 'classnames.txt'}",
            "templates": [template], "target": "object",
            "classes": [{"label": c, "prompts": [c], "category": "object"} for c in names]}
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


if __name__ == "__main__":  # python -m clipfair.data.geo_layouts <root> <name> > <name>.yaml
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m clipfair.data.geo_layouts <webdataset root> <taxonomy name> > <name>.yaml")
    sys.stdout.write(taxonomy_yaml(sys.argv[1], sys.argv[2]))
