"""The library's matrix methods against independent sources.

Muon, Muon-RMS, NorMuon, Shampoo, SOAP and Conda are driven side by side with their reference
implementations (torch.optim.Muon, pytorch_optimizer 4.1.0) from the same initial parameters and the
same gradient sequence (each optimizer its own clone), for 60 steps, past the first refresh where the
method has one (small refresh periods), on 1-D, 2-D and 4-D parameters (3-D too for the per-mode
programs shampoo_modes and soap_modes, on the tensors themselves) in float64, with weight decay
on and off. Where a reference computes a step in lower precision, that one step is swapped for a
float64 one and the test says so; a second test measures what the swap hides. SCALE, SWAN and SinkGD
have no implementation to compare with: their equations are written here plainly in torch, and their
defining properties are checked. Each documented difference between a program and its reference is
checked to exist.
"""

import math
import types

import pytest
import torch
from harness import SHAPES, gradient_sequence, initial_param, max_abs_diff, run_program, run_reference

import pytorch_optimizer as po
from optdisco import library
from optdisco.dsl import compile_program, parse, to_optimizer

STEPS = 60
WDS = (0.0, 0.1)
F64 = torch.float64


def case(shape, steps=STEPS, seed=0):
    return initial_param(shape), gradient_sequence(shape, steps, seed=seed)


def view2d(shape):
    """The language's rows × rest view of a parameter of this shape."""
    return shape if len(shape) <= 2 else (shape[0], math.prod(shape[1:]))


def run_reference_on_view(make, w0, grads):
    """A reference run on the parameter's rows × rest view, reshaped back."""
    v = view2d(tuple(w0.shape))
    out = run_reference(make, w0.reshape(v), [g.reshape(v) for g in grads])
    return [x.reshape(w0.shape) for x in out]


def rel_diff(a_list, b_list):
    scale = max(float(b.abs().max()) for b in b_list)
    return max_abs_diff(a_list, b_list) / scale


def newton_schulz_f64(G, steps=5):
    """Muon's quintic Newton–Schulz in float64, in the official (Keller Jordan) form."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(F64)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


@pytest.fixture
def float64_newton_schulz(monkeypatch):
    """Swap the references' bfloat16 Newton–Schulz for the float64 one above."""
    import torch.optim._muon as torch_muon
    from pytorch_optimizer.optimizer.muon import base, normuon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", lambda g, coeffs, steps, eps: newton_schulz_f64(g, steps))
    swap = lambda g, num_steps=5, **kw: newton_schulz_f64(g, num_steps)  # noqa: E731
    monkeypatch.setattr(base, "zero_power_via_newton_schulz_5", swap)
    monkeypatch.setattr(normuon, "zero_power_via_newton_schulz_5", swap)


def one_step_update(name, w, g, hyper, role=None):
    fn = compile_program(library.load(name))
    w1, state = fn(w, g, None, hyper, 1, role=role)
    return w1, state


# -- every file has the header the library expects ---------------------------------------------
NAMES = ["muon", "muon_rms", "normuon", "shampoo", "soap", "shampoo_modes", "soap_modes", "conda", "scale", "swan", "sinkgd"]


@pytest.mark.parametrize("name", NAMES)
def test_header_and_paper_defaults(name):
    e = library.entry(name)
    assert e.title and e.paper and e.year.isdigit() and e.link.startswith("https://")
    assert e.reference and e.notes
    assert library.load(name).hyper_defaults["lr"] > 0


def test_paper_defaults():
    d = {n: library.load(n).hyper_defaults for n in NAMES}
    assert (d["muon"]["lr"], d["muon"]["momentum"], d["muon"]["lr"] * d["muon"]["adam_lr_ratio"]) == (0.02, 0.95, 0.02 * 0.015)
    assert (d["muon"]["beta1"], d["muon"]["beta2"], d["muon"]["eps"]) == (0.9, 0.95, 1e-10)
    assert (d["muon_rms"]["lr"], d["muon_rms"]["wd"], d["muon_rms"]["eps"]) == (1e-3, 0.1, 1e-8)
    assert (d["normuon"]["lr"], d["normuon"]["beta1"], d["normuon"]["beta2"]) == (0.02, 0.95, 0.95)
    assert (d["soap"]["lr"], d["soap"]["beta1"], d["soap"]["beta2"], d["soap"]["wd"], d["soap"]["f"]) == (3e-3, 0.95, 0.95, 0.01, 10)
    assert (d["conda"]["T"], d["conda"]["scale"], d["conda"]["beta2"]) == (2000, 0.25, 0.99)
    assert (d["shampoo"]["eps"], d["shampoo"]["k"]) == (1e-4, 1)


# -- Muon ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape", [(7, 5), (5, 7)])
def test_muon_hidden_matrix_matches_torch_muon(float64_newton_schulz, shape, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("muon"), w0, gs, {"wd": wd})
    ref = run_reference(lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=wd, momentum=0.95, nesterov=True), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-13


