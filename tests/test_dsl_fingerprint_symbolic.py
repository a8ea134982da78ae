"""fingerprint is invariant to renaming, order and algebra and sensitive to behaviour; the sympy
bridge simplifies, converts and prints LaTeX."""

import sympy as sp
import torch

from harness import ADAM

from optdisco.dsl import compile_program, fingerprint, parse, simplify, to_latex, update_exprs

# renamed state and hyperparameters, statements reordered, algebra rewritten
ADAM_REWRITTEN = """
hyper lr = 1e-3, b2 = 0.999, b1 = 0.9, epsilon = 1e-8
state second = zeros, first = zeros
second = b2 * second + (1 - b2) * square(g)
first = first * b1 + g - b1 * g
c1 = 1 - b1 ** t
w = w - lr * (first / c1) / (sqrt(second) / sqrt(1 - b2 ** t) + epsilon)
"""


def test_fingerprint_ignores_renaming_order_and_algebra():
    assert fingerprint(parse(ADAM)) == fingerprint(parse(ADAM_REWRITTEN))


def test_fingerprint_ignores_dead_code_and_comments():
    noisy = ADAM.replace("w = w - lr", "# a comment\nunused = exp(g) * 3\nw = w - lr")
    assert fingerprint(parse(noisy)) == fingerprint(parse(ADAM))


def test_fingerprint_changes_when_any_output_changes():
    base = fingerprint(parse(ADAM))
    variants = [
        ADAM.replace("beta2 = 0.999", "beta2 = 0.99"),  # a default
        ADAM.replace("+ eps)", "+ eps * 10)"),  # a constant
        ADAM.replace("sqrt(v", "rsqrt(v"),  # a primitive
        ADAM.replace("(1 - beta1 ** t)", "1"),  # bias correction dropped
        ADAM.replace("w = w - lr * update", "w = w - lr * update\nif t % 500 == 0:\n    w = w * 0.5\nend"),  # late, periodic
        ADAM.replace("w = w - lr * update", "if is_embedding:\n    w = w - lr * g\nelse:\n    w = w - lr * update\nend"),
    ]
    prints = {fingerprint(parse(v)) for v in variants}
    assert base not in prints
    assert len(prints) == len(variants)


def test_fingerprint_is_deterministic():
    p = parse(ADAM)
    assert fingerprint(p) == fingerprint(parse(p.to_text()))


def test_simplify_applies_identities_and_removes_dead_code():
    p = parse("""
hyper lr = 0.1, unused_h = 3
state m = zeros
dead = exp(g) * 2
m = ema(m, g, 0.9)
u = sign(sign(m)) * 1 + 0 * g
w = w - lr * u * (2 - 1)
""")
    s = simplify(p)
    assert s.to_text() == "hyper lr = 0.1, unused_h = 3\nstate m = zeros\nm = ema(m, g, 0.9)\nu = sign(m)\nw = w - lr * u\n"
    assert fingerprint(s) == fingerprint(p)


def test_simplify_folds_constants_and_cancels():
    p = parse("hyper lr = 0.1\nu = (g * 3 - g) / 2\nw = w - lr * u * (1 + 1) / 2\n")
    s = simplify(p)
    assert s.to_text() == "hyper lr = 0.1\nu = g\nw = w - lr * u\n"


def test_simplify_keeps_shapes_valid():
    # g - g is the scalar 0; a state of the parameter's shape cannot take it, so it stays
    p = parse("hyper lr = 0.1\nstate m = zeros\nm = m + (g - g)\nw = w - lr * m\n")
    s = simplify(p)
    assert "state m = zeros" in s.to_text()
    compile_program(s)  # still compiles


def test_update_exprs_are_the_equations():
    w, g, m, lr, beta = sp.symbols("w g m lr beta", real=True)
    ex = update_exprs(parse("hyper lr = 0.1, beta = 0.9\nstate m = zeros\nm = ema(m, g, beta)\nw = w - lr * sign(m)\n"))
    assert sp.simplify(ex["m"] - (beta * m + (1 - beta) * g)) == 0
    assert sp.simplify(ex["w"] - (w - lr * sp.sign(beta * m + (1 - beta) * g))) == 0


def test_latex_reads_like_the_paper():
    tex = to_latex(parse(ADAM))
    assert tex.startswith("\\begin{aligned}") and tex.endswith("\\end{aligned}")
    assert "m \\leftarrow \\beta_{1} m" in tex
    assert "\\theta \\leftarrow" in tex and "\\eta" in tex and "\\epsilon" in tex


def test_simplified_program_behaves_the_same_numerically():
    p = parse("hyper lr = 0.01\nstate m = zeros\nm = 0.5 * m + 0.5 * g + 0 * m\nw = w - lr * (m * 2) / 2\n")
    s = simplify(p)
    f, h = compile_program(p), compile_program(s)
    gen = torch.Generator().manual_seed(0)
    w1 = w2 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    s1 = s2 = None
    for t in range(1, 20):
        g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        w1, s1 = f(w1, g, s1, None, t)
        w2, s2 = h(w2, g, s2, None, t)
    torch.testing.assert_close(w1, w2, rtol=0, atol=1e-14)
