"""Model-wide values: reductions over every parameter of a group (global_sum, global_mean,
global_norm, global_max, global_dot, clip_by_global_norm) and global scalar state, through the
checker, the printer, the step function (one tensor, a group, a batch of members), evaluation,
the exported optimizer, the fingerprint, memory, cost and mutation. References are written
plainly here with torch (torch.nn.utils.clip_grad_norm_, torch.optim.SGD and Adam)."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from harness import initial_param

from optdisco import proxies
from optdisco.dsl import Call, DSLError, compile_program, export_python, fingerprint, parse, simplify, to_latex, to_optimizer
from optdisco.dsl.cost import step_cost
from optdisco.dsl.memory import state_bytes
from optdisco.dsl.program import walk_exprs
from optdisco.evaluate import run_members
from optdisco.search.mutation import mutate, op_replace_primitive

SHAPES = [(11,), (7, 5), (4, 3, 2, 2)]

CLIP_SGD = """
hyper lr = 0.1, c = 1.0
w = w - lr * clip_by_global_norm(g, c)
"""

CLIP_ADAM = """
hyper lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, c = 1.0
state m = zeros, v = zeros
u = clip_by_global_norm(g, c)
m = ema(m, u, beta1)
v = ema(v, u * u, beta2)
w = w - lr * (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)
"""

VALUES = """
hyper lr = 1
global s = 0, mu = 0, n = 0, mx = 0, dt = 0
s = global_sum(g)
mu = global_mean(g)
n = global_norm(g)
mx = global_max(abs(g))
dt = global_dot(g, w)
w = w - lr * (s + mu + n + mx + dt) * 0 * g
"""

# normalized SGD with a running model-wide gradient norm (a global state carried across steps)
RUNNING = """
hyper lr = 0.1, beta = 0.9
global r = 0
r = beta * r + (1 - beta) * global_norm(g)
w = w - lr * g / (r / (1 - beta ** t) + 1e-8)
"""


def _grads(steps, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _params():
    return [initial_param(s, seed=k) for k, s in enumerate(SHAPES)]


def _run_group(program, grads, hyper=None):
    fn = compile_program(program)
    ws, states, gstate = _params(), [None] * len(SHAPES), None
    for t, gs in enumerate(grads, 1):
        ws, states, gstate = fn.step_group(ws, [g.clone() for g in gs], states, gstate, hyper, t)
    return ws, states, gstate


# -- language ------------------------------------------------------------------------------------
def test_global_state_round_trips_through_the_printer_in_declaration_order():
    text = ("hyper lr = 1\nstate m = zeros\nglobal d = 1, e = lr\nstate v = zeros\n"
            "m = ema(m, g, 0.9)\nv = ema(v, g * g, 0.9)\nd = max(d, global_norm(m))\ne = e + global_sum(v)\n"
            "w = w - lr * d * e * m\n")
    p = parse(text)
    assert [s.name for s in p.param_states] == ["m", "v"] and [s.name for s in p.global_states] == ["d", "e"]
    assert p.to_text() == text
    assert parse(p.to_text()) == p and p.model_wide
    assert not parse("hyper lr = 1\nw = w - lr * g / norm(g)\n").model_wide


BAD = [
    ("hyper lr = 1\nif is_matrix:\n    w = w - lr * g / global_norm(g)\nend\n", 3, 22, "cannot sit inside an if-block"),
    ("hyper lr = 1\nglobal d = 0\nd = norm(g)\nw = w - lr * d * g\n", 3, 1, "depends on the parameter (through 'g')"),
    ("hyper lr = 1\nglobal d = 0\nx = rows * global_norm(g)\nd = x\nw = w - lr * d * g\n", 4, 1, "through 'x'"),
    ("hyper lr = 1\nglobal d = 0\nif is_vector:\n    d = 1\nend\nw = w - lr * d * g\n", 4, 5, "inside an if-block"),
    ("hyper lr = 1\nglobal d = rows\nw = w - lr * d * g\n", 2, 8, "start it from constants and hyperparameters"),
    ("hyper lr = 1\nglobal d = zeros\nw = w - lr * d * g\n", 2, 8, "one scalar per model"),
    ("hyper lr = 1\nstate m = global_norm(g)\nw = w - lr * m * g\n", 2, 11, "cannot start a state"),
    ("hyper lr = 1\nglobal d: q8 = 0\nw = w - lr * d * g\n", 2, 9, "takes no storage format"),
    ("hyper lr = 1\nw = w - lr * g\nglobal d = 0\n", 3, 1, "before the first statement"),
    ("hyper lr = 1\nw = w - lr * global_norm(lr) * g\n", 2, 26, "static scalar"),
    ("hyper lr = 1\nw = w - lr * clip_by_global_norm(g, g)\n", 2, 37, "must be a scalar"),
    ("hyper lr = 1\nglobal d = 0\nw = w - lr * g\n", 2, 8, "state 'd' is never used"),
    ("hyper lr = 1\nglobal d = 1\nstate m = d * g\nm = m + d\nw = w - lr * m\n", 3, 7, "cannot start from the global"),
]


@pytest.mark.parametrize(("text", "line", "col", "phrase"), BAD)
def test_misuse_is_a_located_error(text, line, col, phrase):
    with pytest.raises(DSLError) as e:
        parse(text)
    assert (e.value.line, e.value.column) == (line, col), str(e.value)
    assert phrase in e.value.message


def test_model_wide_noise_programs_export_with_their_seeds():
    """Noise and model-wide values together: the exported optimizer (per-tensor path) is the
    evaluated step function, seeds included."""
    text = "hyper lr = 0.1\nw = w - lr * (g + 0.1 * randn_like(g)) / global_norm(g)\n"
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = to_optimizer(text, params, seed=3)
    grads = _grads(3)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    from optdisco.dsl.runtime import param_seed

    fn = compile_program(text)
    ws, st, gstate = _params(), [None] * 3, None
    for t, gs in enumerate(grads, 1):
        ws, st, gstate = fn.step_group(ws, gs, st, gstate, None, t, seeds=[param_seed(3, i) for i in range(3)])
    for a, b in zip(params, ws):
        torch.testing.assert_close(a.detach(), b, rtol=1e-14, atol=1e-14)


def test_an_if_on_t_or_a_hyperparameter_may_hold_model_wide_values():
    p = parse("hyper lr = 1, k = 2\nglobal d = 0\nif t % k == 0:\n    d = global_norm(g)\nend\n"
              "w = w - lr * (d + 1) * g\n")
    ws, _, gstate = _run_group(p, _grads(2))
    assert float(gstate["d"]) > 0


# -- values and semantics ------------------------------------------------------------------------
def test_reductions_are_over_every_tensor_of_the_group():
    grads = _grads(1)
    w0 = _params()
    _, _, gs = _run_group(VALUES, grads)
    g = torch.cat([x.flatten() for x in grads[0]])
    w = torch.cat([x.flatten() for x in w0])
    expected = {"s": g.sum(), "mu": g.mean(), "n": g.norm(), "mx": g.abs().max(), "dt": g @ w}
    for k, v in expected.items():
        torch.testing.assert_close(gs[k].reshape(()), v, rtol=1e-12, atol=1e-12, msg=k)


def test_one_tensor_is_a_model_of_one_tensor_and_keeps_its_global_state_in_its_state():
    fn = compile_program(RUNNING)
    w, g = initial_param((7, 5)), _grads(1)[0][1]
    w1, st = fn(w, g, None, None, 1)
    assert set(st) == {"r"} and st["r"].shape == (1, 1)
    torch.testing.assert_close(st["r"].reshape(()), 0.1 * g.norm())
    ws, _, gs = fn.step_group([w], [g], [None], None, None, 1)
    assert torch.equal(ws[0], w1) and torch.equal(gs["r"], st["r"])


def test_each_member_has_its_own_model_wide_values():
    """Batched: M members, each over its own parameters, equal M separate runs."""
    fn = compile_program(RUNNING)
    members = 3
    gen = torch.Generator().manual_seed(5)
    W = [torch.randn((members,) + s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn((members,) + s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(4)]
    lrs = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    ws, states, gs = W, [None] * 3, None
    for t, g in enumerate(grads, 1):
        ws, states, gs = fn.step_group(ws, g, states, gs, {"lr": lrs}, t, batched=True)
    assert gs["r"].shape == (members, 1, 1)
    for i in range(members):
        wi, si, gi = [x[i] for x in W], [None] * 3, None
        for t, g in enumerate(grads, 1):
            wi, si, gi = fn.step_group(wi, [x[i] for x in g], si, gi, {"lr": float(lrs[i])}, t)
        for a, b in zip(ws, wi):
            torch.testing.assert_close(a[i], b, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(gs["r"][i], gi["r"], rtol=1e-13, atol=0)


def _sgd_clip_reference(grads, lr, c, adam=False):
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = torch.optim.Adam(params, lr=lr, eps=1e-8) if adam else torch.optim.SGD(params, lr=lr)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, c)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("scale", [0.01, 1.0], ids=["below the limit", "clipped"])
@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
def test_clip_by_global_norm_equals_clip_grad_norm_then_the_optimizer(adam, scale):
    grads = _grads(12, scale=scale)
    program, lr = (CLIP_ADAM, 1e-2) if adam else (CLIP_SGD, 0.1)
    expected = _sgd_clip_reference(grads, lr, 1.0, adam)
    ws, _, _ = _run_group(program, grads)
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = to_optimizer(program, params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    for a, b, e in zip(ws, params, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.detach(), e, rtol=1e-12, atol=1e-14)
    if scale == 1.0:  # clipping acted: per-tensor clipping would differ
        per_tensor = [torch.nn.Parameter(w.clone()) for w in _params()]
        opts = [to_optimizer(program, [p]) for p in per_tensor]  # each tensor its own model
        for gs in grads:
            for p, g, o in zip(per_tensor, gs, opts):
                p.grad = g.clone()
                o.step()
        assert max(float((a.detach() - e).abs().max()) for a, e in zip(per_tensor, expected)) > 1e-3


# -- the exported optimizer ----------------------------------------------------------------------
def test_export_keeps_global_state_in_the_group_and_resumes_exactly():
    grads = _grads(8)
    full = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = to_optimizer(RUNNING, full)
    half = None
    for i, gs in enumerate(grads):
        for p, g in zip(full, gs):
            p.grad = g.clone()
        opt.step()
        if i == 3:
            half = ([p.detach().clone() for p in full], copy.deepcopy(opt.state_dict()))
    assert set(opt.param_groups[0]["global_state"]) == {"r"}
    assert all("r" not in opt.state[p] for p in full)
    ws, _, gs = _run_group(RUNNING, grads)
    for a, b in zip(full, ws):
        assert torch.equal(a.detach(), b)
    torch.testing.assert_close(opt.param_groups[0]["global_state"]["r"], gs["r"].reshape(()), rtol=0, atol=0)
    resumed = [torch.nn.Parameter(w.clone()) for w in half[0]]
    opt2 = to_optimizer(RUNNING, resumed)
    opt2.load_state_dict(half[1])
    for gs in grads[4:]:
        for p, g in zip(resumed, gs):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(resumed, full):
        assert torch.equal(a.detach(), b.detach())


def test_param_groups_are_one_model_each_with_its_own_hyperparameters():
    """Two groups with their own lr: the running norm r is the model's (over both groups, one r
    in every group) and each tensor moves with its group's lr — RUNNING's equations by hand."""
    grads, lrs, beta = _grads(4), [0.1, 0.1, 0.05], 0.9
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = to_optimizer(RUNNING, [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}])
    ws, r = _params(), 0.0
    for t, gs in enumerate(grads, 1):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        r = beta * r + (1 - beta) * math.sqrt(sum(float((g * g).sum()) for g in gs))
        ws = [w - lr * g / (r / (1 - beta**t) + 1e-8) for w, g, lr in zip(ws, gs, lrs)]
    for p, w in zip(params, ws):
        torch.testing.assert_close(p.detach(), w, rtol=1e-13, atol=1e-15)
    for group in opt.param_groups:
        assert float(group["global_state"]["r"]) == pytest.approx(r, rel=1e-13)


def test_hyperparameters_of_the_global_state_must_agree_across_groups():
    """beta enters the model's running norm r: groups may not differ in it (lr may)."""
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    assert type(to_optimizer(RUNNING, params[:1])).MODEL_HYPERS == ("beta",)
    with pytest.raises(ValueError, match="'beta' enters the model-wide state"):
        to_optimizer(RUNNING, [{"params": params[:1]}, {"params": params[1:], "beta": 0.8}])
    opt = to_optimizer(RUNNING, [{"params": params[:1]}, {"params": params[1:], "lr": 0.01}])
    opt.param_groups[1]["beta"] = 0.8  # as a scheduler might
    for p, g in zip(params, _grads(1)[0]):
        p.grad = g
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"'beta'.*\[0.9, 0.8\]"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before)) and not opt.state


