"""Program → torch step function.

The compiler writes Python source for one function from a *checked* program: every identifier
in that source is made by the compiler (user names become ``v_<name>``, which the checker has
limited to ``[A-Za-z_][A-Za-z0-9_]*``), every constant is printed from a float, and every
operation is a call into :mod:`optdisco.dsl.runtime` or a torch operator. No text the user
wrote is ever run as Python. The same source serves evaluation (it is loaded here) and export
(it is written into the exported file), so a number measured in a search is a number about the
code a user exports.

A step function takes the parameter, its gradient, the state, the hyperparameters and the step
number, and returns the new parameter and state. Every tensor may carry a leading member
dimension (``batched=True``) and any hyperparameter may then be a per-member tensor of shape
``[M]``: that is how one call trains an LR grid × seeds at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import itertools
import math
from typing import Mapping

import torch

from . import runtime
from .checker import CheckInfo, check
from .primitives import ELEMENTWISE, GLOBAL, MODE, PARAM, RANDOM, ROLES, SHAPE_INPUTS
from .program import PROBE, W_EVAL, Assign, BinOp, Call, Expr, If, Name, Num, Program, Stmt, Unary, names_in, walk_exprs

INPUTS = ("w", "g", "t", "hess_diag", "rows", "cols", "ndim", "numel",
          "is_matrix", "is_vector", "is_embedding", "is_head", "is_hidden")
_STATIC_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "%": "mod",
               "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_TENSOR_OPS = {"+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!="}


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
            if e.op == "and":
                return f"R.and_({a}, {b})"
            if e.op == "or":
                return f"R.or_({a}, {b})"
            if e.op == "@":
                return f"R.matmul({a}, {b})"
            if e.op == "%":
                return f"R.mod({a}, {b})"
            static = t is not None and t.static
            if static or e.op not in _TENSOR_OPS:
                return f"R.{_STATIC_OPS[e.op]}({a}, {b})"
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
        for h in p.hypers:
            L.append(f"    {_var(h.name)} = hyper[{h.name!r}]")
        for s in p.global_states:
            L.append(f"    {_var(s.name)} = R.as_global({self.expr(s.init)}, v_w) if gstate is None else gstate[{s.name!r}]")
        # ``need`` names the states this parameter's routing can reach; the others are never
        # allocated (a Muon program keeps no AdamW moments for its hidden matrices)
        for s in p.param_states:
            if s.storage == "float":
                load = f"state[{s.name!r}]"
            else:
                load = f"R.q_load(state, {s.name!r}, {s.storage!r})"
            init = f"R.as_state({self.expr(s.init)}, v_w)"
            L.append(f"    if need is None or {s.name!r} in need:")
            L.append(f"        {_var(s.name)} = {init} if first else {load}")
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
            if s.storage == "float":
                L.append(f"        new_state[{s.name!r}] = {_var(s.name)}")
            else:
                L.append(f"        R.q_store(new_state, {s.name!r}, {_var(s.name)}, {s.storage!r})")
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


class _Unknown(Exception):
    pass


def _static_value(e: Expr, env: dict):
    """The value of an expression from static inputs alone, or _Unknown (e.g. it reads t)."""
    if isinstance(e, Num):
        return e.value
    if isinstance(e, Name):
        if e.id in env:
            return env[e.id]
        raise _Unknown
    if isinstance(e, Unary):
        v = _static_value(e.operand, env)
        return runtime.not_(v) if e.op == "not" else -v
    if isinstance(e, BinOp):
        a, b = _static_value(e.left, env), _static_value(e.right, env)
        if e.op == "and":
            return runtime.and_(a, b)
        if e.op == "or":
            return runtime.or_(a, b)
        if e.op in _STATIC_OPS:
            return getattr(runtime, _STATIC_OPS[e.op])(a, b)
        raise _Unknown
    if isinstance(e, Call) and e.fn in ("max", "min", "sqrt", "abs", "floor", "log", "exp", "sign", "clip"):
        return getattr(runtime, e.fn)(*(_static_value(a, env) for a in e.args))
    raise _Unknown


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
                taken = bool(_static_value(s.cond, env))
            except (_Unknown, TypeError, ValueError, ZeroDivisionError, OverflowError):
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


class _SourceLoader(importlib.abc.SourceLoader):
    """Loads a module from source text that this compiler generated."""

    def __init__(self, source: str):
        self._source = source

    def get_filename(self, fullname: str) -> str:
        return f"<optdisco-step {fullname}>"

    def get_data(self, path: str) -> bytes:
        return self._source.encode()


_counter = itertools.count()


def _load(source: str):
    name = f"optdisco_step_{next(_counter)}"
    module_source = "from optdisco.dsl import runtime as R\n\n" + source
    loader = _SourceLoader(module_source)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.step


def view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows and columns of a parameter's 2-D view: (d0, d1·d2·…); a vector is n × 1."""
    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0])
    cols = math.prod(int(d) for d in shape[1:])
    return rows, cols