@pytest.mark.parametrize("wd", WDS)
def test_muon_conv_weight_matches_pytorch_optimizer(float64_newton_schulz, wd):
    w0, gs = case(SHAPES["4d"])
    ours = run_program(library.load("muon"), w0, gs, {"wd": wd})
    ref = run_reference(lambda p: po.Muon([{"params": p, "use_muon": True}], lr=0.02, momentum=0.95, weight_decay=wd), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-13


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((11,), None), ((7, 5), "embedding"), ((5, 7), "head")])
def test_muon_other_parameters_take_adamw(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("muon"), w0, gs, {"wd": wd}, role=role)
    ref = run_reference(lambda p: torch.optim.AdamW(p, lr=0.02 * 0.015, betas=(0.9, 0.95), eps=1e-10, weight_decay=wd), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-14


def test_muon_swap_hides_only_bfloat16_rounding():
    """Unswapped, torch.optim.Muon runs Newton–Schulz in bfloat16: the runs then differ by a
    fraction of a percent of the distance travelled, not more."""
    w0, gs = case((7, 5))
    ours = run_program(library.load("muon"), w0, gs)
    ref = run_reference(lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0, momentum=0.95), w0, gs)
    travelled = max(float((x - w0).abs().max()) for x in ours)
    assert 1e-6 < max_abs_diff(ours, ref) < 0.02 * travelled


@pytest.mark.parametrize("shape", [(12, 6), (6, 12)])
def test_muon_update_is_orthogonal_to_within_newton_schulz(shape):
    """After several steps the update is the Nesterov momentum's polar factor U·Vᵀ, up to
    Newton–Schulz's spread of singular values ([0.68, 1.12] for NS5): the same singular vectors,
    singular values near 1."""
    w, gs = case(shape, steps=6)
    fn = compile_program(library.load("muon"))
    state, b = None, torch.zeros(shape, dtype=F64)
    for t, g in enumerate(gs, 1):
        w_new, state = fn(w, g, state, None, t)
        b = 0.95 * b + 0.05 * g
        u = 0.95 * b + 0.05 * g  # the Nesterov momentum, written plainly
        delta = (w - w_new) / (0.02 * math.sqrt(max(1, shape[0] / shape[1])))
        w = w_new
    U, S, Vh = torch.linalg.svd(u, full_matrices=False)
    inner = U.mT @ delta @ Vh.mT
    diag = torch.diagonal(inner)
    assert float((inner - torch.diag(diag)).abs().max()) < 1e-10
    assert 0.6 < float(diag.min()) and float(diag.max()) < 1.2
    sv = torch.linalg.svdvals(delta)
    assert 0.6 < float(sv.min()) and float(sv.max()) < 1.2


# -- Muon with the Moonlight scale ---------------------------------------------------------------------
@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), SHAPES["4d"]])
def test_muon_rms_hidden_matches_references(float64_newton_schulz, shape, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("muon_rms"), w0, gs, {"wd": wd})
    if len(shape) == 2:
        make = lambda p: torch.optim.Muon(p, lr=1e-3, weight_decay=wd, momentum=0.95, adjust_lr_fn="match_rms_adamw")  # noqa: E731
    else:
        make = lambda p: po.Muon([{"params": p, "use_muon": True}], lr=1e-3, momentum=0.95, weight_decay=wd, use_adjusted_lr=True)  # noqa: E731
    assert max_abs_diff(ours, run_reference(make, w0, gs)) < 1e-14


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((11,), None), ((7, 5), "embedding")])
def test_muon_rms_other_parameters_take_adamw_with_the_same_lr(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("muon_rms"), w0, gs, {"wd": wd}, role=role)
    ref = run_reference(lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-14


def test_muon_rms_update_has_adamw_rms():
    """0.2·sqrt(max(rows, cols))·NS5(u) has RMS 0.2·(a singular value of NS5's band)."""
    w, g = initial_param((64, 16)), gradient_sequence((64, 16), 1)[0]
    w1, _ = one_step_update("muon_rms", w, g, {"wd": 0.0})
    rms = float(((w - w1) / 1e-3).square().mean().sqrt())
    assert 0.2 * 0.68 < rms < 0.2 * 1.12


# -- NorMuon ------------------------------------------------------------------------------------------
def normuon_ref(wd, **kw):
    args = dict(lr=0.02, momentum=0.95, beta2=0.95, weight_decay=wd, nesterov=False, update_scale="match_rms")
    args.update(kw)
    return lambda p: po.NorMuon([{"params": p, "use_muon": True}], **args)


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), SHAPES["4d"]])
def test_normuon_hidden_matches_pytorch_optimizer_paper_settings(float64_newton_schulz, shape, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("normuon"), w0, gs, {"wd": wd})
    for foreach in (None, False):
        assert max_abs_diff(ours, run_reference(normuon_ref(wd, foreach=foreach), w0, gs)) < 1e-14


