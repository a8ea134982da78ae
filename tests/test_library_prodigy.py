"""library/prodigy against pytorch_optimizer.Prodigy (4.1.0) over whole models.

Prodigy's step size d is one scalar per model, estimated from sums over every parameter
(Σ⟨g, x0 − w⟩ and Σ|s|), so the program is driven as one model of a 1-D, a 2-D and a 4-D tensor
side by side with the reference, 60 steps, weight decay off and on, on a quadratic whose gradient
depends on the parameters (so that d grows by orders of magnitude) plus noise. The reference
keeps its numerator and denominator in tensors of torch's default dtype: the float64 comparisons
set that default to float64, else the reference itself rounds them to float32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from harness import initial_param

from optdisco import library, proxies
from optdisco.dsl import compile_program, to_optimizer
from optdisco.evaluate import Schedule, run_members

po = pytest.importorskip("pytorch_optimizer")

STEPS = 60
SHAPES = [(11,), (7, 5), (4, 3, 2, 2)]
TIGHT = 1e-13  # relative to the largest |w|, float64


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _targets(dtype=torch.float64):
    gen = torch.Generator().manual_seed(42)
    return [3 * torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _noise(steps, dtype=torch.float64):
    gen = torch.Generator().manual_seed(7)
    return [[0.1 * torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(steps)]


def _grad(ws, targets, noise):
    """The gradient of ½‖w − target‖² (scaled per tensor) plus noise, for each tensor."""
    return [(k + 1) * (w - c) + n for k, (w, c, n) in enumerate(zip(ws, targets, noise))]


def _start(dtype=torch.float64):
    return [initial_param(s, seed=k, dtype=dtype) for k, s in enumerate(SHAPES)]


def _reference(make, steps=STEPS, dtype=torch.float64, zero_steps=0):
    params = [torch.nn.Parameter(w) for w in _start(dtype)]
    opt = make(params)
    targets, noise, out, ds = _targets(dtype), _noise(steps, dtype), [], []
    for i in range(steps):
        grads = _grad([p.detach() for p in params], targets, noise[i])
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(g) if i < zero_steps else g
        opt.step()
        out.append([p.detach().clone() for p in params])
        ds.append(float(opt.param_groups[0]["d"]))
    return out, ds


def _ours_step_group(hyper, steps=STEPS, dtype=torch.float64, zero_steps=0):
    fn = compile_program(library.load("prodigy"))
    ws, states, gstate = _start(dtype), [None] * len(SHAPES), None
    targets, noise, out, ds = _targets(dtype), _noise(steps, dtype), [], []
    for i in range(steps):
        grads = _grad(ws, targets, noise[i])
        if i < zero_steps:
            grads = [torch.zeros_like(g) for g in grads]
        ws, states, gstate = fn.step_group(ws, grads, states, gstate, hyper, i + 1)
        out.append([w.clone() for w in ws])
        ds.append(float(gstate["d"]))
    return out, ds


def _ours_optimizer(groups_of, hyper, steps=STEPS, dtype=torch.float64):
    """The exported optimizer; ``groups_of(params)`` makes its parameter groups."""
    params = [torch.nn.Parameter(w) for w in _start(dtype)]
    opt = to_optimizer("prodigy", groups_of(params), **hyper)
    targets, noise, out = _targets(dtype), _noise(steps, dtype), []
    for i in range(steps):
        for p, g in zip(params, _grad([p.detach() for p in params], targets, noise[i])):
            p.grad = g
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out, opt


def rel_diff(a_steps, b_steps):
    scale = max(float(w.abs().max()) for ws in b_steps for w in ws)
    return max(float((a - b).abs().max()) for xs, ys in zip(a_steps, b_steps) for a, b in zip(xs, ys)) / scale


def test_header():
    e = library.entry("prodigy")
    assert e.title and e.paper.startswith("Mishchenko & Defazio") and e.year == "2023"
    assert e.link.startswith("https://") and e.reference and e.notes


def test_defaults_are_the_references():
    d = library.load("prodigy").hyper_defaults
    ref = po.Prodigy([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], (d["beta1"], d["beta2"]), d["d0"], d["d_coef"], d["wd"], d["eps"]) == (
        ref["lr"], ref["betas"], ref["d0"], ref["d_coef"], ref["weight_decay"], ref["eps"])
    assert ref["growth_rate"] == float("inf") and d["growth_rate"] == 1e30
    assert ref["beta3"] is None and not ref["bias_correction"] and not ref["safeguard_warmup"]
    assert d["bias_correction"] == 0 and d["safeguard_warmup"] == 0
    assert ref["weight_decouple"] and not ref["fixed_decay"]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_prodigy_matches_pytorch_optimizer_over_a_whole_model(wd, float64_default):
    ref, ref_d = _reference(lambda p: po.Prodigy(p, weight_decay=wd))
    ours, our_d = _ours_step_group({"wd": wd})
    assert rel_diff(ours, ref) < TIGHT
    assert our_d == pytest.approx(ref_d, rel=1e-12)
    assert ref_d[-1] > 1e4 * ref_d[0]  # d grew: the estimate is exercised, not just d0
    exported, opt = _ours_optimizer(lambda ps: ps, {"wd": wd})
    assert rel_diff(exported, ref) < TIGHT
    assert float(opt.param_groups[0]["global_state"]["d"]) == pytest.approx(ref_d[-1], rel=1e-12)


@pytest.mark.parametrize("bias_correction,safeguard_warmup", [(1, 0), (0, 1), (1, 1)])
def test_prodigy_options_match_the_references(bias_correction, safeguard_warmup, float64_default):
    """bias_correction divides d_lr by (1 − β1ᵗ)/√(1 − β2ᵗ); safeguard_warmup feeds s with d instead of
    d_lr (the same at lr = 1 without bias correction: lr = 0.5 here)."""
    ref, ref_d = _reference(lambda p: po.Prodigy(p, lr=0.5, weight_decay=0.1, bias_correction=bool(bias_correction),
                                                 safeguard_warmup=bool(safeguard_warmup)))
    hyper = {"lr": 0.5, "wd": 0.1, "bias_correction": bias_correction, "safeguard_warmup": safeguard_warmup}
    ours, our_d = _ours_step_group(hyper)
    assert rel_diff(ours, ref) < TIGHT and our_d == pytest.approx(ref_d, rel=1e-12)
    exported, _ = _ours_optimizer(lambda ps: ps, hyper)
    assert rel_diff(exported, ref) < TIGHT
    plain, _ = _reference(lambda p: po.Prodigy(p, lr=0.5, weight_decay=0.1))
    assert rel_diff(plain, ref) > 1e-6  # the option changes the run


def test_prodigy_per_tensor_is_not_prodigy():
    """Each tensor its own model (its own optimizer, its own d) drifts from the reference."""
    torch.set_default_dtype(torch.float64)
    try:
        ref, _ = _reference(lambda p: po.Prodigy(p), steps=10)
    finally:
        torch.set_default_dtype(torch.float32)
    params = [torch.nn.Parameter(w) for w in _start(torch.float64)]
    opts = [to_optimizer("prodigy", [p]) for p in params]  # each tensor its own optimizer, its own d
    targets, noise, apart = _targets(torch.float64), _noise(10, torch.float64), []
    for i in range(10):
        for p, g, o in zip(params, _grad([p.detach() for p in params], targets, noise[i]), opts):
            p.grad = g
            o.step()
        apart.append([p.detach().clone() for p in params])
    assert rel_diff(apart[:1], ref[:1]) < TIGHT  # step 1 moves by d0 · sign-like Adam steps either way
    assert rel_diff(apart, ref) > 1e-6


def _two_groups(params):
    """The usual recipe: weight decay on the matrices and 4-D kernels, none on the vector."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def test_prodigy_over_two_parameter_groups_is_one_model_as_the_reference(float64_default):
    """Groups that differ in weight decay share one d, as pytorch_optimizer.Prodigy's do (its
    sums run over all groups)."""
    ref, ref_d = _reference(lambda p: po.Prodigy(_two_groups(p)))
    ours, opt = _ours_optimizer(lambda ps: [{"params": g["params"], "wd": g["weight_decay"]} for g in _two_groups(ps)], {})
    assert rel_diff(ours, ref) < TIGHT
    assert [float(g["global_state"]["d"]) for g in opt.param_groups] == pytest.approx([ref_d[-1]] * 2, rel=1e-12)
    assert ref_d[-1] > 1e4 * ref_d[0]


