"""``evaluate(program, task)``: the one protocol every program is judged by.

1. The learning-rate grid: ``points`` (8) values log-spaced over ``decades`` (3) decades, centred
   on the program's default ``lr`` (``grid.lr_grid``), unless ``lrs`` are given.
2. Every grid point is trained on every seed (``seeds``, default ``(0, 1)``) for the same
   ``steps`` (the task's budget by default), all members batched in one run, eagerly, with the
   same warmup + cosine schedule (``schedule.Schedule``).
3. Each member is judged by its held-out loss at the end of training, never mid-run; a learning
   rate by the median of its members over seeds (a failed member counts as ``inf``). The best
   learning rate has the lowest median; ties go to the smaller learning rate.
4. A best learning rate at either end of the grid is flagged, and the grid extended once in that
   direction by half as many points again at the same spacing; if every member failed, the grid
   is extended once downwards. ``Result.edge`` tells whether the best is still at an end.
5. Fitness is the best learning rate's median held-out loss; ``WORST`` (inf) with a ``reason`` if
   nothing finished. Failures never raise: see ``runner`` for the rule. One time limit covers the
   whole evaluation, extension included.
6. Equal tuning: every program gets the same trials — ``points`` learning rates, plus
   ``points // 2`` when the best is at an edge. A program that declares other hyperparameters
   tuned (``hyper r = 0.015 tune(0.003, 0.3)``) spends those same trials on a Latin hypercube
   over the learning rate and them: the grid's learning rates as before, and each tuned
   hyperparameter at one of ``points`` log-spaced strata of its range per learning rate (each
   stratum once, in a fixed order per name); the extension keeps the best trial's values.
   ``Result.trials`` and ``Result.best_hyper`` say what was tried and chosen.

Deterministic: the same program, task, budget and seeds give the same Result (timings aside).
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from optdisco.dsl import Program, compile_program
from optdisco.dsl import resolve_program as _resolve_program

from . import grid as grid_mod
from . import quantize as quantize_mod
from .hessian import EPS
from .result import WORST, Member, Result
from .runner import BLOWUP, MembersDisagree, Run, run_members
from .schedule import Schedule

TIME_LIMIT = 600.0
"""Default wall-clock limit of one evaluation, in seconds."""

CURVE_POINTS = 100
"""Training-loss curves are stored as means over at most this many windows of steps."""


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the body with ``torch.set_num_threads(n)``, then restore the previous count."""
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_program(program) -> Program:
    """A Program from a Program, a compiled StepFunction, a library name, a path to an ``.opt``
    file, or program text: ``optdisco.dsl.resolve_program``, the one resolver shared with
    ``to_optimizer`` and ``export_python``."""
    return _resolve_program(program)


def resolve_task(task, size: str = "proxy"):
    """A Task from a Task or a task name (built at ``size``)."""
    if isinstance(task, str):
        from optdisco import proxies

        return proxies.get(task, size=size)
    for attr in ("loss_and_grads", "eval_loss", "init_params", "roles"):
        if not hasattr(task, attr):
            raise TypeError(f"expected a Task or a task name, got {type(task).__name__} (no {attr})")
    return task


def _window_means(curve: list[float], edges: list[int]) -> list[float]:
    out, start = [], 0
    for end in edges:
        vals = [v for v in curve[start:end] if not math.isnan(v)]
        out.append(math.fsum(vals) / len(vals) if vals and all(math.isfinite(v) for v in vals)
                   else (math.inf if vals else math.nan))
        start = end
    return out


def curve_steps(steps: int, points: int = CURVE_POINTS) -> list[int]:
    """The last step of each window of the stored training-loss curves."""
    points = max(1, min(points, steps))
    return sorted({round(steps * (k + 1) / points) for k in range(points)})


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else WORST


