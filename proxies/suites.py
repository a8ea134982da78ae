"""Named sets of tasks: the suite a search selects on, and the held-out suite that judges what it
finds. The two never share a task; no selection decision ever reads a held-out task."""

from __future__ import annotations

SUITE = ("mlp", "memory", "digits", "quadratic")
"""The default selection suite (cheap tasks of different kinds; chosen by
``benchmarks/proxy_fidelity.py``)."""

HELDOUT = ("lm",)
"""The held-out suite: tasks no tier of a search may select on."""


def check_disjoint(selection, heldout) -> None:
    """Raise ``ValueError`` when a task is in both the selection tasks and the held-out suite."""
    both = sorted(set(selection) & set(heldout))
    if both:
        raise ValueError(f"held-out tasks {both} are also selection tasks; a held-out task may never be selected on")
