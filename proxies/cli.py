"""``optdisco tasks``: list the training tasks, their sizes and budgets.

``register(subparsers)`` adds the command; the entry module (``optdisco.search.cli``) calls it. The
parsed arguments carry ``func``, and ``args.func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tasks", help="list the training tasks", description="List the training tasks "
                              "(name, parameters, steps, parameter roles, what it measures) at one size.")
    p.add_argument("--size", default="proxy", choices=("proxy", "target"), help="size to describe (default proxy)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def plain(text: str) -> str:
    """Docstring text without reStructuredText markup: ``code``, :role:`x`, *emphasis*."""
    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text)
    text = re.sub(r"`{1,2}([^`]*)`{1,2}", r"\1", text)
    return re.sub(r"(?<![\w*])\*{1,2}([^*\s][^*]*)\*{1,2}(?![\w*])", r"\1", text)


def describe(name: str, size: str) -> dict:
    """Name, size, parameter count, steps, role counts and first doc line of one task."""
    from optdisco import proxies

    try:
        task = proxies.get(name, size=size)
    except ImportError as e:  # a task whose optional dependency is missing still gets listed
        return dict(name=name, size=size, params=None, steps=None, roles={}, about=f"unavailable: {e}")
    cls_doc = (type(task).__doc__ or "").strip().splitlines()
    shapes = task.param_shapes()
    roles: dict[str, int] = {}
    for r in task.roles().values():
        roles[r] = roles.get(r, 0) + 1
    return dict(
        name=name, size=size, params=sum(math.prod(s) for s in shapes.values()), steps=task.steps,
        roles=roles, about=plain(cls_doc[0]) if cls_doc else "",
    )


def run(args: argparse.Namespace) -> int:
    from optdisco import proxies

    rows = [describe(n, args.size) for n in proxies.names()]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    default = getattr(proxies, "DEFAULT", None)
    roles = [", ".join(f"{k} {v}" for k, v in sorted(r["roles"].items())) for r in rows]
    width = max([5] + [len(x) for x in roles])
    print(f"{'task':<11} {'params':>9} {'steps':>6}  {'roles':<{width}}  about ({args.size} size)")
    for r, role in zip(rows, roles):
        name = r["name"] + (" *" if r["name"] == default else "")
        params = "—" if r["params"] is None else f"{r['params']:,}"
        steps = "—" if r["steps"] is None else str(r["steps"])
        print(f"{name:<11} {params:>9} {steps:>6}  {role:<{width}}  {r['about']}")
    if default:
        print("* the default proxy")
    return 0
