"""Program → per-tensor step function source (and its state initialiser and routing).

The compiler writes Python source for one function from a *checked* program: every identifier
in that source is made by the compiler (user names become ``v_<name>``, which the checker has
limited to ``[A-Za-z_][A-Za-z0-9_]*``), every constant is printed from a float, and every
operation is a call into :mod:`optdisco.dsl.runtime` or a torch operator. No text the user
wrote is ever run as Python. The same source serves evaluation (:mod:`optdisco.dsl.step` loads it) and export
(it is written into the exported file), so a number measured in a search is a number about the
code a user exports.

A step function takes the parameter, its gradient, the state, the hyperparameters and the step
number, and returns the new parameter and state. Every tensor may carry a leading member
dimension (``batched=True``) and any hyperparameter may then be a per-member tensor of shape
``[M]``: that is how one call trains an LR grid × seeds at once.
"""

from __future__ import annotations

import math

from .analysis import Branch, init_deps, routing, used
from .checker import CheckInfo, check
from .primitives import BINARY_OPERATORS, GLOBAL, MODE, RANDOM, SHAPE_INPUTS
from .program import PROBE, W_EVAL, Assign, BinOp, Call, Expr, Name, Num, Program, Stmt, Unary, walk_exprs

INPUTS = ("w", "g", "t", "hess_diag", "rows", "cols", "ndim", "numel",
          "is_matrix", "is_vector", "is_embedding", "is_head", "is_hidden")


def _var(name: str) -> str:
    return "v_" + name


def _num(v: float) -> str:
    if math.isnan(v) or math.isinf(v):  # pragma: no cover - the checker rejects these
        raise ValueError("non-finite constant")
    return repr(float(v))


class _Gen:
    def __init__(self, program: Program, info: CheckInfo):
        self.p = program
        self.info = info
        self.lines: list[str] = []
        # each noise call site draws its own numbers: sites are numbered in program order
        calls = (e for e in walk_exprs(program) if isinstance(e, Call) and e.fn in RANDOM)
        self.sites = {id(e): i for i, e in enumerate(calls)}
        self.n_clips = 0

    def expr(self, e: Expr) -> str:
        t = self.info.types.get(id(e))
        if isinstance(e, Num):
            return _num(e.value)
        if isinstance(e, Name):
            return _var(e.id)
        if isinstance(e, Unary):
            inner = self.expr(e.operand)
            return f"R.not_({inner})" if e.op == "not" else f"(-{inner})"
        if isinstance(e, BinOp):
            a, b = self.expr(e.left), self.expr(e.right)
            op = BINARY_OPERATORS[e.op]
            if (t is not None and t.static) or not op.infix:  # static values: the runtime's float arithmetic
                return f"R.{op.runtime}({a}, {b})"
            return f"({a} {e.op} {b})"
        if isinstance(e, Call):
            args = ", ".join(self.expr(a) for a in e.args)
            if e.fn in RANDOM:
                return f"R.{e.fn}({args}, seed, v_t, {self.sites[id(e)]})"
            if e.fn == "clip_by_global_norm":  # x is read twice: its share of the norm, then scaled
                x = f"_clip{self.n_clips}"
                self.n_clips += 1
                share = f"(yield ('norm', R.global_part('norm', {x})))"
                return (f"R.clip_by_global_norm(({x} := {self.expr(e.args[0])}), {self.expr(e.args[1])}, "
                        f"R.global_value({share}, v_w))")
            if e.fn in GLOBAL:  # a model-wide value: this parameter's share goes out, the total comes back
                op = e.fn[len("global_"):]
                return f"R.global_value((yield ({op!r}, R.global_part({op!r}, {args}))), v_w)"
            if e.fn in MODE:  # the parameter's real shape rides in v_ndim (runtime.Ndim)
                return f"R.{e.fn}({args}, v_ndim)"
            return f"R.{e.fn}({args})"
        raise TypeError(f"cannot compile {e!r}")  # pragma: no cover

    def stmts(self, body: tuple[Stmt, ...], indent: str) -> None:
        if not body:
            self.lines.append(indent + "pass")
        for s in body:
            if isinstance(s, Assign) and s.target == PROBE:  # the probe phase ends here
                self.lines.append(f"{indent}if phase == 'probe':")
                self.lines.append(f"{indent}    return {self.expr(s.value)}, None")
            elif isinstance(s, Assign) and s.target == W_EVAL:  # computed in the eval phase only
                self.lines.append(indent + "pass")
            elif isinstance(s, Assign):
                self.lines.append(f"{indent}{_var(s.target)} = {self.expr(s.value)}")
            else:
                self.lines.append(f"{indent}if R.truth({self.expr(s.cond)}):")
                self.stmts(s.then, indent + "    ")
                if s.orelse:
                    self.lines.append(f"{indent}else:")
                    self.stmts(s.orelse, indent + "    ")

    def hyper_lines(self) -> list[str]:
        """The function's first lines: each hyperparameter read from ``hyper``."""
        return [f"    {_var(h.name)} = hyper[{h.name!r}]" for h in self.p.hypers]

    def init_code(self, s) -> str:
        """A per-parameter state's first value, in the member layout."""
        return f"R.as_state({self.expr(s.init)}, v_w)"

    @staticmethod
    def store_line(s, dest: str) -> str:
        """The statement that stores state ``s`` (its variable) into the dict ``dest``."""
        if s.storage == "float":
            return f"{dest}[{s.name!r}] = {_var(s.name)}"
        return f"R.q_store({dest}, {s.name!r}, {_var(s.name)}, {s.storage!r})"

    def source(self, fn_name: str = "step") -> str:
        p = self.p
        wide = p.model_wide
        phases = ["v_g_probe=None", "phase=None"] if p.uses_probe or p.has_eval_weights else []
        args = ["state", "hyper", "first"] + [_var(n) for n in INPUTS] + ["need=None", "seed=None"] + phases
        L = self.lines
        L.append(f"def {fn_name}({', '.join(args + (['gstate=None'] if wide else []))}):")
        if wide:
            # a generator (see R.lockstep): it yields its share of each model-wide reduction and
            # receives the total; ``gstate`` holds the global states (None at the first step)
            L.append("    yield from ()")
        L += self.hyper_lines()
        for s in p.global_states:
            L.append(f"    {_var(s.name)} = R.as_global({self.expr(s.init)}, v_w) if gstate is None else gstate[{s.name!r}]")
        # ``need`` names the states this parameter's routing can reach; the others are never
        # allocated (a Muon program keeps no AdamW moments for its hidden matrices)
        for s in p.param_states:
            if s.storage == "float":
                load = f"state[{s.name!r}]"
            else:
                load = f"R.q_load(state, {s.name!r}, {s.storage!r})"
            L.append(f"    if need is None or {s.name!r} in need:")
            L.append(f"        {_var(s.name)} = {self.init_code(s)} if first else {load}")
            L.append("    else:")
            L.append(f"        {_var(s.name)} = None")
        if p.has_eval_weights:  # the weights to evaluate: from w and the states as a step left them
            ev = next(s for s in p.body if isinstance(s, Assign) and s.target == W_EVAL)
            L.append("    if phase == 'eval':")
            L.append(f"        return {self.expr(ev.value)}, None")
        self.stmts(p.body, "    ")
        L.append("    new_state = {}")
        for s in p.param_states:
            L.append(f"    if {_var(s.name)} is not None:")
            L.append("        " + self.store_line(s, "new_state"))
        if wide:
            pairs = ", ".join(f"{s.name!r}: {_var(s.name)}" for s in p.global_states)
            L.append(f"    return v_w, new_state, {{{pairs}}}")
        else:
            L.append("    return v_w, new_state")
        return "\n".join(L) + "\n"


