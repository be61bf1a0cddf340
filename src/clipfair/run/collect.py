"""`clipfair collect DIR...`: one table across many runs (a Hydra multirun folder, say).

Layer: run (reads finished run folders).

Finds the run folders under the given folders, keeps the finished ones (``run.json`` plus
every output it vouches for) and lists the failed (``failed.json``, written by ``clipfair run``
when a job stops) and unfinished ones (a Hydra job folder without outputs) apart, never mixed
in. Each finished run is labelled by its model, dataset and the overrides that differ between
runs, all read from ``run.json``. Writes

* ``collected.csv``: the run label columns (:data:`LABEL_COLUMNS`) + every ``metrics.csv`` column;
* ``collected.md`` / ``collected.html``: the runs, the runs left out, runs x groups tables of a
  chosen metric (value, Wilson interval, n) and each run's largest disparity with a
  multiplicity-adjusted interval for the gap (built as :mod:`clipfair.report.document` sections);
* ``collected_<metric>_<taxonomy>_<method>[_<category>]_<slice>.png``: the tables as plots.

Only the files a run wrote are read; no metric is recomputed except the gap's interval.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..report.document import Document, Figure, Note, Section, Table, Text, to_html, to_markdown
from ..analyses import recorded_analyses
from ..stats.specs import ROW_KEYS, is_ranked, metric_spec, metric_specs
from ..stats.metrics import METRIC_COLUMNS, SLICE_SUMMARY_PREFIX, stratum_values
from ..utility.outputs import write_csv
from ..stats.runfolder import RunFolderError, read_metrics, read_record
from ..stats.sanity import AT_CHANCE_NOTE
from ..stats.inference import newcombe_diff

log = logging.getLogger(__name__)

__all__ = ["CollectError", "RunFolder", "find_runs", "collect", "largest_disparities",
           "write_collected", "main", "LABEL_COLUMNS"]

LABEL_COLUMNS: tuple[str, ...] = ("run", "label", "model", "dataset", "job", "overrides")
OUTPUTS: tuple[str, ...] = ("run.json", "predictions.parquet", "metrics.csv", "disparities.csv")
FAILED_FILE = "failed.json"  # written by `clipfair run` into a job folder whose run stopped


class CollectError(ValueError):
    """Nothing to collect, or a folder that cannot be read."""


@dataclass
class RunFolder:
    """One run found under the collected folders: ``status`` is finished, failed or unfinished."""

    path: Path
    status: str
    overrides: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    label: str = ""

    @property
    def model(self) -> str:
        return str((self.record.get("model") or {}).get("name_or_path", ""))

    @property
    def dataset(self) -> str:
        d = self.record.get("dataset") or {}
        split = (d.get("source") or {}).get("split")
        return f"{d.get('name', '')}{f' ({split})' if split else ''}"

    @property
    def job(self) -> int | None:
        return (self.record.get("hydra") or {}).get("job_num")

    @property
    def banner(self) -> str:
        """run.json's sanity banner ('' when the model passed its gates, or an older run)."""
        return str((self.record.get("sanity") or {}).get("banner") or "")

    @property
    def findings(self) -> dict[str, list[str]]:
        """taxonomy -> the categories whose rate may be a finding (run.json; older runs: none)."""
        f = self.record.get("findings")
        return {str(k): [str(c) for c in v] for k, v in f.items()} if isinstance(f, dict) else {}

    @property
    def strata(self) -> list[str]:
        """The dataset's stratum attributes (run.json; e.g. FACET's class1): groups of different
        strata are never compared."""
        s = self.record.get("strata")
        return [str(a) for a in s] if isinstance(s, list) else []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _hydra_overrides(folder: Path) -> list[str]:
    from ..utility.yamlio import YamlError, load_yaml_file

    try:
        data = load_yaml_file(folder / ".hydra" / "overrides.yaml")
    except (OSError, YamlError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _classify(folder: Path) -> RunFolder:
    failed = _read_json(folder / FAILED_FILE) if (folder / FAILED_FILE).exists() else None
    if failed is not None:
        return RunFolder(folder, "failed", list(failed.get("overrides") or _hydra_overrides(folder)),
                         message=f"{failed.get('error', 'error')}: {failed.get('message', '')}")
    if (folder / "run.json").exists():
        try:
            read_record(folder)
        except RunFolderError as e:
            return RunFolder(folder, "unreadable", _hydra_overrides(folder), message=str(e))
    record = _read_json(folder / "run.json") if (folder / "run.json").exists() else None
    missing = [f for f in OUTPUTS if not (folder / f).is_file()]
    if record is None or missing:
        why = ("run.json unreadable" if (folder / "run.json").exists() and record is None
               else f"missing {', '.join(missing)}")
        return RunFolder(folder, "unfinished", list((record or {}).get("overrides") or _hydra_overrides(folder)),
                         record or {}, message=f"{why} (still running, killed, or stopped before writing)")
    return RunFolder(folder, "finished", list(record.get("overrides") or []), record)


def find_runs(dirs: Sequence[Path | str]) -> list[RunFolder]:
    """Every run folder under ``dirs`` (a folder with run.json, failed.json or a Hydra
    ``.hydra/overrides.yaml``), in path order. Hidden folders are skipped: submitit's logs
    (``.submitit``) and the staging folders a run writes its outputs into before moving them."""
    found: set[Path] = set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise CollectError(f"{d}: not a folder; give run folders or a multirun folder")
        for name in ("run.json", FAILED_FILE, "overrides.yaml"):
            for p in d.rglob(name):
                folder = p.parent.parent if name == "overrides.yaml" else p.parent
                if name == "overrides.yaml" and p.parent.name != ".hydra":
                    continue
                if any(part.startswith(".") for part in folder.relative_to(d).parts):
                    continue
                found.add(folder.resolve())
    return [_classify(f) for f in sorted(found)]


# --------------------------------------------------------------------------- labels

def _short(value: str) -> str:
    """A local path shortened to its last component (hub ids like org/name stay whole)."""
    if value.startswith(("/", "./", "../", "~")):
        return Path(value.rstrip("/")).name or value
    return value


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _label_runs(runs: Sequence[RunFolder], base: Path) -> None:
    """Label = the overrides whose values differ between the finished runs (hydra.* left
    out), else the folder."""
    parsed = [dict(_split(o) for o in r.overrides if not _split(o)[0].startswith("hydra.")) for r in runs]
    done = [p for r, p in zip(runs, parsed) if r.status == "finished"]
    keys = list(dict.fromkeys(k for p in done for k in p))
    varying = [k for k in keys if len({p.get(k) for p in done}) > 1]
    used: dict[str, int] = {}
    for r, p in zip(runs, parsed):
        try:
            rel = str(r.path.relative_to(base))
        except ValueError:
            rel = str(r.path)
        label = ", ".join(f"{k}={_short(p[k])}" for k in varying if k in p) or rel
        used[label] = used.get(label, 0) + 1
        r.label = label if used[label] == 1 else f"{label} #{used[label]}"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base)) or "."
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the table

