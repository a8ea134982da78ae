"""Text → Program. A hand-written tokenizer and recursive-descent parser; nothing is evaluated.

Grammar (newlines end statements; inside parentheses they are ignored; ``#`` starts a comment)::

    program   := (decl | stmt)*
    decl      := 'hyper' NAME '=' ['-'] NUMBER [tune] (',' NAME '=' ['-'] NUMBER [tune])*
    tune      := 'tune' '(' NUMBER ',' NUMBER ')'      (tuned by the protocol in that range)
               | 'state' NAME [':' STORAGE] '=' expr (',' NAME [':' STORAGE] '=' expr)*
               | 'global' NAME '=' expr (',' NAME '=' expr)*    (model-wide scalar state)
    stmt      := NAME '=' expr
               | 'if' expr ':' stmt* ('elif' expr ':' stmt*)* ['else' ':' stmt*] 'end'
    expr      := or ;  or := and ('or' and)* ;  and := not ('and' not)* ;  not := 'not' not | cmp
    cmp       := sum [('<'|'<='|'>'|'>='|'=='|'!=') sum]
    sum       := term (('+'|'-') term)* ;  term := unary (('*'|'/'|'@'|'%') unary)*
    unary     := '-' unary | power ;  power := atom ['**' unary]
    atom      := NUMBER | NAME | NAME '(' [expr (',' expr)*] ')' | '(' expr ')'

In a state declaration ``zeros`` and ``ones`` mean ``zeros_like(w)`` and ``ones_like(w)``.
"""

from __future__ import annotations

import math
import re

from .errors import DSLError
from .primitives import BINARY_OPERATORS, operators, operators_at
from .program import GLOBAL, Assign, BinOp, Call, Expr, Hyper, If, Name, Num, Program, State, Stmt, Unary

# Limits that keep hostile or runaway input from hanging or crashing the parser.
MAX_CHARS = 100_000
MAX_STATEMENTS = 500
MAX_DEPTH = 60
MAX_TREE_DEPTH = 200
"""Operations one expression may chain (``g + g + … + g`` nests left to right): a longer chain
would exhaust Python's recursion in the checker and compiler."""
MAX_TOKEN = 64
MAX_CONSTANT = 1e30

KEYWORDS = {"hyper", "state", "global", "if", "elif", "else", "end", *operators("logic"), "not"}
_COMPARE = operators("compare")
_SUM = operators_at(BINARY_OPERATORS["+"].prec)
_PRODUCT = operators_at(BINARY_OPERATORS["*"].prec)
STORAGES = ("float", "q8", "uq8")

_TOKEN = re.compile(
    r"(?P<ws>[ \t\r]+)|(?P<comment>#[^\n]*)|(?P<nl>\n)"
    r"|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|<=|>=|==|!=|[-+*/@%()<>=,:])"
)


class Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Token({self.kind}, {self.text!r}, {self.line}:{self.col})"


def _describe(tok: Token) -> str:
    if tok.kind == "nl":
        return "end of line"
    if tok.kind == "eof":
        return "end of input"
    return repr(tok.text)


