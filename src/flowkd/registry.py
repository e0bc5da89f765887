"""A small generic registry: one lookup per concept, a miss names the valid choices."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .checks import check_options, typed_options
from .errors import FlowKDError

__all__ = ["Registry", "closest"]

T = TypeVar("T")


def closest(name: str, choices, n: int = 5) -> list[str]:
    """The valid names nearest to ``name`` (by spelling, then by shared prefix), at most ``n``."""
    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if len(near) < n:
        stem = name.split(".")[0]
        near += [c for c in choices if c.startswith(stem) and c not in near][: n - len(near)]
    return near or choices[:n]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise FlowKDError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def typed(self, name: str):
        """What declares the options of the item ``name``: its ``typed`` attribute (the class a factory builds),
        else the item itself (a dataclass, a class or a function)."""
        obj = self.get(name)
        return getattr(obj, "typed", obj)

    def options(self, name: str) -> tuple[str, ...]:
        """The option names the item registered as ``name`` takes: the typed parameters of ``typed(name)``."""
        return tuple(typed_options(self.typed(name)))

    def check_options(self, name: str, options, where: str) -> None:
        """Fail naming every option that ``name`` does not take (and the options it does take); given a dict,
        each value is checked against its option's declared type and range (``flowkd.checks``), with ``where``
        as the key's prefix (``stages.student.schedule`` -> ``stages.student.schedule.init must be ...``)."""
        valid = self.options(name)
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise FlowKDError(f"{where + ': ' if where else ''}{self.kind} {name!r} takes no option {', '.join(map(repr, unknown))}; "
                              f"it takes: {', '.join(valid) if valid else '(none)'}")
        if isinstance(options, dict):
            check_options(self.typed(name), options, where or name)

    def build(self, name: str, options: dict, where: str):
        """The item ``name`` called with ``options``, after ``check_options``."""
        self.check_options(name, options, where)
        return self.get(name)(**options)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
