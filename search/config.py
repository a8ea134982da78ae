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

A tier may be a suite of tasks (``tasks = ["mlp", "memory"]``): its fitness is the suite
aggregate of each task's fitness divided by tuned AdamW's there (``optdisco.evaluate.suite``).
With neither ``task`` nor ``tiers`` the funnel runs on the default suite.
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
STRATEGIES = ("evolution", "random")
DEFAULT_SEED_PROGRAMS = ("sgd", "momentum", "adam", "signum", "lion")
DEFAULT_BASELINES = ("adamw", "nadam", "lion", "soap", "muon")
"""What the end-of-run validation compares the top programs with on the held-out suite."""


def default_suite() -> tuple[str, ...]:
    from optdisco.proxies.suites import SUITE

    return tuple(SUITE)


def default_heldout() -> tuple[str, ...]:
    from optdisco.proxies.suites import HELDOUT

    return tuple(HELDOUT)


@dataclass(frozen=True)
class Tier:
    """One stage of the funnel: a task (by name and size), a training budget and the fraction of
    this tier's candidates that move on to the next tier.

    ``steps``/``seeds`` (a count: seeds 0…n−1)/``lrs``/``points`` (of the LR grid) left as
    ``None`` take the evaluator's defaults for the task.
    ``time_limit`` (seconds) bounds one evaluation; a hung one is stopped and recorded as failed.

    ``tasks`` makes the tier a suite (``task`` is then unused): each task is evaluated as above
    and the tier's fitness is the suite aggregate of ``fitness / reference fitness`` per task,
    the reference being the library program ``reference`` tuned by the same protocol, once per
    run. ``references`` holds those fitnesses ((task, fitness) pairs); the search fills it in.
    """

    task: str = "mlp"
    size: str = "proxy"
    steps: int | None = None
    seeds: int | None = None
    lrs: tuple[float, ...] | None = None
    points: int | None = None
    promote: float = 0.25
    time_limit: float = 300.0
    tasks: tuple[str, ...] | None = None
    reference: str = "adamw"
    references: tuple[tuple[str, float], ...] | None = None

    @property
    def is_suite(self) -> bool:
        return self.tasks is not None

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tier's tasks: the suite, or the one task."""
        return tuple(self.tasks) if self.tasks is not None else (self.task,)

    @property
    def name(self) -> str:
        """The task's name, or ``suite`` for a suite (as the store's evaluations record it)."""
        return "suite" if self.tasks is not None else self.task

    def with_references(self, references: dict[str, float] | None) -> "Tier":
        """This tier with the reference fitnesses of its suite filled in."""
        refs = None if references is None else tuple((t, float(references[t])) for t in self.task_names)
        return dataclasses.replace(self, references=refs)

    def __post_init__(self):
        if isinstance(self.lrs, list):
            object.__setattr__(self, "lrs", tuple(self.lrs))
        check_dataclass(self, "tier")

    def label(self) -> str:
        parts = [f"suite({','.join(self.tasks)})" if self.tasks is not None else self.task]
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
        if d.get("tasks") is not None:
            tasks = d["tasks"]
            if isinstance(tasks, str) or not all(isinstance(x, str) for x in tasks) or not tasks:
                raise ValueError(f"tier tasks must be a non-empty list of task names, got {tasks!r}")
            d["tasks"] = tuple(tasks)
        if d.get("references") is not None:
            d["references"] = tuple((str(t), float(f)) for t, f in d["references"])
        return Tier(**d)


def tier_with_references(config: "SearchConfig", references: dict, i: int) -> Tier:
    """Tier ``i`` of ``config`` with its suite's reference fitnesses (``references``: a run
    store's ``references`` meta, keyed by tier index) filled in; a single-task tier as it is."""
    t = config.tiers[i]
    if not t.is_suite:
        return t
    refs = references.get(str(i))
    if refs is None:
        raise ValueError(f"tier {i}'s reference fitnesses were never computed")
    return t.with_references(refs)


def default_tiers(task: str | None = None, suite: tuple[str, ...] | None = None) -> tuple[Tier, ...]:
    """The default funnel: the proxy run with one seed on a coarse 5-point LR grid, then the
    standard protocol (8-point grid, two seeds) for the best quarter. (A shortened first tier
    was tried: at 100 or 200 of the MLP proxy's 400 steps the library's methods rank almost in
    reverse, so tier 0 keeps the full length and saves on seeds and grid points instead.)
    With no ``task`` both tiers run on the suite (default: ``optdisco.proxies.SUITE``)."""
    if task is None:
        tasks = tuple(suite) if suite else default_suite()
        return (Tier(tasks=tasks, seeds=1, points=5), Tier(tasks=tasks, seeds=2, promote=0.25))
    return (Tier(task, seeds=1, points=5), Tier(task, seeds=2, promote=0.25))


