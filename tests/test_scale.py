"""Scale-out: rank detection and sharding, torchrun equal to one process, sweeps through the
joblib and submitit launchers (a failing job fails alone), concurrent jobs on one cache, and
`clipfair collect`."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipfair.run.cache import _digest
from clipfair.cli import main
from clipfair.run.collect import LABEL_COLUMNS, collect, largest_disparities, write_collected
from clipfair.stats.inference import newcombe_diff
from clipfair.run.distributed import DistributedError, choose_backend, from_env, first_host, shard_indices
from clipfair.stats.metrics import METRIC_COLUMNS, wilson_interval

CLI = [sys.executable, "-m", "clipfair"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# small runs: a few images, one taxonomy, two slices
SMALL = ["progress=false", "taxonomies=[fairface_gender]", "slices=[overall,race]"]


def cli(*args: str, check: bool = True, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"clipfair {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


# ------------------------------------------------------------------ ranks and shards

def test_rank_and_world_from_torchrun_then_slurm_env():
    d = from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1234",
                  "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8"})  # torchrun inside SLURM: torchrun's
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port, d.source) == (1, 4, 1, "h0", 1234,
                                                                                           "torchrun")
    d = from_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
                  "SLURM_STEP_NODELIST": "gpu[07-08,11],cpu1", "SLURM_NTASKS": "8"})
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.source) == (5, 8, 1, "gpu07", "slurm")
    assert d.master_port == 20000 + 123456 % 20000 and not d.is_main and d.enabled
    # a batch script of a multi-task job is one process: SLURM_NTASKS alone must not make a world
    d = from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-4]"})
    assert (d.rank, d.world_size, d.enabled, d.is_main) == (0, 1, False, True)
    assert from_env({}).world_size == 1
    d = from_env({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"})
    assert d.local_world_size == 4
    assert (choose_backend(d, 0), choose_backend(d, 2), choose_backend(d, 4), choose_backend(d, 8)) == \
        ("gloo", "gloo", "nccl", "nccl")
    assert from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}).local_world_size == 2
    with pytest.raises(DistributedError, match="RANK='x' is not an integer"):
        from_env({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("nodes, host", [("node1", "node1"), ("gpu[03-05,9]", "gpu03"), ("a[1],b[2-3]", "a1"),
                                         ("x-[010-020]", "x-010"), ("h1,h2", "h1")])
def test_first_host_of_a_slurm_nodelist(nodes, host):
    assert first_host(nodes) == host


@pytest.mark.parametrize("n, world, block", [(0, 2, 4), (1, 3, 4), (40, 2, 8), (41, 3, 8), (100, 4, 7), (5, 8, 1)])
def test_shards_cover_every_row_once_in_whole_blocks(n, world, block):
    shards = [shard_indices(n, r, world, block) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    for r, s in enumerate(shards):
        assert s == sorted(s)
        assert all((i // block) % world == r for i in s)  # whole blocks, round-robin
    with pytest.raises(ValueError):
        shard_indices(10, 2, 2, 4)


@pytest.mark.parametrize("features", ["projected", "pre_projection"])
def test_shards_of_every_rank_fill_the_cache_rank_0_needs(tmp_path, tiny_model_dir, fairface_root, features):
    """The ranks' shards (run one after the other here) leave rank 0 nothing to encode: the
    evaluation split, and the probe's train split with the features the probe uses."""
    from clipfair.data import load_dataset
    from clipfair.run.distributed import Dist
    from clipfair.run.embed import EmbedStats
    from clipfair.models import load_model
    from clipfair.run.pipeline import embed_shard, evaluate
    from clipfair.data.taxonomy import load_taxonomies

    model = load_model(name_or_path=str(tiny_model_dir), device="cpu", batch_size=4)
    ds = load_dataset("fairface", root=str(fairface_root), limit=14)
    train = load_dataset("fairface", root=str(fairface_root), split="train", limit=18)
    cache = tmp_path / "cache"
    rows = []
    for rank in range(3):
        info = embed_shard(ds, model, cache, Dist(rank, 3), probe_train=train, probe_features=features,
                           progress=False)
        rows.append([(s["features"], s["rows"], s["encoded"]) for s in info["shards"]])
    if features == "projected":  # eval 14 rows = blocks 4,4,4,2 -> ranks 0-2 get 4+2, 4, 4;
        # train 18 = blocks 4,4,4,4,2 -> 4+4, 4+2, 4
        assert [[r[1] for r in rk] for rk in rows] == [[6, 8], [4, 6], [4, 4]]
    else:  # eval projected, eval pre-projection, train pre-projection
        assert [r[0] for r in rows[0]] == ["projected", "pre_projection", "pre_projection"]
    stats = EmbedStats()
    ev = evaluate(ds, model, load_taxonomies(["fairface_gender"]), cache_dir=cache, progress=False, stats=stats,
                  probe_train=train, probe_options={"Cs": [1.0], "features": features})
    assert stats.images == 0 and ev.counts["images_encoded"] == 0 and ev.counts["train_images_encoded"] == 0
    with pytest.raises(DistributedError, match="the cache is off"):
        embed_shard(ds, model, None, Dist(0, 2))


