"""Issue 21, item 5 and defects 7 / 9 (retrieval): every retrieval number beside its null of no
association, tested exactly or by permutation, adjusted over the run; shown intervals that
contain their point; declared value orders; intersections; unnormalised image features.
Checked against scipy / statsmodels and hand-written loops, never against the code under test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from clipfair.data.attributes import FAIRFACE_ORDERS
import pytest
from scipy import stats

from clipfair.methods import retrieval as R
from clipfair.methods.retrieval import Query, QuerySet, RetrievalOptions


def ranked_images(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return np.stack([s, np.sqrt(1 - s ** 2)], axis=1).astype(np.float32)


def encoder(vectors):
    def encode(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)
    return encode


def qset(*names, templates=("{}",)) -> QuerySet:
    return QuerySet("hand", tuple(templates), tuple(Query(n, (n,), "test") for n in names))


def row(df, metric, k, query="q", value=None, desired="dataset", attribute="gender"):
    sel = df[(df.metric == metric) & (df.k.astype(str) == str(k)) & (df["query"] == query)
             & (df.desired == desired) & (df.attribute == attribute)]
    if value is not None:
        sel = sel[sel.attribute_value == value]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def minlike_p(x, n, N, k) -> float:
    """Two-sided probability-ordered hypergeometric p by summing math.comb terms."""
    tot = math.comb(n, k)
    pmf = {y: math.comb(N, y) * math.comb(n - N, k - y) / tot for y in range(0, k + 1)
           if y <= N and k - y <= n - N}
    return min(1.0, sum(p for p in pmf.values() if p <= pmf[x] * (1 + 1e-7)))


# --------------------------------------------------------------------------- count tests

@pytest.mark.parametrize("x,n,N,k", [(8, 1000, 500, 10), (0, 40, 10, 12), (3, 20, 7, 5), (5, 9, 5, 5), (2, 30, 3, 4)])
def test_hypergeometric_test_equals_fisher_exact_and_a_sum_of_binomials(x, n, N, k):
    # the 2 x 2 table: (value a, other) x (in the top k, not)
    table = [[x, k - x], [N - x, n - N - (k - x)]]
    assert R.hypergeom_test(x, n, N, k) == pytest.approx(stats.fisher_exact(table).pvalue, rel=1e-9)
    assert R.hypergeom_test(x, n, N, k) == pytest.approx(minlike_p(x, n, N, k), rel=1e-9)


def test_eight_of_ten_male_is_not_a_finding():
    """The issue's defect: 8/10 Male in the top 10 of a 50/50 pool was flagged by 'interval
    excludes 0'; the exact test gives p = 0.107, no finding."""
    n = 1000
    labels = ["Male"] * 8 + ["Female"] * 2 + ["Male"] * (n // 2 - 8) + ["Female"] * (n // 2 - 2)
    table = pd.DataFrame({"image_id": range(n), "gender": labels})
    emb = ranked_images([0.99 - 0.9 * j / n for j in range(n)])
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                          RetrievalOptions(k=(10,), attributes=("gender",), bootstrap=200, seed=1),
                          orders=FAIRFACE_ORDERS)
    male = row(df, "skew", 10, value="Male")
    assert male.ci_low > 0  # the old rule would have called this a finding
    assert male.p_value == pytest.approx(minlike_p(8, 1000, 500, 10), rel=1e-9)
    assert male.p_value == pytest.approx(0.1076, abs=5e-4)
    assert not male.significant and male.p_method.startswith("hypergeometric exact")
    # one test for a two-valued attribute: Female, share and Bias@K rows carry the same p
    for m, v in (("skew", "Female"), ("share", "Male"), ("share", "Female"), ("bias", None)):
        assert row(df, m, 10, value=v).p_value == pytest.approx(male.p_value)
    # beside the null: share 0.8 vs N_a / n = 0.5; Bias 0.6 vs 0
    assert row(df, "share", 10, value="Male").null_mean == pytest.approx(0.5)
    assert row(df, "share", 10, value="Male").excess == pytest.approx(0.3)
    assert row(df, "bias", 10).null_mean == pytest.approx(0.0)
    assert row(df, "bias", 10).excess == pytest.approx(0.6)


