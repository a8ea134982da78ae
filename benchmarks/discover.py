"""The discovery benchmark: does a search find an optimizer that beats tuned AdamW on tasks it
never selected on, and does evolution beat random search of the same grammar at equal budget?

1. An evolutionary search seeded by the library, on the default suite funnel
   (``optdisco.proxies.SUITE``), ``--budget`` evaluations, finalists checked on the held-out suite
   every ``--heldout-every`` evaluations (for the meta-overfitting curve only).
2. The same search with ``strategy = "random"`` (parents drawn uniformly, never by fitness): the
   same seeds, grammar, funnel and budget.
3. For each: the best program is simplified (ablation judged on the suite) and validated on every
   held-out task with 3 seeds against tuned AdamW, NAdam, Lion, SOAP and Muon
   (``optdisco.search.finalize``).

Prints one table: each finalist and reference × each held-out task (median loss / tuned AdamW's,
seed spread / AdamW's, verdict). Both stores live in ``--dir``; rerunning the command resumes
whatever was not finished (``--resume`` semantics), so the benchmark may span sessions.

    python benchmarks/discover.py [--budget 600] [--workers 2] [--dir discover-runs]
    # or one process per strategy, in parallel:
    python benchmarks/discover.py --strategies evolution --executor local --workers 1 &
    python benchmarks/discover.py --strategies random --executor local --workers 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SEEDS = ("adamw", "adam", "nadam", "sgd", "momentum", "lion", "signum", "rmsprop", "adafactor", "muon")


def run_search(path: Path, strategy: str, args) -> "object":
    from optdisco.search import Search, SearchConfig

    if path.exists():
        from optdisco.search import Run

        run = Run(path)
        done = run.stats()["evaluations"]
        run.close()
        if done >= args.budget:
            print(f"{strategy}: {path} already holds {done} evaluations", file=sys.stderr)
            return Run(path)
        search = Search.resume(path, budget=args.budget, workers=args.workers, executor=args.executor)
    else:
        cfg = SearchConfig(budget=args.budget, workers=args.workers, executor=args.executor, seed=args.seed,
                           strategy=strategy,
                           seed_programs=tuple(args.seeds.split(",")), heldout_every=args.heldout_every,
                           finalists=2, population=args.population, tournament=args.tournament)
        search = Search(cfg, store=path)
    t0 = time.time()
    last = [0.0]

    def progress(p):
        if time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"  {strategy}: {p.evaluations}/{p.budget} evaluations, best {p.best:.4g}, "
                  f"{time.time() - t0:.0f} s", file=sys.stderr)

    search.on_progress = progress
    return search.run()


def main(argv=None) -> int:
    from optdisco.search.config import DEFAULT_BASELINES
    from optdisco.search.finalize import finalize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="ray", choices=("ray", "local"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=",".join(SEEDS), help="seed programs (library names)")
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--tournament", type=int, default=6)
    ap.add_argument("--heldout-every", type=int, default=100)
    ap.add_argument("--dir", default="discover-runs")
    ap.add_argument("--strategies", default="evolution,random")
    args = ap.parse_args(argv)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {}
    for strategy in args.strategies.split(","):
        run = run_search(out / f"{strategy}-seed{args.seed}.db", strategy, args)
        val = run.validation()
        best_id = run.best(1)[0]["id"]
        if val is None or [s["original"] for s in val.get("simplified", [])] != [best_id]:
            print(f"{strategy}: simplifying and validating the best program on the held-out suite", file=sys.stderr)
            val = finalize(run, top=1, seeds=3, baselines=DEFAULT_BASELINES,
                           log=lambda s: print("  " + s, file=sys.stderr))
        best = run.best(1)[0]
        tables[strategy] = (val, best, run.stats())
    for strategy, (val, best, stats) in tables.items():
        print(f"\n## {strategy}: {stats['evaluations']} evaluations, {stats['elapsed']:.0f} s; best suite fitness "
              f"{best['fitness']:.4f} (candidate {best['id']})\n")
        for p in val["programs"]:
            print("```\n" + p["text"].rstrip() + "\n```")
        print()
        print(val["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
