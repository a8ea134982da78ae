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

from .base import (
    ROLES, SIZES, PoolTask, Task, batched_cross_entropy, batched_mse, epoch_indices, generator, mix, seed_list,
)
from .registry import get, names, register
from .suites import HELDOUT, SUITE

from . import quadratic, mlp, memory, digits, lm  # noqa: E402,F401  (register the built-in tasks)
from . import rnn, attention, deepnet, denoise  # noqa: E402,F401  (the selection suite's tasks)
from . import tanhnet, autoencoder, gru  # noqa: E402,F401  (held-out tasks)

DEFAULT = "mlp"
"""The project's default proxy task."""

__all__ = [
    "DEFAULT", "HELDOUT", "PoolTask", "ROLES", "SIZES", "SUITE", "Task", "batched_cross_entropy", "batched_mse",
    "epoch_indices", "generator", "get", "mix", "names", "register", "seed_list",
]
