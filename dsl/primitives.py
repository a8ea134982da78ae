"""The primitives of the language: names, arity, shape rules, and families for mutation.

Every value has a type: a kind (``num`` or ``bool``), a symbolic shape of the parameter's 2-D
view and whether it is *static* (known before the step runs: constants, hyperparameters, ``t``
and the parameter's shape). The 2-D view of a parameter of shape ``(d0, d1, ...)`` is
``rows × cols = d0 × (d1·d2·…)``; a vector ``(n,)`` is ``n × 1``; a scalar parameter ``1 × 1``.
A shape is a pair of symbols from ``"1"``, ``"r"`` (rows) and ``"c"`` (cols), and ``"d1"``–``"d3"``
(the sizes of modes 1–3 of the parameter's real shape, for the per-mode primitives at the end);
``("1", "1")`` is a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .layout import ROLES, SHAPE_INPUTS  # noqa: F401  (re-exported)

Shape = tuple[str, str]
SCALAR: Shape = ("1", "1")
PARAM: Shape = ("r", "c")


@dataclass(frozen=True)
class Type:
    kind: str  # "num" | "bool"
    shape: Shape = SCALAR
    static: bool = False

    @property
    def is_scalar(self) -> bool:
        return self.shape == SCALAR

    def show(self) -> str:
        if self.kind == "bool":
            return "a condition"
        if self.is_scalar:
            return "a scalar"
        return f"a {self.shape[0]}×{self.shape[1]} tensor"


class ShapeError(Exception):
    """Raised by a shape rule; the checker turns it into a located DSLError."""

    def __init__(self, message: str, arg: int | None = None):
        super().__init__(message)
        self.arg = arg


def broadcast(a: Shape, b: Shape, what: str = "operands") -> Shape:
    out = []
    for x, y in zip(a, b):
        if x == y or y == "1":
            out.append(x)
        elif x == "1":
            out.append(y)
        else:
            raise ShapeError(f"{what} have shapes {a[0]}×{a[1]} and {b[0]}×{b[1]}, which do not broadcast")
    return (out[0], out[1])


def _num(ts: Sequence[Type], fn: str) -> None:
    for i, t in enumerate(ts):
        if t.kind != "num":
            raise ShapeError(f"{fn} needs a number or tensor as argument {i + 1}, got a condition", i)


def _elementwise(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        shape = ts[0].shape
        for t in ts[1:]:
            shape = broadcast(shape, t.shape, f"the arguments of {name}")
        return Type("num", shape, all(t.static for t in ts))

    return rule


def _reduce(name: str, axis: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        shape = ts[0].shape
        for t in ts[1:]:
            shape = broadcast(shape, t.shape, f"the arguments of {name}")
        if ts[0].static and all(t.static for t in ts):
            raise ShapeError(f"{name} reduces a tensor, but its argument is a static scalar", 0)
        if axis == "all":
            out = SCALAR
        elif axis == "row":  # one value per row
            out = (shape[0], "1")
        else:  # one value per column
            out = ("1", shape[1])
        return Type("num", out, False)

    return rule


def _same_shape_tensor(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        if ts[0].is_scalar:
            raise ShapeError(f"{name} is a matrix operation and needs a tensor, got a scalar", 0)
        for i, t in enumerate(ts[1:], 1):
            if not t.static:
                raise ShapeError(f"argument {i + 1} of {name} must be static (a constant or hyperparameter)", i)
            if not t.is_scalar:
                raise ShapeError(f"argument {i + 1} of {name} must be a scalar", i)
        return Type("num", ts[0].shape, False)

    return rule


def _square(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        t = _same_shape_tensor(name)(ts)
        if t.shape[0] != t.shape[1]:
            raise ShapeError(f"{name} needs a square matrix, got {t.shape[0]}×{t.shape[1]}", 0)
        return t

    return rule


def _transpose(ts: Sequence[Type]) -> Type:
    _num(ts, "transpose")
    if ts[0].is_scalar:
        raise ShapeError("transpose is a matrix operation and needs a tensor, got a scalar", 0)
    return Type("num", (ts[0].shape[1], ts[0].shape[0]), False)


def matmul_rule(ts: Sequence[Type]) -> Type:
    _num(ts, "matmul")
    a, b = ts
    for i, t in enumerate(ts):
        if t.is_scalar:
            raise ShapeError("matmul is a matrix operation and needs tensors, got a scalar", i)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(
            f"matmul of {a.shape[0]}×{a.shape[1]} and {b.shape[0]}×{b.shape[1]}: inner dimensions differ"
        )
    return Type("num", (a.shape[0], b.shape[1]), False)


def _eye(axis: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, f"eye_{axis}")
        s = ts[0].shape[0] if axis == "rows" else ts[0].shape[1]
        return Type("num", (s, s), False)

    return rule


def _like(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        return Type("num", ts[0].shape, False)

    return rule


def _where(ts: Sequence[Type]) -> Type:
    c, a, b = ts
    if c.kind != "bool":
        raise ShapeError("the first argument of where must be a condition (a comparison)", 0)
    _num(ts[1:], "where")
    shape = broadcast(broadcast(a.shape, b.shape, "the branches of where"), c.shape, "where's condition and branches")
    return Type("num", shape, c.static and a.static and b.static)


@dataclass(frozen=True)
class Primitive:
    name: str
    min_args: int
    max_args: int
    rule: Callable[[Sequence[Type]], Type]
    family: str  # mutation swaps a primitive for another of the same family
    doc: str


_P: list[Primitive] = []


def _add(name, n, rule, family, doc, max_args=None):
    _P.append(Primitive(name, n, n if max_args is None else max_args, rule, family, doc))


for _n, _d in [
    ("sign", "sign of x (0 at 0)"),
    ("abs", "|x|"),
    ("sqrt", "square root"),
    ("rsqrt", "1/sqrt(x)"),
    ("square", "x²"),
    ("exp", "eˣ"),
    ("log", "natural logarithm"),
    ("tanh", "hyperbolic tangent"),
    ("relu", "max(x, 0)"),
    ("floor", "largest integer ≤ x"),
    ("cos", "cosine (radians); for t-schedules such as cosine or restart decay"),
]:
    _add(_n, 1, _elementwise(_n), "unary", _d)

_add("max", 2, _elementwise("max"), "binary", "elementwise maximum")
_add("min", 2, _elementwise("min"), "binary", "elementwise minimum")
_add("clip", 3, _elementwise("clip"), "clip", "clip(x, lo, hi): x limited to [lo, hi]")
_add("ema", 3, _elementwise("ema"), "mix", "ema(a, x, beta) = beta·a + (1−beta)·x")
_add("lerp", 3, _elementwise("lerp"), "mix", "lerp(a, b, w) = a + w·(b − a)")
_add("where", 3, _where, "where", "where(cond, a, b): a where cond holds, else b")

for _n, _d in [
    ("sum", "sum of all elements"),
    ("mean", "mean of all elements"),
    ("rms", "root mean square of all elements"),
    ("norm", "l2 (Frobenius) norm"),
    ("maxabs", "largest |x|"),
    ("std", "standard deviation of all elements (Bessel-corrected, as torch.std)"),
]:
    _add(_n, 1, _reduce(_n, "all"), "reduce", _d)
_add("norm_lower_bound", 1, _reduce("norm_lower_bound", "all"), "spectral",
     "a lower bound on the spectral norm of a matrix, PSGD's estimate: |x|max · ‖x·v‖ for v the normalized "
     "largest column (or row) of x, times x")
_add("dot", 2, _reduce("dot", "all"), "reduce2", "sum of a·b")
_add("cosine", 2, _reduce("cosine", "all"), "reduce2", "cosine similarity of a and b (whole tensors)")
_add("quantile", 2, _reduce("quantile", "all"), "quantile", "quantile(x, q): the q-quantile of x's elements")
for _stat in ("sum", "mean", "rms", "norm", "std", "maxabs"):
    _add("row" + _stat, 1, _reduce("row" + _stat, "row"), "rowreduce", f"{_stat} of each row (one value per row)")
    _add("col" + _stat, 1, _reduce("col" + _stat, "col"), "colreduce", f"{_stat} of each column (one value per column)")

_add("normalize", 1, _same_shape_tensor("normalize"), "normalize", "x / max(norm(x), 1e-12)")
_add("normalize_rows", 1, _same_shape_tensor("normalize_rows"), "normalize", "each row divided by its l2 norm")
_add("normalize_cols", 1, _same_shape_tensor("normalize_cols"), "normalize", "each column divided by its l2 norm")
_add(
    "orthogonalize",
    1,
    _same_shape_tensor("orthogonalize"),
    "normalize",
    "Newton–Schulz orthogonalization (quintic 3.4445, −4.7750, 2.0315; optional step count)",
    max_args=2,
)
_add("transpose", 1, _transpose, "transpose", "matrix transpose")
_add("matmul", 2, matmul_rule, "matmul", "matrix product (also written a @ b)")
_add("eye_rows", 1, _eye("rows"), "eye", "identity matrix of size rows × rows")
_add("eye_cols", 1, _eye("cols"), "eye", "identity matrix of size cols × cols")
_add("eigvecs", 1, _square("eigvecs"), "eig", "eigenvectors of a symmetric matrix, as columns, ascending eigenvalues")
_add("matpow", 2, _square("matpow"), "matpow", "matpow(A, p): A^p of a symmetric matrix via its eigendecomposition")
_add("qr_q", 1, _square("qr_q"), "eig", "Q factor of the QR decomposition of a square matrix")
_add("zeros_like", 1, _like("zeros_like"), "like", "zeros shaped like x")
_add("ones_like", 1, _like("ones_like"), "like", "ones shaped like x")

# -- matrix factors and permutations (added for SOAP and Conda) ----------------------------------
def _factor(name: str, axis: int):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        if ts[0].is_scalar:
            raise ShapeError(f"{name} is a matrix operation and needs a tensor, got a scalar", 0)
        s = ts[0].shape[axis]
        return Type("num", (s, s), False)

    return rule


def _sorting_perm(ts: Sequence[Type]) -> Type:
    _num(ts, "sorting_perm")
    a, b = ts[0].shape
    if (a == "1") == (b == "1"):
        raise ShapeError(
            f"sorting_perm needs a row (1×n) or column (n×1) of values, got {ts[0].show()}", 0
        )
    s = b if a == "1" else a
    return Type("num", (s, s), False)


_add("svd_u", 1, _factor("svd_u", 0), "svd",
     "left singular vectors of x as the columns of a rows×rows matrix, by descending singular value")
_add("svd_v", 1, _factor("svd_v", 1), "svd",
     "right singular vectors of x as the columns of a cols×cols matrix, by descending singular value")
_add("sorting_perm", 1, _sorting_perm, "perm",
     "the permutation matrix P that sorts a row (x @ P) or a column (transpose(P) @ x) in descending order")
_add("eye_like", 1, _same_shape_tensor("eye_like"), "like",
     "a matrix shaped like x with ones on its main diagonal and zeros elsewhere")


# -- triangular matrices -------------------------------------------------------------------------
def _solve_triangular(ts: Sequence[Type]) -> Type:
    _num(ts, "solve_triangular")
    a, b = ts[0], ts[1]
    for i, t in enumerate((a, b)):
        if t.is_scalar:
            raise ShapeError("solve_triangular is a matrix operation and needs tensors, got a scalar", i)
    if a.shape[0] != a.shape[1]:
        raise ShapeError(f"solve_triangular needs a square matrix A, got {a.shape[0]}×{a.shape[1]}", 0)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"solve_triangular of {a.shape[0]}×{a.shape[1]} and {b.shape[0]}×{b.shape[1]}: "
                         "A's columns differ from B's rows", 1)
    return Type("num", b.shape, False)


_add("triu", 1, _same_shape_tensor("triu"), "triangle", "upper triangle of x (the main diagonal and above; zeros below)")
_add("tril", 1, _same_shape_tensor("tril"), "triangle", "lower triangle of x (the main diagonal and below; zeros above)")
_add("solve_triangular", 2, _solve_triangular, "solve",
     "solve_triangular(A, B[, upper]): X with A·X = B for triangular A, reading A's lower triangle, or its upper "
     "triangle when the constant upper is 1 (as torch.linalg.solve_triangular)", max_args=3)

# -- seeded noise (deterministic: a function of the seed, the step, the call site and the element) -
def _noise(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        if ts[0].static:
            raise ShapeError(f"{name} needs a tensor computed from w or g (its shape is the noise's), "
                             "got a static scalar", 0)
        return Type("num", ts[0].shape, False)

    return rule


_add("randn_like", 1, _noise("randn_like"), "noise",
     "standard Gaussian noise shaped like x, a function of (seed, t, parameter, call site)")
_add("rademacher_like", 1, _noise("rademacher_like"), "noise",
     "±1 with equal probability, shaped like x, a function of (seed, t, parameter, call site)")
RANDOM = frozenset({"randn_like", "rademacher_like"})
"""Primitives that draw seeded noise: their step function takes a ``seed``."""

# -- model-wide values: reductions over every parameter of the model ------------------------------
def _global_reduce(name: str):
    def rule(ts: Sequence[Type]) -> Type:
        _num(ts, name)
        shape = ts[0].shape
        for t in ts[1:]:
            shape = broadcast(shape, t.shape, f"the arguments of {name}")
        if all(t.static for t in ts):
            raise ShapeError(f"{name} reduces tensors over the model, but its argument is a static scalar", 0)
        return Type("num", SCALAR, False)

    return rule


def _clip_by_global_norm(ts: Sequence[Type]) -> Type:
    _num(ts, "clip_by_global_norm")
    if ts[0].static:
        raise ShapeError("clip_by_global_norm clips tensors over the model, but its argument is a static scalar", 0)
    if not ts[1].is_scalar:
        raise ShapeError(f"the maximum norm of clip_by_global_norm must be a scalar, got {ts[1].show()}", 1)
    return Type("num", ts[0].shape, False)


for _n, _d in [
    ("global_sum", "sum of x's elements over every parameter of the group (a model-wide scalar)"),
    ("global_mean", "mean of x's elements over every parameter of the group"),
    ("global_norm", "l2 norm of x over every parameter of the group: sqrt(Σ over parameters of sum(x²))"),
    ("global_max", "largest element of x over every parameter of the group"),
]:
    _add(_n, 1, _global_reduce(_n), "global", _d)
_add("global_dot", 2, _global_reduce("global_dot"), "global2", "Σ over every parameter of the group of sum(a·b)")
_add("clip_by_global_norm", 2, _clip_by_global_norm, "globalclip",
     "clip_by_global_norm(x, c): x · min(1, c / (global_norm(x) + 1e-6)), as torch.nn.utils.clip_grad_norm_")
GLOBAL = frozenset({"global_sum", "global_mean", "global_norm", "global_max", "global_dot", "clip_by_global_norm"})
"""Primitives whose value depends on every parameter of the group: the step synchronises there."""

PRIMITIVES: dict[str, Primitive] = {p.name: p for p in _P}

ELEMENTWISE = frozenset(p.name for p in _P if p.family in ("unary", "binary", "clip", "mix", "where")) | {
    "zeros_like", "ones_like"}
"""Primitives whose result at an element reads only that element of each argument."""

# Names every program can read. Tensors have the parameter's shape; the rest are static.
INPUT_TYPES: dict[str, Type] = {
    "w": Type("num", PARAM, False),
    "g": Type("num", PARAM, False),
    "hess_diag": Type("num", PARAM, False),
    "t": Type("num", SCALAR, True),
    "rows": Type("num", SCALAR, True),
    "cols": Type("num", SCALAR, True),
    "ndim": Type("num", SCALAR, True),
    "numel": Type("num", SCALAR, True),
    "is_matrix": Type("bool", SCALAR, True),
    "is_vector": Type("bool", SCALAR, True),
    "is_embedding": Type("bool", SCALAR, True),
    "is_head": Type("bool", SCALAR, True),
    "is_hidden": Type("bool", SCALAR, True),
}
INPUT_DOCS = {
    "w": "the parameter",
    "g": "its gradient",
    "hess_diag": "a Hutchinson estimate of the Hessian diagonal, supplied by the runner",
    "t": "the step count, from 1",
    "rows": "rows of the parameter's 2-D view (its first dimension)",
    "cols": "columns of the 2-D view (the product of the other dimensions)",
    "ndim": "the parameter's number of dimensions",
    "numel": "the parameter's number of elements",
    "is_matrix": "ndim >= 2",
    "is_vector": "ndim <= 1",
    "is_embedding": "the parameter is an embedding table (its role)",
    "is_head": "the parameter is the output layer (its role)",
    "is_hidden": "a matrix that is neither embedding nor head: where Muon-style rules apply",
}
# ROLES and SHAPE_INPUTS (inputs that describe the parameter, its shape and role, rather than its
# values) are defined with the parameter layout, which the exported optimizer carries a copy of.


def families() -> dict[str, list[str]]:
    """Primitive names grouped by family (same arity and shape behaviour)."""
    out: dict[str, list[str]] = {}
    for p in _P:
        out.setdefault(p.family, []).append(p.name)
    return out


# -- operators -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Operator:
    """An operator of the language: how it is written, how tightly it binds (parser and printer),
    its kind (the checker's rules), the runtime function that computes it (static and tensor
    values alike), whether Python and torch spell it as an infix operator on tensors, and its
    sympy class where sympy has no Python operator for it."""

    symbol: str
    prec: int  # binding strength: higher binds tighter
    kind: str  # "arith", "compare", "logic" (binary) or "unary"
    runtime: str
    infix: bool = False
    sympy: str | None = None


_OPS = (
    Operator("or", 1, "logic", "or_", sympy="Or"),
    Operator("and", 2, "logic", "and_", sympy="And"),
    Operator("not", 3, "unary", "not_", sympy="Not"),
    Operator("<", 4, "compare", "lt", True, "StrictLessThan"),
    Operator("<=", 4, "compare", "le", True, "LessThan"),
    Operator(">", 4, "compare", "gt", True, "StrictGreaterThan"),
    Operator(">=", 4, "compare", "ge", True, "GreaterThan"),
    Operator("==", 4, "compare", "eq", True, "Equality"),
    Operator("!=", 4, "compare", "ne", True, "Unequality"),
    Operator("+", 5, "arith", "add", True),
    Operator("-", 5, "arith", "sub", True),
    Operator("*", 6, "arith", "mul", True),
    Operator("/", 6, "arith", "div", True),
    Operator("@", 6, "arith", "matmul"),
    Operator("%", 6, "arith", "mod", sympy="Mod"),
    Operator("neg", 7, "unary", "neg"),  # unary minus, written "-"
    Operator("**", 8, "arith", "pow", True),
)
BINARY_OPERATORS = {o.symbol: o for o in _OPS if o.kind != "unary"}
UNARY_OPERATORS = {o.symbol: o for o in _OPS if o.kind == "unary"}
"""The language's operators by symbol (unary minus is ``neg``; its tree node's op is ``-``)."""


def operators(kind: str) -> frozenset:
    """The symbols of the binary operators of one kind (``arith``, ``compare``, ``logic``)."""
    return frozenset(s for s, o in BINARY_OPERATORS.items() if o.kind == kind)


def operators_at(prec: int) -> frozenset:
    """The symbols of the binary operators that bind with strength ``prec``."""
    return frozenset(s for s, o in BINARY_OPERATORS.items() if o.prec == prec)
# -- per-mode factors of the parameter's real shape (Shampoo's and SOAP's per-mode form) ---------
# The parameter (d0, d1, …) is seen as the order-4 tensor (d0, d1, d2, d3), a missing mode of size 1.
# Mode 0 is the view's rows ("r"); modes 1-3 have their own symbols ("d1", "d2", "d3"), so a mode-2
# factor cannot be mixed with a rows × rows or cols × cols matrix by mistake. The mode k is the
# last argument and must be an integer constant (the checker reads it: ``mode_rule``).
MAX_MODES = 4
MODE = frozenset({"mode_gram", "mode_mul", "eye_mode"})
"""Primitives on mode k of the parameter's real shape: their step function passes its dimensions."""


