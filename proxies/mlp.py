"""Teacher–student classification with a ReLU MLP student: the project's default proxy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PoolTask, batched_cross_entropy, generator, roles_by_name
from .registry import register


class MLP(nn.Module):
    """``depth`` ReLU layers ``fc1 … fc{depth}`` of ``width`` units, then a linear ``head``."""

    def __init__(self, inputs: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        for i in range(depth):
            setattr(self, f"fc{i + 1}", nn.Linear(inputs if i == 0 else width, width))
        self.head = nn.Linear(width, classes)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = F.relu(getattr(self, f"fc{i + 1}")(x))
        return self.head(x)


@register
class TeacherStudent(PoolTask):
    """Classify Gaussian inputs labelled by a fixed random teacher network, with a smaller student.

    What it measures: ordinary supervised training of a small MLP — speed of fitting a realistic
    nonlinear decision boundary from a finite training set (so it can also overfit), held-out
    cross-entropy as the score. The teacher is ``tanh`` MLP ``inputs → teacher_width → classes``
    with Gaussian weights; labels are the argmax of its logits, centred per class so classes are
    roughly balanced. Inputs are ``N(0, I)``. The training pool (``train_size``) and the held-out
    set (``heldout_size``) are fixed by ``data_seed``; each member visits the pool in its own
    random order (epochs without replacement).

    Student: ``depth`` ReLU layers of ``width`` units and a linear head; He-normal weights, zero
    biases. Roles: ``fc*.weight`` hidden, ``head.weight`` head, biases vector.

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy ``32→64→64→10`` (6,922
    parameters), 16,384 training examples, batch 128, 500 steps — about 1.5 s; target
    ``64→256→256→256→10`` (150,794 parameters), 131,072 examples, batch 256, 5,000 steps —
    about 8 minutes.
    """

    name = "mlp"
    sizes = {
        "proxy": dict(
            steps=500, inputs=32, width=64, depth=2, classes=10, teacher_width=128,
            train_size=16384, heldout_size=4096, batch=128, data_seed=0,
        ),
        "target": dict(
            steps=5000, inputs=64, width=256, depth=3, classes=10, teacher_width=256,
            train_size=131072, heldout_size=16384, batch=256, data_seed=0,
        ),
    }
    eval_chunk = 8192

    def setup(self) -> None:
        g = generator(self.name, "data", self.data_seed)
        w1 = torch.randn(self.teacher_width, self.inputs, generator=g) / self.inputs**0.5
        w2 = torch.randn(self.classes, self.teacher_width, generator=g) / self.teacher_width**0.5
        x = torch.randn(self.train_size + self.heldout_size, self.inputs, generator=g)
        logits = torch.tanh(x @ w1.T) @ w2.T
        y = (logits - logits.mean(0)).argmax(-1)
        self.x_train, self.y_train = x[: self.train_size], y[: self.train_size]
        self.x_heldout, self.y_heldout = x[self.train_size :], y[self.train_size :]

    def build_module(self) -> nn.Module:
        return MLP(self.inputs, self.width, self.depth, self.classes)

    def roles(self) -> dict[str, str]:
        return roles_by_name(self.param_shapes())

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        gain = 1.0 if name.startswith("head") else 2.0  # He init for the ReLU layers
        return torch.randn(shape, generator=gen) * (gain / shape[1]) ** 0.5

    def batched_loss(self, params, x, y):
        h = x
        for i in range(self.depth):
            w, b = params[f"fc{i + 1}.weight"], params[f"fc{i + 1}.bias"]
            h = F.relu(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
        out = torch.baddbmm(params["head.bias"].unsqueeze(1), h, params["head.weight"].transpose(1, 2))
        return batched_cross_entropy(out, y)