def test_prodigy_refuses_groups_that_differ_in_a_hyperparameter_of_d():
    params = [torch.nn.Parameter(w) for w in _start()]
    with pytest.raises(ValueError, match="'lr' enters the model-wide state"):
        to_optimizer("prodigy", [{"params": params[:1]}, {"params": params[1:], "lr": 0.5}])


def test_prodigy_matches_in_float32_with_the_references_float32_sums():
    ref, ref_d = _reference(lambda p: po.Prodigy(p, weight_decay=0.1), dtype=torch.float32)
    ours, our_d = _ours_step_group({"wd": 0.1}, dtype=torch.float32)
    assert rel_diff(ours, ref) < 1e-5
    assert our_d == pytest.approx(ref_d, rel=1e-5)


def test_zero_gradients_skip_the_step_as_the_reference_does(float64_default):
    """Σ|s| = 0: the reference updates its moments and returns without moving w or d."""
    ref, ref_d = _reference(lambda p: po.Prodigy(p, weight_decay=0.1), steps=8, zero_steps=3)
    ours, our_d = _ours_step_group({"wd": 0.1}, steps=8, zero_steps=3)
    assert rel_diff(ours, ref) < TIGHT and our_d == pytest.approx(ref_d, rel=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(ours[2], _start()))


def test_resume_from_a_state_dict_is_exact(float64_default):
    full, _ = _ours_optimizer(lambda ps: ps, {"wd": 0.1}, steps=12)
    params = [torch.nn.Parameter(w) for w in _start()]
    opt = to_optimizer("prodigy", params, wd=0.1)
    targets, noise = _targets(), _noise(12)
    saved = None
    for i in range(12):
        if i == 6:
            saved = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()))
            params = [torch.nn.Parameter(w) for w in saved[0]]
            opt = to_optimizer("prodigy", params, wd=0.1)
            opt.load_state_dict(saved[1])
        for p, g in zip(params, _grad([p.detach() for p in params], targets, noise[i])):
            p.grad = g
        opt.step()
    assert all(torch.equal(a.detach(), b) for a, b in zip(params, full[-1]))


