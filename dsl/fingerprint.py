"""A hash of a program's behaviour, for deduplication in search.

Two programs get the same fingerprint when they compute the same updates: renaming, statement
order and algebraic rewriting do not change it; any different output does. The program is run
in float64 on fixed random parameters, gradients and Hessian estimates for a vector, a hidden
matrix, a 4-D kernel, an embedding and a head, over a sequence of step numbers chosen to trip
periodic actions (1…12, then values with many divisors up to 10 000), and the parameters after
every step are hashed after rounding away the last bits (algebraic rewrites differ there).
Programs that draw noise run with a fixed seed per case, so their fingerprint is deterministic;
their call sites are numbered in program order, so reordering two draws changes it.
Programs with model-wide values run all the cases together, as one model (``global_norm(g)``
then differs from ``norm(g)``). A program that reads ``g_probe`` gets a fixed smooth function of
its probe point as the gradient there; one with evaluation weights (``w_eval``) has them hashed
after every step too.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .step import compile_program
from .program import Program

CASES = (((11,), "vector"), ((6, 4), "hidden"), ((3, 2, 2, 2), "hidden"), ((5, 3), "embedding"), ((3, 5), "head"))
STEPS = tuple(range(1, 13)) + (16, 24, 36, 48, 60, 100, 120, 200, 240, 360, 500, 720, 1000, 1001, 2520, 5000, 10000)
KEEP_BITS = 24  # mantissa bits kept of float64's 52


def _quantize(x: torch.Tensor) -> bytes:
    a = np.ascontiguousarray(x.detach().cpu().double().numpy()).copy()
    a[np.isnan(a)] = np.nan  # one NaN
    a = a + 0.0  # -0.0 → 0.0
    bits = a.view(np.int64)
    drop = 52 - KEEP_BITS
    half = np.int64(1) << np.int64(drop - 1)
    mask = ~((np.int64(1) << np.int64(drop)) - 1)
    finite = np.isfinite(a)
    bits = np.where(finite, (bits + half) & mask, bits)
    return bits.tobytes()


def behaviour(program: Program, steps=STEPS, cases=CASES) -> list[bytes]:
    """The rounded parameter after every step, for every case (what the fingerprint hashes)."""
    fn = compile_program(program)
    if fn.model_wide:
        return _behaviour_together(fn, steps, cases)
    out: list[bytes] = []
    for k, (shape, role) in enumerate(cases):
        gen = torch.Generator().manual_seed(1000 + k)
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        state = None
        for t in steps:
            g = torch.randn(shape, generator=gen, dtype=torch.float64)
            hd = torch.randn(shape, generator=gen, dtype=torch.float64) if fn.uses_hess_diag else None
            # the gradient at a probe point: a fixed smooth function of the point
            gp = (lambda x, g=g: g + 0.5 * torch.tanh(x)) if fn.uses_probe else None
            try:
                with torch.no_grad():
                    w, state = fn(w, g, state, None, t, hess_diag=hd, role=role, seed=k, g_probe=gp)
                    w_eval = fn.eval_weights(w, state, None, t, role=role) if fn.has_eval_weights else None
            except (RuntimeError, ValueError) as e:  # a linear-algebra failure is behaviour too
                out.append(f"error:{type(e).__name__}".encode())
                break
            out.append(_quantize(w))
            if w_eval is not None:
                out.append(_quantize(w_eval))
    return out


def _behaviour_together(fn, steps, cases) -> list[bytes]:
    """``behaviour`` of a model-wide program: the cases are the parameters of one model, drawn
    from the same generators as the per-case runs."""
    gens = [torch.Generator().manual_seed(1000 + k) for k in range(len(cases))]
    ws = [torch.randn(shape, generator=gen, dtype=torch.float64) for gen, (shape, _) in zip(gens, cases)]
    roles = [role for _, role in cases]
    states, gstate = [None] * len(cases), None
    out: list[bytes] = []
    for t in steps:
        gs = [torch.randn(shape, generator=gen, dtype=torch.float64) for gen, (shape, _) in zip(gens, cases)]
        hds = [torch.randn(shape, generator=gen, dtype=torch.float64) if fn.uses_hess_diag else None
               for gen, (shape, _) in zip(gens, cases)]
        try:
            with torch.no_grad():
                ws, states, gstate = fn.step_group(ws, gs, states, gstate, None, t, hess_diags=hds, roles=roles,
                                                   seeds=list(range(len(cases))))
        except (RuntimeError, ValueError) as e:
            out.append(f"error:{type(e).__name__}".encode())
            break
        out.extend(_quantize(w) for w in ws)
    return out


def fingerprint(program: Program) -> str:
    """Hex digest of the program's behaviour (see module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    tuned = sorted(program.tuned.items())
    if tuned:  # what the protocol tunes changes how the program is evaluated
        h.update(repr(tuned).encode())
    for chunk in behaviour(program):
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()
