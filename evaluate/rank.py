"""Rank agreement between two scorings of the same items (used by the benchmarks that ask whether
a proxy ranks optimizers as the tasks it stands for do)."""

from __future__ import annotations

import math
from typing import Sequence


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two equally long sequences: (concordant − discordant pairs) divided by
    √((n₀ − ties in a)(n₀ − ties in b)); a pair tied in both counts in neither. ``nan`` when
    every pair is tied in one of them."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs sequences of one length, got {len(a)} and {len(b)}")
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else math.nan
