"""Type-aware mutations of a Program, and crossover of two.

Every operator works on the syntax tree with the checker's shape types in hand, so it mostly
proposes programs that type-check; ``mutate`` then runs the checker on the child and returns
``None`` for any child that fails it (or exceeds the length limit, or equals its parent). A
caller therefore only ever sees checked programs or nothing.

Operators (``MUTATIONS``):

- ``insert``: pick a value read by some statement, define a new temporary or a new state
  (``s = ema(s, F, c)``, ``s = max(s, F)``, ``s = c·s + F``) from a random expression ``F``
  over the names in scope, and make the reader use it (the read ``x`` becomes the new name or
  ``x·new``, ``x/new``, ``x/(sqrt(new)+eps)``, ``x+new``).
- ``delete``: remove a statement; later reads of a name it alone defined read one of its
  operands instead (a bypass).
- ``replace_primitive``: swap a function for one of its family (same signature), or an
  arithmetic operator for another.
- ``change_argument``: replace a sub-expression by a name, constant or small random expression
  of the same shape.
- ``perturb_constant``: multiply a constant or hyperparameter default by a log-normal factor
  (for values in (0.5, 1) such as decay rates, ``1 − v`` is perturbed instead).
- ``crossover``: splice a statement of a second parent into the first (replacing the
  statement with the same target, or inserted), or join a prefix of one to a suffix of the
  other; needed hyperparameters and states come along.

After each operator, dead code is removed (statements whose value never reaches ``w``, states
that never affect ``w``, unused hyperparameters other than ``lr``) and the program is put in
canonical form (``parse(to_text(p))``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

from optdisco.dsl import DSLError, Program, check, parse
from optdisco.dsl.primitives import INPUT_TYPES, PARAM, PRIMITIVES, SCALAR, Type, families
from optdisco.dsl.program import (
    W_EVAL,
    influences_w,
    Assign, BinOp, Call, Expr, Hyper, If, Name, Num, State, Stmt, Unary, names_in, sub_exprs, walk_stmts,
)

MUTATIONS = ("insert", "delete", "replace_primitive", "change_argument", "perturb_constant", "crossover")
DEFAULT_WEIGHTS = {
    "insert": 0.25, "delete": 0.12, "replace_primitive": 0.13, "change_argument": 0.2,
    "perturb_constant": 0.2, "crossover": 0.1,
}
ARITH_SWAP = ("+", "-", "*", "/")
COMPARE_SWAP = ("<", "<=", ">", ">=")
CONSTANTS = (0.5, 0.9, 0.99, 0.999, 0.1, 2.0, 1e-3, 1e-8)
UNARY_SOURCES = ("sign", "abs", "sqrt", "square", "tanh", "rsqrt", "relu", "exp", "log")
UNARY_WEIGHTS = (4, 2, 2, 3, 1, 1, 1, 0.5, 0.5)
_FAMILIES = families()


@dataclass(frozen=True)
class Child:
    """A checked program made from one or two parents, and how."""

    program: Program
    mutation: str
    detail: str


class _Skip(Exception):
    """The operator has nothing to do on this parent (e.g. no constants to perturb)."""


# -- paths into the statement tree ------------------------------------------------------------
Path = tuple[int, ...]


def _stmt_paths(body: tuple[Stmt, ...], prefix: Path = ()) -> list[Path]:
    out = []
    for i, s in enumerate(body):
        out.append(prefix + (i,))
        if isinstance(s, If):
            out += _stmt_paths(s.then, prefix + (i, 0))
            out += _stmt_paths(s.orelse, prefix + (i, 1))
    return out


def _get(body: tuple[Stmt, ...], path: Path) -> Stmt:
    s = body[path[0]]
    if len(path) == 1:
        return s
    return _get(s.then if path[1] == 0 else s.orelse, path[2:])


def _edit(body: tuple[Stmt, ...], path: Path, fn: Callable[[tuple[Stmt, ...], int], tuple[Stmt, ...]]):
    """Apply ``fn(block, index)`` to the block that holds ``path``'s last index."""
    if len(path) == 1:
        return fn(body, path[0])
    i, branch, rest = path[0], path[1], path[2:]
    s = body[i]
    if branch == 0:
        s2 = If(s.cond, _edit(s.then, rest, fn), s.orelse)
    else:
        s2 = If(s.cond, s.then, _edit(s.orelse, rest, fn))
    return body[:i] + (s2,) + body[i + 1 :]


