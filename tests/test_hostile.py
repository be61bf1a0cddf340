"""Hostile input and faults: one test per case of issue 15 (numbered as there).

Each test asserts the message or behaviour the issue asks for: a one-line error naming the
file / row / field / path and what to do, or the safe behaviour (nothing overwritten, nothing
counted twice, nothing read from outside the dataset or taxonomy folder).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipfair.data import DatasetError, FaceDataset, FileReader, ImageError, load_dataset
from clipfair.data.images import decode_image
from clipfair.models import ModelError, load_model
from clipfair.utility.outputs import OutputError, safe_filename
from clipfair.run.schema import ConfigError
from clipfair.data.taxonomy import TaxonomyError, load_taxonomy

from fixtures_datasets import FAIRFACE_HEADER, PALETTE, write_image

LINE = "{file},20-29,Male,White,True"


def fairface(root: Path, files: list[str], lines: list[str] | None = None) -> Path:
    """A FairFace val split whose CSV lists ``lines`` (default: one line per file)."""
    for k, f in enumerate(files):
        write_image(root / f, PALETTE[k % len(PALETTE)], size=16)
    rows = lines if lines is not None else [LINE.format(file=f) for f in files]
    (root / "fairface_label_val.csv").write_text("\n".join([FAIRFACE_HEADER, *rows]) + "\n")
    return root




#: the bundled toy model (no model to build): chosen on purpose for these small runs
DEMO = ["model=demo"]


def demo_model():
    from clipfair.cli import demo_dir

    return load_model(name_or_path=str(demo_dir() / "model"), device="cpu", dtype="float32")


def small_run(root: Path, cache: Path, *extra: str) -> list[str]:
    return [*DEMO, "model.device=cpu", "dataset=fairface", f"dataset.root={root}", f"cache.dir={cache}",
            "progress=false", "taxonomies=[fairface_gender]", "slices=[overall,race]", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ============================================================================ security


BOMB_SITES = ["name", "description", "target", "templates", "category", "matches", "prompts"]


def test_1_yaml_alias_bomb_is_refused_under_a_memory_limit(tmp_path):
    """A ~700-byte billion-laughs taxonomy, in every place a value is read, is refused quickly
    in a process limited to 1.5 GB of address space (the bomb would need many GB)."""
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = "x-bomb:\n" + "\n".join("  " + line for line in levels) + "\n"  # 9**9 leaves
    assert len(bomb) < 800
    for site in BOMB_SITES:
        body = {"name": "n", "templates": '["a {}."]', "classes": "[{label: a}, {label: b}]"}
        if site in ("name", "description", "target", "templates"):
            body[site] = "*i"
        else:
            body["classes"] = f"[{{label: a, {site}: *i}}, {{label: b}}]"
        text = "".join(f"{k}: {v}\n" for k, v in body.items())
        # the anchors sit in an unknown key so that only the alias check can stop them
        (tmp_path / f"{site}.yaml").write_text(bomb.replace("x-bomb:", "include_:") + text)
    code = textwrap.dedent(f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
        from clipfair.data.taxonomy import TaxonomyError, load_taxonomy
        for site in {BOMB_SITES!r}:
            t0 = time.time()
            try:
                load_taxonomy(r"{tmp_path}/" + site + ".yaml")
                print(site, "LOADED")
            except TaxonomyError as e:
                print(site, round(time.time() - t0, 2), e)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(BOMB_SITES)
    for site, line in zip(BOMB_SITES, lines):
        name, seconds, msg = line.split(" ", 2)
        assert name == site and float(seconds) < 5
        assert f"{tmp_path}/{site}.yaml" in msg and "expands to more than 1,000,000 values" in msg


def test_1_non_scalar_values_are_errors_naming_file_and_entry(tmp_path):
    for text, fragment in [("name: n\ntemplates: ['a {}.']\ndescription: {a: 1}\nclasses: [a, b]\n",
                            "'description' must be a string, got a dict"),
                           ("name: n\ntemplates: ['a {}.']\ntarget: [race]\nclasses: [a, b]\n",
                            "'target' must be a string, got a list"),
                           ("name: n\ntemplates: ['a {}.']\nclasses: [{label: a, category: [x]}, b]\n",
                            "classes[0] (a): 'category' must be a string, got a list"),
                           ("name: n\ntemplates: ['a {}.']\nclasses: [{label: a, prompts: [[x]]}, b]\n",
                            "classes[0] (a): 'prompts[0]' must be a string, got a list")]:
        p = tmp_path / "t.yaml"
        p.write_text(text)
        with pytest.raises(TaxonomyError) as e:
            load_taxonomy(p)
        assert str(e.value).startswith(str(p)) and fragment in str(e.value)


def _link_dataset(tmp_path: Path, target: Path) -> Path:
    root = fairface(tmp_path / "ff", ["val/1.jpg"], [LINE.format(file="val/1.jpg"), LINE.format(file="val/link.jpg")])
    os.symlink(target, root / "val" / "link.jpg")
    return root


@pytest.mark.parametrize("target", ["outside_image", "/etc/passwd"])
def test_2_symlink_out_of_the_dataset_root_is_refused(tmp_path, target):
    if target == "outside_image":
        target = write_image(tmp_path / "elsewhere" / "x.jpg", PALETTE[1])
    root = _link_dataset(tmp_path, Path(target))
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    msg = str(e.value)
    assert "outside the dataset root" in msg and "val/link.jpg" in msg
    assert f"a symbolic link to {Path(target).resolve()}" in msg and "allow_outside_root" in msg
    # a link inside the root is fine; allowing outside paths allows the link
    assert len(load_dataset("fairface", root=str(root), allow_outside_root=True)) == 2


def test_2_symlink_in_a_utkface_folder_is_refused(tmp_path):
    write_image(tmp_path / "utk" / "20_0_0_20170101000000000.jpg", PALETTE[0])
    os.symlink("/etc/passwd", tmp_path / "utk" / "30_1_1_20170101000000001.jpg")
    with pytest.raises(DatasetError, match="symbolic links in .* point outside it.*/etc/passwd"):
        load_dataset("utkface", root=str(tmp_path / "utk"))


def test_3_include_outside_the_taxonomy_folder_is_refused_and_never_echoed(tmp_path, monkeypatch):
    secret = tmp_path / "private" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text("SECRET-TOKEN-123: [unclosed\n")
    mine = tmp_path / "tax" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text(f"include: {secret}\nname: mine\n")
    with pytest.raises(TaxonomyError) as e:
        load_taxonomy(mine)
    assert "outside" in str(e.value) and "CLIPFAIR_ALLOW_INCLUDE_ANYWHERE" in str(e.value)
    assert "SECRET" not in str(e.value)
    (mine.parent / "sub").mkdir()
    (mine.parent / "sub" / "rel.yaml").write_text("include: ../../private/secret.yaml\nname: r\n")
    with pytest.raises(TaxonomyError, match="outside"):
        load_taxonomy(mine.parent / "sub" / "rel.yaml")
    # allowed explicitly: read, and its syntax error names line and column without its content
    monkeypatch.setenv("CLIPFAIR_ALLOW_INCLUDE_ANYWHERE", "1")
    with pytest.raises(TaxonomyError) as e:
        load_taxonomy(mine)
    assert str(e.value).startswith(f"{secret}: not valid YAML at line 2") and "SECRET" not in str(e.value)
    # the built-ins and the folder tree itself stay allowed without the switch
    monkeypatch.delenv("CLIPFAIR_ALLOW_INCLUDE_ANYWHERE")
    (mine.parent / "sub" / "base.yaml").write_text("name: base\ntemplates: ['a {}.']\nclasses: [a, b]\n")
    (mine.parent / "ok.yaml").write_text("include: sub/base.yaml\nname: ok\n")
    (mine.parent / "child.yaml").write_text("include: clip_denigration\nname: child2\n")
    assert load_taxonomy(mine.parent / "ok.yaml").labels == ["a", "b"]
    assert "gorilla" in load_taxonomy(mine.parent / "child.yaml").labels


# ======================================================= data loss and wrong results


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """One finished run with a taxonomy whose category holds '/', under template sets, on a
    dataset with one missing image skipped at load (shared by cases 4, 5, 9, 13)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    tmp = tmp_path_factory.mktemp("run_a")
    files = [f"val/{k}.jpg" for k in range(8)]
    root = fairface(tmp / "ff", files, [LINE.format(file=f).replace("Male", "Female" if k % 2 else "Male")
                                        for k, f in enumerate(files)] + [LINE.format(file="val/gone.jpg")])
    tax = tmp / "slash.yaml"
    tax.write_text("name: slash\ntemplates: ['a photo of a {}.']\n"
                   "classes: [{label: man, category: crime/related}, {label: woman, category: other/x}]\n")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        cfg = hydra_compose("config", overrides=small_run(
            root, tmp / "cache", f"taxonomies=[{tax}]", "dataset.on_error=skip",
            "+template_sets={slash: {plain: ['{}'], photo: ['a photo of {}.']}}"))
    GlobalHydra.instance().clear()
    out = tmp / "out"
    run_from_config(cfg, out, DEMO)
    return cfg, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_4_disk_full_while_rerunning_leaves_the_previous_run_whole(run_a, tmp_path, monkeypatch, capsys):
    from clipfair.cli import _user_error, run_from_config

    cfg, out_a = run_a
    out = tmp_path / "out"
    shutil.copytree(out_a, out)
    before = _snapshot(out)
    real = pd.DataFrame.to_csv

    def full_disk(self, path=None, *a, **k):
        if path is not None and str(path).endswith("metrics.csv"):
            Path(path).write_text("taxonomy,met")  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    cfg = cfg.copy()
    cfg.overwrite = True
    with pytest.raises(OutputError) as e:
        run_from_config(cfg, out, DEMO)
    msg = str(_user_error(e.value))
    assert "no space left on device while writing" in msg and str(out.parent) in msg and "unchanged" in msg
    assert "\n" not in msg
    assert _snapshot(out) == before  # the old run, whole: readable parquet, its own run.json
    pd.read_parquet(out / "predictions.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_5_a_reused_run_folder_is_refused_or_cleared_never_mixed(run_a, tmp_path, compose):
    from clipfair.cli import run_from_config

    _, out_a = run_a
    out = tmp_path / "out"
    shutil.copytree(out_a, out)
    (out / ".hydra").mkdir()  # Hydra's own files do not count as outputs
    cfg = compose(small_run(out_a.parent / "ff", out_a.parent / "cache", "dataset.on_error=skip"))
    with pytest.raises(OutputError, match="already holds another run's outputs .*overwrite=true"):
        run_from_config(cfg, out, DEMO)
    assert _snapshot(out) == _snapshot(out_a) | {}  # untouched
    cfg.overwrite = True
    run_from_config(cfg, out, DEMO)
    assert not list(out.glob("sensitivity*")) and not list(out.glob("rates_slash*"))  # run A's extras gone
    run = json.loads((out / "run.json").read_text())
    assert [t["name"] for t in run["taxonomies"]] == ["fairface_gender"]
    assert (out / ".hydra").is_dir()


def test_6_one_image_under_several_spellings_is_one_image(tmp_path):
    root = fairface(tmp_path / "ff", ["val/5.jpg"], [LINE.format(file=f) for f in ("val/5.jpg", "./val/5.jpg",
                                                                                    "val//5.jpg")])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    assert "duplicate image ids in" in str(e.value) and "(2 in total), e.g. 'val/5.jpg' at " in str(e.value)


def test_6_duplicate_contents_are_reported(tmp_path, caplog):
    from clipfair.run.embed import embed_images

    from handmodel import hand_clip

    root = fairface(tmp_path / "ff", ["val/1.jpg", "val/2.jpg"],
                    [LINE.format(file=f) for f in ("val/1.jpg", "val/2.jpg", "val/copy.jpg")])
    shutil.copy(root / "val" / "1.jpg", root / "val" / "copy.jpg")
    ds = load_dataset("fairface", root=str(root))
    with caplog.at_level(logging.WARNING):
        emb = embed_images(ds, hand_clip(), None, progress=False)
    assert emb.info["duplicate_contents"] == {"groups": 1, "images": 2, "examples": [["val/1.jpg", "val/copy.jpg"]]}
    assert "identical content" in caplog.text and "val/1.jpg = val/copy.jpg" in caplog.text


def test_7_yaml_1_1_words_stay_strings_and_empty_or_list_names_are_errors(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: words\ntemplates: ['{}']\nclasses:\n  - {label: on, prompts: [on]}\n"
                 "  - {label: off, prompts: [off]}\n  - {label: NO, prompts: [NO, yes, Y]}\n")
    t = load_taxonomy(p)
    assert t.labels == ["on", "off", "NO"] and t.classes[2].prompts == ("NO", "yes", "Y")
    for name, fragment in [("", "'name' is required and must be a non-empty string"),
                           ("[x]", "'name' must be a string, got a list"),
                           ("true", "'name' must be a string, got the boolean True (put it in quotes)")]:
        p.write_text(f"name: {name}\ntemplates: ['{{}}']\nclasses: [a, b]\n")
        with pytest.raises(TaxonomyError) as e:
            load_taxonomy(p)
        assert str(e.value).startswith(str(p)) and fragment in str(e.value)


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_8_exif_orientation_is_applied_in_every_decode_path(tmp_path):
    from clipfair.run.embed import embed_images

    stored = Image.new("RGB", (64, 32), (220, 30, 30))
    stored.paste((30, 30, 220), (32, 0, 64, 32))  # left red, right blue, as stored
    data = _exif_jpeg(stored, 6)  # orientation 6: shown rotated 90 degrees clockwise
    shown = decode_image(data, "x.jpg")
    assert shown.size == (32, 64)
    assert shown.getpixel((16, 8))[0] > 150 and shown.getpixel((16, 56))[2] > 150  # red on top, blue below
    draft = decode_image(data, "x.jpg", draft=(16, 16))
    assert draft.size[1] > draft.size[0]  # the JPEG draft path turns it too
    # the embedding of the EXIF-rotated file equals that of the same pixels stored upright,
    # through the model's processor and through the fast uint8 path
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "exif.jpg").write_bytes(data)
    shown.save(tmp_path / "val" / "upright.png")
    ds = FaceDataset("d", pd.DataFrame({"image_id": ["exif", "upright"]}),
                     FileReader([tmp_path / "val" / "exif.jpg", tmp_path / "val" / "upright.png"]))
    model = demo_model()
    for fast in (False, True):
        emb = embed_images(ds, model, None, progress=False, fast_preprocess=fast, fast_decode=False)
        assert emb.info["preprocess"] == ("fast_uint8" if fast else "processor")
        np.testing.assert_allclose(emb.embeddings[0], emb.embeddings[1], atol=1e-5)


