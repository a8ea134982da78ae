"""The language's command-line tools: check and show."""

from optdisco.search.cli import main

ADAM = """# Adam
hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8
state m = zeros, v = zeros
m = ema(m, g, beta1)
v = ema(v, g * g, beta2)
w = w - lr * (m / (1 - beta1 ** t)) / (sqrt(v / (1 - beta2 ** t)) + eps)
"""


def test_show_prints_canonical_text_latex_python_and_sympy(tmp_path, capsys):
    f = tmp_path / "adam.opt"
    f.write_text(ADAM)
    assert main(["show", str(f)]) == 0
    assert capsys.readouterr().out == ADAM.replace("1e-3", "0.001").replace("1e-8", "1e-08")
    assert main(["show", str(f), "--latex"]) == 0
    assert "\\leftarrow" in capsys.readouterr().out
    assert main(["show", str(f), "--python"]) == 0
    assert "def step(" in capsys.readouterr().out
    assert main(["show", str(f), "--sympy"]) == 0
    out = capsys.readouterr().out
    assert "m' = beta1*m + g*(1 - beta1)" in out


def test_show_reports_errors_with_location(tmp_path, capsys):
    f = tmp_path / "bad.opt"
    f.write_text("hyper lr = 1\nw = w - lr * sqrt(g, g)\n")
    assert main(["show", str(f)]) == 2  # bad input: exit 2, as every command
    assert f"{f}:2:14: sqrt takes 1 argument, got 2" in capsys.readouterr().err
