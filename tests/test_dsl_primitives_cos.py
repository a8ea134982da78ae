"""The ``cos`` primitive (added for PowerSign/AddSign's cosine and restart sign decays)."""

import math

import pytest
import torch

from optdisco.dsl import DSLError, check, compile_program, parse
from optdisco.dsl import runtime as R
from optdisco.dsl.symbolic import from_sympy, to_sympy


def test_cos_runtime_tensor_and_float():
    x = torch.linspace(-7.0, 7.0, 29, dtype=torch.float64).reshape(1, 29, 1)
    assert torch.equal(R.cos(x), torch.cos(x))
    for v in (0.0, 1.0, -2.5, math.pi, 1e3):
        assert R.cos(v) == math.cos(v)
    assert math.isnan(R.cos(math.inf))  # math.cos raises; the runtime gives nan like torch
    assert math.isnan(R.cos(math.nan))


def test_cos_is_static_on_static_arguments():
    # a t-schedule made with cos may steer an if-condition; cos of a tensor may not
    check(parse("hyper lr = 0.1, T = 10\nf = cos(3.141592653589793 * t / T)\nif f > 0:\nw = w - lr * g\nend\n"))
    with pytest.raises(DSLError, match="if-condition"):
        check(parse("hyper lr = 0.1\nif cos(g) > 0:\nw = w - lr * g\nend\n"))
    with pytest.raises(DSLError, match="cos takes 1 argument"):
        check(parse("hyper lr = 0.1\nw = w - lr * cos(g, g)\n"))


def test_cos_compiled_schedule_matches_math():
    fn = compile_program("hyper lr = 0.5, T = 7\nw = w - lr * 0.5 * (1 + cos(3.141592653589793 * (t % T) / T)) * g\n")
    w = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, -2.0, 0.25], dtype=torch.float64)
    state = None
    for t in range(1, 20):
        w_new, state = fn(w, g, state, None, t)
        f = 0.5 * (1 + math.cos(math.pi * (t % 7) / 7))
        assert torch.allclose(w_new, w - 0.5 * f * g, rtol=0, atol=1e-15)
        w = w_new
    # batched: a per-member hyper
    fnb = compile_program("hyper lr = 1\nw = w - lr * cos(g)\n")
    wb, _ = fnb(torch.zeros(2, 3, dtype=torch.float64), g.expand(2, 3).clone(), None,
                {"lr": torch.tensor([1.0, 2.0], dtype=torch.float64)}, 1, batched=True)
    assert torch.allclose(wb, -torch.stack([torch.cos(g), 2 * torch.cos(g)]), atol=1e-15)


def test_cos_sympy_round_trip():
    prog = parse("hyper lr = 0.1\nw = w - lr * cos(t) * g\n")
    expr = prog.body[0].value
    s = to_sympy(expr)
    assert "cos" in str(s)
    back = from_sympy(s)
    assert "cos" in repr(back)
