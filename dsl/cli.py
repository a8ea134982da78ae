"""The language's commands: ``optdisco check FILE…`` and ``optdisco show PROGRAM``.

``register(subparsers)`` adds them; the entry module (``optdisco.search.cli``) calls it. The
parsed arguments carry ``func``, and ``args.func(args)`` returns the exit code: 0, 1 for a file
that fails the checker, 2 for bad input (printed as ``optdisco show: message``).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("check", help="check .opt files (prints FILE:LINE:COL: message on errors)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for files that are OK")
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser("show", help="print a program (file, library name or program text)")
    p.add_argument("program", metavar="FILE|NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--latex", action="store_true", help="as LaTeX")
    g.add_argument("--python", action="store_true", help="the generated torch step function")
    g.add_argument("--sympy", action="store_true", help="each output of one step as a sympy expression")
    g.add_argument("--simplify", action="store_true", help="statically simplified")
    p.set_defaults(func=cmd_show)


def cmd_check(args: argparse.Namespace) -> int:
    from . import DSLError, parse_file

    status = 0
    for f in args.files:
        try:
            parse_file(f)
        except DSLError as e:
            print(str(e), file=sys.stderr)
            status = 1
        except OSError as e:
            print(f"{f}: cannot read: {e.strerror}", file=sys.stderr)
            status = 1
        else:
            if not args.quiet:
                print(f"{f}: OK")
    return status


def cmd_show(args: argparse.Namespace) -> int:
    from . import DSLError, resolve_program

    try:
        program = resolve_program(args.program)
    except (DSLError, FileNotFoundError, KeyError) as e:
        # a KeyError is an unknown library name; its message lists close names
        print(f"optdisco show: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.latex:
        from . import to_latex

        print(to_latex(program))
    elif args.python:
        from . import generate_source

        print(generate_source(program), end="")
    elif args.sympy:
        from .symbolic import update_exprs

        for name, expr in update_exprs(program).items():
            print(f"{name}' = {expr}")
    elif args.simplify:
        from . import simplify

        print(simplify(program).to_text(), end="")
    else:
        print(program.to_text(), end="")
    return 0
