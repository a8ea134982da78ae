"""Proxy tasks: batched members equal separate runs, determinism, the registry, and that training trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from optdisco import proxies
from optdisco.dsl.layout import ROLES
from optdisco.proxies import Task, epoch_indices, generator, mix, register
from optdisco.proxies import registry as registry_module

BUILTIN = ["quadratic", "mlp", "memory", "digits", "lm", "tanhnet", "autoencoder", "gru"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Single-threaded torch for this module: tiny batched matmuls gain nothing from a second
    thread, and on a shared 2-core machine intra-op threads thrash (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {name: proxies.get(name) for name in BUILTIN}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Float32 agreement: relative, with an absolute floor scaled to the tensor's magnitude."""
    atol = 1e-6 * float(expected.abs().max()) + 1e-8
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def adam(task: Task, seeds: list[int], lr: float, steps: int) -> dict[str, torch.Tensor]:
    """Plain Adam on the batched gradients: the simplest optimizer a task must respond to."""
    params = task.init_params(seeds)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(x) for k, x in params.items()}
    for t in range(steps):
        _, grads = task.loss_and_grads(params, t, seeds)
        for k, g in grads.items():
            m[k].mul_(0.9).add_(g, alpha=0.1)
            v[k].mul_(0.999).addcmul_(g, g, value=0.001)
            step = lr * (m[k] / (1 - 0.9 ** (t + 1))) / ((v[k] / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
            params[k] = params[k] - step
    return params


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", BUILTIN)
def test_batched_members_equal_separate_module_runs(tasks, name):
    task = tasks[name]
    seeds, step = [0, 1, 5], 3
    params = task.init_params(seeds)
    loss, grads = task.loss_and_grads(params, step, seeds)
    assert loss.shape == (3,)
    for i, seed in enumerate(seeds):
        module = task.make_module(seed)
        for n, p in module.named_parameters():
            assert torch.equal(p.detach(), params[n][i]), f"{name}: {n} of member {i} differs from the module"
        ref = task.module_loss(module, step, seed)
        ref.backward()
        assert_close_scaled(loss[i], ref.detach())
        for n, p in module.named_parameters():
            assert_close_scaled(grads[n][i], p.grad)


@pytest.mark.parametrize("name", BUILTIN)
def test_shapes_names_and_roles_agree_with_module(tasks, name):
    task = tasks[name]
    shapes = task.param_shapes()
    module = task.make_module(0)
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == list(shapes.items())
    roles = task.roles()
    assert list(roles) == list(shapes)
    assert set(roles.values()) <= set(ROLES)
    assert all(roles[n] == "vector" for n, s in shapes.items() if len(s) == 1)
    assert all(roles[n] != "vector" for n, s in shapes.items() if len(s) >= 2)
    params = task.init_params([0, 1])
    assert {n: tuple(v.shape) for n, v in params.items()} == {n: (2, *s) for n, s in shapes.items()}
    assert all(v.dtype == torch.float32 for v in params.values())
    assert task.num_params() == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", BUILTIN)
def test_same_seeds_give_identical_init_batches_and_losses(name):
    a, b = proxies.get(name), proxies.get(name)  # two independent constructions
    seeds = [2, 9]
    pa, pb = a.init_params(seeds), b.init_params(seeds)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    for step in (0, 7):
        xa, ya = a.train_batches(step, seeds)
        xb, yb = b.train_batches(step, seeds)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    la, ga = a.loss_and_grads(pa, 4, seeds)
    lb, gb = b.loss_and_grads(pb, 4, seeds)
    assert torch.equal(la, lb) and all(torch.equal(ga[n], gb[n]) for n in ga)
    assert torch.equal(a.eval_loss(pa, seeds), b.eval_loss(pb, seeds))


@pytest.mark.parametrize("name", BUILTIN)
def test_members_depend_only_on_their_own_seed(tasks, name):
    task = tasks[name]
    # a member's init and batch do not depend on the other members of the stack
    alone = task.init_params([8])
    stacked = task.init_params([3, 8, 8])
    assert all(torch.equal(stacked[n][1], alone[n][0]) for n in alone)
    assert all(torch.equal(stacked[n][1], stacked[n][2]) for n in alone)  # same seed, same init
    assert not all(torch.equal(stacked[n][0], stacked[n][1]) for n in alone)  # other seed, other init
    x1, y1 = task.train_batches(5, [8])
    x3, y3 = task.train_batches(5, [3, 8, 8])
    assert torch.equal(x3[1], x1[0]) and torch.equal(y3[1], y1[0])
    assert torch.equal(x3[1], x3[2])  # members with the same seed see the same data
    assert not torch.equal(x3[0], x3[1])  # other seed, other data
    x_next, _ = task.train_batches(6, [8])
    assert not torch.equal(x_next[0], x1[0])  # other step, other data


@pytest.mark.parametrize("name", BUILTIN)
def test_eval_loss_is_per_member_and_independent_of_the_stack(tasks, name):
    task = tasks[name]
    params = task.init_params([0, 1, 0])
    ev = task.eval_loss(params, [0, 1, 0])
    assert ev.shape == (3,) and torch.isfinite(ev).all()
    assert torch.allclose(ev[0], ev[2])
    solo = task.eval_loss({n: v[1:2] for n, v in params.items()})
    assert torch.allclose(solo[0], ev[1], rtol=1e-5)


def test_float64_members_and_no_grad_callers(tasks):
    task = tasks["mlp"]
    params = task.init_params([0, 1], dtype=torch.float64)
    with torch.no_grad():  # an optimizer loop usually runs without autograd
        loss, grads = task.loss_and_grads(params, 0, [0, 1])
    assert loss.dtype == torch.float64 and all(g.dtype == torch.float64 for g in grads.values())
    loss32, _ = task.loss_and_grads(task.init_params([0, 1]), 0, [0, 1])
    assert torch.allclose(loss.float(), loss32, rtol=1e-5)


def test_tasks_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    task = proxies.get("mlp")
    params = task.init_params([0, 1])
    task.loss_and_grads(params, 0, [0, 1])
    task.make_module(1)
    task.eval_loss(params)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", BUILTIN)
def test_proxy_and_target_sizes_construct(tasks, name):
    proxy = tasks[name]
    target = proxies.get(name, size="target")
    assert (proxy.size, target.size) == ("proxy", "target")
    assert target.num_params() >= proxy.num_params()
    assert target.steps >= proxy.steps > 0
    assert list(target.roles()) == list(target.param_shapes())


def test_options_override_a_size_and_unknown_ones_are_rejected():
    task = proxies.get("mlp", width=16, steps=7)
    assert task.steps == 7 and task.param_shapes()["fc1.weight"] == (16, 32)
    with pytest.raises(ValueError, match="unknown options"):
        proxies.get("mlp", widht=16)
    with pytest.raises(ValueError, match="no size"):
        proxies.get("mlp", size="huge")


# --------------------------------------------------------------------------- registry


def test_names_lists_the_builtin_tasks():
    assert set(BUILTIN) <= set(proxies.names())
    assert proxies.names() == sorted(proxies.names())
    assert proxies.DEFAULT == "mlp"


def test_unknown_task_name_is_a_valueerror_listing_known_names():
    with pytest.raises(ValueError, match="unknown task 'nope'") as info:
        proxies.get("nope")
    for name in BUILTIN:
        assert name in str(info.value)


class TinyRegression(Task):
    """A user's task in a few lines: only the generic (vmap) batching of the base class."""

    name = "tiny-regression"
    sizes = {"proxy": {"steps": 50, "batch": 8}, "target": {"steps": 500, "batch": 32}}

    def setup(self):
        self.truth = torch.randn(3, 4, generator=generator("tiny", "data"))

    def build_module(self):
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

    def train_batch(self, step, seed):
        x = torch.randn(self.batch, 4, generator=generator("tiny", seed, step))
        return x, x @ self.truth.T

    def heldout_batch(self):
        x = torch.randn(64, 4, generator=generator("tiny", "heldout"))
        return x, x @ self.truth.T

    def criterion(self, output, target):
        return F.mse_loss(output, target)


@pytest.fixture
def tiny():
    register(TinyRegression)
    yield
    registry_module._TASKS.pop(TinyRegression.name, None)


def test_user_task_is_registered_retrieved_and_batched_like_separate_runs(tiny):
    assert "tiny-regression" in proxies.names()
    task = proxies.get("tiny-regression", size="target")
    assert isinstance(task, TinyRegression) and task.batch == 32
    assert task.roles() == {"0.weight": "hidden", "0.bias": "vector", "2.weight": "head", "2.bias": "vector"}
    seeds = [0, 4]
    params = task.init_params(seeds)
    loss, grads = task.loss_and_grads(params, 2, seeds)
    for i, seed in enumerate(seeds):
        module = task.make_module(seed)
        ref = task.module_loss(module, 2, seed)
        ref.backward()
        assert_close_scaled(loss[i], ref.detach())
        for n, p in module.named_parameters():
            assert_close_scaled(grads[n][i], p.grad)
    assert task.eval_loss(params).shape == (2,)


def test_register_refuses_a_taken_name_and_non_tasks(tiny):
    class Clash(Task):
        name = "mlp"

    with pytest.raises(ValueError, match="taken"):
        register(Clash)
    with pytest.raises(TypeError):
        register(dict)
    assert proxies.get("mlp").__class__.__name__ == "TeacherStudent"


# --------------------------------------------------------------------------- task specifics


def test_memory_frequencies_and_embeddings_follow_the_paper():
    """Wang et al. (2025, arXiv:2509.26030), Section 5: orthonormal key and value embeddings
    (EᵀE = ẼᵀẼ = I), here in a random orientation or one-hot; fact k drawn with probability
    k^-zipf / sum_j j^-zipf."""
    task = proxies.get("memory", classes=48, dim=64, zipf=1.7)
    k = torch.arange(1, 49, dtype=torch.float64)
    expected = k**-1.7 / (k**-1.7).sum()
    torch.testing.assert_close(task.frequencies.double(), expected, rtol=1e-6, atol=0)
    eye = torch.eye(48)
    for e in (task.keys, task.values):  # rows are the embeddings E_k, Ẽ_k
        assert e.shape == (48, 64)
        torch.testing.assert_close(e @ e.T, eye, rtol=0, atol=1e-5)
        assert (e.abs() > 1e-4).float().mean() > 0.9  # a random orientation: every coordinate shared
    assert (task.keys @ task.values.T).abs().max() < 0.9  # keys and values drawn independently
    onehot = proxies.get("memory", classes=48, dim=64, embeddings="onehot")
    assert torch.equal(onehot.keys, torch.eye(64)[:48]) and torch.equal(onehot.values, torch.eye(64)[:48])
    with pytest.raises(ValueError, match="classes <= dim"):
        proxies.get("memory", classes=65, dim=64)
    assert proxies.get("memory", classes=96, dim=32, embeddings="gaussian").keys.norm(dim=1).allclose(torch.ones(96))


def test_memory_training_draws_follow_the_frequencies():
    task = proxies.get("memory")
    ids = torch.cat([task.train_batches(step, [3])[0][0] for step in range(200)])
    counts = torch.bincount(ids, minlength=task.classes).double() / len(ids)
    sd = (task.frequencies.double() * (1 - task.frequencies.double()) / len(ids)).sqrt()
    assert ((counts - task.frequencies.double()).abs() < 5 * sd + 1e-9).all()
    x, y = task.train_batches(0, [3, 4])
    assert torch.equal(x, y) and x.shape == (2, task.batch)  # fact k's object is k


@pytest.mark.parametrize("batch", [5, 300])  # fewer examples than facts, and more (the table path)
def test_memory_loss_and_accuracy_are_the_papers_equations(batch):
    """logits of fact k: Ẽᵀ W E_k; training loss: mean cross-entropy of the batch; held-out loss:
    (1/K) sum_k -log softmax(Ẽᵀ W E_k)_k; class accuracy: argmax_j (Ẽᵀ W E_k)_j == k."""
    task = proxies.get("memory", classes=40, dim=48, batch=batch)
    gen = torch.Generator().manual_seed(0)
    w = 3 * torch.randn(2, 48, 48, generator=gen, dtype=torch.float64)
    params = {"memory": w}
    E, Et = task.keys.double().T, task.values.double().T  # columns E_k, Ẽ_k
    x, y = task.train_batches(2, [0, 1])
    loss = task.batched_loss(params, x, y)
    for m in range(2):
        terms = [-torch.log_softmax(Et.T @ w[m] @ E[:, x[m, b]], 0)[y[m, b]] for b in range(batch)]
        torch.testing.assert_close(loss[m], torch.stack(terms).mean())
    heldout = task.eval_loss(params)
    acc = task.class_accuracy(params)
    for m in range(2):
        logits = Et.T @ w[m] @ E  # column k: the logits of fact k
        torch.testing.assert_close(heldout[m], -torch.log_softmax(logits, 0).diagonal().mean())
        assert torch.equal(acc[m], (logits.argmax(0) == torch.arange(40)).double())
    rare = task.rare_accuracy(params, fraction=0.25)
    assert rare.shape == (2,) and torch.allclose(rare, acc[:, -10:].mean(-1))


def _tuned_rare_accuracy(program: str, task) -> tuple[float, list[float]]:
    """The protocol's fitness of ``program`` on ``task`` and each seed's rare-half accuracy at its best LR."""
    from optdisco import library
    from optdisco.dsl import compile_program
    from optdisco.evaluate import evaluate, run_members

    r = evaluate(program, task)
    run = run_members(compile_program(library.load(program)), task, [r.best_lr] * 2, r.seeds, task.steps)
    assert run.final == [m.final_loss for m in r.best_members()]  # the same members as the evaluation's
    return r.fitness, task.rare_accuracy(run.params).tolist()


def test_tuned_muon_beats_tuned_adam_on_rare_facts_and_adam_depends_on_the_embeddings():
    """The advertised property at the proxy size (about 1.5 s): with randomly oriented orthonormal
    embeddings tuned Muon learns the rare half of the facts far better than tuned Adam; with
    one-hot embeddings (disjoint supports) Adam is as good as Muon on them (Theorem 5.3)."""
    task = proxies.get("memory")
    adam_fit, adam_rare = _tuned_rare_accuracy("adam", task)
    muon_fit, muon_rare = _tuned_rare_accuracy("muon", task)
    assert all(m >= a + 0.25 for a, m in zip(adam_rare, muon_rare)), (adam_rare, muon_rare)
    assert muon_fit < 0.25 * adam_fit, (adam_fit, muon_fit)
    onehot = proxies.get("memory", embeddings="onehot")
    _, adam_onehot = _tuned_rare_accuracy("adam", onehot)
    _, muon_onehot = _tuned_rare_accuracy("muon", onehot)
    assert all(a >= m - 0.05 for a, m in zip(adam_onehot, muon_onehot)), (adam_onehot, muon_onehot)


def test_lm_corpus_is_deterministic_and_a_user_text_can_replace_it(tmp_path, tasks):
    task = tasks["lm"]
    assert proxies.get("lm").corpus_sha256 == task.corpus_sha256
    assert task.corpus_files == sorted(task.corpus_files) and task.corpus_files[0].endswith(".py")
    text = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(2000))
    path = tmp_path / "corpus.txt"
    path.write_bytes(text)
    mine = proxies.get("lm", text_path=str(path))
    assert mine.corpus_sha256 != task.corpus_sha256 and mine.corpus_files == [str(path)]
    x, y = mine.train_batches(0, [0])
    assert torch.equal(x[0, :, 1:], y[0, :, :-1])  # targets are the inputs shifted by one byte
    short = tmp_path / "short.txt"
    short.write_bytes(b"too short")
    with pytest.raises(ValueError, match="too short"):
        proxies.get("lm", text_path=str(short))


def test_mix_is_stable_across_processes():
    # seeds must mean the same data forever: this value is fixed by the splitmix64 mixing
    assert mix(0) == 0xE220A8397B1DCDAF >> 1
    assert mix("mlp", 1, 2) != mix("mlp", 2, 1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 50), batch=st.integers(1, 20), step=st.integers(0, 200), seed=st.integers(0, 2**40))