def test_per_value_tests_of_a_three_valued_attribute_against_scipy():
    rng = np.random.default_rng(4)
    labels = rng.choice(["a", "b", "c"], 60, p=[0.5, 0.3, 0.2]).tolist()
    table = pd.DataFrame({"image_id": range(60), "race": labels})
    emb = ranked_images([0.99 - 0.9 * j / 60 for j in range(60)])
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                          RetrievalOptions(k=(7, 20), attributes=("race",), bootstrap=0, absent="inverse_k"))
    for k in (7, 20):
        for v in "abc":
            x, N = labels[:k].count(v), labels.count(v)
            pmf = stats.hypergeom(60, N, k).pmf(np.arange(k + 1))
            expect = min(1.0, pmf[pmf <= pmf[x] * (1 + 1e-7)].sum())
            r = row(df, "skew", k, value=v, attribute="race")
            assert r.p_value == pytest.approx(expect, rel=1e-9)
            # the skew's exact null mean under the run's absent convention (inverse_k)
            q = N / 60
            sk = [math.log((y if y else 1) / k) - math.log(q) for y in range(k + 1)]
            assert r.null_mean == pytest.approx(float(np.dot(pmf, sk)))
            assert row(df, "share", k, value=v, attribute="race").null_mean == pytest.approx(N / 60)


# --------------------------------------------------------------------------- MaxSkew / MinSkew / NDKL

def test_max_and_min_skew_exact_null_by_enumeration_with_scipy_multivariate_hypergeom():
    labels = ["a", "a", "b", "a", "c", "b", "c", "c", "b", "c", "a", "b"]
    table = pd.DataFrame({"image_id": range(12), "race": labels})
    emb = ranked_images([0.99 - 0.9 * j / 12 for j in range(12)])
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                          RetrievalOptions(k=(4,), attributes=("race",), bootstrap=0, absent="zero",
                                           desired=("dataset", "uniform")))
    caps = [labels.count(v) for v in "abc"]
    for desired in ("dataset", "uniform"):
        q = [c / 12 for c in caps] if desired == "dataset" else [1 / 3] * 3

        def skews(y):
            return [math.log(y[a] / 4) - math.log(q[a]) if y[a] else 0.0 for a in range(3)]

        obs_max = max(skews([labels[:4].count(v) for v in "abc"]))
        obs_min = min(skews([labels[:4].count(v) for v in "abc"]))
        p_max = p_min = mean_max = 0.0
        for y in itertools.product(*(range(c + 1) for c in caps)):
            if sum(y) != 4:
                continue
            pr = stats.multivariate_hypergeom.pmf(x=list(y), m=caps, n=4)
            s = skews(y)
            mean_max += pr * max(s)
            p_max += pr * (max(s) >= obs_max - 1e-12)
            p_min += pr * (min(s) <= obs_min + 1e-12)
        r = row(df, "max_skew", 4, desired=desired, attribute="race")
        assert r.value == pytest.approx(obs_max)
        assert r.p_value == pytest.approx(p_max, rel=1e-9) and r.p_method.startswith("multivariate hypergeometric")
        assert r.null_mean == pytest.approx(mean_max, rel=1e-9)
        assert r.excess == pytest.approx(obs_max - mean_max, rel=1e-9)
        assert row(df, "min_skew", 4, desired=desired, attribute="race").p_value == pytest.approx(p_min, rel=1e-9)


def ref_ndkl(ranked, values, q, k):
    total = z = 0.0
    for i in range(1, k + 1):
        kl = sum((ranked[:i].count(v) / i) * math.log((ranked[:i].count(v) / i) / q[v])
                 for v in values if ranked[:i].count(v))
        total += kl / math.log2(i + 1)
        z += 1 / math.log2(i + 1)
    return total / z


