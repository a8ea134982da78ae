"""What a worker runs: one evaluation of one program on one funnel tier.

An *evaluator* is any picklable callable ``evaluator(program, tier, device) -> Outcome``.
The product's evaluator is :class:`ProxyEvaluator` (``optdisco.evaluate`` on an
``optdisco.proxies`` task); tests may pass their own. :func:`run_job` wraps a call so that
nothing a program does can raise out of a worker: errors become a failed outcome with the
worst fitness.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from optdisco.dsl import Program, parse
from optdisco.evaluate.result import WORST

from .config import Tier


@dataclass
class Outcome:
    """The result of one evaluation as the search records it. ``fitness``: lower is better,
    ``inf`` for a failure. ``result``: the evaluator's JSON-able details (curves, best LR…)."""

    fitness: float
    result: dict | None = None
    error: str | None = None
    wall: float = 0.0
    worker: str = ""


SEARCH, REFERENCE, HELDOUT = "search", "reference", "heldout"
"""Job kinds: a candidate's evaluation on a funnel tier (the only kind selection ever reads), a
suite reference's evaluation, a finalist's evaluation on the held-out suite."""


@dataclass(frozen=True)
class Job:
    candidate: int
    tier_index: int
    tier: Tier
    program: str  # canonical text
    attempt: int = 1
    kind: str = SEARCH

    @property
    def key(self) -> tuple[int, int]:
        return (self.candidate, self.tier_index)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job: Job, evaluator: Callable, device: str | None = None) -> Outcome:
    """Evaluate ``job`` with ``evaluator``; never raises."""
    start = time.perf_counter()
    try:
        program = parse(job.program)
        out = evaluator(program, job.tier, device)
        if not isinstance(out, Outcome):
            raise TypeError(f"the evaluator returned {type(out).__name__}, not Outcome")
    except Exception as e:  # noqa: BLE001 - any failure of a candidate is a result, not a crash
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        out = Outcome(WORST, None, f"{tb}")
    if out.fitness is None or math.isnan(out.fitness):
        out.fitness = WORST
    out.wall = time.perf_counter() - start
    out.worker = worker_id()
    return out


# -- the product's evaluator ------------------------------------------------------------------------
_TASKS: dict[tuple[str, str], Any] = {}


def _task(name: str, size: str):
    key = (name, size)
    if key not in _TASKS:
        from optdisco.evaluate import resolve_task

        _TASKS[key] = resolve_task(name, size)
    return _TASKS[key]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


@dataclass(frozen=True)
class ProxyEvaluator:
    """Fitness from ``optdisco.evaluate.evaluate`` on the tier's proxy task: the median held-out
    loss over seeds at the best learning rate of the grid (lower is better). Tasks are built
    once per worker process; torch uses ``threads`` CPU threads per evaluation (1: one
    evaluation per core). ``options`` are passed through to ``evaluate``.

    What is stored per evaluation: the Result without its per-member records, plus
    ``best_curve`` (the training-loss curve at the best learning rate, mean over seeds)."""

    threads: int | None = 1
    options: dict = field(default_factory=dict)

    def __call__(self, program: Program, tier: Tier, device: str | None = None) -> Outcome:
        if tier.is_suite:
            return self.suite(program, tier, device)
        result = self.run(program, tier.task, tier, device)
        return Outcome(float(result.fitness), compact_result(result), result.reason or None)

    def run(self, program: Program, task_name: str, tier: Tier, device: str | None = None):
        """``optdisco.evaluate.evaluate`` of ``program`` on one task with the tier's budget."""
        from optdisco.evaluate import evaluate

        task = _task(task_name, tier.size)
        kwargs: dict[str, Any] = dict(self.options)
        if tier.steps is not None:
            kwargs["steps"] = tier.steps
        if tier.seeds is not None:
            kwargs["seeds"] = tuple(range(int(tier.seeds)))
        if tier.lrs is not None:
            kwargs["lrs"] = list(tier.lrs)
        if tier.points is not None:
            kwargs["points"] = tier.points
        if device is not None:
            kwargs["device"] = device
        kwargs.setdefault("threads", self.threads)
        return evaluate(program, task, time_limit=tier.time_limit, **kwargs)

    def suite(self, program: Program, tier: Tier, device: str | None = None) -> Outcome:
        """Every task of a suite tier, then the suite aggregate of the ratios to the tier's
        references (``optdisco.evaluate.suite``). The first task that fails ends the evaluation
        (the aggregate is ``inf`` whatever the others give). Without references (the reference's
        own evaluation) the fitness is the geometric mean of the raw fitnesses."""
        from optdisco.evaluate.suite import aggregate, ratios

        per_task: dict[str, dict] = {}
        fitness: dict[str, float] = {}
        reason = None
        for name in tier.task_names:
            result = self.run(program, name, tier, device)
            per_task[name] = compact_result(result)
            fitness[name] = float(result.fitness)
            if not math.isfinite(result.fitness):
                reason = f"{name}: {result.reason or 'failed'}"
                break
        details: dict[str, Any] = {"tasks": per_task, "fitness_by_task": dict(fitness)}
        if reason is not None:
            total = WORST
        elif tier.references is not None:
            refs = dict(tier.references)
            r = ratios(fitness, refs)
            details["references"] = refs
            details["ratios"] = r
            total = aggregate(r)
        else:
            total = math.exp(sum(math.log(max(f, 1e-300)) for f in fitness.values()) / len(fitness))
        return Outcome(float(total), _jsonable(details), reason)


def compact_result(result) -> dict:
    """A Result as JSON without per-member records; the best LR's mean training curve kept."""
    d = result.to_dict()
    d.pop("members", None)
    d.pop("program", None)
    best = result.best_members()
    curves = [m.train_curve for m in best if m.train_curve]
    if curves:
        n = min(len(c) for c in curves)
        d["best_curve"] = {"steps": list(result.curve_steps[:n]),
                           "loss": [sum(c[i] for c in curves) / len(curves) for i in range(n)]}
    return _jsonable(d)
