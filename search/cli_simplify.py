"""``optdisco simplify``: the Lion paper's simplification of a run's best programs."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "simplify", help="simplify a run's best programs (remove, ablate, round) and record them",
        description="For each of the run's K best programs: remove statements that do not change "
        "behaviour, simplify algebraically, ablate statements one at a time keeping removals whose "
        "fitness stays within the tolerance, round constants. Prints each program before and after "
        "with its fitness and records the simplified programs in the run store.")
    p.add_argument("store", metavar="RUN.db")
    p.add_argument("--top", type=int, default=3, metavar="K", help="programs to simplify (default 3)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="relative fitness loss a removal or rounding may cost (default 0.01: 1%%)")
    p.add_argument("-o", "--out", metavar="DIR", help="also write each simplified program to DIR/rank<i>.opt")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step tried")
    p.set_defaults(func=cmd_simplify)


def cmd_simplify(args) -> int:
    import time

    from .context import describe, tuned_context
    from .evaluator import Job, ProxyEvaluator, run_job
    from .run import Run
    from .simplify import simplify_program
    from .store import Origin
    from .finalize import record_simplified

    try:
        run = Run(args.store, writable=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"optdisco simplify: {e}", file=sys.stderr)
        return 2
    cfg = run.config
    last = len(cfg.tiers) - 1
    tier = run.tier(last)  # a suite's tier with its stored reference fitnesses
    evaluator = ProxyEvaluator()
    best = [b for b in run.best(args.top * 3) if b["origin"] != Origin.SIMPLIFIED and b["tier_reached"] == last][: args.top]
    if not best:
        print("optdisco simplify: no program of this run reached the last tier yet", file=sys.stderr)
        return 1
    outcomes = {}
    current = {"rank": 0, "n": 0, "t0": time.monotonic()}

    def fitness(program):
        out = run_job(Job(-1, last, tier, program.to_text()), evaluator)
        outcomes[program] = out
        current["n"] += 1
        if not args.verbose:  # a line per evaluation: each one takes seconds to minutes
            print(f"  simplify #{current['rank']}: evaluation {current['n']}, fitness {out.fitness:.5g} "
                  f"({time.monotonic() - current['t0']:.0f} s)", file=sys.stderr, flush=True)
        return out.fitness

    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for rank, b in enumerate(best, 1):
        print(f"== #{rank}: candidate {b['id']}, fitness {b['fitness']:.5g} on {tier.label()}\n")
        print(b["text"])
        print(f"found with: {describe(b['context'])}\n")
        current.update(rank=rank, n=0, t0=time.monotonic())
        log = (lambda s: print(s)) if args.verbose else None
        res = simplify_program(b["program"], fitness, tolerance=args.tolerance, reference=b["fitness"], log=log)
        after = res.fitness_after
        print(f"-- simplified ({res.removed_statements} statements fewer, {res.evaluations} evaluations), "
              f"fitness {after:.5g} (tolerance {args.tolerance:g}):\n")
        print(res.program.to_text())
        out = outcomes.get(res.program)
        ctx = tuned_context(out.result, tier) if out is not None else b["context"]
        print(f"found with: {describe(ctx)}\n")
        if res.program == b["program"]:
            continue

        cid = record_simplified(run, b["id"], res, out, last, tier.name, args.tolerance)
        print(f"recorded as candidate {cid}")
        if args.out:
            path = Path(args.out) / f"rank{rank}.opt"
            path.write_text(f"# simplified from candidate {b['id']} of {run.path.name}\n" + res.program.to_text())
            print(f"written to {path}")
    return 0