def test_normuon_follows_the_paper_not_the_official_code(float64_newton_schulz):
    """Documented difference: the official code (pytorch_optimizer's defaults) uses Nesterov
    momentum and keeps the Frobenius norm of O; the paper's Algorithm 1 (this program) gives the
    update RMS 0.2 exactly."""
    w0, gs = case((7, 5))
    ours = run_program(library.load("normuon"), w0, gs)
    code = run_reference(lambda p: po.NorMuon([{"params": p, "use_muon": True}], lr=0.02), w0, gs)
    assert max_abs_diff(ours, code) > 1e-2
    prev = w0
    for w in ours[:5]:
        assert abs(float(((prev - w) / 0.02).square().mean().sqrt()) - 0.2) < 1e-9
        prev = w


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((11,), None), ((7, 5), "embedding"), ((5, 7), "head")])
def test_normuon_other_parameters_take_the_auxiliary_adamw(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("normuon"), w0, gs, {"wd": wd}, role=role)
    group = {"use_muon": False, "lr": 0.02 * 0.015, "betas": (0.9, 0.95), "eps": 1e-10, "weight_decay": wd}
    ref = run_reference(lambda p: po.NorMuon([{"params": p, **group}]), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-14


# -- Shampoo ------------------------------------------------------------------------------------------
def shampoo_ref(wd, k):
    return lambda p: po.Shampoo(p, lr=0.01, momentum=0.0, weight_decay=wd, preconditioning_compute_steps=k, matrix_eps=1e-4)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, tol", [((11,), 1e-9), ((7, 5), 1e-13), ((5, 7), 1e-13), (SHAPES["4d"], 1e-13)])
def test_shampoo_matches_pytorch_optimizer(shape, tol, wd, k):
    """Relative to the largest weight; vectors are full-matrix AdaGrad, whose early preconditioner
    (rank-t plus 1e-4·I) has condition numbers near 1e5, hence the looser tolerance."""
    w0, gs = case(shape)
    ours = run_program(library.load("shampoo"), w0, gs, {"wd": wd, "k": k, "lr": 0.01})
    assert rel_diff(ours, run_reference_on_view(shampoo_ref(wd, k), w0, gs)) < tol


def test_shampoo_order_four_tensors_use_the_matrix_view():
    """Documented difference: the paper's order-4 rule (one preconditioner per mode, exponent
    −1/8, as pytorch_optimizer on the 4-D tensor) is not what this program does (shampoo_modes does it)."""
    w0, gs = case(SHAPES["4d"])
    ours = run_program(library.load("shampoo"), w0, gs, {"lr": 0.01})
    assert max_abs_diff(ours, run_reference(shampoo_ref(0.0, 1), w0, gs)) > 1e-3


# -- SOAP ---------------------------------------------------------------------------------------------
class _TorchQRInFloat64(types.ModuleType):
    """The torch module as pytorch_optimizer's soap.py sees it, except that its cast to float32
    before QR becomes a cast to float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


@pytest.fixture
def float64_soap_qr(monkeypatch):
    from pytorch_optimizer.optimizer import soap

    monkeypatch.setattr(soap, "torch", _TorchQRInFloat64("torch"))


def soap_ref(wd, f):
    return lambda p: po.SOAP(p, lr=3e-3, betas=(0.95, 0.95), weight_decay=wd, precondition_frequency=f,
                             merge_dims=False, precondition_1d=False, correct_bias=True, normalize_gradient=False)


def _degenerate_columns_from(M, Q_ref, Q_ours, replaced):
    """The reference's eigenbasis Q_ref of M, except that inside each eigenspace of M of dimension
    ≥ 2 (eigenvalues within 1e-12·λmax of each other) its columns are the program's Q_ours columns
    that belong to the same eigenvalues, after checking that both span the same subspace."""
    lam_r = torch.diagonal(Q_ref.mT @ M @ Q_ref)
    lam_o = torch.diagonal(Q_ours.mT @ M @ Q_ours)
    tol = 1e-12 * float(lam_r.abs().max())
    order = torch.argsort(lam_r).tolist()
    clusters, cur = [], [order[0]]
    for i, j in zip(order, order[1:]):
        if float(lam_r[j] - lam_r[i]) <= tol:
            cur.append(j)
        else:
            clusters.append(cur)
            cur = [j]
    clusters.append(cur)
    Q = Q_ref.clone()
    for c in (c for c in clusters if len(c) > 1):
        lo, hi = float(lam_r[c].min()) - tol, float(lam_r[c].max()) + tol
        o = torch.nonzero((lam_o >= lo) & (lam_o <= hi)).flatten().tolist()
        assert len(o) == len(c)
        P_ref, P_ours = Q_ref[:, c] @ Q_ref[:, c].mT, Q_ours[:, o] @ Q_ours[:, o].mT
        assert float((P_ref - P_ours).abs().max()) < 1e-12
        Q[:, c] = Q_ours[:, o]
        replaced.append(len(c))
    return Q


@pytest.fixture
def soap_shared_degenerate_eigenbasis(monkeypatch):
    """pytorch_optimizer's first eigenbasis, with the basis inside each degenerate eigenspace taken
    from the program (set ``shared["bases"]`` to the program's [QL, QR] before the reference's first
    step; ``shared["replaced"]`` lists the dimensions of the eigenspaces replaced)."""
    from pytorch_optimizer.optimizer import soap

    original = soap.SOAP.get_orthogonal_matrix
    shared = {"bases": None, "replaced": []}

    def get_orthogonal_matrix(mat):
        qs = original(mat)
        return [q if len(q) == 0 else _degenerate_columns_from(m, q, ours, shared["replaced"])
                for m, q, ours in zip(mat, qs, shared["bases"] or [None] * len(qs))]

    monkeypatch.setattr(soap.SOAP, "get_orthogonal_matrix", staticmethod(get_orthogonal_matrix))
    return shared


@pytest.mark.parametrize("f", [10, 3])
@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("shape", [(11,), (6, 6), (5, 7), SHAPES["4d"]])
def test_soap_matches_pytorch_optimizer(float64_soap_qr, soap_shared_degenerate_eigenbasis, shape, wd, f):
    """Where the first gradient's view is not square (here (5, 7) and the 4-D tensor's (4, 12) view),
    Gᵀ·G (or G·Gᵀ) is singular: its null space, of dimension |rows − cols|, is an eigenspace of
    eigenvalue 0, and every orthonormal basis of it is a correct eigenbasis. Which one eigh returns is
    decided by the rounding of its input (the eigenvalues there are ±1e-17): the program's batched
    gᵀ·g and pytorch_optimizer's tensordot differ by one ulp on some CPUs (8.9e-16 on an Intel Xeon
    with MKL), which turns the null-space basis by 10.6°; and SOAP's Adam step, elementwise in the
    rotated coordinates, depends on that basis (the reference itself moves by 3.6e-3 over 60 steps
    when its own null-space basis is turned by the same angle; see the test after this one). So the
    reference keeps its own eigenbasis except inside a degenerate eigenspace, where it is given the
    program's basis of the same subspace; everything after the first eigh is then compared at 1e-13,
    and the replaced eigenspaces must be exactly the null spaces."""
    w0, gs = case(shape)
    hyper = {"wd": wd, "f": f}
    ours = run_program(library.load("soap"), w0, gs, hyper)
    _, s1 = compile_program(library.load("soap"))(w0.clone(), gs[0].clone(), None, hyper, 1)
    soap_shared_degenerate_eigenbasis["bases"] = [s1["QL"], s1["QR"]] if len(shape) > 1 else None
    ref = run_reference_on_view(soap_ref(wd, f), w0, gs)
    rows, cols = view2d(shape) if len(shape) > 1 else (1, 1)
    assert soap_shared_degenerate_eigenbasis["replaced"] == ([abs(rows - cols)] if rows != cols else [])
    assert max_abs_diff(ours, ref) < 1e-13


def soap_with_max_dim(n):
    """The library program with its largest preconditioned side (the reference's
    max_precondition_dim, 10000) set to n."""
    text = library.path("soap").read_text()
    assert text.count("<= 10000") == 10
    return parse(text.replace("<= 10000", f"<= {n}"))


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (7, 6)], ids=["rows", "cols", "both"])
def test_soap_leaves_a_side_above_max_precondition_dim_unrotated(float64_soap_qr, shape):
    """Rows, columns or both longer than the limit: no preconditioner on that side, as the reference's."""
    w0, gs = case(shape)
    hyper = {"wd": 0.01, "f": 3}
    ours = run_program(soap_with_max_dim(5), w0, gs, hyper)
    ref = run_reference(lambda p: po.SOAP(p, lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01, precondition_frequency=3,
                                          max_precondition_dim=5, merge_dims=False, precondition_1d=False,
                                          correct_bias=True, normalize_gradient=False), w0, gs)
    assert max_abs_diff(ours, ref) < 1e-13
    assert max_abs_diff(run_program(library.load("soap"), w0, gs, hyper), ref) > 1e-4  # both sides rotated


