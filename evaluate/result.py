"""What one evaluation returns: fitness, best learning rate, every member's outcome and curves.

A :class:`Result` is plain data. ``to_dict()`` gives strict JSON (no NaN or Infinity literals:
non-finite numbers become the strings ``"inf"``, ``"-inf"`` and ``"nan"``) for a run store, and
``Result.from_dict`` reads it back, so ``Result.from_dict(json.loads(json.dumps(r.to_dict())))``
equals ``r`` field for field.

Fitness is lower-is-better: the held-out loss at the best learning rate, median over seeds. A
program none of whose members finished has fitness ``WORST`` (``float("inf")``), which sorts
after every real loss, and a ``reason``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

WORST = math.inf
"""Fitness of a program with no finished member: sorts after every real loss."""


def _enc(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (list, tuple)):
        return [_enc(v) for v in x]
    if isinstance(x, dict):
        return {k: _enc(v) for k, v in x.items()}
    return x


def _dec_float(x: Any) -> Any:
    if x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, list):
        return [_dec_float(v) for v in x]
    return x


@dataclass
class Member:
    """One training run: a learning rate and a seed.

    ``final_loss`` is the held-out loss after the last step (``inf`` if the member failed).
    ``failed_step`` and ``reason`` say when and why a member was stopped (``None`` if it finished).
    ``train_curve`` holds the training loss averaged over the steps of each window ending at the
    evaluation's ``curve_steps`` (``nan`` after a failure); ``eval_curve`` the held-out loss at the
    evaluation's ``eval_steps`` (empty unless ``eval_every`` was asked for). ``quantized_loss``
    maps a quantization format to the held-out loss of the member's quantized final weights
    (``evaluate.quantize``; empty unless asked for, or if the member failed).
    """

    lr: float
    seed: int
    final_loss: float = WORST
    failed_step: int | None = None
    reason: str | None = None
    train_curve: list[float] = field(default_factory=list)
    eval_curve: list[float] = field(default_factory=list)
    quantized_loss: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.reason is not None

    def to_dict(self) -> dict:
        return _enc({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        return cls(
            lr=float(_dec_float(d["lr"])), seed=int(d["seed"]), final_loss=float(_dec_float(d["final_loss"])),
            failed_step=d.get("failed_step"), reason=d.get("reason"),
            train_curve=[float(v) for v in _dec_float(d.get("train_curve", []))],
            eval_curve=[float(v) for v in _dec_float(d.get("eval_curve", []))],
            quantized_loss={k: float(_dec_float(v)) for k, v in d.get("quantized_loss", {}).items()},
        )


@dataclass
class Result:
    """The outcome of ``evaluate(program, task, …)``.

    - ``fitness``: held-out loss at ``best_lr``, median over ``seeds`` (``WORST`` if none finished).
    - ``lrs`` and ``lr_losses``: the grid as run (sorted, extension included) and the median
      held-out loss at each of its learning rates.
    - ``edge``: ``"low"``/``"high"`` when the best learning rate is at that end of the final grid
      (even after the one extension), else ``None``; ``extended``: the side the grid was extended
      to once, or ``None``.
    - ``members``: every run, with its curves and, if it failed, the step and the reason.
    - ``wall_time`` in seconds and ``member_steps`` (training steps done, summed over members).
    - ``trials``: for a program that declares tuned hyperparameters, each one's value at each
      learning rate of ``lrs`` (``{name: [value per lr]}``); ``best_hyper`` their values at
      ``best_lr`` (both empty otherwise).
    - ``quantized``: for each quantization format asked for, the held-out loss of the best
      learning rate's members with their weights quantized, median over seeds.
    """

    program: str
    task: str
    size: str
    steps: int
    seeds: list[int]
    lrs: list[float]
    lr_losses: list[float]
    fitness: float
    best_lr: float | None
    members: list[Member]
    curve_steps: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    edge: str | None = None
    extended: str | None = None
    reason: str | None = None
    wall_time: float = 0.0
    member_steps: int = 0
    schedule: dict = field(default_factory=dict)
    hyper: dict = field(default_factory=dict)
    device: str = "cpu"
    trials: dict = field(default_factory=dict)
    best_hyper: dict = field(default_factory=dict)
    quantized: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- views
    @property
    def failures(self) -> list[Member]:
        """Members that did not finish (diverged, errored or ran out of time), with their reasons."""
        return [m for m in self.members if m.failed]

    @property
    def ok(self) -> bool:
        return math.isfinite(self.fitness)

    def at_lr(self, lr: float) -> list[Member]:
        """The members trained at learning rate ``lr`` (one per seed), in seed order."""
        return [m for m in self.members if math.isclose(m.lr, lr, rel_tol=1e-9)]

    def best_members(self) -> list[Member]:
        return [] if self.best_lr is None else self.at_lr(self.best_lr)

    def summary(self) -> str:
        lr = "—" if self.best_lr is None else f"{self.best_lr:.3g}"
        s = f"{self.task}/{self.size}: fitness {self.fitness:.5g} at lr {lr} ({self.steps} steps, " \
            f"{len(self.seeds)} seeds, {len(self.lrs)} LRs, {len(self.failures)} failed, {self.wall_time:.2f}s)"
        if self.edge:
            s += f"; best LR at the {self.edge} edge of the grid"
        if self.reason:
            s += f"; {self.reason}"
        return s

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = [m.to_dict() for m in v] if f.name == "members" else _enc(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Result.from_dict: unknown fields {unknown}")
        kw = dict(d)
        kw["members"] = [Member.from_dict(m) for m in d["members"]]
        kw["lrs"] = [float(v) for v in _dec_float(d["lrs"])]
        kw["lr_losses"] = [float(v) for v in _dec_float(d["lr_losses"])]
        kw["fitness"] = float(_dec_float(d["fitness"]))
        kw["best_lr"] = None if d.get("best_lr") is None else float(_dec_float(d["best_lr"]))
        kw["seeds"] = [int(s) for s in d["seeds"]]
        kw["quantized"] = {k: float(_dec_float(v)) for k, v in d.get("quantized", {}).items()}
        return cls(**kw)

    def outcome(self) -> dict:
        """``to_dict()`` without the timing fields: what determinism promises to repeat."""
        d = self.to_dict()
        d.pop("wall_time")
        return d
