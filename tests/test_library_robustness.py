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


@pytest.mark.parametrize("name", ["soap", "shampoo", "conda", "soap_modes", "shampoo_modes"])
@pytest.mark.parametrize("path", ["foreach", "per_tensor"])
def test_matrix_programs_train_bfloat16_parameters(name, path):
    """They raised "linalg_eigh_cpu not implemented for 'BFloat16'" (svd for conda) on every
    path. Now bfloat16 parameters (state in bfloat16 too) keep their dtype and approach the
    minimum of ½‖W − T‖² as the float32 run does. Square matrices: where G·Gᵀ is singular,
    bfloat16 rounding fills its null space with noise of the size of bfloat16's epsilon, which
    SOAP's Adam in the eigenbasis then steps along at the full learning rate (Shampoo loses its
    ε·I next to G·Gᵀ likewise), so there the runs part by more than rounding."""
    if path == "foreach" and name.endswith("_modes"):
        pytest.skip("per-mode factors have only the per-tensor path")
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 6), (6, 2, 3)] + ([] if name.startswith("shampoo") else [(5,)])  # a vector's g·gᵀ is singular
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


# -- Adafactor and SWAN on gradients with zero rows and columns -------------------------------------
def dead_unit_gradient(shape=(8, 6), seed=0, dtype=torch.float32):
    """A gradient whose row 2 is zero (a dead ReLU unit) and whose column 3 is zero (an input
    pixel that is blank in every example)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=gen).to(dtype)
    g[2] = 0
    g[:, 3] = 0
    return g


def test_adafactor_float32_with_a_dead_row_and_a_blank_column_matches_torch():
    """R·C of the zero row and column is 1e-30·1e-30, which underflows to 0 in float32:
    rsqrt(0)·0 was NaN. torch.optim.Adafactor stays finite; so does the program, with torch's
    numbers (its eps clamps and the program's eps1 = 1e-30 differ only on the zero entries, whose
    update is 0 either way)."""
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(8, 6, generator=gen)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = to_optimizer(library.load("adafactor"), [ours], foreach=False)
    torch_opt = torch.optim.Adafactor([ref], lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0)
    for step in range(5):
        g = dead_unit_gradient(seed=step)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.detach()[2, 3], w0[2, 3])  # no gradient ever reached it


def test_swan_zero_gradient_and_single_column_matrices_do_not_move():
    """SWAN's rescale ‖G̃‖/‖ΔW‖ was 0/0 where the row-centred gradient G̃ is zero: a zero
    gradient, and every n×1 hidden matrix (each row's one entry is its own mean). The paper's
    update is then zero (G̃ = 0); a 1×n matrix is whitened as the paper's equations say."""
    gen = torch.Generator().manual_seed(0)
    cases = [((6, 5), torch.zeros(6, 5)), ((6, 1), torch.randn(6, 1, generator=gen)),
             ((6, 1, 1, 1), torch.randn(6, 1, 1, 1, generator=gen))]
    for shape, g in cases:
        w0 = torch.randn(shape, generator=gen)
        p = torch.nn.Parameter(w0.clone())
        opt = to_optimizer(library.load("swan"), [p], wd=0.1, lr=0.5)
        p.grad = g
        opt.step()
        torch.testing.assert_close(p.detach(), w0 * (1 - 0.5 * 0.1), rtol=0, atol=0)
    # 1×n: G̃ = (g − mean)/std, whitened: (G̃·G̃ᵀ + eps_w)^(−1/2)·G̃, rescaled to ‖G̃‖, i.e. G̃ itself
    g = torch.randn(1, 7, generator=gen)
    w0 = torch.randn(1, 7, generator=gen)
    p = torch.nn.Parameter(w0.clone())
    opt = to_optimizer(library.load("swan"), [p], lr=0.5)
    p.grad = g.clone()
    opt.step()
    c = g - g.mean()
    expected = w0 - 0.5 * c / c.square().mean().sqrt()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6)


