"""One batched training run: M members (a learning rate and a seed each) of one program on one task.

Every step: the task gives each member's training loss and gradients on that member's own batch;
members that failed (rule below) are dropped from the batch; the program updates every parameter
of the rest, eagerly, with ``lr = peak_lr · schedule.factor(t)``. A program with model-wide values
(``global_norm``, ``global d = …``) steps all of a member's parameters together, as one model per
member (``StepFunction.step_group``; its global states are kept under the state key ``GROUP``). At
the end the held-out loss of each surviving member is measured.

Failure rule, checked on each step's training loss before the update: a member fails at step ``t``
when its loss is NaN or ±inf ("non-finite loss"), or exceeds ``blowup`` (10) times its own loss at
step 1 ("loss above 10× initial"); when its held-out loss at the end is not finite ("non-finite
held-out loss"); when the wall clock passes the deadline, checked between steps ("time limit"); or,
for every member still running, when the program raises an error ("program error: …"). A
non-finite update shows up as a non-finite loss at the next step (or at the end). Failed members
are removed from the batch, so they cost nothing afterwards and cannot disturb the others.

Programs that read ``g_probe`` (``probe = …``: SAM) get, every step, the gradient of each member's
own batch of that step at its probe point: one more gradient evaluation per step. Programs that
give evaluation weights (``w_eval = …``: Schedule-Free) are judged there: the held-out losses (at
the end and along the way) and ``Run.params`` are at ``w_eval``; the training losses are at the
training weights, where the gradients are taken.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from optdisco.dsl.runtime import param_seed

from .allocator import retain_freed_memory
from .hessian import EPS, hutchinson
from .schedule import Schedule

BLOWUP = 10.0


class MembersDisagree(Exception):
    """The program has an ``if`` on a hyperparameter that differs across the batch's members."""


@dataclass
class Run:
    """Raw outcome of ``run_members``; indices follow the ``lrs``/``seeds`` given."""

    final: list[float]
    failed_step: list[int | None]
    reason: list[str | None]
    train: Tensor  # [steps, M] float64 training loss, NaN where not run
    eval_steps: list[int] = field(default_factory=list)
    evals: list[list[float]] = field(default_factory=list)  # per eval step, per member (NaN when gone)
    member_steps: int = 0
    params: dict[str, Tensor] = field(default_factory=dict)  # at the end, [M, *shape]; NaN rows: stopped early


def _select(tree, keep: Tensor, m: int):
    """Keep members ``keep`` of every tensor with a leading member dimension ``m`` in a state tree."""
    if isinstance(tree, Tensor):
        return tree[keep] if tree.dim() >= 1 and tree.shape[0] == m else tree
    if isinstance(tree, dict):
        return {k: _select(v, keep, m) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_select(v, keep, m) for v in tree)
    return tree


FLAT = ""
"""The state key of the concatenated parameters (no parameter is named so)."""
GROUP = "\0global"
"""The state key of a model-wide program's global states (no parameter is named so)."""


def _concat(tensors: dict[str, Tensor], names: list[str]) -> Tensor:
    """``[M, total]``: each member's tensors, flattened, one after another in ``names`` order."""
    return torch.cat([tensors[n].reshape(tensors[n].shape[0], -1) for n in names], 1)