def test_permutation_null_against_a_hand_written_loop():
    codes = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    q = {"dataset": np.array([0.5, 0.5])}
    B = 50
    got = R.permutation_null(codes, [3, 8], q, "neg_inf", B, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    for b in range(B):  # the same stream: shuffle, then the formula loop by loop
        perm = rng.permutation(codes).tolist()
        for k in (3, 8):
            assert got[k]["dataset"]["ndkl"][b] == pytest.approx(ref_ndkl(perm, [0, 1], {0: .5, 1: .5}, k))


def test_permutation_p_of_ndkl_agrees_with_the_exact_permutation_distribution():
    # 8 images, every one of the 8! / (4! 4!) = 70 label arrangements equally likely under the null
    labels = ["M", "M", "M", "F", "M", "F", "F", "F"]
    table = pd.DataFrame({"image_id": range(8), "gender": labels})
    emb = ranked_images([0.9 - 0.1 * j for j in range(8)])
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                          RetrievalOptions(k=(4,), attributes=("gender",), bootstrap=0, permutations=4000, seed=2))
    obs = ref_ndkl(labels, ["M", "F"], {"M": .5, "F": .5}, 4)
    arrangements = set(itertools.permutations(labels))
    null = [ref_ndkl(list(a), ["M", "F"], {"M": .5, "F": .5}, 4) for a in arrangements]
    exact_p = np.mean([v >= obs - 1e-12 for v in null])
    r = row(df, "ndkl", 4)
    assert r.value == pytest.approx(obs)
    assert r.p_method == "permutation (B=4000, one-sided)"
    assert abs(r.p_value - exact_p) < 4 * math.sqrt(exact_p * (1 - exact_p) / 4000) + 1e-3
    assert r.null_mean == pytest.approx(np.mean(null), abs=0.02)
    # reproducible by seed
    again = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                             RetrievalOptions(k=(4,), attributes=("gender",), bootstrap=0, permutations=4000, seed=2))
    assert row(again, "ndkl", 4).p_value == r.p_value


def test_count_vectors_and_their_number():
    caps, k = [3, 0, 2, 4], 5
    brute = sorted(y for y in itertools.product(*(range(c + 1) for c in caps)) if sum(y) == k)
    got = sorted(map(tuple, R.count_vectors(caps, k).tolist()))
    assert got == brute and R.n_count_vectors(caps, k) == len(brute)
    assert np.exp(R.mvhypergeom_logpmf(np.array(brute), caps)).sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- adjustment and findings

