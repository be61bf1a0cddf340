"""Issue 26 (first half): clipfair deletes only what it wrote, and one-line errors before the work.

One test per numbered defect (named test_<n>_...). The destructive cases run in temporary
folders holding decoy user files that are checked byte for byte afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clipfair.utility.outputs import RunDirRefused

from fixtures_datasets import FAIRFACE_HEADER, PALETTE, write_image

LINE = "{file},20-29,{gender},{race},True"
RACES = ["White", "Black", "East Asian", "Indian"]
DEMO = ["model=demo"]


def fairface(root: Path, n: int = 8) -> Path:
    files = [f"val/{k}.jpg" for k in range(n)]
    for k, f in enumerate(files):
        write_image(root / f, PALETTE[k % len(PALETTE)], size=16)
    rows = [LINE.format(file=f, gender="Female" if k % 2 else "Male", race=RACES[k % 4]) for k, f in enumerate(files)]
    (root / "fairface_label_val.csv").write_text("\n".join([FAIRFACE_HEADER, *rows]) + "\n")
    return root


def small_run(root: Path, cache: Path, *extra: str) -> list[str]:
    return [*DEMO, "model.device=cpu", "dataset=fairface", f"dataset.root={root}", f"cache.dir={cache}",
            "progress=false", "taxonomies=[fairface_gender]", "slices=[overall,race]", *extra]


def run_main(args: list[str]) -> int:
    from clipfair.cli import main

    try:
        return main(args)
    except SystemExit as e:
        return int(e.code)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and folder under ``folder`` (hidden ones too), files with their bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def decoys(folder: Path) -> dict[str, bytes]:
    """A user's own files: a document and a photo folder."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.docx").write_bytes(b"PK\x03\x04 my thesis " * 100)
    (folder / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff cat")
    return snapshot(folder)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(composed config, a finished run's folder) of a tiny run (8 images, the toy model)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    tmp = tmp_path_factory.mktemp("finished")
    root = fairface(tmp / "ff")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        cfg = hydra_compose("config", overrides=small_run(root, tmp / "cache"))
    GlobalHydra.instance().clear()
    out = tmp / "out"
    handler = _Keep()
    logging.getLogger("clipfair").addHandler(handler)
    try:
        run_from_config(cfg, out, DEMO)
    finally:
        logging.getLogger("clipfair").removeHandler(handler)
    FINISHED_WARNINGS[:] = handler.messages
    return cfg, out


FINISHED_WARNINGS: list[str] = []  # what the finished run warned


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# ============================================================================ data loss

def test_1_results_folder_is_the_dataset_root_refused_before_anything(tmp_path, capsys):
    root = fairface(tmp_path / "ff")
    before = snapshot(root)
    code = run_main(["run", *small_run(root, tmp_path / "cache"), f"hydra.run.dir={root}", "overwrite=true"])
    assert code == 2
    err = one_line_error(capsys)
    assert err == (f"clipfair: error: the results folder {root} is the dataset root {root}; clipfair writes and "
                   "replaces files in its results folder: choose another with hydra.run.dir=...")
    assert snapshot(root) == before  # nothing deleted, nothing written (no .hydra, cli.log, failed.json)
    # inside it, or holding it, or the cache folder, or the home folder: refused the same way
    for run_dir, how in [(root / "val" / "out", "lies inside the dataset root"),
                         (tmp_path, "contains the dataset root"),
                         (tmp_path / "cache" / "x", "lies inside the cache folder"),
                         (Path.home(), "is the home folder")]:
        assert run_main(["run", *small_run(root, tmp_path / "cache"), f"hydra.run.dir={run_dir}"]) == 2
        assert how in one_line_error(capsys)
    assert snapshot(root) == before and not (tmp_path / "cache").exists()


def test_2_overwrite_never_deletes_a_users_files_and_a_refusal_writes_nothing(tmp_path, capsys):
    root = fairface(tmp_path / "ff")
    mine = tmp_path / "mine"
    before = decoys(mine)
    for extra in ([], ["overwrite=true"]):
        assert run_main(["run", *small_run(root, tmp_path / "cache"), f"hydra.run.dir={mine}", *extra]) == 2
        err = one_line_error(capsys)
        assert f"the results folder {mine} holds files clipfair did not write (photos/cat.jpg, thesis.docx)" in err
        assert "overwrite=" not in err  # never advises the flag that would delete them
        assert snapshot(mine) == before  # byte for byte; no .hydra/, cli.log or failed.json
    # an old run.json without a manifest is not taken for a run's outputs
    (mine / "run.json").write_text('{"model": {"name_or_path": "x"}}')
    before = snapshot(mine)
    assert run_main(["run", *small_run(root, tmp_path / "cache"), f"hydra.run.dir={mine}", "overwrite=true"]) == 2
    assert "did not write (photos/cat.jpg, run.json, thesis.docx)" in one_line_error(capsys)
    assert snapshot(mine) == before


def test_2_overwrite_removes_exactly_the_manifest_files(finished, tmp_path, capsys):
    from clipfair.cli import run_from_config
    from clipfair.utility.outputs import read_manifest

    cfg, out_a = finished
    manifest = read_manifest(out_a)
    assert manifest and "metrics.csv" in manifest and "predictions.parquet" in manifest
    assert set(manifest) | {"run.json"} == {p.relative_to(out_a).as_posix() for p in out_a.rglob("*")
                                             if p.is_file()}
    m = manifest["metrics.csv"]
    import hashlib

    assert m == {"bytes": (out_a / "metrics.csv").stat().st_size,
                 "sha256": hashlib.sha256((out_a / "metrics.csv").read_bytes()).hexdigest()}
    out = tmp_path / "out"
    shutil.copytree(out_a, out)
    # without overwrite: refused, and here (only the earlier run's files) the advice is overwrite=true
    with pytest.raises(RunDirRefused, match="already holds another run's outputs .*set overwrite=true"):
        run_from_config(cfg, out, DEMO)
    # a user's file beside the earlier run: refused, named, overwrite or not; nothing touched
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    ow = cfg.copy()
    ow.overwrite = True
    with pytest.raises(RunDirRefused) as e:
        run_from_config(ow, out, DEMO)
    assert "holds files that are not an earlier run's outputs (notes.txt)" in str(e.value)
    assert "overwrite=" not in str(e.value)
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    # an output changed since the run wrote it (the user edited it): refused, named
    (out / "summary.md").write_text("my edits")
    before = snapshot(out)
    with pytest.raises(RunDirRefused, match=r"changed since it wrote them \(summary.md\)"):
        run_from_config(ow, out, DEMO)
    assert snapshot(out) == before
    shutil.copy(out_a / "summary.md", out / "summary.md")
    # hidden entries (Hydra's .hydra, .DS_Store) are neither counted nor removed
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("x: 1")
    run_from_config(ow, out, DEMO)
    assert (out / ".hydra" / "config.yaml").read_text() == "x: 1"
    new = read_manifest(out)
    assert set(new) | {"run.json"} == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                        if p.is_file() and not p.relative_to(out).as_posix().startswith(".")}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clipfair-")]  # no staging left


def test_3_cache_clear_removes_only_marked_entries(tmp_path, capsys):
    import numpy as np

    from clipfair.run.cache import MARKER, EmbeddingStore, list_entries
    from clipfair.cli import main

    project = tmp_path / "project"
    for rel in ("webapp/site", "data/set1"):  # a project's folders that happen to hold */*/meta.json
        (project / rel).mkdir(parents=True)
        (project / rel / "meta.json").write_text('{"title": "mine"}')
        (project / rel / "index.html").write_text("<p>mine</p>")
    old = project / "image" / "0123456789abcdef0123"  # an entry of an older clipfair, no marker
    old.mkdir(parents=True)
    (old / "meta.json").write_text('{"cache_version": 1, "kind": "image"}')
    store = EmbeddingStore(project, "image", {"model": "m"}, {"model_name": "demo"})
    store.put(["a"], np.ones((1, 2), np.float32))
    assert json.loads((store.dir / "meta.json").read_text())[MARKER] == "image"
    before = snapshot(project)
    assert main(["cache", "clear", "--dir", str(project)]) == 0
    out = capsys.readouterr().out
    assert f"removed 1 cache entry from {project}" in out
    assert "3 folder(s) with a meta.json are not recognised" in out and "webapp/site" in out
    assert not store.dir.exists()
    assert snapshot(project) == {k: v for k, v in before.items() if not k.startswith(f"image/{store.dir.name}")}
    assert [e.path for e in list_entries(project)] == []
    # a marked entry holding a file the cache never writes is left alone too
    store = EmbeddingStore(project, "image", {"model": "m2"})
    (store.dir / "thesis.docx").write_text("mine")
    assert main(["cache", "clear", "--dir", str(project)]) == 0
    assert (store.dir / "thesis.docx").read_text() == "mine"


# ============================================================================ one-line errors before the work

@pytest.mark.parametrize("override, message", [
    ("subset.seed=-1", "subset.seed must be a seed between 0 and 4294967295, got -1"),
    ("retrieval.bootstrap.seed=-1", "retrieval.bootstrap.seed must be a seed between 0 and 4294967295, got -1"),
    ("probe.seed=-1", "probe.seed must be a seed between 0 and 4294967295, got -1"),
    ("slices=[[race,race]]", "slices must be a list of attributes or intersections of different attributes "
                             "(e.g. [race, gender]); race is named twice in, got ['race', 'race']"),
    ("retrieval.bootstrap.B=100000000", "retrieval.bootstrap.B must be a number of replicates between 0 and "
                                        "100,000 (e.g. 1000; 0: no intervals), got 100000000"),
])
def test_13_bad_seeds_slices_and_bootstrap_are_one_line_before_any_work(compose, tmp_path, monkeypatch,
                                                                        override, message):
    from clipfair import cli
    from clipfair.run.schema import ConfigError

    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError) as e:
        cli.run_from_config(compose(["progress=false", "retrieval.enabled=true", override]), tmp_path / "out")
    assert str(e.value) == message
    assert not (tmp_path / "out").exists()


