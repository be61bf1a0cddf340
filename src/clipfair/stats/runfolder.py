"""Reading a finished run folder: the one reader of ``run.json`` and ``metrics.csv`` that
`clipfair compare` and `clipfair collect` share.

Layer: stats (reads the results tables a run wrote).

A folder whose ``run.json`` is not a clipfair record (e.g. another tool's ``{"model":
"some-model"}``), or whose ``metrics.csv`` is empty, binary or lacks the metric columns, raises
:class:`RunFolderError` with one line naming the file and what is wrong; the callers skip such a
folder with that line and go on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..utility.outputs import OutputError, read_csv

__all__ = ["RunFolderError", "read_record", "read_metrics"]

#: run.json sections that must be mappings when present (a clipfair record has all of them)
_SECTIONS = ("model", "dataset", "hydra", "config")


class RunFolderError(OutputError):
    """A run folder whose files were not written by `clipfair run` or cannot be read."""


def read_record(folder: Path | str) -> dict[str, Any]:
    """``folder``/run.json as a dict, checked to be a clipfair run record."""
    p = Path(folder) / "run.json"
    try:
        rec = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise RunFolderError(f"{p}: cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RunFolderError(f"{p}: not readable JSON ({' '.join(str(e).split())[:120]}); "
                             "not a clipfair run folder") from None
    if not isinstance(rec, dict):
        raise RunFolderError(f"{p}: not a clipfair run record (a JSON {type(rec).__name__}, not an object)")
    bad = [k for k in _SECTIONS if k in rec and rec[k] is not None and not isinstance(rec[k], dict)]
    if bad:
        raise RunFolderError(f"{p}: not a clipfair run record (its {', '.join(bad)} is not a mapping); "
                             "was it written by `clipfair run`?")
    return rec


def read_metrics(folder: Path | str, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """``folder``/metrics.csv (text as text, empty numeric cells missing), checked to hold
    ``columns`` (default: clipfair.stats.metrics.METRIC_COLUMNS)."""
    from .metrics import METRIC_COLUMNS

    p = Path(folder) / "metrics.csv"
    numeric = ("n", "count", "value", "ci_low", "ci_high")
    try:
        m = read_csv(p, keep_default_na=False, na_values={c: [""] for c in numeric}, encoding="utf-8")
    except OSError as e:
        raise RunFolderError(f"{p}: cannot be read ({e.strerror or e})") from None
    except pd.errors.EmptyDataError:
        raise RunFolderError(f"{p}: empty; not a finished clipfair run") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as e:
        raise RunFolderError(f"{p}: not a readable CSV ({type(e).__name__}); was it written by "
                             "`clipfair run`?") from None
    missing = [c for c in (columns or METRIC_COLUMNS) if c not in m.columns]
    if missing:
        raise RunFolderError(f"{p}: no column(s) {', '.join(missing)}; was it written by `clipfair run`?")
    return m
