"""Static checks of a Program: names, arity, types and shapes, writes to inputs, dead state.

``check(program)`` returns a ``CheckInfo`` (the type of every expression node and every state)
that the compiler relies on, or raises ``DSLError`` at the offending line and column.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .errors import DSLError
from .parser import KEYWORDS, MAX_CONSTANT
from .primitives import GLOBAL as GLOBAL_FNS
from .primitives import MAX_MODES, MODE, mode_rule
from .primitives import INPUT_TYPES, operators, PARAM, PRIMITIVES, RANDOM, SCALAR, SHAPE_INPUTS, ShapeError, Type, broadcast, matmul_rule
from .program import (G_PROBE, GLOBAL, PROBE, W_EVAL, Assign, BinOp, Call, Expr, If, Name, Num, Program, Stmt, Unary,
                      influences_w, names_in, sub_exprs, walk_stmts)

ARITH = operators("arith")
COMPARE = operators("compare")
LOGIC = operators("logic")
MAX_HYPERS = 64
MAX_STATES = 32


@dataclass
class CheckInfo:
    types: dict[int, Type] = field(default_factory=dict)  # id(expr node) -> Type
    state_types: dict[str, Type] = field(default_factory=dict)
    cond_hypers: set[str] = field(default_factory=set)  # hyperparameters read by if-conditions
    global_states: set[str] = field(default_factory=set)  # model-wide scalar states


def _pos(node) -> tuple[int, int]:
    return getattr(node, "line", 0), getattr(node, "col", 0)


def _err(msg: str, node) -> DSLError:
    return DSLError(msg, *_pos(node))


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Checker:
    def __init__(self, program: Program):
        self.p = program
        self.info = CheckInfo()
        self.hypers = {h.name for h in program.hypers}
        # names that may hold a different value for each parameter of the group (as opposed to
        # model-wide values: constants, hyperparameters, t, global state, global reductions)
        self.per_param: set[str] = {"w", "g", "hess_diag", G_PROBE, *SHAPE_INPUTS}
        self.param_branch = 0  # depth of if-blocks whose condition depends on the parameter

    def per_param_name(self, e: Expr) -> str | None:
        """A name through which ``e`` depends on the parameter, or None if ``e`` is model-wide."""
        if isinstance(e, Name):
            return e.id if e.id in self.per_param else None
        if isinstance(e, Call) and e.fn in GLOBAL_FNS and e.fn != "clip_by_global_norm":
            return None
        for x in (e.args if isinstance(e, Call) else (e.left, e.right) if isinstance(e, BinOp)
                  else (e.operand,) if isinstance(e, Unary) else ()):
            n = self.per_param_name(x)
            if n is not None:
                return n
        return None

    # -- expressions -----------------------------------------------------------------------
    def expr(self, e: Expr, env: dict[str, Type]) -> Type:
        t = self._expr(e, env)
        self.info.types[id(e)] = t
        return t

    def _expr(self, e: Expr, env: dict[str, Type]) -> Type:
        if isinstance(e, Num):
            if not (abs(e.value) <= MAX_CONSTANT):
                raise _err(f"constant {e.value!r} is out of range (|x| <= {MAX_CONSTANT:g})", e)
            return Type("num", SCALAR, True)
        if isinstance(e, Name):
            if e.id in env:
                return env[e.id]
            if e.id in PRIMITIVES:
                raise _err(f"{e.id!r} is a function; call it as {e.id}(...)", e)
            if e.id in ("zeros", "ones"):
                raise _err(f"{e.id!r} is only a state initialiser; in an expression write {e.id}_like(x)", e)
            if e.id == G_PROBE:
                raise _err("g_probe is the gradient at the probe point: it can be read only after a statement "
                           "probe = <point> (and not in state initialisers)", e)
            if e.id in (PROBE, W_EVAL):
                raise _err(f"{e.id!r} can only be assigned" + (", and its gradient read as g_probe" if e.id == PROBE else ""), e)
            raise _err(f"name {e.id!r} is not defined{_suggest(e.id, env)}", e)
        if isinstance(e, Unary):
            t = self.expr(e.operand, env)
            if e.op == "not":
                if t.kind != "bool":
                    raise _err("'not' needs a condition, got " + t.show(), e)
                return t
            if t.kind != "num":
                raise _err("unary '-' needs a number or tensor, got a condition", e)
            return t
        if isinstance(e, BinOp):
            a = self.expr(e.left, env)
            b = self.expr(e.right, env)
            static = a.static and b.static
            if e.op in LOGIC:
                for side, t in (("left", a), ("right", b)):
                    if t.kind != "bool":
                        node = e.left if side == "left" else e.right
                        raise _err(f"'{e.op}' needs conditions on both sides; its {side} side is {t.show()}", node)
                return Type("bool", self._broadcast(a.shape, b.shape, e), static)
            for side, t in (("left", a), ("right", b)):
                if t.kind != "num":
                    node = e.left if side == "left" else e.right
                    raise _err(f"'{e.op}' needs numbers or tensors; its {side} side is a condition", node)
            if e.op == "@":
                try:
                    return matmul_rule([a, b])
                except ShapeError as se:
                    raise _err(str(se).replace("matmul", "'@'"), e) from None
            shape = self._broadcast(a.shape, b.shape, e)
            if e.op in COMPARE:
                return Type("bool", shape, static)
            return Type("num", shape, static)
        if isinstance(e, Call):
            prim = PRIMITIVES.get(e.fn)
            if prim is None:
                if e.fn in env or e.fn in INPUT_TYPES:
                    raise _err(f"{e.fn!r} is a value, not a function", e)
                raise _err(f"unknown function {e.fn!r}{_suggest(e.fn, PRIMITIVES)}", e)
            n = len(e.args)
            if not prim.min_args <= n <= prim.max_args:
                want = str(prim.min_args) if prim.min_args == prim.max_args else f"{prim.min_args} or {prim.max_args}"
                raise _err(f"{e.fn} takes {want} argument{'s' if want != '1' else ''}, got {n}", e)
            if e.fn in GLOBAL_FNS and self.param_branch:
                raise _err(f"{e.fn} is computed over every parameter of the group, so it cannot sit inside an "
                           "if-block whose condition depends on the parameter's shape or role; compute it before the if",
                           e)
            ts = [self.expr(a, env) for a in e.args]
            if e.fn == "solve_triangular" and n == 3:
                k = e.args[2]
                if not (isinstance(k, Num) and k.value in (0, 1)):
                    raise _err("the third argument of solve_triangular (upper) must be the constant 0 or 1", k)
            if e.fn == "orthogonalize" and n == 2:
                k = e.args[1]
                if not (isinstance(k, Num) and k.value == int(k.value) and 1 <= k.value <= 20):
                    raise _err("the step count of orthogonalize must be an integer constant from 1 to 20", k)
            if e.fn in MODE:
                return self._mode_call(e, ts)
            try:
                return prim.rule(ts)
            except ShapeError as se:
                node = e.args[se.arg] if se.arg is not None and se.arg < n else e
                raise _err(str(se), node) from None
        raise _err(f"not an expression: {type(e).__name__}", e)  # pragma: no cover

    def _mode_call(self, e: Call, ts: list[Type]) -> Type:
        """A per-mode primitive: its last argument, the mode, must be an integer constant."""
        k = e.args[-1]
        if not (isinstance(k, Num) and k.value == int(k.value) and 0 <= k.value < MAX_MODES):
            raise _err(f"the mode of {e.fn} (its last argument) must be an integer constant from 0 to "
                       f"{MAX_MODES - 1}", k)
        try:
            return mode_rule(e.fn, ts, int(k.value))
        except ShapeError as se:
            raise _err(str(se), e.args[se.arg] if se.arg is not None else e) from None

    def _broadcast(self, a, b, node):
        try:
            return broadcast(a, b)
        except ShapeError as se:
            raise _err(str(se), node) from None

    # -- statements ------------------------------------------------------------------------
    def block(self, body: tuple[Stmt, ...], env: dict[str, Type]) -> dict[str, Type]:
        for s in body:
            if isinstance(s, If):
                c = self.expr(s.cond, env)
                if c.kind != "bool":
                    raise _err(f"an if-condition must be a comparison, got {c.show()}", s.cond)
                if not c.static:
                    raise _err(
                        "an if-condition may depend only on t, hyperparameters and the parameter's shape or role; "
                        "use where(cond, a, b) for choices that depend on values",
                        s.cond,
                    )
                self.info.cond_hypers |= names_in(s.cond) & self.hypers
                by_param = self.per_param_name(s.cond) is not None
                self.param_branch += by_param
                before = set(self.per_param)
                env_then = self.block(s.then, dict(env))
                after_then, self.per_param = self.per_param, set(before)
                env_else = self.block(s.orelse, dict(env))
                self.per_param |= after_then
                self.param_branch -= by_param
                merged = {}
                for k in env_then.keys() & env_else.keys():
                    a, b = env_then[k], env_else[k]
                    if (a.kind, a.shape) == (b.kind, b.shape):
                        merged[k] = Type(a.kind, a.shape, a.static and b.static)
                        continue
                    if env_then[k] != env_else[k]:
                        if k in env and k != "w":
                            raise _err(f"{k!r} gets {env_then[k].show()} on one branch and {env_else[k].show()} on the other", s)
                        continue  # differs: undefined after the if unless it existed before
                    merged[k] = env_then[k]
                for k in env:
                    merged.setdefault(k, env[k])
                env = merged
                continue
            self.assign(s, env)
        return env

    def assign(self, s: Assign, env: dict[str, Type]) -> None:
        tgt = s.target
        if (tgt in INPUT_TYPES and tgt != "w") or tgt == G_PROBE:
            raise _err(f"cannot assign to the input {tgt!r}", s)
        if tgt in self.hypers:
            raise _err(f"cannot assign to the hyperparameter {tgt!r}", s)
        if tgt in PRIMITIVES or tgt in KEYWORDS or tgt in ("zeros", "ones"):
            raise _err(f"{tgt!r} is a reserved name; choose another", s)
        t = self.expr(s.value, env)
        if t.kind != "num":
            raise _err(f"a condition cannot be stored in {tgt!r}; use where(cond, a, b)", s)
        by = self.per_param_name(s.value)
        if tgt in self.info.global_states:
            if self.param_branch:
                raise _err(f"global state {tgt!r} is one value per model; it cannot be assigned inside an if-block "
                           "whose condition depends on the parameter's shape or role", s)
            if by is not None:
                raise _err(f"global state {tgt!r} is one value per model, but this value depends on the parameter "
                           f"(through {by!r}); reduce it over the model first, e.g. with global_sum or global_norm", s)
        if by is not None or self.param_branch:
            self.per_param.add(tgt)
        else:
            self.per_param.discard(tgt)
        if tgt in ("w", PROBE, W_EVAL) and t.shape != PARAM:
            must = "keep" if tgt == "w" else "have"
            raise _err(f"{tgt} must {must} the parameter's shape r×c, but this assigns {t.show()}", s)
        if tgt in (PROBE, W_EVAL):  # outputs of the step, never read back
            if tgt == PROBE:
                env[G_PROBE] = Type("num", PARAM, False)
            return
        if tgt in self.info.state_types:
            want = self.info.state_types[tgt].shape
            if t.shape != want:
                raise _err(f"state {tgt!r} is {want[0]}×{want[1]} but this assigns {t.show()}", s)
            t = self.info.state_types[tgt]
        if tgt == "w":
            t = INPUT_TYPES["w"]
        env[tgt] = Type("num", t.shape, t.static and tgt not in self.info.state_types)

    # -- whole program ---------------------------------------------------------------------
    def run(self) -> CheckInfo:
        p = self.p
        if len(p.hypers) > MAX_HYPERS:
            raise _err(f"too many hyperparameters (the limit is {MAX_HYPERS})", p.hypers[MAX_HYPERS])
        if len(p.states) > MAX_STATES:
            raise _err(f"too many state variables (the limit is {MAX_STATES})", p.states[MAX_STATES])
        env: dict[str, Type] = dict(INPUT_TYPES)
        seen: dict[str, object] = {}
        for h in p.hypers:
            self._declare(h.name, h, seen, "hyperparameter")
            if not (abs(h.default) <= MAX_CONSTANT):
                raise _err(f"default of {h.name!r} is out of range", h)
            env[h.name] = Type("num", SCALAR, True)
        if "lr" not in self.hypers:
            node = p.hypers[0] if p.hypers else (p.body[0] if p.body else None)
            raise _err("the program must declare the learning rate: hyper lr = <default>", node)
        for s in p.states:
            self._declare(s.name, s, seen, "state")
            for x in sub_exprs(s.init):
                if isinstance(x, Call) and x.fn in RANDOM:
                    raise _err(f"{x.fn} cannot start a state; draw the noise in a statement", x)
                if isinstance(x, Call) and x.fn in GLOBAL_FNS:
                    raise _err(f"{x.fn} cannot start a state; compute it in a statement", x)
            t = self.expr(s.init, env)
            if t.kind != "num":
                raise _err(f"state {s.name!r} must start as a number or tensor, not a condition", s)
            if s.storage == GLOBAL:
                by = self.per_param_name(s.init)
                if not (t.static and t.is_scalar) or by is not None:
                    raise _err(f"global state {s.name!r} is one scalar per model: start it from constants and "
                               "hyperparameters" + (f" (not {by!r})" if by else ""), s)
                st = Type("num", SCALAR, False)
                self.info.state_types[s.name] = st
                self.info.global_states.add(s.name)
                env[s.name] = st
                continue
            self.per_param.add(s.name)
            read = names_in(s.init) & self.info.global_states
            if read:
                raise _err(f"state {s.name!r} cannot start from the global state {sorted(read)[0]!r}; "
                           "combine them in a statement", s)
            if s.storage != "float" and t.shape != PARAM:
                raise _err(f"quantized state {s.name!r} must have the parameter's shape", s)
            st = Type("num", t.shape, False)
            self.info.state_types[s.name] = st
            env[s.name] = st
        if not p.body:
            raise DSLError("the program has no statements; it needs a rule for w (w = ...)", 1, 1)
        self._outputs()
        self.block(p.body, env)
        if not any(isinstance(s, Assign) and s.target == "w" for s in walk_stmts(p.body)):
            last = p.body[-1]
            raise _err("the program never assigns w: it needs a rule such as w = w - lr * update", last)
        self._dead_state()
        return self.info

    def _outputs(self) -> None:
        """Where ``probe`` and ``w_eval`` may be assigned, and what ``w_eval`` may read."""
        p = self.p
        for target in (PROBE, W_EVAL):
            found = [s for s in walk_stmts(p.body) if isinstance(s, Assign) and s.target == target]
            for s in found:
                if not any(s is top for top in p.body):
                    raise _err(f"{target} must be assigned at the top level of the program, not inside an if block", s)
            if len(found) > 1:
                raise _err(f"{target} is assigned twice; a program has at most one", found[1])
        if p.uses_probe and not any(G_PROBE in names_in(x) for x in _stmt_exprs(p)):
            probe = next(s for s in p.body if isinstance(s, Assign) and s.target == PROBE)
            raise _err("probe is assigned but g_probe, the gradient there, is never read", probe)
        if p.has_eval_weights:
            last = p.body[-1]
            ev = next(s for s in p.body if isinstance(s, Assign) and s.target == W_EVAL)
            if ev is not last:
                raise _err("w_eval must be the program's last statement: the evaluation weights after the step", ev)
            allowed = {"w", "t"} | self.hypers | set(p.state_names) | {n for n, t in INPUT_TYPES.items() if t.static}
            for x in sub_exprs(ev.value):
                if isinstance(x, Call) and x.fn in GLOBAL_FNS:
                    raise _err(f"w_eval may not use a model-wide reduction ({x.fn}): it is computed for each parameter "
                               "apart when an optimizer switches to evaluation; keep the value in a global state", x)
                if isinstance(x, Name) and x.id not in allowed:
                    raise _err(f"w_eval may read only w, the states, the hyperparameters, t and the parameter's shape "
                               f"(it is computed again from them when an optimizer switches to evaluation), not {x.id!r}", x)

    def _declare(self, name: str, node, seen: dict, what: str) -> None:
        if name in (PROBE, G_PROBE, W_EVAL):
            raise _err(f"{name!r} is a reserved name; choose another", node)
        if name in INPUT_TYPES:
            raise _err(f"{name!r} is an input and cannot be declared as a {what}", node)
        if name in PRIMITIVES or name in ("zeros", "ones"):
            raise _err(f"{name!r} is a reserved name; choose another", node)
        if name in seen:
            raise _err(f"{name!r} is declared twice", node)
        seen[name] = node

    def _dead_state(self) -> None:
        """A state that can never influence w (through any statement, in any later step) is
        an error: it costs memory and does nothing."""
        live = influences_w(self.p)
        for s in self.p.states:
            if s.name not in live:
                used = any(s.name in names_in(x.value) for x in walk_stmts(self.p.body) if isinstance(x, Assign))
                why = "is never used" if not used else "never affects w"
                raise _err(f"state {s.name!r} {why}; remove it", s)


def _stmt_exprs(p: Program):
    for st in walk_stmts(p.body):
        yield st.cond if isinstance(st, If) else st.value


def check(program: Program) -> CheckInfo:
    """Check a program; raise DSLError at the first problem, else return its type information."""
    return _Checker(program).run()
