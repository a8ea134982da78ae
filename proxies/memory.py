"""A heavy-tailed associative memory: many classes with Zipf frequencies, one linear memory matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Seeds, Task, batched_cross_entropy, generator, seed_list
from .registry import register


class LinearMemory(nn.Module):
    """``logits = U (W x)``: a trainable ``memory`` matrix ``W`` between fixed key and class embeddings."""

    def __init__(self, unembedding: Tensor) -> None:
        super().__init__()
        dim = unembedding.shape[1]
        self.memory = nn.Parameter(torch.empty(dim, dim))
        self.register_buffer("unembedding", unembedding.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.memory.T) @ self.unembedding.T


@register
class AssociativeMemory(Task):
    """Store ``classes`` key → class associations whose frequencies follow a power law.

    What it measures: how well an optimizer learns rare facts. Class ``c`` (0 = most frequent)
    is drawn with probability ``∝ (c + 1)^-zipf``; its key is a fixed random unit vector ``e_c``
    plus Gaussian noise of total norm about ``noise``; the model is a linear associative memory
    ``logits = U W x`` with fixed random unit class embeddings ``U`` and one trainable matrix
    ``memory = W [dim, dim]`` (role "hidden"), trained with cross-entropy. This is the kind of
    model in which Muon-style orthogonalised updates have been reported to learn tail classes
    better than Adam (Wang et al., 2025, "Muon outperforms Adam in tail-end associative memory
    learning"); at the default proxy size (more classes than dimensions, so capacity binds) a
    tuned SVD-orthogonalised momentum and a tuned Adam reach similar held-out loss.

    Held-out loss: cross-entropy on a fixed class-balanced set (``heldout_per_class`` fresh noisy
    keys per class), so rare classes weigh as much as frequent ones. For analysis,
    ``class_accuracy`` gives held-out accuracy per class and ``rare_accuracy`` on the rarest
    classes.

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy 512 classes, ``dim`` 64 (4,096
    parameters), batch 64, 500 steps — about 3 s; target 2,048 classes, ``dim`` 128 (16,384
    parameters), batch 128, 3,000 steps — about 4 minutes.
    """

    name = "memory"
    sizes = {
        "proxy": dict(steps=500, classes=512, dim=64, zipf=1.0, noise=0.1, batch=64, heldout_per_class=4, data_seed=0),
        "target": dict(
            steps=3000, classes=2048, dim=128, zipf=1.0, noise=0.1, batch=128, heldout_per_class=4, data_seed=0
        ),
    }
    eval_chunk = 8192

    def setup(self) -> None:
        g = generator(self.name, "data", self.data_seed)
        self.keys = F.normalize(torch.randn(self.classes, self.dim, generator=g), dim=1)
        self.unembedding = torch.randn(self.classes, self.dim, generator=g)
        p = torch.arange(1, self.classes + 1, dtype=torch.float64).pow(-float(self.zipf))
        self.frequencies = (p / p.sum()).float()
        self.y_heldout = torch.arange(self.classes).repeat_interleave(self.heldout_per_class)
        self.x_heldout = self._noisy_keys(self.y_heldout, g)

    def _noisy_keys(self, labels: Tensor, g: torch.Generator) -> Tensor:
        noise = torch.randn(*labels.shape, self.dim, generator=g)
        return self.keys[labels] + noise * (self.noise / self.dim**0.5)

    def build_module(self) -> nn.Module:
        return LinearMemory(self.unembedding)

    def roles(self) -> dict[str, str]:
        return {"memory": "hidden"}

    def init_tensor(self, name, shape, gen):
        return torch.randn(shape, generator=gen) / self.dim  # initial logits ~ N(0, 1/dim): loss ≈ ln(classes)

    def train_batches(self, step, seeds, device="cpu", dtype=torch.float32):
        xs, ys = [], []
        for seed in seed_list(seeds):
            g = generator(self.name, "batch", seed, step)
            y = torch.multinomial(self.frequencies, self.batch, replacement=True, generator=g)
            xs.append(self._noisy_keys(y, g))
            ys.append(y)
        return torch.stack(xs).to(device, dtype), torch.stack(ys).to(device)

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        return self.x_heldout, self.y_heldout

    def _logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        w = params["memory"]
        u = self.on("unembedding", self.unembedding, w.device, w.dtype)
        return torch.bmm(x, w.transpose(1, 2)) @ u.T

    def batched_loss(self, params, x, y):
        out = self._logits(params, x)
        return batched_cross_entropy(out, y)

    def class_accuracy(self, params: dict[str, Tensor], seeds: Seeds | None = None) -> Tensor:
        """Held-out accuracy of each member on each class, ``[M, classes]`` (class 0 most frequent)."""
        w = params["memory"]
        x = self.on("x_heldout", self.x_heldout, w.device, w.dtype)
        y = self.on("y_heldout", self.y_heldout, w.device, w.dtype)
        correct = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.eval_chunk):
                xc = x[i : i + self.eval_chunk]
                pred = self._logits(params, xc.expand(w.shape[0], *xc.shape)).argmax(-1)
                correct.append((pred == y[i : i + self.eval_chunk]).float())
        hits = torch.cat(correct, dim=1).view(w.shape[0], self.classes, self.heldout_per_class)
        return hits.mean(-1)

    def rare_accuracy(self, params: dict[str, Tensor], fraction: float = 0.5, seeds: Seeds | None = None) -> Tensor:
        """Held-out accuracy ``[M]`` on the rarest ``fraction`` of classes."""
        k = max(1, round(self.classes * fraction))
        return self.class_accuracy(params)[:, -k:].mean(-1)
