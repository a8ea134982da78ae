"""Library programs that take the gradient at another point or give evaluation weights, and MARS,
checked against pytorch_optimizer 4.1.0.

Schedule-Free AdamW (training weights and, after every step, its evaluation weights), SAM over SGD
and over AdamW, and MARS are driven side by side with their pytorch_optimizer classes from the same
initial parameter for 60 steps on 1-D, 2-D and 4-D parameters in float64, with weight decay off and
on; SAM on one model of all three (its probe's gradient norm is the model's), through the step
function's step_group and the exported optimizer's step(closure). SAM needs a loss, not a gradient
sequence: each step has its own smooth nonconvex loss, whose gradient our side takes in closed form
at w and at the probe point, and the reference through its closure. pytorch_optimizer sums SAM's
squared gradient norm in float32; with that sum done in float64 (a patch of its
``get_global_gradient_norm``) the programs match to 1e-13.
"""

from __future__ import annotations

import math

import pytest
import torch
from harness import SHAPES, gradient_sequence, initial_param, max_abs_diff

from optdisco import library
from optdisco.dsl import compile_program, to_optimizer

po = pytest.importorskip("pytorch_optimizer")
sam_module = pytest.importorskip("pytorch_optimizer.optimizer.sam")

STEPS = 60
WDS = (0.0, 0.1)
TIGHT = 1e-13  # relative to the largest |w|, float64
NAMES = ["schedulefree_adamw", "sam_sgd", "sam_adamw", "asam_sgd", "mars", "mars_exact"]

params = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
decays = pytest.mark.parametrize("wd", WDS)


def rel_diff(a_list, b_list):
    scale = max(float(b.abs().max()) for b in b_list)
    return max_abs_diff(a_list, b_list) / scale


@pytest.mark.parametrize("name", NAMES)
def test_header(name):
    e = library.entry(name)
    assert e.title and e.paper and e.year.isdigit() and e.link.startswith("https://")
    assert e.reference and e.notes
    assert library.load(name).hyper_defaults["lr"] > 0


# -- Schedule-Free AdamW -------------------------------------------------------------------------------
@params
@decays
def test_schedulefree_adamw_and_its_eval_weights_match_pytorch_optimizer(shape, wd):
    w0, grads = initial_param(shape), gradient_sequence(shape, STEPS)
    fn = compile_program(library.load("schedulefree_adamw"))
    hyper = {"lr": 1e-2, "wd": wd}
    w, state, ours, ours_eval = w0.clone(), None, [], []
    for t, g in enumerate(grads, 1):
        w, state = fn(w, g.clone(), state, hyper, t)
        ours.append(w.clone())
        ours_eval.append(fn.eval_weights(w, state, hyper, t))
    p = torch.nn.Parameter(w0.clone())
    opt = po.ScheduleFreeAdamW([p], lr=1e-2, weight_decay=wd)
    ref, ref_eval = [], []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        ref.append(p.detach().clone())
        opt.eval()
        ref_eval.append(p.detach().clone())
        opt.train()
    assert rel_diff(ours, ref) < TIGHT
    assert rel_diff(ours_eval, ref_eval) < TIGHT
    assert rel_diff(ours_eval, ours) > 1e-3  # the two sequences are apart


def test_schedulefree_adamw_defaults_are_the_references():
    d = library.load("schedulefree_adamw").hyper_defaults
    ref = po.ScheduleFreeAdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], (d["beta1"], d["beta2"]), d["wd"], d["eps"]) == (ref["lr"], ref["betas"], ref["weight_decay"], ref["eps"])
    assert (d["r"], d["weight_lr_power"]) == (ref["r"], ref["weight_lr_power"]) and ref["warmup_steps"] == 0


