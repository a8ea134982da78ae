"""optdisco.evaluate — run a program on a task by one protocol, and validate it at target scale.

    >>> from optdisco.evaluate import evaluate
    >>> r = evaluate("adamw", "mlp")          # 8 LRs × 2 seeds, batched, on the default proxy
    >>> r.fitness, r.best_lr, r.failures

See ``protocol`` (the protocol), ``schedule`` (the LR schedule), ``grid`` (the LR grid),
``runner`` (the batched run and the failure rule), ``hessian`` (Hutchinson estimates),
``result`` (the Result and its JSON form) and ``validate`` (the target-scale comparison).
"""

from __future__ import annotations

from optdisco.dsl.lazy import lazy_names

# Loaded on first use (see optdisco.dsl.lazy): the command line imports optdisco.evaluate.cli,
# and `optdisco --help` should not wait for torch.
_EXPORTS = {
    "extend": ".grid", "lr_grid": ".grid", "hutchinson": ".hessian",
    "TIME_LIMIT": ".protocol", "evaluate": ".protocol", "resolve_program": ".protocol", "resolve_task": ".protocol",
    "WORST": ".result", "Member": ".result", "Result": ".result",
    "BLOWUP": ".runner", "run_members": ".runner", "Schedule": ".schedule",
}

__all__ = [
    "BLOWUP", "Member", "Result", "Schedule", "TIME_LIMIT", "WORST", "evaluate", "extend", "hutchinson",
    "lr_grid", "resolve_program", "resolve_task", "run_members",
]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
