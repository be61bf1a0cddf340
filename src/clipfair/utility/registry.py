"""One small registry pattern for datasets, models and taxonomies.

Layer: utility (below data; imports no other clipfair module).

Lookup errors list what is available; registering a name twice is an error, never a
silent overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate registry name (message lists what is available)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered; names must be unique")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def yaml_files(kind: str, folder: Path) -> Registry[Path]:
    """A registry of the ``*.yaml`` files of ``folder`` by file stem (built-in taxonomies,
    query sets, association tests)."""
    reg: Registry[Path] = Registry(kind)
    for p in sorted(Path(folder).glob("*.yaml")):
        reg.add(p.stem, p)
    return reg
