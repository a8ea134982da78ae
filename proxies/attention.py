"""One softmax self-attention layer that recalls, in context, the value stored under a queried key."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PoolTask, batched_cross_entropy, generator
from .registry import register


class RecallAttention(nn.Module):
    """Token embeddings summed per slot, one multi-head attention read from the last slot (the query),
    a residual connection and a linear ``head``; no biases, no normalisation."""

    def __init__(self, vocab: int, width: int, heads: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, classes, bias=False)
        self.heads = heads

    def forward(self, tokens: Tensor) -> Tensor:
        e = self.embed(tokens).sum(-2)  # [B, slots, width]: a slot's two tokens, summed
        b, n, w = e.shape
        hd = w // self.heads
        q = self.query(e[:, -1:]).view(b, 1, self.heads, hd).transpose(1, 2)
        k = self.key(e).view(b, n, self.heads, hd).transpose(1, 2)
        v = self.value(e).view(b, n, self.heads, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, hd]
        return self.head(e[:, -1] + self.out(a.transpose(1, 2).reshape(b, w)))


def recall_examples(n: int, keys: int, values: int, pairs: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` recall problems as ``(tokens [n, pairs + 1, 2], targets [n])``.

    Slot ``i < pairs`` holds a key (token ``0 … keys−1``, distinct within a problem) and its value
    (token ``keys + v``, ``v`` uniform in ``0 … values−1``); the last slot holds one of those keys,
    drawn uniformly, and the blank token ``keys + values``. The target is that key's ``v``."""
    key = torch.rand(n, keys, generator=g).argsort(1)[:, :pairs]
    value = torch.randint(0, values, (n, pairs), generator=g)
    pick = torch.randint(0, pairs, (n,), generator=g)
    rows = torch.arange(n)
    query = torch.stack([key[rows, pick], torch.full((n,), keys + values)], 1)
    tokens = torch.cat([torch.stack([key, keys + value], 2), query.unsqueeze(1)], 1)
    return tokens, value[rows, pick]


@register
class AssociativeRecall(PoolTask):
    """Read ``pairs`` key–value pairs, then a key, and name its value: in-context recall by attention.

    What it measures: training softmax attention — the query and key projections must grow the
    attention scores until the query's slot wins the softmax, a multiplicative, initially flat
    problem, while the value and output projections and the head learn to copy the value through.
    Each problem has ``pairs`` slots of a distinct key (of ``keys``) and a uniform value (of
    ``values``), then a query slot holding one of the keys; the target is its value (chance:
    ``ln values``). The facts change with every problem, so they can only be read from the
    context. A pool of ``train_size`` problems and a held-out set of ``heldout_size`` are drawn from
    ``data_seed``; each member visits the pool in its own random order (the proxy sees 0.4 of an
    epoch, so every problem is new). Held-out loss: cross-entropy.

    Model: a slot is the sum ``e`` of its two token embeddings (``embed``, role "embedding"); the
    query slot ``e_q`` reads all slots with ``heads``-head attention, then

        logits = W_head (e_q + W_out · concat_h softmax(q_h k_hᵀ / sqrt(d)) v_h)

    with ``q = W_query e_q``, ``k = W_key e``, ``v = W_value e`` (roles "hidden") and ``W_head``
    (role "head"); no biases, no normalisation. Initialisation: embeddings N(0, 1), matrices
    N(0, 1/width).

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy 16 keys, 8 values, 8 pairs,
    width 16, 2 heads (1,552 parameters), batch 32, 200 steps — ``evaluate("adamw")`` about
    0.75 s; target 64 keys, 32 values,
    32 pairs, width 128, 4 heads (82,048 parameters), batch 128, 3,000 steps.
    """

    name = "attention"
    sizes = {
        "proxy": dict(
            steps=200, keys=16, values=8, pairs=8, width=16, heads=2, batch=32,
            train_size=16384, heldout_size=1024, data_seed=0,
        ),
        "target": dict(
            steps=3000, keys=64, values=32, pairs=32, width=128, heads=4, batch=128,
            train_size=1 << 18, heldout_size=4096, data_seed=0,
        ),
    }

    def setup(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"attention: width {self.width} is not a multiple of heads {self.heads}")
        if self.pairs > self.keys:
            raise ValueError(f"attention: {self.pairs} pairs need distinct keys, but there are {self.keys}")
        self.vocab = self.keys + self.values + 1  # keys, values, the blank
        g = generator(self.name, "data", self.data_seed)
        x, y = recall_examples(self.train_size + self.heldout_size, self.keys, self.values, self.pairs, g)
        self.x_train, self.y_train = x[: self.train_size], y[: self.train_size]
        self.x_heldout, self.y_heldout = x[self.train_size :], y[self.train_size :]

    def build_module(self) -> nn.Module:
        return RecallAttention(self.vocab, self.width, self.heads, self.values)

    def roles(self) -> dict[str, str]:
        special = {"embed.weight": "embedding", "head.weight": "head"}
        return {n: special.get(n, "hidden") for n in self.param_shapes()}

    def init_tensor(self, name, shape, gen):
        scale = 1.0 if name == "embed.weight" else shape[1] ** -0.5
        return scale * torch.randn(shape, generator=gen)

    def batched_loss(self, params, x, y):
        m, b, n, _ = x.shape
        emb = params["embed.weight"]
        w = emb.shape[2]
        hd = w // self.heads
        # a slot's summed embedding as (its tokens' counts) @ embed: a bmm, whose backward is far
        # cheaper on a CPU than F.embedding's
        counts = torch.zeros(m, b * n, self.vocab, device=x.device, dtype=emb.dtype)
        counts.scatter_add_(2, x.reshape(m, b * n, 2), counts.new_ones(1, 1, 1).expand(m, b * n, 2))
        e = torch.bmm(counts, emb)  # [M, B·slots, width]
        e_q = e.view(m, b, n, w)[:, :, -1]  # [M, B, width]
        q = torch.bmm(e_q, params["query.weight"].transpose(1, 2)).view(m, b, 1, self.heads, hd)
        k = torch.bmm(e, params["key.weight"].transpose(1, 2)).view(m, b, n, self.heads, hd)
        v = torch.bmm(e, params["value.weight"].transpose(1, 2)).view(m, b, n, self.heads, hd)
        # one query per problem: scores and the weighted sum as broadcast products (no tiny matmuls)
        scores = (q * k).sum(-1) * hd**-0.5  # [M, B, slots, heads]
        a = (scores.softmax(2).unsqueeze(-1) * v).sum(2).reshape(m, b, w)
        h = torch.baddbmm(e_q, a, params["out.weight"].transpose(1, 2))
        return batched_cross_entropy(torch.bmm(h, params["head.weight"].transpose(1, 2)), y)
