"""Program → torch.optim.Optimizer: ``to_optimizer`` (an instance now) and ``export_python``
(the source of a standalone module).

Both come from one generated module. It holds, in this order: the program's text (docstring), a
copy of :mod:`optdisco.dsl.runtime` (wrapped in a function so that its names such as ``sum`` or
``max`` do not shadow Python's), the step functions that :mod:`optdisco.dsl.compiler` and
:mod:`optdisco.dsl.foreach` generate from the program, a copy of
:mod:`optdisco.dsl.optimizer_base`, and a small subclass that names the hyperparameters.
``to_optimizer`` loads exactly that text, so the optimizer a user builds in a session and the
file they ship run the same code — and the per-tensor step function in it is the one the
search evaluates.

Nothing the user wrote becomes Python code: identifiers are the checker's ``[A-Za-z_]\\w*``
names, numbers are printed from floats, and the program's text appears only inside string
literals (checked by parsing the result).
"""

from __future__ import annotations

import ast
import functools
import inspect
import keyword
import re

from . import layout, optimizer_base, runtime
from .analysis import model_hypers, splits_elementwise
from .checker import check
from .compiler import generate_init_source, generate_needed_source, generate_source
from .foreach import generate_foreach_source
from .layout import SHAPE_INPUTS
from .hoist import generate_hoisted_source
from .primitives import PARAM
from .program import GLOBAL, Call, Name, Program, walk_exprs
from .resolve import resolve_program
from .step import load_module

_RESERVED = {"self", "params", "compile", "foreach", "seed", "role", "defaults"}


def _docstring(text: str, indent: str = "") -> str:
    """A triple-quoted literal whose value is ``text`` (any characters)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\n")
        elif ch == "\t":
            out.append(ch)
        elif ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    body = "".join(out).replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    return indent + '"""' + body.replace("\n", "\n" + indent).replace("\n" + indent + "\n", "\n\n") + '"""'


def _source_without_future(module) -> str:
    """A module's source for a standalone file: without ``from __future__`` and without imports
    from optdisco's own modules (the file carries copies of them)."""
    src = inspect.getsource(module)
    return re.sub(r"^from (__future__|\.\w*) import [^\n]*\n", "", src, flags=re.M)


def _indent(src: str, pad: str = "    ") -> str:
    return "\n".join((pad + line) if line.strip() else "" for line in src.splitlines())


def _title(program: Program) -> str:
    first = program.doc.strip().splitlines()[0].strip() if program.doc.strip() else ""
    return first or "an optimizer discovered with optdisco"


def _check_exportable(program: Program, class_name: str) -> None:
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class name {class_name!r} is not a Python identifier")
    if class_name in ("ProgramOptimizer", "R", "torch", "math"):
        raise ValueError(f"class name {class_name!r} is taken inside the generated module; choose another")
    for h in program.hypers:
        if h.name in ("params", "role"):
            raise ValueError(f"hyperparameter {h.name!r} clashes with the parameter-group key {h.name!r}; "
                             "rename it in the program")


def _init_signature(program: Program) -> tuple[str, str]:
    """The ``__init__`` parameters and the dict passed on: explicit keywords for ordinary
    names, ``**more`` for names Python cannot take as parameters."""
    params, passed, odd = [], [], []
    for h in program.hypers:
        if keyword.iskeyword(h.name) or h.name in _RESERVED:
            odd.append(h.name)
        else:
            params.append(f"{h.name}={h.default!r}")
            passed.append(f"{h.name}={h.name}")
    sig = ", ".join(["self", "params"] + params + ["*", "compile=False", "foreach=None", "seed=0"] + (["**more"] if odd else []))
    body = f"dict({', '.join(passed)})"
    if odd:
        body = f"{{**{{k: v for k, v in {body}.items()}}, **more}}"
    return sig, body


def _ema_decays(program: Program) -> set[str]:
    """Hyperparameters used directly as an EMA's decay, ``ema(a, x, beta)``: they must lie in [0, 1)."""
    hypers = set(program.hyper_defaults)
    return {e.args[2].id for e in walk_exprs(program)
            if isinstance(e, Call) and e.fn == "ema" and len(e.args) == 3
            and isinstance(e.args[2], Name) and e.args[2].id in hypers}