# ================================================= tracebacks where one line belongs


def test_9_slash_in_a_category_name_with_template_sets_gives_safe_file_names(run_a):
    _, out = run_a
    assert (out / "run.json").is_file() and (out / "sensitivity.csv").is_file()
    names = [p.name for p in out.iterdir()]
    assert all("/" not in n for n in names)
    assert any(n.startswith("sensitivity_slash_rate_crime_related_") for n in names), names
    assert safe_filename("rates_a/b c", ".png") == "rates_a_b_c.png"
    assert safe_filename("../../etc") == "etc" and safe_filename("") == "x" and len(safe_filename("a" * 999)) == 150


def test_10_disk_full_in_the_cache_names_the_path(tmp_path, monkeypatch):
    from clipfair.run import cache
    from clipfair.cli import _user_error

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        cache.atomic_write_bytes(tmp_path / "c" / "chunk-1.npz", b"x" * 100)
    msg = str(_user_error(e.value))
    assert msg == f"no space left on device while writing ({tmp_path / 'c' / 'chunk-1.npz'}); free some space and run again"
    assert not list((tmp_path / "c").iterdir())  # no partial file left


def test_10_cache_folder_not_writable_runs_without_the_cache(tmp_path, caplog):
    from clipfair.run.pipeline import evaluate
    from clipfair.data.taxonomy import load_taxonomies

    from handmodel import hand_clip

    root = fairface(tmp_path / "ff", ["val/1.jpg", "val/2.jpg"])
    (tmp_path / "blocker").write_text("a file where the cache folder's parent should be")
    with caplog.at_level(logging.WARNING):
        ev = evaluate(load_dataset("fairface", root=str(root)), hand_clip(), load_taxonomies(["fairface_gender"]),
                      cache_dir=tmp_path / "blocker" / "cache", progress=False)
    assert ev.counts["images_encoded"] == 2
    assert f"cache folder {tmp_path / 'blocker' / 'cache'} cannot be written" in caplog.text
    assert "running without the cache" in caplog.text


