"""The one metric registry: a :class:`MetricSpec` for every
metric a run can write. Direction, kind and interval method of a metric come from here, never
from its name; disparities, compare, collect, sensitivity and the report read it.

A user analysis's outcomes are registered when the analysis runs (:func:`register_metric`);
the same name declared twice with different specs is an error.

Layer: stats (the results model; imports nothing of clipfair).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from dataclasses import dataclass

HIGHER, LOWER, NEUTRAL = "higher_is_better", "lower_is_better", "neutral"
DIRECTIONS = (HIGHER, LOWER, NEUTRAL)
PROPORTION, MEAN = "proportion", "mean"
KINDS = (PROPORTION, MEAN)
#: interval methods of a mean outcome's per-group rows
MEAN_INTERVALS = ("t", "bootstrap")


class AnalysisError(ValueError):
    """A misdeclared or misbehaving analysis (one line naming the analysis and what to fix)."""


@dataclass(frozen=True)
class MetricSpec:
    """One measured quantity.

    ``direction``: which value is better for a group (``higher_is_better``, ``lower_is_better``,
    ``neutral``: groups are compared highest vs lowest, never ranked as worse or better).
    ``kind``: ``proportion`` (0/1 per unit; Wilson intervals per group, Newcombe intervals of
    differences) or ``mean`` (a real number per unit; per-group interval by ``interval``, ``t``
    or ``bootstrap``; Welch intervals of differences).
    ``direction_from_harm``: the direction is the taxonomy's ``harm`` declaration of the row's
    category (a harm: lower is better; declared not a harm: higher is better; undeclared:
    ``direction``), as for the built-in ``rate``.
    ``ranked``: False leaves the metric out of disparities (e.g. ``label_rate``, or a summary
    of a slice such as ``worst_group_accuracy``).
    """

    name: str
    direction: str
    kind: str
    description: str = ""
    interval: str = ""  # proportion: "wilson"; mean: "t" (default) or "bootstrap"
    direction_from_harm: bool = False
    ranked: bool = True
    #: an accuracy-like metric (report's accuracy sections, compare's accuracy rows)
    accuracy: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AnalysisError(f"MetricSpec needs a non-empty name, got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise AnalysisError(f"metric {self.name!r}: direction must be one of {', '.join(DIRECTIONS)}, "
                                f"got {self.direction!r}")
        if self.kind not in KINDS:
            raise AnalysisError(f"metric {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == MEAN and self.interval not in ("", *MEAN_INTERVALS):
            raise AnalysisError(f"metric {self.name!r}: a mean's interval is one of {', '.join(MEAN_INTERVALS)}, "
                                f"got {self.interval!r}")
        if self.kind == PROPORTION and self.interval not in ("", "wilson"):
            raise AnalysisError(f"metric {self.name!r}: a proportion's interval is wilson, got {self.interval!r}")
        if not self.interval:
            object.__setattr__(self, "interval", "wilson" if self.kind == PROPORTION else "t")

    def resolve_direction(self, category: str = "", harms: Mapping[str, bool | None] | None = None) -> str:
        """The direction of one row: the declared harm of ``category`` when the spec says so."""
        if self.direction_from_harm:
            h = (harms or {}).get(category)
            if h is not None:
                return LOWER if h else HIGHER
        return self.direction



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
    # retrieval bias (clipfair.methods.retrieval): per query set x query x attribute (x value) x k x desired
    # distribution; its rows in metrics.csv carry retrieval's own tests of no association
    # (null_mean, p_value, p_adjusted, significant), so the disparities engine leaves them out
    # (ranked=False). Intervals: the image bootstrap (percentile; the query bootstrap for a query
    # set's mean), where retrieval.csv's interval_method does not say "none: ...".
    MetricSpec("share", NEUTRAL, MEAN, "a value's share of the top k", interval="bootstrap", ranked=False),
    MetricSpec("skew", NEUTRAL, MEAN, "Skew@k: log of a value's share of the top k over its desired share",
               interval="bootstrap", ranked=False),
    MetricSpec("max_skew", LOWER, MEAN, "MaxSkew@k: the largest skew over an attribute's values",
               interval="bootstrap", ranked=False),
    MetricSpec("min_skew", HIGHER, MEAN, "MinSkew@k: the smallest skew over an attribute's values",
               interval="bootstrap", ranked=False),
    MetricSpec("ndkl", LOWER, MEAN, "NDKL: normalised discounted KL divergence of the ranking from the desired "
               "distribution", interval="bootstrap", ranked=False),
    # signed in [-1, 1] (first value minus second, in the declared order): neither end is better
    MetricSpec("bias", NEUTRAL, MEAN, "Bias@K: (n_a - n_b) / (n_a + n_b) of the two values of a binary attribute "
               "in the top k", interval="bootstrap", ranked=False),
)

#: key columns of the results table beyond taxonomy / method / metric / category / slice / group,
#: filled where they apply (empty elsewhere): readers key rows by them, never by splitting a string
ROW_KEYS: tuple[str, ...] = ("variant", "template_set", "scoring", "k", "query_set", "query", "desired")

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


__all__ = ["BUILTIN_METRICS", "ROW_KEYS", "direction", "is_accuracy", "is_ranked", "kind", "metric_spec", "metric_specs",
           "register_all", "register_metric"]