# ------------------------------------------------------------------ torchrun

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_predictions_of_one(tmp_path, tiny_model_dir, fairface_root):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    args = [f"model.name_or_path={tiny_model_dir}", "dataset=fairface", f"dataset.root={fairface_root}",
            "dataset.limit=40", "model.batch_size=8", "embed.chunk_size=8", *SMALL]
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            f"--master_port={_free_port()}", "-m", "clipfair", "run", *args,
                            f"cache.dir={tmp_path / 'cache2'}", f"hydra.run.dir={tmp_path / 'two'}"],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    # meanwhile the same configuration in this one process
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
            cfg = compose("config", overrides=[*args, f"cache.dir={tmp_path / 'cache1'}"])
    finally:
        GlobalHydra.instance().clear()
    run_from_config(cfg, tmp_path / "one")
    out_two = two.communicate(timeout=300)[0]
    assert two.returncode == 0, out_two
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "one" / "predictions.parquet"))
    assert (tmp_path / "two" / "metrics.csv").read_bytes() == (tmp_path / "one" / "metrics.csv").read_bytes()
    rec = json.loads((tmp_path / "two" / "run.json").read_text())
    # rank 0 encoded blocks 0, 2, 4 (24 images), rank 1 the other 16; then rank 0 read all 40 from the cache
    assert rec["distributed"]["world_size"] == 2 and rec["distributed"]["launcher"] == "torchrun"
    assert [r["rank"] for r in rec["distributed"]["ranks"]] == [0, 1]
    assert [r["shards"][0]["encoded"] for r in rec["distributed"]["ranks"]] == [24, 16]
    assert rec["counts"]["images_encoded"] == 0 and rec["counts"]["images_from_cache"] == 40
    assert json.loads((tmp_path / "one" / "run.json").read_text())["distributed"] is None
    # only rank 0 wrote: no other output folder appeared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache1", "cache2", "one", "two"]


# ------------------------------------------------------------------ sweeps

