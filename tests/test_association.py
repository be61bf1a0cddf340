"""Association tests (WEAT, SC-WEAT, markedness): every statistic against an independent
numpy/scipy/statsmodels computation on the same embeddings, and the YAML test definitions."""

from __future__ import annotations

import hashlib
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from clipfair.stats import weat as W
from clipfair.methods.association_tests import (AssociationError, Settings, load_test,
                                        load_tests, run_tests, settings_from)


def _unit(M):
    M = np.asarray(M, float)
    return M / np.linalg.norm(M, axis=1, keepdims=True)


def _sets(seed=0, nx=5, ny=5, na=4, nb=4, dim=6, shift=0.6):
    rng = np.random.default_rng(seed)
    A = _unit(rng.normal(size=(na, dim)) + np.eye(dim)[0] * 2)
    B = _unit(rng.normal(size=(nb, dim)) + np.eye(dim)[1] * 2)
    X = _unit(rng.normal(size=(nx, dim)) + np.eye(dim)[0] * shift)
    Y = _unit(rng.normal(size=(ny, dim)) + np.eye(dim)[1] * shift)
    return X, Y, A, B


def _s_by_hand(w, A, B):
    # Caliskan's s(w, A, B) written out with explicit cosines
    cos = lambda p, q: float(np.dot(p, q) / (np.linalg.norm(p) * np.linalg.norm(q)))
    return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])


# ---------------------------------------------------------------------------- effect sizes

@pytest.mark.parametrize("sd,ddof", [("joint", 1), ("joint", 0), ("pooled", 1), ("pooled", 0)])
def test_effect_size_matches_hand_formula(sd, ddof):
    X, Y, A, B = _sets(1, nx=6, ny=4)
    u = np.array([_s_by_hand(x, A, B) for x in X])
    v = np.array([_s_by_hand(y, A, B) for y in Y])
    if sd == "joint":
        allv = np.concatenate([u, v])
        denom = math.sqrt(sum((t - allv.mean()) ** 2 for t in allv) / (len(allv) - ddof))
    else:
        ss = sum((t - u.mean()) ** 2 for t in u) + sum((t - v.mean()) ** 2 for t in v)
        denom = math.sqrt(ss / (len(u) + len(v) - 2 * ddof))
    expect = (u.mean() - v.mean()) / denom
    got = W.weat(X, Y, A, B, W.Variant("t", sd, ddof, "permutation"), bootstrap=0).effect_size
    assert got == pytest.approx(expect, rel=1e-12)
    assert W.associations(X, A, B) == pytest.approx(u, rel=1e-12)


def test_pooled_ddof1_is_the_textbook_pooled_sd():
    rng = np.random.default_rng(3)
    u, v = rng.normal(1, 1, 7), rng.normal(0, 2, 11)
    sp = math.sqrt(((len(u) - 1) * np.var(u, ddof=1) + (len(v) - 1) * np.var(v, ddof=1)) / (len(u) + len(v) - 2))
    assert W.effect_size(u, v, "pooled", 1) == pytest.approx((u.mean() - v.mean()) / sp)
    assert math.isnan(W.effect_size([1.0, 1.0], [1.0, 1.0]))   # SD 0: undefined, not inf


# ---------------------------------------------------------------------------- p-values

def test_exact_permutation_p_equals_enumeration_of_partitions():
    X, Y, A, B = _sets(2, nx=5, ny=5, shift=0.3)
    u = [_s_by_hand(x, A, B) for x in X]
    v = [_s_by_hand(y, A, B) for y in Y]
    pooled = u + v
    # Caliskan's statistic: the sum difference over every equal-size partition, ties as greater
    obs = sum(u) - sum(v)
    stats = []
    for xi in combinations(range(10), 5):
        yi = [i for i in range(10) if i not in xi]
        stats.append(sum(pooled[i] for i in xi) - sum(pooled[i] for i in yi))
    expect = sum(s >= obs - 1e-12 for s in stats) / len(stats)
    r = W.weat(X, Y, A, B, bootstrap=0)
    assert r.p_method == "permutation_exact" and r.n_permutations == 252
    assert r.p_value == pytest.approx(expect, abs=1e-15)
    assert 1 / 252 <= r.p_value <= 1


