"""Quantized state storage (``state m: q8``, ``v: uq8``): runtime.q_store / q_load.

The code book is checked against bitsandbytes' own ``create_dynamic_map``; the rounding against a
plain nearest-code search written here; the block layout against bitsandbytes' block-wise
quantizer (whose CPU search is approximate: see ``test_bitsandbytes_cpu_search_is_approximate``).
"""

from __future__ import annotations

import pytest
import torch

from optdisco.dsl import compile_program, parse
from optdisco.dsl import runtime as R

bnbf = pytest.importorskip("bitsandbytes.functional")


def nearest_codes(x, code, block=256):
    """Plain block-wise nearest-code rounding (lowest index on ties), x of shape [M, n]."""
    members, n = x.shape
    flat = torch.nn.functional.pad(x, (0, (-n) % block)).reshape(members, -1, block)
    absmax = flat.abs().amax(-1, keepdim=True)
    normed = flat / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    idx = (normed.unsqueeze(-1) - code.to(x.dtype)).abs().argmin(-1)  # argmin: first minimum
    return idx.reshape(members, -1)[:, :n], absmax.squeeze(-1)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_is_bitsandbytes_map(signed):
    ours = R.dynamic_map(signed)
    assert ours.dtype == torch.float32 and ours.numel() == 256
    assert torch.equal(ours, bnbf.create_dynamic_map(signed=signed))
    assert torch.all(ours[1:] > ours[:-1])  # sorted, no duplicates
    assert ours[-1] == 1.0 and (0.0 in ours.tolist())


