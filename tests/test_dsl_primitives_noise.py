"""Seeded noise: randn_like and rademacher_like.

The noise is a function of (seed, t, call site, element): the same in every run, different across
seeds, steps, call sites and parameters, with the moments of its distribution; batched members see
what a single run with their seed sees; evaluation seeds a member's parameters as the exported
optimizer does, and an exported optimizer resumed from its state_dict draws the noise of an
unbroken run.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optdisco import proxies
from optdisco.dsl import DSLError, compile_program, fingerprint, parse, to_optimizer
from optdisco.dsl.runtime import param_seed
from optdisco.evaluate import Schedule, run_members

NOISY_SGD = """
hyper lr = 0.05, sigma = 0.01
w = w - lr * (g + sigma * randn_like(g))
"""
F64 = torch.float64


def draw(fn_name, shape=(200, 500), seed=0, t=1, batched=False):
    """The noise of one call, read off an update w ← w − noise."""
    fn = compile_program(f"hyper lr = 1\nw = w - lr * {fn_name}(g)\n")
    w = torch.zeros(shape, dtype=F64)
    w1, _ = fn(w, w.clone(), None, None, t, seed=seed, batched=batched)
    return -w1


def test_gaussian_moments():
    z = draw("randn_like").flatten()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    for q, expected in ((0.5, 0.0), (0.8413, 1.0), (0.02275, -2.0)):  # the normal's quantiles
        assert abs(float(z.quantile(q)) - expected) < 0.02


def test_rademacher_values_and_balance():
    z = draw("rademacher_like").flatten()
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    # neighbours are uncorrelated (a counter hash, not a pattern)
    assert abs(float((z[1:] * z[:-1]).mean())) < 5 / math.sqrt(z.numel())


def test_noise_is_deterministic_and_depends_on_seed_step_and_site():
    a = draw("randn_like", (30, 7), seed=3, t=5)
    assert torch.equal(a, draw("randn_like", (30, 7), seed=3, t=5))
    for other in (draw("randn_like", (30, 7), seed=4, t=5), draw("randn_like", (30, 7), seed=3, t=6),
                  draw("randn_like", (30, 7), seed=param_seed(3, 1), t=5)):
        assert float((a - other).abs().max()) > 1
        assert abs(float((a * other).mean())) < 0.25  # uncorrelated


def test_two_call_sites_draw_different_noise():
    fn = compile_program("hyper lr = 1\nw = w - lr * randn_like(g) + lr * randn_like(g)\n")
    w = torch.zeros(50, 20, dtype=F64)
    w1, _ = fn(w, w.clone(), None, None, 1, seed=0)
    assert float(w1.abs().max()) > 1  # the draws do not cancel


def test_batched_members_see_their_own_seeds():
    seeds = [7, 8, 7]
    z = draw("randn_like", (3, 11, 5), seed=seeds, batched=True)
    for i, s in enumerate(seeds):
        assert torch.equal(z[i], draw("randn_like", (11, 5), seed=s))
    assert not torch.equal(z[0], z[1])


def test_noise_dtype_follows_the_parameter():
    for dtype in (torch.float32, torch.bfloat16, F64):
        fn = compile_program(NOISY_SGD)
        w = torch.zeros(8, 4, dtype=dtype)
        w1, _ = fn(w, w.clone(), None, {"sigma": 1.0, "lr": 1.0}, 1)
        assert w1.dtype == dtype and bool(w1.isfinite().all()) and float(w1.abs().max()) > 0


def test_checker_shapes_and_errors():
    fn = compile_program("hyper lr = 1\nw = w - lr * randn_like(rowmean(g)) * g\n")  # one draw per row
    w = torch.zeros(6, 4, dtype=F64)
    w1, _ = fn(w, torch.ones_like(w), None, None, 1)
    assert torch.equal(w1, w1[:, :1].expand(6, 4))
    with pytest.raises(DSLError, match="needs a tensor") as e:
        parse("hyper lr = 1\nw = w - lr * randn_like(lr)\n")
    assert (e.value.line, e.value.column) == (2, 25)
    with pytest.raises(DSLError, match="cannot start a state") as e:
        parse("hyper lr = 1\nstate z = randn_like(w)\nw = w - lr * z\n")
    assert e.value.line == 2
    with pytest.raises(DSLError, match="takes 1 argument"):
        parse("hyper lr = 1\nw = w - lr * rademacher_like(g, g)\n")


def test_fingerprint_is_deterministic_and_sees_the_noise():
    p = parse(NOISY_SGD)
    assert fingerprint(p) == fingerprint(parse(NOISY_SGD))
    assert fingerprint(p) != fingerprint(parse(NOISY_SGD.replace("randn_like", "rademacher_like")))
    assert fingerprint(p) != fingerprint(parse("hyper lr = 0.05, sigma = 0.01\nw = w - lr * g\n"))


# -- export ------------------------------------------------------------------------------------
def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64)) for s in ((6, 5), (7,), (2, 3, 2))]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=F64)


def test_export_matches_the_step_function_with_each_parameters_seed():
    params = _params()
    w0 = [p.detach().clone() for p in params]
    opt = to_optimizer(NOISY_SGD, params, sigma=0.5, seed=9)
    fn = compile_program(NOISY_SGD)
    ours = [w.clone() for w in w0]
    for step in range(1, 4):
        _grads(params, step)
        grads = [p.grad.clone() for p in params]
        opt.step()
        for i, g in enumerate(grads):
            ours[i], _ = fn(ours[i], g, None, {"sigma": 0.5}, step, seed=param_seed(9, i))
    for a, b in zip(params, ours):
        assert torch.equal(a.detach(), b)
    assert [opt.state[p]["seed"] for p in params] == [param_seed(9, i) for i in range(3)]


def test_export_resumes_from_a_state_dict_with_the_same_noise():
    steps = 6
    straight = _params()
    opt = to_optimizer(NOISY_SGD, straight, sigma=0.5, seed=4)
    for step in range(steps):
        _grads(straight, step)
        opt.step()
    resumed = _params()
    first = to_optimizer(NOISY_SGD, resumed, sigma=0.5, seed=4)
    for step in range(steps // 2):
        _grads(resumed, step)
        first.step()
    saved = copy.deepcopy(first.state_dict())
    second = to_optimizer(NOISY_SGD, resumed, sigma=0.5, seed=123)  # the state's seeds win
    second.load_state_dict(saved)
    for step in range(steps // 2, steps):
        _grads(resumed, step)
        second.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    other = _params()
    opt = to_optimizer(NOISY_SGD, other, sigma=0.5, seed=5)
    for step in range(steps):
        _grads(other, step)
        opt.step()
    assert not torch.equal(other[0], straight[0])


def test_export_has_only_the_per_tensor_path_and_checks_the_seed():
    params = _params()
    with pytest.raises(ValueError, match="seeded noise"):
        to_optimizer(NOISY_SGD, params, compile=True)
    with pytest.raises(ValueError, match="seeded noise"):
        to_optimizer(NOISY_SGD, params, foreach=True)
    with pytest.raises(ValueError, match="seed must be"):
        to_optimizer(NOISY_SGD, params, seed=-1)


def test_exported_file_runs_with_noise(tmp_path):
    import importlib.util

    from optdisco.dsl import export_python

    path = tmp_path / "noisy.py"
    path.write_text(export_python(NOISY_SGD, "NoisySGD"))
    spec = importlib.util.spec_from_file_location("noisy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b = _params(), _params()
    for params in (a, b):
        opt = module.NoisySGD(params, sigma=0.5, seed=2) if params is a else to_optimizer(NOISY_SGD, params, sigma=0.5, seed=2)
        for step in range(3):
            _grads(params, step)
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# -- evaluation ---------------------------------------------------------------------------------
def test_evaluation_is_deterministic_per_member_seed():
    task = proxies.get("mlp", size="proxy")
    fn = compile_program(NOISY_SGD.replace("sigma = 0.01", "sigma = 0.3"))
    run = run_members(fn, task, [0.05] * 3, [0, 1, 0], 8, dtype=F64)
    again = run_members(fn, task, [0.05], [1], 8, dtype=F64)
    assert torch.equal(run.train[:, 0], run.train[:, 2])
    assert not torch.equal(run.train[:, 0], run.train[:, 1])
    assert torch.equal(run.train[:, 1], again.train[:, 0])


def test_evaluation_seeds_parameters_as_the_exported_optimizer():
    task = proxies.get("mlp", size="proxy")
    program = NOISY_SGD.replace("sigma = 0.01", "sigma = 0.3")
    steps, seed = 5, 3
    run = run_members(compile_program(program), task, [0.05], [seed], steps, dtype=F64)
    module = task.make_module(seed).to(F64)
    assert [tuple(p.shape) for p in module.parameters()] == [task.param_shapes()[n] for n in task.param_shapes()]
    opt = to_optimizer(program, module.parameters(), lr=0.05, seed=seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: Schedule().factor(min(k + 1, steps), steps))
    for step in range(steps):
        loss = task.module_loss(module, step, seed)
        assert loss.item() == pytest.approx(float(run.train[step, 0]), rel=1e-9)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_simplify_never_cancels_two_draws():
    from optdisco.dsl import simplify, to_latex

    two = simplify(parse("hyper lr = 1\nw = w - lr * (randn_like(g) - randn_like(g))\n"))
    assert two.to_text().count("randn_like(g)") == 2
    one = simplify(parse("hyper lr = 1\nx = randn_like(g)\nw = w - lr * (x - x + 2 * x)\n"))
    assert "w = w - 2 * lr * x" in one.to_text()
    assert "draw" not in to_latex(two)
