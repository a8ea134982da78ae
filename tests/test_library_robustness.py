"""The library on inputs that break careless numerics: matrix decompositions of low-precision and
degenerate matrices, zero rows and columns, zero gradients, thin matrices, one-element tensors,
huge and tiny gradients, in float32 and bfloat16. References: torch.optim.Adafactor, torch's
float32 decompositions, and properties that define each result (an eigenbasis is orthonormal and
diagonalizes its matrix), written plainly here."""

from __future__ import annotations

import pytest
import torch

from optdisco import library
from optdisco.dsl import runtime as R
from optdisco.dsl import to_optimizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sparse_gram(n=512, out=16, batch=32, seed=0):
    """0.05·GᵀG for the gradient G (out × n) of a linear layer over bag-of-words features of which
    a batch touches only a few: most of its rows and columns are exactly zero."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n, generator=gen) < 0.01).float()
    g = torch.randn(batch, out, generator=gen).T @ x / batch
    return 0.05 * (g.T @ g)


def assert_eigenbasis(Q, M, tol):
    """Q is orthonormal and QᵀMQ is diagonal, to tol relative to ‖M‖."""
    Q, M = Q.double(), M.double()
    n = Q.shape[-1]
    torch.testing.assert_close(Q.mT @ Q, torch.eye(n, dtype=torch.float64), rtol=0, atol=tol)
    D = Q.mT @ M @ Q
    off = D - torch.diag_embed(torch.diagonal(D, dim1=-2, dim2=-1))
    assert float(off.abs().max()) <= tol * max(float(M.abs().max()), 1e-30)


# -- decompositions ----------------------------------------------------------------------------------
def test_eigvecs_of_a_sparse_gram_matrix_in_float32():
    """float32 eigh of this matrix fails to converge; the runtime adds 1e-30·I and falls back to
    float64 as the official SOAP does, and returns a float32 eigenbasis."""
    M = sparse_gram()
    Q = R.eigvecs(M.unsqueeze(0))[0]
    assert Q.dtype == torch.float32
    assert_eigenbasis(Q, M, 1e-5)


def test_soap_trains_a_linear_layer_over_sparse_features_in_float32():
    """It stopped at its first step with torch's convergence error."""
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(512, 16)
    opt = to_optimizer(library.load("soap"), lin.parameters(), f=2)
    losses = []
    for _ in range(6):
        x = (torch.rand(32, 512, generator=gen) < 0.01).float()
        y = torch.randn(32, 16, generator=gen)
        opt.zero_grad()
        loss = ((lin(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    st = opt.state[lin.weight]
    assert all(torch.isfinite(v).all() for v in st.values())
    assert torch.isfinite(lin.weight).all() and int(st["step"]) == 6
    # the first eigenbasis (from step 1) was kept orthonormal by the refreshes' QR
    torch.testing.assert_close(st["QR"].mT @ st["QR"], torch.eye(512), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decompositions_of_low_precision_matrices_run_in_float32(dtype):
    """torch has no bfloat16 eigh, svd or QR on the CPU: each runs on the float32 matrix, as
    torch's own float32 routine gives it, and the result comes back in the input's dtype."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 6, 4, generator=gen).to(dtype)
    sym = a @ a.mT + torch.eye(6, dtype=dtype)
    a32, sym32 = a.float(), sym.float()

    def same(ours, expected):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, expected.to(dtype), rtol=0, atol=0)

    vals, vecs = torch.linalg.eigh(sym32)
    same(R.eigvecs(sym), vecs)
    same(R.matpow(sym, -0.25), vecs @ torch.diag_embed(vals ** -0.25) @ vecs.mT)
    same(R.qr_q(a), torch.linalg.qr(a32).Q)
    u, s, vh = torch.linalg.svd(a32, full_matrices=True)
    same(R.svd_u(a), u)
    same(R.svd_v(a), torch.linalg.svd(a32, full_matrices=False).Vh.mT)


@pytest.mark.parametrize("name", ["soap", "shampoo", "conda"])
@pytest.mark.parametrize("path", ["foreach", "per_tensor"])
def test_matrix_programs_train_bfloat16_parameters(name, path):
    """They raised "linalg_eigh_cpu not implemented for 'BFloat16'" (svd for conda) on every
    path. Now bfloat16 parameters (state in bfloat16 too) keep their dtype and approach the
    minimum of ½‖W − T‖² as the float32 run does. Square matrices: where G·Gᵀ is singular,
    bfloat16 rounding fills its null space with noise of the size of bfloat16's epsilon, which
    SOAP's Adam in the eigenbasis then steps along at the full learning rate (Shampoo loses its
    ε·I next to G·Gᵀ likewise), so there the runs part by more than rounding."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 6), (6, 2, 3)] + ([] if name == "shampoo" else [(5,)])  # a vector's g·gᵀ is singular
    targets = [torch.randn(s, generator=gen) for s in shapes]
    dist = {}
    for dtype in (torch.bfloat16, torch.float32):
        ps = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in shapes]
        opt = to_optimizer(library.load(name), ps, lr=0.05, foreach=path == "foreach")
        for _ in range(30):
            opt.zero_grad()
            sum(0.5 * ((p.float() - t) ** 2).sum() for p, t in zip(ps, targets)).backward()
            opt.step()
        assert all(p.dtype == dtype and p.isfinite().all() for p in ps)
        assert all(v.dtype in (dtype, torch.float32) for st in opt.state.values() for v in st.values())
        dist[dtype] = [float((p.detach().float() - t).norm() / t.norm()) for p, t in zip(ps, targets)]
    for d16, d32 in zip(dist[torch.bfloat16], dist[torch.float32]):
        assert d32 < 0.9 and d16 < 0.9
        assert abs(d16 - d32) < 0.1
