"""The sympy bridge: a program's update as sympy expressions, static simplification, LaTeX.

Every arithmetic operator of the language is elementwise, so treating tensors as commutative
real symbols is exact algebra for them; reductions and matrix operations become opaque sympy
functions (``mean(x)``, ``orthogonalize(x)``, ``matmul(a, b)``) that simplification leaves
alone. Simplification uses real-number identities: ``x / x → 1`` is taken as true although it
is ``nan`` at ``x = 0`` in floating point; callers that care re-check behaviour with
``fingerprint``.
"""

from __future__ import annotations

import functools
import math

import sympy as sp

from .checker import check
from .edit import assign_paths, remove_dead_statements, replace_stmt
from .errors import DSLError
from .primitives import BINARY_OPERATORS, INPUT_TYPES, PRIMITIVES, RANDOM, operators
from .program import Assign, BinOp, Call, Expr, Name, Num, Program, Stmt, Unary

_ELEMENTWISE = {
    "sign": sp.sign,
    "abs": sp.Abs,
    "sqrt": sp.sqrt,
    "rsqrt": lambda x: 1 / sp.sqrt(x),
    "square": lambda x: x**2,
    "exp": sp.exp,
    "log": sp.log,
    "tanh": sp.tanh,
    "relu": lambda x: sp.Max(x, 0),
    "floor": sp.floor,
    "cos": sp.cos,
    "max": sp.Max,
    "min": sp.Min,
    "clip": lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi),
    "ema": lambda a, x, b: b * a + (1 - b) * x,
    "lerp": lambda a, b, w: a + w * (b - a),
}
_FROM_SYMPY_FUNC = {sp.sign: "sign", sp.Abs: "abs", sp.exp: "exp", sp.log: "log", sp.tanh: "tanh",
                    sp.floor: "floor", sp.cos: "cos"}


@functools.lru_cache(maxsize=None)
def _opaque(name: str):
    return sp.Function(name, real=True)


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


def to_sympy(e: Expr, env: dict[str, sp.Expr] | None = None):
    """A language expression as a sympy expression; names map through ``env`` (else symbols)."""
    env = env or {}
    if isinstance(e, Num):
        v = e.value
        if v == int(v) and abs(v) < 1e15:
            return sp.Integer(int(v))
        return sp.Rational(repr(v))  # the decimal as written: 0.9 is 9/10, so 1 - 0.9 folds to 0.1
    if isinstance(e, Name):
        return env.get(e.id, _sym(e.id))
    if isinstance(e, Unary):
        x = to_sympy(e.operand, env)
        return sp.Not(x) if e.op == "not" else -x
    if isinstance(e, BinOp):
        a, b = to_sympy(e.left, env), to_sympy(e.right, env)
        op = e.op
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "**":
            return a**b
        if op == "@":
            return _opaque("matmul")(a, b)
        spelled = getattr(sp, BINARY_OPERATORS[op].sympy)  # %, logic and relations
        return spelled(a, b, evaluate=False) if op in operators("compare") else spelled(a, b)
    if isinstance(e, Call):
        args = [to_sympy(a, env) for a in e.args]
        if e.fn in _ELEMENTWISE:
            return _ELEMENTWISE[e.fn](*args)
        if e.fn == "where":
            c, a, b = args
            return sp.Piecewise((a, c), (b, True))
        if e.fn in RANDOM:  # each draw is its own value: randn_like(g) - randn_like(g) is not 0
            return _opaque(e.fn)(*args, sp.Dummy("draw"))
        return _opaque(e.fn)(*args)
    raise TypeError(f"cannot convert {e!r}")


# -- sympy → language ------------------------------------------------------------------------------
class _Unconvertible(Exception):
    pass


def _num(v) -> Expr:
    f = float(v)
    if not math.isfinite(f):
        raise _Unconvertible("non-finite constant")
    return Num(f)


