"""Program → multi-tensor ("foreach") step function: the exported optimizer's fast eager path.

The per-tensor step function of :mod:`optdisco.dsl.compiler` updates one parameter at a time and
builds a new tensor for every operation. This second backend, generated from the same checked
Program, updates *all* parameters of a bucket (same device, dtype, step count and the shape
values the program reads) with ``torch._foreach_*`` operations, in place where that is safe:

- a value is a list of tensors (one per parameter) in the parameter's own shape, or a Python
  number for static values (hyperparameters, ``t``, shape values), computed by the runtime's
  scalar functions exactly as in the per-tensor code;
- scalar factors stay pending (``lr * update`` costs no pass over memory), products and
  quotients stay pending until they can be fused into ``addcmul_``/``addcdiv_``, and
  ``ema``/``lerp`` with a static weight become ``lerp_``;
- a list is changed in place only when nothing that is still needed refers to it (a liveness
  analysis over the program's variables and the operands pending in the current expression);
  otherwise the result goes into a scratch buffer (``scratch(k)``: persistent per-parameter
  buffers on the CPU, where fresh large allocations are slow, or ``None`` to allocate, as on CUDA
  where the caching allocator makes that free);
- operations with no multi-tensor form (reductions, matrix work, ``where``, comparisons) run
  per tensor through the runtime on the ``[1, R, C]`` view, so they mean exactly what they mean
  in the per-tensor code.

``generate_foreach_source(program)`` returns the source of::

    def step_foreach(P, S, G, HD, hyper, v_t, v_rows, v_cols, v_ndim, v_numel, v_is_matrix,
                     v_is_vector, v_is_embedding, v_is_head, v_is_hidden, LAY, SHAPES, scratch)

``P`` the parameters, ``G`` their gradients, ``HD`` the Hessian-diagonal estimates (or None),
``S`` maps each state name to the list of its tensors (stored in the parameter's shape, or 2-D
for states of another shape), ``LAY`` the ``(1, rows, cols)`` view of each parameter and
``SHAPES`` its shape. It updates ``P`` and ``S`` in place and returns nothing. It expects
``torch``, ``R`` (the runtime) and ``_fe_new`` (see :mod:`optdisco.dsl.optimizer_base`) in its
module. Programs with quantized state have no foreach form (the function returns None).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from .checker import CheckInfo, check
from .analysis import mixed_names
from .compiler import _Gen, _var
from .primitives import BINARY_OPERATORS, ELEMENTWISE, PARAM, SHAPE_INPUTS
from .program import Assign, BinOp, Call, Expr, If, Name, Program, Stmt, Unary, names_in, sub_exprs, walk_stmts

MUTABLE = {"param", "state", "temp"}

# Elementwise unary primitives with a multi-tensor form: name -> (torch op, extra arguments).
_UNARY = {
    "sqrt": ("sqrt", ()), "abs": ("abs", ()), "sign": ("sign", ()), "exp": ("exp", ()),
    "log": ("log", ()), "tanh": ("tanh", ()), "floor": ("floor", ()), "rsqrt": ("rsqrt", ()),
    "relu": ("clamp_min", ("0.0",)),
}


@dataclass(frozen=True)
class _St:
    """A static value: Python code for a number known before the step runs."""

    code: str


@dataclass(frozen=True)
class _Op:
    """A tensor value held in Python list variables.

    kind ``vec``: ``scale * a`` (native shape); ``prod``: ``scale * a * b``; ``quot``:
    ``scale * a / b``; ``lay``: list ``a`` in the ``[1, R, C]`` layout (never changed in place).
    ``scale`` is Python code of a static number or None for 1. ``bufs`` are the buffers the
    lists may be (for alias checks)."""

    kind: str
    a: str
    b: str | None = None
    scale: str | None = None
    abufs: frozenset = frozenset()
    bbufs: frozenset = frozenset()

    @property
    def bufs(self) -> frozenset:
        return self.abufs | self.bbufs


class _ForeachGen:
    def __init__(self, program: Program, info: CheckInfo):
        self.p = program
        self.info = info
        self.scalar_gen = _Gen(program, info)
        self.lines: list[str] = []
        self.indent = "    "
        self.n = 0
        self.kinds: dict[str, str] = {}  # buffer id -> param | state | input | temp | frozen
        self.slot_of: dict[str, int] = {}  # temp buffer -> scratch slot
        self.busy: set[int] = set()
        self.env: dict[str, _Op] = {}
        self.pending: list = []
        self.live_out: dict[int, frozenset] = {}
        self.live_after: frozenset = frozenset()
        self.target: str | None = None
        self.remaining: Counter = Counter()
        self.persistent = ["w"] + [s.name for s in program.states]
        self.state_native = {s.name: info.state_types[s.name].shape == PARAM for s in program.states}
        self.mixed = mixed_names(program, info)
        self._liveness(program.body, frozenset(self.persistent))

    # -- helpers ---------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def fresh_name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def static(self, code: str) -> str:
        """Bind a compound static expression to a variable (cheap to reuse, readable)."""
        try:
            float(code)
            return code
        except ValueError:
            pass
        if code.isidentifier():
            return code
        name = self.fresh_name("_s")
        self.emit(f"{name} = {code}")
        return name

    def is_static(self, e: Expr) -> bool:
        t = self.info.types.get(id(e))
        return t is not None and t.static

    def is_param(self, e: Expr) -> bool:
        t = self.info.types.get(id(e))
        return t is not None and t.shape == PARAM

    def _liveness(self, body: tuple[Stmt, ...], out: frozenset) -> frozenset:
        for s in reversed(body):
            self.live_out[id(s)] = out
            if isinstance(s, Assign):
                out = (out - {s.target}) | names_in(s.value)
            else:
                out = self._liveness(s.then, out) | self._liveness(s.orelse, out) | names_in(s.cond)
        return frozenset(out)

    # -- buffers ---------------------------------------------------------------------------
    def referenced(self, buf: str) -> bool:
        """Whether something still needed may read ``buf``: an operand pending in the current
        expression, a variable read later in this statement or live after it."""
        if any(buf in o.bufs for o in self.pending if isinstance(o, _Op)):
            return True
        for name, o in self.env.items():
            if buf in o.bufs and (self.remaining[name] > 0 or (name in self.live_after and name != self.target)):
                return True
        return False

    def consumable(self, op: _Op, blockers=()) -> bool:
        """Whether op's list ``a`` may be overwritten: mutable, nothing else needs it, and no
        sibling operand (``blockers``) reads it."""
        if op.kind == "lay" or not op.abufs:
            return False
        for b in op.abufs:
            if self.kinds[b] not in MUTABLE or self.referenced(b):
                return False
            if any(isinstance(x, _Op) and b in x.bufs for x in blockers):
                return False
        return True

    def new_temp(self) -> tuple[str, int]:
        slot = 0
        while slot in self.busy:
            slot += 1
        self.busy.add(slot)
        name = self.fresh_name("_t")
        self.kinds[name] = "temp"
        self.slot_of[name] = slot
        return name, slot

    def frozen(self, *ops) -> tuple[str, frozenset]:
        """A new list variable that is never changed in place; it may alias its inputs."""
        name = self.fresh_name("_l")
        self.kinds[name] = "frozen"
        bufs = {name}
        for o in ops:
            if isinstance(o, _Op):
                bufs |= o.bufs
        return name, frozenset(bufs)

    def free_slots(self) -> None:
        used = set()
        for o in self.env.values():
            used |= {self.slot_of[b] for b in o.bufs if b in self.slot_of}
        self.busy = used

    # -- building blocks -------------------------------------------------------------------
    @staticmethod
    def _kw(name: str, value: str | None) -> str:
        return "" if value is None else f", {name}={value}"

    def new(self, op: str, args: str, kw: str = "") -> _Op:
        """A fresh result of a torch op (out= into a scratch buffer, or a new allocation)."""
        t, slot = self.new_temp()
        self.emit(f"{t} = _fe_new(scratch({slot}), torch.{op}, torch._foreach_{op}, {args}{kw})")
        return _Op("vec", t, abufs=frozenset({t}))

    def smul(self, a: str | None, b: str | None) -> str | None:
        if a is None:
            return b
        if b is None:
            return a
        return self.static(f"R.mul({a}, {b})")

    def scaled(self, x: _Op, c: str) -> _Op:
        return replace(x, scale=self.smul(x.scale, c))

    def plain(self, x: _Op, blockers=()) -> _Op:
        """x as an unscaled native list (computing pending products, quotients, scales)."""
        assert x.kind != "lay"
        if x.kind in ("prod", "quot"):
            x = self.vec(x, blockers)
        if x.scale is None:
            return x
        if self.consumable(x, blockers):
            self.emit(f"if {x.scale} != 1.0:")  # e.g. w * (1 - lr * wd) with wd = 0: no pass
            self.emit(f"    torch._foreach_mul_({x.a}, {x.scale})")
            return replace(x, scale=None)
        return self.new("mul", f"{x.a}, {x.scale}")

    def vec(self, x: _Op, blockers=()) -> _Op:
        """x as a (possibly scaled) single native list."""
        if x.kind == "vec":
            return x
        fn = "mul" if x.kind == "prod" else "div"
        first = _Op("vec", x.a, abufs=x.abufs)
        if x.a != x.b and self.consumable(first, blockers):
            self.emit(f"torch._foreach_{fn}_({x.a}, {x.b})")
            return replace(first, scale=x.scale)
        return replace(self.new(fn, f"{x.a}, {x.b}"), scale=x.scale)

    def to_lay(self, x, blockers=()):
        if isinstance(x, _St) or x.kind == "lay":
            return x
        x = self.plain(x, blockers)
        name, bufs = self.frozen(x)
        self.emit(f"{name} = [x_.reshape(l_) for x_, l_ in zip({x.a}, LAY)]")
        return _Op("lay", name, abufs=bufs)

    def from_lay(self, x: _Op) -> _Op:
        name, bufs = self.frozen(x)
        self.emit(f"{name} = [x_.reshape(s_) for x_, s_ in zip({x.a}, SHAPES)]")
        return _Op("vec", name, abufs=bufs)

    def listcomp(self, template: str, args: list, native: bool, param_result: bool) -> _Op:
        """Run ``template`` (with {0}, {1}, ... for the arguments) once per tensor, through the
        runtime: native shapes for elementwise work, the [1, R, C] layout otherwise."""
        ops = list(args)
        for i, a in enumerate(ops):
            if isinstance(a, _Op):
                others = ops[:i] + ops[i + 1:]
                ops[i] = self.plain(a, others) if native else self.to_lay(a, others)
        loop_vars, sources, codes = [], [], []
        for i, a in enumerate(ops):
            if isinstance(a, _Op):
                loop_vars.append(f"a{i}_")
                sources.append(a.a)
                codes.append(f"a{i}_")
            else:
                codes.append(a.code)
        name, bufs = self.frozen(*ops)
        body = template.format(*codes)
        loop = f"{loop_vars[0]} in {sources[0]}" if len(sources) == 1 else f"{', '.join(loop_vars)} in zip({', '.join(sources)})"
        self.emit(f"{name} = [{body} for {loop}]")
        if native:
            return _Op("vec", name, abufs=bufs)
        out = _Op("lay", name, abufs=bufs)
        return self.from_lay(out) if param_result else out

    # -- arithmetic on native lists --------------------------------------------------------
    def combine_into(self, dst: _Op, x: _Op) -> None:
        """dst += x in place (dst a plain list; x's scale becomes alpha/value)."""
        if x.kind == "vec":
            self.emit(f"torch._foreach_add_({dst.a}, {x.a}{self._kw('alpha', x.scale)})")
        else:
            fn = "addcmul" if x.kind == "prod" else "addcdiv"
            self.emit(f"torch._foreach_{fn}_({dst.a}, {x.a}, {x.b}{self._kw('value', x.scale)})")

    def add(self, a, b, negate: bool):
        """a + b or a - b with at least one tensor operand."""
        if isinstance(b, _St):
            c = b.code if not negate else self.static(f"R.neg({b.code})")
            return self.add_scalar(a, c)
        if negate:
            b = self.scaled(b, "-1.0")
        if isinstance(a, _St):
            return self.add_scalar(b, a.code)
        if a.kind != "vec" and b.kind == "vec":
            a, b = b, a
        if a.kind != "vec":
            a = self.vec(a, blockers=(b,))
        if b.kind == "vec" and a.a == b.a and a.bufs == b.bufs:  # s1*x + s2*x
            return replace(a, scale=self.static(f"R.add({a.scale or '1.0'}, {b.scale or '1.0'})"))
        # in place into a (or b): a pending scale must not be applied to a list the other reads
        if self.consumable(a) and (a.scale is None or not (a.abufs & b.bufs)):
            a = self.plain(a)
            self.combine_into(a, b)
            return a
        if b.kind == "vec" and self.consumable(b) and (b.scale is None or not (b.abufs & a.bufs)):
            b = self.plain(b)
            self.combine_into(b, a)
            return b
        if a.scale is None:
            return self._fresh_combine(a, b)
        if b.kind == "vec" and b.scale is None:
            return self._fresh_combine(b, a)
        r = self.new("mul", f"{a.a}, {a.scale}")
        self.combine_into(r, b)
        return r

    def _fresh_combine(self, base: _Op, x: _Op) -> _Op:
        if x.kind == "vec":
            return self.new("add", f"{base.a}, {x.a}", self._kw("alpha", x.scale))
        fn = "addcmul" if x.kind == "prod" else "addcdiv"
        return self.new(fn, f"{base.a}, {x.a}, {x.b}", self._kw("value", x.scale))

    def _guarded(self, x: _Op, cond: str, scale_then: str, then_op: str, then_args: str,
                 else_op: str, else_args: str, after_else: str) -> _Op:
        """Emit ``if cond:`` dst = then_op(...) (scale scale_then) ``else:`` dst =
        else_op(...) then after_else_(dst) (scale 1); dst is x's list when it may be
        overwritten, else a scratch buffer."""
        inplace = self.consumable(x)
        dst, slot = (x.a, None) if inplace else self.new_temp()
        out_scale = self.fresh_name("_s")
        self.emit(f"if {cond}:")
        self.emit(f"    {out_scale} = {scale_then}")
        for op, args in ((then_op, then_args), (else_op, else_args)):
            if inplace:
                self.emit(f"    torch._foreach_{op}_({dst}{args})")
            else:
                self.emit(f"    {dst} = _fe_new(scratch({slot}), torch.{op}, torch._foreach_{op}, {x.a}{args})")
            if op == then_op and args == then_args:
                self.emit("else:")
                self.emit(f"    {out_scale} = 1.0")
        self.emit(f"    {after_else}".replace("DST", dst))
        bufs = x.abufs if inplace else frozenset({dst})
        return _Op("vec", dst, scale=out_scale, abufs=bufs)

    def add_scalar(self, x: _Op, c: str) -> _Op:
        x = self.vec(x)
        if x.scale is None:
            if self.consumable(x):
                self.emit(f"torch._foreach_add_({x.a}, {c})")
                return x
            return self.new("add", f"{x.a}, {c}")
        # s*x + c == s*(x + c/s): the scale stays pending while |s| is not tiny (c/s stays finite)
        s = x.scale
        return self._guarded(x, f"abs({s}) >= 1e-3", s, "add", f", R.div({c}, {s})", "mul", f", {s}",
                             f"torch._foreach_add_(DST, {c})")

    def mul(self, a, b):
        if isinstance(a, _St):
            return self.scaled(b, a.code)
        if isinstance(b, _St):
            return self.scaled(a, b.code)
        a = self.vec(a, blockers=(b,))
        b = self.vec(b, blockers=(a,))
        return _Op("prod", a.a, b.a, self.smul(a.scale, b.scale), a.abufs, b.abufs)

    def div(self, a, b):
        if isinstance(b, _St):
            return self.scaled(a, self.static(f"R.div(1.0, {b.code})"))
        if isinstance(a, _St):
            b = self.plain(b)
            if self.consumable(b):
                self.emit(f"torch._foreach_reciprocal_({b.a})")
                r = b
            else:
                r = self.new("reciprocal", b.a)
            return self.scaled(r, a.code)
        a = self.vec(a, blockers=(b,))
        b = self.vec(b, blockers=(a,))
        scale = a.scale if b.scale is None else self.static(f"R.div({a.scale or '1.0'}, {b.scale})")
        return _Op("quot", a.a, b.a, scale, a.abufs, b.abufs)

    def unary(self, fn: str, x: _Op) -> _Op:
        x = self.vec(x)
        if x.scale is not None and fn in ("sign", "abs"):  # exact: sign(s*x) = sign(s)*sign(x)
            return replace(self.unary(fn, replace(x, scale=None)), scale=self.static(f"R.{fn}({x.scale})"))
        if x.scale is not None and fn == "sqrt":  # sqrt(s*x) = sqrt(s)*sqrt(x) when s >= 0
            s = x.scale
            return self._guarded(x, f"{s} >= 0.0", f"R.sqrt({s})", "sqrt", "", "mul", f", {s}",
                                 "torch._foreach_sqrt_(DST)")
        x = self.plain(x)
        if fn == "square":
            if self.consumable(x):
                self.emit(f"torch._foreach_mul_({x.a}, {x.a})")
                return x
            return self.new("mul", f"{x.a}, {x.a}")
        op, extra = _UNARY[fn]
        args = "".join(", " + e for e in extra)
        if self.consumable(x):
            self.emit(f"torch._foreach_{op}_({x.a}{args})")
            return x
        return self.new(op, f"{x.a}{args}")

    def binary_inplace(self, op: str, a: _Op, b, scalar_op: str | None = None) -> _Op:
        """a = op(a, b) elementwise, in place when allowed (b a list or a static)."""
        a = self.plain(a, blockers=(b,))
        if isinstance(b, _St):
            name, arg = scalar_op or op, b.code
        else:
            b = self.plain(b, blockers=(a,))
            name, arg = op, b.a
        if self.consumable(a):
            self.emit(f"torch._foreach_{name}_({a.a}, {arg})")
            return a
        return self.new(name, f"{a.a}, {arg}")

    def lerp(self, a: _Op, b: _Op, weight: str) -> _Op:
        """a + weight * (b - a) with a static weight."""
        a = self.plain(a, blockers=(b,))
        b = self.plain(b, blockers=(a,))
        if self.consumable(a):
            self.emit(f"torch._foreach_lerp_({a.a}, {b.a}, {weight})")
            return a
        return self.new("lerp", f"{a.a}, {b.a}, {weight}")

    def power(self, a, b) -> _Op:
        if isinstance(a, _St):
            return self.new("pow", f"{a.code}, {self.plain(b).a}")
        return self.binary_inplace("pow", a, b)

    # -- expressions -----------------------------------------------------------------------
    def args(self, exprs) -> list:
        out = []
        for e in exprs:
            out.append(self.ev(e))
            self.pending.append(out[-1])
        for _ in exprs:
            self.pending.pop()
        return out

    def ev(self, e: Expr):
        if self.is_static(e):
            for n in sub_exprs(e):
                if isinstance(n, Name):
                    self.remaining[n.id] -= 1
            return _St(self.static(self.scalar_gen.expr(e)))
        if isinstance(e, Name):
            self.remaining[e.id] -= 1
            return self.env[e.id]
        native = self.is_param(e)
        if isinstance(e, Unary):
            (x,) = self.args([e.operand])
            if e.op == "-" and native and x.kind != "lay":
                return self.scaled(x, "-1.0")
            tmpl = "R.not_({0})" if e.op == "not" else "(-{0})"
            return self.listcomp(tmpl, [x], self._all_native([x]), native)
        if isinstance(e, BinOp):
            a, b = self.args([e.left, e.right])
            fast = native and self._all_native([a, b])
            if fast and e.op in ("+", "-"):
                return self.add(a, b, e.op == "-")
            if fast and e.op == "*":
                return self.mul(a, b)
            if fast and e.op == "/":
                return self.div(a, b)
            if fast and e.op == "**":
                return self.power(a, b)
            op = BINARY_OPERATORS[e.op]
            tmpl = f"({{0}} {e.op} {{1}})" if op.infix else f"R.{op.runtime}({{0}}, {{1}})"
            return self.listcomp(tmpl, [a, b], e.op != "@" and self._all_native([a, b]), native)
        if isinstance(e, Call):
            xs = self.args(e.args)
            fn = e.fn
            if native and self._all_native(xs):
                tensors = [isinstance(x, _Op) for x in xs]
                if fn in _UNARY or fn == "square":
                    return self.unary(fn, xs[0])
                if fn in ("ema", "lerp") and tensors == [True, True, False]:
                    a, b, wt = xs
                    if fn == "ema" and b.kind != "vec":  # beta*a + (1-beta)*x*y -> mul_ + addcmul_
                        return self.add(self.mul(wt, a), self.mul(_St(self.static(f"R.sub(1.0, {wt.code})")), b), False)
                    weight = self.static(f"R.sub(1.0, {wt.code})") if fn == "ema" else wt.code
                    return self.lerp(a, b, weight)
                if fn in ("max", "min"):
                    a, b = xs if tensors[0] else xs[::-1]
                    return self.binary_inplace("maximum" if fn == "max" else "minimum", a, b,
                                               "clamp_min" if fn == "max" else "clamp_max")
                if fn == "clip" and tensors == [True, False, False]:
                    lo = self.binary_inplace("maximum", xs[0], xs[1], "clamp_min")
                    return self.binary_inplace("minimum", lo, xs[2], "clamp_max")
            codes = [f"{{{i}}}" for i in range(len(xs))]
            if fn == "where" and isinstance(xs[0], _St):
                # a static condition picks a branch as it is: a static branch must still be a tensor
                for i, j in ((1, 2), (2, 1)):
                    if isinstance(xs[i], _St) and isinstance(xs[j], _Op):
                        codes[i] = f"torch.full_like({{{j}}}, {{{i}}})"
            return self.listcomp(f"R.{fn}({', '.join(codes)})", xs, fn in ELEMENTWISE and self._all_native(xs), native)
        raise TypeError(f"cannot compile {e!r}")  # pragma: no cover

    @staticmethod
    def _all_native(xs) -> bool:
        return all(isinstance(x, _St) or x.kind != "lay" for x in xs)

    # -- statements ------------------------------------------------------------------------
    def block(self, body: tuple[Stmt, ...]) -> None:
        if not body:
            self.emit("pass")
        for s in body:
            if isinstance(s, Assign):
                self.assign(s)
            else:
                self.branch(s)

    def assign(self, s: Assign) -> None:
        self.live_after = self.live_out[id(s)]
        self.target = s.target
        self.remaining = Counter(n.id for n in sub_exprs(s.value) if isinstance(n, Name))
        if self.is_static(s.value):
            self.emit(f"{_var(s.target)} = {self.scalar_gen.expr(s.value)}")
            self.env.pop(s.target, None)
            if s.target in self.mixed:  # also computed elsewhere: a 1x1 tensor per parameter
                name, bufs = self.frozen()
                self.emit(f"{name} = [R.as_state({_var(s.target)}, l_) for l_ in L_w]")
                self.env[s.target] = _Op("lay", name, abufs=bufs)
        else:
            self.env[s.target] = self.ev(s.value)
        self.target = None
        self.remaining = Counter()
        self.end_statement(self.live_after)

    def end_statement(self, live) -> None:
        for name in list(self.env):
            if name not in live and name not in ("g", "hess_diag"):
                del self.env[name]
        self.free_slots()

    def branch(self, s: If) -> None:
        live = self.live_out[id(s)]
        cond = self.scalar_gen.expr(s.cond)
        outer_lines, outer_indent = self.lines, self.indent
        saved_env, saved_busy = dict(self.env), set(self.busy)
        results = []
        for body in (s.then, s.orelse):
            self.env, self.busy, self.lines = dict(saved_env), set(saved_busy), []
            self.indent = outer_indent + "    "
            self.block(body)
            results.append([self.env, self.busy, self.lines])
        # a name bound differently by the two branches gets one variable, set in both
        unify = [n for n in sorted(live) if n in results[0][0] and n in results[1][0]
                 and results[0][0][n] != results[1][0][n]]
        names = {n: self.fresh_name("u_") + "_" + n for n in unify}
        for r in results:
            self.env, self.busy, self.lines = r
            self.indent = outer_indent + "    "
            self.live_after, self.target, self.remaining = live, None, Counter()
            for n in unify:
                op = self.env[n]
                if op.kind != "lay":
                    op = self.plain(op)
                self.emit(f"{names[n]} = {op.a}")
                self.env[n] = op
            r[1] = self.busy
        self.lines, self.indent = outer_lines, outer_indent
        self.emit(f"if R.truth({cond}):")
        self.lines.extend(results[0][2])
        if s.orelse or unify:
            self.emit("else:")
            self.lines.extend(results[1][2])
        merged = {}
        for n in live:
            a, b = results[0][0].get(n), results[1][0].get(n)
            if a is None or b is None:
                continue
            merged[n] = a if n not in names else _Op(a.kind, names[n], abufs=a.bufs | b.bufs)
        for n in ("g", "hess_diag"):
            merged[n] = saved_env[n]
        self.env = merged
        self.busy = results[0][1] | results[1][1]
        self.end_statement(live)

    # -- whole function --------------------------------------------------------------------
    def source(self, fn_name: str) -> str:
        p = self.p
        args = ["P", "S", "G", "HD", "hyper", "v_t"] + [_var(n) for n in SHAPE_INPUTS] + ["LAY", "SHAPES", "scratch"]
        self.lines = [f"def {fn_name}({', '.join(args)}):"]
        self.lines += self.scalar_gen.hyper_lines()
        self.kinds.update(P="param", G="input", HD="input", L_w="frozen")
        self.env["w"] = _Op("vec", "P", abufs=frozenset({"P"}))
        self.env["g"] = _Op("vec", "G", abufs=frozenset({"G"}))
        self.env["hess_diag"] = _Op("vec", "HD", abufs=frozenset({"HD"}))
        if any(isinstance(st, Assign) and st.target in self.mixed and self.is_static(st.value)
               for st in walk_stmts(p.body)):
            self.emit("L_w = [x_.reshape(l_) for x_, l_ in zip(P, LAY)]")
        for st in p.states:
            var = "S_" + st.name
            self.kinds[var] = "state"
            self.emit(f"{var} = S.get({st.name!r})")
            if self.state_native[st.name]:
                self.env[st.name] = _Op("vec", var, abufs=frozenset({var}))
            else:
                lay = "L_" + st.name
                self.kinds[lay] = "frozen"
                self.emit(f"{lay} = None if {var} is None else [s_.unsqueeze(0) for s_ in {var}]")
                self.env[st.name] = _Op("lay", lay, abufs=frozenset({lay, var}))
        self.block(p.body)
        self.finish()
        return "\n".join(self.lines) + "\n"

    def finish(self) -> None:
        """Write the final w and states into their own buffers."""
        own = {"w": "P", **{s.name: "S_" + s.name for s in self.p.states}}
        own_lay = {s.name: "L_" + s.name for s in self.p.states if not self.state_native[s.name]}
        self.target, self.remaining = None, Counter()
        values = {}
        for name in self.persistent:
            op = self.env[name]
            if op.kind == "lay":
                if op.a != own_lay.get(name):
                    values[name] = op
                continue
            self.live_after = frozenset(n for n in self.persistent if n != name)
            op = self.plain(op)  # a pending scale on the own buffer is applied in place
            self.env[name] = op
            if not (op.a == own[name] and op.abufs == frozenset({own[name]})):
                values[name] = op
        targets = {own[n] for n in values} | {own_lay[n] for n in values if n in own_lay}
        for name, op in values.items():
            if op.bufs & (targets - {own[name], own_lay.get(name)}):
                src = self.fresh_name("_c")
                self.emit(f"{src} = None if {op.a} is None else [x_.clone() for x_ in {op.a}]")
                values[name] = replace(op, a=src)
        for name, op in values.items():
            pad = ""
            if name != "w":  # a state this parameter's routing never reaches is not allocated
                self.emit(f"if {own[name]} is not None:")
                pad = "    "
            if op.kind == "lay":
                self.emit(f"{pad}for d_, x_ in zip({own[name]}, {op.a}):")
                self.emit(f"{pad}    d_.copy_(x_.reshape(d_.shape))")
            else:
                self.emit(f"{pad}torch._foreach_copy_({own[name]}, {op.a})")


def generate_foreach_source(program: Program, info: CheckInfo | None = None, fn_name: str = "step_foreach") -> str | None:
    """Source of the multi-tensor step function of ``program``, or None where it has none
    (quantized state, seeded noise, model-wide values)."""
    info = info or check(program)
    if any(s.storage != "float" for s in program.states) or program.uses_random or program.model_wide:
        return None
    if program.uses_probe or program.has_eval_weights or program.uses_modes:  # the per-tensor path only
        return None
    return _ForeachGen(program, info).source(fn_name)


__all__ = ["generate_foreach_source", "SHAPE_INPUTS"]
