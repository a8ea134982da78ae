"""Torch implementations of the language's primitives, used by every compiled step function.

This module imports only ``math`` and ``torch``: an exported optimizer file carries a copy of it,
so evaluation and export run the same code. Values are Python numbers (static scalars) or
tensors in the member layout ``[M, R, C]`` (the 2-D view of a parameter, with a leading member
dimension); scalars computed from tensors are ``[M, 1, 1]``. Operations on two Python numbers
follow IEEE arithmetic (a division by zero gives inf or nan, never an exception).
"""

import math

import torch

Tensor = torch.Tensor
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NORM_EPS = 1e-12


def _t(x):
    return isinstance(x, Tensor)


# -- arithmetic on static scalars (Python numbers or per-member tensors) -------------------------
def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    if _t(a) or _t(b):
        return a / b
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def mod(a, b):
    if _t(a):
        return torch.remainder(a, b)
    if _t(b):
        return torch.remainder(torch.as_tensor(a, dtype=b.dtype, device=b.device), b)
    return math.nan if b == 0 else a % b


def pow(a, b):  # noqa: A001 - the language's ``**``
    if _t(a) or _t(b):
        return a**b
    try:
        r = math.pow(a, b)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf
    return r


def neg(a):
    return -a


def lt(a, b):
    return a < b


def le(a, b):
    return a <= b


def gt(a, b):
    return a > b


def ge(a, b):
    return a >= b


def eq(a, b):
    return a == b


def ne(a, b):
    return a != b


def and_(a, b):
    if _t(a) or _t(b):
        return torch.logical_and(torch.as_tensor(a), torch.as_tensor(b))
    return bool(a) and bool(b)


def or_(a, b):
    if _t(a) or _t(b):
        return torch.logical_or(torch.as_tensor(a), torch.as_tensor(b))
    return bool(a) or bool(b)


def not_(a):
    if _t(a):
        return torch.logical_not(a)
    return not a


def truth(c) -> bool:
    """An if-condition as a Python bool; it must agree across members."""
    if not _t(c):
        return bool(c)
    if c.numel() == 0:
        return False
    first = bool(c.reshape(-1)[0])
    if bool((c != first).any()):
        raise ValueError(
            "an if-condition differs across members: hyperparameters read by if-conditions "
            "must be the same for every member"
        )
    return first


# -- elementwise ---------------------------------------------------------------------------------
def _unary(tfn, ffn):
    def f(x):
        if _t(x):
            return tfn(x)
        try:
            return ffn(x)
        except ValueError:
            return math.nan
        except OverflowError:
            return math.inf

    return f


def _fsign(x):
    return math.nan if math.isnan(x) else float((x > 0) - (x < 0))


def _flog(x):
    if x == 0:
        return -math.inf
    return math.log(x)


def _frsqrt(x):
    if x == 0:
        return math.inf
    return 1.0 / math.sqrt(x)


sign = _unary(torch.sign, _fsign)
abs = _unary(torch.abs, lambda x: math.fabs(x))  # noqa: A001
sqrt = _unary(torch.sqrt, math.sqrt)
rsqrt = _unary(torch.rsqrt, _frsqrt)
square = _unary(torch.square, lambda x: x * x)
exp = _unary(torch.exp, math.exp)
log = _unary(torch.log, _flog)
tanh = _unary(torch.tanh, math.tanh)
relu = _unary(torch.relu, lambda x: x if x > 0 else 0.0 * x)
floor = _unary(torch.floor, lambda x: float(math.floor(x)) if math.isfinite(x) else x)
cos = _unary(torch.cos, math.cos)


def max(a, b):  # noqa: A001
    if not _t(a) and not _t(b):
        return math.nan if (math.isnan(a) or math.isnan(b)) else (a if a >= b else b)
    if not _t(a):
        a, b = b, a
    return torch.maximum(a, torch.as_tensor(b, dtype=a.dtype, device=a.device)) if not _t(b) else torch.maximum(a, b)