def test_foreach_and_compile_are_refused_clearly_and_the_file_exports():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="model-wide values"):
        to_optimizer(RUNNING, params, foreach=True)
    with pytest.raises(ValueError, match="model-wide values"):
        to_optimizer(RUNNING, params, compile=True)
    source = export_python(RUNNING, class_name="Running")
    assert "MODEL_WIDE = True" in source and "GLOBALS = ('r',)" in source


# -- evaluation ----------------------------------------------------------------------------------
def test_evaluation_clips_each_members_gradients_over_its_own_model():
    """run_members against torch modules: clip_grad_norm_ over the module, then SGD, per member."""
    task = proxies.get("mlp", size="proxy")
    steps, lrs, seeds = 12, [0.05, 0.3], [0, 1]
    fn = compile_program(CLIP_SGD.replace("c = 1.0", "c = 0.5"))
    run = run_members(fn, task, lrs, seeds, steps, schedule=_constant())
    for i, (lr, seed) in enumerate(zip(lrs, seeds)):
        module = task.make_module(seed)
        opt = torch.optim.SGD(module.parameters(), lr=lr)
        for step in range(steps):
            loss = task.module_loss(module, step, seed)
            assert loss.item() == pytest.approx(float(run.train[step, i]), rel=1e-4)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 0.5)
            opt.step()


