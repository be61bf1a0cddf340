"""The one place that wires the stages together.

dataset -> image embeddings (cached) -> taxonomy class embeddings -> logits -> predictions
-> per-group metrics -> tables/plots. Everything here takes typed objects; Hydra lives in
:mod:`clipfair.cli`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from . import metrics as M
from .cache import unwritable_reason
from .data.base import FaceDataset
from .data.images import ImageError
from .distributed import Dist, DistributedError, shard_indices
from .embed import EmbedStats, ImageEmbeddings, TextEmbedder, embed_images, open_stores
from .models import ImageTextModel, Scoring
from .record import write_json
from .taxonomy import Taxonomy, check_target
from .zeroshot import check_prompt_lengths, class_embeddings, zero_shot_predictions

log = logging.getLogger(__name__)

DISCLAIMER = ("clipfair measures how a model's outputs differ across demographic groups of a face "
              "dataset. It is not for surveillance, face recognition or identifying people; prompts "
              "are English only.")


@dataclass
class Evaluation:
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    disparities: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    retrieval: pd.DataFrame | None = None  # clipfair.retrieval's long table, when requested
    #: confusion counts of target taxonomies (metrics.CONFUSION_COLUMNS)
    confusion: pd.DataFrame | None = None


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - t0, 4)


def predict_taxonomies(table: pd.DataFrame, image_embeddings: np.ndarray, taxonomies: Sequence[Taxonomy],
                       encode_texts: TextEmbedder, scoring: Scoring,
                       attributes: Sequence[str]) -> pd.DataFrame:
    """Zero-shot predictions for every taxonomy on the same (cached) image embeddings, scored
    by the model family's own rule."""
    if not taxonomies:  # e.g. a retrieval-only run
        return pd.DataFrame(columns=["image_id", "taxonomy", "method", "predicted_label", "predicted_category",
                                     "score", "logit", "true_label", "correct", "true_rank", *attributes])
    frames = [zero_shot_predictions(table, image_embeddings, class_embeddings(t, encode_texts),
                                    scoring, attributes) for t in taxonomies]
    return pd.concat(frames, ignore_index=True)


def harms(taxonomies: Sequence[Taxonomy]) -> dict[str, dict[str, bool]]:
    """taxonomy -> category -> declared harm (see :meth:`Taxonomy.harm`)."""
    return {t.name: dict(t.harms) for t in taxonomies}