def min(a, b):  # noqa: A001
    if not _t(a) and not _t(b):
        return math.nan if (math.isnan(a) or math.isnan(b)) else (a if a <= b else b)
    if not _t(a):
        a, b = b, a
    return torch.minimum(a, torch.as_tensor(b, dtype=a.dtype, device=a.device)) if not _t(b) else torch.minimum(a, b)


def clip(x, lo, hi):
    return min(max(x, lo), hi)


def ema(a, x, beta):
    return beta * a + (1 - beta) * x


def lerp(a, b, w):
    return a + w * (b - a)


def where(c, a, b):
    if not _t(c):
        return a if c else b
    if not _t(a) and not _t(b):
        return torch.where(c, torch.as_tensor(a), torch.as_tensor(b))
    return torch.where(c, a, b)


# -- reductions (keep the [M, R, C] layout) ------------------------------------------------------
_ALL = (-2, -1)


def _axis_stats(dim):
    def s_sum(x):
        return x.sum(dim=dim, keepdim=True)

    def s_mean(x):
        return x.mean(dim=dim, keepdim=True)

    def s_rms(x):
        return x.square().mean(dim=dim, keepdim=True).sqrt()

    def s_norm(x):
        return torch.linalg.vector_norm(x, dim=dim, keepdim=True)

    def s_std(x):
        return x.std(dim=dim, keepdim=True)

    def s_maxabs(x):
        return x.abs().amax(dim=dim, keepdim=True)

    return s_sum, s_mean, s_rms, s_norm, s_std, s_maxabs


# whole-tensor reductions (std is Bessel-corrected over all elements, below)
sum, mean, rms, norm, _std_bessel_per_axis, maxabs = _axis_stats(_ALL)  # noqa: A001


def std(x):
    return x.flatten(-2).std(dim=-1).reshape(x.shape[:-2] + (1, 1))


def dot(a, b):
    return (a * b).sum(dim=_ALL, keepdim=True)


def norm_lower_bound(x):
    """A lower bound on each member's spectral norm (Li's PSGD estimate, as psgd_torch writes it): x is
    scaled by its largest |element|; of the column and the row with the largest norm, the larger one,
    normalized and multiplied through x (xᵀ) once, gives a vector whose norm bounds σ_max from below."""
    big = x.abs().amax(dim=_ALL, keepdim=True)
    a = x / torch.where(big > 0, big, torch.ones_like(big))
    tiny = torch.finfo(a.dtype).tiny
    aa = a * a
    colsq, i = aa.sum(dim=-2).max(dim=-1)  # [M]: the largest column norm², its index
    rowsq, j = aa.sum(dim=-1).max(dim=-1)
    m, r, c = a.shape
    col = torch.gather(a, -1, i.reshape(m, 1, 1).expand(m, r, 1))  # [M, R, 1]
    x0 = col.transpose(-2, -1) @ a  # [M, 1, C]
    x0 = x0 / torch.linalg.vector_norm(x0, dim=_ALL, keepdim=True).clamp_min(tiny)
    bound0 = torch.linalg.vector_norm(x0 @ a.transpose(-2, -1), dim=_ALL, keepdim=True)
    row = torch.gather(a, -2, j.reshape(m, 1, 1).expand(m, 1, c))  # [M, 1, C]
    x1 = a @ row.transpose(-2, -1)  # [M, R, 1]
    x1 = x1 / torch.linalg.vector_norm(x1, dim=_ALL, keepdim=True).clamp_min(tiny)
    bound1 = torch.linalg.vector_norm(a.transpose(-2, -1) @ x1, dim=_ALL, keepdim=True)
    return big * torch.where((colsq > rowsq).reshape(m, 1, 1), bound0, bound1)


def cosine(a, b):
    return dot(a, b) / (norm(a) * norm(b)).clamp_min(NORM_EPS)


