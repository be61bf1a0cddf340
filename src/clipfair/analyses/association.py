"""Association tests as an analysis: WEAT, SC-WEAT and markedness.

Layer: analyses.

Config (``analyses: {association: {...}}``; ``experiment=association`` runs the built-ins)::

    tests: null            # built-in names or YAML paths (clipfair/associations/); null: every built-in
    variant: ghate2025     # ghate2025 (joint SD, ddof 1, permutation p; the default) | american_white
                           # (pooled SD, Welch t) | mleat (normal fitted to the permutations), or set
    sd: null               # joint | pooled           } any of these overrides the variant
    ddof: null             # 1 | 0                    } (the variant column then says "custom")
    p: null                # permutation | welch_t | normal_fit
    n_permutations: 10000  # sampled partitions when there are more than max_exact
    max_exact: 10000       # enumerate every partition up to this many
    bootstrap: 1000        # replicates of the bootstrap interval for d (0: none)
    seed: null             # null: the run's seed
    min_images: 2          # smaller image sets skip their test (listed in the report)

Outputs: ``associations.csv`` (one row per WEAT and per SC-WEAT prompt, with Holm-adjusted
p-values over the run's rows) and ``markedness.csv``, a report section with a forest plot of d
and its intervals (the sanity test first), and :func:`collect_associations`, which gathers the
``associations.csv`` of many runs (e.g. a sweep over models) into one table of d per model.

Text-only tests need no image: when no configured test uses images, the analysis declares
``needs.image_embeddings = "none"`` and never reads ``ctx.image_embeddings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..methods.association_tests import (COLUMNS, MARKEDNESS_COLUMNS, AssociationError, Outcome, image_set_dataset,
                                 load_tests, run_tests, settings_from)
from ..utility.outputs import read_csv, write_csv
from .base import Analysis, Needs, RunContext
from .registry import register_analysis

FOREST_PNG = "associations_forest.png"
#: markedness groups with fewer images are marked "(small)" in the report
SMALL_N = 30


@register_analysis
class AssociationAnalysis(Analysis):
    name = "association"
    outcomes = []   # test-level statistics only: associations.csv / markedness.csv, no per-image outcomes
    unit = "test"
    needs = Needs(image_embeddings="projected", text=True)
    #: a bad test file or option is a user's mistake: one line from the CLI
    errors = (AssociationError,)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._tests_spec = options.get("tests")
        if isinstance(self._tests_spec, str):
            self._tests_spec = [self._tests_spec]
        self.tests = load_tests(None if self._tests_spec is None else list(self._tests_spec))
        settings_from(options)   # validate the options now (one-line error), again with the run's seed at run
        uses_images = any(t.needs_dataset_images for t in self.tests)
        # an instance-level declaration: text-only tests ask the run for no image embeddings
        self.needs = Needs(image_embeddings="projected" if uses_images else "none", text=True)
        self.outcome: Outcome | None = None
        self._out_dir: Path | None = None

    @classmethod
    def collect(cls, runs: Sequence[Any], base: Path, out_dir: Path) -> tuple[list[Path], list[Any]]:
        """``clipfair collect``: :func:`collected_outputs`."""
        return collected_outputs(runs, base, out_dir)

    def run(self, ctx: RunContext) -> None:
        st = settings_from(self.options, confidence=ctx.confidence, seed=ctx.seed)
        self._out_dir = ctx.out_dir

        def external(s: Any) -> np.ndarray:   # a CSV / folder image set, through the run's image encoder
            store = ctx.service("image_store")()
            return ctx.service("embed")(image_set_dataset(s), None, store).embeddings

        self.outcome = run_tests(self.tests, ctx.encode_text, ctx.table,
                                 lambda: ctx.image_embeddings, st, embed_images=external)
        ctx.info.setdefault("association", {}).update({
            "tests": [t.name for t in self.tests], "variant": st.variant.label,
            "n_permutations": st.n_permutations, "max_exact": st.max_exact, "bootstrap": st.bootstrap,
            "seed": st.seed, "images_used": self.outcome.images_used,
            "skipped": [{"test": n, "reason": r} for n, r in self.outcome.skipped]})
        return None

    def tables(self) -> dict[str, pd.DataFrame]:
        if self.outcome is None:
            return {}
        out = {"associations": self.outcome.associations}
        if len(self.outcome.markedness):
            out["markedness"] = self.outcome.markedness
        return out

    def report_sections(self, results: Any = None) -> list[Any]:
        if self.outcome is None:
            return []
        out_dir = _out_dir(results) or self._out_dir
        return association_sections(self.outcome, out_dir)

    def write(self, out_dir: Path, ev: Any, ctx: RunContext, report: Any) -> Any:
        """``associations.csv``, ``markedness.csv`` (when any), the forest plot and the section."""
        from .base import Written

        if self.outcome is None:
            return Written()
        out = Path(out_dir)
        paths = write_association(self.outcome, out)
        sections = association_sections(self.outcome, out)
        if (out / FOREST_PNG).is_file():
            paths.append(out / FOREST_PNG)
        return Written(paths, sections)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["tests"] = [{"name": t.name, "kind": t.kind, "source": t.source, "file": t.where} for t in self.tests]
        return d


def _out_dir(results: Any) -> Path | None:
    if isinstance(results, (str, Path)):
        return Path(results)
    if isinstance(results, Mapping) and results.get("out_dir"):
        return Path(results["out_dir"])
    od = getattr(results, "out_dir", None)
    return Path(od) if od else None


# ---------------------------------------------------------------------------- report

def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def forest_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in plot order: the sanity tests first, then by d, largest first (NaN last)."""
    key = df.assign(_s=~df["sanity"].astype(bool), _d=-df["effect_size"].astype(float).fillna(-np.inf))
    return key.sort_values(["_s", "_d"], kind="mergesort").drop(columns=["_s", "_d"])


