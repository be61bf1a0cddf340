"""Nothing lost, nothing silent: bad input, interruption and untrusted files.

One test per item of the robustness issue (parametrised where natural):

- bad input: broken image files, image modes, CSV quirks, empty datasets and groups,
  invalid taxonomies, incomplete model folders, paths outside the dataset root; every
  problem raises an error naming the file / row / field and what to do, or (with
  on_error=skip) is skipped and counted per reason in run.json and summary.md;
- interruption and concurrency: SIGKILL during encoding then resume, damaged cache chunks,
  concurrent writers, byte-identical metrics across reruns;
- untrusted files: pickle weights, remote code, YAML tags;
- property-based: random bytes as images and random rows as CSV records give a correct
  result or the documented error, never another exception.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipfair.run.cache import EmbeddingStore, _digest
from clipfair.data import (AGE_BINS, GENDERS, RACES, DatasetError, FaceDataset, FileReader,
                           ImageError, LabelError, load_dataset, normalize_value)
from clipfair.data.images import decode_image
from clipfair.run.embed import embed_images
from clipfair.models import ModelError, load_hf_clip, load_model
from clipfair.run.pipeline import evaluate, write_outputs
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass, TaxonomyError, load_taxonomies, load_taxonomy

from fixtures_datasets import PALETTE, close_to, image_bytes, write_fairface_split, write_image
from handmodel import hand_clip

HEADER = "file,age,gender,race,service_test"


# ------------------------------------------------------------------------- helpers


def png(color=(200, 40, 40), size=16) -> bytes:
    return image_bytes(color, size, "PNG")


def jpeg(color=(200, 40, 40), size=16) -> bytes:
    return image_bytes(color, size, "JPEG")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_rgb16(value: int, size: int = 8) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), every channel = ``value``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + struct.pack(">H", value) * 3 * size
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is damaged (header intact)."""
    data = bytearray(png(size=64))
    start = data.index(b"IDAT") + 4
    for k in range(start + 2, start + 40):
        data[k] ^= 0x5A
    return bytes(data)


#: broken image files: name -> (bytes, reason key in run.json, text of the error)
BAD_IMAGES = {
    "zero_byte": (b"", "empty_file", "empty"),
    "truncated_jpeg": (jpeg(size=64)[:300], "corrupt_image", "truncated or corrupt"),
    "truncated_png": (png(size=64)[:60], "corrupt_image", "truncated or corrupt"),
    "corrupt_png": (corrupt_png(), "corrupt_image", "truncated or corrupt"),
    "text_file": (b"file,age,gender\nval/1.jpg,20-29,Male\n", "not_an_image", "not an image"),
    "random_bytes": (np.random.default_rng(0).bytes(3000), "not_an_image", "not an image"),
}


def one_line(race="White", gender="Male", age="20-29", file="val/1.jpg") -> str:
    return f"{file},{age},{gender},{race},True"


def fairface_with(root: Path, n_good: int, extra: dict[str, bytes] | None = None,
                  extra_lines: list[str] = ()) -> Path:
    """A FairFace layout with ``n_good`` solid-colour images (alternating gender and race),
    plus ``extra`` image files (name -> bytes, White Female 30-39) and raw ``extra_lines``."""
    lines = [one_line(RACES[k % 3], GENDERS[k % 2], "20-29", f"val/{k}.jpg") for k in range(n_good)]
    write_fairface_split(root, "val", lines)
    for name, data in (extra or {}).items():
        (root / "val" / name).write_bytes(data)
    extra_rows = [one_line("White", "Female", "30-39", f"val/{n}") for n in (extra or {})]
    write_fairface_split(root, "val", lines + extra_rows + list(extra_lines), images=False)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=64)



def run_overrides(model_dir: Path, root: Path, cache: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", "model.device=cpu", "dataset=fairface",
            f"dataset.root={root}", f"cache.dir={cache}", "progress=false",
            "taxonomies=[fairface_gender]", *extra]


def metrics_bytes(ev) -> bytes:
    """metrics.csv exactly as write_outputs writes it (without the plots)."""
    return ev.metrics.to_csv(index=False, float_format="%.6g", lineterminator="\n").encode()


# ======================================================================= bad input


@pytest.mark.parametrize("kind", [*BAD_IMAGES, "missing_file", "directory"])
def test_bad_image_file_error_names_file_and_fix(tmp_path, kind):
    path = tmp_path / "imgs" / f"{kind}.jpg"
    path.parent.mkdir()
    if kind == "directory":
        path.mkdir()
        text = "directory"
    elif kind == "missing_file":
        text = "not found"
    else:
        path.write_bytes(BAD_IMAGES[kind][0])
        text = BAD_IMAGES[kind][2]
    ds = FaceDataset("d", pd.DataFrame({"image_id": ["x"]}), FileReader([path]))
    with pytest.raises(ImageError) as e:
        ds.load_image(0)
    msg = str(e.value)
    assert msg.startswith(str(path)) and text in msg
    assert "on_error=skip" in msg  # says what to do


