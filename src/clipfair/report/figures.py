"""The one function that saves a figure.

Layer: report.

Every plot clipfair writes (report, confusion, compare, collect, sensitivity, retrieval,
model card) is a matplotlib ``Figure`` on an Agg canvas at :data:`DPI` and goes to disk
through :func:`save_figure`, in the format its file name asks for:

- ``.png``: a PNG at the figure's resolution, with no "Software" metadata chunk (the same
  plot gives the same bytes across matplotlib versions);
- ``.svg``: an SVG with its text kept as text (``svg.fonttype: none``: small, sharp at any
  zoom, searchable), no date and a fixed id salt (the same plot gives the same bytes). The
  run's report uses SVG: a page of compact figures stays small and is written fast.

Either way the folder is created.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

__all__ = ["DPI", "save_figure", "compact_svg"]

#: resolution of every figure (dots per inch)
DPI = 120

_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "clipfair", "svg.image_inline": True,
           "font.sans-serif": ["DejaVu Sans"]}
_FONT = "font-family: 'DejaVu Sans', sans-serif"


def _compact_tag(m: re.Match) -> str:
    tag = re.sub(r"(\d\.\d)\d+", r"\1", m.group(0))  # coordinates to 0.1 pt (base64 holds no ".")
    return re.sub(r' id="[A-Za-z0-9.]+_\d+"', "", tag)


def compact_svg(svg: str) -> str:
    """matplotlib's SVG without what a reader never sees: coordinates to 0.1 pt, no element ids
    that nothing references (``text_12``, ``patch_3``: every referenced id is a hash without an
    underscore), no metadata, XML declaration or DOCTYPE, no indentation or line breaks, and the
    font named once in a style
    sheet instead of on every text."""
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"^<\?xml[^>]*\?>\s*<!DOCTYPE[^>]*>\s*", "", svg)  # an image needs neither (nor the DTD's URL)
    svg = re.sub(r'(data:image/png;base64,)([^"]+)', lambda m: m.group(1) + re.sub(r"\s+", "", m.group(2)), svg)
    svg = re.sub(r"<[^>]+>", _compact_tag, svg)  # inside tags only: a label's own text stays as it is
    svg = re.sub(r">\s+<", "><", svg)
    svg = re.sub(r"\s*\n\s*", " ", svg)
    svg = svg.replace(_FONT + "; ", "").replace("; " + _FONT, "").replace(f' style="{_FONT}"', "")
    return svg.replace("<style type=\"text/css\">", "<style type=\"text/css\">text{font-family:'DejaVu Sans',"
                       "sans-serif}", 1)


def save_figure(fig: Any, path: str | Path, *, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (PNG at :data:`DPI`, or SVG for a ``.svg`` path) and return the
    path. ``tight``: crop to the drawn content (``bbox_inches="tight"``), else keep the figure's
    size."""
    from contextlib import nullcontext

    from matplotlib import rc_context

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = path.suffix.lower() == ".svg"
    buf = io.StringIO() if svg else None
    with rc_context(_SVG_RC) if svg else nullcontext():
        fig.savefig(buf if svg else path, dpi=DPI, format="svg" if svg else "png",
                    metadata={"Date": None, "Creator": None} if svg else {"Software": None},
                    **({"bbox_inches": "tight"} if tight else {}))
    if svg:
        path.write_text(compact_svg(buf.getvalue()), encoding="utf-8")
    return path