def test_exact_permutation_unequal_sizes_and_ties():
    u, v = [3.0, 1.0, 1.0], [1.0, 0.0]
    # the mean difference over the C(5,3)=10 ways to choose the first set, ties counted as greater
    pooled = u + v
    obs = np.mean(u) - np.mean(v)
    diffs = [np.mean([pooled[i] for i in c]) - np.mean([pooled[i] for i in range(5) if i not in c])
             for c in combinations(range(5), 3)]
    expect = np.mean([d >= obs - 1e-12 for d in diffs])
    p, how, n = W.p_value(u, v)
    assert (p, how, n) == (pytest.approx(expect), "permutation_exact", 10.0)
    # all equal: every partition ties with the observed one, p = 1
    assert W.p_value([2.0, 2.0], [2.0, 2.0])[0] == 1.0


def test_sampled_permutation_uses_plus_one_and_agrees_with_exact():
    X, Y, A, B = _sets(4, nx=6, ny=6, shift=0.25)
    exact = W.weat(X, Y, A, B, bootstrap=0)
    assert exact.p_method == "permutation_exact" and exact.n_permutations == math.comb(12, 6)
    N = 20_000
    sampled = W.weat(X, Y, A, B, bootstrap=0, max_exact=100, n_permutations=N, seed=7)
    assert sampled.p_method == "permutation_sampled" and sampled.n_permutations == N
    k = sampled.p_value * (N + 1) - 1            # (1 + #{>=}) / (N + 1)
    assert k == pytest.approx(round(k), abs=1e-6) and k >= 0
    se = math.sqrt(exact.p_value * (1 - exact.p_value) / N)
    assert abs(sampled.p_value - exact.p_value) < 5 * se + 2 / N
    # a perfectly separated test can never reach p = 0 when sampled
    u, v = np.arange(40.0) + 100, np.arange(40.0)
    p, how, n = W.p_value(u, v, max_exact=10, n_permutations=999)
    assert how == "permutation_sampled" and p == pytest.approx(1 / 1000)


@pytest.mark.parametrize("nx,ny", [(5, 9), (8, 8)])
def test_welch_matches_scipy_ttest_ind(nx, ny):
    X, Y, A, B = _sets(5, nx=nx, ny=ny)
    u = np.array([_s_by_hand(x, A, B) for x in X])
    v = np.array([_s_by_hand(y, A, B) for y in Y])
    expect = sps.ttest_ind(u, v, equal_var=False, alternative="greater").pvalue
    r = W.weat(X, Y, A, B, W.VARIANTS["american_white"], bootstrap=0)
    assert r.p_method == "welch_t" and math.isnan(r.n_permutations)
    assert r.p_value == pytest.approx(expect, rel=1e-10)
    # and Welch's statistic written out, one-sided through the t distribution
    se = math.sqrt(u.var(ddof=1) / nx + v.var(ddof=1) / ny)
    df = se ** 4 / ((u.var(ddof=1) / nx) ** 2 / (nx - 1) + (v.var(ddof=1) / ny) ** 2 / (ny - 1))
    assert r.p_value == pytest.approx(sps.t.sf((u.mean() - v.mean()) / se, df), rel=1e-8)


def test_normal_fit_matches_normal_fitted_to_enumerated_null():
    X, Y, A, B = _sets(6, nx=5, ny=5, shift=0.3)
    u = [_s_by_hand(x, A, B) for x in X]
    v = [_s_by_hand(y, A, B) for y in Y]
    pooled = u + v
    null = [np.mean([pooled[i] for i in c]) - np.mean([pooled[i] for i in range(10) if i not in c])
            for c in combinations(range(10), 5)]
    expect = sps.norm.sf(np.mean(u) - np.mean(v), loc=np.mean(null), scale=np.std(null, ddof=1))
    r = W.weat(X, Y, A, B, W.VARIANTS["mleat"], bootstrap=0)
    assert r.p_method == "normal_fit_exact"
    assert r.p_value == pytest.approx(expect, rel=1e-9)


# ---------------------------------------------------------------------------- SC-WEAT, bootstrap