def test_broken_images_skipped_and_counted_in_run_json_and_summary(tmp_path, compose, tiny_model_dir):
    from clipfair.cli import run_from_config

    bad = {f"{k}.jpg": BAD_IMAGES[k][0] for k in ("zero_byte", "truncated_jpeg", "text_file")}
    bad["second_empty.jpg"] = b""  # same (empty) bytes as zero_byte.jpg: counted too
    bad["gray.png"] = encode(Image.new("L", (16, 16), 90), "PNG")  # fine: converted, not skipped
    root = fairface_with(tmp_path / "ff", 10, bad, [one_line(race="Martian", file="val/m.jpg"),
                                                    one_line(file="val/gone.jpg")])
    write_image(root / "val" / "m.jpg", PALETTE[0])
    out = tmp_path / "out"
    run_from_config(compose(run_overrides(tiny_model_dir, root, tmp_path / "cache", "dataset.on_error=skip")), out)
    run = json.loads((out / "run.json").read_text())
    want = {"empty_file": 2, "corrupt_image": 1, "not_an_image": 1, "unknown_race": 1, "missing_image": 1}
    assert run["skipped"] == want
    assert run["counts"]["images_evaluated"] == 11  # 10 good + the grayscale image
    assert {d["image_id"] for d in run["skipped_items"]} == {
        "val/zero_byte.jpg", "val/second_empty.jpg", "val/truncated_jpeg.jpg", "val/text_file.jpg"}
    for item in run["skipped_items"]:
        assert item["message"].startswith(str(root / item["image_id"]))
    head = "\n".join((out / "summary.md").read_text().splitlines()[:8])
    assert f"Skipped {sum(want.values())} item(s)" in head
    for reason, n in want.items():
        assert f"{reason}: {n}" in head


@pytest.mark.parametrize("problem", ["zero_byte", "corrupt_png", "text_file", "missing_file", "unknown_label"])
def test_on_error_raise_names_file_and_fix(tmp_path, compose, tiny_model_dir, problem):
    from clipfair.cli import run_from_config

    extra, lines = {}, []
    if problem == "missing_file":
        lines = [one_line(file="val/gone.jpg")]
        expect = [str(tmp_path / "ff" / "val" / "gone.jpg"), "not found", "dataset.on_error=skip"]
    elif problem == "unknown_label":
        lines = [one_line(race="Martian", file="val/m.jpg")]
        write_image(tmp_path / "ff" / "val" / "m.jpg", PALETTE[0])
        expect = ["fairface_label_val.csv row 4 (line 5)", "column 'race'", "'Martian'",
                  f"allowed values: {', '.join(RACES)}", "dataset.on_error=skip"]
    else:
        extra = {f"{problem}.jpg": BAD_IMAGES[problem][0]}
        expect = [str(tmp_path / "ff" / "val" / f"{problem}.jpg"), BAD_IMAGES[problem][2],
                  "dataset.on_error=skip"]
    root = fairface_with(tmp_path / "ff", 3, extra, lines)
    with pytest.raises(Exception) as e:  # noqa: PT011 - Hydra may wrap it; the message is what users see
        run_from_config(compose(run_overrides(tiny_model_dir, root, tmp_path / "cache")), tmp_path / "out")
    assert isinstance(e.value, (DatasetError, ImageError)) or isinstance(e.value.__cause__, (DatasetError, ImageError))
    for text in expect:
        assert text in str(e.value)
    assert not (tmp_path / "out" / "metrics.csv").exists()


#: (image factory, expected RGB, tolerance): every mode becomes correct 8-bit RGB
def _gif_transparent() -> bytes:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return encode(img, "GIF", transparency=1)


def _palette(color) -> bytes:
    img = Image.new("P", (8, 8), 3)
    img.putpalette([0, 0, 0] * 3 + list(color) + [0] * (768 - 12))
    return encode(img, "PNG")


