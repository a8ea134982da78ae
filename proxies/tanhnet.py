"""Regression with a deep, narrow tanh MLP on a smooth random target function (a held-out task)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import PoolTask, batched_mse, generator, roles_by_name
from .registry import register


class TanhNet(nn.Module):
    """``depth`` tanh layers ``fc1 … fc{depth}`` of ``width`` units, then a linear ``head``."""

    def __init__(self, inputs: int, width: int, depth: int, outputs: int) -> None:
        super().__init__()
        for i in range(depth):
            setattr(self, f"fc{i + 1}", nn.Linear(inputs if i == 0 else width, width))
        self.head = nn.Linear(width, outputs)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = torch.tanh(getattr(self, f"fc{i + 1}")(x))
        return self.head(x)


@register
class DeepTanhRegression(PoolTask):
    """Fit a smooth random function of Gaussian inputs with a deep, narrow tanh network.

    What it measures: optimisation through many saturating layers of few units — gradients that
    shrink with depth and curvature that differs by orders of magnitude between the first and last
    layers — on a regression target rather than a classification one. Held-out mean squared error
    is the score. Part of the held-out suite: for judging discoveries, never for selecting them.

    Data: inputs ``x ~ N(0, I)`` in ``inputs`` dimensions; targets from a random-feature teacher,
    ``y = A cos(W x + b)`` with ``features`` rows ``W ~ N(0, bandwidth²/inputs)``, phases ``b ~
    U(0, 2π)`` and ``A`` Gaussian, standardised so that each output has mean 0 and variance 1 on the
    training pool (a constant predictor scores about 1). The training pool (``train_size``) and the
    held-out set (``heldout_size``) are fixed by ``data_seed``; each member visits the pool in its
    own random order.

    Model: ``depth`` tanh layers of ``width`` units and a linear head; weights N(0, 1/fan_in)
    (LeCun), zero biases. Roles: ``fc*.weight`` hidden, ``head.weight`` head, biases vector.

    Sizes (1 torch thread, shared 2-core CPU): proxy ``8→16×8→2`` (2,082 parameters), 4,096
    examples, batch 64, 400 steps — ``evaluate("adamw", "tanhnet", seeds=(0, 1, 2))`` (24 members)
    takes about 1.1 s; target ``16→64×12→4`` (47,108 parameters), 65,536 examples, batch 256,
    4,000 steps — a few minutes.
    """

    name = "tanhnet"
    sizes = {
        "proxy": dict(
            steps=400, inputs=8, width=16, depth=8, outputs=2, features=64, bandwidth=1.0,
            train_size=4096, heldout_size=2048, batch=64, data_seed=0,
        ),
        "target": dict(
            steps=4000, inputs=16, width=64, depth=12, outputs=4, features=256, bandwidth=1.0,
            train_size=65536, heldout_size=8192, batch=256, data_seed=0,
        ),
    }

    def setup(self) -> None:
        g = generator(self.name, "data", self.data_seed)
        w = torch.randn(self.features, self.inputs, generator=g) * (self.bandwidth / self.inputs**0.5)
        b = 2 * math.pi * torch.rand(self.features, generator=g)
        a = torch.randn(self.outputs, self.features, generator=g)
        x = torch.randn(self.train_size + self.heldout_size, self.inputs, generator=g)
        y = torch.cos(x @ w.T + b) @ a.T
        train = y[: self.train_size]
        y = (y - train.mean(0)) / train.std(0)
        self.x_train, self.y_train = x[: self.train_size], y[: self.train_size]
        self.x_heldout, self.y_heldout = x[self.train_size :], y[self.train_size :]

    def build_module(self) -> nn.Module:
        return TanhNet(self.inputs, self.width, self.depth, self.outputs)

    def roles(self) -> dict[str, str]:
        return roles_by_name(self.param_shapes())

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        return torch.randn(shape, generator=gen) / shape[1] ** 0.5

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.mse_loss(output, target)

    def batched_loss(self, params, x, y):
        h = x
        for i in range(self.depth):
            w, b = params[f"fc{i + 1}.weight"], params[f"fc{i + 1}.bias"]
            h = torch.tanh(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
        out = torch.baddbmm(params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2))
        return batched_mse(out, y)
