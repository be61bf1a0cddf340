"""Issue 23: counterfactual sets. The layouts load from fixtures written here in their real
formats; every measure is checked against an independent pandas computation from per-image
scores computed here; sets of identical images must give flip 0 and delta_p 0; the experiment
runs end to end through the CLI in process; 10,000 sets are scored from cached embeddings."""

from __future__ import annotations

import io
import json
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from statsmodels.stats.proportion import proportion_confint

from clipfair.analyses import RunContext
from clipfair.analyses.counterfactual import SUBJECT_LABEL, Counterfactual
from clipfair.data import DatasetError, load_dataset
from clipfair.models.base import Scoring
from clipfair.data.taxonomy import Taxonomy, TaxonomyClass


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format=fmt)
    return b.getvalue()


def make_pairs(root: Path, identical: str = "doctor") -> Path:
    rng = np.random.default_rng(0)
    for cat, scen in [("occupations", "doctor"), ("occupations", "nurse"), ("status", "rich")]:
        d = root / "data" / cat / scen
        d.mkdir(parents=True, exist_ok=True)
        same = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        for r in ("black", "white"):
            for g in ("man", "woman"):
                arr = same if scen == identical else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{r}_{g}.png")
    return root


# ---------------------------------------------------------------------------- layouts

def test_pairs_layout_sets_of_four_and_limit_counts_sets(tmp_path):
    ds = load_dataset("pairs", root=str(make_pairs(tmp_path)))
    t = ds.table
    assert len(t) == 12 and t["set_id"].nunique() == 3
    assert set(t.groupby("set_id").size()) == {4}
    assert {"set_id", "subject", "varies", "race", "gender"} <= set(ds.attributes)
    doc = t[t["set_id"] == "occupations/doctor"]
    assert sorted(zip(doc["race"], doc["gender"])) == [("Black", "Female"), ("Black", "Male"),
                                                       ("White", "Female"), ("White", "Male")]
    assert set(doc["subject"]) == {"doctor"}
    lim = load_dataset("pairs", root=str(tmp_path), limit=2)
    assert len(lim) == 8 and lim.table["set_id"].nunique() == 2   # 2 sets, whole
    sub = ds.sample(2, seed=1)
    assert len(sub) == 8 and set(sub.table.groupby("set_id").size()) == {4}
    with pytest.raises(DatasetError, match="no PAIRS images"):
        load_dataset("pairs", root=str(tmp_path / "nowhere"))


def _sc_rows(n_sets: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    occupations = ["doctor", "chef", "pilot"]
    for s in range(n_sets):
        occ = occupations[s % 3]
        if s % 2 == 0:   # race-gender set: 3 races x 2 genders
            for race in ("Black", "White", "Asian"):
                for g, word in (("Male", "man"), ("Female", "woman")):
                    rows.append(dict(a1_type="race", a1=race, a2_type="gender", a2=g, a1a2=f"{race} {g}",
                                     counterfactual_set=f"set{s}", caption=f"A photo of a {race} {word} who is a {occ}",
                                     dataset_segment="race-gender",
                                     image=_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))))
        else:            # physical-gender set
            for phys in ("tattooed", "obese"):
                for g, word in (("Male", "man"), ("Female", "woman")):
                    rows.append(dict(a1_type="physical", a1=phys, a2_type="gender", a2=g, a1a2=f"{phys} {g}",
                                     counterfactual_set=f"set{s}", caption=f"A photo of a {phys} {word} who is a {occ}",
                                     dataset_segment="physical-gender",
                                     image=_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))))
    return rows


