"""The cost estimate (optdisco.dsl.cost) on programs whose memory traffic is known: an
elementwise step reads w, g and each state and writes w and each state once (4 bytes each per
element in float32), so AdamW moves 7 × 4 = 28 bytes per element and Lion 5 × 4 = 20 — the
floors benchmarks/optimizer_step.py states (4·k·N, k = 7 and 5)."""

import pytest

from optdisco import library
from optdisco.dsl import parse
from optdisco.dsl.cost import step_cost


@pytest.mark.parametrize("name, moved", [("sgd", 12.0), ("lion", 20.0), ("adamw", 28.0)])
def test_elementwise_programs_move_their_floor(name, moved):
    assert step_cost(library.load(name)).bytes_per_element == moved


def test_flops_count_each_elementwise_operation():
    # d = g * g (1), m = ema(m, d, 0.9) (3), lr * m (1), w - … (1): 6 flops per element
    program = parse("hyper lr = 0.1\nstate m = zeros\nd = g * g\nm = ema(m, d, 0.9)\nw = w - lr * m\n")
    assert step_cost(program).flops_per_element == 6.0


def test_matrix_work_costs_more_than_elementwise_work():
    assert step_cost(library.load("muon")).flops_per_element > 100 * step_cost(library.load("adamw")).flops_per_element
