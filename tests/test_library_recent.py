"""Library programs of methods published 2020–2025, checked against pytorch_optimizer 4.1.0.

ADOPT, AdEMAMix, Adan, C-AdamW, LaProp, Grams and AdaMuon are driven side by side with their
pytorch_optimizer classes from the same initial parameter and the same gradients (each its own
clone) for 60 steps on 1-D, 2-D and 4-D parameters in float64, with weight decay off and on; the
first step of ADOPT (which only fills its second moment) and AdEMAMix's warmups are passed. Where a
program follows the paper and the reference's default does not, the test sets the reference's
argument and checks that the default differs.
"""

from __future__ import annotations

import pytest
import torch
from harness import SHAPES, gradient_sequence, initial_param, max_abs_diff, run_program, run_reference

from optdisco import library

po = pytest.importorskip("pytorch_optimizer")

STEPS = 60
WDS = (0.0, 0.1)
TIGHT = 1e-13  # relative to the largest |w|, float64
NAMES = ["adopt", "ademamix", "adan", "cautious_adamw", "laprop", "grams", "adamuon"]

params = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
decays = pytest.mark.parametrize("wd", WDS)


def rel_diff(a_list, b_list):
    scale = max(float(b.abs().max()) for b in b_list)
    return max_abs_diff(a_list, b_list) / scale


def compare(name, make, shape, hyper, role=None, steps=STEPS):
    w0, grads = initial_param(shape), gradient_sequence(shape, steps)
    ours = run_program(library.load(name), w0, grads, hyper, role=role)
    ref = run_reference(make, w0, grads)
    return rel_diff(ours, ref), ours, ref


@pytest.mark.parametrize("name", NAMES)
def test_header(name):
    e = library.entry(name)
    assert e.title and e.paper and e.year.isdigit() and e.link.startswith("https://")
    assert e.reference and e.notes
    assert library.load(name).hyper_defaults["lr"] > 0


# -- ADOPT -------------------------------------------------------------------------------------
@params
@decays
def test_adopt_matches_pytorch_optimizer(shape, wd):
    d, ours, _ = compare("adopt", lambda p: po.ADOPT(p, lr=1e-2, weight_decay=wd), shape, {"lr": 1e-2, "wd": wd})
    assert d < TIGHT
    w0 = initial_param(shape)
    assert torch.equal(ours[0], w0)  # the first step only fills v
    assert not torch.equal(ours[1], w0)


def test_adopt_defaults_are_the_references():
    d = library.load("adopt").hyper_defaults
    ref = po.ADOPT([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], (d["beta1"], d["beta2"]), d["eps"]) == (ref["lr"], ref["betas"], ref["eps"])


# -- AdEMAMix ----------------------------------------------------------------------------------
@params
@decays
@pytest.mark.parametrize("T", [0, 20])
def test_ademamix_matches_pytorch_optimizer(shape, wd, T):
    make = lambda p: po.AdEMAMix(p, lr=1e-2, weight_decay=wd, weight_decouple=True,  # noqa: E731
                                 t_alpha_beta3=T or None)
    d, _, _ = compare("ademamix", make, shape, {"lr": 1e-2, "wd": wd, "T": T})
    assert d < TIGHT


def test_ademamix_warmup_changes_the_trajectory():
    shape = SHAPES["2d"]
    w0, grads = initial_param(shape), gradient_sequence(shape, 30)
    fixed = run_program(library.load("ademamix"), w0, grads, {"lr": 1e-2})
    warm = run_program(library.load("ademamix"), w0, grads, {"lr": 1e-2, "T": 20})
    assert max_abs_diff(fixed, warm) > 1e-3


def test_ademamix_reference_default_decay_is_coupled():
    make = lambda p: po.AdEMAMix(p, lr=1e-2, weight_decay=0.1)  # noqa: E731
    d, _, _ = compare("ademamix", make, SHAPES["2d"], {"lr": 1e-2, "wd": 0.1})
    assert d > 1e-4


# -- Adan --------------------------------------------------------------------------------------
@params
@decays
def test_adan_matches_pytorch_optimizer(shape, wd):
    make = lambda p: po.Adan(p, lr=1e-2, weight_decay=wd, weight_decouple=False, foreach=False)  # noqa: E731
    d, _, _ = compare("adan", make, shape, {"lr": 1e-2, "wd": wd})
    assert d < TIGHT


@decays
def test_adan_matches_the_foreach_path(wd):
    make = lambda p: po.Adan(p, lr=1e-2, weight_decay=wd, foreach=True)  # noqa: E731
    d, _, _ = compare("adan", make, SHAPES["4d"], {"lr": 1e-2, "wd": wd})
    assert d < TIGHT


# -- C-AdamW -----------------------------------------------------------------------------------
@params
@decays
def test_cautious_adamw_matches_pytorch_optimizer(shape, wd):
    make = lambda p: po.AdamP(p, lr=1e-2, weight_decay=wd, weight_decouple=True, delta=0.0,  # noqa: E731
                              cautious=True)
    d, _, _ = compare("cautious_adamw", make, shape, {"lr": 1e-2, "wd": wd})
    assert d < TIGHT