def _constant():
    from optdisco.evaluate import Schedule

    class Constant(Schedule):
        def factor(self, t, steps):
            return 1.0

    return Constant()


# -- fingerprint, symbolic, memory, cost, mutation ----------------------------------------------
def test_fingerprint_tells_model_wide_from_per_tensor_and_ignores_renaming():
    a = parse("hyper lr = 0.1\nw = w - lr * g / global_norm(g)\n")
    b = parse("hyper lr = 0.1\nw = w - lr * g / norm(g)\n")
    c = parse("hyper lr = 0.1\nn = global_norm(g)\nw = w - lr * g / n\n")
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(c)
    renamed = ("hyper lr = 0.1, beta = 0.9\nglobal q = 0\nq = beta * q + (1 - beta) * global_norm(g)\n"
               "w = w - lr * g / (q / (1 - beta ** t) + 1e-8)\n")
    assert fingerprint(parse(RUNNING)) == fingerprint(parse(renamed))


def test_simplify_and_latex_treat_model_wide_values_as_opaque():
    p = parse("hyper lr = 0.1\nglobal r = 0\nr = r + global_norm(g) - global_norm(g)\nw = w - lr * (r + 1) * g\n")
    q = simplify(p)
    assert "global_norm" not in q.to_text() and fingerprint(q) == fingerprint(p)
    assert "global" in to_latex(parse(RUNNING))


