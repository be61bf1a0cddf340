"""Issue 26, second half: one test per numbered defect (4-12) of the attacker's trial.

Output that cannot attack its reader (5, 6), models checked before they are built (4), and
no silent wrong (7-12). Each test checks the behaviour against an independent reading (a
CommonMark renderer, the csv module, a hand-written YAML expectation, ...).
"""

from __future__ import annotations

import pandas as pd
import pytest

from clipfair.data import DatasetError, load_dataset
from clipfair.run.schema import ConfigError

from fixtures_datasets import write_image, write_text, RED


# ============================================================ 7: every prediction column is reserved


def test_7_an_attribute_named_like_any_prediction_column_is_refused_at_load(tmp_path):
    from clipfair.data.attributes import PREDICTION_COLUMNS
    from clipfair.methods.zeroshot import predictions_frame
    from clipfair.data.taxonomy import Taxonomy, TaxonomyClass
    import numpy as np

    # the reserved list is exactly the columns predictions_frame writes (independent of the list)
    tax = Taxonomy("t", ("{}",), (TaxonomyClass("a", ("a",), "x"), TaxonomyClass("b", ("b",), "y")))
    frame = predictions_frame(pd.DataFrame({"image_id": ["x"]}), tax, np.array([[0.2, 0.8]]), "m", [])
    assert tuple(frame.columns) == PREDICTION_COLUMNS
    write_image(tmp_path / "a.jpg", RED)
    for col in ["logit", *PREDICTION_COLUMNS]:
        csv = write_text(tmp_path / "l.csv", [f"file,c", "a.jpg,v"])
        with pytest.raises(DatasetError) as e:
            load_dataset("csv", path=str(csv), race_column=None, gender_column=None, age_column=None,
                         attributes={col: "c"})
        msg = str(e.value)
        assert len(msg.splitlines()) == 1 and f"attribute name {col!r} is reserved" in msg


# ============================================================ 9: slices=[] is refused


def test_9_an_empty_slice_list_is_refused_before_any_work(compose, tmp_path, monkeypatch):
    from clipfair import cli

    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError) as e:
        cli.run_from_config(compose(["progress=false", "slices=[]"]), tmp_path / "out")
    assert str(e.value) == ("slices must be 'auto' or a non-empty list, e.g. [race, gender, [race, gender]], "
                            "got []")
    assert not (tmp_path / "out").exists()


# ============================================================ 10: YAML 1.2 core, text as written

#: YAML 1.1 would read these as 8, 31, 90, 1000, 1.5 and a date; as written they stay text
AS_WRITTEN = ["010", "0x1F", "1:30", "1_000", "1.50", "2024-01-01", "0o17", "+5", "1e3", ".5", "yes", "NO"]


def test_10_numbers_and_dates_in_data_files_keep_the_text_as_written(tmp_path):
    from clipfair.methods.retrieval import load_query_set
    from clipfair.data.taxonomy import load_taxonomy
    from clipfair.utility.yamlio import loads

    items = ", ".join(AS_WRITTEN)
    tax = tmp_path / "t.yaml"
    tax.write_text(f"name: 2024-01-01\ntemplates: ['a photo of {{}}.']\nclasses: [{items}]\n")
    t = load_taxonomy(str(tax))
    assert t.name == "2024-01-01"
    assert list(t.labels) == AS_WRITTEN
    qs = tmp_path / "q.yaml"
    qs.write_text(f"name: q\ntemplates: ['a photo of {{}}.']\nqueries: [{items}]\n")
    assert [q.text for q in load_query_set(str(qs)).queries] == AS_WRITTEN
    # numbers are still numbers where numbers are expected, with the 1.2 core values
    d = loads("a: [010, 0x1F, 0o17, 1.50, -3, .inf, true, null, 1:30, 2024-01-01]")["a"]
    assert d[:5] == [10, 31, 15, 1.5, -3] and d[5] == float("inf") and d[6] is True and d[7] is None
    assert d[8:] == ["1:30", "2024-01-01"] and all(type(x) is str for x in d[8:])
    import copy
    import pickle

    assert [str(x) for x in pickle.loads(pickle.dumps(copy.deepcopy(d[:4])))] == ["010", "0x1F", "0o17", "1.50"]


