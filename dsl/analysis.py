"""What a program does, read from its tree before any code is generated: the one analysis the
step generators (:mod:`optdisco.dsl.compiler`, :mod:`optdisco.dsl.foreach`,
:mod:`optdisco.dsl.hoist`), the step module and the memory and cost estimates share.

- ``static_value``: an expression's value from static inputs alone (shape, role, hyperparameters);
- routing: which statements a parameter reaches (``reached``) and which states it needs
  (``reachable_states``, ``reached_states``);
- ``acts_elementwise``: whether parameters may be updated concatenated;
- ``mixed_names``: names given a static value in one place and a tensor in another.
"""

from __future__ import annotations

from typing import Iterator

from . import runtime
from .checker import CheckInfo
from .layout import view_shape
from .primitives import BINARY_OPERATORS, ELEMENTWISE, SHAPE_INPUTS
from .program import Assign, BinOp, Call, Expr, Name, Num, Program, Unary, names_in, walk_exprs, walk_stmts


class Unknown(Exception):
    """An expression whose value is not known before the step runs."""


def static_value(e: Expr, env: dict):
    """The value of an expression from static inputs alone, or Unknown (e.g. it reads t)."""
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Name):
        if e.id in env:
            return env[e.id]
        raise Unknown
    if isinstance(e, Unary):
        v = static_value(e.operand, env)
        return runtime.not_(v) if e.op == "not" else -v
    if isinstance(e, BinOp):
        a, b = static_value(e.left, env), static_value(e.right, env)
        if e.op == "@":
            raise Unknown
        return getattr(runtime, BINARY_OPERATORS[e.op].runtime)(a, b)
    if isinstance(e, Call) and e.fn in ("max", "min", "sqrt", "abs", "floor", "log", "exp", "sign", "clip"):
        return getattr(runtime, e.fn)(*(static_value(a, env) for a in e.args))
    raise Unknown


def reachable_states(program: Program, env: dict) -> frozenset:
    """States read by the statements this parameter can reach: if-conditions that depend only on
    its shape, role and (uniform) hyperparameters are decided; others count both branches."""
    names: set[str] = set()

    def walk(body):
        for s in body:
            if isinstance(s, Assign):
                names.update(names_in(s.value))
                continue
            try:
                taken = bool(static_value(s.cond, env))
            except (Unknown, TypeError, ValueError, ZeroDivisionError, OverflowError):
                names.update(names_in(s.cond))
                walk(s.then)
                walk(s.orelse)
                continue
            walk(s.then if taken else s.orelse)

    walk(program.body)
    states = {s.name: s for s in program.param_states}
    todo = [n for n in names if n in states]
    need: set[str] = set()
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            todo.extend(x for x in names_in(states[n].init) if x in states)
    return frozenset(need)


def shape_env(shape: tuple[int, ...], role: str) -> dict:
    """The shape inputs (``rows``, ``cols``, …, ``is_hidden``) of a parameter of ``shape`` and ``role``."""
    rows, cols = view_shape(tuple(shape))
    ndim = len(shape)
    is_matrix = ndim >= 2
    return dict(zip(SHAPE_INPUTS, (rows, cols, ndim, rows * cols, is_matrix, not is_matrix, role == "embedding",
                                   role == "head", is_matrix and role == "hidden")))


def reached(body, env: dict) -> Iterator[tuple[Expr, str | None]]:
    """``(expression, target)`` of what a step evaluates for a parameter whose shape inputs are
    ``env``, in order: each assignment's value and target, and (target ``None``) the condition of
    each if-block that is not decided by the shape alone; a decided if-block takes its one branch."""
    for st in body:
        if isinstance(st, Assign):
            yield st.value, st.target
            continue
        decided = None
        if names_in(st.cond) <= set(SHAPE_INPUTS):
            try:
                decided = bool(static_value(st.cond, env))
            except Unknown:
                decided = None
        if decided is None:
            yield st.cond, None
            yield from reached(st.then, env)
            yield from reached(st.orelse, env)
        else:
            yield from reached(st.then if decided else st.orelse, env)


def reached_states(program: Program, shape: tuple[int, ...], role: str) -> set[str]:
    """The states (and ``"t"`` when the step count is read) that a parameter of ``shape`` and
    ``role`` can reach; other states are never allocated for it."""
    states = {s.name for s in program.states} | {"t"}
    need: set[str] = set()
    for e, target in reached(program.body, shape_env(shape, role)):
        need.update((names_in(e) | {target}) & states)
    deps = {s.name: names_in(s.init) & states for s in program.states}
    deps["t"] = set()
    todo = list(need)
    while todo:
        for d in deps[todo.pop()]:
            if d not in need:
                need.add(d)
                todo.append(d)
    return need


def acts_elementwise(program: Program) -> bool:
    """True when an element's update reads only that element of ``w``, ``g``, ``hess_diag`` and
    the states, with ``t`` and the hyperparameters: no reduction, matrix work, quantized state or
    read of the parameter's shape or role. Such a program updates several parameters
    concatenated into one tensor exactly as it updates each apart."""
    if any(s.storage != "float" for s in program.states):
        return False
    for e in walk_exprs(program):
        if isinstance(e, Call) and e.fn not in ELEMENTWISE:
            return False
        if isinstance(e, BinOp) and e.op == "@":
            return False
        if isinstance(e, Name) and e.id in SHAPE_INPUTS:
            return False
    return True


def mixed_names(program: Program, info: CheckInfo) -> set[str]:
    """Names given a static value somewhere and a computed one elsewhere (states included):
    their static values must become tensors."""
    computed = {s.name for s in program.states}
    for st in walk_stmts(program.body):
        if isinstance(st, Assign):
            t = info.types.get(id(st.value))
            if t is None or not t.static:
                computed.add(st.target)
    return computed
