"""The selection suite's tasks (rnn, attention, deepnet, denoise): batched members equal torch's own
modules member by member, the data are what the docstrings say, runs are deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optdisco import proxies
from optdisco.dsl.layout import ROLES
from optdisco.proxies import Task, epoch_indices

SUITE = ["rnn", "attention", "deepnet", "denoise"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: proxies.get(name) for name in SUITE}


def double(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.double() for n, p in params.items()}


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", SUITE)
def test_batched_members_equal_separate_module_runs(tasks, name):
    task = tasks[name]
    seeds, step = [0, 1, 5], 3
    params = task.init_params(seeds)
    loss, grads = task.loss_and_grads(params, step, seeds)
    assert loss.shape == (3,)
    for i, seed in enumerate(seeds):
        module = task.make_module(seed)
        ref = task.module_loss(module, step, seed)
        ref.backward()
        torch.testing.assert_close(loss[i], ref.detach(), rtol=1e-5, atol=1e-6)
        for n, p in module.named_parameters():
            assert torch.equal(params[n][i], p.detach())
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-4, atol=1e-6 * float(p.grad.abs().max()) + 1e-8)


@pytest.mark.parametrize("name", SUITE)
def test_shapes_roles_and_sizes(tasks, name):
    task = tasks[name]
    module = task.make_module(0)
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == list(task.param_shapes().items())
    roles = task.roles()
    assert list(roles) == list(task.param_shapes()) and set(roles.values()) <= set(ROLES)
    assert all((roles[n] == "vector") == (len(s) == 1) for n, s in task.param_shapes().items())
    assert list(roles.values()).count("head") == 1
    small_pool = {k: 1024 for k in ("train_size",) if k in type(task).sizes["target"]}  # shapes only
    target = proxies.get(name, size="target", **small_pool)
    assert target.num_params() > task.num_params() and target.steps > task.steps


@pytest.mark.parametrize("name", SUITE)
def test_deterministic_and_members_depend_only_on_their_seed(tasks, name):
    a, b = tasks[name], proxies.get(name)  # two independent constructions
    pa, pb = a.init_params([2, 9]), b.init_params([2, 9])
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    la, ga = a.loss_and_grads(pa, 4, [2, 9])
    lb, gb = b.loss_and_grads(pb, 4, [2, 9])
    assert torch.equal(la, lb) and all(torch.equal(ga[n], gb[n]) for n in ga)
    assert torch.equal(a.eval_loss(pa), b.eval_loss(pb))
    x1, y1 = a.train_batches(5, [8])
    x3, y3 = a.train_batches(5, [3, 8, 8])
    assert torch.equal(x3[1], x1[0]) and torch.equal(y3[1], y1[0]) and torch.equal(x3[1], x3[2])
    assert not torch.equal(x3[0], x3[1]) and not torch.equal(a.train_batches(6, [8])[0][0], x1[0])
    stacked = a.init_params([3, 8])
    assert all(torch.equal(stacked[n][1], a.init_params([8])[n][0]) for n in stacked)
    ev = a.eval_loss(stacked)
    torch.testing.assert_close(ev[1], a.eval_loss(a.init_params([8]))[0], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- rnn


def test_rnn_is_torchs_elman_rnn_per_member(tasks):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) as nn.RNN computes it, from member weights."""
    task = tasks["rnn"]
    params = double(task.init_params([0, 4]))
    gen = torch.Generator().manual_seed(0)
    params = {n: p + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    x, y = task.train_batches(1, [0, 4])
    loss = task.batched_loss(params, x, y)
    for i in range(2):
        rnn = nn.RNN(task.symbols, task.hidden, nonlinearity="tanh", batch_first=True).double()
        head = nn.Linear(task.hidden, task.symbols).double()
        with torch.no_grad():
            for n, p in rnn.named_parameters():
                p.copy_(params["rnn." + n][i])
            head.weight.copy_(params["head.weight"][i])
            head.bias.copy_(params["head.bias"][i])
            states, _ = rnn(F.one_hot(x[i], task.symbols).double())
            logits = head(states[:, task.lag :])
        ref = F.cross_entropy(logits.reshape(-1, task.symbols), y[i].reshape(-1))
        torch.testing.assert_close(loss[i], ref, rtol=1e-12, atol=1e-12)


def test_rnn_targets_are_the_symbols_lag_steps_back(tasks):
    task = tasks["rnn"]
    x, y = task.train_batches(0, [1])
    assert x.shape == (1, task.batch, task.length) and y.shape == (1, task.batch, task.length - task.lag)
    assert torch.equal(y[0], x[0, :, : task.length - task.lag]) and int(x.max()) < task.symbols
    assert torch.equal(task.y_heldout, task.x_heldout[:, : task.length - task.lag])


# --------------------------------------------------------------------------- attention


def test_attention_is_written_out_softmax_attention(tasks):
    """logits = W_head (e_q + W_out concat_h softmax(q_h k_h^T / sqrt(d)) v_h), one problem at a time."""
    task = tasks["attention"]
    gen = torch.Generator().manual_seed(1)
    params = double(task.init_params([0, 2]))
    params = {n: p + 0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
    x, y = task.train_batches(0, [0, 2])
    loss = task.batched_loss(params, x, y)
    d = task.width // task.heads
    for i in range(2):
        p = {n: v[i] for n, v in params.items()}
        terms = []
        for b in range(4):
            e = p["embed.weight"][x[i, b, :, 0]] + p["embed.weight"][x[i, b, :, 1]]  # [slots, width]
            q, k, v = p["query.weight"] @ e[-1], e @ p["key.weight"].T, e @ p["value.weight"].T
            heads = []
            for h in range(task.heads):
                cols = slice(h * d, (h + 1) * d)
                weights = torch.softmax(k[:, cols] @ q[cols] / d**0.5, 0)
                heads.append(weights @ v[:, cols])
            logits = p["head.weight"] @ (e[-1] + p["out.weight"] @ torch.cat(heads))
            terms.append(-torch.log_softmax(logits, 0)[y[i, b]])
        sub = {n: v[i : i + 1] for n, v in params.items()}
        first4 = task.batched_loss(sub, x[i : i + 1, :4], y[i : i + 1, :4])[0]
        torch.testing.assert_close(first4, torch.stack(terms).mean(), rtol=1e-12, atol=1e-12)
    assert loss.shape == (2,)


def test_attention_problems_have_distinct_keys_and_the_queried_keys_value(tasks):
    task = tasks["attention"]
    x, y = task.x_train[:500], task.y_train[:500]
    keys, values = x[:, :-1, 0], x[:, :-1, 1] - task.keys
    assert all(len(set(row.tolist())) == task.pairs for row in keys) and int(keys.max()) < task.keys
    assert int(values.min()) >= 0 and int(values.max()) < task.values
    assert (x[:, -1, 1] == task.keys + task.values).all()
    where = (keys == x[:, -1:, 0]).float().argmax(1)
    assert ((keys == x[:, -1:, 0]).sum(1) == 1).all()
    assert torch.equal(values[torch.arange(500), where], y)


# --------------------------------------------------------------------------- deepnet, denoise


def sequential(task: Task, params: dict[str, torch.Tensor], i: int) -> nn.Sequential:
    """Member ``i`` of a ReLU stack as torch layers: Linear, ReLU, …, Linear."""
    layers = []
    for k in range(task.depth):
        w = params[f"fc{k + 1}.weight"][i]
        layers += [nn.Linear(w.shape[1], w.shape[0]).double(), nn.ReLU()]
    w = params["head.weight"][i]
    layers.append(nn.Linear(w.shape[1], w.shape[0]).double())
    seq = nn.Sequential(*layers)
    names = [f"fc{k + 1}" for k in range(task.depth)] + ["head"]
    with torch.no_grad():
        for name, layer in zip(names, seq[::2]):
            layer.weight.copy_(params[name + ".weight"][i])
            layer.bias.copy_(params[name + ".bias"][i])
    return seq


@pytest.mark.parametrize(("name", "loss_fn"), [("deepnet", F.cross_entropy), ("denoise", F.mse_loss)])
def test_relu_stacks_equal_torch_layers(tasks, name, loss_fn):
    task = tasks[name]
    params = double(task.init_params([0, 3]))
    x, y = task.train_batches(2, [0, 3], dtype=torch.float64)
    loss = task.batched_loss(params, x, y)
    for i in range(2):
        torch.testing.assert_close(loss[i], loss_fn(sequential(task, params, i)(x[i]), y[i]), rtol=1e-12, atol=1e-12)
    assert task.depth == len([n for n in task.param_shapes() if n.startswith("fc") and n.endswith("weight")])


def test_deepnet_starts_with_a_vanishing_signal(tasks):
    """N(0, 1/fan_in) weights halve the mean square of a ReLU layer's input: after 10 layers the
    logits are tiny and every member starts at the chance loss ln(classes)."""
    task = tasks["deepnet"]
    init = task.eval_loss(task.init_params([0, 1, 2]))
    torch.testing.assert_close(init, torch.full((3,), torch.log(torch.tensor(4.0)).item()), rtol=0, atol=0.02)


def test_denoise_data_are_low_rank_plus_noise_and_batches_carry_2d_targets(tasks):
    task = tasks["denoise"]
    clean = torch.cat([task.y_train, task.y_heldout]).double()
    s = torch.linalg.svdvals(clean)
    assert s[task.rank] < 1e-4 * s[0] and s[task.rank - 1] > 0.05 * s[0]  # rank exactly `rank`
    assert abs(clean.pow(2).mean().item() - 1.0) < 0.05  # mean square 1 per coordinate
    noise = torch.cat([task.x_train, task.x_heldout]).double() - clean
    assert abs(noise.std().item() - task.noise) < 0.01
    x, y = task.train_batches(5, [0, 7])
    assert y.shape == (2, task.batch, task.dim)
    for i, seed in enumerate([0, 7]):
        idx = epoch_indices(task.train_size, task.batch, 5, task.name, seed)
        assert torch.equal(x[i], task.x_train[idx]) and torch.equal(y[i], task.y_train[idx])
    zero = {n: torch.zeros(1, *s) for n, s in task.param_shapes().items()}
    torch.testing.assert_close(task.eval_loss(zero)[0], task.y_heldout.pow(2).mean())  # outputs 0 score E x^2