@pytest.mark.parametrize("name", ["soap", "soap_modes"])
def test_soap_allocates_no_preconditioner_for_a_side_above_10000(name):
    """An embedding of 12,000 rows keeps 4 × 4 matrices, never 12,000 × 12,000 ones (576 MB each)."""
    p = torch.nn.Parameter(torch.zeros(12_000, 4))
    opt = to_optimizer(name, [p])
    for _ in range(2):
        p.grad = torch.randn(12_000, 4)
        opt.step()
    sizes = {k: tuple(v.shape) for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    assert max(math.prod(s) for s in sizes.values()) == 48_000, sizes


def test_soap_reference_depends_on_the_null_space_basis():
    """Why the test above shares the null-space basis: pytorch_optimizer alone, on (5, 7), with its
    first right eigenbasis turned inside the 2-dimensional null space of Gᵀ·G (still an orthonormal
    eigenbasis), ends elsewhere: by more than 1e-3 for 45° and 10.6° (measured 1.4e-2 and 3.6e-3).
    A quarter turn only swaps the two columns (one sign flipped), and the run is unchanged."""
    from pytorch_optimizer.optimizer import soap

    original = soap.SOAP.get_orthogonal_matrix
    w0, gs = case((5, 7))

    def run(theta):
        def turned(mat):
            qs = original(mat)
            q = qs[1].clone()
            D = q.mT @ mat[1] @ q
            assert float(D[5:, 5:].abs().max()) < 1e-15 < float(D[4, 4])
            c, s = math.cos(theta), math.sin(theta)
            q[:, 5], q[:, 6] = c * qs[1][:, 5] - s * qs[1][:, 6], s * qs[1][:, 5] + c * qs[1][:, 6]
            D = q.mT @ mat[1] @ q
            assert float((D - torch.diag(torch.diagonal(D))).abs().max()) < 1e-13
            return [qs[0], q]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(soap.SOAP, "get_orthogonal_matrix", staticmethod(turned))
            return run_reference(soap_ref(0.0, 10), w0, gs)

    base = run(0.0)
    assert max_abs_diff(run(math.pi / 4), base) > 1e-3
    assert max_abs_diff(run(math.radians(10.6)), base) > 1e-3
    assert max_abs_diff(run(math.pi / 2), base) < 1e-13


def test_soap_reference_float32_qr_is_the_only_difference():
    w0, gs = case((6, 6))
    ours = run_program(library.load("soap"), w0, gs, {"f": 3})
    assert 1e-11 < max_abs_diff(ours, run_reference(soap_ref(0.01, 3), w0, gs)) < 1e-6


def test_soap_invariants_where_the_first_eigenbasis_is_not_unique():
    """Rows > cols: G·Gᵀ starts rank-deficient, so any basis of its null space is a correct
    eigenbasis and implementations need not agree. Check what holds for every such basis: no
    update at the first step, orthonormal bases that diagonalize L at the first step, and every later step
    is the Adam step in the rotated basis, written plainly."""
    shape, f = (7, 5), 3
    w, gs = case(shape, steps=12)
    fn = compile_program(library.load("soap"))
    w1, s = fn(w, gs[0], None, {"f": f}, 1)
    assert torch.equal(w1, w)
    QL, QR = s["QL"], s["QR"]
    for Q, M in ((QL, s["L"]), (QR, s["R"])):
        torch.testing.assert_close(Q.mT @ Q, torch.eye(Q.shape[0], dtype=F64), rtol=0, atol=1e-13)
        D = Q.mT @ M @ Q
        assert float((D - torch.diag(torch.diagonal(D))).abs().max()) < 1e-13
    lr, b1, b2, eps, wd = 3e-3, 0.95, 0.95, 1e-8, 0.01
    m, v, w = torch.zeros(shape, dtype=F64), torch.zeros(shape, dtype=F64), w1
    for t, g in enumerate(gs[1:], 2):
        k = t - 1
        QL, QR = s["QL"], s["QR"]
        m = b1 * m + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * (QL.mT @ g @ QR) ** 2
        u = QL @ ((QL.mT @ m @ QR) / (v.sqrt() + eps)) @ QR.mT
        expected = (w - lr * math.sqrt(1 - b2**k) / (1 - b1**k) * u) * (1 - lr * wd)
        w, s = fn(w, g, s, {"f": f}, t)
        torch.testing.assert_close(w, expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(s["QL"].mT @ s["QL"], torch.eye(7, dtype=F64), rtol=0, atol=1e-13)


def test_soap_order_four_tensors_use_the_matrix_view(float64_soap_qr):
    """Documented difference: the official code rotates every mode of a 4-D tensor
    (pytorch_optimizer on the 4-D tensor); this program rotates its rows × rest view (soap_modes
    rotates every mode)."""
    w0, gs = case(SHAPES["4d"])
    ours = run_program(library.load("soap"), w0, gs, {"f": 3})
    assert max_abs_diff(ours, run_reference(soap_ref(0.01, 3), w0, gs)) > 1e-4


# -- Conda --------------------------------------------------------------------------------------------
@pytest.fixture
def float64_conda_svd(monkeypatch):
    """Swap the float32 SVD of pytorch_optimizer's projector for a float64 one."""
    from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

    def svd64(self, weights, projection_type, from_random_matrix=False):
        u, _, vh = torch.linalg.svd(weights, full_matrices=False)
        return vh if projection_type == "right" else u

    monkeypatch.setattr(GaLoreProjector, "get_orthogonal_matrix", svd64)


def conda_ref(wd, T):
    return lambda p: po.Conda(p, lr=1e-2, betas=(0.9, 0.99), weight_decay=wd, update_proj_gap=T, scale=0.25,
                              projection_type="std", eps=1e-8)


@pytest.mark.parametrize("T", [2000, 5])
@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape", [(11,), (6, 6), (5, 7), (7, 5), SHAPES["4d"]])
def test_conda_matches_pytorch_optimizer(float64_conda_svd, shape, wd, T):
    w0, gs = case(shape)
    ours = run_program(library.load("conda"), w0, gs, {"wd": wd, "T": T})
    assert max_abs_diff(ours, run_reference_on_view(conda_ref(wd, T), w0, gs)) < 1e-13


def test_conda_refresh_changes_the_basis(float64_conda_svd):
    """The comparison above runs past refreshes (T = 5); without them the runs part."""
    w0, gs = case((7, 5))
    ours = run_program(library.load("conda"), w0, gs, {"T": 5})
    assert max_abs_diff(ours, run_reference(conda_ref(0.0, 2000), w0, gs)) > 1e-4


@pytest.mark.parametrize("wd", WDS)
def test_conda_embedding_is_plain_adam(float64_conda_svd, wd):
    """Only hidden matrices are projected (the official code); pytorch_optimizer projects every
    2-D parameter, so the embedding agrees with it flattened to a vector and not as a matrix."""
    w0, gs = case((7, 5))
    ours = run_program(library.load("conda"), w0, gs, {"wd": wd}, role="embedding")
    flat = run_reference(conda_ref(wd, 2000), w0.reshape(-1), [g.reshape(-1) for g in gs])
    assert max_abs_diff(ours, [x.reshape(7, 5) for x in flat]) < 1e-14
    assert max_abs_diff(ours, run_reference(conda_ref(wd, 2000), w0, gs)) > 1e-3


def test_conda_reference_does_not_project_four_dimensional_tensors(float64_conda_svd):
    w0, gs = case(SHAPES["4d"])
    ours = run_program(library.load("conda"), w0, gs)
    assert max_abs_diff(ours, run_reference(conda_ref(0.0, 2000), w0, gs)) > 1e-3


def test_conda_reference_float32_svd_is_the_only_difference():
    w0, gs = case((6, 6))
    ours = run_program(library.load("conda"), w0, gs, {"T": 5})
    assert 1e-11 < max_abs_diff(ours, run_reference(conda_ref(0.0, 5), w0, gs)) < 1e-6


# -- SCALE: the official code's equations, written plainly ----------------------------------------------
def scale_plain(w, grads, role, lr=1e-3, wd=0.0, beta=0.9, b1=0.9, b2=0.999, eps=1e-8):
    out, m, v = [], torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, 1):
        if role == "vector":
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            w = w * (1 - lr * wd) - step * m / (eps + v.sqrt())
        else:
            G = g.reshape(g.shape[0], -1)
            if role == "head":
                m = beta * m + (1 - beta) * G
                G = m
            dim = 0 if role == "embedding" else 1
            U = G / G.square().mean(dim=dim, keepdim=True).sqrt().clamp_min(1e-8)
            w = w * (1 - lr * wd) - lr * U.reshape(w.shape)
        out.append(w)
    return out


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((7, 5), "hidden"), ((5, 7), "hidden"), (SHAPES["4d"], "hidden"),
                                         ((7, 5), "embedding"), ((5, 7), "head"), ((11,), "vector")])