def test_global_state_costs_nothing_per_element():
    assert state_bytes(parse("hyper lr = 0.1\nglobal r = 0\nr = max(r, global_norm(g))\nw = w - lr * g / r\n")) == 0
    adam = state_bytes(parse(CLIP_ADAM.replace("clip_by_global_norm(g, c)", "g").replace(", c = 1.0", "")))
    assert state_bytes(parse(CLIP_ADAM)) == adam
    assert step_cost(parse(CLIP_SGD)).bytes_per_element > step_cost(parse("hyper lr = 1\nw = w - lr * g\n")).bytes_per_element


def test_mutation_swaps_model_wide_reductions_and_children_check():
    p = parse("hyper lr = 0.1\nw = w - lr * g / global_norm(g)\n")
    from optdisco.dsl import check

    seen = set()
    for seed in range(40):
        child, _ = op_replace_primitive(p, random.Random(seed), check(p))
        seen |= {e.fn for e in walk_exprs(child) if isinstance(e, Call)}  # or an operator was swapped
    assert seen == {"global_norm", "global_sum", "global_mean", "global_max"}
    rng = random.Random(0)
    children = [mutate(parse(RUNNING), rng)[0] for _ in range(60)]
    assert sum(c is not None for c in children) > 30
    inserted = 0
    rng = random.Random(1)
    for _ in range(300):
        child, _ = mutate(parse("hyper lr = 0.1\nstate m = zeros\nm = ema(m, g, 0.9)\nw = w - lr * m\n"), rng,
                          op="insert")
        inserted += child is not None and child.program.model_wide
    assert inserted > 0


