"""The one registry idiom: a named table filled by a decorator, with a clear error for an unknown name.

    STAGES = Registry("preprocess stage")

    @STAGES.register("faces")
    class FaceTrack(Operator): ...

    STAGES.get("facse")  # KeyError: unknown preprocess stage 'facse'; choose from ['faces', ...]

It lives in the bottom layer so that every layer (stages, generators, training systems, job kinds)
registers the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, in registration order; names are unique."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or `register(name)(obj)`) that files `obj` under `name`."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; choose from {self.names()}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