def test_exported_schedulefree_adamw_eval_and_train_match_the_reference():
    """A model of several tensors, 12 steps, eval() and train() in between: the exported
    optimizer's weights equal the reference's in both modes."""
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    ref_model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = to_optimizer("schedulefree_adamw", ours_model.parameters(), lr=0.02, wd=0.05)
    ref = po.ScheduleFreeAdamW(ref_model.parameters(), lr=0.02, weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    for i in range(12):
        x, y = torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randn(16, 2, generator=gen, dtype=torch.float64)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        if i % 4 == 3:
            ours.eval()
            ref.eval()
            for a, b in zip(ours_model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
            ours.train()
            ref.train()
        for a, b in zip(ours_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


# -- SAM -------------------------------------------------------------------------------------------
# one model of a 1-D, a 2-D and a 4-D tensor: SAM's gradient norm is taken over all three
MODEL = list(SHAPES.values())


def losses(shapes, steps, seed=3):
    """(loss(i, ws), its gradients grad(i, ws)): step i's smooth nonconvex loss of the tensors ws."""
    gen = torch.Generator().manual_seed(seed)
    A = [[torch.rand(s, generator=gen, dtype=torch.float64) + 0.5 for s in shapes] for _ in range(steps)]
    B = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]

    def loss(i, ws):
        return sum(0.5 * (a * w * w).sum() + (b * w).sum() + 0.3 * torch.cos(w).sum() for a, b, w in zip(A[i], B[i], ws))

    def grad(i, ws):
        return [a * w + b - 0.3 * torch.sin(w) for a, b, w in zip(A[i], B[i], ws)]

    return loss, grad


def float64_norm(param_groups, device=None, *, weight_adaptive=False):
    """pytorch_optimizer's squared global gradient norm, summed in float64 (for a group with
    adaptive=True and weight_adaptive, of the gradients times |p|)."""
    def scaled(group, p):
        return p.grad.double() * (p.double().abs() if weight_adaptive and group.get("adaptive", False) else 1.0)

    return sum((scaled(g, p) ** 2).sum() for g in param_groups for p in g["params"] if p.grad is not None).reshape(1)


SAMS = {
    "sam_sgd": (lambda ps, wd: po.SAM(ps, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, weight_decay=wd),
                lambda wd: {"lr": 0.05, "wd": wd}),
    "sam_adamw": (lambda ps, wd: po.SAM(ps, torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=wd),
                  lambda wd: {"lr": 1e-2, "wd": wd}),
}


# pytorch_optimizer's adaptive SAM is ASAM with eta = 0
ADAPTIVE = {
    "asam_sgd": (lambda ps, wd: po.SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05, momentum=0.9,
                                       weight_decay=wd),
                 lambda wd: {"lr": 0.05, "wd": wd, "eta": 0.0}),
}


def start(shapes):
    return [initial_param(s, seed=1 + i) for i, s in enumerate(shapes)]


def sam_reference(make, ws, loss, steps, wd):
    """pytorch_optimizer's SAM on the tensors ws (one optimizer): their values after each step."""
    ps = [torch.nn.Parameter(w.clone()) for w in ws]
    return step_with_closure(make(ps, wd), ps, loss, steps)


def step_with_closure(opt, ps, loss, steps):
    out = []
    for i in range(steps):
        def closure(i=i):
            opt.zero_grad()
            value = loss(i, ps)
            value.backward()
            return value

        closure()
        opt.step(closure)
        out.append([p.detach().clone() for p in ps])
    return out


def compare_sam(name, shapes, wd):
    """(the step function's largest difference from the reference, the exported optimizer's),
    relative to the largest |w|, over every tensor and step."""
    make, hyper = {**SAMS, **ADAPTIVE}[name]
    loss, grad = losses(shapes, STEPS)
    fn = compile_program(library.load(name))
    ws, states, gstate, ours = start(shapes), [None] * len(shapes), None, []
    for i in range(STEPS):
        ws, states, gstate = fn.step_group(ws, grad(i, ws), states, gstate, hyper(wd), i + 1,
                                           g_probes=lambda points, i=i: grad(i, points))
        ours.append(ws)
    ps = [torch.nn.Parameter(w) for w in start(shapes)]
    exported = step_with_closure(to_optimizer(name, ps, **hyper(wd)), ps, loss, STEPS)
    ref = sam_reference(make, start(shapes), loss, STEPS, wd)

    def diff(a, b):
        return rel_diff([x for step in a for x in step], [x for step in b for x in step])

    return diff(ours, ref), diff(exported, ref)


@pytest.mark.parametrize("name", list(SAMS))
@decays
def test_sam_matches_pytorch_optimizer_on_a_whole_model(name, wd, monkeypatch):
    """A 1-D, a 2-D and a 4-D tensor in one optimizer, through step_group and through the exported
    optimizer's step(closure): the probe's gradient norm is the model's, as the reference's."""
    assert max(compare_sam(name, MODEL, wd)) < 1e-8  # the reference's float32 norm
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", float64_norm)
    assert max(compare_sam(name, MODEL, wd)) < TIGHT


@pytest.mark.parametrize("name", list(SAMS))
def test_sams_probe_norm_is_the_models_not_each_tensors(name, monkeypatch):
    """Each tensor stepped alone (a model of one tensor, its own norm) departs from the reference
    on the whole model."""
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", float64_norm)
    make, hyper = SAMS[name]
    loss, grad = losses(MODEL, 10)
    fn = compile_program(library.load(name))
    ws, states, alone = start(MODEL), [None] * len(MODEL), []
    for i in range(10):
        gs = grad(i, ws)
        for k in range(len(ws)):
            def grad_k(x, i=i, k=k):
                return grad(i, ws[:k] + [x] + ws[k + 1:])[k]

            ws[k], states[k] = fn(ws[k], gs[k], states[k], hyper(0.1), i + 1, g_probe=grad_k)
        alone.append(list(ws))
    ref = sam_reference(make, start(MODEL), loss, 10, 0.1)
    assert rel_diff(alone[-1], ref[-1]) > 1e-6


@pytest.mark.parametrize("name", list(SAMS))
def test_sam_over_two_parameter_groups_takes_the_models_norm_as_the_reference(name, monkeypatch):
    """Weight decay on the matrix and the 4-D tensor, none on the vector: the probe's gradient
    norm is still taken over both groups (the reference's get_global_gradient_norm runs over all
    of its groups), each group decaying with its own wd."""
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", float64_norm)
    make, hyper = SAMS[name]
    loss, _ = losses(MODEL, 20)

    def groups(ps, key):
        return [{"params": ps[1:], key: 0.1}, {"params": ps[:1], key: 0.0}]

    ps = [torch.nn.Parameter(w) for w in start(MODEL)]
    ours = step_with_closure(to_optimizer(name, groups(ps, "wd"), **hyper(0.0)), ps, loss, 20)
    rs = [torch.nn.Parameter(w) for w in start(MODEL)]
    ref = step_with_closure(make(groups(rs, "weight_decay"), 0.0), rs, loss, 20)
    assert rel_diff([x for step in ours for x in step], [x for step in ref for x in step]) < TIGHT


@decays
def test_asam_with_eta_zero_matches_pytorch_optimizers_adaptive_sam_on_a_whole_model(wd, monkeypatch):
    assert max(compare_sam("asam_sgd", MODEL, wd)) < 1e-8  # the reference's float32 norm
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", float64_norm)
    assert max(compare_sam("asam_sgd", MODEL, wd)) < TIGHT


def test_asams_probe_is_the_papers_equation():
    """The probe point with eta = 0.01, against the paper's ε = ρ·T_w²·g/‖T_w·g‖ (T_w = |w| + η)
    over the whole model, written plainly."""
    ws, (_, grad) = start(MODEL), losses(MODEL, 1)
    gs = grad(0, ws)
    points = compile_program(library.load("asam_sgd")).probe_group(ws, gs, [None] * len(ws), None, None, 1)
    T = [w.abs() + 0.01 for w in ws]
    norm = math.sqrt(sum(float(((t * g) ** 2).sum()) for t, g in zip(T, gs)))
    for point, w, t, g in zip(points, ws, T, gs):
        torch.testing.assert_close(point, w + 0.5 * t * t * g / (norm + 1e-12), rtol=1e-14, atol=1e-15)


def test_asam_defaults_are_the_papers():
    d = library.load("asam_sgd").hyper_defaults
    assert (d["rho"], d["eta"], d["momentum"]) == (0.5, 0.01, 0.9)


def test_sam_defaults_are_the_references():
    for name in SAMS:
        d = library.load(name).hyper_defaults
        assert d["rho"] == po.SAM([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, lr=0.1).defaults["rho"]
    d = library.load("sam_adamw").hyper_defaults
    ref = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], (d["beta1"], d["beta2"]), d["eps"], d["wd"]) == (ref["lr"], ref["betas"], ref["eps"], ref["weight_decay"])


