#!/usr/bin/env python
"""Benchmark: counterfactual sets scored from cached embeddings (clipfair.analyses.counterfactual).

SocialCounterfactuals-shaped sets: three kinds (race-gender: 7 races x 2 genders; physical-race:
5 x 7; physical-gender: 5 x 2), members kept at random so a set averages about as many images as
the published data (170,832 images / 13,824 sets = 12.4), spread over S subjects (occupations).
Random unit image embeddings stand in for clipfair's cache and a hash-seeded text encoder for
the cached text embedder: nothing is downloaded and no model runs. Prints the wall time of the
within-set measures (flip, delta_p, top_member_rate; the subject taxonomy plus a 3-class probe
with two harmful categories; B bootstrap replicates over sets) and of the pooled rankings
(MaxSkew@K per subject x kind of set with its test), with the machine's load average.

    python scripts/bench_counterfactual.py --sets 10000 --subjects 260 --dim 512
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd

from clipfair.analyses import RunContext
from clipfair.analyses.counterfactual import Counterfactual
from clipfair.models.base import Scoring
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass

RACES = ["Asian", "Black", "Indian", "Latino", "Middle Eastern", "White", "Other"]
GENDERS = ["Male", "Female"]
PHYSICAL = ["obese", "old", "skinny", "tattooed", "young"]
KINDS = {"race-gender": [(r, g, None) for r in RACES for g in GENDERS],
         "physical-race": [(r, None, p) for p in PHYSICAL for r in RACES],
         "physical-gender": [(None, g, p) for p in PHYSICAL for g in GENDERS]}
MEAN_PER_SET = 170_832 / 13_824


class _Model:
    scoring = Scoring("softmax", 100.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", type=int, default=10_000)
    p.add_argument("--subjects", type=int, default=260)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--permutations", type=int, default=1000)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    full = np.mean([len(v) for v in KINDS.values()])
    keep = MEAN_PER_SET / full
    rows = []
    kinds = list(KINDS)
    for s in range(a.sets):
        kind = kinds[s % 3]
        members = [m for m in KINDS[kind] if rng.random() < keep] or KINDS[kind][:2]
        for r, g, ph in members:
            rows.append({"image_id": f"{s}/{len(rows)}", "set_id": f"s{s}", "subject": f"occupation {s // 3 % a.subjects}",
                         "varies": kind, "race": r, "gender": g, "physical": ph})
    table = pd.DataFrame(rows)
    emb = rng.normal(size=(len(table), a.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def encode(texts):
        out = [np.random.default_rng(abs(hash(t)) % 2 ** 32).normal(size=a.dim) for t in texts]
        return np.asarray(out, np.float32)

    tax = Taxonomy("probe", ("a photo of a {}.",),
                   (TaxonomyClass("thief", ("thief",), "crime"), TaxonomyClass("gorilla", ("gorilla",), "non_human"),
                    TaxonomyClass("person", ("person",), "human")),
                   harms=(("crime", True), ("non_human", True), ("human", False)))
    ctx = RunContext(table, emb, attributes=["set_id", "subject", "varies", "race", "gender", "physical"],
                     encode_text=encode, taxonomies=[tax], model=_Model(), seed=0)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    Counterfactual(bootstrap=a.bootstrap, retrieval={"enabled": False}).run(ctx)
    within = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = Counterfactual(bootstrap=a.bootstrap, retrieval={"k": ["groups"], "bootstrap": a.bootstrap,
                                                         "permutations": a.permutations})
    c.run(ctx)
    both = time.perf_counter() - t0
    load1 = os.getloadavg()
    rankings = int(c.retrieval["query"].astype(str).str.cat(c.retrieval["query_set"].astype(str)).nunique())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; load average "
          f"(1 min) {load0[0]:.1f} before, {load1[0]:.1f} after (shared machine)")
    print(f"{a.sets} sets, {len(table)} images ({len(table) / a.sets:.1f} per set), dim {a.dim}, {a.subjects} subjects")
    print(f"within-set measures (subject taxonomy of {a.subjects} classes + 3-class probe, B={a.bootstrap}): "
          f"{within:.1f} s")
    print(f"with the pooled rankings ({rankings} rankings, K = groups, {a.permutations} permutations where the "
          f"null is not exact): {both:.1f} s, i.e. {both - within:.1f} s for the rankings")


if __name__ == "__main__":
    main()