# ============================================================ 11: missing-value spellings


SPELLINGS = ["NaN", "nan", "None", "null", "N/A", "NA", ""]


def test_11_missing_value_spellings_are_missing_counted_and_declarable(tmp_path, caplog):
    import logging

    rows = ["file,tone"]
    for k, v in enumerate(["light", "dark", *SPELLINGS]):
        write_image(tmp_path / f"{k}.jpg", RED)
        rows.append(f"{k}.jpg,{v}")
    csv = write_text(tmp_path / "l.csv", rows)
    common = dict(path=str(csv), race_column=None, gender_column=None, age_column=None)
    with caplog.at_level(logging.INFO, logger="clipfair.data.adapters"):
        ds = load_dataset("csv", attributes={"tone": "tone"}, **common)
    got = ds.table["tone"].tolist()
    assert got[:2] == ["light", "dark"] and all(pd.isna(v) for v in got[2:])
    assert f"{len(SPELLINGS)} of {len(rows) - 1} images have no tone value" in caplog.text
    # declarable: only N/A (and empty cells) are missing; the other spellings are groups
    ds = load_dataset("csv", attributes={"tone": "tone"}, missing_values=["N/A"], **common)
    got = ds.table["tone"].tolist()
    assert [v for v in got if not pd.isna(v)] == ["light", "dark", "NaN", "nan", "None", "null", "NA"]
    # per attribute, and a value the declaration names is a value, not missing
    ds = load_dataset("csv", attributes={"tone": {"values": ["light", "dark", "NA"]}}, **common)
    assert ds.table["tone"].tolist()[7] == "NA" and pd.isna(ds.table["tone"].tolist()[6])
    with pytest.raises(DatasetError, match="dataset.missing_values must be a list"):
        load_dataset("csv", attributes={"tone": "tone"}, missing_values="NA", **common)


# ============================================================ 12: SigLIP 2 text canonicalised


def _reference_canonicalize(text: str) -> str:
    """open_clip 3.3.0 ``tokenizer.canonicalize_text(basic_clean(text))`` as its SigLIP tokenizer
    applies it (copied from open_clip/tokenizer.py, MIT licence; itself from big_vision's
    prompt_engineering.py), without ftfy (not installed here; identity on these prompts)."""
    import html
    import string

    text = html.unescape(html.unescape(text)).strip()  # basic_clean, less ftfy.fix_text
    text = text.replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = text.lower()
    text = " ".join(text.split())
    return text.strip()


PROMPTS = ["a photo of a White man.", "A photo of a Black woman.", "a photo of a Latino_Hispanic person.",
           "a photo of a Middle Eastern person.", "a photo of a person who is 20-29 years old.",
           "A PHOTO OF A THIEF!", "a photo of a 'criminal'.", 'a photo of a "suspicious" person?',
           "a photo of a  doctor ,  smiling", "  leading and trailing  ", "tabs\tand\nnewlines",
           "a photo of a (young) nurse; at work", "an image of a CEO: portrait", "it's a photo of a chimpanzee",
           "a photo of a man & a woman", "a photo of a man &amp; a woman", "a photo of a man &amp;amp; a woman",
           "a photo of a gorilla...", "what-is-this", "snake_case_label", "a photo of an East Asian person.",
           "a photo of a Southeast Asian person.", "a photo of an Indian person.", "100% human", "#hashtag @user",
           "a/b\\c", "{curly} [square] <angle>", "a photo of a café owner.", "Ünïcödé Letters Stay",
           "a photo of a person, who is a nurse.", "a picture of a homeless person.", "x+y=z", "~tilde~ `tick`",
           "a photo of a non-binary person.", "a photo of a person aged 70+", "$money$ and |pipes|"]


