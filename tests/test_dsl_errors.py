"""Every user error is a DSLError at the right line and column, with a message naming it."""

import pytest

from optdisco.dsl import DSLError, parse

# (program text, line, column, a phrase the message must contain)
BAD = [
    # -- syntax
    ("hyper lr = 1e-3\nw = w - lr * g)\n", 2, 15, "expected end of line"),
    ("hyper lr = 1e-3\nw = w - lr * (g\n", 3, 1, "expected ')'"),
    ("hyper lr = 1e-3\nw = w - lr *\n", 2, 13, "expected an expression"),
    ("hyper lr = 1e-3\nw = w $ g\n", 2, 7, "unexpected character '$'"),
    ("hyper lr = 1e-3\nw = \"g\"\n", 2, 5, "no strings"),
    ("hyper lr = 1e-3\nw == g\n", 2, 3, "expected '='"),
    ("hyper lr\nw = w - g\n", 1, 9, "expected '='"),
    ("hyper lr = x\nw = w - g\n", 1, 12, "a number"),
    ("hyper lr = 1e-3\nstate m: q4 = zeros\nw = w - lr * m\n", 2, 10, "unknown storage 'q4'"),
    ("hyper lr = 1e-3\nw = w - lr * g\nhyper b = 1\n", 3, 1, "before the first statement"),
    ("hyper lr = 1e-3\nif t > 1:\nw = w - lr * g\n", 4, 1, "expected 'end'"),
    ("hyper lr = 1e-3\nw = w - lr * g\nend\n", 3, 1, "without a matching 'if'"),
    ("hyper lr = 1e-3\nelse:\n", 2, 1, "without a matching 'if'"),
    ("hyper lr = 1e-3\nif t > 1\nw = w - g\nend\n", 2, 9, "':'"),
    ("hyper lr = 1e-3\nw = w - lr * g < 1 < 2\n", 2, 20, "do not chain"),
    ("hyper lr = 1e-3\nw = +g\n", 2, 5, "unary '+'"),
    ("hyper lr = 1e-3\nw = w - lr * sign(g,)\n", 2, 21, "expected an expression"),
    ("hyper lr = 1e-3\nw = w - lr * and\n", 2, 14, "keyword 'and'"),
    ("hyper lr = 1e-3\nstate = zeros\nw = w - g\n", 2, 7, "a state name"),
    ("hyper lr = 1e-3\nw = w - lr * g.abs()\n", 2, 15, "unexpected character '.'"),
    ("hyper lr = 1e-3\nw = w - 1e999 * g\n", 2, 9, "out of range"),
    ("hyper lr = 1e-3\nw = w - lr * 1e31 * g\n", 2, 14, "out of range"),
    # -- names and arity
    ("hyper lr = 1e-3\nw = w - lr * u\n", 2, 14, "name 'u' is not defined"),
    ("hyper lr = 1e-3\nw = w - lr * sgn(g)\n", 2, 14, "unknown function 'sgn'"),
    ("hyper lr = 1e-3\nw = w - lr * sign(g, g)\n", 2, 14, "sign takes 1 argument, got 2"),
    ("hyper lr = 1e-3\nw = w - lr * clip(g, 1)\n", 2, 14, "clip takes 3 arguments, got 2"),
    ("hyper lr = 1e-3\nw = w - lr * sign\n", 2, 14, "is a function"),
    ("hyper lr = 1e-3\nw = w - lr * g(1)\n", 2, 14, "is a value, not a function"),
    ("hyper lr = 1e-3\nw = w - lr * zeros\n", 2, 14, "only a state initialiser"),
    ("hyper lr = 1e-3\nhyper lr = 1e-2\nw = w - lr * g\n", 2, 7, "declared twice"),
    ("hyper lr = 1e-3, g = 1\nw = w - lr * g\n", 1, 18, "is an input"),
    ("hyper lr = 1e-3\nstate sign = zeros\nw = w - lr * sign\n", 2, 7, "reserved name"),
    ("hyper beta = 0.9\nw = w - beta * g\n", 1, 7, "declare the learning rate"),
    ("hyper lr = 1e-3\nw = w - lr * orthogonalize(g, 50)\n", 2, 31, "integer constant from 1 to 20"),
    # -- writes to inputs
    ("hyper lr = 1e-3\ng = g * 2\nw = w - lr * g\n", 2, 1, "cannot assign to the input 'g'"),
    ("hyper lr = 1e-3\nt = 2\nw = w - lr * g\n", 2, 1, "cannot assign to the input 't'"),
    ("hyper lr = 1e-3\nlr = 2\nw = w - lr * g\n", 2, 1, "cannot assign to the hyperparameter 'lr'"),
    ("hyper lr = 1e-3\nrows = 2\nw = w - lr * g\n", 2, 1, "cannot assign to the input 'rows'"),
    # -- types and shapes
    ("hyper lr = 1e-3\nw = w - lr * orthogonalize(mean(g))\n", 2, 28, "needs a tensor, got a scalar"),
    ("hyper lr = 1e-3\nw = w - lr * transpose(lr)\n", 2, 24, "needs a tensor, got a scalar"),
    ("hyper lr = 1e-3\nw = w - lr * (g @ g)\n", 2, 17, "inner dimensions differ"),
    ("hyper lr = 1e-3\nw = w - lr * (g + transpose(g))\n", 2, 17, "do not broadcast"),
    ("hyper lr = 1e-3\nw = w - lr * rowmean(g) * colmean(g) * transpose(g)\n", 2, 38, "do not broadcast"),
    ("hyper lr = 1e-3\nw = mean(g)\n", 2, 1, "w must keep the parameter's shape"),
    ("hyper lr = 1e-3\nstate m = zeros\nm = mean(g)\nw = w - lr * m\n", 3, 1, "state 'm' is r×c"),
    ("hyper lr = 1e-3\nw = w - lr * where(g, g, 0)\n", 2, 20, "must be a condition"),
    ("hyper lr = 1e-3\nc = g > 0\nw = w - lr * g\n", 2, 1, "condition cannot be stored"),
    ("hyper lr = 1e-3\nw = w - lr * (g > 0)\n", 2, 17, "needs numbers or tensors"),
    ("hyper lr = 1e-3\nif g > 0:\nw = w - g\nend\n", 2, 6, "use where(cond, a, b)"),
    ("hyper lr = 1e-3\nif t:\nw = w - g\nend\n", 2, 4, "must be a comparison"),
    ("hyper lr = 1e-3\nw = w - lr * eigvecs(g)\n", 2, 22, "needs a square matrix"),
    ("hyper lr = 1e-3\nw = w - lr * mean(lr)\n", 2, 19, "static scalar"),
    ("hyper lr = 1e-3\nw = w - lr * (g and g)\n", 2, 15, "needs conditions"),
    # -- program structure
    ("hyper lr = 1e-3\nstate m = zeros\nw = w - lr * g\n", 2, 7, "state 'm' is never used"),
    ("hyper lr = 1e-3\nstate m = zeros\nm = ema(m, g, 0.9)\nw = w - lr * g\n", 2, 7, "never affects w"),
    ("hyper lr = 1e-3\nu = g\n", 2, 1, "never assigns w"),
    ("hyper lr = 1e-3\n", 1, 1, "no statements"),
    ("hyper lr = 1e-3\nif t > 1:\nu = g\nend\nw = w - lr * u\n", 5, 14, "name 'u' is not defined"),
    # -- hostile input is parsed, never run
    ('hyper lr = 1e-3\nw = __import__("os").system("touch /tmp/pwned")\n', 2, 16, "no strings"),
    ("hyper lr = 1e-3\nw = __import__(os).system(1)\n", 2, 19, "unexpected character '.'"),
    ("hyper lr = 1e-3\nw = __import__(os)\n", 2, 5, "unknown function '__import__'"),
    ("hyper lr = 1e-3\nw = eval(g)\n", 2, 5, "unknown function 'eval'"),
    ("hyper lr = 1e-3\nw = w.__class__\n", 2, 6, "unexpected character '.'"),
]


