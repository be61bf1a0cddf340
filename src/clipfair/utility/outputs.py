"""Run folders: a run's outputs appear whole or not at all, two runs never mix, and every
output file name is safe.

Layer: utility (below data; imports no other clipfair module).

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
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

log = logging.getLogger(__name__)

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


#: run.json's key holding the manifest of the files a run wrote ({relative path: {bytes, sha256}})
MANIFEST_KEY = "outputs"
#: files in a run folder that are clipfair's own without a manifest entry: Hydra's job log and
#: the note `clipfair run` leaves when a job stops (collect reads it)
_OWN_FILES = ("cli.log", "failed.json")
_SHOWN = 5  # file names a refusal names before "and N more"


class RunDirRefused(OutputError):
    """A results folder refused before any work (it holds files clipfair did not write, or lies
    in a place it must not write to); nothing is written into it."""


def _shown(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entries(d: Path) -> list[str]:
    """Relative paths of the non-hidden files (and empty folders, with a trailing /) under
    ``d``; anything under a hidden name (.hydra, .DS_Store, ...) is left out."""
    out = []
    for root, dirs, files in os.walk(d):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        rel = Path(root).relative_to(d)
        shown = [f for f in sorted(files) if not f.startswith(".")]
        out += [(rel / f).as_posix() for f in shown]
        if rel != Path(".") and not dirs and not files:
            out.append(rel.as_posix() + "/")
    return sorted(out)


def manifest_of(folder: Path | str) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under ``folder`` except run.json (which
    holds the manifest)."""
    d = Path(folder)
    return {rel: {"bytes": (d / rel).stat().st_size, "sha256": _file_sha256(d / rel)}
            for rel in _entries(d) if rel != "run.json" and not rel.endswith("/")}


def write_manifest(folder: Path | str) -> None:
    """Record in ``folder``/run.json the files the run wrote there (nothing without run.json)."""
    d = Path(folder)
    if not (d / "run.json").is_file():
        return
    rec = json.loads((d / "run.json").read_text())
    rec[MANIFEST_KEY] = {"files": manifest_of(d)}
    (d / "run.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")


def read_manifest(folder: Path | str) -> dict[str, dict[str, Any]] | None:
    """The manifest of the run in ``folder`` (None: no run.json, or one without a manifest)."""
    p = Path(folder) / "run.json"
    try:
        rec = json.loads(p.read_text())
        files = rec[MANIFEST_KEY]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None
    return files


def own_failed_note(p: Path) -> bool:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "user_error" in data and "message" in data


def _removable(d: Path, overwrite: bool) -> list[str]:
    """The files an overwrite of ``d`` removes (its earlier run's manifest files, each
    unchanged since written); raises RunDirRefused for a folder holding anything else."""
    entries = _entries(d) if d.is_dir() else []
    entries = [e for e in entries if not (e == "cli.log" or (e == "failed.json" and own_failed_note(d / e)))]
    if not entries:
        return []
    manifest = read_manifest(d)
    if manifest is None:
        raise RunDirRefused(f"the results folder {d} holds files clipfair did not write ({_shown(entries)}); "
                            "clipfair never deletes them: choose a new or empty folder with hydra.run.dir=...")
    others = [e for e in entries if e != "run.json" and e not in manifest]
    if others:
        raise RunDirRefused(f"the results folder {d} holds files that are not an earlier run's outputs "
                            f"({_shown(others)}); clipfair deletes only the files a run recorded writing: "
                            "move them away or choose a new folder with hydra.run.dir=...")
    if not overwrite:
        raise RunDirRefused(f"the results folder {d} already holds another run's outputs ({_shown(entries)}); "
                            "choose a new folder (hydra.run.dir=...) or set overwrite=true to replace them")
    changed = [rel for rel, m in manifest.items() if (d / rel).is_file()
               and ((d / rel).stat().st_size != m.get("bytes") or _file_sha256(d / rel) != m.get("sha256"))]
    if changed:
        raise RunDirRefused(f"the results folder {d} holds an earlier run's files that changed since it wrote "
                            f"them ({_shown(changed)}); clipfair does not delete them: move them away or "
                            "choose a new folder with hydra.run.dir=...")
    return [rel for rel in manifest if (d / rel).is_file()] + ["run.json"]