@pytest.mark.parametrize("correction,method", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjusted_over_the_distinct_tests_of_each_family(correction, method):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    n = 80
    table = pd.DataFrame({"image_id": range(n), "gender": rng.choice(["Male", "Female"], n),
                          "race": rng.choice(["a", "b", "c"], n)})
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    vec = {f"q{i}": rng.normal(size=3).tolist() for i in range(5)}
    df = R.retrieval_bias(table, emb, [qset(*vec)], encoder(vec),
                          RetrievalOptions(k=(5, 20), attributes=("gender", "race"), bootstrap=0,
                                           permutations=200, correction=correction))
    per_q = df[~df["query"].isin([R.MEAN_ROW, R.WORST_ROW])]
    # count family: one test per query x attribute x value x k (one per two-valued attribute)
    counts = per_q[(per_q.metric == "skew") & (per_q.desired == "dataset")]
    counts = counts[~((counts.attribute == "gender") & (counts.attribute_value == "Female"))]
    assert len(counts) == 5 * 2 * (1 + 3)
    assert np.allclose(counts.p_adjusted, multipletests(counts.p_value, method=method)[1])
    for metric in ("max_skew", "ndkl"):
        fam = per_q[per_q.metric == metric]
        assert len(fam) == 5 * 2 * 2 * 2  # queries x attributes x k x desired
        assert np.allclose(fam.p_adjusted, multipletests(fam.p_value, method=method)[1])
    assert (df.significant == (df.p_adjusted.fillna(1) < 0.05)).all()
    # set-level rows carry no test of their own
    agg = df[df["query"].isin([R.MEAN_ROW, R.WORST_ROW])]
    assert agg.p_value.isna().all() and not agg.significant.any()


def test_columns_kept_and_added():
    assert R.COLUMNS[:len(R.BASE_COLUMNS)] == R.BASE_COLUMNS
    for c in ("null_mean", "excess", "p_value", "p_adjusted", "significant", "p_method"):
        assert c in R.COLUMNS


# --------------------------------------------------------------------------- intervals shown

def test_every_shown_interval_contains_its_point_and_set_means_resample_queries():
    rng = np.random.default_rng(5)
    n = 120
    table = pd.DataFrame({"image_id": range(n), "gender": rng.choice(["Male", "Female"], n),
                          "race": rng.choice(["a", "b", "c", "d"], n)})
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    names = [f"q{i}" for i in range(6)]
    vec = {f"{t} {q}": rng.normal(size=4).tolist() for q in names for t in ("a", "the")}
    df = R.retrieval_bias(table, emb, [qset(*names, templates=("a {}", "the {}"))], encoder(vec),
                          RetrievalOptions(k=(10, "all"), attributes=("gender", "race"), bootstrap=100,
                                           prompts="per_template", permutations=100))
    shown = df[df.interval_low.notna()]
    assert len(shown) > 0
    v, lo, hi = shown.value.to_numpy(), shown.interval_low.to_numpy(), shown.interval_high.to_numpy()
    assert ((lo <= v) & (v <= hi)).all()
    # the image bootstrap's percentile interval of MaxSkew can sit off its point: it is never shown
    stat = df[df.metric.isin(["max_skew", "min_skew", "ndkl"]) & ~df["query"].isin([R.MEAN_ROW, R.WORST_ROW])]
    assert stat.interval_low.isna().all() and stat.interval_method.str.startswith("none").all()
    worst = df[df["query"] == R.WORST_ROW]
    assert worst.interval_low.isna().all()
    mean = df[(df["query"] == R.MEAN_ROW) & (df.metric == "max_skew")]
    assert set(mean.interval_method) == {"bootstrap over queries and templates (percentile)"}
    # the old columns keep the image bootstrap (the spread)
    assert mean.ci_low.notna().all()


def test_set_mean_interval_equals_an_independent_query_bootstrap():
    rng = np.random.default_rng(8)
    n = 50
    table = pd.DataFrame({"image_id": range(n), "gender": rng.choice(["Male", "Female"], n)})
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    vec = {f"q{i}": rng.normal(size=3).tolist() for i in range(7)}
    opts = RetrievalOptions(k=(10,), attributes=("gender",), bootstrap=300, seed=4, desired=("dataset",))
    df = R.retrieval_bias(table, emb, [qset(*vec)], encoder(vec), opts)
    pts = np.array([row(df, "ndkl", 10, query=q).value for q in vec])
    r = row(df, "ndkl", 10, query=R.MEAN_ROW)
    assert r.value == pytest.approx(pts.mean())
    # the spread of means of queries drawn with replacement: its 2.5 / 97.5 % points sit near the
    # normal approximation mean +- 1.96 sd / sqrt(m) (sd with divisor m, as the bootstrap's)
    se = pts.std() / math.sqrt(len(pts))
    assert r.interval_low == pytest.approx(pts.mean() - 1.96 * se, abs=1.2 * se)
    assert r.interval_high == pytest.approx(pts.mean() + 1.96 * se, abs=1.2 * se)
    assert r.interval_low <= r.value <= r.interval_high
    assert r.null_mean == pytest.approx(np.mean([row(df, "ndkl", 10, query=q).null_mean for q in vec]))


# --------------------------------------------------------------------------- orders, intersections

def test_declared_value_orders_never_lexical():
    tones = [str(i) for i in range(1, 11)]
    rng = np.random.default_rng(1)
    n = 60
    table = pd.DataFrame({"image_id": range(n), "skin_tone": rng.choice(tones, n),
                          "band": rng.choice(["dark", "medium", "light"], n)})
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    opts = RetrievalOptions(k=(5,), attributes=("skin_tone", "band"), bootstrap=0, permutations=0)
    declared = {"band": ("dark", "medium", "light")}
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0, 0]}), opts, orders=declared)
    got = list(dict.fromkeys(df[(df.metric == "skew") & (df.attribute == "skin_tone")].attribute_value))
    assert got == tones  # undeclared numbers: 1, 2, ..., 10 (natural order), not 1, 10, 2, ...
    assert list(dict.fromkeys(df[(df.metric == "skew") & (df.attribute == "band")].attribute_value)) == [
        "dark", "medium", "light"]
    # a declared order wins over any sorting
    rev = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0, 0]}), opts,
                           orders={"skin_tone": tuple(reversed(tones))})
    assert list(dict.fromkeys(rev[(rev.metric == "skew") & (rev.attribute == "skin_tone")].attribute_value)) == \
        list(reversed(tones))


