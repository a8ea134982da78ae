"""The Task contract: a model, its data and its loss, trained as a stack of M independent members.

A member is one training run (one learning rate, one seed). Parameters carry a leading member
dimension ``[M, *shape]``; member ``i`` is initialised from ``seeds[i]`` alone and sees the
training batches of ``(seeds[i], step)`` alone, so a batched run of M members equals M separate
runs, and a learning-rate grid × seeds is one call.

To add a task, subclass :class:`Task` and define ``build_module``, ``train_batch`` and
``heldout_batch`` (and ``criterion`` if the loss is not cross-entropy); the base class derives
the batched members with ``torch.func.vmap`` over ``functional_call``. Where vmap has no
batching rule for an operation the module uses (``nn.GRU`` and ``nn.LSTM``: "Batching rule not
implemented for aten::gru.input"), the default ``batched_loss`` falls back to a loop over the
members, ``functional_call`` on each and ``torch.stack`` of their losses; the task instance
remembers this after the first failure and loops from then on. The loop gives the same numbers,
M times more slowly than one batched call. Built-in tasks override ``train_batches`` and
``batched_loss`` with hand-batched code, which is faster on a CPU; ``batched_cross_entropy`` and
``batched_mse`` are losses of stacked members for such code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call, vmap

SIZES = ("proxy", "target")
"""A proxy runs in seconds on a laptop CPU; a target in minutes there, and is meant for a GPU."""

Seeds = Tensor | Sequence[int] | int

_MASK64 = (1 << 64) - 1


def seed_list(seeds: Seeds) -> list[int]:
    """Seeds as a list of Python ints (from an int, a sequence, or a 0-/1-D tensor)."""
    if isinstance(seeds, Tensor):
        return [int(s) for s in seeds.reshape(-1).tolist()]
    if isinstance(seeds, int):
        return [seeds]
    return [int(s) for s in seeds]


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int | str) -> int:
    """A 63-bit seed mixed from integers and strings; the same on every process and platform."""
    h = 0
    for v in values:
        if isinstance(v, str):
            v = int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def generator(*values: int | str) -> torch.Generator:
    """A CPU generator seeded with ``mix(*values)``; leaves torch's global RNG alone."""
    return torch.Generator().manual_seed(mix(*values))


@lru_cache(maxsize=256)
def _permutation(key: int, n: int) -> Tensor:
    return torch.randperm(n, generator=generator(key))


@lru_cache(maxsize=8)
def _member_orders(name: str, seeds: tuple[int, ...], epoch: int, n: int) -> Tensor:
    """``[len(seeds), n]``: each member's order of the pool in ``epoch`` (as ``epoch_indices``)."""
    return torch.stack([_permutation(mix(name, s, epoch), n) for s in seeds])