def _resolved(p: Path | str) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def check_location(run_dir: Path | str, places: Sequence[tuple[str, Path | str | None, bool]]) -> None:
    """Refuse a results folder that is or contains one of ``places`` ((what, path, also_inside)),
    or, where ``also_inside``, lies inside it (e.g. the dataset root, the cache folder)."""
    d = _resolved(run_dir)
    dr = Path(os.path.realpath(d))
    for what, place, inside in places:
        if not place:
            continue
        p = _resolved(place)
        pr = Path(os.path.realpath(p))
        for a, b in ((d, p), (dr, pr)):
            if a == b or a in b.parents:
                how = "is" if a == b else "contains"
            elif inside and b in a.parents:
                how = "lies inside"
            else:
                continue
            raise RunDirRefused(f"the results folder {run_dir} {how} {what} {place}; clipfair writes and "
                                "replaces files in its results folder: choose another with hydra.run.dir=...")


def check_run_dir(run_dir: Path | str, overwrite: bool = False, write_probe: bool = True) -> None:
    """Before any work: refuse ``run_dir`` if it holds anything but an earlier run's recorded
    outputs, or those unless ``overwrite``, or if its folder cannot be written (the staging
    folder goes beside it)."""
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise RunDirRefused(f"the results folder {d} is a file; choose another with hydra.run.dir=...")
    _removable(d, overwrite)
    if not write_probe:
        return
    probe = d.parent / f".clipfair-probe-{uuid.uuid4().hex}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise RunDirRefused(f"the results folder {d} cannot be written ({e.strerror or e}); "
                            "choose another with hydra.run.dir=...") from None


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_LEFTOVER = re.compile(r"^\.clipfair-(staging|old)-.*-([0-9a-f]{8})-(\d+)-[0-9a-f]{12}$")
STALE_AFTER_S = 24 * 3600  # a leftover of another machine (or an unreadable owner) is removed after this


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _leftover_dead(path: Path, host: str, pid: int) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if host == _HOST and pid != os.getpid():
        return not pid_alive(pid)
    return age > STALE_AFTER_S


def remove_leftovers(parent: Path | str) -> list[Path]:
    """Remove the staging / trash folders a killed run left in ``parent`` (their names carry the
    owner's host and pid: only a dead owner's on this machine, or any older than a day)."""
    removed = []
    try:
        children = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in children:
        m = _LEFTOVER.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and _leftover_dead(p, m.group(2), int(m.group(3))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d folder(s) left by killed runs in %s", len(removed), parent)
    return removed


def _tag() -> str:
    return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@contextmanager
def staged_outputs(run_dir: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside ``run_dir`` to write every output into; when the block
    finishes, record the files in run.json's manifest and move them into ``run_dir`` (after
    moving ``run_dir``'s previous run's recorded outputs out, when ``overwrite``). If the block
    fails, the staging folder is removed and ``run_dir`` keeps what it had; a disk-full error
    becomes a one-line OutputError."""
    d = Path(run_dir)
    remove_leftovers(d.parent)
    stage = d.parent / f".clipfair-staging-{d.name}-{_tag()}"
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        raise OutputError(f"the results folder {d.parent} cannot be written ({e.strerror or e}); "
                          "choose another with hydra.run.dir=...") from None
    try:
        yield stage
        write_manifest(stage)
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
    try:
        old = _removable(run_dir, overwrite)
    except RunDirRefused as e:
        raise OutputError(f"{run_dir} changed while this run was working ({e}); this run's outputs are "
                          "not written") from None
    trash = run_dir.parent / f".clipfair-old-{run_dir.name}-{_tag()}"
    if old:  # renames on one file system: no space needed, nothing half-written
        trash.mkdir()
        for i, rel in enumerate(old):
            os.replace(run_dir / rel, trash / str(i))
        for rel in old:  # folders the earlier run made, now empty
            for parent in (run_dir / rel).parents:
                if parent == run_dir or run_dir not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break
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