MODES = {
    "L_png": (lambda: encode(Image.new("L", (8, 8), 77), "PNG"), (77, 77, 77), 0),
    "L_jpeg": (lambda: encode(Image.new("L", (8, 8), 77), "JPEG", quality=95), (77, 77, 77), 3),
    "1_bit": (lambda: encode(Image.new("1", (8, 8), 1), "PNG"), (255, 255, 255), 0),
    "LA_opaque": (lambda: encode(Image.new("LA", (8, 8), (60, 255)), "PNG"), (60, 60, 60), 0),
    "LA_transparent": (lambda: encode(Image.new("LA", (8, 8), (60, 0)), "PNG"), (255, 255, 255), 0),
    "P_png": (lambda: _palette((10, 120, 230)), (10, 120, 230), 0),
    "P_gif_transparent": (_gif_transparent, (255, 255, 255), 0),
    "RGBA_opaque": (lambda: encode(Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG"), (255, 0, 0), 0),
    "RGBA_half": (lambda: encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG"), (255, 127, 127), 1),
    "RGBA_clear": (lambda: encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), (255, 255, 255), 0),
    "CMYK_jpeg": (lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100),
                  (255, 0, 0), 3),
    "CMYK_tiff": (lambda: encode(Image.new("CMYK", (8, 8), (0, 0, 0, 128)), "TIFF"), (127, 127, 127), 1),
    "I16_png": (lambda: encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"),
                (156, 156, 156), 0),  # 40000 / 65535 * 255
    "I16_png_max": (lambda: encode(Image.fromarray(np.full((8, 8), 65535, np.uint16)), "PNG"),
                    (255, 255, 255), 0),
    "I16_png_dark": (lambda: encode(Image.fromarray(np.full((8, 8), 200, np.uint16)), "PNG"), (1, 1, 1), 0),
    "RGB16_png": (lambda: png_rgb16(0xABCD), (0xAB, 0xAB, 0xAB), 1),
    "F_tiff": (lambda: encode(Image.new("F", (8, 8), 0.5), "TIFF"), (128, 128, 128), 1),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_image_modes_convert_to_correct_rgb(mode):
    make, expected, tol = MODES[mode]
    img = decode_image(make(), f"{mode}.img")
    assert img.mode == "RGB" and img.size == (8, 8)
    arr = np.asarray(img).reshape(-1, 3)
    assert all(close_to(px, expected, tol) for px in arr), (mode, arr[0].tolist(), expected)


def test_image_modes_are_embedded_not_skipped(tmp_path):
    paths = []
    for name, (make, _, _) in MODES.items():
        paths.append(tmp_path / f"{name}.img")
        paths[-1].write_bytes(make())
    ds = FaceDataset("modes", pd.DataFrame({"image_id": list(MODES)}), FileReader(paths))
    emb = embed_images(ds, hand_clip(), on_error="raise", progress=False)
    assert emb.errors == [] and emb.indices.tolist() == list(range(len(MODES)))
    expected = np.array([rgb for _, rgb, _ in MODES.values()], np.float32) / 255.0
    np.testing.assert_allclose(emb.embeddings, expected, atol=4 / 255)  # hand model: mean RGB


# ---------------------------------------------------------------------------- CSV


def test_csv_missing_column_names_file_and_columns(tmp_path):
    csv_path = write_fairface_split(tmp_path, "val", ["val/1.jpg,20-29,Male,True"],
                                    header="file,age,gender,service_test")
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert str(csv_path) in msg and "missing column(s) 'race'" in msg
    assert "columns found: file, age, gender, service_test" in msg


@pytest.mark.parametrize("adapter", ["fairface", "csv"])
def test_csv_bom_whitespace_and_case_are_normalised(tmp_path, adapter):
    lines = ["val/1.jpg,20-29,Male,White,True",
             " val/2.jpg ,  3-9 , FEMALE ,  east asian ,False",
             "val/3.jpg,More Than 70,male,LATINO_HISPANIC,True",
             "val/4.jpg,50-59,female,latino hispanic ,False",
             "val/5.jpg,\t0-2\t,Female,Southeast-Asian,True"]
    csv_path = write_fairface_split(tmp_path, "val", lines, header=" FILE , Age,gender ,RACE,service_test",
                                    bom=True)
    ds = (load_dataset("fairface", root=str(tmp_path)) if adapter == "fairface"
          else load_dataset("csv", path=str(csv_path)))
    assert ds.table["image_id"].tolist() == [f"val/{k}.jpg" for k in range(1, 6)]
    assert ds.table["race"].tolist() == ["White", "East Asian", "Latino_Hispanic", "Latino_Hispanic",
                                         "Southeast Asian"]
    assert ds.table["gender"].tolist() == ["Male", "Female", "Male", "Female", "Female"]
    assert ds.table["age"].tolist() == ["20-29", "3-9", "more than 70", "50-59", "0-2"]
    assert ds.skipped == {}
    assert close_to(np.asarray(ds.load_image(1))[0, 0], PALETTE[1])  # row 2 reads val/2.jpg


@pytest.mark.parametrize("attr,line,allowed", [
    ("race", one_line(race="Martian", file="val/2.jpg"), RACES),
    ("gender", one_line(gender="Robot", file="val/2.jpg"), GENDERS),
    ("age", one_line(age="200", file="val/2.jpg"), AGE_BINS),
])
def test_unknown_label_lists_allowed_values_or_is_skipped(tmp_path, attr, line, allowed):
    csv_path = write_fairface_split(tmp_path, "val", [one_line(), line])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path))
    msg = str(e.value)
    assert f"{csv_path} row 2 (line 3)" in msg and f"column {attr!r}" in msg
    assert f"allowed values: {', '.join(allowed)}" in msg and "on_error=skip" in msg
    ds = load_dataset("fairface", root=str(tmp_path), on_error="skip")
    assert ds.skipped == {f"unknown_{attr}": 1} and ds.table["image_id"].tolist() == ["val/1.jpg"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_duplicate_image_ids_always_refused(tmp_path, on_error):
    write_fairface_split(tmp_path, "val", [one_line(), one_line(file="val/2.jpg"), one_line(race="Black")])
    with pytest.raises(DatasetError, match=r"duplicate image ids .*'val/1.jpg' at .* row 1 .* row 3"):
        load_dataset("fairface", root=str(tmp_path), on_error=on_error)
    csv_path = write_fairface_split(tmp_path / "c", "val", [one_line(), one_line(file="val/2.jpg")],
                                    header="file,age,gender,race,subject")
    csv_path.write_text(csv_path.read_text().replace("True", "s1"))
    with pytest.raises(DatasetError, match="duplicate image ids.*'s1'"):
        load_dataset("csv", path=str(csv_path), id_column="subject", on_error=on_error)


# ------------------------------------------- empty data, empty groups, taxonomies, models


@pytest.mark.parametrize("case", ["header_only", "zero_byte_csv", "all_rows_skipped"])
def test_empty_dataset_is_a_clear_error(tmp_path, case):
    if case == "header_only":
        write_fairface_split(tmp_path, "val", [])
    elif case == "zero_byte_csv":
        (tmp_path / "fairface_label_val.csv").write_bytes(b"")
    else:
        write_fairface_split(tmp_path, "val", [one_line(race="Martian"), one_line(file="val/2.jpg", age="x")])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(tmp_path), on_error="skip")
    assert str(tmp_path / "fairface_label_val.csv") in str(e.value)
    assert "no usable rows" in str(e.value) or "cannot read CSV" in str(e.value)
    if case == "all_rows_skipped":
        assert "unknown_age" in str(e.value) and "unknown_race" in str(e.value)


