"""Search configuration: a dataclass, read from a TOML file and/or command-line flags, recorded
whole in every run store.

A TOML file holds the same keys as :class:`SearchConfig`; tiers are an array of tables::

    budget = 300
    workers = 2
    seed_programs = ["sgd", "momentum"]

    [[tiers]]
    task = "mlp"
    steps = 100

    [[tiers]]
    task = "mlp"
    seeds = 2
    promote = 0.25          # (of the previous tier) fraction promoted into this one
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import FieldError, check_dataclass, check_mapping

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXECUTORS = ("ray", "local")
DEFAULT_SEED_PROGRAMS = ("sgd", "momentum", "adam", "signum", "lion")


@dataclass(frozen=True)
class Tier:
    """One stage of the funnel: a task (by name and size), a training budget and the fraction of
    this tier's candidates that move on to the next tier.

    ``steps``/``seeds`` (a count: seeds 0…n−1)/``lrs``/``points`` (of the LR grid) left as
    ``None`` take the evaluator's defaults for the task.
    ``time_limit`` (seconds) bounds one evaluation; a hung one is stopped and recorded as failed.
    """

    task: str = "mlp"
    size: str = "proxy"
    steps: int | None = None
    seeds: int | None = None
    lrs: tuple[float, ...] | None = None
    points: int | None = None
    promote: float = 0.25
    time_limit: float = 300.0

    def __post_init__(self):
        if isinstance(self.lrs, list):
            object.__setattr__(self, "lrs", tuple(self.lrs))
        check_dataclass(self, "tier")

    def label(self) -> str:
        parts = [self.task]
        if self.size != "proxy":
            parts.append(self.size)
        if self.steps:
            parts.append(f"{self.steps} steps")
        if self.seeds:
            parts.append(f"{self.seeds} seed{'s' if self.seeds != 1 else ''}")
        return " ".join(parts)

    @staticmethod
    def from_dict(d: dict, key: str = "tier") -> "Tier":
        check_mapping(Tier, d, key)
        d = dict(d)
        if d.get("lrs") is not None:
            d["lrs"] = tuple(float(x) for x in d["lrs"])
        return Tier(**d)


def default_tiers(task: str = "mlp") -> tuple[Tier, ...]:
    """The default funnel: the proxy run with one seed on a coarse 5-point LR grid, then the
    standard protocol (8-point grid, two seeds) for the best quarter. (A shortened first tier
    was tried: at 100 or 200 of the MLP proxy's 400 steps the library's methods rank almost in
    reverse, so tier 0 keeps the full length and saves on seeds and grid points instead.)"""
    return (Tier(task, seeds=1, points=5), Tier(task, seeds=2, promote=0.25))


@dataclass
class SearchConfig:
    """Everything a search run needs; recorded in its store.

    budget: evaluations to run (a duplicate costs none; each funnel tier costs one).
    workers: evaluations in flight at once. executor: ``ray`` (default) or ``local``
    (in-process). address: a Ray cluster to join (``auto`` or ``host:port``); by default a local
    Ray instance with ``workers`` CPUs is started.
    seed: the random seed; with one worker a run is a function of it.
    task: the proxy task for the default funnel; tiers: an explicit funnel instead.
    seed_programs: library programs that warm-start the population (``["all"]`` for every one).
    population / tournament: aging-evolution sizes. max_statements: the length limit.
    restart_after: evaluations without improvement after which the population restarts from
    the best programs so far and the seeds (0: never).
    max_retries: resubmissions of an evaluation whose worker died.
    mutation_weights: relative frequency of each mutation operator.
    """

    budget: int = 100
    workers: int = 2
    executor: str = "ray"
    address: str | None = None
    seed: int = 0
    task: str = "mlp"
    tiers: tuple[Tier, ...] | None = None
    seed_programs: tuple[str, ...] = DEFAULT_SEED_PROGRAMS
    population: int = 24
    tournament: int = 6
    max_statements: int = 12
    restart_after: int = 0
    max_retries: int = 2
    mutation_weights: dict[str, float] | None = None
    gpus_per_eval: float | None = None
    attempts_per_proposal: int = 50

    def __post_init__(self):
        if isinstance(self.seed_programs, str):
            self.seed_programs = tuple(s.strip() for s in self.seed_programs.split(",") if s.strip())
        try:
            check_dataclass(self)  # every field against its annotation, before anything uses it
        except FieldError as e:
            raise ValueError(f"search config: {e}") from None
        self.seed_programs = tuple(self.seed_programs)
        if self.tiers is None:
            self.tiers = default_tiers(self.task)
        self.tiers = tuple(t if isinstance(t, Tier) else Tier.from_dict(t, f"tiers[{i}]") for i, t in enumerate(self.tiers))
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"search config: {msg}")

        try:
            check_dataclass(self)  # types and ranges of every field (see fields.RANGES)
        except FieldError as e:
            bad(str(e))
        if self.tournament > self.population:
            bad(f"tournament ({self.tournament}) must be at most population ({self.population})")
        if not self.tiers:
            bad("the funnel needs at least one tier")
        if not self.seed_programs:
            bad("at least one seed program is needed")
        if self.mutation_weights is not None:
            from .mutation import MUTATIONS

            unknown = sorted(set(self.mutation_weights) - set(MUTATIONS))
            if unknown:
                bad(f"mutation_weights: unknown operator {unknown[0]!r}; known: {', '.join(MUTATIONS)}")
            if not any(v > 0 for v in self.mutation_weights.values()):
                bad("mutation_weights: at least one operator needs a weight above 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tiers"] = [dataclasses.asdict(t) for t in self.tiers]
        for t in d["tiers"]:
            if t["lrs"] is not None:
                t["lrs"] = list(t["lrs"])
        d["seed_programs"] = list(self.seed_programs)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SearchConfig":
        try:
            check_mapping(SearchConfig, d)
        except FieldError as e:
            raise ValueError(f"search config: {e}") from None
        return SearchConfig(**d)

    @staticmethod
    def from_toml(path: str | Path, **overrides: Any) -> "SearchConfig":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
        d.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return SearchConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
