"""Counterfactual sets as an analysis: images that differ in one or two attributes (race,
gender, physical characteristics) and hold everything else fixed.

Layer: analyses.

The unit is one **set** (``dataset.set_column``; the layouts in
:mod:`clipfair.data.counterfactual_layouts` declare ``set_id``, ``subject`` and ``varies``).
For every taxonomy of the run, plus the set's own subject as a taxonomy (``subject_taxonomy``:
one class per distinct subject, prompts from ``subject_templates``), each image is scored by the
model family's own rule and, per set:

``flip``
    1 when the set's members do not all get the same top label (a proportion; Wilson
    interval over sets);
``delta_p``
    max - min over the members of the probability of the *target*: the set's subject label
    when the taxonomy has it, else each category the taxonomy declares a harm (summed class
    probabilities); the mean over sets with a percentile bootstrap interval resampling sets;
``top_member_rate``
    per value of each attribute that varies within the set: the share of the set's
    top-scoring member (for the target) that has this value (ties split evenly), averaged over
    sets, against the value's share of the members (``expected``; 1/m for m values
    represented equally); the interval and the interval of rate - expected come from the same
    set bootstrap, and a value is ``favoured`` (or disfavoured) only when the latter excludes 0.

All by the attribute that varies (``varies``), by subject, and overall. Outputs:
``counterfactual.csv`` (long), ``counterfactual_sets.parquet`` (one row per set x target:
its members' attributes, scores and top labels), two plots and a report section that leads
with the largest within-set effects.

Pooled rankings (``retrieval``, on by default): per subject and kind of set, MaxSkew@K of the
ranking of all the subject's images for its neutral query, with the retrieval code's test of no
association (SocialCounterfactuals' conventions); for caption sets, VisoGender's retrieval Bias@K /
MaxSkew@K / NDKL, mean and SD over occupations. See :mod:`clipfair.analyses.counterfactual_retrieval`;
the rows join ``counterfactual.csv`` (with the columns :data:`RETRIEVAL_COLUMNS`).

Per-set rows stay in ``counterfactual_sets.parquet`` rather than ``predictions.parquet``: the latter is
one row per image x taxonomy x method, and ``compare``, ``sanity`` and the metrics read every row of it
as an image's prediction; its image rows carry ``set_id`` (and ``subject``, ``varies``), so the sets
join back to them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..methods.retrieval import RetrievalError
from .base import HIGHER, LOWER, MEAN, NEUTRAL, PROPORTION, Analysis, MetricSpec, Needs, RunContext
from .registry import register_analysis
from ..stats.specs import register_all

log = logging.getLogger(__name__)

METRICS = (
    MetricSpec("flip", LOWER, PROPORTION, "share of counterfactual sets whose members do not all get the same "
               "top label"),
    MetricSpec("delta_p", LOWER, MEAN, "mean over counterfactual sets of max - min of a label's probability over "
               "the set's members", interval="bootstrap"),
    MetricSpec("top_member_rate", NEUTRAL, MEAN, "share of counterfactual sets whose top-scoring member has an "
               "attribute value (against the value's share of the members)", interval="bootstrap"),
    MetricSpec("resolution_accuracy", HIGHER, PROPORTION, "share of images whose caption with the pronoun of the "
               "referent's perceived gender scores above the other pronouns' ('their' counts as wrong)"),
)
register_all(METRICS)
#: the gap RA_masculine - RA_feminine (Newcombe interval); not a per-unit outcome, so not in the registry
RA_GAP = "ra_gap"
DIRECTION = {m.name: m.direction for m in METRICS}
DIRECTION[RA_GAP] = NEUTRAL

COLUMNS = ["analysis", "taxonomy", "label", "subject", "varies", "attribute", "attribute_value", "metric", "value",
           "ci_low", "ci_high", "n_sets", "direction", "expected", "diff_low", "diff_high", "favoured", "small"]
DELTA_PNG = "counterfactual_delta_p.png"
TOP_PNG = "counterfactual_top_member.png"
SUBJECT_TAXONOMY = "subject"
#: the label column's value for "the set's own subject label" (the label itself: target_label)
SUBJECT_LABEL = "(subject)"
ALL = "all"


class CounterfactualError(ValueError):
    """A counterfactual run that cannot work (no set column, ...): one line from the CLI."""


@register_analysis
class Counterfactual(Analysis):
    name = "counterfactual"
    outcomes = []  # set-level measures: counterfactual.csv (the metrics are in the registry)
    unit = "set_id"
    needs = Needs(image_embeddings="projected", text=True)
    errors = (CounterfactualError, RetrievalError)

    def __init__(self, set_column: str = "set_id", subject_column: str = "subject", varies_column: str = "varies",
                 subject_taxonomy: bool = True, subject_templates: Sequence[str] = ("a photo of a {}.",),
                 bootstrap: int = 1000, small_sets: int = 30, top: int = 10, seed: int | None = None,
                 sets: str = "auto", retrieval: Mapping[str, Any] | None = None) -> None:
        from .counterfactual_retrieval import parse_options

        super().__init__(set_column=set_column, subject_column=subject_column, varies_column=varies_column,
                         subject_taxonomy=subject_taxonomy, subject_templates=list(subject_templates),
                         bootstrap=bootstrap, small_sets=small_sets, top=top, seed=seed, sets=sets,
                         retrieval=dict(retrieval or {}))
        try:
            self.retrieval_opts = parse_options(retrieval)
        except ValueError as e:
            raise CounterfactualError(str(e)) from None
        self.retrieval: pd.DataFrame | None = None  # the joined retrieval table (every metric, with tests)
        if sets not in ("auto", "images", "captions"):
            raise CounterfactualError(f"analyses.counterfactual.sets must be auto, images or captions, got {sets!r}")
        self.mode = sets
        if int(bootstrap) < 0:
            raise CounterfactualError(f"analyses.counterfactual.bootstrap must be >= 0, got {bootstrap!r}")
        if not subject_templates or any("{}" not in str(t) for t in subject_templates):
            raise CounterfactualError("analyses.counterfactual.subject_templates: each template needs a {} for "
                                      f"the subject, got {list(subject_templates)!r}")
        self.set_column, self.subject_column, self.varies_column = set_column, subject_column, varies_column
        self.subject_taxonomy = bool(subject_taxonomy)
        self.subject_templates = [str(t) for t in subject_templates]
        self.bootstrap, self.small_sets, self.top = int(bootstrap), int(small_sets), int(top)
        self.seed = seed
        self.image_scores: pd.DataFrame | None = None
        self.sets: pd.DataFrame | None = None
        self.table: pd.DataFrame | None = None
        self.confidence = 0.95

    # ------------------------------------------------------------------ lifecycle
    def check(self, ctx: RunContext) -> None:
        attrs = list(getattr(ctx.dataset, "attributes", []) or [])
        if ctx.dataset is not None and self.set_column not in attrs:
            raise CounterfactualError(
                f"analysis counterfactual: dataset {getattr(ctx.dataset, 'name', '?')!r} has no {self.set_column!r} "
                "attribute; use dataset=social_counterfactuals, dataset=pairs or dataset=csv with "
                "dataset.set_column=<the column naming each image's set>")

    def run(self, ctx: RunContext) -> None:
        if self.set_column not in ctx.table.columns:
            raise CounterfactualError(f"analysis counterfactual: the evaluated images have no {self.set_column!r} "
                                      "column; set dataset.set_column")
        self.confidence = ctx.confidence
        seed = ctx.seed if self.seed is None else int(self.seed)
        if self.mode == "captions" or (self.mode == "auto" and set(CAPTION_COLUMNS) <= set(ctx.table.columns)):
            self.mode = "captions"
            missing = [c for c in CAPTION_COLUMNS if c not in ctx.table.columns]
            if missing:
                raise CounterfactualError(f"analysis counterfactual: caption sets need the attributes "
                                          f"{', '.join(CAPTION_COLUMNS)} (dataset=visogender); missing: "
                                          f"{', '.join(missing)}")
            self.sets = caption_rows(ctx)
            self.table = caption_summary(self.sets, ctx.confidence, self.small_sets)
            ctx.info["counterfactual"] = {"caption_sets": int(len(ctx.table)), "rows": int(len(self.sets))}
            if self.retrieval_opts.enabled:
                from .counterfactual_retrieval import caption_retrieval

                with ctx.timed("counterfactual_retrieval"):
                    rows, self.retrieval = caption_retrieval(
                        ctx.table, ctx.image_embeddings, ctx.encode_text, opts=self.retrieval_opts,
                        confidence=ctx.confidence, correction=_correction(ctx), seed=seed, orders=ctx.orders,
                        small=self.small_sets)
                self.table = _join(self.table, rows)
                ctx.info["counterfactual"]["retrieval"] = self._retrieval_info()
            return None
        self.mode = "images"
        attrs = [a for a in ctx.attributes if a not in (self.set_column, self.subject_column, self.varies_column,
                                                       "race_binary")]
        self.image_scores = image_scores(ctx, self._targets(ctx), self.set_column, self.subject_column,
                                         self.varies_column, attrs)
        self.sets = set_rows(self.image_scores, attrs)
        self.table = summarise(self.sets, attrs, confidence=ctx.confidence, bootstrap=self.bootstrap, seed=seed,
                               small=self.small_sets)
        ctx.info["counterfactual"] = {"sets": int(self.image_scores["set_id"].nunique()),
                                      "images": int(len(ctx.table)), "attributes": attrs,
                                      "bootstrap": self.bootstrap, "seed": seed}
        if self.retrieval_opts.enabled and self.subject_column in ctx.table.columns:
            from .counterfactual_retrieval import set_retrieval

            t = ctx.table.reset_index(drop=True)
            t = pd.DataFrame({"set_id": t[self.set_column].astype(str),
                              "subject": t[self.subject_column].astype(object).where(t[self.subject_column].notna(),
                                                                                     "").astype(str),
                              "varies": self.image_scores.drop_duplicates("image_id").set_index("image_id")
                              .loc[t["image_id"].astype(str), "varies"].to_numpy(),
                              **{a: t[a] for a in attrs}})
            with ctx.timed("counterfactual_retrieval"):
                rows, self.retrieval = set_retrieval(
                    t, np.asarray(ctx.image_embeddings), ctx.encode_text, attrs=attrs,
                    templates=self.subject_templates, opts=self.retrieval_opts, confidence=ctx.confidence,
                    correction=_correction(ctx), seed=seed, orders=ctx.orders, small=self.small_sets)
            self.table = _join(self.table, rows)
            ctx.info["counterfactual"]["retrieval"] = self._retrieval_info()
        return None

    def _retrieval_info(self) -> dict[str, Any]:
        o = self.retrieval_opts
        return {"k": o.k, "bootstrap": o.bootstrap, "permutations": o.permutations,
                "preset": "visogender" if self.mode == "captions" else "social_counterfactuals",
                "rankings": int(self.retrieval[["query_set", "query"]].drop_duplicates().shape[0])
                if self.retrieval is not None and len(self.retrieval) else 0}

    def _targets(self, ctx: RunContext) -> list["Target"]:
        from ..methods.zeroshot import class_embeddings

        out: list[Target] = []
        for t in ctx.taxonomies:
            w = class_embeddings(t, ctx.text_embedder).weights
            cats = {c: [i for i, cl in enumerate(t.classes) if cl.category == c] for c in t.categories}
            harmful = [c for c in t.categories if t.harm(c)]
            out.append(Target(t.name, list(t.labels), w, {c: cats[c] for c in harmful}))
        if self.subject_taxonomy and self.subject_column in ctx.table.columns:
            subjects = sorted({str(s) for s in ctx.table[self.subject_column].dropna() if str(s)})
            if subjects:
                emb = np.stack([ctx.encode_text([tpl.format(s) for tpl in self.subject_templates]).mean(axis=0)
                                for s in subjects])
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                out.append(Target(SUBJECT_TAXONOMY, subjects, emb, {}))
        if not out:
            raise CounterfactualError("analysis counterfactual: nothing to score: give taxonomies or keep "
                                      "analyses.counterfactual.subject_taxonomy=true with a subject attribute")
        return out

    # ------------------------------------------------------------------ outputs
    def tables(self) -> dict[str, pd.DataFrame]:
        return {} if self.table is None else {"counterfactual": self.table}

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Any:
        from ..utility.outputs import write_csv
        from .base import Written

        if self.table is None or self.sets is None:
            return Written()
        out = Path(out_dir)
        paths = []
        write_csv(self.table, out / "counterfactual.csv")
        paths.append(out / "counterfactual.csv")
        sets = self.sets.copy()
        tmp = out / ".counterfactual_sets.parquet.tmp"
        sets.to_parquet(tmp, index=False)
        tmp.replace(out / "counterfactual_sets.parquet")
        paths.append(out / "counterfactual_sets.parquet")
        if self.retrieval is not None and len(self.retrieval):
            write_csv(self.retrieval, out / "counterfactual_retrieval.csv")
            paths.append(out / "counterfactual_retrieval.csv")
        if self.mode == "captions":
            return Written(paths, [caption_section(self.table, self.sets, self.confidence, self.small_sets)])
        paths += plots(self.sets, self.table, out)
        return Written(paths, [section(self.table, self.sets, out, self.confidence, self.top, self.small_sets)])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["metrics"] = [m.name for m in METRICS]
        return d


def _correction(ctx: RunContext) -> str:
    """The run's disparity_correction (holm | bh), for the retrieval tests' adjustment."""
    c = getattr(ctx.config, "disparity_correction", None)
    return str(c) if c in ("holm", "bh") else "holm"


#: counterfactual.csv's columns after :data:`COLUMNS` when the pooled-ranking rows are there
RETRIEVAL_COLUMNS = ["k", "n_images", "null_mean", "p_value", "p_adjusted", "significant", "p_method", "sd",
                     "n_subjects", "query"]


def _join(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The within-set rows and the pooled-ranking rows in one long table (the latter's extra
    columns empty on the former)."""
    if rows is None or not len(rows):
        return table
    out = pd.concat([table, rows], ignore_index=True)
    for c in RETRIEVAL_COLUMNS:
        if c not in out.columns:
            out[c] = np.nan
    out["favoured"] = out["favoured"].fillna("")
    return out[COLUMNS + RETRIEVAL_COLUMNS]


