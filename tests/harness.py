"""Shared helpers for tests that drive a program and a reference optimizer side by side."""

from __future__ import annotations

import torch

from optdisco.dsl import compile_program

# Adam as the paper writes it, for tests of the language itself
ADAM = """
hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8
state m = zeros, v = zeros
m = ema(m, g, beta1)
v = ema(v, g * g, beta2)
update = (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)
w = w - lr * update
"""

SHAPES = {"1d": (11,), "2d": (7, 5), "4d": (4, 3, 2, 2)}


def gradient_sequence(shape, steps, seed=0, dtype=torch.float64, scale=1.0):
    """A fixed sequence of random gradients (each its own tensor)."""
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def initial_param(shape, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype)


def run_program(program, w0, grads, hyper=None, role=None, hess=None):
    """Parameters after each step of a program driven by ``grads`` (a list); ``hess`` an
    optional list of hess_diag tensors."""
    fn = compile_program(program)
    w, state, out = w0.clone(), None, []
    for t, g in enumerate(grads, 1):
        hd = hess[t - 1].clone() if hess is not None else None
        w, state = fn(w, g.clone(), state, hyper, t, hess_diag=hd, role=role)
        out.append(w.clone())
    return out


def run_reference(make_optimizer, w0, grads, step_kwargs=None):
    """Parameters after each step of a torch.optim-style optimizer; each step gets its own
    clone of the gradient (several references modify p.grad in place). ``step_kwargs`` maps a
    0-based step index to keyword arguments for ``opt.step``."""
    p = torch.nn.Parameter(w0.clone())
    opt = make_optimizer([p])
    out = []
    for i, g in enumerate(grads):
        p.grad = g.clone()
        kwargs = step_kwargs(i) if callable(step_kwargs) else (step_kwargs or {})
        opt.step(**kwargs)
        out.append(p.detach().clone())
    return out


def max_abs_diff(a_list, b_list):
    return max(float((a - b).abs().max()) for a, b in zip(a_list, b_list))
