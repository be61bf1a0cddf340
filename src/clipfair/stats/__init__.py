"""Statistics: intervals and tests, the metric registry, per-group metrics, sanity gates,
association statistics, and the reader of a finished run folder.

Layer: stats.
"""
