"""Compiled programs equal plain torch implementations of the same equations, written here."""

import math

import pytest
import torch

from harness import ADAM

from optdisco.dsl import compile_program, parse

SGD = "hyper lr = 0.05, wd = 0.01\nw = w - lr * (g + wd * w)\n"
LION = """
hyper lr = 1e-4, beta1 = 0.9, beta2 = 0.99, wd = 1.0
state m = zeros
c = ema(m, g, beta1)
w = w - lr * (sign(c) + wd * w)
m = ema(m, g, beta2)
"""


def plain_sgd(w, grads, lr=0.05, wd=0.01):
    out = []
    for g in grads:
        w = w - lr * (g + wd * w)
        out.append(w)
    return out


def plain_adam(w, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    out = []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        w = w - lr * mhat / (vhat.sqrt() + eps)
        out.append(w)
    return out


def plain_lion(w, grads, lr=1e-4, b1=0.9, b2=0.99, wd=1.0):
    m = torch.zeros_like(w)
    out = []
    for g in grads:
        c = b1 * m + (1 - b1) * g
        w = w - lr * (torch.sign(c) + wd * w)
        m = b2 * m + (1 - b2) * g
        out.append(w)
    return out


def run(text, w, grads, hyper=None):
    f = compile_program(parse(text))
    state, out = None, []
    for t, g in enumerate(grads, 1):
        w, state = f(w, g, state, hyper, t)
        out.append(w)
    return out


@pytest.mark.parametrize("shape", [(13,), (6, 5), (3, 4, 2, 2), ()])
@pytest.mark.parametrize("name,text,plain", [("sgd", SGD, plain_sgd), ("adam", ADAM, plain_adam), ("lion", LION, plain_lion)])
def test_compiled_program_equals_plain_torch_over_100_steps(name, text, plain, shape):
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(100)]
    ours = run(text, w0.clone(), grads)
    ref = plain(w0.clone(), grads)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the run moved the parameter: the comparison is not vacuous
    assert float((ours[-1] - w0).abs().max()) > 1e-4


def test_members_equal_separate_runs_with_per_member_hyperparameters():
    M, shape = 4, (5, 3)
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn((M,) + shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn((M,) + shape, generator=gen, dtype=torch.float64) for _ in range(30)]
    lrs = torch.tensor([1e-3, 3e-3, 1e-2, 3e-2], dtype=torch.float64)
    beta1 = torch.tensor([0.8, 0.9, 0.9, 0.95], dtype=torch.float64)
    f = compile_program(parse(ADAM))
    w, state = w0.clone(), None
    for t, g in enumerate(grads, 1):
        w, state = f(w, g, state, {"lr": lrs, "beta1": beta1}, t, batched=True)
    assert state["m"].shape == (M,) + shape
    for i in range(M):
        sep = run(ADAM, w0[i].clone(), [g[i] for g in grads], {"lr": float(lrs[i]), "beta1": float(beta1[i])})
        torch.testing.assert_close(w[i], sep[-1], rtol=0, atol=1e-14)


def test_members_equal_separate_runs_for_reductions_and_matrix_ops():
    text = """
hyper lr = 0.02, mu = 0.9
state b = zeros, n = 0
b = mu * b + g
n = ema(n, norm(g), 0.9)
if is_hidden:
    u = orthogonalize(g + mu * b) * sqrt(max(1, rows / cols))
else:
    u = normalize(b) * n
end
w = w - lr * (u + rowmean(g) * colstd(g))
"""
    f = compile_program(parse(text))
    M = 3
    for shape in [(6, 4), (4, 2, 2), (7,)]:
        gen = torch.Generator().manual_seed(11)
        w0 = torch.randn((M,) + shape, generator=gen, dtype=torch.float64)
        grads = [torch.randn((M,) + shape, generator=gen, dtype=torch.float64) for _ in range(8)]
        lrs = torch.tensor([0.01, 0.02, 0.05], dtype=torch.float64)
        w, st = w0.clone(), None
        for t, g in enumerate(grads, 1):
            w, st = f(w, g, st, {"lr": lrs}, t, batched=True)
        for i in range(M):
            wi, si = w0[i].clone(), None
            for t, g in enumerate(grads, 1):
                wi, si = f(wi, g[i], si, {"lr": float(lrs[i])}, t)
            torch.testing.assert_close(w[i], wi, rtol=0, atol=1e-12)


