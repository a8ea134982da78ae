"""The Program data type: an immutable, hashable syntax tree of an optimizer.

Source positions ride along for error messages but take no part in equality or hashing, so
``parse(p.to_text()) == p`` holds although the canonical text moves things around.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

_POS = dict(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Num:
    value: float
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


@dataclass(frozen=True)
class Name:
    id: str
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple["Expr", ...]
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


@dataclass(frozen=True)
class BinOp:
    """Arithmetic ``+ - * / ** @ %``, comparisons ``< <= > >= == !=`` and logic ``and or``."""

    op: str
    left: "Expr"
    right: "Expr"
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


@dataclass(frozen=True)
class Unary:
    """Unary minus ``-`` or logical ``not``."""

    op: str
    operand: "Expr"
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


Expr = Union[Num, Name, Call, BinOp, Unary]


@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


@dataclass(frozen=True)
class If:
    """A branch on a condition known before the step runs: ``t``, hyperparameters and the
    parameter's shape or role. Data-dependent choices use ``where`` instead."""

    cond: Expr
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...] = ()
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


Stmt = Union[Assign, If]


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter and its default. ``tune`` = ``(lo, hi)`` declares it tuned by the
    evaluation protocol besides ``lr``, log-uniformly within that range (``hyper r = 0.015
    tune(0.003, 0.3)``)."""

    name: str
    default: float
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)
    tune: tuple[float, float] | None = None


@dataclass(frozen=True)
class State:
    """Per-parameter state. ``init`` is evaluated once, at the first step, over ``w`` and ``g``;
    ``storage`` is ``"float"`` or a quantized format (``"q8"`` signed, ``"uq8"`` unsigned).

    ``storage == "global"`` (declared ``global d = d0``) is a model-wide scalar instead: one value
    per model (per exported optimizer, over all its groups; per member in evaluation), carried across steps, started from constants
    and hyperparameters."""

    name: str
    init: Expr
    storage: str = "float"
    line: int = field(default=0, **_POS)
    col: int = field(default=0, **_POS)


GLOBAL = "global"
"""The storage of a model-wide state (``global d = d0``)."""


@dataclass(frozen=True)
class Program:
    hypers: tuple[Hyper, ...]
    states: tuple[State, ...]
    body: tuple[Stmt, ...]
    doc: str = field(default="", compare=False, hash=False)

    # -- convenience -----------------------------------------------------------------------
    @property
    def hyper_defaults(self) -> dict[str, float]:
        return {h.name: h.default for h in self.hypers}

    @property
    def tuned(self) -> dict[str, tuple[float, float]]:
        """Hyperparameters besides ``lr`` that the protocol tunes, with their ranges."""
        return {h.name: h.tune for h in self.hypers if h.tune is not None}

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    def to_text(self) -> str:
        from .printer import to_text

        return to_text(self)

    def __str__(self) -> str:
        return self.to_text()

    @property
    def param_states(self) -> tuple[State, ...]:
        """The per-parameter states (model-wide ones excluded)."""
        return tuple(s for s in self.states if s.storage != GLOBAL)

    @property
    def global_states(self) -> tuple[State, ...]:
        """The model-wide scalar states (``global d = d0``)."""
        return tuple(s for s in self.states if s.storage == GLOBAL)

    @property
    def model_wide(self) -> bool:
        """The program computes model-wide values (global reductions or global state): its step
        runs over all parameters of a group at once."""
        from .primitives import GLOBAL as GLOBAL_FNS

        return bool(self.global_states) or any(isinstance(e, Call) and e.fn in GLOBAL_FNS for e in walk_exprs(self))

    @property
    def uses_hess_diag(self) -> bool:
        return any(isinstance(e, Name) and e.id == "hess_diag" for e in walk_exprs(self))

    @property
    def uses_probe(self) -> bool:
        """The program reads the gradient at a point it computes (``probe = …``, ``g_probe``)."""
        return any(isinstance(s, Assign) and s.target == PROBE for s in self.body)

    @property
    def has_eval_weights(self) -> bool:
        """The program says which weights a model is evaluated at (``w_eval = …``)."""
        return any(isinstance(s, Assign) and s.target == W_EVAL for s in self.body)

    @property
    def uses_random(self) -> bool:
        """The program draws seeded noise (randn_like, rademacher_like)."""
        return any(isinstance(e, Call) and e.fn in ("randn_like", "rademacher_like") for e in walk_exprs(self))

    @property
    def uses_modes(self) -> bool:
        """The program works on modes of the parameter's real shape (mode_gram, mode_mul, eye_mode)."""
        return any(isinstance(e, Call) and e.fn in ("mode_gram", "mode_mul", "eye_mode") for e in walk_exprs(self))

    def with_defaults(self, **defaults: float) -> "Program":
        """A copy whose hyperparameter defaults are replaced (names must exist)."""
        known = self.hyper_defaults
        for k in defaults:
            if k not in known:
                raise KeyError(f"program has no hyperparameter {k!r}; it has {sorted(known)}")
        hypers = tuple(Hyper(h.name, float(defaults.get(h.name, h.default)), h.line, h.col, h.tune) for h in self.hypers)
        return Program(hypers, self.states, self.body, self.doc)