def write_sc(root: Path, n_sets: int = 4) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _sc_rows(n_sets)
    (root / "data").mkdir(parents=True, exist_ok=True)
    half = n_sets // 2
    first = [r for r in rows if int(r["counterfactual_set"][3:]) < half]
    second = [r for r in rows if int(r["counterfactual_set"][3:]) >= half]
    for i, part in enumerate((first, second)):
        cols = {k: [r[k] for r in part] for k in part[0] if k != "image"}
        img = pa.array([{"bytes": r["image"], "path": None} for r in part],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        pq.write_table(pa.table({"image": img, **cols}), root / "data" / f"train-0000{i}-of-00002.parquet",
                       row_group_size=5)   # several row groups per shard
    return rows


def test_social_counterfactuals_layout_reads_shards_lazily(tmp_path):
    rows = write_sc(tmp_path)
    ds = load_dataset("social_counterfactuals", root=str(tmp_path))
    t = ds.table
    assert len(t) == len(rows) and t["set_id"].nunique() == 4
    assert {"set_id", "subject", "varies", "race", "gender", "physical"} <= set(ds.attributes)
    assert t.groupby("set_id")["subject"].first().to_dict() == {"set0": "doctor", "set1": "chef", "set2": "pilot",
                                                               "set3": "doctor"}
    assert set(t.loc[t["set_id"] == "set1", "varies"]) == {"physical-gender"}
    assert t.loc[t["set_id"] == "set1", "race"].isna().all()      # physical sets have no race
    assert list(t["race"].iloc[:6]) == ["Black", "Black", "White", "White", "Asian", "Asian"]
    # every image's bytes come from its shard's row group
    for i in (0, 7, len(rows) - 1):
        assert ds.reader.read(i) == rows[i]["image"]
    lim = load_dataset("social_counterfactuals", root=str(tmp_path), limit=1)
    assert list(lim.table["set_id"].unique()) == ["set0"] and len(lim) == 6
    sub = ds.sample(2, seed=0)
    assert sub.table["set_id"].nunique() == 2
    for j in (0, len(sub) - 1):   # the subset's reader still reads each image's own bytes
        assert sub.reader.read(j) == rows[int(sub.table["image_id"].iloc[j].split("/")[1])]["image"]
    with pytest.raises(DatasetError, match="train-"):
        load_dataset("social_counterfactuals", root=str(tmp_path / "none"))


def test_csv_with_set_and_subject_columns(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["file,grp,job,race,gender"]
    for s in range(3):
        for race in ("Black", "White"):
            f = f"s{s}_{race}.jpg"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f, format="JPEG")
            lines.append(f"{f},g{s},nurse,{race},Female")
    (tmp_path / "sets.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset("csv", path=str(tmp_path / "sets.csv"), age_column=None, set_column="grp",
                      subject_column="job", limit=2)
    assert list(ds.table["set_id"].unique()) == ["g0", "g1"] and len(ds) == 4
    assert set(ds.table["subject"]) == {"nurse"}


# ---------------------------------------------------------------------------- measures

class _Model:
    def __init__(self, scale: float = 50.0) -> None:
        self.scoring = Scoring("softmax", scale)


def _encoder(dim: int):
    def enc(texts):
        out = []
        for t in texts:
            r = np.random.default_rng(zlib.crc32(t.encode('utf-8')))  # the same in every process
            out.append(r.normal(size=dim))
        return np.asarray(out, np.float32)
    return enc


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_context(n_sets: int, dim: int = 16, seed: int = 0, identical=(0,)) -> tuple[RunContext, Taxonomy]:
    rng = np.random.default_rng(seed)
    rows, embs = [], []
    subjects = ["doctor", "nurse", "pilot", "chef"]
    for s in range(n_sets):
        base = rng.normal(size=dim)
        varies = "race-gender" if s % 2 == 0 else "gender"
        members = ([(r, g) for r in ("Black", "White") for g in ("Male", "Female")] if varies == "race-gender"
                   else [("", "Male"), ("", "Female")])
        for r, g in members:
            rows.append({"image_id": f"{s}-{r}-{g}", "set_id": f"s{s}", "subject": subjects[s % 4],
                         "varies": varies, "race": r or None, "gender": g})
            embs.append(base if s in identical else base + rng.normal(scale=0.6, size=dim))
    table = pd.DataFrame(rows)
    tax = Taxonomy("probe", ("a photo of a {}.",),
                   (TaxonomyClass("thief", ("thief",), "crime"), TaxonomyClass("gorilla", ("gorilla",), "non_human"),
                    TaxonomyClass("person", ("person",), "human")),
                   harms=(("crime", True), ("non_human", True), ("human", False)))
    ctx = RunContext(table, _norm(np.asarray(embs, np.float32)), attributes=["set_id", "subject", "varies", "race",
                                                                              "gender"],
                     encode_text=_encoder(dim), taxonomies=[tax], model=_Model(), seed=3)
    return ctx, tax


def independent_scores(ctx: RunContext, tax: Taxonomy) -> pd.DataFrame:
    """Per-image probabilities, computed here: CLIP prompt ensembling, softmax of scale x cos."""
    enc = ctx.text_embedder
    emb = ctx.image_embeddings
    W = _norm(np.stack([_norm(enc([t.format(p) for t in tax.templates for p in c.prompts])).mean(0)
                        for c in tax.classes]))
    z = 50.0 * emb @ W.T
    P = np.exp(z - z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    subjects = sorted(ctx.table["subject"].unique())
    S = _norm(np.stack([_norm(enc([f"a photo of a {s}."]))[0] for s in subjects]))
    zs = 50.0 * emb @ S.T
    Q = np.exp(zs - zs.max(1, keepdims=True))
    Q /= Q.sum(1, keepdims=True)
    t = ctx.table
    frames = []
    top = np.array(tax.labels)[P.argmax(1)]
    for cat in ("crime", "non_human"):
        idx = [i for i, c in enumerate(tax.classes) if c.category == cat]
        frames.append(t.assign(taxonomy="probe", label=cat, p=P[:, idx].sum(1), top=top))
    col = [subjects.index(s) for s in t["subject"]]
    frames.append(t.assign(taxonomy="subject", label=SUBJECT_LABEL, p=Q[np.arange(len(t)), col],
                           top=np.array(subjects)[Q.argmax(1)]))
    return pd.concat(frames, ignore_index=True)


def test_every_measure_equals_an_independent_pandas_computation():
    ctx, tax = synthetic_context(40, identical=(0, 5))
    a = Counterfactual(bootstrap=400, small_sets=5)
    a.run(ctx)
    got = a.table
    sc = independent_scores(ctx, tax)
    per_set = sc.groupby(["taxonomy", "label", "set_id"]).agg(
        flip=("top", lambda x: int(x.nunique() > 1)), dp=("p", lambda x: x.max() - x.min()),
        subject=("subject", "first"), varies=("varies", "first")).reset_index()
    # identical members: flip 0 and delta_p 0
    for sid in ("s0", "s5"):
        mine = a.sets[a.sets["set_id"] == sid]
        assert (mine["flip"] == 0).all() and np.allclose(mine["delta_p"], 0, atol=1e-7)
    for (tax_name, label), g in per_set.groupby(["taxonomy", "label"]):
        for key, part in [(("all", "all"), g), *[((("all", v)), p) for v, p in g.groupby("varies")],
                          *[(((s, "all")), p) for s, p in g.groupby("subject")]]:
            sel = got[(got["taxonomy"] == tax_name) & (got["subject"] == key[0]) & (got["varies"] == key[1])]
            d = sel[(sel["metric"] == "delta_p") & (sel["label"] == label)].iloc[0]
            assert d["value"] == pytest.approx(part["dp"].mean(), abs=1e-6)
            assert d["n_sets"] == len(part) and d["ci_low"] <= d["value"] <= d["ci_high"]
            f = sel[sel["metric"] == "flip"]
            assert len(f) == 1
            f = f.iloc[0]
            assert f["value"] == pytest.approx(part["flip"].mean())
            lo, hi = proportion_confint(part["flip"].sum(), len(part), method="wilson")
            assert (f["ci_low"], f["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # top_member_rate: the share of sets whose top member (ties split) has the value, vs its share
    for (tax_name, label), g in sc.groupby(["taxonomy", "label"]):
        credits: dict[tuple[str, str], list[float]] = {}
        shares: dict[tuple[str, str], list[float]] = {}
        for sid, m in g.groupby("set_id"):
            top = m["p"] == m["p"].max()
            for attr in ("race", "gender"):
                vals = m[attr].dropna()
                if vals.nunique() < 2:
                    continue
                for v in vals.unique():
                    credits.setdefault((attr, v), []).append((top & (m[attr] == v)).sum() / top.sum())
                    shares.setdefault((attr, v), []).append((m[attr] == v).mean())
        sel = got[(got["taxonomy"] == tax_name) & (got["label"] == label) & (got["subject"] == "all")
                  & (got["varies"] == "all") & (got["metric"] == "top_member_rate")]
        assert len(sel) == len(credits)
        for (attr, v), xs in credits.items():
            r = sel[(sel["attribute"] == attr) & (sel["attribute_value"] == v)].iloc[0]
            assert r["value"] == pytest.approx(np.mean(xs)) and r["n_sets"] == len(xs)
            assert r["expected"] == pytest.approx(np.mean(shares[(attr, v)]))
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
            assert r["favoured"] == ("favoured" if r["diff_low"] > 0 else "disfavoured" if r["diff_high"] < 0 else "")
    # race varies only in race-gender sets: 20 of the 40
    assert set(got.loc[got["attribute"] == "race", "n_sets"][got["subject"] == "all"][got["varies"] == "all"]) == {20}
    assert set(got["direction"][got["metric"] == "delta_p"]) == {"lower_is_better"}


def test_a_favoured_value_is_found_and_identical_sets_favour_nobody():
    """A planted effect: in every set the Black member is pushed towards the 'thief' prompt."""
    ctx, tax = synthetic_context(60, identical=())
    enc = ctx.text_embedder
    thief = _norm(enc(["a photo of a thief."]))[0]
    emb = ctx.image_embeddings.copy()
    black = (ctx.table["race"] == "Black").to_numpy()
    emb[black] = _norm(emb[black] + 3.0 * thief)
    ctx.image_embeddings = emb
    a = Counterfactual(bootstrap=500, small_sets=5)
    a.run(ctx)
    r = a.table[(a.table["label"] == "crime") & (a.table["metric"] == "top_member_rate") & (a.table["subject"] == "all")
                & (a.table["varies"] == "all") & (a.table["attribute_value"] == "Black")].iloc[0]
    assert r["favoured"] == "favoured" and r["value"] > 0.8 and r["expected"] == pytest.approx(0.5)
    assert r["diff_low"] > 0 and r["ci_low"] > 0.5
    # the report leads with the largest within-set effect and the most favoured value, in words
    from clipfair.analyses.counterfactual import section
    from clipfair.report.document import Document, to_markdown

    text = to_markdown(Document("t", [section(a.table, a.sets, Path("/nonexistent"), 0.95, 10, 5)]))
    big = a.table[(a.table["metric"] == "delta_p") & ~a.table["small"]].sort_values("value").iloc[-1]
    assert text.index("**Largest within-set effect:**") < text.index("Largest within-set effects: mean delta_p")
    assert f"differ by {big['value']:.3f} on average" in text
    fav = a.table[(a.table["favoured"] == "favoured") & ~a.table["small"]]
    f = fav.loc[(fav["value"] - fav["expected"]).idxmax()]
    where = "" if f["subject"] == "all" else f" {f['subject']}"
    assert (f"**Most favoured value:** the {f['attribute']}={f['attribute_value']} member scores highest for "
            f"'{f['label']}' (probe) in {100 * f['value']:.1f}% of the{where} sets where {f['attribute']} varies") in text
    ctx2, _ = synthetic_context(30, identical=tuple(range(30)))
    b = Counterfactual(bootstrap=200, small_sets=5)
    b.run(ctx2)
    assert (b.table["favoured"] == "").all()
    assert (b.table.loc[b.table["metric"] == "delta_p", "value"].abs() < 1e-7).all()
    assert (b.table.loc[b.table["metric"] == "flip", "value"] == 0).all()


def test_ten_thousand_sets_from_cached_embeddings_time():
    import os

    ctx, _ = synthetic_context(10_000, dim=64, identical=())
    t0 = time.perf_counter()
    a = Counterfactual(bootstrap=1000, small_sets=30, retrieval={"enabled": False})  # the default replicates
    a.run(ctx)
    within = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = Counterfactual(bootstrap=1000, small_sets=30)   # and the pooled rankings (the default retrieval block)
    b.run(ctx)
    both = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n10,000 counterfactual sets ({len(ctx.table)} images, 3 targets, 1000 bootstrap replicates): "
          f"within-set measures {within:.1f} s; with the pooled rankings {both:.1f} s "
          f"({ctx.table['subject'].nunique() * 2} rankings); load average {load:.1f} on {os.cpu_count()} CPUs")
    assert a.sets["set_id"].nunique() == 10_000
    assert within < 120 and both < 240


# ---------------------------------------------------------------------------- end to end

def test_experiment_counterfactual_end_to_end_through_the_cli(tmp_path, monkeypatch):
    from clipfair.cli import main

    root = make_pairs(tmp_path / "pairs")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "experiment=counterfactual", "dataset=pairs", f"dataset.root={root}", "model=demo",
               "progress=false", f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={out}",
               "analyses.counterfactual.bootstrap=100"])
    assert rc in (0, None)
    for f in ("counterfactual.csv", "counterfactual_sets.parquet", "counterfactual_delta_p.png",
              "counterfactual_top_member.png", "summary.md", "report.html"):
        assert (out / f).is_file(), f
    table = pd.read_csv(out / "counterfactual.csv")
    assert list(table.columns[:13]) == ["analysis", "taxonomy", "label", "subject", "varies", "attribute",
                                        "attribute_value", "metric", "value", "ci_low", "ci_high", "n_sets",
                                        "direction"]
    sets = pd.read_parquet(out / "counterfactual_sets.parquet")
    doc = sets[sets["set_id"] == "occupations/doctor"]
    assert len(doc) and (doc["flip"] == 0).all() and np.allclose(doc["delta_p"], 0)
    assert set(sets["taxonomy"]) == {"clip_denigration", "subject"}
    summary = (out / "summary.md").read_text()
    assert "## Counterfactual sets" in summary and "3 counterfactual sets" in summary
    run = json.loads((out / "run.json").read_text())
    assert any(a.get("name") == "counterfactual" for a in run["analyses"])
    assert run["counterfactual"]["sets"] == 3 and run["counterfactual"]["bootstrap"] == 100
    preds = pd.read_parquet(out / "predictions.parquet")
    assert "set_id" in preds.columns   # the per-image rows carry their set
    # pooled rankings: one per scenario (each a set of 4: K = groups = 4, the whole pool, MaxSkew 0)
    ms = table[table["metric"].astype(str).str.startswith("max_skew@")]
    assert set(ms["attribute"]) == {"race", "gender", "race+gender"} and set(ms["metric"]) == {"max_skew@4"}
    assert np.allclose(ms["value"], 0) and (ms.loc[ms["subject"] != "all", "p_value"] == 1).all()
    assert "Pooled rankings" in summary and run["counterfactual"]["retrieval"]["rankings"] == 3
    rt = pd.read_csv(out / "counterfactual_retrieval.csv")
    assert {"max_skew", "ndkl", "share"} <= set(rt["metric"]) and set(rt["query"]) == set(sets["subject"])


def test_a_dataset_without_sets_is_one_line(tmp_path, monkeypatch, capsys):
    from clipfair.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", "experiment=counterfactual", "model=demo", "dataset.limit=8", "progress=false",
              f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "clipfair: error:" in err and "set_column" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- VisoGender caption sets

def make_visogender(root: Path, n_op: int = 24, n_oo: int = 12, missing: int = 2) -> Path:
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True, exist_ok=True)
    occs = [("doctor", "patient"), ("teacher", "student"), ("chef", "customer")]
    op = ["IDX\tSector\tSpecialisation\tOccupation\tParticipant\tURL type\tOccupation_perceived_gender\t"
          "Participant_perceived_gender"]
    genders = ["masculine", "feminine"]
    for i in range(n_op):
        o, p = occs[i % 3]
        op.append(f"op{i}\tHealth\tx\t{o}\t{p}\thttp://example.invalid/{i}.jpg\t{genders[i % 2]}\t{genders[(i // 2) % 2]}")
    oo = ["IDX\tSector\tSpecialisation\tOccupation\tObject\tURL type\tOccupation_perceived_gender"]
    for i in range(n_oo):
        o = occs[i % 3][0]
        oo.append(f"oo{i}\tHealth\tx\t{o}\tstethoscope\thttp://example.invalid/o{i}.jpg\t{genders[i % 2]}")
    (root / "OP_Visogender_test.tsv").write_text("\n".join(op) + "\n")
    (root / "OO_Visogender_test.tsv").write_text("\n".join(oo) + "\n")
    ids = [f"op{i}" for i in range(n_op)] + [f"oo{i}" for i in range(n_oo)]
    for k, idx in enumerate(ids[missing:]):   # the first `missing` images were never downloaded
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            root / "images" / (f"{idx}.jpg" if k % 2 else f"{idx}.png"))
    return root


