"""The analysis contract.

Layer: analyses.

An *analysis* is one kind of evaluation (zero-shot classification, linear probe, retrieval bias,
a user's own ...). It declares what it needs (:class:`Needs`) and the outcomes it measures
(:class:`MetricSpec`), and returns per-unit outcomes from :meth:`Analysis.run`; the core
(:mod:`clipfair.analyses.engine`) turns those into per-group rows of ``metrics.csv`` with
intervals, rows of ``disparities.csv``, a report section and ``clipfair collect`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from ..stats.specs import (DIRECTIONS, HIGHER, KINDS, LOWER, MEAN, MEAN_INTERVALS, NEUTRAL, PROPORTION,  # noqa: F401
                    AnalysisError, MetricSpec)


@dataclass(frozen=True)
class Needs:
    """What an analysis needs from the run; the run computes each shared input once.

    ``image_embeddings``: ``projected`` (the model's L2-normalised image embeddings, in
    :attr:`RunContext.image_embeddings`), ``pre_projection`` (also the image tower's output
    before the projection, :meth:`RunContext.features`), or ``none``.
    ``splits``: the dataset splits it reads (``eval``; ``train`` for e.g. a probe's training
    set: :meth:`RunContext.train`). ``text``: whether it encodes text (:meth:`RunContext.encode_text`).
    """

    image_embeddings: str = "projected"
    splits: tuple[str, ...] = ("eval",)
    text: bool = True


class RunContext:
    """What an analysis sees of the run: the evaluated images and the run's model.

    ``table``: one row per evaluated image, column ``image_id`` and every declared attribute;
    ``image_embeddings``: L2-normalised, rows aligned with ``table``; ``attributes`` the
    declared attributes and ``orders`` their value orders; ``encode_text(texts)`` the
    L2-normalised text embeddings of the run's model (cached). ``config`` is the typed run
    config (:class:`clipfair.run.schema.RunConfig`) where the run has one; ``confidence``,
    ``seed``, ``out_dir``, ``progress`` as configured. ``shared`` holds inputs computed once
    per run and used by several analyses (e.g. zero-shot predictions): read them through
    :meth:`get_shared`.
    """

    def __init__(self, table: pd.DataFrame, image_embeddings: np.ndarray, *, attributes: Sequence[str],
                 orders: Mapping[str, Sequence[str]] | None = None,
                 encode_text: Callable[[list[str]], np.ndarray] | None = None,
                 config: Any = None, confidence: float = 0.95, seed: int = 0, out_dir: Path | None = None,
                 progress: bool = False, slices: Sequence[Any] = ("overall",), model: Any = None,
                 dataset: Any = None, taxonomies: Sequence[Any] = (), info: dict[str, Any] | None = None,
                 timings: dict[str, float] | None = None, services: Mapping[str, Callable[..., Any]] | None = None
                 ) -> None:
        self.table = table
        self.image_embeddings = image_embeddings
        self.attributes = list(attributes)
        self.orders = {k: list(v) for k, v in (orders or {}).items()}
        self._encode = encode_text
        self._text_cache: dict[str, np.ndarray] = {}
        self.config = config
        self.confidence = float(confidence)
        self.seed = int(seed)
        self.out_dir = out_dir
        self.progress = bool(progress)
        self.slices = list(slices)
        self.model = model
        self.dataset = dataset
        self.taxonomies = list(taxonomies)
        self.info: dict[str, Any] = info if info is not None else {}
        self.timings: dict[str, float] = timings if timings is not None else {}
        self.shared: dict[str, Any] = {}
        self._services = dict(services or {})
        #: the run's own tallies (run.json counts / skipped) that analyses add to
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        #: rows of the dataset's table that were evaluated (readable images), aligned with ``table``
        self.indices: np.ndarray | None = None
        #: the run's cached text embedder (raw model output; ``encode_text`` L2-normalises)
        self.text_embedder: Callable[[list[str]], np.ndarray] | None = encode_text
        self.options: dict[str, Any] = {}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings of the run's model, one row per text (cached)."""
        if self._encode is None:
            raise AnalysisError("this run has no text encoder")
        texts = [str(t) for t in texts]
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if todo:
            emb = np.asarray(self._encode(todo), dtype=np.float32)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
            self._text_cache.update(zip(todo, emb))
        if not texts:
            return np.zeros((0, self.image_embeddings.shape[1] if self.image_embeddings.ndim == 2 else 0),
                            dtype=np.float32)
        return np.stack([self._text_cache[t] for t in texts])

    def timed(self, stage: str) -> Any:
        """A context manager adding the wall time of a stage to run.json's timings."""
        import time
        from contextlib import contextmanager

        @contextmanager
        def cm():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 4)

        return cm()

    def get_shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """A shared input, computed once per run by the first analysis that asks for it."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def service(self, name: str) -> Callable[..., Any]:
        """A run service (e.g. ``train`` for the probe's training split, ``features`` for
        pre-projection features), provided by the pipeline according to :class:`Needs`."""
        try:
            return self._services[name]
        except KeyError:
            raise AnalysisError(f"this run provides no {name!r}; declare it in the analysis's needs") from None


@dataclass
class Written:
    """What an analysis wrote: files, report sections (summary.md and report.html) and
    sections shown in report.html only (beside a document of their own)."""

    paths: list[Path] = field(default_factory=list)
    sections: list[Any] = field(default_factory=list)
    html_sections: list[Any] = field(default_factory=list)


class Analysis:
    """Base class of every analysis (see the module docstring and docs/analyses.md).

    Subclasses set ``name`` and ``outcomes``, take their options (config
    ``analyses.<name>.{...}``) as keyword arguments, and implement :meth:`run`.
    """

    name: ClassVar[str] = ""
    outcomes: ClassVar[list[MetricSpec]] = []
    #: the unit column of run()'s frame (one row per unit)
    unit: ClassVar[str] = "image_id"
    needs: ClassVar[Needs] = Needs()
    #: the ``taxonomy`` / ``method`` key columns of this analysis's metrics rows (default: its name)
    taxonomy: ClassVar[str | None] = None
    method: ClassVar[str | None] = None

    #: run() returns classification predictions (one row per image x taxonomy x method, the
    #: columns of predictions.parquet) scored by the core's classification metrics, instead of
    #: per-unit outcomes
    predictions: ClassVar[bool] = False
    #: exception types this analysis raises for a user's mistake (the CLI prints them on one line)
    errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: run-level inputs built at the CLI edge and passed as keyword options (see
    #: :func:`clipfair.analyses.compose.build`): ``train`` (the train split, a FaceDataset built from
    #: ``probe.train_split`` / ``probe.train_dataset``), ``confidence`` (the run's), ``image_subset``
    #: (how the evaluated images were chosen, in words)
    run_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    # ------------------------------------------------------------------ optional lifecycle hooks
    def adjust_taxonomies(self, taxonomies: list[Any]) -> list[Any]:
        """The run's taxonomies as this analysis needs them (e.g. expanded over template sets);
        called once, before anything is checked or encoded."""
        return taxonomies

    def check(self, ctx: "RunContext") -> None:
        """Checks before any image is encoded (``ctx.table`` and ``ctx.image_embeddings`` are
        not there yet): raise a one-line error for a configuration that cannot run."""

    def embed_jobs(self, dataset: Any, model: Any) -> list[tuple[Any, Any, Any]]:
        """``(dataset, encoder, cache variant or None)`` that this analysis will encode beyond the
        evaluation split's projected embeddings (a multi-process run embeds them in shards first;
        :meth:`RunContext.service` ``("embed")(dataset, encoder, variant)`` encodes them in a run)."""
        return []

    def finish(self, ev: Any, ctx: "RunContext") -> None:
        """After the core scored every analysis (``ev.metrics`` / ``ev.disparities`` are there):
        analyses that read other analyses' results (comparison, model card) do their work here."""

    def write(self, out_dir: Path, ev: Any, ctx: "RunContext", report: Any) -> "Written":
        """Write this analysis's files into ``out_dir`` and return them with its report sections.
        Default: :meth:`tables` as ``<name>.csv`` and :meth:`report_sections` (the core adds the
        generic section of its declared outcomes itself)."""
        from ..utility.outputs import write_csv

        paths = []
        for name, df in self.tables().items():
            path = Path(out_dir) / f"{name}.csv"
            write_csv(df, path)
            paths.append(path)
        return Written(paths, list(self.report_sections(ev)))

    def run(self, ctx: RunContext) -> pd.DataFrame | None:
        """Per-unit outcomes: the unit column, the attribute columns it carries and one column per
        declared outcome (0/1 for a proportion, a real number for a mean; NaN: not measured).
        Analyses that write their own tables only may return None."""
        raise NotImplementedError

    def tables(self) -> dict[str, pd.DataFrame]:
        """Extra long tables this analysis writes (``<name>.csv``), after :meth:`run`."""
        return {}

    def result_rows(self, ctx: RunContext) -> pd.DataFrame | None:
        """Optional, after :meth:`run`: per-group rows this analysis computed itself (with its own
        intervals and tests) for the one results table (``metrics.csv``), beside the core's rows.
        Each row has the ``metrics.csv`` columns (``taxonomy``, ``method``, ``metric``: a
        registered :class:`MetricSpec`, ``category``, ``slice``, ``group``, ``n``, ``count``,
        ``value``, ``ci_low``, ``ci_high``), the key columns that apply (``k``, ``query_set``,
        ``query``, ...: :data:`clipfair.stats.specs.ROW_KEYS`) and one column per sliced
        attribute holding the group's value; the core fills ``analysis`` and, from the metric
        registry, ``direction`` / ``kind`` / ``interval``
        (:func:`clipfair.analyses.engine.analysis_rows`). These rows are not compared again in
        ``disparities.csv`` (register their metrics with ``ranked=False``). None: no rows."""
        return None

    def report_sections(self, results: Any) -> list[Any]:
        """Optional extra report blocks (:mod:`clipfair.report.document` sections)."""
        return []

    @classmethod
    def collect(cls, runs: Sequence[Any], base: Path, out_dir: Path) -> tuple[list[Path], list[Any]]:
        """For ``clipfair collect``: this analysis's tables across runs. ``runs``: the finished run
        folders whose ``run.json`` records this analysis (each with ``path``, ``label``, ``model``,
        ``dataset``, ``record``: :class:`clipfair.run.collect.RunFolder`); ``base``: the folder run paths
        are shown relative to; ``out_dir``: where to write. Returns the files written and report
        sections (:mod:`clipfair.report.document`) appended to ``collected.md`` / ``collected.html``.
        Default: nothing (the core already collects every analysis's ``metrics.csv`` rows)."""
        return [], []

    def describe(self) -> dict[str, Any]:
        """What run.json records about this analysis."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "options": _jsonable(self.options)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)
