"""Association test definitions (YAML data) and a runner that needs no CLI.

Layer: methods.

A test file (built-ins in ``clipfair/associations/``; see the README)::

    name: flowers_insects
    kind: weat                   # weat (default) | sc_weat | markedness
    source: Caliskan et al. 2017 ...
    sanity: true                 # optional: a sanity check, shown first in the report
    template: null               # or "a photo of a {}"; null: words encoded as written
    targets: {x: {name: flowers, words: [rose, tulip]}, y: {name: insects, words: [ant, wasp]}}
    attributes: {a: {name: pleasant, words: [love, peace]}, b: {name: unpleasant, words: [war, filth]}}

A set (x, y, a, b) is either words/prompts (``words``, with an optional ``template`` of its
own) or an image set: a slice of the run's dataset, ``images: {attribute: race, values:
[White]}``, a CSV of image paths, ``images: {csv: my_images.csv, column: file}`` (paths relative
to the CSV's folder), or a folder of image files, ``images: {folder: my_images/}`` (both
relative to the test file's folder).
``sc_weat`` has ``targets: {x: ...}`` only: one SC-WEAT per word of x against a and b.
``markedness`` has ``attribute``, ``unmarked`` (the unmarked prompt), ``template`` and
``groups`` (a list of the attribute's values, or a mapping value -> word for the template),
and optional ``balanced`` (true or a count per group).

``include: <built-in name or path>`` reuses another test: its keys are inherited, the
including file's top-level keys replace them, and ``targets``/``attributes`` are merged
slot by slot (a file may replace only ``x`` and ``y``). The test's ``template`` applies to
every word set without a ``template`` of its own, inherited ones included.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..stats import weat as W
from ..utility.registry import yaml_files
from ..stats.inference import holm
from ..data.taxonomy import (ALLOW_INCLUDE_ENV, TaxonomyError, builtin_dir as taxonomy_dir, check_template, locate_file,
                       read_yaml_mapping, scalar_text)

log = logging.getLogger(__name__)

KINDS = ("weat", "sc_weat", "markedness")
TOP_KEYS = {"name", "kind", "description", "source", "sanity", "template", "targets", "attributes",
            "include", "attribute", "unmarked", "groups", "balanced"}
SET_KEYS = {"name", "words", "template", "images"}
IMAGE_KEYS = {"attribute", "values"}
COLUMNS = ["test", "kind", "variant", "target_x", "target_y", "attribute_a", "attribute_b", "n_x", "n_y",
           "n_a", "n_b", "effect_size", "ci_low", "ci_high", "ci_method", "p_value", "p_method",
           "n_permutations", "p_adjusted", "difference", "sanity", "source"]
MARKEDNESS_COLUMNS = ["test", "attribute", "group", "prompt", "unmarked_prompt", "n", "n_unmarked", "share",
                      "ci_low", "ci_high", "n_group_total", "design", "p_homogeneity", "source"]


class AssociationError(TaxonomyError):
    """A malformed association test or one the run's dataset cannot support; the message
    names the file and the entry (reported like a taxonomy error)."""


@dataclass(frozen=True)
class ItemSet:
    """Words/prompts (``words``) or an image slice of the run's dataset (``attribute``/``values``)."""

    name: str
    words: tuple[str, ...] = ()
    template: str | None = None
    attribute: str | None = None
    values: tuple[str, ...] = ()
    #: images outside the run's dataset: a CSV (``column`` holds paths relative to its folder)
    #: or a folder of image files (absolute paths, resolved against the test file's folder)
    csv: str | None = None
    column: str = "file"
    folder: str | None = None

    @property
    def is_images(self) -> bool:
        return self.attribute is not None or self.is_external

    @property
    def is_external(self) -> bool:
        return self.csv is not None or self.folder is not None

    def texts(self) -> list[str]:
        return [self.template.format(w) if self.template else w for w in self.words]

    def describe(self) -> str:
        if self.attribute is not None:
            return f"{self.name} (images: {self.attribute} in {list(self.values)})"
        if self.is_external:
            return f"{self.name} (images: {Path(self.csv or self.folder).name})"
        return self.name


