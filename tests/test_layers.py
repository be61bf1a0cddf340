"""The package's seams, read from the source with ``ast`` (nothing is imported).

- no import cycle between clipfair modules: neither through module-level imports nor
  through the imports inside functions (a deferred import hides a cycle, it does not
  remove it);
- no module imports another module's private name (``from .x import _y``);
- only ``clipfair/models/`` imports transformers or open_clip;
- every module's docstring names its layer and it imports nothing from a higher layer;
- one function saves every figure (:func:`clipfair.report.figures.save_figure`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "clipfair"
PKG = "clipfair"


def _modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for py in sorted(root.rglob("*.py")):
        parts = list(py.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = py
    return out


def _targets(module: str, is_package: bool, node: ast.AST, modules: dict[str, Path]):
    """(clipfair module imported, imported name or None) for one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if a.name.split(".")[0] == PKG]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PKG:
        return []
    out = []
    for a in node.names:
        sub = f"{target}.{a.name}"
        out.append((sub, None) if sub in modules else (target, a.name))
    return out


def _imports(modules: dict[str, Path]):
    """Rows (module, target module, imported name, line, inside a function, external top package)."""
    rows = []
    for mod, py in modules.items():
        is_package = py.name == "__init__.py"

        def walk(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    if isinstance(child, ast.Import):
                        tops = [a.name.split(".")[0] for a in child.names]
                    else:
                        tops = [] if child.level else [(child.module or "").split(".")[0]]
                    for top in tops:
                        if top != PKG:
                            rows.append((mod, None, None, child.lineno, in_function, top))
                    for target, name in _targets(mod, is_package, child, modules):
                        rows.append((mod, target, name, child.lineno, in_function, None))
                walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(ast.parse(py.read_text(encoding="utf-8")), False)
    return rows


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def _graph(rows, modules, with_functions: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, target, _name, _line, in_function, _ext in rows:
        if target in modules and target != mod and (with_functions or not in_function):
            edges[mod].add(target)
    return edges


MODULES = _modules()
ROWS = _imports(MODULES)


def test_the_graph_builder_finds_a_planted_cycle_and_private_import(tmp_path):
    """The checks below can fail: a package with a module-level cycle, a function-level
    cycle, a private import and a transformers import outside models/ is caught."""
    pkg = tmp_path / PKG
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("import transformers\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("from clipfair import a\nthing = 1\n")
    (pkg / "c.py").write_text("def f():\n    from .d import _hidden\n    import open_clip\n")
    (pkg / "d.py").write_text("from . import c\n_hidden = 2\n")
    modules = _modules(pkg)
    rows = _imports(modules)
    assert _cycles(_graph(rows, modules, False)) == [["clipfair.a", "clipfair.b"]]
    assert _cycles(_graph(rows, modules, True)) == [["clipfair.a", "clipfair.b"], ["clipfair.c", "clipfair.d"]]
    assert [(m, t, n) for m, t, n, *_ in rows if n and n.startswith("_")] == [("clipfair.c", "clipfair.d", "_hidden")]
    assert [(m, e) for m, *_, e in rows if e in ("transformers", "open_clip")] == [
        ("clipfair.c", "open_clip"), ("clipfair.models", "transformers")]


def test_the_graph_covers_the_package():
    assert {"clipfair.stats.metrics", "clipfair.stats.inference", "clipfair.models.base", "clipfair.models.preprocess",
            "clipfair.cli"} <= set(MODULES)
    edges = _graph(ROWS, MODULES, True)
    assert "clipfair.stats.inference" in edges["clipfair.stats.metrics"]  # metrics builds on stats, not the reverse
    assert "clipfair.run.pipeline" in edges["clipfair.cli"]  # function-level imports are seen


def test_no_module_level_import_cycle():
    assert _cycles(_graph(ROWS, MODULES, with_functions=False)) == []


def test_no_import_cycle_through_function_level_imports():
    assert _cycles(_graph(ROWS, MODULES, with_functions=True)) == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{mod}:{line} imports {name} from {target}" for mod, target, name, line, _f, _e in ROWS
               if name and name.startswith("_") and not name.startswith("__") and target != mod]
    assert private == []


def test_only_models_imports_transformers_or_open_clip():
    """At module level or inside functions: the backends (and the toy-model builder) in
    clipfair/models/ are the only modules that touch transformers or open_clip."""
    offenders = [f"{mod}:{line} imports {ext}" for mod, _t, _n, line, _f, ext in ROWS
                 if ext in ("transformers", "open_clip") and not mod.startswith("clipfair.models")]
    assert offenders == []
    assert any(ext == "transformers" for mod, *_, ext in ROWS if mod == "clipfair.models.toy")


def test_one_function_saves_every_figure():
    """``.savefig(`` is called in clipfair/report/figures.py only (every writer calls save_figure)."""
    callers = []
    for mod, py in MODULES.items():
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("savefig", "print_figure", "print_png"):
                callers.append(f"{mod}:{node.lineno}")
    assert [c.split(":")[0] for c in callers] == ["clipfair.report.figures"], callers


def test_save_figure_writes_a_reproducible_png(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clipfair.report.figures import DPI, save_figure

    def draw():
        fig = Figure(figsize=(2, 1), dpi=DPI)
        FigureCanvasAgg(fig)
        fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
        return fig

    a = save_figure(draw(), tmp_path / "sub" / "a.png")
    b = save_figure(draw(), tmp_path / "b.png", tight=False)
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in a.read_bytes()
    assert a.read_bytes() == save_figure(draw(), tmp_path / "c.png").read_bytes()
    from PIL import Image

    with Image.open(b) as im:
        assert im.size == (2 * DPI, 1 * DPI)  # not cropped
    with Image.open(a) as im:
        assert im.size != (2 * DPI, 1 * DPI)  # cropped to the drawing


#: the layers, bottom up (see the docstring of clipfair/__init__.py)
LAYERS = ("utility", "data", "models", "stats", "report", "methods", "analyses", "run", "cli")


def _layer(py: Path) -> str | None:
    found = re.search(r"^Layer: (\w+)", ast.get_docstring(ast.parse(py.read_text(encoding="utf-8"))) or "", re.M)
    return found.group(1) if found else None


def test_every_module_names_its_layer():
    missing = [m for m, py in MODULES.items() if m != PKG and _layer(py) not in LAYERS]
    assert missing == []


def test_no_module_imports_from_a_higher_layer():
    layer = {m: _layer(py) for m, py in MODULES.items() if m != PKG}
    upward = [f"{mod} ({layer[mod]}):{line} imports {target} ({layer[target]})"
              for mod, target, _n, line, _f, _e in ROWS
              if mod in layer and target in layer and LAYERS.index(layer[target]) > LAYERS.index(layer[mod])]
    assert upward == []


#: the analyses package's public contract (base class, registry, metric registry, outcome engine,
#: composition); every other module in clipfair/analyses/ is one analysis
ANALYSES_CONTRACT = frozenset({"clipfair.analyses", "clipfair.analyses.base", "clipfair.analyses.registry",
                               "clipfair.stats.specs", "clipfair.analyses.engine", "clipfair.analyses.compose"})
#: the hub modules that must name no analysis: they reach analyses through the contract only
HUBS = ("clipfair.run.collect", "clipfair.report.render", "clipfair.run.pipeline", "clipfair.cli", "clipfair.methods.compare",
        "clipfair.methods.sensitivity", "clipfair.utility.outputs", "clipfair.stats.runfolder")


def _analysis_imports(rows, modules, hubs):
    specific = {m for m in modules if m.startswith("clipfair.analyses.") and m not in ANALYSES_CONTRACT}
    return [f"{mod}:{line} imports {target}" for mod, target, _n, line, _f, _e in rows
            if mod in hubs and target in specific]


def test_hubs_import_no_specific_analysis_module(tmp_path):
    """collect / report / pipeline / cli / compare (and the run-folder readers) import nothing from
    ``clipfair.analyses.<one analysis>``: only the package's contract and registry (an analysis's
    collect output comes through :meth:`clipfair.analyses.Analysis.collect`)."""
    assert set(HUBS) <= set(MODULES)
    assert {"clipfair.analyses.zero_shot", "clipfair.analyses.association"} <= set(MODULES)
    assert _analysis_imports(ROWS, MODULES, HUBS) == []
    # the check can fail: a hub importing one analysis, at module level or inside a function
    pkg = tmp_path / PKG
    (pkg / "analyses").mkdir(parents=True)
    (pkg / "run").mkdir()
    for f in ("__init__.py", "analyses/__init__.py", "analyses/registry.py", "analyses/association.py",
              "run/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "run" / "collect.py").write_text("from ..analyses import registry\n"
                                            "def f():\n    from ..analyses.association import x\n")
    (pkg / "cli.py").write_text("import clipfair.analyses.association\n")
    planted = _modules(pkg)
    assert _analysis_imports(_imports(planted), planted, HUBS) == [
        "clipfair.cli:1 imports clipfair.analyses.association",
        "clipfair.run.collect:3 imports clipfair.analyses.association"]


def test_folders_show_the_layers():
    """Every module lives in the folder named after its layer (``clipfair/<layer>/``); only the
    command line (``clipfair/cli.py``, ``__main__.py``) sits at the top of the package."""
    wrong = []
    for mod, py in MODULES.items():
        if mod == PKG:
            continue
        parts = mod.split(".")
        folder = parts[1] if (len(parts) > 2 or py.name == "__init__.py") else "cli"
        if _layer(py) != folder:
            wrong.append(f"{py.relative_to(SRC.parent)} says layer {_layer(py)}")
    assert wrong == []
    assert {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} >= set(LAYERS) - {"cli"}


def test_pyproject_ships_every_package():
    """A non-editable install carries every folder of the package (pyproject lists them by hand)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(SRC.parent).parts) for p in SRC.rglob("*") if (p / "__init__.py").is_file()}
    found.add(PKG)
    assert found - listed == set()
