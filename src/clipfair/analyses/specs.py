"""The one metric registry (layer: analyses/results model): a :class:`MetricSpec` for every
metric a run can write. Direction, kind and interval method of a metric come from here, never
from its name; disparities, compare, collect, sensitivity and the report read it.

A user analysis's outcomes are registered when the analysis runs (:func:`register_metric`);
the same name declared twice with different specs is an error.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .base import HIGHER, LOWER, MEAN, NEUTRAL, PROPORTION, AnalysisError, MetricSpec

BUILTIN_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("accuracy", HIGHER, PROPORTION, "share of a group's images classified correctly", accuracy=True),
    MetricSpec("topk_accuracy", HIGHER, PROPORTION,
               "share of a group's images whose right class is among the k highest-scored", accuracy=True),
    MetricSpec("accuracy_race_binary", HIGHER, PROPORTION,
               "race accuracy scored White vs Non-White (the model card's binary scoring)", accuracy=True),
    MetricSpec("worst_group_accuracy", HIGHER, PROPORTION,
               "the accuracy of a slice's lowest-accuracy group", ranked=False, accuracy=True),
    MetricSpec("rate", NEUTRAL, PROPORTION,
               "share of a group's images put into a category; direction: the taxonomy's harm declaration",
               direction_from_harm=True),
    MetricSpec("label_rate", NEUTRAL, PROPORTION, "share of a group's images given a class label",
               direction_from_harm=True, ranked=False),
    # retrieval bias (clipfair.retrieval): per query, bootstrap intervals over images
    MetricSpec("share", NEUTRAL, MEAN, "a value's share of the top k", interval="bootstrap"),
    MetricSpec("skew", NEUTRAL, MEAN, "log of a value's share of the top k over its desired share",
               interval="bootstrap"),
    MetricSpec("max_skew", LOWER, MEAN, "the largest skew over an attribute's values", interval="bootstrap"),
    MetricSpec("min_skew", HIGHER, MEAN, "the smallest skew over an attribute's values", interval="bootstrap"),
    MetricSpec("ndkl", LOWER, MEAN, "normalised discounted KL divergence of the ranking", interval="bootstrap"),
    MetricSpec("bias", LOWER, MEAN, "Bias@K: share gap of the two values of a binary attribute",
               interval="bootstrap"),
)

_METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec``; the same name again must be the same spec."""
    old = _METRICS.get(spec.name)
    if old is not None and old != spec:
        raise AnalysisError(f"metric {spec.name!r} is already declared as {old.direction}/{old.kind}; "
                            f"an analysis declares it again as {spec.direction}/{spec.kind}: choose another name")
    _METRICS[spec.name] = spec
    return spec


for _s in BUILTIN_METRICS:
    register_metric(_s)


def metric_spec(name: str) -> MetricSpec | None:
    """The registered spec of ``name`` (None: unknown)."""
    return _METRICS.get(str(name))


def metric_specs() -> dict[str, MetricSpec]:
    return dict(_METRICS)


def is_accuracy(name: str) -> bool:
    s = metric_spec(name)
    return bool(s and s.accuracy)


def is_ranked(name: str) -> bool:
    s = metric_spec(name)
    return True if s is None else s.ranked


def direction(metric: str, category: str = "", harms: Mapping[str, bool | None] | None = None) -> str:
    """The direction of a row of ``metric`` (unknown metrics: neutral)."""
    s = metric_spec(metric)
    return NEUTRAL if s is None else s.resolve_direction(category, harms)


def kind(metric: str) -> str:
    s = metric_spec(metric)
    return PROPORTION if s is None else s.kind


def register_all(specs: Iterable[MetricSpec]) -> None:
    for s in specs:
        register_metric(s)


__all__ = ["BUILTIN_METRICS", "direction", "is_accuracy", "is_ranked", "kind", "metric_spec", "metric_specs",
           "register_all", "register_metric"]