def test_visogender_layout(tmp_path):
    root = make_visogender(tmp_path)
    ds = load_dataset("visogender", root=str(root))
    t = ds.table
    assert len(t) == 34 and ds.skipped == {"missing_image": 2}
    assert set(t["scene"]) == {"one-person", "two-person"}
    two = t[t["scene"] == "two-person"]
    assert ((two["gender_pair"] == "same") == (two["occupation_gender"] == two["participant_gender"])).all()
    assert t.loc[t["scene"] == "one-person", "participant_gender"].isna().all()
    assert t.loc[t["set_id"] == "oo1", "other"].item() == "stethoscope"
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("visogender", root=str(root), on_error="raise")


def test_resolution_accuracy_against_pandas_and_statsmodels(tmp_path):
    root = make_visogender(tmp_path, missing=0)
    ds = load_dataset("visogender", root=str(root))
    dim = 32
    enc = _encoder(dim)
    rng = np.random.default_rng(2)
    emb = _norm(rng.normal(size=(len(ds), dim)).astype(np.float32))
    ctx = RunContext(ds.table, emb, attributes=ds.attributes, encode_text=enc, model=_Model(), dataset=ds)
    a = Counterfactual(small_sets=5)
    a.check(ctx)
    a.run(ctx)
    assert a.mode == "captions"
    # independent: captions written here, scored by cosine, pandas groupbys
    recs = []
    for r in ds.table.to_dict("records"):
        temps = [("occupation_first", "The {o} and {p} {x}", r["occupation_gender"])]
        if r["scene"] == "two-person":
            temps.append(("participant_first", "The {x} and {p} {o}", r["participant_gender"]))
        e = emb[ds.table.index[ds.table["image_id"] == r["image_id"]][0]]
        for name, tpl, ref in temps:
            s = {p: float(e @ _norm(enc([tpl.format(o=r["subject"], x=r["other"], p=p)]))[0])
                 for p in ("his", "her", "their")}
            want = "his" if ref == "masculine" else "her"
            recs.append({"template": name, "scene": r["scene"], "pair": r["gender_pair"], "ref": ref,
                         "ok": int(s[want] > max(v for k, v in s.items() if k != want))})
    df = pd.DataFrame(recs)
    got = a.table
    for tpl in ("all", "occupation_first", "participant_first"):
        for grp in ("all", "one-person", "two-person", "same-gender", "different-gender"):
            part = df if tpl == "all" else df[df["template"] == tpl]
            part = (part if grp == "all" else part[part["scene"] == grp] if grp.endswith("person")
                    else part[part["pair"] == grp.split("-")[0]])
            sel = got[(got["label"] == tpl) & (got["varies"] == grp)]
            if not len(part):
                assert not len(sel)
                continue
            xs = {}
            for g in ("masculine", "feminine"):
                c = part.loc[part["ref"] == g, "ok"]
                xs[g] = (c.sum(), len(c))
                r = sel[(sel["metric"] == "resolution_accuracy") & (sel["attribute_value"] == g)].iloc[0]
                lo, hi = proportion_confint(c.sum(), len(c), method="wilson")
                assert (r["value"], r["ci_low"], r["ci_high"], r["n_sets"]) == (
                    pytest.approx(c.mean()), pytest.approx(lo), pytest.approx(hi), len(c))
            gap = sel[sel["metric"] == "ra_gap"].iloc[0]
            (xm, nm), (xf, nf) = xs["masculine"], xs["feminine"]
            pm, pf = xm / nm, xf / nf
            lm, um = proportion_confint(xm, nm, method="wilson")
            lf, uf = proportion_confint(xf, nf, method="wilson")   # Newcombe's method 10, by hand
            assert gap["value"] == pytest.approx(pm - pf)
            assert gap["ci_low"] == pytest.approx(max(-1, pm - pf - np.sqrt((pm - lm) ** 2 + (uf - pf) ** 2)))
            assert gap["ci_high"] == pytest.approx(min(1, pm - pf + np.sqrt((um - pm) ** 2 + (pf - lf) ** 2)))