def test_orthogonalize_follows_the_quintic_newton_schulz_iteration():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    # the iteration written plainly: X ← aX + (bA + cA²)X, A = XXᵀ, on the wide orientation
    X = G.T / (G.norm() + 1e-7)
    for _ in range(5):
        A = X @ X.T
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    f = compile_program(parse("hyper lr = 1\nw = w - lr * orthogonalize(g)\n"))
    w, _ = f(torch.zeros(8, 5, dtype=torch.float64), G, None, None, 1)
    torch.testing.assert_close(-w, X.T, rtol=0, atol=1e-12)
    s = torch.linalg.svdvals(-w)
    assert float(s.min()) > 0.6 and float(s.max()) < 1.25  # NS5 lands near orthogonal


def test_periodic_reset_and_first_step_initialisation():
    text = """
hyper lr = 1, k = 3
state m = zeros, s = norm(g)
if t % k == 1:
    m = zeros_like(m)
end
m = m + g
w = w - lr * m / s
"""
    f = compile_program(parse(text))
    grads = [torch.full((2,), float(i)) for i in range(1, 8)]
    w, st, seen = torch.zeros(2), None, []
    for t, g in enumerate(grads, 1):
        w, st = f(w, g, st, None, t)
        seen.append(float(st["m"][0]))
    # m resets at t = 1, 4, 7 ; s is frozen at the first gradient's norm
    assert seen == [1, 3, 6, 4, 9, 15, 7]
    assert float(st["s"].reshape(-1)[0]) == pytest.approx(math.sqrt(2))


def test_static_scalar_arithmetic_never_raises():
    text = "hyper lr = 1, a = 0\nu = (1 / a) + log(a) + sqrt(a - 1) + (a - 1) ** 0.5 + a % a\nw = w - lr * where(u > 0, g, g)\n"
    f = compile_program(parse(text))
    w, _ = f(torch.ones(3), torch.ones(3), None, None, 1)
    assert torch.equal(w, torch.zeros(3))


def test_routing_by_role_and_shape():
    text = "hyper lr = 1\nif is_hidden:\n    w = w - lr\nelif is_embedding:\n    w = w - 2 * lr\nelse:\n    w = w - 3 * lr\nend\n"
    f = compile_program(parse(text))
    z = torch.zeros(3, 2)
    assert float(f(z, z, None, None, 1)[0][0, 0]) == -1
    assert float(f(z, z, None, None, 1, role="embedding")[0][0, 0]) == -2
    assert float(f(z, z, None, None, 1, role="head")[0][0, 0]) == -3
    assert float(f(torch.zeros(4), torch.zeros(4), None, None, 1)[0][0]) == -3


def test_hess_diag_is_required_when_read():
    f = compile_program(parse("hyper lr = 1\nw = w - lr * g / (abs(hess_diag) + 1)\n"))
    with pytest.raises(ValueError, match="hess_diag"):
        f(torch.ones(2), torch.ones(2), None, None, 1)
    w, _ = f(torch.ones(2), torch.ones(2), None, None, 1, hess_diag=torch.ones(2))
    assert torch.equal(w, torch.full((2,), 0.5))


def test_generated_code_can_be_printed_and_is_built_from_our_names_only():
    f = compile_program(parse(ADAM))
    assert "def step(" in f.source
    assert "v_m = R.ema(v_m, v_g, v_beta1)" in f.source


def test_state_is_allocated_only_where_routing_can_reach_it():
    text = """
hyper lr = 0.1, k = 3
state b = zeros, m = zeros, v = zeros
if is_hidden:
    b = 0.9 * b + g
    w = w - lr * orthogonalize(b)
else:
    m = ema(m, g, 0.9)
    if t % k == 0:
        v = ema(v, g * g, 0.99)
    end
    w = w - lr * m / (sqrt(v) + 1)
end
"""
    f = compile_program(parse(text))
    _, hidden = f(torch.zeros(4, 3), torch.ones(4, 3), None, None, 1)
    _, vector = f(torch.zeros(4), torch.ones(4), None, None, 1)
    _, emb = f(torch.zeros(4, 3), torch.ones(4, 3), None, None, 1, role="embedding")
    assert set(hidden) == {"b"}
    assert set(vector) == set(emb) == {"m", "v"}  # a t-dependent branch counts as reachable
    w, s = torch.zeros(4, 3), None
    for t in range(1, 5):
        w, s = f(w, torch.ones(4, 3), s, None, t)
    assert set(s) == {"b"}


def test_a_value_static_on_one_branch_and_computed_on_the_other_merges():
    text = "hyper lr = 1\nif t > 3:\n    r = 0.5\nelse:\n    r = mean(g)\nend\nw = w - lr * r * g\n"
    f = compile_program(parse(text))
    w, _ = f(torch.zeros(2), torch.tensor([1.0, 3.0]), None, None, 1)
    assert w.tolist() == [-2.0, -6.0]
    w, _ = f(torch.zeros(2), torch.tensor([1.0, 3.0]), None, None, 5)
    assert w.tolist() == [-0.5, -1.5]