def quantile(x, q):
    """The q-quantile of each member's elements, with linear interpolation (as torch.quantile)."""
    flat = x.flatten(-2)
    n = flat.shape[-1]
    s = flat.sort(dim=-1).values
    q_t = torch.as_tensor(q, dtype=x.dtype, device=x.device).reshape(-1, 1).clamp(0, 1)
    pos = q_t * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo.to(x.dtype)
    lo = lo.expand(s.shape[0], 1)
    hi = hi.expand(s.shape[0], 1)
    v = torch.gather(s, -1, lo) * (1 - frac) + torch.gather(s, -1, hi) * frac
    return v.reshape(x.shape[:-2] + (1, 1))


rowsum, rowmean, rowrms, rownorm, rowstd, rowmaxabs = _axis_stats(-1)
colsum, colmean, colrms, colnorm, colstd, colmaxabs = _axis_stats(-2)


def normalize(x):
    return x / norm(x).clamp_min(NORM_EPS)


def normalize_rows(x):
    return x / rownorm(x).clamp_min(NORM_EPS)


def normalize_cols(x):
    return x / colnorm(x).clamp_min(NORM_EPS)


# -- matrix work on the 2-D view -----------------------------------------------------------------
def orthogonalize(x, steps=5):
    """Newton–Schulz iteration towards the nearest semi-orthogonal matrix (Muon's quintic).

    Runs in the input's dtype on X / (‖X‖_F + 1e-7), on the wide orientation."""
    a, b, c = NS_COEFFS
    tall = x.shape[-2] > x.shape[-1]
    X = x.transpose(-2, -1) if tall else x
    X = X / (torch.linalg.vector_norm(X, dim=_ALL, keepdim=True) + 1e-7)
    for _ in range(int(steps)):
        A = X @ X.transpose(-2, -1)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.transpose(-2, -1) if tall else X


def transpose(x):
    return x.transpose(-2, -1)


def matmul(a, b):
    return a @ b


def eye_rows(x):
    n = x.shape[-2]
    return torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[:-2] + (n, n)).clone()


def eye_cols(x):
    n = x.shape[-1]
    return torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[:-2] + (n, n)).clone()


def _sym(x):
    return 0.5 * (x + x.transpose(-2, -1))


# torch has no bfloat16 or float16 kernels for eigh, svd and QR (eigh and QR none on the CPU, eigh none
# on CUDA either): decompositions of such tensors run in float32, as the references (SOAP, Shampoo,
# Conda's GaLore projector) run theirs, and their results are cast back to the input's dtype.
_LOW_PRECISION = (torch.bfloat16, torch.float16)
# Added to the diagonal before eigh, as the official SOAP does: a matrix with exactly zero rows and
# columns (the Gram matrix of a layer over sparse inputs) may make float32 eigh fail to converge.
EIGH_SHIFT = 1e-30


def _decomposable(x):
    return x.float() if x.dtype in _LOW_PRECISION else x


def _eigh(x):
    """Eigenvalues (ascending) and eigenvectors of the symmetric part of x, in float32 or float64.

    As the official SOAP: eigh of x + 1e-30·I, and where that fails to converge in float32, eigh in
    float64 (its results cast back)."""
    s = _sym(_decomposable(x))
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
    try:
        return torch.linalg.eigh(s + EIGH_SHIFT * eye)
    except torch.linalg.LinAlgError:
        if s.dtype == torch.float64:
            raise
        vals, vecs = torch.linalg.eigh(s.double() + EIGH_SHIFT * eye.double())
        return vals.to(s.dtype), vecs.to(s.dtype)


def eigvecs(x):
    return _eigh(x)[1].to(x.dtype)


def matpow(x, p):
    """x^p of the symmetric part of x by eigendecomposition; negative eigenvalues count as 0.
    For a negative power, eigenvalues below n·eps·λ_max (eps of the decomposition's dtype) are
    raised to that floor: they are rounding noise of a singular matrix, and raising them to a
    negative power would give inf or a huge spurious direction (a pseudo-inverse's cut-off, as
    numpy's pinv). A bfloat16 or float16 x is raised in float32 and the result cast back."""
    vals, vecs = _eigh(x)
    if _t(p):
        p = p.reshape(p.shape[:-2] + (1,)) if p.dim() >= 2 else p
    vals = vals.clamp_min(0)
    floor = vals.amax(-1, keepdim=True) * (vals.shape[-1] * torch.finfo(vals.dtype).eps)
    if _t(p):
        vals = torch.where(p < 0, torch.maximum(vals, floor), vals)
    elif p < 0:
        vals = torch.maximum(vals, floor)
    powered = vals**p
    return ((vecs * powered.unsqueeze(-2)) @ vecs.transpose(-2, -1)).to(x.dtype)


