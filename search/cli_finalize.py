"""``optdisco finalize``: simplify a finished run's best programs and validate them on the
held-out suite (``optdisco.search.finalize``), as ``optdisco search --validate-top K`` does at
the end of a run."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "finalize", help="simplify a run's best programs and validate them on the held-out suite",
        description="Simplify the K best programs of a run (ablation judged on its last tier) and validate "
        "each on every held-out task of the run, with N seeds, against tuned baselines; the table is stored "
        "in the run and shown by optdisco report.")
    p.add_argument("store", metavar="RUN.db")
    p.add_argument("--top", type=int, default=1, metavar="K", help="programs to simplify and validate (default 1)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per held-out task (default 3, at least 2)")
    p.add_argument("--baselines", metavar="NAME,…", help="library programs to compare with "
                   "(default adamw,nadam,lion,soap,muon)")
    p.set_defaults(func=cmd_finalize)


def cmd_finalize(args) -> int:
    from .config import DEFAULT_BASELINES
    from .finalize import finalize
    from .run import Run

    def fail(message) -> int:
        print(f"optdisco finalize: {message}", file=sys.stderr)
        return 2

    if args.top < 1 or args.seeds < 2:
        return fail("need --top >= 1 and --seeds >= 2 (a verdict needs a seed spread)")
    baselines = tuple(n.strip() for n in args.baselines.split(",") if n.strip()) if args.baselines else DEFAULT_BASELINES
    try:
        from optdisco import library

        unknown = [b for b in baselines if b not in library.names()]
        if unknown:
            return fail(f"unknown baseline {unknown[0]!r} (see optdisco library)")
        run = Run(args.store, writable=True)
        if not run.config.heldout:
            return fail(f"{args.store} has no held-out tasks")
        out = finalize(run, top=args.top, seeds=args.seeds, baselines=baselines,
                       log=lambda s: print(s, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
        return fail(e)
    print(out["table"])
    return 0
