"""A deep, narrow ReLU network without normalisation on teacher-labelled data."""

from __future__ import annotations

import torch

from .mlp import TeacherStudent
from .registry import register


@register
class DeepNarrow(TeacherStudent):
    """Classify Gaussian inputs labelled by a fixed random teacher with a deep, narrow ReLU student.

    What it measures: optimisation through depth. With ``depth`` ReLU layers of only ``width``
    units and no normalisation or residual connections, the forward signal and the gradient are
    products of many small random matrices: their scale drifts from layer to layer and varies
    from one member to the next, units die, and the layers' gradients differ by orders of
    magnitude — where per-layer or per-coordinate scaling matters. Data, teacher and loss are
    those of ``mlp`` (``TeacherStudent``): ``N(0, I)`` inputs, labels from a random ``tanh``
    teacher, a fixed training pool visited in each member's own order, held-out cross-entropy.

    Student: ``fc1 … fc{depth}`` ReLU layers and a linear ``head``; weights N(0, gain/fan_in)
    (the head N(0, 1/fan_in)), zero biases. The default ``gain = 1`` (LeCun, not He) halves the
    mean square of the signal at each ReLU layer, so every member starts with near-zero logits
    (loss ``ln classes``) and every layer's gradient about ``2^(−depth/2)`` of its size under
    He's initialisation: the optimizer must leave a flat start and restore the signal. With He's ``gain = 2`` the
    proxy's methods differed less and its members more. Roles: ``fc*.weight`` hidden,
    ``head.weight`` head, biases vector.

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy 16 inputs, 10 layers of 24
    (5,908 parameters), 4 classes, batch 64, 200 steps — ``evaluate("adamw")`` about 0.55 s;
    target 32 inputs, 16 layers of 64 (64,772 parameters), batch 128, 3,000 steps.
    """

    name = "deepnet"
    sizes = {
        "proxy": dict(
            steps=200, inputs=16, width=24, depth=10, classes=4, teacher_width=64, gain=1.0,
            train_size=8192, heldout_size=2048, batch=64, data_seed=0,
        ),
        "target": dict(
            steps=3000, inputs=32, width=64, depth=16, classes=4, teacher_width=128, gain=1.0,
            train_size=131072, heldout_size=8192, batch=128, data_seed=0,
        ),
    }

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        gain = 1.0 if name.startswith("head") else self.gain
        return torch.randn(shape, generator=gen) * (gain / shape[1]) ** 0.5
