"""One small name -> builder registry, shared by models, datasets, tasks, optimisers, schedules."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from strata.errors import StrataError

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[T]):
    """Maps names to builders. Unknown names raise an error listing the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise StrataError(
                f"{self.kind} '{name}' is unknown{closest(name, self._items)}; "
                f"known: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self):
        return sorted(self._items.items())


Builder = Callable[..., object]