@pytest.mark.parametrize("name", list(SAMS))
def test_exported_sam_matches_pytorch_optimizer_on_a_network(name, monkeypatch):
    """Through step(closure), on a two-layer tanh network (weights and biases: one model)."""
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", float64_norm)
    make, hyper = SAMS[name]
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = to_optimizer(name, ours_model.parameters(), **hyper(0.1))
    ref = make(ref_model.parameters(), 0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen, dtype=torch.float64)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            def closure(model=model, opt=opt):
                opt.zero_grad()
                value = (torch.tanh(model(x)) - y).pow(2).mean()
                value.backward()
                return value

            closure()
            opt.step(closure)
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


# -- MARS ------------------------------------------------------------------------------------------
@params
@decays
def test_mars_matches_pytorch_optimizer(shape, wd):
    """Matrices take MARS, vectors AdamW with their own learning rate (half), betas and decay."""
    w0, grads = initial_param(shape), gradient_sequence(shape, STEPS)
    fn = compile_program(library.load("mars"))
    hyper = {"lr": 1e-2, "wd": wd, "wd_1d": 0.05, "lr_1d_ratio": 0.5}
    w, state, ours = w0.clone(), None, []
    for t, g in enumerate(grads, 1):
        w, state = fn(w, g.clone(), state, hyper, t)
        ours.append(w.clone())
    p = torch.nn.Parameter(w0.clone())
    opt = po.MARS([p], lr=1e-2, weight_decay=wd, weight_decay_1d=0.05, lr_1d=5e-3, foreach=False)
    ref = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        ref.append(p.detach().clone())
    assert rel_diff(ours, ref) < TIGHT