def test_intersection_attribute():
    rng = np.random.default_rng(2)
    n = 40
    table = pd.DataFrame({"image_id": range(n), "race": rng.choice(["White", "Black"], n),
                          "gender": rng.choice(["Male", "Female", None], n, p=[.45, .45, .1])})
    emb = ranked_images([0.99 - 0.02 * j for j in range(n)])
    opts = R.options_from_config({"enabled": True, "attributes": [["race", "gender"], "race"], "k": [6],
                                  "bootstrap": {"B": 0}, "permutations": 0})
    assert opts.attributes == (("race", "gender"), "race")
    df = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}), opts, orders=FAIRFACE_ORDERS)
    inter = df[(df.attribute == "race+gender") & (df.metric == "share") & (df.desired == "dataset")]
    assert list(inter.attribute_value) == ["White+Male", "White+Female", "Black+Male", "Black+Female"]
    ok = table.dropna(subset=["gender"])
    top = (ok.race + "+" + ok.gender).tolist()[:6]
    for r in inter.itertuples():
        assert r.value == pytest.approx(top.count(r.attribute_value) / 6)
        assert r.n_images == len(ok)
    with pytest.raises(R.RetrievalError, match="not in the dataset"):
        R.retrieval_bias(table, emb, [qset("q")], encoder({"q": [1, 0]}),
                         RetrievalOptions(k=(6,), attributes=(("race", "region"),), bootstrap=0))