def evaluate(
    program,
    task,
    steps: int | None = None,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] = (0, 1),
    *,
    size: str = "proxy",
    points: int = grid_mod.POINTS,
    decades: float = grid_mod.DECADES,
    extend: bool = True,
    hyper: dict | None = None,
    time_limit: float | None = TIME_LIMIT,
    schedule: Schedule | None = None,
    blowup: float = BLOWUP,
    eval_every: int | None = None,
    max_members: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    curve_points: int = CURVE_POINTS,
    hess_eps: float = EPS,
    threads: int | None = 1,
    quantize: Sequence[str] = (),
) -> Result:
    """Evaluate ``program`` on ``task`` with the standard protocol (module docstring); see ``Result``.

    ``program``: a Program, program text, a compiled StepFunction or a library name. ``task``: a
    Task or a task name (built at ``size``). ``hyper`` fixes other hyperparameters for every
    member. ``max_members`` splits the members into batches of at most that many (memory).
    ``time_limit`` (seconds, ``None`` for none) bounds the whole evaluation. ``threads`` sets
    torch's CPU threads for the call, restored after (default 1: the proxies' tensors are too small
    to gain from more — on the 2-core machine two threads made the mlp evaluation 10× slower under
    load — and parallel workers share the cores); ``None`` leaves torch's setting alone.
    ``quantize`` (formats of ``evaluate.quantize``, e.g. ``("int8", "int4")``) also measures each
    member's held-out loss with its trained weights quantized (``Member.quantized_loss``,
    ``Result.quantized``).
    """
    start = time.perf_counter()
    with _threads(threads):
        prog = resolve_program(program)
        fn = compile_program(prog)
        task = resolve_task(task, size)
        steps = int(task.steps if steps is None else steps)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        seeds = _checked_seeds(seeds)
        hyper = _checked_hyper(prog, hyper)
        schedule = schedule or Schedule()
        device = str(device or default_device())
        grid = _initial_grid(prog, lrs, points, decades)
        plan = _Plan(
            fn=fn, task=task, steps=steps, seeds=seeds, hyper=hyper, schedule=schedule,
            deadline=None if time_limit is None else start + float(time_limit), blowup=blowup,
            eval_every=eval_every, max_members=max_members, device=device, dtype=dtype, hess_eps=hess_eps,
            quantize=_checked_formats(quantize), edges=curve_steps(steps, curve_points),
        )
        tuned = {k: v for k, v in sorted(prog.tuned.items()) if k not in plan.hyper}
        trial_values = latin_hypercube(grid, tuned)
        trained = _train(plan, grid, tuned, trial_values)
        best = _best_index(_medians(trained.members, grid, plan.seeds))
        extended = _extension_side(trained.members, grid, best) if extend and not plan.timed_out() else None
        if extended:
            new = grid_mod.extend(grid, extended, max(1, len(grid) // 2))
            if tuned:  # the extension keeps the values of the best trial (or of the edge's)
                keep = trial_values[grid[best if best is not None else 0]]
                trial_values.update({lr: dict(keep) for lr in new})
            trained = trained.merged(_train(plan, new, tuned, trial_values))
            grid = sorted(grid + new)
        return _result(prog, plan, trained, grid, tuned, trial_values, extended, size, start)


@dataclass(frozen=True)
class _Plan:
    """Everything every batch of one evaluation is trained with."""

    fn: object  # the compiled program
    task: object
    steps: int
    seeds: list[int]
    hyper: dict[str, float]
    schedule: Schedule
    deadline: float | None
    blowup: float
    eval_every: int | None
    max_members: int | None
    device: str
    dtype: torch.dtype
    hess_eps: float
    quantize: tuple[str, ...]
    edges: list[int]  # the last step of each window of the stored training curves

    def timed_out(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


@dataclass(frozen=True)
class _Trained:
    """The members trained so far, by (learning rate, seed), and what their runs counted."""

    members: dict[tuple[float, int], Member]
    member_steps: int = 0
    eval_steps: list[int] = field(default_factory=list)

    def merged(self, other: "_Trained") -> "_Trained":
        longer = other.eval_steps if len(other.eval_steps) > len(self.eval_steps) else self.eval_steps
        return _Trained({**self.members, **other.members}, self.member_steps + other.member_steps, longer)


def _threads(threads: int | None):
    """``cpu_threads(threads)``, or nothing to do when ``threads`` is None or already set."""
    if threads is not None and threads != torch.get_num_threads():
        return cpu_threads(threads)
    return contextlib.nullcontext()


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    return seeds


def _checked_hyper(prog: Program, hyper: dict | None) -> dict[str, float]:
    hyper = {k: float(v) for k, v in (hyper or {}).items()}
    unknown = sorted(set(hyper) - set(prog.hyper_defaults))
    if unknown:
        raise ValueError(f"hyper names {unknown} are not hyperparameters of the program ({sorted(prog.hyper_defaults)})")
    if "lr" in hyper:
        raise ValueError("give learning rates through lrs=…, not hyper['lr']")
    return hyper


def _checked_formats(quantize: Sequence[str]) -> tuple[str, ...]:
    quantize = tuple(quantize)
    for fmt in quantize:
        quantize_mod.levels(fmt)  # an unknown format is refused before anything runs
    return quantize


def _initial_grid(prog: Program, lrs: Sequence[float] | None, points: int, decades: float) -> list[float]:
    if lrs is None:
        return grid_mod.lr_grid(prog.hyper_defaults["lr"], points, decades)
    grid = sorted(float(x) for x in lrs)
    if not grid or any(not (math.isfinite(x) and x > 0) for x in grid):
        raise ValueError(f"learning rates must be positive numbers, got {list(lrs)}")
    if len(set(grid)) != len(grid):
        raise ValueError(f"learning rates must be distinct, got {list(lrs)}")
    return grid


def _train(plan: _Plan, lrs: list[float], tuned: dict, trial_values: dict[float, dict[str, float]]) -> _Trained:
    """Every learning rate of ``lrs`` on every seed, in batches of at most ``plan.max_members``."""
    out = _Trained({})
    for batch in _batches([(lr, s) for lr in lrs for s in plan.seeds], plan.max_members):
        try:
            runs = [(batch, _run(plan, batch, tuned, trial_values))]
        except MembersDisagree:  # an if-condition reads lr: one batch per learning rate
            groups = collections.OrderedDict()
            for p in batch:
                groups.setdefault(p[0], []).append(p)
            runs = [(g, _run(plan, g, tuned, trial_values)) for g in groups.values()]
        for b, r in runs:
            out = out.merged(_members_of(plan, b, r))
    return out


def _run(plan: _Plan, batch: list[tuple[float, int]], tuned: dict, trial_values: dict) -> Run:
    h: dict = dict(plan.hyper)
    for name in tuned:
        h[name] = [trial_values[p[0]][name] for p in batch]
    return run_members(
        plan.fn, plan.task, [p[0] for p in batch], [p[1] for p in batch], plan.steps,
        schedule=plan.schedule, hyper=h, deadline=plan.deadline, blowup=plan.blowup, eval_every=plan.eval_every,
        device=plan.device, dtype=plan.dtype, hess_eps=plan.hess_eps,
    )


def _members_of(plan: _Plan, batch: list[tuple[float, int]], r: Run) -> _Trained:
    """The Members of one run of ``batch`` (pairs of learning rate and seed)."""
    quantized = _quantized_losses(plan.task, r, [p[1] for p in batch], plan.quantize)
    members = {}
    for i, (lr, s) in enumerate(batch):
        members[(lr, s)] = Member(
            lr=lr, seed=s, final_loss=r.final[i], failed_step=r.failed_step[i], reason=r.reason[i],
            train_curve=_window_means(r.train[:, i].tolist(), plan.edges),
            eval_curve=[row[i] for row in r.evals],
            quantized_loss={} if r.reason[i] is not None else {f: v[i] for f, v in quantized.items()},
        )
    return _Trained(members, r.member_steps, list(r.eval_steps) if r.eval_steps else [])


def _medians(members: dict, grid: list[float], seeds: list[int]) -> list[float]:
    """Each learning rate's median held-out loss over seeds."""
    return [_median([members[(lr, s)].final_loss for s in seeds]) for lr in grid]


def _best_index(meds: list[float]) -> int | None:
    finite = [i for i, v in enumerate(meds) if math.isfinite(v)]
    return min(finite, key=lambda i: (meds[i], i)) if finite else None


def _extension_side(members: dict, grid: list[float], best: int | None) -> str | None:
    """Which way to extend the grid: past a best learning rate at an end; downwards when every
    member failed for a reason other than the time limit; else None."""
    if len(grid) <= 1:
        return None
    if best is None:
        return "low" if any(m.reason != "time limit" for m in members.values()) else None
    return "low" if best == 0 else "high" if best == len(grid) - 1 else None


def _result(prog: Program, plan: _Plan, trained: _Trained, grid: list[float], tuned: dict,
            trial_values: dict, extended: str | None, size: str, start: float) -> Result:
    members, seeds = trained.members, plan.seeds
    meds = _medians(members, grid, seeds)
    best = _best_index(meds)
    edge = None
    if best is not None and len(grid) > 1:
        edge = "low" if best == 0 else "high" if best == len(grid) - 1 else None
    ordered = [members[(lr, s)] for lr in grid for s in seeds]
    reason = None
    if best is None:
        fitness = WORST
        counts = collections.Counter(_reason_kind(m.reason) for m in ordered)
        detail = ", ".join(f"{n} {k}" for k, n in counts.most_common())
        if all(m.failed for m in ordered):
            reason = f"all {len(ordered)} members failed ({detail})"
        else:
            reason = f"no learning rate has a finite median held-out loss over seeds ({detail})"
    else:
        fitness = meds[best]
    task = plan.task
    return Result(
        program=prog.to_text(), task=getattr(task, "name", type(task).__name__), size=getattr(task, "size", size),
        steps=plan.steps, seeds=seeds, lrs=grid, lr_losses=meds, fitness=fitness,
        best_lr=None if best is None else grid[best], members=ordered, curve_steps=plan.edges,
        eval_steps=trained.eval_steps, edge=edge, extended=extended, reason=reason,
        wall_time=time.perf_counter() - start, member_steps=trained.member_steps, schedule=plan.schedule.to_dict(),
        hyper=plan.hyper, device=plan.device,
        trials={n: [trial_values[lr][n] for lr in grid] for n in tuned},
        best_hyper={} if best is None else dict(trial_values[grid[best]]) if tuned else {},
        quantized={} if best is None else {
            f: _median([members[(grid[best], s)].quantized_loss.get(f, WORST) for s in seeds]) for f in plan.quantize},
    )


def _quantized_losses(task, r: Run, seeds: list[int], formats: tuple[str, ...]) -> dict[str, list[float]]:
    """Each member's held-out loss with its final weights quantized in each format
    (``evaluate.quantize``); NaN or inf for members that did not finish."""
    out = {}
    if not formats or not r.params:
        return out
    with torch.no_grad():
        for fmt in formats:
            vals = task.eval_loss(quantize_mod.quantize_members(r.params, fmt), seeds)
            out[fmt] = [v if math.isfinite(v) else WORST for v in vals.detach().to("cpu", torch.float64).tolist()]
    return out


def latin_hypercube(lrs: list[float], tuned: dict[str, tuple[float, float]]) -> dict[float, dict[str, float]]:
    """Each learning rate's values of the tuned hyperparameters: hyperparameter ``name`` takes
    the ``n`` strata of its range, log-spaced (``lo·(hi/lo)^((j + ½)/n)``), one per learning rate,
    in an order fixed by its name (``random.Random(name)``), so the design is the same on every
    machine and every run."""
    n = len(lrs)
    out: dict[float, dict[str, float]] = {lr: {} for lr in lrs}
    for name, (lo, hi) in tuned.items():
        order = list(range(n))
        random.Random(f"optdisco-tune-{name}-{n}").shuffle(order)
        for lr, j in zip(lrs, order):
            out[lr][name] = lo * (hi / lo) ** ((j + 0.5) / n)
    return out


def _reason_kind(reason: str | None) -> str:
    if reason is None:
        return "finished"
    return reason.split(":")[0]


def _batches(pairs: list, max_members: int | None) -> list[list]:
    if not max_members or max_members >= len(pairs):
        return [pairs]
    if max_members < 1:
        raise ValueError(f"max_members must be at least 1, got {max_members}")
    return [pairs[i : i + max_members] for i in range(0, len(pairs), max_members)]