def test_no_images_left_is_a_clear_error(tmp_path):
    empty = FaceDataset("empty", pd.DataFrame({"image_id": pd.Series([], dtype=str)}), FileReader([]))
    with pytest.raises(ImageError, match="no images"):
        embed_images(empty, hand_clip(), progress=False)
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"junk")
    ds = FaceDataset("allbad", pd.DataFrame({"image_id": ["a", "b"]}),
                     FileReader([tmp_path / "a.jpg", tmp_path / "b.jpg"]))
    with pytest.raises(ImageError, match="none of the 2 images could be read"):
        embed_images(ds, hand_clip(), on_error="skip", progress=False)


def test_slice_with_empty_group_gives_nan_or_no_row(tmp_path):
    """Every Female image is unreadable (skipped) and Black has no gender label: no crash,
    no Female rows, NaN (never a number) where a group has no target."""
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    rows = [("red", "White", "Male"), ("green", "White", "Male"), ("blue", "Indian", "Male"),
            ("red", "Black", None), ("green", "Indian", "Female"), ("blue", "White", "Female")]
    paths = []
    for k, (c, race, gender) in enumerate(rows):
        paths.append(tmp_path / f"{k}.png")
        if gender == "Female":
            paths[-1].write_bytes(b"")  # unreadable
        else:
            Image.new("RGB", (8, 8), colours[c]).save(paths[-1])
    table = pd.DataFrame({"image_id": [str(k) for k in range(len(rows))], "race": [r[1] for r in rows],
                          "gender": [r[2] for r in rows]})
    table["race_binary"] = np.where(table["race"] == "White", "White", "Non-White")
    ds = FaceDataset("hand", table, FileReader(paths))
    tax = Taxonomy("sex", ("a {} photo.",), (TaxonomyClass("Male", ("red",), "class"),
                                             TaxonomyClass("Female", ("green",), "class")), target="gender")
    # no "age": a slice naming an attribute the dataset lacks is an error (tests/test_attributes.py)
    slices = ["overall", "race", "gender", ("race", "gender"), ("race_binary", "gender")]
    ev = evaluate(ds, hand_clip(), [tax], cache_dir=None, slices=slices, on_error="skip", progress=False)
    assert ev.skipped == {"empty_file": 2}
    met = ev.metrics
    assert not met["group"].astype(str).str.contains("Female").any()
    acc = met[met["metric"] == "accuracy"]
    black = acc[(acc["slice"] == "race") & (acc["group"] == "Black")]
    assert black.empty or (black["n"].eq(0).all() and black["value"].isna().all())
    assert not acc.loc[acc["n"] == 0, "value"].notna().any()
    write_outputs(ev, tmp_path / "out", {"test": True}, taxonomies=[tax], slices=slices)
    assert (tmp_path / "out" / "metrics.csv").stat().st_size > 0