def test_10_huge_sparse_image_is_refused_from_its_size(tmp_path):
    root = fairface(tmp_path / "ff", ["val/1.jpg"], [LINE.format(file="val/1.jpg"), LINE.format(file="val/huge.jpg")])
    with open(root / "val" / "huge.jpg", "wb") as f:
        f.truncate(30 * 10**9)  # 30 GB, sparse: takes no space
    ds = load_dataset("fairface", root=str(root))
    with pytest.raises(ImageError) as e:
        ds.read_bytes(1)
    msg = str(e.value)
    assert msg.startswith(f"{root / 'val' / 'huge.jpg'}: file is 30,000,000,000 bytes, larger than the "
                          "50,000,000-byte limit") and "dataset.max_image_bytes" in msg and "\n" not in msg
    small = load_dataset("fairface", root=str(root), max_image_bytes=100)  # configurable
    with pytest.raises(ImageError, match="larger than the 100-byte limit"):
        small.read_bytes(0)
    assert load_dataset("fairface", root=str(root), max_image_bytes=None).reader.max_bytes is None


def _run_main(args: list[str]) -> int:
    from clipfair.cli import main

    try:
        return main(args)
    except SystemExit as e:
        return int(e.code)


def test_10_ctrl_c_says_the_run_can_be_resumed(tmp_path, monkeypatch, capsys):
    import clipfair.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_from_config", interrupted)
    assert _run_main(["run", f"hydra.run.dir={tmp_path / 'run'}", "progress=false"]) == 130
    err = one_line_error(capsys)
    assert "interrupted" in err and "run the same command again to resume" in err