def _split(flat: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Views ``[M, *shape]`` into the concatenation ``flat``."""
    out, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = flat[:, start : start + size].view(flat.shape[0], *shape)
        start += size
    return out


def run_members(
    fn,
    task,
    lrs: list[float],
    seeds: list[int],
    steps: int,
    *,
    schedule: Schedule = Schedule(),
    hyper: dict | None = None,
    deadline: float | None = None,
    blowup: float = BLOWUP,
    eval_every: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    hess_eps: float = EPS,
) -> Run:
    """Train ``len(lrs)`` members at once; member ``i`` has peak LR ``lrs[i]`` and seed ``seeds[i]``.

    ``fn`` is a compiled program (``optdisco.dsl.compile_program``). ``hyper`` fixes other
    hyperparameters: a number for every member, or a list of one value per member. ``deadline`` is a
    ``time.perf_counter()`` value. ``eval_every`` also records the held-out loss every that many
    steps (and at step 0), for curves only. ``Run.params`` keeps every member's final parameters,
    for analyses beyond the held-out loss (e.g. per-class accuracy). On a CPU it first makes the
    process keep freed memory for reuse (``allocator.retain_freed_memory``). Raises
    ``MembersDisagree`` if the program's if-conditions read a hyperparameter that differs across
    members (run such members apart).
    """
    m = len(lrs)
    if len(seeds) != m:
        raise ValueError(f"{m} learning rates but {len(seeds)} seeds")
    if torch.device(device).type == "cpu":
        retain_freed_memory()
    hyper, member_hyper = _split_hyper(hyper, m, device, dtype)
    out = Run([math.inf] * m, [None] * m, [None] * m, torch.full((steps, m), math.nan, dtype=torch.float64))
    live = _start(fn, task, lrs, seeds, member_hyper, device, dtype)
    if eval_every:
        _record_eval(out, task, live, 0, live.params)
    for step in range(steps):
        t = step + 1
        if deadline is not None and time.perf_counter() > deadline:
            live = _stop_all(out, live, t, "time limit")
            break
        loss, grads = task.loss_and_grads(live.params, step, live.seeds)
        live, grads = _drop_failed(out, live, loss, grads, step, blowup)
        if not live.seeds:
            break
        hyp = dict(hyper)
        hyp.update(live.hyper)
        hyp["lr"] = live.peak * schedule.factor(t, steps)
        hess = hutchinson(task, live.params, step, live.seeds, hess_eps) if fn.uses_hess_diag else None
        grads_at = functools.partial(_grads_at, task, step, live.seeds) if fn.uses_probe else None
        try:
            live = _update(fn, live, grads, hess, hyp, t, grads_at)
        except ValueError as e:
            if "differs across members" in str(e) and len(live.seeds) > 1:
                raise MembersDisagree(str(e)) from e
            live = _stop_all(out, live, t, f"program error: {e}")
            break
        except (RuntimeError, ArithmeticError, TypeError, IndexError) as e:
            live = _stop_all(out, live, t, f"program error: {type(e).__name__}: {e}")
            break
        out.member_steps += len(live.seeds)
        if eval_every and t % eval_every == 0 and t != steps:
            _record_eval(out, task, live, t, _eval_params(fn, live, hyp, t))
    if live.seeds:
        final = _eval_params(fn, live, hyp, t)
        _judge(out, task, live, final, steps, eval_every)
        out.params = _final_params(final, live.alive, m)
    else:
        out.params = _final_params(live.params, live.alive, m)
    return out


class _Live(NamedTuple):
    """The members still training, and everything kept per member (indexed alike)."""

    alive: Tensor  # their indices among the run's members
    seeds: list[int]
    params: dict[str, Tensor]  # [M, *shape]; views into ``flat`` when it is not None
    flat: Tensor | None  # [M, total]: every parameter concatenated, for elementwise programs
    shapes: dict[str, tuple[int, ...]]
    roles: dict[str, str]
    state: dict  # per parameter name, or under FLAT
    peak: Tensor  # peak learning rates [M]
    hyper: dict[str, Tensor]  # hyperparameters given per member, [M] each
    threshold: Tensor | None  # blowup × |step-1 loss| [M], once step 1 has run


def _split_hyper(hyper: dict | None, m: int, device, dtype) -> tuple[dict, dict[str, Tensor]]:
    """(the hyperparameters shared by every member, those given per member as [M] tensors)."""
    shared = dict(hyper or {})
    if "lr" in shared:
        raise ValueError("pass learning rates as lrs, not in hyper")
    per_member = {}
    for k, v in list(shared.items()):
        if isinstance(v, (list, tuple)):
            if len(v) != m:
                raise ValueError(f"hyperparameter {k!r} has {len(v)} values for {m} members")
            per_member[k] = torch.tensor([float(x) for x in v], dtype=dtype, device=device)
            del shared[k]
    return shared, per_member


def _start(fn, task, lrs, seeds, member_hyper, device, dtype) -> _Live:
    """Every member at its initial parameters, with empty state."""
    cur_seeds = [int(s) for s in seeds]
    params = task.init_params(cur_seeds, device=device, dtype=dtype)
    shapes = {n: tuple(p.shape[1:]) for n, p in params.items()}
    flat = _concat(params, list(shapes)) if fn.elementwise and len(params) > 1 else None
    if flat is not None:
        params = _split(flat, shapes)
    state: dict = {n: None for n in ([FLAT] if flat is not None else params)}
    if fn.model_wide:  # one model per member: its global states, [M, 1, 1] each
        state[GROUP] = None
    peak = torch.tensor([float(x) for x in lrs], dtype=dtype, device=device)
    return _Live(torch.arange(len(lrs)), cur_seeds, params, flat, shapes, task.roles(), state, peak, member_hyper, None)


def _keep(live: _Live, keep: Tensor) -> _Live:
    """The members ``keep`` (a boolean mask over ``live``) of ``live``."""
    n = len(live.seeds)
    kl = keep.tolist()
    flat, params = live.flat, live.params
    if flat is not None:
        flat = flat[keep.to(flat.device)]
        params = _split(flat, live.shapes)
    else:
        params = {k: v[keep.to(v.device)] for k, v in params.items()}
    return live._replace(
        alive=live.alive[keep],
        seeds=[s for s, k in zip(live.seeds, kl) if k],
        params=params,
        flat=flat,
        state={k: _select(v, keep.to(live.peak.device), n) for k, v in live.state.items()},
        peak=live.peak[keep.to(live.peak.device)],
        hyper={k: v[keep.to(v.device)] for k, v in live.hyper.items()},
        threshold=None if live.threshold is None else live.threshold[keep],
    )


def _fail(out: Run, idx: Tensor, step: int, why: str) -> None:
    for i in idx.tolist():
        out.failed_step[i] = step
        out.reason[i] = why


def _stop_all(out: Run, live: _Live, step: int, why: str) -> _Live:
    """Every member still running fails at ``step`` for ``why``; none is left."""
    _fail(out, live.alive, step, why)
    return _keep(live, torch.zeros(len(live.alive), dtype=torch.bool))


def _drop_failed(out: Run, live: _Live, loss: Tensor, grads: dict, step: int, blowup: float):
    """Records the step's training losses; members whose loss is not finite or above ``blowup``
    times their step-1 loss fail and are dropped (from ``live`` and ``grads``)."""
    t = step + 1
    lc = loss.detach().to("cpu", torch.float64)
    out.train[step, live.alive] = lc
    if live.threshold is None:  # the blow-up threshold of each member: blowup × |its step-1 loss|
        a = lc.abs()
        live = live._replace(threshold=torch.where(torch.isfinite(a) & (a > 0), blowup * a, torch.full_like(a, math.inf)))
    finite = torch.isfinite(lc)
    blown = finite & (lc > live.threshold)
    bad = ~finite | blown
    if not bool(bad.any()):
        return live, grads
    _fail(out, live.alive[~finite], t, "non-finite loss")
    _fail(out, live.alive[blown], t, f"loss above {blowup:g}× initial")
    keep = ~bad
    keep_d = keep.to(live.peak.device)
    return _keep(live, keep), {k: v[keep_d] for k, v in grads.items()}


def _update(fn, live: _Live, grads: dict, hess: dict | None, hyp: dict, t: int, grads_at=None) -> _Live:
    """Step ``t`` of the program on every parameter of the members in ``live``; ``grads_at``
    gives the gradients of the step's batches at other parameters (for programs that read
    ``g_probe``: at their probe points)."""
    names = list(live.shapes)
    with torch.no_grad():
        if live.flat is not None:  # roles and shapes are not read: "vector" is as good as any
            hd = None if hess is None else _concat(hess, names)
            g = _concat(grads, names)
            gp = None
            if grads_at is not None:
                point = fn.probe(live.flat, g, live.state[FLAT], hyp, t, batched=True, role="vector", hess_diag=hd)
                gp = _concat(grads_at(_split(point, live.shapes)), names)
            flat, s = fn(live.flat, g, live.state[FLAT], hyp, t, batched=True, role="vector", hess_diag=hd, g_probe=gp)
            return live._replace(flat=flat, params=_split(flat, live.shapes), state={FLAT: s})
        if fn.model_wide:  # every parameter at once: model-wide values reduce over them, per member
            seeds = [[param_seed(s, index) for s in live.seeds] for index in range(len(names))] \
                if fn.uses_random else None
            group_inputs = dict(batched=True, roles=[live.roles[n] for n in names], seeds=seeds,
                                hess_diags=None if hess is None else [hess[n] for n in names])
            ws, gs, states = [live.params[n] for n in names], [grads[n] for n in names], [live.state[n] for n in names]
            g_probes = None
            if grads_at is not None:  # the probe points in lockstep too: global_norm(g) is the model's
                points = fn.probe_group(ws, gs, states, live.state[GROUP], hyp, t, **group_inputs)
                at = grads_at(dict(zip(names, points)))
                g_probes = [at[n] for n in names]
            new_ws, new_states, group = fn.step_group(ws, gs, states, live.state[GROUP], hyp, t, g_probes=g_probes,
                                                      **group_inputs)
            return live._replace(params=dict(zip(names, new_ws)), state={**dict(zip(names, new_states)), GROUP: group})
        inputs = {}  # per parameter: the step's keyword arguments
        for index, name in enumerate(live.params):
            seed = [param_seed(s, index) for s in live.seeds] if fn.uses_random else None
            inputs[name] = dict(batched=True, role=live.roles[name], hess_diag=None if hess is None else hess[name],
                                seed=seed)
        if grads_at is not None:
            points = {name: fn.probe(live.params[name], grads[name], live.state[name], hyp, t, **inputs[name])
                      for name in live.params}
            for name, gp in grads_at(points).items():
                inputs[name]["g_probe"] = gp
        params, state = {}, {}
        for name in live.params:
            params[name], state[name] = fn(live.params[name], grads[name], live.state[name], hyp, t, **inputs[name])
        return live._replace(params=params, state=state)


def _grads_at(task, step: int, seeds: list[int], params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The gradients of each member's training batch of ``step`` at ``params``."""
    with torch.enable_grad():
        return task.loss_and_grads(params, step, seeds)[1]


