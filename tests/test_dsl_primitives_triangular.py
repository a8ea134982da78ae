"""triu, tril and solve_triangular against torch, on the 2-D view of a parameter, batched or not,
through the step function and every path of the exported optimizer."""

from __future__ import annotations

import pytest
import torch

from optdisco.dsl import DSLError, compile_program, parse, to_optimizer

F64 = torch.float64
# Cholesky-like factors of the gradient's Gram matrix, then both triangular solves
PROGRAM = """
hyper lr = 0.1, damping = 1
L = tril(g @ transpose(g)) + damping * eye_rows(g)
U = triu(transpose(L))
w = w - lr * solve_triangular(L, g) - lr * solve_triangular(U, g, 1)
"""


def expected(w, g, lr=0.1, damping=1.0):
    """The program's step written with torch on the rows × rest view."""
    g2 = g.reshape(g.shape[0], -1)
    L = torch.tril(g2 @ g2.T) + damping * torch.eye(g2.shape[0], dtype=g.dtype)
    U = torch.triu(L.T)
    x_low = torch.linalg.solve_triangular(L, g2, upper=False)
    x_up = torch.linalg.solve_triangular(U, g2, upper=True)
    return (w.reshape(g2.shape) - lr * x_low - lr * x_up).reshape(w.shape)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 3, 2, 2)])
def test_matches_torch(shape):
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(shape, generator=gen, dtype=F64), torch.randn(shape, generator=gen, dtype=F64)
    w1, _ = compile_program(PROGRAM)(w, g, None, None, 1)
    assert float((w1 - expected(w, g)).abs().max()) < 1e-13
    # the solve really solves: L·X = G
    g2 = g.reshape(shape[0], -1)
    L = torch.tril(g2 @ g2.T) + torch.eye(shape[0], dtype=F64)
    fn = compile_program("hyper lr = 1\nL = tril(g @ transpose(g)) + eye_rows(g)\nw = w - lr * solve_triangular(L, g)\n")
    x = -(fn(torch.zeros(shape, dtype=F64), g, None, None, 1)[0]).reshape(g2.shape)
    assert float((L @ x - g2).abs().max()) < 1e-12


def test_triu_and_tril_keep_their_triangles():
    x = torch.arange(1.0, 13.0, dtype=F64).reshape(3, 4)
    for fn_name, ref in (("triu", torch.triu), ("tril", torch.tril)):
        fn = compile_program(f"hyper lr = 1\nw = w - lr * {fn_name}(g)\n")
        w1, _ = fn(torch.zeros_like(x), x, None, None, 1)
        assert torch.equal(-w1, ref(x))


def test_batched_members_with_per_member_hyperparameters():
    gen = torch.Generator().manual_seed(1)
    W, G = torch.randn(3, 4, 6, generator=gen, dtype=F64), torch.randn(3, 4, 6, generator=gen, dtype=F64)
    lrs = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    W1, _ = compile_program(PROGRAM)(W, G, None, {"lr": lrs}, 1, batched=True)
    for i in range(3):
        assert float((W1[i] - expected(W[i], G[i], lr=float(lrs[i]))).abs().max()) < 1e-13


def test_export_paths_agree(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    shapes = [(4, 3), (3, 2, 2), (6, 2)]
    grads = [[torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(3)]
    start = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
    out = {}
    for path in ("per_tensor", "foreach", "hoisted"):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        with monkeypatch.context() as m:
            if path == "hoisted":
                m.setattr(torch, "compile", lambda fn, **_: fn)
            opt = to_optimizer(PROGRAM, params, foreach=path == "foreach", compile=path == "hoisted")
            for gs in grads:
                for p, g in zip(params, gs):
                    p.grad = g.clone()
                opt.step()
        out[path] = [p.detach() for p in params]
    ref = [w.clone() for w in start]
    for gs in grads:
        ref = [expected(w, g) for w, g in zip(ref, gs)]
    for path, params in out.items():
        for a, b in zip(params, ref):
            assert float((a - b).abs().max()) < 1e-12, path


def test_low_precision_is_solved_in_float32():
    g = torch.randn(4, 3).to(torch.bfloat16)
    w1, _ = compile_program(PROGRAM)(torch.zeros_like(g), g, None, None, 1)
    assert w1.dtype == torch.bfloat16 and bool(w1.isfinite().all())


@pytest.mark.parametrize("body, message, at", [
    ("w = w - lr * solve_triangular(g, g)", "square matrix A", "g, g)"),
    ("w = w - lr * solve_triangular(g @ transpose(g), transpose(g))", "A's columns differ from B's rows", "transpose(g))"),
    ("w = w - lr * solve_triangular(g @ transpose(g), g, lr)", "must be the constant 0 or 1", "lr)"),
    ("w = w - lr * triu(lr)", "needs a tensor", "lr)"),
    ("w = w - lr * tril(g, 1)", "takes 1 argument", "tril"),
])
def test_checker_errors(body, message, at):
    with pytest.raises(DSLError, match=message) as e:
        parse("hyper lr = 1\n" + body + "\n")
    assert (e.value.line, e.value.column) == (2, body.rindex(at) + 1)
