"""The one place that wires the stages together.

Layer: run.

dataset -> image embeddings (cached, once) -> the configured analyses (composed from the
registry, :mod:`clipfair.analyses`; this module names none of them) -> one results table
(classification predictions scored together, other outcomes through the outcome engine) ->
disparities -> each analysis's files -> report. Everything here takes typed objects; Hydra
lives in :mod:`clipfair.cli`.
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

from ..stats import metrics as M
from .cache import unwritable_reason
from ..data.base import FaceDataset
from ..data.images import ImageError
from .distributed import Dist, DistributedError, shard_indices
from .embed import EmbedStats, ImageEmbeddings, TextEmbedder, embed_images, open_stores
from ..models import ImageTextModel, Scoring
from ..utility.outputs import write_csv
from .record import write_json
from ..stats.sanity import annotate_findings, chance_gates
from ..stats.sanity import verdict as sanity_verdict
from ..data.taxonomy import Taxonomy, check_target
from ..analyses import Analysis, RunContext
from ..analyses import compose
from ..analyses.engine import add_result_columns, analysis_rows, analysis_sections, append_rows, outcome_metrics

log = logging.getLogger(__name__)

DISCLAIMER = ("clipfair measures how a model's outputs differ across groups of a dataset's images "
              "(people's perceived demographics, or where and at what income an image was taken). It is "
              "not for surveillance, face recognition or identifying people; prompts are English only.")


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
    retrieval: pd.DataFrame | None = None  # the retrieval analysis's long table, when requested
    #: confusion counts of target taxonomies (metrics.CONFUSION_COLUMNS)
    confusion: pd.DataFrame | None = None
    #: the analyses that ran (None: an Evaluation built by hand) and the run context they saw
    analyses: list[Analysis] | None = None
    context: RunContext | None = None
    #: per-unit outcomes of analyses that return them (analysis name -> frame)
    outcomes: dict[str, pd.DataFrame] = field(default_factory=dict)


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
    by the model family's own rule (the ``zero_shot`` analysis, called directly)."""
    ctx = RunContext(table, image_embeddings, attributes=attributes, encode_text=encode_texts,
                     taxonomies=taxonomies, model=_Scored(scoring))
    return compose.classification_predictions(ctx)


@dataclass
class _Scored:
    scoring: Scoring


def harms(taxonomies: Sequence[Taxonomy]) -> dict[str, dict[str, bool]]:
    """taxonomy -> category -> declared harm (see :meth:`Taxonomy.harm`)."""
    return {t.name: dict(t.harms) for t in taxonomies}


