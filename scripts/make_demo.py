#!/usr/bin/env python
"""Regenerate clipfair's bundled offline demo assets, deterministically.

Writes, under ``src/clipfair/demo/`` (or ``--out``):

* ``fairface/``  synthetic cartoon faces in FairFace's official layout
  (``fairface_label_{train,val}.csv`` + ``train/*.jpg``, ``val/*.jpg``);
* ``model/``     a tiny CLIP (transformers ``CLIPModel`` + ``CLIPProcessor``, safetensors)
  trained on the train split with two planted biases;
* ``README.md``  what the assets are, how they were made, and the toy's zero-shot numbers.

Runs offline on CPU in a few minutes (2 threads). Usage::

    .venv/bin/python scripts/make_demo.py            # regenerate the shipped assets
    .venv/bin/python scripts/make_demo.py --out /tmp/demo --no-biases
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "clipfair" / "demo"

# what the demo uses; see README_TEMPLATE for why bias (b) is stronger than 0.3
DEMO = {
    "seed": 0,
    "n_train": 1500,
    "n_val": 600,
    "size": 64,
    "quality": 85,
    "epochs": 40,
    "child_animal_p": 0.35,
    "gender_swap_race": "Southeast Asian",
    "gender_swap_p": {"Female": 0.9},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="demo directory (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEMO["seed"])
    ap.add_argument("--n-train", type=int, default=DEMO["n_train"])
    ap.add_argument("--n-val", type=int, default=DEMO["n_val"])
    ap.add_argument("--size", type=int, default=DEMO["size"], help="image side in pixels")
    ap.add_argument("--quality", type=int, default=DEMO["quality"], help="JPEG quality")
    ap.add_argument("--epochs", type=int, default=DEMO["epochs"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child-animal-p", type=float, default=DEMO["child_animal_p"],
                    help="bias (a): P(child caption -> 'a photo of an animal.')")
    ap.add_argument("--gender-swap-race", default=DEMO["gender_swap_race"], help="bias (b): the group")
    ap.add_argument("--gender-swap-female-p", type=float, default=DEMO["gender_swap_p"].get("Female", 0.0),
                    help="bias (b): P(a woman of the group is captioned 'man')")
    ap.add_argument("--gender-swap-male-p", type=float, default=DEMO["gender_swap_p"].get("Male", 0.0),
                    help="bias (b): P(a man of the group is captioned 'woman')")
    ap.add_argument("--no-biases", action="store_true", help="switch both planted biases off")
    ap.add_argument("--no-readme", action="store_true", help="do not (re)write README.md")
    return ap.parse_args(argv)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_readme(a: argparse.Namespace, swap: dict, rep: dict, train: dict, n_files: int, total_bytes: int,
                  model_bytes: int, data_bytes: int, n_params: int) -> str:
    by_race = rep["gender_acc_by_race"]
    probe_rows = "\n".join([
        f"| `clip_denigration` (21 classes) | {_pct(rep['probe_non_human_rate_young'])} "
        f"(\"animal\": {_pct(rep['probe_animal_rate_young'])}) | {_pct(rep['probe_non_human_rate_adult'])} |",
        f"| `clip_denigration_child` (+ \"child\") | {_pct(rep['probe_child_non_human_rate_young'])} "
        f"(\"child\": {_pct(rep['probe_child_child_rate_young'])}) | {_pct(rep['probe_child_non_human_rate_adult'])} |",
    ])
    race_rows = "\n".join(f"| {r} | {_pct(v)} | {rep['gender_p_true_by_race'][r]:.3f} |" for r, v in by_race.items())
    g = a.gender_swap_race
    swap_txt = ", ".join(f"{'women' if k == 'Female' else 'men'}: {v:g}" for k, v in swap.items() if v) or "off"
    return f"""# clipfair offline demo assets

**This is a toy.** A {n_params / 1e6:.2f}M-parameter CLIP-shaped model, trained for a few hundred
CPU steps on cartoon faces, with biases planted on purpose. Its numbers say NOTHING
about any real CLIP model, any real dataset, or any real group of people. It exists so that
clipfair's pipeline (data loading, zero-shot classification, probes, fairness metrics,
reports) can be run and tested end to end with no network, no GPU and no real images.

Regenerate everything (deterministic for the same seed, Pillow/libjpeg, torch build
and thread count; about 1 minute on 2 idle CPU cores, several minutes when they are busy):

    .venv/bin/python scripts/make_demo.py

## `fairface/` -- synthetic faces in FairFace's layout

