"""Program → per-tensor step with its static values hoisted out: the code ``compile=True`` runs.

Compiled as it is, the per-tensor step function receives hyperparameters and ``t`` as 0-dim
tensors (so that a scheduler never forces a recompilation), and the compiler fuses their
arithmetic — ``1 - beta2 ** t`` — into the elementwise kernel, where it is recomputed for every
few elements. This generator splits the same program in two:

- ``statics(hyper, v_t, v_rows, ...) -> (S, B)``: every static value the tensor code needs,
  computed once per step in Python floats by the runtime (numbers in ``S``, conditions of
  ``if`` blocks and static booleans in ``B``), exactly as the per-tensor code computes them;
- ``step_hoisted(state, SC, B, v_w, v_g, v_hess_diag) -> (w, state)``: the tensor statements,
  reading static number ``i`` as ``SC[i]`` (one small tensor per step) and condition ``j`` as
  the Python bool ``B[j]``.

Numbers stay tensors, so no value of a hyperparameter or of ``t`` is baked into compiled code;
a condition is a Python bool, so a compiled step specialises on which branches run (a program
whose ``if t > k`` flips compiles once more when it flips, never per step).
"""

from __future__ import annotations

from .checker import CheckInfo, check
from .analysis import mixed_names
from .compiler import _Gen, _var
from .primitives import SHAPE_INPUTS
from .program import Assign, BinOp, Expr, Num, Program, Stmt


class _Hoist(_Gen):
    def __init__(self, program: Program, info: CheckInfo):
        super().__init__(program, info)
        self.capture = False
        self.numbers: list[str] = []  # code of static number i (in the statics function)
        self.bools: list[str] = []
        self.static_lines: list[str] = []
        self.tensor_lines: list[str] = []
        self.pending: list[tuple[str, int, str]] = []  # slots to compute before the statement
        self.mixed = mixed_names(program, info)

    def expr(self, e: Expr) -> str:
        t = self.info.types.get(id(e))
        if self.capture and isinstance(e, BinOp) and e.op == "/" and not (t is not None and t.static):
            rt = self.info.types.get(id(e.right))
            if rt is not None and rt.static and rt.kind != "bool":
                # tensor / static: multiply by the static's reciprocal, computed once per step.
                # A vector division costs several times a multiplication, and an elementwise
                # step with two or three of them (AdamW's bias corrections) is bound by them
                # rather than by memory once its tensors sit in cache. Differs by ≤ 1 ulp.
                left = self.expr(e.left)
                self.capture = False
                code = f"R.div(1.0, {super().expr(e.right)})"
                self.capture = True
                self.numbers.append(code)
                self.pending.append(("S", len(self.numbers) - 1, code))
                return f"({left} * SC[{len(self.numbers) - 1}])"
        if self.capture and t is not None and t.static and not isinstance(e, Num):
            self.capture = False
            code = super().expr(e)
            self.capture = True
            if t.kind == "bool":
                self.bools.append(code)
                self.pending.append(("B", len(self.bools) - 1, code))
                return f"B[{len(self.bools) - 1}]"
            self.numbers.append(code)
            self.pending.append(("S", len(self.numbers) - 1, code))
            return f"SC[{len(self.numbers) - 1}]"
        return super().expr(e)

    def _flush(self, indent: str) -> None:
        for kind, i, code in self.pending:
            self.static_lines.append(f"{indent}{kind}[{i}] = {code}")
        self.pending = []

    def body(self, stmts: tuple[Stmt, ...], indent: str) -> None:
        n_static, n_tensor = len(self.static_lines), len(self.tensor_lines)
        self._stmts(stmts, indent)
        if len(self.static_lines) == n_static:
            self.static_lines.append(indent + "pass")
        if len(self.tensor_lines) == n_tensor:
            self.tensor_lines.append(indent + "pass")

    def _stmts(self, stmts: tuple[Stmt, ...], indent: str) -> None:
        for s in stmts:
            if isinstance(s, Assign):
                t = self.info.types.get(id(s.value))
                if t is not None and t.static:
                    self.static_lines.append(f"{indent}{_var(s.target)} = {super().expr(s.value)}")
                    if s.target not in self.mixed:
                        continue
                self.capture = True
                code = self.expr(s.value)
                self.capture = False
                self._flush(indent)
                self.tensor_lines.append(f"{indent}{_var(s.target)} = {code}")
            else:
                j = len(self.bools)
                self.bools.append("")
                cond = super().expr(s.cond)
                self.static_lines.append(f"{indent}B[{j}] = R.truth({cond})")
                self.static_lines.append(f"{indent}if B[{j}]:")
                self.tensor_lines.append(f"{indent}if B[{j}]:")
                self.body(s.then, indent + "    ")
                self.static_lines.append(f"{indent}else:")
                self.tensor_lines.append(f"{indent}else:")
                self.body(s.orelse, indent + "    ")

    def source(self, statics_name: str, step_name: str) -> str:
        p = self.p
        self.body(p.body, "    ")
        head = [f"def {statics_name}({', '.join(['hyper', 'v_t'] + [_var(n) for n in SHAPE_INPUTS])}):"]
        head += self.hyper_lines()
        head += [f"    S = [0.0] * {len(self.numbers)}", f"    B = [False] * {len(self.bools)}"]
        statics = head + self.static_lines + ["    return S, B"]
        step = [f"def {step_name}(state, SC, B, v_w, v_g, v_hess_diag):"]
        step += [f"    {_var(s.name)} = state.get({s.name!r})" for s in p.states]
        step += self.tensor_lines
        step.append("    new_state = {}")
        for s in p.states:
            step += [f"    if {_var(s.name)} is not None:", f"        new_state[{s.name!r}] = {_var(s.name)}"]
        step.append("    return v_w, new_state")
        return "\n".join(statics) + "\n\n\n" + "\n".join(step) + "\n"


def generate_hoisted_source(program: Program, info: CheckInfo | None = None,
                            statics_name: str = "statics", step_name: str = "step_hoisted") -> str | None:
    """Source of the ``statics`` and ``step_hoisted`` functions of ``program`` (None for
    programs with quantized state, seeded noise or model-wide values, which compile=True does not
    support)."""
    info = info or check(program)
    if any(s.storage != "float" for s in program.states) or program.uses_random or program.model_wide:
        return None
    if program.uses_probe or program.has_eval_weights or program.uses_modes:  # the per-tensor path only
        return None
    return _Hoist(program, info).source(statics_name, step_name)


__all__ = ["generate_hoisted_source"]