def test_sc_weat_matches_wolfe_formula():
    rng = np.random.default_rng(8)
    w = rng.normal(size=6)
    A, B = _unit(rng.normal(size=(7, 6)) + 1), _unit(rng.normal(size=(5, 6)))
    ca = np.array([np.dot(w, a) / np.linalg.norm(w) for a in A])
    cb = np.array([np.dot(w, b) / np.linalg.norm(w) for b in B])
    expect = (ca.mean() - cb.mean()) / np.std(np.concatenate([ca, cb]), ddof=1)
    r = W.sc_weat(w, A, B, bootstrap=0)
    assert r.effect_size == pytest.approx(expect, rel=1e-12)
    assert (r.n_x, r.n_y, r.n_a, r.n_b) == (1, 0, 7, 5)
    # permutation p over the partitions of A ∪ B (C(12, 7) = 792, exact)
    pooled = list(ca) + list(cb)
    obs = ca.mean() - cb.mean()
    null = [np.mean([pooled[i] for i in c]) - np.mean([pooled[i] for i in range(12) if i not in c])
            for c in combinations(range(12), 7)]
    assert r.p_method == "permutation_exact"
    assert r.p_value == pytest.approx(np.mean([d >= obs - 1e-12 for d in null]))


def test_bootstrap_interval_is_percentiles_of_resampled_d():
    X, Y, A, B = _sets(9, nx=6, ny=7)
    u, v = W.associations(X, A, B), W.associations(Y, A, B)
    lo, hi = W.bootstrap_interval(u, v, "joint", 1, B=300, confidence=0.9, rng=np.random.default_rng(3))
    # the same draws (u's indices then v's), d recomputed item by item
    g = np.random.default_rng(3)
    iu, iv = g.integers(0, 6, size=(300, 6)), g.integers(0, 7, size=(300, 7))
    ds = []
    for a, b in zip(iu, iv):
        bu, bv = u[a], v[b]
        allv = np.concatenate([bu, bv])
        ds.append((bu.mean() - bv.mean()) / np.std(allv, ddof=1))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ds, [0.05, 0.95])), rel=1e-10)
    r = W.weat(X, Y, A, B, bootstrap=300)
    assert r.ci_low <= r.effect_size <= r.ci_high
    assert all(map(math.isnan, W.bootstrap_interval(u, v, B=0)))


# ---------------------------------------------------------------------------- markedness

def test_markedness_counts_and_wilson_interval():
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(10)
    E = rng.normal(size=(60, 5))
    P = rng.normal(size=(3, 5))                 # unmarked, group g1, group g2
    groups = ["g1"] * 25 + ["g2"] * 35
    df = W.markedness(E, groups, P, group_order=["g1", "g2"])
    closest = [int(np.argmax([np.dot(e, p) / np.linalg.norm(p) for p in P])) for e in E]
    for g, sl in (("g1", slice(0, 25)), ("g2", slice(25, 60))):
        k = sum(c == 0 for c in closest[sl])
        n = sl.stop - sl.start
        row = df.set_index("group").loc[g]
        assert (row.n, row.n_unmarked) == (n, k)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), abs=1e-9)
    table = df[["n_unmarked"]].assign(o=df.n - df.n_unmarked).to_numpy()
    if (table.sum(axis=0) > 0).all():
        assert df.attrs["p_homogeneity"] == pytest.approx(sps.chi2_contingency(table, correction=False)[1])
    bal = W.markedness(E, groups, P, group_order=["g1", "g2"], balanced=True)
    assert list(bal.n) == [25, 25] and list(bal.n_group_total) == [25, 35]


# ---------------------------------------------------------------------------- runner

def _encoder(dim=16):
    """A deterministic text 'model': each text hashes to a fixed random unit vector."""
    calls = []

    def enc(texts):
        calls.append(list(texts))
        out = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=dim)
               for t in texts]
        return _unit(out)
    enc.calls = calls
    return enc


