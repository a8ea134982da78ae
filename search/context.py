"""The context a program was scored in: the learning rate the evaluation tuned for it, the other
hyperparameters it fixed, the LR schedule and the training length.

A program's fitness is only true in that context. Exporting the program with its own default
``lr`` (often orders of magnitude away from the tuned one) and no schedule reproduces nothing,
so every place that hands a found program on (``Run.best``, ``export``, ``simplify``, the
report) carries the dict this module extracts from the evaluation recorded in the store.
"""

from __future__ import annotations

import math
from typing import Any


def _number(x: Any) -> float | None:
    """A finite float from a stored value (numbers, or the strings a store writes for inf/nan)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def tuned_context(result: dict | None, tier=None) -> dict | None:
    """The tuned context of one stored evaluation result (``Outcome.result`` of the product's
    evaluator), or ``None`` when it tuned nothing (a failed evaluation, a stand-in evaluator)::

        {"lr": 1.6e-06,                          # the best learning rate of the grid (the peak)
         "hyper": {"wd": 0.1},                   # other hyperparameters the evaluation fixed or tuned
         "schedule": {"name": "warmup_cosine", "warmup": 0.05, "floor": 0.01, "steps": 400},
         "steps": 400, "task": "mlp", "size": "proxy"}

    ``tier`` (a :class:`~optdisco.search.config.Tier`) fills in the task and steps where the
    result does not hold them. A result with per-task entries (``result["tasks"][name]``, each
    an evaluation result of its own) gives ``{"tasks": {name: context, …}}`` plus, where every
    task agrees on it, the shared ``lr``.
    """
    if not isinstance(result, dict):
        return None
    tasks = result.get("tasks")
    if isinstance(tasks, dict):
        per = {name: tuned_context(entry) for name, entry in tasks.items()}
        per = {k: v for k, v in per.items() if v is not None}
        if not per:
            return None
        out: dict[str, Any] = {"tasks": per}
        lrs = {c["lr"] for c in per.values()}
        if len(lrs) == 1:
            out["lr"] = lrs.pop()
        return out
    lr = _number(result.get("best_lr"))
    if lr is None or lr <= 0:
        return None
    steps = result.get("steps")
    if steps is None and tier is not None:
        steps = tier.steps
    steps = int(steps) if _number(steps) is not None else None
    hyper = {str(k): v for k, v in (result.get("hyper") or {}).items() if _number(v) is not None}
    hyper.update({str(k): v for k, v in (result.get("best_hyper") or {}).items() if _number(v) is not None})
    ctx: dict[str, Any] = {"lr": lr, "hyper": {k: float(v) for k, v in hyper.items()}, "steps": steps,
                           "task": result.get("task") or (tier.task if tier is not None else None),
                           "size": result.get("size") or (tier.size if tier is not None else None)}
    sched = result.get("schedule")
    if isinstance(sched, dict) and steps:
        warmup, floor = _number(sched.get("warmup")), _number(sched.get("floor"))
        if warmup is not None and floor is not None:
            ctx["schedule"] = {"name": "warmup_cosine", "warmup": warmup, "floor": floor, "steps": steps}
    return ctx


def describe(ctx: dict | None) -> str:
    """One line for people: ``lr 1.6e-06 (tuned on mlp proxy, 400 steps), warmup 5% + cosine to 1%``."""
    if not ctx:
        return "no tuned context recorded"
    if "tasks" in ctx and "schedule" not in ctx:
        return "; ".join(f"{name}: {describe(c)}" for name, c in ctx["tasks"].items())
    where = " ".join(str(x) for x in (ctx.get("task"), ctx.get("size")) if x)
    steps = f", {ctx['steps']} steps" if ctx.get("steps") else ""
    s = f"lr {ctx['lr']:.3g} (tuned on {where or 'the task'}{steps})"
    for k, v in ctx.get("hyper", {}).items():
        s += f", {k} {v:.3g}"
    sch = ctx.get("schedule")
    if sch:
        s += f"; schedule: linear warmup over {sch['warmup']:.0%} of the steps, cosine decay to {sch['floor']:.0%}"
    return s


def export_context(ctx: dict | None) -> dict | None:
    """What :func:`optdisco.dsl.export_python` takes from a context: the tuned defaults, the
    schedule and a line saying where they come from."""
    if not ctx:
        return None
    if "tasks" in ctx and ctx["tasks"]:
        # a suite: each task tuned its own lr; the class defaults to their geometric mean (the
        # docstring lists each), with the schedule's shape and the tasks' median length
        per = list(ctx["tasks"].values())
        lr = ctx.get("lr") or math.exp(sum(math.log(c["lr"]) for c in per) / len(per))
        shared = {k: v for k, v in per[0].get("hyper", {}).items() if all(c.get("hyper", {}).get(k) == v for c in per)}
        sched = next((dict(c["schedule"]) for c in per if c.get("schedule")), None)
        if sched is not None:
            lengths = sorted(c["schedule"]["steps"] for c in per if c.get("schedule"))
            sched["steps"] = lengths[len(lengths) // 2]
        about = (f"lr {lr:.3g}: the geometric mean of the lr tuned on each task of the suite ("
                 + ", ".join(f"{name} {c['lr']:.3g}" for name, c in ctx["tasks"].items()) + ")")
        return {"defaults": {"lr": lr, **shared}, "schedule": sched, "about": about}
    if "lr" not in ctx:
        return None
    defaults = {"lr": ctx["lr"], **ctx.get("hyper", {})}
    return {"defaults": defaults, "schedule": ctx.get("schedule"), "about": describe(ctx)}