TAXONOMY_PROBLEMS = {
    "not_a_mapping": ("- a\n- b\n", "must be a mapping"),
    "bad_yaml": ("name: [unclosed\n", "not valid YAML"),
    "no_classes": ("name: t\ntemplates: ['a {}.']\n", "'classes' is required"),
    "empty_classes": ("name: t\ntemplates: ['a {}.']\nclasses: []\n", "non-empty list"),
    "template_without_slot": ("name: t\ntemplates: ['a photo.']\nclasses: [a, b]\n", "exactly once"),
    "duplicate_label": ("name: t\ntemplates: ['a {}.']\nclasses: [a, a]\n", "duplicate class label"),
    "unknown_key": ("name: t\ntemplates: ['a {}.']\nclases: [a]\nclasses: [a]\n", "unknown key"),
    # a target value that is not a value of the attribute is refused when the run starts,
    # against the dataset's declared values (tests/test_attributes.py)
    "python_tag": ("name: !!python/object/apply:os.getcwd []\ntemplates: ['a {}.']\nclasses: [a]\n",
                   "not valid YAML"),
}


@pytest.mark.parametrize("problem", list(TAXONOMY_PROBLEMS))
def test_invalid_taxonomy_is_refused_naming_the_file(tmp_path, problem):
    text, fragment = TAXONOMY_PROBLEMS[problem]
    path = tmp_path / f"{problem}.yaml"
    path.write_text(text)
    with pytest.raises(TaxonomyError) as e:
        load_taxonomy(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


def test_invalid_taxonomy_fails_before_the_model_is_loaded(tmp_path, compose, fairface_root):
    from clipfair.cli import run_from_config

    bad = tmp_path / "bad.yaml"
    bad.write_text(TAXONOMY_PROBLEMS["duplicate_label"][0])
    cfg = compose(run_overrides(tmp_path / "no-such-model", fairface_root, tmp_path / "cache",
                                f"taxonomies=['{bad}']"))
    with pytest.raises(TaxonomyError, match="duplicate class label"):  # not ModelError
        run_from_config(cfg, tmp_path / "out")


@pytest.mark.parametrize("problem,fragment", [
    ("no_folder", "does not exist"),
    ("config.json", "has no config.json"),
    ("processor", "has no preprocessor_config.json"),
    ("model.safetensors", "has no weights"),
    ("tokenizer", "has no tokenizer files"),
    ("truncated_weights", "could not load model"),
])
def test_model_folder_missing_files_is_a_clear_error(tmp_path, tiny_model_dir, problem, fragment):
    folder = tmp_path / "model"
    if problem != "no_folder":
        shutil.copytree(tiny_model_dir, folder)
    if problem in ("tokenizer", "processor"):
        names = (("tokenizer.json", "vocab.json", "merges.txt") if problem == "tokenizer"
                 else ("processor_config.json", "preprocessor_config.json"))
        for f in names:
            (folder / f).unlink(missing_ok=True)
    elif problem == "truncated_weights":
        w = folder / "model.safetensors"
        w.write_bytes(w.read_bytes()[:5000])
    elif problem != "no_folder":
        (folder / problem).unlink()
    with pytest.raises(ModelError) as e:
        load_hf_clip(str(folder), device="cpu")
    msg = str(e.value)
    assert str(folder) in msg and fragment in msg
    if problem not in ("no_folder", "truncated_weights"):
        assert "save_pretrained" in msg  # what to do


def test_paths_outside_root_refused_unless_allowed(tmp_path):
    root = tmp_path / "ff"
    write_image(tmp_path / "outside.jpg", PALETTE[2])
    write_image(tmp_path / "abs.jpg", PALETTE[3])
    shutil.copy(tmp_path / "outside.jpg", tmp_path / "outside2.jpg")  # another file: not a duplicate path
    write_fairface_split(root, "val", [one_line(file="../outside.jpg"),
                                       one_line(file=str(tmp_path / "abs.jpg")),
                                       one_line(file="val/../../outside2.jpg")], images=False)
    for on_error in ("raise", "skip"):  # refused, never skipped quietly
        with pytest.raises(DatasetError) as e:
            load_dataset("fairface", root=str(root), on_error=on_error)
        msg = str(e.value)
        assert "outside the dataset root" in msg and "'../outside.jpg" in msg and "(3 in total)" in msg
        assert "dataset.allow_outside_root=true" in msg
    ds = load_dataset("fairface", root=str(root), allow_outside_root=True)
    assert [close_to(np.asarray(ds.load_image(i))[0, 0], c)
            for i, c in enumerate([PALETTE[2], PALETTE[3], PALETTE[2]])] == [True] * 3


# ============================================================ interruption, concurrency

# `clipfair run` with image encoding slowed down (0.25 s per batch), so that it can be
# killed between two chunks; the product code is not changed, only the child process
SLOW_CLI = """
import sys, time
from transformers.models.clip import modeling_clip
_features = modeling_clip.CLIPModel.get_image_features
def _slow(self, *a, **k):
    time.sleep(0.25)
    return _features(self, *a, **k)
modeling_clip.CLIPModel.get_image_features = _slow
from clipfair.cli import main
sys.exit(main())
"""
CLI = "import sys; from clipfair.cli import main; sys.exit(main())"


def _cli(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", code, "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_sigkill_during_encoding_resumes_with_identical_results(tmp_path, tiny_model_dir, fairface_root):
    n, chunk = 24, 4
    args = [f"model.name_or_path={tiny_model_dir}", f"dataset.root={fairface_root}", "dataset=fairface",
            f"dataset.limit={n}", f"embed.chunk_size={chunk}", f"model.batch_size={chunk}", "progress=false",
            "taxonomies=[fairface_gender,fairface_race]"]
    # an uninterrupted reference run in its own cache, meanwhile a slowed run that gets killed
    ref = _cli(CLI, *args, f"cache.dir={tmp_path / 'cache_ref'}", f"hydra.run.dir={tmp_path / 'ref'}")
    victim = _cli(SLOW_CLI, *args, f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'killed'}")
    deadline = time.monotonic() + 180
    while not list((tmp_path / "cache").glob("image/*/chunk-*.npz")):
        assert victim.poll() is None, f"run ended before it could be killed:\n{victim.communicate()[0]}"
        assert time.monotonic() < deadline, "no chunk written in time"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    done = len(list((tmp_path / "cache").glob("image/*/chunk-*.npz")))
    assert 1 <= done < n // chunk, "killed mid-way through encoding"
    assert not (tmp_path / "killed" / "metrics.csv").exists()
    _finish(ref)

    rerun = _cli(CLI, *args, f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'resumed'}")
    log = _finish(rerun)
    assert "damaged" not in log  # the kill left only whole chunks
    counts = json.loads((tmp_path / "resumed" / "run.json").read_text())["counts"]
    assert counts["images_from_cache"] == done * chunk
    assert counts["images_encoded"] == n - done * chunk
    assert json.loads((tmp_path / "ref" / "run.json").read_text())["counts"]["images_encoded"] == n
    for name in ("metrics.csv", "disparities.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "resumed" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "ref" / "predictions.parquet"))


def _tamper(path: Path) -> None:
    """A well-formed chunk whose embeddings no longer match its checksum."""
    with np.load(path) as z:
        keys, emb, digest = z["keys"], z["emb"].copy(), z["digest"]
    emb[0, 0] += 1.0
    buf = io.BytesIO()
    np.savez(buf, keys=keys, emb=emb, digest=digest)
    path.write_bytes(buf.getvalue())


DAMAGE = {
    "flip_bytes": lambda p: p.write_bytes(bytes(b ^ 0xFF if 200 <= k < 216 else b
                                                for k, b in enumerate(p.read_bytes()))),
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero_byte": lambda p: p.write_bytes(b""),
    "checksum_mismatch": _tamper,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_chunk_is_recomputed_with_warning(tmp_path, tiny, fairface_root, caplog, damage):
    ds = load_dataset("fairface", root=str(fairface_root), limit=12)
    taxa = load_taxonomies(["fairface_gender"])
    # batches = chunks, so a recomputed chunk is encoded in the same batch as before
    kw = dict(cache_dir=tmp_path / "cache", chunk_size=4, batch_size=4, progress=False)
    first = evaluate(ds, tiny, taxa, **kw)
    chunks = sorted((tmp_path / "cache").glob("image/*/chunk-*.npz"))
    assert len(chunks) == 3
    DAMAGE[damage](chunks[1])
    with caplog.at_level(logging.WARNING, logger="clipfair.run.cache"):
        second = evaluate(ds, tiny, taxa, **kw)
    assert f"cache chunk {chunks[1]} is damaged" in caplog.text
    assert (second.counts["images_encoded"], second.counts["images_from_cache"]) == (4, 8)
    assert chunks[1].with_name(chunks[1].name + ".damaged").exists()  # set aside, not reused
    assert metrics_bytes(second) == metrics_bytes(first)
    pd.testing.assert_frame_equal(second.predictions, first.predictions)
    third = evaluate(ds, tiny, taxa, **kw)  # the recomputed chunk was persisted
    assert third.counts["images_encoded"] == 0


def _value(key: str) -> np.ndarray:
    return np.random.default_rng(int(key[1:])).normal(size=8).astype(np.float32)


def _writer(root: str, worker: int, n_chunks: int, barrier) -> None:
    """Write n_chunks chunks (keys overlapping other workers'), reading back as it goes."""
    barrier.wait()
    store = EmbeddingStore(root, "image", {"model": "m"})
    for c in range(n_chunks):
        keys = [f"k{(worker * 7 + c * 3 + j) % 50}" for j in range(6)]
        store.put(keys, np.stack([_value(k) for k in keys]))
        if c % 4 == 3:  # a second run reading the cache while others write
            other = EmbeddingStore(root, "image", {"model": "m"})
            present = [k for k in keys if k in other]
            assert present == keys
            np.testing.assert_array_equal(other.get(keys), np.stack([_value(k) for k in keys]))
    assert not list(Path(store.dir).glob("*.damaged"))


def test_concurrent_writers_never_corrupt_the_cache(tmp_path):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    workers, n_chunks = 4, 12
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n_chunks, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers
    store = EmbeddingStore(tmp_path, "image", {"model": "m"})
    files = [p.name for p in store.dir.iterdir()]
    chunks = sorted(store.dir.glob("chunk-*.npz"))
    assert len(chunks) == workers * n_chunks
    assert not [f for f in files if f.endswith((".damaged", ".tmp"))], files
    meta = json.loads((store.dir / "meta.json").read_text())
    assert meta.pop("clipfair_cache") == store.kind and meta == store.namespace  # the entry's marker + namespace
    seen = set()
    for path in chunks:  # every entry and its checksum
        with np.load(path, allow_pickle=False) as z:
            keys, emb, digest = z["keys"], z["emb"], str(z["digest"])
        assert _digest(keys, emb) == digest
        for k, e in zip(keys.tolist(), emb):
            np.testing.assert_array_equal(e, _value(k))
            seen.add(k)
    expected = {f"k{(w * 7 + c * 3 + j) % 50}" for w in range(workers) for c in range(n_chunks) for j in range(6)}
    assert seen == expected and set(store.index) == expected


def test_metrics_csv_byte_identical_fresh_cached_and_uncached(tmp_path, tiny, fairface_root):
    ds = load_dataset("fairface", root=str(fairface_root), limit=16)
    taxa = load_taxonomies(["fairface_gender", "clip_denigration"])
    runs = {"fresh": tmp_path / "cache", "cached": tmp_path / "cache", "uncached": None}
    out = {}
    for name, cache in runs.items():
        ev = evaluate(ds, tiny, taxa, cache_dir=cache, chunk_size=8, batch_size=8, progress=False)
        write_outputs(ev, tmp_path / name, {"run": name}, taxonomies=taxa)
        out[name] = ev
    assert out["cached"].counts["images_encoded"] == 0 and out["cached"].counts["images_from_cache"] == 16
    assert out["fresh"].counts["images_encoded"] == 16
    for f in ("metrics.csv", "disparities.csv"):
        data = {n: (tmp_path / n / f).read_bytes() for n in runs}
        assert data["fresh"] == data["cached"] == data["uncached"], f


# ================================================================= untrusted files


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_model_dir):
    import torch
    from transformers import CLIPModel

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    model = CLIPModel.from_pretrained(str(tiny_model_dir))
    model.save_pretrained(str(folder), safe_serialization=False)
    if not (folder / "pytorch_model.bin").exists():  # transformers >= 5 always writes safetensors
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert sorted(p.name for p in folder.glob("*.safetensors")) == []
    with pytest.raises(ModelError) as e:
        load_hf_clip(str(folder), device="cpu")
    msg = str(e.value)
    assert str(folder) in msg and "pickle" in msg and "model.allow_pickle=true" in msg
    loaded = load_hf_clip(str(folder), device="cpu", allow_pickle=True)
    reference = load_hf_clip(str(tiny_model_dir), device="cpu")
    size = reference.model.config.vision_config.image_size
    pixels = torch.rand(2, 3, size, size)
    np.testing.assert_array_equal(loaded.encode_pixels(pixels), reference.encode_pixels(pixels))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_never_unpickled_by_default(tmp_path, tiny_model_dir):
    import pickle

    folder = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelError, match="allow_pickle"):
        load_hf_clip(str(folder), device="cpu")
    assert not marker.exists()


def test_remote_code_is_off_by_default(tmp_path, tiny_model_dir):
    import inspect

    from clipfair.data.adapters import hf as hf_adapter

    assert inspect.signature(load_hf_clip).parameters["trust_remote_code"].default is False
    assert inspect.signature(hf_adapter).parameters["trust_remote_code"].default is False
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "PWNED"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import CLIPConfig as EvilConfig, CLIPModel as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_hf_clip(str(folder), device="cpu")
    assert type(model.model).__module__.startswith("transformers.")
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:pathlib.Path.touch", "!!python/name:os.system",
                                 "!!python/object:clipfair.data.taxonomy.Taxonomy"])
