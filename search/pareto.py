"""Multi-objective selection: non-dominated sorting with crowding distance (NSGA-II style) inside
aging evolution, and the run's Pareto front.

Why NSGA-II and not MAP-Elites: the search already keeps an aging population and picks parents
by tournament, and NSGA-II's order — the non-dominated rank within the population, then the
crowding distance (larger first) — is exactly a tournament comparator, so aging, the funnel,
restarts and the random baseline stay as they are. It needs no bins: MAP-Elites would need a
grid over each objective chosen before the run (suite loss ratios move by a few percent, state
bytes jump from 0 to 4 to 8, quantization ratios sit near 1), and with a few hundred
evaluations most cells would stay empty or hold one chance program. Crowding keeps the
population spread along the front without a scale: each objective's gaps are divided by its
range on that front.

- A point *dominates* another when it is no worse in every objective and better in one. The
  loss objective is compared as the funnel's score ``(−tier reached, fitness)``: a later tier
  beats any fitness on an earlier one.
- The **front** (``Search.state["front"]``, saved with the searcher's state after every event,
  so resume restores it exactly) is an archive over every finished candidate, not only the
  living population: a candidate enters when no front member dominates it (and only with
  finite objectives), and removes the members it dominates. A dominated program never enters.
- In multi-objective runs a candidate also moves on to the next tier when no candidate
  evaluated on its tier dominates it there, so programs that trade loss for memory or
  robustness reach the last tier instead of being filtered by loss alone.
"""

from __future__ import annotations

import math
from typing import Sequence

def load(store, tier: int | None = None) -> dict[tuple[int, int], dict]:
    """``{(candidate, tier): values}`` of every recorded evaluation (of one tier if given); the
    run store keeps them (:meth:`~optdisco.search.store.RunStore.objectives`)."""
    return store.objectives(tier)


def key(values: dict, tier: int, objectives: Sequence[str]) -> tuple:
    """The point compared for dominance: the loss as ``(−tier, fitness)``, the rest as numbers."""
    out = []
    for name in objectives:
        v = values.get(name, math.inf)
        v = math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        out.append((-tier, v) if name == "loss" else v)
    return tuple(out)


def finite(point: tuple) -> bool:
    return all(math.isfinite(x[1] if isinstance(x, tuple) else x) for x in point)


def dominates(a: tuple, b: tuple) -> bool:
    """``a`` no worse than ``b`` in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[tuple]) -> list[int]:
    """NSGA-II's fast non-dominated sort: rank 0 for the non-dominated points, 1 for those
    dominated only by rank-0 points, and so on."""
    n = len(points)
    dominated_by = [0] * n
    dominating: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominating[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominating[j].append(i)
                dominated_by[i] += 1
    ranks = [0] * n
    current = [i for i in range(n) if dominated_by[i] == 0]
    r = 0
    while current:
        nxt = []
        for i in current:
            ranks[i] = r
            for j in dominating[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = nxt
        r += 1
    return ranks


def _scalar(x) -> float:
    """A number for distances: the loss's fitness (its tier is left to the ranks)."""
    return float(x[1]) if isinstance(x, tuple) else float(x)


def crowding(points: Sequence[tuple], ranks: Sequence[int]) -> list[float]:
    """NSGA-II's crowding distance within each rank: per objective, the gap between a point's
    neighbours divided by that objective's range on the rank; the ends of each objective get
    ``inf``. Non-finite values count as the range's end."""
    n = len(points)
    dist = [0.0] * n
    by_rank: dict[int, list[int]] = {}
    for i, r in enumerate(ranks):
        by_rank.setdefault(r, []).append(i)
    m = len(points[0]) if points else 0
    for members in by_rank.values():
        if len(members) <= 2:
            for i in members:
                dist[i] = math.inf
            continue
        for k in range(m):
            order = sorted(members, key=lambda i: (points[i][k], i))
            vals = [_scalar(points[i][k]) for i in order]
            dist[order[0]] = dist[order[-1]] = math.inf
            lo, hi = vals[0], vals[-1]
            span = hi - lo
            if not (math.isfinite(span) and span > 0):
                continue
            for pos in range(1, len(order) - 1):
                gap = vals[pos + 1] - vals[pos - 1]
                dist[order[pos]] += gap / span if math.isfinite(gap) else math.inf
    return dist


def front_update(front: list[list], cid: int, point: tuple) -> tuple[list[list], bool]:
    """The archive ``front`` (``[[candidate, point], …]``) after offering ``cid`` at ``point``:
    refused if not finite, already there or dominated by a member; otherwise added, and the
    members it dominates removed. Returns (new front sorted by candidate, whether it entered)."""
    if not finite(point) or any(m[0] == cid for m in front):
        return front, False
    if any(dominates(tuple(_as_point(m[1])), point) for m in front):
        return front, False
    kept = [m for m in front if not dominates(point, tuple(_as_point(m[1])))]
    kept.append([cid, _to_json(point)])
    kept.sort(key=lambda m: m[0])
    return kept, True


def _to_json(point: tuple) -> list:
    return [list(x) if isinstance(x, tuple) else x for x in point]


def _as_point(p) -> tuple:
    return tuple(tuple(x) if isinstance(x, list) else x for x in p)


def front_points(front: list[list]) -> list[tuple[int, tuple]]:
    """``(candidate, point)`` of each front member, points as tuples."""
    return [(m[0], _as_point(m[1])) for m in front]


def selection_order(points: Sequence[tuple]) -> list[tuple[int, float]]:
    """Each point's tournament key: ``(rank, −crowding)``, smaller is better."""
    if not points:
        return []
    ranks = nondominated_ranks(points)
    dist = crowding(points, ranks)
    return [(r, -d) for r, d in zip(ranks, dist)]
