"""A small convolutional network on the 8×8 handwritten digits that ship with scikit-learn."""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PoolTask, batched_cross_entropy, generator, roles_by_name
from .registry import register


def load_digits() -> tuple[Tensor, Tensor]:
    """The 1,797 UCI digits as ``(images [N, 1, 8, 8] in 0..16, labels [N])``, read offline.

    Reads ``sklearn/datasets/data/digits.csv.gz`` directly (importing scikit-learn costs about a
    second), falling back to ``sklearn.datasets.load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ImportError("the 'digits' task needs scikit-learn (pip install scikit-learn)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if os.path.exists(path):
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        images, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - layout of a future scikit-learn
        from sklearn.datasets import load_digits as sk_load

        data = sk_load()
        images, labels = data.data.astype(np.float32), data.target
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, 1, 8, 8)
    return x, torch.as_tensor(labels).long()


class ConvNet(nn.Module):
    """3×3 conv layers (padding 1; stride 1, then 2), ReLU, then a linear ``head`` on the flattened map."""

    def __init__(self, channels: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        c_in, side = 1, 8
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            setattr(self, f"conv{i + 1}", nn.Conv2d(c_in, c, 3, stride=stride, padding=1))
            c_in, side = c, (side - 1) // stride + 1
        self.head = nn.Linear(c_in * side * side, classes)
        self.layers = len(channels)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.layers):
            x = F.relu(getattr(self, f"conv{i + 1}")(x))
        return self.head(x.flatten(1))


@register
class Digits(PoolTask):
    """Classify scikit-learn's 8×8 digit images (real data, no download) with a small conv net.

    What it measures: training a convolutional network on real images with a small training set
    (1,438 images; 359 held out, split by ``data_seed``), where generalisation matters. Pixels are
    standardised with the training set's mean and standard deviation. Each member visits the
    training set in its own random order. Held-out loss: cross-entropy on the 359 held-out images.

    Model: conv layers of ``channels`` (first stride 1, then stride 2) with ReLU, then a linear
    head; He-normal kernels, zero biases. Roles: ``conv*.weight`` hidden, ``head.weight`` head,
    biases vector. Needs scikit-learn installed (only for its data file).

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy channels (8, 16) (3,818
    parameters), batch 64, 200 steps — about 1.3 s; target channels (16, 32, 64) (25,866
    parameters), batch 128, 3,000 steps — about 3 minutes.
    """

    name = "digits"
    sizes = {
        "proxy": dict(steps=200, channels=(8, 16), batch=64, heldout_fraction=0.2, data_seed=0),
        "target": dict(steps=3000, channels=(16, 32, 64), batch=128, heldout_fraction=0.2, data_seed=0),
    }

    def setup(self) -> None:
        self.channels = tuple(self.channels)
        x, y = load_digits()
        order = torch.randperm(len(y), generator=generator(self.name, "split", self.data_seed))
        n_held = round(len(y) * self.heldout_fraction)
        held, train = order[:n_held], order[n_held:]
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        self.x_train, self.y_train = x[train], y[train]
        self.x_heldout, self.y_heldout = x[held], y[held]
        self.train_size = len(train)

    def build_module(self) -> nn.Module:
        return ConvNet(self.channels)

    def roles(self) -> dict[str, str]:
        return roles_by_name(self.param_shapes())

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        fan_in = int(np.prod(shape[1:]))
        gain = 1.0 if name.startswith("head") else 2.0
        return torch.randn(shape, generator=gen) * (gain / fan_in) ** 0.5

    def batched_loss(self, params, x, y):
        # Members become conv groups on channels-last maps: h is [B, H, W, M·C] in memory, and
        # conv2d sees it as the NCHW view h.permute(0, 3, 1, 2). oneDNN's grouped convolution and
        # ReLU are about 1.5× faster (forward and backward) on this layout than on NCHW.
        m, b = y.shape
        h = x.reshape(m, b, 8, 8).permute(1, 2, 3, 0).contiguous()  # [B, 8, 8, M] (one input channel)
        for i in range(len(self.channels)):
            w, bias = params[f"conv{i + 1}.weight"], params[f"conv{i + 1}.bias"]
            out = F.conv2d(
                h.permute(0, 3, 1, 2), w.reshape(-1, *w.shape[2:]), bias.reshape(-1),
                stride=1 if i == 0 else 2, padding=1, groups=m,
            )
            h = F.relu(out.permute(0, 2, 3, 1))  # [B, H, W, M·C]
        _, side, _, mc = h.shape
        c = mc // m
        feats = h.reshape(b, side * side, m, c).permute(2, 0, 1, 3).reshape(m, b, -1)  # (row, col, channel)
        # the module flattens (channel, row, col): reorder the head's columns to match
        head = params["head.weight"]
        head = head.view(m, head.shape[1], c, side * side).transpose(2, 3).reshape(m, head.shape[1], -1)
        out = torch.baddbmm(params["head.bias"].unsqueeze(1), feats, head.transpose(1, 2))
        return batched_cross_entropy(out, y)