def score(predictions: pd.DataFrame, taxonomies: Sequence[Taxonomy], slices: Sequence[Any] = ("overall",),
          confidence: float = 0.95, disparity_min_n: int = M.DEFAULT_DISPARITY_MIN_N,
          disparity_correction: str = "holm", *, orders: dict[str, Sequence[str]] | None = None,
          topk: Sequence[int] = (), small_n: int = M.SMALL_GROUP_N,
          extra: Sequence[pd.DataFrame] = (), strata: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics of the classification predictions, and disparities over groups with at
    least ``disparity_min_n`` images (directions from the metric registry and the taxonomies'
    declarations, p-values adjusted over the whole table). ``extra``: per-group rows of other
    analyses (:func:`clipfair.analyses.engine.outcome_metrics`), in the same table and the same
    adjustment. ``orders``: the dataset's declared value orders; ``topk``, ``small_n``: see
    group_metrics; ``strata``: the dataset's stratum attributes (compared within a stratum only,
    see :func:`clipfair.stats.metrics.disparities`)."""
    cats = {t.name: t.categories for t in taxonomies}
    met = M.group_metrics(predictions, cats, slices=slices, confidence=confidence,
                          labels={t.name: t.labels for t in taxonomies}, orders=orders, topk=topk,
                          small_n=small_n)
    if extra:
        met = pd.concat([met, *[e for e in extra if len(e)]], ignore_index=True)
        met.attrs["confidence"] = float(confidence)
    return met, M.disparities(met, min_n=disparity_min_n, harms=harms(taxonomies), confidence=confidence,
                              correction=disparity_correction, strata=strata)


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
        check_target(t, declared, f"dataset {dataset.name!r}", dataset.tolerated_values)
    return M.resolve_slices(slices, dataset.attributes, f"dataset {dataset.name!r}", dataset.default_slices)


def check_analyses(analyses: Sequence[Analysis], dataset: FaceDataset, taxonomies: Sequence[Taxonomy],
                   slices: Sequence[Any], model: ImageTextModel | None = None, confidence: float = 0.95) -> None:
    """Every analysis's own checks before any image is encoded (``model`` None: before the
    model is loaded; checks that need it wait)."""
    ctx = RunContext(None, np.zeros((0, 0), np.float32), attributes=dataset.attributes,
                     orders=dataset.value_orders(), confidence=confidence, slices=slices, model=model,
                     dataset=dataset, taxonomies=taxonomies)
    for a in analyses:
        a.check(ctx)


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
             precision_audit: dict[str, Any] | None = None,
             analyses: Sequence[Analysis] | None = None, config: Any = None, seed: int = 0) -> Evaluation:
    """Run ``analyses`` (from the registry, see :mod:`clipfair.analyses.compose`) on ``dataset``
    with ``model``: the images are encoded once (cached) and every analysis sees the same
    :class:`~clipfair.analyses.RunContext`. Classification analyses' predictions are scored
    together (:func:`score`); other analyses' per-unit outcomes go through the outcome engine
    into the same results table and the same disparities adjustment.

    Without ``analyses``, the keyword spelling composes them: zero-shot of ``taxonomies``, a
    linear probe when a ``probe_train`` split is given (``probe_options``), retrieval bias of
    ``query_sets`` when ``retrieval`` options are given, the precision audit with
    ``precision_audit`` (``{n, seed}``).
    ``slices``: a list, or "auto" (see :func:`clipfair.stats.metrics.resolve_slices`); a slice
    naming an attribute the dataset lacks is an error. ``topk``: k of top-k accuracy;
    ``small_group_n``: groups with fewer images are flagged ``small``.
    ``embed_options``: more keyword arguments of :func:`clipfair.run.embed.embed_images`
    (fast_preprocess, fast_decode, gpu_decode, compile). ``config``: the typed run config."""
    if analyses is None:
        analyses = compose.legacy(taxonomies, probe_train=probe_train, probe_options=probe_options,
                                  retrieval=retrieval, query_sets=query_sets, precision_audit=precision_audit)
    analyses = list(analyses)
    timings: dict[str, float] = {}
    slices = check_run(dataset, taxonomies, slices)
    check_analyses(analyses, dataset, taxonomies, slices, model, confidence)  # before any image is encoded
    for t in taxonomies:
        big = [k for k in topk if t.target and k >= len(t.classes)]
        if big:
            log.warning("topk: k=%s is not below the %d classes of taxonomy %s; its top-%s accuracy is left out "
                        "(every image would be a hit): choose k < %d", ",".join(map(str, big)), len(t.classes),
                        t.name, ",".join(map(str, big)), len(t.classes))
    if cache_dir is not None and (why := unwritable_reason(cache_dir)) is not None:
        log.warning("cache folder %s cannot be written (%s); running without the cache", cache_dir, why)
        cache_dir = None
    image_store, text_store = open_stores(model, cache_dir)
    # the same embedding settings for every split and feature kind an analysis encodes
    embed_kw = dict(batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size,
                    on_error=on_error, progress=progress, stats=stats, **(embed_options or {}))
    need_images = any(a.needs.image_embeddings != "none" for a in analyses)
    with timed(timings, "embed_images"):
        if need_images:
            emb: ImageEmbeddings = embed_images(dataset, model, image_store, **embed_kw)
        else:  # e.g. text-only association tests: no image is read or encoded
            emb = ImageEmbeddings(np.arange(len(dataset)), np.zeros((len(dataset), 0), np.float32),
                                  info={"skipped": "no analysis of this run reads image embeddings"})
    table = dataset.table.iloc[emb.indices].reset_index(drop=True)
    texts = TextEmbedder(model, text_store, stats)
    orders = dataset.value_orders()
    info: dict[str, Any] = {"embed_images": emb.info,
                            "scoring": {"family": model.family, **model.scoring.describe()}}
    ctx = RunContext(table, emb.embeddings, attributes=dataset.attributes, orders=orders, encode_text=texts,
                     config=config, confidence=confidence, seed=seed, progress=progress, slices=slices,
                     model=model, dataset=dataset, taxonomies=taxonomies, info=info, timings=timings,
                     services={"embed": lambda ds, encoder=None, variant=None: embed_images(
                         ds, model if encoder is None else encoder, _store_for(image_store, variant), **embed_kw)})
    ctx.indices = emb.indices
    ctx.skipped.update(dataset.skipped)
    prediction_frames: list[pd.DataFrame] = []
    outcomes: dict[str, pd.DataFrame] = {}
    for a in analyses:
        with timed(timings, a.name):
            res = a.run(ctx)
        if res is None:
            continue
        if a.predictions:
            prediction_frames.append(res)
        else:
            outcomes[a.name] = res
    preds = (pd.concat(prediction_frames, ignore_index=True) if len(prediction_frames) > 1
             else prediction_frames[0] if prediction_frames else
             pd.DataFrame(columns=["image_id", "taxonomy", "method", "predicted_category", *dataset.attributes]))
    with timed(timings, "metrics"):
        extra = [outcome_metrics(outcomes[a.name], a, slices, orders=orders, confidence=confidence,
                                 small_n=small_group_n, seed=seed) for a in analyses if a.name in outcomes]
        met, disp = score(preds, taxonomies, slices, confidence, disparity_min_n, disparity_correction,
                          orders=orders, topk=topk, small_n=small_group_n, extra=extra,
                          strata=dataset.strata)
        met = add_result_columns(met, table, slices, analysis={a.method or a.name: a.name for a in analyses},
                                 harms=harms(taxonomies), n_classes={t.name: len(t.classes) for t in taxonomies})
        if len(met) and topk:  # the k of top-k rows, from the configured k (the category names it for display)
            ks = {f"top-{int(k)}": int(k) for k in topk}
            met["k"] = [ks.get(c) if m == "topk_accuracy" else None for m, c in zip(met["metric"], met["category"])]
            met["k"] = met["k"].astype("Int64")
        # rows analyses computed themselves (retrieval bias: its own intervals and tests), after the
        # disparities: the same table, keyed by columns, not compared again
        met = append_rows(met, [analysis_rows(a, r, small_group_n) for a in analyses
                                if (r := a.result_rows(ctx)) is not None])
        met.attrs["confidence"] = float(confidence)
        conf = confusion(preds, taxonomies, slices, orders)
        # sanity gates before any finding: accuracy vs chance per target taxonomy, random weights
        n_cls = {t.name: len(t.classes) for t in taxonomies if t.target and t.target in dataset.attributes}
        info["sanity"] = sanity_verdict(chance_gates(preds, n_cls, confidence),
                                        (getattr(model, "info", None) or {}).get("random_weights"))
        info["findings"] = {t.name: list(t.findings) for t in taxonomies}
        disp = annotate_findings(disp, info["findings"], info["sanity"])
    skipped = dict(ctx.skipped)
    for k, v in emb.skipped.items():
        skipped[k] = skipped.get(k, 0) + v
    counts = {"images_in_dataset": len(dataset), "images_evaluated": len(emb.indices),
              "images_encoded": emb.encoded, "images_from_cache": emb.cached,
              "taxonomies": len(taxonomies), **ctx.counts}
    info["slices"] = [M.slice_name(s) for s in slices]
    info["slice_attributes"] = {M.slice_name(s): list(M.slice_attrs(s)) for s in slices}  # names are display only
    info["value_orders"] = {a: list(v) for a, v in orders.items()}  # the dataset's declared orders
    info["plot_slices"] = {k: list(v) for k, v in dataset.plot_slices.items()}  # and which slices get plots
    info["strata"] = list(dataset.strata)  # slices naming these are compared within a stratum only
    info["analyses"] = [a.describe() for a in analyses]
    ev = Evaluation(preds, met, disp, timings, skipped, counts, emb.errors, info, confusion=conf,
                    analyses=analyses, context=ctx, outcomes=outcomes)
    for a in analyses:
        a.finish(ev, ctx)
    ev.retrieval = next((t for a in analyses for n, t in a.tables().items() if n == "retrieval"), None)
    return ev


def _store_for(store: Any, variant: dict[str, Any] | None) -> Any:
    """The image store of a cache variant (e.g. pre-projection features), or the run's own."""
    if variant is None or store is None:
        return store
    from .embed import variant_store

    return variant_store(store, variant)


