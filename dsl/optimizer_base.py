"""The torch.optim.Optimizer that runs a compiled optdisco program.

This module imports only ``math``, ``torch`` and :mod:`optdisco.dsl.layout` (the parameter layout
it shares with evaluation, which imports only ``math``): every exported optimizer file carries a
copy of both next to a copy of the runtime and the program's generated step functions, and
``optdisco.dsl.to_optimizer`` runs that same generated module, so the two cannot drift apart.

An exported class sets the class attributes below (``PROGRAM`` ... ``_step_foreach``) and
calls ``ProgramOptimizer.__init__`` with its hyperparameters. What it does:

- ``step(closure=None)``, ``zero_grad``, ``state_dict``/``load_state_dict`` and
  ``add_param_group`` as in torch.optim. A parameter without a gradient is skipped (its step
  count does not advance). Sparse gradients are refused.
- Parameter groups take the program's hyperparameters and ``role``: ``"hidden"``,
  ``"embedding"``, ``"head"`` or ``"vector"``; by default a parameter with two or more
  dimensions is ``hidden`` and any other ``vector``. Programs branch on roles with
  ``is_hidden``, ``is_embedding``, ``is_head`` (a Muon-style ``if is_hidden:`` rule applies to
  hidden matrices only; embeddings, heads and vectors take the program's other rule).
- State per parameter: ``"step"`` (a float32 count, as in torch.optim; only for programs that
  read ``t``) and each program state under its own name (a program state called ``step`` is
  stored as ``"step'"``); states with the parameter's shape are kept in that shape, others in
  their 2-D form. Only the states the parameter's routing can reach are allocated (a Muon
  program keeps no AdamW moments for hidden matrices); nothing else is stored.
- Three ways to run a step, all from one program: the per-tensor step function (the very code
  the search evaluates; ``foreach=False``), a multi-tensor eager step (``foreach=None/True``, the
  default where the program has one) and ``compile=True``, which compiles the per-tensor code
  with ``torch.compile`` into one fused kernel per parameter. The static values of a step
  (hyperparameters, ``t`` and what is computed from them) are computed once per step in Python
  and enter the compiled code as a small tensor, so an LR scheduler or the step count never
  triggers a recompilation; compilation happens once per distinct (shape, role, dtype, device,
  branch taken, states present) of the parameters, on the first step that meets it (seconds to
  a minute on a CPU): a t-dependent branch selects another compiled function, never recompiles one.
- Hyperparameters are checked when set through the constructor or ``add_param_group``
  (``ValueError`` naming the hyperparameter). A program with ``beta1`` and ``beta2`` also has
  torch's ``betas``, a two-way view of the pair (schedulers that cycle momentum drive beta1).
- The per-tensor step (``foreach=False``, and the only step of the programs below) stacks small
  parameters (at most ``STACK_NUMEL`` elements) of one shape, group, step count and allocated
  states as the members of one call, as evaluation batches members; quantized state never stacks.
- Programs that draw seeded noise (``randn_like``, ``rademacher_like``) run the per-tensor step
  only. Each parameter keeps its noise seed in its state (``"seed"``, an int: the optimizer's
  ``seed`` in the low 32 bits, the parameter's position among all parameters above them, as
  evaluation seeds a member's parameters); the noise is a function of that seed, the step count
  and the call site, so a run resumed from a ``state_dict`` draws exactly the noise of an unbroken one.
- Programs with model-wide values (``global_norm``, ``clip_by_global_norm``, ``global d = …``)
  step all their parameters as one model, across parameter groups (as
  ``clip_grad_norm_(model.parameters())``, SAM's gradient norm and Prodigy's sums do): the
  reductions run over every parameter that has a gradient, each parameter's share and its own
  statements computed with its group's hyperparameters. The global states are one set for the
  model, kept (the same) in every group, ``group["global_state"]`` (a dict of 0-dim tensors), so
  ``state_dict``/``load_state_dict`` carry them. The hyperparameters they are computed from
  outside the reductions (``MODEL_HYPERS``; Prodigy's lr, d0, d_coef, growth_rate, beta1, beta2,
  bias_correction) must be the same in every group: ``ValueError`` when a group is added or a
  step is taken otherwise; the rest (weight decay, say) may differ. They run the per-tensor step only: ``foreach=True``
  and ``compile=True`` are refused.
- Programs that read ``hess_diag`` need ``step(closure)``: the closure must clear the gradients,
  compute the loss, call ``loss.backward(create_graph=True)`` and return the loss. The optimizer
  then forms Hutchinson's estimate ``z * (H z)`` with one Rademacher vector ``z`` per parameter
  drawn from torch's global generator (seed it with ``torch.manual_seed`` for repeatable runs),
  and detaches the gradients.
- Programs that read ``g_probe`` (the gradient at a point the program computes, ``probe = …``:
  SAM) need ``step(closure)`` after ``loss.backward()``, as pytorch_optimizer's SAM: the step
  computes each parameter's probe point from the gradients in ``p.grad``, moves the parameters
  there, calls the closure (which clears the gradients, computes the loss, calls
  ``loss.backward()`` and returns the loss), reads the gradients there as ``g_probe``, puts the
  parameters and their first gradients back and updates them. It returns the closure's loss.
- Programs with evaluation weights (``w_eval = …``: Schedule-Free) have ``eval()`` and
  ``train()`` as pytorch_optimizer's ScheduleFreeAdamW: ``eval()`` puts ``w_eval`` in the
  parameters and keeps the training weights in each parameter's state (``"w_train"``, so a
  ``state_dict`` taken in evaluation mode is complete); ``train()`` puts them back. ``step()``
  refuses to run in evaluation mode. For other programs both do nothing.
- Programs with ``probe`` or ``w_eval`` run the per-tensor step only. A program with model-wide
  values may have a probe point: the probe phases of all parameters run in lockstep, so
  ``global_norm(g)`` in ``probe = …`` is the model's gradient norm, over all groups. It may have
  ``w_eval`` too, reading the global states kept in the groups (``w_eval`` has no reductions).
"""