def _replace_stmt(body, path, new: Optional[Stmt]):
    return _edit(body, path, lambda b, i: b[:i] + ((new,) if new is not None else ()) + b[i + 1 :])


def _insert_stmt(body, path, new: Stmt):
    return _edit(body, path, lambda b, i: b[:i] + (new,) + b[i:])


def _flat_after(body: tuple[Stmt, ...], path: Path) -> list[Path]:
    """Statements after ``path`` in execution order (siblings after it, then those after its
    enclosing blocks), each with their nested statements."""
    paths = _stmt_paths(body)
    idx = paths.index(path)
    return paths[idx + 1 :]


# -- expressions --------------------------------------------------------------------------------
def _nodes(e: Expr) -> list[Expr]:
    return list(sub_exprs(e))


def _replace_node(e: Expr, index: int, new: Expr) -> Expr:
    """``e`` with its ``index``-th pre-order node replaced by ``new``."""
    counter = [0]

    def go(x: Expr) -> Expr:
        k = counter[0]
        counter[0] += 1
        if k == index:
            # skip the counts of the replaced subtree
            counter[0] += len(_nodes(x)) - 1
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


def _substitute(e: Expr, name: str, new: Expr) -> Expr:
    if isinstance(e, Name):
        return new if e.id == name else e
    if isinstance(e, Call):
        return Call(e.fn, tuple(_substitute(a, name, new) for a in e.args))
    if isinstance(e, BinOp):
        return BinOp(e.op, _substitute(e.left, name, new), _substitute(e.right, name, new))
    if isinstance(e, Unary):
        return Unary(e.op, _substitute(e.operand, name, new))
    return e


def _stmt_expr(s: Stmt) -> Expr:
    return s.cond if isinstance(s, If) else s.value


def _with_expr(s: Stmt, e: Expr) -> Stmt:
    return If(e, s.then, s.orelse) if isinstance(s, If) else Assign(s.target, e)


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


def _scope(p: Program, info, path: Path) -> dict[str, Type]:
    """Numeric names readable just before the statement at ``path``, with their types."""
    env = _base_env(p, info)

    def walk(body: tuple[Stmt, ...], rest: Path) -> bool:
        stop = rest[0] if rest else len(body)
        for i, s in enumerate(body[:stop]):
            if isinstance(s, Assign):
                t = info.types.get(id(s.value))
                if t is not None and t.kind == "num" and s.target not in info.state_types and s.target != "w":
                    env[s.target] = t
        if rest and len(rest) > 1:
            s = body[rest[0]]
            walk(s.then if rest[1] == 0 else s.orelse, rest[2:])
        return True

    walk(p.body, path)
    return env


def _fresh(p: Program, prefix: str) -> str:
    used = {h.name for h in p.hypers} | set(p.state_names) | set(INPUT_TYPES) | set(PRIMITIVES)
    used |= {s.target for s in walk_stmts(p.body) if isinstance(s, Assign)}
    k = 1
    while f"{prefix}{k}" in used:
        k += 1
    return f"{prefix}{k}"


# -- random expressions ---------------------------------------------------------------------------
def _const(rng: random.Random) -> Num:
    return Num(rng.choice(CONSTANTS))


def _leaf(rng: random.Random, env: dict[str, Type], want, allow_const=True) -> Expr:
    names = sorted(n for n, t in env.items() if t.shape == want and (want != SCALAR or t.static))
    if want == SCALAR:
        if allow_const and (not names or rng.random() < 0.5):
            return _const(rng)
        return Name(rng.choice(names))
    if not names:
        raise _Skip(f"no value of shape {want}")
    # the gradient is the most useful raw material
    if "g" in names and rng.random() < 0.35:
        return Name("g")
    return Name(rng.choice(names))