def qr_q(x):
    return torch.linalg.qr(_decomposable(x)).Q.to(x.dtype)


def svd_u(x):
    """Left singular vectors (columns, descending singular values), rows × rows."""
    return torch.linalg.svd(_decomposable(x), full_matrices=x.shape[-2] > x.shape[-1]).U.to(x.dtype)


def svd_v(x):
    """Right singular vectors (columns, descending singular values), cols × cols."""
    return torch.linalg.svd(_decomposable(x), full_matrices=x.shape[-1] > x.shape[-2]).Vh.transpose(-2, -1).to(x.dtype)


def sorting_perm(x):
    """Permutation matrix P with P[idx[j], j] = 1, idx the stable descending order of x's values:
    a row x (1×n) is sorted by x @ P, a column (n×1) by transpose(P) @ x."""
    v = x.flatten(-2)
    idx = torch.argsort(v, dim=-1, descending=True, stable=True)
    n = v.shape[-1]
    P = torch.zeros(v.shape[:-1] + (n, n), dtype=x.dtype, device=x.device)
    return P.scatter_(-2, idx.unsqueeze(-2), 1.0)


def eye_like(x):
    r, c = x.shape[-2], x.shape[-1]
    return torch.eye(r, c, dtype=x.dtype, device=x.device).expand(x.shape).clone()


def triu(x):
    return torch.triu(x)


def tril(x):
    return torch.tril(x)


def solve_triangular(a, b, upper=0):
    """X with A·X = B, A triangular (its lower triangle, or its upper one when ``upper`` is 1); a
    bfloat16 or float16 system is solved in float32 and the result cast back, as the decompositions."""
    x = torch.linalg.solve_triangular(_decomposable(a), _decomposable(b).to(_decomposable(a).dtype),
                                      upper=bool(upper))
    return x.to(b.dtype)


def zeros_like(x):
    return torch.zeros_like(x) if _t(x) else 0.0


def ones_like(x):
    return torch.ones_like(x) if _t(x) else 1.0


# -- seeded noise ------------------------------------------------------------------------------------
# Noise is a pure function of (seed, t, call site, element): a counter-based hash, so a member, a
# parameter and a step always see the same numbers, on any device and whatever ran before (resuming
# from a state_dict gives the very noise of an unbroken run). ``seed`` is an int64 tensor [M, 1, 1],
# one per member; callers fold the parameter's index into it (``param_seed``). The hash is Chris
# Wellons' lowbias32 (hash-prospector) on 32-bit words held in int64, with each product taken
# modulo 2^32 in two 16-bit halves so that no int64 product overflows. It is not cryptographic.
_M32 = 0xFFFFFFFF