def _read_metrics(folder: Path) -> pd.DataFrame:
    return read_metrics(folder, METRIC_COLUMNS)


def collect(dirs: Sequence[Path | str]) -> tuple[pd.DataFrame, list[RunFolder]]:
    """(collected table, every run folder found). The table holds finished runs only."""
    runs = find_runs(dirs)
    base = Path(dirs[0]).resolve() if len(dirs) == 1 else Path.cwd().resolve()
    _label_runs(runs, base)
    frames = []
    for r in runs:
        if r.status != "finished":
            continue
        try:
            m = _read_metrics(r.path)
        except RunFolderError as e:  # left out with its one line; the others are collected
            r.status, r.message = "unreadable", str(e)
            continue
        labels = {"run": _relative(r.path, base), "label": r.label, "model": r.model, "dataset": r.dataset,
                  "job": r.job, "overrides": " ".join(r.overrides)}
        frames.append(pd.concat([pd.DataFrame({k: [v] * len(m) for k, v in labels.items()}), m], axis=1))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*LABEL_COLUMNS, *METRIC_COLUMNS])
    table["job"] = table["job"].astype("Int64")
    return table, runs


# --------------------------------------------------------------------------- disparities

DISPARITY_KEYS = ["taxonomy", "method", "metric", "category", "slice"]


