"""Analyses as plug-ins.

The public contract of an evaluation kind: :class:`Analysis` (base class), :class:`RunContext`
(what it sees of the run), :class:`MetricSpec` (its outcomes), :func:`register_analysis` and
:func:`get_analysis` (the lazy registry). The core (:mod:`clipfair.analyses.engine`) turns
per-unit outcomes into per-group rows with intervals, disparities, report sections and
``clipfair collect`` rows. See docs/analyses.md.

Layer: analyses.
"""

from .base import (DIRECTIONS, HIGHER, KINDS, LOWER, MEAN, NEUTRAL, PROPORTION, Analysis, AnalysisError,
                   MetricSpec, Needs, RunContext, Written)
from .registry import available, build_analysis, get_analysis, recorded_analyses, register_analysis

__all__ = ["Analysis", "AnalysisError", "DIRECTIONS", "HIGHER", "KINDS", "LOWER", "MEAN", "MetricSpec", "NEUTRAL",
           "Needs", "PROPORTION", "RunContext", "Written", "available", "build_analysis", "get_analysis",
           "recorded_analyses", "register_analysis"]