def mode_symbol(k: int) -> str:
    """The shape symbol of mode k's size d_k."""
    return "r" if k == 0 else f"d{k}"


def mode_sizes(shape: tuple[int, ...]) -> dict[str, int]:
    """The size of every mode symbol for a parameter of ``shape`` (for the memory and cost models)."""
    dims = tuple(int(d) for d in shape)[:MAX_MODES] + (1,) * max(0, MAX_MODES - len(shape))
    return {mode_symbol(k): dims[k] for k in range(1, MAX_MODES)}


def mode_rule(name: str, ts: Sequence[Type], k: int) -> Type:
    """The type of a per-mode primitive whose mode is the constant k (checked by the caller)."""
    _num(ts, name)
    x = ts[0]
    if x.shape != PARAM:
        raise ShapeError(f"{name} works on the parameter's real shape and needs a tensor shaped like w "
                         f"(r×c), got {x.show()}", 0)
    s = mode_symbol(k)
    if name == "mode_mul":
        a = ts[1]
        if a.shape != (s, s):
            raise ShapeError(f"the factor of mode_mul along mode {k} must be {s}×{s}, got {a.show()}", 1)
        return Type("num", PARAM, False)
    return Type("num", (s, s), False)


def _mode_only(name: str):
    def rule(ts: Sequence[Type]) -> Type:  # pragma: no cover - the checker calls mode_rule
        raise ShapeError(f"{name} needs its mode as a constant; the checker types it with mode_rule")

    return rule


_add("mode_gram", 2, _mode_only("mode_gram"), "modegram",
     "mode_gram(x, k): the mode-k Gram matrix X_(k)·X_(k)ᵀ of x in the parameter's real shape, d_k × d_k "
     "(mode 0: x @ transpose(x)); k a constant from 0 to 3, a missing mode of size 1")
_add("mode_mul", 3, _mode_only("mode_mul"), "modemul",
     "mode_mul(x, A, k): the mode-k product x ×_k A (A applied to every mode-k fibre of x), shaped like x; "
     "A d_k × d_k")
_add("eye_mode", 2, _mode_only("eye_mode"), "modeeye",
     "eye_mode(x, k): the d_k × d_k identity, d_k the size of mode k of the parameter (for state initialisers)")
PRIMITIVES.update((p.name, p) for p in _P[-3:])