def test_mars_clips_the_corrected_gradient_to_norm_one():
    """With large gradients the correction's norm exceeds 1 and is scaled down: the first step of
    a 2-D parameter moves by lr·m̂/(√v̂ + ε) with c = g/‖g‖, the same as for 100·g."""
    fn = compile_program(library.load("mars"))
    w0, g = initial_param((7, 5)), gradient_sequence((7, 5), 1)[0]
    a, _ = fn(w0, g, None, None, 1)
    b, _ = fn(w0, 100 * g, None, None, 1)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_mars_defaults_are_the_references():
    d = library.load("mars").hyper_defaults
    ref = po.MARS([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (d["lr"], (d["beta1"], d["beta2"]), d["gamma"], d["eps"], d["wd"]) == (
        ref["lr"], ref["betas"], ref["gamma"], ref["eps"], ref["weight_decay"])
    assert ((d["beta1_1d"], d["beta2_1d"]), d["wd_1d"], d["lr"] * d["lr_1d_ratio"]) == (
        ref["betas_1d"], ref["weight_decay_1d"], ref["lr_1d"])


# -- MARS, exact -------------------------------------------------------------------------------------
def mars_exact_by_hand(params, batches, loss, lr, wd, lr_1d, wd_1d, beta1=0.95, beta2=0.99, gamma=0.025,
                       betas_1d=(0.9, 0.95), eps=1e-8):
    """Algorithm 1 of the MARS paper (MARS-AdamW, exact), for matrices; AdamW for vectors."""
    ws = [p.clone() for p in params]
    prev = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    out = []
    for t, batch in enumerate(batches, 1):
        def grads_at(point):
            point = [q.clone().requires_grad_() for q in point]
            return torch.autograd.grad(loss(point, batch), point)

        g, g_prev = grads_at(ws), grads_at(prev)
        prev = [w.clone() for w in ws]
        for i, w in enumerate(ws):
            if w.dim() >= 2:
                c = g[i] + gamma * beta1 / (1 - beta1) * (g[i] - g_prev[i])
                c = c / max(float(c.norm()), 1.0)
                m[i] = beta1 * m[i] + (1 - beta1) * c
                v[i] = beta2 * v[i] + (1 - beta2) * c * c
                step = m[i] / (1 - beta1 ** t) / ((v[i] + 1e-15).sqrt() / (1 - beta2 ** t) ** 0.5 + eps / (1 - beta2 ** t) ** 0.5)
                ws[i] = w * (1 - lr * wd) - lr * step
            else:
                b1, b2 = betas_1d
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                step = m[i] / (1 - b1 ** t) / ((v[i] + 1e-15).sqrt() / (1 - b2 ** t) ** 0.5 + eps / (1 - b2 ** t) ** 0.5)
                ws[i] = w * (1 - lr_1d * wd_1d) - lr_1d * step
        out.append([w.clone() for w in ws])
    return out


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 2, 2)], ids=["2d", "4d"])
def test_mars_exact_matches_the_papers_equations_through_step_closure(shape):
    """A weight of ``shape`` and a bias, 30 batches: the exported optimizer, whose closure is
    called at the previous weights of every tensor at once, equals Algorithm 1 written in torch."""
    gen = torch.Generator().manual_seed(0)
    fan_in = math.prod(shape[1:])
    start = [0.3 * torch.randn(shape, generator=gen, dtype=torch.float64),
             0.1 * torch.randn(shape[0], generator=gen, dtype=torch.float64)]
    batches = [(torch.randn(8, fan_in, generator=gen, dtype=torch.float64),
                torch.randn(8, shape[0], generator=gen, dtype=torch.float64)) for _ in range(30)]

    def loss(ps, batch):
        x, y = batch
        return (torch.tanh(x @ ps[0].reshape(shape[0], -1).T + ps[1]) - y).pow(2).mean()

    hyper = {"lr": 0.02, "wd": 0.1, "wd_1d": 0.05, "lr_1d_ratio": 0.5}
    expected = mars_exact_by_hand(start, batches, loss, lr=0.02, wd=0.1, lr_1d=0.01, wd_1d=0.05)
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = to_optimizer("mars_exact", params, **hyper)
    for batch, want in zip(batches, expected):
        def closure(batch=batch):
            opt.zero_grad()
            value = loss(params, batch)
            value.backward()
            return value

        closure()
        opt.step(closure)
        for p, w in zip(params, want):
            torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)
