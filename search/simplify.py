"""Simplification of found programs, after the Lion paper (Chen et al. 2023, §2.4): remove what
does not change behaviour, simplify algebraically, ablate what does not help, round constants.

1. *Behaviour-preserving removal.* Each statement is removed in turn (reads of a name only it
   defined then read one of its operands), and each function call is replaced by one of its
   arguments of the same shape; a change is kept when the behaviour fingerprint
   (:func:`optdisco.dsl.fingerprint`) is unchanged. Then :func:`optdisco.dsl.simplify` (dead
   code, constant folding, sympy) is applied, kept only if the fingerprint is unchanged too.
2. *Ablation.* The same removals, one at a time, judged by fitness: a removal is kept when the
   fitness stays within ``tolerance`` of the fitness before simplification:
   ``f_new <= f_ref + tolerance·|f_ref|`` (lower is better).
3. *Rounding.* Every constant and hyperparameter default is rounded to 1, then 2 significant
   digits (decay-like values in (0.5, 1) round ``1 − v``), keeping the first rounding within
   the same tolerance.

Every fitness call is an evaluation; ``fitness`` is any ``Program -> float`` (lower better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

from optdisco.dsl import DSLError, Program, check, fingerprint
from optdisco.dsl import simplify as static_simplify
from optdisco.dsl.program import Assign, BinOp, Call, Num

from optdisco.dsl.edit import (
    canonical, get_stmt, nodes, remove_dead_code, replace_node, replace_stmt, scope, statement_count, stmt_expr,
    stmt_paths, substitute_after, with_expr,
)


@dataclass
class Step:
    what: str
    kept: bool
    fitness: float | None = None


@dataclass
class Simplified:
    original: Program
    program: Program
    fitness_before: float | None
    fitness_after: float | None
    steps: list[Step] = field(default_factory=list)
    evaluations: int = 0

    @property
    def removed_statements(self) -> int:
        return statement_count(self.original) - statement_count(self.program)


def _keeps_form(p: Program, needs_lr: bool = True) -> bool:
    """Every rule for ``w`` still reads ``w`` (a step, not a replacement of the parameter), and
    the program still reads ``lr`` (the evaluation tunes it; a program that drops it would be
    judged at one fixed step size instead)."""
    from optdisco.dsl.program import names_in, walk_stmts

    reads = set()
    for s in walk_stmts(p.body):
        reads |= names_in(s.cond if not isinstance(s, Assign) else s.value)
    rules = [s for s in walk_stmts(p.body) if isinstance(s, Assign) and s.target == "w"]
    return ("lr" in reads or not needs_lr) and all("w" in names_in(s.value) for s in rules)


def _exposed_reads(body, defined: frozenset) -> tuple[set, frozenset]:
    """Names read in ``body`` before being assigned on every path to the read, and the names
    assigned on every path through ``body``."""
    from optdisco.dsl.program import names_in

    reads: set = set()
    for s in body:
        if isinstance(s, Assign):
            reads |= names_in(s.value) - defined
            defined = defined | {s.target}
        else:
            reads |= names_in(s.cond) - defined
            r1, d1 = _exposed_reads(s.then, defined)
            r2, d2 = _exposed_reads(s.orelse, defined)
            reads |= r1 | r2
            defined = d1 & d2
    return reads, defined


def drop_unread_states(p: Program) -> Program:
    """``p`` without the states whose value from the previous step is never read (``state m =
    zeros`` before ``m = g``): each is assigned before any read on every path, so it is a
    temporary. The behaviour is the same and the exported optimizer keeps less memory."""
    exposed, _ = _exposed_reads(p.body, frozenset())
    from optdisco.dsl.program import names_in

    in_inits = set().union(*(names_in(s.init) for s in p.states)) if p.states else set()
    keep = tuple(s for s in p.states if s.name in exposed or s.name in in_inits)
    if len(keep) == len(p.states):
        return p
    q = Program(p.hypers, keep, p.body, p.doc)
    try:
        check(q)
    except (DSLError, ValueError, KeyError):
        return p
    return remove_dead_code(q)


def _valid_form(p: Program, needs_lr: bool = True) -> Program | None:
    try:
        p = canonical(remove_dead_code(drop_unread_states(remove_dead_code(p))))
        check(p)
        if not _keeps_form(p, needs_lr):
            return None
        return p
    except (DSLError, ValueError, KeyError, RecursionError):
        return None


CONSTANT_LIKE = frozenset({"sign", "floor", "where", "max", "min", "clip"})
"""Calls whose value is often one constant in practice; removals also try 1 and 0 for them."""


def removals(p: Program) -> Iterator[tuple[str, Program]]:
    """Every program one removal away from ``p``: a statement deleted (with each possible
    bypass of its reads), a call replaced by one of its arguments, or a sign-like call replaced
    by the constant 1 or 0 (so that a disguised identity such as ``sign(sqrt(v))`` goes)."""
    info = check(p)
    from optdisco.dsl.printer import expr_text

    paths = stmt_paths(p.body)
    for path in reversed(paths):
        s = get_stmt(p.body, path)
        if not isinstance(s, Assign):
            continue
        body = replace_stmt(p.body, path, None)
        before = scope(p, info, path)
        label = f"{s.target} = {expr_text(s.value)}"
        if s.target in before or s.target in p.state_names or s.target == "w":
            yield f"remove '{label}'", Program(p.hypers, p.states, body, p.doc)
        else:
            t = info.types.get(id(s.value))
            seen = set()
            for x in nodes(s.value):
                if getattr(x, "id", None) in before and x.id not in seen and t is not None and before[x.id].shape == t.shape:
                    seen.add(x.id)
                    yield (f"remove '{label}' (reads of {s.target} read {x.id})",
                           Program(p.hypers, p.states, substitute_after(body, path, s.target, x), p.doc))
    for path in reversed(paths):
        s = get_stmt(p.body, path)
        e = stmt_expr(s)
        for k, node in enumerate(nodes(e)):
            if isinstance(node, (Call, BinOp)):
                t = info.types.get(id(node))
                args = node.args if isinstance(node, Call) else (node.left, node.right)
                for a in args:
                    ta = info.types.get(id(a))
                    if t is not None and ta is not None and ta.shape == t.shape and ta.kind == t.kind:
                        new = replace_node(e, k, a)
                        yield (f"replace '{expr_text(node)}' by '{expr_text(a)}'",
                               Program(p.hypers, p.states, replace_stmt(p.body, path, with_expr(s, new)), p.doc))
            if isinstance(node, Call) and node.fn in CONSTANT_LIKE:
                # a disguised constant: sign(sqrt(x)) is 1 wherever x > 0
                for c in (1.0, 0.0):
                    new = replace_node(e, k, Num(c))
                    yield (f"replace '{expr_text(node)}' by {c:g}",
                           Program(p.hypers, p.states, replace_stmt(p.body, path, with_expr(s, new)), p.doc))


def round_value(v: float, digits: int) -> float:
    if v == 0 or not math.isfinite(v):
        return v
    if 0.5 < v < 1:
        return 1 - float(f"{1 - v:.{digits}g}")
    return float(f"{v:.{digits}g}")


def roundings(p: Program) -> Iterator[tuple[str, list[Program]]]:
    """For each constant, its roundings to 1 and 2 significant digits (those that differ)."""
    for h in p.hypers:
        opts = []
        for d in (1, 2):
            r = round_value(h.default, d)
            if r != h.default and r not in [o[0] for o in opts]:
                opts.append((r, p.with_defaults(**{h.name: r})))
        if opts:
            yield f"round {h.name} = {h.default:g}", [o[1] for o in opts]
    for path in stmt_paths(p.body):
        s = get_stmt(p.body, path)
        e = stmt_expr(s)
        for k, node in enumerate(nodes(e)):
            if isinstance(node, Num):
                opts = []
                for d in (1, 2):
                    r = round_value(node.value, d)
                    if r != node.value and r not in [o[0] for o in opts]:
                        new = replace_node(e, k, Num(r))
                        opts.append((r, Program(p.hypers, p.states, replace_stmt(p.body, path, with_expr(s, new)), p.doc)))
                if opts:
                    yield f"round {node.value:g}", [o[1] for o in opts]


def simplify_program(program: Program, fitness: Callable[[Program], float] | None = None,
                     tolerance: float = 0.01, reference: float | None = None,
                     log: Callable[[str], None] | None = None) -> Simplified:
    """Simplify ``program`` (see module docstring). Without ``fitness`` only the
    behaviour-preserving step runs. ``reference`` is the program's known fitness (else it is
    evaluated once)."""
    say = log or (lambda s: None)
    original = program
    out = Simplified(original, program, reference, None)
    p = canonical(remove_dead_code(program))
    dropped = _valid_form(p, _keeps_form(p, True))
    if dropped is not None and dropped != p and fingerprint(dropped) == fingerprint(p):
        out.steps.append(Step("drop states whose previous value is never read (same behaviour)", True))
        say("  kept: drop states whose previous value is never read (same behaviour)")
        p = dropped
    fp = fingerprint(p)
    needs_lr = _keeps_form(p, True)

    def _valid(q: Program) -> Program | None:  # noqa: F811 - bound to this program's form
        return _valid_form(q, needs_lr)


    # 1. behaviour-preserving removals, to a fixed point
    changed = True
    while changed:
        changed = False
        for what, cand in removals(p):
            cand = _valid(cand)
            if cand is None or cand == p:
                continue
            if fingerprint(cand) == fp:
                out.steps.append(Step(what + " (same behaviour)", True))
                say(f"  kept: {what} (same behaviour)")
                p = cand
                changed = True
                break
    try:
        cand = _valid(static_simplify(p))
        if cand is not None and cand != p and fingerprint(cand) == fp:
            out.steps.append(Step("algebraic simplification (same behaviour)", True))
            say("  kept: algebraic simplification (same behaviour)")
            p = cand
    except (DSLError, ValueError, RecursionError):
        pass

    if fitness is None:
        out.program = p
        return out

    def evaluate(q: Program) -> float:
        out.evaluations += 1
        f = fitness(q)
        return f if f is not None and not math.isnan(f) else math.inf

    ref = reference if reference is not None and math.isfinite(reference) else evaluate(p)
    out.fitness_before = ref
    limit = ref + tolerance * abs(ref)
    current = ref

    # 2. ablation, to a fixed point
    changed = True
    while changed:
        changed = False
        tried = set()
        for what, cand in removals(p):
            cand = _valid(cand)
            if cand is None or cand == p or cand in tried:
                continue
            tried.add(cand)
            f = evaluate(cand)
            ok = f <= limit
            out.steps.append(Step(what, ok, f))
            say(f"  {'kept' if ok else 'undone'}: {what} (fitness {f:.5g}, limit {limit:.5g})")
            if ok:
                p, current, changed = cand, f, True
                break

    # 3. rounding constants
    progress = True
    rejected: set[Program] = set()
    while progress:
        progress = False
        for what, options in roundings(p):
            for cand in options:
                cand = _valid(cand)
                if cand is None or cand == p or cand in rejected:
                    continue
                f = evaluate(cand)
                ok = f <= limit
                out.steps.append(Step(what + f" → {_describe_change(p, cand)}", ok, f))
                say(f"  {'kept' if ok else 'undone'}: {what} (fitness {f:.5g})")
                if ok:
                    p, current, progress = cand, f, True
                    break
                rejected.add(cand)
            if progress:
                break
    out.program = p
    out.fitness_after = current
    return out


def _describe_change(a: Program, b: Program) -> str:
    la, lb = a.to_text().splitlines(), b.to_text().splitlines()
    diff = [y for x, y in zip(la, lb) if x != y]
    return diff[0].strip() if diff else "?"
