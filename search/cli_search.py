"""``optdisco search``: run, or resume, an evolutionary search from the command line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .config import EXECUTORS, STRATEGIES, SearchConfig


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="breed new optimizers from the library and evaluate them in parallel (Ray)",
        description="Run an evolutionary search over optimizer programs. With no arguments: a short "
        "search on the default proxy task with a local Ray instance, its store under ./optdisco-runs/.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with search settings (flags override it)")
    p.add_argument("--budget", type=int, metavar="N", help="evaluations to run (default 100)")
    p.add_argument("--workers", type=int, metavar="K", help="evaluations in flight at once (default 2)")
    p.add_argument("--executor", choices=EXECUTORS, help="ray (default) or local (in-process)")
    p.add_argument("--address", metavar="ADDR", help="join a running Ray cluster (auto or host:port)")
    p.add_argument("--store", metavar="PATH", help="the run's SQLite file (default optdisco-runs/<time>-<task>-seed<S>.db)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    p.add_argument("--task", metavar="NAME", help="one proxy task for the default funnel instead of the suite")
    p.add_argument("--suite", metavar="NAME,…", help="the tasks of the default funnel (default: optdisco.proxies.SUITE)")
    p.add_argument("--heldout", metavar="NAME,…", help="held-out tasks, never selected on (default: optdisco.proxies.HELDOUT)")
    p.add_argument("--heldout-every", type=int, metavar="N",
                   help="evaluate the finalists on the held-out suite every N evaluations (default 0: never)")
    p.add_argument("--strategy", choices=STRATEGIES, help="evolution (default) or random (the random-search baseline)")
    p.add_argument("--validate-top", type=int, metavar="K",
                   help="at the end, simplify the K best programs and validate them on the held-out suite (default 0)")
    p.add_argument("--objectives", metavar="NAME,…",
                   help="what selection optimizes: loss (default) with any of memory, cost, quant (a Pareto front)")
    p.add_argument("--seed-programs", metavar="NAME,…", help="library programs (or .opt files) to start from; 'all' for every one")
    p.add_argument("--resume", metavar="PATH", help="continue the run in this store where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_search)


def _config(args) -> SearchConfig:
    flags = dict(budget=args.budget, workers=args.workers, executor=args.executor, address=args.address,
                 seed=args.seed, task=args.task, seed_programs=args.seed_programs, suite=args.suite,
                 heldout=args.heldout, heldout_every=args.heldout_every, strategy=args.strategy,
                 validate_top=args.validate_top, objectives=args.objectives)
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        return SearchConfig.from_toml(args.config, **flags)
    return SearchConfig(**flags)


class _Bar:
    """A tqdm progress bar fed by Search.on_progress."""

    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="eval", dynamic_ncols=True, file=sys.stderr)
        self.start = initial

    def __call__(self, p) -> None:
        self.bar.n = p.evaluations
        done = p.evaluations - self.start
        rate = 60 * done / p.elapsed if p.elapsed > 0 and done > 0 else 0.0
        best = f"{p.best:.4g}" if math.isfinite(p.best) else "–"
        self.bar.set_postfix_str(f"best {best}, {rate:.1f} evals/min, {p.duplicates} duplicates skipped, "
                                 f"{p.rejected} rejected", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _finished(search) -> bool:
    st = search.state
    return st["evaluations"] >= search.config.budget and not st["pending"]


def cmd_search(args) -> int:
    from .engine import Search, SearchError, load_seeds
    from .evaluator import ProxyEvaluator
    from .executors import ExecutorError, make_executor
    from .preflight import check_new_run

    def fail(message, code=2):
        print(f"optdisco search: {message}", file=sys.stderr)
        return code

    evaluator = ProxyEvaluator()
    search = None
    # everything is checked before Ray starts or a store is created
    try:
        if args.resume:
            if (args.config or args.seed is not None or args.task or args.seed_programs or args.store or args.suite
                    or args.heldout or args.strategy or args.objectives):
                return fail("with --resume only --budget, --workers, --executor, --address, --heldout-every and "
                            "--validate-top may change")
            search = Search.resume(args.resume, evaluator, budget=args.budget, workers=args.workers,
                                   executor=args.executor, address=args.address, heldout_every=args.heldout_every,
                                   validate_top=args.validate_top)
            if _finished(search):
                n = search.state["evaluations"]
                print(f"optdisco search: {search.path} has already spent its budget of {search.config.budget} "
                      f"evaluations ({n} recorded); nothing to run. To continue it, raise the budget: "
                      f"optdisco search --resume {search.path} --budget {n + 100}", file=sys.stderr)
                search.close()
                return 0
            cfg = search.config
        else:
            cfg = _config(args)
            try:
                check_new_run(cfg, evaluator, load_seeds(cfg))
            except (SearchError, ValueError) as e:
                # as from_toml does: name the file the settings came from (flags override it)
                return fail(f"{args.config}: {e}" if args.config else e)
    except (SearchError, ValueError, FileNotFoundError) as e:
        return fail(e)
    try:
        ex = make_executor(cfg.executor, evaluator, cfg.workers, cfg.address, cfg.gpus_per_eval)
    except ExecutorError as e:
        return fail(e)
    try:
        if search is None:
            search = Search(cfg, store=args.store, evaluator=evaluator)
    except (SearchError, ValueError, FileNotFoundError) as e:
        ex.close()
        return fail(e)
    tiers = " → ".join(t.label() for t in cfg.tiers)
    workers = f"{ex.workers} worker{'s' if ex.workers != 1 else ''}"
    if cfg.executor == "local" and cfg.workers != ex.workers:
        workers += f" (in-process: one evaluation at a time; workers = {cfg.workers} applies to ray)"
    print(f"optdisco search: {cfg.budget} evaluations on {tiers}; seeds {', '.join(cfg.seed_programs)}; "
          f"executor {cfg.executor} with {workers}", file=sys.stderr)
    print(f"run store: {search.path}", file=sys.stderr)
    bar = None
    if not args.no_progress:
        bar = _Bar(cfg.budget, search.state["evaluations"])
        search.on_progress = bar
    try:
        run = search.run(executor=ex)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        print(f"\ninterrupted; continue with: optdisco search --resume {search.path}", file=sys.stderr)
        return 130
    except SearchError as e:
        if bar:
            bar.close()
        return fail(e, 1)
    finally:
        if bar:
            bar.close()
        ex.close()
        search.close()  # its store's connection: closed now, not whenever the garbage collector gets to it
    try:
        return _summarize(run, cfg, args)
    finally:
        run.close()


def _summarize(run, cfg, args) -> int:
    """What a finished search prints: its counts, the best program, the optional held-out
    validation and report, and where the run store is."""
    stats = run.stats()
    print(f"\n{stats['evaluations']} evaluations, {stats['duplicates']} duplicates skipped, "
          f"{stats['rejected']} children rejected before evaluation, {stats['failures']} worker failures, "
          f"{stats['elapsed']:.0f} s")
    best = run.best(1)
    if best:
        b = best[0]
        tier = cfg.tiers[b["tier_reached"]].label()
        print(f"\nbest program (candidate {b['id']}, fitness {b['fitness']:.5g} on {tier}):\n")
        print(b["text"])
    if cfg.validate_top:
        from .finalize import finalize

        print(f"\nsimplifying the best {cfg.validate_top} and validating on the held-out suite "
              f"({', '.join(cfg.heldout)}, {cfg.validate_seeds} seeds) against {', '.join(cfg.validate_baselines)}:",
              file=sys.stderr)
        try:
            out = finalize(run, top=cfg.validate_top, seeds=cfg.validate_seeds, baselines=cfg.validate_baselines,
                           log=lambda s: print(s, file=sys.stderr))
        except ValueError as e:
            print(f"optdisco search: {e}", file=sys.stderr)
        else:
            print("\nheld-out validation (median loss / tuned AdamW's, seed spread / AdamW's, verdict):\n")
            print(out["table"])
    if not args.no_report:
        from .report import write_report

        out = write_report(run)
        print(f"report: {out / 'report.md'}")
    print(f"run store: {run.path}")
    print(f"next: optdisco finalize {run.path}  (simplify the best, validate it on the held-out tasks);  "
          f"optdisco report {run.path}")
    return 0