def _schedule_source(schedule: dict) -> str:
    """``lr_schedule(optimizer, …)``: the warmup + cosine schedule a program was tuned with, as a
    torch LambdaLR (the factor of optdisco.evaluate.schedule, written out: no optdisco import)."""
    steps, warmup, floor = int(schedule["steps"]), float(schedule["warmup"]), float(schedule["floor"])
    if steps < 1 or not 0 <= warmup < 1 or not 0 <= floor <= 1:
        raise ValueError(f"schedule needs steps >= 1, warmup in [0, 1) and floor in [0, 1], got {schedule}")
    return f'''TUNED_STEPS = {steps!r}


def lr_schedule(optimizer, steps=TUNED_STEPS, warmup={warmup!r}, floor={floor!r}, last_epoch=-1):
    """The learning-rate schedule this program was tuned with, as a torch LR scheduler: linear
    warmup over ``warmup`` of the ``steps`` (at least one step), then cosine decay to ``floor``
    times the peak at the last step. Call ``scheduler.step()`` after each ``optimizer.step()``;
    step ``t`` (1-based) trains with ``lr · factor(t)``, as in the evaluation."""
    w = max(1, min(round(warmup * steps), steps - 1))

    def factor(k):
        t = min(k + 1, steps)
        if t <= w:
            return t / w
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (t - w) / (steps - w)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch)'''