def test_12_siglip2_prompts_are_canonicalised_as_open_clip_does(tmp_path):
    from clipfair.models import load_model
    from clipfair.models.base import canonicalize_text
    from clipfair.data.taxonomy import load_taxonomy

    from tiny_families import make_tiny_siglip, make_tiny_siglip2

    builtin = [p for name in ("fairface_race", "clip_denigration") for p in load_taxonomy(name).all_texts()]
    for text in PROMPTS + builtin[:40]:
        assert canonicalize_text(text) == _reference_canonicalize(text), text
    siglip2 = load_model(name_or_path=str(make_tiny_siglip2(tmp_path / "s2")), device="cpu", dtype="float32")
    assert siglip2.family == "siglip2" and siglip2.text_settings.canonicalize
    enc = siglip2.tokenize(PROMPTS)
    want = siglip2.tokenizer([_reference_canonicalize(p) for p in PROMPTS], padding="max_length",
                             max_length=siglip2.context_length, truncation=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == want["input_ids"].tolist()
    raw = siglip2.tokenizer(PROMPTS, padding="max_length", max_length=siglip2.context_length, truncation=True,
                            return_tensors="pt")
    assert enc["input_ids"].tolist() != raw["input_ids"].tolist()  # the tokenizer alone does not do it
    # SigLIP (1)'s own tokenizer canonicalises itself: its prompts go in unchanged
    siglip = load_model(name_or_path=str(make_tiny_siglip(tmp_path / "s1")), device="cpu", dtype="float32")
    assert not siglip.text_settings.canonicalize and siglip._prepare(PROMPTS) == PROMPTS


# ============================================================ 8: compare checks taxonomy fingerprints


def _run_with_taxonomy(d, taxonomy, model="m"):
    """A finished run folder whose run.json records ``taxonomy`` as `clipfair run` does."""
    import json

    d.mkdir(parents=True)
    labels = taxonomy.labels
    p = pd.DataFrame({"image_id": [f"i{i}" for i in range(40)], "taxonomy": taxonomy.name, "method": "zero_shot",
                      "predicted_category": [taxonomy.classes[i % len(labels)].category for i in range(40)],
                      "race": ["A"] * 20 + ["B"] * 20})
    p.to_parquet(d / "predictions.parquet")
    rows = [{"taxonomy": taxonomy.name, "method": "zero_shot", "metric": "rate", "category": cat, "slice": "race",
             "group": g, "n": len(part), "count": int((part["predicted_category"] == cat).sum()),
             "value": float((part["predicted_category"] == cat).mean()), "ci_low": 0.0, "ci_high": 1.0}
            for g, part in p.groupby("race") for cat in taxonomy.categories]
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    (d / "run.json").write_text(json.dumps({
        "model": {"name_or_path": model}, "dataset": {"name": "fixture", "fingerprint": "fp"},
        "taxonomies": [{**taxonomy.to_dict(), "fingerprint": taxonomy.fingerprint()}]}))
    return d


def test_8_compare_refuses_same_named_taxonomies_with_different_classes_or_prompts(tmp_path, capsys):
    from clipfair.cli import main
    from clipfair.methods.compare import CompareError, compare_runs
    from clipfair.data.taxonomy import Taxonomy, TaxonomyClass

    races = ["White", "Black", "East Asian", "Indian", "Latino_Hispanic", "Middle Eastern", "Southeast Asian"]
    seven = Taxonomy("fixture_race", ("a photo of a {} person.",), tuple(TaxonomyClass(r, (r,), r) for r in races))
    two = Taxonomy("fixture_race", ("a photo of a {} person.",), tuple(TaxonomyClass(r, (r,), r) for r in races[:2]))
    reworded = Taxonomy("fixture_race", ("a face of a {}.",), seven.classes)
    a = _run_with_taxonomy(tmp_path / "a", seven, "model-a")
    b = _run_with_taxonomy(tmp_path / "b", two, "model-b")
    c = _run_with_taxonomy(tmp_path / "c", reworded, "model-c")
    same = _run_with_taxonomy(tmp_path / "same", seven, "model-d")
    with pytest.raises(CompareError, match=r"taxonomy fixture_race has different classes in model-a .* and model-b"):
        compare_runs([a, b])
    with pytest.raises(CompareError, match="has different prompts in model-a"):
        compare_runs([a, c])
    assert len(compare_runs([a, same]))  # the same question: compared as before
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-different-taxonomies" in err and not (tmp_path / "o").exists()
    # with the option: compared, and the table says so on every row of that pair
    assert main(["compare", str(a), str(b), str(c), "--out", str(tmp_path / "o"), "--allow-different-taxonomies"]) == 0
    table = pd.read_csv(tmp_path / "o" / "comparison.csv", keep_default_na=False)
    assert set(table["variant"]) == {"model-b: fixture_race (different classes)",
                                     "model-c: fixture_race (different prompts)"}
    assert "(different classes)" in (tmp_path / "o" / "comparison.md").read_text()


# ============================================================ 5, 6: outputs that cannot attack their reader

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
MD_IMG = "![](http://ev.il/p.png)"
JS_LINK = "[x](javascript:alert(1))"
FORMULA = "=cmd|' /C calc'!A0"
#: an attribute's hostile values, and values clipfair's own readers must give back as written
TONES = [SCRIPT, FORMULA, "-", "=x", "'q", MD_IMG, "@SUM(1+1)", "+1+2", IMG, JS_LINK]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """One run (demo model, zero-shot and retrieval) whose taxonomy, query set and custom
    attribute carry script, image, link and formula strings in every place a user can put one."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from clipfair.cli import register_resolvers, run_from_config

    from fixtures_datasets import PALETTE

    tmp = tmp_path_factory.mktemp("hostile")
    rows = ["file,race,gender,age,tone"]
    for k in range(20):
        write_image(tmp / "img" / f"{k}.jpg", PALETTE[k % len(PALETTE)], size=16)
        tone = TONES[k % len(TONES)].replace('"', '""')
        rows.append(f'img/{k}.jpg,White,{"Male" if k % 2 else "Female"},20-29,"{tone}"')
    csv = write_text(tmp / "labels.csv", rows)
    tax = tmp / "evil.yaml"
    tax.write_text(yaml.safe_dump({
        "name": "evil_tax", "templates": ["{}"],
        "classes": [{"label": SCRIPT, "category": FORMULA}, {"label": IMG, "category": JS_LINK},
                    {"label": MD_IMG, "category": "@SUM(1+1)"}, {"label": "-x", "category": "-"}]}))
    qs = tmp / "evilq.yaml"
    qs.write_text(yaml.safe_dump({
        "name": "evil" + SCRIPT, "templates": ["{}"],
        "queries": [{"query": SCRIPT, "category": FORMULA}, {"query": MD_IMG, "category": JS_LINK},
                    {"query": "=1+1", "category": IMG}]}))
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clipfair.configs", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[
            "model=demo", "model.device=cpu", "dataset=csv", f"dataset.path={csv}", "+dataset.attributes={tone: tone}",
            "dataset.missing_values=[]", f"cache.dir={tmp / 'cache'}", "progress=false", f"taxonomies=[{tax}]",
            "slices=[overall,tone]", "small_group_n=0", "retrieval.enabled=true", f"retrieval.queries=[{qs}]",
            "retrieval.k=[5]", "retrieval.attributes=[tone]", "retrieval.bootstrap.B=0",
            "precision_audit=null"])
    GlobalHydra.instance().clear()
    out = tmp_path_factory.mktemp("hostile_out") / "out"
    run_from_config(cfg, out, ["model=demo"])
    return out


def test_5_markdown_outputs_render_no_html_images_or_links_from_user_strings(hostile_run):
    from markdown_it import MarkdownIt

    from clipfair.report.document import Document, Figure, Section, Table, Text, inline_markdown, to_markdown

    render = MarkdownIt("commonmark").render  # raw HTML allowed, as CommonMark specifies
    hostile = [SCRIPT, IMG, MD_IMG, JS_LINK, "[x]: javascript:alert(1)\n\n[x]", "<javascript:alert(1)>",
               "![t](https://evil.example/t.png)", "\\<script>", "&lt;b&gt;", "**<b>x</b>**", "`<x>` `"]
    # the one escaping function, unit by unit, and every block of the report model
    doc = Document(SCRIPT, [Section(IMG, [Text(t) for t in hostile] + [Table(hostile, [hostile])]
                                    + [Figure("plot.png", MD_IMG, JS_LINK)])])
    html = render(to_markdown(doc))
    for t in hostile:
        out = render(inline_markdown(t))
        assert "<script" not in out and "<img" not in out and "<a " not in out.replace('<a href="https://', ""), (t, out)
    assert "<script" not in html and "onerror" not in html.replace("onerror=alert(1)&gt;", "")
    assert html.count("<img") == 1 and '<img src="plot.png"' in html and "href=\"javascript" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the text is shown, not dropped
    # markup clipfair writes itself still renders
    assert "<strong>n</strong>" in render(inline_markdown("**n** < 30 [95% CI]")) and "[95% CI]" in render(
        inline_markdown("[95% CI]"))
    # every Markdown file of a run with hostile names, labels, categories and attribute values
    mds = sorted(hostile_run.glob("*.md"))
    assert {"summary.md", "retrieval.md"} <= {p.name for p in mds}
    for p in mds:
        text = p.read_text()
        html = render(text)
        assert "<script" not in html and "onerror" not in html.replace("onerror=alert(1)&gt;", ""), p.name
        assert "href=\"javascript" not in html and "ev.il" not in "".join(
            part.split(">")[0] for part in html.split("<img")[1:]), p.name
        for tag in html.split("<img")[1:]:  # only the run's own figures are images
            assert tag.split('src="')[1].split('"')[0].endswith((".png", ".svg")) and "://" not in tag.split('"')[1], p.name
    assert "&lt;script&gt;" in render((hostile_run / "summary.md").read_text())
    assert "&lt;script&gt;" in render((hostile_run / "retrieval.md").read_text())


def _formula_cells(path):
    import csv

    bad = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            for cell in row:
                if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                    try:
                        float(cell.rstrip("%"))
                    except ValueError:
                        bad.append(cell)
    return bad


def test_6_csv_text_cells_never_start_a_formula_and_clipfair_reads_them_back(hostile_run):
    from clipfair.run.collect import _read_metrics
    from clipfair.methods.compare import load_run
    from clipfair.utility.outputs import read_csv

    csvs = sorted(hostile_run.glob("*.csv"))
    assert {"metrics.csv", "retrieval.csv"} <= {p.name for p in csvs}
    for p in csvs:
        assert _formula_cells(p) == [], p.name
    raw = (hostile_run / "metrics.csv").read_text()
    assert "'=cmd|' /C calc'!A0" in raw and ",'-," in raw and "''q" in raw  # OWASP's quote
    # negative numbers are still numbers (a difference column of disparities.csv)
    disp = pd.read_csv(hostile_run / "disparities.csv")
    assert all(pd.api.types.is_numeric_dtype(disp[c]) for c in ("value", "ci_low", "ci_high") if c in disp)
    # clipfair's own readers give back the values as written
    for met in (read_csv(hostile_run / "metrics.csv", keep_default_na=False), load_run(hostile_run).metrics,
                _read_metrics(hostile_run)):
        own = met["analysis"] != "retrieval_bias"  # retrieval's rows add "all": its whole-attribute figures
        groups = set(met.loc[own & (met["slice"] == "tone"), "group"])
        assert groups == set(TONES)
        assert set(met.loc[~own & (met["slice"] == "tone"), "group"]) == set(TONES) | {"all"}
        assert {FORMULA, JS_LINK, "-", "@SUM(1+1)"} <= set(met["category"])
        assert pd.api.types.is_numeric_dtype(met["value"])
    ret = read_csv(hostile_run / "retrieval.csv", keep_default_na=False)
    assert {SCRIPT, MD_IMG, "=1+1"} <= set(ret["query"]) and set(TONES) >= set(ret["attribute_value"]) - {""}


# ============================================================ 4: models checked before they are built


def _bomb_folder(tiny_model_dir, dest):
    """The tiny CLIP's real weights beside a config that claims hidden size 32,768 and 64 layers."""
    import json
    import shutil

    shutil.copytree(tiny_model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["text_config"].update(hidden_size=32768, num_hidden_layers=64, intermediate_size=131072)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~10-15 s
def test_4_a_config_that_does_not_match_its_weights_is_refused_before_allocation(tiny_model_dir, tmp_path):
    import subprocess
    import sys
    import textwrap

    from safetensors import safe_open

    from clipfair.models import ModelError, load_model
    from clipfair.models.base import safetensors_numel

    # the header count is the number of stored values (read independently through safetensors)
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        truth = sum(f.get_tensor(k).numel() for k in f.keys())
    assert safetensors_numel([tiny_model_dir / "model.safetensors"]) == truth
    bomb = _bomb_folder(tiny_model_dir, tmp_path / "bomb")
    # in a process limited to 3 GiB of address space (building the model would need ~3 TB)
    code = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from clipfair.models import ModelError, load_model
        t0 = time.time()
        try:
            load_model(name_or_path=r"{bomb}", device="cpu", dtype="float32")
            print("LOADED")
        except ModelError as e:
            print(round(time.time() - t0, 2), e)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds, msg = res.stdout.strip().splitlines()[-1].split(" ", 1)
    assert float(seconds) < 30 and len(msg.splitlines()) == 1
    assert msg.startswith(f"model {bomb}: its config implies ") and f"but its weights hold {truth:,}" in msg


def test_4_max_params_and_weights_that_hold_more_than_the_config(tiny_model_dir, tmp_path):
    import json
    import shutil

    from safetensors import safe_open

    from clipfair.models import ModelError, load_model

    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        truth = sum(f.get_tensor(k).numel() for k in f.keys())
    # max_params: a cap on what a config may ask for (null: none); the real model passes
    with pytest.raises(ModelError, match=r"implies [\d,]+ parameters, more than model.max_params = 1,000"):
        load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32", max_params=1000)
    with pytest.raises(ModelError, match="model.max_params must be a positive number"):
        load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32", max_params=-1)
    assert load_model(name_or_path=str(tiny_model_dir), device="cpu", dtype="float32", max_params=None).family == "clip"
    # weights that hold more than the config describes (a config of 1 layer beside 2 layers' weights)
    small = tmp_path / "small"
    shutil.copytree(tiny_model_dir, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 1
    cfg["text_config"]["num_hidden_layers"] = 1
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=f"but its weights hold {truth:,}"):
        load_model(name_or_path=str(small), device="cpu", dtype="float32")


def test_4_every_family_s_config_matches_its_weights(tmp_path):
    """The check passes each supported family's real checkpoint (tied or shared weights, buffers)."""
    from clipfair.models import load_model

    from tiny_families import make_tiny_align, make_tiny_altclip, make_tiny_siglip, make_tiny_siglip2

    for make in (make_tiny_siglip, make_tiny_siglip2, make_tiny_align, make_tiny_altclip):
        folder = make(tmp_path / make.__name__)
        assert load_model(name_or_path=str(folder), device="cpu", dtype="float32", max_params=10**9).family