def test_text_only_tests_encode_no_images_and_match_direct_weat():
    enc = _encoder()
    tests = load_tests(["flowers_insects", "career_family", "math_arts"])

    def no_images():
        raise AssertionError("a text-only test asked for image embeddings")
    out = run_tests(tests, enc, table=None, image_embeddings=no_images, settings=Settings(bootstrap=50))
    assert not out.images_used and out.skipped == []
    assert len(enc.calls) == 1                   # every text in one call
    t = tests[0]
    direct = W.weat(enc(t.x.texts()), enc(t.y.texts()), enc(t.a.texts()), enc(t.b.texts()), bootstrap=0,
                    n_permutations=10_000, seed=0)
    row = out.associations.set_index("test").loc["flowers_insects"]
    assert row.effect_size == pytest.approx(direct.effect_size, rel=1e-12)
    assert (row.n_x, row.n_y, row.n_a, row.n_b) == (25, 25, 25, 25)
    assert row.p_method == "permutation_sampled"      # C(50, 25) > 10,000
    assert row.variant.startswith("ghate2025 (sd=joint, ddof=1, p=permutation)")
    assert bool(row.sanity)


def test_holm_over_the_runs_tests_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    out = run_tests(load_tests(["flowers_insects", "career_family", "math_arts", "science_arts",
                                "young_old_names"]), _encoder(), settings=Settings(bootstrap=0))
    p = out.associations.p_value.to_numpy()
    assert out.associations.p_adjusted.to_numpy() == pytest.approx(multipletests(p, method="holm")[1])


def test_cross_modal_tests_use_the_dataset_slices():
    rng = np.random.default_rng(11)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)],
                          "race": ["White"] * 12 + ["Black"] * 9 + ["Indian"] * 19,
                          "gender": ["Male", "Female"] * 20})
    E = _unit(rng.normal(size=(40, 16)))
    enc = _encoder()
    tests = load_tests(["images_race_pleasant", "sc_american_white", "markedness_gender", "images_age_pleasant"])
    out = run_tests(tests, enc, table, lambda: E, Settings(bootstrap=20, n_permutations=500))
    assert out.images_used
    a = out.associations
    race = a[a.test == "images_race_pleasant"].iloc[0]
    assert (race.n_x, race.n_y, race.n_a, race.n_b) == (12, 9, 25, 25)
    t = tests[0]
    direct = W.weat(E[:12], E[12:21], enc(t.a.texts()), enc(t.b.texts()), bootstrap=0, n_permutations=500)
    assert race.effect_size == pytest.approx(direct.effect_size, rel=1e-12)
    sc = a[a.test == "sc_american_white"]
    assert list(sc.target_x) == list(tests[1].x.words) and set(sc.n_a) == {12} and set(sc.n_b) == {9}
    w = enc([tests[1].x.words[0]])[0]
    assert sc.iloc[0].effect_size == pytest.approx(W.sc_weat(w, E[:12], E[12:21], bootstrap=0).effect_size)
    assert list(out.markedness.group) == ["Male", "Female"] and list(out.markedness.n) == [20, 20]
    assert [s[0] for s in out.skipped] == ["images_age_pleasant"] and "age" in out.skipped[0][1]


# ---------------------------------------------------------------------------- YAML definitions

def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_builtin_loads_and_states_its_source():
    tests = load_tests()
    assert {"flowers_insects", "eur_afr_names", "career_family", "math_arts", "science_arts",
            "young_old_names", "images_race_pleasant", "sc_american_white", "markedness_race"} <= {t.name for t in tests}
    assert all(t.source for t in tests)
    assert [t.name for t in tests if t.sanity] == ["flowers_insects"]
    fi = load_test("flowers_insects")
    assert len(fi.x.words) == len(fi.y.words) == len(fi.a.words) == len(fi.b.words) == 25


def test_include_merges_slots_and_template_applies(tmp_path):
    p = _write(tmp_path, "t.yaml", "include: flowers_insects\nname: mine\ntemplate: 'a photo of a {}'\n"
               "targets: {y: {name: bugs, words: [ant, bee]}}\n")
    t = load_test(p)
    assert t.x.name == "flowers" and t.y.words == ("ant", "bee") and not t.sanity
    assert t.y.texts() == ["a photo of a ant", "a photo of a bee"]   # template from the including file
    assert t.a.texts()[0] == "a photo of a caress"    # a top-level template applies to every word set


