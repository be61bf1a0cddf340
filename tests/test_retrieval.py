"""Retrieval bias (clipfair.methods.retrieval): hand-built embedding sets whose rankings are known by
construction, checked against an independent, loop-by-loop computation of each paper's
formula and against numbers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipfair.methods import retrieval as R
from clipfair.data.attributes import FAIRFACE_ORDERS
from clipfair.methods.retrieval import Query, QuerySet, RetrievalOptions


# --------------------------------------------------------------------------- helpers

def ranked_images(scores: list[float]) -> np.ndarray:
    """2-d unit embeddings whose cosine with the query [1, 0] is exactly the given score."""
    s = np.asarray(scores, dtype=np.float64)
    return np.stack([s, np.sqrt(1 - s ** 2)], axis=1).astype(np.float32)


def encoder(vectors: dict[str, list[float]]):
    def encode(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)
    return encode


def one_query_set(*names: str, templates=("{}",), pools: dict | None = None) -> QuerySet:
    return QuerySet("hand", tuple(templates),
                    tuple(Query(n, (n,), "test", (pools or {}).get(n)) for n in names))


def run(table, emb, qs, vectors, **kw) -> pd.DataFrame:
    opts = RetrievalOptions(**{"bootstrap": 0, **kw})
    return R.retrieval_bias(table, emb, [qs], encoder(vectors), opts, orders=FAIRFACE_ORDERS)


def pick(df, metric, k, query="q", value=None, desired="dataset", attribute="gender"):
    sel = df[(df.metric == metric) & (df.k == k) & (df["query"] == query) & (df.desired == desired)
             & (df.attribute == attribute)]
    if value is not None:
        sel = sel[sel.attribute_value == value]
    assert len(sel) == 1, sel
    return float(sel.value.iloc[0])


# independent reference implementations, written from the papers' formulas loop by loop
def ref_skew(ranked: list[str], values: list[str], desired: dict[str, float], k: int, absent: str) -> dict:
    top = ranked[:k]
    out = {}
    for v in values:
        p = top.count(v) / k
        if p == 0:
            out[v] = {"neg_inf": -math.inf, "inverse_k": math.log(1 / k) - math.log(desired[v]), "zero": 0.0}[absent]
        else:
            out[v] = math.log(p) - math.log(desired[v])
    return out


def ref_ndkl(ranked: list[str], values: list[str], desired: dict[str, float], k: int) -> float:
    total, z = 0.0, 0.0
    for i in range(1, k + 1):
        top = ranked[:i]
        kl = 0.0
        for v in values:
            p = top.count(v) / i
            if p > 0:
                kl += p * math.log(p / desired[v])
        total += kl / math.log2(i + 1)
        z += 1 / math.log2(i + 1)
    return total / z


# Ten images ranked by construction: image i has score 0.95 - 0.05 i for query "q".
GENDERS = ["Male", "Male", "Female", "Male", "Male", "Female", "Female", "Male", "Female", "Female"]
RACES = ["White", "White", "White", "Black", "White", "Black", "Indian", "Black", "Indian", "Indian"]


@pytest.fixture
def hand():
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(10)], "gender": GENDERS, "race": RACES})
    emb = ranked_images([0.95 - 0.05 * j for j in range(10)])
    return table, emb, one_query_set("q"), {"q": [1.0, 0.0]}


# --------------------------------------------------------------------------- metrics

def test_skews_and_ndkl_match_an_independent_computation(hand):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(1, 3, 5, "all"), attributes=("gender", "race"),
             desired=("dataset", "uniform"), absent="neg_inf")
    for attr, labels in (("gender", GENDERS), ("race", RACES)):
        values = sorted(set(labels))
        for desired in ("dataset", "uniform"):
            q = ({v: labels.count(v) / len(labels) for v in values} if desired == "dataset"
                 else {v: 1 / len(values) for v in values})
            for k in (1, 3, 5, "all"):
                kk = 10 if k == "all" else k
                ref = ref_skew(labels, values, q, kk, "neg_inf")
                for v in values:
                    assert pick(df, "skew", k, value=v, desired=desired, attribute=attr) == pytest.approx(ref[v])
                assert pick(df, "max_skew", k, desired=desired, attribute=attr) == pytest.approx(max(ref.values()))
                assert pick(df, "min_skew", k, desired=desired, attribute=attr) == pytest.approx(min(ref.values()))
                assert pick(df, "ndkl", k, desired=desired, attribute=attr) == pytest.approx(
                    ref_ndkl(labels, values, q, kk))


def test_skews_and_ndkl_by_hand(hand):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(2, 3), attributes=("gender",))
    # top 2 = Male, Male against a 50/50 dataset: Skew(Male) = ln(1 / 0.5) = ln 2; Female absent
    assert pick(df, "skew", 2, value="Male") == pytest.approx(math.log(2))
    assert pick(df, "skew", 2, value="Female") == -math.inf
    assert pick(df, "min_skew", 2) == -math.inf
    # NDKL@2: KL at i = 1 and i = 2 are both ln 2 (all Male vs 50/50) -> NDKL = ln 2
    assert pick(df, "ndkl", 2) == pytest.approx(math.log(2))
    # NDKL@3: i = 3 has 2/3 Male: KL = 2/3 ln(4/3) + 1/3 ln(2/3)
    kl3 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    z = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert pick(df, "ndkl", 3) == pytest.approx((math.log(2) + math.log(2) / math.log2(3) + kl3 / 2) / z)
    # shares are the top-k mix
    assert pick(df, "share", 3, value="Female") == pytest.approx(1 / 3)


def test_min_skew_is_minus_infinity_when_a_value_is_absent_and_csv_keeps_it(hand, tmp_path):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(2,), attributes=("race",))
    assert pick(df, "min_skew", 2, attribute="race") == -math.inf
    assert pick(df, "skew", 2, value="Indian", attribute="race") == -math.inf
    path = tmp_path / "r.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert (back[(back.metric == "min_skew")].value == -np.inf).all()


@pytest.mark.parametrize("absent,expected", [
    ("neg_inf", -math.inf),
    ("inverse_k", math.log(1 / 2) - math.log(0.5)),   # Berg et al. / VisoGender: p = 1/k
    ("zero", 0.0),                                     # SocialCounterfactuals
])
def test_absent_conventions(hand, absent, expected):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(2,), attributes=("gender",), absent=absent)
    assert pick(df, "skew", 2, value="Female") == pytest.approx(expected)
    assert pick(df, "min_skew", 2) == pytest.approx(expected)
    # NDKL does not depend on the convention (0 log 0 = 0)
    assert pick(df, "ndkl", 2) == pytest.approx(math.log(2))


def test_ties_are_broken_by_dataset_order():
    table = pd.DataFrame({"image_id": list("abcdef"), "gender": ["Female", "Male", "Male", "Female", "Male", "Female"]})
    emb = ranked_images([0.5] * 6)  # every image ties
    df = run(table, emb, one_query_set("q"), {"q": [1.0, 0.0]}, k=(1, 2), attributes=("gender",))
    assert pick(df, "share", 1, value="Female") == 1.0  # image a first
    assert pick(df, "share", 2, value="Male") == 0.5    # then b
    order = R.rank_top(np.array([[0.1, 0.5, 0.5, 0.9, 0.5] + [0.0] * 20]), 3)
    assert order.tolist() == [[3, 1, 2]]


def test_rank_top_equals_a_stable_full_sort():
    rng = np.random.default_rng(3)
    s = np.round(rng.random((7, 500)), 2)  # many ties
    for depth in (1, 10, 100, 499, 500):
        assert (R.rank_top(s, depth) == np.argsort(-s, axis=1, kind="stable")[:, :depth]).all()


def test_bias_at_k_against_a_direct_computation(hand):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(1, 3, 4, 7, "all"), attributes=("gender", "race"))
    for k in (1, 3, 4, 7, "all"):
        top = GENDERS[:10 if k == "all" else k]
        m, f = top.count("Male"), top.count("Female")
        row = df[(df.metric == "bias") & (df.k == k) & (df.attribute == "gender")]
        assert row.attribute_value.iloc[0] == "Male - Female"
        assert row.value.iloc[0] == pytest.approx((m - f) / (m + f))
    assert df[(df.metric == "bias") & (df.attribute == "race")].empty  # three values: no Bias@K


def test_missing_attribute_values_are_left_out_of_that_ranking():
    table = pd.DataFrame({"image_id": list("abcd"), "gender": ["Male", None, "Female", "Female"]})
    emb = ranked_images([0.9, 0.8, 0.7, 0.6])
    df = run(table, emb, one_query_set("q"), {"q": [1.0, 0.0]}, k=(2,), attributes=("gender",))
    assert pick(df, "share", 2, value="Male") == 0.5  # a, c (b has no gender)
    assert df.n_images.iloc[0] == 3


def test_any_declared_attribute_works():
    table = pd.DataFrame({"image_id": list("abcd"), "skin_tone": ["3", "1", "3", "2"]})
    emb = ranked_images([0.9, 0.8, 0.7, 0.6])
    df = R.retrieval_bias(table, emb, [one_query_set("q")], encoder({"q": [1, 0]}),
                          RetrievalOptions(k=(2,), bootstrap=0), attributes=["skin_tone"])
    assert pick(df, "skew", 2, value="3", attribute="skin_tone") == pytest.approx(0.0)  # 1/2 vs 2/4
    with pytest.raises(R.RetrievalError, match="not in the dataset"):
        R.retrieval_bias(table, emb, [one_query_set("q")], encoder({"q": [1, 0]}),
                         RetrievalOptions(k=(2,), bootstrap=0, attributes=("age",)))


def test_k_larger_than_the_ranked_set_is_left_out(hand):
    table, emb, qs, vec = hand
    df = run(table, emb, qs, vec, k=(5, 50), attributes=("gender",))
    assert set(df.k) == {5}


# --------------------------------------------------------------------------- aggregates, prompts

def test_mean_and_worst_over_queries(hand):
    table, emb, _, _ = hand
    vec = {"q": [1.0, 0.0], "r": [-1.0, 0.0]}  # r ranks the images in reverse
    df = run(table, emb, one_query_set("q", "r"), vec, k=(2,), attributes=("gender",), absent="zero")
    q, r = pick(df, "max_skew", 2, "q"), pick(df, "max_skew", 2, "r")
    assert pick(df, "max_skew", 2, R.MEAN_ROW) == pytest.approx((q + r) / 2)
    assert pick(df, "max_skew", 2, R.WORST_ROW) == pytest.approx(max(q, r))
    bq, br = pick(df, "bias", 2, "q"), pick(df, "bias", 2, "r")
    assert (bq, br) == (1.0, -1.0)
    assert abs(pick(df, "bias", 2, R.WORST_ROW)) == 1.0


def test_per_template_averages_the_metric_over_templates_ensemble_averages_embeddings():
    table = pd.DataFrame({"image_id": list("abcd"), "gender": ["Male", "Female", "Male", "Female"]})
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], dtype=np.float32)
    qs = one_query_set("q", templates=("x {}", "y {}"))
    vec = {"x q": [1.0, 0.0], "y q": [0.0, 1.0]}  # template x ranks a first, template y ranks c first
    per = run(table, emb, qs, vec, k=(1,), attributes=("gender",), prompts="per_template", absent="inverse_k")
    # x: top-1 = a (Male): skew(Male) = ln 2, Female: ln(1/1 / .5) = ln 2 under inverse_k; y: c (Male) same
    assert pick(per, "share", 1, value="Male") == 1.0
    ens = run(table, emb, qs, vec, k=(2,), attributes=("gender",), prompts="ensemble")
    # the ensembled direction (1,1)/sqrt 2 ranks b (0.8+0.6) first, then c/a tie (a earlier)
    assert pick(ens, "share", 2, value="Female") == 0.5
    per2 = run(table, emb, qs, vec, k=(2,), attributes=("gender",), prompts="per_template")
    # x: a, b -> 1/2 Female; y: c, d -> 1/2 Female; mean 1/2 — and bias mean over templates
    assert pick(per2, "bias", 2) == pytest.approx(0.0)
    assert set(per2.prompts) == {"per_template"}


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_reproducible_by_seed_and_covers_the_point(hand):
    table, emb, qs, vec = hand
    kw = dict(k=(3,), attributes=("gender",), bootstrap=200)
    a = run(table, emb, qs, vec, seed=7, **kw)
    b = run(table, emb, qs, vec, seed=7, **kw)
    c = run(table, emb, qs, vec, seed=8, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["ci_low", "ci_high"]].equals(c[["ci_low", "ci_high"]])
    nd = a[(a.metric == "ndkl") & (a["query"] == "q")].iloc[0]
    assert nd.ci_low <= nd.value <= nd.ci_high and nd.ci_low < nd.ci_high


def test_bootstrap_replicate_equals_ranking_the_resampled_images():
    """One replicate computed by expanding the ranking with resample counts equals ranking
    an explicitly resampled image list (copies adjacent, ties by dataset order)."""
    rng = np.random.default_rng(0)
    codes_by_image = rng.integers(0, 3, 40)
    order = np.argsort(-rng.random(40), kind="stable")
    w = np.bincount(rng.integers(0, 40, 40), minlength=40)
    codes, lengths = R._expand(codes_by_image[order], w[order][None, :], 12)
    resampled = [codes_by_image[j] for j in order for _ in range(w[j])][:12]
    assert codes[0, :lengths[0]].tolist() == resampled


# --------------------------------------------------------------------------- pools

def test_pools_rank_only_within_their_group():
    table = pd.DataFrame({"image_id": list("abcdef"), "occupation": ["doctor"] * 3 + ["nurse"] * 3,
                          "gender": ["Female", "Male", "Male", "Male", "Female", "Female"]})
    # every nurse image scores higher than every doctor image for both queries
    emb = ranked_images([0.1, 0.05, 0.0, 0.9, 0.8, 0.7])
    qs = one_query_set("doctor", "nurse")
    vec = {"doctor": [1.0, 0.0], "nurse": [1.0, 0.0]}
    df = run(table, emb, qs, vec, k=(1,), attributes=("gender",), pool="occupation")
    assert pick(df, "share", 1, "doctor", value="Female") == 1.0  # a, not a nurse image
    assert pick(df, "share", 1, "nurse", value="Male") == 1.0     # d
    assert set(df.loc[df["query"] == "doctor", "n_images"]) == {3}
    assert set(df.loc[df["query"] == "doctor", "pool"]) == {"occupation=doctor"}
    # desired 'dataset' is the pool's own distribution: doctor pool 1/3 Female
    assert pick(df, "skew", 1, "doctor", value="Female") == pytest.approx(math.log(3))
    unpooled = run(table, emb, qs, vec, k=(1,), attributes=("gender",))
    assert pick(unpooled, "share", 1, "doctor", value="Male") == 1.0  # d wins over the whole set
    with pytest.raises(R.RetrievalError, match="no image has that value"):
        run(table, emb, one_query_set("pilot"), {"pilot": [1, 0]}, k=(1,), attributes=("gender",), pool="occupation")
    with pytest.raises(R.RetrievalError, match="not in the dataset"):
        run(table, emb, qs, vec, k=(1,), attributes=("gender",), pool="sector")


# --------------------------------------------------------------------------- presets, as each paper measured

def ranking_dataset(labels: list[str], column="gender"):
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(len(labels))], column: labels})
    return table, ranked_images([0.99 - 0.9 * j / len(labels) for j in range(len(labels))])


def preset_options(name: str, **over) -> RetrievalOptions:
    opts = R.options_from_config({"enabled": True, "preset": name, "bootstrap": {"B": 0}, **over})
    assert opts.preset == name
    return opts


def test_berg2022_preset_reproduces_their_formula():
    # 3 labels over 12 images; the top 4 has no 'c' (absent -> 1/k), NDKL over the whole ranking
    labels = ["a", "a", "b", "a", "c", "b", "c", "c", "b", "c", "a", "b"]
    table, emb = ranking_dataset(labels, "race")
    opts = preset_options("berg2022", k=[4, "all"], queries=["q"], attributes=["race"])
    assert (opts.absent, opts.prompts, opts.desired) == ("inverse_k", "per_template", ("uniform", "dataset"))
    df = R.retrieval_bias(table, emb, [one_query_set("q")], encoder({"q": [1, 0]}), opts, orders=FAIRFACE_ORDERS)
    # debias-vision-lang compute_skew_metrics: p = top_n_count / top_n, p = 1/top_n if 0;
    # eq_opp desired = 1/#labels, dem_par = count/len; maxskew = max(0, skews)
    top = labels[:4]
    for desired, q in (("uniform", {v: 1 / 3 for v in "abc"}), ("dataset", {v: labels.count(v) / 12 for v in "abc"})):
        expect = max([0.0] + [math.log(max(top.count(v) / 4, 1 / 4)) - math.log(q[v]) for v in "abc"])
        assert pick(df, "max_skew", 4, desired=desired, attribute="race") == pytest.approx(expect)
        # c absent from the top 4: ln((1/4)/q_c), the paper's convention
        assert pick(df, "skew", 4, value="c", desired=desired, attribute="race") == pytest.approx(
            math.log(1 / 4) - math.log(q["c"]))
        # normalized_discounted_KL over the whole ranking
        assert pick(df, "ndkl", "all", desired=desired, attribute="race") == pytest.approx(ref_ndkl(labels, list("abc"), q, 12))
    # by hand: top 4 = a a b a vs uniform: ln(3/4 * 3)
    assert pick(df, "max_skew", 4, desired="uniform", attribute="race") == pytest.approx(math.log(9 / 4))
    # MaxSkew over the whole set against the set's own distribution is 0 (why measure_bias's
    # default topn=1.0 makes MaxSkew meaningless)
    assert pick(df, "max_skew", "all", desired="dataset", attribute="race") == pytest.approx(0.0)


def test_social_counterfactuals_preset_reproduces_their_formula():
    # one counterfactual set (pool) per occupation; Skew_a@K = ln[(topK_a/N_a)/(K/N)], absent -> 0
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(8)],
                          "occupation": ["chef"] * 4 + ["pilot"] * 4,
                          "race": ["White", "Black", "Asian", "White", "Black", "Black", "White", "Asian"]})
    emb = ranked_images([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7, 0.6])
    opts = preset_options("social_counterfactuals", k=[2], queries=["q"], attributes=["race"])
    assert (opts.absent, opts.pool, opts.desired) == ("zero", "occupation", ("dataset",))
    df = R.retrieval_bias(table, emb, [one_query_set("chef", "pilot")], encoder({"chef": [1, 0], "pilot": [1, 0]}), opts, orders=FAIRFACE_ORDERS)
    # chef: top 2 = White, Black of N = 4 (White 2, Black 1, Asian 1), K = 2
    chef = {"White": math.log((1 / 2) / (2 / 4)), "Black": math.log((1 / 1) / (2 / 4)), "Asian": 0.0}
    for v, x in chef.items():
        assert pick(df, "skew", 2, "chef", value=v, attribute="race") == pytest.approx(x)
    # pilot: top 2 = Black, Black of N = 4 (Black 2): Black ln((2/2)/(2/4)) = ln 2; White, Asian absent -> 0
    assert pick(df, "skew", 2, "pilot", value="White", attribute="race") == 0.0
    assert pick(df, "max_skew", 2, "pilot", attribute="race") == pytest.approx(math.log(2))
    # MaxSkew@K averaged over the sets
    assert pick(df, "max_skew", 2, R.MEAN_ROW, attribute="race") == pytest.approx((math.log(2) + math.log(2)) / 2)


def test_visogender_preset_reproduces_their_formula():
    # oxai/visogender calculate_retrieval_bias on one occupation's 6 images
    genders = ["man", "man", "man", "woman", "man", "woman"]
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(6)], "occupation": ["doctor"] * 6,
                          "gender": ["Male" if g == "man" else "Female" for g in genders]})
    emb = ranked_images([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    opts = preset_options("visogender", k=[2, 3, 5, "all"], queries=["q"])
    assert (opts.absent, opts.pool, opts.attributes) == ("inverse_k", "occupation", ("gender",))
    df = R.retrieval_bias(table, emb, [one_query_set("doctor")], encoder({"doctor": [1, 0]}), opts, orders=FAIRFACE_ORDERS)
    expected_p = {"man": 4 / 6, "woman": 2 / 6}
    for k in (2, 3, 5):
        top = genders[:k]
        skews = {g: math.log(top.count(g) / k if top.count(g) else 1 / k) - math.log(expected_p[g]) for g in expected_p}
        assert pick(df, "max_skew", k, "doctor") == pytest.approx(max(skews.values()))
        men, women = top.count("man"), top.count("woman")
        assert pick(df, "bias", k, "doctor") == pytest.approx((men - women) / (men + women))
    # k = 2 and 3: 'woman' absent -> skew ln((1/k) / (2/6))
    assert pick(df, "skew", 2, "doctor", value="Female") == pytest.approx(math.log(1 / 2) - math.log(1 / 3))
    # ndkl over the whole pool, KL with 0 log 0 = 0
    assert pick(df, "ndkl", "all", "doctor") == pytest.approx(ref_ndkl(genders, ["man", "woman"], expected_p, 6))
    assert pick(df, "bias", 2, "doctor") == 1.0  # by hand: two men


def test_user_options_win_over_a_preset():
    opts = R.options_from_config({"enabled": True, "preset": "visogender", "absent": "neg_inf"})
    assert opts.absent == "neg_inf" and "absent" not in opts.from_preset and "pool" in opts.from_preset


def test_options_validation():
    assert R.options_from_config({"enabled": False}) is None
    assert R.options_from_config(None) is None
    o = R.options_from_config({"enabled": True, "k": [10, "all"], "desired": ["dataset", "uniform"]})
    assert o.k == (10, "all") and o.desired == ("dataset", "uniform") and o.bootstrap == 1000
    for bad, msg in (({"absent": "nan"}, "absent"), ({"k": [0]}, "retrieval.k"), ({"desired": ["equal"]}, "desired"),
                     ({"preset": "nope"}, "unknown preset"), ({"topk": 3}, "unknown key")):
        with pytest.raises(R.RetrievalError, match=msg):
            R.options_from_config({"enabled": True, **bad})


# --------------------------------------------------------------------------- query sets

def test_builtin_query_sets_load():
    sets = {qs.name: qs for qs in R.load_query_sets(sorted(R.BUILTINS))}
    assert {"occupations_neutral", "trait_adjectives", "clip_denigration_words", "berg2022_traits"} <= set(sets)
    berg = sets["berg2022_traits"]
    assert len(berg.templates) == 11 and len(berg.queries) == 29
    assert berg.templates[0] == "This is the face of a {} person" and "{}" in berg.templates
    assert len([t.format(q.text) for t in berg.templates for q in berg.queries]) == 319
    assert {q.category for q in sets["trait_adjectives"].queries} == {"positive", "negative", "neutral"}
    assert {q.category for q in sets["clip_denigration_words"].queries} == {"crime_related", "non_human"}


@pytest.mark.parametrize("text,msg", [
    ("name: s\ntemplates: ['a {}']\nqueries: [a, a]\n", r"queries\[1\]: duplicate query 'a'"),
    ("name: s\ntemplates: ['a {} {}']\nqueries: [a]\n", r"templates\[0\]: template 'a \{\} \{\}'"),
    ("name: s\ntemplates: ['a {}']\nqueries: [a, {query: b, colour: red}]\n", r"queries\[1\]: unknown key"),
    ("name: s\ntemplates: ['a {}']\nqueries: [a, {prompts: [x]}]\n", r"queries\[1\]: 'query' is required"),
    ("name: s\ntemplates: ['a {}']\nqueries: [{query: b, prompts: []}]\n", r"queries\[0\] \(b\): 'prompts'"),
    ("name: s\ntemplates: ['a {}']\nqueries: []\n", "'queries' must be a non-empty list"),
    ("name: s\ntemplates: ['a {}']\nqueries: [{query: b, category: [x]}]\n",
     r"queries\[0\]: 'category' must be a string, got a list"),
    ("name: s\ndescription: {a: 1}\ntemplates: ['a {}']\nqueries: [b]\n", r"\(s\): 'description' must be a string"),
    ("name: s\ntemplates: ['a {}']\nclasses: [a]\n", "unknown key"),
    ("- just a list\n", "must be a mapping"),
    ("name: s\ntemplates: ['a {}'\n", "not valid YAML"),
])
def test_query_set_errors_name_the_file_and_entry(tmp_path, text, msg):
    p = tmp_path / "bad_queries.yaml"
    p.write_text(text)
    with pytest.raises(R.QuerySetError, match=msg) as e:
        R.load_query_set(str(p))
    assert str(p) in str(e.value)


def test_unknown_query_set_lists_builtins():
    with pytest.raises(R.QuerySetError, match="available built-ins: .*occupations_neutral"):
        R.load_query_set("no_such_set")
    with pytest.raises(R.QuerySetError, match="not found"):
        R.load_query_set("missing/file.yaml")


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_cli_retrieval_on_its_own(tmp_path, tiny_model_dir, fairface_root):
    import json

    from test_cli import run_cli

    out = tmp_path / "run"
    run_cli("run", "experiment=retrieval_bias", f"model.name_or_path={tiny_model_dir}",
            f"dataset.root={fairface_root}", f"hydra.run.dir={out}", "progress=false",
            "retrieval.queries=[clip_denigration_words]", "retrieval.k=[5,all]", "retrieval.bootstrap.B=20")
    df = pd.read_csv(out / "retrieval.csv")
    assert list(df.columns) == R.COLUMNS
    assert set(df.metric) == {"share", "skew", "max_skew", "min_skew", "ndkl", "bias"}
    assert {"race", "gender", "age"} <= set(df.attribute) and set(df.desired) == {"dataset", "uniform"}
    assert set(df.k.astype(str)) == {"5", "all"} and set(df.n_images[df["query"] == "thief"]) == {80}
    # desired 'dataset' shares are the evaluation set's own
    val = pd.read_csv(fairface_root / "fairface_label_val.csv")
    share = df[(df.metric == "skew") & (df.attribute == "gender") & (df.desired == "dataset")
               & (df.attribute_value == "Female")].desired_share.iloc[0]
    assert share == pytest.approx((val.gender == "Female").mean())
    md = (out / "retrieval.md").read_text()
    assert "## Retrieval bias" in md and "Query set clip_denigration_words" in md and "surveillance" in md
    assert "retrieval_skew_clip_denigration_words_race.png" in md
    assert (out / "retrieval_skew_clip_denigration_words_race.png").stat().st_size > 1000
    # report.html carries the same section (tables and heat maps), not only the plots
    page = (out / "report.html").read_text()
    assert "<h2>Retrieval bias</h2>" in page and "Query set clip_denigration_words" in page
    other = page.split("<h2>Other plots</h2>")[1] if "<h2>Other plots</h2>" in page else ""
    assert "retrieval skew" not in other
    run = json.loads((out / "run.json").read_text())
    r = run["retrieval"]
    assert (r["absent"], r["bootstrap"], r["k"], r["query_sets"][0]["name"]) == ("neg_inf", 20, [5, "all"],
                                                                                 "clip_denigration_words")
    assert pd.read_parquet(out / "predictions.parquet").empty  # no taxonomy ran


def test_cli_bad_retrieval_option_is_a_user_error(tmp_path):
    from test_cli import run_cli

    res = run_cli("run", f"hydra.run.dir={tmp_path / 'run'}", "progress=false", "retrieval.enabled=true",
                  "retrieval.absent=nan", check=False)
    assert res.returncode == 2
    # the config schema catches it before any work; retrieval.options_from_config would too
    assert "clipfair: error: retrieval.absent must be neg_inf or inverse_k or zero" in res.stderr
    assert "Traceback" not in res.stderr


def test_sections_render_through_the_report_model(hand, tmp_path):
    from clipfair.report.document import Document, Section, to_html, to_markdown

    labels = GENDERS * 4
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(40)], "gender": labels, "race": RACES * 4})
    emb = ranked_images([0.95 - 0.02 * j for j in range(40)])
    vec = {"q": [1.0, 0.0], "r": [-1.0, 0.0]}
    opts = RetrievalOptions(k=(20,), attributes=("gender", "race"), bootstrap=30, preset="visogender")
    df = R.retrieval_bias(table, emb, [one_query_set("q", "r")], encoder(vec), opts)
    secs = R.retrieval_sections(df, tmp_path, opts)
    assert all(isinstance(s, Section) for s in secs)
    md = to_markdown(Document("t", secs))
    assert "Conventions of Hall et al." in md and "oxai/visogender" in md
    assert "retrieval_skew_hand_gender.png" in md and (tmp_path / "retrieval_skew_hand_gender.png").exists()
    assert "<figure><img src=\"data:image/png;base64," in to_html(Document("t", secs), base_dir=tmp_path)
    # the most-skewed table shows the top-k mix (query q's top 20 = the first 20 labels)
    assert f"Male {100 * labels[:20].count('Male') / 20:.0f}% (vs 50%)" in md


def test_pools_templates_missing_values_and_bootstrap_together():
    rng = np.random.default_rng(1)
    n = 60
    table = pd.DataFrame({"image_id": [f"i{j}" for j in range(n)],
                          "occupation": rng.choice(["chef", "pilot"], n),
                          "gender": rng.choice(["Male", "Female", None], n, p=[0.45, 0.45, 0.1])})
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    qs = one_query_set("chef", "pilot", templates=("a {}", "the {}"))
    vec = {t: rng.normal(size=4).tolist() for t in ("a chef", "the chef", "a pilot", "the pilot")}
    kw = dict(k=(3, "all"), attributes=("gender",), pool="occupation", prompts="per_template", bootstrap=40, seed=3)
    a, b = run(table, emb, qs, vec, **kw), run(table, emb, qs, vec, **kw)
    pd.testing.assert_frame_equal(a, b)
    # point values: the mean over the two templates of each template's own ranking within the pool
    for occ in ("chef", "pilot"):
        pool = table[(table.occupation == occ) & table.gender.notna()]
        n_pool = len(pool)
        per_t = []
        for t in ("a", "the"):
            s = emb[pool.index] @ np.array(vec[f"{t} {occ}"], dtype=np.float32) / np.linalg.norm(emb[pool.index], axis=1)
            ranked = pool.gender.to_numpy()[np.argsort(-s, kind="stable")].tolist()
            per_t.append(ranked[:3].count("Female") / 3)
        assert pick(a, "share", 3, occ, value="Female") == pytest.approx(np.mean(per_t))
        assert set(a.loc[(a["query"] == occ), "n_images"]) == {n_pool}
    mean = a[(a["query"] == R.MEAN_ROW) & (a.metric == "ndkl") & (a.k == "all")].iloc[0]
    assert mean.ci_low <= mean.ci_high and mean["pool"] == "occupation=*"
