"""The one safe YAML reader for clipfair's data files (taxonomies, query sets, references).

Layer: utility (below data; imports no other clipfair module).

``yaml.safe_load`` already refuses Python object tags; :func:`load_yaml_file` adds

* a size cap on the document (:data:`MAX_BYTES`), checked before it is read;
* a cap on alias expansion: a document whose anchors and aliases (``&a`` / ``*a``) would
  expand to more than :data:`MAX_NODES` nodes (a "billion laughs" bomb) or that refers to
  itself is refused before any value is built, so no later ``str()`` can blow up;
* the YAML 1.2 core schema: only ``true`` / ``false`` are booleans (YAML 1.1's ``on``,
  ``off``, ``yes``, ``no``, ``y``, ``n`` stay strings, so a prompt ``[NO]`` is "NO"); only
  1.2 core numbers are numbers (``12``, ``-3``, ``0o17``, ``0x1F``, ``1.5``, ``1e3``, ``.inf``,
  ``.nan``); YAML 1.1's sexagesimal ``1:30``, ``1_000`` and dates ``2024-01-01`` stay
  strings. A number keeps the text it was written as: ``str()`` of the value read from
  ``010`` is "010" and of ``1.50`` is "1.50" (:class:`YamlInt` / :class:`YamlFloat` are
  ``int`` / ``float`` otherwise), so wherever a string is expected (a query, prompt, label,
  name) the text is as written;
* syntax errors reported as ``file: not valid YAML at line L, column C: problem``, without
  echoing the file's content.

Errors are :class:`YamlError` (a ValueError); callers re-raise them as their own error class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: largest data file read, in bytes
MAX_BYTES = 10_000_000
#: largest number of nodes a document may expand to once its aliases are followed
MAX_NODES = 1_000_000


class YamlError(ValueError):
    """A YAML data file that is too large, malformed, or an alias bomb."""


class _SourceText:
    """A number read from a data file that remembers its source text (``str()`` gives it);
    ``_base`` is the number type it is."""

    _base: type
    text: str

    def __new__(cls, value: Any, text: str) -> Any:
        obj = cls._base.__new__(cls, value)
        obj.text = text
        return obj

    def __str__(self) -> str:
        return self.text

    def __getnewargs__(self) -> tuple:  # pickle and deepcopy keep the text
        return (self._base(self), self.text)

    def __format__(self, spec: str) -> str:
        return self.text if not spec else self._base.__format__(self._base(self), spec)


class YamlInt(_SourceText, int):
    """An int read from a data file that remembers its source text."""

    _base = int


class YamlFloat(_SourceText, float):
    """A float read from a data file that remembers its source text."""

    _base = float


class _DataLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's resolvers and a check of the composed node graph."""

    max_nodes = MAX_NODES

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.max_nodes)
        return node


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")

# the YAML 1.2 core schema's implicit types only (plus the merge key "<<"): every other plain
# scalar - 1.1's yes/no/on/off, 1:30, 1_000, 0b101, dates - is a string
_DataLoader.yaml_implicit_resolvers = {}
for _tag, _rx, _first in (
        ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
        ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
        ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789")),
        ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])):
    _DataLoader.add_implicit_resolver(_tag, _rx, _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    t = text.strip()
    try:
        if t.startswith("0o"):
            return YamlInt(int(t[2:], 8), text)
        if t.startswith("0x"):
            return YamlInt(int(t[2:], 16), text)
        return YamlInt(int(t, 10), text)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 integer",
                                                node.start_mark) from None


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node))
    t = text.strip().lower().lstrip("+")
    try:
        value = float(t.replace(".inf", "inf").replace(".nan", "nan"))
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 number",
                                                node.start_mark) from None
    return YamlFloat(value, text)


_DataLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_DataLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Raise YamlError if the node graph expands to more than ``limit`` nodes or has a cycle.

    Each distinct node is visited once (memoised): aliases share node objects, so a bomb is
    detected from its small graph, without expanding it.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlError("an alias refers to the node that contains it (a recursive structure)")
        if isinstance(node, yaml.ScalarNode):
            return 1
        active.add(key)
        children = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        total = 1
        for c in children:
            total += size(c)
            if total > limit:
                raise YamlError(f"the document expands to more than {limit:,} values through its "
                                "aliases (*name); write the values out or use fewer aliases")
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


def loads(text: str, where: str = "<string>", max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document of data (see the module docstring); errors name ``where``."""
    loader = _DataLoader(text)
    loader.max_nodes = max_nodes
    try:
        return loader.get_single_data()
    except YamlError as e:
        raise YamlError(f"{where}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or "syntax error"
        raise YamlError(f"{where}: not valid YAML{at}: {problem}") from None
    except yaml.YAMLError as e:  # unmarked errors carry no file content
        raise YamlError(f"{where}: not valid YAML ({type(e).__name__})") from None
    except RecursionError:
        raise YamlError(f"{where}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path | str, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """Read and parse a YAML data file (UTF-8, BOM allowed); YamlError on any problem,
    FileNotFoundError when it does not exist."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as e:
        raise YamlError(f"{p}: cannot read ({e.strerror or e})") from None
    if size > max_bytes:
        raise YamlError(f"{p}: {size:,} bytes is larger than the {max_bytes:,}-byte limit for a "
                        "YAML data file")
    try:
        text = p.read_bytes()[:max_bytes + 1].decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise YamlError(f"{p}: is a folder, not a YAML file") from None
    except OSError as e:
        raise YamlError(f"{p}: cannot read ({e.strerror or e})") from None
    return loads(text, str(p), max_nodes)
