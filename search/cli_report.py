"""``optdisco report``: plots and a Markdown summary of a search run."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("report", help="plots and a Markdown summary of a search run",
                       description="Write PNG plots (best fitness against evaluations and wall time, loss "
                       "curves of the best programs and baselines) and report.md next to the run store.")
    p.add_argument("store", metavar="RUN.db")
    p.add_argument("-o", "--out", metavar="DIR", help="output folder (default RUN-report/ beside the store)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="programs to show (default 5)")
    p.add_argument("--baselines", metavar="NAME,…",
                   help="library programs to evaluate on the last tier and compare (stored in the run)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .report import evaluate_baselines, write_report
    from .run import Run

    try:
        run = Run(args.store, writable=bool(args.baselines))
    except (FileNotFoundError, ValueError) as e:
        print(f"optdisco report: {e}", file=sys.stderr)
        return 2
    if args.baselines:
        names = [n.strip() for n in args.baselines.split(",") if n.strip()]
        try:
            evaluate_baselines(run, names, log=lambda s: print(s, file=sys.stderr))
        except KeyError as e:
            print(f"optdisco report: {e.args[0]}", file=sys.stderr)
            return 2
    out = write_report(run, args.out, top=args.top,
                       baselines=[n.strip() for n in (args.baselines or "").split(",") if n.strip()])
    print(f"report: {out / 'report.md'}")
    return 0