def candidate_rows(table: pd.DataFrame, findings: dict[str, dict[str, list[str]]] | None = None) -> pd.Series:
    """Rows of the collected table that may give a finding: a metric with a declared direction
    (accuracies), or a rate of a category the run's taxonomy declares as a finding's harm
    (``findings``: run label -> taxonomy -> categories, from run.json). Never ``label_rate`` (a
    target taxonomy's own classes: a confusion description) nor a rate of a category routed on
    purpose (``human`` beside ``child``)."""
    findings = findings or {}
    out = []
    given = (table["direction"].astype(object).where(table["direction"].notna(), "").astype(str)
             if "direction" in table.columns else pd.Series("", index=table.index))
    for lab, tax, met, cat, dirn in zip(table["label"], table["taxonomy"], table["metric"],
                                        table["category"].astype(object).where(table["category"].notna(), ""), given):
        spec = metric_spec(str(met))
        if spec is None:  # a user analysis's outcome: the direction its run wrote into metrics.csv
            out.append(dirn in ("higher_is_better", "lower_is_better"))
        elif not is_ranked(str(met)) or str(met).startswith(SLICE_SUMMARY_PREFIX):
            out.append(False)
        elif spec.direction_from_harm:
            out.append(str(cat) in set(findings.get(str(lab), {}).get(str(tax), ())))
        else:
            out.append(spec.direction != "neutral")
    return pd.Series(out, index=table.index, dtype=bool)


def _stratum_key(run: pd.DataFrame, strata: Sequence[str]) -> pd.Series:
    """Each row's stratum, as :func:`clipfair.stats.metrics.disparities` finds it
    (:func:`~clipfair.stats.metrics.stratum_values`): '' for a slice that names no stratum
    attribute, None where the stratum cannot be told (such rows are never compared)."""
    key = pd.Series("", index=run.index, dtype=object)
    for sl, part in run.groupby("slice", sort=False):
        attrs = str(sl).split("+")
        at = [i for i, a in enumerate(attrs) if a in strata]
        if at:
            key.loc[part.index] = [None if v is None else "\x1f".join(v) for v in stratum_values(part, attrs, at)]
    return key


