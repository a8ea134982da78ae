"""Stand-in evaluators for the search tests: a small noisy quadratic trained by the compiled
program, scored by its final loss at the best of five learning rates (up to 0.1, where
plain SGD is far from converged). Fast (a few ms), exactly
deterministic, and sensitive to momentum and per-coordinate scaling, so search and
simplification have something real to find. Never used by the product."""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass

import torch

from optdisco.dsl import compile_program
from optdisco.search.evaluator import Outcome

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)

SGD = "# SGD\nhyper lr = 0.1\nw = w - lr * g\n"
MOMENTUM = "# Momentum\nhyper lr = 0.01, mu = 0.9\nstate b = zeros\nb = mu * b + g\nw = w - lr * b\n"


def seed_files(folder) -> list[str]:
    """SGD and momentum written as .opt files in ``folder``: the seed programs of the search tests."""
    paths = []
    for name, text in (("sgd", SGD), ("momentum", MOMENTUM)):
        path = folder / f"{name}.opt"
        path.write_text(text)
        paths.append(str(path))
    return paths



def quadratic_loss(program, steps: int = 40, lr: float = 0.1) -> float:
    """Final loss of ``0.5·Σ s_i (w_i − 1)²`` (curvatures s from 1e-2 to 1) from w = 0, with
    gradient noise of a fixed seed."""
    fn = compile_program(program)
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(-2, 0, 16, dtype=torch.float64)[:, None]
    w = torch.zeros(16, 3, dtype=torch.float64)
    state = None
    with torch.no_grad():
        for t in range(1, steps + 1):
            g = scales * (w - 1) + 0.01 * torch.randn(16, 3, generator=gen, dtype=torch.float64)
            w, state = fn(w, g, state, {"lr": lr}, t)
    loss = float(0.5 * (scales * (w - 1) ** 2).sum())
    return loss if math.isfinite(loss) else math.inf


def quad_fitness(program, steps: int = 40) -> float:
    return min(quadratic_loss(program, steps, lr) for lr in LRS)


def quad_eval(program, tier, device=None) -> Outcome:
    f = quad_fitness(program, tier.steps or 40)
    return Outcome(f, {"loss": f if math.isfinite(f) else None})


@dataclass(frozen=True)
class Logged:
    """``quad_eval`` that appends ``fitness`` to a log file per call and sleeps ``delay`` s."""

    log: str
    delay: float = 0.0

    def __call__(self, program, tier, device=None) -> Outcome:
        if self.delay:
            time.sleep(self.delay)
        out = quad_eval(program, tier)
        with open(self.log, "a") as f:
            f.write(f"{program.to_text()!r}\t{tier.steps}\n")
        return out


def _bump(counter: str) -> int:
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    with open(counter, "w") as f:
        f.write(str(n))
    return n


@dataclass(frozen=True)
class KillOnCall:
    """``quad_eval``, except that call number ``n`` (counted in a file) kills its own process."""

    counter: str
    n: int

    def __call__(self, program, tier, device=None) -> Outcome:
        if _bump(self.counter) == self.n:
            os.kill(os.getpid(), signal.SIGKILL)
        return quad_eval(program, tier)


@dataclass(frozen=True)
class HangOnCall:
    """``quad_eval``, except that call number ``n`` (counted in a file) never returns."""

    counter: str
    n: int

    def __call__(self, program, tier, device=None) -> Outcome:
        if _bump(self.counter) == self.n:
            time.sleep(3600)
        return quad_eval(program, tier)


TOY_TASKS = {"q10": 10, "q20": 20, "q40": 40, "q80": 80}
"""Toy suite tasks: the quadratic trained for that many steps (``impossible``: every program fails)."""


def toy_task_fitness(program, name: str) -> float:
    if name == "impossible":
        return math.inf
    return quad_fitness(program, TOY_TASKS[name])


def suite_eval(program, tier, device=None) -> Outcome:
    """``quad_eval`` for one task; for a suite tier, each toy task's fitness and the suite
    aggregate against the tier's references (as the product's evaluator does)."""
    from optdisco.evaluate.suite import aggregate, ratios

    if not tier.is_suite:
        return quad_eval(program, tier)
    by = {t: toy_task_fitness(program, t) for t in tier.task_names}
    details = {"fitness_by_task": {t: (f if math.isfinite(f) else None) for t, f in by.items()}}
    if not all(math.isfinite(f) for f in by.values()):
        return Outcome(math.inf, details, "a task failed")
    if tier.references is None:
        return Outcome(math.exp(sum(math.log(f) for f in by.values()) / len(by)), details)
    return Outcome(aggregate(ratios(by, dict(tier.references))), details)


def toml_config(budget: int, seed_programs, population: int, tournament: int, tiers, seed: int | None = None) -> str:
    """A search config file on the quadratic task, local executor, one worker; ``tiers`` is a list of
    ``(steps, seeds, points)`` (a second and later tier promote half)."""
    head = [f"budget = {budget}", 'executor = "local"', "workers = 1"] + ([f"seed = {seed}"] if seed is not None else [])
    head += ["seed_programs = [" + ", ".join(f'"{p}"' for p in seed_programs) + "]",
             f"population = {population}", f"tournament = {tournament}"]
    text = "\n" + "\n".join(head) + "\n"
    for i, (steps, seeds, points) in enumerate(tiers):
        text += f'\n[[tiers]]\ntask = "quadratic"\nsteps = {steps}\nseeds = {seeds}\npoints = {points}\n'
        if i:
            text += "promote = 0.5\n"
    return text