def _label(r: Any) -> str:
    if r.kind == "sc_weat":
        return f"{r.test}: {r.target_x}"
    return str(r.test)


def forest_plot(df: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """A forest plot of d with its bootstrap intervals, in :func:`forest_order` (top to bottom)."""
    if df.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = forest_order(df)
    n = len(d)
    y = np.arange(n)[::-1]
    d_val = d["effect_size"].to_numpy(float)
    lo, hi = d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * n))
    err = np.vstack([np.nan_to_num(d_val - lo, nan=0.0), np.nan_to_num(hi - d_val, nan=0.0)]).clip(min=0)
    sig = d["p_adjusted"].to_numpy(float) < 0.05
    colors = ["#555555" if s else "#1f77b4" for s in d["sanity"].astype(bool)]
    for k in range(n):
        ax.errorbar(d_val[k], y[k], xerr=err[:, k:k + 1], fmt="none", ecolor=colors[k], elinewidth=1.2,
                    capsize=2)
    ax.scatter(d_val, y, c=colors, marker="o", s=[36 if s else 18 for s in sig], zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([_label(r) + (" (sanity)" if r.sanity else "") for r in d.itertuples()], fontsize=8)
    ax.set_xlabel("effect size d (bootstrap interval over items)")
    reach = np.nanmax(np.abs(np.concatenate([d_val, lo, hi]))) if np.isfinite(d_val).any() else 2.0
    lim = max(2.1, float(reach) + 0.1) if np.isfinite(reach) else 2.1
    ax.set_xlim(-lim, lim)
    ax.set_title(title or "Association tests: effect size d", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    from ..report.figures import save_figure

    path = save_figure(fig, path)
    plt.close(fig)
    return path


def association_sections(outcome: Outcome, out_dir: Path | None) -> list[Any]:
    """The report section: conventions, the forest plot, the table and markedness."""
    from ..report.document import Bullets, Figure, Note, Section, Table, Text

    a = outcome.associations
    blocks: list[Any] = []
    if len(a):
        v = a["variant"].iloc[0]
        conf = a["ci_method"].iloc[0]
        blocks.append(Text(
            f"Each row tests whether targets X sit closer to attribute words A than targets Y do (WEAT), or a "
            f"single prompt closer to set A than to set B (SC-WEAT), in the model's embedding space. d is the "
            f"effect size (difference of mean associations over their SD{'; |d| is below 2' if 'sd=joint' in v else ''}); p is one-sided "
            f"(H1: d > 0) and Holm-adjusted over the {len(a)} rows of this run. Variant: `{v}`. Intervals: "
            f"{conf.split(' (')[0]}, which describes the choice of items, not the model's sampling. "
            "The sanity test (flowers vs insects) is shown first so the scale of d can be read."))
        if out_dir is not None:
            png = forest_plot(a, Path(out_dir) / FOREST_PNG)
            if png is not None:
                blocks.append(Figure(png.name, "Effect size d with intervals; the sanity test first, then by d. "
                                     "Larger dots: Holm-adjusted p < 0.05."))
        rows = []
        for r in forest_order(a).itertuples():
            tgt = r.target_x if r.kind == "sc_weat" else f"{r.target_x} vs {r.target_y}"
            rows.append([r.test + (" (sanity)" if r.sanity else ""), tgt, f"{r.attribute_a} vs {r.attribute_b}",
                         f"{r.n_x}/{r.n_y}/{r.n_a}/{r.n_b}" if r.kind == "weat" else f"1/-/{r.n_a}/{r.n_b}",
                         f"{_fmt(r.effect_size)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]", _p(r.p_value),
                         _p(r.p_adjusted), r.p_method])
        blocks.append(Table(["test", "targets", "attributes", "n (X/Y/A/B)", "d [interval]", "p", "p (Holm)",
                             "p method"], rows, align="lllrrrrl"))
        small = a[(a.kind == "weat") & ((a.n_x < 8) | (a.n_y < 8))]
        if len(small):
            blocks.append(Note(f"{len(small)} test(s) have fewer than 8 items in a target set: their d and "
                               "interval rest on very few items.", "warning"))
    m = outcome.markedness
    if len(m):
        mrows = [[r.test, r.group, r.prompt, f"{r.n_unmarked}/{r.n}" + (" (small)" if r.n < SMALL_N else ""),
                  f"{100 * r.share:.1f}% [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]" if r.n else "n/a",
                  _p(r.p_homogeneity), r.design] for r in m.itertuples()]
        blocks.append(Section("Markedness", [
            Text("Share of each group's images whose closest prompt is the unmarked one (e.g. \"a photo of a "
                 "person\") rather than any prompt naming a group (Wolfe & Caliskan 2022), with Wilson intervals; "
                 f"p: chi-square test that every group has the same share. Groups under {SMALL_N} images are "
                 "marked (small): read their share with its interval."),
            Table(["test", "group", "group prompt", "unmarked / n", "share [interval]", "p (equal shares)",
                   "design"], mrows, align="lllrrrl")]))
    if outcome.skipped:
        blocks.append(Bullets([f"{n}: skipped ({why})" for n, why in outcome.skipped]))
    if not blocks:
        blocks.append(Text("No association test could run on this dataset."))
    return [Section("Association tests", blocks)]


def write_association(outcome: Outcome, out_dir: Path | str) -> list[Path]:
    """``associations.csv`` and ``markedness.csv`` (when any) written atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in (("associations", outcome.associations), ("markedness", outcome.markedness)):
        if name == "markedness" and not len(df):
            continue
        path = out / f"{name}.csv"
        tmp = path.with_suffix(".csv.tmp")
        write_csv(df, tmp)   # text cells guarded against spreadsheet formulas
        tmp.replace(path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------- collect

def collect_associations(runs: Sequence[Any], base: Path | str) -> pd.DataFrame:
    """The ``associations.csv`` of every finished run in one long table, each row labelled by
    its run (``run``, ``label``, ``model``, ``dataset``). ``runs``: ``clipfair collect``'s run
    folders (:func:`clipfair.run.collect.collect`; each with path, status, label, model, dataset);
    ``base``: the folder run paths are shown relative to. Pivot with :func:`d_by_model`."""
    base = Path(base)
    frames = []
    for r in runs:
        f = r.path / "associations.csv"
        if r.status != "finished" or not f.is_file():
            continue
        a = read_csv(f, keep_default_na=False, na_values={c: [""] for c in
                        ("effect_size", "ci_low", "ci_high", "p_value", "p_adjusted", "n_permutations")})
        try:
            rel = str(r.path.resolve().relative_to(base)) or "."
        except ValueError:
            rel = str(r.path)
        frames.append(a.assign(run=rel, label=r.label, model=r.model, dataset=r.dataset)[
            ["run", "label", "model", "dataset", *a.columns]])
    if not frames:
        return pd.DataFrame(columns=["run", "label", "model", "dataset", *COLUMNS])
    return pd.concat(frames, ignore_index=True)


def collected_outputs(runs: Sequence[Any], base: Path | str, out_dir: Path | str) -> tuple[list[Path], list[Any]]:
    """For ``clipfair collect``: when any finished run wrote ``associations.csv``, write
    ``collected_associations.csv`` (every row, labelled by run) and
    ``collected_associations_d.csv`` (tests x runs of d) into ``out_dir`` and return them with a
    report section; else nothing."""
    from ..report.document import Section, Table, Text

    c = collect_associations(runs, base)
    if c.empty:
        return [], []
    out = Path(out_dir)
    long_p, wide_p = out / "collected_associations.csv", out / "collected_associations_d.csv"
    write_csv(c, long_p)
    piv = d_by_model(c)
    write_csv(piv.reset_index(), wide_p)
    cell = {(k, lab): r for lab, sub in c.groupby("label", sort=False)
            for k, r in zip(_keys(sub), sub.itertuples())}
    rows = []
    for test in piv.index:
        row = [test]
        for lab in piv.columns:
            r = cell.get((test, lab))
            row.append("" if r is None else f"{_fmt(r.effect_size)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                       + ("*" if np.isfinite(r.p_adjusted) and r.p_adjusted < 0.05 else ""))
        rows.append(row)
    variants = ", ".join(f"`{v}`" for v in dict.fromkeys(c["variant"]))
    sec = Section("Association tests across runs", [
        Text(f"Effect size d [bootstrap interval over items] per test and run (variant {variants}); * marks "
             "a Holm-adjusted p < 0.05 within its run. Compare runs only on the same tests and variant."),
        Table(["test", *map(str, piv.columns)], rows, align="l" + "r" * len(piv.columns))])
    return [long_p, wide_p], [sec]


def _keys(df: pd.DataFrame) -> pd.Series:
    return df["test"].where(df["kind"] != "sc_weat", df["test"] + ": " + df["target_x"].astype(str))


def d_by_model(collected: pd.DataFrame) -> pd.DataFrame:
    """Tests (rows; SC-WEAT rows per prompt) x runs (columns, by label) of d: the Ghate et al.
    comparison across models."""
    if collected.empty:
        return pd.DataFrame()
    return (collected.assign(_key=_keys(collected)).pivot_table(index="_key", columns="label", values="effect_size",
                                                    aggfunc="first", sort=False)
            .rename_axis(index="test", columns=None))


__all__ = ["AssociationAnalysis", "AssociationError", "association_sections", "collect_associations", "collected_outputs",
           "d_by_model", "forest_order", "forest_plot", "write_association", "MARKEDNESS_COLUMNS", "FOREST_PNG"]
