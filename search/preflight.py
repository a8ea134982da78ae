"""Checks a new search run passes before anything is created or started: every tier names a
known task (for the product's evaluator), every seed program loads, and the budget can pay for
the seed programs. Each failure is one line naming what is wrong."""

from __future__ import annotations

from typing import Callable

from .config import SearchConfig


class PreflightError(ValueError):
    pass


def check_tasks(config: SearchConfig) -> None:
    """Every tier's task is a registered proxy task."""
    from optdisco import proxies

    known = proxies.names()
    for i, t in enumerate(config.tiers):
        if t.task not in known:
            where = "task" if config.tiers == _default(config) else f"tiers[{i}].task"
            raise PreflightError(f"{where}: unknown task {t.task!r}; known tasks: {', '.join(known)} "
                                 "(see optdisco tasks)")


def _default(config: SearchConfig):
    from .config import default_tiers

    return default_tiers(config.task)


def check_budget(config: SearchConfig, n_seeds: int) -> None:
    """The first ``n_seeds`` proposals are the seed programs, one tier-0 evaluation each: a smaller
    budget would silently leave some of them out."""
    if config.budget < n_seeds:
        which = "'all' names" if list(config.seed_programs) == ["all"] else "the seed programs are"
        raise PreflightError(f"budget {config.budget} is too small for the seed programs: {which} {n_seeds} "
                             f"programs, each costing one evaluation; raise the budget to at least {n_seeds} "
                             "or name fewer seed programs")


def check_new_run(config: SearchConfig, evaluator: Callable | None, seeds: list) -> None:
    """All checks of a new run; ``seeds`` as loaded by ``engine.load_seeds`` (which checks names)."""
    from .evaluator import ProxyEvaluator

    if evaluator is None or isinstance(evaluator, ProxyEvaluator):
        check_tasks(config)
    check_budget(config, len(seeds))
