"""optdisco.dsl — the optimizer language: parse, check, print, compile, simplify, fingerprint, export."""

from .checker import CheckInfo, check
from .compiler import StepFunction, compile_program, generate_source
from .errors import DSLError
from .export import export_python, optimizer_class, to_optimizer
from .fingerprint import fingerprint
from .parser import parse, parse_file
from .resolve import resolve_program
from .program import Assign, BinOp, Call, Hyper, If, Name, Num, Program, State, Unary
from .symbolic import simplify, to_latex, update_exprs

__all__ = [
    "DSLError", "Program", "parse", "parse_file", "check", "CheckInfo", "compile_program",
    "StepFunction", "generate_source", "Assign", "BinOp", "Call", "Hyper", "If", "Name", "Num",
    "State", "Unary", "fingerprint", "simplify", "to_latex", "update_exprs",
    "to_optimizer", "export_python", "optimizer_class", "resolve_program",
]