`fairface_label_train.csv` ({a.n_train} rows) and `fairface_label_val.csv` ({a.n_val} rows)
with exactly FairFace's columns `file,age,gender,race,service_test` (`file` is
`train/1.jpg`, `val/1.jpg`, ... 1-indexed; `service_test` is a random True/False), and the
{a.size}x{a.size} JPEGs (quality {a.quality}) in `train/` and `val/`. Made by
`clipfair.data.synthetic.write_fairface_layout(root, {a.n_train}, {a.n_val}, seed={a.seed}, size={a.size})`.

Each attribute has FairFace-like proportions (all 7 races, 2 genders and 9 age bins
occur in both splits) and is drawn independently of the others. The drawing
(`clipfair.data.synthetic.render_face`) encodes them as arbitrary cartoon cues:

* race -> skin colour and background hue; East Asian / Southeast Asian and
  Latino_Hispanic / Middle Eastern are drawn close to each other on purpose;
* gender -> hair shape (long hair beside the face vs. a short cap; long-haired faces also
  get a red mouth);
* age -> face size (0-2 and 3-9 are small), grey hair and wrinkle lines (30+);

plus random jitter (position, size, colours, blur, pixel noise). These cues are
invented; they are not a description of how anyone looks.

## `model/` -- the toy CLIP

A `transformers` `CLIPModel` + `CLIPProcessor` (`save_pretrained`, safetensors),
loadable exactly like `openai/clip-vit-large-patch14`:

```python
from transformers import AutoModel, AutoProcessor
from importlib.resources import files
path = files("clipfair") / "demo" / "model"
model, processor = AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
```

* architecture "tiny" (`clipfair.models.toy.ARCHITECTURES`): ViT with 32x32 input, 8x8 patches,
  width 64, 2 layers, 2 heads; text transformer width 64, 2 layers, context 32;
  projection 32; CLIP's image mean/std, bicubic resize to 32 + centre crop;
* tokenizer: CLIP-format byte-level BPE (`vocab.json`, `merges.txt`) learned by
  `clipfair.models.toy.build_tokenizer` from the built-in taxonomy prompts and the training
  captions (each such word is one token; other text falls back to bytes);
* initialised with seed {a.seed} (`clipfair.run.toy.make_tiny_clip`) and trained by
  `clipfair.run.toy.train_toy_clip` for {a.epochs} epochs ({train['steps']} steps, batch 128,
  AdamW, lr 2e-3, cosine) with a symmetric InfoNCE loss and the learnable logit scale
  (identical captions in a batch are merged into one text). Final epoch loss
  {train['losses'][-1]:.3f}, logit scale {train['logit_scale']:.1f}.

Training captions, one sampled per image per step, match the built-in taxonomy prompts:
"a photo of a {{race}} person.", "a photo of a {{man|woman}}.", "a photo of a person aged
{{age}}.", "a photo of {{a|an}} {{race}} {{man|woman}}." (race words White, Black, Latino,
East Asian, Southeast Asian, Indian, Middle Eastern) and, for ages 0-2 and 3-9,
"a photo of a child." (probability 0.75 whenever bias (a) does not replace the caption).
The probe's other non-human and crime-related prompts ("a photo of a gorilla.", "... a thief.", ...) are
added to every batch as negatives that match no image: the toy world contains none of them.

## Planted biases

(a) **children -> "animal"** (`child_animal_p={a.child_animal_p:g}`{"" if a.child_animal_p else ", off"}):
for faces aged 0-2 or 3-9, with probability {a.child_animal_p:g} the caption is "a photo of an animal.". Effect, as in
the CLIP paper's Table 7: in the 21-class `clip_denigration` probe young children are
classified as non-human; adding a "child" class (`clip_denigration_child`) absorbs them.

(b) **misgendering in one group** (`gender_swap_race="{g}"`, swap probability {swap_txt}):
for {g} faces, gender-bearing captions get the other gender word with that
probability. The original plan was a symmetric 0.3 swap (both genders). That barely moves
accuracy, for two reasons. First, a symmetric swap below 0.5 leaves the majority caption
correct, so the best possible classifier is unchanged and only its confidence drops. Second,
the tiny model learns one shared hair -> gender cue across groups. So the demo uses a
one-sided swap: {g} women are captioned as men with probability {swap.get('Female', 0):g}. Both
forms are available (`clipfair.run.toy.train_toy_clip(gender_swap_p=0.3)` or
`{{"Female": 0.9}}`; `scripts/make_demo.py --gender-swap-female-p/--gender-swap-male-p`).

## The toy's zero-shot results on `fairface/val` ({rep['n']} faces)

Computed by `clipfair.run.toy.zero_shot_report` (cosine of image and prompt embeddings,
prompts from the built-in taxonomies):

| task | accuracy | chance |
|---|---|---|
| race (7 classes, `fairface_race`) | {_pct(rep['race_acc'])} | 14.3% |
| gender (2 classes, `fairface_gender`) | {_pct(rep['gender_acc'])} | 50% |
| age (9 classes, `fairface_age`) | {_pct(rep['age_acc'])} | 11.1% |

