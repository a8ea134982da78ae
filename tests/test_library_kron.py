"""Kron (PSGD with Kronecker-factored preconditioners) against pytorch_optimizer.Kron 4.1.0.

Both run side by side from the same initial parameters and gradients in float64 (the reference's
preconditioner dtype set to float64 too), on 1-D, 2-D, 3-D and 4-D parameters (tensors of order 3 and 4 as they are: one factor per mode in both;
past 4 dimensions the program takes the rows × rest view, checked too), with decoupled weight decay on and
off.
The reference draws its probe with ``torch.randn_like``; the test hands it the numbers the program's
seeded ``randn_like`` draws at the same step, so the two see the same probe; its float32 triangular
solves are swapped for float64 ones (a second test measures what the swap hides). Factor balancing is off in
the reference (``balance_prob=0``) and the test checks that balancing leaves the preconditioner as it
was, the reason the program may leave it out. ``norm_lower_bound`` is checked against the estimate's
definition and against the spectral norm it bounds.
"""

import math

import pytest
import torch
from harness import SHAPES, gradient_sequence, initial_param, run_program, run_reference

import pytorch_optimizer as po
from optdisco import library
from optdisco.dsl import parse, to_optimizer
from optdisco.dsl import runtime as R
from pytorch_optimizer.optimizer import psgd

F64 = torch.float64


def view2d(shape):
    return shape if len(shape) <= 2 else (shape[0], math.prod(shape[1:]))


@pytest.fixture
def shared_probe(monkeypatch):
    """torch.randn_like inside the reference returns the program's seeded probe of step n (n counts calls)."""
    calls = [0]

    def probe(x, dtype=None, **_):
        calls[0] += 1
        z = R.randn_like(x.reshape(1, 1, -1).to(F64), None, calls[0], 0)
        return z.reshape(x.shape).to(dtype or x.dtype)

    monkeypatch.setattr(torch, "randn_like", probe)
    return calls


@pytest.fixture
def float64_solve(monkeypatch):
    """The reference solves its triangular systems in float32 (solve_triangular_right); swapped for the
    same solve in the inputs' dtype. test_reference_float32_solve_is_the_only_difference measures it."""

    def solve(x, a):
        return torch.linalg.solve_triangular(a, x.reshape(-1, x.size(-1)), upper=True, left=False).reshape_as(x)

    monkeypatch.setattr(psgd, "solve_triangular_right", solve)


def kron_ref(wd):
    return lambda p: po.Kron(p, lr=0.01, momentum=0.9, weight_decay=wd, weight_decouple=True, balance_prob=0.0,
                             precondition_dtype=F64)


def reference(wd, w0, gs, on_view=False):
    """The reference on the tensor itself, or on its rows × rest view."""
    v = view2d(tuple(w0.shape)) if on_view else tuple(w0.shape)
    out = run_reference(kron_ref(wd), w0.reshape(v), [g.reshape(v) for g in gs])
    return [x.reshape(w0.shape) for x in out]


def rel_diff(a_list, b_list):
    scale = max(float(b.abs().max()) for b in b_list)
    return max(float((a - b).abs().max()) for a, b in zip(a_list, b_list)) / scale


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(11,), (7, 5), (5, 7), (1, 6), SHAPES["4d"], (4, 3, 5), (3, 1, 2, 2)])
def test_kron_matches_pytorch_optimizer(shared_probe, float64_solve, shape, wd):
    w0, gs = initial_param(shape), gradient_sequence(shape, 40)
    ours = run_program(library.load("kron"), w0, gs, {"wd": wd, "lr": 0.01})
    ref = reference(wd, w0, gs)
    assert shared_probe[0] == 40
    assert rel_diff(ours, ref) < 1e-10


def test_kron_order_five_tensors_use_the_rows_by_rest_view(shared_probe, float64_solve):
    """Documented: past 4 dimensions the per-mode primitives stop and the program runs the matrix
    rule on the rows × rest view (the reference on that view), not the reference's per-mode rule."""
    shape = (3, 2, 2, 1, 2)
    w0, gs = initial_param(shape), gradient_sequence(shape, 12)
    ours = run_program(library.load("kron"), w0, gs, {"lr": 0.01})
    assert rel_diff(ours, reference(0.0, w0, gs, on_view=True)) < 1e-10
    shared_probe[0] = 0
    assert rel_diff(ours, reference(0.0, w0, gs)) > 1e-4