def default_role(shape: tuple[int, ...]) -> str:
    return "hidden" if len(shape) >= 2 else "vector"


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


class StepFunction:
    """A compiled program: call it as ``w, state = f(w, g, state, hyper, t)``.

    - ``state`` is ``None`` (or empty) at the first step; state initialisers then run.
    - ``hyper`` maps names to floats (or, with ``batched=True``, tensors of shape ``[M]``);
      missing names take the program's defaults.
    - ``batched=True`` means every tensor has a leading member dimension ``M``.
    - ``role`` is the parameter's role (``hidden``, ``embedding``, ``head``, ``vector``); by
      default matrices are ``hidden`` and the rest ``vector``.
    - ``hess_diag`` must be given to programs that read it.
    - ``g_probe`` must be given to programs that read it: the gradient of the step's batch at
      ``probe(w, g, state, hyper, t, ...)``, or a function from that point to the gradient there.
      ``eval_weights(w, state, hyper, t)`` gives the weights to evaluate a model at (``w_eval``).
    - ``seed`` (an int, or with ``batched=True`` one int per member) seeds the noise of programs
      that draw it (``randn_like``, ``rademacher_like``); the noise is a function of (seed, t, call
      site, element). Give each parameter its own seed: ``runtime.param_seed(seed, index)``.

    State tensors with the parameter's shape are stored in the parameter's own shape (as
    torch.optim does); others in their 2-D form, with the member dimension when batched.
    ``elementwise`` tells whether parameters may be updated concatenated (``acts_elementwise``).

    A program with model-wide values (``model_wide``: ``global_norm``, ``global d = …``) reduces
    over all the parameters of a group: step them together with ``step_group``. Called on one
    tensor it treats that tensor as the whole model and keeps its global states in the state dict.
    """

    def __init__(self, program: Program):
        self.program = program
        self.info = check(program)
        self.source = generate_source(program, self.info)
        self._fn = _load(self.source)
        self.defaults = program.hyper_defaults
        self.uses_hess_diag = program.uses_hess_diag
        self.uses_random = program.uses_random
        self.uses_probe = program.uses_probe
        self.uses_modes = program.uses_modes
        self.has_eval_weights = program.has_eval_weights
        self.elementwise = acts_elementwise(program)
        self.param_states = {n for n, t in self.info.state_types.items() if t.shape == PARAM}
        self.model_wide = program.model_wide
        self.global_names = tuple(s.name for s in program.global_states)
        self._need: dict = {}

    def __repr__(self) -> str:
        return f"StepFunction({len(self.program.body)} statements, states={list(self.info.state_types)})"

    def hyper_values(self, hyper: Mapping | None, members: int | None, like: torch.Tensor) -> dict:
        out = dict(self.defaults)
        if hyper:
            for k, v in hyper.items():
                if k not in out:
                    raise KeyError(f"unknown hyperparameter {k!r}; the program has {sorted(out)}")
                out[k] = v
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device=like.device, dtype=like.dtype)
                if v.dim() == 0:
                    out[k] = v
                elif members is not None and v.numel() == members:
                    out[k] = v.reshape(members, 1, 1)
                else:
                    raise ValueError(f"hyperparameter {k!r} has shape {tuple(v.shape)}; expected [M] = [{members}]")
            else:
                out[k] = float(v)
        return out

    def probe(self, w, g, state=None, hyper=None, t=1, *, hess_diag=None, batched=False, role=None, seed=None):
        """The point at which a program that reads ``g_probe`` takes the gradient in step ``t``
        (from the same inputs as the step; the state is not changed)."""
        if not self.uses_probe:
            raise ValueError("this program has no probe point (no statement probe = ...)")
        return self(w, g, state, hyper, t, hess_diag=hess_diag, batched=batched, role=role, seed=seed, _phase="probe")

    def eval_weights(self, w, state, hyper=None, t=1, *, batched=False, role=None):
        """The weights a model is evaluated at, from the weights and state a step returned: the
        program's ``w_eval``; ``w`` itself for programs without one, or before the first step."""
        if not self.has_eval_weights or state is None or (not state and self.info.state_types):
            return w
        return self(w, w, state, hyper, t, batched=batched, role=role, _phase="eval")

    def __call__(self, w, g, state=None, hyper=None, t=1, *, hess_diag=None, batched=False, role=None, seed=None,
                 g_probe=None, _phase=None):
        if not self.model_wide:
            if self.uses_probe and _phase is None:
                if g_probe is None:
                    raise ValueError("this program reads g_probe: pass g_probe=<the gradient at fn.probe(...)>, "
                                     "or a function from that point to the gradient there")
                if callable(g_probe):
                    g_probe = g_probe(self.probe(w, g, state, hyper, t, hess_diag=hess_diag, batched=batched,
                                                 role=role, seed=seed))
                if g_probe.shape != w.shape:
                    raise ValueError(f"g_probe shape {tuple(g_probe.shape)} differs from parameter shape "
                                     f"{tuple(w.shape)}")
            args, kw = self._prepare(w, g, state, hyper, t, hess_diag, batched, role, seed, _phase)
            if self.uses_probe or self.has_eval_weights:
                kw.update(v_g_probe=None if g_probe is None else g_probe.reshape(args[3].shape), phase=_phase)
            new_w, new_s = self._fn(*args, **kw)
            if _phase is not None:  # a probe point or the evaluation weights
                return new_w.reshape(w.shape)
            return self._finish(w, new_w, new_s, batched)
        # a program with model-wide values, given one tensor: a model of that one tensor, whose
        # global states ride in its state dict
        state = dict(state or {})
        gstate = {n: state.pop(n) for n in self.global_names if n in state} or None
        (new_w,), (new_s,), new_g = self.step_group([w], [g], [state], gstate, hyper, t, hess_diags=[hess_diag],
                                                    batched=batched, roles=[role], seeds=[seed])
        new_s.update(new_g)
        return new_w, new_s

    def step_group(self, ws, gs, states, gstate=None, hyper=None, t=1, *, hess_diags=None, batched=False,
                   roles=None, seeds=None):
        """One step of every parameter of a group: ``(new ws, new states, new global state)``.

        Model-wide values (``global_norm`` and the like) reduce over all the tensors given, per
        member; ``gstate`` maps the program's global states to their values (None at the first
        step: their initialisers run), ``[M, 1, 1]`` when batched, ``[1, 1]`` otherwise. A program
        without model-wide values steps each tensor apart (and returns an empty global state)."""
        n = len(ws)
        hess_diags = hess_diags or [None] * n
        roles = roles or [None] * n
        seeds = seeds or [None] * n
        if not self.model_wide:
            outs = [self(w, g, st, hyper, t, hess_diag=hd, batched=batched, role=r, seed=sd)
                    for w, g, st, hd, r, sd in zip(ws, gs, states, hess_diags, roles, seeds)]
            return [o[0] for o in outs], [o[1] for o in outs], {}
        if not n:
            return [], [], gstate or {}
        G = None
        if gstate:
            members = int(ws[0].shape[0]) if batched else 1
            G = {k: v.reshape(members, 1, 1) if isinstance(v, torch.Tensor) else v for k, v in gstate.items()}
            missing = [k for k in self.global_names if k not in G]
            if missing:
                raise KeyError(f"global state is missing {missing}")
        steps = []
        for w, g, st, hd, r, sd in zip(ws, gs, states, hess_diags, roles, seeds):
            args, kw = self._prepare(w, g, st, hyper, t, hd, batched, r, sd)
            steps.append(self._fn(*args, gstate=G, **kw))
        results = runtime.lockstep(steps)
        new_ws, new_states = [], []
        for w, (new_w, new_s, _) in zip(ws, results):
            nw, ns = self._finish(w, new_w, new_s, batched)
            new_ws.append(nw)
            new_states.append(ns)
        new_g = results[0][2]  # every parameter computed the same global state
        if not batched:
            new_g = {k: v.reshape(1, 1) for k, v in new_g.items()}
        return new_ws, new_states, new_g

    def _prepare(self, w, g, state, hyper, t, hess_diag, batched, role, seed, _phase=None):
        """The generated step function's arguments for one tensor (member layout [M, R, C])."""
        if g.shape != w.shape:
            raise ValueError(f"gradient shape {tuple(g.shape)} differs from parameter shape {tuple(w.shape)}")
        if self.uses_hess_diag and hess_diag is None and _phase != "eval":
            raise ValueError("this program reads hess_diag: pass hess_diag=<Hutchinson estimate>")
        shape = tuple(w.shape[1:]) if batched else tuple(w.shape)
        members = int(w.shape[0]) if batched else 1
        rows, cols = view_shape(shape)
        role = role or default_role(shape)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        lay = (members, rows, cols)
        W, G = w.reshape(lay), g.reshape(lay)
        HD = hess_diag.reshape(lay) if hess_diag is not None else None
        first = not state
        S = {}
        if not first:
            for k, v in state.items():
                if k in self.param_states:
                    S[k] = v.reshape(lay)
                elif not batched and isinstance(v, torch.Tensor) and v.dim() >= 2 and "." not in k:
                    S[k] = v.unsqueeze(0)
                else:
                    S[k] = v
        H = self.hyper_values(hyper, members if batched else None, w)
        # per-mode primitives read the dimensions from ndim: an int that carries them (runtime.Ndim)
        ndim = runtime.Ndim(shape) if self.uses_modes else len(shape)
        is_matrix = ndim >= 2
        flags = (is_matrix, not is_matrix, role == "embedding", role == "head", is_matrix and role == "hidden")
        key = (shape, role, tuple(v for v in H.values() if not isinstance(v, torch.Tensor)))
        need = self._need.get(key)
        if need is None:
            env = {k: v for k, v in H.items() if not isinstance(v, torch.Tensor)}
            env.update(zip(("rows", "cols", "ndim", "numel"), (rows, cols, ndim, rows * cols)))
            env.update(zip(("is_matrix", "is_vector", "is_embedding", "is_head", "is_hidden"), flags))
            need = self._need[key] = reachable_states(self.program, env)
        seeds = _seed_tensor(seed, members, w.device) if self.uses_random else None
        return (S, H, first, W, G, t, HD, rows, cols, ndim, rows * cols, *flags), dict(need=need, seed=seeds)

    def _finish(self, w, new_w, new_s, batched):
        """The step's results in the caller's layout."""
        out_state = {}
        for k, v in new_s.items():
            if k in self.param_states:
                out_state[k] = v.reshape(w.shape)
            elif not batched and isinstance(v, torch.Tensor) and v.dim() >= 3 and "." not in k:
                out_state[k] = v.squeeze(0)
            else:
                out_state[k] = v
        return new_w.reshape(w.shape), out_state


def _seed_tensor(seed, members: int, device) -> torch.Tensor:
    """Seeds as the runtime takes them: int64 [M, 1, 1]; one int serves every member."""
    if seed is None:
        seed = 0
    s = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(members)
    if s.numel() != members:
        raise ValueError(f"{s.numel()} seeds for {members} members")
    if bool((s < 0).any()):
        raise ValueError("seeds must be non-negative integers")
    return s.reshape(members, 1, 1)


def compile_program(program: Program | str) -> StepFunction:
    """Compile a Program (or program text) into a StepFunction."""
    if isinstance(program, str):
        from .parser import parse

        program = parse(program)
    return StepFunction(program)


# Re-exported for tools that print the generated code next to the runtime it calls.
RUNTIME = runtime