def random_expr(rng: random.Random, env: dict[str, Type], want=PARAM, depth: int = 2) -> Expr:
    """A random numeric expression of shape ``want`` over the names in ``env``."""
    if depth <= 0 or rng.random() < 0.3:
        return _leaf(rng, env, want)
    if want == SCALAR:
        r = rng.random()
        if r < 0.4:
            return _leaf(rng, env, SCALAR)
        tensor = random_expr(rng, env, PARAM, depth - 1)
        return Call(rng.choice(("rms", "mean", "norm", "maxabs")), (tensor,))
    r = rng.random()
    if r < 0.35:
        fn = rng.choices(UNARY_SOURCES, UNARY_WEIGHTS)[0]
        return Call(fn, (random_expr(rng, env, want, depth - 1),))
    if r < 0.75:
        op = rng.choice(ARITH_SWAP)
        a = random_expr(rng, env, want, depth - 1)
        b = random_expr(rng, env, want if rng.random() < 0.6 else SCALAR, depth - 1)
        return BinOp(op, a, b)
    if r < 0.85:
        fn = rng.choice(("ema", "lerp"))
        return Call(fn, (_leaf(rng, env, want), random_expr(rng, env, want, depth - 1), _leaf(rng, env, SCALAR)))
    if r < 0.93:
        return Call(rng.choice(("max", "min")), (random_expr(rng, env, want, depth - 1), _leaf(rng, env, want)))
    x = random_expr(rng, env, want, depth - 1)
    return BinOp("/", x, BinOp("+", Call("rms", (x,)), Num(1e-8)))


# -- the operators ---------------------------------------------------------------------------------
def _skeleton(s: Stmt) -> set[int]:
    """Node indices of the ``w - …`` frame of a rule for ``w``, which mutations leave alone so
    that children stay updates of the parameter."""
    if isinstance(s, Assign) and s.target == "w" and isinstance(s.value, BinOp) and s.value.op == "-" \
            and s.value.left == Name("w"):
        return {0, 1}
    return set()


def _read_sites(p: Program, info) -> list[tuple[Path, int, Type]]:
    """(statement path, pre-order node index, type) of every name read in the body."""
    out = []
    for path in _stmt_paths(p.body):
        s = _get(p.body, path)
        frame = _skeleton(s)
        for k, node in enumerate(_nodes(_stmt_expr(s))):
            if isinstance(node, Name) and k not in frame:
                t = info.types.get(id(node))
                if t is not None and t.kind == "num" and t.shape in (PARAM, SCALAR) and not t.static:
                    out.append((path, k, t))
    return out


def op_insert(p: Program, rng: random.Random, info) -> tuple[Program, str]:
    sites = _read_sites(p, info)
    if not sites:
        raise _Skip("nothing is read")
    path, k, t = rng.choice(sites)
    stmt = _get(p.body, path)
    env = _scope(p, info, path)
    x = _nodes(_stmt_expr(stmt))[k]
    hypers, states = p.hypers, p.states
    kind = rng.choices(("temp", "state"), (0.55, 0.45))[0]
    if t.shape == SCALAR:
        kind = "temp"
    if kind == "temp":
        new = _fresh(p, "u")
        if rng.random() < 0.5:  # often a transform of the value being read
            value = _wrap(rng, env, x, t.shape)
        else:
            value = random_expr(rng, env, t.shape, 2)
        defn = Assign(new, value)
    else:
        new = _fresh(p, "s")
        feed = random_expr(rng, env, t.shape, 1) if rng.random() < 0.5 else Name("g")
        if rng.random() < 0.3:
            feed = Call("square", (feed,))
        form = rng.choices(("ema", "max", "momentum"), (0.7, 0.1, 0.2))[0]
        c = Num(rng.choice((0.9, 0.99, 0.999)))
        if form == "ema":
            value = Call("ema", (Name(new), feed, c))
        elif form == "max":
            value = Call("max", (Name(new), feed))
        else:
            value = BinOp("+", BinOp("*", c, Name(new)), feed)
        states = states + (State(new, Call("zeros_like", (Name("w"),))),)
        defn = Assign(new, value)
    use = rng.choices(("replace", "mul", "div", "rsqrt", "add"), (0.5, 0.12, 0.12, 0.18, 0.08))[0]
    n = Name(new)
    if use == "replace" or t.shape == SCALAR:
        repl = n
    elif use == "mul":
        repl = BinOp("*", x, n)
    elif use == "div":
        repl = BinOp("/", x, n)
    elif use == "rsqrt":
        repl = BinOp("/", x, BinOp("+", Call("sqrt", (n,)), Num(1e-8)))
    else:
        repl = BinOp("+", x, n)
    new_stmt = _with_expr(stmt, _replace_node(_stmt_expr(stmt), k, repl))
    body = _replace_stmt(p.body, path, new_stmt)
    body = _insert_stmt(body, path, defn)
    return Program(hypers, states, body, p.doc), f"{kind} {new} = …, used as {use}"