@dataclass
class SearchConfig:
    """Everything a search run needs; recorded in its store.

    budget: evaluations to run (a duplicate costs none; each funnel tier costs one).
    workers: evaluations in flight at once. executor: ``ray`` (default) or ``local``
    (in-process). address: a Ray cluster to join (``auto`` or ``host:port``); by default a local
    Ray instance with ``workers`` CPUs is started.
    seed: the random seed; with one worker a run is a function of it.
    task: one proxy task for the default funnel; suite: the tasks of the default funnel when no
    task is given (default ``optdisco.proxies.SUITE``); tiers: an explicit funnel instead.
    strategy: ``evolution`` (tournaments pick parents) or ``random`` (parents drawn uniformly
    from the population, never by fitness: the random-search baseline of the same grammar).
    heldout: tasks that judge the finalists and never enter selection (default
    ``optdisco.proxies.HELDOUT``). heldout_every: every that many evaluations the ``finalists``
    best programs on the last tier are evaluated on the held-out suite (0: never); recorded for
    the meta-overfitting curve, never read by selection.
    validate_top: at the end of the run the best that many programs are simplified and
    validated on the held-out suite with ``validate_seeds`` seeds against tuned
    ``validate_baselines`` (0: skip; ``optdisco finalize RUN.db`` does it later).
    seed_programs: library programs that warm-start the population (``["all"]`` for every one).
    population / tournament: aging-evolution sizes. max_statements: the length limit.
    restart_after: evaluations without improvement after which the population restarts from
    the best programs so far and the seeds (0: never; ignored by the random strategy).
    max_retries: resubmissions of an evaluation whose worker died.
    mutation_weights: relative frequency of each mutation operator.
    objectives: what selection optimizes (``optdisco.search.objectives``: ``loss``, ``memory``,
    ``cost``, ``quant``); with more than ``loss`` alone, parents are chosen by non-dominated
    rank and crowding (``optdisco.search.pareto``) and the run keeps a Pareto front.
    """

    budget: int = 100
    workers: int = 2
    executor: str = "ray"
    address: str | None = None
    seed: int = 0
    task: str | None = None
    suite: tuple[str, ...] | None = None
    strategy: str = "evolution"
    heldout: tuple[str, ...] | None = None
    heldout_every: int = 0
    finalists: int = 3
    validate_top: int = 0
    validate_seeds: int = 3
    validate_baselines: tuple[str, ...] = DEFAULT_BASELINES
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
    objectives: tuple[str, ...] = ("loss",)

    def __post_init__(self):
        for key in ("seed_programs", "suite", "heldout", "validate_baselines", "objectives"):  # "a,b" as typed
            v = getattr(self, key)
            if isinstance(v, str):
                setattr(self, key, tuple(s.strip() for s in v.split(",") if s.strip()))
        try:
            check_dataclass(self)  # every field against its annotation, before anything uses it
        except FieldError as e:
            raise ValueError(f"search config: {e}") from None
        self.seed_programs = tuple(self.seed_programs)
        for key in ("suite", "heldout", "validate_baselines"):
            v = getattr(self, key)
            setattr(self, key, None if v is None else tuple(v))
        if self.heldout is None:
            self.heldout = default_heldout()
        if self.tiers is None:
            self.tiers = default_tiers(self.task, self.suite)
        self.tiers = tuple(t if isinstance(t, Tier) else Tier.from_dict(t, f"tiers[{i}]") for i, t in enumerate(self.tiers))
        from .objectives import parse_objectives

        try:
            self.objectives = parse_objectives(self.objectives)
        except ValueError as e:
            raise ValueError(f"search config: {e}") from None
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
        if self.strategy not in STRATEGIES:
            bad(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.heldout_every < 0 or self.finalists < 1 or self.validate_top < 0:
            bad("need heldout_every >= 0, finalists >= 1 and validate_top >= 0")
        if self.validate_seeds < 2:
            bad("validate_seeds must be at least 2 (a verdict needs a seed spread)")
        selection = {t for tier in self.tiers for t in tier.task_names}
        both = sorted(selection & set(self.heldout))
        if both:
            bad(f"held-out tasks {both} are also selection tasks of the funnel; a held-out task may never be "
                "selected on")
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
            for key in ("lrs", "tasks"):
                if t[key] is not None:
                    t[key] = list(t[key])
            if t["references"] is not None:
                t["references"] = [list(x) for x in t["references"]]
        for key in ("seed_programs", "suite", "heldout", "validate_baselines", "objectives"):
            if d[key] is not None:
                d[key] = list(d[key])
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