def export_python(program, class_name: str = "DiscoveredOptimizer", tuned: dict | None = None) -> str:
    """The source of a standalone module (it imports only torch and math) defining
    ``class_name``, a torch.optim.Optimizer subclass running ``program`` (a Program, library
    name, ``.opt`` path or program text: see ``resolve_program``).

    ``tuned``: the context the program was found in, ``{"defaults": {"lr": …, …}, "schedule":
    {"steps", "warmup", "floor"} or None, "about": "one line"}``. Its defaults replace the
    program's (the class defaults to the tuned values), the docstrings state them and the
    schedule, and the module gains ``lr_schedule(optimizer)``, that schedule as a LambdaLR."""
    program = resolve_program(program)
    _check_exportable(program, class_name)
    own_defaults = program.hyper_defaults
    schedule = None
    if tuned:
        program = program.with_defaults(**{k: float(v) for k, v in tuned.get("defaults", {}).items()})
        schedule = tuned.get("schedule")
    info = check(program)
    text = program.to_text().rstrip("\n")
    quantized = any(s.storage not in ("float", GLOBAL) for s in program.states)
    reads = sorted({e.id for e in walk_exprs(program) if isinstance(e, Name) and e.id in SHAPE_INPUTS},
                   key=SHAPE_INPUTS.index)
    param_states = sorted(n for n, t in info.state_types.items() if t.shape == PARAM)
    step_src = generate_source(program, info, fn_name="step_tensor")
    init_src = generate_init_source(program, info, fn_name="init_state")
    needed_src = generate_needed_source(program, info, fn_name="needed_states")
    foreach_src = generate_foreach_source(program, info, fn_name="step_foreach")
    hoisted_src = generate_hoisted_source(program, info, "statics", "step_hoisted")
    hyper_doc = ", ".join(f"{h.name}={h.default!r}" for h in program.hypers)
    sig, passed = _init_signature(program)
    tuned_doc = ""
    if tuned:
        changed = ", ".join(f"{k} {own_defaults[k]!r} -> {v!r}" for k, v in program.hyper_defaults.items()
                            if v != own_defaults[k])
        tuned_doc = (f"Found with: {tuned.get('about', 'tuned hyperparameters')}.\n"
                     f"The defaults below are those tuned values (the program's own: {changed or 'the same'}).\n")
        if schedule:
            tuned_doc += (f"Train with the same schedule: ``sched = lr_schedule(opt)`` (LambdaLR over "
                          f"{int(schedule['steps'])} steps: linear warmup over {float(schedule['warmup']):.0%}, "
                          f"cosine decay to {float(schedule['floor']):.0%} of the peak lr), ``sched.step()`` after "
                          "each ``opt.step()``; give ``steps=`` for a longer run.\n")
        tuned_doc += "\n"

    module_doc = (
        f"{class_name}: {_title(program)}\n\n"
        "A torch.optim.Optimizer exported by optdisco from this program:\n\n"
        + _indent(text) + "\n\n"
        + tuned_doc
        + "Usage::\n\n"
        f"    from <this module> import {class_name}\n"
        f"    opt = {class_name}(model.parameters(), lr=...)   # eager, multi-tensor step\n"
        f"    opt = {class_name}(model.parameters(), compile=True)   # torch.compile'd fused step\n\n"
        "The file imports only torch (and math). It holds a copy of optdisco's runtime (torch code for\n"
        "the language's primitives), the program's step functions as optdisco's compiler generates them\n"
        "(the per-tensor one is the code the search evaluated) and the optimizer class. It is generated:\n"
        "change the program, not this file."
    )
    class_doc = (
        f"{_title(program)}\n\n"
        "Program::\n\n" + _indent(text) + "\n\n"
        + tuned_doc
        + f"Hyperparameters (defaults): {hyper_doc}. Each may be set per parameter group.\n"
        "A group may also set ``role``: \"hidden\", \"embedding\", \"head\" or \"vector\" (default: hidden for\n"
        "parameters with two or more dimensions, vector otherwise).\n\n"
        "``compile=True`` compiles each parameter's step with torch.compile, once per shape, role, dtype,\n"
        "device and branch taken (the first step that takes a branch pays for it).\n"
        "``foreach=False`` runs the per-tensor step function instead of the multi-tensor one."
        + ("\n\nThis program reads hess_diag: call ``step(closure)`` where closure() clears the gradients,\n"
           "computes the loss, calls ``loss.backward(create_graph=True)`` and returns the loss."
           if program.uses_hess_diag else "")
        + ("\n\nThis program reads g_probe, the gradient at its probe point: call ``loss.backward()``, then\n"
           "``step(closure)`` where closure() clears the gradients, computes the loss, calls ``loss.backward()``\n"
           "and returns the loss (as pytorch_optimizer's SAM)." if program.uses_probe else "")
        + ("\n\nThis program computes model-wide values: its reductions and global states run over every\n"
           "parameter of every group (one model). " + (
               f"The global states are computed from\n{', '.join(sorted(model_hypers(program)))}: these must be "
               "the same in every parameter group." if model_hypers(program) else
               "Each parameter uses its own group's hyperparameters.")
           if program.model_wide else "")
        + ("\n\nThis program has evaluation weights (w_eval): call ``eval()`` before evaluating the model and\n"
           "``train()`` before training again (as pytorch_optimizer's ScheduleFreeAdamW)."
           if program.has_eval_weights else "")
    )
    parts = [
        _docstring(module_doc),
        "",
        "import math",
        "",
        "import torch",
        "",
        "",
        "# " + "-" * 94,
        "# The runtime: a copy of optdisco.dsl.runtime, wrapped so its names stay in their own namespace.",
        "# " + "-" * 94,
        "class _Namespace:",
        "    def __init__(self, names):",
        "        self.__dict__.update(names)",
        "",
        "",
        "def _runtime():",
        _indent(_source_without_future(runtime)),
        "    return _Namespace({k: v for k, v in locals().items() if not k.startswith('__')})",
        "",
        "",
        "R = _runtime()",
        "",
        "",
        "# " + "-" * 94,
        "# The program's step functions, generated by optdisco's compiler.",
        "# " + "-" * 94,
        needed_src,
        "",
        init_src,
        "",
        step_src,
    ]
    if foreach_src:
        parts += ["", foreach_src]
    if hoisted_src:
        parts += ["", hoisted_src]
    if schedule:
        parts += [
            "",
            "# " + "-" * 94,
            "# The learning-rate schedule the program was tuned with.",
            "# " + "-" * 94,
            _schedule_source(schedule),
            "",
        ]
    parts += [
        "",
        "# " + "-" * 94,
        "# The parameter layout: a copy of optdisco.dsl.layout.",
        "# " + "-" * 94,
        _source_without_future(layout).strip("\n"),
        "",
        "",
        "# " + "-" * 94,
        "# The optimizer machinery: a copy of optdisco.dsl.optimizer_base.",
        "# " + "-" * 94,
        _source_without_future(optimizer_base).strip("\n"),
        "",
        "",
        f"class {class_name}(ProgramOptimizer):",
        _docstring(class_doc, "    "),
        "",
        f"    PROGRAM = {text!r}",
        f"    HYPERS = {program.hyper_defaults!r}",
        f"    STATE_NAMES = {tuple(s.name for s in program.param_states)!r}",
        f"    GLOBALS = {tuple(s.name for s in program.global_states)!r}",
        f"    MODEL_WIDE = {program.model_wide!r}",
        f"    MODEL_HYPERS = {tuple(sorted(model_hypers(program)))!r}",
        f"    PARAM_STATES = frozenset({param_states!r})",
        f"    READS = {tuple(reads)!r}",
        f"    USES_HESS_DIAG = {program.uses_hess_diag!r}",
        f"    USES_T = {program.uses_random or any(isinstance(e, Name) and e.id == 't' for e in walk_exprs(program))!r}",
        f"    QUANTIZED = {quantized!r}",
        f"    RANDOM = {program.uses_random!r}",
        f"    USES_PROBE = {program.uses_probe!r}",
        f"    EVAL_WEIGHTS = {program.has_eval_weights!r}",
        f"    ELEMENTWISE = {foreach_src is not None and splits_elementwise(program, info)!r}",
        f"    DECAYS = frozenset({sorted(_ema_decays(program))!r})",
        "    _needed_states = staticmethod(needed_states)",
        "    _init_state = staticmethod(init_state)",
        "    _step_tensor = staticmethod(step_tensor)",
        "    _lockstep = staticmethod(R.lockstep)",
        *(["    _ndim = staticmethod(R.Ndim)"] if program.uses_modes else []),  # ndim that keeps the shape
        f"    _step_foreach = {'staticmethod(step_foreach)' if foreach_src else 'None'}",
        f"    _statics = {'staticmethod(statics)' if hoisted_src else 'None'}",
        f"    _step_hoisted = {'staticmethod(step_hoisted)' if hoisted_src else 'None'}",
        "",
        f"    def __init__({sig}):",
        f"        super().__init__(params, {passed}, compile=compile, foreach=foreach, seed=seed)",
        "",
    ]
    source = "\n".join(parts)
    tree = ast.parse(source)  # a generated module that is not valid Python is a bug here
    if ast.get_docstring(tree, clean=False) != module_doc:  # pragma: no cover
        raise AssertionError("exported docstring does not round-trip")
    return source


