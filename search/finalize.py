"""The end of a run: simplify its best programs and validate them on the held-out suite.

1. The ``top`` best programs on the last tier are simplified (``simplify.simplify_program``:
   behaviour-preserving removals, statement ablation judged by the last tier's fitness within
   ``tolerance``, rounding), and recorded in the store as ``simplified`` candidates.
2. Each simplified program and each baseline (tuned AdamW, NAdam, Lion, SOAP and Muon by
   default) is validated on every held-out task with ``seeds`` seeds
   (``optdisco.evaluate.validate``: LR tuned on seed 0, rerun on every seed): its median
   held-out loss, the seed spread and a verdict against AdamW per task.
3. The table and the per-task rows are stored (meta ``validation``); ``optdisco report`` shows
   them in their own section, apart from the search's history.

No result of this step ever reaches selection: it runs after the search, on tasks the funnel
never selects on.
"""

from __future__ import annotations

import math
from typing import Callable

from optdisco.dsl import fingerprint

from .config import DEFAULT_BASELINES
from .evaluator import Job, ProxyEvaluator, run_job
from .run import Run
from .simplify import simplify_program
from .store import SEARCHED, Origin, RunStore, Status


def writable(run: Run) -> Run:
    """``run``, or the same store reopened for writing if ``run`` was opened read-only."""
    return Run(run.path, writable=True) if getattr(run.store, "readonly", False) else run


def record_simplified(run: Run, parent: int, res, out, tier: int, task: str, tolerance: float) -> int:
    """Record a simplified program as a candidate (origin ``simplified``, parent ``parent``) with
    its evaluation ``out`` on ``tier`` when there is one; returns its id."""

    def tx(c):
        cid = RunStore.add_candidate(c, program=res.program.to_text(), fingerprint=fingerprint(res.program),
                                     parents=[parent], mutation="simplify", detail=f"tolerance {tolerance:g}",
                                     origin=Origin.SIMPLIFIED, proposal=None, status=Status.DONE, tier_reached=tier,
                                     fitness=res.fitness_after)
        if out is not None:
            RunStore.add_evaluation(c, candidate=cid, tier=tier, task=task, fitness=out.fitness,
                                    result=out.result, wall=out.wall, worker=out.worker, error=out.error)
        return cid

    return run.store.transaction(tx)


def simplify_best(run: Run, top: int = 1, tolerance: float = 0.01, evaluator: Callable | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Simplify the ``top`` best programs of the last tier; record each simplified program (when
    it differs) as a candidate. Returns ``[{"candidate", "original", "program", "fitness_before",
    "fitness_after", "evaluations"}]``."""
    run = writable(run)
    say = log or (lambda s: None)
    last = len(run.config.tiers) - 1
    tier = run.tier(last)
    evaluator = evaluator or ProxyEvaluator()
    best = [b for b in run.best(top * 4) if b["origin"] in SEARCHED and b["tier_reached"] == last][:top]
    outcomes = {}

    def fitness(program):
        out = run_job(Job(-1, last, tier, program.to_text()), evaluator)
        outcomes[program] = out
        return out.fitness

    done = []
    for rank, b in enumerate(best, 1):
        say(f"simplifying #{rank} (candidate {b['id']}, fitness {b['fitness']:.5g})")
        res = simplify_program(b["program"], fitness, tolerance=tolerance, reference=b["fitness"],
                               log=lambda s: say("  " + s.strip()))
        cid = b["id"]
        if res.program != b["program"]:
            out = outcomes.get(res.program)

            cid = record_simplified(run, b["id"], res, out, last, tier.name, tolerance)
        say(f"  -> {res.removed_statements} statements fewer, fitness {res.fitness_after:.5g} ({res.evaluations} evaluations)")
        done.append(dict(candidate=cid, original=b["id"], program=res.program.to_text(),
                         fitness_before=res.fitness_before, fitness_after=res.fitness_after,
                         evaluations=res.evaluations))
    return done


def _row(r) -> dict:
    def num(x):
        return None if x is None or not math.isfinite(x) else float(x)

    return dict(name=r.name, best_lr=r.best_lr, median=num(r.median), spread=num(r.spread),
                finals=[num(f) for f in r.finals], verdict=r.verdict, reason=r.reason)


def validate_heldout(run: Run, programs: list[tuple[str, str]], baselines=DEFAULT_BASELINES, seeds: int = 3,
                     log: Callable[[str], None] | None = None) -> dict:
    """Validate ``programs`` (``(name, text)``) and ``baselines`` on the run's held-out suite;
    store and return ``{"seeds", "baselines", "programs", "tasks": {task: [row…]}, "table"}``."""
    from optdisco.dsl import parse
    from optdisco.evaluate.validate import suite_table, validate_suite

    run = writable(run)
    tasks = list(run.config.heldout)
    reports = validate_suite([parse(t) for _, t in programs], tuple(baselines), tasks=tasks, seeds=seeds,
                             names=[n for n, _ in programs], log=log)
    out = dict(seeds=seeds, baselines=list(baselines), programs=[dict(name=n, text=t) for n, t in programs],
               tasks={t: [_row(r) for r in rep.rows] for t, rep in reports.items()}, table=suite_table(reports))
    run.store.transaction(lambda c: RunStore.set_meta(c, "validation", out))
    return out


def finalize(run: Run, top: int = 1, seeds: int = 3, baselines=DEFAULT_BASELINES, tolerance: float = 0.01,
             log: Callable[[str], None] | None = None) -> dict:
    """Simplify the ``top`` best programs and validate them on the held-out suite (module doc)."""
    run = writable(run)
    simplified = simplify_best(run, top, tolerance, log=log)
    programs = [(f"found{i}", s["program"]) for i, s in enumerate(simplified, 1)]
    if not programs:
        raise ValueError(f"{run.path}: no program reached the last tier; nothing to validate")
    out = validate_heldout(run, programs, baselines, seeds, log)
    out["simplified"] = simplified
    run.store.transaction(lambda c: RunStore.set_meta(c, "validation", out))
    return out
