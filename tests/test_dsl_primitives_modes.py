"""The per-mode primitives: mode_gram, mode_mul and eye_mode on a parameter's real shape.

A parameter (d0, d1, …) is seen as the order-4 tensor (d0, d1, d2, d3), a missing mode of size 1.
Checked here: the equations against torch.einsum on the tensor itself, every member of a batched
call, the checker's shapes and located errors, the exported optimizer's per-tensor path (and the
refusal of the others), and the memory and cost models' mode sizes.
"""

import pickle

import pytest
import torch

from optdisco.dsl import compile_program, parse, to_optimizer
from optdisco.dsl import runtime as R
from optdisco.dsl.cost import step_cost
from optdisco.dsl.errors import DSLError
from optdisco.dsl.memory import param_state_bytes

F64 = torch.float64
LETTERS = "abcd"


def mode_product(x, a, k):
    """x ×_k A on the tensor itself, written with einsum."""
    idx = LETTERS[: x.dim()]
    out = idx[:k] + "z" + idx[k + 1:]
    return torch.einsum(f"z{idx[k]},{idx}->{out}", a, x)


def mode_gram_plain(x, k):
    xk = x.movedim(k, 0).reshape(x.shape[k], -1)
    return xk @ xk.T


@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (4, 3, 5), (6, 1, 2, 2), (7, 5)])
def test_mode_primitives_match_their_equations_on_the_tensor_itself(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=F64)
    nd = R.Ndim(shape)
    view = x.reshape(1, shape[0], -1)
    for k in range(len(shape)):
        a = torch.randn(shape[k], shape[k], generator=gen, dtype=F64)
        torch.testing.assert_close(R.mode_gram(view, k, nd)[0], mode_gram_plain(x, k), rtol=0, atol=1e-13)
        torch.testing.assert_close(R.mode_mul(view, a[None], k, nd).reshape(shape), mode_product(x, a, k),
                                   rtol=0, atol=1e-13)
        assert torch.equal(R.eye_mode(view, k, nd)[0], torch.eye(shape[k], dtype=F64))
    # a missing mode has size 1: its Gram matrix is the squared norm, its product a scaling
    k = len(shape)
    if k < 4:
        torch.testing.assert_close(R.mode_gram(view, k, nd).reshape(()), (x * x).sum(), rtol=1e-14, atol=0)
        torch.testing.assert_close(R.mode_mul(view, torch.full((1, 1, 1), 3.0, dtype=F64), k, nd), 3 * view)


def test_ndim_is_an_int_that_keeps_the_shape():
    nd = R.Ndim((4, 3, 2))
    assert nd == 3 and nd >= 3 and isinstance(nd, int) and nd.dims == (4, 3, 2)
    assert pickle.loads(pickle.dumps(nd)).dims == (4, 3, 2)
    with pytest.raises(ValueError, match="at most 4 dimensions"):
        R.mode_gram(torch.zeros(1, 2, 16), 0, R.Ndim((2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="need the parameter's shape"):
        R.mode_gram(torch.zeros(1, 2, 8), 1, 3)


PROGRAM = """hyper lr = 1e-3, beta = 0.9
state A = eye_mode(w, 2), B = eye_mode(w, 0)
A = ema(A, mode_gram(g, 2), beta)
B = ema(B, mode_gram(g, 0), beta)
w = w - lr * mode_mul(mode_mul(g, A, 2), B, 0)
"""


def plain_steps(w, grads, lr=1e-3, beta=0.9):
    A, B = torch.eye(w.shape[2], dtype=F64), torch.eye(w.shape[0], dtype=F64)
    for g in grads:
        A = beta * A + (1 - beta) * mode_gram_plain(g, 2)
        B = beta * B + (1 - beta) * mode_gram_plain(g, 0)
        w = w - lr * mode_product(mode_product(g, A, 2), B, 0)
    return w


def test_a_program_batched_over_members_matches_plain_torch_per_member():
    shape = (3, 2, 4, 2)
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, generator=gen, dtype=F64)
    grads = [torch.randn((3,) + shape, generator=gen, dtype=F64) for _ in range(4)]
    lrs = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64)
    fn = compile_program(parse(PROGRAM))
    W, S = w0.expand((3,) + shape).clone(), None
    for t, g in enumerate(grads, 1):
        W, S = fn(W, g, S, {"lr": lrs}, t, batched=True)
    assert S["A"].shape == (3, 4, 4) and S["B"].shape == (3, 3, 3)
    for i in range(3):
        expected = plain_steps(w0, [g[i] for g in grads], lr=float(lrs[i]))
        torch.testing.assert_close(W[i], expected, rtol=0, atol=1e-13)


