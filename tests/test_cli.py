"""The CLI end to end, as a user runs it, and every config file composing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from clipfair.cli import main, register_resolvers
from clipfair.stats.metrics import METRIC_COLUMNS
import clipfair.configs

CONFIGS = Path(clipfair.configs.__file__).parent


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`clipfair ...` in a fresh process, exactly as a user types it."""
    cmd = [sys.executable, "-c", "import sys; from clipfair.cli import main; sys.exit(main())", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"clipfair {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def group_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture
def hydra_compose():
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        yield lambda overrides=(): compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()


FAKE_ROOTS = ["dataset.root=/data/x"]


@pytest.mark.parametrize("option", group_files("dataset"))
def test_every_dataset_config_composes(hydra_compose, option):
    extra = {"fairface": FAKE_ROOTS, "utkface": FAKE_ROOTS, "csv": ["dataset.path=/data/x.csv"]}.get(option, [])
    cfg = hydra_compose([f"dataset={option}", *extra])
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["dataset"]["_target_"] == "clipfair.data.load_dataset"
    from clipfair.data import DATASETS

    assert resolved["dataset"]["name"] in DATASETS


@pytest.mark.parametrize("option", group_files("model"))
def test_every_model_config_composes(hydra_compose, option):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(hydra_compose([f"model={option}"]), resolve=True)
    assert cfg["model"]["_target_"] == "clipfair.models.load_model"
    assert cfg["model"]["trust_remote_code"] is False and cfg["model"]["allow_pickle"] is False
    assert cfg["model"]["name_or_path"] or cfg["model"]["name"]  # hf: name_or_path; open_clip: name


@pytest.mark.parametrize("option", group_files("experiment"))
def test_every_experiment_composes_and_names_valid_taxonomies(hydra_compose, option, tmp_path):
    from omegaconf import OmegaConf

    from clipfair.methods.sensitivity import expand_template_sets
    from clipfair.data.taxonomy import load_taxonomies

    extra = []
    if option == "dollar_street":  # its taxonomy is written from the data's classnames.txt into dataset.root
        import geo_fixtures as gf

        gf.write_taxonomy(tmp_path, gf.DS_CLASSES, "dollar_street_classes")
        extra = [f"dataset.root={tmp_path}"]
    cfg = OmegaConf.to_container(hydra_compose([f"experiment={option}", *extra]), resolve=True)
    if not cfg["taxonomies"] and (cfg.get("retrieval") or {}).get("enabled"):  # retrieval on its own
        from clipfair.methods.retrieval import load_query_sets, options_from_config

        assert load_query_sets(options_from_config(cfg["retrieval"]).queries)
        return
    if not cfg["taxonomies"] and cfg.get("analyses"):  # analyses on their own (e.g. association)
        from clipfair.analyses import build_analysis

        assert all(build_analysis(k, v) for k, v in cfg["analyses"].items() if v is not None)
        return
    taxa = expand_template_sets(load_taxonomies(cfg["taxonomies"]), cfg.get("template_sets") or {})
    assert len(taxa) >= 1


def test_help_lists_config_groups():
    out = run_cli("run", "--help").stdout
    for group in ("dataset:", "model:", "experiment:"):
        assert group in out
    assert "fairface_hf" in out and "clip_vit_l14" in out


def test_cli_end_to_end_on_a_saved_tiny_model(tmp_path, tiny_model_dir, fairface_root):
    out = tmp_path / "run"
    run_cli("run", f"model.name_or_path={tiny_model_dir}", f"dataset.root={fairface_root}",
            f"hydra.run.dir={out}", "progress=false", "probe.enabled=true",
            "taxonomies=[fairface_gender,fairface_race,clip_denigration]")
    pred = pd.read_parquet(out / "predictions.parquet")
    val = pd.read_csv(fairface_root / "fairface_label_val.csv")
    # 80 images x 3 taxonomies zero-shot + 2 target taxonomies linear probe
    assert len(pred) == 80 * 3 + 80 * 2
    assert set(pred["method"]) == {"zero_shot", "linear_probe"}
    gender = pred[(pred["taxonomy"] == "fairface_gender") & (pred["method"] == "zero_shot")]
    merged = gender.merge(val, left_on="image_id", right_on="file", suffixes=("", "_csv"))
    assert (merged["true_label"] == merged["gender_csv"]).all()
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    assert tuple(met.columns[: len(METRIC_COLUMNS)]) == METRIC_COLUMNS  # then the key columns (issue 20)
    # metrics.csv equals a direct groupby over predictions.parquet
    direct = gender.groupby("race")["correct"].agg(["sum", "size"])
    rows = met[(met["taxonomy"] == "fairface_gender") & (met["method"] == "zero_shot")
               & (met["metric"] == "accuracy") & (met["slice"] == "race")].set_index("group")
    for race, r in direct.iterrows():
        assert rows.loc[race, "count"] == r["sum"] and rows.loc[race, "n"] == r["size"]
    # intersections from the config's nested lists are computed (groups like White+Male)
    inter = met[(met["slice"] == "race+gender") & (met["taxonomy"] == "fairface_gender") & (met["metric"] == "accuracy")]
    sub = gender[(gender["race"] == "White") & (gender["gender"] == "Male")]
    if len(sub):
        row = inter[(inter["group"] == "White+Male") & (inter["method"] == "zero_shot")]
        assert row["n"].item() == len(sub) and row["count"].item() == sub["correct"].sum()
    assert {"race+gender", "age+gender", "race_binary+gender"} <= set(met["slice"])
    denig = pred[pred["taxonomy"] == "clip_denigration"]
    nh = met[(met["taxonomy"] == "clip_denigration") & (met["category"] == "non_human")
             & (met["slice"] == "overall")]
    assert nh["count"].item() == int((denig["predicted_category"] == "non_human").sum())
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["name_or_path"] == str(tiny_model_dir)
    assert run["model"]["logit_scale"] == pytest.approx(np.exp(2.6592), rel=1e-3)
    assert len(run["dataset"]["fingerprint"]) == 16 and run["dataset"]["n_images"] == 80
    import hashlib

    files = "\n".join(pd.read_csv(fairface_root / "fairface_label_val.csv")["file"])
    assert run["dataset"]["file_list_hash"] == hashlib.sha256(files.encode()).hexdigest()[:16]
    assert run["git"]["commit"] is None or len(run["git"]["commit"]) == 40
    assert run["timings_s"]["embed_images"] > 0
    assert run["config"]["dataset"]["root"] == str(fairface_root)  # the resolved config
    assert run["packages"]["torch"]
    assert (run["counts"]["images_encoded"], run["counts"]["train_images_encoded"]) == (80, 120)
    assert f"dataset.root={fairface_root}" in run["overrides"]
    assert set(run["linear_probe"]) >= {"fairface_gender", "fairface_race"}
    summary = (out / "summary.md").read_text()
    overall = met[(met["taxonomy"] == "fairface_gender") & (met["method"] == "zero_shot")
                  & (met["metric"] == "accuracy") & (met["slice"] == "overall")]["value"].item()
    assert f"{100 * overall:.1f}%" in summary
    assert "not for surveillance" in summary.lower() or "Not for surveillance" in summary
    pngs = sorted(out.glob("*.png"))  # confusion matrices
    svgs = sorted(out.glob("*.svg"))  # the report's compact figures
    assert any("confusion_fairface_gender" in p.name for p in pngs)
    assert "accuracy_fairface_gender.svg" in {p.name for p in svgs}
    assert "rates_clip_denigration.svg" in {p.name for p in svgs}
    for p in pngs:
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 150
    disp = pd.read_csv(out / "disparities.csv", keep_default_na=False)
    assert {"group", "n", "reference", "reference_n", "difference", "ci_low", "ci_high", "ratio",
            "p_adjusted", "significant", "too_small"} <= set(disp.columns)
    # the header names the model and the run; report.html is one self-contained page
    assert str(tiny_model_dir) in summary and "80 evaluated" in summary
    page = (out / "report.html").read_text()
    body = page.split("<body>")[1].split("<script>")[0]
    body = re.sub(r"xmlns(:xlink)?=%22http://www\.w3\.org/[\w/]+%22", "", body)  # SVG's namespace names
    assert "<img src=\"data:image/svg+xml," in page and "http" not in body

    # a rerun with the same model and data encodes no image (the cache is shared)
    out2 = tmp_path / "run2"
    run_cli("run", f"model.name_or_path={tiny_model_dir}", f"dataset.root={fairface_root}",
            f"hydra.run.dir={out2}", "progress=false", "taxonomies=[fairface_gender]")
    assert json.loads((out2 / "run.json").read_text())["counts"]["images_encoded"] == 0


def test_multirun_sweeps_taxonomies(tmp_path, tiny_model_dir, fairface_root):
    sweep = tmp_path / "sweep"  # (also: disparity_min_n drops small groups from disparities)
    run_cli("run", "-m", f"model.name_or_path={tiny_model_dir}", f"dataset.root={fairface_root}",
            f"hydra.sweep.dir={sweep}", "progress=false", "dataset.limit=20",
            "taxonomies=[fairface_gender],[fairface_age]", "disparity_min_n=3")
    got = {json.loads((d / "run.json").read_text())["taxonomies"][0]["name"] for d in sweep.iterdir()
           if (d / "run.json").exists()}
    assert got == {"fairface_gender", "fairface_age"}
    for d in sweep.iterdir():
        if (d / "metrics.csv").exists():
            met = pd.read_csv(d / "metrics.csv", keep_default_na=False)
            disp = pd.read_csv(d / "disparities.csv", keep_default_na=False)
            big = met[(met["slice"] == "age+gender") & (met["n"] >= 3)]
            row = disp[(disp["slice"] == "age+gender")].iloc[0]
            part = big[(big["metric"] == row["metric"]) & (big["category"] == row["category"])
                       & (big["method"] == row["method"])]
            assert row["n_groups"] == len(part)


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0
    assert "clipfair <command>" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("overrides, message", [
    (["taxonomies=[nope]"], "unknown taxonomy 'nope'; available built-ins: clip_denigration"),
    (["dataset=fairface", "dataset.root=/nonexistent/ff", "model=clip_vit_b32"], "label CSV not found: /nonexistent/ff/fairface_label_val.csv"),
    (["model.name_or_path=/nonexistent/model"], "model folder /nonexistent/model does not exist"),
])
def test_user_errors_exit_2_with_a_message_not_a_traceback(tmp_path, overrides, message):
    res = run_cli("run", f"hydra.run.dir={tmp_path / 'run'}", "progress=false", *overrides, check=False)
    assert res.returncode == 2
    assert f"clipfair: error: {message}" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_a_dataset_config_of_ones_own_and_mappings_on_the_command_line(tmp_path, capsys):
    """The README's recipe: a dataset config in a folder outside the repository, named with
    --config-dir, that starts from csv.yaml; mappings added on the command line with a leading +."""
    import yaml

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text(
        "defaults:\n  - csv\n  - _self_\npath: /data/mine.csv\nattributes: {skin_tone: monk, region: country}\n")
    rc = main(["run", "--config-dir", str(tmp_path), "dataset=mine",
               "+dataset.derived={tone_band: {from: skin_tone, groups: {light: ['1', '2', '3']}, other: darker}}",
               "--cfg", "job"])
    out = capsys.readouterr().out
    assert rc in (0, None)
    ds = yaml.safe_load(out)["dataset"]
    assert ds["name"] == "csv" and ds["path"] == "/data/mine.csv" and ds["image_column"] == "file"
    assert ds["attributes"] == {"skin_tone": "monk", "region": "country"}
    assert ds["derived"] == {"tone_band": {"from": "skin_tone", "groups": {"light": ["1", "2", "3"]}, "other": "darker"}}
    # without the +, a one-line error that says how
    with pytest.raises(SystemExit) as exc:
        main(["run", "dataset=csv", "dataset.path=x.csv", "dataset.derived={b: {from: race, groups: {}}}", "--cfg", "job"])
    captured = capsys.readouterr()
    assert exc.value.code == 2
    assert "leading +" in (captured.err + captured.out)
