#!/usr/bin/env python
"""Benchmark the image embedding pipeline against the model alone, in one run.

Prints, per device (CPU, and the GPU where there is one) and dtype:

* model-only images/s: pre-made pixel tensors through ``ClipModel.encode_pixels``;
* pipeline images/s: ``embed_images`` end to end from JPEG files (hashing, decoding,
  preprocessing, encoding; no cache), and its ratio to model-only (rounds alternate between
  the two so that load from other processes affects both alike);
* bf16 against fp32: throughput, embedding cosine similarity and zero-shot agreement on the
  built-in taxonomies;
* decode-only images/s of the processor, the fast uint8 path and JPEG draft decoding, and
  what draft decoding changes (pixels and embeddings);
* DataLoader workers 0/1/2;
* peak RSS of ``embed_images`` on 1k vs 20k small images (one subprocess each).

Models have random weights (``clipfair.run.toy.make_tiny_clip(arch=...)``, never downloaded),
so zero-shot "agreement" measures numerical sensitivity, not accuracy on real data.

    .venv/bin/python scripts/bench.py --arch ViT-B/32 --n-images 256 --out scripts/bench_results_cpu.txt
    .venv/bin/python scripts/bench.py --quick        # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

LINES: list[str] = []


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


# -- inputs -----------------------------------------------------------------------------------

def make_jpegs(folder: Path, n: int, size: int, seed: int = 0, distinct: int = 64):
    """n synthetic faces (``distinct`` drawings, each file's bytes unique) as a FaceDataset."""
    import pandas as pd

    from clipfair.data.base import FaceDataset, FileReader
    from clipfair.data.synthetic import render_face
    from clipfair.data.attributes import RACES, GENDERS, AGE_BINS

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = []
    for j in range(min(n, distinct)):
        buf = io.BytesIO()
        render_face(RACES[j % len(RACES)], GENDERS[j % 2], AGE_BINS[j % len(AGE_BINS)], rng,
                    size=size).save(buf, "JPEG", quality=90)
        faces.append(buf.getvalue())
    paths = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        p.write_bytes(faces[i % len(faces)] + i.to_bytes(4, "little"))  # distinct cache keys
        paths.append(p)
    return FaceDataset("bench", pd.DataFrame({"image_id": [p.name for p in paths]}), FileReader(paths))


def machine() -> list[str]:
    import torch

    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = info.get("Model name", "?")
        flags = info.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    except (OSError, subprocess.SubprocessError):
        isa = []
    from clipfair.run.embed import available_cpus

    lines = [f"cpu: {model}; {available_cpus()} cores available (os.cpu_count={os.cpu_count()}); "
             f"ISA: {', '.join(isa) or '?'}; torch cpu capability {torch.backends.cpu.get_cpu_capability()}",
             f"memory: {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB; "
             f"python {platform.python_version()}, torch {torch.__version__}, "
             f"torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("gpu: none (GPU paths not measured)")
    lines.append(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
                 "(other processes share this machine: timings are noisy)")
    return lines


# -- measurements -----------------------------------------------------------------------------

def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children, e.g. workers)."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def model_only(model, pixels: list, cpu: list | None = None) -> float:
    """Images/s of encode_pixels over pre-made float pixel batches (already preprocessed);
    appends CPU-seconds per image to ``cpu``."""
    n = sum(len(p) for p in pixels)
    w0, c0 = clock()
    for p in pixels:
        model.encode_pixels(p)
    if model.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    w1, c1 = clock()
    if cpu is not None:
        cpu.append((c1 - c0) / n)
    return n / (w1 - w0)


def pipeline(ds, model, cpu: list | None = None, split: list | None = None, **kw) -> tuple[float, object]:
    """Images/s of embed_images end to end (no cache); appends CPU-seconds per image to
    ``cpu`` and (ms/img inside encode_pixels, ms/img elsewhere) to ``split``."""
    from clipfair.run.embed import embed_images

    inside = [0.0]
    real = model.encode_pixels

    def timed(pv):
        t = time.perf_counter()
        try:
            return real(pv)
        finally:
            inside[0] += time.perf_counter() - t

    model.encode_pixels = timed
    try:
        w0, c0 = clock()
        res = embed_images(ds, model, None, progress=False, **kw)
        w1, c1 = clock()
    finally:
        del model.encode_pixels  # back to the method
    if cpu is not None:
        cpu.append((c1 - c0) / len(ds))
    if split is not None:
        split.append((inside[0] / len(ds) * 1e3, (w1 - w0 - inside[0]) / len(ds) * 1e3))
    return len(ds) / (w1 - w0), res


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def zero_shot_agreement(model_a, emb_a, model_b, emb_b, taxonomies) -> dict[str, float]:
    from clipfair.run.embed import TextEmbedder
    from clipfair.methods.zeroshot import class_embeddings, zero_shot_logits

    out = {}
    for t in taxonomies:
        la = zero_shot_logits(emb_a, class_embeddings(t, TextEmbedder(model_a)), model_a.logit_scale)
        lb = zero_shot_logits(emb_b, class_embeddings(t, TextEmbedder(model_b)), model_b.logit_scale)
        out[t.name] = float((la.argmax(1) == lb.argmax(1)).mean())
    return out


def decode_only(ds, model, n: int) -> dict[str, float]:
    """Single-process images/s of reading + decoding + preprocessing, per path."""
    from clipfair.run.embed import _Decoded
    from clipfair.models.hf import spec_from_image_processor

    spec = spec_from_image_processor(model.image_processor)
    paths = {"processor (HF, float32)": (None, None), "fast uint8": (spec, None)}
    if spec is not None:
        paths["fast uint8 + JPEG draft"] = (spec, spec.draft_size())
    out = {}
    for name, (sp, draft) in paths.items():
        d = _Decoded(ds, range(min(n, len(ds))), model, sp, draft)
        t = time.perf_counter()
        for j in range(len(d)):
            d[j]
        out[name] = len(d) / (time.perf_counter() - t)
    return out


def memory_child(n: int, image_size: int, arch: str, workdir: Path) -> dict:
    """Runs in a subprocess: peak RSS of embed_images on n small JPEGs (with a store)."""
    import torch

    from clipfair.run.cache import EmbeddingStore
    from clipfair.run.embed import embed_images, image_namespace
    from clipfair.models import load_hf_clip
    from clipfair.run.toy import make_tiny_clip

    torch.set_num_threads(1)
    mdir = workdir / f"model-{arch.replace('/', '_')}"
    if not (mdir / "config.json").exists():
        make_tiny_clip(mdir, seed=0, arch=arch)
    model = load_hf_clip(str(mdir), device="cpu", dtype="float32", batch_size=256)
    ds = make_jpegs(workdir / f"mem{n}", n, image_size)
    embed_images(make_jpegs(workdir / "memwarm", 8, image_size), model, progress=False)
    store = EmbeddingStore(workdir / f"memcache{n}", "image", image_namespace(model))
    # ru_maxrss survives exec (it would report the parent's peak): use this process's VmHWM,
    # reset here so that it is the peak of embed_images alone (Linux >= 4.0)
    reset = _reset_peak_rss()
    before = _proc_status_kib("VmRSS")
    t = time.perf_counter()
    res = embed_images(ds, model, store, progress=False, chunk_size=2048)
    secs = time.perf_counter() - t
    peak = _proc_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "rss_before_kib": before, "peak_rss_kib": peak, "dim": int(res.embeddings.shape[1]),
            "result_kib": res.embeddings.nbytes / 1024, "seconds": secs, "encoded": res.encoded,
            "peak_of": "VmHWM after reset" if reset else "ru_maxrss"}


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_memory(sizes: list[int], image_size: int, arch: str, workdir: Path) -> list[dict]:
    out = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--_memory-child", str(n), "--image-size", str(image_size),
               "--memory-arch", arch, "--_workdir", str(workdir)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            say(f"  memory run n={n} failed:\n{r.stderr[-2000:]}")
            continue
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B/32", help="clipfair.models.toy.ARCHITECTURES name (random weights)")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=448, help="JPEG side in pixels (FairFace: 448)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", default="auto", help="workers of the main pipeline measurement")
    ap.add_argument("--workers-sweep", default=None, help="also measure these worker counts (default 0,1,2; "
                    "'' = skip)")
    ap.add_argument("--device", default="auto", help="auto (cpu, plus cuda if present), cpu or cuda")
    ap.add_argument("--dtype", default="float32,bfloat16", help="comma-separated; the first is the reference")
    ap.add_argument("--repeats", type=int, default=2, help="alternating model-only / pipeline rounds")
    ap.add_argument("--compare-images", type=int, default=64,
                    help="images for the one-pass comparisons (decode paths, workers)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    ap.add_argument("--memory-sizes", default=None, help="dataset sizes for peak RSS (default 1000,20000; "
                    "'' = skip)")
    ap.add_argument("--memory-image-size", type=int, default=32)
    ap.add_argument("--memory-arch", default="tiny")
    ap.add_argument("--quick", action="store_true", help="small smoke run: 48 images, 1 round, 200/2000")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a._memory_child is not None:
        print(json.dumps(memory_child(a._memory_child, a.image_size, a.memory_arch, Path(a._workdir))))
        return 0
    if a.quick:
        a.n_images, a.repeats = min(a.n_images, 48), 1
    if a.memory_sizes is None:
        a.memory_sizes = "200,2000" if a.quick else "1000,20000"
    if a.workers_sweep is None:
        a.workers_sweep = "0,1" if a.quick else "0,1,2"

    import torch

    from clipfair.run.embed import resolve_num_workers
    from clipfair.models import load_hf_clip
    from clipfair.models.hf import spec_from_image_processor
    from clipfair.models.preprocess import compare_draft
    from clipfair.data.taxonomy import load_taxonomies
    from clipfair.run.toy import make_tiny_clip

    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if a.device == "auto" else [a.device]
    dtypes = [d.strip() for d in a.dtype.split(",") if d.strip()]
    work = Path(tempfile.mkdtemp(prefix="clipfair-bench-"))
    t_start = time.perf_counter()
    try:
        say(f"# clipfair image-embedding benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
        say("command: " + " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
        for line in machine():
            say(line)
        say(f"model: {a.arch}, random weights; {a.n_images} synthetic face JPEGs of "
            f"{a.image_size}x{a.image_size} (quality 90); batch size {a.batch_size}")
        mdir = make_tiny_clip(work / "model", seed=0, arch=a.arch)
        ds = make_jpegs(work / "jpegs", a.n_images, a.image_size)
        taxonomies = load_taxonomies(["fairface_race", "fairface_gender", "fairface_age", "clip_denigration"])

        for device in devices:
            say()
            say(f"## device {device}")
            ref_model = None
            ref_emb = None
            summary = []
            for di, dtype in enumerate(dtypes):
                model = load_hf_clip(str(mdir), device=device, dtype=dtype, batch_size=a.batch_size)
                nw = resolve_num_workers(a.num_workers, model.device)
                spec = spec_from_image_processor(model.image_processor)
                # pre-made pixels: what the processor gives for these very images
                pixels = [model.preprocess([ds.load_image(i) for i in range(s, min(s + a.batch_size, len(ds)))])
                          for s in range(0, len(ds), a.batch_size)]
                if model.device.type != "cpu":  # model-only: inputs already on the device
                    pixels = [p.to(model.device) for p in pixels]
                model.encode_pixels(pixels[0])  # warm-up
                m_ips, p_ips, m_cpu, p_cpu, split, res = [], [], [], [], [], None
                for _ in range(a.repeats):  # alternate, so that both see the same load
                    m_ips.append(model_only(model, pixels, m_cpu))
                    ips, res = pipeline(ds, model, p_cpu, split, batch_size=a.batch_size, num_workers=nw)
                    p_ips.append(ips)
                mo, pi = statistics.median(m_ips), statistics.median(p_ips)
                ratios = [p / m for p, m in zip(p_ips, m_ips)]
                say(f"### {dtype}")
                say(f"model-only: {mo:7.1f} img/s   (rounds: {', '.join(f'{x:.1f}' for x in m_ips)}); "
                    f"{statistics.median(m_cpu) * 1e3:.0f} CPU-ms/img")
                say(f"pipeline:   {pi:7.1f} img/s   (rounds: {', '.join(f'{x:.1f}' for x in p_ips)}); "
                    f"{statistics.median(p_cpu) * 1e3:.0f} CPU-ms/img; workers {nw}, preprocess "
                    f"{res.info['preprocess']}, decode {res.info['decode']}")
                say("pipeline time per image, inside the encoder / everything else (reading, hashing, "
                    "decoding, preprocessing, bookkeeping): " + ", ".join(f"{e:.1f} / {o:.1f} ms" for e, o in split)
                    + f"; model-only {', '.join(f'{1e3 / x:.1f}' for x in m_ips)} ms")
                share = statistics.median(e / (e + o) for e, o in split)
                say(f"ratio pipeline / model-only: {pi / mo:.3f} (per round: "
                    f"{', '.join(f'{r:.3f}' for r in ratios)}); CPU time per image model-only / pipeline: "
                    f"{statistics.median(m_cpu) / statistics.median(p_cpu):.3f}")
                say(f"share of pipeline time spent in the encoder (the ratio at equal encoder speed, "
                    f"robust to load changing between rounds): {share:.3f}")
                summary.append((dtype, mo, pi, share))
                if di == 0:
                    ref_model, ref_emb = model, res.embeddings
                    # what the fast paths change, on this model (on a subset: one pass each)
                    sub = ds.limit(min(len(ds), a.compare_images))
                    ips_full, full = pipeline(sub, model, batch_size=a.batch_size, num_workers=nw,
                                              fast_decode=False)
                    ips_proc, proc = pipeline(sub, model, batch_size=a.batch_size, num_workers=nw,
                                              fast_decode=False, fast_preprocess=False)
                    c = cos_rows(full.embeddings, proc.embeddings)
                    say(f"fast uint8 preprocessing vs the HF processor: embedding cosine min {c.min():.7f}, "
                        f"max |diff| {np.abs(full.embeddings - proc.embeddings).max():.2e}")
                    if spec is not None:
                        st = compare_draft(spec, [ds.read_bytes(i) for i in range(len(ds))])
                        ips_draft, draft = pipeline(sub, model, batch_size=a.batch_size, num_workers=nw,
                                                    fast_decode=True)
                        c = cos_rows(full.embeddings, draft.embeddings)
                        agree = zero_shot_agreement(model, full.embeddings, model, draft.embeddings, taxonomies)
                        say(f"JPEG draft decoding vs full decode: pixels differ by mean {st['mean_levels']:.3f}, "
                            f"p99 {st['p99_levels']:.0f}, max {st['max_levels']:.0f} levels of 255 "
                            f"({st['reduced']}/{st['n']} images decoded smaller); embedding cosine "
                            f"min {c.min():.5f} mean {c.mean():.5f}; zero-shot top-1 agreement "
                            + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
                        say(f"one pass over {len(sub)} images each: fast uint8 + draft {ips_draft:.1f}, "
                            f"fast uint8 + full decode {ips_full:.1f}, HF processor {ips_proc:.1f} img/s")
                else:
                    c = cos_rows(ref_emb, res.embeddings)
                    centred = cos_rows(ref_emb - ref_emb.mean(0), res.embeddings - ref_emb.mean(0))
                    agree = zero_shot_agreement(ref_model, ref_emb, model, res.embeddings, taxonomies)
                    say(f"vs {dtypes[0]}: embedding cosine min {c.min():.5f} mean {c.mean():.5f}; "
                        f"centred (minus the {dtypes[0]} mean embedding) min {centred.min():.4f} "
                        f"mean {centred.mean():.4f}")
                    say("zero-shot top-1 agreement with " + dtypes[0] + " (image and text towers both "
                        "in " + dtype + "): " + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
                    say(f"speed-up over {dtypes[0]}: model-only {mo / summary[0][1]:.2f}x, "
                        f"pipeline {pi / summary[0][2]:.2f}x")
                if a.compile and di == 0:
                    model.compile_image_encoder(dynamic=False)
                    full_batches = [p for p in pixels if len(p) == a.batch_size]
                    t = time.perf_counter()
                    model.encode_pixels(full_batches[0])
                    first = time.perf_counter() - t
                    ips_c = model_only(model, full_batches)
                    say(f"torch.compile: first batch (compiling) {first:.1f} s; model-only compiled "
                        f"{ips_c:.1f} img/s vs eager {mo:.1f}")
                    model._image_features = None
                if di == len(dtypes) - 1 and a.workers_sweep:
                    counts = [int(x) for x in a.workers_sweep.split(",") if x.strip()]
                    rates = {}
                    for w in counts:
                        rates[w] = pipeline(ds, model, batch_size=a.batch_size, num_workers=w)[0]
                    say(f"pipeline img/s by DataLoader workers ({dtype}, one pass each): "
                        + ", ".join(f"{w}: {r:.1f}" for w, r in rates.items()))
                if device == "cuda":
                    if importlib.util.find_spec("torchvision") is not None:
                        ips, r = pipeline(ds, model, batch_size=a.batch_size, num_workers=nw, gpu_decode=True)
                        say(f"pipeline with gpu_decode=true: {ips:.1f} img/s (decode {r.info['decode']})")
                    else:
                        say("gpu_decode: torchvision not installed, not measured")
            dec = decode_only(ds, ref_model, min(len(ds), 128))
            say("decode + preprocess only, one process: "
                + ", ".join(f"{k} {v:.0f} img/s" for k, v in dec.items()))
            say()
            say(f"summary ({device}): " + "; ".join(f"{d} model {m:.1f} / pipeline {p:.1f} img/s = {p / m:.2f} "
                                                    f"(encoder share of pipeline time {sh:.2f})"
                                                    for d, m, p, sh in summary))

        sizes = [int(x) for x in a.memory_sizes.split(",") if x.strip()]
        if sizes:
            say()
            say(f"## peak memory (RSS) of embed_images, {a.memory_arch} model, "
                f"{a.memory_image_size}x{a.memory_image_size} JPEGs, with a cache store, one subprocess each")
            mem = run_memory(sizes, a.memory_image_size, a.memory_arch, work)
            for m in mem:
                say(f"n={m['n']:6d}: RSS before {m['rss_before_kib'] / 1024:7.1f} MiB, peak "
                    f"{m['peak_rss_kib'] / 1024:7.1f} MiB (+{(m['peak_rss_kib'] - m['rss_before_kib']) / 1024:.1f}); "
                    f"result {m['result_kib'] / 1024:.2f} MiB ({m['dim']}-d); {m['seconds']:.1f} s")
            if len(mem) >= 2:
                lo, hi = mem[0], mem[-1]
                per = (hi["peak_rss_kib"] - lo["peak_rss_kib"]) * 1024 / (hi["n"] - lo["n"])
                say(f"peak RSS grows {per:.0f} bytes per image from {lo['n']} to {hi['n']} images "
                    f"({hi['n'] / lo['n']:.0f}x the images, {hi['peak_rss_kib'] / lo['peak_rss_kib']:.2f}x the peak)")
        say()
        say(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"total {time.perf_counter() - t_start:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if a.out:
            Path(a.out).write_text("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
