"""Run folders: a run's outputs appear whole or not at all, two runs never mix, and every
output file name is safe.

* :func:`check_run_dir` (before any work): a folder that already holds another run's
  outputs is refused unless ``overwrite``; a folder that cannot be written is refused.
* :func:`staged_outputs`: every output is written into a temporary folder beside the run
  folder and moved into place only when all are written (with ``overwrite`` the previous
  outputs are moved out first). A failure - disk full, Ctrl-C, a bug - leaves the run
  folder as it was. The mechanism is folder-level: a module that adds an output file just
  writes it into the folder it is given.
* :func:`safe_filename`: the one place output file names are made from taxonomy,
  category or slice names (which may hold ``/``, spaces, ...).
* :func:`write_csv` / :func:`read_csv`: the one CSV writer of every output table and its
  reader. A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return is written with a leading ``'`` so that a spreadsheet reads it as text, never as a
  formula (OWASP's rule for CSV injection); a cell that begins with ``'`` gets one more, so
  :func:`read_csv` undoes exactly what was added. Numbers, negative ones included, and text
  that is a plain number (``-0.5``, ``+3``, ``-12%``) are written as they are.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

#: entries of a run folder that are not a run's outputs: Hydra's config copy (.hydra) and log,
#: hidden files (no output is hidden)
_NOT_OUTPUTS = re.compile(r"^(\..*|.*\.log)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+=-]+")
_MAX_NAME = 150  # characters of a file name (file systems allow 255 bytes)


#: first characters a spreadsheet reads as the start of a formula (OWASP: CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?%?$")


def csv_text(value: object) -> object:
    """A cell as :func:`write_csv` writes it: text that a spreadsheet would run as a formula
    (or that begins with ``'``) gets a leading ``'``; anything else unchanged."""
    if isinstance(value, str) and value and (
            value[0] == "'" or (value.startswith(FORMULA_START) and not _PLAIN_NUMBER.match(value))):
        return "'" + value
    return value


def _csv_untext(value: object) -> object:
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def write_csv(df: "pd.DataFrame", path: Path | str, float_format: str | None = "%.6g") -> None:
    """Write an output table (no index, ``\\n`` line ends), its text cells and column names
    through :func:`csv_text`; numeric columns are untouched."""
    out = df.copy()
    for col in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            out[col] = out[col].map(csv_text)
    out.columns = [csv_text(str(c)) for c in out.columns]
    out.to_csv(path, index=False, float_format=float_format, lineterminator="\n")


def read_csv(path: Path | str, **kwargs: Any) -> "pd.DataFrame":
    """Read a table :func:`write_csv` wrote (``kwargs`` as for ``pandas.read_csv``), undoing its
    leading ``'`` on text cells and column names."""
    df = pd.read_csv(path, **kwargs)
    for col in df.columns:
        if not (pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])):
            df[col] = df[col].map(_csv_untext)
    df.columns = [_csv_untext(str(c)) for c in df.columns]
    return df


class OutputError(RuntimeError):
    """A run folder that cannot be used or written; the message says what to do."""


def safe_filename(stem: str, suffix: str = "") -> str:
    """``stem`` as a file name: runs of characters other than letters, digits and ``_.@+=-``
    become ``_`` (so ``/`` never makes a folder), no leading dot, at most 150 characters."""
    s = _UNSAFE.sub("_", str(stem)).strip("._") or "x"
    return s[:_MAX_NAME] + suffix


def run_outputs(run_dir: Path | str) -> list[str]:
    """Names of the entries of ``run_dir`` that are a run's outputs (not Hydra's own files)."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if not _NOT_OUTPUTS.match(p.name))


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "No space left on device" in str(e))


def os_error_message(e: OSError, writing: Path | str | None = None) -> str | None:
    """A one-line message for a disk-full or permission error, naming the path; None for
    other errors."""
    path = e.filename or writing
    where = f" ({path})" if path else ""
    if _disk_full(e):
        return f"no space left on device while writing{where}; free some space and run again"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write{where}: {e.strerror or e}; choose a folder you can write to"
    return None


def check_run_dir(run_dir: Path | str, overwrite: bool = False) -> None:
    """Before any work: refuse ``run_dir`` if it holds another run's outputs (unless
    ``overwrite``) or if its folder cannot be written (the staging folder goes beside it)."""
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise OutputError(f"the results folder {d} is a file; choose another with hydra.run.dir=...")
    old = run_outputs(d)
    if old and not overwrite:
        shown = ", ".join(old[:5]) + (", ..." if len(old) > 5 else "")
        raise OutputError(f"the results folder {d} already holds another run's outputs ({shown}); "
                          "choose a new folder (hydra.run.dir=...) or set overwrite=true to replace them")
    probe = d.parent / f".clipfair-probe-{uuid.uuid4().hex}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise OutputError(f"the results folder {d} cannot be written ({e.strerror or e}); "
                          "choose another with hydra.run.dir=...") from None


@contextmanager
def staged_outputs(run_dir: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside ``run_dir`` to write every output into; when the block
    finishes, move its contents into ``run_dir`` (after moving ``run_dir``'s previous outputs
    out, when ``overwrite``). If the block fails, the staging folder is removed and
    ``run_dir`` keeps what it had; a disk-full error becomes a one-line OutputError."""
    d = Path(run_dir)
    stage = d.parent / f".clipfair-staging-{d.name}-{uuid.uuid4().hex[:12]}"
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        raise OutputError(f"the results folder {d.parent} cannot be written ({e.strerror or e}); "
                          "choose another with hydra.run.dir=...") from None
    try:
        yield stage
        _commit(stage, d, overwrite)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        msg = os_error_message(e, e.filename or stage)
        if msg is None:
            raise
        raise OutputError(f"{msg}; {d} was left unchanged") from e
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _commit(stage: Path, run_dir: Path, overwrite: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    old = run_outputs(run_dir)
    if old and not overwrite:
        raise OutputError(f"{run_dir} received another run's outputs while this run was working "
                          f"({', '.join(old[:5])}); this run's outputs are not written")
    trash = run_dir.parent / f".clipfair-old-{run_dir.name}-{uuid.uuid4().hex[:12]}"
    if old:  # renames on one file system: no space needed, nothing half-written
        trash.mkdir()
        for name in old:
            os.replace(run_dir / name, trash / name)
    for p in sorted(stage.iterdir()):
        os.replace(p, run_dir / p.name)
    stage.rmdir()
    shutil.rmtree(trash, ignore_errors=True)


def require_finished_run(run_dir: Path | str, needs: tuple[str, ...] = ("predictions.parquet", "metrics.csv",
                                                                          "run.json")) -> None:
    """Raise OutputError unless ``run_dir`` holds a finished run (its outputs are moved in
    only when all are written, so a folder without run.json is unfinished)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise OutputError(f"{d} is not a folder; give the folder of a finished `clipfair run`")
    missing = [f for f in needs if not (d / f).is_file()]
    if missing and not run_outputs(d):
        raise OutputError(f"{d} is an unfinished run (no {', '.join(missing)}); run it to the end first "
                          "(the same command resumes from the cached embeddings)")
    if missing:
        raise OutputError(f"{d} is not a clipfair run folder: {', '.join(missing)} missing")
