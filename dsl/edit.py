"""Editing a Program's tree: statement paths, replacing and inserting statements and expression
nodes, substitution, the names in scope before a statement, dead-code removal, canonical form.

Mutation (``optdisco.search.mutation``), simplification (``optdisco.search.simplify``) and the
sympy bridge (:mod:`.symbolic`) all edit programs through these functions. Every function
returns a new tree (a Program is immutable); source positions of the statements kept ride along.

A *path* names a statement in the nested body: ``(i,)`` is the ``i``-th top-level statement,
``(i, 0, j)`` the ``j``-th statement of the then-branch of the if-block at ``i``, ``(i, 1, j)``
of its else-branch, and so on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, Optional

from .parser import parse
from .primitives import INPUT_TYPES, SCALAR, Type
from .program import (
    W_EVAL, Assign, BinOp, Call, Expr, If, Name, Program, Stmt, Unary, influences_w, names_in, sub_exprs, walk_stmts,
)

Path = tuple[int, ...]
Body = tuple[Stmt, ...]


# -- statements ---------------------------------------------------------------------------------
def stmt_paths(body: Body, prefix: Path = ()) -> list[Path]:
    """Every statement's path, in execution order (an if-block before its branches' statements)."""
    out = []
    for i, s in enumerate(body):
        out.append(prefix + (i,))
        if isinstance(s, If):
            out += stmt_paths(s.then, prefix + (i, 0))
            out += stmt_paths(s.orelse, prefix + (i, 1))
    return out


def assign_paths(body: Body, prefix: Path = ()) -> Iterator[tuple[Path, Assign]]:
    """``(path, statement)`` of every assignment, in execution order."""
    for i, s in enumerate(body):
        if isinstance(s, Assign):
            yield prefix + (i,), s
        else:
            yield from assign_paths(s.then, prefix + (i, 0))
            yield from assign_paths(s.orelse, prefix + (i, 1))


def get_stmt(body: Body, path: Path) -> Stmt:
    """The statement at ``path``."""
    s = body[path[0]]
    if len(path) == 1:
        return s
    return get_stmt(s.then if path[1] == 0 else s.orelse, path[2:])


def _edit(body: Body, path: Path, fn: Callable[[Body, int], Body]) -> Body:
    """Apply ``fn(block, index)`` to the block that holds ``path``'s last index."""
    if len(path) == 1:
        return fn(body, path[0])
    i, branch, rest = path[0], path[1], path[2:]
    s = body[i]
    if branch == 0:
        s2 = replace(s, then=_edit(s.then, rest, fn))
    else:
        s2 = replace(s, orelse=_edit(s.orelse, rest, fn))
    return body[:i] + (s2,) + body[i + 1 :]


def replace_stmt(body: Body, path: Path, new: Optional[Stmt]) -> Body:
    """``body`` with the statement at ``path`` replaced by ``new`` (removed where ``new`` is None)."""
    return _edit(body, path, lambda b, i: b[:i] + ((new,) if new is not None else ()) + b[i + 1 :])


def insert_stmt(body: Body, path: Path, new: Stmt) -> Body:
    """``body`` with ``new`` inserted just before the statement at ``path``."""
    return _edit(body, path, lambda b, i: b[:i] + (new,) + b[i:])


def stmt_expr(s: Stmt) -> Expr:
    """The expression a statement reads: an assignment's value, an if-block's condition."""
    return s.cond if isinstance(s, If) else s.value


def with_expr(s: Stmt, e: Expr) -> Stmt:
    """``s`` reading ``e`` instead of :func:`stmt_expr`\\ (s)."""
    return replace(s, cond=e) if isinstance(s, If) else replace(s, value=e)


# -- expressions --------------------------------------------------------------------------------
def nodes(e: Expr) -> list[Expr]:
    """The nodes of ``e`` in pre-order (the indices :func:`replace_node` takes)."""
    return list(sub_exprs(e))


def replace_node(e: Expr, index: int, new: Expr) -> Expr:
    """``e`` with its ``index``-th pre-order node replaced by ``new``."""
    counter = [0]

    def go(x: Expr) -> Expr:
        k = counter[0]
        counter[0] += 1
        if k == index:
            # skip the counts of the replaced subtree
            counter[0] += len(nodes(x)) - 1
            return new
        if isinstance(x, Call):
            return Call(x.fn, tuple(go(a) for a in x.args))
        if isinstance(x, BinOp):
            left = go(x.left)
            return BinOp(x.op, left, go(x.right))
        if isinstance(x, Unary):
            return Unary(x.op, go(x.operand))
        return x

    return go(e)


