"""optdisco.search — evolutionary search over optimizer programs, its run store, simplification,
reports and the command line.

    >>> from optdisco.search import Search, SearchConfig, Run
    >>> run = Search(SearchConfig(budget=60, workers=2, seed_programs=["sgd"])).run()
    >>> run.best(1)[0]["program"]
"""

from __future__ import annotations

import importlib

# Imported on first use (PEP 562): the command line imports this package, and `optdisco --help`
# should not wait for torch.
_EXPORTS = {"SearchConfig": ".config", "Tier": ".config", "Search": ".engine", "SearchError": ".engine",
            "Run": ".run"}

__all__ = ["Search", "SearchConfig", "SearchError", "Tier", "Run"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
