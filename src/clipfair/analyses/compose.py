"""Composing a run's analyses from its config: the ``analyses:`` mapping
(``{name: {...options}}``, each with ``_target_`` allowed) and today's shorthand keys
(``probe.enabled``, ``retrieval.enabled``, ``model_card``, ``template_sets``, ``compare``,
``precision_audit``), in one order: classification first (its predictions are scored together),
then the analyses that read other analyses' results.

Layer: analyses.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .base import Analysis, AnalysisError
from .registry import build_analysis, get_analysis

#: the order built-in analyses run in; user analyses come after, in config order
ORDER = ("zero_shot", "linear_probe", "precision_audit", "retrieval_bias", "variant_comparison",
         "prompt_sensitivity", "model_card")

#: probe.* keys that are not the fit's options
PROBE_RUN_KEYS = ("enabled", "train_split", "train_dataset", "train_limit")


def shorthand_entries(cfg: Any) -> dict[str, dict[str, Any]]:
    """``analyses:`` entries spelt by today's keys of the typed config (:class:`clipfair.run.schema.RunConfig`)."""
    from dataclasses import asdict

    out: dict[str, dict[str, Any]] = {}
    if cfg.taxonomies:
        out["zero_shot"] = {}
    if cfg.probe.enabled:
        out["linear_probe"] = {k: v for k, v in asdict(cfg.probe).items() if k not in PROBE_RUN_KEYS}
    if cfg.precision_audit is not None:
        out["precision_audit"] = asdict(cfg.precision_audit)
    if cfg.retrieval.queries and not cfg.retrieval.enabled:  # issue 21: never silently no retrieval
        import logging

        logging.getLogger("clipfair").warning(
            "retrieval.queries=%s is set without retrieval.enabled=true: running retrieval for them "
            "(set retrieval.enabled=true to say so, or drop retrieval.queries)", list(cfg.retrieval.queries))
    if cfg.retrieval.enabled or cfg.retrieval.queries:
        out["retrieval_bias"] = {k: v for k, v in asdict(cfg.retrieval).items() if k != "enabled"}
    if cfg.compare is not None:
        out["variant_comparison"] = asdict(cfg.compare)
    if cfg.template_sets or cfg.taxonomies:
        out["prompt_sensitivity"] = {"template_sets": dict(cfg.template_sets)}
    if cfg.model_card:
        out["model_card"] = dict(cfg.model_card)
    return out


def entries(cfg: Any) -> dict[str, dict[str, Any]]:
    """Every analysis entry of a run: the shorthands, then ``analyses:`` (whose entries win;
    an entry set to null turns a shorthand off)."""
    out = shorthand_entries(cfg)
    for key, opts in (getattr(cfg, "analyses", None) or {}).items():
        if opts is None or opts is False:
            out.pop(key, None)
            continue
        if opts is True:
            opts = {}
        if not isinstance(opts, Mapping):
            raise AnalysisError(f"analyses.{key} must be a mapping of options (or null), got {opts!r}")
        out[key] = {**out.get(key, {}), **dict(opts)}
    return out


def build(entries_: Mapping[str, Mapping[str, Any]],
          inputs: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None) -> list[Analysis]:
    """The analyses of ``entries_`` in run order. ``inputs``: run-level inputs built at the CLI
    edge, by name (e.g. ``train``: the probe's train split): each analysis class gets those its
    :attr:`~clipfair.analyses.Analysis.run_inputs` names, as the option of that name
    (``inputs[name](options)`` gives its value; it sees the entry's options)."""
    keys = [k for k in ORDER if k in entries_] + [k for k in entries_ if k not in ORDER]
    built = []
    for key in keys:
        opts = dict(entries_[key])
        if inputs:
            target = opts.get("_target_")
            cls = get_analysis(str(target) if target else key)
            for name in cls.run_inputs:
                if name in inputs:
                    opts[name] = inputs[name](opts)
        built.append(build_analysis(key, opts))
    return built


def legacy(taxonomies: Sequence[Any], *, probe_train: Any = None, probe_options: Mapping[str, Any] | None = None,
           retrieval: Any = None, query_sets: Sequence[Any] = (),
           precision_audit: Mapping[str, Any] | None = None) -> list[Analysis]:
    """The analyses of :func:`clipfair.run.pipeline.evaluate`'s keyword spelling (zero-shot always;
    a linear probe with ``probe_train``; retrieval with ``retrieval`` options; the precision audit)."""
    e: dict[str, dict[str, Any]] = {"zero_shot": {}}
    if probe_train is not None:
        e["linear_probe"] = {**dict(probe_options or {}), "train": probe_train}
    if precision_audit is not None:
        e["precision_audit"] = dict(precision_audit)
    if retrieval is not None:
        e["retrieval_bias"] = {"options": retrieval, "query_sets": list(query_sets)}
    e["prompt_sensitivity"] = {}
    return build(e)


def classification_predictions(ctx: Any) -> Any:
    """Zero-shot predictions of ``ctx.taxonomies`` (the zero-shot analysis run directly on a
    :class:`~clipfair.analyses.RunContext`): :func:`clipfair.run.pipeline.predict_taxonomies`."""
    return build_analysis("zero_shot", {}).run(ctx)


def probe(train: Any, features: str = "projected") -> Analysis:
    """A linear probe on ``train`` (the keyword spelling of :func:`clipfair.run.pipeline.embed_shard`)."""
    return build_analysis("linear_probe", {"train": train, "features": features})


def output_analyses(analyses: Sequence[Analysis] | None, compare: Mapping[str, Any] | None = None) -> list[Analysis]:
    """The analyses whose files :func:`clipfair.run.pipeline.write_outputs` writes: the run's (for an
    Evaluation built by hand, prompt sensitivity), with a variant comparison from the keyword
    spelling ``compare`` when the run has none."""
    out = list(analyses) if analyses is not None else [build_analysis("prompt_sensitivity", {})]
    if compare and not any(a.name == "variant_comparison" for a in out):
        out.insert(0, build_analysis("variant_comparison", dict(compare)))
    return out


__all__ = ["ORDER", "build", "classification_predictions", "entries", "legacy", "output_analyses", "probe",
           "shorthand_entries"]