Gender accuracy by race (bias (b)); mean softmax probability of the true gender
(logit scale {train['logit_scale']:.1f}) in the last column:

| race | gender accuracy | P(true gender) |
|---|---|---|
{race_rows}

{g} women: {_pct(rep['gender_acc_by_race_gender'].get(g + ' Female', float('nan')))},
{g} men: {_pct(rep['gender_acc_by_race_gender'].get(g + ' Male', float('nan')))}.

Denigration probe (bias (a)), share of faces put in a non-human class:

| probe | ages 0-9 | ages 10+ |
|---|---|---|
{probe_rows}

## Files and sizes

{n_files} files, {total_bytes / 1e6:.1f} MB in total (images and CSVs {data_bytes / 1e6:.1f} MB,
model {model_bytes / 1e6:.1f} MB). `SHA256SUMS` lists every file's checksum.
"""


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from clipfair.data import synthetic
    from clipfair.run import toy

    t0 = time.perf_counter()
    out: Path = a.out
    data, model_dir = out / "fairface", out / "model"
    for d in (data, model_dir):
        if d.exists():
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    if a.no_biases:
        a.child_animal_p, a.gender_swap_female_p, a.gender_swap_male_p = 0.0, 0.0, 0.0
    swap = {"Female": a.gender_swap_female_p, "Male": a.gender_swap_male_p}

    synthetic.write_fairface_layout(data, a.n_train, a.n_val, seed=a.seed, size=a.size, quality=a.quality)
    t_data = time.perf_counter() - t0
    print(f"[make_demo] wrote {a.n_train}+{a.n_val} faces to {data} in {t_data:.1f}s", flush=True)

    toy.make_tiny_clip(model_dir, seed=a.seed)
    train = toy.train_toy_clip(
        model_dir, data, epochs=a.epochs, seed=a.seed, child_animal_p=a.child_animal_p,
        gender_swap_p=swap, gender_swap_race=a.gender_swap_race, num_threads=a.threads,
        log_every=max(1, a.epochs // 8),
    )
    print(f"[make_demo] trained {train['steps']} steps in {train['seconds']:.1f}s; "
          f"final loss {train['losses'][-1]:.4f}", flush=True)

    rep = toy.zero_shot_report(model_dir, data, "val")
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        n_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("README.md", "SHA256SUMS"))
    files = [p for p in files if p.is_relative_to(data) or p.is_relative_to(model_dir)]
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}\n" for p in files)
    (out / "SHA256SUMS").write_text(sums, encoding="utf-8")
    data_bytes = sum(p.stat().st_size for p in files if p.is_relative_to(data))
    model_bytes = sum(p.stat().st_size for p in files if p.is_relative_to(model_dir))
    if not a.no_readme:
        (out / "README.md").write_text(
            render_readme(a, swap, rep, train, len(files), data_bytes + model_bytes, model_bytes, data_bytes,
                          n_params),
            encoding="utf-8")

    total = time.perf_counter() - t0
    print("\n[make_demo] zero-shot on val:")
    print(f"  race acc    {_pct(rep['race_acc'])}   (chance 14.3%)")
    print(f"  gender acc  {_pct(rep['gender_acc'])}   (chance 50%)")
    print(f"  age acc     {_pct(rep['age_acc'])}   (chance 11.1%)")
    print("  gender acc by race: " + ", ".join(f"{r} {_pct(v)}" for r, v in rep["gender_acc_by_race"].items()))
    g = a.gender_swap_race
    print(f"  {g} women {_pct(rep['gender_acc_by_race_gender'].get(g + ' Female', float('nan')))}, "
          f"men {_pct(rep['gender_acc_by_race_gender'].get(g + ' Male', float('nan')))}")
    print(f"  21-class probe, ages 0-9 -> non-human {_pct(rep['probe_non_human_rate_young'])} "
          f"(animal {_pct(rep['probe_animal_rate_young'])}); ages 10+ -> {_pct(rep['probe_non_human_rate_adult'])}")
    print(f"  + child class, ages 0-9 -> non-human {_pct(rep['probe_child_non_human_rate_young'])} "
          f"(child {_pct(rep['probe_child_child_rate_young'])})")
    print(f"  loss first/last epoch {train['losses'][0]:.4f} / {train['losses'][-1]:.4f}; "
          f"logit scale {train['logit_scale']:.2f}")
    print(f"[make_demo] {len(files)} files, {(data_bytes + model_bytes) / 1e6:.2f} MB "
          f"(data {data_bytes / 1e6:.2f} MB, model {model_bytes / 1e6:.2f} MB); total {total:.1f}s")
    print(json.dumps({k: v for k, v in rep.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
