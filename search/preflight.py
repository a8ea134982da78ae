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

    def unknown(where: str, name: str) -> PreflightError:
        return PreflightError(f"{where}: unknown task {name!r}; known tasks: {', '.join(known)} (see optdisco tasks)")

    default = config.tiers == _default(config)
    for i, t in enumerate(config.tiers):
        for name in t.task_names:
            if name not in known:
                where = ("suite" if t.is_suite else "task") if default else \
                    (f"tiers[{i}].tasks" if t.is_suite else f"tiers[{i}].task")
                raise unknown(where, name)
    for name in config.heldout:
        if name not in known:
            raise unknown("heldout", name)
    if config.heldout_every or config.validate_top or any(t.is_suite for t in config.tiers):
        from optdisco import library

        for ref in {t.reference for t in config.tiers}:
            if ref not in library.names():
                raise PreflightError(f"reference {ref!r} is not a library program (see optdisco library)")


def _default(config: SearchConfig):
    from .config import default_tiers

    return default_tiers(config.task, config.suite)


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
