#!/usr/bin/env python
"""Benchmark: retrieval bias over cached image embeddings (clipfair.methods.retrieval).

Prints, measured in one run on this machine: the wall time and the peak traced memory
(tracemalloc, which sees numpy's allocations) of Skew@k / MaxSkew / MinSkew / NDKL / Bias@K
for Q queries over N images (random unit embeddings, random race / gender / age labels),
k = 10, 100, 1000, both desired distributions, first without intervals, then with a
bootstrap of B replicates on a subset of the queries. Nothing is downloaded and no model
runs: the image embeddings stand in for clipfair's cache, the text embeddings for the
cached text embedder.

    python scripts/bench_retrieval.py --n-images 100000 --queries 1000 --dim 768
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np
import pandas as pd

from clipfair.data.attributes import AGE_BINS, GENDERS, RACES
from clipfair.methods.retrieval import Query, QuerySet, RetrievalOptions, retrieval_bias


def timed_run(table, emb, qs, encode, opts) -> tuple[float, float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    df = retrieval_bias(table, emb, [qs], encode, opts, attributes=["race", "gender", "age"])
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return secs, peak / 2 ** 20, len(df)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--boot-queries", type=int, default=50)
    p.add_argument("--boot-B", type=int, default=200)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    n, d = a.n_images, a.dim
    emb = rng.standard_normal((n, d), dtype=np.float32)
    table = pd.DataFrame({"image_id": np.arange(n).astype(str), "race": rng.choice(RACES, n),
                          "gender": rng.choice(GENDERS, n), "age": rng.choice(AGE_BINS, n)})
    text = {f"query {i}": v for i, v in enumerate(rng.standard_normal((a.queries, d), dtype=np.float32))}

    def encode(texts):
        return np.stack([text[t] for t in texts])

    qs = QuerySet("bench", ("{}",), tuple(Query(t, (t,)) for t in text))
    opts = RetrievalOptions(k=(10, 100, 1000), desired=("dataset", "uniform"), bootstrap=0,
                            chunk_size=a.chunk_size)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print(f"images {n} x dim {d} ({emb.nbytes / 2 ** 20:.0f} MiB of embeddings), attributes race/gender/age, "
          f"k = 10/100/1000, desired dataset + uniform, chunk {a.chunk_size} queries")
    secs, peak, rows = timed_run(table, emb, qs, encode, opts)
    U = encode(list(text))
    t0 = time.perf_counter()
    for i in range(0, a.queries, a.chunk_size):
        U[i:i + a.chunk_size] @ emb.T
    mm = time.perf_counter() - t0
    print(f"{a.queries} queries, no intervals: {secs:.1f} s ({1000 * secs / a.queries:.1f} ms per query), "
          f"peak traced memory {peak:.0f} MiB beyond inputs, {rows} rows; the float32 score products alone "
          f"({2 * a.queries * n * d / 1e9:.0f} GFLOP) take {mm:.1f} s of it on this machine")
    sub = QuerySet("bench", ("{}",), qs.queries[:a.boot_queries])
    bopts = RetrievalOptions(k=(10, 100, 1000), desired=("dataset", "uniform"), bootstrap=a.boot_B,
                             chunk_size=a.chunk_size)
    secs, peak, rows = timed_run(table, emb, sub, encode, bopts)
    print(f"{a.boot_queries} queries, bootstrap B={a.boot_B}: {secs:.1f} s ({secs / a.boot_queries:.2f} s per query), "
          f"peak traced memory {peak:.0f} MiB ({a.boot_B} x {n} uint8 resample counts = "
          f"{a.boot_B * n / 2 ** 20:.0f} MiB of it)")


if __name__ == "__main__":
    main()
