"""A finished or running search, read from its store: best programs, history, lineage, statistics.

    >>> from optdisco.search import Run
    >>> run = Run("optdisco-runs/….db")
    >>> for row in run.best(3): print(row["fitness"], row["program"])
    >>> rows = run.history()            # one dict per evaluation, in recording order
"""

from __future__ import annotations

import math
from pathlib import Path

from optdisco.dsl import Program, parse

from .config import SearchConfig
from .engine import score_key
from .store import SEARCHED, RunStore


class Run:
    def __init__(self, path: str | Path, writable: bool = False):
        """Open the run at ``path`` read-only (nothing in the file changes), or ``writable`` for
        commands that record more (simplify, report baselines). A file that is not a run store is
        refused unchanged (:class:`~optdisco.search.store.StoreError`)."""
        self.store = RunStore(path, create=False, readonly=not writable)
        saved = self.store.get_meta("config")
        if saved is None:
            raise ValueError(f"{path} is not a search run store (no config)")
        self.config = SearchConfig.from_dict(saved)

    @property
    def path(self) -> Path:
        return self.store.path

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        s = self.stats()
        return f"Run({str(self.path)!r}, {s['evaluations']} evaluations, best {s['best_fitness']:.4g})"

    def tier(self, i: int):
        """Tier ``i`` of the funnel with its suite's stored reference fitnesses filled in."""
        from .config import tier_with_references

        try:
            return tier_with_references(self.config, self.store.get_meta("references", {}), i)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None

    def heldout(self) -> dict[int, dict]:
        """Held-out suite evaluations of finalists during the run, by candidate id."""
        return self.store.heldout()

    def validation(self) -> dict | None:
        """The end-of-run validation on the held-out suite (``optdisco.search.finalize``)."""
        return self.store.get_meta("validation")

    @property
    def state(self) -> dict:
        return self.store.get_meta("state", {})

    def program(self, cid: int) -> Program:
        return parse(self.store.candidate(cid)["program"])

    def candidates(self) -> list[dict]:
        return self.store.candidates()

    def best(self, k: int = 1, tier: int | None = None) -> list[dict]:
        """The ``k`` best distinct evaluated candidates, best first (later tier, then lower
        fitness; see :mod:`optdisco.search.engine`), each a dict with ``id``, ``fitness``,
        ``tier_reached``, ``program`` (a Program), ``text``, ``mutation``, ``parents``, ``origin``,
        and ``context``: the tuned LR, schedule and steps its fitness was measured with (see
        :func:`optdisco.search.context.tuned_context`; ``None`` if the evaluator tuned nothing)."""
        rows = self.store.scored_candidates()
        if tier is not None:
            rows = [r for r in rows if r["tier_reached"] == tier]
        rows = [r for r in rows if math.isfinite(r["fitness"])]
        rows.sort(key=lambda r: (score_key(r["tier_reached"], r["fitness"]), r["id"]))
        out = []
        for r in rows[:k]:
            d = dict(r)
            d["text"] = r["program"]
            d["program"] = parse(r["program"])
            d["context"] = self.context(r["id"], r["tier_reached"])
            out.append(d)
        return out

    def ranked(self, rank: int = 1) -> dict:
        """The candidate at ``rank`` (1 = best) of :meth:`best`; a clear error past the end."""
        if rank < 1:
            raise ValueError(f"rank must be 1 or more, got {rank}")
        rows = self.best(rank)
        if len(rows) < rank:
            raise ValueError(f"{self.path} has only {len(rows)} evaluated programs; rank {rank} does not exist")
        return rows[rank - 1]

    def history(self, later: bool = False) -> list[dict]:
        """One row per evaluation of the search in recording order: ``index`` (from 1),
        ``candidate``, ``tier``, ``task``, ``fitness``, ``wall``, ``worker``, ``error``,
        ``attempts``, ``finished`` (unix time), ``mutation``, ``parents``, ``origin``, ``program``
        (text). Work recorded after the search (simplify, report baselines) is left out unless
        ``later``."""
        cands = {c["id"]: c for c in self.store.candidates()}
        rows = []
        evs = [e for e in self.store.evaluations() if later or cands[e["candidate"]]["origin"] in SEARCHED]
        for i, e in enumerate(evs, 1):
            c = cands[e["candidate"]]
            rows.append(dict(
                index=i, candidate=e["candidate"], tier=e["tier"], task=e["task"], fitness=e["fitness"],
                wall=e["wall"], worker=e["worker"], error=e["error"], attempts=e["attempts"],
                finished=e["finished"], mutation=c["mutation"], parents=c["parents"], origin=c["origin"],
                program=c["program"],
            ))
        return rows

    def curves(self, cid: int) -> dict | None:
        """The evaluator's details (curves, best LR…) of a candidate's highest-tier evaluation."""
        evs = self.store.evaluations(cid)
        return evs[-1]["result"] if evs else None

    def context(self, cid: int, tier: int | None = None) -> dict | None:
        """The tuned context of a candidate's evaluation on ``tier`` (default: its highest)."""
        from .context import tuned_context

        evs = self.store.evaluations(cid)
        if tier is not None:
            evs = [e for e in evs if e["tier"] == tier]
        if not evs:
            return None
        e = evs[-1]
        t = self.config.tiers[e["tier"]] if 0 <= e["tier"] < len(self.config.tiers) else None
        return tuned_context(e["result"], t)

    def lineage(self, cid: int, depth: int = 50) -> list[dict]:
        """The candidate and its first parents back to a seed: ``[{id, mutation, detail, fitness,
        tier_reached, origin}, …]``, newest first."""
        out, seen = [], set()
        while cid is not None and cid not in seen and len(out) < depth:
            seen.add(cid)
            c = self.store.candidate(cid)
            out.append({k: c[k] for k in ("id", "mutation", "detail", "fitness", "tier_reached", "origin")})
            cid = c["parents"][0] if c["parents"] else None
        return out

    def stats(self) -> dict:
        """Counts: evaluations, candidates, duplicates skipped, rejected children (with reasons),
        worker failures, restarts, elapsed seconds, best fitness on the last tier."""
        st = self.state
        last = len(self.config.tiers) - 1
        best = self.best(1)
        best_f = best[0]["fitness"] if best and best[0]["tier_reached"] == last else math.inf
        rejected = st.get("rejected", {})
        hist = self.history()
        return dict(
            evaluations=len(hist),
            budget=self.config.budget,
            candidates=len(self.store.candidates_from(*SEARCHED)),
            duplicates=st.get("duplicates", 0),
            rejected=sum(rejected.values()),
            rejected_by_reason=dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
            failures=len(self.store.failures()),
            failed_evaluations=sum(1 for e in hist if not math.isfinite(e["fitness"])),
            restarts=st.get("restarts", 0),
            elapsed=st.get("elapsed", 0.0),
            best_fitness=best_f,
            pending=len(st.get("pending", [])),
            finished=self.store.get_meta("finished") is not None,
        )
