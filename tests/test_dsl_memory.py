"""The memory objective (optdisco.dsl.memory) equals the bytes an exported optimizer actually
allocates: for every library program, the ``nbytes`` of every tensor in ``opt.state`` after one
step on the reference model's parameters, summed and divided by the parameter elements."""


import pytest
import torch

from optdisco import library
from optdisco.dsl import parse, to_optimizer
from optdisco.dsl.memory import REFERENCE_MODEL, param_state_bytes, state_bytes


def allocated_bytes(program) -> tuple[int, int]:
    """(state bytes held by the exported optimizer after one step, parameter elements)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.1) for _, shape, _ in REFERENCE_MODEL]
    groups = [{"params": [p], "role": role} for p, (_, _, role) in zip(params, REFERENCE_MODEL)]
    quantized = any(s.storage != "float" for s in program.states)
    opt = to_optimizer(program, groups, foreach=False if quantized else None)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    if program.uses_hess_diag:
        def closure():
            opt.zero_grad()
            loss = sum(((p * p) * (1 + p.abs())).sum() + (p * g).sum() for p, g in zip(params, grads))
            loss.backward(create_graph=True)
            return loss

        torch.manual_seed(0)
        opt.step(closure)
    elif program.uses_probe:  # the gradients at w, then step(closure) for those at the probe point
        def closure():
            opt.zero_grad()
            loss = sum((p * g).sum() for p, g in zip(params, grads))
            loss.backward()
            return loss

        closure()
        opt.step(closure)
    else:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    total = 0
    for p in params:
        for k, v in opt.state[p].items():
            if k == "seed" and program.uses_random:  # the parameter's noise seed: a Python int, no tensor
                assert isinstance(v, int)
                continue
            assert isinstance(v, torch.Tensor)
            total += v.nbytes
    return total, sum(p.numel() for p in params)


@pytest.mark.parametrize("name", library.names())
def test_memory_objective_equals_the_exported_optimizers_state(name):
    program = library.load(name)
    allocated, elements = allocated_bytes(program)
    assert elements == 460_416
    assert state_bytes(program) * elements == pytest.approx(allocated, rel=0, abs=1e-6)


def test_memory_of_known_programs_by_hand():
    # AdamW: m and v (4 B each) on every element, plus a 4-byte step per parameter (17 parameters)
    assert state_bytes(library.load("adamw")) == (8 * 460_416 + 4 * 17) / 460_416
    # 8-bit Adam on a 128×128 matrix: two states of 16384 one-byte codes and 64 float32 absmaxes
    # each, plus the step; on a 128-vector (below 4096 elements) both stay float32
    adam8 = library.load("adam8bit")
    assert param_state_bytes(adam8, (128, 128), "hidden") == 2 * (16384 + 64 * 4) + 4
    assert param_state_bytes(adam8, (128,), "vector") == 2 * 128 * 4 + 4
    # SGD keeps nothing
    assert state_bytes(library.load("sgd")) == 0


def test_routing_decides_which_states_a_parameter_gets():
    program = parse(
        "hyper lr = 0.1\nstate m = zeros, v = zeros\n"
        "if is_hidden:\n    m = ema(m, g, 0.9)\n    w = w - lr * m\n"
        "else:\n    v = ema(v, g * g, 0.9)\n    w = w - lr * g / (sqrt(v) + 1e-8)\nend\n"
    )
    assert param_state_bytes(program, (64, 32), "hidden") == 64 * 32 * 4
    assert param_state_bytes(program, (64, 32), "embedding") == 64 * 32 * 4
    assert param_state_bytes(program, (7,), "vector") == 7 * 4
    allocated, elements = allocated_bytes(program)
    assert state_bytes(program) * elements == pytest.approx(allocated, rel=0, abs=1e-6)