def test_taxonomy_yaml_holds_data_only(tmp_path, tag):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: evil\ntemplates: ['a {{}}.']\nclasses:\n  - label: {tag} ['{marker}']\n")
    with pytest.raises(TaxonomyError) as e:
        load_taxonomy(path)
    assert str(path) in str(e.value) and "not valid YAML" in str(e.value)
    assert not marker.exists()


# ======================================================================= properties

#: small valid images in the formats datasets ship
VALID = [encode(Image.new(mode, (9, 7), color), fmt)
         for mode, color, fmt in [("RGB", (200, 10, 10), "PNG"), ("RGB", (10, 200, 10), "JPEG"),
                                  ("P", 5, "GIF"), ("RGB", (1, 2, 3), "BMP"), ("RGB", (9, 9, 9), "WEBP"),
                                  ("L", 50, "TIFF"), ("RGBA", (1, 2, 3, 4), "PNG")]]


@st.composite
def image_like_bytes(draw) -> bytes:
    """Random bytes, or a valid image (any size and mode) truncated and/or with bytes flipped."""
    kind = draw(st.sampled_from(["random", "mutated", "valid"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "valid":
        mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "CMYK", "I;16", "LA"]))
        w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        fmt = {"CMYK": "JPEG", "I;16": "PNG", "LA": "PNG"}.get(mode, draw(st.sampled_from(["PNG", "TIFF"])))
        return encode(Image.new(mode, (w, h)), fmt)
    data = bytearray(draw(st.sampled_from(VALID)))
    for pos, val in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)):
        data[pos % len(data)] = val
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about corrupt EXIF / TIFF tags
@settings(max_examples=50, deadline=None)
@given(data=image_like_bytes())
def test_random_bytes_decode_to_rgb_or_image_error(data):
    where = "some/dir/img 7.jpg"
    try:
        img = decode_image(data, where)
    except ImageError as e:
        assert str(e).startswith(f"{where}: ") and "on_error=skip" in str(e)
    else:
        assert img.mode == "RGB" and img.width > 0 and img.height > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(image_like_bytes(), min_size=1, max_size=4))
