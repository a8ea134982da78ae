"""What a program does, read from its tree before any code is generated: the one analysis the
step generators (:mod:`optdisco.dsl.compiler`, :mod:`optdisco.dsl.foreach`,
:mod:`optdisco.dsl.hoist`), the step module and the memory and cost estimates share.

- ``static_value``: an expression's value from static inputs alone (shape, role, hyperparameters);
- routing: a body read once (``routing``), the statements a parameter reaches (``reached``) and
  the states it needs (``reachable_states``, ``reached_states``; the exported ``needed_states``
  is written out from the same ``routing``);
- ``acts_elementwise``: whether parameters may be updated concatenated, the one elementwise
  test (``splits_elementwise`` adds what stepping one parameter in slices needs);
- ``mixed_names``: names given a static value in one place and a tensor in another;
- ``model_hypers``: the hyperparameters a model-wide program's global states are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from . import runtime
from .checker import CheckInfo
from .layout import shape_info
from .primitives import BINARY_OPERATORS, ELEMENTWISE, GLOBAL, PARAM, SHAPE_INPUTS
from .program import (Assign, BinOp, Call, Expr, Name, Num, Program, Unary, names_in, reaching, walk_exprs,
                      walk_stmts)


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


def shape_env(shape: tuple[int, ...], role: str) -> dict:
    """The shape inputs (``rows``, ``cols``, …, ``is_hidden``) of a parameter of ``shape`` and ``role``."""
    return dict(zip(SHAPE_INPUTS, shape_info(tuple(shape), role)))


@dataclass(frozen=True)
class Branch:
    """An if-block whose condition reads only static names: a parameter takes one of its branches."""

    cond: Expr
    then: tuple
    orelse: tuple


def routing(body, static: frozenset) -> tuple:
    """A body as a parameter's routing sees it, in order: ``(expression, target)`` for what a step
    evaluates (an assignment's value and target; with target ``None`` the condition of an
    if-block that reads values other than ``static``, whose branches then both count, inline),
    and a :class:`Branch` for an if-block whose condition reads only ``static`` names.

    The one reachability rule: evaluation decides the branches from a parameter's shape, role
    and uniform hyperparameters (``reached``), the exported optimizer's ``needed_states`` from
    the shape and role alone (:func:`optdisco.dsl.compiler.generate_needed_source`)."""
    out = []
    for st in body:
        if isinstance(st, Assign):
            out.append((st.value, st.target))
        elif names_in(st.cond) <= static:
            out.append(Branch(st.cond, routing(st.then, static), routing(st.orelse, static)))
        else:
            out.append((st.cond, None))
            out.extend(routing(st.then, static))
            out.extend(routing(st.orelse, static))
    return tuple(out)


def reached(body, env: dict) -> Iterator[tuple[Expr, str | None]]:
    """``(expression, target)`` of what a step evaluates for a parameter whose static inputs
    (shape inputs, and possibly hyperparameters) are ``env``, in order: if-blocks whose
    conditions ``env`` decides take their one branch, others count both (see ``routing``)."""
    return _take(routing(body, frozenset(env)), env)


def _take(nodes, env: dict):
    for node in nodes:
        if not isinstance(node, Branch):
            yield node
            continue
        try:
            taken = bool(static_value(node.cond, env))
        except (Unknown, TypeError, ValueError, ZeroDivisionError, OverflowError):
            yield node.cond, None
            yield from _take(node.then, env)
            yield from _take(node.orelse, env)
            continue
        yield from _take(node.then if taken else node.orelse, env)


def tracked(program: Program) -> frozenset:
    """The names routing allocates by: the states, and the step count ``t`` (a parameter whose
    routing never reads it keeps no step counter, as torch.optim.Muon's hidden matrices)."""
    return frozenset(s.name for s in program.states) | {"t"}


def used(program: Program, e: Expr, target: str | None) -> frozenset:
    """The tracked names an evaluated expression reads or its assignment writes."""
    return (names_in(e) | {target}) & tracked(program)


def init_deps(program: Program) -> dict[str, list[str]]:
    """Each tracked name → the tracked names its initialiser reads (``t`` has none)."""
    names = tracked(program)
    deps = {s.name: sorted(names_in(s.init) & names) for s in program.states}
    deps["t"] = []
    return deps


def close_over_inits(program: Program, need: set) -> set:
    """``need`` with every state an initialiser of it reads, transitively."""
    deps, need = init_deps(program), set(need)
    todo = list(need)
    while todo:
        for d in deps[todo.pop()]:
            if d not in need:
                need.add(d)
                todo.append(d)
    return need


def reachable_states(program: Program, env: dict) -> frozenset:
    """The states (and ``"t"`` when the step count is read) that the statements a parameter with
    static inputs ``env`` can reach read or write, closed over the states' initialisers; other
    states are never allocated for that parameter."""
    need: set[str] = set()
    for e, target in reached(program.body, env):
        need |= used(program, e, target)
    return frozenset(close_over_inits(program, need))


def reached_states(program: Program, shape: tuple[int, ...], role: str) -> set[str]:
    """``reachable_states`` of a parameter of ``shape`` and ``role``, decided by them alone."""
    return set(reachable_states(program, shape_env(shape, role)))


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


def splits_elementwise(program: Program, info: CheckInfo) -> bool:
    """``acts_elementwise``, and a parameter may also be stepped in slices, each slice a step of
    its own (the exported optimizer's CPU blocks): every state holds one value per element (a
    scalar state would advance once per slice) and no name is a static value in one place and a
    tensor in another (the multi-tensor step makes such a value a tensor of the whole parameter's
    layout)."""
    if not acts_elementwise(program) or any(t.shape != PARAM for t in info.state_types.values()):
        return False
    mixed = mixed_names(program, info)
    for st in walk_stmts(program.body):
        t = info.types.get(id(st.value)) if isinstance(st, Assign) else None
        if t is not None and t.static and st.target in mixed:
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


def _names_outside_reductions(e: Expr) -> set[str]:
    """The names an expression reads, leaving out the arguments of model-wide reductions."""
    if isinstance(e, Call) and e.fn in GLOBAL:
        return set()
    if isinstance(e, Call):
        return set().union(*(_names_outside_reductions(a) for a in e.args))
    if isinstance(e, BinOp):
        return _names_outside_reductions(e.left) | _names_outside_reductions(e.right)
    if isinstance(e, Unary):
        return _names_outside_reductions(e.operand)
    return names_in(e)


def model_hypers(program: Program) -> frozenset:
    """The hyperparameters the global states are computed from, outside model-wide reductions.

    A global state is one value for the whole model, computed alike by every parameter's step
    from the reductions' totals: a hyperparameter that enters it there (Prodigy's lr, d0, d_coef,
    growth_rate, beta1, beta2, bias_correction) must be the same for every parameter. Hyperparameters inside a
    reduction's argument (each parameter's share, with its own group's values) and those the
    per-parameter statements read (weight decay) may differ between parameter groups."""
    roots = [s.name for s in program.global_states]
    if not roots:
        return frozenset()
    return frozenset(reaching(program, roots, _names_outside_reductions) & set(program.hyper_defaults))
