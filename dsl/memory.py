"""Optimizer state memory computed from a program, without running it: the memory objective.

For each parameter of a model the bytes of state are summed over the states its routing can
reach (if-conditions on the parameter's shape and role decided, others counting both branches,
closed over the states' initialisers — the rule the exported optimizer allocates by), each state
at its symbolic shape (``r×c``, ``r×1``, ``1×c``, ``r×r``, ``c×c``, ``1×1`` of the parameter's
2-D view) and storage:

- ``float``: ``numel × element size`` of the parameter's dtype;
- ``q8``/``uq8``: one byte per element plus one absmax per block of 256 elements (in the
  parameter's dtype); a state with fewer than 4096 elements is kept unquantized, as
  bitsandbytes keeps small tensors (``optdisco.dsl.runtime.Q_BLOCK``, ``Q_MIN_NUMEL``);

plus a float32 step counter (4 bytes) for a parameter whose routing reads ``t``. A global
(model-wide) state is one scalar per model, kept in the parameter groups rather than in any
parameter's state, and counts 0 bytes per element.

The memory objective is the total over a stated reference model divided by its number of
parameter elements: :data:`REFERENCE_MODEL`, the shapes of a small byte-level GPT (vocabulary
256, width 128, two blocks with a 4× MLP, untied head; 460,416 elements in 17 tensors), float32. It mixes
embedding, hidden, head and vector parameters, matrices above and below the 8-bit size
threshold, so routing (Muon's rule only for hidden matrices), factored states (Adafactor) and
quantized states all count. ``tests/test_dsl_memory.py`` checks the figure against the
bytes of the ``state`` an exported optimizer holds after a step, for every library program.
"""

from __future__ import annotations

import math

from .analysis import reached_states
from .checker import check
from .layout import view_shape
from .primitives import mode_sizes
from .program import Name, Program, walk_exprs
from .runtime import Q_BLOCK, Q_MIN_NUMEL

STEP_BYTES = 4
"""The exported optimizer's step counter: a float32 scalar per parameter that reads ``t``."""


def _gpt(vocab: int = 256, width: int = 128, blocks: int = 2, mlp: int = 4) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    out = [("embed", (vocab, width), "embedding")]
    for b in range(blocks):
        out += [
            (f"block{b}.norm1", (width,), "vector"),
            (f"block{b}.qkv", (3 * width, width), "hidden"),
            (f"block{b}.proj", (width, width), "hidden"),
            (f"block{b}.norm2", (width,), "vector"),
            (f"block{b}.up", (mlp * width, width), "hidden"),
            (f"block{b}.up_bias", (mlp * width,), "vector"),
            (f"block{b}.down", (width, mlp * width), "hidden"),
        ]
    out += [("norm", (width,), "vector"), ("head", (vocab, width), "head")]
    return tuple(out)


REFERENCE_MODEL = _gpt()
"""(name, shape, role) of each parameter of the reference model the memory objective is
stated for: a byte-level GPT, vocabulary 256, width 128, two blocks, 4× MLP, untied head."""


def _numel(sym: tuple[str, str], rows: int, cols: int, shape: tuple[int, ...] = ()) -> int:
    size = {"1": 1, "r": rows, "c": cols, **mode_sizes(shape)}
    return size[sym[0]] * size[sym[1]]


def param_state_bytes(program: Program, shape: tuple[int, ...], role: str, element_size: int = 4) -> int:
    """Bytes of optimizer state for one parameter of ``shape`` and ``role`` (module docstring)."""
    info = check(program)
    rows, cols = view_shape(tuple(shape))
    need = reached_states(program, shape, role)
    total = 0
    for s in program.param_states:  # global states live in the parameter group: 0 per element
        if s.name not in need:
            continue
        n = _numel(info.state_types[s.name].shape, rows, cols, shape)
        if s.storage != "float" and n >= Q_MIN_NUMEL:
            total += n + math.ceil(n / Q_BLOCK) * element_size
        else:
            total += n * element_size
    reads_t = any(isinstance(e, Name) and e.id == "t" for e in walk_exprs(program))
    if reads_t and "t" in need:
        total += STEP_BYTES
    return total


def state_bytes(program: Program, model=REFERENCE_MODEL, element_size: int = 4) -> float:
    """Bytes of optimizer state per parameter element over ``model`` ((name, shape, role)
    triples; default :data:`REFERENCE_MODEL`): the memory objective."""
    total = sum(param_state_bytes(program, shape, role, element_size) for _, shape, role in model)
    elements = sum(math.prod(shape) for _, shape, _ in model)
    return total / elements


def model_elements(model=REFERENCE_MODEL) -> int:
    return sum(math.prod(shape) for _, shape, _ in model)