def from_sympy(x) -> Expr:
    """A sympy expression back in the language (raises _Unconvertible where it cannot)."""
    if isinstance(x, (sp.Integer, sp.Float, sp.Rational)) or x.is_Number:
        return _num(x)
    if x in (sp.true, sp.false):
        raise _Unconvertible("boolean constant")
    if isinstance(x, sp.Symbol):
        return Name(x.name)
    if isinstance(x, sp.Add):
        pos, neg = [], []
        for term in x.as_ordered_terms():
            c, rest = term.as_coeff_Mul()
            (neg if c < 0 else pos).append(-term if c < 0 else term)
        if not pos:
            out: Expr = Unary("-", from_sympy(neg[0]))
            neg = neg[1:]
        else:
            out = from_sympy(pos[0])
            for t in pos[1:]:
                out = BinOp("+", out, from_sympy(t))
        for t in neg:
            out = BinOp("-", out, from_sympy(t))
        return out
    if isinstance(x, sp.Mul):
        c, rest = x.as_coeff_Mul()
        if c < 0:
            inner = from_sympy(-x)
            return Unary("-", inner) if not isinstance(inner, Num) else Num(-inner.value)
        num, den = [], []
        for f in sp.Mul.make_args(x):
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(f.base ** (-f.exp))
            elif isinstance(f, sp.Rational) and not isinstance(f, sp.Integer) and f.p == 1:
                den.append(sp.Integer(f.q))
            else:
                num.append(f)
        out = from_sympy(num[0]) if num else Num(1.0)
        for f in num[1:]:
            out = BinOp("*", out, from_sympy(f))
        for f in den:
            out = BinOp("/", out, from_sympy(f))
        return out
    if isinstance(x, sp.Pow):
        base, exp = x.base, x.exp
        if exp == sp.Rational(1, 2):
            return Call("sqrt", (from_sympy(base),))
        if exp == sp.Rational(-1, 2):
            return Call("rsqrt", (from_sympy(base),))
        if exp == 2:
            return Call("square", (from_sympy(base),))
        if exp == -1:
            return BinOp("/", Num(1.0), from_sympy(base))
        return BinOp("**", from_sympy(base), from_sympy(exp))
    if isinstance(x, (sp.Max, sp.Min)):
        name = "max" if isinstance(x, sp.Max) else "min"
        args = list(x.args)
        out = from_sympy(args[0])
        for a in args[1:]:
            out = Call(name, (out, from_sympy(a)))
        return out
    if isinstance(x, sp.Mod):
        return BinOp("%", from_sympy(x.args[0]), from_sympy(x.args[1]))
    if isinstance(x, sp.Piecewise):
        pieces = list(x.args)
        if len(pieces) != 2 or pieces[1][1] is not sp.true:
            raise _Unconvertible("piecewise with more than two pieces")
        (a, c), (b, _) = pieces
        return Call("where", (from_sympy(c), from_sympy(a), from_sympy(b)))
    if isinstance(x, sp.core.relational.Relational):
        op = next(s for s in operators("compare") if BINARY_OPERATORS[s].sympy == type(x).__name__)
        return BinOp(op, from_sympy(x.lhs), from_sympy(x.rhs))
    if isinstance(x, sp.And) or isinstance(x, sp.Or):
        op = next(s for s in operators("logic") if BINARY_OPERATORS[s].sympy == type(x).__name__)
        args = [from_sympy(a) for a in x.args]
        out = args[0]
        for a in args[1:]:
            out = BinOp(op, out, a)
        return out
    if isinstance(x, sp.Not):
        return Unary("not", from_sympy(x.args[0]))
    for cls, name in _FROM_SYMPY_FUNC.items():
        if isinstance(x, cls):
            return Call(name, tuple(from_sympy(a) for a in x.args))
    if isinstance(x, sp.core.function.AppliedUndef):
        name = type(x).__name__
        args = tuple(from_sympy(a) for a in x.args)
        if name == "matmul":
            return BinOp("@", *args)
        if name in RANDOM:
            return Call(name, args[:-1])  # without the draw's identity
        if name in PRIMITIVES:
            return Call(name, args)
    raise _Unconvertible(f"no language form for {type(x).__name__}")


# -- the update as sympy -----------------------------------------------------------------------------
def update_exprs(program: Program) -> dict[str, sp.Expr]:
    """Each output of one step (``w`` and every state) as one sympy expression over the inputs,
    hyperparameters and the previous state; temporaries are substituted and if-blocks become
    Piecewise expressions."""
    check(program)
    env: dict[str, sp.Expr] = {}

    def run(body: tuple[Stmt, ...], env: dict[str, sp.Expr]) -> dict[str, sp.Expr]:
        env = dict(env)
        for s in body:
            if isinstance(s, Assign):
                env[s.target] = to_sympy(s.value, env)
            else:
                c = to_sympy(s.cond, env)
                a, b = run(s.then, env), run(s.orelse, env)
                for k in set(a) | set(b):
                    if k in a and k in b:
                        env[k] = a[k] if a[k] == b[k] else sp.Piecewise((a[k], c), (b[k], True))
        return env

    final = run(program.body, env)
    outs = {"w": final.get("w", _sym("w"))}
    for st in program.states:
        outs[st.name] = final.get(st.name, _sym(st.name))
    return outs


