"""A cheap run of a program on random inputs that rejects hopeless children before they cost an
evaluation.

The program runs for a few steps in float64 on a vector, a hidden matrix and an output-layer
matrix, twice, with two different random gradient sequences from the same starting parameter.
It is rejected when

- it raises (a linear-algebra failure) or a parameter becomes non-finite (``non-finite``);
- the parameter never moves (``no update``);
- both gradient sequences give the same trajectory (``ignores the gradient``);
- every step moves all elements of every tensor by the same amount (``constant update``):
  such a rule cannot tell coordinates apart.
"""

from __future__ import annotations

import torch

from optdisco.dsl import Program, compile_program

CASES = (((7,), "vector"), ((6, 4), "hidden"), ((4, 6), "head"))
STEPS = 8


def _trajectory(fn, shape, role, seed: int, gseed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    ggen = torch.Generator().manual_seed(gseed)
    out, state = [w], None
    for t in range(1, STEPS + 1):
        g = torch.randn(shape, generator=ggen, dtype=torch.float64)
        hd = torch.rand(shape, generator=ggen, dtype=torch.float64) if fn.uses_hess_diag else None
        gp = (lambda x, g=g: g + 0.5 * torch.tanh(x)) if fn.uses_probe else None  # the gradient at a probe point
        w, state = fn(w, g, state, None, t, hess_diag=hd, role=role, g_probe=gp)
        out.append(w)
    return out


def screen(program: Program) -> str | None:
    """``None`` if the program is worth evaluating, else the reason it is not."""
    try:
        fn = compile_program(program)
    except Exception as e:  # noqa: BLE001 - a checked program should compile; report, never crash
        return f"does not compile: {type(e).__name__}"
    moved = varied = depends = False
    with torch.no_grad():
        for k, (shape, role) in enumerate(CASES):
            try:
                a = _trajectory(fn, shape, role, 10 + k, 100 + k)
                b = _trajectory(fn, shape, role, 10 + k, 200 + k)
            except (RuntimeError, ValueError, ZeroDivisionError, OverflowError) as e:
                return f"raises {type(e).__name__}"
            for traj in (a, b):
                for w in traj:
                    if not torch.isfinite(w).all():
                        return "non-finite"
            for w0, w1 in zip(a, a[1:]):
                d = w1 - w0
                if (d != 0).any():
                    moved = True
                    if d.numel() > 1 and float(d.max() - d.min()) > 1e-12 * max(1.0, float(d.abs().max())):
                        varied = True
            if any(not torch.allclose(x, y, rtol=1e-12, atol=0) for x, y in zip(a[1:], b[1:])):
                depends = True
    if not moved:
        return "no update"
    if not depends:
        return "ignores the gradient"
    if not varied:
        return "constant update"
    return None
