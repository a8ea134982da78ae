"""The gradient at another point (``probe = …`` / ``g_probe``) and evaluation weights (``w_eval``):
what the checker accepts and refuses, the step function's phases, the runner's batched supply of
``g_probe`` and its judgement at ``w_eval``, and the exported optimizer's ``step(closure)``,
``eval()`` and ``train()``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from optdisco import library, proxies
from optdisco.dsl import DSLError, compile_program, fingerprint, parse, simplify, to_optimizer
from optdisco.evaluate import evaluate, run_members
from optdisco.search.mutation import remove_dead_code

SAM = """
hyper lr = 0.1, rho = 0.05
probe = w + rho * g / (norm(g) + 1e-12)
w = w - lr * g_probe
"""
# an elementwise probe (the point a momentum step would reach): the runner's concatenated path
AHEAD = """
hyper lr = 0.1, beta = 0.9
state m = zeros
probe = w - lr * beta * m
m = beta * m + g_probe
w = w - lr * m
"""
# SAM as the paper writes it: the probe's gradient norm is the model's (a model-wide probe)
GLOBAL_SAM = """
hyper lr = 0.1, rho = 0.05
probe = w + rho * g / (global_norm(g) + 1e-12)
w = w - lr * g_probe
"""
AVERAGE = """
hyper lr = 0.1
state a = w
w = w - lr * g
a = ema(a, w, 0.5)
w_eval = a
"""

BAD = [
    ("hyper lr = 0.1\nw = w - lr * g_probe\nprobe = w\n", 2, 14, "can be read only after a statement probe"),
    ("hyper lr = 0.1\nw = w - lr * g_probe\n", 2, 14, "can be read only after a statement probe"),
    ("hyper lr = 0.1\nprobe = w\nprobe = w + g\nw = w - lr * g_probe\n", 3, 1, "probe is assigned twice"),
    ("hyper lr = 0.1\nif t > 1:\n    probe = w\nend\nw = w - lr * g_probe\n", 3, 5, "at the top level"),
    ("hyper lr = 0.1\nprobe = w + g\nw = w - lr * g\n", 2, 1, "g_probe, the gradient there, is never read"),
    ("hyper lr = 0.1\nprobe = norm(g)\nw = w - lr * g_probe\n", 2, 1, "probe must have the parameter's shape"),
    ("hyper lr = 0.1\nprobe = w + g\nw = w - lr * g_probe + probe\n", 3, 24, "'probe' can only be assigned"),
    ("hyper lr = 0.1\ng_probe = g\nw = w - lr * g\n", 2, 1, "cannot assign to the input 'g_probe'"),
    ("hyper lr = 0.1\nstate m = g_probe\nprobe = w\nw = w - lr * g_probe * m\n", 2, 11, "not in state initialisers"),
    ("hyper lr = 0.1\nstate probe = zeros\nw = w - lr * g\n", 2, 7, "reserved name"),
    ("hyper lr = 0.1, w_eval = 1\nw = w - lr * g\n", 1, 17, "reserved name"),
    ("hyper lr = 0.1\nw_eval = w\nw = w - lr * g\n", 2, 1, "w_eval must be the program's last statement"),
    ("hyper lr = 0.1\nw = w - lr * g\nw_eval = w - g\n", 3, 14, "not 'g'"),
    ("hyper lr = 0.1\nu = g\nw = w - lr * u\nw_eval = w - u\n", 4, 14, "not 'u'"),
    ("hyper lr = 0.1\nw = w - lr * g\nw_eval = sum(w)\n", 3, 1, "w_eval must have the parameter's shape"),
    ("hyper lr = 0.1\nw = w - lr * g\nif t > 1:\n    w_eval = w\nend\n", 4, 5, "at the top level"),
    ("hyper lr = 0.1\nw = w - lr * g / global_norm(g)\nw_eval = w / global_norm(w)\n", 3, 14,
     "w_eval may not use a model-wide reduction (global_norm)"),
    ("hyper lr = 0.1\nglobal s = 0\nprobe = w + g\ns = sum(g_probe)\nw = w - lr * s * g_probe\n", 4, 1,
     "depends on the parameter (through 'g_probe')"),
]


@pytest.mark.parametrize("text,line,col,phrase", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_misuse_is_reported_at_its_line_and_column(text, line, col, phrase):
    with pytest.raises(DSLError) as info:
        parse(text)
    assert (info.value.line, info.value.column) == (line, col), str(info.value)
    assert phrase in info.value.message, info.value.message


@pytest.mark.parametrize("text", [SAM, AHEAD, AVERAGE, GLOBAL_SAM])
def test_programs_round_trip_through_their_text(text):
    p = parse(text)
    assert parse(p.to_text()) == p


def test_the_step_takes_g_probe_as_a_tensor_or_as_a_function_of_the_probe_point():
    fn = compile_program(SAM)
    assert fn.uses_probe and not fn.has_eval_weights
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    point = fn.probe(w, g, None, None, 1)
    torch.testing.assert_close(point, w + 0.05 * g / g.norm(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="reads g_probe"):
        fn(w, g, None, None, 1)
    by_tensor, _ = fn(w, g, None, None, 1, g_probe=2 * point)
    by_function, _ = fn(w, g, None, None, 1, g_probe=lambda x: 2 * x)
    assert torch.equal(by_tensor, by_function)
    torch.testing.assert_close(by_tensor, w - 0.1 * 2 * point, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="no probe point"):
        compile_program(AVERAGE).probe(w, g)


def test_the_probe_phase_leaves_the_state_alone():
    fn = compile_program(AHEAD)
    w, g = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    _, state = fn(w, g, None, None, 1, g_probe=g)
    before = {k: v.clone() for k, v in state.items()}
    point = fn.probe(w, g, state, None, 2)
    torch.testing.assert_close(point, w - 0.1 * 0.9 * before["m"], rtol=1e-14, atol=0)
    assert all(torch.equal(state[k], before[k]) for k in before)


def test_eval_weights_come_from_the_weights_and_state_after_a_step():
    fn = compile_program(AVERAGE)
    assert fn.has_eval_weights and not fn.uses_probe
    w0, g = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    assert fn.eval_weights(w0, None) is w0  # before the first step: the weights themselves
    w, state = fn(w0, g, None, None, 1)
    torch.testing.assert_close(w, w0 - 0.1 * g, rtol=1e-14, atol=0)  # w_eval does not change the step
    torch.testing.assert_close(fn.eval_weights(w, state), 0.5 * w0 + 0.5 * w, rtol=1e-14, atol=0)
    adam = compile_program(library.load("adamw"))
    assert adam.eval_weights(w, {"m": w}) is w


def test_batched_members_equal_separate_runs():
    fn = compile_program(SAM)
    gen = torch.Generator().manual_seed(3)
    W, G = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64), torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    lr = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    batched, _ = fn(W, G, None, {"lr": lr}, 1, batched=True, g_probe=lambda x: torch.sin(x))
    for i in range(3):
        one, _ = fn(W[i], G[i], None, {"lr": float(lr[i])}, 1, g_probe=lambda x: torch.sin(x))
        torch.testing.assert_close(batched[i], one, rtol=1e-14, atol=1e-15)


def test_fingerprints_see_the_probe_point_and_the_eval_weights():
    assert fingerprint(parse(SAM)) != fingerprint(parse(SAM.replace("rho = 0.05", "rho = 0.1")))
    assert fingerprint(parse(AVERAGE)) != fingerprint(parse(AVERAGE.replace("w_eval = a", "w_eval = w + 0 * a")))
    assert fingerprint(parse(AVERAGE.replace("w_eval = a", "w_eval = w + 0 * a"))) == fingerprint(
        parse("hyper lr = 0.1\nw = w - lr * g\nw_eval = w\n"))


@pytest.mark.parametrize("text", [SAM, AHEAD, AVERAGE])
def test_dead_code_removal_and_simplify_keep_probe_and_eval_weights(text):
    p = parse(text)
    assert remove_dead_code(p) == p
    s = simplify(p)
    assert s.uses_probe == p.uses_probe and s.has_eval_weights == p.has_eval_weights
    assert fingerprint(s) == fingerprint(p)


# -- the runner ----------------------------------------------------------------------------------------
def test_the_runner_judges_held_out_loss_at_the_eval_weights():
    """``w_eval = 0 * w`` leaves training alone and moves the judgement to the zero weights."""
    task = proxies.get("quadratic")
    plain = run_members(compile_program("hyper lr = 0.1\nw = w - lr * g\n"), task, [0.01, 0.03], [0, 1], 5,
                        eval_every=2)
    zero = run_members(compile_program("hyper lr = 0.1\nw = w - lr * g\nw_eval = 0 * w\n"), task, [0.01, 0.03], [0, 1], 5,
                       eval_every=2)
    assert torch.equal(plain.train, zero.train)
    zeros = {n: torch.zeros_like(p) for n, p in plain.params.items()}
    at_zero = task.eval_loss(zeros, [0, 1]).tolist()
    assert zero.final == pytest.approx(at_zero, rel=1e-6)
    assert zero.final != pytest.approx(plain.final, rel=1e-3)
    assert all(float(p.abs().max()) == 0 for p in zero.params.values())
    assert zero.evals[1] == pytest.approx(at_zero, rel=1e-6)  # along the way too (step 2)
    assert zero.evals[0] == pytest.approx(plain.evals[0])  # step 0: the initial weights


def test_sam_with_rho_zero_is_momentum_and_rho_changes_the_run():
    task = proxies.get("mlp")
    momentum = run_members(compile_program(library.load("momentum")), task, [0.05], [0], 8, dtype=torch.float64)
    sam0 = run_members(compile_program(library.load("sam_sgd")), task, [0.05], [0], 8, hyper={"rho": 0.0},
                       dtype=torch.float64)
    sam = run_members(compile_program(library.load("sam_sgd")), task, [0.05], [0], 8, dtype=torch.float64)
    torch.testing.assert_close(sam0.train, momentum.train, rtol=1e-12, atol=0)
    assert not torch.allclose(sam.train[1:], momentum.train[1:], rtol=1e-6)


@pytest.mark.parametrize("program", [SAM, AHEAD, GLOBAL_SAM])
def test_a_batched_run_with_g_probe_equals_separate_runs(program):
    task = proxies.get("mlp")
    fn = compile_program(program)
    lrs, seeds = [0.02, 0.05, 0.05], [0, 0, 1]
    together = run_members(fn, task, lrs, seeds, 6, dtype=torch.float64)
    for i in range(3):
        alone = run_members(fn, task, [lrs[i]], [seeds[i]], 6, dtype=torch.float64)
        torch.testing.assert_close(together.train[:, i], alone.train[:, 0], rtol=1e-10, atol=0)
        assert together.final[i] == pytest.approx(alone.final[0], rel=1e-10)


def test_an_elementwise_probe_program_runs_concatenated_as_apart():
    task = proxies.get("mlp")
    together = compile_program(AHEAD)
    assert together.elementwise and len(task.param_shapes()) > 1
    apart = copy.copy(together)
    apart.elementwise = False
    a, b = (run_members(f, task, [0.02, 0.05], [0, 1], 6, dtype=torch.float64) for f in (together, apart))
    torch.testing.assert_close(a.train, b.train, rtol=1e-12, atol=0)
    assert a.final == pytest.approx(b.final, rel=1e-12)


# -- a model-wide probe ----------------------------------------------------------------------------
def _model(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(11,), (7, 5), (4, 3, 2, 2)]]


def test_a_model_wide_program_may_have_a_probe_point():
    p = parse(GLOBAL_SAM)
    assert p.model_wide and p.uses_probe
    fn = compile_program(p)
    assert fn.model_wide and fn.uses_probe and not fn.elementwise


def test_probe_group_takes_the_norm_over_the_group_and_per_member():
    fn = compile_program(GLOBAL_SAM)
    ws, gs = _model(0), _model(1)
    norm = torch.sqrt(sum((g * g).sum() for g in gs))
    points = fn.probe_group(ws, gs, [None] * 3, None, {"rho": 0.3}, 1)
    for w, g, point in zip(ws, gs, points):
        torch.testing.assert_close(point, w + 0.3 * g / (norm + 1e-12), rtol=0, atol=1e-13)
    # one tensor is a model of one tensor: its own norm
    torch.testing.assert_close(fn.probe(ws[1], gs[1], None, {"rho": 0.3}), ws[1] + 0.3 * gs[1] / gs[1].norm(),
                               rtol=0, atol=1e-13)
    # two members, the second with gradients twice as large: each takes its own model's norm
    bw = [torch.stack([w, w]) for w in ws]
    bg = [torch.stack([g, 2 * g]) for g in gs]
    points = fn.probe_group(bw, bg, [None] * 3, None, {"rho": torch.tensor([0.3, 0.3], dtype=torch.float64)}, 1, batched=True)
    for w, g, point in zip(ws, gs, points):
        torch.testing.assert_close(point[0], point[1], rtol=0, atol=1e-13)
        torch.testing.assert_close(point[0], w + 0.3 * g / (norm + 1e-12), rtol=0, atol=1e-13)


def test_step_group_takes_the_gradients_at_the_probe_points_as_a_list_or_a_function():
    fn = compile_program(GLOBAL_SAM)
    ws, gs = _model(0), _model(1)
    points = fn.probe_group(ws, gs, [None] * 3, None, None, 1)
    given = [torch.sin(x) for x in points]
    a, _, _ = fn.step_group(ws, gs, [None] * 3, None, None, 1, g_probes=given)
    b, _, _ = fn.step_group(ws, gs, [None] * 3, None, None, 1, g_probes=lambda xs: [torch.sin(x) for x in xs])
    for w, gp, x, y in zip(ws, given, a, b):
        torch.testing.assert_close(x, w - 0.1 * gp, rtol=1e-14, atol=0)
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="g_probes"):
        fn.step_group(ws, gs, [None] * 3, None, None, 1)


def test_evaluation_takes_each_members_probe_norm_over_its_own_model():
    """run_members against torch modules: each member's SAM step written plainly, the norm of
    the gradients of all the module's parameters."""
    from optdisco.evaluate import Schedule

    class Constant(Schedule):
        def factor(self, t, steps):
            return 1.0

    task = proxies.get("mlp")
    steps, lrs, seeds = 6, [0.05, 0.2], [0, 1]
    run = run_members(compile_program(GLOBAL_SAM), task, lrs, seeds, steps, schedule=Constant(),
                      hyper={"rho": 0.5}, dtype=torch.float64)
    for i, (lr, seed) in enumerate(zip(lrs, seeds)):
        module = task.make_module(seed, dtype=torch.float64)
        params = list(module.parameters())
        for step in range(steps):
            loss = task.module_loss(module, step, seed)
            assert loss.item() == pytest.approx(float(run.train[step, i]), rel=1e-10)
            gs = torch.autograd.grad(loss, params)
            norm = torch.sqrt(sum((g * g).sum() for g in gs))
            with torch.no_grad():
                saved = [p.clone() for p in params]
                for p, g in zip(params, gs):
                    p.add_(0.5 * g / (norm + 1e-12))
            gps = torch.autograd.grad(task.module_loss(module, step, seed), params)
            with torch.no_grad():
                for p, w, gp in zip(params, saved, gps):
                    p.copy_(w - lr * gp)
        for name, p in module.named_parameters():
            torch.testing.assert_close(run.params[name][i], p.detach(), rtol=1e-10, atol=1e-12)