def embed_shard(dataset: FaceDataset, model: ImageTextModel, cache_dir: Path | str | None, dist: Dist, *,
                analyses: Sequence[Analysis] = (), probe_train: FaceDataset | None = None,
                probe_features: str = "projected",
                batch_size: int | None = None, **embed_kw: Any) -> dict[str, Any]:
    """The sharding hook of a multi-process run: this process encodes its share of every
    split the run's analyses will need (whole batches, round-robin:
    :func:`clipfair.run.distributed.shard_indices`) into the shared content-addressed cache: the
    evaluation split and each analysis's :meth:`~clipfair.analyses.Analysis.embed_jobs` (e.g. a
    linear probe's train split, pre-projection features). After a barrier, rank 0 runs
    :func:`evaluate`, which then finds every embedding in the cache. ``probe_train`` /
    ``probe_features``: the keyword spelling of a linear probe's jobs. ``embed_kw``: the keyword
    arguments of :func:`clipfair.run.embed.embed_images`. Returns what this rank did."""
    why = "the cache is off" if cache_dir is None else unwritable_reason(cache_dir)
    if why is not None:
        raise DistributedError(
            f"a run over {dist.world_size} processes shares embeddings through the cache, but {why}: set "
            "cache.enabled=true and cache.dir to a folder every process can write")
    image_store, _ = open_stores(model, cache_dir)
    analyses = list(analyses)
    if probe_train is not None:
        analyses.append(compose.probe(probe_train, probe_features))
    jobs: list[tuple[FaceDataset, Any, Any]] = [(dataset, model, image_store)]
    for a in analyses:
        jobs += [(ds, enc, _store_for(image_store, variant)) for ds, enc, variant in a.embed_jobs(dataset, model)]
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