def test_cautious_adamw_masks_disagreeing_coordinates():
    """With momentum pointing against the gradient in some coordinates, those do not move."""
    from optdisco.dsl import compile_program

    fn = compile_program(library.load("cautious_adamw"))
    w = torch.zeros(8, dtype=torch.float64)
    g1 = torch.ones(8, dtype=torch.float64)
    _, state = fn(w, g1, None, {"wd": 0.0}, 1)
    g2 = torch.tensor([1, 1, 1, 1, -0.01, -0.01, -0.01, -0.01], dtype=torch.float64)
    w2, _ = fn(w, g2, state, {"wd": 0.0}, 2)
    assert torch.all(w2[4:] == 0) and torch.all(w2[:4] < 0)


# -- LaProp ------------------------------------------------------------------------------------
@params
@decays
def test_laprop_matches_pytorch_optimizer(shape, wd):
    make = lambda p: po.LaProp(p, lr=1e-2, weight_decay=wd, foreach=False)  # noqa: E731
    d, _, _ = compare("laprop", make, shape, {"lr": 1e-2, "wd": wd})
    assert d < TIGHT


def test_laprop_bias_correction_follows_an_lr_schedule():
    """The lr lives inside the momentum: changing lr mid-run changes the correction as the reference."""
    from optdisco.dsl import compile_program

    shape = SHAPES["2d"]
    w0, grads = initial_param(shape), gradient_sequence(shape, 20)
    lrs = [1e-2 if t < 10 else 2e-3 for t in range(20)]
    fn = compile_program(library.load("laprop"))
    w, state, ours = w0.clone(), None, []
    for t, (g, lr) in enumerate(zip(grads, lrs), 1):
        w, state = fn(w, g.clone(), state, {"lr": lr}, t)
        ours.append(w.clone())
    ref = run_reference(lambda p: po.LaProp(p, lr=1e-2, foreach=False), w0, grads)  # constant lr
    p = torch.nn.Parameter(w0.clone())
    opt = po.LaProp([p], lr=1e-2, foreach=False)
    sched = []
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
        sched.append(p.detach().clone())
    assert rel_diff(ours, sched) < TIGHT
    assert max_abs_diff(ours, ref) > 1e-4


# -- Grams -------------------------------------------------------------------------------------
@params
@decays
def test_grams_matches_pytorch_optimizer(shape, wd):
    make = lambda p: po.Grams(p, lr=1e-2, weight_decay=wd)  # noqa: E731
    d, _, _ = compare("grams", make, shape, {"lr": 1e-2, "wd": wd})
    assert d < TIGHT


# -- AdaMuon -----------------------------------------------------------------------------------
F64 = torch.float64


def newton_schulz_f64(G, steps=5):
    """Muon's quintic Newton–Schulz in float64 (Keller Jordan's form)."""
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
    from pytorch_optimizer.optimizer.muon import adamuon

    monkeypatch.setattr(adamuon, "zero_power_via_newton_schulz_5",
                        lambda g, num_steps=5, **kw: newton_schulz_f64(g, num_steps))


@decays
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), SHAPES["4d"]], ids=["tall", "wide", "4d"])
def test_adamuon_hidden_matches_pytorch_optimizer(float64_newton_schulz, shape, wd):
    make = lambda p: po.AdaMuon([{"params": p, "use_muon": True}], lr=0.02, weight_decay=wd)  # noqa: E731
    d, ours, _ = compare("adamuon", make, shape, {"wd": wd})
    assert d < TIGHT
    w0 = initial_param(shape)
    if wd == 0:  # the update's RMS is 0.2·lr
        rms = float(((w0 - ours[0]) / 0.02).square().mean().sqrt())
        assert abs(rms - 0.2) < 1e-9


@decays
@pytest.mark.parametrize("shape, role", [((11,), None), ((7, 5), "embedding"), ((5, 7), "head")])
def test_adamuon_other_parameters_take_adamw(shape, role, wd):
    group = {"use_muon": False, "lr": 0.02 * 0.015, "betas": (0.9, 0.999), "weight_decay": wd}
    make = lambda p: po.AdaMuon([{"params": p, **group}])  # noqa: E731
    d, _, _ = compare("adamuon", make, shape, {"wd": wd}, role=role)
    assert d < TIGHT


def test_adamuon_defaults_are_the_references():
    d = library.load("adamuon").hyper_defaults
    opt = po.AdaMuon([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "use_muon": True},
                      {"params": [torch.nn.Parameter(torch.zeros(2))], "use_muon": False}])
    hidden, other = opt.param_groups
    assert (d["lr"], (d["beta1"], d["beta2"]), d["eps"]) == (hidden["lr"], hidden["betas"], hidden["eps"])
    assert d["lr"] * d["adam_lr_ratio"] == pytest.approx(other["lr"])
    assert (d["adam_beta1"], d["adam_beta2"]) == other["betas"]
