"""The one function that saves a figure.

Layer: report.

Every plot clipfair writes (report, confusion, compare, collect, sensitivity, retrieval,
model card) is a matplotlib ``Figure`` on an Agg canvas at :data:`DPI` and goes to disk
through :func:`save_figure`: a PNG at the figure's resolution, its folder created, with no
"Software" metadata chunk (the same plot gives the same bytes across matplotlib versions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DPI", "save_figure"]

#: resolution of every figure (dots per inch)
DPI = 120


def save_figure(fig: Any, path: str | Path, *, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a PNG at :data:`DPI` and return the path. ``tight``:
    crop to the drawn content (``bbox_inches="tight"``), else keep the figure's size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None},
                **({"bbox_inches": "tight"} if tight else {}))
    return path
