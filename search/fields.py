"""Type and range checks of configuration dataclasses, driven by their fields' annotations.

Every field of :class:`~optdisco.search.config.SearchConfig` and
:class:`~optdisco.search.config.Tier` is checked against its annotation (``int``, ``float``,
``str``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, a nested dataclass) and, where
:data:`RANGES` or :data:`CHOICES` name it, against a range or a set of values. A field added
to either dataclass is checked by its annotation with no change here. An error names the key
(``tiers[1].steps``) and says what was expected and what was given, in one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

# key -> (low, high, low_exclusive); None: unbounded. Applies to a number or to each element of
# a tuple of numbers. Keys are field names of SearchConfig or Tier.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "budget": (1, None, False),
    "workers": (1, None, False),
    "population": (2, None, False),
    "tournament": (1, None, False),
    "max_statements": (1, None, False),
    "restart_after": (0, None, False),
    "max_retries": (0, None, False),
    "attempts_per_proposal": (1, None, False),
    "gpus_per_eval": (0, None, False),
    "mutation_weights": (0, None, False),
    "steps": (1, None, False),
    "seeds": (1, None, False),
    "points": (1, None, False),
    "lrs": (0, None, True),
    "promote": (0, 1, True),
    "time_limit": (0, None, True),
    "heldout_every": (0, None, False),
    "finalists": (1, None, False),
    "validate_top": (0, None, False),
    "validate_seeds": (2, None, False),
}
# key -> allowed values (strings).
CHOICES: dict[str, tuple[str, ...]] = {
    "executor": ("ray", "local"),
    "strategy": ("evolution", "random"),
    "size": ("proxy", "target"),
}


class FieldError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the key."""


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({kind})"


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts)
    if origin is tuple:
        return f"a list of {_expected(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return f"a table of {_expected(typing.get_args(tp)[1]).split(' ', 1)[1]}s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def check_value(key: str, value: Any, tp: Any, name: str | None = None) -> None:
    """Raise FieldError unless ``value`` fits the annotation ``tp`` (and the range of ``name``,
    the field name, default the last part of ``key``)."""
    name = name or key.rsplit(".", 1)[-1].split("[")[0]
    origin = typing.get_origin(tp)

    def bad(what: str | None = None):
        raise FieldError(f"{key} must be {what or _expected(tp)}, got {_describe(value)}")

    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                check_value(key, value, a, name)
                return
            except FieldError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        bad()
    if tp is bool:
        if not isinstance(value, bool):
            bad()
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad()
        _check_range(key, name, value)
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad("a finite number" if isinstance(value, float) else None)
        _check_range(key, name, value)
        return
    if tp is str:
        if not isinstance(value, str):
            bad()
        if name in CHOICES and value not in CHOICES[name]:
            bad(f"one of {', '.join(repr(c) for c in CHOICES[name])}")
        return
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            bad()
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:  # tuple[X, ...]: any length
            for i, v in enumerate(value):
                check_value(f"{key}[{i}]", v, args[0], name)
            return
        if len(value) != len(args):  # tuple[X, Y]: a fixed pair
            bad(f"a list of {len(args)} values")
        for i, (v, a) in enumerate(zip(value, args)):
            check_value(f"{key}[{i}]", v, a, name)
        return
    if origin is dict:
        if not isinstance(value, dict):
            bad()
        kt, vt = typing.get_args(tp)
        for k, v in value.items():
            check_value(f"{key} key {k!r}", k, kt, "")
            check_value(f"{key}.{k}", v, vt, name)
        return
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            check_dataclass(value, key)
        elif isinstance(value, dict):
            check_mapping(tp, value, key)
        else:
            bad()
        return
    # an annotation this checker does not know: nothing to check


def _check_range(key: str, name: str, value: float) -> None:
    if name not in RANGES:
        return
    lo, hi, lo_open = RANGES[name]
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise FieldError(f"{key} must be {'above' if lo_open else 'at least'} {lo:g}"
                         f"{'' if hi is None else f' and at most {hi:g}'}, got {value!r}")
    if hi is not None and value > hi:
        raise FieldError(f"{key} must be at most {hi:g}, got {value!r}")


def check_mapping(cls: type, d: dict, prefix: str = "") -> None:
    """Check a dict of ``cls``'s fields (as read from TOML): unknown keys and every value."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    where = f"{prefix}: " if prefix else ""
    for k in d:
        if k not in hints:
            raise FieldError(f"{where}unknown key {k!r}; known keys: {', '.join(known)}")
    for k, v in d.items():
        check_value(f"{prefix}.{k}" if prefix else k, v, hints[k], k)


def check_dataclass(obj: Any, prefix: str = "") -> None:
    """Check every field of a dataclass instance against its annotation and range."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_value(f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name), hints[f.name], f.name)