def largest_disparities(table: pd.DataFrame, min_n: int = 30, confidence: float = 0.95,
                        findings: dict[str, dict[str, list[str]]] | None = None,
                        noise: set[str] | None = None,
                        strata: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per run, the largest gap between two groups of one slice (the overall slice left out;
    groups with at least ``min_n`` images) among the rows that may give a finding
    (:func:`candidate_rows`), with Newcombe's interval for the gap at a Bonferroni-adjusted
    level: the gap was picked from every pair of groups those rows offer, so the level is
    ``1 - (1 - confidence) / pairs``. ``finding`` is true when that interval excludes zero and
    the run's model passed its sanity gates (``noise``: labels of runs that did not; their
    ``note`` says so). ``strata``: run label -> the dataset's stratum attributes (run.json): in a
    slice that names one (FACET's ``class1+gender_presentation``) only groups of the same stratum
    are compared, and a slice of stratum attributes alone (``class1``) gives no gap."""
    cols = ["label", *DISPARITY_KEYS, "high_group", "high_value", "high_n", "low_group", "low_value", "low_n",
            "gap", "gap_ci_low", "gap_ci_high", "pairs", "adjusted_confidence", "finding", "note"]
    out = []
    noise = noise or set()
    t = table[(table["slice"] != "overall") & (table["n"] >= min_n) & table["value"].notna()
              & table["count"].notna()]
    t = t[candidate_rows(t, findings)] if len(t) else t
    strata = strata or {}
    for label, run in t.groupby("label", sort=False):
        own = [str(a) for a in strata.get(str(label), ())]
        if own:  # slice attribute names never hold '+' (the data layer refuses them)
            only = run["slice"].astype(str).map(lambda sl: set(sl.split("+")) <= set(own))
            run = run[~only]
            run = run.assign(_stratum=_stratum_key(run, own))
        else:
            run = run.assign(_stratum="")
        if run.empty:
            continue
        g = run.groupby([*DISPARITY_KEYS, "_stratum"], sort=False)
        sizes = g.size()
        pairs = int((sizes * (sizes - 1) // 2).sum())
        if pairs == 0:
            continue
        i_hi, i_lo = g["value"].idxmax(), g["value"].idxmin()
        gaps = run.loc[i_hi.to_numpy(), "value"].to_numpy() - run.loc[i_lo.to_numpy(), "value"].to_numpy()
        k = int(np.argmax(gaps))
        hi, lo = run.loc[i_hi.iloc[k]], run.loc[i_lo.iloc[k]]
        level = 1.0 - (1.0 - confidence) / pairs
        low, high = (float(v) for v in newcombe_diff(hi["count"], hi["n"], lo["count"], lo["n"], level))
        at_chance = label in noise
        out.append([label, *(hi[c] for c in DISPARITY_KEYS), hi["group"], float(hi["value"]), int(hi["n"]),
                    lo["group"], float(lo["value"]), int(lo["n"]), float(gaps[k]), low, high, pairs, level,
                    bool(low > 0) and not at_chance, AT_CHANCE_NOTE if at_chance else ""])
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------- report

def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * float(x):.1f}%"


def _cell(r: Any, min_n: int, mean: bool = False) -> str:
    flag = " †" if int(r.n) < min_n else ""
    if mean:  # a mean outcome (e.g. retrieval's skew): its own scale, not a percentage
        num = lambda x: "–" if pd.isna(x) else f"{float(x):.4g}"  # noqa: E731
        ci = "" if pd.isna(r.ci_low) else f" [{num(r.ci_low)}, {num(r.ci_high)}]"
        return f"{num(r.value)}{ci} (n={int(r.n)}){flag}"
    ci = "" if pd.isna(r.ci_low) else f" [{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}]"
    return f"{_pct(r.value)}{ci} (n={int(r.n)}){flag}"


# ---- the results model's key columns (issue 20, part 3): rows of one table are keyed by taxonomy,
# method, category and every key column that applies (k, query_set, query, desired, ...), read as
# columns, never split from a string

def _row_keys(table: pd.DataFrame) -> list[str]:
    """The key columns of ``table`` beyond taxonomy / method / category (:data:`ROW_KEYS`)."""
    return [c for c in ROW_KEYS if c in table.columns]


def _key_text(table: pd.DataFrame, col: str) -> pd.Series:
    """A key column as text ('' where it does not apply; integers without a decimal point)."""
    v = table[col]
    num = pd.to_numeric(v, errors="coerce")
    whole = num.notna() & (num % 1 == 0)
    out = v.astype(object).where(v.notna(), "").astype(str)
    return out.where(~whole, num.where(whole, 0).astype("int64").astype(str))


def _keep_keys(table: pd.DataFrame, keys: Sequence[str] | None) -> pd.DataFrame:
    """Rows whose key columns have the given values (``keys``: ``COLUMN=VALUE`` strings)."""
    for kv in keys or ():
        col, sep, val = str(kv).partition("=")
        if not sep or col not in ROW_KEYS:
            raise CollectError(f"--key {kv!r}: give COLUMN=VALUE with COLUMN one of {', '.join(ROW_KEYS)}, "
                               "e.g. --key k=5 --key desired=dataset")
        if col not in table.columns:
            raise CollectError(f"--key {kv!r}: no collected run has a {col} column")
        table = table[_key_text(table, col) == val]
    return table


def _selections(table: pd.DataFrame, metric: str, taxonomies: Sequence[str] | None,
                methods: Sequence[str] | None, categories: Sequence[str] | None) -> list[tuple[str, ...]]:
    """(taxonomy, method, category, *key column values) of the tables to build."""
    t = table[table["metric"] == metric]
    if taxonomies:
        t = t[t["taxonomy"].isin(taxonomies)]
    if methods:
        t = t[t["method"].isin(methods)]
    if categories:
        t = t[t["category"].isin(categories)]
    keys = [_key_text(t, c) for c in _row_keys(t)]
    return list(dict.fromkeys(zip(t["taxonomy"], t["method"], t["category"], *keys)))


def _plot(sub: pd.DataFrame, labels: list[str], groups: list[str], ylabel: str, title: str, path: Path,
          scale: float = 100.0, how: str = "Wilson intervals") -> Path:
    from ..report.figures import save_figure
    from ..report.render import grouped_bars, new_figure, style_axis

    ticks = ["\n".join(str(g).split("+")) for g in groups]  # one line per value, never split inside a name
    fig = new_figure(ticks, len(labels), legend_right=True)
    ax = fig.add_subplot(1, 1, 1)
    grouped_bars(ax, groups, [(lab, sub[sub["label"] == lab]) for lab in labels], scale=scale)
    style_axis(fig, ax, ticks, ylabel, title + f"\n(error bars: {how})", len(labels))
    if scale != 100.0:  # a mean on its own scale: the axis spans the values and their intervals (and 0)
        v = pd.to_numeric(pd.concat([sub["value"], sub["ci_low"], sub["ci_high"]]), errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)] * scale
        lo, hi = min(0.0, float(v.min(initial=0.0))), max(0.0, float(v.max(initial=0.0)))
        pad = 0.05 * (hi - lo) or 1.0
        ax.set_ylim(lo - (pad if lo < 0 else 0.0), hi + pad)
    ax.legend(title="run", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def build_document(table: pd.DataFrame, runs: Sequence[RunFolder], out_dir: Path, *, metric: str = "accuracy",
                   slices: Sequence[str] | None = None, taxonomies: Sequence[str] | None = None,
                   methods: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                   min_n: int = 30, confidence: float = 0.95, base: Path | None = None,
                   keys: Sequence[str] | None = None) -> tuple[Document, list[Path]]:
    """The cross-run summary as document sections, and the plots it shows (written to ``out_dir``).
    ``slices``: default the first attribute slice the runs computed (their datasets' declared
    order, e.g. race for FairFace)."""
    from .pipeline import DISCLAIMER
    from ..utility.outputs import safe_filename

    if slices is None:
        present = list(dict.fromkeys(table["slice"].astype(str))) if "slice" in table.columns else []
        slices = [s for s in present if s != "overall" and "+" not in s][:1]
    base = base or out_dir
    finished = [r for r in runs if r.status == "finished"]
    left_out = [r for r in runs if r.status != "finished"]
    broken = [r for r in finished if r.banner]
    intro: list[Any] = []
    if broken:
        intro.append(Note(f"{len(broken)} run(s) whose model does not work (random weights or accuracy at chance): "
                          + "; ".join(f"{r.label}: {r.banner}" for r in broken), "danger"))
    intro.append(Note(DISCLAIMER))
    if any(r.record.get("demo") for r in finished):
        intro.append(Note("Some runs used the bundled **toy model** (synthetic faces, planted biases): "
                          "their numbers say nothing about CLIP or any real model.", "warning"))
    intro.append(Text(
        f"{len(finished)} finished run(s) collected from {len(runs)} run folder(s). Each cell is a value from "
        "that run's `metrics.csv` with its Wilson interval and n (images in the group). Runs on different "
        "datasets, splits or subsets describe different images; differences between runs are not tested "
        "here, so overlapping intervals say nothing either way. Demographic labels are annotators' perceptions."))
    sections: list[Section] = []
    sections.append(Section("Runs", [Table(
        ["label", "model", "model works?", "dataset", "images", "job", "folder"],
        [[r.label, r.model, "**NO**: " + AT_CHANCE_NOTE if r.banner else
          ("yes" if r.record.get("sanity") else "not checked (older run)"), r.dataset,
          (r.record.get("counts") or {}).get("images_evaluated", "–"),
          "–" if r.job is None else r.job, f"`{_relative(r.path, base)}`"] for r in finished],
        align="llllrrl")]))
    if left_out:
        sections.append(Section("Runs left out", [
            Note(f"{len(left_out)} run(s) did not finish and are not in any table below.", "warning"),
            Table(["folder", "status", "overrides", "why"],
                  [[f"`{_relative(r.path, base)}`", r.status, " ".join(r.overrides) or "–", r.message]
                   for r in left_out])]))
    else:
        sections.append(Section("Runs left out", [Text("None: every run found finished.")]))

    written: list[Path] = []
    tables: list[Any] = [Text(f"Rows: runs; columns: groups. † marks a group of fewer than {min_n} images "
                              "(shown, never headlined).")]
    spec = metric_spec(metric)
    mean = spec is not None and spec.kind == "mean"
    kcols = _row_keys(table)
    chosen = _keep_keys(table, keys)
    # per taxonomy / method / category, the key columns whose values differ between its rows of the
    # metric (e.g. retrieval's query, k, desired; not a template set or a top-k's k, said by the names)
    of_metric = table[table["metric"] == metric]
    varying = {key: [c for c in kcols if _key_text(part, c).nunique() > 1]
               for key, part in of_metric.groupby(["taxonomy", "method", "category"], sort=False, dropna=False)}
    for tax, meth, cat, *kvals in _selections(chosen, metric, taxonomies, methods, categories):
        keyed = chosen
        for c, v in zip(kcols, kvals):
            keyed = keyed[_key_text(keyed, c) == v]
        named = [f"{c}={v}" for c, v in zip(kcols, kvals)  # the keys that tell this table from its siblings
                 if v != "" and c in varying.get((tax, meth, cat), ())]
        for sl in slices:
            sub = keyed[(keyed["metric"] == metric) & (keyed["taxonomy"] == tax) & (keyed["method"] == meth)
                        & (keyed["category"] == cat) & (keyed["slice"] == sl)]
            if sub.empty:
                continue
            labels = list(dict.fromkeys(sub["label"]))
            groups = list(dict.fromkeys(sub["group"]))
            cells = {(r.label, r.group): _cell(r, min_n, mean) for r in sub.itertuples(index=False)}
            what = (f"{metric}{f' of {cat}' if cat else ''} · {tax} · {meth} by {sl}"
                    + (f" ({', '.join(named)})" if named else ""))
            name = "collected_" + "_".join(safe_filename(x) for x in (metric, tax, meth, *([cat] if cat else []),
                                                                      *named, sl)) + ".png"
            how = (spec.interval if spec is not None and mean else "Wilson") + " intervals"
            blocks: list[Any] = [Table(["run", *groups], [[lab, *(cells.get((lab, g), "–") for g in groups)]
                                                          for lab in labels], align="l" + "r" * len(groups))]
            if "interval_method" in sub.columns and sub["ci_low"].isna().any():  # why a cell has no interval
                why = [str(x) for x in dict.fromkeys(sub.loc[sub["ci_low"].isna(), "interval_method"].dropna())
                       if str(x)]
                if why:
                    blocks.append(Text("Cells without an interval: " + "; ".join(why) + "."))
            finite = np.isfinite(pd.to_numeric(sub["value"], errors="coerce").to_numpy(float))
            if not mean or finite.all():  # a -inf skew (a value absent from the top k) is not drawn
                ylabel = ("accuracy (%)" if metric == "accuracy" else metric if mean
                          else "share of the group's images (%)")
                written.append(_plot(sub, labels, groups, ylabel, what, out_dir / name, scale=1.0 if mean else 100.0,
                                     how=how))
                blocks.append(Figure(name, f"{what}, every run ({how})"))
            tables.append(Section(what, blocks))
    if len(tables) == 1:
        tables.append(Text(f"No {metric} rows for the chosen taxonomies, methods and slices ({', '.join(slices)})."))
    sections.append(Section(f"{metric} across runs", tables))

    disp = largest_disparities(table, min_n, confidence, findings={r.label: r.findings for r in finished},
                               noise={r.label for r in broken}, strata={r.label: r.strata for r in finished})
    rows = [[d.label, f"{d.metric}{f' of {d.category}' if d.category else ''} · {d.taxonomy} · {d.method}", d.slice,
             f"{d.high_group} {_pct(d.high_value)} (n={d.high_n})", f"{d.low_group} {_pct(d.low_value)} (n={d.low_n})",
             f"{100 * d.gap:.1f} [{100 * d.gap_ci_low:.1f}, {100 * d.gap_ci_high:.1f}]",
             d.note if d.note else "**yes**" if d.finding else "no"] for d in disp.itertuples(index=False)]
    sections.append(Section("Largest disparity per run", [
        Text(f"Per run, the largest gap between the higher and the lower group of one slice, over the metrics "
             f"with a declared direction (accuracies: the lower group is worse off) and the rates of the "
             f"categories each taxonomy declares as a finding's harm (the higher group is worse off), among "
             f"groups of at least {min_n} images. Label rates (a target taxonomy's own classes: how the classifier "
             f"answers, not a disparity) and rates of categories without a declared harm are left out. The gap's "
             f"interval (Newcombe's hybrid score interval) is Bonferroni-adjusted for every pair of groups the "
             f"gap was picked from, so a **finding** is a gap whose adjusted interval excludes zero, from a model "
             f"that passed its sanity gates."),
        Table(["run", "what", "slice", "higher", "lower", "gap pp [adjusted CI]", "finding"], rows, align="lllllrl")
        if rows else Text(f"No run has two groups of at least {min_n} images in a slice.")]))
    return Document("clipfair: runs collected", sections, intro), written


def write_collected(dirs: Sequence[Path | str], out_dir: Path | str | None = None, **options: Any) -> dict[str, Any]:
    """Collect the runs under ``dirs`` into ``out_dir`` (default: the first folder). Returns the
    written paths and the run folders found."""
    table, runs = collect(dirs)
    if not any(r.status == "finished" for r in runs):
        listed = "; ".join(f"{r.path}: {r.status} ({r.message})" for r in runs) or "no run folders found"
        raise CollectError(f"no finished run under {', '.join(map(str, dirs))}: {listed}")
    out = Path(out_dir) if out_dir is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    base = Path(dirs[0]).resolve() if len(dirs) == 1 else Path.cwd().resolve()
    write_csv(table, out / "collected.csv")
    doc, plots = build_document(table, runs, out, base=base, **options)
    extra: list[Path] = []
    finished = [r for r in runs if r.status == "finished"]
    for cls, which in recorded_analyses([r.record for r in finished]):  # each analysis's own collect hook
        files, sections = cls.collect([finished[i] for i in which], base, out)
        extra += list(files)
        doc.sections.extend(sections)
    (out / "collected.md").write_text(to_markdown(doc))
    (out / "collected.html").write_text(to_html(doc, base_dir=out))
    return {"paths": [out / "collected.csv", out / "collected.md", out / "collected.html", *plots, *extra],
            "runs": runs}


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipfair collect",
                                 description="Gather finished runs (e.g. a multirun folder) into one table.")
    ap.add_argument("dirs", nargs="+", type=Path, help="folders holding run folders (searched recursively)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the first folder)")
    ap.add_argument("--metric", default="accuracy",
                    help="metric of the runs x groups tables (default accuracy; any metric in the runs' "
                         f"metrics.csv, e.g. {', '.join(sorted(metric_specs()))} or a user analysis's outcome)")
    ap.add_argument("--slice", dest="slices", action="append", default=None,
                    help="slice of the tables, repeatable (default: the runs' first attribute slice, e.g. race)")
    ap.add_argument("--taxonomy", dest="taxonomies", action="append", default=None,
                    help="only these taxonomies, repeatable (default all with the metric)")
    ap.add_argument("--method", dest="methods", action="append", default=None, help="only these methods")
    ap.add_argument("--category", dest="categories", action="append", default=None,
                    help="with --metric rate: only these categories")
    ap.add_argument("--key", dest="keys", action="append", default=None, metavar="COLUMN=VALUE",
                    help="only rows whose key column has this value, repeatable (columns: "
                         f"{', '.join(ROW_KEYS)}; e.g. --metric max_skew --key k=5 --key desired=dataset "
                         "--key 'query=(mean over queries)')")
    ap.add_argument("--min-n", type=int, default=30, help="smallest group headlined or compared (default 30)")
    ap.add_argument("--confidence", type=float, default=0.95, help="level of the gap intervals (default 0.95)")
    a = ap.parse_args(list(argv))
    if not 0 < a.confidence < 1:
        raise CollectError(f"--confidence must be between 0 and 1 (exclusive), e.g. 0.95, got {a.confidence}")
    if a.min_n < 1:
        raise CollectError(f"--min-n must be a number of images >= 1, got {a.min_n}")
    res = write_collected(a.dirs, a.out, metric=a.metric, slices=a.slices, taxonomies=a.taxonomies,
                          methods=a.methods, categories=a.categories, min_n=a.min_n, confidence=a.confidence,
                          keys=a.keys)
    runs = res["runs"]
    done = [r for r in runs if r.status == "finished"]
    print(f"collected {len(done)} finished run(s) into {res['paths'][0]}")
    for r in runs:
        if r.status != "finished":
            print(f"  left out ({r.status}): {r.path}: {r.message}")
    return 0