# -- evaluation weights in a model-wide program -----------------------------------------------------
# an EMA of the weights, debiased by a model-wide step count k, trained by SGD with global-norm clipping
EMA_EVAL = """
hyper lr = 0.1, c = 1.0, beta = 0.9
state x = zeros
global k = 0
k = k + 1
w = w - lr * clip_by_global_norm(g, c)
x = ema(x, w, beta)
w_eval = x / (1 - beta ** k)
"""


def _ema_eval_by_hand(grads, lr=0.1, c=1.0, beta=0.9):
    """EMA_EVAL's equations written plainly: (the weights, the evaluation weights) after each step."""
    ws, xs, out = _params(), [torch.zeros(s, dtype=torch.float64) for s in SHAPES], []
    for k, gs in enumerate(grads, 1):
        norm = math.sqrt(sum(float((g * g).sum()) for g in gs))
        scale = min(1.0, c / (norm + 1e-6))
        ws = [w - lr * scale * g for w, g in zip(ws, gs)]
        xs = [beta * x + (1 - beta) * w for x, w in zip(xs, ws)]
        out.append((ws, [x / (1 - beta**k) for x in xs]))
    return out


def test_a_model_wide_program_may_have_eval_weights_that_read_its_global_state():
    grads = _grads(5)
    expected = _ema_eval_by_hand(grads)
    fn = compile_program(EMA_EVAL)
    assert fn.model_wide and fn.has_eval_weights
    ws, states, gstate = _params(), [None] * len(SHAPES), None
    assert fn.eval_weights_group(ws, states, gstate) == ws  # before the first step: the weights
    for t, (gs, (w_ref, e_ref)) in enumerate(zip(grads, expected), 1):
        ws, states, gstate = fn.step_group(ws, [g.clone() for g in gs], states, gstate, None, t)
        evals = fn.eval_weights_group(ws, states, gstate, None, t)
        for a, b, c, d in zip(ws, w_ref, evals, e_ref):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(c, d, rtol=1e-13, atol=1e-15)
    one, state = _params()[1], None  # one tensor: a model of that tensor, its k in its state
    for t, gs in enumerate(grads[:2], 1):
        one, state = fn(one, gs[1].clone(), state, None, t)
    assert float(state["k"]) == 2.0
    torch.testing.assert_close(fn.eval_weights(one, state, None, 2), state["x"] / (1 - 0.9**2), rtol=1e-14, atol=0)


