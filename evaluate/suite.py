"""Fitness over a suite of tasks: each task's fitness divided by a tuned reference's on the same
task, aggregated so that every task counts alike and a large loss on one task cannot be bought
back by gains elsewhere.

With ``r_i = fitness_i / reference_i`` (held-out losses, lower is better; the reference is tuned
AdamW under the same protocol by default) the suite fitness is

    score = exp( mean_i max(log r_i, −log GAIN_CAP)  +  WORST_WEIGHT · max(0, max_i log r_i) )

- a geometric mean of the ratios, so a task whose losses are ten times smaller counts as much as
  any other (the scale of each task's loss cancels);
- each task's gain capped at ``GAIN_CAP`` (2×): on a task where some method beats AdamW by 10×
  (the associative memory, where tuned Muon reaches 0.1× AdamW's loss) that one task would
  otherwise decide the whole suite;
- plus the worst task's loss once more (``WORST_WEIGHT`` = 1): a program that wins one task by
  20% and loses another by 20% scores 1.2 · 0.91 ≈ 1.10, worse than one that ties both (1.0),
  so the search prefers programs that lose nowhere — which is what a discovery is judged by on
  the held-out tasks (better on most, worse on none).

A tie with the reference on every task scores exactly 1; a failure on any task (``inf``) scores
``inf``. ``benchmarks/proxy_fidelity.py`` compares this rule with the plain geometric mean by how
well each ranks library methods as the held-out suite does.
"""

from __future__ import annotations

import math
from typing import Mapping

GAIN_CAP = 2.0
"""The most one task's ratio can count for: a gain beyond 2× counts as 2×."""

WORST_WEIGHT = 1.0
"""How much the worst task's loss (ratio above 1) counts again."""

REFERENCE = "adamw"
"""The library program every task's fitness is divided by, tuned on that task."""


def ratios(fitness: Mapping[str, float], references: Mapping[str, float]) -> dict[str, float]:
    """``fitness[task] / references[task]`` for every task of ``references`` (a task missing
    from ``fitness``, failed or non-finite gives ``inf``)."""
    out = {}
    for task, ref in references.items():
        if not (math.isfinite(ref) and ref > 0):
            raise ValueError(f"reference fitness on {task!r} must be a positive number, got {ref}")
        f = fitness.get(task, math.inf)
        out[task] = f / ref if f is not None and math.isfinite(f) and f >= 0 else math.inf
    return out


def aggregate(task_ratios: Mapping[str, float], *, gain_cap: float = GAIN_CAP,
              worst_weight: float = WORST_WEIGHT) -> float:
    """The suite fitness of per-task ratios (module docstring); lower is better, 1 is a tie."""
    if not task_ratios:
        raise ValueError("a suite needs at least one task")
    logs = []
    for r in task_ratios.values():
        if r is None or not math.isfinite(r) or r < 0:
            return math.inf
        if r == 0:
            logs.append(-math.log(gain_cap))
            continue
        logs.append(max(math.log(r), -math.log(gain_cap)))
    return math.exp(sum(logs) / len(logs) + worst_weight * max(0.0, max(logs)))


def geometric_mean(task_ratios: Mapping[str, float]) -> float:
    """The plain geometric mean of the ratios (``aggregate`` without cap or worst-task term)."""
    return aggregate(task_ratios, gain_cap=math.inf, worst_weight=0.0)
