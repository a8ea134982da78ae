"""``resolve_program``: the one place where "a program" — a Program, a compiled StepFunction, a
library name, a path to a ``.opt`` file, or program text — becomes a Program.

``to_optimizer``, ``export_python``, ``optimizer_class`` and ``optdisco.evaluate`` all call it, so
``to_optimizer("adamw", ...)`` and ``evaluate("adamw", ...)`` mean the same program.

How a string is read: one line without ``=`` is a library name (every program has a statement
``w = ...``, so program text always contains ``=``); a single line ending in ``.opt`` or holding a
path separator is a file; anything else is program text.

The library lives above this package (``library → dsl``): it is imported inside the name branch
only, when a name is resolved, so that importing ``optdisco.dsl`` never imports it and the import
graph keeps no cycle.
"""

from __future__ import annotations

import os

from .step import StepFunction
from .parser import parse, parse_file
from .program import Program


def _looks_like_path(s: str) -> bool:
    s = s.strip()
    return "\n" not in s and (s.endswith(".opt") or os.sep in s or "/" in s)


def resolve_program(program) -> Program:
    """A checked Program from a Program, a StepFunction, a library name, a path to an ``.opt``
    file (str or os.PathLike) or program text. Raises DSLError for bad text, KeyError for an
    unknown library name (with close matches), FileNotFoundError for a missing file."""
    if isinstance(program, Program):
        return program
    if isinstance(program, StepFunction):
        return program.program
    if isinstance(program, os.PathLike) or (isinstance(program, str) and _looks_like_path(program)):
        path = os.fspath(program).strip() if isinstance(program, str) else program
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no program file {os.fspath(path)!r}")
        return parse_file(path)
    if isinstance(program, str):
        text = program.strip()
        if text and "\n" not in text and "=" not in text:
            from optdisco import library  # lazy: library imports dsl (see the module docstring)

            return library.load(text)
        return parse(program)
    raise TypeError(f"expected a Program, program text, a library name or an .opt path, got {type(program).__name__}")
