"""parse(p.to_text()) == p for generated programs, and Program is immutable and hashable."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optdisco.dsl import Assign, BinOp, Call, Hyper, If, Name, Num, Program, State, Unary, parse
from optdisco.dsl.primitives import PRIMITIVES

NAMES = ["w", "g", "t", "lr", "beta", "m", "u", "rows"]
ARITH = ["+", "-", "*", "/", "**", "%", "@"]
CMP = ["<", "<=", ">", ">=", "==", "!="]
FUNCS = sorted(PRIMITIVES.items())

numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, 1.0, -1.0, 0.5, 1e-8, -3.0, 2.0, 1e20, 123456.789]
)
leaves = st.one_of(numbers.map(Num), st.sampled_from(NAMES).map(Name))


def _extend(children):
    call = st.sampled_from(FUNCS).flatmap(
        lambda kv: st.lists(children, min_size=kv[1].min_args, max_size=kv[1].max_args).map(
            lambda args, name=kv[0]: Call(name, tuple(args))
        )
    )
    return st.one_of(
        st.builds(BinOp, st.sampled_from(ARITH + CMP + ["and", "or"]), children, children),
        st.builds(Unary, st.sampled_from(["-", "not"]), children),
        call,
    )


exprs = st.recursive(leaves, _extend, max_leaves=12)
assigns = st.builds(Assign, st.sampled_from(["w", "m", "u", "v"]), exprs)
stmts = st.recursive(
    assigns,
    lambda inner: st.builds(If, exprs, st.lists(inner, min_size=1, max_size=3).map(tuple),
                            st.lists(inner, max_size=3).map(tuple)),
    max_leaves=5,
)
programs = st.builds(
    Program,
    st.just((Hyper("lr", 1e-3), Hyper("beta", 0.9))),
    st.lists(st.builds(State, st.sampled_from(["m", "v"]), exprs, st.sampled_from(["float", "q8", "uq8"])),
             max_size=2, unique_by=lambda s: s.name).map(tuple),
    st.lists(stmts, min_size=1, max_size=6).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(programs)
def test_roundtrip_of_generated_programs(p):
    text = p.to_text()
    q = parse(text, check=False)
    assert q == p, text
    assert hash(q) == hash(p)
    assert q.to_text() == text


def test_program_is_immutable_and_hashable():
    p = parse("hyper lr = 0.1\nw = w - lr * g\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.body = ()
    assert len({p, parse("hyper lr = 0.1\nw = w - lr * g")}) == 1
    assert p != parse("hyper lr = 0.2\nw = w - lr * g\n")


def test_canonical_text_is_independent_of_spacing_and_parentheses():
    a = parse("hyper lr=1e-3\nstate m=zeros\nm=ema(m,g,0.9)\nw=w-(lr*(sign(m)))\n")
    b = parse("hyper lr = 0.001\nstate m = zeros_like(w)\n\n  m = ema(m, g, 0.9)   # momentum\nw = w - lr * sign(m)\n")
    assert a == b
    assert a.to_text() == "hyper lr = 0.001\nstate m = zeros\nm = ema(m, g, 0.9)\nw = w - lr * sign(m)\n"


def test_precedence_survives_printing():
    cases = {
        "-3 ** 2": Unary("-", BinOp("**", Num(3.0), Num(2.0))),
        "(-3) ** 2": BinOp("**", Num(-3.0), Num(2.0)),
        "2 ** -1": BinOp("**", Num(2.0), Num(-1.0)),
        "a - (b - c)": BinOp("-", Name("a"), BinOp("-", Name("b"), Name("c"))),
        "a - b - c": BinOp("-", BinOp("-", Name("a"), Name("b")), Name("c")),
        "2 ** 3 ** 2": BinOp("**", Num(2.0), BinOp("**", Num(3.0), Num(2.0))),
        "-(3)": Unary("-", Num(3.0)),
    }
    for text, tree in cases.items():
        p = parse(f"hyper lr = 1\nw = {text}\n", check=False)
        assert p.body[0].value == tree, text


def test_doc_comment_is_kept_and_printed():
    p = parse("# Lion — Chen et al. 2023\n# paper: x\nhyper lr = 1e-4\nw = w - lr * sign(g)\n")
    assert p.doc == "Lion — Chen et al. 2023\npaper: x"
    assert p.to_text().startswith("# Lion — Chen et al. 2023\n# paper: x\n")
    assert parse(p.to_text()).doc == p.doc


def test_if_elif_else_blocks_roundtrip():
    text = (
        "hyper lr = 0.1, k = 10\nstate m = zeros\n"
        "if t % k == 0:\n    m = zeros_like(m)\nelif is_hidden and rows > cols:\n    m = m + g\n"
        "else:\n    m = ema(m, g, 0.9)\nend\nw = w - lr * m\n"
    )
    p = parse(text)
    assert p.to_text() == text
    assert isinstance(p.body[0], If) and isinstance(p.body[0].orelse[0], If)