@functools.lru_cache(maxsize=128)
def _optimizer_class(program: Program, doc: str, class_name: str):
    module = load_module(export_python(program, class_name), "optdisco_exported", show=True)
    cls = getattr(module, class_name)
    cls._REBUILD = _rebuild  # its module cannot be imported: pickle rebuilds it from the program's text
    return cls


def _rebuild(text: str, class_name: str):
    """An empty instance of the class that to_optimizer makes for this program text (pickle then
    restores its state with __setstate__)."""
    cls = optimizer_class(resolve_program(text), class_name)
    return cls.__new__(cls)


def optimizer_class(program, class_name: str = "DiscoveredOptimizer"):
    """The torch.optim.Optimizer subclass that ``export_python`` would write, loaded."""
    program = resolve_program(program)
    return _optimizer_class(program, program.doc, class_name)


def to_optimizer(program, params, **hyper):
    """A torch.optim.Optimizer running ``program`` (a Program, library name, ``.opt`` path or
    program text: see ``resolve_program``) on ``params`` (tensors or param-group dicts).

    Keyword arguments override the program's hyperparameter defaults (``lr`` included);
    ``compile=True`` compiles the step with torch.compile, ``foreach=False`` selects the
    per-tensor path and ``seed`` seeds the noise of programs that draw it, unless the program
    declares hyperparameters of those names."""
    program = resolve_program(program)
    cls = optimizer_class(program)
    names = set(program.hyper_defaults)
    options = {k: hyper.pop(k) for k in ("compile", "foreach", "seed") if k in hyper and k not in names}
    betas = {"betas"} if {"beta1", "beta2"} <= names else set()  # torch's (beta1, beta2)
    unknown = set(hyper) - names - betas
    if unknown:
        raise TypeError(f"unknown hyperparameter(s) {sorted(unknown)}; the program has {sorted(names)}")
    # The base initialiser takes the hyperparameters as one dict, whatever their names.
    base = next(c for c in cls.__mro__ if c.__name__ == "ProgramOptimizer")
    opt = cls.__new__(cls)
    base.__init__(opt, params, hyper, **options)
    return opt
