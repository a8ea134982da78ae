"""The ``optdisco`` command line: the one entry module. Each folder owns its commands; this module
lists them, in the order ``optdisco --help`` shows them.

A command module defines ``register(subparsers)``, which adds its subcommands with their handler
as the ``func`` default; a handler returns the exit code (0; 1 for a failed check; 2 for bad
input, printed as ``optdisco COMMAND: message``). Command modules import what they need when they
run (torch, ray, matplotlib take seconds), so that `optdisco --help`, `--version` and usage errors
answer at once.
"""

from __future__ import annotations

import argparse
import sys

from optdisco.dsl import cli as language_commands  # check, show
from optdisco.evaluate import cli as evaluate_commands  # validate
from optdisco.library import cli as library_commands  # library
from optdisco.proxies import cli as task_commands  # tasks

from . import cli_export, cli_finalize, cli_report, cli_search, cli_simplify

COMMANDS = (language_commands, library_commands, cli_search, cli_simplify, cli_finalize, cli_report, task_commands,
            evaluate_commands, cli_export)
"""The command modules, each with ``register(subparsers)``."""


class Parser(argparse.ArgumentParser):
    """argparse with the command line's one error style: ``optdisco COMMAND: message``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="optdisco",
        description="Discover optimization algorithms: optimizers as programs, searched, validated, exported.",
    )
    parser.add_argument("--version", action="version", version=f"optdisco {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optdisco")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown (not installed)"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
