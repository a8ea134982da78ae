"""Named sets of tasks: the suite a search selects on, and the held-out suite that judges what it
finds. The two never share a task; no selection decision ever reads a held-out task."""

from __future__ import annotations

SUITE = ("memory", "digits", "rnn", "attention", "deepnet", "denoise")
"""The default selection suite: one cheap task of each kind the issue of record names —
associative memory, convolution, a recurrent net, attention, a deep narrow net and
regression/autoencoding. ``mlp`` (every library method within 3% of AdamW) and ``quadratic``
(too easy) are left out. Chosen by kind and cost, not by agreement with the held-out tasks
(that would let them into a design decision); ``benchmarks/proxy_fidelity.py`` reports the
agreement."""

HELDOUT = ("tanhnet", "autoencoder", "gru", "lm")
"""The held-out suite: tasks no tier of a search may select on — a deep narrow tanh regression,
an MLP autoencoder on the digits images, a GRU on a synthetic sequence task and a byte-level
transformer on English prose (the four kinds on which the search's earlier discoveries failed
to generalize)."""


def check_disjoint(selection, heldout) -> None:
    """Raise ``ValueError`` when a task is in both the selection tasks and the held-out suite."""
    both = sorted(set(selection) & set(heldout))
    if both:
        raise ValueError(f"held-out tasks {both} are also selection tasks; a held-out task may never be selected on")