import math

import torch

from .layout import ROLES, SHAPE_INPUTS, from_step_state, shape_info, to_step_state
STEP_KEY = "step"
SEED_KEY = "seed"
GLOBAL_KEY = "global_state"  # the model-wide states, kept (the same) in every parameter group
TRAIN_KEY = "w_train"  # the training weights, while an optimizer with evaluation weights is in eval()
# On the CPU the multi-tensor step runs on blocks of about this many elements, so that the
# several passes of one step reuse the cache instead of streaming the whole model each time.
CPU_BLOCK = 1 << 20


def _fe_new(out, op, foreach_op, *args, **kwargs):
    """``op`` applied to each position of the lists in ``args``: written into the buffers ``out``
    (one per parameter) with ``out=``, or, when ``out`` is None, freshly allocated by the
    multi-tensor ``foreach_op``."""
    if out is None:
        return foreach_op(*args, **kwargs)
    for i, o in enumerate(out):
        op(*[a[i] if type(a) is list else a for a in args], out=o, **kwargs)
    return out


def _write_back(p, w_in, new_w):
    """p ← new_w, the step's result for p's 2-D view w_in. A step that leaves w unchanged returns
    w_in itself: nothing to copy, and for a parameter with a size-1 dimension and non-standard
    strides (an 8×1×3×3 conv weight in channels_last) w_in reshaped back has other strides than p,
    an overlapping source that copy_ refuses. (An identity test, which torch.compile traces.)"""
    if new_w is not w_in:
        p.copy_(new_w.reshape(p.shape))


def _compiled_tensor_step(step, p, g, hd, st, SC, B, info, param_states):
    """One step of the program for one parameter, written in place; torch.compile turns it into
    fused kernels. Static values come in as the tensor SC (computed outside, once per step) and
    branch conditions as the Python bools B, so one compilation serves every step."""
    lay = (1, info[0], info[1])
    S = {k: (v.reshape(lay) if k in param_states else v.unsqueeze(0)) for k, v in st.items()}
    w_in = p.reshape(lay)
    new_w, new_s = step(S, SC, B, w_in, g.reshape(lay), None if hd is None else hd.reshape(lay))
    for k, v in new_s.items():  # first: a state set to w itself is copied before p changes
        st[k].copy_(v.reshape(st[k].shape))
    _write_back(p, w_in, new_w)


def _recording_inductor(records):
    """A torch.compile backend: inductor, recording each compiled graph with its example inputs."""

    def backend(gm, example_inputs):
        from torch._dynamo import lookup_backend

        compiled = lookup_backend("inductor")(gm, example_inputs)
        records.append((compiled, list(example_inputs)))
        return compiled

    return backend


def _input_order(inputs, p, g, hd, SC, st):
    """Which of a compiled step's arguments each graph input is ("p", "g", "hd", "SC" or
    ("st", name)), found by identity; None if some input is none of them.

    With it a later step calls the compiled graph directly, as dynamo's code would after its
    guards pass: the guards are what the key of ``_fast`` holds (device, dtype, shape, branch
    conditions, which states exist), and inductor checks sizes and strides itself. Entering the
    graph this way costs about a quarter of the call through dynamo, which dominates a step of a
    parameter of a million elements or fewer."""
    by_id = {id(p): "p", id(g): "g", id(SC): "SC"}
    if hd is not None:
        by_id[id(hd)] = "hd"
    for k, v in st.items():
        by_id.setdefault(id(v), ("st", k))
    order = [by_id.get(id(x)) for x in inputs]
    return None if any(o is None for o in order) else tuple(order)


def _advance(state):
    """The step number of this step: the parameter's count, advanced (1 where none is kept)."""
    if STEP_KEY not in state:
        return 1
    state[STEP_KEY] += 1
    return int(state[STEP_KEY].item())


def _members_as_one(gen):
    """A step generator over stacked members that take their parts in one model: each share it
    yields is summed over the members (the largest, for max) first."""
    sent = None
    while True:
        try:
            op, parts = gen.send(sent)
        except StopIteration as stop:
            return stop.value
        sent = yield op, tuple(x.amax(0, keepdim=True) if op == "max" else x.sum(0, keepdim=True) for x in parts)