def test_evaluate_runs_sam_and_schedule_free():
    for name in ("sam_sgd", "schedulefree_adamw"):
        r = evaluate(name, "quadratic", steps=20, points=3)
        assert r.reason is None and r.fitness < float("inf"), (name, r.reason)


# -- the exported optimizer -------------------------------------------------------------------------
def _linear_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(6)]


def test_step_without_a_closure_says_how_to_call_it():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = to_optimizer(SAM, [p])
    p.grad = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"step\(closure\)"):
        opt.step()
    with pytest.raises(ValueError, match="multi-tensor"):
        to_optimizer(SAM, [p], foreach=True)


def test_exported_step_matches_the_step_function_and_restores_w_and_its_gradient():
    """The exported SAM (per-tensor norm) on a two-tensor model equals the step function fed
    each tensor's gradient at its own probe point, all tensors moved together."""
    model = torch.nn.Linear(5, 3).double()
    start = [p.detach().clone() for p in model.parameters()]
    opt = to_optimizer(SAM, model.parameters(), lr=0.2)
    fn = compile_program(SAM)
    w = [p.clone() for p in start]
    for x, y in _linear_data():
        x, y = x.double(), y.double()

        def loss_at(ws):
            return ((x @ ws[0].T + ws[1] - y) ** 2).mean()

        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        closure()
        grads_at_w = [p.grad.clone() for p in model.parameters()]
        loss = opt.step(closure)
        assert loss is not None
        for p, g in zip(model.parameters(), grads_at_w):
            assert torch.equal(p.grad, g)  # the gradient at w is back in p.grad
        ws = [v.requires_grad_() for v in (w[0].clone(), w[1].clone())]
        g = torch.autograd.grad(loss_at(ws), ws)
        points = [fn.probe(v.detach(), gi, None, {"lr": 0.2}, 1) for v, gi in zip(w, g)]
        pts = [v.requires_grad_() for v in points]
        gp = torch.autograd.grad(loss_at(pts), pts)
        w = [fn(v, gi, None, {"lr": 0.2}, 1, g_probe=gpi)[0] for v, gi, gpi in zip(w, g, gp)]
        for p, v in zip(model.parameters(), w):
            torch.testing.assert_close(p.detach(), v, rtol=1e-12, atol=1e-14)


