"""``optdisco validate``: compare programs with baselines at target scale (see optdisco.evaluate.validate).

``register(subparsers)`` adds the command; the entry module (``optdisco.search.cli``) calls it. The
parsed arguments carry ``func``, and ``args.func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Tune each program's learning rate on one seed (standard LR grid), rerun the best on
every seed, and print a table: final held-out loss (median and spread over seeds) and the speedup
over AdamW (AdamW's steps to reach the common loss over the program's, capped at 4x; differences
within the seed spread are ties). Writes a PNG of the loss curves. Runs on CUDA when present."""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("validate", help="compare programs with baselines at target scale", description=DESCRIPTION)
    p.add_argument("programs", nargs="*", metavar="PROGRAM", help="library names or .opt files")
    p.add_argument("--baselines", default="adamw,lion,muon", help="comma-separated library names or .opt files "
                   "(default: adamw,lion,muon; '' for none)")
    p.add_argument("--task", default="mlp", help="task name (see `optdisco tasks`; default mlp)")
    p.add_argument("--size", default="target", choices=("proxy", "target"), help="task size (default target)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the rerun (default 3)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the task's budget)")
    p.add_argument("--points", type=int, default=8, help="LR grid points (default 8)")
    p.add_argument("--decades", type=float, default=3.0, help="decades the LR grid spans (default 3)")
    p.add_argument("--plot", default=None, help="PNG path (default validate-TASK-SIZE.png)")
    p.add_argument("--json", default=None, help="also write the full report (every run) as JSON here")
    p.add_argument("--device", default=None, help="torch device (default cuda when present, else cpu)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds per evaluation (default none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from optdisco.dsl import DSLError
    from .validate import validate

    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    plot = args.plot or f"validate-{args.task}-{args.size}.png"
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        report = validate(
            args.programs, baselines=baselines, task=args.task, size=args.size, seeds=args.seeds,
            steps=args.steps, points=args.points, decades=args.decades, plot=plot,
            time_limit=args.time_limit, device=args.device, threads=args.threads, log=log,
        )
    except (DSLError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"optdisco validate: {msg}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, allow_nan=False)
        print(f"report: {args.json}")
    return 0