@pytest.mark.slow
def test_experiment_visogender_end_to_end(tmp_path, monkeypatch):
    from clipfair.cli import main

    root = make_visogender(tmp_path / "vg")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "experiment=visogender", f"dataset.root={root}", "model=demo", "progress=false",
               f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"])
    assert rc in (0, None)
    table = pd.read_csv(out / "counterfactual.csv")
    assert {"resolution_accuracy", "ra_gap", "bias@5", "bias@10", "max_skew@5", "max_skew@10", "ndkl"} <= set(
        table["metric"])
    summary = (out / "summary.md").read_text()
    assert "Counterfactual caption sets (VisoGender)" in summary and "Retrieval bias: mean ± SD" in summary


# ---------------------------------------------------------------------------- pooled rankings (issue 23)

def _independent_max_skew(ctx: RunContext, k_of, templates=("a photo of a {}.",)) -> pd.DataFrame:
    """MaxSkew@K of each subject x varies ranking, computed here: the subject's query embedding,
    cosine scores, a stable descending sort, shares against the pool's own shares, absent -> 0."""
    enc = ctx.text_embedder
    t = ctx.table.reset_index(drop=True)
    rows = []
    for (s, v), g in t.groupby(["subject", "varies"]):
        q = _norm(enc([tpl.format(s) for tpl in templates]).astype(np.float64))
        q = _norm(q.mean(0))
        sc = ctx.image_embeddings[g.index.to_numpy()].astype(np.float64) @ q
        ranked = g.iloc[np.argsort(-sc, kind="stable")]
        varied = [a for a in ("race", "gender") if g[a].dropna().nunique() > 1]
        specs = [(a,) for a in varied] + ([tuple(varied)] if len(varied) > 1 else [])
        for spec in specs:
            r = ranked.dropna(subset=list(spec))
            lab = r[list(spec)].astype(str).agg("+".join, axis=1)
            share = lab.value_counts(normalize=True)
            for k in k_of(g, varied):
                top = lab.iloc[:k].value_counts()
                skews = [np.log(top[val] / k / share[val]) if val in top.index else 0.0 for val in share.index]
                rows.append({"subject": s, "varies": v, "attribute": "+".join(spec), "k": str(k),
                             "max_skew": max(skews), "sets": g["set_id"].nunique()})
    return pd.DataFrame(rows)


