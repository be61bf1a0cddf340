"""run.json: everything needed to reproduce a run.

Layer: run.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_VERSION = 1
PACKAGES = ("clipfair", "torch", "transformers", "datasets", "numpy", "pandas", "scikit-learn",
            "pillow", "hydra-core", "omegaconf", "pyarrow", "matplotlib", "safetensors", "tokenizers")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_revision(path: Path | None = None) -> dict[str, Any]:
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def environment() -> dict[str, Any]:
    import torch

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def build_record(**sections: Any) -> dict[str, Any]:
    return {"record_version": RECORD_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "packages": package_versions(), "git": git_revision(), "environment": environment(),
            **sections}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