def _mul32(x, c):
    """(x * c) mod 2^32 for int64 tensors 0 <= x < 2^32 and a constant c < 2^32."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & _M32


def _hash32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def param_seed(seed: int, index: int) -> int:
    """The seed of parameter ``index`` (its position in the model) of a run seeded with ``seed``:
    the low 32 bits of ``seed`` and the index above them."""
    return (int(seed) & _M32) | (int(index) << 32)


def _noise_bits(x, seed, t, site, stream):
    """32 random bits per element of x (int64, x's shape [M, R, C]) for a stream (0, 1, ...)."""
    if seed is None:
        seed = torch.zeros((x.shape[0], 1, 1), dtype=torch.int64, device=x.device)
    key = _hash32(seed & _M32)
    key = _hash32(key ^ ((seed >> 32) & _M32))
    key = _hash32(key ^ (int(t) & _M32))
    key = _hash32(key ^ (int(site) * 4 + int(stream)))
    n = x.shape[-2] * x.shape[-1]
    idx = torch.arange(n, dtype=torch.int64, device=x.device).reshape((1,) + tuple(x.shape[-2:]))
    return _hash32(_hash32(idx & _M32) ^ key)


def _unit(bits, dtype):
    """Bits to a uniform value in (0, 1), never 0 or 1."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (bits.to(work) + 0.5) * (1.0 / 4294967296.0)


def randn_like(x, seed=None, t=1, site=0):
    """Standard Gaussian noise shaped like x (Box–Muller on two hashed streams), x's dtype."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    u1 = _unit(_noise_bits(x, seed, t, site, 0), work)
    u2 = _unit(_noise_bits(x, seed, t, site, 1), work)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.expand(x.shape).to(x.dtype) if z.shape != x.shape else z.to(x.dtype)


def rademacher_like(x, seed=None, t=1, site=0):
    """±1 with equal probability, shaped like x, in x's dtype."""
    bit = (_noise_bits(x, seed, t, site, 0) >> 31) & 1
    z = (2 * bit - 1).to(x.dtype)
    return z.expand(x.shape) if z.shape != x.shape else z


# -- state ---------------------------------------------------------------------------------------
def as_state(value, like):
    """A state's first value as a tensor in the member layout (scalars become [M, 1, 1])."""
    if _t(value):
        if value.dim() < like.dim():
            value = value.reshape((1,) * (like.dim() - value.dim()) + tuple(value.shape))
        if value.shape[0] != like.shape[0]:
            value = value.expand((like.shape[0],) + tuple(value.shape[1:]))
        return value.to(like.dtype).clone()
    return torch.full((like.shape[0], 1, 1), float(value), dtype=like.dtype, device=like.device)


# -- model-wide values ---------------------------------------------------------------------------
# A program that reads global_sum, global_norm, ... runs as one generator per parameter. At each
# model-wide reduction the generator yields (op, partial), its parameter's share as [M, 1, 1]
# tensors; ``lockstep`` combines the shares of every parameter of the group (per member) and sends
# the model-wide value back to each. Global state is computed identically by every generator.
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


def global_part(op, x, y=None):
    """One parameter's share of a model-wide reduction: a tuple of [M, 1, 1] tensors."""
    if op == "dot":
        return (dot(x, y),)
    x = torch.as_tensor(x)
    if op in ("sum", "mean"):
        s = sum(x)
        return (s,) if op == "sum" else (s, torch.full_like(s, float(x.shape[-2] * x.shape[-1])))
    if op == "norm":
        return (x.square().sum(dim=_ALL, keepdim=True),)
    if op == "max":
        return (x.amax(dim=_ALL, keepdim=True),)
    raise ValueError(f"unknown model-wide reduction {op!r}")


def global_total(op, parts):
    """The model-wide value from every parameter's share (sums, or the largest for max)."""
    acc = list(parts[0])
    for part in parts[1:]:
        for i, x in enumerate(part):
            x = x.to(acc[i].device)
            acc[i] = torch.maximum(acc[i], x) if op == "max" else acc[i] + x
    if op == "mean":
        return acc[0] / acc[1]
    if op == "norm":
        return acc[0].sqrt()
    return acc[0]


def global_value(total, like):
    """The model-wide value sent back to a parameter, on its device and in its dtype."""
    return total.to(device=like.device, dtype=like.dtype)


def clip_by_global_norm(x, max_norm, total_norm):
    """x scaled by min(1, max_norm / (total_norm + 1e-6)), as torch.nn.utils.clip_grad_norm_."""
    return x * (max_norm / (total_norm + CLIP_EPS)).clamp(max=1.0)


def as_global(value, like):
    """A global state's first value: [M, 1, 1] in ``like``'s dtype and device."""
    if _t(value):
        return value.to(device=like.device, dtype=like.dtype).expand(like.shape[0], 1, 1).clone()
    return torch.full((like.shape[0], 1, 1), float(value), dtype=like.dtype, device=like.device)


def lockstep(steps):
    """Run one step generator per parameter of a group in lockstep (see above); returns the
    values they return, in order. Every parameter must reach the same reductions in the same
    order (the checker keeps them out of if-blocks on a parameter's shape or role)."""
    sent = None
    while True:
        asks, done = [], []
        for gen in steps:
            try:
                asks.append(gen.send(sent))
            except StopIteration as stop:
                done.append(stop.value)
        if done:
            if asks:
                raise RuntimeError("the parameters of a group reached different model-wide reductions")
            return done
        op = asks[0][0]
        if any(a[0] != op for a in asks):
            raise RuntimeError("the parameters of a group reached different model-wide reductions")
        sent = global_total(op, [a[1] for a in asks])


# -- quantized state storage (``state m: q8 = ...``, ``v: uq8``) -----------------------------------
# Block-wise dynamic quantization (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
# Quantization"), laid out as bitsandbytes 0.50 does it: the flattened tensor of each member is cut
# into blocks of Q_BLOCK consecutive elements; each block keeps its absolute maximum, and each
# element the uint8 index of the code nearest to element/absmax in a 256-value dynamic (tree) map,
# signed for ``q8`` and unsigned for ``uq8`` (which stores negative values as 0). A tensor with
# fewer than Q_MIN_NUMEL elements per member keeps its state unquantized, as bitsandbytes does
# (min_8bit_size): biases and norms gain nothing from 8 bits. State keys contain a dot
# (``m.codes`` uint8 [M, R, C], ``m.absmax`` [M, blocks], or ``m.full`` [M, R, C]), which tells the
# step-function wrapper to leave their layout alone.
Q_BLOCK = 256
Q_MIN_NUMEL = 4096
_Q_MAPS = {}


def dynamic_map(signed: bool) -> Tensor:
    """The 256 sorted float32 values of the dynamic quantization map, in [-1, 1] (signed) or
    [0, 1]. Exponent level i = 0..6 contributes the midpoints of linspace(0.1, 1, n_i) scaled by
    10^(i-6), with n_i = 2^i + 1 (both signs) or 2^(i+1) + 1 (unsigned); then 0 and 1."""
    values = []
    for i in range(7):
        n = (2**i if signed else 2 ** (i + 1)) + 1
        edges = torch.linspace(0.1, 1, n, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        level = (10 ** (i - 6)) * mids
        values += level.tolist()
        if signed:
            values += (-level).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32)


def _q_map(fmt: str) -> Tensor:
    if fmt not in ("q8", "uq8"):
        raise ValueError(f"unknown quantized storage {fmt!r}; use q8 or uq8")
    if fmt not in _Q_MAPS:
        _Q_MAPS[fmt] = dynamic_map(signed=fmt == "q8")
    return _Q_MAPS[fmt]


def q_encode(x: Tensor, fmt: str, block: int = Q_BLOCK):
    """Codes (uint8, x's shape) and per-block absmax ([M, blocks], x's dtype) of x, whose leading
    dimension is the member and the rest is flattened into blocks. Ties go to the lower code."""
    members = x.shape[0]
    flat = x.reshape(members, -1)
    n = flat.shape[1]
    pad = (-n) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(members, -1, block)
    absmax = blocks.abs().amax(dim=-1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (blocks / safe.unsqueeze(-1)).reshape(members, -1)[:, :n]
    code = _q_map(fmt).to(device=x.device, dtype=x.dtype)
    left = (torch.searchsorted(code, normed.contiguous(), right=True) - 1).clamp(0, code.numel() - 2)
    d_left = (normed - code[left]).abs()
    d_right = (normed - code[left + 1]).abs()
    idx = torch.where(d_right < d_left, left + 1, left)
    return idx.to(torch.uint8).reshape(x.shape), absmax


def q_decode(codes: Tensor, absmax: Tensor, fmt: str, block: int = Q_BLOCK) -> Tensor:
    """The values that ``codes`` and ``absmax`` (from :func:`q_encode`) stand for."""
    members = codes.shape[0]
    flat = codes.reshape(members, -1).long()
    n = flat.shape[1]
    code = _q_map(fmt).to(device=absmax.device, dtype=absmax.dtype)
    scale = absmax.repeat_interleave(block, dim=1)[:, :n]
    return (code[flat] * scale).reshape(codes.shape)


def q_store(new_state: dict, name: str, value, fmt: str) -> None:
    """Store a quantized state's new value (member layout [M, R, C]) in ``new_state``."""
    if value.shape[-2] * value.shape[-1] < Q_MIN_NUMEL:
        new_state[name + ".full"] = value
        return
    codes, absmax = q_encode(value, fmt)
    new_state[name + ".codes"] = codes
    new_state[name + ".absmax"] = absmax


def q_load(state: dict, name: str, fmt: str) -> Tensor:
    """A quantized state's value, decoded to the member layout [M, R, C]."""
    if name + ".full" in state:
        return state[name + ".full"]
    try:
        codes, absmax = state[name + ".codes"], state[name + ".absmax"]
    except KeyError:
        raise ValueError(f"the state has no entry for the quantized state {name!r} (expected {name}.codes and {name}.absmax)") from None
    return q_decode(codes, absmax, fmt)


# -- per-mode factors of a tensor's real shape -----------------------------------------------------
# A parameter of shape (d0, d1, …) travels as its 2-D view [M, R, C]; the per-mode primitives see
# it as the order-4 tensor (d0, d1, d2, d3), a missing mode of size 1. Their step function passes
# the parameter's ``ndim`` as an ``Ndim``: the number of dimensions, carrying the dimensions too.
MAX_MODES = 4


class Ndim(int):
    """A parameter's number of dimensions (an int) that also carries its dimensions (``.dims``),
    which the per-mode primitives need: the 2-D view the step works on has lost them."""

    def __new__(cls, shape):
        n = super().__new__(cls, len(shape))
        n.dims = tuple(int(d) for d in shape)
        return n

    def __reduce__(self):
        return Ndim, (self.dims,)


def _mode_dims(ndim):
    dims = getattr(ndim, "dims", None)
    if dims is None:
        raise ValueError("the per-mode primitives need the parameter's shape (ndim as runtime.Ndim(shape))")
    if len(dims) > MAX_MODES:
        raise ValueError(f"the per-mode primitives handle tensors of at most {MAX_MODES} dimensions, "
                         f"got shape {dims}")
    return dims + (1,) * (MAX_MODES - len(dims))


def _unfold(x, k, ndim):
    """x [M, R, C] as its mode-k unfolding [M, d_k, rest], and the 4 dimensions with mode k first."""
    dims = _mode_dims(ndim)
    X = x.reshape(x.shape[:-2] + dims).movedim(x.dim() - 2 + k, x.dim() - 2)
    return X.reshape(x.shape[:-2] + (dims[k], -1)), X.shape[-MAX_MODES:]


def mode_gram(x, k, ndim):
    """The mode-k Gram matrix X_(k)·X_(k)ᵀ of x's real shape, d_k × d_k."""
    xk, _ = _unfold(x, int(k), ndim)
    return xk @ xk.transpose(-2, -1)


def mode_mul(x, a, k, ndim):
    """The mode-k product x ×_k A (A·X_(k), folded back): x's shape, A d_k × d_k."""
    k = int(k)
    xk, moved = _unfold(x, k, ndim)
    y = a @ xk
    y = y.reshape(y.shape[:-2] + moved)
    return y.movedim(y.dim() - MAX_MODES, y.dim() - MAX_MODES + k).reshape(y.shape[:-MAX_MODES] + x.shape[-2:])


def eye_mode(x, k, ndim):
    """The d_k × d_k identity, one per member of x."""
    n = _mode_dims(ndim)[int(k)]
    return torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[:-2] + (n, n)).clone()