def tokenize(text: str) -> tuple[list[Token], str]:
    """Tokens of ``text`` and its leading comment block (the program's doc)."""
    if len(text) > MAX_CHARS:
        raise DSLError(f"program is too long ({len(text)} characters; the limit is {MAX_CHARS})", 1, 1)
    tokens: list[Token] = []
    doc_lines: list[str] = []
    in_doc = True
    line, line_start, pos, depth = 1, 0, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            ch = text[pos]
            hint = ""
            if ch in "\"'":
                hint = " (the language has no strings)"
            elif ch in "[]{}.;":
                hint = " (not part of the language)"
            raise DSLError(f"unexpected character {ch!r}{hint}", line, col)
        kind = m.lastgroup
        s = m.group()
        if kind == "comment":
            if in_doc:
                doc_lines.append(s[2:].rstrip() if s.startswith("# ") else s[1:].rstrip())
        elif kind == "nl":
            if depth == 0 and tokens and tokens[-1].kind != "nl":
                tokens.append(Token("nl", s, line, col))
            line += 1
            line_start = pos + 1
        elif kind != "ws":
            in_doc = False
            if len(s) > MAX_TOKEN:
                raise DSLError(f"token is too long ({len(s)} characters; the limit is {MAX_TOKEN})", line, col)
            if kind == "op" and s == "(":
                depth += 1
            elif kind == "op" and s == ")":
                depth = max(0, depth - 1)
            if kind == "name" and s in KEYWORDS:
                kind = "kw"
            tokens.append(Token(kind, s, line, col))
        pos = m.end()
    if not tokens or tokens[-1].kind != "nl":
        tokens.append(Token("nl", "", line, pos - line_start + 1))
    tokens.append(Token("eof", "", line, pos - line_start + 1))
    return tokens, "\n".join(doc_lines).strip("\n")


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.toks = tokens
        self.i = 0
        self.depth = 0
        self.n_statements = 0

    # -- token helpers ---------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def expect(self, kind: str, text: str | None = None, what: str | None = None) -> Token:
        if not self.at(kind, text):
            want = what or (repr(text) if text else {"name": "a name", "num": "a number", "nl": "end of line"}[kind])
            raise self.error(f"expected {want}, found {_describe(self.tok)}")
        return self.next()

    def error(self, msg: str, tok: Token | None = None) -> DSLError:
        tok = tok or self.tok
        return DSLError(msg, tok.line, tok.col)

    def skip_newlines(self) -> None:
        while self.at("nl"):
            self.next()

    # -- program ---------------------------------------------------------------------------
    def program(self, doc: str) -> Program:
        hypers: list[Hyper] = []
        states: list[State] = []
        body: list[Stmt] = []
        self.skip_newlines()
        while not self.at("eof"):
            if self.at("kw", "hyper"):
                if body:
                    raise self.error("declare hyperparameters before the first statement")
                hypers.extend(self.hyper_decl())
            elif self.at("kw", "state") or self.at("kw", "global"):
                if body:
                    raise self.error(f"declare {self.tok.text} state before the first statement"
                                     if self.tok.text == "global" else "declare state before the first statement")
                states.extend(self.state_decl())
            else:
                body.append(self.statement())
            self.skip_newlines()
        return Program(tuple(hypers), tuple(states), tuple(body), doc)

    def hyper_decl(self) -> list[Hyper]:
        self.next()
        out = []
        while True:
            name = self.expect("name", what="a hyperparameter name")
            self.expect("op", "=")
            sign = 1.0
            if self.at("op", "-"):
                self.next()
                sign = -1.0
            num = self.expect("num", what="a number (hyperparameter defaults are numbers)")
            tune = None
            if self.at("name", "tune"):
                self.next()
                self.expect("op", "(")
                lo = self.number(self.expect("num", what="the low end of the tuning range (a positive number)"))
                self.expect("op", ",")
                hi_tok = self.expect("num", what="the high end of the tuning range (a positive number)")
                hi = self.number(hi_tok)
                self.expect("op", ")")
                if not 0 < lo < hi:
                    raise self.error(f"tuning range of {name.text!r} must satisfy 0 < low < high, got ({lo:g}, {hi:g})",
                                     hi_tok)
                if name.text == "lr":
                    raise self.error("lr is always tuned by the protocol's grid; declare tune(...) on other "
                                     "hyperparameters", name)
                tune = (lo, hi)
            out.append(Hyper(name.text, sign * self.number(num), name.line, name.col, tune))
            if not self.at("op", ","):
                break
            self.next()
        self.expect("nl")
        return out

    def state_decl(self) -> list[State]:
        model_wide = self.next().text == "global"
        out = []
        while True:
            name = self.expect("name", what="a state name")
            storage = GLOBAL if model_wide else "float"
            if self.at("op", ":"):
                if model_wide:
                    raise self.error("a global state is one scalar per model; it takes no storage format")
                self.next()
                st = self.expect("name", what="a storage format")
                if st.text not in STORAGES:
                    raise self.error(f"unknown storage {st.text!r}; use one of {', '.join(STORAGES)}", st)
                storage = st.text
            self.expect("op", "=")
            if self.at("name", "zeros") or self.at("name", "ones"):
                t = self.tok
                nxt = self.toks[self.i + 1]
                if not (nxt.kind == "op" and nxt.text == "("):
                    self.next()
                    init: Expr = Call(t.text + "_like", (Name("w", t.line, t.col),), t.line, t.col)
                else:
                    init = self.expr()
            else:
                init = self.expr()
            out.append(State(name.text, init, storage, name.line, name.col))
            if not self.at("op", ","):
                break
            self.next()
        self.expect("nl")
        return out

    def statement(self) -> Stmt:
        self.n_statements += 1
        if self.n_statements > MAX_STATEMENTS:
            raise self.error(f"program has too many statements (the limit is {MAX_STATEMENTS})")
        if self.at("kw", "if"):
            return self.if_stmt()
        if self.at("kw"):
            kw = self.tok
            if kw.text in ("else", "elif", "end"):
                raise self.error(f"{kw.text!r} without a matching 'if'")
            raise self.error(f"a statement cannot start with {kw.text!r}")
        if not self.at("name"):
            raise self.error(f"expected a statement (NAME = expression), found {_describe(self.tok)}")
        name = self.next()
        if not self.at("op", "="):
            raise self.error(f"expected '=' after {name.text!r}, found {_describe(self.tok)}")
        self.next()
        start = self.tok
        value = self.expr()
        depth = _tree_depth(value) - 1  # operations above the deepest leaf
        if depth > MAX_TREE_DEPTH:
            raise self.error(f"expression is too long: {depth} operations chained in one expression "
                             f"(the limit is {MAX_TREE_DEPTH}); split it over several statements", start)
        self.expect("nl")
        return Assign(name.text, value, name.line, name.col)

    def if_stmt(self) -> If:
        kw = self.next()  # 'if' or 'elif'
        self.depth += 1
        if self.depth > 8:
            raise self.error("if-blocks are nested too deeply (the limit is 8)", kw)
        cond = self.expr()
        self.expect("op", ":", "':' after the condition")
        self.expect("nl")
        then = self.block()
        orelse: tuple[Stmt, ...] = ()
        if self.at("kw", "elif"):
            orelse = (self.if_stmt(),)
            self.depth -= 1
            return If(cond, then, orelse, kw.line, kw.col)
        if self.at("kw", "else"):
            self.next()
            self.expect("op", ":", "':' after 'else'")
            self.expect("nl")
            orelse = self.block()
        if not self.at("kw", "end"):
            raise self.error(f"expected 'end' to close the 'if' at line {kw.line}, found {_describe(self.tok)}")
        self.next()
        self.expect("nl")
        self.depth -= 1
        return If(cond, then, orelse, kw.line, kw.col)

    def block(self) -> tuple[Stmt, ...]:
        out = []
        self.skip_newlines()
        while not (self.at("kw", "else") or self.at("kw", "elif") or self.at("kw", "end") or self.at("eof")):
            if self.at("kw", "hyper") or self.at("kw", "state") or self.at("kw", "global"):
                raise self.error(f"{self.tok.text!r} declarations belong at the top of the program")
            out.append(self.statement())
            self.skip_newlines()
        return tuple(out)

    # -- expressions -----------------------------------------------------------------------
    def number(self, tok: Token) -> float:
        v = float(tok.text)
        if not math.isfinite(v) or abs(v) > MAX_CONSTANT:
            raise self.error(f"constant {tok.text} is out of range (|x| <= {MAX_CONSTANT:g})", tok)
        return v

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression is nested too deeply (the limit is {MAX_DEPTH})")

    def expr(self) -> Expr:
        return self.or_expr()

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.at("kw", "or"):
            op = self.next()
            left = BinOp("or", left, self.and_expr(), op.line, op.col)
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.at("kw", "and"):
            op = self.next()
            left = BinOp("and", left, self.not_expr(), op.line, op.col)
        return left

    def not_expr(self) -> Expr:
        if self.at("kw", "not"):
            op = self.next()
            self.nest()
            e = Unary("not", self.not_expr(), op.line, op.col)
            self.depth -= 1
            return e
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.sum()
        if self.tok.kind == "op" and self.tok.text in _COMPARE:
            op = self.next()
            right = self.sum()
            if self.tok.kind == "op" and self.tok.text in _COMPARE:
                raise self.error("comparisons do not chain; combine them with 'and'")
            return BinOp(op.text, left, right, op.line, op.col)
        return left

    def sum(self) -> Expr:
        left = self.term()
        while self.tok.kind == "op" and self.tok.text in _SUM:
            op = self.next()
            left = BinOp(op.text, left, self.term(), op.line, op.col)
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in _PRODUCT:
            op = self.next()
            left = BinOp(op.text, left, self.unary(), op.line, op.col)
        return left

    def unary(self) -> Expr:
        if self.at("op", "-"):
            op = self.next()
            nxt, after = self.tok, self.toks[self.i + 1]
            if nxt.kind == "num" and not (after.kind == "op" and after.text == "**"):
                self.next()  # a negative literal: -3 is the number -3, not -(3)
                return Num(-self.number(nxt), op.line, op.col)
            self.nest()
            operand = self.unary()
            self.depth -= 1
            return Unary("-", operand, op.line, op.col)
        if self.at("op", "+"):
            raise self.error("unary '+' is not part of the language")
        return self.power()

    def power(self) -> Expr:
        base = self.atom()
        if self.at("op", "**"):
            op = self.next()
            self.nest()
            exp = self.unary()
            self.depth -= 1
            return BinOp("**", base, exp, op.line, op.col)
        return base

    def atom(self) -> Expr:
        tok = self.tok
        if tok.kind == "num":
            self.next()
            return Num(self.number(tok), tok.line, tok.col)
        if tok.kind == "name":
            self.next()
            if self.at("op", "("):
                self.next()
                self.nest()
                args = []
                if not self.at("op", ")"):
                    while True:
                        args.append(self.expr())
                        if not self.at("op", ","):
                            break
                        self.next()
                        if len(args) > 16:
                            raise self.error("too many arguments")
                if not self.at("op", ")"):
                    raise self.error(f"expected ',' or ')' in the call to {tok.text}, found {_describe(self.tok)}")
                self.next()
                self.depth -= 1
                return Call(tok.text, tuple(args), tok.line, tok.col)
            return Name(tok.text, tok.line, tok.col)
        if tok.kind == "op" and tok.text == "(":
            self.next()
            self.nest()
            e = self.expr()
            self.depth -= 1
            if not self.at("op", ")"):
                raise self.error(f"expected ')' to close the '(' at {tok.line}:{tok.col}, found {_describe(self.tok)}")
            self.next()
            return e
        if tok.kind == "kw":
            raise self.error(f"keyword {tok.text!r} cannot be used in an expression")
        raise self.error(f"expected an expression, found {_describe(tok)}")


def _tree_depth(e) -> int:
    """Depth of an expression tree, without recursion (a long flat chain is deep)."""
    deepest, stack = 0, [(e, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        for child in (getattr(node, "left", None), getattr(node, "right", None), getattr(node, "operand", None)):
            if child is not None:
                stack.append((child, d + 1))
        for child in getattr(node, "args", ()) or ():
            stack.append((child, d + 1))
    return deepest


def parse(text: str, check: bool = True, source: str | None = None) -> Program:
    """Parse optimizer program text. With ``check`` (the default) the program is also checked,
    so a returned Program is ready to compile. Errors are DSLError with line and column."""
    try:
        tokens, doc = tokenize(text)
        program = _Parser(tokens).program(doc)
        if check:
            from .checker import check as _check

            _check(program)
        return program
    except DSLError as e:
        raise e.with_source(source) if source else e
    except RecursionError:  # pragma: no cover - guarded by MAX_DEPTH, kept as a last line
        raise DSLError("program is nested too deeply", 1, 1, source) from None


def parse_file(path) -> Program:
    """Parse and check a ``.opt`` file; errors name the file."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DSLError(f"file is not UTF-8 text ({e.reason})", 1, 1, str(path)) from None
    return parse(text, source=str(path))