def test_random_bytes_through_embed_images_skip(tiny, files):
    with tempfile.TemporaryDirectory() as d:
        paths = [Path(d) / f"{k}.jpg" for k in range(len(files))]
        for p, data in zip(paths, files):
            p.write_bytes(data)
        ds = FaceDataset("random", pd.DataFrame({"image_id": [p.name for p in paths]}), FileReader(paths))
        try:
            emb = embed_images(ds, tiny, None, on_error="skip", chunk_size=2, progress=False)
        except ImageError as e:
            assert "none of the" in str(e) and "could be read" in str(e)
            return
        # nothing lost, nothing silent: every row is embedded or skipped with its file named
        assert sorted(emb.indices.tolist() + [int(Path(e["image_id"]).stem) for e in emb.errors]) == \
            list(range(len(files)))
        for err in emb.errors:
            assert err["message"].startswith(str(Path(d) / err["image_id"]))
            assert err["reason_key"] in {"empty_file", "not_an_image", "corrupt_image", "bad_image"}
        assert emb.embeddings.shape == (len(emb.indices), tiny.embed_dim)
        assert np.isfinite(emb.embeddings).all()


VALUES = {"race": RACES, "gender": GENDERS, "age": AGE_BINS}


def _label(attr: str):
    valid = st.sampled_from(VALUES[attr])
    variant = st.tuples(valid, st.sampled_from([str.lower, str.upper, str.title, lambda s: f"  {s}\t"])
                        ).map(lambda t: t[1](t[0]))
    return st.one_of(valid, variant, st.text(max_size=10))


