"""optdisco.proxies: training tasks (model + data + loss), each trained as a stack of M members.

    >>> from optdisco import proxies
    >>> proxies.names()
    ['attention', 'autoencoder', 'deepnet', 'denoise', 'digits', 'gru', 'lm', 'memory', 'mlp', 'quadratic', 'rnn',
     'tanhnet']
    >>> task = proxies.get("mlp", size="proxy")
    >>> params = task.init_params([0, 0, 1, 1])              # 4 members: 2 seeds × (say) 2 LRs
    >>> loss, grads = task.loss_and_grads(params, step=0, seeds=[0, 0, 1, 1])

A task sees only parameters and gradients; the optimizer (a compiled program) lives elsewhere.
Add a task by subclassing ``Task`` (or ``PoolTask``, for a fixed training pool and held-out set)
and decorating it with ``@register``. ``batched_cross_entropy`` and ``batched_mse`` compute each
member's loss ``[M]`` from stacked outputs ``[M, ...]``, for a task's hand-batched ``batched_loss``.
"""

from __future__ import annotations

import importlib

from optdisco.dsl.lazy import lazy_names

DEFAULT = "mlp"
"""The project's default proxy task."""

# Loaded on first use (see optdisco.dsl.lazy): the command line imports optdisco.proxies.cli,
# and `optdisco --help` should not wait for torch.
_EXPORTS = {
    **dict.fromkeys(("SIZES", "PoolTask", "Task", "batched_cross_entropy", "batched_mse", "epoch_indices",
                     "generator", "mix", "seed_list"), ".base"),
    **dict.fromkeys(("get", "names", "register"), ".registry"),
    **dict.fromkeys(("HELDOUT", "SUITE"), ".suites"),
}
BUILTIN = ("quadratic", "mlp", "memory", "digits", "lm",  # the first tasks
           "rnn", "attention", "deepnet", "denoise",  # the selection suite's other tasks
           "tanhnet", "autoencoder", "gru")  # held-out tasks
"""The modules of the built-in tasks; importing one registers its task."""

__all__ = [
    "DEFAULT", "HELDOUT", "PoolTask", "SIZES", "SUITE", "Task", "batched_cross_entropy", "batched_mse",
    "epoch_indices", "generator", "get", "mix", "names", "register", "seed_list",
]


def _register_builtin() -> None:
    """Every built-in task is registered before the first name is used."""
    for module in BUILTIN:
        importlib.import_module(f".{module}", __name__)


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, before=_register_builtin)