def epoch_indices(n: int, batch: int, step: int, *key: int | str) -> Tensor:
    """Indices of the ``step``-th batch into a pool of ``n`` examples.

    The pool is visited epoch after epoch, each in a fresh random order fixed by ``key`` (e.g. the
    task name and the member's seed), so a batch depends only on ``(key, step)``.
    """
    start = step * batch
    epoch, offset = divmod(start, n)
    parts, need = [], batch
    while need > 0:
        perm = _permutation(mix(*key, epoch), n)
        take = perm[offset : offset + need]
        parts.append(take)
        need -= len(take)
        epoch, offset = epoch + 1, 0
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def cast(t: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Move a tensor to ``device``; floating tensors also take ``dtype``, integer ones keep theirs."""
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def default_roles(module: nn.Module) -> dict[str, str]:
    """Guess roles: 1-D → vector, nn.Embedding → embedding, the last ≥2-D parameter → head."""
    embedding = {
        f"{prefix}.{n}" if prefix else n
        for prefix, m in module.named_modules()
        if isinstance(m, nn.Embedding)
        for n, _ in m.named_parameters(recurse=False)
    }
    roles = {}
    for name, p in module.named_parameters():
        roles[name] = "vector" if p.dim() < 2 else "embedding" if name in embedding else "hidden"
    matrices = [n for n, r in roles.items() if r == "hidden"]
    if matrices:
        roles[matrices[-1]] = "head"
    return roles


class _FewClassCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy per member for logits ``[M, B, C]``: ``logsumexp − picked logit``
    forward, ``(softmax − one-hot) / B`` backward, written out."""

    @staticmethod
    def forward(ctx, logits: Tensor, y: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, -1, keepdim=True)
        picked = logits.gather(-1, y.unsqueeze(-1))
        ctx.save_for_backward(logits, lse, y)
        return (lse - picked).squeeze(-1).mean(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, lse, y = ctx.saved_tensors
        p = (logits - lse).exp_()
        p.scatter_add_(-1, y.unsqueeze(-1), torch.full((1, 1, 1), -1.0, dtype=p.dtype, device=p.device).expand(*y.shape, 1))
        return p.mul_((grad / logits.shape[-2]).view(-1, 1, 1)), None


def batched_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Each member's mean cross-entropy: logits ``[M, B, C]`` (or ``[M, B, T, C]``), integer
    targets of the same leading shape → ``[M]``.

    With fewer than 16 classes torch's log-softmax takes a scalar path on the CPU that is about
    three times slower than the loss written out (0.39 against 0.14 ms, forward and backward,
    for 16 members × 128 examples × 10 classes at one thread), so such losses are computed here;
    wider ones go to ``F.cross_entropy``."""
    m, c = logits.shape[0], logits.shape[-1]
    if c < 16:
        return _FewClassCrossEntropy.apply(logits.reshape(m, -1, c), y.reshape(m, -1))
    return F.cross_entropy(logits.reshape(-1, c), y.reshape(-1), reduction="none").view(m, -1).mean(1)


def batched_mse(output: Tensor, target: Tensor) -> Tensor:
    """Each member's mean squared error over all its elements: ``output`` and ``target``
    ``[M, ...]`` of one shape → ``[M]`` (``F.mse_loss`` of each member, batched)."""
    return (output - target).square().reshape(output.shape[0], -1).mean(1)


def roles_by_name(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Roles of a plain stack of layers: 1-D parameters "vector", those named ``head…`` "head",
    the other matrices and kernels "hidden"."""
    return {n: "vector" if len(s) == 1 else "head" if n.startswith("head") else "hidden" for n, s in shapes.items()}


class Task:
    """A training task: model, data and loss, for a stack of M independent members.

    Construct with ``Task(size="proxy", **options)``; ``sizes[size]`` holds the defaults, every
    option becomes an attribute (``self.batch``, ``self.steps`` …), then ``setup()`` builds data.
    """

    name: ClassVar[str] = ""
    sizes: ClassVar[dict[str, dict[str, Any]]] = {
        "proxy": {"steps": 100},
        "target": {"steps": 1000},
    }
    eval_chunk: ClassVar[int | None] = None  # held-out examples per forward pass in eval_loss
    _loop_members: bool = False  # set on an instance once vmap has no batching rule for its module

    size: str
    steps: int

    def __init__(self, size: str = "proxy", **options: Any) -> None:
        if size not in self.sizes:
            raise ValueError(f"task {self.name!r} has no size {size!r}; sizes: {sorted(self.sizes)}")
        config = dict(self.sizes[size])
        unknown = sorted(set(options) - set(config))
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown options {unknown}; options: {sorted(config)}")
        config.update(options)
        self.size = size
        self.options = config
        for key, value in config.items():
            setattr(self, key, value)
        self.steps = int(config["steps"])
        self._cache: dict[Any, Tensor] = {}
        self.setup()
        self._template = self._build()
        self._shapes = {n: tuple(p.shape) for n, p in self._template.named_parameters()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}(size={self.size!r}, {opts})"

    # ------------------------------------------------------------------ what a subclass defines

    def setup(self) -> None:
        """Build fixed data (pools, held-out set, teacher); runs once, after options are set."""

    def build_module(self) -> nn.Module:
        """The model's architecture as an ordinary module (its initial values are replaced)."""
        raise NotImplementedError

    def train_batch(self, step: int, seed: int) -> tuple[Tensor, Tensor]:
        """One member's ``(inputs, targets)`` at ``step``; a function of ``(seed, step)`` only."""
        if type(self).train_batches is Task.train_batches:
            raise NotImplementedError(f"{type(self).__name__} defines neither train_batch nor train_batches")
        x, y = self.train_batches(step, [seed])
        return x[0], y[0]

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        """The fixed held-out ``(inputs, targets)``, the same for every member."""
        raise NotImplementedError

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of one member, a mean over examples (default: cross-entropy)."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def init_tensor(self, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Initial value of one parameter for one member (default: N(0, 1/fan_in); 1-D: LayerNorm-like)."""
        if len(shape) < 2:
            return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return torch.randn(shape, generator=gen) / fan_in**0.5

    # ------------------------------------------------------------------ the contract

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter of one member, in ``make_module`` order."""
        return dict(self._shapes)

    def roles(self) -> dict[str, str]:
        """Role of each parameter: ``"hidden"``, ``"embedding"``, ``"head"`` or ``"vector"`` (the roles a
        step function takes, ``optdisco.dsl.layout.ROLES``; a task names them, it does not import them)."""
        return default_roles(self._template)

    def num_params(self) -> int:
        """Number of trainable scalars of one member."""
        total = 0
        for shape in self._shapes.values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def init_params(
        self, seeds: Seeds, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> dict[str, Tensor]:
        """Initial parameters ``[M, *shape]``; member ``i`` drawn from ``seeds[i]`` alone."""
        members = []
        for seed in seed_list(seeds):
            gen = generator(self.name, "init", seed)
            members.append({n: self.init_tensor(n, s, gen) for n, s in self._shapes.items()})
        return {
            n: torch.stack([m[n] for m in members]).to(device=device, dtype=dtype) for n in self._shapes
        }

    def train_batches(
        self, step: int, seeds: Seeds, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Every member's training batch at ``step``, stacked: ``(inputs [M, ...], targets [M, ...])``."""
        pairs = [self.train_batch(step, s) for s in seed_list(seeds)]
        x = torch.stack([p[0] for p in pairs])
        y = torch.stack([p[1] for p in pairs])
        return cast(x, device, dtype), cast(y, device, dtype)

    def batched_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Loss of each member ``[M]`` on its own batch ``x[i], y[i]`` (default: vmap of the module,
        or a loop over members where vmap has no batching rule; see the module docstring)."""

        def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            return self.criterion(functional_call(self._template, p, (xi,)), yi)

        if not self._loop_members:
            try:
                return vmap(one)(params, x, y)
            except RuntimeError as error:
                if "Batching rule not implemented" not in str(error):
                    raise
                self._loop_members = True
        return torch.stack([one({n: p[i] for n, p in params.items()}, x[i], y[i]) for i in range(x.shape[0])])

    def loss_and_grads(
        self, params: dict[str, Tensor], step: int, seeds: Seeds
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss ``[M]`` and gradients ``[M, *shape]`` on each member's batch at ``step``."""
        ref = next(iter(params.values()))
        x, y = self.train_batches(step, seeds, ref.device, ref.dtype)
        with torch.enable_grad():
            leaves = {}
            for n, p in params.items():
                p = p.detach()
                leaves[n] = (p.clone() if p.is_inference() else p).requires_grad_(True)
            loss = self.batched_loss(leaves, x, y)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads))

    def eval_loss(self, params: dict[str, Tensor], seeds: Seeds | None = None) -> Tensor:
        """Held-out loss ``[M]`` on the fixed held-out set (``seeds`` is accepted and unused)."""
        ref = next(iter(params.values()))
        m = ref.shape[0]
        x, y = self.heldout_batch()
        x, y = cast(x, ref.device, ref.dtype), cast(y, ref.device, ref.dtype)
        n = x.shape[0]
        chunk = self.eval_chunk or n
        total = torch.zeros(m, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for i in range(0, n, chunk):
                xc, yc = x[i : i + chunk], y[i : i + chunk]
                xs, ys = xc.expand(m, *xc.shape), yc.expand(m, *yc.shape)
                total += self.batched_loss(params, xs, ys) * (xc.shape[0] / n)
        return total

    def make_module(
        self, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> nn.Module:
        """The same model as an ordinary module, initialised exactly like member ``seed``."""
        module = self._build()
        values = self.init_params([seed], device, dtype)
        module.to(device=device, dtype=dtype)
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(values[n][0])
        return module

    def module_loss(self, module: nn.Module, step: int, seed: int) -> Tensor:
        """Ordinary scalar training loss of ``module`` on member ``seed``'s batch at ``step``."""
        ref = next(module.parameters())
        x, y = self.train_batch(step, seed)
        x, y = cast(x, ref.device, ref.dtype), cast(y, ref.device, ref.dtype)
        return self.criterion(module(x), y)

    # ------------------------------------------------------------------ helpers

    def _build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # module construction must not move the global RNG
            return self.build_module()

    def on(self, key: str, tensor: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
        """``tensor`` cast to ``device``/``dtype``, cached under ``key`` (for fixed data pools)."""
        if torch.device(device) == tensor.device and (not tensor.is_floating_point() or tensor.dtype == dtype):
            return tensor
        k = (key, str(device), dtype)
        if k not in self._cache:
            self._cache[k] = cast(tensor, device, dtype)
        return self._cache[k]


class PoolTask(Task):
    """A task whose data are fixed tensors that ``setup()`` stores as ``x_train``, ``y_train``,
    ``x_heldout`` and ``y_heldout``. Each member visits the training pool in its own random
    order, epoch after epoch (``epoch_indices`` keyed by the task's name and the member's seed),
    ``batch`` examples per step. Targets are class labels ``[N]`` or any ``[N, ...]`` (e.g. float
    regression targets ``[N, outputs]``); float targets take the members' dtype, as inputs do."""

    x_train: Tensor
    y_train: Tensor
    x_heldout: Tensor
    y_heldout: Tensor
    batch: int

    def train_batches(self, step, seeds, device="cpu", dtype=torch.float32):
        n = self.x_train.shape[0]
        seeds = tuple(seed_list(seeds))
        epoch, offset = divmod(step * self.batch, n)
        if offset + self.batch <= n:  # within one epoch: a slice of the members' stacked orders
            idx = _member_orders(self.name, seeds, epoch, n)[:, offset : offset + self.batch]
        else:
            idx = torch.stack([epoch_indices(n, self.batch, step, self.name, s) for s in seeds])
        x = self.on("x_train", self.x_train, device, dtype)
        y = self.on("y_train", self.y_train, device, dtype)
        flat = idx.reshape(-1).to(x.device)
        return x.index_select(0, flat).view(*idx.shape, *x.shape[1:]), y.index_select(0, flat).view(*idx.shape, *y.shape[1:])

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        return self.x_heldout, self.y_heldout