@pytest.mark.parametrize("text,needle", [
    ("name: t\ntargets: {x: {name: a, words: [p]}}\nattributes: {a: {name: b, words: [q]}, b: {name: c, words: [r]}}",
     "targets.y is missing"),
    ("name: t\nbogus: 1\n", "unknown key(s) ['bogus']"),
    ("name: t\ntargets: {x: {name: a, words: []}, y: {name: b, words: [q]}}\n"
     "attributes: {a: {name: c, words: [q]}, b: {name: d, words: [r]}}", "targets.x (a): 'words' must be a non-empty"),
    ("name: t\ntemplate: 'a photo'\ntargets: {x: {name: a, words: [p]}, y: {name: b, words: [q]}}\n"
     "attributes: {a: {name: c, words: [q]}, b: {name: d, words: [r]}}", "must contain '{}' exactly once"),
    ("name: t\ntargets: {x: {name: a, images: {folder: x, values: [v]}}, y: {name: b, words: [q]}}\n"
     "attributes: {a: {name: c, words: [q]}, b: {name: d, words: [r]}}", "'images' must be one of"),
    ("name: t\nkind: sc_weat\ntargets: {x: {name: a, words: [p]}, y: {name: b, words: [q]}}\n"
     "attributes: {a: {name: c, words: [q]}, b: {name: d, words: [r]}}", "an SC-WEAT has one target set"),
    ("name: t\nkind: markedness\nattribute: race\ngroups: []\n", "'groups' must be a non-empty list"),
    ("name: t\ntargets: {x: {name: a, words: [p, p]}, y: {name: b, words: [q]}}\n"
     "attributes: {a: {name: c, words: [q]}, b: {name: d, words: [r]}}", "more than once"),
    ("include: t.yaml\nname: t\n", "include cycle"),
    ("include: images_race_pleasant\nname: t\ntargets: {y: {name: W, images: {attribute: race, values: [White, Indian]}}}",
     "image sets x and y share race value(s) ['White']"),
    ("name: t\nkind: wat\n", "'kind' must be one of"),
])
def test_bad_definitions_name_file_and_entry(tmp_path, text, needle):
    p = _write(tmp_path, "t.yaml", text)
    with pytest.raises(AssociationError) as e:
        load_test(p)
    assert needle in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_builtin_and_duplicate_names(tmp_path):
    with pytest.raises(AssociationError, match="unknown association test 'nope'.*flowers_insects"):
        load_test("nope")
    with pytest.raises(AssociationError, match="two association tests are named 'flowers_insects'"):
        load_tests(["flowers_insects", "flowers_insects"])


def test_variant_settings():
    s = settings_from({"variant": "american_white"})
    assert (s.variant.sd, s.variant.ddof, s.variant.p) == ("pooled", 1, "welch_t")
    s = settings_from({"sd": "pooled"})
    assert s.variant.name == "custom" and s.variant.p == "permutation"
    assert settings_from(None).variant == W.DEFAULT_VARIANT
    for bad, needle in (({"sd": "wide"}, "sd must be one of"), ({"p": "z"}, "p must be one of"),
                        ({"variant": "x"}, "unknown variant"), ({"n_permutations": 0}, "at least 1"),
                        ({"colour": 1}, "unknown option")):
        with pytest.raises(AssociationError, match=needle):
            settings_from(bad)


# ---------------------------------------------------------------------------- the analysis

def _ctx(table, E, enc, tmp_path):
    from clipfair.analyses import RunContext

    class Lazy(RunContext):
        image_reads = 0

        @property
        def image_embeddings(self):
            type(self).image_reads += 1
            return self._E

        @image_embeddings.setter
        def image_embeddings(self, v):
            self._E = v
    ctx = Lazy(table, E, attributes=[c for c in table.columns if c != "image_id"], encode_text=enc,
               out_dir=tmp_path, seed=3)
    return ctx


