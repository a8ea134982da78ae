"""A step's cost estimated from a program, without running it: bytes moved and flops per
parameter element of one step, over the reference model of :mod:`optdisco.dsl.memory`.

The model is a fused elementwise kernel per parameter (what ``compile=True`` generates) plus
one extra pass for each value that cannot be fused:

- **bytes**: ``w``, ``g`` (and ``hess_diag``, ``g_probe``) read once, ``w`` written once, each state the
  parameter's routing reaches read once and written once at its storage size (float32: 4 bytes
  per element; 8-bit: 1 byte plus a 4-byte absmax per 256, plus the runtime's unfused decode
  and re-encode, :data:`QUANT_BYTES` and :data:`QUANT_FLOPS` per element); a reduction, normalization or
  matrix operation reads its tensor operands again, and its tensor result is written and read
  back (``orthogonalize`` with ``k`` steps: ``3k`` such passes); a model-wide reduction
  (``global_norm``, ``clip_by_global_norm``, …) counts as a reduction, since the step cannot fuse
  across it; global states are one scalar per model and cost nothing per element;
- **flops**: one per element for each elementwise operation (``ema`` and ``lerp`` 3, ``clip``
  2), one per operand element for reductions and normalizations, ``2abd`` for an
  ``a×b @ b×d`` product, ``k(4m²n + 2m³)`` for Newton–Schulz on an ``m×n`` matrix (``m ≤ n``),
  and ``10n³`` for an eigendecomposition, QR, SVD or matrix power of size ``n``.

Statements in branches that the parameter's shape and role decide are counted only where
taken; branches that depend on values or ``t`` are both counted (an upper bound, as for
periodic preconditioner updates). ``benchmarks/cost_rank.py`` compares the estimate's ranking
of library programs with measured step times (Kendall τ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checker import check
from .analysis import reached, reached_states, shape_env
from .layout import view_shape
from .memory import REFERENCE_MODEL
from .primitives import ELEMENTWISE, mode_sizes
from .program import BinOp, Call, Name, Num, Program, Unary
from .runtime import Q_BLOCK, Q_MIN_NUMEL

FLOPS = {"ema": 3, "lerp": 3, "clip": 2}
QUANT_BYTES = 40
QUANT_FLOPS = 20
"""Per element of an 8-bit state, on top of its codes: the runtime decodes and re-encodes it
unfused (a float copy, block absmax, normalized values, a code-book search over 256 codes and
the int64 indices): about ten 4-byte passes and twenty operations."""
MATRIX_FACTOR = 10
"""Flops of an eigendecomposition, QR, SVD or matrix power of size n, in units of n³."""


@dataclass(frozen=True)
class Cost:
    bytes_per_element: float
    flops_per_element: float


def _size(sym, rows, cols, shape=()) -> int:
    d = {"1": 1, "r": rows, "c": cols, **mode_sizes(shape)}
    return d[sym[0]] * d[sym[1]]


def _param_cost(program: Program, info, shape, role) -> tuple[float, float]:
    rows, cols = view_shape(tuple(shape))
    n_param = rows * cols
    need = reached_states(program, shape, role)
    moved = 0.0
    flops = 0.0

    def dims(e):
        t = info.types.get(id(e))
        if t is None:
            return (1, 1)
        d = {"1": 1, "r": rows, "c": cols, **mode_sizes(shape)}
        return d[t.shape[0]], d[t.shape[1]]

    def numel(e) -> int:
        a, b = dims(e)
        return a * b

    def expr(e):
        nonlocal moved, flops
        if isinstance(e, (Num, Name)):
            return
        if isinstance(e, Unary):
            expr(e.operand)
            flops += numel(e)
            return
        if isinstance(e, BinOp):
            expr(e.left)
            expr(e.right)
            if e.op == "@":
                a, b = dims(e.left)
                _, d = dims(e.right)
                flops += 2 * a * b * d
                moved += 4 * (numel(e.left) + numel(e.right) + 2 * numel(e))
            else:
                flops += numel(e)
            return
        if isinstance(e, Call):
            for a in e.args:
                expr(a)
            tensors = [a for a in e.args if numel(a) > 1]
            if e.fn in ELEMENTWISE:
                flops += FLOPS.get(e.fn, 1) * numel(e)
                return
            operand = sum(numel(a) for a in tensors)
            if e.fn in ("matmul",):
                a, b = dims(e.args[0])
                _, d = dims(e.args[1])
                flops += 2 * a * b * d
            elif e.fn == "orthogonalize":
                m, n = sorted(dims(e.args[0]))
                k = int(e.args[1].value) if len(e.args) > 1 and isinstance(e.args[1], Num) else 5
                flops += k * (4 * m * m * n + 2 * m ** 3)
                moved += 4 * 3 * k * 2 * numel(e)
            elif e.fn in ("mode_gram", "mode_mul"):  # X_(k)·X_(k)ᵀ or A·X_(k): d_k multiply-adds per element of x
                flops += 2 * numel(e.args[0]) * dims(e if e.fn == "mode_gram" else e.args[1])[0]
            elif e.fn in ("eigvecs", "matpow", "qr_q", "svd_u", "svd_v"):
                n = max(max(dims(a)) for a in tensors) if tensors else 1
                flops += MATRIX_FACTOR * n ** 3
            else:  # reductions, normalizations, transposes, permutations, identities
                flops += operand
            moved += 4 * (operand + 2 * numel(e))

    for e, _ in reached(program.body, shape_env(shape, role)):
        expr(e)
    moved += 4 * n_param * (3 + (1 if program.uses_hess_diag else 0) + (1 if program.uses_probe else 0))  # read w, g (hess_diag, g_probe); write w
    for s in program.param_states:
        if s.name not in need:
            continue
        n = _size(info.state_types[s.name].shape, rows, cols, shape)
        if s.storage != "float" and n >= Q_MIN_NUMEL:
            moved += 2 * (1 + 4 / Q_BLOCK) * n + QUANT_BYTES * n
            flops += QUANT_FLOPS * n
        else:
            moved += 2 * 4 * n
    return moved, flops


def step_cost(program: Program, model=REFERENCE_MODEL) -> Cost:
    """Estimated bytes moved and flops per parameter element of one step over ``model``."""
    info = check(program)
    total_b = total_f = 0.0
    for _, shape, role in model:
        b, f = _param_cost(program, info, shape, role)
        total_b += b
        total_f += f
    elements = sum(math.prod(shape) for _, shape, _ in model)
    return Cost(total_b / elements, total_f / elements)