def score(predictions: pd.DataFrame, taxonomies: Sequence[Taxonomy], slices: Sequence[Any] = M.DEFAULT_SLICES,
          confidence: float = 0.95, disparity_min_n: int = M.DEFAULT_DISPARITY_MIN_N,
          disparity_correction: str = "holm", *, orders: dict[str, Sequence[str]] | None = None,
          topk: Sequence[int] = (), small_n: int = M.SMALL_GROUP_N) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics, and disparities over groups with at least ``disparity_min_n`` images
    (directions from the taxonomies' declarations, p-values adjusted over the whole table).
    ``orders``: the dataset's declared value orders; ``topk``, ``small_n``: see group_metrics."""
    cats = {t.name: t.categories for t in taxonomies}
    met = M.group_metrics(predictions, cats, slices=slices, confidence=confidence,
                          labels={t.name: t.labels for t in taxonomies}, orders=orders, topk=topk,
                          small_n=small_n)
    return met, M.disparities(met, min_n=disparity_min_n, harms=harms(taxonomies), confidence=confidence,
                              correction=disparity_correction)


def confusion(predictions: pd.DataFrame, taxonomies: Sequence[Taxonomy], slices: Sequence[Any],
              orders: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Confusion counts by group of the target taxonomies (right class x predicted label)."""
    targets = [t for t in taxonomies if t.target]
    preds = predictions[predictions["taxonomy"].isin([t.name for t in targets])]
    return M.confusion(preds, slices, orders=orders, labels={t.name: t.labels for t in targets},
                       true_class={t.name: {v: c.label for c in t.classes for v in c.correct_for}
                                   for t in targets})


def check_run(dataset: FaceDataset, taxonomies: Sequence[Taxonomy], slices: Sequence[Any] | str) -> list[Any]:
    """The slices resolved against the dataset's attributes, after checking every target
    taxonomy's labels against the dataset's declared values (errors name the slice or the
    taxonomy file and class)."""
    declared = {a.name: tuple(a.values) for a in dataset.declared}
    for t in taxonomies:
        check_target(t, declared, f"dataset {dataset.name!r}")
    return M.resolve_slices(slices, dataset.attributes, f"dataset {dataset.name!r}")


def evaluate(dataset: FaceDataset, model: ImageTextModel, taxonomies: Sequence[Taxonomy], *,
             cache_dir: Path | str | None = None, slices: Sequence[Any] | str = "auto",
             confidence: float = 0.95, batch_size: int | None = None, num_workers: int | str = 0,
             chunk_size: int = 2048, on_error: str = "raise", progress: bool = True,
             stats: EmbedStats | None = None, probe_train: FaceDataset | None = None,
             probe_options: dict[str, Any] | None = None,
             embed_options: dict[str, Any] | None = None, disparity_min_n: int = M.DEFAULT_DISPARITY_MIN_N,
             disparity_correction: str = "holm",
             topk: Sequence[int] = (), small_group_n: int = M.SMALL_GROUP_N,
             retrieval: Any = None, query_sets: Sequence[Any] = (),
             precision_audit: dict[str, Any] | None = None) -> Evaluation:
    """Zero-shot evaluation of ``taxonomies`` on ``dataset`` (images encoded once), plus
    linear probes for every target taxonomy when a ``probe_train`` split is given, plus
    retrieval bias (:mod:`clipfair.retrieval`) of ``query_sets`` when ``retrieval`` options
    are given (same image embeddings, same cached text embedder).
    ``slices``: a list, or "auto" (see :func:`clipfair.metrics.resolve_slices`); a slice
    naming an attribute the dataset lacks is an error. ``topk``: k of top-k accuracy;
    ``small_group_n``: groups with fewer images are flagged ``small``.
    ``embed_options``: more keyword arguments of :func:`clipfair.embed.embed_images`
    (fast_preprocess, fast_decode, gpu_decode, compile). ``precision_audit``: ``{n, seed}`` of
    :func:`clipfair.precision.run_precision_audit` (recorded as ``info["precision"]``)."""
    timings: dict[str, float] = {}
    slices = check_run(dataset, taxonomies, slices)
    for t in [*taxonomies, *(q.as_taxonomy() for q in query_sets)]:  # fail fast, before any image is encoded
        check_prompt_lengths(t, model.token_count, model.context_length)
        if t.target and t.target not in dataset.attributes:
            log.warning("taxonomy %s: dataset %r has no %r attribute (its attributes: %s); evaluated "
                        "without accuracy", t.name, dataset.name, t.target, ", ".join(dataset.attributes))
    if cache_dir is not None and (why := unwritable_reason(cache_dir)) is not None:
        log.warning("cache folder %s cannot be written (%s); running without the cache", cache_dir, why)
        cache_dir = None
    image_store, text_store = open_stores(model, cache_dir)
    # the same embedding settings for the evaluation split and the probe's train split
    embed_kw = dict(batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size,
                    on_error=on_error, progress=progress, stats=stats, **(embed_options or {}))
    with timed(timings, "embed_images"):
        emb: ImageEmbeddings = embed_images(dataset, model, image_store, **embed_kw)
    table = dataset.table.iloc[emb.indices].reset_index(drop=True)
    texts = TextEmbedder(model, text_store, stats)
    with timed(timings, "zero_shot"):
        preds = predict_taxonomies(table, emb.embeddings, taxonomies, texts, model.scoring,
                                   dataset.attributes)
    info: dict[str, Any] = {"embed_images": emb.info,
                            "scoring": {"family": model.family, **model.scoring.describe()}}
    if precision_audit is not None:
        from .precision import run_precision_audit

        with timed(timings, "precision_audit"):
            info["precision"] = run_precision_audit(
                dataset, model, emb.indices, lambda: {t.name: class_embeddings(t, texts).weights for t in taxonomies},
                confidence=confidence, **precision_audit)
    retrieval_table = None
    if retrieval is not None:
        from .retrieval import retrieval_bias

        with timed(timings, "retrieval"):
            retrieval_table = retrieval_bias(table, emb.embeddings, query_sets, texts, retrieval,
                                             attributes=dataset.attributes, orders=dataset.value_orders())
        info["retrieval"] = {**retrieval.to_dict(), "query_sets": [
            {"name": q.name, "source": q.source, "fingerprint": q.fingerprint()} for q in query_sets]}
    skipped = {**dataset.skipped}
    if probe_train is not None:
        probe_preds, info["linear_probe"], train_emb = linear_probes(
            probe_train, model, image_store, table, emb.embeddings, taxonomies, dataset.attributes,
            timings, embed_kw, probe_options or {}, eval_dataset=dataset, eval_indices=emb.indices)
        preds = pd.concat([preds, probe_preds], ignore_index=True)
        for k, v in {**probe_train.skipped, **train_emb.skipped}.items():
            skipped[f"train_{k}"] = skipped.get(f"train_{k}", 0) + v
    orders = dataset.value_orders()
    with timed(timings, "metrics"):
        met, disp = score(preds, taxonomies, slices, confidence, disparity_min_n, disparity_correction,
                          orders=orders, topk=topk, small_n=small_group_n)
        conf = confusion(preds, taxonomies, slices, orders)
    for k, v in emb.skipped.items():
        skipped[k] = skipped.get(k, 0) + v
    counts = {"images_in_dataset": len(dataset), "images_evaluated": len(emb.indices),
              "images_encoded": emb.encoded, "images_from_cache": emb.cached,
              "taxonomies": len(taxonomies)}
    if probe_train is not None:
        counts.update(train_images=len(probe_train), train_images_encoded=train_emb.encoded,
                      train_images_from_cache=train_emb.cached)
    info["slices"] = [M.slice_name(s) for s in slices]
    return Evaluation(preds, met, disp, timings, skipped, counts, emb.errors, info, retrieval_table,
                      confusion=conf)


def embed_shard(dataset: FaceDataset, model: ImageTextModel, cache_dir: Path | str | None, dist: Dist, *,
                probe_train: FaceDataset | None = None, probe_features: str = "projected",
                batch_size: int | None = None, **embed_kw: Any) -> dict[str, Any]:
    """The sharding hook of a multi-process run: this process encodes its share of every
    split it will need (whole batches, round-robin: :func:`clipfair.distributed.shard_indices`)
    into the shared content-addressed cache: the evaluation split and, with a linear probe, the
    train split (both through :class:`~clipfair.linear_probe.PreProjectionView` for
    ``probe_features=pre_projection``, as :func:`linear_probes` encodes them). After a barrier,
    rank 0 runs :func:`evaluate`, which then finds every embedding in the cache. ``embed_kw``:
    the keyword arguments of :func:`clipfair.embed.embed_images`. Returns what this rank did."""
    why = "the cache is off" if cache_dir is None else unwritable_reason(cache_dir)
    if why is not None:
        raise DistributedError(
            f"a run over {dist.world_size} processes shares embeddings through the cache, but {why}: set "
            "cache.enabled=true and cache.dir to a folder every process can write")
    image_store, _ = open_stores(model, cache_dir)
    jobs: list[tuple[FaceDataset, Any, Any]] = [(dataset, model, image_store)]
    if probe_train is not None and probe_features == "pre_projection":
        from .embed import _variant_store
        from .linear_probe import PreProjectionView

        view, fstore = PreProjectionView(model), _variant_store(image_store, {"features": probe_features})
        jobs += [(dataset, view, fstore), (probe_train, view, fstore)]
    elif probe_train is not None:
        jobs.append((probe_train, model, image_store))
    bs = int(batch_size or model.batch_size)
    done: list[dict[str, Any]] = []
    for ds, encoder, store in jobs:
        rows = shard_indices(len(ds), dist.rank, dist.world_size, bs)
        entry: dict[str, Any] = {"dataset": ds.name, "split": ds.source.get("split"), "rows": len(rows),
                                 "features": "pre_projection" if encoder is not model else "projected"}
        if rows:
            shard = FaceDataset(ds.name, ds.table.iloc[rows].copy(), ds.reader.subset(rows),
                                {**ds.source, "shard": [dist.rank, dist.world_size]}, dict(ds.skipped))
            try:
                emb = embed_images(shard, encoder, store, batch_size=bs, **embed_kw)
                entry.update(encoded=emb.encoded, from_cache=emb.cached)
            except ImageError:
                if embed_kw.get("on_error", "raise") != "skip":
                    raise
                entry["unreadable"] = True  # a shard of only unreadable images; rank 0 reports them
        done.append(entry)
    return {"rank": dist.rank, "batch_size": bs, "shards": done}


def linear_probes(train: FaceDataset, model: ImageTextModel, store: Any, eval_table: pd.DataFrame,
                  eval_embeddings: np.ndarray, taxonomies: Sequence[Taxonomy], attributes: Sequence[str],
                  timings: dict[str, float], embed_kw: dict[str, Any], options: dict[str, Any],
                  eval_dataset: FaceDataset | None = None,
                  eval_indices: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, Any], ImageEmbeddings]:
    """Fit a probe per target taxonomy on ``train``'s (cached) features; predict eval.
    ``options["features"]``: ``projected`` (the zero-shot embeddings, L2-normalised) or
    ``pre_projection`` (the image tower's output before the projection, unnormalised; both
    splits are encoded once more through :class:`~clipfair.linear_probe.PreProjectionView`)."""
    from .embed import _variant_store
    from .linear_probe import FEATURES, PreProjectionView, fit_probe, probe_predictions

    targets = [t for t in taxonomies if t.target]
    if not targets:
        raise ValueError("linear probe requested but no taxonomy has a target (e.g. fairface_race)")
    options = dict(options)
    features = str(options.pop("features", "projected"))
    if features not in FEATURES:
        raise ValueError(f"probe.features must be one of {', '.join(FEATURES)}, got {features!r}")
    encoder, fstore, eval_feats = model, store, eval_embeddings
    if features == "pre_projection":
        encoder = PreProjectionView(model)
        fstore = _variant_store(store, {"features": features}) if store is not None else None
        if eval_dataset is None or eval_indices is None:
            raise ValueError("probe.features=pre_projection needs the evaluation dataset")
        with timed(timings, "embed_eval_pre_projection"):
            eemb = embed_images(eval_dataset, encoder, fstore, **embed_kw)
        pos = {int(i): j for j, i in enumerate(eemb.indices)}
        eval_feats = eemb.embeddings[[pos[int(i)] for i in eval_indices]]
    with timed(timings, "embed_train"):
        temb = embed_images(train, encoder, fstore, **embed_kw)
    ttable = train.table.iloc[temb.indices].reset_index(drop=True)
    frames, info = [], {"n_train_images": int(len(temb.indices)), "features": features}
    with timed(timings, "linear_probe"):
        for t in targets:
            if t.target not in ttable.columns or t.target not in eval_table.columns:
                log.warning("linear probe for %s skipped: the dataset has no %r column", t.name, t.target)
                info[t.name] = {"skipped": f"the dataset has no {t.target!r} column"}
                continue
            fit = fit_probe(t, temb.embeddings, ttable[t.target].tolist(), features=features,
                            normalize=features == "projected", **options)
            frames.append(probe_predictions(fit, eval_table, eval_feats, attributes))
            info[t.name] = {"C": fit.C, "holdout_accuracy": fit.holdout_accuracy, "n_train": fit.n_train,
                            "fit_seconds": round(fit.fit_seconds, 3), **fit.info}
    preds = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id", "taxonomy"])
    return preds, info, temb


def report_context(ev: Evaluation, record: dict[str, Any], taxonomies: Sequence[Taxonomy] = (),
                   demo: bool = False) -> "ReportContext":
    """The report's header and reading rules from run.json's record and the taxonomies."""
    from . import __version__
    from .report import ReportContext

    model = record.get("model") or {}
    data = record.get("dataset") or {}
    name = str(model.get("name_or_path", "")) or "model"
    label = "toy demo model" if demo else Path(name).name if Path(name).is_absolute() else name
    source = data.get("source")
    if isinstance(source, dict):
        source = ", ".join(f"{k}={v}" for k, v in source.items() if v not in (None, "", [], {}))
    header: list[tuple[str, str]] = [("model", f"`{name}`")]
    for key in ("family", "scoring", "dtype", "device"):
        if key == "scoring" and ev.info.get("scoring"):
            continue  # the "zero-shot score" row below says it, with the family
        value = model.get(key)
        if isinstance(value, dict):  # a backend's scoring rule: {rule, logit_scale, logit_bias, formula}
            value = value.get("formula") or value.get("rule")
        if value not in (None, ""):
            header.append((key, str(value)))
    if data:
        header.append(("dataset", f"{data.get('name', '?')} ({source})" if source else str(data.get("name", "?"))))
    skipped = sum(ev.skipped.values())
    header.append(("images", f"{ev.counts.get('images_evaluated', '?')} evaluated, {skipped} skipped"))
    sc = ev.info.get("scoring")
    if sc:  # the family's own zero-shot rule (issue 9 backends)
        header.append(("zero-shot score", f"{sc.get('family', '?')}: {sc.get('formula', '?')}; the raw logit is "
                                          "in predictions.parquet"))
    if "train_images" in ev.counts:
        header.append(("linear-probe training images", str(ev.counts["train_images"])))
    header.append(("date", str(record.get("created", ""))))
    header.append(("clipfair", str((record.get("packages") or {}).get("clipfair") or __version__)))
    conf = ev.metrics.attrs.get("confidence")
    d = ev.disparities.attrs
    if conf and taxonomies:
        header.append(("intervals", f"Wilson {100 * conf:g}% for rates; differences compared between groups of "
                                    f"at least {d.get('min_n', M.DEFAULT_DISPARITY_MIN_N)} images, p-values adjusted "
                                    f"({d.get('correction', 'holm')}) over the whole table"))
    r = ev.info.get("retrieval")
    if r:
        header.append(("retrieval tests", f"each value's top-k count against no association (exact hypergeometric), "
                                          f"MaxSkew / NDKL against label shuffles; p-values adjusted "
                                          f"({r.get('correction', 'holm')}) within each family over the run"))
    return ReportContext(
        title=f"clipfair results: {label}" + (f" on {data.get('name')}" if data.get("name") else ""),
        model=label, header=header, demo=demo, disclaimer=DISCLAIMER, skipped=dict(ev.skipped),
        harms=harms(taxonomies), n_classes={t.name: len(t.classes) for t in taxonomies if t.target})


def variant_analyses(ev: Evaluation, taxonomies: Sequence[Taxonomy], out_dir: Path,
                     compare: dict[str, Any] | None = None,
                     slices: Sequence[Any] = M.DEFAULT_SLICES, model: str = "") -> tuple[list[Path], list["Section"]]:
    """Comparison of taxonomy variants (when ``compare`` is given) and prompt sensitivity
    (when taxonomies were expanded over template sets). Returns paths and report sections."""
    from .compare import compare_paired, comparison_sections, plot_keys, write_comparison
    from .sensitivity import write_sensitivity

    written: list[Path] = []
    sections: list[Any] = []
    confidence = float(ev.metrics.attrs.get("confidence", 0.95))
    if compare:
        names = [t.name for t in taxonomies]
        baseline = compare.get("baseline") or names[0]
        variants = compare.get("variants") or [n for n in names if n != baseline]
        for n in [baseline, *variants]:
            if n not in names:
                raise ValueError(f"compare: taxonomy {n!r} is not in this run; taxonomies: {', '.join(names)}")
        correction, alpha = compare.get("correction", "holm"), float(compare.get("alpha", 0.05))
        with timed(ev.timings, "compare"):
            cmp = compare_paired(ev.predictions, baseline, variants, {t.name: t.categories for t in taxonomies},
                                 slices, correction=correction, alpha=alpha, confidence=confidence)
            written += write_comparison(cmp, out_dir, correction, alpha, model=model)
        sections += comparison_sections(cmp, correction, alpha, max_rows=15, images=plot_keys(cmp))
    with timed(ev.timings, "sensitivity"):
        paths, secs = write_sensitivity(ev.metrics, out_dir, harms=harms(taxonomies), confidence=confidence,
                                        model=model,
                                        min_n=int(ev.disparities.attrs.get("min_n", M.DEFAULT_DISPARITY_MIN_N)))
    written += paths
    sections += secs
    return written, sections


def write_outputs(ev: Evaluation, out_dir: Path | str, record: dict[str, Any], demo: bool = False,
                  taxonomies: Sequence[Taxonomy] = (), compare: dict[str, Any] | None = None,
                  slices: Sequence[Any] = M.DEFAULT_SLICES,
                  model_card_sections: Sequence[Any] = ()) -> list[Path]:
    """predictions.parquet, metrics.csv, disparities.csv, plots, summary.md, report.html,
    run.json, and, for variant runs, comparison.* and sensitivity.* files.

    ``model_card_sections``: the model card as report sections (from
    :func:`clipfair.model_card.write_model_card`); they go into ``report.html`` only, under one
    heading, beside ``model_card.md``.
    Plots already in ``out_dir`` (e.g. the model card's) are shown in ``report.html`` too."""
    from .document import Section
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    p = out / "predictions.parquet"
    ev.predictions.to_parquet(p, index=False)
    written.append(p)
    tables = [("metrics.csv", ev.metrics), ("disparities.csv", ev.disparities)]
    if ev.confusion is not None and len(ev.confusion):
        tables.append(("confusion.csv", ev.confusion))
    for name, df in tables:
        df.to_csv(out / name, index=False, float_format="%.6g", lineterminator="\n")
        written.append(out / name)
    ctx = report_context(ev, record, taxonomies, demo)
    extra, sections = variant_analyses(ev, taxonomies, out, compare, slices, model=ctx.model)
    if ev.confusion is not None and len(ev.confusion):  # before the report: report.html shows the plots
        from .confusion import write_confusion_plots

        with timed(ev.timings, "report"):
            written += write_confusion_plots(ev.confusion, ev.metrics, out, {t.name: t.labels for t in taxonomies})
    written += extra
    html_only: list[Section] = []  # sections with a file of their own, also shown in report.html
    if ev.retrieval is not None:  # before the report: report.html shows its tables and plots
        from .report import header_blocks
        from .retrieval import retrieval_sections, write_retrieval

        with timed(ev.timings, "retrieval_report"):
            rsec = retrieval_sections(ev.retrieval, out, ev.info.get("retrieval"))
            written += write_retrieval(ev.retrieval, out, ev.info.get("retrieval"), intro=header_blocks(ctx),
                                       sections=rsec)
        html_only += rsec
    if model_card_sections:
        html_only.append(Section("Model card reproduction", list(model_card_sections)))
    with timed(ev.timings, "report"):
        written += write_report(ev.metrics, ev.disparities, out, ctx, extra_sections=sections,
                                html_sections=html_only)
    rec = {**record, "timings_s": ev.timings, "counts": ev.counts, "skipped": ev.skipped, **ev.info,
           "skipped_items": ev.errors[:1000]}
    write_json(out / "run.json", rec)
    written.append(out / "run.json")
    return written