def _eval_params(fn, live: _Live, hyp: dict, t: int) -> dict[str, Tensor]:
    """The weights the members are evaluated at after step ``t``: the program's ``w_eval``
    (``live.params`` for programs without one)."""
    if not fn.has_eval_weights:
        return live.params
    with torch.no_grad():
        if fn.model_wide:  # w_eval may read the model's global states
            names = list(live.params)
            ws = fn.eval_weights_group([live.params[n] for n in names], [live.state[n] for n in names],
                                       live.state[GROUP], hyp, t, batched=True, roles=[live.roles[n] for n in names])
            return dict(zip(names, ws))
        if live.flat is not None:
            return _split(fn.eval_weights(live.flat, live.state[FLAT], hyp, t, batched=True, role="vector"), live.shapes)
        return {n: fn.eval_weights(p, live.state[n], hyp, t, batched=True, role=live.roles[n])
                for n, p in live.params.items()}


def _record_eval(out: Run, task, live: _Live, step: int, params: dict[str, Tensor]) -> None:
    """The held-out loss at ``params`` (the members' evaluation weights) after ``step``."""
    row = [math.nan] * len(out.final)
    if live.seeds:
        vals = task.eval_loss(params, live.seeds).detach().to("cpu", torch.float64)
        for i, v in zip(live.alive.tolist(), vals.tolist()):
            row[i] = v
    out.eval_steps.append(step)
    out.evals.append(row)


def _judge(out: Run, task, live: _Live, params: dict[str, Tensor], steps: int, eval_every: int | None) -> None:
    """The held-out loss of every member still running after the last step, at ``params`` (their
    evaluation weights)."""
    vals = task.eval_loss(params, live.seeds).detach().to("cpu", torch.float64)
    for i, v in zip(live.alive.tolist(), vals.tolist()):
        if math.isfinite(v):
            out.final[i] = v
        else:
            out.failed_step[i] = steps
            out.reason[i] = "non-finite held-out loss"
    if eval_every:
        out.eval_steps.append(steps)
        out.evals.append([out.final[i] if out.reason[i] is None else math.nan for i in range(len(out.final))])


def _final_params(params: dict[str, Tensor], alive: Tensor, m: int) -> dict[str, Tensor]:
    """Every member's parameters at the end, ``[M, *shape]`` in the order given (the members
    still running are ``alive``); the rows of members stopped before the end are NaN."""
    out = {}
    for name, p in params.items():
        full = torch.full((m, *p.shape[1:]), math.nan, device=p.device, dtype=p.dtype)
        full[alive.to(p.device)] = p.detach()
        out[name] = full
    return out