def test_the_exported_optimizer_runs_the_per_tensor_path_and_refuses_the_others():
    shape = (3, 2, 4, 2)
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(shape, generator=gen, dtype=F64)
    grads = [torch.randn(shape, generator=gen, dtype=F64) for _ in range(4)]
    p = torch.nn.Parameter(w0.clone())
    opt = to_optimizer(parse(PROGRAM), [p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), plain_steps(w0, grads), rtol=0, atol=1e-13)
    assert opt.state[p]["A"].shape == (4, 4)
    with pytest.raises(ValueError, match="per-mode factors"):
        to_optimizer(parse(PROGRAM), [p], foreach=True)
    with pytest.raises(ValueError, match="per-mode factors"):
        to_optimizer(parse(PROGRAM), [p], compile=True)


@pytest.mark.parametrize("line, col, message", [
    ("w = w - lr * mode_mul(g, mode_gram(g, 1), 2)", 26, "must be d2×d2, got a d1×d1 tensor"),
    ("w = w - lr * mode_mul(g, eye_mode(w, 4), 4)", 38, "integer constant from 0 to 3"),
    ("w = w - lr * mode_mul(g, eye_mode(w, t), 1)", 38, "integer constant from 0 to 3"),
    ("w = w - lr * mode_mul(g, eye_mode(w, 1.5), 1)", 38, "integer constant from 0 to 3"),
    ("w = w - lr * mode_mul(g, g @ transpose(g), 1)", 28, "must be d1×d1, got a r×r tensor"),
    ("w = w - lr * mode_mul(mode_gram(g, 1), eye_mode(w, 1), 1)", 23, "needs a tensor shaped like w"),
    ("w = w - lr * sum(mode_gram(rowsum(g), 1)) * g", 28, "needs a tensor shaped like w"),
    ("w = w - lr * mode_gram(g, 1)", 7, "do not broadcast"),
])
def test_misuse_is_a_located_error(line, col, message):
    with pytest.raises(DSLError, match=message) as e:
        parse("hyper lr = 1e-3\n" + line)
    assert (e.value.line, e.value.column) == (2, col)


def test_mode_zero_is_the_rows_and_other_modes_have_their_own_sizes():
    ok = parse("hyper lr = 1e-3\nstate L = eye_rows(w)\nL = L + mode_gram(g, 0)\nw = w - lr * (L @ g)\n")
    assert ok.uses_modes
    with pytest.raises(DSLError, match="d1×d1"):
        parse("hyper lr = 1e-3\nstate L = eye_cols(w)\nL = L + mode_gram(g, 1)\nw = w - lr * (g @ L)\n")


def test_memory_and_cost_count_each_mode_at_its_size():
    p = parse(PROGRAM)
    assert param_state_bytes(p, (3, 2, 4, 2), "hidden") == 4 * (4 * 4 + 3 * 3)
    assert param_state_bytes(p, (5, 7), "hidden") == 4 * (1 + 5 * 5)  # a missing mode 2 has size 1
    small = step_cost(p, [("w", (3, 2, 4, 2), "hidden")])
    large = step_cost(p, [("w", (3, 2, 40, 2), "hidden")])
    assert large.flops_per_element > small.flops_per_element + 2 * 36  # mode 2's product: 2·d2 per element