def test_unnormalised_image_features_rank_as_berg_et_al_code():
    """debias_clip/measuring_bias.py eval_ranking: image_embeddings @ prompt_embedding, the
    image embeddings as encoded (not normalised), the prompt normalised."""
    rng = np.random.default_rng(3)
    n = 30
    table = pd.DataFrame({"image_id": range(n), "gender": rng.choice(["Male", "Female"], n)})
    emb = (rng.normal(size=(n, 3)) * rng.uniform(0.2, 5.0, size=(n, 1))).astype(np.float32)
    t = rng.normal(size=3)
    base = dict(k=(2, 5), attributes=("gender",), bootstrap=0, permutations=0)
    raw = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": t.tolist()}),
                           RetrievalOptions(normalize_images=False, **base))
    cos = R.retrieval_bias(table, emb, [qset("q")], encoder({"q": t.tolist()}), RetrievalOptions(**base))
    tn = t / np.linalg.norm(t)
    for df, s in ((raw, emb @ tn), (cos, (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ tn)):
        for k in (2, 5):
            top = table.gender.to_numpy()[np.argsort(-s, kind="stable")][:k].tolist()
            assert row(df, "share", k, value="Male").value == pytest.approx(top.count("Male") / k)
    assert row(raw, "share", 2, value="Male").value != row(cos, "share", 2, value="Male").value
    assert R.options_from_config({"enabled": True, "normalize_images": False}).normalize_images is False
    assert R.options_from_config({"enabled": True}).normalize_images is True


# --------------------------------------------------------------------------- the report

def planted():
    """200 images; query 'q' ranks 40 women first (a planted association), 'r' at random."""
    rng = np.random.default_rng(9)
    n = 200
    gender = np.array(["Male", "Female"] * (n // 2))
    race = rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.3, 0.28, 0.02])
    table = pd.DataFrame({"image_id": range(n), "gender": gender, "race": race})
    a = 0.7 * (np.where(gender == "Female", 0.5, 0.0) + rng.uniform(0, 0.5, n))  # cosine with q
    b = rng.uniform(0, 0.7, n)                                                  # cosine with r
    emb = np.stack([a, b, np.sqrt(1 - a ** 2 - b ** 2)], axis=1).astype(np.float32)
    return table, emb, {"q": [1.0, 0.0, 0.0], "r": [0.0, 1.0, 0.0]}


def test_report_findings_come_from_the_adjusted_test_and_heat_maps_mark_cells(tmp_path):
    import re

    from clipfair.report.document import Document, to_markdown

    table, emb, vec = planted()
    opts = RetrievalOptions(k=(40,), attributes=("gender", "race"), bootstrap=100, permutations=200)
    df = R.retrieval_bias(table, emb, [qset("q", "r")], encoder(vec), opts)
    assert row(df, "skew", 40, value="Female").significant
    assert not row(df, "skew", 40, query="r", value="Female").significant
    md = to_markdown(Document("t", R.retrieval_sections(df, tmp_path, opts)))
    assert "adjusted test of no association rejects" in md and "interval excludes 0" in md  # says why not
    line = next(ln for ln in md.splitlines() if ln.startswith("| q ") and "Female" in ln)
    assert "| yes |" in line
    # every 'x [a, b]' the report shows contains x
    for x, a, b in re.findall(r"(−?[\d.]+|−∞) \[(−?[\d.]+|−∞), (−?[\d.]+|−∞)\]", md):
        f = [(-math.inf if t == "−∞" else float(t.replace("−", "-"))) for t in (x, a, b)]
        assert f[1] <= f[0] <= f[2], (x, a, b)
    assert "(null " in md and "queries with a MaxSkew finding" in md
    # heat map cells: * where the adjusted test rejects, † where the value is expected < 5 times
    sel, queries, values, z, S, T = R.heat_data(df, "hand", "race", "dataset", 40)
    assert values == ["a", "b", "c", "rare"]
    assert T[:, values.index("rare")].all() and not T[:, values.index("a")].any()
    sig = {(r.query, r.attribute_value) for r in df[(df.metric == "skew") & (df.attribute == "race")
                                                     & (df.desired == "dataset") & df.significant].itertuples()}
    assert {(q, v) for i, q in enumerate(queries) for j, v in enumerate(values) if S[i, j]} == sig
    _, gq, gv, _, GS, _ = R.heat_data(df, "hand", "gender", "dataset", 40)
    assert GS[gq.index("q")].all() and not GS[gq.index("r")].any()
    assert (tmp_path / "retrieval_skew_hand_race.png").stat().st_size > 1000


def test_sections_read_a_table_written_before_the_null_columns(tmp_path):
    from clipfair.report.document import Document, to_markdown

    table, emb, vec = planted()
    opts = RetrievalOptions(k=(40,), attributes=("gender",), bootstrap=20, permutations=0)
    df = R.retrieval_bias(table, emb, [qset("q", "r")], encoder(vec), opts)[R.BASE_COLUMNS]
    md = to_markdown(Document("t", R.retrieval_sections(df, tmp_path, opts)))
    assert "Retrieval bias" in md


def test_visogender_sd_over_occupations_beside_the_mean(tmp_path):
    from clipfair.report.document import Document, to_markdown

    rng = np.random.default_rng(6)
    occs = ["doctor", "nurse", "pilot", "chef"]
    n = 120
    table = pd.DataFrame({"image_id": range(n), "occupation": np.repeat(occs, n // 4),
                          "gender": rng.choice(["Male", "Female"], n)})
    emb = rng.normal(size=(n, 3)).astype(np.float32)
    vec = {o: rng.normal(size=3).tolist() for o in occs}
    opts = R.options_from_config({"enabled": True, "preset": "visogender", "k": [5, 10], "queries": ["x"],
                                  "bootstrap": {"B": 0}, "permutations": 0})
    df = R.retrieval_bias(table, emb, [qset(*occs)], encoder(vec), opts)
    vals = [row(df, "max_skew", 10, query=o).value for o in occs]
    sd = float(pd.Series(vals).std())  # pandas: ddof = 1, as VisoGender's summary_stats.py
    assert R.sd_over_queries(vals) == pytest.approx(sd)
    md = to_markdown(Document("t", R.retrieval_sections(df, tmp_path, opts)))
    line = next(ln for ln in md.splitlines() if "max_skew@10" in ln)
    assert f"{sd:.2f}".replace("-", "−") in line and "SD over queries" in md


def test_social_counterfactuals_preset_cites_their_code_and_conventions():
    p = R.PRESETS["social_counterfactuals"]
    text = " ".join(str(p[k]) for k in ("source", "differs"))
    assert "IntelLabs/multimodal_cognitive_ai" in text and "SocialCounterfactuals/evaluation" in text
    assert "No public code" not in text
    for phrase in ("number of groups", "not a KL divergence", "ranking index"):
        assert phrase in text, phrase


def test_report_header_has_no_question_mark_for_a_retrieval_run():
    """Defect 9: a retrieval-only run's header said 'groups of at least ? images'."""
    from clipfair.stats import metrics as M
    from clipfair.run.pipeline import Evaluation, report_context, score

    preds = pd.DataFrame(columns=["image_id", "taxonomy", "method", "predicted_label", "predicted_category",
                                  "score", "logit", "true_label", "correct", "true_rank", "race"])
    met, disp = score(preds, [], ["race"], 0.95, 40, "bh")
    assert disp.empty and disp.attrs["min_n"] == 40 and disp.attrs["correction"] == "bh"
    ev = Evaluation(preds, met, disp, info={"retrieval": {"correction": "bh"}})
    ctx = report_context(ev, {"model": {"name_or_path": "m"}, "dataset": {"name": "d"}})
    text = " ".join(v for _, v in ctx.header)
    assert "at least ?" not in text and "groups of at least" not in text  # no zero-shot table to describe
    assert "retrieval tests" in dict(ctx.header)
    assert M.disparities(met, min_n=7).attrs["min_n"] == 7


@pytest.mark.slow
def test_cli_intersection_unnormalised_and_null_columns(tmp_path, tiny_model_dir, fairface_root):
    from test_cli import run_cli

    out = tmp_path / "run"
    run_cli("run", "experiment=retrieval_bias", f"model.name_or_path={tiny_model_dir}",
            f"dataset.root={fairface_root}", f"hydra.run.dir={out}", "progress=false",
            "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5]", "retrieval.bootstrap.B=10",
            "retrieval.attributes=[[race,gender],gender]", "retrieval.normalize_images=false",
            "retrieval.permutations=50", "disparity_correction=bh")
    df = pd.read_csv(out / "retrieval.csv")
    assert list(df.columns) == R.COLUMNS
    assert set(df.attribute) == {"race+gender", "gender"}
    assert df[df.metric == "skew"].attribute_value[df.attribute == "race+gender"].iloc[0] == "White+Male"
    per_q = df[~df["query"].isin([R.MEAN_ROW, R.WORST_ROW])]
    assert per_q.p_value.notna().all() and per_q.null_mean.notna().all()
    import json

    r = json.loads((out / "run.json").read_text())["retrieval"]
    assert r["normalize_images"] is False and r["correction"] == "bh" and r["attributes"] == [["race", "gender"], "gender"]
    md = (out / "retrieval.md").read_text()
    assert "unnormalised image features" in md and "Benjamini-Hochberg" in md
    assert "at least ?" not in md


def test_report_warns_when_permutations_cannot_reach_holm(tmp_path):
    from clipfair.report.document import Document, to_markdown

    table, emb, vec = planted()
    vec = {**vec, **{f"x{i}": np.random.default_rng(i).normal(size=3).tolist() for i in range(4)}}
    kw = dict(k=(10, 40), attributes=("gender", "race"), bootstrap=0)
    few = RetrievalOptions(permutations=20, **kw)
    df = R.retrieval_bias(table, emb, [qset(*vec)], encoder(vec), few)
    m = len(df[(df.metric == "ndkl") & ~df["query"].isin([R.MEAN_ROW, R.WORST_ROW])])  # 6 x 2 x 2 x 2 = 48
    assert 1 / 21 > 0.05 / m
    md = to_markdown(Document("t", R.retrieval_sections(df, tmp_path, few)))
    assert f"at least {math.ceil(m / 0.05)}" in md
    many = RetrievalOptions(permutations=2000, **kw)
    df2 = R.retrieval_bias(table, emb, [qset(*vec)], encoder(vec), many)
    assert "label shuffles the smallest permutation p" not in to_markdown(
        Document("t", R.retrieval_sections(df2, tmp_path, many)))