@pytest.mark.parametrize("text,line,col,phrase", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_bad_program_reports_line_column_and_problem(text, line, col, phrase):
    with pytest.raises(DSLError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.column) == (line, col), f"{err} (wanted {line}:{col})"
    assert phrase in err.message, err.message


def test_corpus_is_large_enough():
    assert len(BAD) >= 40


def test_error_names_the_file(tmp_path):
    f = tmp_path / "broken.opt"
    f.write_text("hyper lr = 1e-3\nw = w - lr * u\n")
    from optdisco.dsl import parse_file

    with pytest.raises(DSLError) as info:
        parse_file(f)
    assert str(info.value) == f"{f}:2:14: name 'u' is not defined"


def test_hostile_input_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f'hyper lr = 1e-3\nw = __import__("os").system("touch {marker}")\n'
    with pytest.raises(DSLError):
        parse(text)
    # a name-only variant passes the tokenizer but dies in the checker; nothing runs either way
    with pytest.raises(DSLError):
        parse("hyper lr = 1e-3\nw = __import__(w)\n")
    assert not marker.exists()


def test_limits_give_clear_errors_not_hangs():
    deep = "hyper lr = 1e-3\nw = " + "(" * 500 + "g" + ")" * 500 + "\n"
    with pytest.raises(DSLError, match="nested too deeply"):
        parse(deep)
    chain = "hyper lr = 1e-3\nw = w" + " - sign(" * 200 + "g" + ")" * 200 + "\n"
    with pytest.raises(DSLError, match="nested too deeply"):
        parse(chain)
    many = "hyper lr = 1e-3\n" + "u = g\n" * 600 + "w = w - lr * u\n"
    with pytest.raises(DSLError, match="too many statements"):
        parse(many)
    with pytest.raises(DSLError, match="too long"):
        parse("#" * 200_001)
    with pytest.raises(DSLError, match="token is too long"):
        parse("hyper lr = 1e-3\nw = w - lr * " + "9" * 100 + " * g\n")
    with pytest.raises(DSLError, match="too deeply"):
        parse("hyper lr = 1e-3\n" + "if t > 1:\n" * 9 + "w = w - g\n" + "end\n" * 9)


def test_cli_check_prints_file_line_col_and_fails(tmp_path, capsys):
    from optdisco.search.cli import main

    good = tmp_path / "good.opt"
    good.write_text("hyper lr = 0.1\nw = w - lr * g\n")
    bad = tmp_path / "bad.opt"
    bad.write_text("hyper lr = 0.1\nw = w - lr * gg\n")
    assert main(["check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:14: name 'gg' is not defined (did you mean 'g'?)" in err


def test_a_flat_sum_of_20000_terms_is_too_long_at_its_own_line():
    src = "hyper lr = 0.1\n\n" + "d = " + " + ".join(["g"] * 20000) + "\nw = w - lr * d\n"
    with pytest.raises(DSLError) as info:
        parse(src)
    e = info.value
    assert (e.line, e.column) == (3, 5)
    assert "too long: 19999 operations chained" in str(e) and "nested too deeply" not in str(e)
    parse("hyper lr = 0.1\nd = " + " + ".join(["g"] * 150) + "\nw = w - lr * d\n")  # long but fine