@dataclass(frozen=True)
class AssociationTest:
    name: str
    kind: str
    x: ItemSet | None = None
    y: ItemSet | None = None
    a: ItemSet | None = None
    b: ItemSet | None = None
    description: str = ""
    source: str = ""
    sanity: bool = False
    where: str = "<python>"
    # markedness
    attribute: str | None = None
    unmarked: str = "a photo of a person"
    groups: tuple[tuple[str, str], ...] = ()   # (value, prompt)
    balanced: int | bool = False

    @property
    def sets(self) -> list[ItemSet]:
        return [s for s in (self.x, self.y, self.a, self.b) if s is not None]

    @property
    def needs_images(self) -> bool:
        return self.kind == "markedness" or any(s.is_images for s in self.sets)

    @property
    def needs_dataset_images(self) -> bool:
        """Whether the test reads the run's dataset images (a slice, or markedness)."""
        return self.kind == "markedness" or any(s.attribute is not None for s in self.sets)

    def texts(self) -> list[str]:
        if self.kind == "markedness":
            return [self.unmarked, *(p for _, p in self.groups)]
        return [t for s in self.sets if not s.is_images for t in s.texts()]


def builtin_dir() -> Path:
    return Path(str(importlib.resources.files("clipfair") / "associations"))


BUILTINS = yaml_files("association test", builtin_dir())


def builtin_names() -> list[str]:
    return BUILTINS.names()


# ---------------------------------------------------------------------------- parsing

def _fail(where: str, msg: str) -> AssociationError:
    return AssociationError(f"{where}: {msg}")


