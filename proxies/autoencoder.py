"""An MLP autoencoder on the 8×8 handwritten digits that ship with scikit-learn (a held-out task)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PoolTask, batched_mse, generator, roles_by_name
from .digits import load_digits
from .registry import register


class Autoencoder(nn.Module):
    """``64 → hidden → code → hidden → 64``: tanh layers ``enc`` and ``dec``, a linear bottleneck
    ``code`` and a linear output layer ``head``."""

    def __init__(self, pixels: int, hidden: int, code: int) -> None:
        super().__init__()
        self.enc = nn.Linear(pixels, hidden)
        self.code = nn.Linear(hidden, code)
        self.dec = nn.Linear(code, hidden)
        self.head = nn.Linear(hidden, pixels)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.dec(self.code(torch.tanh(self.enc(x))))))


@register
class DigitsAutoencoder(PoolTask):
    """Reconstruct scikit-learn's 8×8 digit images (real data, no download) through a narrow code.

    What it measures: unsupervised training of an MLP autoencoder on real images — a regression
    with 64 outputs per example through a bottleneck, whose loss surface has the saddles and
    slow directions of a (nonlinear) low-rank factorisation. Held-out mean squared error per pixel
    is the score. Part of the held-out suite: for judging discoveries, never for selecting them.

    Data: the 1,797 images flattened to 64 pixels and standardised with the training set's mean
    and standard deviation (one each, as the ``digits`` task does); ``heldout_fraction`` of them
    (359 images) held out, split by ``data_seed``. Targets are the inputs (float ``[N, 64]``).
    Each member visits the training images in its own random order. Needs scikit-learn installed
    (only for its data file).

    Model: ``enc`` (64 → ``hidden``, tanh), ``code`` (→ ``code``, linear), ``dec`` (→ ``hidden``,
    tanh), ``head`` (→ 64, linear); weights N(0, 1/fan_in), zero biases. Roles: ``head.weight``
    head, the other matrices hidden, biases vector.

    Sizes (1 torch thread, shared 2-core CPU): proxy ``64→32→8→32→64`` (4,744 parameters), batch
    64, 300 steps — ``evaluate("adamw", "autoencoder", seeds=(0, 1, 2))`` (24 members) takes about
    1 s; target ``64→128→16→128→64`` (20,816 parameters), batch 128, 4,000 steps — a few minutes.
    """

    name = "autoencoder"
    sizes = {
        "proxy": dict(steps=300, hidden=32, code=8, batch=64, heldout_fraction=0.2, data_seed=0),
        "target": dict(steps=4000, hidden=128, code=16, batch=128, heldout_fraction=0.2, data_seed=0),
    }

    def setup(self) -> None:
        images, _ = load_digits()
        x = images.reshape(len(images), -1)
        order = torch.randperm(len(x), generator=generator(self.name, "split", self.data_seed))
        n_held = round(len(x) * self.heldout_fraction)
        held, train = order[:n_held], order[n_held:]
        x = (x - x[train].mean()) / x[train].std()
        self.x_train, self.x_heldout = x[train], x[held]
        self.y_train, self.y_heldout = self.x_train, self.x_heldout
        self.train_size = len(train)

    def build_module(self) -> nn.Module:
        return Autoencoder(self.x_train.shape[1], self.hidden, self.code)

    def roles(self) -> dict[str, str]:
        return roles_by_name(self.param_shapes())

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        return torch.randn(shape, generator=gen) / shape[1] ** 0.5

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def batched_loss(self, params, x, y):
        def layer(h: Tensor, name: str) -> Tensor:
            return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2))

        out = layer(torch.tanh(layer(layer(torch.tanh(layer(x, "enc")), "code"), "dec")), "head")
        return batched_mse(out, y)