# -- static simplification ---------------------------------------------------------------------------
def size(e: Expr) -> int:
    """Number of nodes of an expression (the measure simplification reduces)."""
    from .program import sub_exprs

    return sum(1 for _ in sub_exprs(e))


def _simplify_expr(e: Expr) -> Expr:
    """The smallest of the expression, its sympy-simplified form and its sympy canonical form."""
    try:
        x = to_sympy(e)
        candidates = [from_sympy(x), from_sympy(sp.simplify(x, ratio=1.0))]
    except (_Unconvertible, TypeError, ValueError, ZeroDivisionError, RecursionError, AttributeError):
        return e
    best = min(candidates, key=size)
    return best if size(best) < size(e) else e


def simplify(program: Program) -> Program:
    """Static simplification: dead code removal, then each right-hand side simplified with sympy
    (constant folding and algebraic identities such as ``sign(sign(x)) → sign(x)``,
    ``x * 1 → x``), keeping a rewrite only where the program still checks; then dead code again
    (a rewrite can make statements unused)."""
    check(program)
    p = remove_dead_statements(program)
    for path, s in list(assign_paths(p.body)):
        new_value = _simplify_expr(s.value)
        if new_value == s.value:
            continue
        candidate = Program(p.hypers, p.states, replace_stmt(p.body, path, Assign(s.target, new_value)), p.doc)
        try:
            check(candidate)
        except DSLError:
            continue
        p = candidate
    p = remove_dead_statements(p)
    check(p)
    return p


# -- LaTeX -------------------------------------------------------------------------------------------
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "kappa", "lambda", "mu",
          "nu", "xi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega"}
_ALIASES = {"lr": r"\eta", "eps": r"\epsilon", "wd": r"\lambda", "w": r"\theta", "g": "g",
            "hess_diag": r"\hat{H}", "mu": r"\mu"}


def latex_name(name: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    head = name.rstrip("0123456789")
    digits = name[len(head):]
    if head in _GREEK:
        base = "\\" + head
    elif len(head) == 1:
        base = head
    elif "_" in head:
        a, _, b = head.partition("_")
        base = f"{latex_name(a)}_{{\\mathrm{{{b}}}}}"
    else:
        base = rf"\mathrm{{{head}}}"
    return f"{base}_{{{digits}}}" if digits else base


def _latex_expr(e: Expr) -> str:
    x = to_sympy(e)
    for fn in RANDOM:  # a draw prints without its identity
        x = x.replace(lambda a, fn=fn: isinstance(a, sp.core.function.AppliedUndef) and type(a).__name__ == fn,
                      lambda a: sp.Function(type(a).__name__, real=True)(*a.args[:-1]))
    names = {s: sp.Symbol(latex_name(s.name)) for s in x.free_symbols}
    return sp.latex(x.xreplace(names))


def to_latex(program: Program) -> str:
    """The program as LaTeX: one ``\\leftarrow`` line per statement, if-blocks as cases."""
    check(program)
    lines: list[str] = []

    def emit(body: tuple[Stmt, ...], indent: int):
        pad = r"\quad " * indent
        for s in body:
            if isinstance(s, Assign):
                lines.append(f"{pad}{latex_name(s.target)} \\leftarrow {_latex_expr(s.value)}")
            else:
                lines.append(rf"{pad}\textbf{{if }} {_latex_expr(s.cond)}:")
                emit(s.then, indent + 1)
                if s.orelse:
                    lines.append(rf"{pad}\textbf{{else}}:")
                    emit(s.orelse, indent + 1)

    emit(program.body, 0)
    return "\\begin{aligned}\n" + " \\\\\n".join("&" + ln for ln in lines) + "\n\\end{aligned}"


__all__ = ["to_sympy", "from_sympy", "update_exprs", "simplify", "to_latex", "latex_name", "INPUT_TYPES"]