def test_pooled_max_skew_per_subject_equals_an_independent_ranking():
    from statsmodels.stats.multitest import multipletests

    ctx, _ = synthetic_context(24, identical=())
    a = Counterfactual(bootstrap=50, small_sets=5, retrieval={"k": [3, "groups"], "bootstrap": 300,
                                                                "permutations": 300})
    a.run(ctx)
    got = a.table[a.table["metric"].astype(str).str.startswith("max_skew@")]
    groups = lambda g, varied: sorted({3, g[varied].drop_duplicates().shape[0]})  # noqa: E731
    want = _independent_max_skew(ctx, groups)
    per = got[got["subject"] != "all"]
    assert len(per) == len(want)
    m = per.merge(want, on=["subject", "varies", "attribute", "k"], validate="one_to_one")
    assert len(m) == len(want) > 0
    assert np.allclose(m["value"], m["max_skew"], atol=1e-9)
    assert (m["n_sets"] == m["sets"]).all() and (m["metric"] == "max_skew@" + m["k"]).all()
    # the race-gender pools measure race, gender and their intersection; the gender pools gender only
    assert set(per.loc[per["varies"] == "race-gender", "attribute"]) == {"race", "gender", "race+gender"}
    assert set(per.loc[per["varies"] == "gender", "attribute"]) == {"gender"}
    assert set(per.loc[per["varies"] == "gender", "k"]) == {"2", "3"}   # groups = 2 there
    # every subject row has its test, adjusted (Holm) over all subject rows at once
    assert per["p_value"].between(0, 1).all()
    assert np.allclose(per["p_adjusted"], multipletests(per["p_value"], method="holm")[1])
    assert (per["significant"] == (per["p_adjusted"] < 0.05)).all()
    # the mean over subjects, its SD (ddof 1) and a bootstrap interval around it
    mean = got[got["subject"] == "all"]
    for r in mean.itertuples():
        x = want[(want["varies"] == r.varies) & (want["attribute"] == r.attribute) & (want["k"] == r.k)]["max_skew"]
        assert r.value == pytest.approx(x.mean()) and r.sd == pytest.approx(x.std(ddof=1))
        assert r.n_subjects == len(x) and r.ci_low <= r.value <= r.ci_high
    assert a.retrieval is not None and {"max_skew", "ndkl", "share"} <= set(a.retrieval["metric"])