def test_eval_and_train_swap_the_weights_and_step_refuses_eval_mode():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = to_optimizer(AVERAGE, [p])
    opt.eval()  # before any step: nothing to swap
    assert "w_train" not in opt.state[p]
    fn = compile_program(AVERAGE)
    w, state = p.detach().clone(), None
    for i in range(3):
        g = torch.randn(4, 3)
        p.grad = g.clone()
        opt.step()
        w, state = fn(w, g, state, None, i + 1)
    trained = p.detach().clone()
    opt.eval()
    opt.eval()  # twice is once
    torch.testing.assert_close(p.detach(), fn.eval_weights(w, state), rtol=1e-6, atol=1e-7)
    assert torch.equal(opt.state_dict()["state"][0]["w_train"], trained)
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        opt.step()
    restored = pickle.loads(pickle.dumps(opt))
    opt.train()
    assert torch.equal(p.detach(), trained) and "w_train" not in opt.state[p]
    opt.train()  # in training mode already: nothing
    assert torch.equal(p.detach(), trained)
    restored.train()
    assert torch.equal(restored.param_groups[0]["params"][0].detach(), trained)


def test_eval_and_train_do_nothing_for_programs_without_eval_weights():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = to_optimizer("adamw", [p])
    p.grad = torch.randn(4, 3)
    opt.step()
    before = p.detach().clone()
    opt.eval()
    opt.train()
    assert torch.equal(p.detach(), before) and "w_train" not in opt.state[p]
