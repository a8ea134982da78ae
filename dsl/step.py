"""A compiled program, ready to run: ``StepFunction`` and ``compile_program``.

The per-tensor step function's source (:mod:`optdisco.dsl.compiler`) is loaded here as a module
whose ``R`` is :mod:`optdisco.dsl.runtime`; ``StepFunction`` puts a caller's tensors (with a
leading member dimension when ``batched``) into the member layout ``[M, R, C]`` the generated code
works in, decides which states this parameter's routing reaches (:mod:`optdisco.dsl.analysis`),
runs the step and puts the results back in the caller's layout.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import itertools
import linecache
from typing import Mapping

import torch

from . import runtime
from .analysis import acts_elementwise, reachable_states
from .checker import check
from .compiler import generate_source
from .layout import ROLES, SHAPE_INPUTS, default_role, from_step_state, shape_info, to_step_state
from .primitives import PARAM
from .program import Program


class SourceLoader(importlib.abc.SourceLoader):
    """Loads a module from source text that this compiler generated."""

    def __init__(self, source: str):
        self._source = source

    def get_filename(self, fullname: str) -> str:
        return f"<optdisco-step {fullname}>"

    def get_data(self, path: str) -> bytes:
        return self._source.encode()


_counter = itertools.count()


def load_module(source: str, prefix: str = "optdisco_step", show: bool = False):
    """A fresh module run from generated ``source`` (named ``prefix_<n>``). ``show``: tracebacks
    and inspect show its code (kept in linecache for the life of the process, so only for
    modules that are cached, as export's classes are)."""
    name = f"{prefix}_{next(_counter)}"
    loader = SourceLoader(source)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    if show:
        filename = loader.get_filename(name)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    loader.exec_module(module)
    return module


def load_step(source: str):
    """The step function of per-tensor step ``source``, calling :mod:`optdisco.dsl.runtime`."""
    return load_module("from optdisco.dsl import runtime as R\n\n" + source).step


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
    over all the parameters of a group: step them together with ``step_group`` (and take their
    probe points together with ``probe_group``). Called on one tensor it treats that tensor as the
    whole model and keeps its global states in the state dict.
    """

    def __init__(self, program: Program):
        self.program = program
        self.info = check(program)
        self.source = generate_source(program, self.info)
        self._fn = load_step(self.source)
        self.defaults = program.hyper_defaults
        self.uses_hess_diag = program.uses_hess_diag
        self.uses_random = program.uses_random
        self.uses_modes = program.uses_modes
        self.uses_probe = program.uses_probe
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
        if self.model_wide:  # a model of this one tensor, whose global states ride in its state dict
            state, gstate = self._split_global(state)
            return self.probe_group([w], [g], [state], gstate, hyper, t, hess_diags=[hess_diag], batched=batched,
                                    roles=[role], seeds=[seed])[0]
        return self(w, g, state, hyper, t, hess_diag=hess_diag, batched=batched, role=role, seed=seed, _phase="probe")

    def probe_group(self, ws, gs, states, gstate=None, hyper=None, t=1, *, hess_diags=None, batched=False,
                    roles=None, seeds=None):
        """The probe points of every parameter of a group in step ``t`` (a list; no state changes).
        A program with model-wide values runs the probe phase of every parameter in lockstep, so a
        ``global_norm(g)`` in the probe reduces over all the tensors given, per member (as
        ``step_group``); other programs take each tensor's point apart."""
        if not self.uses_probe:
            raise ValueError("this program has no probe point (no statement probe = ...)")
        n = len(ws)
        hess_diags, roles, seeds = hess_diags or [None] * n, roles or [None] * n, seeds or [None] * n
        if not self.model_wide:
            return [self.probe(w, g, st, hyper, t, hess_diag=hd, batched=batched, role=r, seed=sd)
                    for w, g, st, hd, r, sd in zip(ws, gs, states, hess_diags, roles, seeds)]
        results = self._lockstep(ws, gs, states, gstate, hyper, t, hess_diags, batched, roles, seeds, "probe")
        return [point.reshape(w.shape) for w, (point, _) in zip(ws, results)]

    def eval_weights(self, w, state, hyper=None, t=1, *, batched=False, role=None):
        """The weights a model is evaluated at, from the weights and state a step returned: the
        program's ``w_eval``; ``w`` itself for programs without one, or before the first step."""
        if not self.has_eval_weights or state is None or (not state and self.info.state_types):
            return w
        if self.model_wide:  # a model of this one tensor, whose global states ride in its state dict
            state, gstate = self._split_global(state)
            return self.eval_weights_group([w], [state], gstate, hyper, t, batched=batched, roles=[role])[0]
        return self(w, w, state, hyper, t, batched=batched, role=role, _phase="eval")

    def eval_weights_group(self, ws, states, gstate=None, hyper=None, t=1, *, batched=False, roles=None):
        """``eval_weights`` of every parameter of a model (a list), its global states ``gstate``
        as ``step_group`` returned them (``w_eval`` may read them; it has no reductions)."""
        roles = roles or [None] * len(ws)
        if not self.model_wide:
            return [self.eval_weights(w, st, hyper, t, batched=batched, role=r) for w, st, r in zip(ws, states, roles)]
        if not self.has_eval_weights or not gstate:  # before the first step: the weights themselves
            return list(ws)
        n = len(ws)
        results = self._lockstep(ws, ws, states, gstate, hyper, t, [None] * n, batched, roles, [None] * n, "eval")
        return [point.reshape(w.shape) for w, (point, _) in zip(ws, results)]

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
        state, gstate = self._split_global(state)
        g_probes = None
        if g_probe is not None:
            g_probes = (lambda points: [g_probe(points[0])]) if callable(g_probe) else [g_probe]
        (new_w,), (new_s,), new_g = self.step_group([w], [g], [state], gstate, hyper, t, hess_diags=[hess_diag],
                                                    batched=batched, roles=[role], seeds=[seed], g_probes=g_probes)
        new_s.update(new_g)
        return new_w, new_s

    def _split_global(self, state):
        """(a one-tensor model's per-parameter state, its global states or None)."""
        state = dict(state or {})
        return state, {n: state.pop(n) for n in self.global_names if n in state} or None

    def step_group(self, ws, gs, states, gstate=None, hyper=None, t=1, *, hess_diags=None, batched=False,
                   roles=None, seeds=None, g_probes=None):
        """One step of every parameter of a group: ``(new ws, new states, new global state)``.

        Model-wide values (``global_norm`` and the like) reduce over all the tensors given, per
        member; ``gstate`` maps the program's global states to their values (None at the first
        step: their initialisers run), ``[M, 1, 1]`` when batched, ``[1, 1]`` otherwise. A program
        without model-wide values steps each tensor apart (and returns an empty global state).
        ``g_probes`` (programs that read ``g_probe``): the gradients at the points ``probe_group``
        gives, in order, or a function from that list of points to the list of gradients there."""
        n = len(ws)
        hess_diags = hess_diags or [None] * n
        roles = roles or [None] * n
        seeds = seeds or [None] * n
        if self.uses_probe:
            if g_probes is None:
                raise ValueError("this program reads g_probe: pass g_probes=<the gradients at fn.probe_group(...)>, "
                                 "or a function from those points to the gradients there")
            if callable(g_probes):
                g_probes = list(g_probes(self.probe_group(ws, gs, states, gstate, hyper, t, hess_diags=hess_diags,
                                                          batched=batched, roles=roles, seeds=seeds)))
            if len(g_probes) != n:
                raise ValueError(f"{len(g_probes)} probe gradients for {n} parameters")
        else:
            g_probes = [None] * n
        if not self.model_wide:
            outs = [self(w, g, st, hyper, t, hess_diag=hd, batched=batched, role=r, seed=sd, g_probe=gp)
                    for w, g, st, hd, r, sd, gp in zip(ws, gs, states, hess_diags, roles, seeds, g_probes)]
            return [o[0] for o in outs], [o[1] for o in outs], {}
        if not n:
            return [], [], gstate or {}
        results = self._lockstep(ws, gs, states, gstate, hyper, t, hess_diags, batched, roles, seeds, None, g_probes)
        new_ws, new_states = [], []
        for w, (new_w, new_s, _) in zip(ws, results):
            nw, ns = self._finish(w, new_w, new_s, batched)
            new_ws.append(nw)
            new_states.append(ns)
        new_g = results[0][2]  # every parameter computed the same global state
        if not batched:
            new_g = {k: v.reshape(1, 1) for k, v in new_g.items()}
        return new_ws, new_states, new_g

    def _lockstep(self, ws, gs, states, gstate, hyper, t, hess_diags, batched, roles, seeds, phase, g_probes=None):
        """The generated step of a model-wide program, run on every tensor in lockstep (in the
        probe or eval phase when ``phase`` says so): what each returns."""
        G = None
        if gstate:
            members = int(ws[0].shape[0]) if batched else 1
            G = {k: v.reshape(members, 1, 1) if isinstance(v, torch.Tensor) else v for k, v in gstate.items()}
            missing = [k for k in self.global_names if k not in G]
            if missing:
                raise KeyError(f"global state is missing {missing}")
        steps = []
        for i, (w, g, st, hd, r, sd) in enumerate(zip(ws, gs, states, hess_diags, roles, seeds)):
            args, kw = self._prepare(w, g, st, hyper, t, hd, batched, r, sd, phase)
            if self.uses_probe or self.has_eval_weights:
                gp = None if g_probes is None else g_probes[i]
                if gp is not None and gp.shape != w.shape:
                    raise ValueError(f"g_probe shape {tuple(gp.shape)} differs from parameter shape {tuple(w.shape)}")
                kw.update(v_g_probe=None if gp is None else gp.reshape(args[3].shape), phase=phase)
            steps.append(self._fn(*args, gstate=G, **kw))
        return runtime.lockstep(steps)

    def _prepare(self, w, g, state, hyper, t, hess_diag, batched, role, seed, _phase=None):
        """The generated step function's arguments for one tensor (member layout [M, R, C])."""
        if g.shape != w.shape:
            raise ValueError(f"gradient shape {tuple(g.shape)} differs from parameter shape {tuple(w.shape)}")
        if self.uses_hess_diag and hess_diag is None and _phase != "eval":
            raise ValueError("this program reads hess_diag: pass hess_diag=<Hutchinson estimate>")
        shape = tuple(w.shape[1:]) if batched else tuple(w.shape)
        members = int(w.shape[0]) if batched else 1
        role = role or default_role(shape)
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        # per-mode primitives read the dimensions from ndim: an int that carries them (runtime.Ndim)
        info = shape_info(shape, role, runtime.Ndim(shape) if self.uses_modes else None)
        lay = (members, info[0], info[1])
        W, G = w.reshape(lay), g.reshape(lay)
        HD = hess_diag.reshape(lay) if hess_diag is not None else None
        first = not state
        S = {} if first else to_step_state(state, lay, self.param_states, batched)
        H = self.hyper_values(hyper, members if batched else None, w)
        key = (shape, role, tuple(v for v in H.values() if not isinstance(v, torch.Tensor)))
        need = self._need.get(key)
        if need is None:
            env = {k: v for k, v in H.items() if not isinstance(v, torch.Tensor)}
            env.update(zip(SHAPE_INPUTS, info))
            need = self._need[key] = reachable_states(self.program, env)
        seeds = _seed_tensor(seed, members, w.device) if self.uses_random else None
        return (S, H, first, W, G, t, HD, *info), dict(need=need, seed=seeds)

    def _finish(self, w, new_w, new_s, batched):
        """The step's results in the caller's layout."""
        return new_w.reshape(w.shape), from_step_state(new_s, w.shape, self.param_states, batched)


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