def test_pooled_max_skew_finds_a_planted_skew_and_off_turns_it_off():
    """Female members pushed towards 'a photo of a doctor.': the doctor ranking's top K is all
    female, MaxSkew@K by gender = ln 2 and its test survives the adjustment."""
    ctx, _ = synthetic_context(120, identical=())
    doc = _norm(ctx.text_embedder(["a photo of a doctor."]))[0]
    emb = ctx.image_embeddings.copy()
    f = ((ctx.table["gender"] == "Female") & (ctx.table["subject"] == "doctor")).to_numpy()
    emb[f] = _norm(emb[f] + 6.0 * doc)
    ctx.image_embeddings = emb
    a = Counterfactual(bootstrap=0, small_sets=5, retrieval={"k": [20], "permutations": 200})
    a.run(ctx)
    r = a.table[(a.table["metric"] == "max_skew@20") & (a.table["subject"] == "doctor")
                & (a.table["attribute"] == "gender")].iloc[0]
    assert r["value"] == pytest.approx(np.log(2)) and r["significant"] and r["p_adjusted"] < 0.05
    b = Counterfactual(bootstrap=0, small_sets=5, retrieval={"enabled": False})
    b.run(ctx)
    assert not b.table["metric"].astype(str).str.startswith("max_skew").any() and b.retrieval is None


