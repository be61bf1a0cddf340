#!/usr/bin/env python
"""Benchmark: the linear probe's fit time at FairFace's train size (86,744 x 768 features).

Features are synthetic (random class means + noise, L2-normalised as clipfair does), so
only the timing means anything. Prints the sweep and final-fit time per target size.

    python scripts/bench_probe.py --n 86744 --dim 768
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from clipfair.linear_probe import fit_probe
from clipfair.taxonomy import load_taxonomy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=86744)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--sweep-max-train", type=int, default=20000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{os.cpu_count()} cores; n={a.n}, dim={a.dim}, sweep rows={a.sweep_max_train}")
    for name in ("fairface_gender", "fairface_race", "fairface_age"):
        tax = load_taxonomy(name)
        labels = np.array(tax.labels, dtype=object)
        y = labels[rng.integers(0, len(labels), a.n)]
        means = {lab: rng.normal(size=a.dim) for lab in tax.labels}
        X = (np.stack([means[v] for v in y]) * 0.15 + rng.normal(size=(a.n, a.dim))).astype(np.float32)
        t = time.perf_counter()
        fit = fit_probe(tax, X, y, sweep_max_train=a.sweep_max_train)
        secs = time.perf_counter() - t
        print(f"{name:16s} {len(labels)} classes: {secs:6.1f} s total (7-value C sweep + final fit), "
              f"C={fit.C:g}, held-out acc {fit.holdout_accuracy[fit.C]:.3f}, final iterations {fit.info['n_iter']}")


if __name__ == "__main__":
    main()
