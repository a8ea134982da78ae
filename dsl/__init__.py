"""optdisco.dsl — the optimizer language: parse, check, print, compile, simplify, fingerprint, export."""

from __future__ import annotations

from .lazy import lazy_names

# Loaded on first use (see .lazy): the command line imports optdisco.dsl.cli, and
# `optdisco --help` should not wait for torch and sympy.
_EXPORTS = {
    "CheckInfo": ".checker", "check": ".checker",
    "StepFunction": ".step", "compile_program": ".step", "generate_source": ".compiler",
    "DSLError": ".errors",
    "export_python": ".export", "optimizer_class": ".export", "to_optimizer": ".export",
    "fingerprint": ".fingerprint",
    "parse": ".parser", "parse_file": ".parser",
    "resolve_program": ".resolve",
    "Assign": ".program", "BinOp": ".program", "Call": ".program", "Hyper": ".program", "If": ".program",
    "Name": ".program", "Num": ".program", "Program": ".program", "State": ".program", "Unary": ".program",
    "simplify": ".symbolic", "to_latex": ".symbolic", "update_exprs": ".symbolic",
}

__all__ = [
    "DSLError", "Program", "parse", "parse_file", "check", "CheckInfo", "compile_program",
    "StepFunction", "generate_source", "Assign", "BinOp", "Call", "Hyper", "If", "Name", "Num",
    "State", "Unary", "fingerprint", "simplify", "to_latex", "update_exprs",
    "to_optimizer", "export_python", "optimizer_class", "resolve_program",
]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