def test_10_compare_on_an_unfinished_run_is_one_line(run_a, tmp_path, capsys):
    _, out = run_a
    (tmp_path / "unfinished" / ".hydra").mkdir(parents=True)  # Hydra made it; the run never finished
    assert _run_main(["compare", str(out), str(tmp_path / "unfinished")]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"clipfair: error: {tmp_path / 'unfinished'} is an unfinished run (no predictions.parquet")


def test_10_results_folder_not_writable_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _run_main(["run", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("clipfair: error: cannot create the results folder") and "hydra.run.dir" in err
    # the staging folder beside a run folder that cannot be written: the same, from our side
    from clipfair.utility.outputs import check_run_dir

    with pytest.raises(OutputError, match="cannot be written"):
        check_run_dir(tmp_path / "afile" / "run")


@pytest.mark.parametrize("override, message", [
    ("confidence=1.5", "confidence must be between 0 and 1 (exclusive), e.g. 0.95, got 1.5"),
    ("confidence=0", "confidence must be between 0 and 1 (exclusive), e.g. 0.95, got 0"),
    ("embed.chunk_size=0", "embed.chunk_size must be a number of images >= 1, got 0"),
    ("model.batch_size=0", "model.batch_size must be an integer >= 1, got 0"),
    ("embed.num_workers=-1", "embed.num_workers must be auto or a number >= 0, got -1"),
    ("+model.batchsize=8", "unknown config key model.batchsize: did you mean batch_size?"),
    ("+dataset.on_eror=skip", "unknown config key dataset.on_eror: did you mean on_error?"),
    ("+embed.chunksize=8", "unknown config key embed.chunksize: did you mean chunk_size?"),
    ("dataset.on_error=skipp", "dataset.on_error must be one of raise, skip, got 'skipp'"),
])
def test_11_config_is_validated_before_any_work(compose, tmp_path, monkeypatch, override, message):
    from clipfair import cli

    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError) as e:
        cli.run_from_config(compose(["progress=false", override]), tmp_path / "out")
    assert str(e.value) == message
    assert not (tmp_path / "out").exists()


def test_11_misspelt_key_without_plus_says_did_you_mean(tmp_path, capsys):
    assert _run_main(["run", f"hydra.run.dir={tmp_path / 'run'}", "model.batchsize=8"]) == 2
    assert one_line_error(capsys) == "clipfair: error: unknown config key model.batchsize: did you mean batch_size?"


def test_12_missing_dataset_root_and_missing_model_are_one_line(compose, tmp_path):
    from clipfair.cli import run_from_config

    with pytest.raises(ConfigError, match=r"^dataset.root is required: set it on the command line, e.g. "
                                          r"dataset.root=/data/fairface$"):
        run_from_config(compose(["dataset=fairface"]), tmp_path / "out")
    root = fairface(tmp_path / "ff", ["val/1.jpg"])
    with pytest.raises(ConfigError) as e:  # a user's dataset, no model chosen: never the toy silently
        run_from_config(compose(["dataset=fairface", f"dataset.root={root}"]), tmp_path / "out")
    assert "no model chosen" in str(e.value) and "model=clip_vit_b32" in str(e.value)
    from clipfair.cli import check_config

    check_config(compose([]))  # the demo: the toy on its own data
    check_config(compose(["dataset=fairface", f"dataset.root={root}", "model=demo"]), ["model=demo"])  # on purpose


# ======================================================================== poor messages


def test_13_latin1_byte_names_row_and_line(tmp_path):
    root = fairface(tmp_path / "ff", ["val/1.jpg", "val/2.jpg"])
    csv = root / "fairface_label_val.csv"
    csv.write_bytes(csv.read_bytes().replace(b"val/2.jpg,20-29,Male,White", b"val/2.jpg,20-29,Male,Wh\xefte"))
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    assert str(e.value).startswith(f"{csv} line 3 (row 2): byte 0xef at column 24 is not UTF-8")


def test_13_huge_cell_is_truncated_in_messages(tmp_path):
    big = "X" * 100_000
    root = fairface(tmp_path / "ff", ["val/1.jpg"], [LINE.format(file="val/1.jpg").replace("White", big)])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    msg = str(e.value)
    assert len(msg) < 1000 and "more characters" in msg and "unknown race value" in msg


def test_13_extra_field_names_the_row_and_field_count(tmp_path):
    root = fairface(tmp_path / "ff", ["val/1.jpg", "val/2.jpg"],
                    [LINE.format(file="val/1.jpg") + ",extra", LINE.format(file="val/2.jpg")])
    with pytest.raises(DatasetError) as e:
        load_dataset("fairface", root=str(root))
    assert str(e.value).startswith(f"{root / 'fairface_label_val.csv'} row 1 (line 2) has 6 fields, the header has 5")


def test_13_one_class_taxonomy_warns(tmp_path, caplog):
    p = tmp_path / "one.yaml"
    p.write_text("name: one\ntemplates: ['a photo of {}.']\nclasses: [a person]\n")
    with caplog.at_level(logging.WARNING):
        load_taxonomy(p)
    assert "only one class (a person): every image is scored 1.0" in caplog.text


def test_13_model_path_that_is_a_file_says_so(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match=r"model path .*model.safetensors is a file, not a folder; give the folder"):
        load_model(name_or_path=str(tmp_path / "model.safetensors"))


def test_13_images_skipped_at_load_are_listed_by_name_in_run_json(run_a):
    _, out = run_a
    run = json.loads((out / "run.json").read_text())
    items = run["dataset"]["skipped_at_load_items"]
    assert [i["image_id"] for i in items] == ["val/gone.jpg"] and items[0]["reason_key"] == "missing_image"
    assert run["dataset"]["skipped_at_load"] == {"missing_image": 1}
