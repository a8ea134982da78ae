"""An Elman (tanh) recurrent network that must echo each symbol a fixed number of steps later."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task, batched_cross_entropy, generator, seed_list
from .registry import register


class ElmanClassifier(nn.Module):
    """One-hot tokens into a one-layer ``nn.RNN`` (tanh), then a linear ``head`` on the states
    from position ``lag`` on."""

    def __init__(self, symbols: int, hidden: int, lag: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(symbols, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, symbols)
        self.symbols, self.lag = symbols, lag

    def forward(self, tokens: Tensor) -> Tensor:
        states, _ = self.rnn(F.one_hot(tokens, self.symbols).to(self.head.weight.dtype))
        return self.head(states[:, self.lag :])


def delayed_copies(n: int, length: int, symbols: int, lag: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` sequences of ``length`` symbols drawn uniformly from ``0 … symbols−1``, and as targets
    the symbols ``lag`` positions earlier, at positions ``lag … length−1``."""
    tokens = torch.randint(0, symbols, (n, length), generator=g)
    return tokens, tokens[:, : length - lag]


@register
class DelayedCopy(Task):
    """Read a stream of symbols with an Elman RNN and name, at each position, the symbol ``lag`` steps back.

    What it measures: training a recurrent matrix through time. The state must hold the last
    ``lag`` symbols, and the gradient that teaches it to passes through ``lag`` products of the
    recurrent Jacobian, so it vanishes or explodes with the spectrum of ``weight_hh``. Sequences
    of ``length`` symbols are drawn uniformly from ``symbols``; the outputs at positions ``lag …
    length−1`` are scored against the symbols ``lag`` positions earlier (chance: ``ln symbols``),
    ``length − lag`` targets per sequence. Every step draws fresh sequences from ``(seed, step)``;
    the held-out set (``heldout_size`` sequences) is fixed by ``data_seed``. Held-out loss: mean
    cross-entropy over its targets.

    Model, with the equations of torch's ``nn.RNN`` (``h_0 = 0``, ``x_t`` the one-hot symbol):

        h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),   logits_t = W_head h_t + b_head

    Initialisation: ``W_ih`` N(0, 1) (a lookup table of one-hot inputs: role "embedding"),
    ``W_hh`` N(0, 1/hidden) (spectral radius about 1; role "hidden"), ``W_head`` N(0, 1/hidden)
    (role "head"), biases zero ("vector").

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy 8 symbols, lag 4, length 12,
    hidden 32 (1,608 parameters), batch 32, 200 steps — ``evaluate("adamw")`` 0.9 to 1.35 s
    (measured under load from other processes; the twelve sequential steps' small ops dominate);
    target 16 symbols, lag 10, length 40, hidden 128 (20,752 parameters), batch 128, 3,000 steps.
    """

    name = "rnn"
    sizes = {
        "proxy": dict(steps=200, symbols=8, lag=4, length=12, hidden=32, batch=32, heldout_size=1024, data_seed=0),
        "target": dict(
            steps=3000, symbols=16, lag=10, length=40, hidden=128, batch=128, heldout_size=4096, data_seed=0
        ),
    }

    def setup(self) -> None:
        if not 0 <= self.lag < self.length:
            raise ValueError(f"rnn: lag must be in [0, length), got lag {self.lag}, length {self.length}")
        g = generator(self.name, "heldout", self.data_seed)
        self.x_heldout, self.y_heldout = delayed_copies(self.heldout_size, self.length, self.symbols, self.lag, g)

    def build_module(self) -> nn.Module:
        return ElmanClassifier(self.symbols, self.hidden, self.lag)

    def roles(self) -> dict[str, str]:
        roles = {n: "vector" if len(s) == 1 else "hidden" for n, s in self.param_shapes().items()}
        roles["rnn.weight_ih_l0"] = "embedding"
        roles["head.weight"] = "head"
        return roles

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.zeros(shape)
        if name == "rnn.weight_ih_l0":
            return torch.randn(shape, generator=gen)
        return torch.randn(shape, generator=gen) / shape[1] ** 0.5

    def train_batches(self, step, seeds, device="cpu", dtype=torch.float32):
        pairs = [
            delayed_copies(self.batch, self.length, self.symbols, self.lag, generator(self.name, "batch", s, step))
            for s in seed_list(seeds)
        ]
        return torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device)

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        return self.x_heldout, self.y_heldout

    def batched_loss(self, params, x, y):
        m, b, t = x.shape
        w_ih, w_hh = params["rnn.weight_ih_l0"], params["rnn.weight_hh_l0"]
        hidden = w_hh.shape[1]
        # W_ih x_t of a one-hot x_t is column x_t of W_ih: one lookup into the members' stacked tables
        table = w_ih.transpose(1, 2).reshape(m * self.symbols, hidden)
        offset = self.symbols * torch.arange(m, device=x.device).view(m, 1, 1)
        bias = (params["rnn.bias_ih_l0"] + params["rnn.bias_hh_l0"]).view(m, 1, 1, hidden)
        inputs = (F.embedding(x + offset, table) + bias).unbind(2)  # t × [M, B, hidden]
        w_hh_t = w_hh.transpose(1, 2)
        h = torch.tanh(inputs[0])
        states = [h]
        for s in range(1, t):
            h = torch.tanh(torch.baddbmm(inputs[s], h, w_hh_t))
            states.append(h)
        scored = torch.stack(states[self.lag :], 2).view(m, b * (t - self.lag), hidden)
        logits = torch.baddbmm(params["head.bias"].unsqueeze(1), scored, params["head.weight"].transpose(1, 2))
        return batched_cross_entropy(logits, y.reshape(m, -1))
