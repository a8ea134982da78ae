"""Program → canonical text, with the fewest parentheses that keep the tree intact."""

from __future__ import annotations

import math

from .primitives import BINARY_OPERATORS, UNARY_OPERATORS
from .program import GLOBAL, Assign, BinOp, Call, Expr, If, Name, Num, Program, Stmt, Unary

# Binding strength; higher binds tighter.
PREC = {s: o.prec for s, o in {**BINARY_OPERATORS, **UNARY_OPERATORS}.items()}
ATOM = 9


def fmt_number(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError(f"cannot print the non-finite constant {v!r}")
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _prec(e: Expr) -> int:
    if isinstance(e, BinOp):
        return PREC[e.op]
    if isinstance(e, Unary):
        return PREC["not"] if e.op == "not" else PREC["neg"]
    if isinstance(e, Num) and e.value < 0:  # -0.0 prints as 0, an atom
        return PREC["neg"]
    return ATOM


def expr_text(e: Expr) -> str:
    if isinstance(e, Num):
        return fmt_number(e.value)
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(expr_text(a) for a in e.args)})"
    if isinstance(e, Unary):
        inner = expr_text(e.operand)
        mine = _prec(e)
        if _prec(e.operand) < mine or (e.op == "-" and isinstance(e.operand, Num)):
            inner = f"({inner})"
        return f"not {inner}" if e.op == "not" else f"-{inner}"
    if isinstance(e, BinOp):
        p = PREC[e.op]
        left, right = expr_text(e.left), expr_text(e.right)
        lp, rp = _prec(e.left), _prec(e.right)
        if e.op == "**":
            # right-associative; the exponent may be a unary minus (parsed as such)
            if lp <= p:
                left = f"({left})"
            if rp < PREC["neg"]:
                right = f"({right})"
        elif p == 4:  # comparisons do not chain
            if lp <= p:
                left = f"({left})"
            if rp <= p:
                right = f"({right})"
        else:
            if lp < p:
                left = f"({left})"
            if rp <= p:
                right = f"({right})"
        return f"{left} {e.op} {right}"
    raise TypeError(f"not an expression: {e!r}")


def _state_init_text(e: Expr) -> str:
    if isinstance(e, Call) and e.fn in ("zeros_like", "ones_like") and e.args == (Name("w"),):
        return e.fn[: -len("_like")]
    return expr_text(e)


def _stmts(body: tuple[Stmt, ...], indent: str, out: list[str]) -> None:
    for s in body:
        if isinstance(s, Assign):
            out.append(f"{indent}{s.target} = {expr_text(s.value)}")
        else:
            _if(s, indent, out, "if")
            out.append(f"{indent}end")


def _if(s: If, indent: str, out: list[str], kw: str) -> None:
    out.append(f"{indent}{kw} {expr_text(s.cond)}:")
    _stmts(s.then, indent + "    ", out)
    if len(s.orelse) == 1 and isinstance(s.orelse[0], If):
        _if(s.orelse[0], indent, out, "elif")
    elif s.orelse:
        out.append(f"{indent}else:")
        _stmts(s.orelse, indent + "    ", out)


def to_text(p: Program, doc: bool = True) -> str:
    """Canonical text of a program; ``parse(to_text(p)) == p``."""
    out: list[str] = []
    if doc and p.doc:
        out.extend(("# " + line).rstrip() for line in p.doc.splitlines())
    if p.hypers:
        out.append("hyper " + ", ".join(
            f"{h.name} = {fmt_number(h.default)}"
            + (f" tune({fmt_number(h.tune[0])}, {fmt_number(h.tune[1])})" if h.tune is not None else "")
            for h in p.hypers))
    # per-parameter and model-wide states, one line per run of either kind (keeps their order)
    runs: list[tuple[bool, list[str]]] = []
    for s in p.states:
        model_wide = s.storage == GLOBAL
        storage = "" if s.storage in ("float", GLOBAL) else f": {s.storage}"
        if not runs or runs[-1][0] != model_wide:
            runs.append((model_wide, []))
        runs[-1][1].append(f"{s.name}{storage} = {_state_init_text(s.init)}")
    for model_wide, parts in runs:
        out.append(("global " if model_wide else "state ") + ", ".join(parts))
    _stmts(p.body, "", out)
    return "\n".join(out) + "\n"