def _wrap(rng: random.Random, env, x: Expr, shape) -> Expr:
    r = rng.random()
    if r < 0.45:
        fn = rng.choices(UNARY_SOURCES, UNARY_WEIGHTS)[0]
        return Call(fn, (x,))
    if r < 0.8:
        return BinOp(rng.choice(ARITH_SWAP), x, random_expr(rng, env, shape if rng.random() < 0.5 else SCALAR, 1))
    if r < 0.9 and shape != SCALAR:
        return BinOp("/", x, BinOp("+", Call("rms", (x,)), Num(1e-8)))
    return Call(rng.choice(("clip",)), (x, Num(-1.0), Num(1.0)))


def op_delete(p: Program, rng: random.Random, info) -> tuple[Program, str]:
    paths = _stmt_paths(p.body)
    if len(paths) <= 1:
        raise _Skip("a single statement")
    path = rng.choice(paths)
    s = _get(p.body, path)
    body = _replace_stmt(p.body, path, None)
    detail = "if-block" if isinstance(s, If) else s.target
    if isinstance(s, Assign):
        before = _scope(p, info, path)
        if s.target not in before and s.target not in p.state_names and s.target != "w":
            # later readers read one of its operands instead
            t = info.types.get(id(s.value))
            operands = [x for x in _nodes(s.value) if isinstance(x, Name) and x.id in before
                        and t is not None and before[x.id].shape == t.shape]
            if not operands:
                raise _Skip("no operand to bypass to")
            repl = rng.choice(operands)
            body = _substitute_after(body, path, s.target, repl)
            detail += f" (reads become {repl.id})"
    return Program(p.hypers, p.states, body, p.doc), detail


def _substitute_after(body: tuple[Stmt, ...], path: Path, name: str, repl: Expr) -> tuple[Stmt, ...]:
    """Replace reads of ``name`` in statements from ``path`` on (the removed statement's
    successors), until a statement assigns ``name`` again."""
    paths = _stmt_paths(body)
    start = 0
    for i, q in enumerate(paths):
        if q >= path:
            start = i
            break
    else:
        return body
    for q in paths[start:]:
        s = _get(body, q)
        body = _replace_stmt(body, q, _with_expr(s, _substitute(_stmt_expr(s), name, repl)))
        if isinstance(s, Assign) and s.target == name:
            break
    return body


def op_replace_primitive(p: Program, rng: random.Random, info) -> tuple[Program, str]:
    sites = []
    for path in _stmt_paths(p.body):
        s = _get(p.body, path)
        frame = _skeleton(s)
        for k, node in enumerate(_nodes(_stmt_expr(s))):
            if k in frame:
                continue
            if isinstance(node, Call) or (isinstance(node, BinOp) and node.op in ARITH_SWAP + COMPARE_SWAP):
                sites.append((path, k, node))
    if not sites:
        raise _Skip("no function or operator")
    path, k, node = rng.choice(sites)
    if isinstance(node, Call):
        fam = _FAMILIES[PRIMITIVES[node.fn].family]
        n = len(node.args)
        options = [f for f in fam if f != node.fn and PRIMITIVES[f].min_args <= n <= PRIMITIVES[f].max_args]
        if not options:
            raise _Skip(f"{node.fn} has no sibling")
        new_fn = rng.choice(options)
        new = Call(new_fn, node.args)
        detail = f"{node.fn} → {new_fn}"
    else:
        pool = ARITH_SWAP if node.op in ARITH_SWAP else COMPARE_SWAP
        new_op = rng.choice([o for o in pool if o != node.op])
        new = BinOp(new_op, node.left, node.right)
        detail = f"{node.op} → {new_op}"
    s = _get(p.body, path)
    body = _replace_stmt(p.body, path, _with_expr(s, _replace_node(_stmt_expr(s), k, new)))
    return Program(p.hypers, p.states, body, p.doc), detail