@pytest.mark.slow
def test_joblib_sweep_with_a_failing_job_then_collect(tmp_path, tiny_model_dir, fairface_root, capsys):
    from clipfair.run.toy import make_tiny_clip

    other = make_tiny_clip(tmp_path / "models" / "tiny_b", seed=1)
    sweep = tmp_path / "sweep"
    res = cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
              "dataset=fairface", f"dataset.root={fairface_root}", "dataset.limit=12", *SMALL,
              f"model.name_or_path={tiny_model_dir},{tmp_path / 'models' / 'missing'},{other}", check=False)
    # the failed job is reported with its one-line message, and the sweep says it failed ...
    assert res.returncode == 2
    assert f"clipfair: error: model folder {tmp_path / 'models' / 'missing'} does not exist" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    # ... but the others finished
    jobs = {p.name: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1", "2"]
    for num in ("0", "2"):
        rec = json.loads((jobs[num] / "run.json").read_text())
        assert rec["hydra"]["job_num"] == int(num) and rec["hydra"]["mode"] == "multirun"
        assert rec["hydra"]["choices"]["hydra/launcher"] == "joblib" and rec["hydra"]["choices"]["dataset"] == "fairface"
    failed = json.loads((jobs["1"] / "failed.json").read_text())
    assert failed["error"] == "ModelError" and failed["user_error"] and failed["hydra"]["job_num"] == 1
    assert not (jobs["1"] / "run.json").exists()

    assert main(["collect", str(sweep), "--min-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "collected 2 finished run(s)" in out and "left out (failed)" in out and "does not exist" in out
    table = pd.read_csv(sweep / "collected.csv", keep_default_na=False, dtype={"run": str})
    assert list(table.columns[: len(LABEL_COLUMNS) + len(METRIC_COLUMNS)]) == [*LABEL_COLUMNS, *METRIC_COLUMNS]
    assert sorted(set(table["label"])) == [f"model.name_or_path={p.name}" for p in sorted([tiny_model_dir, other])]
    assert set(table["model"]) == {str(tiny_model_dir), str(other)}
    for num in ("0", "2"):  # each run's metrics, unchanged, under its label
        mine = table[table["run"] == num][list(METRIC_COLUMNS)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, pd.read_csv(jobs[num] / "metrics.csv", keep_default_na=False)
                                      [list(METRIC_COLUMNS)], check_dtype=False)
    md = (sweep / "collected.md").read_text()
    left_out = md.split("## Runs left out")[1].split("\n## ")[0]
    assert "failed" in left_out and "missing" in left_out and "does not exist" in left_out
    assert "<h2" in (sweep / "collected.html").read_text()


@pytest.mark.slow
def test_submitit_local_sweep_runs_through_submitits_executor(tmp_path, tiny_model_dir, fairface_root):
    sweep = tmp_path / "sweep"
    cli("run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
        f"model.name_or_path={tiny_model_dir}", "dataset=fairface", f"dataset.root={fairface_root}",
        "dataset.limit=8", "progress=false", "slices=[overall,race]", "taxonomies=[fairface_gender],[fairface_age]",
        cwd=tmp_path)
    submitit_logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(submitit_logs) == 2  # both jobs ran in submitit's own processes
    recs = [json.loads((sweep / str(j) / "run.json").read_text()) for j in (0, 1)]
    assert [r["taxonomies"][0]["name"] for r in recs] == ["fairface_gender", "fairface_age"]
    for j, r in enumerate(recs):
        assert r["hydra"]["choices"]["hydra/launcher"] == "submitit_local" and r["hydra"]["job_num"] == j
        assert r["hydra"]["job_id"]  # submitit's job id
    table, runs = collect([sweep])  # submitit's folders are not runs
    assert [r.status for r in runs] == ["finished", "finished"]
    assert sorted(set(table["label"])) == ["taxonomies=[fairface_age]", "taxonomies=[fairface_gender]"]


# ------------------------------------------------------------------ one cache, two jobs

def _job(cache: str, model_dir: str, root: str, out: str, barrier) -> None:
    from clipfair.data import load_dataset
    from clipfair.models import load_model
    from clipfair.run.pipeline import evaluate
    from clipfair.data.taxonomy import load_taxonomies

    ds = load_dataset("fairface", root=root, limit=24)
    model = load_model(name_or_path=model_dir, device="cpu")
    barrier.wait()  # both start encoding together
    ev = evaluate(ds, model, load_taxonomies(["fairface_gender"]), cache_dir=cache, chunk_size=4, batch_size=4,
                  progress=False)
    ev.predictions.to_parquet(out)


@pytest.mark.slow
def test_two_concurrent_jobs_on_one_cache_leave_no_corrupt_entry(tmp_path, tiny_model_dir, fairface_root):
    ctx = mp.get_context("spawn")  # not fork: a forked child of a process that ran torch can hang in OpenMP
    cache = tmp_path / "cache"
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_job, args=(str(cache), str(tiny_model_dir), str(fairface_root),
                                            str(tmp_path / f"p{i}.parquet"), barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    chunks = sorted(cache.glob("image/*/chunk-*.npz"))
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith((".damaged", ".tmp"))]
    assert chunks and not leftovers
    keys = set()
    for path in chunks:  # every chunk whole and its checksum right
        with np.load(path, allow_pickle=False) as z:
            assert _digest(z["keys"], z["emb"]) == str(z["digest"])
            keys |= set(z["keys"].tolist())
    assert len(keys) == 24
    frames = [pd.read_parquet(tmp_path / f"p{i}.parquet") for i in range(2)]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    # a third job finds every image in the cache and predicts the same
    from clipfair.data import load_dataset
    from clipfair.models import load_model
    from clipfair.run.pipeline import evaluate
    from clipfair.data.taxonomy import load_taxonomies

    ev = evaluate(load_dataset("fairface", root=str(fairface_root), limit=24),
                  load_model(name_or_path=str(tiny_model_dir), device="cpu"), load_taxonomies(["fairface_gender"]),
                  cache_dir=cache, chunk_size=4, batch_size=4, progress=False)
    assert ev.counts["images_encoded"] == 0
    pd.testing.assert_frame_equal(ev.predictions, frames[0])


# ------------------------------------------------------------------ collect

def test_collects_gap_interval_is_newcombes_hybrid_score_interval():
    from statsmodels.stats.proportion import confint_proportions_2indep

    for c1, n1, c2, n2, conf in [(45, 50, 30, 60, 0.95), (10, 10, 3, 12, 0.99), (0, 20, 5, 25, 0.9),
                                 (114, 120, 60, 74, 1 - 0.05 / 21)]:
        low, high = newcombe_diff(c1, n1, c2, n2, conf)
        ref = confint_proportions_2indep(c1, n1, c2, n2, method="newcomb", compare="diff", alpha=1 - conf)
        np.testing.assert_allclose([low, high], ref, atol=1e-9)


def _metrics(rows: list[tuple]) -> pd.DataFrame:
    """Hand-made metrics rows (taxonomy, method, metric, category, slice, group, n, count)."""
    df = pd.DataFrame(rows, columns=["taxonomy", "method", "metric", "category", "slice", "group", "n", "count"])
    df["value"] = df["count"] / df["n"]
    df["ci_low"], df["ci_high"] = wilson_interval(df["count"].to_numpy(), df["n"].to_numpy())
    df["small"] = df["n"] < 30
    return df[list(METRIC_COLUMNS)]


def _fake_run(folder: Path, model: str, overrides: list[str], metrics: pd.DataFrame, job: int) -> None:
    folder.mkdir(parents=True)
    metrics.to_csv(folder / "metrics.csv", index=False)
    (folder / "disparities.csv").write_text("taxonomy\n")
    pd.DataFrame({"image_id": ["a"]}).to_parquet(folder / "predictions.parquet")
    (folder / "run.json").write_text(json.dumps({
        "overrides": overrides, "model": {"name_or_path": model}, "demo": False,
        "dataset": {"name": "fairface", "source": {"split": "val"}}, "counts": {"images_evaluated": 100},
        "hydra": {"job_num": job, "choices": {"model": "hf"}},
        # run.json records each taxonomy's finding categories (issue 21); collect ranks rates of those only
        "findings": {"clip_denigration": ["non_human", "crime_related"]}}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_collect_labels_finished_runs_and_lists_the_others(tmp_path):
    sweep = tmp_path / "multirun"
    a = _metrics([("fairface_gender", "zero_shot", "accuracy", "", "race", "White", 100, 95),
                  ("fairface_gender", "zero_shot", "accuracy", "", "race", "Black", 80, 60),
                  ("fairface_gender", "zero_shot", "accuracy", "", "race", "Indian", 10, 2),  # tiny group
                  ("fairface_gender", "zero_shot", "accuracy", "", "overall", "all", 190, 157)])
    b = _metrics([("fairface_gender", "zero_shot", "accuracy", "", "race", "White", 100, 90),
                  ("fairface_gender", "zero_shot", "accuracy", "", "race", "Black", 80, 78),
                  ("fairface_gender", "zero_shot", "accuracy", "", "overall", "all", 180, 168),
                  ("clip_denigration", "zero_shot", "rate", "non_human", "age", "0-2", 40, 4),
                  ("clip_denigration", "zero_shot", "rate", "non_human", "age", "20-29", 60, 5)])
    _fake_run(sweep / "0", "/models/clip-a", ["model.name_or_path=/models/clip-a", "dataset=fairface"], a, 0)
    _fake_run(sweep / "2", "openai/clip-b", ["model.name_or_path=openai/clip-b", "dataset=fairface"], b, 2)
    (sweep / "1" / ".hydra").mkdir(parents=True)  # a job that stopped: Hydra's folder only
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- model.name_or_path=/models/c\n- dataset=fairface\n")
    (sweep / "3").mkdir()
    (sweep / "3" / "failed.json").write_text(json.dumps({"error": "ModelError", "message": "no weights",
                                                         "overrides": ["model.name_or_path=/x/d"]}))
    (sweep / ".submitit" / "77").mkdir(parents=True)  # submitit's logs: never a run
    (sweep / ".submitit" / "77" / "run.json").write_text("{}")
    (sweep / ".clipfair-staging-4-abc").mkdir()  # a run moving its outputs in: not yet a run
    (sweep / ".clipfair-staging-4-abc" / "run.json").write_text("{}")

    res = write_collected([sweep], min_n=30)
    runs = {r.path.name: r for r in res["runs"]}
    assert {k: r.status for k, r in runs.items()} == {"0": "finished", "1": "unfinished", "2": "finished",
                                                       "3": "failed"}
    assert runs["3"].message == "ModelError: no weights"
    table = pd.read_csv(sweep / "collected.csv", keep_default_na=False, dtype={"run": str})
    assert len(table) == len(a) + len(b)  # finished runs only, every metrics row once
    assert list(table.columns[: len(LABEL_COLUMNS) + len(METRIC_COLUMNS)]) == [*LABEL_COLUMNS, *METRIC_COLUMNS]
    labels = dict(zip(table["run"], table["label"]))
    assert labels == {"0": "model.name_or_path=clip-a", "2": "model.name_or_path=openai/clip-b"}
    assert set(table.loc[table["run"] == "2", "job"]) == {2}

    md = (sweep / "collected.md").read_text()
    # runs x groups: every cell the run's own value, interval and n; the tiny group flagged
    assert "| model.name_or_path=clip-a | 95.0% [88.8–97.8] (n=100) | 75.0% [64.5–83.2] (n=80) | 20.0% [5.7–51.0] (n=10) † |" in md
    assert "| model.name_or_path=openai/clip-b | 90.0% [82.6–94.5] (n=100) | 97.5% [91.3–99.3] (n=80) | – |" in md
    left = md.split("## Runs left out")[1].split("\n## ")[0]
    assert "`1` | unfinished" in left and "`3` | failed" in left and "no weights" in left
    assert (sweep / "collected_accuracy_fairface_gender_zero_shot_race.png").stat().st_size > 1000
    html = (sweep / "collected.html").read_text()
    assert "data:image/png;base64," in html and "Largest disparity per run" in html

    # largest disparity: an independent pandas computation over groups of n >= 30
    declared = {lab: {"clip_denigration": ["non_human"]} for lab in table["label"].unique()}  # as run.json says
    disp = largest_disparities(table, min_n=30, findings=declared).set_index("label")
    t = table[(table["slice"] != "overall") & (table["n"] >= 30)]
    for label, run in t.groupby("label"):
        spans = run.groupby(["taxonomy", "metric", "category", "slice"])["value"].agg(lambda v: v.max() - v.min())
        assert disp.loc[label, "gap"] == pytest.approx(spans.max())
    a_row = disp.loc["model.name_or_path=clip-a"]
    assert (a_row["high_group"], a_row["low_group"], a_row["pairs"]) == ("White", "Black", 1)
    assert a_row["finding"]  # 95/100 vs 60/80: the interval excludes zero
    b_row = disp.loc["model.name_or_path=openai/clip-b"]
    assert b_row["pairs"] == 2 and b_row["adjusted_confidence"] == pytest.approx(1 - 0.05 / 2)
    low, high = newcombe_diff(78, 80, 90, 100, 1 - 0.05 / 2)
    assert (b_row["gap_ci_low"], b_row["gap_ci_high"]) == pytest.approx((low, high))
    assert "| **yes** |" in md


def test_collect_without_a_finished_run_is_a_one_line_error(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "failed.json").write_text(json.dumps({"error": "DatasetError", "message": "bad root"}))
    res = cli("collect", str(tmp_path), check=False)
    assert res.returncode == 2
    assert res.stderr.startswith("clipfair: error: no finished run under") and "bad root" in res.stderr
    assert "Traceback" not in res.stderr


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=clipfair_slurm", "hydra.launcher.partition=gpu"],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.array_parallelism) == \
        ("gpu", 1, 240, 8)