def _shares_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _check_hyper(name, value, decays):
    """A hyperparameter's value as a float, or ValueError naming it: a finite real number; lr
    (and lr_*) and eps (and eps*, *_eps) not negative; an EMA decay (ema's weight) in [0, 1)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and (value.is_floating_point() or not value.dtype.is_complex)
    x = float(value) if ok else math.nan
    if not ok or not math.isfinite(x):
        raise ValueError(f"invalid value for hyperparameter {name!r}: {value!r} (a finite number is needed)")
    nonneg = name == "lr" or name.startswith("lr_") or name.startswith("eps") or name.endswith("_eps")
    if nonneg and x < 0:
        raise ValueError(f"invalid value for hyperparameter {name!r}: {value!r} (it must not be negative)")
    if name in decays and not 0 <= x < 1:
        raise ValueError(f"invalid value for hyperparameter {name!r}: {value!r} (an EMA decay: 0 <= {name} < 1)")
    return x


class BetasGroup(dict):
    """A parameter group of a program with hyperparameters beta1 and beta2, which also holds
    ``"betas"``, the tuple (beta1, beta2) as torch's Adam has it: writing either side updates the
    other, so schedulers that cycle ``betas[0]`` (OneCycleLR, CyclicLR) drive beta1."""

    def __setitem__(self, k, v):
        if k == "betas":
            b1, b2 = v
            dict.__setitem__(self, "beta1", b1)
            dict.__setitem__(self, "beta2", b2)
            v = (b1, b2)
        dict.__setitem__(self, k, v)
        if k in ("beta1", "beta2") and "beta1" in self and "beta2" in self:
            dict.__setitem__(self, "betas", (dict.__getitem__(self, "beta1"), dict.__getitem__(self, "beta2")))

    def update(self, *args, **kw):
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def setdefault(self, k, default=None):
        if k not in self:
            self[k] = default
        return self[k]

    def __reduce__(self):  # a plain dict when pickled: the optimizer wraps its groups again
        return dict, (dict(self),)


class ProgramOptimizer(torch.optim.Optimizer):
    """Base class of every exported optimizer (see the module docstring)."""

    PROGRAM = ""  # the program's text
    HYPERS = {}  # hyperparameter name -> default
    STATE_NAMES = ()  # the program's per-parameter states, in declaration order
    GLOBALS = ()  # the program's model-wide (global) states
    MODEL_WIDE = False  # the program computes model-wide values: all parameters step as one model
    MODEL_HYPERS = ()  # hyperparameters the global states are computed from: the same in every group
    # The per-tensor step (no multi-tensor or compiled form, or foreach=False) steps parameters of
    # one shape, group and step count with at most this many elements together, as the members of
    # one call: their many small steps cost Python time, not memory traffic. Larger ones step alone.
    STACK_NUMEL = 1 << 14
    PARAM_STATES = frozenset()  # the states with the parameter's shape
    READS = ()  # the shape inputs (SHAPE_INPUTS) the program reads
    USES_HESS_DIAG = False
    USES_T = True  # the program reads the step count t or draws noise (else no "step" is stored)
    QUANTIZED = False  # some state is stored quantized (per-tensor path only)
    RANDOM = False  # the program draws seeded noise (per-tensor path only)
    USES_PROBE = False  # the program reads g_probe, the gradient at its probe point (per-tensor path only)
    EVAL_WEIGHTS = False  # the program gives evaluation weights, w_eval (per-tensor path only)
    ELEMENTWISE = False  # the multi-tensor step is elementwise: it may run on flat slices
    DECAYS = frozenset()  # hyperparameters the program uses as an EMA decay (ema's third argument)
    _REBUILD = None  # set by optdisco.dsl.to_optimizer: rebuilds the class from PROGRAM when unpickled
    _needed_states = None  # staticmethod(rows, ...) -> the states this parameter's routing reaches
    _init_state = None  # staticmethod(hyper, w, g, t, hess_diag, rows, ..., need) -> first states
    _step_tensor = None  # staticmethod: the per-tensor step function (evaluation's code)
    _step_foreach = None  # staticmethod or None: the multi-tensor step function
    _statics = None  # staticmethod: static values of a step (for compile=True)
    _step_hoisted = None  # staticmethod: the per-tensor step reading them (for compile=True)
    _lockstep = None  # staticmethod: runs the per-tensor steps of a model-wide program together
    _ndim = staticmethod(len)  # a parameter's ndim from its shape; the exported class: R.Ndim, which keeps the shape

    def __init__(self, params, defaults, *, compile=False, foreach=None, seed=0):
        if "betas" in defaults and self._has_betas():
            defaults = dict(defaults)
            b = defaults.pop("betas")
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                raise ValueError(f"invalid value for 'betas': {b!r} (a pair (beta1, beta2) is needed)")
            defaults["beta1"], defaults["beta2"] = b
        unknown = set(defaults) - set(self.HYPERS)
        if unknown:
            raise TypeError(f"unknown hyperparameter(s) {sorted(unknown)}; {type(self).__name__} has {sorted(self.HYPERS)}")
        if foreach and self._step_foreach is None:
            raise ValueError("this program has no multi-tensor form (quantized state, seeded noise, model-wide values, "
                             "a probe point, evaluation weights or per-mode factors); use foreach=False")
        if compile and self._step_hoisted is None:
            raise ValueError("compile=True does not support quantized state, seeded noise, model-wide values "
                             "(global_norm, global state), a probe point, evaluation weights or per-mode factors "
                             "(mode_gram, mode_mul, eye_mode) yet; use compile=False")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
        self.seed = seed
        self.compile = bool(compile)
        self.foreach = self._step_foreach is not None if foreach is None else bool(foreach)
        self._read_idx = tuple(SHAPE_INPUTS.index(n) for n in self.READS)
        self._keys = {n: (n if n not in (STEP_KEY, SEED_KEY) else n + "'") for n in self.STATE_NAMES}
        self._scratch = {}
        self._infos = {}
        self._compiled = {}
        self._fast = {}  # compiled graphs entered directly (see _input_order)
        full = dict(self.HYPERS)
        full.update(defaults)
        for k in self.HYPERS:
            _check_hyper(k, full[k], self.DECAYS)
        if self._has_betas():
            full["betas"] = (full["beta1"], full["beta2"])  # torch's name: schedulers look for it
        full["role"] = None
        super().__init__(params, full)

    def __getstate__(self):
        state = super().__getstate__()
        state.update(compile=self.compile, foreach=self.foreach, seed=self.seed)
        state["param_groups"] = [dict(g) for g in state["param_groups"]]
        return state

    def __reduce_ex__(self, protocol):
        """A class loaded by to_optimizer lives in a module made from the program's text, which
        pickle cannot import: such an optimizer pickles as (the program's text, its class name)
        plus its state (param groups, per-parameter state, options), and unpickling rebuilds the
        class from the text (through the parser; no code is pickled). A class imported from an
        exported file pickles by reference to that file's module, as any class."""
        rebuild = type(self)._REBUILD
        if rebuild is None:
            return super().__reduce_ex__(protocol)
        return rebuild, (self.PROGRAM, type(self).__name__), self.__getstate__()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._wrap_groups()

    def _wrap_groups(self):
        if self._has_betas():
            for i, g in enumerate(self.param_groups):
                if not isinstance(g, BetasGroup):
                    w = BetasGroup()
                    w.update({k: v for k, v in g.items() if k != "betas"})
                    self.param_groups[i] = w

    def __setstate__(self, state):
        super().__setstate__(state)
        self._wrap_groups()
        self.__dict__.setdefault("compile", False)
        self.__dict__.setdefault("foreach", self._step_foreach is not None)
        self.__dict__.setdefault("seed", 0)
        self._read_idx = tuple(SHAPE_INPUTS.index(n) for n in self.READS)
        self._keys = {n: (n if n not in (STEP_KEY, SEED_KEY) else n + "'") for n in self.STATE_NAMES}
        for k, v in dict(_scratch={}, _infos={}, _compiled={}, _fast={}).items():
            self.__dict__.setdefault(k, v)

    def _has_betas(self):
        return "beta1" in self.HYPERS and "beta2" in self.HYPERS and "betas" not in self.HYPERS

    def add_param_group(self, param_group):
        role = param_group.get("role")
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r} for a parameter group; use one of {ROLES} (or None: "
                             "hidden for matrices, vector otherwise)")
        betas = ("betas",) if self._has_betas() else ()
        extra = set(param_group) - set(self.HYPERS) - {"params", "role", "initial_lr", "name", *betas}
        if extra:
            raise TypeError(f"unknown parameter-group option(s) {sorted(extra)}; the options are the "
                            f"hyperparameters {sorted(self.HYPERS)} and 'role'")
        if betas:
            group = BetasGroup()
            if "betas" in param_group:  # the tuple wins over beta1/beta2 given beside it, as it is set last
                group.update({k: v for k, v in param_group.items() if k != "betas"})
                b = param_group["betas"]
                if not isinstance(b, (tuple, list)) or len(b) != 2:
                    raise ValueError(f"invalid value for 'betas': {b!r} (a pair (beta1, beta2) is needed)")
                group["betas"] = tuple(b)
            else:
                group.update(param_group)
                group.setdefault("beta1", self.defaults.get("beta1"))
                group.setdefault("beta2", self.defaults.get("beta2"))
            param_group = group
        for k in self.HYPERS:
            _check_hyper(k, param_group[k] if k in param_group else self.defaults[k], self.DECAYS)
        if self.MODEL_HYPERS:
            self._check_model_hypers([*getattr(self, "param_groups", []), param_group])
        super().add_param_group(param_group)

    # -- per-parameter facts ---------------------------------------------------------------
    def _info(self, p, role):
        """The program's static inputs for p: rows, cols, ndim, numel and the role flags."""
        shape = p.shape
        hit = self._infos.get(p)
        if hit is not None and hit[0] == shape and hit[1] == role:
            return hit[2]
        info = shape_info(tuple(shape), role, type(self)._ndim(shape))
        self._infos[p] = (shape, role, info)
        return info

    def _to_program(self, state, lay):
        """The step function's view of a parameter's state (member layout [1, R, C])."""
        named = {n: state[self._keys[n]] for n in self.STATE_NAMES if self._keys[n] in state}
        named.update((k, v) for k, v in state.items() if "." in k)  # quantized parts
        return to_step_state(named, lay, self.PARAM_STATES)

    def _present(self, state):
        """The program states allocated for a parameter (quantized ones are stored as 'name.part')."""
        parts = {k.split(".", 1)[0] for k in state if "." in k}
        return {n for n in self.STATE_NAMES if self._keys[n] in state or n in parts}

    def _from_program(self, new_state, p, state):
        """The step function's new state stored in ``state`` (the parameter's own shape or 2-D)."""
        for n, v in from_step_state(new_state, p.shape, self.PARAM_STATES).items():
            if "." in n:
                state[n] = v
                continue
            if not isinstance(v, torch.Tensor):
                v = torch.full((1, 1), float(v), dtype=p.dtype, device=p.device)
            if n in self.PARAM_STATES:
                if _shares_storage(v, p) or (p.grad is not None and _shares_storage(v, p.grad)):
                    v = v.clone()  # a state set to w (or g) itself: the step writes p in place next
                state[self._keys[n]] = v
            else:
                state[self._keys[n]] = v.reshape(v.shape[-2:]) if v.dim() >= 2 else v.reshape(1, 1)

    def _init_param_state(self, p, g, hd, hyper, info, state):
        lay = (1, info[0], info[1])
        need = type(self)._needed_states(*info)
        first = type(self)._init_state(hyper, p.reshape(lay), g.reshape(lay), 1,
                                        None if hd is None else hd.reshape(lay), *info, need)
        if self.USES_T and ("t" in need or self.RANDOM):  # noise is drawn from the step count
            state[STEP_KEY] = torch.zeros((), dtype=torch.float32)
        if self.RANDOM:  # the parameter's position among all parameters, in the low 32 bits' company
            index = next(i for i, q in enumerate(q for gr in self.param_groups for q in gr["params"]) if q is p)
            state[SEED_KEY] = (self.seed & 0xFFFFFFFF) | (index << 32)
        self._from_program(first, p, state)
        for n in self.STATE_NAMES:  # own storage, never a view of the parameter or gradient
            k = self._keys[n]
            if k in state:
                state[k] = state[k].clone(memory_format=torch.contiguous_format)

    def _scratch_for(self, params, k):
        lists = []
        for p in params:
            bufs = self._scratch.setdefault(p, {})
            b = bufs.get(k)
            if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                b = bufs[k] = torch.empty_like(p, memory_format=torch.contiguous_format)
            lists.append(b)
        return lists

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss, hess = None, None
        if self.EVAL_WEIGHTS and any(TRAIN_KEY in st for st in self.state.values()):
            raise RuntimeError(f"{type(self).__name__} is in evaluation mode (eval()): call train() before step()")
        if self.MODEL_WIDE:  # before any closure runs or any state moves
            self._check_model_hypers(self.param_groups)
        if self.USES_HESS_DIAG:
            loss, hess = self._hutchinson(closure)
        elif closure is not None and not self.USES_PROBE:
            with torch.enable_grad():
                loss = closure()
        if self.USES_PROBE:
            loss, self._probe_grads = self._gradients_at_probe(closure, hess)
        try:
            if self.MODEL_WIDE:
                self._run_model_wide([self._entries(group, hess) for group in self.param_groups])
            else:
                for gi, group in enumerate(self.param_groups):
                    self._step_group(gi, group, hess)
        finally:
            self._probe_grads = None
        return loss

    def _entries(self, group, hess):
        """(the group's hyperparameters, [(p, g, its state, its static inputs, its hess_diag)] for
        every parameter of the group that has a gradient, its state created at its first step)."""
        hyper = {k: float(group[k]) for k in self.HYPERS}
        role = group["role"]
        entries = []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (parameter of shape "
                                   f"{tuple(p.shape)}); use dense gradients, e.g. nn.Embedding(..., sparse=False)")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters; use torch.view_as_real")
            hd = hess.get(p) if hess is not None else None
            info = self._info(p, role)
            state = self.state[p]
            if not state and (self.USES_T or self.STATE_NAMES or self.RANDOM):
                self._init_param_state(p, g, hd, hyper, info, state)
            entries.append((p, g, state, info, hd))
        return hyper, entries

    def _step_group(self, gi, group, hess):
        hyper, entries = self._entries(group, hess)
        if not entries:
            return
        if self.compile:
            self._run_compiled(gi, entries, hyper)
        elif self.foreach:
            self._run_foreach(entries, hyper)
        else:
            self._run_per_tensor(entries, hyper)

    def _run_per_tensor(self, entries, hyper):
        for members, t in self._buckets(entries):
            (new_w, new_s), w_in = self._call_step(members, hyper, t)
            self._store(members, w_in, new_w, new_s)

    def _buckets(self, entries, advance=True):
        """[(members, t)]: the entries (their step counts advanced, or only read when ``advance`` is
        false: the step about to be taken) in the sets that step together,
        small parameters (at most ``STACK_NUMEL`` elements) of one shape, dtype, device, step count
        and allocated states stacked as the members of one call; each larger one alone."""
        buckets = {}
        for e in entries:
            p, state, info = e[0], e[2], e[3]
            t = _advance(state) if advance else (int(state[STEP_KEY].item()) + 1 if STEP_KEY in state else 1)
            alone = p.numel() > self.STACK_NUMEL or self.QUANTIZED
            key = (id(e) if alone else None, tuple(p.shape), info, p.dtype, p.device, t,
                   tuple(sorted(self._present(state))), e[4] is None)
            buckets.setdefault(key, []).append(e)
        return [(members, key[5]) for key, members in buckets.items()]

    def _call_step(self, members, hyper, t, stored=None, phase=None):
        """(The per-tensor step of one parameter, or of several of one shape stacked as the members
        [M, R, C] of one call, and the weights it was given.) For a model-wide program the step is
        a generator; a stacked one sums its members' shares of each reduction (the largest, for
        max) before it yields, and its global states are [M, 1, 1] or [1, 1, 1]."""
        step = type(self)._step_tensor
        p0, info = members[0][0], members[0][3]
        M, lay = len(members), (1, info[0], info[1])
        S = [self._to_program(e[2], lay) for e in members]
        if M == 1:
            state = S[0]
        else:
            state = {n: torch.cat([s[n] for s in S]) if isinstance(v, torch.Tensor) else v for n, v in S[0].items()}

        def stack(xs):
            return xs[0].reshape(lay) if M == 1 else torch.stack([x.reshape(lay[1:]) for x in xs])

        W, G = stack([e[0] for e in members]), stack([e[1] for e in members])
        HD = None if members[0][4] is None else stack([e[4] for e in members])
        kw = {}
        if self.RANDOM:
            kw["seed"] = torch.tensor([e[2][SEED_KEY] for e in members], dtype=torch.int64,
                                      device=p0.device).reshape(M, 1, 1)
        if phase is not None:
            kw["phase"] = phase
        elif self.USES_PROBE:
            kw["v_g_probe"] = stack([self._probe_grads[e[0]] for e in members])
        if self.MODEL_WIDE:
            kw["gstate"] = None if stored is None else {n: v.to(p0.device).reshape(1, 1, 1) for n, v in stored.items()}
        out = step(state, hyper, False, W, G, t, HD, *info, need=self._present(members[0][2]), **kw)
        if self.MODEL_WIDE and M > 1:
            out = _members_as_one(out)
        return out, W

    def _store(self, members, w_in, new_w, new_s):
        """The step's results written to the parameters and their states (a state first, so that
        one set to w itself is copied before p changes)."""
        if len(members) == 1:
            p, state = members[0][0], members[0][2]
            self._from_program(new_s, p, state)
            _write_back(p, w_in, new_w)
            return
        M = len(members)

        def member(v, i):  # member i's value; one computed for all members (no member dimension) as it is
            return v[i:i + 1].clone() if v.shape[0] == M else v.clone()

        for i, (p, g, state, info, hd) in enumerate(members):
            self._from_program({n: member(v, i) if isinstance(v, torch.Tensor) and "." not in n else v
                                for n, v in new_s.items()}, p, state)
            p.copy_(member(new_w, i).reshape(p.shape))

    def _stored_global(self):
        """The model-wide states kept in the parameter groups (the same in each), or None before
        the first step."""
        return next((g[GLOBAL_KEY] for g in self.param_groups if GLOBAL_KEY in g), None)

    def _check_model_hypers(self, groups):
        """The hyperparameters the global states are computed from must agree across groups."""
        for k in self.MODEL_HYPERS:
            values = [float(g[k]) if k in g else float(self.defaults[k]) for g in groups]
            if any(v != values[0] and not (math.isnan(v) and math.isnan(values[0])) for v in values):
                raise ValueError(
                    f"{type(self).__name__}: hyperparameter {k!r} enters the model-wide state "
                    f"({', '.join(self.GLOBALS)}), which all parameter groups share, so it must be the same in "
                    f"every group; the groups have {values}")

    def _run_model_wide(self, grouped):
        """The per-tensor steps of every parameter of every group, run in lockstep, each with its
        group's hyperparameters: each yields its share of a model-wide reduction and gets the
        model's total back (over all groups, as SAM's gradient norm and Prodigy's sums). Small
        parameters step stacked (``_buckets``). The global states are read from and written to
        every group's ``group[GLOBAL_KEY]``."""
        stored = self._stored_global()
        units, steps = [], []  # units: the parameters each step generator updates
        for hyper, group_entries in grouped:
            for members, t in self._buckets(group_entries):
                gen, w_in = self._call_step(members, hyper, t, stored)
                units.append((members, w_in))
                steps.append(gen)
        if not steps:
            return
        results = type(self)._lockstep(steps)
        for (members, w_in), (new_w, new_s, _) in zip(units, results):
            self._store(members, w_in, new_w, new_s)
        first = {n: v.reshape(-1)[0].clone() for n, v in results[0][2].items()}
        for group in self.param_groups:
            group[GLOBAL_KEY] = {n: v.clone() for n, v in first.items()}

    def _run_foreach(self, entries, hyper):
        ts = [1] * len(entries)
        counted = [i for i, e in enumerate(entries) if STEP_KEY in e[2]]
        if counted:
            steps = [entries[i][2][STEP_KEY] for i in counted]
            torch._foreach_add_(steps, 1.0)
            for i, st in zip(counted, steps):
                ts[i] = int(st.item())
        buckets = {}
        for e, t in zip(entries, ts):
            p, info = e[0], e[3]
            key = (p.device, p.dtype, t) + tuple(info[i] for i in self._read_idx)
            buckets.setdefault(key, []).append(e)
        step = type(self)._step_foreach
        for key, items in buckets.items():
            P = [e[0] for e in items]
            G = [e[1] for e in items]
            HD = [e[4] for e in items] if self.USES_HESS_DIAG else None
            first = items[0][2]  # the bucket shares its routing, hence its allocated states
            S = {n: [e[2][self._keys[n]] for e in items] for n in self.STATE_NAMES if self._keys[n] in first}
            if key[0].type != "cpu":
                LAY = [(1, e[3][0], e[3][1]) for e in items]
                step(P, S, G, HD, hyper, key[2], *items[0][3], LAY, [p.shape for p in P], lambda k: None)
                continue
            for block in self._cpu_blocks(items, P, G, HD, S):
                bP, bG, bHD, bS, bLAY, bSHAPES, scratch = block
                step(bP, bS, bG, bHD, hyper, key[2], *items[0][3], bLAY, bSHAPES, scratch)

    def _cpu_blocks(self, items, P, G, HD, S):
        """The bucket in blocks of about CPU_BLOCK elements: flat slices of every tensor when the
        step is elementwise (and everything is contiguous), else whole tensors grouped."""
        tensors = P + G + (HD or []) + [t for lst in S.values() for t in lst]
        sliced = self.ELEMENTWISE and all(t.is_contiguous() for t in tensors)
        pieces = []  # (item index, start, stop)
        for i, p in enumerate(P):
            n = p.numel()
            if sliced and n > CPU_BLOCK:
                pieces += [(i, a, min(a + CPU_BLOCK, n)) for a in range(0, n, CPU_BLOCK)]
            else:
                pieces.append((i, None, None))
        block, size = [], 0
        for piece in pieces + [None]:
            n = 0 if piece is None else (P[piece[0]].numel() if piece[1] is None else piece[2] - piece[1])
            if block and (piece is None or size + n > CPU_BLOCK):
                yield self._block(block, items, P, G, HD, S)
                block, size = [], 0
            if piece is not None:
                block.append(piece)
                size += n

    def _block(self, block, items, P, G, HD, S):
        def cut(t, a, b):
            return t if a is None else t.view(-1)[a:b]

        bP = [cut(P[i], a, b) for i, a, b in block]
        bG = [cut(G[i], a, b) for i, a, b in block]
        bHD = None if HD is None else [cut(HD[i], a, b) for i, a, b in block]
        bS = {n: [cut(lst[i], a, b) for i, a, b in block] for n, lst in S.items()}
        bLAY = [(1, items[i][3][0], items[i][3][1]) for i, a, b in block]
        bSHAPES = [P[i].shape for i, a, b in block]
        params = [P[i] for i, a, b in block]

        def scratch(k):
            full = self._scratch_for(params, k)
            return [cut(t, a, b) for t, (i, a, b) in zip(full, block)]

        return bP, bG, bHD, bS, bLAY, bSHAPES, scratch

    def _run_compiled(self, gi, entries, hyper):
        statics, step = type(self)._statics, type(self)._step_hoisted
        tables = {}  # parameters with the same static values share one tensor (one copy to a GPU)
        for p, g, state, info, hd in entries:
            t = _advance(state)
            numbers, conds = statics(hyper, t, *info)
            sdtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            SC = tables.get((p.device, sdtype, tuple(numbers)))
            if SC is None:
                SC = tables[(p.device, sdtype, tuple(numbers))] = torch.tensor(numbers, dtype=sdtype, device=p.device)
            st = {n: state[self._keys[n]] for n in self.STATE_NAMES if self._keys[n] in state}
            conds = tuple(conds)
            # the direct entry (see _input_order) serves contiguous inputs only: same shape then
            # means same strides, which the graph was compiled for
            dense = (p.is_contiguous() and g.is_contiguous() and (hd is None or hd.is_contiguous())
                     and all(v.is_contiguous() for v in st.values()))
            fast_key = (p.device, p.dtype, info, conds, hd is not None, tuple(st)) if dense else None
            fast = self._fast.get(fast_key)
            if fast is not None:
                fn, order = fast
                args = {"p": p, "g": g, "hd": hd, "SC": SC}
                try:
                    fn(*[args[k] if type(k) is str else st[k[1]] for k in order])
                    continue
                except (AssertionError, RuntimeError, TypeError):
                    # inductor's own size/stride checks run before any kernel: on a mismatch this
                    # key goes back to dynamo, which guards, recompiles if it must, and runs it
                    del self._fast[fast_key]
            # One function per (device, dtype, shape and role, branch conditions, states present):
            # a branch that flips with t selects another function, compiled once when first taken,
            # instead of making dynamo recompile one function (up to its recompile limit, then eager)
            key = (p.device, p.dtype, info, conds, hd is not None, tuple(st))
            entry = self._compiled.get(key)
            if entry is None:
                # A fresh copy of the function per key: its own compile cache, compiled once.
                code = _compiled_tensor_step.__code__.replace()
                copy = type(_compiled_tensor_step)(code, _compiled_tensor_step.__globals__, "compiled_tensor_step")
                records = []
                entry = self._compiled[key] = (torch.compile(copy, dynamic=False, backend=_recording_inductor(records)),
                                               records)
            fn, records = entry
            before = len(records)
            fn(step, p, g, hd, st, SC, conds, info, self.PARAM_STATES)
            if len(records) > before:
                new = records[before:]
                records[before:] = [None] * len(new)  # keep no example tensors alive
                if len(new) == 1 and dense:  # this call compiled one whole graph: learn its inputs
                    compiled, inputs = new[0]
                    order = _input_order(inputs, p, g, hd, SC, st)
                    if order is not None:
                        self._fast[fast_key] = (compiled, order)

    # -- Hutchinson's estimate of the Hessian diagonal ------------------------------------
    def _hutchinson(self, closure):
        name = type(self).__name__
        if closure is None:
            raise RuntimeError(
                f"{name} runs a program that reads hess_diag: call step(closure), where closure() clears the "
                "gradients, computes the loss, calls loss.backward(create_graph=True) and returns the loss")
        with torch.enable_grad():
            loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if not grads:
            return loss, {}
        if any(not g.requires_grad for g in grads):
            raise RuntimeError(
                f"{name} needs the gradients' graph to estimate hess_diag: call loss.backward(create_graph=True) "
                "inside the closure")
        zs = [torch.randint_like(p, 0, 2) * 2 - 1 for p in params]
        with torch.enable_grad():
            hz = torch.autograd.grad(grads, params, grad_outputs=zs, allow_unused=True)
        hess = {}
        for p, z, h in zip(params, zs, hz):
            hess[p] = (z * h).detach() if h is not None else torch.zeros_like(p)
            p.grad = p.grad.detach()
        return loss, hess

    # -- the gradient at the probe point; evaluation weights ---------------------------------
    def _gradients_at_probe(self, closure, hess):
        """(the closure's loss, {p: the gradient at p's probe point}), the parameters and their
        gradients at the current weights left as they were."""
        name = type(self).__name__
        if closure is None:
            raise RuntimeError(
                f"{name} runs a program that reads g_probe, the gradient at another point: call loss.backward(), "
                "then step(closure), where closure() clears the gradients, computes the loss, calls loss.backward() "
                "and returns the loss (as pytorch_optimizer's SAM)")
        stored = self._stored_global() if self.MODEL_WIDE else None
        units, phases = [], []  # the parameters of each probe phase (stacked as _run_per_tensor's), and it
        for group in self.param_groups:
            hyper, entries = self._entries(group, hess)
            for members, t in self._buckets(entries, advance=False):
                out, _ = self._call_step(members, hyper, t, stored, phase="probe")
                units.append(members)
                phases.append(out)
        if self.MODEL_WIDE and phases:  # every parameter's probe phase in lockstep: global_norm(g) is the model's
            phases = type(self)._lockstep(phases)
        saved = []  # (p, its weights, its gradient, its probe point)
        for members, (point, _) in zip(units, phases):
            for i, e in enumerate(members):
                p, g = e[0], e[1]
                saved.append((p, p.detach().clone(), g.detach().clone(), point[i if len(members) > 1 else 0].reshape(p.shape)))
        try:
            for p, _, _, point in saved:
                p.copy_(point)
            with torch.enable_grad():
                loss = closure()
            grads = {p: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p, *_ in saved}
        finally:
            for p, w, g, _ in saved:
                p.copy_(w)
                p.grad = g
        return loss, grads

    @torch.no_grad()
    def eval(self):
        """Put the evaluation weights (the program's w_eval) in the parameters, keeping the
        training weights in their state; nothing for programs without w_eval, or if already done."""
        if not self.EVAL_WEIGHTS:
            return
        stored = self._stored_global() if self.MODEL_WIDE else None
        for group in self.param_groups:
            hyper = {k: float(group[k]) for k in self.HYPERS}
            for p in group["params"]:
                state = self.state[p]
                if TRAIN_KEY in state or (not state and (self.USES_T or self.STATE_NAMES or self.RANDOM)):
                    continue  # in eval mode already, or never stepped: the weights are the evaluation weights
                t = int(state[STEP_KEY].item()) if STEP_KEY in state else 1
                entry = (p, p, state, self._info(p, group["role"]), None)  # w_eval reads no gradient
                out, _ = self._call_step([entry], hyper, t, stored, phase="eval")
                # a model-wide program's step is a generator; w_eval may read the global states, not reductions
                w_eval, _ = type(self)._lockstep([out])[0] if self.MODEL_WIDE else out
                state[TRAIN_KEY] = p.detach().clone(memory_format=torch.contiguous_format)
                p.copy_(w_eval.reshape(p.shape))

    @torch.no_grad()
    def train(self):
        """Put the training weights back after eval(); nothing otherwise."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and TRAIN_KEY in state:
                    p.copy_(state.pop(TRAIN_KEY))
