"""The ``optdisco`` command line. Each command group registers itself from its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# Commands import what they need when they run (torch, ray, matplotlib take seconds), so that
# `optdisco --help`, `--version` and usage errors answer at once.


class CLIError(Exception):
    """Bad input to a command: printed as ``optdisco COMMAND: message``, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with the command line's one error style: ``optdisco COMMAND: message``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_check(args) -> int:
    from optdisco.dsl import DSLError, parse_file

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


def cmd_show(args) -> int:
    from optdisco.dsl import DSLError, resolve_program

    try:
        program = resolve_program(args.program)
    except (DSLError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    except KeyError as e:  # an unknown library name; the message lists close names
        raise CLIError(e.args[0]) from None
    if args.latex:
        from optdisco.dsl import to_latex

        print(to_latex(program))
    elif args.python:
        from optdisco.dsl import generate_source

        print(generate_source(program), end="")
    elif args.sympy:
        from optdisco.dsl.symbolic import update_exprs

        for name, expr in update_exprs(program).items():
            print(f"{name}' = {expr}")
    elif args.simplify:
        from optdisco.dsl import simplify

        print(simplify(program).to_text(), end="")
    else:
        print(program.to_text(), end="")
    return 0


def cmd_library(args) -> int:
    from optdisco import library

    rows = library.index()
    headers = ("name", "year", "state B/elem", "paper", "verified against")
    table = [(r["name"], r["year"], f"{r['state_bytes']:.2f}", r["paper"], r["reference"]) for r in rows]
    widths = [max(len(h), *(len(str(row[i])) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    widths[3] = min(widths[3], 60)
    widths[4] = min(widths[4], 50)

    def fmt(row):
        cells = []
        for i, c in enumerate(row):
            c = str(c)
            if len(c) > widths[i]:
                c = c[: widths[i] - 1] + "…"
            cells.append(c.ljust(widths[i]))
        return "  ".join(cells).rstrip()

    print(fmt(headers))
    print(fmt(["-" * w for w in widths]))
    for row in table:
        print(fmt(row))
    print(f"\n{len(table)} programs; state bytes per element measured on a 256×256 float32 hidden matrix")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="optdisco",
        description="Discover optimization algorithms: optimizers as programs, searched, validated, exported.",
    )
    parser.add_argument("--version", action="version", version=f"optdisco {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("check", help="check .opt files (prints FILE:LINE:COL: message on errors)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for files that are OK")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="print a program (file or library name)")
    p.add_argument("program", metavar="FILE|NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--latex", action="store_true", help="as LaTeX")
    g.add_argument("--python", action="store_true", help="the generated torch step function")
    g.add_argument("--sympy", action="store_true", help="each output of one step as a sympy expression")
    g.add_argument("--simplify", action="store_true", help="statically simplified")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("library", help="list the library of documented methods")
    p.set_defaults(func=cmd_library)

    for module in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"optdisco.search.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"optdisco.search.{module}":
                continue
            raise
        mod.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optdisco")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown (not installed)"


# Modules that add command groups: each defines register(subparsers).
_COMMAND_MODULES = ("cli_search", "cli_simplify", "cli_finalize", "cli_report", "cli_tasks", "cli_validate",
                    "cli_export")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"optdisco {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