@pytest.mark.parametrize("fmt", ["q8", "uq8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [256, 1000, 4096 + 17])
def test_encode_is_nearest_code_per_block(fmt, dtype, n):
    gen = torch.Generator().manual_seed(n)
    x = (torch.randn(2, n, generator=gen, dtype=dtype) ** 3) * torch.tensor([[1.0], [1e-4]], dtype=dtype)
    if fmt == "uq8":
        x = x.abs()
    x[:, :256] = 0.0  # an all-zero block
    codes, absmax = R.q_encode(x, fmt)
    want_codes, want_absmax = nearest_codes(x, R.dynamic_map(fmt == "q8"))
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert torch.equal(codes.long(), want_codes)
    assert torch.equal(absmax, want_absmax) and absmax.dtype == dtype
    decoded = R.q_decode(codes, absmax, fmt)
    assert decoded.dtype == dtype and torch.all(decoded[:, :256] == 0)
    # error at most half the widest code gap times the block's absmax
    code = R.dynamic_map(fmt == "q8").to(dtype)
    half_gap = float((code[1:] - code[:-1]).max()) / 2
    scale = absmax.repeat_interleave(256, dim=1)[:, :n]
    assert torch.all((decoded - x).abs() <= (half_gap + 1e-6) * scale)  # + float32 rounding


def test_ties_go_to_the_lower_code():
    code = R.dynamic_map(True).double()
    mids = (code[:-1] + code[1:]) / 2
    x = torch.cat([torch.ones(1, dtype=torch.float64), mids[:255]]).reshape(1, -1)  # absmax 1
    codes, _ = R.q_encode(x, "q8")
    assert torch.equal(codes[0, 1:].long(), torch.arange(255))


def test_unsigned_storage_clamps_negative_values_to_zero():
    x = torch.tensor([[-0.5, 1.0, 0.25]])
    codes, absmax = R.q_encode(x, "uq8")
    assert R.q_decode(codes, absmax, "uq8")[0, 0] == 0.0


def test_decode_matches_bitsandbytes_dequantize():
    code = bnbf.create_dynamic_map(signed=True)
    x = torch.randn(5000)
    q, qstate = bnbf.quantize_blockwise(x, code=code, blocksize=256)
    theirs = bnbf.dequantize_blockwise(q, absmax=qstate.absmax, code=code, blocksize=256)
    ours = R.q_decode(q.reshape(1, -1), qstate.absmax.reshape(1, -1), "q8").reshape(-1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("signed", [True, False])
def test_bitsandbytes_cpu_search_is_approximate(signed):
    """Where we depart from bitsandbytes 0.50.2 on the CPU, and by how much: same absmax, codes
    equal to the nearest for almost all elements above 1e-2·absmax and never more than one code
    away there; below about 2e-5·absmax its search does not find the small codes at all."""
    fmt = "q8" if signed else "uq8"
    code = bnbf.create_dynamic_map(signed=signed)
    gen = torch.Generator().manual_seed(0)
    n = 256 * 400
    mag = 10 ** (torch.rand(n, generator=gen) * 8 - 8)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if signed else torch.ones(n)
    x = mag * sign
    x[::256] = 1.0  # absmax 1 in every block
    q, qstate = bnbf.quantize_blockwise(x, code=code, blocksize=256)
    ours, absmax = R.q_encode(x.reshape(1, -1), fmt)
    ours, q = ours.reshape(-1).long(), q.long()
    assert torch.equal(absmax.reshape(-1), qstate.absmax)
    large = mag >= 1e-2
    assert (ours[large] != q[large]).float().mean() < 0.01
    assert (ours[large] - q[large]).abs().max() <= 1
    tiny = mag < 1e-5
    assert (ours[tiny] != q[tiny]).float().mean() > 0.9


ADAM8 = """
hyper lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8
state m: q8 = zeros, v: uq8 = zeros
m = ema(m, g, beta1)
v = ema(v, g * g, beta2)
w = w - lr * (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)
"""


def test_step_function_stores_codes_and_absmax_and_reads_them_back():
    fn = compile_program(parse(ADAM8))
    shape = (48, 96)  # 4608 elements: quantized
    w = torch.randn(shape)
    g = torch.randn(shape)
    w1, s1 = fn(w, g, None, None, 1)
    assert set(s1) == {"m.codes", "m.absmax", "v.codes", "v.absmax"}
    assert s1["m.codes"].dtype == torch.uint8 and s1["m.codes"].shape == (1, 48, 96)
    assert s1["m.absmax"].shape == (1, 4608 // 256)
    # the step used the unquantized new moments; the stored ones decode to their nearest codes
    m = 0.1 * g
    assert torch.allclose(R.q_load(s1, "m", "q8").reshape(shape), m, rtol=0, atol=0.01 * float(m.abs().max()))
    w2, s2 = fn(w1, g, s1, None, 2)  # reads the codes back
    m_prev = R.q_decode(s1["m.codes"], s1["m.absmax"], "q8").reshape(shape)
    v_prev = R.q_decode(s1["v.codes"], s1["v.absmax"], "uq8").reshape(shape)
    m2, v2 = 0.9 * m_prev + 0.1 * g, 0.999 * v_prev + 0.001 * g * g
    want = w1 - 1e-2 * (m2 / (1 - 0.9**2)) / (torch.sqrt(v2 / (1 - 0.999**2)) + 1e-8)
    assert torch.allclose(w2, want, rtol=0, atol=1e-6)


def test_small_tensors_keep_unquantized_state():
    fn = compile_program(parse(ADAM8))
    w, g = torch.randn(10, 20, dtype=torch.float64), torch.randn(10, 20, dtype=torch.float64)
    _, s = fn(w, g, None, None, 1)
    assert set(s) == {"m.full", "v.full"}
    assert torch.equal(s["m.full"].reshape(10, 20), (1 - 0.9) * g)


def test_missing_quantized_entry_is_a_clear_error():
    fn = compile_program(parse(ADAM8))
    w = torch.randn(64, 64)
    _, s = fn(w, w, None, None, 1)
    del s["v.absmax"]
    with pytest.raises(ValueError, match="quantized state 'v'"):
        fn(w, w, s, None, 2)