def test_analysis_registers_writes_tables_and_report(tmp_path):
    from clipfair.analyses import build_analysis, get_analysis
    from clipfair.analyses.association import AssociationAnalysis, forest_order
    from clipfair.report.document import Document, Figure, to_markdown

    assert get_analysis("association") is AssociationAnalysis
    rng = np.random.default_rng(12)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(30)], "race": ["White", "Black", "Indian"] * 10,
                          "gender": ["Male", "Female"] * 15})
    a = build_analysis("association", {"tests": ["young_old_names", "flowers_insects", "images_race_pleasant",
                                                 "markedness_gender"], "bootstrap": 30, "n_permutations": 200})
    assert a.needs.image_embeddings == "projected"
    ctx = _ctx(table, _unit(rng.normal(size=(30, 16))), _encoder(), tmp_path)
    assert a.run(ctx) is None
    t = a.tables()
    assert list(t["associations"].columns) == [
        "test", "kind", "variant", "target_x", "target_y", "attribute_a", "attribute_b", "n_x", "n_y", "n_a",
        "n_b", "effect_size", "ci_low", "ci_high", "ci_method", "p_value", "p_method", "n_permutations",
        "p_adjusted", "difference", "sanity", "source"]
    assert set(t["markedness"].group) == {"Male", "Female"}
    assert forest_order(t["associations"]).test.iloc[0] == "flowers_insects"
    secs = a.report_sections(None)
    md = to_markdown(Document("r", secs))
    assert "Association tests" in md and "flowers_insects (sanity)" in md and "Markedness" in md
    figs = [b for b in secs[0].blocks if isinstance(b, Figure)]
    assert figs and (tmp_path / figs[0].path).is_file()
    assert ctx.info["association"]["images_used"] and ctx.info["association"]["seed"] == 3


def test_text_only_analysis_declares_and_reads_no_images(tmp_path):
    from clipfair.analyses import build_analysis

    a = build_analysis("association", {"tests": ["flowers_insects", "math_arts"], "bootstrap": 0})
    assert a.needs.image_embeddings == "none"
    table = pd.DataFrame({"image_id": ["a"], "race": ["White"]})
    ctx = _ctx(table, np.ones((1, 16)), _encoder(), tmp_path)
    type(ctx).image_reads = 0
    a.run(ctx)
    assert type(ctx).image_reads == 0 and len(a.tables()["associations"]) == 2


def test_bad_options_are_one_line_errors():
    from clipfair.analyses import build_analysis

    with pytest.raises(AssociationError, match="unknown association test 'nope'"):
        build_analysis("association", {"tests": ["nope"]})
    with pytest.raises(AssociationError, match="association: unknown option"):
        build_analysis("association", {"tests": ["flowers_insects"], "permutations": 5})


def test_collect_gives_d_per_model(tmp_path):
    from clipfair.analyses.association import collect_associations, d_by_model, write_association

    import json
    for i, model in enumerate(["m1", "m2"]):
        run = tmp_path / str(i)
        out = run_tests(load_tests(["flowers_insects", "career_family"]), _encoder(8 + 8 * i),
                        settings=Settings(bootstrap=0, n_permutations=100))
        write_association(out, run)
        # the files `clipfair collect` needs to call a folder a finished run
        pd.DataFrame(columns=["taxonomy"]).to_parquet(run / "predictions.parquet")
        from clipfair.stats.metrics import METRIC_COLUMNS
        pd.DataFrame(columns=METRIC_COLUMNS).to_csv(run / "metrics.csv", index=False)
        pd.DataFrame(columns=["taxonomy"]).to_csv(run / "disparities.csv", index=False)
        (run / "run.json").write_text(json.dumps({"model": {"name_or_path": model}, "dataset": {"name": "d"},
                                                  "outputs": ["predictions.parquet", "metrics.csv",
                                                              "disparities.csv", "associations.csv"]}))
    from clipfair.run.collect import collect

    c = collect_associations(collect([tmp_path])[1], tmp_path.resolve())
    assert len(c) == 4
    piv = d_by_model(c)
    assert piv.shape == (2, 2) and list(piv.index) == ["flowers_insects", "career_family"]
    for lab in piv.columns:
        sub = c[c.label == lab].set_index("test")
        assert piv.loc["career_family", lab] == pytest.approx(sub.loc["career_family", "effect_size"])
    # clipfair collect writes them beside collected.csv, with a section of d per run
    from clipfair.run.collect import write_collected

    res = write_collected([tmp_path], tmp_path / "out")
    wide = pd.read_csv(tmp_path / "out" / "collected_associations_d.csv", index_col=0)
    assert wide.shape == (2, 2) and wide.loc["flowers_insects"].to_numpy() == pytest.approx(
        piv.loc["flowers_insects"].to_numpy(), rel=1e-5)
    assert "Association tests across runs" in (tmp_path / "out" / "collected.md").read_text()
    assert tmp_path / "out" / "collected_associations.csv" in res["paths"]