def substitute(e: Expr, name: str, new: Expr) -> Expr:
    """``e`` with every read of ``name`` replaced by ``new``."""
    if isinstance(e, Name):
        return new if e.id == name else e
    if isinstance(e, Call):
        return Call(e.fn, tuple(substitute(a, name, new) for a in e.args))
    if isinstance(e, BinOp):
        return BinOp(e.op, substitute(e.left, name, new), substitute(e.right, name, new))
    if isinstance(e, Unary):
        return Unary(e.op, substitute(e.operand, name, new))
    return e


def substitute_after(body: Body, path: Path, name: str, repl: Expr) -> Body:
    """Replace reads of ``name`` in statements from ``path`` on (a removed statement's
    successors), until a statement assigns ``name`` again."""
    paths = stmt_paths(body)
    start = 0
    for i, q in enumerate(paths):
        if q >= path:
            start = i
            break
    else:
        return body
    for q in paths[start:]:
        s = get_stmt(body, q)
        body = replace_stmt(body, q, with_expr(s, substitute(stmt_expr(s), name, repl)))
        if isinstance(s, Assign) and s.target == name:
            break
    return body


# -- scopes ---------------------------------------------------------------------------------------
def _base_env(p: Program, info) -> dict[str, Type]:
    env = {k: v for k, v in INPUT_TYPES.items() if v.kind == "num"}
    if not p.uses_hess_diag:  # a Hessian estimate costs extra backward passes: never introduce one
        env.pop("hess_diag")
    for h in p.hypers:
        env[h.name] = Type("num", SCALAR, True)
    for name, t in info.state_types.items():
        env[name] = t
    return env


def scope(p: Program, info, path: Path) -> dict[str, Type]:
    """Numeric names readable just before the statement at ``path``, with their types (``info``:
    the program's :class:`~optdisco.dsl.checker.CheckInfo`). ``hess_diag`` is in scope only
    where the program already reads it."""
    env = _base_env(p, info)

    def walk(body: Body, rest: Path) -> None:
        stop = rest[0] if rest else len(body)
        for s in body[:stop]:
            if isinstance(s, Assign):
                t = info.types.get(id(s.value))
                if t is not None and t.kind == "num" and s.target not in info.state_types and s.target != "w":
                    env[s.target] = t
        if rest and len(rest) > 1:
            s = body[rest[0]]
            walk(s.then if rest[1] == 0 else s.orelse, rest[2:])

    walk(p.body, path)
    return env


# -- clean-up -------------------------------------------------------------------------------------
def remove_dead_statements(p: Program) -> Program:
    """Drop statements whose value never reaches ``w`` or a live state, and states that never
    affect ``w``; hyperparameters stay."""
    live = influences_w(p)
    states = tuple(s for s in p.states if s.name in live)

    def sweep(body: Body, need: set[str]) -> tuple[Body, set[str]]:
        out: list[Stmt] = []
        for s in reversed(body):
            if isinstance(s, Assign):
                if s.target in need:
                    out.append(s)
                    need = (need - {s.target}) | names_in(s.value)
            else:
                then, nt = sweep(s.then, set(need))
                orelse, ne = sweep(s.orelse, set(need))
                if then or orelse:
                    out.append(replace(s, then=then, orelse=orelse))
                    need = nt | ne | names_in(s.cond)
        return tuple(reversed(out)), need

    body, _ = sweep(p.body, {"w", W_EVAL} | {s.name for s in states})
    return Program(p.hypers, states, body, p.doc)


def remove_dead_code(p: Program) -> Program:
    """:func:`remove_dead_statements`, then drop the hyperparameters nobody reads (``lr``
    always stays)."""
    p = remove_dead_statements(p)
    used = set()
    for s in walk_stmts(p.body):
        used |= names_in(stmt_expr(s))
    for s in p.states:
        used |= names_in(s.init)
    hypers = tuple(h for h in p.hypers if h.name == "lr" or h.name in used)
    return Program(hypers, p.states, p.body, p.doc)


def canonical(p: Program) -> Program:
    """The program as the parser reads its printed text (fresh positions, plain numbers)."""
    return parse(p.to_text())


def statement_count(p: Program) -> int:
    """The number of assignments, in every branch."""
    return sum(1 for s in walk_stmts(p.body) if isinstance(s, Assign))


__all__ = [
    "Path", "stmt_paths", "assign_paths", "get_stmt", "replace_stmt", "insert_stmt", "stmt_expr", "with_expr",
    "nodes", "replace_node", "substitute", "substitute_after", "scope", "remove_dead_statements",
    "remove_dead_code", "canonical", "statement_count",
]
