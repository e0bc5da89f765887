"""What a user gives is checked where it enters, by the rules here, each written once.

- A number and its range: ``check_number("batch_size", 0, ">= 1", whole=True)`` fails with
  ``batch_size must be a whole number >= 1, got 0``. A range is text: ``>= 0``, ``> 0``, ``[0, 1)``, ``(0, 1]``.
- Typed options: a dataclass field or a parameter annotated ``Annotated[float, Range(">= 0")]`` declares its
  type and range beside its default; ``check_options(cls, {"init": -5.0}, "stages.student.schedule")`` checks
  what a config gives against them, ``check_fields(obj)`` an object built from the API. The config's own keys
  (``flowkd.config``), the schedules and the pair losses declare theirs that way.
- A stage's plan: its learning-rate phases (``check_plan``), optimiser restarts, annealing and averaging.

Config, the training loop and the CLI import these; none of them imports another to check a value.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from typing import Annotated, Any, Literal, Sequence, Union

from .errors import FlowKDError

__all__ = ["Range", "is_shape_mismatch", "check_number", "check_value", "has_range", "check_options", "check_fields",
           "typed_options",
           "check_plan", "check_restart", "check_anneal_average", "RESTARTS", "ANNEALS",
           "PosInt", "NonNegInt", "PosFloat", "NonNegFloat"]

RESTARTS = ("never", "phase", "epoch")
ANNEALS = ("none", "cosine")


class Range:
    """A closed, open or half-open interval written as text: ``>= 1``, ``> 0``, ``<= 1``, ``[0, 1)``, ``(0, 1]``."""

    def __init__(self, text: str):
        self.text = t = text.strip()
        self.lo = self.hi = None
        self.lo_open = self.hi_open = False
        if t[0] in "[(":
            lo, hi = t[1:-1].split(",")
            self.lo, self.hi, self.lo_open, self.hi_open = float(lo), float(hi), t[0] == "(", t[-1] == ")"
        elif t.startswith(">"):
            self.lo, self.lo_open = float(t.lstrip(">=").strip()), not t.startswith(">=")
        elif t.startswith("<"):
            self.hi, self.hi_open = float(t.lstrip("<=").strip()), not t.startswith("<=")
        else:
            raise ValueError(f"not a range: {text!r}")

    def __contains__(self, v) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def __str__(self) -> str:
        return f"in {self.text}" if self.text[0] in "[(" else self.text

    def __repr__(self) -> str:
        return f"Range({self.text!r})"


# the usual kinds, for declarations that read as plainly as ``batch_size: PosInt = 128``
PosInt = Annotated[int, Range(">= 1")]
NonNegInt = Annotated[int, Range(">= 0")]
PosFloat = Annotated[float, Range("> 0")]
NonNegFloat = Annotated[float, Range(">= 0")]


def _range(r) -> Range | None:
    return None if r is None else r if isinstance(r, Range) else Range(r)


def check_number(name: str, value, rng=None, *, whole: bool = False):
    """``value`` is a finite number (``whole``: an int) in ``rng``; else one line naming ``name`` and the range."""
    rng = _range(rng)
    kind = "a whole number" if whole else "a number"
    ok = not isinstance(value, bool) and (isinstance(value, int) if whole else isinstance(value, (int, float)))
    if ok and not whole:
        ok = math.isfinite(value)
    if not ok or (rng is not None and value not in rng):
        raise FlowKDError(f"{name} must be {kind}{f' {rng}' if rng else ''}, got {value!r}")
    return value


def _split(hint) -> tuple[Any, list[Range]]:
    """A hint without ``Annotated``, and the ranges it carried."""
    if typing.get_origin(hint) is typing.Annotated:
        base, *extra = typing.get_args(hint)
        return base, [e for e in extra if isinstance(e, Range)]
    if typing.get_origin(hint) in (Union, types.UnionType):  # Optional[Annotated[float, Range(...)]]
        parts = [_split(a) for a in typing.get_args(hint)]
        return Union[tuple(b for b, _ in parts)], [r for _, rs in parts for r in rs]
    return hint, []


def has_range(hint) -> bool:
    """Whether ``hint`` declares a range (at its top, or in a member of a union)."""
    return bool(_split(hint)[1])


def _kind(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_kind(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_kind(typing.get_args(tp)[0]).removeprefix('a ')}s"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            type(None): "unset (None)"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fits(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    return isinstance(value, tp) if isinstance(tp, type) else True


def _describe(tp, ranges: list[Range]) -> str:
    """``a number >= 0``, ``a whole number >= 1 or 'auto'``, ``a list of whole numbers, each >= 1``."""
    rs = "".join(f" {r}" for r in ranges)
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        num = [a for a in args if a in (int, float)]
        rest = [_kind(a) for a in args if a not in num]
        return " or ".join([_kind(a) + rs for a in num] + rest)
    if typing.get_origin(tp) is list and ranges:
        return f"{_kind(tp)}, each{rs}"
    return _kind(tp) + rs


def check_value(key: str, value, hint) -> None:
    """``value`` has the type ``hint`` declares, and every number in it (a list's entries too) its range."""
    tp, ranges = _split(hint)
    numbers = value if isinstance(value, list) else [value]
    in_range = all(v in r for r in ranges for v in numbers
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not _fits(value, tp) or not in_range:
        raise FlowKDError(f"{key} must be {_describe(tp, ranges)}, got {value!r}")


def typed_options(target) -> dict[str, Any]:
    """The options ``target`` takes and their hints (``Annotated`` kept): a dataclass's init fields, else the
    keyword parameters of a class's ``__init__`` or a function (shapes ``teacher_shape``/``student_shape`` and
    ``*args``/``**kwargs`` are not options)."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target, include_extras=True)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(target) if f.init}
    fn = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(fn, include_extras=True)
    params = inspect.signature(fn).parameters.values()
    return {p.name: hints.get(p.name, Any) for p in params if p.name not in ("self", "teacher_shape", "student_shape")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_options(target, options: dict, where: str) -> dict:
    """Each of ``options`` against ``target``'s typed parameters (``typed_options``); ``where`` prefixes the key
    (``stages.student.schedule`` -> ``stages.student.schedule.init must be a number >= 0, got -5.0``). Options
    ``target`` does not take are left to the caller (a registry names the valid ones)."""
    hints = typed_options(target)
    for k, v in options.items():
        if k in hints:
            check_value(f"{where}.{k}" if where else k, v, hints[k])
    return options


def check_fields(obj, where: str = "") -> None:
    """Every init field of the dataclass instance ``obj`` against its declared type and range (for objects
    built from Python, e.g. ``CriticalPeriod(init=-5.0)``: ``CriticalPeriod.init must be ...``)."""
    where = where or type(obj).__name__
    check_options(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}, where)


def is_shape_mismatch(e: BaseException) -> bool:
    """Whether PyTorch's error says a network met an input of another shape than it was built for (channels,
    image size, features): the user's data and model disagree, not a bug."""
    text = str(e)
    return isinstance(e, RuntimeError) and any(p in text for p in (
        "channels, but got", "shapes cannot be multiplied", "size mismatch", "Expected size", "Given groups=",
        "Calculated padded input size", "Kernel size can't be greater than actual input size"))


# ---- a stage's plan -----------------------------------------------------------------------------------

def check_plan(epochs, lr, where: str) -> tuple[list[int], list[float]]:
    """A stage's learning-rate phases: ``epochs[i]`` (an int >= 0) epochs at ``lr[i]`` (a finite number > 0).
    A single number stands for a one-phase list."""
    epochs = [epochs] if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else epochs
    lr = [lr] if isinstance(lr, (int, float)) and not isinstance(lr, bool) else lr
    try:
        epochs, lr = list(epochs), list(lr)
    except TypeError:
        raise FlowKDError(f"{where}: epochs and lr must be lists (one entry per phase), got {epochs!r} and {lr!r}") from None
    if not epochs or len(epochs) != len(lr):
        raise FlowKDError(f"{where}: epochs {epochs} and lr {lr} must be non-empty lists of equal length "
                          "(one learning rate per phase)")
    bad = [e for e in epochs if isinstance(e, bool) or not isinstance(e, int) or e < 0]
    if bad:
        raise FlowKDError(f"{where}: epochs must be whole numbers >= 0, got {epochs}")
    bad = [r for r in lr if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0]
    if bad:
        raise FlowKDError(f"{where}: learning rates must be finite numbers > 0, got {lr}")
    return epochs, [float(r) for r in lr]


def check_restart(restart, where: str, option: str = "restart") -> None:
    """When a stage's optimiser starts afresh: one of :data:`RESTARTS` (``option`` names it in the message)."""
    if restart not in RESTARTS:
        raise FlowKDError(f"{where}: {option} must be one of {', '.join(RESTARTS)}, got {restart!r}")


def check_anneal_average(anneal, average, epochs: Sequence[int], where: str) -> None:
    """A stage's ``lr_anneal`` (one of :data:`ANNEALS`) and ``average_last`` (0 to the stage's epochs)."""
    if anneal not in ANNEALS:
        raise FlowKDError(f"{where}: lr_anneal must be one of {', '.join(ANNEALS)}, got {anneal!r}")
    if isinstance(average, bool) or not isinstance(average, int) or not 0 <= average <= sum(epochs):
        raise FlowKDError(f"{where}: average_last must be a whole number of epochs from 0 to the stage's "
                          f"{sum(epochs)}, got {average!r}")