def test_epoch_indices_visit_the_pool_without_replacement(n, batch, step, seed):
    idx = epoch_indices(n, batch, step, "t", seed)
    assert idx.shape == (batch,) and int(idx.min()) >= 0 and int(idx.max()) < n
    # consecutive steps tile the stream of epochs: an epoch's worth of indices is a permutation
    stream = torch.cat([epoch_indices(n, batch, s, "t", seed) for s in range(-(-n // batch) + 1)])
    assert sorted(stream[:n].tolist()) == list(range(n))


@pytest.mark.parametrize("name", ["mlp", "digits", "tanhnet", "autoencoder"])
def test_pool_batches_are_each_members_epoch_order_across_epoch_boundaries(tasks, name):
    task = tasks[name]
    n, seeds = task.x_train.shape[0], [0, 5, 2]
    per_epoch = n / task.batch
    for step in [0, 1, int(per_epoch) - 1, int(per_epoch), int(per_epoch) + 1, int(3 * per_epoch) + 2]:
        x, y = task.train_batches(step, seeds)
        for i, seed in enumerate(seeds):
            idx = epoch_indices(n, task.batch, step, task.name, seed)
            assert torch.equal(x[i], task.x_train[idx]) and torch.equal(y[i], task.y_train[idx]), (step, seed)


# --------------------------------------------------------------------------- training trains


@pytest.mark.parametrize(("name", "lr", "steps", "factor"), [("quadratic", 3e-2, 200, 0.1), ("mlp", 3e-3, 300, 0.4)])
def test_adam_reduces_the_heldout_loss(name, lr, steps, factor):
    task = proxies.get(name)
    seeds = [0, 1]
    before = task.eval_loss(task.init_params(seeds))
    after = task.eval_loss(adam(task, seeds, lr, steps))
    assert (after < factor * before).all(), (before, after)


def test_sgd_reduces_the_quadratic_heldout_loss():
    task = proxies.get("quadratic")
    seeds = [3]
    params = task.init_params(seeds)
    before = task.eval_loss(params)
    for t in range(200):
        _, grads = task.loss_and_grads(params, t, seeds)
        params = {k: v - 0.3 * grads[k] for k, v in params.items()}
    assert (task.eval_loss(params) < 0.5 * before).all()


@pytest.mark.parametrize("classes", [2, 10, 15, 16, 40])
def test_batched_cross_entropy_equals_torch_per_member(classes):
    """The written-out loss for few classes (and the F.cross_entropy path for more) gives each
    member's mean cross-entropy and its gradient as torch computes them member by member."""
    from optdisco.proxies.base import batched_cross_entropy

    gen = torch.Generator().manual_seed(classes)
    logits = (3 * torch.randn(4, 7, 5, classes, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, classes, (4, 7, 5), generator=gen)
    loss = batched_cross_entropy(logits, y)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    for i in range(4):
        li = logits.detach()[i].clone().requires_grad_()
        ref = F.cross_entropy(li.reshape(-1, classes), y[i].reshape(-1))
        (gref,) = torch.autograd.grad(ref * weights[i], li)
        torch.testing.assert_close(loss[i], ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[i], gref, rtol=1e-12, atol=1e-14)


def test_batched_cross_entropy_refuses_double_backward():
    from optdisco.proxies.base import batched_cross_entropy

    logits = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    loss = batched_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long))
    (g,) = torch.autograd.grad(loss.sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), logits)
