"""``optdisco export NAME|FILE|RUN.db -o my_optimizer.py``: write a program — a library name, a
.opt file, or the program ranked ``--rank N`` (1 = best) in a search's run store — as a
standalone PyTorch optimizer module (see optdisco.dsl.export_python).

``register(subparsers)`` adds the subcommand to the ``optdisco`` argparse parser; the handler
is stored as the ``func`` default, called with the parsed arguments, and returns an exit code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _class_name(stem: str, program=None) -> str:
    """A class name for ``stem``: the program's own spelling when its title starts with the name
    (``AdamW`` for adamw), else CamelCase of the stem."""
    title = (program.doc.strip().split() or [""])[0] if program is not None else ""
    if title.isidentifier() and title.lower() == stem.lower().replace("_", ""):
        return title
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", stem) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "DiscoveredOptimizer"
    return name if name[0].isalpha() else "Opt" + name


def _is_run_store(path: Path) -> bool:
    if path.suffix in (".db", ".sqlite"):
        return True
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _load(spec: str, rank: int = 1, point: int | None = None):
    """A program from a run store (the one at ``rank``, or point ``point`` of its Pareto front),
    a .opt file path or a library name, with the stem of its class name and, from a run store's
    ranking, the context it was tuned in (else None)."""
    path = Path(spec)
    if _is_run_store(path):
        if not path.is_file():
            raise FileNotFoundError(f"no such run store: {spec}")
        from .run import Run

        run = Run(path)
        try:
            if point is not None:
                from optdisco.dsl import parse

                from .front import front_point

                return parse(front_point(run, point)["text"]), f"DiscoveredOptimizerFront{point}", None
            row = run.ranked(rank)
        finally:
            run.close()
        return row["program"], "DiscoveredOptimizer" if rank == 1 else f"DiscoveredOptimizer{rank}", row["context"]
    from optdisco.dsl import resolve_program

    return resolve_program(spec), path.stem, None


def _list_front(spec: str) -> int:
    """Print the front's points (``--front`` without ``--point``)."""
    from .front import table
    from .run import Run

    path = Path(spec)
    if not (_is_run_store(path) and path.is_file()):
        print(f"optdisco export: --front needs a run store, got {spec}", file=sys.stderr)
        return 2
    try:
        run = Run(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"optdisco export: {e}", file=sys.stderr)
        return 2
    try:
        if not run.state.get("front"):
            print(f"optdisco export: {spec} has no Pareto front (a run with --objectives loss,memory|cost|quant keeps one)",
                  file=sys.stderr)
            return 2
        print(table(run))
    finally:
        run.close()
    print(f"\nexport a point with: optdisco export {spec} --front --point K -o found.py", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from optdisco.dsl import DSLError, export_python

    if args.point is not None and not args.front:
        print("optdisco export: --point needs --front", file=sys.stderr)
        return 2
    if args.front and args.point is None:
        return _list_front(args.program)
    try:
        from .context import describe, export_context

        program, stem, context = _load(args.program, args.rank, args.point)
        class_name = args.class_name or _class_name(stem, program)
        source = export_python(program, class_name=class_name, tuned=export_context(context))
    except (DSLError, FileNotFoundError, ValueError) as e:
        print(f"optdisco export: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # an unknown library name; the message lists close names
        print(f"optdisco export: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.output in (None, "-"):
        sys.stdout.write(source)
    else:
        out = Path(args.output)
        out.write_text(source)
        print(f"wrote {out} (class {class_name}: from {out.stem} import {class_name})", file=sys.stderr)
    if context:
        sched = ", lr_schedule(opt) gives its schedule" if context.get("schedule") else ""
        print(f"defaults are the tuned values: {describe(context)}{sched}", file=sys.stderr)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "export",
        help="write a program (library, file or search result) as a standalone torch.optim.Optimizer module",
        description="Write a program (a library name or a .opt file) as a Python module that imports only torch "
        "and defines a torch.optim.Optimizer subclass.",
    )
    p.add_argument("program", help="library name (see `optdisco library`), a .opt file, or a search's run store (.db)")
    p.add_argument("--rank", type=int, default=1, help="with a run store: the program at this rank (1 = best)")
    p.add_argument("--front", action="store_true",
                   help="with a run store: list the points of its Pareto front (with --point K: export point K)")
    p.add_argument("--point", type=int, metavar="K", help="with --front: the front's point K (1 = lowest loss)")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.add_argument("--class-name", help="name of the optimizer class (default: from the program's name)")
    p.set_defaults(func=run_export)
    return p
