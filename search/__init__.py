"""optdisco.search — evolutionary search over optimizer programs, its run store, simplification,
reports and the command line.

    >>> from optdisco.search import Search, SearchConfig, Run
    >>> run = Search(SearchConfig(budget=60, workers=2, seed_programs=["sgd"])).run()
    >>> run.best(1)[0]["program"]
"""

from __future__ import annotations

from optdisco.dsl.lazy import lazy_names

# Loaded on first use (see optdisco.dsl.lazy): the command line imports this package, and
# `optdisco --help` should not wait for torch.
_EXPORTS = {"SearchConfig": ".config", "Tier": ".config", "Search": ".engine", "SearchError": ".engine",
            "Run": ".run"}

__all__ = ["Search", "SearchConfig", "SearchError", "Tier", "Run"]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