# -- the corpus: every library program on inputs that break careless numerics ----------------------
def _corpus():
    """(case name, parameter shape, gradient for step i, role): each gradient is float32 and the
    same at every step unless said."""
    gen = torch.Generator().manual_seed(0)
    base = {s: [torch.randn(s, generator=gen) for _ in range(4)] for s in [(6, 5), (6, 1), (1, 6), (1,), (), (5,)]}
    return [
        ("zero gradient", (6, 5), lambda i: torch.zeros(6, 5), None),
        ("zero gradient, vector", (5,), lambda i: torch.zeros(5), None),
        ("dead row and blank column", (8, 6), lambda i: dead_unit_gradient(seed=i), None),
        ("n×1 hidden matrix", (6, 1), lambda i: base[(6, 1)][i], None),
        ("1×n hidden matrix", (1, 6), lambda i: base[(1, 6)][i], None),
        ("n×1×1×1 conv weight", (6, 1, 1, 1), lambda i: base[(6, 1)][i].reshape(6, 1, 1, 1), None),
        ("one-element vector", (1,), lambda i: base[(1,)][i], None),
        ("scalar", (), lambda i: base[()][i], None),
        ("1×1 matrix", (1, 1), lambda i: base[(1,)][i].reshape(1, 1), None),
        ("huge gradient (1e4)", (6, 5), lambda i: 1e4 * base[(6, 5)][i], None),
        ("tiny gradient (1e-8)", (6, 5), lambda i: 1e-8 * base[(6, 5)][i], None),
        ("huge vector gradient (1e4)", (5,), lambda i: 1e4 * base[(5,)][i], None),
        ("tiny vector gradient (1e-8)", (5,), lambda i: 1e-8 * base[(5,)][i], None),
        ("tiny embedding gradient (1e-8)", (6, 5), lambda i: 1e-8 * base[(6, 5)][i], "embedding"),
    ]


CORPUS = _corpus()
STEPS_PER_CASE = 4

# (program, case, dtype name) -> why the program legitimately goes non-finite there. Each entry is
# checked to still fail, so that a fix shows up as a test to update. Empty: since adafactor's
# and swan's fixes every program passes every case in both dtypes.
NOT_FINITE = {}


def _run_case(name, shape, grad, role, dtype, foreach):
    """Parameters and states after a few steps of the exported optimizer; programs reading
    hess_diag get a loss whose gradient is exactly the case's gradient (and whose Hessian is I);
    programs reading g_probe a linear loss, whose gradient is the case's gradient everywhere."""
    prog = library.load(name)
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
    opt = to_optimizer(prog, [{"params": [p], "role": role}], foreach=foreach)
    for i in range(STEPS_PER_CASE):
        g = grad(i).to(dtype)
        if prog.uses_hess_diag:
            def closure():
                opt.zero_grad()
                loss = (p * g).sum() + 0.5 * ((p - p.detach()) ** 2).sum()
                loss.backward(create_graph=True)
                return loss

            opt.step(closure)
        elif prog.uses_probe:
            def closure():
                opt.zero_grad()
                loss = (p * g).sum()
                loss.backward()
                return loss

            closure()
            opt.step(closure)
        else:
            p.grad = g.clone()
            opt.step()
    # a model-wide program's global states live in the parameter group
    return p, {**opt.state[p], **opt.param_groups[0].get("global_state", {})}


def _finite(p, state):
    bad = [] if bool(torch.isfinite(p).all()) else ["w"]
    bad += [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return bad


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("path", ["foreach", "per_tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", library.names())
def test_every_library_program_stays_finite_on_the_corpus(name, dtype, path):
    """Zero gradients, zero rows and columns, n×1 and 1×n matrices, one-element tensors, gradients
    of 1e4 and 1e-8: the references stay finite on each, and so must the programs (weights and
    every state), a few steps each, through the exported optimizer's multi-tensor and per-tensor
    paths (programs with quantized state, seeded noise, model-wide values, a probe point, evaluation
    weights or per-mode factors have only the latter; a model-wide program's global states are checked too)."""
    prog = library.load(name)
    if path == "foreach" and prog.model_wide:
        pytest.skip("model-wide values have only the per-tensor path")
    if path == "foreach" and (prog.uses_probe or prog.has_eval_weights):
        pytest.skip("a probe point or evaluation weights: only the per-tensor path")
    probe = to_optimizer(prog, [torch.nn.Parameter(torch.zeros(2))])
    if path == "foreach" and type(probe)._step_foreach is None:
        pytest.skip("quantized state, seeded noise or per-mode factors: only the per-tensor path")
    failures, unexpected_passes = [], []
    for case, shape, grad, role in CORPUS:
        key = (name, case, str(dtype).removeprefix("torch."))
        try:
            p, state = _run_case(name, shape, grad, role, dtype, path == "foreach")
            bad = _finite(p, state)
        except Exception as e:  # noqa: BLE001 - report every case, not the first
            bad = [f"raised {type(e).__name__}: {e}"]
        if key in NOT_FINITE:
            if not bad:
                unexpected_passes.append(f"{case}: now finite ({NOT_FINITE[key]})")
        elif bad:
            failures.append(f"{case}: {', '.join(bad)}")
    assert not failures and not unexpected_passes, "\n".join(failures + unexpected_passes)
