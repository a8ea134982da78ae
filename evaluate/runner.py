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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

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
    roles = task.roles()
    final: list[float] = [math.inf] * m
    failed_step: list[int | None] = [None] * m
    reason: list[str | None] = [None] * m
    train = torch.full((steps, m), math.nan, dtype=torch.float64)
    out = Run(final, failed_step, reason, train)

    alive = torch.arange(m)
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
    hyper = dict(hyper or {})
    if "lr" in hyper:
        raise ValueError("pass learning rates as lrs, not in hyper")
    member_hyper = {}  # hyperparameters given per member: [M] tensors, filtered with the members
    for k, v in list(hyper.items()):
        if isinstance(v, (list, tuple)):
            if len(v) != m:
                raise ValueError(f"hyperparameter {k!r} has {len(v)} values for {m} members")
            member_hyper[k] = torch.tensor([float(x) for x in v], dtype=dtype, device=device)
            del hyper[k]
    threshold: Tensor | None = None

    def fail(idx: Tensor, step: int, why: str) -> None:
        for i in idx.tolist():
            failed_step[i] = step
            reason[i] = why

    def keep_only(keep: Tensor) -> None:
        nonlocal alive, params, flat, state, peak, cur_seeds, threshold, member_hyper
        n = len(cur_seeds)
        alive = alive[keep]
        kl = keep.tolist()
        cur_seeds = [s for s, k in zip(cur_seeds, kl) if k]
        if flat is not None:
            flat = flat[keep.to(flat.device)]
            params = _split(flat, shapes)
        else:
            params = {k: v[keep.to(v.device)] for k, v in params.items()}
        state = {k: _select(v, keep.to(device), n) for k, v in state.items()}
        peak = peak[keep.to(peak.device)]
        member_hyper = {k: v[keep.to(v.device)] for k, v in member_hyper.items()}
        if threshold is not None:
            threshold = threshold[keep]

    def record_eval(step: int) -> None:
        row = [math.nan] * m
        if len(cur_seeds):
            vals = task.eval_loss(params, cur_seeds).detach().to("cpu", torch.float64)
            for i, v in zip(alive.tolist(), vals.tolist()):
                row[i] = v
        out.eval_steps.append(step)
        out.evals.append(row)

    if eval_every:
        record_eval(0)
    for step in range(steps):
        t = step + 1
        if deadline is not None and time.perf_counter() > deadline:
            fail(alive, t, "time limit")
            keep_only(torch.zeros(len(alive), dtype=torch.bool))
            break
        loss, grads = task.loss_and_grads(params, step, cur_seeds)
        lc = loss.detach().to("cpu", torch.float64)
        train[step, alive] = lc
        if threshold is None:  # the blow-up threshold of each member: blowup × |its step-1 loss|
            a = lc.abs()
            threshold = torch.where(torch.isfinite(a) & (a > 0), blowup * a, torch.full_like(a, math.inf))
        finite = torch.isfinite(lc)
        blown = finite & (lc > threshold)
        bad = ~finite | blown
        if bool(bad.any()):
            fail(alive[~finite], t, "non-finite loss")
            fail(alive[blown], t, f"loss above {blowup:g}× initial")
            keep = ~bad
            keep_d = keep.to(device)
            grads = {k: v[keep_d] for k, v in grads.items()}
            keep_only(keep)
            if not len(cur_seeds):
                break
        hess = hutchinson(task, params, step, cur_seeds, hess_eps) if fn.uses_hess_diag else None
        hyp = dict(hyper)
        hyp.update(member_hyper)
        hyp["lr"] = peak * schedule.factor(t, steps)
        try:
            with torch.no_grad():
                if flat is not None:  # roles and shapes are not read: "vector" is as good as any
                    hd = None if hess is None else _concat(hess, list(shapes))
                    flat, state[FLAT] = fn(
                        flat, _concat(grads, list(shapes)), state[FLAT], hyp, t, batched=True, role="vector", hess_diag=hd
                    )
                    params = _split(flat, shapes)
                elif fn.model_wide:  # every parameter at once: model-wide values reduce over them, per member
                    names = list(params)
                    seeds = [[param_seed(s, index) for s in cur_seeds] for index in range(len(names))] \
                        if fn.uses_random else None
                    new_ws, new_states, state[GROUP] = fn.step_group(
                        [params[n] for n in names], [grads[n] for n in names], [state[n] for n in names],
                        state[GROUP], hyp, t, batched=True, roles=[roles[n] for n in names],
                        hess_diags=None if hess is None else [hess[n] for n in names], seeds=seeds)
                    params = dict(zip(names, new_ws))
                    state.update(zip(names, new_states))
                else:
                    for index, name in enumerate(params):
                        seed = [param_seed(s, index) for s in cur_seeds] if fn.uses_random else None
                        params[name], state[name] = fn(
                            params[name], grads[name], state[name], hyp, t,
                            batched=True, role=roles[name], hess_diag=None if hess is None else hess[name], seed=seed,
                        )
        except ValueError as e:
            if "differs across members" in str(e) and len(cur_seeds) > 1:
                raise MembersDisagree(str(e)) from e
            fail(alive, t, f"program error: {e}")
            keep_only(torch.zeros(len(alive), dtype=torch.bool))
            break
        except (RuntimeError, ArithmeticError, TypeError, IndexError) as e:
            fail(alive, t, f"program error: {type(e).__name__}: {e}")
            keep_only(torch.zeros(len(alive), dtype=torch.bool))
            break
        out.member_steps += len(cur_seeds)
        if eval_every and t % eval_every == 0 and t != steps:
            record_eval(t)

    if len(cur_seeds):
        vals = task.eval_loss(params, cur_seeds).detach().to("cpu", torch.float64)
        for i, v in zip(alive.tolist(), vals.tolist()):
            if math.isfinite(v):
                final[i] = v
            else:
                failed_step[i] = steps
                reason[i] = "non-finite held-out loss"
        if eval_every:
            out.eval_steps.append(steps)
            out.evals.append([final[i] if reason[i] is None else math.nan for i in range(m)])
    out.params = _final_params(params, alive, m)
    return out


def _final_params(params: dict[str, Tensor], alive: Tensor, m: int) -> dict[str, Tensor]:
    """Every member's parameters at the end, ``[M, *shape]`` in the order given (the members
    still running are ``alive``); the rows of members stopped before the end are NaN."""
    out = {}
    for name, p in params.items():
        full = torch.full((m, *p.shape[1:]), math.nan, device=p.device, dtype=p.dtype)
        full[alive.to(p.device)] = p.detach()
        out[name] = full
    return out