class Target:
    """One taxonomy as scored per image: class labels, class text embeddings, and the harmful
    categories (category -> class indices) whose summed probability is a target."""

    def __init__(self, name: str, labels: list[str], weights: np.ndarray, harmful: dict[str, list[int]]) -> None:
        self.name, self.labels, self.weights, self.harmful = name, labels, weights, harmful


# ---------------------------------------------------------------------------- computing

def image_scores(ctx: RunContext, targets: Sequence[Target], set_column: str, subject_column: str,
                 varies_column: str, attrs: Sequence[str]) -> pd.DataFrame:
    """One row per image x taxonomy x target label: ``set_id``, ``subject``, ``varies``, the
    attributes, ``taxonomy``, ``top_label`` (the image's top class), ``label`` (the target:
    ``(subject)`` for the set's own subject label, or a harmful category), ``target_label``
    (the class or category scored) and ``p`` (its probability)."""
    table = ctx.table.reset_index(drop=True)
    emb = np.asarray(ctx.image_embeddings, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    scoring = ctx.model.scoring
    base = pd.DataFrame({"image_id": table["image_id"].astype(str), "set_id": table[set_column].astype(str),
                         "subject": (table[subject_column].astype(object).where(table[subject_column].notna(), "")
                                     .astype(str) if subject_column in table else ""),
                         "varies": (table[varies_column].astype(str) if varies_column in table else ""),
                         **{a: table[a].astype(object) for a in attrs}})
    if varies_column not in table:
        base["varies"] = _varies(base, attrs)
    frames = []
    for t in targets:
        probs = scoring.probabilities(scoring.logits(emb @ np.asarray(t.weights, np.float32).T)).astype(np.float64)
        top = np.asarray(t.labels, dtype=object)[probs.argmax(axis=1)]
        index = {str(l).lower(): i for i, l in enumerate(t.labels)}
        col = np.array([index.get(str(s).lower(), -1) for s in base["subject"]])
        parts = []
        has_subject = col >= 0
        if has_subject.any():
            p = np.where(has_subject, probs[np.arange(len(col)), np.maximum(col, 0)], np.nan)
            parts.append(base.assign(taxonomy=t.name, top_label=top, label=SUBJECT_LABEL,
                                     target_label=np.asarray(t.labels, object)[np.maximum(col, 0)],
                                     p=p)[has_subject])
        for cat, idx in t.harmful.items():
            parts.append(base.assign(taxonomy=t.name, top_label=top, label=cat, target_label=cat,
                                     p=probs[:, idx].sum(axis=1)))
        if not parts:  # no target: flip only
            parts.append(base.assign(taxonomy=t.name, top_label=top, label="", target_label="", p=np.nan))
        frames.append(pd.concat(parts, ignore_index=True))
    return pd.concat(frames, ignore_index=True)


def _varies(base: pd.DataFrame, attrs: Sequence[str]) -> pd.Series:
    out = pd.Series("none", index=base.index, dtype=object)
    for sid, part in base.groupby("set_id", sort=False):
        v = "-".join(a for a in attrs if part[a].dropna().nunique() > 1)
        out[part.index] = v or "none"
    return out


def set_rows(scores: pd.DataFrame, attrs: Sequence[str]) -> pd.DataFrame:
    """One row per set x taxonomy x target label: ``n_members``, ``flip``, ``delta_p``, the top
    member (ties: the first, and ``n_top`` how many tie), its attributes, every member's
    attributes, score and top label, and per varied attribute value its top-member credit
    (``top:<attr>=<value>``: the share of the tied top members with that value) and its share
    of the members (``share:<attr>=<value>``). Vectorised over sets (no loop over sets)."""
    df = scores.reset_index(drop=True)
    keys = ["taxonomy", "label", "set_id"]
    gid = df.groupby(keys, sort=False).ngroup().to_numpy()
    first = pd.Series(np.arange(len(df))).groupby(gid).first().to_numpy()
    g = df.groupby(gid, sort=True)
    p = df["p"].to_numpy(float)
    pmax = g["p"].transform("max").to_numpy(float)
    pmin = g["p"].transform("min").to_numpy(float)
    finite = pd.Series(np.isfinite(p)).groupby(gid).all().to_numpy()
    is_top = np.isfinite(p) & (p == pmax)
    k = pd.Series(is_top.astype(float)).groupby(gid).transform("sum").to_numpy()
    member = pd.Series([""] * len(df), dtype=object)
    for a in attrs:
        v = df[a]
        ok = v.notna() & (v.astype(str) != "")
        part = (a + "=" + v.astype(str)).where(ok, "")
        member = np.where((member != "") & (part != ""), member + "; " + part, member + part)
        member = pd.Series(member, dtype=object)
    out = pd.DataFrame({c: df[c].to_numpy()[first] for c in ["set_id", "taxonomy", "label", "target_label",
                                                              "subject", "varies"]})
    out["n_members"] = g.size().to_numpy()
    out["flip"] = (g["top_label"].nunique().to_numpy() > 1).astype(int)
    out["members"] = member.groupby(gid).agg(" | ".join).to_numpy()
    out["member_top_labels"] = df["top_label"].astype(str).groupby(gid).agg(" | ".join).to_numpy()
    out["delta_p"] = np.where(finite, (pmax - pmin)[first], np.nan)
    out["member_scores"] = np.where(finite, pd.Series([f"{x:.6g}" for x in p]).groupby(gid).agg(" | ".join)
                                    .to_numpy(), "")
    tops = pd.DataFrame({"gid": gid, "i": np.arange(len(df))})[is_top].groupby("gid")["i"].first()
    top_i = tops.reindex(np.arange(len(out))).to_numpy()
    has = ~np.isnan(top_i.astype(float))
    ti = np.where(has, top_i, 0).astype(int)
    out["n_top"] = np.where(has, k[first], np.nan)
    out["top_member"] = np.where(has, df["image_id"].to_numpy()[ti], None)
    out["top_member_attributes"] = np.where(has, member.to_numpy()[ti], None)
    out["top_score"] = np.where(has, p[ti], np.nan)
    cols: dict[str, np.ndarray] = {}
    for a in attrs:
        v = df[a].where(df[a].notna() & (df[a].astype(str) != ""))
        varies = (v.groupby(gid).nunique() >= 2).to_numpy() & finite
        for val in pd.unique(v.dropna()):
            mine = (v == val).to_numpy()
            credit = pd.Series((is_top & mine) / np.maximum(k, 1)).groupby(gid).sum().to_numpy()
            share = pd.Series(mine.astype(float)).groupby(gid).mean().to_numpy()
            present = pd.Series(mine).groupby(gid).any().to_numpy()
            use = varies & present
            cols[f"top:{a}={val}"] = np.where(use, credit, np.nan)
            cols[f"share:{a}={val}"] = np.where(use, share, np.nan)
    return pd.concat([out, pd.DataFrame(cols)], axis=1)


def _boot(x: np.ndarray, B: int, rng: np.random.Generator, ys: np.ndarray | None = None) -> list[np.ndarray]:
    """Bootstrap means over units (rows of x; and of ys with the same draws)."""
    n = len(x)
    outs_x, outs_y = [], []
    chunk = max(1, int(2_000_000 // max(n, 1)))
    done = 0
    while done < B:
        b = min(chunk, B - done)
        idx = rng.integers(0, n, size=(b, n))
        outs_x.append(x[idx].mean(axis=1))
        if ys is not None:
            outs_y.append(ys[idx].mean(axis=1))
        done += b
    return [np.concatenate(outs_x), *( [np.concatenate(outs_y)] if ys is not None else [])]


def summarise(sets: pd.DataFrame, attrs: Sequence[str], *, confidence: float = 0.95, bootstrap: int = 1000,
              seed: int = 0, small: int = 30) -> pd.DataFrame:
    """The long ``counterfactual.csv`` table from :func:`set_rows`: for every taxonomy x target
    label, overall (subject and varies ``all``), per ``varies`` and per subject."""
    from ..stats.metrics import wilson_interval

    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    q = [100 * alpha, 100 * (1 - alpha)]
    rows: list[dict[str, Any]] = []
    top_cols = [c for c in sets.columns if c.startswith("top:")]

    def add(base: dict[str, Any], metric: str, value: float, lo: float, hi: float, n: int, **extra: Any) -> None:
        rows.append({"analysis": "counterfactual", **base, "metric": metric, "value": value, "ci_low": lo,
                     "ci_high": hi, "n_sets": n, "direction": DIRECTION[metric], "small": n < small, **extra})

    for (tax, label), g in sets.groupby(["taxonomy", "label"], sort=False):
        groups = [(ALL, ALL, g)]
        groups += [(ALL, v, part) for v, part in g.groupby("varies", sort=True)] if g["varies"].nunique() > 1 else []
        groups += [(s, ALL, part) for s, part in g.groupby("subject", sort=True)] if g["subject"].nunique() > 1 else []
        for subject, varies, part in groups:
            base = {"taxonomy": tax, "label": label, "subject": subject, "varies": varies, "attribute": "",
                    "attribute_value": ""}
            n = len(part)
            if label == _first_label(sets, tax):  # flip does not depend on the target: once per taxonomy
                c = int(part["flip"].sum())
                lo, hi = wilson_interval(c, n, confidence)
                add({**base, "label": ""}, "flip", c / n, float(lo), float(hi), n)
            d = part["delta_p"].dropna().to_numpy(float)
            if len(d):
                if bootstrap and len(d) > 1:
                    bm = _boot(d, bootstrap, rng)[0]
                    lo, hi = np.percentile(bm, q)
                else:
                    lo = hi = np.nan
                add(base, "delta_p", float(d.mean()), float(lo), float(hi), len(d))
            for col in top_cols:
                attr, value = col[4:].split("=", 1)
                sub = part[part[col].notna()]
                if not len(sub):
                    continue
                x = sub[col].to_numpy(float)
                e = sub[f"share:{attr}={value}"].to_numpy(float)
                lo = hi = dlo = dhi = np.nan
                if bootstrap and len(x) > 1:
                    bx, bd = _boot(x, bootstrap, rng, x - e)
                    lo, hi = np.percentile(bx, q)
                    dlo, dhi = np.percentile(bd, q)
                favoured = ("favoured" if dlo > 0 else "disfavoured" if dhi < 0 else "") if np.isfinite(dlo) else ""
                add({**base, "attribute": attr, "attribute_value": value}, "top_member_rate", float(x.mean()),
                    float(lo), float(hi), len(x), expected=float(e.mean()), diff_low=float(dlo),
                    diff_high=float(dhi), favoured=favoured)
    out = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in out.columns:
            out[c] = pd.Series(dtype=object)
    out["favoured"] = out["favoured"].fillna("")
    return out[COLUMNS]


def _first_label(sets: pd.DataFrame, tax: str) -> str:
    return str(sets.loc[sets["taxonomy"] == tax, "label"].iloc[0])


# ---------------------------------------------------------------------------- report

def _f(x: Any, d: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(x) else f"{x:.{d}f}"


def _ci(r: Any) -> str:
    return f"{_f(r.value)} [{_f(r.ci_low)}, {_f(r.ci_high)}]"


def section(table: pd.DataFrame, sets: pd.DataFrame, out: Path, confidence: float, top: int, small: int) -> Any:
    from ..report.document import Bullets, Figure, Note, Section, Table, Text, inline_markdown as md

    pct = f"{100 * confidence:g}%"
    n_sets = int(sets["set_id"].nunique())
    blocks: list[Any] = [Text(
        f"{n_sets} counterfactual sets: images that differ only in the attribute(s) named under *varies*. "
        "For each set, **delta_p** is the largest minus the smallest probability the model gives its members for "
        "one label (the set's own subject, or a category declared a harm); **flip** says whether the members get "
        "different top labels; **top_member_rate** is how often the member with a given attribute value scores "
        f"highest, against that value's share of the members (*expected*). Intervals are {pct} intervals over "
        f"sets (Wilson for flip, a bootstrap resampling sets otherwise); rows over fewer than {small} sets are "
        "marked (small) and not headlined.")]
    d = table[(table["metric"] == "delta_p")].copy()
    big = d[~d["small"].astype(bool)].sort_values("value", ascending=False, kind="stable").head(top)
    lead = _lead(table, big, pct)
    if lead:
        blocks.append(Text(lead))
    if len(big):
        blocks.append(Text("In the tables, *label* is the label whose probability is compared: `(subject)` is the "
                           "set's own subject (e.g. \"a photo of a doctor.\" for a doctor set), other labels are "
                           "categories a taxonomy declares harmful; *subject* and *varies* = all mean every set."))
        blocks.append(Table(["taxonomy", "label", "subject", "varies", "mean delta_p [CI]", "sets"],
                            [[md(r.taxonomy), md(r.label), md(r.subject), md(r.varies), _ci(r), int(r.n_sets)]
                             for r in big.itertuples()], align="llllrr",
                            caption="Largest within-set effects: mean delta_p, largest first"))
    elif len(d):
        blocks.append(Note(f"Every delta_p row covers fewer than {small} sets; see counterfactual.csv.", "warning"))
    fav = table[(table["metric"] == "top_member_rate") & (table["favoured"] != "")].copy()
    if len(fav):
        fav = fav.assign(gap=(fav["value"] - fav["expected"]).abs()).sort_values("gap", ascending=False).head(top)
        blocks.append(Table(["taxonomy", "label", "subject", "varies", "attribute", "value", "rate [CI]", "expected",
                             "reading", "sets"],
                            [[md(r.taxonomy), md(r.label), md(r.subject), md(r.varies), md(r.attribute),
                              md(r.attribute_value), _ci(r), _f(r.expected), r.favoured + (" (small)" if r.small else ""),
                              int(r.n_sets)] for r in fav.itertuples()], align="llllllrrlr",
                            caption="Attribute values whose member scores highest more (favoured) or less "
                                    "(disfavoured) often than their share: the bootstrap interval of rate - expected "
                                    "excludes 0"))
    else:
        blocks.append(Text("No attribute value's top-member rate differs from its share of the members (every "
                           "interval of rate - expected includes 0)."))
    fl = table[(table["metric"] == "flip") & (table["subject"] == ALL)]
    if len(fl):
        blocks.append(Table(["taxonomy", "varies", "flip [CI]", "sets"],
                            [[md(r.taxonomy), md(r.varies), _ci(r) + (" (small)" if r.small else ""), int(r.n_sets)]
                             for r in fl.itertuples()], align="llrr",
                            caption="Share of sets whose members get different top labels"))
    blocks += _pooled_blocks(table, pct)
    for name, cap in ((DELTA_PNG, "delta_p per set, by the attribute that varies"),
                      (TOP_PNG, "top_member_rate per attribute value (with intervals) against its share (x)")):
        if (out / name).is_file():
            blocks.append(Figure(name, cap, cap))
    blocks.append(Bullets(["counterfactual.csv: every row (overall, per varies, per subject) with n_sets and "
                           "direction", "counterfactual_sets.parquet: one row per set and label (members, scores, "
                           "top labels)", "counterfactual_retrieval.csv: every pooled ranking's retrieval rows (shares, "
                           "skews, MaxSkew, NDKL) with their tests"]))
    return Section("Counterfactual sets", blocks, anchor="counterfactual")


def _lead(table: pd.DataFrame, big: pd.DataFrame, pct: str) -> str:
    """One or two sentences in words: the largest mean delta_p and the most favoured attribute
    value (neither from a small row)."""
    out = []
    if len(big):
        r = big.iloc[0]
        what = "its own subject" if r["label"] == SUBJECT_LABEL else f"'{r['label']}' ({r['taxonomy']})"
        where = ("" if r["subject"] == ALL else f" {r['subject']}") + " sets" + (
            "" if r["varies"] == ALL else f" that vary {r['varies']}")
        out.append(f"**Largest within-set effect:** in{where}, the members' probabilities for {what} differ by "
                   f"{_f(r['value'])} on average (largest minus smallest member; {pct} CI {_f(r['ci_low'])} to "
                   f"{_f(r['ci_high'])}; {int(r['n_sets'])} sets).")
    fav = table[(table["metric"] == "top_member_rate") & (table["favoured"] == "favoured")
                & ~table["small"].astype(bool)]
    if len(fav):
        r = fav.assign(gap=fav["value"] - fav["expected"]).sort_values("gap", ascending=False, kind="stable").iloc[0]
        what = "its own subject" if r["label"] == SUBJECT_LABEL else f"'{r['label']}' ({r['taxonomy']})"
        where = "" if r["subject"] == ALL else f" {r['subject']}"
        out.append(f"**Most favoured value:** the {r['attribute']}={r['attribute_value']} member scores highest for "
                   f"{what} in {100 * r['value']:.1f}% of the{where} sets where {r['attribute']} varies ({pct} CI {100 * r['ci_low']:.1f}% to "
                   f"{100 * r['ci_high']:.1f}%; {int(r['n_sets'])} sets), against {100 * r['expected']:.1f}% if the "
                   "value made no difference.")
    return " ".join(out)


def _pooled_blocks(table: pd.DataFrame, pct: str) -> list[Any]:
    """The pooled-ranking MaxSkew@K rows: the mean over subjects per kind of set, attribute and K,
    and the subjects whose test of no association survives the adjustment."""
    from ..report.document import Table, Text, inline_markdown as md

    if "k" not in table.columns:
        return []
    ms = table[table["metric"].astype(str).str.startswith("max_skew@") & (table["taxonomy"] == SUBJECT_TAXONOMY)]
    if not len(ms):
        return []
    mean = ms[ms["subject"] == ALL]
    per = ms[ms["subject"] != ALL]
    sig = per[per["significant"].astype(bool)]
    out: list[Any] = [Text(
        "**Pooled rankings** (SocialCounterfactuals' MaxSkew@K): for each subject and kind of set, all the "
        "subject's images ranked by similarity to its neutral query (\"a photo of a doctor.\"); MaxSkew@K is the "
        "largest log-ratio of an attribute value's share of the top K to its share of the ranked images (0 = "
        "the top K mirrors the pool; an absent value counts 0). Each subject's value is tested against random "
        "rankings of the same images (the null mean is what chance gives), adjusted over all subjects; "
        f"{len(sig)} of {len(per)} subject rows differ from chance after adjustment.")]
    out.append(Table(["varies", "attribute", "K", f"mean MaxSkew@K [{pct} CI]", "SD", "null mean", "subjects",
                      "sets"],
                     [[md(r.varies), md(r.attribute), str(r.k), _ci(r) + (" (small)" if r.small else ""), _f(r.sd),
                       _f(r.null_mean), int(r.n_subjects), int(r.n_sets)] for r in mean.itertuples()],
                     align="llrrrrrr", caption="Mean over subjects of MaxSkew@K (bootstrap over subjects)"))
    if len(sig):
        top = sig.sort_values("value", ascending=False).head(10)
        out.append(Table(["subject", "varies", "attribute", "K", "MaxSkew@K", "null mean", "p (adjusted)", "sets"],
                         [[md(r.subject), md(r.varies), md(r.attribute), str(r.k), _f(r.value), _f(r.null_mean),
                           _f(r.p_adjusted, 4), int(r.n_sets)] for r in top.itertuples()], align="llllrrrr",
                         caption="Subjects whose pooled ranking is skewed beyond chance (largest first)"))
    return out


def _headline(sets: pd.DataFrame) -> tuple[str, str] | None:
    s = sets[sets["delta_p"].notna()]
    if not len(s):
        return None
    tax = SUBJECT_TAXONOMY if (s["taxonomy"] == SUBJECT_TAXONOMY).any() else str(s["taxonomy"].iloc[0])
    sub = s[s["taxonomy"] == tax]
    return tax, str(sub["label"].iloc[0])


def plots(sets: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[Path]:
    """delta_p per set by varies (the subject taxonomy, else the first taxonomy's first target)
    and the overall top_member_rate of each attribute value with its interval and share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import save_figure

    paths: list[Path] = []
    h = _headline(sets)
    if h is None:
        return paths
    tax, label = h
    s = sets[(sets["taxonomy"] == tax) & (sets["label"] == label) & sets["delta_p"].notna()]
    groups = [(v, part["delta_p"].to_numpy(float)) for v, part in s.groupby("varies", sort=True)]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * max(len(groups), 1) + 1))
    ax.boxplot([g[1] for g in groups], vert=False)
    ax.set_yticks(np.arange(1, len(groups) + 1), [f"{g[0]} (n={len(g[1])})" for g in groups])
    ax.set_xlabel("delta_p (max - min probability within a set)")
    ax.set_title(f"{tax}: {label}")
    save_figure(fig, out / DELTA_PNG)
    plt.close(fig)
    paths.append(out / DELTA_PNG)
    t = table[(table["metric"] == "top_member_rate") & (table["taxonomy"] == tax) & (table["subject"] == ALL)
              & (table["varies"] == ALL) & (table["label"] == label)]
    if len(t):
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(t) + 1))
        y = np.arange(len(t))
        v = t["value"].to_numpy(float)
        lo = np.nan_to_num(v - t["ci_low"].to_numpy(float))
        hi = np.nan_to_num(t["ci_high"].to_numpy(float) - v)
        ax.errorbar(v, y, xerr=[lo, hi], fmt="o", label="top_member_rate")
        ax.scatter(t["expected"].to_numpy(float), y, marker="x", color="k", label="share (expected)")
        ax.set_yticks(y, [f"{a}={b}" for a, b in zip(t["attribute"], t["attribute_value"])])
        ax.set_xlabel("share of sets whose top member has the value")
        ax.legend(loc="best", fontsize=8)
        save_figure(fig, out / TOP_PNG)
        plt.close(fig)
        paths.append(out / TOP_PNG)
    return paths


# ---------------------------------------------------------------------------- caption sets (VisoGender)

#: the attributes of a caption-set dataset (clipfair.data.counterfactual_layouts.visogender)
CAPTION_COLUMNS = ("subject", "other", "scene", "occupation_gender", "participant_gender", "gender_pair")
PRONOUNS = {"masculine": "his", "feminine": "her", "neutral": "their"}
TEMPLATES = {"occupation_first": ("The {occupation} and {pronoun} {other}", "occupation_gender"),
             "participant_first": ("The {other} and {pronoun} {occupation}", "participant_gender")}


def caption_rows(ctx: RunContext) -> pd.DataFrame:
    """One row per image x template: the three captions that differ only in the pronoun (his /
    her / their), their cosine similarities with the image, the pronoun of the referent's
    perceived gender, the highest-scoring pronoun and ``correct`` (the referent's pronoun scores
    strictly highest; "their" is never correct). One-person images (occupation + object) have
    the occupation-first template only."""
    t = ctx.table.reset_index(drop=True)
    emb = np.asarray(ctx.image_embeddings, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rows = []
    for name, (tpl, ref_col) in TEMPLATES.items():
        use = t[ref_col].notna().to_numpy() & (t["scene"] == "two-person").to_numpy() if name == "participant_first" \
            else t["occupation_gender"].notna().to_numpy()
        sub = t[use]
        if not len(sub):
            continue
        caps = {k: [tpl.format(occupation=o, other=x, pronoun=p) for o, x in zip(sub["subject"], sub["other"])]
                for k, p in PRONOUNS.items()}
        e = emb[use]
        sc = {k: np.einsum("ij,ij->i", e, ctx.encode_text(v)) for k, v in caps.items()}
        S = np.stack([sc[k] for k in PRONOUNS], axis=1)
        order = list(PRONOUNS)
        want = np.array([order.index(g) for g in sub[ref_col]])
        best = S.max(axis=1)
        strict = (S == best[:, None]).sum(axis=1) == 1
        correct = (S[np.arange(len(S)), want] == best) & strict
        rows.append(pd.DataFrame({
            "set_id": sub["set_id"].astype(str).to_numpy(), "image_id": sub["image_id"].astype(str).to_numpy(),
            "subject": sub["subject"].to_numpy(), "scene": sub["scene"].to_numpy(),
            "gender_pair": sub["gender_pair"].to_numpy(), "template": name,
            "referent_gender": sub[ref_col].to_numpy(),
            **{f"caption_{PRONOUNS[k]}": caps[k] for k in PRONOUNS},
            **{f"score_{PRONOUNS[k]}": sc[k] for k in PRONOUNS},
            "chosen": np.array([PRONOUNS[order[i]] for i in S.argmax(axis=1)]), "correct": correct.astype(int)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def caption_summary(rows: pd.DataFrame, confidence: float = 0.95, small: int = 30) -> pd.DataFrame:
    """Resolution accuracy per perceived gender (Wilson) and RA_m - RA_f (Newcombe), for every
    template (and both) x image group (all, one-person, two-person, same and different gender)."""
    from ..stats.metrics import wilson_interval
    from ..stats.inference import newcombe_diff

    out: list[dict[str, Any]] = []
    if not len(rows):
        return pd.DataFrame(columns=COLUMNS)
    groups = {"all": np.ones(len(rows), bool), "one-person": (rows["scene"] == "one-person").to_numpy(),
              "two-person": (rows["scene"] == "two-person").to_numpy(),
              "same-gender": (rows["gender_pair"] == "same").to_numpy(),
              "different-gender": (rows["gender_pair"] == "different").to_numpy()}
    for tpl in ["all", *TEMPLATES]:
        in_t = np.ones(len(rows), bool) if tpl == "all" else (rows["template"] == tpl).to_numpy()
        for gname, mask in groups.items():
            part = rows[in_t & mask]
            if not len(part):
                continue
            base = {"analysis": "counterfactual", "taxonomy": "visogender", "label": tpl, "subject": ALL,
                    "varies": gname, "attribute": "referent_gender", "expected": np.nan, "diff_low": np.nan,
                    "diff_high": np.nan, "favoured": ""}
            xs = {}
            for g in ("masculine", "feminine"):
                c = part.loc[part["referent_gender"] == g, "correct"]
                n, x = len(c), int(c.sum())
                xs[g] = (x, n)
                if n:
                    lo, hi = wilson_interval(x, n, confidence)
                    out.append({**base, "attribute_value": g, "metric": "resolution_accuracy", "value": x / n,
                                "ci_low": float(lo), "ci_high": float(hi), "n_sets": n,
                                "direction": HIGHER, "small": n < small})
            (xm, nm), (xf, nf) = xs["masculine"], xs["feminine"]
            if nm and nf:
                lo, hi = newcombe_diff(xm, nm, xf, nf, confidence)
                out.append({**base, "attribute_value": "masculine - feminine", "metric": RA_GAP,
                            "value": xm / nm - xf / nf, "ci_low": float(np.ravel(lo)[0]),
                            "ci_high": float(np.ravel(hi)[0]), "n_sets": nm + nf, "direction": NEUTRAL,
                            "small": min(nm, nf) < small})
    return pd.DataFrame(out)[COLUMNS]


def caption_section(table: pd.DataFrame, rows: pd.DataFrame, confidence: float, small: int) -> Any:
    from ..report.document import Section, Table, Text, inline_markdown as md

    pct = f"{100 * confidence:g}%"
    blocks: list[Any] = [Text(
        f"Caption sets (VisoGender): for each of {rows['image_id'].nunique() if len(rows) else 0} images, captions "
        "that differ only in the pronoun (\"The doctor and his / her / their patient\"). **Resolution accuracy** is "
        "the share of images whose caption with the pronoun of the referent's perceived gender scores highest "
        f"(\"their\" counts as wrong), per perceived gender with {pct} Wilson intervals; the **gap** RA_masculine - "
        f"RA_feminine has a Newcombe interval. Groups with fewer than {small} images per gender are marked (small).")]
    gap = table[table["metric"] == RA_GAP].copy()
    ra = table[table["metric"] == "resolution_accuracy"]
    if len(gap):
        gap = gap.assign(a=gap["value"].abs(), s=gap["small"].astype(bool)).sort_values(["s", "a"],
                                                                                        ascending=[True, False])
        cells = []
        for r in gap.itertuples():
            def one(g: str) -> str:
                m = ra[(ra["label"] == r.label) & (ra["varies"] == r.varies) & (ra["attribute_value"] == g)]
                return f"{_ci(m.iloc[0])} (n={int(m.iloc[0].n_sets)})" if len(m) else "n/a"
            cells.append([md(r.label), md(r.varies), one("masculine"), one("feminine"),
                          _ci(r) + (" (small)" if r.small else "")])
        blocks.append(Table(["template", "images", "RA masculine [CI]", "RA feminine [CI]", "gap m - f [CI]"], cells,
                            align="llrrr", caption="Resolution accuracy by perceived gender, largest gap first"))
    ret = table[(table["label"] == "retrieval") & (table["subject"] == ALL)] if "sd" in table.columns else table[:0]
    if len(ret):
        per = table[(table["label"] == "retrieval") & (table["subject"] != ALL) & table["p_value"].notna()]
        sig = per[per["significant"].astype(bool)]
        blocks.append(Text(
            "**Retrieval** (VisoGender's Bias@K, MaxSkew@K, NDKL): each occupation's own images ranked by the "
            "neutral caption (\"The doctor and their patient\"), by the occupation's perceived gender. Bias@K = "
            "(masculine - feminine) / (masculine + feminine) in the top K (> 0: masculine images ranked first); "
            "MaxSkew@K and NDKL measure how far the top of the ranking departs from the occupation's own gender "
            f"mix (0 = none). Mean and SD over occupations as VisoGender reports them, with a {pct} bootstrap "
            f"interval over occupations; {len(sig)} of {len(per)} per-occupation tests differ from random rankings "
            "after adjustment."))
        names = [m for m in ("bias@5", "bias@10", "max_skew@5", "max_skew@10", "ndkl") if m in set(ret["metric"])]
        cells = []
        for qs, g in ret.groupby("varies", sort=False):
            by = {r.metric: r for r in g.itertuples()}
            n_occ = int(g["n_subjects"].iloc[0])
            cells.append([md(qs), f"{n_occ}{' (small)' if bool(g['small'].iloc[0]) else ''}"] +
                         [f"{_f(by[m].value)} ± {_f(by[m].sd)} [{_f(by[m].ci_low)}, {_f(by[m].ci_high)}]"
                          if m in by else "n/a" for m in names])
        blocks.append(Table(["images / template", "occupations", *names], cells, align="lr" + "r" * len(names),
                            caption="Retrieval bias: mean ± SD over occupations [CI of the mean]"))
    return Section("Counterfactual caption sets (VisoGender)", blocks, anchor="counterfactual-captions")
