"""A byte-level transformer language model on text available offline (by default, Python's own sources)."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Task, batched_cross_entropy, generator, seed_list
from .registry import register

VOCAB = 256
SPLIT_BLOCK = 4096  # the corpus is cut into blocks of this many bytes; every 10th is held out


def stdlib_corpus(max_bytes: int | None = None) -> tuple[bytes, list[str]]:
    """The running Python's top-level ``Lib/*.py`` files, sorted by name, joined by newlines.

    Deterministic for a given Python installation (it differs between Python versions: compare
    ``LanguageModel.corpus_sha256``). Stops after ``max_bytes`` bytes.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, names, total = [], [], 0
    for path in sorted(p for p in root.glob("*.py") if p.is_file()):
        data = path.read_bytes()
        parts.append(data)
        names.append(path.name)
        total += len(data) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    text = b"\n".join(parts)
    return (text if max_bytes is None else text[:max_bytes]), names


def split_corpus(text: bytes) -> tuple[bytes, bytes]:
    """``(train, held-out)``: blocks of ``SPLIT_BLOCK`` bytes, block ``k`` held out when ``k % 10 == 9``."""
    blocks = [text[i : i + SPLIT_BLOCK] for i in range(0, len(text), SPLIT_BLOCK)]
    train = b"".join(b for k, b in enumerate(blocks) if k % 10 != 9)
    held = b"".join(b for k, b in enumerate(blocks) if k % 10 == 9)
    return train, held


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP (no biases)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width, bias=False)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.out = nn.Linear(4 * width, width, bias=False)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteTransformer(nn.Module):
    """GPT-style decoder over bytes: token and position embeddings, blocks, final norm, linear head."""

    def __init__(self, context: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.wte(tokens) + self.wpe.weight[: tokens.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _bmm_t(x: Tensor, w: Tensor) -> Tensor:
    """Per-member ``x @ w.T`` for ``x [M, ..., in]`` and ``w [M, out, in]``."""
    m, inner = x.shape[0], x.shape[-1]
    return torch.bmm(x.reshape(m, -1, inner), w.transpose(1, 2)).view(*x.shape[:-1], w.shape[1])


def _norm(x: Tensor, gain: Tensor) -> Tensor:
    """LayerNorm without bias, one gain vector ``[M, width]`` per member."""
    shape = (gain.shape[0],) + (1,) * (x.dim() - 2) + (gain.shape[1],)
    return F.layer_norm(x, x.shape[-1:]) * gain.view(shape)


@register
class LanguageModel(Task):
    """Next-byte prediction with a small GPT-style transformer on real text, offline.

    What it measures: training a transformer (attention, LayerNorm, embeddings, MLPs) on natural
    data — the setting where optimizer differences matter most in practice. The corpus is, by
    default, the running Python's top-level standard-library sources (``stdlib_corpus``), or the
    file ``text_path``; its first ``max_bytes`` bytes are cut into 4 KiB blocks and every 10th
    block is held out. Each member's batch is ``batch`` windows of ``context + 1`` bytes at random
    offsets drawn from ``(seed, step)``. Held-out loss: mean cross-entropy (nats per byte) over
    ``heldout_windows`` windows evenly spaced over the held-out text. ``corpus_sha256`` identifies
    the corpus actually used.

    Model: byte embeddings ``wte`` and learned positions ``wpe`` (role "embedding"), ``depth``
    pre-LayerNorm blocks with ``heads`` attention heads and a 4× GELU MLP, no biases, a final
    LayerNorm and an untied ``head`` (role "head"); LayerNorm gains are "vector", the other
    matrices "hidden". Initialisation: embeddings N(0, 1) (positions N(0, 0.1²)), matrices
    N(0, 1/fan_in), residual output projections further divided by sqrt(2·depth), gains 1.

    Sizes (16 members, 1 torch thread, shared 2-core CPU): proxy context 32, width 32, depth 2,
    4 heads (42,144 parameters), batch 8, 200 steps on the first MiB — about 7 s; target context
    64, width 64, depth 3, 4 heads (184,768 parameters), batch 16, 2,000 steps on the whole
    top-level standard library (4.7 MB on CPython 3.11) — about 13 minutes (a GPU is better).
    """

    name = "lm"
    sizes = {
        "proxy": dict(
            steps=200, context=32, width=32, depth=2, heads=4, batch=8,
            text_path=None, max_bytes=1 << 20, heldout_windows=128,
        ),
        "target": dict(
            steps=2000, context=64, width=64, depth=3, heads=4, batch=16,
            text_path=None, max_bytes=None, heldout_windows=512,
        ),
    }
    eval_chunk = 64

    def setup(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"lm: width {self.width} is not a multiple of heads {self.heads}")
        if self.text_path is None:
            text, self.corpus_files = stdlib_corpus(self.max_bytes)
        else:
            text = Path(self.text_path).read_bytes()
            text = text if self.max_bytes is None else text[: self.max_bytes]
            self.corpus_files = [str(self.text_path)]
        self.corpus_sha256 = hashlib.sha256(text).hexdigest()
        train, held = split_corpus(text)
        if len(train) <= self.context + 1 or len(held) <= self.context + 1:
            raise ValueError(
                f"lm: text of {len(text)} bytes is too short for context {self.context} "
                f"(needs more than {10 * SPLIT_BLOCK} bytes so that a block is held out)"
            )
        self.train_bytes = torch.frombuffer(bytearray(train), dtype=torch.uint8)
        held_t = torch.frombuffer(bytearray(held), dtype=torch.uint8)
        starts = torch.linspace(0, len(held) - self.context - 1, self.heldout_windows).long()
        windows = held_t[starts[:, None] + torch.arange(self.context + 1)].long()
        self.x_heldout, self.y_heldout = windows[:, :-1], windows[:, 1:]

    def build_module(self) -> nn.Module:
        return ByteTransformer(self.context, self.width, self.depth, self.heads)

    def roles(self) -> dict[str, str]:
        def role(name: str, shape: tuple[int, ...]) -> str:
            if len(shape) == 1:
                return "vector"
            if name in ("wte.weight", "wpe.weight"):
                return "embedding"
            return "head" if name == "head.weight" else "hidden"

        return {n: role(n, s) for n, s in self.param_shapes().items()}

    def init_tensor(self, name, shape, gen):
        if len(shape) == 1:
            return torch.ones(shape)
        if name == "wte.weight":
            return torch.randn(shape, generator=gen)
        if name == "wpe.weight":
            return 0.1 * torch.randn(shape, generator=gen)
        std = shape[1] ** -0.5
        if name.endswith((".proj.weight", ".out.weight")):
            std /= (2 * self.depth) ** 0.5
        return std * torch.randn(shape, generator=gen)

    def train_batches(self, step, seeds, device="cpu", dtype=torch.float32):
        offsets = torch.arange(self.context + 1)
        windows = []
        for seed in seed_list(seeds):
            g = generator(self.name, "batch", seed, step)
            starts = torch.randint(0, len(self.train_bytes) - self.context, (self.batch,), generator=g)
            windows.append(self.train_bytes[starts[:, None] + offsets])
        w = torch.stack(windows).long().to(device)
        return w[..., :-1], w[..., 1:]

    def heldout_batch(self) -> tuple[Tensor, Tensor]:
        return self.x_heldout, self.y_heldout

    def batched_loss(self, params, x, y):
        m, b, t = x.shape
        w = self.width
        hd = w // self.heads
        wte = params["wte.weight"]
        flat = x + VOCAB * torch.arange(m, device=x.device).view(m, 1, 1)
        h = F.embedding(flat, wte.reshape(m * VOCAB, w)) + params["wpe.weight"][:, None, :t]
        # attention over [M·B·heads] (T × hd) matrices; the scale and the causal mask (an additive
        # −inf above the diagonal) fused into one baddbmm: ~15% faster than matmul, mask, scale
        causal = torch.full((t, t), float("-inf"), device=x.device, dtype=h.dtype).triu(1)
        for i in range(self.depth):
            p = f"blocks.{i}."
            qkv = _bmm_t(_norm(h, params[p + "ln1.weight"]), params[p + "qkv.weight"])
            qkv = qkv.view(m * b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.reshape(3, m * b * self.heads, t, hd).unbind(0)
            scores = torch.baddbmm(causal, q, k.transpose(1, 2), alpha=hd**-0.5)
            a = torch.bmm(scores.softmax(-1), v).view(m, b, self.heads, t, hd)
            h = h + _bmm_t(a.transpose(2, 3).reshape(m, b, t, w), params[p + "proj.weight"])
            f = F.gelu(_bmm_t(_norm(h, params[p + "ln2.weight"]), params[p + "fc.weight"]))
            h = h + _bmm_t(f, params[p + "out.weight"])
        logits = _bmm_t(_norm(h, params["ln_f.weight"]), params["head.weight"])
        return batched_cross_entropy(logits, y)
