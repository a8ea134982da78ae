"""The held-out proxy tasks (tanhnet, autoencoder, gru) and the Task API they need: float
targets of any shape in a PoolTask, the loop over members where vmap has no batching rule, and
the exported batched losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optdisco import proxies
from optdisco.evaluate import evaluate
from optdisco.proxies import PoolTask, Task, batched_cross_entropy, batched_mse, generator


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Single-threaded torch for this module (as in test_proxies), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Float32 agreement: relative, with an absolute floor scaled to the tensor's magnitude."""
    atol = 1e-6 * float(expected.abs().max()) + 1e-8
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_members_equal_modules(task: Task, seeds: list[int], step: int) -> None:
    """The batched loss and gradients of each member equal those of its ordinary module."""
    params = task.init_params(seeds)
    loss, grads = task.loss_and_grads(params, step, seeds)
    assert loss.shape == (len(seeds),)
    for i, seed in enumerate(seeds):
        module = task.make_module(seed)
        ref = task.module_loss(module, step, seed)
        ref.backward()
        assert_close_scaled(loss[i], ref.detach())
        for n, p in module.named_parameters():
            assert_close_scaled(grads[n][i], p.grad)


# --------------------------------------------------------------------------- the Task API


class PlaneRegression(PoolTask):
    """A user's pool task with float targets [N, 2]: the generic (vmap) batching, MSE loss."""

    name = "plane-regression"
    sizes = {"proxy": {"steps": 30, "batch": 16}, "target": {"steps": 30, "batch": 16}}

    def setup(self):
        g = generator(self.name, "data")
        x = torch.randn(96, 3, generator=g)
        y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2])], 1)  # [N, 2]
        self.x_train, self.y_train, self.x_heldout, self.y_heldout = x[:64], y[:64], x[64:], y[64:]

    def build_module(self):
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

    def criterion(self, output, target):
        return F.mse_loss(output, target)


def test_pool_task_takes_two_dimensional_float_targets():
    task = PlaneRegression()
    x, y = task.train_batches(5, [0, 3], dtype=torch.float64)  # step 5 crosses the first epoch's end
    assert x.shape == (2, 16, 3) and y.shape == (2, 16, 2) and y.dtype == torch.float64
    for i, seed in enumerate([0, 3]):
        idx = proxies.epoch_indices(64, 16, 5, task.name, seed)
        assert torch.equal(y[i], task.y_train[idx].double())
    assert_members_equal_modules(task, [0, 3, 3], step=2)
    r = evaluate("adam", task, seeds=(0, 1))
    assert r.ok and r.fitness < float(task.eval_loss(task.init_params([0, 1])).min())