def test_13_bootstrap_memory_and_repeated_slices_outside_the_schema():
    from clipfair.data.base import SliceError
    from clipfair.stats.metrics import resolve_slices
    from clipfair.methods.retrieval import RetrievalOptions, RetrievalError, check_bootstrap_size

    check_bootstrap_size(RetrievalOptions(bootstrap=1000), 1_000_000)  # 1 GB: allowed
    with pytest.raises(RetrievalError) as e:
        check_bootstrap_size(RetrievalOptions(bootstrap=100_000), 100_000)  # 10^10 bytes
    assert str(e.value) == ("retrieval.bootstrap.B=100,000 over 100,000 images needs 9.3 GiB for the resample "
                            "counts (at most 2 GiB); set retrieval.bootstrap.B to at most 21,474 (1000 is usual)")
    with pytest.raises(SliceError, match=r"slice \['race', 'race'\]: names race twice"):
        resolve_slices([("race", "race")], ["race", "gender"])


def test_14_collect_skips_foreign_and_unreadable_runs_and_goes_on(finished, tmp_path, capsys):
    _, out_a = finished
    sweep = tmp_path / "sweep"
    shutil.copytree(out_a, sweep / "0")
    (sweep / "1").mkdir()
    (sweep / "1" / "run.json").write_text('{"model": "some-model"}')
    shutil.copytree(out_a, sweep / "2")
    (sweep / "2" / "metrics.csv").write_text("")
    shutil.copytree(out_a, sweep / "3")
    (sweep / "3" / "metrics.csv").write_bytes(b"\xff\xfe\x00\x81binary\x00" * 20)
    assert run_main(["collect", str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"collected 1 finished run(s) into {sweep / 'collected.csv'}"
    assert out[1:] == [
        f"  left out (unreadable): {sweep / '1'}: {sweep / '1' / 'run.json'}: not a clipfair run record (its model "
        "is not a mapping); was it written by `clipfair run`?",
        f"  left out (unreadable): {sweep / '2'}: {sweep / '2' / 'metrics.csv'}: empty; not a finished clipfair run",
        f"  left out (unreadable): {sweep / '3'}: {sweep / '3' / 'metrics.csv'}: not a readable CSV "
        "(UnicodeDecodeError); was it written by `clipfair run`?"]
    assert len(pd.read_csv(sweep / "collected.csv")) == len(pd.read_csv(out_a / "metrics.csv"))
    assert run_main(["collect", str(sweep), "--confidence", "1.5"]) == 2
    assert one_line_error(capsys) == ("clipfair: error: --confidence must be between 0 and 1 (exclusive), "
                                      "e.g. 0.95, got 1.5")


def test_14_compare_skips_foreign_runs_and_refuses_a_missing_method(finished, tmp_path, capsys):
    _, out_a = finished
    for name in ("a", "b", "foreign"):
        shutil.copytree(out_a, tmp_path / name)
    (tmp_path / "foreign" / "run.json").write_text('{"model": "some-model"}')
    a, b, foreign = (str(tmp_path / n) for n in ("a", "b", "foreign"))
    assert run_main(["compare", a, foreign]) == 2
    assert one_line_error(capsys) == (
        f"clipfair: error: {foreign}/run.json: not a clipfair run record (its model is not a mapping); was it "
        "written by `clipfair run`?; fewer than two readable run folders left to compare")
    assert run_main(["compare", a, b, foreign, "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clipfair: skipped {foreign}/run.json: not a clipfair run record (its model is not a "
                   "mapping); was it written by `clipfair run`?"]
    cmp = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert len(cmp) and not cmp["variant"].astype(str).str.contains("foreign").any()
    assert run_main(["compare", a, b, "--method", "linear_probe"]) == 2
    assert one_line_error(capsys) == (f"clipfair: error: --method linear_probe: {a} has no linear_probe results "
                                      "(run with probe.enabled=true); its methods: zero_shot")


# ============================================================================ smaller points

def test_15_rank_not_below_world_size_is_refused_at_start(tmp_path, monkeypatch, capsys):
    from clipfair.run.distributed import DistributedError, from_env

    with pytest.raises(DistributedError) as e:
        from_env({"RANK": "3", "WORLD_SIZE": "2"})
    assert str(e.value) == ("rank 3 is not in a world of 2 processes (RANK/WORLD_SIZE); a rank must be between 0 "
                            "and the world size - 1: check the launcher's variables")
    with pytest.raises(DistributedError, match="SLURM_PROCID/SLURM_STEP_NUM_TASKS"):
        from_env({"SLURM_PROCID": "4", "SLURM_STEP_NUM_TASKS": "4"})
    assert from_env({"RANK": "1", "WORLD_SIZE": "2"}).rank == 1
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_main(["run", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "rank 3 is not in a world of 2 processes" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_16_failed_overwrite_leaves_an_intact_run_without_failed_json(finished, tmp_path, capsys):
    _, out_a = finished
    out = tmp_path / "out"
    shutil.copytree(out_a, out)
    before = snapshot(out)
    args = small_run(tmp_path / "no-such-data", tmp_path / "cache", f"hydra.run.dir={out}", "overwrite=true")
    assert run_main(["run", *args]) == 2
    assert "no-such-data" in one_line_error(capsys)
    after = snapshot(out)
    assert not (out / "failed.json").exists()
    # the earlier run, whole (Hydra's own .hydra/ and cli.log aside)
    assert {k: v for k, v in after.items() if not k.startswith(".hydra") and k != "cli.log"} == before
    # a run that fails in an empty folder still leaves its failed.json for collect
    assert run_main(["run", *small_run(tmp_path / "no-such-data", tmp_path / "cache"),
                     f"hydra.run.dir={tmp_path / 'fresh'}"]) == 2
    capsys.readouterr()
    assert json.loads((tmp_path / "fresh" / "failed.json").read_text())["user_error"] is True


def test_16_leftovers_of_dead_runs_are_removed_at_the_next_run(tmp_path):
    import clipfair.utility.outputs as O
    from clipfair.cli import _remove_dead_scratch

    dead, alive = _dead_pid(), os.getppid()
    gone = tmp_path / f".clipfair-staging-out-{O._HOST}-{dead}-{'a' * 12}"
    kept = tmp_path / f".clipfair-staging-out-{O._HOST}-{alive}-{'b' * 12}"
    other_host = tmp_path / f".clipfair-old-out-{'0' * 8}-{dead}-{'c' * 12}"  # maybe alive elsewhere: kept
    mine = tmp_path / ".clipfair-staging-notes"  # not one of ours by its name: kept
    for d in (gone, kept, other_host, mine):
        d.mkdir()
        (d / "metrics.csv").write_text("x")
    with O.staged_outputs(tmp_path / "out") as stage:
        assert stage.name.startswith(f".clipfair-staging-out-{O._HOST}-{os.getpid()}-")
        (stage / "a.txt").write_text("a")
    assert not gone.exists() and kept.is_dir() and other_host.is_dir() and mine.is_dir()
    old = os.stat(other_host).st_mtime - O.STALE_AFTER_S - 10
    os.utime(other_host, (old, old))
    O.remove_leftovers(tmp_path)
    assert not other_host.exists() and kept.is_dir()
    # rank > 0 scratch folders (torchrun killed them before they cleaned up)
    scratch_dead, scratch_alive = tmp_path / f"clipfair-rank-{dead}-x1", tmp_path / f"clipfair-rank-{alive}-x2"
    scratch_dead.mkdir()
    scratch_alive.mkdir()
    _remove_dead_scratch(tmp_path)
    assert not scratch_dead.exists() and scratch_alive.is_dir()


def test_17_retrieval_skips_attributes_with_many_values_unless_named_and_shows_progress(caplog, capsys):
    import numpy as np

    import clipfair.methods.retrieval as R
    from clipfair.methods.retrieval import Query, QuerySet, RetrievalOptions

    n = 120
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"image_id": [str(i) for i in range(n)], "person": [f"p{i % 60}" for i in range(n)],
                          "gender": ["Male", "Female"] * (n // 2)})
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    qs = QuerySet("hand", ("{}",), (Query("doctor", ("doctor",), "test", None),))

    def encode(texts):
        return np.array([[1.0, 0.0, 0.0, 0.0]] * len(texts), dtype=np.float32)

    with caplog.at_level(logging.WARNING, logger="clipfair.methods.retrieval"):
        df = R.retrieval_bias(table, emb, [qs], encode, RetrievalOptions(k=(10,), bootstrap=0),
                              attributes=["person", "gender"], progress=True)
    assert set(df["attribute"]) == {"gender"}
    assert ("retrieval: attribute 'person' has 60 distinct values (more than 50) and is left out; name it in "
            "retrieval.attributes") in caplog.text
    assert "retrieval" in capsys.readouterr().err  # tqdm's bar
    named = R.retrieval_bias(table, emb, [qs], encode,
                             RetrievalOptions(k=(10,), bootstrap=0, attributes=("person",)))
    assert set(named["attribute"]) == {"person"}


@pytest.mark.parametrize("override, message", [
    ("dataset.attributes={tone: tone}",
     "unknown config key dataset.attributes: allowed keys: _target_, derived, limit, max_image_bytes, name, on_error, "
     "root, split; to add a new key write '+dataset.attributes=...', e.g. '+dataset.attributes={a: b}' for a mapping"),
    ("template_sets={t: {plain: ['{}']}}",
     "unknown config key template_sets.t: template_sets has no keys yet; add keys to a mapping with a leading +, "
     "e.g. '+template_sets={t: ...}' or '+template_sets.t=...' (quote the whole override in the shell)"),
    ("dataset.derived={band: {from: age}}",
     "unknown config key dataset.derived.band: dataset.derived has no keys yet; add keys to a mapping with a "
     "leading +, e.g. '+dataset.derived={band: ...}' or '+dataset.derived.band=...' (quote the whole override in "
     "the shell)"),
])
def test_18_mapping_overrides_say_how_to_add_a_key(tmp_path, monkeypatch, capsys, override, message):
    import clipfair.cli as cli

    seen = []
    monkeypatch.setattr(cli, "run_from_config", lambda cfg, *a, **k: seen.append(cfg))
    assert run_main(["run", f"hydra.run.dir={tmp_path / 'run'}", override]) == 2
    assert one_line_error(capsys) == f"clipfair: error: {message}"
    assert run_main(["run", f"hydra.run.dir={tmp_path / 'run'}", "+" + override]) == 0  # the advice works
    key = override.split("=")[0]
    from omegaconf import OmegaConf

    assert OmegaConf.select(seen[-1], key)


def test_18_unquoted_non_ascii_path_gets_a_hint_and_the_quoted_form_works(tmp_path, monkeypatch, capsys):
    import clipfair.cli as cli

    seen = []
    monkeypatch.setattr(cli, "run_from_config", lambda cfg, out, *a, **k: seen.append(out))
    assert run_main(["run", f"hydra.run.dir={tmp_path / 'résultats'}"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("clipfair: error: LexerNoViableAltException") and len(err) < 400
    assert err.endswith("(a value with spaces or non-ASCII characters must be quoted inside the override, and the "
                        "override quoted for the shell, e.g. 'hydra.run.dir=\"/data/my results\"')")
    assert run_main(["run", f"hydra.run.dir=\"{tmp_path / 'mes résultats'}\""]) == 0
    assert seen == [tmp_path / "mes résultats"]


def test_18_a_long_prompt_is_shortened_in_the_message(tmp_path):
    from clipfair.data.taxonomy import TaxonomyError, load_taxonomy
    from clipfair.methods.zeroshot import check_prompt_lengths

    long = " ".join(f"word{i}" for i in range(300))
    p = tmp_path / "long.yaml"
    p.write_text(f"name: long\ntemplates: ['a photo of {{}}.']\nclasses:\n  - {{label: x, prompts: ['{long}']}}\n"
                 "  - {label: y, prompts: [short]}\n")
    with pytest.raises(TaxonomyError) as e:
        check_prompt_lengths(load_taxonomy(p), lambda t: len(t.split()), 77)
    msg = str(e.value)
    assert len(msg) < 300 and "\n" not in msg
    assert "prompt 'a photo of word0 word1" in msg and "... (2,301 characters) is 303 tokens" in msg


def test_18_topk_not_below_the_class_count_is_warned(finished):
    _, out = finished  # topk=[5] (the default) on fairface_gender's 2 classes
    assert ("topk: k=5 is not below the 2 classes of taxonomy fairface_gender; its top-5 accuracy is left out "
            "(every image would be a hit): choose k < 2") in FINISHED_WARNINGS
    assert "topk_accuracy" not in set(pd.read_csv(out / "metrics.csv")["metric"])


def test_18_a_file_that_is_no_checkpoint_is_refused_by_its_first_bytes(tmp_path):
    import torch

    from clipfair.models.open_clip_backend import _looks_like_checkpoint

    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    pt = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(st))
    assert not _looks_like_checkpoint(text) and not _looks_like_checkpoint(tmp_path / "missing")
    assert _looks_like_checkpoint(pt) and _looks_like_checkpoint(st)
    try:
        import open_clip  # noqa: F401
    except Exception:  # noqa: BLE001 - the core venv has no open_clip: the loader's check is tested above
        return
    from clipfair.models import ModelError
    from clipfair.models.open_clip_backend import load_open_clip

    with pytest.raises(ModelError, match=f"model.pretrained {text} is not a checkpoint"):
        load_open_clip("ViT-B-32", str(text), device="cpu")


def test_1_a_csv_dataset_folder_is_protected_too(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("file,gender\na.jpg,Male\n")
    before = snapshot(data)
    assert run_main(["run", *DEMO, "dataset=csv", f"dataset.path={data / 'labels.csv'}",
                     f"hydra.run.dir={data}", "overwrite=true"]) == 2
    assert one_line_error(capsys) == (
        f"clipfair: error: the results folder {data} contains the dataset file {data / 'labels.csv'}; clipfair "
        "writes and "
        "replaces files in its results folder: choose another with hydra.run.dir=...")
    assert snapshot(data) == before
    assert run_main(["run", *DEMO, "dataset=csv", f"dataset.path={data / 'labels.csv'}",
                     f"hydra.run.dir={data / 'out'}"]) == 2
    assert f"{data / 'out'} lies inside the dataset image folder {data};" in one_line_error(capsys)
    assert snapshot(data) == before