def test_exported_eval_puts_a_model_wide_programs_eval_weights_in_place():
    grads = _grads(4)
    expected = _ema_eval_by_hand(grads)
    params = [torch.nn.Parameter(w.clone()) for w in _params()]
    opt = to_optimizer(EMA_EVAL, [{"params": params[:1]}, {"params": params[1:]}])
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    w_ref, e_ref = expected[-1]
    opt.eval()
    for p, e in zip(params, e_ref):
        torch.testing.assert_close(p.detach(), e, rtol=1e-13, atol=1e-15)
    opt.train()
    for p, w in zip(params, w_ref):
        torch.testing.assert_close(p.detach(), w, rtol=1e-13, atol=1e-15)


def test_the_runner_judges_a_model_wide_program_at_its_eval_weights():
    """run_members' held-out losses and Run.params are at w_eval, from each member's own k."""
    task = proxies.get("mlp", size="proxy")
    fn = compile_program(EMA_EVAL)
    lrs, seeds, steps = [0.05, 0.2], [0, 1], 6
    run = run_members(fn, task, lrs, seeds, steps, hyper={"c": 0.5})
    at_w = EMA_EVAL.replace("w_eval = x / (1 - beta ** k)", "w_eval = w + 0 * x * k")  # judged at w itself
    plain = run_members(compile_program(at_w), task, lrs, seeds, steps, hyper={"c": 0.5})
    assert torch.equal(run.train, plain.train)  # w_eval does not change training
    assert not torch.allclose(torch.as_tensor(run.final), torch.as_tensor(plain.final))
    for name, p in run.params.items():
        assert p.shape == plain.params[name].shape and not torch.allclose(p, plain.params[name])
    by_t = EMA_EVAL.replace("w_eval = x / (1 - beta ** k)", "w_eval = x / (1 - beta ** t) + 0 * k")  # k is t
    same = run_members(compile_program(by_t), task, lrs, seeds, steps, hyper={"c": 0.5})
    # (float32: beta ** k with k a tensor and beta ** t with t an int round apart)
    torch.testing.assert_close(torch.as_tensor(run.final), torch.as_tensor(same.final), rtol=1e-5, atol=0)
    for n, p in run.params.items():
        torch.testing.assert_close(p, same.params[n], rtol=1e-5, atol=1e-7)


def test_a_state_set_to_the_weights_keeps_the_weights_before_the_step_in_export():
    """``prev = w`` before the update: the exported optimizer (single and stacked parameters) keeps
    the old weights in prev, as the step function does (state is stored before p is written)."""
    text = """
hyper lr = 0.1
state prev = zeros
global r = 0
r = global_norm(w - prev)
prev = w
w = w - lr * g / (r + 1)
"""
    shapes = [(5,), (5,), (3, 2)]
    gen = torch.Generator().manual_seed(3)
    starts = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(4)]
    params = [torch.nn.Parameter(w.clone()) for w in starts]
    opt = to_optimizer(text, params)
    fn = compile_program(text)
    ws, states, gstate = [w.clone() for w in starts], [None] * 3, None
    for t, gs in enumerate(grads, 1):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        ws, states, gstate = fn.step_group(ws, [g.clone() for g in gs], states, gstate, None, t)
        for p, b, st in zip(params, before, states):
            assert torch.equal(opt.state[p]["prev"], b) and torch.equal(st["prev"], b)
    for p, w in zip(params, ws):
        torch.testing.assert_close(p.detach(), w, rtol=1e-15, atol=1e-15)
