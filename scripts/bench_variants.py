#!/usr/bin/env python
"""Benchmark: evaluating many taxonomy variants over cached image embeddings vs encoding.

Prints, measured in one run on this machine:
  1. a cold run: encode N synthetic FairFace-layout images + one taxonomy (cache empty);
  2. a warm run: the same images, V taxonomy variants (template variants of the
     denigration probe), zero image-encoder calls (everything from the cache);
and the ratio. Random-weight model from a named architecture; nothing is downloaded.

    python scripts/bench_variants.py --n-images 11000 --variants 100 --arch tiny
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from clipfair.data import load_dataset
from clipfair.run.embed import EmbedStats
from clipfair.models import load_model
from clipfair.run.pipeline import evaluate
from clipfair.data.synthetic import write_fairface_layout
from clipfair.data.taxonomy import load_taxonomy
from clipfair.run.toy import make_tiny_clip

TEMPLATE_PARTS = ["a photo of {}.", "a picture of {}.", "an image of {}.", "a close-up photo of {}.",
                  "a portrait of {}.", "a cropped photo of {}.", "a blurry photo of {}.", "a bright photo of {}.",
                  "a dark photo of {}.", "a low resolution photo of {}."]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def variants(n: int):
    base = load_taxonomy("clip_denigration")
    out = []
    for i in range(n):
        a, b = TEMPLATE_PARTS[i % 10], TEMPLATE_PARTS[(i // 10) % 10]
        out.append(base.with_templates([a] if a == b else [a, b], name=f"variant_{i:03d}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=11000)
    ap.add_argument("--variants", type=int, default=100)
    ap.add_argument("--arch", default="tiny", help="tiny, ViT-B/32 or ViT-L/14 (random weights)")
    ap.add_argument("--image-size", type=int, default=64, help="JPEG side in pixels")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="clipfair-bench-"))
    data = work / "fairface"
    if not (data / "fairface_label_val.csv").exists():
        t = time.perf_counter()
        write_fairface_layout(data, n_train=0, n_val=a.n_images, seed=0, size=a.image_size)
        print(f"generated {a.n_images} JPEGs in {time.perf_counter() - t:.1f}s")
    model_dir = work / f"model-{a.arch.replace('/', '-')}"
    if not (model_dir / "config.json").exists():
        make_tiny_clip(model_dir, seed=0, arch=a.arch)
    model = load_model(name_or_path=str(model_dir), device="cpu", dtype=a.dtype)
    ds = load_dataset("fairface", root=str(data), split="val")
    cache = work / "cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)

    s1 = EmbedStats()
    t = time.perf_counter()
    ev1 = evaluate(ds, model, [load_taxonomy("clip_denigration")], cache_dir=cache, progress=False, stats=s1)
    cold = time.perf_counter() - t
    taxa = variants(a.variants)
    s2 = EmbedStats()
    t = time.perf_counter()
    ev2 = evaluate(ds, model, taxa, cache_dir=cache, progress=False, stats=s2)
    warm = time.perf_counter() - t
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {a.arch} ({a.dtype}, random weights); "
          f"{len(ds)} images of {a.image_size}x{a.image_size}")
    print(f"cold run (encode {s1.images} images, 1 taxonomy):     {cold:8.2f} s   "
          f"(stages: {ev1.timings})")
    print(f"warm run ({len(taxa)} variants, {s2.images} images encoded, {s2.texts} new prompts): "
          f"{warm:8.2f} s   (stages: {ev2.timings})")
    print(f"per variant: {warm / len(taxa) * 1000:.1f} ms; "
          f"{len(taxa)} cached variants / 1 encoding run = {warm / cold:.3f}")


if __name__ == "__main__":
    main()