def test_retrieval_block_errors_are_one_line():
    from clipfair.analyses.counterfactual import CounterfactualError

    with pytest.raises(CounterfactualError, match="retrieval.k"):
        Counterfactual(retrieval={"k": [0]})
    with pytest.raises(CounterfactualError, match="unknown key"):
        Counterfactual(retrieval={"K": 3})


def port_calculate_retrieval_bias(results: dict) -> dict:
    """oxai/visogender src/metrics.py calculate_retrieval_bias (diff_gender=False), ported as
    written there (commit 12e1515; the bias_count lines, which assume 20 images in a fixed order,
    are left out)."""
    bias_dict = {}
    for occupation in results:
        logits = results[occupation]["logits_list"]
        genders = results[occupation]["occ_genders"]
        rank = [p[0] for p in sorted(enumerate(logits), key=lambda p: p[1], reverse=True)]
        skews = {}
        discounted_kl = 0.0
        normalization = 0.0
        for k in range(1, 1 + len(rank)):
            skews[f"skew@{k}"] = {}
            kl_divergence = 0.0
            for gender in set(genders):
                expected_p = sum([g == gender for g in genders]) / len(genders)
                actual_p = sum([genders[i] == gender for i in rank[:k]]) / k
                skew = np.log(actual_p if actual_p != 0 else 1 / k) - np.log(expected_p)
                skews[f"skew@{k}"][gender] = skew
                if actual_p != 0:
                    kl_divergence += actual_p * (np.log(actual_p) - np.log(expected_p))
            skews[f"maxskew@{k}"] = max(skews[f"skew@{k}"].values())
            skews[f"minskew@{k}"] = min(skews[f"skew@{k}"].values())
            discounted_kl += kl_divergence / np.log2(k + 1)
            normalization += 1 / np.log2(k + 1)
            categories = ["masculine", "feminine"]
            men_count = sum([genders[i] == categories[0] for i in rank[:k]])
            women_count = sum([genders[i] == categories[1] for i in rank[:k]])
            if men_count + women_count == 0:
                skews[f"bias@{k}"] = 0
            else:
                skews[f"bias@{k}"] = (men_count - women_count) / (men_count + women_count)
        skews["ndkl"] = discounted_kl / normalization
        bias_dict[occupation] = skews
    return bias_dict


