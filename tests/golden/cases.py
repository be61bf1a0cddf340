"""The golden cases: small runs on the bundled demo data whose outputs were recorded from the
code before the analyses refactor (issue 20). ``python tests/golden/cases.py`` records them again
into tests/golden/<case>/ (do that only on purpose: the test compares against these files)."""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMMON = ["progress=false", "dataset.limit=120", "precision_audit.n=16"]
PROBE = ["probe.enabled=true", "probe.train_limit=240", "probe.Cs=[0.1,10.0]", "probe.solver=sklearn"]
RETRIEVAL = ["retrieval.enabled=true", "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5,all]",
             "retrieval.bootstrap.B=20"]

CASES: dict[str, list[str]] = {
    # zero-shot under template sets (prompt sensitivity) + linear probe + retrieval + top-k
    "sensitivity_probe_retrieval": ["experiment=prompt_sensitivity", *PROBE, *RETRIEVAL],
    # variant comparison
    "compare_race": ["experiment=compare_race"],
    # the model card (with its probe on projected features)
    "model_card": ["experiment=model_card", "dataset=demo", "model=demo", "probe.features=projected",
                   "probe.train_limit=240", "probe.Cs=[0.1,10.0]", "probe.refine_steps_per_decade=1", "probe.solver=sklearn",
                   "model_card.race_accuracy=binary"],
}

#: the files compared (every one that the case writes)
FILES = ("metrics.csv", "disparities.csv", "confusion.csv", "retrieval.csv", "model_card.csv",
         "comparison.csv", "sensitivity.csv", "predictions.csv")


def run_case(name: str, out: Path, cache: Path) -> Path:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    register_resolvers()
    GlobalHydra.instance().clear()
    overrides = [*CASES[name], *COMMON, f"cache.dir={cache}"]
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    run_from_config(cfg, out, overrides)
    import pandas as pd

    pred = pd.read_parquet(out / "predictions.parquet")
    pred.to_csv(out / "predictions.csv", index=False, float_format="%.6g", lineterminator="\n")
    return out


def record(dest: Path = HERE) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            out = run_case(name, Path(tmp) / name, Path(tmp) / "cache")
            (dest / name).mkdir(parents=True, exist_ok=True)
            for f in FILES:
                if (out / f).exists():
                    with open(out / f, "rb") as src, gzip.GzipFile(dest / name / f"{f}.gz", "wb", 9, mtime=0) as gz:
                        shutil.copyfileobj(src, gz)


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
