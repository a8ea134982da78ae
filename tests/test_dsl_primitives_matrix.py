"""The matrix primitives added for SOAP and Conda: svd_u, svd_v, sorting_perm, eye_like.

Each is checked against an independent computation (numpy's SVD, Python's sort, numpy's eye),
through compiled programs, with and without the member dimension; the shape rules reject misuse
with located errors."""

import numpy as np
import pytest
import torch

from optdisco.dsl import DSLError, compile_program, parse
from optdisco.dsl import runtime as R


def _same_up_to_column_signs(a: np.ndarray, b: np.ndarray, tol=1e-10):
    signs = np.sign(np.sum(a * b, axis=0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(a * signs, b, atol=tol)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_svd_factors_match_numpy(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U = R.svd_u(x[None])[0].numpy()
    V = R.svd_v(x[None])[0].numpy()
    r, c = shape
    assert U.shape == (r, r) and V.shape == (c, c)
    nu, ns, nvh = np.linalg.svd(x.numpy(), full_matrices=True)
    k = min(r, c)
    # the singular directions with a nonzero singular value are unique up to sign
    _same_up_to_column_signs(U[:, :k], nu[:, :k])
    _same_up_to_column_signs(V[:, :k], nvh.T[:, :k])
    # the factors are orthogonal and diagonalize x with descending singular values
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=1e-12)
    np.testing.assert_allclose(V.T @ V, np.eye(c), atol=1e-12)
    d = U.T @ x.numpy() @ V
    expected = np.zeros((r, c))
    expected[range(k), range(k)] = ns
    np.testing.assert_allclose(d, expected, atol=1e-12)


def test_sorting_perm_sorts_rows_and_columns_descending():
    vals = [0.3, -1.0, 2.5, 0.0, 2.5, -7.0]
    x = torch.tensor(vals, dtype=torch.float64)
    order = sorted(range(len(vals)), key=lambda i: -vals[i])  # Python's sort is stable
    P = R.sorting_perm(x.reshape(1, 1, -1))[0]
    assert torch.equal(P.sum(0), torch.ones(6, dtype=torch.float64))
    assert torch.equal(P.sum(1), torch.ones(6, dtype=torch.float64))
    assert (x[None] @ P)[0].tolist() == [vals[i] for i in order]
    Pc = R.sorting_perm(x.reshape(1, -1, 1))[0]
    assert torch.equal(Pc, P)
    assert (Pc.T @ x[:, None])[:, 0].tolist() == [vals[i] for i in order]
    # columns of a matrix permuted the same way (what SOAP does to its basis)
    Q = torch.randn(6, 6, dtype=torch.float64)
    assert torch.equal(Q @ P, Q[:, order])


def test_eye_like_is_the_rectangular_identity():
    for r, c in [(3, 5), (5, 3), (2, 2)]:
        e = R.eye_like(torch.zeros(2, r, c, dtype=torch.float32))
        assert e.shape == (2, r, c)
        assert np.array_equal(e[1].numpy(), np.eye(r, c, dtype=np.float32))


PROGRAM = """
hyper lr = 0.1
state Q = eye_cols(w)
Q = transpose(eye_like(w)) @ (eye_like(w) @ svd_v(g))
S = transpose(svd_u(g)) @ g @ Q
P = sorting_perm(colsum(g))
w = w - lr * (S + g @ P)
"""


def test_primitives_compile_and_batch_over_members():
    fn = compile_program(PROGRAM)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    wb, sb = fn(w, g, None, None, 1, batched=True)
    for i in range(3):
        wi, si = fn(w[i], g[i], None, None, 1)
        torch.testing.assert_close(wb[i], wi, rtol=0, atol=1e-12)
        torch.testing.assert_close(sb["Q"][i], si["Q"], rtol=0, atol=1e-12)
        # independent: numpy's singular values, Python's sort; U'gV is diag(σ) padded to 6×4
        gi = g[i].numpy()
        sigma = np.linalg.svd(gi, compute_uv=False)
        order = sorted(range(4), key=lambda j: -gi[:, j].sum())
        expected = w[i].numpy() - 0.1 * (np.eye(6, 4) * np.concatenate([sigma, [0, 0]])[:, None] + gi[:, order])
        np.testing.assert_allclose(wi.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize(
    "body, message",
    [
        ("w = w - lr * svd_u(t) @ w", "svd_u is a matrix operation"),
        ("w = w - lr * sorting_perm(g) @ w", "sorting_perm needs a row"),
        ("w = w - lr * sorting_perm(sum(g)) * w", "sorting_perm needs a row"),
        ("w = w - lr * eye_like(lr)", "eye_like is a matrix operation"),
        ("w = w - lr * svd_v(g) @ w", "inner dimensions differ"),
    ],
)
def test_shape_rules_reject_misuse_with_location(body, message):
    with pytest.raises(DSLError, match=message) as err:
        parse("hyper lr = 0.1\n" + body + "\n")
    assert err.value.line == 2


def test_shape_rules_give_square_factors():
    p = parse("hyper lr = 0.1\nstate L = svd_u(w), R = svd_v(w), P = sorting_perm(rowsum(w))\n"
              "w = w - lr * L @ P @ w @ R\nL = L\nR = R\nP = P\n")
    fn = compile_program(p)
    shapes = {k: tuple(v.shape) for k, v in fn(torch.randn(5, 3), torch.randn(5, 3))[1].items()}
    assert shapes == {"L": (5, 5), "R": (3, 3), "P": (5, 5)}