def report_context(ev: Evaluation, record: dict[str, Any], taxonomies: Sequence[Taxonomy] = (),
                   demo: bool = False) -> "ReportContext":
    """The report's header and reading rules from run.json's record and the taxonomies."""
    from .. import __version__
    from ..report.render import ReportContext

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
        harms=harms(taxonomies), n_classes={t.name: len(t.classes) for t in taxonomies if t.target},
        sanity=ev.info.get("sanity") or {},
        label_categories={t.name: {c.label: c.category for c in t.classes} for t in taxonomies})


def write_outputs(ev: Evaluation, out_dir: Path | str, record: dict[str, Any], demo: bool = False,
                  taxonomies: Sequence[Taxonomy] = (), compare: dict[str, Any] | None = None,
                  slices: Sequence[Any] = ("overall",),
                  model_card_sections: Sequence[Any] = ()) -> list[Path]:
    """predictions.parquet, metrics.csv, disparities.csv, confusion.csv, plots, summary.md,
    report.html, run.json, and every analysis's own files and report sections
    (:meth:`clipfair.analyses.Analysis.write`: comparison.*, sensitivity.*, retrieval.*,
    model_card.*, a user analysis's tables ...).

    ``compare``: the keyword spelling of the variant comparison (for an Evaluation whose
    analyses do not include it); ``model_card_sections``: report sections shown in report.html
    only, under one heading. Plots already in ``out_dir`` are shown in ``report.html`` too."""
    from ..report.confusion import write_confusion_plots
    from ..report.document import Section
    from ..report.render import write_report

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
        write_csv(df, out / name)
        written.append(out / name)
    ctx = report_context(ev, record, taxonomies, demo)
    analyses = compose.output_analyses(ev.analyses, compare)
    run_ctx = ev.context or RunContext(None, np.zeros((0, 0), np.float32), attributes=[],
                                       confidence=float(ev.metrics.attrs.get("confidence", 0.95)), slices=slices,
                                       taxonomies=taxonomies)
    if not run_ctx.taxonomies:
        run_ctx.taxonomies = list(taxonomies)
    sections: list[Any] = []
    html_only: list[Section] = []  # sections with a file of their own, also shown in report.html
    for a in analyses:  # before the report: report.html shows their plots and sections
        if a.outcomes:  # the core's section of the declared outcomes (groups, intervals, disparities)
            sections += analysis_sections(a, ev.metrics, ev.disparities)
        w = a.write(out, ev, run_ctx, ctx)
        written += w.paths
        sections += w.sections
        html_only += w.html_sections
    if ev.confusion is not None and len(ev.confusion):
        with timed(ev.timings, "report"):
            written += write_confusion_plots(ev.confusion, ev.metrics, out, {t.name: t.labels for t in taxonomies})
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