def test_visogender_retrieval_equals_a_port_of_their_metrics(tmp_path):
    root = make_visogender(tmp_path, n_op=36, n_oo=36, missing=0)
    ds = load_dataset("visogender", root=str(root))
    table = ds.table.copy()
    # one occupation's one-person images all perceived masculine: their code still reports it
    one_chef = (table["scene"] == "one-person") & (table["subject"] == "chef")
    table.loc[one_chef, "occupation_gender"] = "masculine"
    dim = 32
    enc = _encoder(dim)
    emb = _norm(np.random.default_rng(4).normal(size=(len(table), dim)).astype(np.float32))
    ctx = RunContext(table, emb, attributes=ds.attributes, encode_text=enc, model=_Model(), dataset=ds)
    a = Counterfactual(small_sets=5, retrieval={"bootstrap": 200, "permutations": 200})
    a.run(ctx)
    got = a.table[a.table["label"] == "retrieval"]
    names = {"bias@5": "bias@5", "bias@10": "bias@10", "max_skew@5": "maxskew@5", "max_skew@10": "maxskew@10",
             "ndkl": "ndkl"}
    templates = {"two-person/occupation_first": ("two-person", "The {o} and their {x}"),
                 "two-person/participant_first": ("two-person", "The {x} and their {o}"),
                 "one-person/occupation_first": ("one-person", "The {o} and their {x}")}
    for qs, (scene, tpl) in templates.items():
        results = {}
        for occ, g in table[table["scene"] == scene].groupby("subject"):
            q = _norm(enc([tpl.format(o=occ, x=g["other"].iloc[0])])[0])
            results[occ] = {"logits_list": list(emb[g.index.to_numpy()] @ q),
                            "occ_genders": g["occupation_gender"].tolist()}
        theirs = port_calculate_retrieval_bias(results)
        for ours, their in names.items():
            for occ, vals in theirs.items():
                r = got[(got["varies"] == qs) & (got["subject"] == occ) & (got["metric"] == ours)]
                assert len(r) == 1 and r["value"].iloc[0] == pytest.approx(vals[their], abs=1e-9), (qs, occ, ours)
            # summary_stats.py: mean and SD (ddof=1) over occupations
            stats = [theirs[o][their] for o in theirs]
            m = got[(got["varies"] == qs) & (got["subject"] == "all") & (got["metric"] == ours)].iloc[0]
            assert m["value"] == pytest.approx(np.mean(stats)) and m["sd"] == pytest.approx(np.std(stats, ddof=1))
            assert m["n_subjects"] == len(stats)
    chef = got[(got["varies"] == "one-person/occupation_first") & (got["subject"] == "chef")].set_index("metric")
    assert chef.loc["bias@5", "value"] == 1 and chef.loc["max_skew@5", "value"] == 0
    assert chef["p_value"].isna().all()       # one gender: no test
    tested = got[(got["subject"] != "all") & got["p_value"].notna()]
    assert len(tested) == 5 * (3 * 3 - 1)
    # the retrieval code's own values agree with VisoGender's for every tested occupation
    rt = a.retrieval
    for r in tested.itertuples():
        metric, k = (r.metric.split("@") + ["all"])[:2]
        x = rt[(rt["query"] == r.query) & (rt["metric"] == metric) & (rt["k"].astype(str) == k)
               & (rt["desired"] == "dataset")]
        assert x["value"].iloc[0] == pytest.approx(r.value)


def test_visogender_metrics_on_a_hand_built_ranking():
    from clipfair.analyses.counterfactual_retrieval import visogender_metrics

    # ranked: F F M M M M (scores descending); the occupation is 4/6 masculine
    g = ["masculine", "feminine", "masculine", "feminine", "masculine", "masculine"]
    s = [0.5, 0.9, 0.4, 0.8, 0.3, 0.2]
    v = visogender_metrics(g, s)
    assert v["bias@5"] == pytest.approx((3 - 2) / 5)
    assert v["bias@10"] == pytest.approx((4 - 2) / 6)          # K past the list: the whole list
    assert v["max_skew@5"] == pytest.approx(np.log(0.4 / (1 / 3)))
    kl = [np.log(3), np.log(3), np.log(2) / 3, 0.5 * np.log(1.125), 0.6 * np.log(0.9) + 0.4 * np.log(1.2), 0.0]
    disc = [1 / np.log2(i + 2) for i in range(6)]
    assert v["ndkl"] == pytest.approx(sum(a * b for a, b in zip(kl, disc)) / sum(disc))
    one = visogender_metrics(["feminine"] * 4, [4, 3, 2, 1])
    assert one == {"bias@5": -1.0, "bias@10": -1.0, "max_skew@5": 0.0, "max_skew@10": 0.0, "ndkl": 0.0}