_files = st.one_of(st.sampled_from([f"val/{k}.jpg" for k in range(4)]),
                   st.sampled_from(["val/missing.jpg", "../out.jpg", "/etc/passwd", "", "val", "x" * 300]),
                   st.text(max_size=12))
_row = st.tuples(_files, _label("age"), _label("gender"), _label("race"))


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csvprop")
    for k in range(4):
        write_image(root / "val" / f"{k}.jpg", PALETTE[k])
    return root


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(_row, max_size=6), adapter=st.sampled_from(["fairface", "csv"]),
       on_error=st.sampled_from(["raise", "skip"]), bom=st.booleans(),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_random_csv_rows_give_a_dataset_or_a_named_error(csv_root, rows, adapter, on_error, bom, quoting):
    csv_path = csv_root / "fairface_label_val.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=quoting)  # a field with \r or \n is quoted
    writer.writerow(HEADER.split(","))
    writer.writerows([*r, "True"] for r in rows)
    csv_path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    try:
        ds = (load_dataset("fairface", root=str(csv_root), on_error=on_error) if adapter == "fairface"
              else load_dataset("csv", path=str(csv_path), on_error=on_error))
    except (DatasetError, LabelError) as e:
        assert str(csv_path) in str(e) or str(csv_root) in str(e), str(e)
        return
    # a correct result: nothing dropped silently, every label canonical and from its own row
    assert len(ds) + sum(ds.skipped.values()) == len(rows)
    if on_error == "raise":
        assert ds.skipped == {}
    by_file = {r[0].strip(): r for r in rows}
    for _, rec in ds.table.iterrows():
        raw = by_file[rec["image_id"]]
        for attr, value in zip(("age", "gender", "race"), raw[1:]):
            assert rec[attr] == normalize_value(attr, value.strip())
        assert (csv_root / rec["image_id"]).is_file()
