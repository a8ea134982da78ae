"""A ReLU denoising autoencoder on Gaussian data that lie near a low-dimensional, ill-conditioned subspace."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PoolTask, generator, roles_by_name
from .mlp import MLP
from .registry import register


def low_rank_data(n: int, dim: int, rank: int, decay: float, g: torch.Generator) -> Tensor:
    """``n`` points ``x = U diag(s) z`` in ``R^dim``: ``z ~ N(0, I_rank)``, ``U`` orthonormal columns
    in a random orientation, scales ``s_i ∝ i^−decay`` normalised so that ``E|x|² = dim``."""
    u, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))
    s = torch.arange(1, rank + 1, dtype=torch.float64).pow(-float(decay))
    s = s * (dim / s.pow(2).sum()) ** 0.5
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return ((z * s) @ u.T).float()


@register
class Denoise(PoolTask):
    """Reconstruct clean points from noisy copies with a ReLU autoencoder (mean squared error).

    What it measures: regression with a many-output head on ill-conditioned data. Clean points
    ``x`` lie in a random ``rank``-dimensional subspace of ``R^dim`` whose directions have scales
    falling as ``i^−decay`` (``low_rank_data``; mean square 1 per coordinate); the input is
    ``x + noise · ε`` with ``ε ~ N(0, I_dim)``, fixed per example, and the target is ``x``. The
    best denoiser projects onto the subspace and shrinks each direction by ``s_i² / (s_i² +
    noise²)``: the weak directions, which carry little of the loss and get small gradients, must be
    learnt too. A pool of ``train_size`` examples and ``heldout_size`` held out are drawn from
    ``data_seed``; each member visits the pool in its own random order. Loss: mean over examples
    and coordinates of ``(f(x̃) − x)²`` (``F.mse_loss``); a network that outputs 0 scores 1.

    Model: ``depth`` ReLU layers of ``width`` units (``fc1 …``), then a linear ``head`` back to
    ``dim``; He-normal weights (the head N(0, 1/width)), zero biases. Roles: ``fc*.weight``
    hidden, ``head.weight`` head, biases vector.

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy dim 32, rank 8, 2 layers of 64
    (8,352 parameters), batch 64, 200 steps — ``evaluate("adamw")`` about 0.45 s; target dim 128,
    rank 32, 2 layers of 256 (131,712 parameters), batch 128, 3,000 steps.
    """

    name = "denoise"
    sizes = {
        "proxy": dict(
            steps=200, dim=32, rank=8, decay=1.0, noise=0.5, width=64, depth=2, batch=64,
            train_size=8192, heldout_size=2048, data_seed=0,
        ),
        "target": dict(
            steps=3000, dim=128, rank=32, decay=1.0, noise=0.5, width=256, depth=2, batch=128,
            train_size=131072, heldout_size=8192, data_seed=0,
        ),
    }

    def setup(self) -> None:
        if not 0 < self.rank <= self.dim:
            raise ValueError(f"denoise: rank must be in [1, dim], got rank {self.rank}, dim {self.dim}")
        g = generator(self.name, "data", self.data_seed)
        n = self.train_size + self.heldout_size
        clean = low_rank_data(n, self.dim, self.rank, self.decay, g)
        noisy = clean + self.noise * torch.randn(n, self.dim, generator=g)
        self.x_train, self.y_train = noisy[: self.train_size], clean[: self.train_size]
        self.x_heldout, self.y_heldout = noisy[self.train_size :], clean[self.train_size :]

    def build_module(self) -> nn.Module:
        return MLP(self.dim, self.width, self.depth, self.dim)

    def roles(self) -> dict[str, str]:
        return roles_by_name(self.param_shapes())

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        gain = 1.0 if name.startswith("head") else 2.0
        return torch.randn(shape, generator=gen) * (gain / shape[1]) ** 0.5

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def batched_loss(self, params, x, y):
        h = x
        for i in range(self.depth):
            w, b = params[f"fc{i + 1}.weight"], params[f"fc{i + 1}.bias"]
            h = F.relu(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
        out = torch.baddbmm(params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2))
        return (out - y).pow(2).flatten(1).mean(1)