def test_run_association_on_a_tiny_model_encodes_images_only_when_needed(tiny_model_dir, fairface_root, tmp_path):
    from clipfair.run.association_run import run_association
    from clipfair.data import load_dataset
    from clipfair.models import load_model

    ds = load_dataset(name="fairface", root=str(fairface_root), split="val")
    model = load_model(loader="hf", name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    cache = tmp_path / "cache"
    r = run_association(ds, model, tmp_path / "text", {"tests": ["flowers_insects"], "bootstrap": 10},
                        cache_dir=cache)
    assert not r["images_encoded"]
    assert not list((cache / "image").rglob("*.npz")) and list((cache / "text").rglob("*.npz"))
    a = pd.read_csv(tmp_path / "text" / "associations.csv")
    assert list(a.test) == ["flowers_insects"] and (tmp_path / "text" / "associations.md").is_file()
    r = run_association(ds, model, tmp_path / "img", {"tests": ["images_gender_pleasant", "markedness_race"],
                                                     "bootstrap": 10, "n_permutations": 99}, cache_dir=cache)
    assert r["images_encoded"] and list((cache / "image").rglob("*.npz"))
    a = pd.read_csv(tmp_path / "img" / "associations.csv")
    assert a.n_x.iloc[0] + a.n_y.iloc[0] == len(ds.table)
    assert (tmp_path / "img" / "markedness.csv").is_file()


def test_p_value_does_not_depend_on_bootstrap_replicates():
    X, Y, A, B = _sets(13, nx=9, ny=9)
    r0 = W.weat(X, Y, A, B, bootstrap=0, max_exact=10, n_permutations=500, seed=4)
    r1 = W.weat(X, Y, A, B, bootstrap=200, max_exact=10, n_permutations=500, seed=4)
    assert r0.p_value == r1.p_value and r0.p_method == "permutation_sampled"


def test_builtin_prompts_are_grammatical():
    from test_builtin_prompts import CONSONANT_AN, VOWEL_SOUND

    for t in load_tests():
        for text in t.texts():
            assert not VOWEL_SOUND.search(text) and not CONSONANT_AN.search(text), f"{t.name}: {text!r}"


def test_experiment_association_runs_end_to_end(compose, tiny_model_dir, fairface_root, tmp_path):
    """`clipfair run experiment=association` (in process): the built-ins on the run's images,
    associations.csv, markedness.csv, the forest plot and the report section."""
    from clipfair.cli import run_from_config

    cfg = compose(["experiment=association", f"model.name_or_path={tiny_model_dir}", "model.device=cpu",
                   f"dataset.root={fairface_root}", f"cache.dir={tmp_path / 'cache'}", "progress=false",
                   "analyses.association.bootstrap=20", "analyses.association.n_permutations=99"])
    out = tmp_path / "run"
    run_from_config(cfg, out)
    a = pd.read_csv(out / "associations.csv")
    assert set(a.test) >= {"flowers_insects", "images_race_pleasant", "sc_american_white"}
    assert (a.p_method == "permutation_sampled").all() and (a.n_permutations == 99).all()
    assert (out / "markedness.csv").is_file() and (out / "associations_forest.png").is_file()
    md = (out / "summary.md").read_text()
    assert "## Association tests" in md and "associations_forest.png" in md
    import json

    rec = json.loads((out / "run.json").read_text())
    assert rec["association"]["variant"].startswith("ghate2025") and rec["association"]["images_used"]


def test_experiment_association_text_only_encodes_no_image(compose, tiny_model_dir, fairface_root, tmp_path):
    """`clipfair run experiment=association` with text-only tests reads and encodes no dataset
    image (the analysis declares needs.image_embeddings = "none"); the image cache stays empty."""
    import json

    from clipfair.cli import run_from_config

    cfg = compose(["experiment=association", f"model.name_or_path={tiny_model_dir}", "model.device=cpu",
                   f"dataset.root={fairface_root}", f"cache.dir={tmp_path / 'cache'}", "progress=false",
                   "analyses.association.tests=[flowers_insects,career_family]", "analyses.association.bootstrap=20"])
    out = tmp_path / "run"
    run_from_config(cfg, out)
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["images_encoded"] == 0 and counts["images_from_cache"] == 0
    assert not list((tmp_path / "cache").rglob("image/**/*.npz"))
    assert list(pd.read_csv(out / "associations.csv").test) == ["flowers_insects", "career_family"]


def test_cli_bad_association_test_is_one_line(tmp_path, capsys):
    from clipfair.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntargets: {x: {name: a, words: [p]}}\n")
    with pytest.raises(SystemExit) as ex:
        main(["run", "experiment=association", f"analyses.association.tests=[{bad}]",
              f"hydra.run.dir={tmp_path / 'run'}", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(bad) in err and "targets.y is missing" in err


def test_image_sets_from_a_csv_or_a_folder(tiny_model_dir, fairface_root, tmp_path):
    """Targets given as a folder and a CSV of images outside the run's dataset, encoded by the
    run's model; d equals a WEAT on those images' embeddings computed directly."""
    import shutil

    from clipfair.run.association_run import run_association
    from clipfair.data import load_dataset
    from clipfair.run.embed import embed_images
    from clipfair.models import load_model

    imgs = sorted((fairface_root / "val").glob("*.jpg"))[:12]
    (tmp_path / "folder").mkdir()
    for p in imgs[:5]:
        shutil.copy(p, tmp_path / "folder" / p.name)
    (tmp_path / "csvimgs").mkdir()
    for p in imgs[5:12]:
        shutil.copy(p, tmp_path / "csvimgs" / p.name)
    (tmp_path / "csvimgs" / "list.csv").write_text("path\n" + "".join(f"{p.name}\n" for p in imgs[5:12]))
    test = tmp_path / "t.yaml"
    test.write_text("include: flowers_insects\nname: ext\n"
                    "targets: {x: {name: folder set, images: {folder: folder}},\n"
                    "          y: {name: csv set, images: {csv: csvimgs/list.csv, column: path}}}\n")
    t = load_test(test)
    assert t.x.folder == str((tmp_path / "folder").resolve()) and t.y.column == "path"
    assert t.needs_images and not t.needs_dataset_images

    ds = load_dataset(name="fairface", root=str(fairface_root), split="val")
    model = load_model(loader="hf", name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    r = run_association(ds, model, tmp_path / "out", {"tests": [str(test)], "bootstrap": 0}, cache_dir=None)
    assert not r["images_encoded"]            # the run's own dataset images were not needed
    row = r["outcome"].associations.iloc[0]
    assert (row.n_x, row.n_y) == (5, 7)
    from clipfair.methods.association_tests import image_set_dataset

    X = embed_images(image_set_dataset(t.x), model, None, progress=False).embeddings
    Y = embed_images(image_set_dataset(t.y), model, None, progress=False).embeddings
    from clipfair.run.embed import TextEmbedder

    enc = TextEmbedder(model, None)
    direct = W.weat(X, Y, enc(t.a.texts()), enc(t.b.texts()), bootstrap=0)
    assert row.effect_size == pytest.approx(direct.effect_size, rel=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: flowers_insects\nname: b\ntargets: {x: {name: f, images: {folder: nowhere}}}\n")
    with pytest.raises(AssociationError, match="images.folder 'nowhere': no such folder"):
        load_test(bad)


def test_text_cells_are_guarded_against_spreadsheet_formulas(tmp_path):
    from clipfair.analyses.association import write_association
    from clipfair.utility.outputs import read_csv

    t = tmp_path / "f.yaml"
    t.write_text("name: f\nkind: sc_weat\ntargets: {x: {name: p, words: ['=HYPERLINK(1)', 'plain']}}\n"
                 "attributes: {a: {name: a, words: [love, joy]}, b: {name: b, words: [war, pain]}}\n")
    out = run_tests([load_test(t)], _encoder(), settings=Settings(bootstrap=0))
    write_association(out, tmp_path / "o")
    raw = (tmp_path / "o" / "associations.csv").read_text()
    assert "'=HYPERLINK(1)" in raw and "\n=HYPERLINK" not in raw and ",=HYPERLINK" not in raw
    back = read_csv(tmp_path / "o" / "associations.csv")
    assert list(back.target_x) == ["=HYPERLINK(1)", "plain"]