def op_change_argument(p: Program, rng: random.Random, info) -> tuple[Program, str]:
    sites = []
    for path in _stmt_paths(p.body):
        s = _get(p.body, path)
        if isinstance(s, If):
            continue
        frame = _skeleton(s)
        for k, node in enumerate(_nodes(s.value)):
            t = info.types.get(id(node))
            if k > 0 and k not in frame and t is not None and t.kind == "num" and t.shape in (PARAM, SCALAR):
                sites.append((path, k, t))
    if not sites:
        raise _Skip("no argument")
    path, k, t = rng.choice(sites)
    s = _get(p.body, path)
    env = _scope(p, info, path)
    if t.shape == PARAM and s.target in p.state_names:
        env.setdefault(s.target, t)
    r = rng.random()
    old = _nodes(s.value)[k]
    if r < 0.45:
        new = _leaf(rng, env, t.shape)
    elif r < 0.75:
        new = _wrap(rng, env, old, t.shape)
    else:
        new = random_expr(rng, env, t.shape, 1)
    body = _replace_stmt(p.body, path, Assign(s.target, _replace_node(s.value, k, new)))
    from optdisco.dsl.printer import expr_text

    return Program(p.hypers, p.states, body, p.doc), f"{expr_text(old)} → {expr_text(new)}"


def perturb_value(v: float, rng: random.Random, scale: float = 0.35) -> float:
    """A constant moved on a log scale: ``v·10^N(0, scale)``; decay-like values in (0.5, 1)
    move as ``1 − (1 − v)·10^N(0, scale)``; small integers step by ±1 half of the time."""
    if v == int(v) and 1 <= abs(v) <= 20 and rng.random() < 0.5:
        out = v + rng.choice((-1, 1))
        return out if out != 0 else v + (1 if v > 0 else -1) * 2
    factor = 10 ** rng.gauss(0.0, scale)
    if 0.5 < v < 1:
        out = 1 - (1 - v) * factor
        out = min(out, 1 - 1e-6)
    else:
        out = v * factor
    return float(f"{out:.4g}")


def op_perturb_constant(p: Program, rng: random.Random, info) -> tuple[Program, str]:
    sites: list = [("hyper", h.name) for h in p.hypers if h.default != 0]
    for path in _stmt_paths(p.body):
        s = _get(p.body, path)
        for k, node in enumerate(_nodes(_stmt_expr(s))):
            if isinstance(node, Num) and node.value != 0:
                # the step count of orthogonalize must stay an integer in 1..20
                sites.append(("num", (path, k)))
    if not sites:
        raise _Skip("no constant")
    kind, where = rng.choice(sites)
    if kind == "hyper":
        h = next(h for h in p.hypers if h.name == where)
        v = perturb_value(h.default, rng)
        return p.with_defaults(**{where: v}), f"{where}: {h.default:g} → {v:g}"
    path, k = where
    s = _get(p.body, path)
    old = _nodes(_stmt_expr(s))[k]
    v = perturb_value(old.value, rng)
    body = _replace_stmt(p.body, path, _with_expr(s, _replace_node(_stmt_expr(s), k, Num(v))))
    return Program(p.hypers, p.states, body, p.doc), f"{old.value:g} → {v:g}"


