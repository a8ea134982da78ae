"""A parameter's layout as a step function sees it, shared by evaluation
(:mod:`optdisco.dsl.step`) and the exported optimizer (:mod:`optdisco.dsl.optimizer_base`).

A step function works on the member layout ``[M, R, C]``: ``R × C`` is the parameter's 2-D view
(``view_shape``), ``M`` the members (1 outside evaluation). States with the parameter's shape are
kept by callers in the parameter's own shape (as torch.optim does), others in their 2-D form;
``to_step_state`` and ``from_step_state`` convert between the two. Quantized states are stored
as parts named ``"name.part"``, which the runtime reads and writes as they are.

This module imports only ``math`` (no torch: the language's front end reads ROLES and
SHAPE_INPUTS from it): an exported file carries a copy of it.
"""

import math

ROLES = ("hidden", "embedding", "head", "vector")
# The static per-parameter inputs of a step function, in its argument order.
SHAPE_INPUTS = ("rows", "cols", "ndim", "numel", "is_matrix", "is_vector", "is_embedding", "is_head", "is_hidden")


def view_shape(shape):
    """Rows and columns of a parameter's 2-D view: (d0, d1·d2·…); a vector is n × 1."""
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), int(math.prod(int(d) for d in shape[1:]))


def default_role(shape):
    return "hidden" if len(shape) >= 2 else "vector"


def shape_info(shape, role=None, ndim=None):
    """The values of SHAPE_INPUTS for a parameter of ``shape`` (without a member dimension) and
    ``role`` (None: ``default_role``); ``ndim`` (default ``len(shape)``) may be given as an int
    that carries the shape too (the per-mode primitives' ``runtime.Ndim``)."""
    rows, cols = view_shape(shape)
    ndim = len(shape) if ndim is None else ndim
    role = role or default_role(shape)
    is_matrix = ndim >= 2
    return (rows, cols, ndim, rows * cols, is_matrix, not is_matrix, role == "embedding", role == "head",
            is_matrix and role == "hidden")


def to_step_state(state, lay, param_states, batched=False):
    """A parameter's stored state as the step function reads it: states in ``param_states``
    reshaped to ``lay`` ([M, R, C]); without members (``batched=False``) the 2-D other tensors
    gain the member dimension; quantized parts as they are."""
    return _restate(state, lay, param_states, batched, lambda v: v.unsqueeze(0) if v.dim() >= 2 else v)


def from_step_state(new_state, shape, param_states, batched=False):
    """The step function's new state as it is stored: ``param_states`` in the parameter's
    ``shape``, the others in their 2-D form (with the member dimension when ``batched``)."""
    return _restate(new_state, shape, param_states, batched, lambda v: v.squeeze(0) if v.dim() >= 3 else v)


def _restate(state, shape, param_states, batched, other):
    out = {}
    for k, v in state.items():
        if "." in k:
            out[k] = v
        elif k in param_states:
            out[k] = v.reshape(shape)
        elif not batched and hasattr(v, "dim"):
            out[k] = other(v)
        else:
            out[k] = v
    return out