def _words(raw: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _fail(where, f"{key!r} must be a non-empty list of strings")
    out = [scalar_text(w, where, f"{key}[{i}]", AssociationError).strip() for i, w in enumerate(raw)]
    if any(not w for w in out):
        raise _fail(where, f"{key!r} has an empty entry")
    dup = sorted({w for w in out if out.count(w) > 1})
    if dup:
        raise _fail(where, f"{key!r} lists {dup} more than once")
    return tuple(out)


def _template(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    check_template(raw, where, error=AssociationError)
    return str(raw)


def _parse_set(raw: Any, where: str, default_template: str | None, base_dir: Path = Path(".")) -> ItemSet:
    if not isinstance(raw, dict):
        raise _fail(where, "a set must be a mapping with 'name' and 'words' (or 'images')")
    unknown = set(raw) - SET_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(SET_KEYS)}")
    if "name" not in raw or raw["name"] is None or not str(raw["name"]).strip():
        raise _fail(where, "'name' is required")
    name = scalar_text(raw["name"], where, "name", AssociationError)
    has_w, has_i = "words" in raw, "images" in raw
    if has_w == has_i:
        raise _fail(where, f"set {name!r} needs exactly one of 'words' or 'images'")
    if has_w:
        tpl = _template(raw["template"], f"{where} ({name})") if "template" in raw else default_template
        return ItemSet(name, _words(raw["words"], f"{where} ({name})", "words"), tpl)
    if "template" in raw:
        raise _fail(where, f"set {name!r}: 'template' applies to words, not images")
    img = raw["images"]
    forms = ("{attribute: <dataset attribute>, values: [..]} (a slice of the run's dataset), {csv: <file>, "
             "column: <path column, default file>} or {folder: <folder of images>}")
    if not isinstance(img, dict) or set(img) not in (IMAGE_KEYS, {"csv"}, {"csv", "column"}, {"folder"}):
        raise _fail(where, f"set {name!r}: 'images' must be one of {forms}")
    w = f"{where} ({name})"
    if "attribute" in img:
        attr = scalar_text(img["attribute"], w, "images.attribute", AssociationError)
        return ItemSet(name, attribute=attr, values=_words(img["values"], w, "images.values"))
    key = "csv" if "csv" in img else "folder"
    rel = Path(scalar_text(img[key], w, f"images.{key}", AssociationError)).expanduser()
    found = rel if rel.is_absolute() else base_dir / rel
    if not (found.is_file() if key == "csv" else found.is_dir()):
        raise _fail(w, f"images.{key} {str(rel)!r}: no such {'file' if key == 'csv' else 'folder'} "
                    f"(relative paths are read from {base_dir})")
    if key == "csv":
        col = scalar_text(img.get("column", "file"), w, "images.column", AssociationError)
        return ItemSet(name, csv=str(found.resolve()), column=col)
    return ItemSet(name, folder=str(found.resolve()))


ORIGINS = "__origins__"   # (group, slot) -> the folder of the file that defined the set


def _own_origins(data: dict[str, Any], folder: Path) -> dict[tuple[str, str], Path]:
    return {(g, s): folder for g in ("targets", "attributes") if isinstance(data.get(g), dict) for s in data[g]}


def _merge(base: dict[str, Any], data: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in ("name", "description", "sanity")}
    for k, v in data.items():
        if k == "include":
            continue
        if k in ("targets", "attributes") and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    out[ORIGINS] = {**base.get(ORIGINS, {}), **_own_origins(data, folder)}
    return out


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_include(found: Path, spec: str, including: Path, top: Path, allow_anywhere: bool) -> None:
    """As taxonomies: an include stays in the top file's folder tree or the built-ins (association
    tests' or taxonomies'), unless allowed (argument or CLIPFAIR_ALLOW_INCLUDE_ANYWHERE=1)."""
    if allow_anywhere or os.environ.get(ALLOW_INCLUDE_ENV, "").lower() in ("1", "true", "yes"):
        return
    real = found.resolve()
    if any(_inside(real, r.resolve()) for r in (builtin_dir(), taxonomy_dir(), top.resolve().parent)):
        return
    raise AssociationError(
        f"{including}: include {spec!r} is outside {top.resolve().parent} (the test's folder) and not a "
        f"built-in; copy the file there, or set {ALLOW_INCLUDE_ENV}=1 to allow it")


def _load_raw(path: Path, stack: tuple[Path, ...] = (), allow_include_anywhere: bool = False) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise AssociationError(f"{path}: include cycle ({chain})")
    data = read_yaml_mapping(path, kind="association test", error=AssociationError,
                      expect="name, targets, attributes")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _fail(str(path), f"unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    if "include" not in data:
        return {**data, ORIGINS: _own_origins(data, path.parent)}
    inc = data["include"]
    if not isinstance(inc, str) or not inc.strip():
        raise _fail(str(path), "'include' must be one association test name or path")
    found = locate_file(inc, path.parent, builtins=BUILTINS, kind="association test", error=AssociationError)
    _check_include(found, inc, path, (stack or (path,))[0], allow_include_anywhere)
    base = _load_raw(found, (*stack, path), allow_include_anywhere)
    return _merge(base, data, path.parent)


def load_test(spec: str | Path, allow_include_anywhere: bool = False) -> AssociationTest:
    """A built-in test by name or a user's YAML file by path; errors name the file and entry."""
    path = (locate_file(str(spec), builtins=BUILTINS, kind="association test", error=AssociationError)
            if not isinstance(spec, Path) else spec.resolve())
    d = _load_raw(path, allow_include_anywhere=allow_include_anywhere)
    origins = d.pop(ORIGINS, {})
    where = str(path)
    name = d.get("name")
    if name is None or not str(name).strip():
        raise _fail(where, "'name' is required and must be a non-empty string")
    name = scalar_text(name, where, "name", AssociationError)
    where = f"{path} ({name})"
    kind = d.get("kind", "weat")
    if kind not in KINDS:
        raise _fail(where, f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    sanity = d.get("sanity", False)
    if not isinstance(sanity, bool):
        raise _fail(where, "'sanity' must be true or false")
    text = {k: "" if d.get(k) is None else scalar_text(d[k], where, k, AssociationError)
            for k in ("description", "source")}
    tpl = _template(d.get("template"), where)
    common = dict(name=name, kind=kind, description=text["description"], source=text["source"],
                  sanity=sanity, where=str(path))
    if kind == "markedness":
        for k in ("targets", "attributes"):
            if k in d:
                raise _fail(where, f"a markedness test has no {k!r}; give attribute, unmarked, template, groups")
        attr = scalar_text(d.get("attribute"), where, "attribute", AssociationError)
        unmarked = scalar_text(d.get("unmarked", "a photo of a person"), where, "unmarked", AssociationError)
        raw = d.get("groups")
        if isinstance(raw, list):
            vals = _words(raw, where, "groups")
            pairs = [(v, v) for v in vals]
        elif isinstance(raw, dict) and raw:
            pairs = [(scalar_text(k, where, "groups", AssociationError),
                      scalar_text(v, where, f"groups[{k}]", AssociationError)) for k, v in raw.items()]
        else:
            raise _fail(where, "'groups' must be a non-empty list of the attribute's values or a mapping "
                        "value -> prompt word")
        groups = tuple((v, tpl.format(w) if tpl else w) for v, w in pairs)
        prompts = [unmarked, *(p for _, p in groups)]
        if len(set(prompts)) != len(prompts):
            raise _fail(where, "the unmarked prompt and the group prompts must all differ")
        bal = d.get("balanced", False)
        if not (isinstance(bal, bool) or (isinstance(bal, int) and bal > 0)):
            raise _fail(where, "'balanced' must be true, false or a positive number of images per group")
        return AssociationTest(**common, attribute=attr, unmarked=unmarked, groups=groups, balanced=bal)
    for k in ("attribute", "unmarked", "groups", "balanced"):
        if k in d:
            raise _fail(where, f"{k!r} belongs to a markedness test (kind: markedness)")
    sets: dict[str, ItemSet] = {}
    want = {"targets": ("x",) if kind == "sc_weat" else ("x", "y"), "attributes": ("a", "b")}
    for group, slots in want.items():
        raw = d.get(group)
        if not isinstance(raw, dict):
            raise _fail(where, f"{group!r} must be a mapping with {' and '.join(slots)}")
        extra = set(raw) - set(slots)
        if extra:
            hint = " (an SC-WEAT has one target set, x: one test per word)" if kind == "sc_weat" else ""
            raise _fail(where, f"{group}: unknown slot(s) {sorted(extra)}; expected {', '.join(slots)}{hint}")
        for s in slots:
            if s not in raw:
                raise _fail(where, f"{group}.{s} is missing")
            sets[s] = _parse_set(raw[s], f"{where}: {group}.{s}", tpl, origins.get((group, s), path.parent))
    if kind == "sc_weat" and sets["x"].is_images:
        raise _fail(where, "targets.x of an SC-WEAT must be words/prompts (one SC-WEAT per prompt)")
    if kind == "sc_weat" and sets["a"].is_images != sets["b"].is_images:
        raise _fail(where, "attributes a and b of an SC-WEAT must both be words or both be images")
    for one, two in (("x", "y"), ("a", "b")):
        s1, s2 = sets.get(one), sets.get(two)
        if (s1 is not None and s2 is not None and s1.attribute is not None and s1.attribute == s2.attribute
                and set(s1.values) & set(s2.values)):
            raise _fail(where, f"image sets {one} and {two} share {s1.attribute} value(s) "
                        f"{sorted(set(s1.values) & set(s2.values))}: the two sets must not overlap")
    names = [s.name for s in sets.values()]
    if len(set(names)) != len(names):
        raise _fail(where, f"set names must differ, got {names}")
    return AssociationTest(**common, **sets)


def load_tests(specs: Iterable[str | Path] | None = None, allow_include_anywhere: bool = False) -> list[AssociationTest]:
    """Several tests (default: every built-in); duplicate names are an error."""
    specs = list(builtin_names() if specs is None else specs)
    out, names = [], {}
    for s in specs:
        t = load_test(s, allow_include_anywhere)
        if t.name in names:
            raise AssociationError(f"two association tests are named {t.name!r}: {names[t.name]} and {t.where}")
        names[t.name] = t.where
        out.append(t)
    if not out:
        raise AssociationError("no association tests given; list names or YAML paths, e.g. "
                               "association.tests=[flowers_insects]")
    return out


# ---------------------------------------------------------------------------- running

@dataclass
class Settings:
    variant: W.Variant = W.DEFAULT_VARIANT
    n_permutations: int = 10_000
    max_exact: int = 10_000
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    min_images: int = 2     # an image set smaller than this skips its test (with a warning)

    def __post_init__(self) -> None:
        for k in ("n_permutations", "max_exact", "bootstrap", "min_images", "seed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise AssociationError(f"association.{k} must be a non-negative integer, got {v!r}")
        if self.n_permutations < 1:
            raise AssociationError("association.n_permutations must be at least 1")
        if not 0 < float(self.confidence) < 1:
            raise AssociationError(f"association confidence must be between 0 and 1, got {self.confidence!r}")


@dataclass
class Outcome:
    """What a run of tests produced: one row per WEAT / SC-WEAT prompt (``associations``),
    one per markedness group (``markedness``) and the tests skipped with the reason."""

    associations: pd.DataFrame
    markedness: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images_used: bool = False


def _image_rows(table: pd.DataFrame | None, s: ItemSet, test: AssociationTest) -> np.ndarray | str:
    """Row positions of an image set, or the reason it cannot be formed."""
    if table is None:
        return "the run has no dataset images"
    if s.attribute not in table.columns:
        return f"the dataset has no attribute {s.attribute!r}"
    col = table[s.attribute].astype(object)
    rows = np.flatnonzero(col.isin(list(s.values)).to_numpy())
    return rows


def image_set_dataset(s: ItemSet) -> Any:
    """The images of a CSV or folder set as a :class:`clipfair.data.FaceDataset` (no attributes)."""
    import tempfile

    from ..data import load_dataset
    from ..data.base import DatasetError

    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
    try:
        if s.csv is not None:
            return load_dataset(name="csv", path=s.csv, image_column=s.column, race_column=None,
                                gender_column=None, age_column=None)
        files = sorted(p.name for p in Path(str(s.folder)).iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise AssociationError(f"image set {s.name!r}: no image files ({', '.join(sorted(exts))}) in {s.folder}")
        with tempfile.TemporaryDirectory(prefix="clipfair-images-") as tmp:  # the listing is read at load
            listing = Path(tmp) / "images.csv"
            pd.DataFrame({"file": files}).to_csv(listing, index=False)
            return load_dataset(name="csv", path=str(listing), root=s.folder, race_column=None,
                                gender_column=None, age_column=None)
    except DatasetError as e:
        raise AssociationError(f"image set {s.name!r}: {e}") from None


def run_tests(tests: Sequence[AssociationTest], encode_text: Callable[[list[str]], np.ndarray],
              table: pd.DataFrame | None = None,
              image_embeddings: np.ndarray | Callable[[], np.ndarray] | None = None,
              settings: Settings | None = None,
              embed_images: Callable[[ItemSet], np.ndarray] | None = None) -> Outcome:
    """Run association tests. ``encode_text`` maps prompts to embeddings (all texts are
    encoded in one call); ``image_embeddings`` (aligned with ``table``'s rows) may be a
    callable, called only when a test needs images, so text-only tests encode no images.
    ``embed_images(item_set)``: the embeddings of a CSV / folder image set (e.g. through
    :func:`image_set_dataset` and the run's image encoder); without it such tests are skipped.
    A test whose image sets the dataset cannot form (no such attribute, fewer than
    ``min_images`` images) is skipped with a warning and listed in ``Outcome.skipped``."""
    st = settings or Settings()
    texts = list(dict.fromkeys(t for test in tests for t in test.texts()))
    T = np.asarray(encode_text(texts), dtype=np.float64) if texts else np.zeros((0, 1))
    tix = {t: i for i, t in enumerate(texts)}
    images: np.ndarray | None = None
    skipped: list[tuple[str, str]] = []

    def imgs() -> np.ndarray:
        nonlocal images
        if images is None:
            if image_embeddings is None:
                raise AssociationError("image embeddings are needed but none were given")
            images = np.asarray(image_embeddings() if callable(image_embeddings) else image_embeddings,
                                dtype=np.float64)
        return images

    external: dict[ItemSet, np.ndarray] = {}

    def emb(s: ItemSet, test: AssociationTest) -> np.ndarray | str:
        if not s.is_images:
            return T[[tix[t] for t in s.texts()]]
        if s.is_external:
            if embed_images is None:
                return f"image set {s.describe()} needs an image encoder (none was given)"
            if s not in external:
                external[s] = np.asarray(embed_images(s), dtype=np.float64)
            if len(external[s]) < st.min_images:
                return f"image set {s.describe()} has {len(external[s])} images (fewer than {st.min_images})"
            return external[s]
        rows = _image_rows(table, s, test)
        if isinstance(rows, str):
            return rows
        if len(rows) < st.min_images:
            return (f"image set {s.describe()} has {len(rows)} images (fewer than {st.min_images})")
        return imgs()[rows]

    rows, mrows = [], []
    v = st.variant
    kw = dict(max_exact=st.max_exact, n_permutations=st.n_permutations, bootstrap=st.bootstrap,
              confidence=st.confidence)
    for i, test in enumerate(tests):
        seed = st.seed + 1000 * i
        if test.kind == "markedness":
            out = _markedness(test, T, tix, table, imgs, st)
            if isinstance(out, str):
                skipped.append((test.name, out))
                log.warning("association test %s skipped: %s", test.name, out)
            else:
                mrows.append(out)
            continue
        E = {slot: emb(s, test) for slot, s in zip("xyab", (test.x, test.y, test.a, test.b)) if s is not None}
        why = next((e for e in E.values() if isinstance(e, str)), None)
        if why is not None:
            skipped.append((test.name, why))
            log.warning("association test %s skipped: %s", test.name, why)
            continue
        base = {"test": test.name, "kind": test.kind, "variant": v.label, "attribute_a": test.a.describe(),
                "attribute_b": test.b.describe(), "sanity": test.sanity, "source": test.source}
        if test.kind == "weat":
            r = W.weat(E["x"], E["y"], E["a"], E["b"], v, seed=seed, **kw)
            rows.append({**base, "target_x": test.x.describe(), "target_y": test.y.describe(), **r.to_dict(),
                         "ci_method": f"bootstrap over target items (B={st.bootstrap}, percentile)"})
        else:
            for j, (word, text) in enumerate(zip(test.x.words, test.x.texts())):
                r = W.sc_weat(E["x"][j], E["a"], E["b"], v, seed=seed + j, **kw)
                rows.append({**base, "target_x": text, "target_y": "", **r.to_dict(),
                             "ci_method": f"bootstrap over attribute items (B={st.bootstrap}, percentile)"})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["p_adjusted"] = holm(df["p_value"].to_numpy(float)) if len(df) else []
    mk = pd.concat(mrows, ignore_index=True) if mrows else pd.DataFrame(columns=MARKEDNESS_COLUMNS)
    return Outcome(df, mk[MARKEDNESS_COLUMNS], skipped, images is not None or bool(external))


def _markedness(test: AssociationTest, T: np.ndarray, tix: Mapping[str, int], table: pd.DataFrame | None,
                imgs: Callable[[], np.ndarray], st: Settings) -> pd.DataFrame | str:
    if table is None:
        return "the run has no dataset images"
    if test.attribute not in table.columns:
        return f"the dataset has no attribute {test.attribute!r}"
    values = [v for v, _ in test.groups]
    col = table[test.attribute].astype(object)
    keep = np.flatnonzero(col.isin(values).to_numpy())
    if len(keep) == 0:
        return f"no images have {test.attribute} in {values}"
    P = T[[tix[test.unmarked], *(tix[p] for _, p in test.groups)]]
    df = W.markedness(imgs()[keep], col.iloc[keep].tolist(), P, group_order=values,
                      confidence=st.confidence, balanced=test.balanced, seed=st.seed)
    df.insert(0, "test", test.name)
    df.insert(1, "attribute", test.attribute)
    df.insert(3, "prompt", [p for _, p in test.groups])
    df.insert(4, "unmarked_prompt", test.unmarked)
    df["p_homogeneity"] = df.attrs.get("p_homogeneity", math.nan)
    df["source"] = test.source
    return df


def settings_from(options: Mapping[str, Any] | None = None, confidence: float = 0.95, seed: int = 0) -> Settings:
    """Settings from an ``association:`` config block: variant (a name or {sd, ddof, p}), sd,
    ddof, p, n_permutations, max_exact, bootstrap, seed, min_images."""
    o = dict(options or {})
    allowed = {"variant", "sd", "ddof", "p", "n_permutations", "max_exact", "bootstrap", "seed", "min_images",
               "tests", "confidence"}
    unknown = set(o) - allowed
    if unknown:
        raise AssociationError(f"association: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        variant = W.variant_from(o.get("variant"), sd=o.get("sd"), ddof=o.get("ddof"), p=o.get("p"))
    except ValueError as e:
        raise AssociationError(f"association: {e}") from None
    kw = {k: o[k] for k in ("n_permutations", "max_exact", "bootstrap", "min_images") if o.get(k) is not None}
    return Settings(variant=variant, confidence=float(o.get("confidence") or confidence),
                    seed=int(o["seed"]) if o.get("seed") is not None else seed, **kw)
