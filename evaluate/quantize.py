"""Post-training weight quantization of trained members: the quantization-robustness objective.

The rule (symmetric, per output channel, round to nearest), for ``b`` bits and
``q = 2^(b−1) − 1`` (127 for int8, 7 for int4):

- every parameter with two or more dimensions (matrices, convolution kernels, embeddings and
  heads) is quantized per output channel, i.e. per index of its first dimension: the channel's
  scale is ``s = max|w| / q`` over the channel's elements, each element becomes
  ``clamp(round(w / s), −q, q) · s`` — ``round`` is round-half-to-even (``torch.round``) — and a
  channel of zeros stays zero;
- vectors (biases, norm gains) stay in full precision, as weight-only int8/int4 schemes keep them.

A member's quantized held-out loss is the task's held-out loss of its quantized parameters;
``evaluate(..., quantize=("int8", "int4"))`` measures it for every member at the end of its run
(two extra held-out passes, no extra training) and reports the median over seeds at the best
learning rate in ``Result.quantized``.
"""

from __future__ import annotations

import torch
from torch import Tensor

FORMATS = {"int8": 8, "int4": 4}
"""Names of the formats and their bits."""


def levels(fmt: str) -> int:
    """The largest integer ``q`` of a format: values are ``−q … q``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; use one of {sorted(FORMATS)}")
    return 2 ** (FORMATS[fmt] - 1) - 1


def quantize_channels(w: Tensor, fmt: str) -> Tensor:
    """``w`` (rows = output channels; any further dimensions are the channel's elements)
    quantized by the module's rule and dequantized back to ``w``'s dtype."""
    q = levels(fmt)
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True) / q
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = torch.clamp(torch.round(flat / safe), -q, q) * safe
    return out.reshape(w.shape)


def quantize_members(params: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Every member's parameters (``[M, *shape]``) quantized by the rule: parameters whose own
    shape has two or more dimensions per output channel of each member, vectors unchanged."""
    out = {}
    for name, p in params.items():
        if p.dim() - 1 < 2:
            out[name] = p
            continue
        m = p.shape[0]
        channels = p.reshape(m * p.shape[1], -1)
        out[name] = quantize_channels(channels, fmt).reshape(p.shape)
    return out