def test_scale_matches_its_equations(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("scale"), w0, gs, {"wd": wd}, role=role)
    assert max_abs_diff(ours, scale_plain(w0, gs, role, wd=wd)) < 1e-15


def test_scale_defining_properties():
    """Hidden matrices: each output unit's update has RMS 1 (norm sqrt(cols), the code's form;
    the paper's Euclidean form is this divided by sqrt(cols)) and nothing is remembered: the
    state stays zero, so the update depends on the current gradient alone."""
    shape = (6, 9)
    w, gs = case(shape, steps=3)
    fn = compile_program(library.load("scale"))
    s, prev = None, w
    for t, g in enumerate(gs, 1):
        w1, s = fn(prev, g, s, {"lr": 0.5}, t)
        u = (prev - w1) / 0.5
        torch.testing.assert_close(u.square().mean(1), torch.ones(6, dtype=F64), rtol=0, atol=1e-14)
        torch.testing.assert_close(u / math.sqrt(9), g / g.norm(dim=1, keepdim=True), rtol=0, atol=1e-14)
        assert all(float(x.abs().max()) == 0 for x in s.values())
        prev = w1
    ws, _ = fn(w, gs[2], None, {"lr": 0.5}, 1)  # the last gradient again, on a fresh state
    torch.testing.assert_close((w - ws) / 0.5, u, rtol=0, atol=1e-14)


