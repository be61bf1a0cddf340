"""Dollar Street and GeoDE (clipfair.data.geo_layouts, clipfair.analyses.datacomp_geo): both layouts
(datacomp's webdataset shards and a CSV + image folder) load right; income bands equal pandas'
quantile cut; the datacomp-named figures equal an independent pandas groupby with statsmodels'
Wilson intervals; and they equal a port of datacomp's own code (tests/datacomp_geo_port.py) fed
the same logits on the same shards."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

import datacomp_geo_port as port
import geo_fixtures as gf
from clipfair.data import DatasetError, load_dataset
from clipfair.data.geo_layouts import GEODE_OBJECTS, band_labels, taxonomy_yaml


# ------------------------------------------------------------------------------- layouts


def test_wds_layout_reads_datacomp_fields(tmp_path):
    root = gf.make_ds_wds(tmp_path / "ds")
    ds = load_dataset("dollar_street", root=str(root))
    rows = gf.ds_rows()
    assert len(ds) == len(rows)
    assert ds.attributes == ["object", "income_band", "income_ds", "region"]
    assert ds.table["object"].tolist() == [gf.DS_CLASSES[r["cls"]].replace("_", " ") for r in rows]
    assert ds.table["income_ds"].tolist() == [str(r["income_ds"]) for r in rows]
    assert ds.table["region"].tolist() == [str(r["region"]) for r in rows]
    assert ds.table["income"].tolist() == [float(r["income"]) for r in rows]
    assert ds.value_orders()["object"] == tuple(c.replace("_", " ") for c in gf.DS_CLASSES)  # classnames.txt order
    assert ds.source["layout"] == "wds" and ds.source["metadata_fields"] == ["income_ds", "income_meta", "region"]
    # the lazy reader returns each sample's image bytes exactly (checked against tarfile itself)
    with tarfile.open(root / "test" / "1.tar") as tf:
        first = next(m for m in tf if m.name.endswith((".png", ".jpg")))
        expected = tf.extractfile(first).read()
    i = ds.table.index[ds.table["image_id"] == f"1.tar/{first.name.split('.')[0]}"][0]
    assert ds.read_bytes(int(i)) == expected
    assert ds.load_image(int(i)).size == (12, 12)


def test_geode_layouts_agree(tmp_path):
    wds = load_dataset("geode", root=str(gf.make_geode_wds(tmp_path / "w")),
                       region_names=gf.GEODE_REGIONS)
    csv = load_dataset("geode", root=str(gf.make_geode_csv(tmp_path / "c")))
    assert wds.table["object"].tolist() == csv.table["object"].tolist()
    assert wds.table["region"].tolist() == csv.table["region"].tolist()
    # GeoDE's 40 objects are the declared order when the dataset's are among them
    assert wds.value_orders()["object"] == GEODE_OBJECTS == csv.value_orders()["object"]
    assert csv.value_orders()["region"] == tuple(gf.GEODE_REGIONS)


def test_income_bands_quartiles_and_cut_points(tmp_path):
    root = gf.make_ds_csv(tmp_path / "ds")
    ds = load_dataset("dollar_street", root=str(root))
    income = pd.read_csv(root / "metadata.csv")["income"]
    q = pd.qcut(income, 4)  # pandas' own quantile cut: right-closed bands
    cuts = [float(iv.right) for iv in q.cat.categories[:-1]]
    assert ds.source["income_bands"]["cut_points"] == pytest.approx(cuts)
    labels = band_labels(ds.source["income_bands"]["cut_points"], "Q")
    assert ds.table["income_band"].tolist() == [labels[c] for c in q.cat.codes]
    assert ds.value_orders()["income_band"] == tuple(labels)
    ds2 = load_dataset("dollar_street", root=str(root), income_bands=[100, 1000])
    expected = pd.cut(income, [-np.inf, 100, 1000, np.inf], labels=band_labels([100.0, 1000.0], "B"))
    assert ds2.table["income_band"].tolist() == expected.astype(str).tolist()
    assert ds2.source["income_bands"]["rule"] == "cut points"


@pytest.mark.parametrize("bad, message", [
    ({"income_bands": [5, 1]}, "must increase"),
    ({"income_bands": "terciles"}, "quartiles"),
    ({"layout": "zip"}, "layout"),
])
def test_bad_options_are_one_line_errors(tmp_path, bad, message):
    root = gf.make_ds_csv(tmp_path / "ds", n=8)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset("dollar_street", root=str(root), **bad)
    assert "\n" not in str(e.value)


def test_bad_data_names_the_place(tmp_path):
    root = gf.make_ds_wds(tmp_path / "ds", n=8)
    (root / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="classnames.txt"):
        load_dataset("dollar_street", root=str(root))
    root = gf.make_ds_csv(tmp_path / "c", n=8)
    text = (root / "metadata.csv").read_text().splitlines()
    parts = text[3].split(",")
    parts[2] = "lots"
    text[3] = ",".join(parts)
    (root / "metadata.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=r"row 4 \('lots'\)"):
        load_dataset("dollar_street", root=str(root))
    assert len(load_dataset("dollar_street", root=str(root), on_error="skip")) == 7
    with pytest.raises(DatasetError, match="no webdataset shards"):
        load_dataset("geode", root=str(tmp_path), layout="wds")


def test_taxonomy_from_classnames(tmp_path):
    import yaml

    from clipfair.data.taxonomy import load_taxonomy

    root = gf.make_ds_wds(tmp_path / "ds", n=4)
    path = tmp_path / "t.yaml"
    path.write_text(taxonomy_yaml(root, "dollar_street_classes"))
    t = load_taxonomy(path)
    assert list(t.labels) == [c.replace("_", " ") for c in gf.DS_CLASSES] and t.target == "object"
    assert yaml.safe_load(path.read_text())["templates"] == ["a photo of a {}."]


# ------------------------------------------------------------------ datacomp's own code


def _clipfair_figures(ds, taxonomy, logits, benchmark, group_by, min_n=10):
    from clipfair.analyses.datacomp_geo import datacomp_figures
    from clipfair.run.pipeline import score
    from clipfair.methods.zeroshot import predictions_frame, softmax

    pred = predictions_frame(ds.table, taxonomy, softmax(logits), "zero_shot", ds.attributes, logits=logits)
    met, dis = score(pred, [taxonomy], ["overall", group_by], orders=ds.value_orders(), topk=[5],
                     disparity_min_n=min_n)
    return datacomp_figures(met, dis, benchmark, taxonomy.name, group_by)


@pytest.mark.parametrize("benchmark", ["dollar_street", "geode"])
def test_port_of_datacomp_agrees_on_the_same_logits(tmp_path, benchmark):
    """The same per-image logits into clipfair and into the port of datacomp's
    ``fairness_eval.py``, on the same shards: every figure datacomp reports is equal.

    Differences by design (not figures): for an income_ds / region code below the largest that
    no image has, datacomp's WILDS grouper still emits ``acc_..._<field>:<code>`` (NaN, count 0);
    clipfair lists only groups that have images (both leave empty groups out of the worst
    group). clipfair adds n, Wilson intervals, small-group flags and the worst-vs-best
    difference, which datacomp lacks.
    """
    from clipfair.data.taxonomy import load_taxonomy

    if benchmark == "dollar_street":
        root, classes, field, prefix = gf.make_ds_wds(tmp_path / "d", n=64), gf.DS_CLASSES, "income_ds", "acc_top5"
    else:
        root, classes, field, prefix = gf.make_geode_wds(tmp_path / "g", n=64), gf.GEODE_CLASSES, "region", "acc"
    ds = load_dataset(benchmark, root=str(root))
    tax = load_taxonomy(gf.write_taxonomy(tmp_path, classes, f"{benchmark}_fixture"))
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(len(ds), len(classes))).astype(np.float32)
    # make the right class likelier in some groups, so groups differ
    target = ds.table["class_index"].to_numpy(dtype=int)
    logits[np.arange(len(ds)), target] += ds.table[field].astype(int).to_numpy() * 0.4
    ours = _clipfair_figures(ds, tax, logits, benchmark, field).set_index("figure")
    theirs = port.evaluate(f"fairness/{benchmark}", logits, target, port.shard_files(root))
    assert ours.loc[f"{prefix}_avg", "value"] == pytest.approx(theirs[f"{prefix}_avg"], abs=1e-6)
    assert ours.loc[f"{prefix}_wg", "value"] == pytest.approx(theirs[f"{prefix}_wg"], abs=1e-6)
    groups = [k for k in theirs if k.startswith(f"{prefix}_{field}:") and theirs[f"count_{k[len(prefix) + 1:]}"] > 0]
    assert groups and sorted(groups) == sorted(i for i in ours.index if i.startswith(f"{prefix}_{field}:"))
    for k in groups:
        assert ours.loc[k, "value"] == pytest.approx(theirs[k], abs=1e-6), k
        assert ours.loc[k, "n"] == theirs[f"count_{k[len(prefix) + 1:]}"]
    # datacomp's acc1 / acc5 are the overall top-1 / top-5 of the same logits
    assert theirs["acc1"] == pytest.approx(float((logits.argmax(1) == target).mean()))


# ------------------------------------------------------------ end to end, against pandas


def _run(tmp_path, compose, overrides):
    from clipfair.cli import run_from_config

    overrides = [*overrides, "model=demo", "progress=false", "precision_audit.n=8", "disparity_min_n=10",
                 f"cache.dir={tmp_path / 'cache'}"]
    out = tmp_path / "run"
    run_from_config(compose(overrides), out, overrides)
    return out


def _wilson(k, n):
    return proportion_confint(k, n, alpha=0.05, method="wilson")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["wds", "csv"])
def test_dollar_street_figures_equal_a_pandas_groupby(tmp_path, compose, layout):
    make = gf.make_ds_wds if layout == "wds" else gf.make_ds_csv
    root = make(tmp_path / "ds")
    gf.write_taxonomy(root, gf.DS_CLASSES, "dollar_street_classes")
    out = _run(tmp_path, compose, ["experiment=dollar_street", f"dataset.root={root}"])
    pred = pd.read_parquet(out / "predictions.parquet")
    pred["hit5"] = (pred["true_rank"] <= 5).astype(int)
    fig = pd.read_csv(out / "datacomp_geo.csv", keep_default_na=False, na_values=[""]).set_index("figure")
    field = "income_ds" if layout == "wds" else "income_band"
    g = pred.groupby(field)["hit5"].agg(["sum", "count", "mean"])
    for group, r in g.iterrows():
        row = fig.loc[f"acc_top5_{field}:{group}"]
        assert (row["n"], row["count"]) == (r["count"], r["sum"])
        assert row["value"] == pytest.approx(r["mean"], abs=1e-6)
        lo, hi = _wilson(r["sum"], r["count"])
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, abs=1e-5), pytest.approx(hi, abs=1e-5))
    assert fig.loc["acc_top5_avg", "value"] == pytest.approx(pred["hit5"].mean(), abs=1e-6)
    assert fig.loc["acc_top5_wg", "value"] == pytest.approx(g["mean"].min(), abs=1e-6)
    assert str(fig.loc["acc_top5_wg", "group"]) == str(g["mean"].idxmin())
    # the income bands are in metrics.csv in both layouts, and the band rule is in run.json
    met = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    band = met[(met["metric"] == "topk_accuracy") & (met["slice"] == "income_band")].set_index("group")
    gb = pred.groupby("income_band")["hit5"].mean()
    assert band["value"].to_dict() == pytest.approx(gb.to_dict(), abs=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert "income_bands" in json.dumps(run)
    summary = (out / "summary.md").read_text()
    assert "Dollar Street (datacomp's figures)" in summary and "acc_top5_wg" in summary


@pytest.mark.slow
def test_geode_figures_equal_a_pandas_groupby(tmp_path, compose):
    root = gf.make_geode_csv(tmp_path / "g")
    out = _run(tmp_path, compose, ["experiment=geode", f"dataset.root={root}"])
    pred = pd.read_parquet(out / "predictions.parquet")
    pred["hit"] = pred["correct"].astype(int)
    fig = pd.read_csv(out / "datacomp_geo.csv", keep_default_na=False, na_values=[""]).set_index("figure")
    g = pred.groupby("region")["hit"].agg(["sum", "count", "mean"])
    for group, r in g.iterrows():
        row = fig.loc[f"acc_region:{group}"]
        assert (row["n"], row["count"]) == (r["count"], r["sum"])
        lo, hi = _wilson(r["sum"], r["count"])
        assert row["ci_low"] == pytest.approx(lo, abs=1e-5) and row["ci_high"] == pytest.approx(hi, abs=1e-5)
    assert fig.loc["acc_avg", "value"] == pytest.approx(pred["hit"].mean(), abs=1e-6)
    assert fig.loc["acc_wg", "value"] == pytest.approx(g["mean"].min(), abs=1e-6)
    assert not math.isnan(fig.loc["acc_avg", "ci_low"])


def test_hostile_shards_are_refused_on_one_line(tmp_path):
    """A compressed or damaged tar, an oversized metadata member and member names that climb out
    of the folder: one-line errors, and nothing is extracted to disk (images are read by offset)."""
    import io

    root = tmp_path / "w"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("a\nb\n")
    (root / "test" / "0.tar").write_bytes(b"not a tar at all" * 50)
    with pytest.raises(DatasetError, match="cannot read shard") as e:
        load_dataset("geode", root=str(root))
    assert "\n" not in str(e.value)
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        for name, data in (("../../evil.png", gf._png(np.random.default_rng(0))), ("../../evil.cls", b"1"),
                           ("../../evil.npy", gf._npy([0, 3]))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = load_dataset("geode", root=str(root))
    assert ds.table["object"].tolist() == ["b"] and ds.load_image(0).size == (12, 12)
    assert not (tmp_path / "evil.png").exists()
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        info = tarfile.TarInfo("s0.cls")
        info.size = 2 << 20
        tf.addfile(info, io.BytesIO(b"1" * info.size))
    with pytest.raises(DatasetError, match="not a datacomp shard"):
        load_dataset("geode", root=str(root))
