"""Shared fixtures: a tiny CLIP saved with save_pretrained and a synthetic FairFace layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache/clipfair from tests."""
    monkeypatch.setenv("CLIPFAIR_CACHE", str(tmp_path / "clipfair-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from clipfair.run.toy import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def fairface_root(tmp_path_factory) -> Path:
    """A synthetic dataset in FairFace's official layout (train 120, val 80 images)."""
    from clipfair.data.synthetic import write_fairface_layout

    root = tmp_path_factory.mktemp("fairface")
    write_fairface_layout(root, n_train=120, n_val=80, seed=1, size=32)
    return root


@pytest.fixture
def compose():
    """Hydra's composed run config, as `clipfair run` builds it (in process: fast)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        yield lambda overrides: hydra_compose("config", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The bundled demo, run once per session as `bash scripts/demo.sh` runs it (probe on); the
    run's folder (its wall time in seconds in ``.wall_s``)."""
    import subprocess
    import sys
    import time

    out = tmp_path_factory.mktemp("demo") / "run"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "clipfair", "run", f"hydra.run.dir={out}", "probe.enabled=true",
                          "progress=false"], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "CLIPFAIR_CACHE": str(tmp_path_factory.mktemp("demo-cache"))})
    assert res.returncode == 0, res.stderr[-2000:]
    (out / ".wall_s").write_text(f"{time.perf_counter() - t0:.1f}")
    return out