# -- SWAN: the paper's equations, written plainly -------------------------------------------------
def swan_hidden_plain(G, eps=1e-8, eps_w=1e-8):
    c = G - G.mean(dim=1, keepdim=True)
    gn = c / c.square().mean(dim=1, keepdim=True).sqrt().clamp_min(eps)  # population std
    U, S, Vh = torch.linalg.svd(gn, full_matrices=False)
    dw = U @ torch.diag(S / (S * S + eps_w).sqrt()) @ Vh  # (gn·gnᵀ + eps_w·I)^(−1/2)·gn
    return gn.norm() / dw.norm() * dw


def swan_plain(w, grads, role, lr=1e-3, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
    out, m, v = [], torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, 1):
        w = w * (1 - lr * wd)
        if role == "hidden":
            w = w - lr * swan_hidden_plain(g.reshape(g.shape[0], -1)).reshape(w.shape)
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        out.append(w)
    return out


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((4, 9), "hidden"), ((9, 4), "hidden"), ((6, 6), "hidden"),
                                         (SHAPES["4d"], "hidden"), ((7, 5), "head"), ((11,), "vector")])
def test_swan_matches_its_equations(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("swan"), w0, gs, {"wd": wd}, role=role)
    assert rel_diff(ours, swan_plain(w0, gs, role, wd=wd)) < 1e-11


def test_swan_keeps_no_state_and_whitens():
    """The update depends on the current gradient only (whatever came before), its rows are
    standardized then whitened: ΔW·ΔWᵀ is a multiple of the identity for rows < cols."""
    shape = (5, 12)
    w, gs = case(shape, steps=4)
    fn = compile_program(library.load("swan"))
    _, s = fn(w, gs[0], None, None, 1)
    s_before = {k: v.clone() for k, v in s.items()}
    w_hist, _ = fn(w, gs[3], s, None, 4)
    w_fresh, _ = fn(w, gs[3], None, None, 1)
    assert torch.equal(w_hist, w_fresh)
    assert all(torch.equal(s[k], s_before[k]) and float(s[k].abs().max()) == 0 for k in s)
    dw = w - w_fresh
    gram = dw @ dw.mT
    torch.testing.assert_close(gram / gram[0, 0], torch.eye(5, dtype=F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (64, 64)])
