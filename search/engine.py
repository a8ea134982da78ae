"""Regularized (aging) evolution over programs, with a funnel of tasks and a resumable store.

The loop, one event at a time:

1. *Propose.* Proposal ``n`` draws from ``random.Random(mix(seed, n))``: the first proposals
   are the seed programs from the library; after that, two tournaments (``tournament``
   members sampled from the population, best wins) pick parents and a mutation makes a
   child (up to ``attempts_per_proposal`` tries). A child that fails the checker or the
   length limit, or that the cheap screen rejects (:mod:`.screen`), is discarded and counted.
   A child whose behaviour fingerprint was seen reuses that candidate's score, enters the
   population and costs no evaluation.
2. *Evaluate* the new candidate on tier 0 of the funnel, asynchronously: ``workers``
   evaluations are kept in flight.
3. *Record* each finished evaluation at once, in one transaction with the searcher's state.
   After tier ``i`` a candidate moves on to tier ``i + 1`` when its tier-``i`` fitness ranks in
   the best ``tiers[i + 1].promote`` fraction of all tier-``i`` fitnesses recorded so far
   (seed programs always move on); otherwise its funnel ends and it joins the population,
   whose oldest member then leaves (aging).

**Fitness across tiers.** A candidate's score is the pair (last tier reached, fitness on that
tier): reaching a later tier beats any score on an earlier one; within a tier, lower fitness
wins; a failed evaluation scores ``inf``. Tournaments, "best" and reports rank by this pair;
"best fitness" is the best fitness on the last tier.

**Determinism.** The proposal sequence depends only on the seed and the order in which results
were recorded; with one worker that order is fixed, so the in-process and Ray executors give the
same history, and a resumed run continues exactly where the killed one stopped (jobs in flight
at the kill are run again; completed ones never are).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from optdisco.dsl import Program, fingerprint, parse
from optdisco.proxies import mix

from . import preflight
from .config import SearchConfig
from .evaluator import HELDOUT, REFERENCE, SEARCH, Job, ProxyEvaluator
from .executors import Finished, make_executor
from . import objectives, pareto
from .mutation import mutate
from .screen import screen
from .store import FINISHED, Origin, RunStore, Status


def score_key(tier_reached: int, fitness: float) -> tuple[int, float]:
    """Sort key of a candidate's score: later tier first, then lower fitness."""
    f = fitness if fitness is not None and not math.isnan(fitness) else math.inf
    return (-tier_reached, f)