def kron_with_max_size(n):
    """The library program with its largest triangular dimension (the reference's
    max_size_triangular, 8192) set to n, so that small tensors take the diagonal factors."""
    text = library.path("kron").read_text()
    assert text.count("> 8192") == 4
    return parse(text.replace("> 8192", f"> {n}"))


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (7, 6), (4, 3)], ids=["rows", "cols", "both", "neither"])
def test_kron_keeps_a_diagonal_factor_for_a_dimension_above_max_size(shared_probe, float64_solve, shape):
    """Rows, columns or both above the limit keep a diagonal factor, as the reference's."""
    w0, gs = initial_param(shape), gradient_sequence(shape, 40)
    ours = run_program(kron_with_max_size(5), w0, gs, {"wd": 0.1, "lr": 0.01})
    ref = run_reference(lambda p: po.Kron(p, lr=0.01, momentum=0.9, weight_decay=0.1, weight_decouple=True,
                                          balance_prob=0.0, precondition_dtype=F64, max_size_triangular=5), w0, gs)
    assert rel_diff(ours, ref) < 1e-10
    if shape != (4, 3):  # the triangular rule would have been another preconditioner
        shared_probe[0] = 0
        assert rel_diff(run_program(library.load("kron"), w0, gs, {"wd": 0.1, "lr": 0.01}), ref) > 1e-4


def test_kron_allocates_no_triangular_factor_above_8192():
    """An embedding of 10,000 rows: a 10,000-long diagonal factor and a 4 × 4 triangular one,
    never a 10,000 × 10,000 matrix (400 MB in float32)."""
    p = torch.nn.Parameter(torch.zeros(10_000, 4))
    opt = to_optimizer("kron", [p])
    p.grad = torch.randn(10_000, 4)
    opt.step()
    sizes = {k: tuple(v.shape) for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    assert max(math.prod(s) for s in sizes.values()) == 40_000, sizes
    assert library.state_bytes("kron", (10_000, 4)) < 16


def test_reference_float32_solve_is_the_only_difference(shared_probe):
    w0, gs = initial_param((7, 5)), gradient_sequence((7, 5), 40)
    ours = run_program(library.load("kron"), w0, gs, {"lr": 0.01})
    assert 1e-12 < rel_diff(ours, reference(0.0, w0, gs)) < 1e-6


def test_kron_fits_on_the_reference_schedule(monkeypatch):
    """Past step 500 the fit probability decays and fits thin out: the program's counter fits at the steps
    the reference's does (counted by the reference's update_precondition calls)."""
    fits = []
    real = psgd.update_precondition
    monkeypatch.setattr(psgd, "update_precondition", lambda *a, **k: (fits.append(len(seen)), real(*a, **k)))
    seen = []
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = po.Kron([p], lr=0.0, balance_prob=0.0, precondition_dtype=F64)
    for i in range(1400):
        seen.append(i)
        p.grad = torch.ones(3, dtype=F64)
        opt.step()
    prog = """hyper lr = 1
state count = 0
p = clip(exp(-0.001 * (t - 1 - 500)), 0.03, 1)
count = count + 1
fit = where(count >= 1 / p, 1, 0)
count = where(fit > 0, 0, count)
w = where(fit > 0, t, w)
"""
    from optdisco.dsl import compile_program, parse

    fn = compile_program(parse(prog))
    w, state, ours = torch.zeros(3, dtype=F64), None, []
    for t in range(1, 1401):
        w, state = fn(w, torch.ones(3, dtype=F64), state, None, t)
        if float(w[0]) == t:
            ours.append(t)
    assert ours == fits
    assert 520 < len(fits) < 1400


def test_balancing_leaves_the_preconditioner_unchanged():
    gen = torch.Generator().manual_seed(0)
    ql = torch.triu(torch.randn(5, 5, generator=gen, dtype=F64)) + 3 * torch.eye(5, dtype=F64)
    qr = torch.triu(torch.randn(4, 4, generator=gen, dtype=F64)) + 3 * torch.eye(4, dtype=F64)
    g = torch.randn(5, 4, generator=gen, dtype=F64)
    before = ql.T @ ql @ g @ qr.T @ qr
    qs = [ql.clone(), qr.clone()]
    psgd.balance_q(qs)
    assert not torch.allclose(qs[0], ql)
    after = qs[0].T @ qs[0] @ g @ qs[1].T @ qs[1]
    assert torch.allclose(before, after, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(6, 6), (9, 4), (3, 8), (1, 5)])
def test_norm_lower_bound_is_the_psgd_estimate_and_bounds_the_spectral_norm(shape):
    from pytorch_optimizer.optimizer.utils.psgd import norm_lower_bound as ref_bound

    gen = torch.Generator().manual_seed(sum(shape))
    xs = torch.randn((3,) + shape, generator=gen, dtype=F64)
    ours = R.norm_lower_bound(xs)
    assert ours.shape == (3, 1, 1)
    for k in range(3):
        expect = ref_bound(xs[k].clone())
        assert float(ours[k]) == pytest.approx(float(expect), rel=1e-13)
        sigma = float(torch.linalg.matrix_norm(xs[k], ord=2))
        assert float(ours[k]) <= sigma * (1 + 1e-12)
        assert float(ours[k]) >= sigma / math.sqrt(min(shape))
    assert float(R.norm_lower_bound(torch.zeros(1, 3, 3, dtype=F64))) == 0.0