def test_swan_float32_step_is_finite_where_row_centering_makes_the_gradient_singular(shape):
    """In float32, eigh of G̃·G̃ᵀ + eps_w·I (G̃ of low rank, and rank-deficient after row centering)
    returns the null directions' eigenvalues as rounding noise, some below zero; raised to −1/2 they were
    inf, and SWAN diverged at its first step on the mlp proxy. The update is finite, whitened
    on its non-null directions, and agrees with the float64 step's direction."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    g = torch.randn(shape[0], 8, generator=gen) @ torch.randn(8, shape[1], generator=gen)  # low rank, as a
    fn = compile_program(library.load("swan"))  # minibatch's gradient often is
    w32, _ = fn(w, g, None, None, 1)
    w64, _ = fn(w.double(), g.double(), None, None, 1)
    d32, d64 = (w - w32).double(), w.double() - w64
    assert bool(torch.isfinite(d32).all())
    cos = float((d32 * d64).sum() / (d32.norm() * d64.norm()))
    assert cos > 0.999


# -- SinkGD: the paper's equations, written plainly ---------------------------------------------------
def sinkgd_plain(w, grads, role, lr=1e-3, wd=0.0, L=5, b1=0.9, b2=0.999, eps=1e-8):
    out, m, v = [], torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, 1):
        w = w * (1 - lr * wd)
        if role == "hidden":
            X = g.reshape(g.shape[0], -1)
            mm, n = X.shape
            for _ in range(L):
                X = math.sqrt(n) * X / X.norm(dim=1, keepdim=True)
                X = math.sqrt(mm) * X / X.norm(dim=0, keepdim=True)
            w = w - lr * X.reshape(w.shape)
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        out.append(w)
    return out


@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, role", [((7, 5), "hidden"), ((5, 7), "hidden"), (SHAPES["4d"], "hidden"),
                                         ((7, 5), "embedding"), ((11,), "vector")])
def test_sinkgd_matches_its_equations(shape, role, wd):
    w0, gs = case(shape)
    ours = run_program(library.load("sinkgd"), w0, gs, {"wd": wd}, role=role)
    assert max_abs_diff(ours, sinkgd_plain(w0, gs, role, wd=wd)) < 1e-14


def test_sinkgd_keeps_no_state_and_balances_rows_and_columns():
    shape = (6, 10)
    w, gs = case(shape, steps=3)
    fn = compile_program(library.load("sinkgd"))
    _, s = fn(w, gs[0], None, {"lr": 1.0}, 1)
    w_hist, _ = fn(w, gs[2], s, {"lr": 1.0}, 3)
    w_fresh, _ = fn(w, gs[2], None, {"lr": 1.0}, 1)
    assert torch.equal(w_hist, w_fresh)
    X = w - w_fresh
    torch.testing.assert_close(X.norm(dim=0), torch.full((10,), math.sqrt(6), dtype=F64), rtol=0, atol=1e-12)
    assert float((X.norm(dim=1) - math.sqrt(10)).abs().max()) < 0.05 * math.sqrt(10)


# -- every program runs a grid of members in one call ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape, role", [((6, 4), "hidden"), ((4, 6), "head"), ((5,), "vector")])
def test_members_batched_equal_separate_runs(name, shape, role):
    """Per-member learning rates in one batched call give each member's own run."""
    fn = compile_program(library.load(name))
    lrs = torch.tensor([1e-3, 3e-3, 1e-2], dtype=F64)
    w0 = initial_param(shape)
    grads = gradient_sequence((3,) + shape, 12)
    hyper = {"f": 3} if name == "soap" else {"T": 4} if name == "conda" else {"k": 2} if name == "shampoo" else {}
    wb, sb = w0.expand((3,) + shape).clone(), None
    for t, g in enumerate(grads, 1):
        wb, sb = fn(wb, g, sb, {**hyper, "lr": lrs}, t, batched=True, role=role)
    for i in range(3):
        wi, si = w0.clone(), None
        for t, g in enumerate(grads, 1):
            wi, si = fn(wi, g[i], si, {**hyper, "lr": float(lrs[i])}, t, role=role)
        torch.testing.assert_close(wb[i], wi, rtol=0, atol=1e-12)


# -- per-mode Shampoo and SOAP: tensors of order 3 and 4 as they are ------------------------------
@pytest.mark.parametrize("name", ["shampoo_modes", "soap_modes"])
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (11,)])
def test_per_mode_programs_equal_the_view_programs_on_matrices_and_vectors(name, shape):
    """On vectors and matrices the per-mode programs run their view programs' rules, step for step."""
    w0, gs = case(shape, steps=20)
    hyper = {"f": 3} if name == "soap_modes" else {"k": 3}
    ours = run_program(library.load(name), w0, gs, hyper)
    base = run_program(library.load(name.removesuffix("_modes")), w0, gs, hyper)
    assert max_abs_diff(ours, base) == 0


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("wd", WDS)
@pytest.mark.parametrize("shape, tol", [((11,), 1e-9), ((7, 5), 1e-13), ((5, 7), 1e-13), (SHAPES["4d"], 1e-13),
                                        ((4, 3, 5), 1e-13), ((3, 1, 2, 2), 1e-13)])