def default_store_path(config: SearchConfig, root: str | Path = "optdisco-runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{config.tiers[-1].name}-seed{config.seed}.db"


def load_seeds(config: SearchConfig) -> list[tuple[str, str]]:
    """``(name, canonical text)`` of each seed program: library names (``all`` for every one)
    or paths of ``.opt`` files, read by :func:`optdisco.dsl.resolve_program`."""
    from optdisco import library
    from optdisco.dsl import resolve_program

    names = list(config.seed_programs)
    if names == ["all"]:
        names = library.names()
    out = []
    for name in names:
        try:
            program = resolve_program(name)
        except FileNotFoundError:
            raise SearchError(f"seed program file not found: {name}") from None
        except KeyError as e:
            raise SearchError(f"seed program {name!r}: {e.args[0]}") from None
        out.append((Path(name).stem, program.to_text()))
    return out


class Member(NamedTuple):
    """A population member (or the best so far): a candidate and its score, the last tier it
    reached and its fitness there. Saved in the store's state as ``[candidate, tier, fitness]``."""

    candidate: int
    tier: int
    fitness: float


class Pending(NamedTuple):
    """An evaluation submitted and not yet recorded: the candidate, its tier and which attempt.
    Saved as ``[candidate, tier, attempt]``; a resumed run submits these again."""

    candidate: int
    tier: int
    attempt: int


class Proposal(NamedTuple):
    """What one proposal came to: ``job``, an evaluation to submit; or no job, when the proposal
    cost no evaluation (a duplicate, or nothing usable) or, with ``wait``, when there is no parent
    yet (the population fills as evaluations finish)."""

    job: Job | None = None
    wait: bool = False


WAIT = Proposal(wait=True)
FREE = Proposal()


def _typed_state(state: dict) -> dict:
    """The searcher's state as read from the store, with its entries as records."""
    state["population"] = [Member(*m) for m in state["population"]]
    state["pending"] = [Pending(*p) for p in state["pending"]]
    if state.get("best") is not None:
        state["best"] = Member(*state["best"])
    return state


@dataclass
class Progress:
    """A snapshot for progress displays."""

    evaluations: int
    budget: int
    best: float
    duplicates: int
    rejected: int
    failures: int
    elapsed: float
    in_flight: int


class SearchError(RuntimeError):
    pass


class Search:
    """A search run bound to a store. Create with a config (new run) or :meth:`resume` a store.

    >>> s = Search(SearchConfig(budget=50, executor="local"), store="runs/demo.db")
    >>> run = s.run()          # returns a Run (see optdisco.search.run)
    >>> run.best(3)
    """

    def __init__(self, config: SearchConfig | None = None, store: str | Path | None = None,
                 evaluator: Callable | None = None, *, _resume: bool = False):
        if _resume:
            self.store = RunStore(store, create=False)
            saved = self.store.get_meta("config")
            if saved is None:
                raise SearchError(f"{store} is not a search run store (no config)")
            self.config = SearchConfig.from_dict(saved) if config is None else config
        else:
            self.config = config or SearchConfig()
            path = Path(store) if store else default_store_path(self.config)
            if path.exists() and RunStore(path, readonly=True).get_meta("config") is not None:
                raise SearchError(f"{path} already holds a run; resume it with --resume {path}")
            seeds = load_seeds(self.config)
            preflight.check_new_run(self.config, evaluator, seeds)  # nothing is created before this passes
            self.store = RunStore(path)
            self.store.transaction(lambda c: (
                RunStore.set_meta(c, "config", self.config.to_dict()),
                RunStore.set_meta(c, "seeds", seeds),
                RunStore.set_meta(c, "created", time.time()),
                RunStore.set_meta(c, "state", _fresh_state()),
            ))
        self._multi = len(self.config.objectives) > 1
        if evaluator is None:
            evaluator = ProxyEvaluator(options=objectives.evaluator_options(self.config.objectives))
        self.evaluator = evaluator
        self.state = _typed_state(self.store.get_meta("state"))
        self._objectives: dict[tuple[int, int], dict] = {}
        if self._multi:
            self.store.ensure_pareto_table()
            self._objectives = self.store.objectives()
            self.state.setdefault("front", [])
        self._programs: dict[int, Program] = {}
        self._seeds = [tuple(x) for x in self.store.get_meta("seeds", [])]
        self.on_progress: Callable[[Progress], None] | None = None
        self._t0 = time.monotonic()
        self._elapsed0 = float(self.state.get("elapsed", 0.0))

    @classmethod
    def resume(cls, store: str | Path, evaluator: Callable | None = None, **overrides) -> "Search":
        """Continue a run from its store; ``overrides`` may change e.g. ``budget``, ``workers``,
        ``executor`` or ``address`` (recorded in the store)."""
        s = cls(None, store, evaluator, _resume=True)
        if overrides:
            d = s.config.to_dict()
            d.update({k: v for k, v in overrides.items() if v is not None})
            s.config = SearchConfig.from_dict(d)
            s.store.transaction(lambda c: RunStore.set_meta(c, "config", s.config.to_dict()))
        return s

    @property
    def path(self) -> Path:
        return self.store.path

    # -- helpers -------------------------------------------------------------------------------------
    def program(self, cid: int) -> Program:
        if cid not in self._programs:
            self._programs[cid] = parse(self.store.candidate(cid)["program"])
        return self._programs[cid]

    def _save_state(self, c) -> None:
        self.state["elapsed"] = self._elapsed0 + (time.monotonic() - self._t0)
        RunStore.set_meta(c, "state", self.state)

    def _parent(self, rng: random.Random) -> int:
        """A parent: a tournament's winner (``evolution``), or a member of the population drawn
        uniformly, whatever its fitness (``random``: the random-walk baseline)."""
        if self.config.strategy == "random":
            pop = self.state["population"]
            return pop[rng.randrange(len(pop))].candidate
        return self._tournament(rng)

    def _tournament(self, rng: random.Random) -> int:
        pop = self.state["population"]
        k = min(self.config.tournament, len(pop))
        picks = rng.sample(range(len(pop)), k)
        if self._multi:  # NSGA-II's order over the population: non-dominated rank, then crowding
            order = pareto.selection_order([self._point(m.candidate, m.tier) for m in pop])
            best = min(picks, key=lambda i: (order[i], i))
        else:
            best = min(picks, key=lambda i: (score_key(pop[i].tier, pop[i].fitness), i))
        return pop[best].candidate

    def _point(self, cid: int, tier: int) -> tuple:
        """A candidate's objectives on ``tier`` as a point for dominance (``pareto.key``)."""
        values = self._objectives.get((cid, tier), {"loss": math.inf})
        return pareto.key(values, tier, self.config.objectives)

    def _join_population(self, cid: int, tier: int, fitness: float) -> None:
        st = self.state
        st["population"].append(Member(cid, tier, fitness))
        if self._multi:
            st["front"], _ = pareto.front_update(st["front"], cid, self._point(cid, tier))
        while len(st["population"]) > self.config.population:
            st["population"].pop(0)
        best = st.get("best")
        if best is None or score_key(tier, fitness) < score_key(best.tier, best.fitness):
            st["best"] = Member(cid, tier, fitness)
            st["since_improvement"] = 0
        else:
            st["since_improvement"] += 1
        if (self.config.restart_after and self.config.strategy != "random"
                and st["since_improvement"] >= self.config.restart_after):
            self._restart()

    def _restart(self) -> None:
        """Refill the population with the best finished candidates and the seed programs."""
        st = self.state
        rows = self.store.finished_candidates()
        rows.sort(key=lambda r: (score_key(r["tier_reached"], r["fitness"]), r["id"]))
        keep = rows[: max(1, self.config.population // 4)]
        seeds = [r for r in rows if r["origin"] == Origin.SEED and r not in keep]
        st["population"] = [Member(r["id"], r["tier_reached"], r["fitness"]) for r in keep + seeds]
        st["since_improvement"] = 0
        st["restarts"] += 1

    # -- proposals -----------------------------------------------------------------------------------
    def _propose(self) -> Proposal:
        """Make the next proposal (see :class:`Proposal`)."""
        st = self.state
        cfg = self.config
        n = st["proposals"]
        if n < len(self._seeds):
            name, text = self._seeds[n]
            fp = fingerprint(parse(text))
            return self._add_candidate(n, text, fp, [], "seed", name, origin=Origin.SEED)
        if not st["population"]:
            return WAIT
        rng = random.Random(mix(cfg.seed, n))
        parent = self._parent(rng)
        other = self._parent(rng)
        for _ in range(cfg.attempts_per_proposal):
            child, why = mutate(self.program(parent), rng, other=self.program(other),
                                max_statements=cfg.max_statements, weights=cfg.mutation_weights)
            if child is None:
                st["rejected"][why] = st["rejected"].get(why, 0) + 1
                continue
            reason = screen(child.program)
            if reason:
                key = f"screen: {reason}"
                st["rejected"][key] = st["rejected"].get(key, 0) + 1
                continue
            parents = [parent] if child.mutation != "crossover" else [parent, other]
            return self._add_candidate(n, child.program.to_text(), fingerprint(child.program), parents,
                                       child.mutation, child.detail, origin=Origin.CHILD)
        st["proposals"] = n + 1
        self.store.transaction(self._save_state)
        return FREE

    def _add_candidate(self, n, text, fp, parents, mutation, detail, origin: Origin) -> Proposal:
        st = self.state
        st["proposals"] = n + 1
        known = self.store.by_fingerprint(fp)
        if known is not None:
            st["duplicates"] += 1
            done = known["status"] in FINISHED

            def tx(c):
                if done:
                    RunStore.add_candidate(c, program=text, fingerprint=fp, parents=parents, mutation=mutation,
                                           detail=detail, origin=Origin.DUPLICATE, proposal=n, status=Status.DONE,
                                           duplicate_of=known["id"], tier_reached=known["tier_reached"],
                                           fitness=known["fitness"])
                    self._join_population(known["id"], known["tier_reached"], known["fitness"])
                self._save_state(c)

            self.store.transaction(tx)
            return FREE

        def tx(c):
            cid = RunStore.add_candidate(c, program=text, fingerprint=fp, parents=parents, mutation=mutation,
                                         detail=detail, origin=origin, proposal=n)
            st["pending"].append(Pending(cid, 0, 1))
            self._save_state(c)
            return cid

        cid = self.store.transaction(tx)
        return Proposal(Job(cid, 0, self.tier(0), text, 1))

    # -- recording -----------------------------------------------------------------------------------
    def _promote(self, c, cid: int, tier: int, fitness: float, origin: str) -> bool:
        tiers = self.config.tiers
        if tier + 1 >= len(tiers) or not math.isfinite(fitness):
            return False
        if origin == Origin.SEED:
            return True
        finite = sorted(f for f in RunStore.tier_fitnesses(c, tier) if f is not None and math.isfinite(f))
        rank = sum(1 for f in finite if f < fitness) + 1
        if rank <= math.ceil(tiers[tier + 1].promote * len(finite)):
            return True
        if self._multi:  # also moves on when nothing evaluated on this tier dominates it there
            mine = self._point(cid, tier)
            return pareto.finite(mine) and not any(
                pareto.dominates(self._point(other, t), mine) for (other, t) in self._objectives if t == tier)
        return False

    def _record(self, f: Finished) -> Job | None:
        """Record one finished job; returns a job to resubmit or to run next (promotion)."""
        st = self.state
        job, out = f.job, f.outcome
        entry = Pending(job.candidate, job.tier_index, job.attempt)
        cand = self.store.candidate(job.candidate)
        if f.failure == "died" and job.attempt <= self.config.max_retries:
            retry = Job(job.candidate, job.tier_index, job.tier, job.program, job.attempt + 1)

            def tx(c):
                RunStore.add_failure(c, candidate=job.candidate, tier=job.tier_index, attempt=job.attempt,
                                     kind="died", worker=out.worker or None, error=out.error)
                st["failures"] += 1
                st["pending"] = [p for p in st["pending"] if p != entry] + [entry._replace(attempt=job.attempt + 1)]
                self._save_state(c)

            self.store.transaction(tx)
            return retry

        next_job = None

        def tx(c):
            nonlocal next_job
            if f.failure:
                RunStore.add_failure(c, candidate=job.candidate, tier=job.tier_index, attempt=job.attempt,
                                     kind=f.failure, worker=out.worker or None, error=out.error)
                st["failures"] += 1
            RunStore.add_evaluation(c, candidate=job.candidate, tier=job.tier_index, task=job.tier.name,
                                    fitness=out.fitness, result=out.result, wall=out.wall, worker=out.worker or None,
                                    error=out.error, attempts=job.attempt)
            st["evaluations"] += 1
            st["pending"] = [p for p in st["pending"] if p != entry]
            if self._multi:
                values = objectives.compute(self.config.objectives, job.program, out.fitness, out.result)
                RunStore.add_objectives(c, job.candidate, job.tier_index, values)
                self._objectives[(job.candidate, job.tier_index)] = values
            if self._promote(c, job.candidate, job.tier_index, out.fitness, cand["origin"]):
                RunStore.finish_candidate(c, job.candidate, status=Status.PROMOTED, tier_reached=job.tier_index,
                                          fitness=out.fitness)
                st["pending"].append(Pending(job.candidate, job.tier_index + 1, 1))
                next_job = Job(job.candidate, job.tier_index + 1, self.tier(job.tier_index + 1), job.program, 1)
            else:
                failed = not math.isfinite(out.fitness)
                RunStore.finish_candidate(c, job.candidate, status=Status.FAILED if failed else Status.DONE,
                                          tier_reached=job.tier_index, fitness=out.fitness)
                self._join_population(job.candidate, job.tier_index, out.fitness)
            self._save_state(c)

        self.store.transaction(tx)
        return next_job

    # -- the loop ------------------------------------------------------------------------------------
    def progress(self, in_flight: int = 0) -> Progress:
        st = self.state
        best = st.get("best")
        last = len(self.config.tiers) - 1
        return Progress(
            evaluations=st["evaluations"], budget=self.config.budget,
            best=best.fitness if best and best.tier == last else math.inf,
            duplicates=st["duplicates"], rejected=sum(st["rejected"].values()), failures=st["failures"],
            elapsed=self._elapsed0 + (time.monotonic() - self._t0), in_flight=in_flight,
        )

    def run(self, executor=None):
        """Run until the budget of evaluations is spent; returns a :class:`Run` over the store."""
        from .run import Run

        cfg = self.config
        ex = executor or make_executor(cfg.executor, self.evaluator, cfg.workers, cfg.address, cfg.gpus_per_eval)
        self._t0 = time.monotonic()
        self._elapsed0 = float(self.state.get("elapsed", 0.0))
        ready: list[Job] = []
        self._side_jobs = 0
        try:
            self._ensure_references(ex)
            for p in self.state["pending"]:  # jobs in flight when the last run stopped
                ready.append(Job(p.candidate, p.tier, self.tier(p.tier), self.store.candidate(p.candidate)["program"],
                                 p.attempt))
            for cid in list(self.state.get("heldout_pending", [])):
                self._submit_heldout(ex, cid, resubmit=True)
            idle_proposals = 0
            while True:
                stalled = False
                while (ex.in_flight() < ex.workers
                       and self.state["evaluations"] + ex.in_flight() - self._side_jobs < cfg.budget):
                    if ready:
                        ex.submit(ready.pop(0))
                        continue
                    proposal = self._propose()
                    if proposal.wait:
                        stalled = True
                        break
                    if proposal.job is None:
                        idle_proposals += 1
                        if idle_proposals > 2000:
                            raise SearchError("2000 proposals in a row cost no evaluation: the search space "
                                              "around the population is exhausted (all duplicates or rejected)")
                        self._notify(ex)
                        continue
                    idle_proposals = 0
                    ex.submit(proposal.job)
                if ex.in_flight() == 0:
                    if stalled:
                        raise SearchError("no candidate could be evaluated: every seed program failed")
                    if self._heldout_check(ex, final=True):
                        continue
                    break
                for f in ex.poll():
                    if f.job.kind == HELDOUT:
                        self._side_jobs -= 1
                        self._record_heldout(f)
                        continue
                    nxt = self._record(f)
                    if nxt is not None:
                        ready.insert(0, nxt)
                    self._heldout_check(ex)
                    self._notify(ex)
        finally:
            if executor is None:
                ex.close()
        self.store.transaction(lambda c: (self._save_state(c), RunStore.set_meta(c, "finished", time.time())))
        return Run(self.store.path)

    # -- references and the held-out suite ----------------------------------------------------------
    def tier(self, i: int):
        """Tier ``i`` of the funnel, with its suite's reference fitnesses filled in."""
        from .config import tier_with_references

        try:
            return tier_with_references(self.config, self.store.get_meta("references", {}), i)
        except ValueError as e:
            raise SearchError(str(e)) from None

    def heldout_tier(self):
        """The held-out suite as a tier: the standard protocol (8-point grid, extension, two
        seeds) on each held-out task at proxy size, normalized by the reference there."""
        from .config import Tier

        return Tier(tasks=tuple(self.config.heldout), seeds=2, time_limit=self.config.tiers[-1].time_limit * 4)

    def _ensure_references(self, ex) -> None:
        """Evaluate the reference program once per suite tier (and on the held-out suite when
        it will be used) and store the fitnesses; a resumed run reuses the stored ones."""
        from optdisco import library

        refs = self.store.get_meta("references", {})
        needed = [(str(i), t) for i, t in enumerate(self.config.tiers) if t.is_suite and str(i) not in refs]
        if self.config.heldout_every and self.config.heldout and "heldout" not in refs:
            needed.append(("heldout", self.heldout_tier()))
        if not needed:
            return
        jobs = {}
        for n, (key, tier) in enumerate(needed):
            job = Job(-1 - n, -1, tier, library.load(tier.reference).to_text(), kind=REFERENCE)
            jobs[job.candidate] = key
            ex.submit(job)
        while ex.in_flight():
            for f in ex.poll():
                key = jobs[f.job.candidate]
                by_task = (f.outcome.result or {}).get("fitness_by_task", {})
                missing = [t for t in f.job.tier.task_names
                           if by_task.get(t) is None or not math.isfinite(float(by_task[t]))]
                if f.failure or missing:
                    why = (f"the reference {f.job.tier.reference!r} failed on "
                           f"{', '.join(missing) or f.job.tier.label()}: {f.outcome.error or f.failure}")
                    if key != "heldout":
                        raise SearchError(why)
                    refs[key] = None  # no held-out checks in this run; the search itself goes on
                    self.state["heldout_error"] = why
                    continue
                refs[key] = {t: float(by_task[t]) for t in f.job.tier.task_names}
                self.store.transaction(lambda c: (RunStore.set_meta(c, "references", refs), self._save_state(c)))

    def _finalists(self) -> list[int]:
        """The ``finalists`` best candidates on the last tier so far."""
        last = len(self.config.tiers) - 1
        rows = self.store.done_on_tier(last)
        rows = [r for r in rows if r["fitness"] is not None and math.isfinite(r["fitness"])]
        rows.sort(key=lambda r: (r["fitness"], r["id"]))
        return [r["id"] for r in rows[: self.config.finalists]]

    def _heldout_check(self, ex, final: bool = False) -> bool:
        """Every ``heldout_every`` evaluations (and once at the end), evaluate the finalists not
        yet seen on the held-out suite. Only reports read the results. Returns whether any job
        was submitted."""
        cfg = self.config
        if not cfg.heldout_every or not cfg.heldout:
            return False
        st = self.state
        due = st.setdefault("next_heldout", cfg.heldout_every)
        at = st["evaluations"]
        checks = st.setdefault("heldout_checks", [])
        if final:
            if checks and checks[-1] == at:
                return False
        elif at < due:
            return False
        else:
            st["next_heldout"] = (at // cfg.heldout_every + 1) * cfg.heldout_every
        checks.append(at)
        seen = set(self.store.heldout()) | set(st.setdefault("heldout_pending", []))
        submitted = False
        for cid in self._finalists():
            if cid not in seen:
                self._submit_heldout(ex, cid)
                submitted = True
        self.store.transaction(self._save_state)
        return submitted

    def _submit_heldout(self, ex, cid: int, resubmit: bool = False) -> None:
        refs = self.store.get_meta("references", {}).get("heldout")
        if refs is None:
            return
        tier = self.heldout_tier().with_references(refs)
        ex.submit(Job(cid, -1, tier, self.store.candidate(cid)["program"], kind=HELDOUT))
        self._side_jobs += 1
        if not resubmit:
            self.state.setdefault("heldout_pending", []).append(cid)

    def _record_heldout(self, f) -> None:
        st = self.state

        def tx(c):
            RunStore.add_heldout(c, candidate=f.job.candidate, at_evaluation=st["evaluations"],
                                 fitness=f.outcome.fitness, result=f.outcome.result)
            st["heldout_pending"] = [x for x in st.get("heldout_pending", []) if x != f.job.candidate]
            self._save_state(c)

        self.store.transaction(tx)

    def _notify(self, ex) -> None:
        if self.on_progress:
            self.on_progress(self.progress(ex.in_flight()))

    def close(self) -> None:
        self.store.close()


def _fresh_state() -> dict:
    return {
        "proposals": 0, "population": [], "pending": [], "best": None, "since_improvement": 0,
        "restarts": 0, "duplicates": 0, "rejected": {}, "failures": 0, "evaluations": 0, "elapsed": 0.0,
    }
