"""A GRU recalling tokens seen a few steps earlier in random sequences (a held-out task)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Task, batched_cross_entropy, generator, seed_list
from .registry import register


class GRUTagger(nn.Module):
    """Token embeddings ``embed``, a one-layer ``nn.GRU`` ``rnn`` and a linear ``head`` on every
    hidden state."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h, _ = self.rnn(self.embed(tokens))
        return self.head(h)


def batched_gru(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """Hidden states ``[T, M, B, H]`` of M one-layer GRUs, one per member, from ``h_0 = 0``.

    Inputs ``x [T, M, B, in]`` (time first, as ``nn.GRU`` without ``batch_first``); weights as
    ``nn.GRU`` stores them, gates stacked (r, z, n): ``w_ih [M, 3H, in]``, ``w_hh [M, 3H, H]``,
    ``b_ih``, ``b_hh [M, 3H]``. Each step computes, as torch's ``nn.GRU`` documents,

        r = σ(W_ir x + b_ir + W_hr h + b_hr)
        z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    The input terms of all steps are computed before the loop (the hidden biases of r and z
    folded into them), time-major so that each step reads a contiguous block; the loop slices
    no tensor it differentiates through (a slice's backward fills a zero tensor of the whole).
    """
    k = w_hh.shape[2]
    rz_in = torch.matmul(x, w_ih[:, : 2 * k].transpose(1, 2)) + (b_ih[:, : 2 * k] + b_hh[:, : 2 * k]).unsqueeze(1)
    n_in = torch.matmul(x, w_ih[:, 2 * k :].transpose(1, 2)) + b_ih[:, 2 * k :].unsqueeze(1)
    w_rz = w_hh[:, : 2 * k].transpose(1, 2).contiguous()  # [M, H, 2H]
    w_n = w_hh[:, 2 * k :].transpose(1, 2).contiguous()  # [M, H, H]
    b_n = b_hh[:, 2 * k :].unsqueeze(1)
    h = x.new_zeros(x.shape[1], x.shape[2], k)
    states = []
    for rz_t, n_t in zip(rz_in.unbind(0), n_in.unbind(0)):
        r, z = torch.sigmoid(torch.baddbmm(rz_t, h, w_rz)).chunk(2, -1)
        n = torch.tanh(n_t + r * torch.baddbmm(b_n, h, w_n))
        h = n + z * (h - n)  # (1 − z) ⊙ n + z ⊙ h
        states.append(h)
    return torch.stack(states)


@register
class DelayedRecall(Task):
    """Read a random token sequence and output, at each position, the token ``delay`` steps back.

    What it measures: training a recurrent network — gradients through time, gates that must
    learn to hold information, an embedding and a classifier head — on a task with exact answers.
    Held-out loss: mean cross-entropy over the scored positions of a fixed held-out set of
    ``heldout_size`` sequences. Part of the held-out suite: for judging discoveries, never for
    selecting them.

    Data: sequences of ``length`` tokens drawn uniformly from ``vocab``; the target at position
    ``t ≥ delay`` is the input at ``t − delay`` (the first ``delay`` positions are not scored).
    Each member's batch is ``batch`` fresh sequences drawn from ``(seed, step)``; the held-out set
    is fixed by ``data_seed``.

    Model: embedding ``embed.weight`` (``vocab × embed``, N(0, 1), role "embedding"), a one-layer
    GRU of ``hidden`` units (``rnn.weight_ih_l0``, ``rnn.weight_hh_l0``, hidden; N(0, 1/fan_in)),
    a linear ``head`` (head); biases zero, "vector". ``batched_loss`` runs the GRU of every member
    at once (``batched_gru``, torch's GRU equations written out); the module uses ``nn.GRU``.

    Sizes (1 torch thread, shared 2-core CPU): proxy vocab 8, delay 3, length 8, embed 8, hidden
    32 (4,360 parameters), batch 32, 200 steps — ``evaluate("adamw", "gru", seeds=(0, 1, 2))``
    (24 members, then 12 more as the LR grid is extended) takes about 2.7 s, a step of 24 members
    about 7 ms (a Python loop over time steps: the slowest of the held-out tasks per step); target
    vocab 16, delay 8, length 32, embed 16, hidden 128 (58,384 parameters), batch 64, 3,000 steps —
    several minutes (a GPU is better).
    """

    name = "gru"
    sizes = {
        "proxy": dict(
            steps=200, vocab=8, delay=3, length=8, embed=8, hidden=32, batch=32, heldout_size=512, data_seed=0,
        ),
        "target": dict(
            steps=3000, vocab=16, delay=8, length=32, embed=16, hidden=128, batch=64, heldout_size=2048,
            data_seed=0,
        ),
    }

    def setup(self) -> None:
        if not 0 < self.delay < self.length:
            raise ValueError(f"gru: delay {self.delay} must be between 1 and length − 1 ({self.length - 1})")
        g = generator(self.name, "data", self.data_seed)
        self.x_heldout = torch.randint(0, self.vocab, (self.heldout_size, self.length), generator=g)

    def targets(self, tokens: Tensor) -> Tensor:
        """Targets of the scored positions: ``tokens[..., t − delay]`` for ``t ≥ delay``."""
        return tokens[..., : self.length - self.delay]

    def build_module(self) -> nn.Module:
        return GRUTagger(self.vocab, self.embed, self.hidden)

    def roles(self) -> dict[str, str]:
        def role(name: str, shape: tuple[int, ...]) -> str:
            if len(shape) == 1:
                return "vector"
            return {"embed.weight": "embedding", "head.weight": "head"}.get(name, "hidden")

        return {n: role(n, s) for n, s in self.param_shapes().items()}

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        if name == "embed.weight":
            return torch.randn(shape, generator=gen)
        return torch.randn(shape, generator=gen) / shape[1] ** 0.5

    def train_batches(self, step, seeds, device="cpu", dtype=torch.float32):
        x = torch.stack([
            torch.randint(0, self.vocab, (self.batch, self.length), generator=generator(self.name, "batch", s, step))
            for s in seed_list(seeds)
        ]).to(device)
        return x, self.targets(x)

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        return self.x_heldout, self.targets(self.x_heldout)

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        scored = output[..., self.delay :, :]
        return nn.functional.cross_entropy(scored.reshape(-1, scored.shape[-1]), target.reshape(-1))

    def batched_loss(self, params, x, y):
        m = x.shape[0]
        table = params["embed.weight"].reshape(m * self.vocab, -1)  # member i's rows at i·vocab
        flat = x.permute(2, 0, 1) + self.vocab * torch.arange(m, device=x.device).view(m, 1)  # [T, M, B]
        h = batched_gru(
            nn.functional.embedding(flat, table), params["rnn.weight_ih_l0"], params["rnn.weight_hh_l0"],
            params["rnn.bias_ih_l0"], params["rnn.bias_hh_l0"],
        )
        logits = torch.matmul(h[self.delay :], params["head.weight"].transpose(1, 2)) + params["head.bias"].unsqueeze(1)
        return batched_cross_entropy(logits.transpose(0, 1), y.transpose(1, 2))  # [M, T − delay, B, vocab]