def test_shampoo_modes_matches_pytorch_optimizer(shape, tol, wd, k):
    """Relative to the largest weight; vectors are full-matrix AdaGrad, whose early preconditioner
    (rank-t plus 1e-4·I) has condition numbers near 1e5, hence the looser tolerance. Tensors of order
    3 and 4 are compared as they are (the reference: one preconditioner per mode, exponent −1/(2n);
    a mode of size 1 counts)."""
    w0, gs = case(shape)
    ours = run_program(library.load("shampoo_modes"), w0, gs, {"wd": wd, "k": k, "lr": 0.01})
    assert rel_diff(ours, run_reference(shampoo_ref(wd, k), w0, gs)) < tol


def test_shampoo_modes_order_five_tensors_use_the_matrix_view():
    """Documented: past 4 dimensions the per-mode primitives stop, and the program runs the matrix
    rule on the rows × rest view (pytorch_optimizer on that view), not the reference's per-mode rule."""
    shape = (3, 2, 2, 1, 2)
    w0, gs = case(shape, steps=12)
    ours = run_program(library.load("shampoo_modes"), w0, gs, {"lr": 0.01})
    assert rel_diff(ours, run_reference_on_view(shampoo_ref(0.0, 1), w0, gs)) < 1e-13
    assert max_abs_diff(ours, run_reference(shampoo_ref(0.0, 1), w0, gs)) > 1e-4


@pytest.mark.parametrize("f", [10, 3])
@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("shape", [(11,), (6, 6), (5, 7), SHAPES["4d"], (4, 3, 5), (3, 1, 2, 2)])
def test_soap_modes_matches_pytorch_optimizer(float64_soap_qr, soap_shared_degenerate_eigenbasis, shape, wd, f):
    """As test_soap_matches_pytorch_optimizer (the same shared null-space basis where the first
    gradient's matrix is not square), and tensors of order 3 and 4 compared as they are, one basis
    per mode (the reference's per-mode form); here every mode's unfolding has full row rank, so
    nothing is replaced."""
    w0, gs = case(shape)
    hyper = {"wd": wd, "f": f}
    ours = run_program(library.load("soap_modes"), w0, gs, hyper)
    _, s1 = compile_program(library.load("soap_modes"))(w0.clone(), gs[0].clone(), None, hyper, 1)
    bases = {1: None, 2: ["QL", "QR"]}.get(len(shape), ["QL", "Q1", "Q2", "Q3"][:len(shape)])
    soap_shared_degenerate_eigenbasis["bases"] = bases and [s1[n] for n in bases]
    ref = run_reference(soap_ref(wd, f), w0, gs)
    rows, cols = shape if len(shape) == 2 else (1, 1)
    assert soap_shared_degenerate_eigenbasis["replaced"] == ([abs(rows - cols)] if rows != cols else [])
    assert max_abs_diff(ours, ref) < 1e-13


def test_soap_modes_order_five_tensors_use_the_matrix_view(float64_soap_qr):
    """Documented: past 4 dimensions the program rotates the rows × rest view (exactly what it does
    to that view as a matrix), where the official code rotates every mode."""
    shape = (3, 2, 2, 1, 2)
    w0, gs = case(shape, steps=12)
    ours = run_program(library.load("soap_modes"), w0, gs, {"f": 3})
    on_view = run_program(library.load("soap_modes"), w0.reshape(3, 8), [g.reshape(3, 8) for g in gs], {"f": 3})
    assert max_abs_diff(ours, [x.reshape(shape) for x in on_view]) == 0
    assert max_abs_diff(ours, run_reference(soap_ref(0.01, 3), w0, gs)) > 1e-4


@pytest.mark.parametrize("name, hyper", [("shampoo_modes", {"k": 2}), ("soap_modes", {"f": 3})])
@pytest.mark.parametrize("shape", [(3, 2, 2, 2), (3, 4, 2)])
def test_per_mode_members_batched_equal_separate_runs(name, hyper, shape):
    """The per-mode rules of tensors of order 3 and 4 also run a grid of members in one call."""
    fn = compile_program(library.load(name))
    lrs = torch.tensor([1e-3, 3e-3, 1e-2], dtype=F64)
    w0 = initial_param(shape)
    grads = gradient_sequence((3,) + shape, 8)
    wb, sb = w0.expand((3,) + shape).clone(), None
    for t, g in enumerate(grads, 1):
        wb, sb = fn(wb, g, sb, {**hyper, "lr": lrs}, t, batched=True)
    assert sb["Q2" if name == "soap_modes" else "P2"].shape == (3, shape[2], shape[2])
    for i in range(3):
        wi, si = w0.clone(), None
        for t, g in enumerate(grads, 1):
            wi, si = fn(wi, g[i], si, {**hyper, "lr": float(lrs[i])}, t)
        torch.testing.assert_close(wb[i], wi, rtol=0, atol=1e-12)