def generate_source(program: Program, info: CheckInfo | None = None, fn_name: str = "step") -> str:
    """The Python source of a program's step function over the member layout ``[M, R, C]``.
    It expects ``R`` to be :mod:`optdisco.dsl.runtime` (or the copy of it in an exported file)."""
    info = info or check(program)
    return _Gen(program, info).source(fn_name)


def generate_init_source(program: Program, info: CheckInfo | None = None, fn_name: str = "init_state") -> str:
    """Source of ``init_state(hyper, v_w, v_g, v_t, v_hess_diag, v_rows, ...)``: the first
    values of a program's states for one parameter in the member layout ``[1, R, C]``, as the
    per-tensor step function computes them at its first step."""
    info = info or check(program)
    gen = _Gen(program, info)
    lines = [f"def {fn_name}({', '.join(['hyper'] + [_var(n) for n in INPUTS] + ['need'])}):"]
    lines += gen.hyper_lines()
    lines.append("    state = {}")
    for s in program.param_states:  # global states live in the parameter groups
        lines.append(f"    if {s.name!r} in need:")
        lines.append(f"        {_var(s.name)} = {gen.init_code(s)}")
        lines.append("        " + gen.store_line(s, "state"))
    lines.append("    return state")
    return "\n".join(lines) + "\n"


def generate_needed_source(program: Program, info: CheckInfo | None = None, fn_name: str = "needed_states") -> str:
    """Source of ``needed_states(v_rows, v_cols, ..., v_is_hidden) -> set``: what
    :func:`optdisco.dsl.analysis.reachable_states` answers for a parameter's shape and role,
    written out for the exported optimizer (which imports nothing from optdisco): the routing's
    if-blocks on the shape and role alone are decided, others (which may change from step to
    step) count both branches. Other states are never allocated for that parameter."""
    info = info or check(program)
    gen = _Gen(program, info)
    lines = [f"def {fn_name}({', '.join(_var(n) for n in SHAPE_INPUTS)}):", "    need = set()"]

    def emit(nodes, indent):
        if not nodes:
            lines.append(indent + "pass")
        for node in nodes:
            if isinstance(node, Branch):
                lines.append(f"{indent}if R.truth({gen.expr(node.cond)}):")
                emit(node.then, indent + "    ")
                lines.append(f"{indent}else:")
                emit(node.orelse, indent + "    ")
                continue
            names = sorted(used(program, *node))
            lines.append(f"{indent}need.update({names!r})" if names else indent + "pass")

    emit(routing(program.body, frozenset(SHAPE_INPUTS)), "    ")
    lines += [f"    deps = {init_deps(program)!r}", "    todo = list(need)", "    while todo:",
              "        for d in deps[todo.pop()]:", "            if d not in need:",
              "                need.add(d)", "                todo.append(d)", "    return need"]
    return "\n".join(lines) + "\n"