class TinyGRU(nn.Module):
    """``nn.GRU`` (which vmap cannot batch) reading sequences, a linear head on its last state."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(2, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class SequenceClass(Task):
    """A user's task whose module is ``nn.GRU``: the base class must loop over its members."""

    name = "sequence-class"
    sizes = {"proxy": {"steps": 20, "batch": 8}, "target": {"steps": 20, "batch": 8}}

    def build_module(self):
        return TinyGRU()

    def train_batch(self, step, seed):
        x = torch.randn(self.batch, 4, 2, generator=generator(self.name, seed, step))
        return x, (x.sum((1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()

    def heldout_batch(self):
        x = torch.randn(32, 4, 2, generator=generator(self.name, "heldout"))
        return x, (x.sum((1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()


def test_default_batched_loss_loops_over_members_where_vmap_has_no_batching_rule():
    task = SequenceClass()
    params = task.init_params([0, 1])
    with pytest.raises(RuntimeError, match="Batching rule not implemented"):  # why the fallback exists
        torch.func.vmap(lambda p, x: torch.func.functional_call(task._template, p, (x,)))(
            params, task.train_batches(0, [0, 1])[0]
        )
    assert not task._loop_members
    assert_members_equal_modules(task, [0, 1, 4], step=3)
    assert task._loop_members  # remembered: later calls go straight to the loop
    r = evaluate("adam", task, seeds=(0,), points=2, extend=False)
    assert r.ok and all(m.final_loss < float("inf") for m in r.members)


class Broken(Task):
    """A module whose forward raises an ordinary RuntimeError: that is not a missing batching rule."""

    name = "broken"
    sizes = {"proxy": {"steps": 1}, "target": {"steps": 1}}

    def build_module(self):
        class Raise(nn.Linear):
            def forward(self, x):
                raise RuntimeError("a bug in the user's module")

        return Raise(2, 2)

    def train_batch(self, step, seed):
        return torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)


def test_other_errors_inside_vmap_are_raised_not_looped_over():
    task = Broken()
    with pytest.raises(RuntimeError, match="a bug in the user's module"):
        task.loss_and_grads(task.init_params([0, 1]), 0, [0, 1])
    assert not task._loop_members


def test_batched_mse_is_each_members_f_mse_loss():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 4, 2, generator=gen, dtype=torch.float64)
    loss = batched_mse(out, target)
    (grad,) = torch.autograd.grad((loss * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)).sum(), out)
    for i, w in enumerate([1.0, -2.0, 3.0]):
        oi = out.detach()[i].clone().requires_grad_()
        ref = F.mse_loss(oi, target[i])
        (gref,) = torch.autograd.grad(w * ref, oi)
        torch.testing.assert_close(loss[i], ref.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(grad[i], gref, rtol=1e-12, atol=1e-15)


def test_batched_losses_are_exported():
    assert {"batched_cross_entropy", "batched_mse"} <= set(proxies.__all__)
    assert batched_cross_entropy is proxies.base.batched_cross_entropy


# --------------------------------------------------------------------------- the held-out tasks

HELDOUT = ["tanhnet", "autoencoder", "gru"]


def adam(task: Task, seeds: list[int], lr: float, steps: int) -> dict[str, torch.Tensor]:
    """Plain Adam (β = 0.9, 0.999) on the batched gradients, constant learning rate."""
    params = task.init_params(seeds)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(x) for k, x in params.items()}
    for t in range(steps):
        _, grads = task.loss_and_grads(params, t, seeds)
        for k, g in grads.items():
            m[k].mul_(0.9).add_(g, alpha=0.1)
            v[k].mul_(0.999).addcmul_(g, g, value=0.001)
            params[k] = params[k] - lr * (m[k] / (1 - 0.9 ** (t + 1))) / ((v[k] / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
    return params


def test_heldout_tasks_are_registered():
    assert set(HELDOUT) <= set(proxies.names())
    assert not {"rnn", "attention", "deepnet", "denoise"} & set(HELDOUT)  # the selection tasks' names


@pytest.mark.parametrize(("name", "lr", "factor"), [("tanhnet", 1e-2, 0.2), ("autoencoder", 1e-2, 0.25), ("gru", 1e-2, 0.3)])
def test_adam_trains_each_heldout_task_well_below_its_initial_loss(name, lr, factor):
    task = proxies.get(name)
    seeds = [0, 1]
    before = task.eval_loss(task.init_params(seeds))
    after = task.eval_loss(adam(task, seeds, lr, task.steps))
    assert (after < factor * before).all(), (before, after)


def test_batched_gru_equals_torch_gru_per_member():
    """``batched_gru`` against ``torch.nn.GRU`` (the independent reference) with each member's
    weights, random biases included: hidden states and every gradient."""
    from optdisco.proxies.gru import batched_gru

    gen = torch.Generator().manual_seed(0)
    m, b, t, inputs, hidden = 3, 4, 6, 5, 7

    def rand(*shape):
        return (0.7 * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()

    w_ih, w_hh, b_ih, b_hh = rand(m, 3 * hidden, inputs), rand(m, 3 * hidden, hidden), rand(m, 3 * hidden), rand(m, 3 * hidden)
    x = rand(t, m, b, inputs)
    probe = torch.randn(t, m, b, hidden, generator=gen, dtype=torch.float64)
    h = batched_gru(x, w_ih, w_hh, b_ih, b_hh)
    assert h.shape == (t, m, b, hidden)
    grads = torch.autograd.grad((h * probe).sum(), [x, w_ih, w_hh, b_ih, b_hh])
    for i in range(m):
        gru = nn.GRU(inputs, hidden).double()  # time first, h_0 = 0
        with torch.no_grad():
            for name, value in [("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)]:
                getattr(gru, name).copy_(value[i])
        xi = x.detach()[:, i].clone().requires_grad_()
        out, last = gru(xi)
        torch.testing.assert_close(h[:, i], out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[-1, i], last[0], rtol=1e-12, atol=1e-12)
        ref = torch.autograd.grad((out * probe[:, i]).sum(), [xi, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0])
        for got, want in zip([grads[0][:, i]] + [g[i] for g in grads[1:]], ref):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gru_targets_are_the_tokens_delay_steps_back():
    task = proxies.get("gru", delay=2, length=6)
    x, y = task.train_batches(3, [0, 1])
    assert x.shape == (2, task.batch, 6) and y.shape == (2, task.batch, 4)
    for t in range(2, 6):  # position t is scored against the input at t − 2
        assert torch.equal(y[..., t - 2], x[..., t - 2])
    # a model that outputs the token 2 steps back with certainty scores about 0; one step off, not
    sure = 30.0 * F.one_hot(torch.cat([x[0, :, :2], x[0, :, :-2]], 1), task.vocab).double()
    assert float(task.criterion(sure, y[0])) < 1e-9
    off = 30.0 * F.one_hot(torch.cat([x[0, :, :1], x[0, :, :-1]], 1), task.vocab).double()
    assert float(task.criterion(off, y[0])) > 1.0
    with pytest.raises(ValueError, match="delay"):
        proxies.get("gru", delay=8, length=8)


def test_tanhnet_targets_are_standardised_and_a_constant_scores_about_one():
    task = proxies.get("tanhnet")
    y = task.y_train
    assert y.shape == (task.train_size, task.outputs) and y.dtype == torch.float32
    torch.testing.assert_close(y.mean(0), torch.zeros(task.outputs), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.std(0), torch.ones(task.outputs), rtol=0, atol=1e-5)
    zero = F.mse_loss(torch.zeros_like(task.y_heldout), task.y_heldout)
    assert 0.8 < float(zero) < 1.2
    module = task.make_module(0)
    layers = [getattr(module, f"fc{i + 1}") for i in range(task.depth)]
    assert all(l.out_features == task.width for l in layers) and len(layers) == 8


def test_autoencoder_reconstructs_scikit_learns_digits():
    """The images are scikit-learn's own ``load_digits`` (the independent reader), standardised
    with the training images' mean and std; the targets are the inputs; held-out and training
    images are disjoint and together all 1,797."""
    from sklearn.datasets import load_digits as sk_load

    task = proxies.get("autoencoder")
    assert torch.equal(task.y_train, task.x_train) and torch.equal(task.y_heldout, task.x_heldout)
    assert len(task.x_heldout) == 359 and len(task.x_train) == 1438
    torch.testing.assert_close(task.x_train.mean(), torch.tensor(0.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(task.x_train.std(), torch.tensor(1.0), rtol=0, atol=1e-5)
    raw = torch.as_tensor(sk_load().data, dtype=torch.float64)  # pixels 0..16, both ends present
    restored = torch.cat([task.x_train, task.x_heldout]).double()
    std = 16 / (restored.max() - restored.min())  # undo the affine standardisation from the data
    pixels = restored * std - restored.min() * std
    assert (pixels - pixels.round()).abs().max() < 1e-4
    assert sorted(map(tuple, pixels.round().tolist())) == sorted(map(tuple, raw.tolist()))