def test_evaluation_trains_each_member_with_its_own_d():
    """run_members (an LR grid × seeds in one batch) against torch modules trained by
    pytorch_optimizer.Prodigy under the evaluation's schedule, member by member."""
    task = proxies.get("mlp", size="proxy")
    steps, lrs, seeds = 20, [0.3, 1.0], [0, 1]
    pairs = [(lr, s) for lr in lrs for s in seeds]
    run = run_members(compile_program(library.load("prodigy")), task, [p[0] for p in pairs],
                      [p[1] for p in pairs], steps, hyper={"wd": 0.01})
    schedule = Schedule()
    for i, (lr, seed) in enumerate(pairs):
        module = task.make_module(seed)
        opt = po.Prodigy(module.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule.factor(min(k + 1, steps), steps))
        for step in range(steps):
            loss = task.module_loss(module, step, seed)
            assert loss.item() == pytest.approx(float(run.train[step, i]), rel=1e-4)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        assert opt.param_groups[0]["d"] > 10 * 1e-6


def test_exported_prodigy_on_many_small_tensors_matches_the_reference(float64_default):
    """Small parameters of one shape step together as the members of one call (stacked); a large
    one steps alone; the model is still one model: against the reference over 30 steps."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(7,)] * 12 + [(4, 3)] * 5 + [(130, 130)]
    starts = [torch.randn(s, generator=gen) for s in shapes]
    targets = [torch.randn(s, generator=gen) for s in shapes]
    noise = [[0.1 * torch.randn(s, generator=gen) for s in shapes] for _ in range(30)]

    def run(make):  # the gradient of ½‖w − target‖² plus noise
        ps = [torch.nn.Parameter(w.clone()) for w in starts]
        opt = make(ps)
        for ns in noise:
            for p, y, n in zip(ps, targets, ns):
                p.grad = p.detach() - y + n
            opt.step()
        return [p.detach() for p in ps], opt

    ours, opt = run(lambda ps: to_optimizer("prodigy", [{"params": ps[:14], "wd": 0.1}, {"params": ps[14:]}]))
    ref, ref_opt = run(lambda ps: po.Prodigy([{"params": ps[:14], "weight_decay": 0.1}, {"params": ps[14:]}]))
    assert rel_diff([ours], [ref]) < 1e-12
    assert float(opt.param_groups[1]["global_state"]["d"]) == pytest.approx(ref_opt.param_groups[0]["d"], rel=1e-10)
    assert ref_opt.param_groups[0]["d"] > 1e3 * 1e-6  # d grew: the model-wide sums are exercised
