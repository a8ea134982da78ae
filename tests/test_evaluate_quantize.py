"""Post-training weight quantization (optdisco.evaluate.quantize) follows its documented rule:
symmetric, per output channel, round half to even, vectors untouched; and evaluate(...,
quantize=...) reports the held-out loss of the quantized trained weights."""

import math

import pytest
import torch

from optdisco.dsl import compile_program
from optdisco.evaluate import evaluate
from optdisco.evaluate.quantize import quantize_channels, quantize_members
from optdisco.evaluate.runner import run_members
from optdisco.proxies import get


def test_int4_rule_on_a_hand_computed_example():
    w = torch.tensor([[0.5, -1.0, 0.26, 0.0],
                      [0.3, 0.1, -0.05, 0.15],
                      [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # row 0: scale 1/7; 0.5·7 = 3.5 rounds to 4 (half to even), −1·7 = −7, 0.26·7 = 1.82 → 2
    # row 1: scale 0.3/7; 0.1/(0.3/7) = 2.33 → 2, −0.05/(0.3/7) = −1.17 → −1, 0.15/(0.3/7) = 3.5 → 4
    # row 2: all zeros stays zero
    expected = torch.tensor([[4 / 7, -1.0, 2 / 7, 0.0],
                             [0.3, 2 * 0.3 / 7, -0.3 / 7, 4 * 0.3 / 7],
                             [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(quantize_channels(w, "int4"), expected, rtol=0, atol=1e-15)


def test_int8_rule_on_a_hand_computed_example():
    w = torch.tensor([[2.54, -1.0, 0.01]], dtype=torch.float64)
    # scale 2.54/127 = 0.02; −1/0.02 = −50; 0.01/0.02 = 0.5 → 0 (half to even)
    expected = torch.tensor([[2.54, -50 * 0.02, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(quantize_channels(w, "int8"), expected, rtol=0, atol=1e-14)


def test_members_are_quantized_apart_and_vectors_are_kept():
    w = torch.tensor([[[1.0, 0.2]], [[10.0, 0.2]]])  # two members of a 1×2 matrix
    b = torch.tensor([[0.123], [0.456]])
    out = quantize_members({"w": w, "b": b}, "int4")
    torch.testing.assert_close(out["w"][0], torch.tensor([[1.0, 1 / 7]]))  # 0.2·7 = 1.4 → 1
    torch.testing.assert_close(out["w"][1], torch.tensor([[10.0, 0.0]]))  # 0.2·0.7 = 0.14 → 0
    assert out["b"] is b


def test_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="int3"):
        evaluate("sgd", "quadratic", quantize=("int3",))


def test_evaluate_reports_the_held_out_loss_of_the_quantized_trained_weights():
    task = get("quadratic")
    lr = 0.05
    res = evaluate("sgd", task, lrs=[lr], seeds=(0,), extend=False, quantize=("int8", "int4"))
    # the same member trained directly, its final weights quantized by hand, and the quadratic's
    # closed-form excess risk 0.5/outputs · Σ ((W − W*) Q)² h written out here
    run = run_members(compile_program(res.program), task, [lr], [0], task.steps)
    w = run.params["weight"][0].double()
    rows = []
    for row in w:
        s = float(row.abs().max()) / 7
        rows.append([max(-7, min(7, round(float(x) / s))) * s for x in row])
    wq = torch.tensor(rows, dtype=torch.float64)
    diff = (wq - task.optimum.double()) @ task.rotation.double()
    by_hand = 0.5 * float((diff ** 2 * task.eigenvalues.double()).sum()) / task.outputs
    assert res.quantized["int4"] == pytest.approx(by_hand, rel=1e-4)
    assert res.members[0].quantized_loss["int4"] == res.quantized["int4"]
    # int8 is within 0.1% of full precision here; int4 loses more
    assert res.quantized["int8"] == pytest.approx(res.fitness, rel=1e-3)
    assert res.quantized["int4"] > res.quantized["int8"]
    assert math.isfinite(res.quantized["int8"])