def op_crossover(a: Program, b: Program, rng: random.Random) -> tuple[Program, str]:
    if rng.random() < 0.5 and len(a.body) > 1 and len(b.body) > 1:
        i = rng.randrange(1, len(a.body))
        j = rng.randrange(1, len(b.body))
        body = a.body[:i] + b.body[j:]
        detail = f"first {i} statements of one parent + last {len(b.body) - j} of the other"
    else:
        donor = rng.choice(b.body)
        tgt = donor.target if isinstance(donor, Assign) else None
        same = [k for k, s in enumerate(a.body) if isinstance(s, Assign) and s.target == tgt]
        if same:
            k = rng.choice(same)
            body = a.body[:k] + (donor,) + a.body[k + 1 :]
            detail = f"statement for {tgt} taken from the other parent"
        else:
            k = rng.randrange(len(a.body) + 1)
            body = a.body[:k] + (donor,) + a.body[k:]
            detail = "statement inserted from the other parent"
    names = set()
    for s in walk_stmts(body):
        names |= names_in(_stmt_expr(s))
        if isinstance(s, Assign):
            names.add(s.target)
    hypers = list(a.hypers)
    have = {h.name for h in hypers}
    for h in b.hypers:
        if h.name in names and h.name not in have:
            hypers.append(h)
            have.add(h.name)
    states = list(a.states)
    have_s = {s.name for s in states}
    for s in b.states:
        if s.name in names and s.name not in have_s and s.name not in have:
            states.append(s)
            have_s.add(s.name)
            for n in names_in(s.init):
                bh = next((h for h in b.hypers if h.name == n), None)
                if bh is not None and n not in have:
                    hypers.append(bh)
                    have.add(n)
    return Program(tuple(hypers), tuple(states), body, a.doc), detail


# -- clean-up --------------------------------------------------------------------------------------
def remove_dead_code(p: Program) -> Program:
    """Drop statements whose value never reaches ``w`` or a live state, states that never affect
    ``w`` and hyperparameters nobody reads (``lr`` always stays)."""
    live = influences_w(p)
    states = tuple(s for s in p.states if s.name in live)

    def sweep(body, need):
        out = []
        for s in reversed(body):
            if isinstance(s, Assign):
                if s.target in need:
                    out.append(s)
                    need = (need - {s.target}) | names_in(s.value)
            else:
                then, nt = sweep(s.then, set(need))
                orelse, ne = sweep(s.orelse, set(need))
                if then or orelse:
                    out.append(If(s.cond, then, orelse))
                    need = nt | ne | names_in(s.cond)
        return tuple(reversed(out)), need

    body, _ = sweep(p.body, {"w", W_EVAL} | {s.name for s in states})
    used = set()
    for s in walk_stmts(body):
        used |= names_in(_stmt_expr(s))
    for s in states:
        used |= names_in(s.init)
    hypers = tuple(h for h in p.hypers if h.name == "lr" or h.name in used)
    return Program(hypers, states, body, p.doc)


def canonical(p: Program) -> Program:
    """The program as the parser reads its printed text (fresh positions, plain numbers)."""
    return parse(p.to_text())


def statement_count(p: Program) -> int:
    return sum(1 for s in walk_stmts(p.body) if isinstance(s, Assign))


# -- entry points ----------------------------------------------------------------------------------
_OPS = {
    "insert": op_insert,
    "delete": op_delete,
    "replace_primitive": op_replace_primitive,
    "change_argument": op_change_argument,
    "perturb_constant": op_perturb_constant,
}


def mutate(
    parent: Program,
    rng: random.Random,
    *,
    other: Program | None = None,
    max_statements: int = 12,
    weights: dict[str, float] | None = None,
    op: str | None = None,
) -> tuple[Child | None, str]:
    """One child of ``parent`` (and ``other`` for crossover), or ``None`` with the reason it was
    discarded: the operator did not apply, the child fails the checker, is too long, or
    equals its parent. A returned child has passed ``check``."""
    weights = weights or DEFAULT_WEIGHTS
    if op is None:
        ops = [o for o in MUTATIONS if weights.get(o, 0) > 0 and (o != "crossover" or other is not None)]
        op = rng.choices(ops, [weights[o] for o in ops])[0]
    try:
        info = check(parent)
        if op == "crossover":
            if other is None:
                raise _Skip("no second parent")
            child, detail = op_crossover(parent, other, rng)
        else:
            child, detail = _OPS[op](parent, rng, info)
        child = remove_dead_code(child)
        child = canonical(Program(child.hypers, child.states, child.body, ""))
        check(child)
    except _Skip as e:
        return None, f"{op}: not applicable ({e})"
    except DSLError:
        return None, f"{op}: fails the checker"
    except (RecursionError, ValueError, KeyError) as e:
        return None, f"{op}: {type(e).__name__}"
    if statement_count(child) > max_statements:
        return None, f"{op}: longer than {max_statements} statements"
    if child == canonical(parent):
        return None, f"{op}: same as the parent"
    return Child(child, op, detail), ""