def sub_exprs(e: Expr) -> Iterator[Expr]:
    """The expression and all its sub-expressions, pre-order."""
    yield e
    if isinstance(e, Call):
        for a in e.args:
            yield from sub_exprs(a)
    elif isinstance(e, BinOp):
        yield from sub_exprs(e.left)
        yield from sub_exprs(e.right)
    elif isinstance(e, Unary):
        yield from sub_exprs(e.operand)


def walk_stmts(body: tuple[Stmt, ...]) -> Iterator[Stmt]:
    """Every statement, nested ones included, in source order."""
    for s in body:
        yield s
        if isinstance(s, If):
            yield from walk_stmts(s.then)
            yield from walk_stmts(s.orelse)


def walk_exprs(p: Program) -> Iterator[Expr]:
    """Every expression node of the program: state initialisers, conditions, right-hand sides."""
    for s in p.states:
        yield from sub_exprs(s.init)
    for st in walk_stmts(p.body):
        yield from sub_exprs(st.cond if isinstance(st, If) else st.value)


PROBE, G_PROBE, W_EVAL = "probe", "g_probe", "w_eval"
"""``probe = x`` names the point where the gradient of the step's batch is taken again, read as
``g_probe``; ``w_eval = x`` (the last statement) gives the weights a model is evaluated at."""


def names_in(e: Expr) -> set[str]:
    """The names an expression reads; reading ``g_probe`` reads ``probe`` (the point it is taken at)."""
    names = {x.id for x in sub_exprs(e) if isinstance(x, Name)}
    if G_PROBE in names:
        names.add(PROBE)
    return names


def reaching(p: Program, roots, read=names_in) -> set[str]:
    """The names whose value can reach one of ``roots`` in this or a later step, the roots
    included (flow-insensitive, so it never misses a dependency: through statements, if-conditions
    and state initialisers). ``read(e)`` gives the names an expression passes on."""
    deps: dict[str, set[str]] = {}

    def visit(body, ctx: set[str]):
        for s in body:
            if isinstance(s, If):
                c = read(s.cond)
                visit(s.then, ctx | c)
                visit(s.orelse, ctx | c)
            else:
                deps.setdefault(s.target, set()).update(read(s.value) | ctx)

    visit(p.body, set())
    for st in p.states:
        deps.setdefault(st.name, set()).update(read(st.init))
    live: set[str] = set()
    todo = list(roots)
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo.extend(deps.get(n, ()))
    return live


def influences_w(p: Program) -> set[str]:
    """Names whose value can reach w (or the evaluation weights w_eval) in this or a later step."""
    return reaching(p, ["w", W_EVAL])
