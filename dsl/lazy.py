"""A package's names loaded on first use (PEP 562).

The command line imports one command module from each folder; with its package's names loaded
only when used, ``optdisco --help`` imports neither torch nor sympy. ``optdisco.dsl``,
``optdisco.evaluate``, ``optdisco.proxies`` and ``optdisco.search`` use it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_names(package: str, exports: dict[str, str], before: Callable[[], None] | None = None):
    """``(__getattr__, __dir__)`` for the package ``package``: ``exports[name]`` is the module
    (relative to the package) that defines ``name``; ``before()`` runs before a name is loaded.
    A loaded name replaces the attribute importing its module set: ``optdisco.dsl.fingerprint``
    is the function, not the module of that name."""
    module = sys.modules[package]

    def __getattr__(name: str):
        if name in exports:
            if before is not None:
                before()
            value = getattr(importlib.import_module(exports[name], package), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__
