"""The run store: one SQLite file per search run.

It holds the run's full configuration, every candidate program (text, fingerprint, parents,
the mutation that made it), every evaluation (task, tier, fitness, curves, time, worker,
error), every worker failure, and the searcher's state (population, counters) after each event.
The database runs in WAL mode and every event is committed in one transaction as it happens:
killing the process at any moment loses at most the evaluations in flight, and the state read
back on resume is exactly the state after the last recorded event.

Tables::

    meta(key, value)                       config, state, created, schema version (JSON values)
    candidates(id, program, fingerprint, parents, mutation, detail, origin, duplicate_of,
               proposal, created, status, tier_reached, fitness)
    evaluations(id, candidate, tier, task, fitness, result, wall, worker, error, attempts,
                finished)                  UNIQUE(candidate, tier); id is the recording order
    failures(id, candidate, tier, attempt, kind, worker, error, time)
    heldout(id, candidate, at_evaluation, fitness, result, finished)
                                           a finalist on the held-out suite, UNIQUE(candidate);
                                           written for reports, never read by selection
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import urllib.parse
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
"""The schema this code writes. A change that adds a table or column bumps it and adds the step
from the previous version to :data:`MIGRATIONS`; a store of a newer version is refused."""

MIGRATIONS: dict[int, str] = {}
"""``MIGRATIONS[v]``: the SQL that upgrades a store of schema ``v`` to ``v + 1`` (run in one
transaction when a store is opened for writing; a read-only open never changes a store)."""

FORMAT = "optdisco run store"
TABLES = ("meta", "candidates", "evaluations", "failures")
_SQLITE_MAGIC = b"SQLite format 3\x00"


class _Stored(str, Enum):
    """A str-valued enum, stored and printed as its plain string."""

    def __str__(self) -> str:
        return self.value


class Status(_Stored):
    """A candidate's ``status``: waiting for an evaluation, moved on to the next tier, finished
    (its funnel ended), or finished with a failed evaluation. Stored as the plain string."""

    PENDING = "pending"
    PROMOTED = "promoted"
    DONE = "done"
    FAILED = "failed"


class Origin(_Stored):
    """Where a candidate came from: a seed program, a mutation (``child``), a proposal whose
    behaviour was already seen (``duplicate``: it reuses that score), a baseline evaluated for a
    report, a program ``simplify`` or ``finalize`` recorded. Stored as the plain string."""

    SEED = "seed"
    CHILD = "child"
    DUPLICATE = "duplicate"
    BASELINE = "baseline"
    SIMPLIFIED = "simplified"


SEARCHED = (Origin.SEED, Origin.CHILD)
"""The origins of the candidates the search itself proposed and evaluated."""
FINISHED = (Status.DONE, Status.FAILED)
"""The statuses of candidates whose funnel has ended."""

PARETO_TABLE = """CREATE TABLE IF NOT EXISTS pareto (
    candidate INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    objectives TEXT NOT NULL,
    PRIMARY KEY (candidate, tier)
)"""
"""One row per recorded evaluation of a multi-objective run: the objective values of the
candidate on that tier (JSON). Created by the first multi-objective search on the store."""


def _marks(values) -> str:
    return ", ".join("?" * len(values))


def _values(values) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


class StoreError(ValueError):
    """A file that is not a run store this code can open; the file is left as it was."""


def _ro_uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"


def identify(path: str | Path) -> int:
    """The schema version of the run store at ``path``. Raises :class:`StoreError`, having written
    nothing, for anything else: a file that is not SQLite, someone else's database, a store of a
    newer schema."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except IsADirectoryError:
        raise StoreError(f"{path} is a directory, not an optdisco run store") from None
    if head != _SQLITE_MAGIC:
        what = "an empty file" if not head else "not an SQLite database"
        raise StoreError(f"{path} is not an optdisco run store ({what}); left unchanged")
    try:
        con = sqlite3.connect(_ro_uri(path), uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in TABLES if t not in tables]
            if missing:
                raise StoreError(f"{path} is an SQLite database but not an optdisco run store (no table "
                                 f"{missing[0]!r}); left unchanged")
            meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('schema', 'format')").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} cannot be read as an optdisco run store ({e}); left unchanged") from None
    try:
        version = json.loads(meta["schema"])
        fmt = json.loads(meta.get("format", json.dumps(FORMAT)))
    except (KeyError, ValueError):
        version, fmt = None, None
    if fmt != FORMAT or not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{path} is an SQLite database but not an optdisco run store (no schema version); "
                         "left unchanged")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer optdisco (store schema {version}; this one reads up to "
                         f"{SCHEMA_VERSION}); upgrade optdisco to open it")
    return version


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    program TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]',
    mutation TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL,
    duplicate_of INTEGER,
    proposal INTEGER,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    tier_reached INTEGER NOT NULL DEFAULT -1,
    fitness REAL
);
CREATE INDEX IF NOT EXISTS candidates_fp ON candidates (fingerprint);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate INTEGER NOT NULL REFERENCES candidates (id),
    tier INTEGER NOT NULL,
    task TEXT NOT NULL,
    fitness REAL,
    result TEXT,
    wall REAL,
    worker TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    finished REAL NOT NULL,
    UNIQUE (candidate, tier)
);
CREATE TABLE IF NOT EXISTS heldout (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate INTEGER NOT NULL,
    at_evaluation INTEGER NOT NULL,
    fitness REAL,
    result TEXT,
    finished REAL NOT NULL,
    UNIQUE (candidate)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    worker TEXT,
    error TEXT,
    time REAL NOT NULL
);
"""


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _enc(x: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (as Result.to_dict writes them):
    standard JSON, which SQLite's json_extract reads."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _enc(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_enc(v) for v in x]
    return x


def _dec(x: Any) -> Any:
    if isinstance(x, str):
        return _NONFINITE.get(x, x)
    if isinstance(x, dict):
        return {k: _dec(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_dec(v) for v in x]
    return x


def dumps(x: Any) -> str:
    """JSON for the store: strict (no Infinity/NaN literals)."""
    return json.dumps(_enc(x), allow_nan=False)


def loads(text: str) -> Any:
    """The inverse of :func:`dumps`; also reads stores written with Infinity literals."""
    return _dec(json.loads(text))


def _f(x: float | None) -> float | None:
    """SQLite stores inf but not NaN; a NaN fitness is stored as +inf (the worst)."""
    if x is None:
        return None
    x = float(x)
    return math.inf if math.isnan(x) else x


class RunStore:
    """One run's SQLite file. Writes are committed at once; reads see every committed write."""

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False):
        """Open the store at ``path``. An existing file is identified first, read-only (see
        :func:`identify`), and refused unchanged if it is not a store; ``create`` makes a new store
        where there is no file; ``readonly`` opens without ever writing."""
        self.path = Path(path)
        exists = self.path.exists()
        if not exists and (readonly or not create):
            raise FileNotFoundError(f"no run store at {self.path}")
        version = identify(self.path) if exists else None
        self.readonly = readonly
        if readonly:
            self.db = sqlite3.connect(_ro_uri(self.path), uri=True, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if version is None:
            self.db.executescript(_SCHEMA)
            self._tx(lambda c: (RunStore.set_meta(c, "schema", SCHEMA_VERSION), RunStore.set_meta(c, "format", FORMAT)))
        elif version < SCHEMA_VERSION:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        """Upgrade this store from ``version`` to :data:`SCHEMA_VERSION`, one step per transaction."""
        while version < SCHEMA_VERSION:
            step = MIGRATIONS[version]

            def tx(c, step=step, to=version + 1):
                for statement in step.split(";"):
                    if statement.strip():
                        c.execute(statement)
                RunStore.set_meta(c, "schema", to)

            self._tx(tx)
            version += 1

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transactions ----------------------------------------------------------------------------
    def _tx(self, fn):
        c = self.db.cursor()
        c.execute("BEGIN IMMEDIATE")
        try:
            out = fn(c)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return out

    def transaction(self, fn):
        """Run ``fn(cursor)`` in one committed transaction (all of it is recorded, or none)."""
        return self._tx(fn)

    # -- meta ------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return loads(row[0]) if row else default

    @staticmethod
    def set_meta(c, key: str, value: Any) -> None:
        c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, dumps(value)))

    # -- writes (each within a transaction cursor ``c``) ------------------------------------------
    @staticmethod
    def add_candidate(c, *, program: str, fingerprint: str, parents: Iterable[int] = (), mutation: str = "",
                      detail: str = "", origin: Origin | str, proposal: int | None, status: Status | str = Status.PENDING,
                      duplicate_of: int | None = None, tier_reached: int = -1, fitness: float | None = None) -> int:
        c.execute(
            "INSERT INTO candidates (program, fingerprint, parents, mutation, detail, origin, duplicate_of, proposal,"
            " created, status, tier_reached, fitness) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (program, fingerprint, json.dumps(list(parents)), mutation, detail, str(origin), duplicate_of,
             proposal, time.time(), str(status), tier_reached, _f(fitness)),
        )
        return int(c.lastrowid)

    @staticmethod
    def add_evaluation(c, *, candidate: int, tier: int, task: str, fitness: float, result: dict | None,
                       wall: float | None, worker: str | None, error: str | None, attempts: int = 1) -> int:
        c.execute(
            "INSERT INTO evaluations (candidate, tier, task, fitness, result, wall, worker, error, attempts, finished)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (candidate, tier, task, _f(fitness), dumps(result) if result is not None else None,
             wall, worker, error, attempts, time.time()),
        )
        return int(c.lastrowid)

    @staticmethod
    def add_failure(c, *, candidate: int, tier: int, attempt: int, kind: str, worker: str | None, error: str | None):
        c.execute(
            "INSERT INTO failures (candidate, tier, attempt, kind, worker, error, time) VALUES (?,?,?,?,?,?,?)",
            (candidate, tier, attempt, kind, worker, error, time.time()),
        )

    @staticmethod
    def add_heldout(c, *, candidate: int, at_evaluation: int, fitness: float, result: dict | None) -> None:
        c.execute(
            "INSERT OR REPLACE INTO heldout (candidate, at_evaluation, fitness, result, finished) VALUES (?,?,?,?,?)",
            (candidate, at_evaluation, _f(fitness), json.dumps(result, allow_nan=True) if result is not None else None,
             time.time()),
        )

    @staticmethod
    def finish_candidate(c, cid: int, *, status: Status | str, tier_reached: int, fitness: float) -> None:
        c.execute("UPDATE candidates SET status = ?, tier_reached = ?, fitness = ? WHERE id = ?",
                  (str(status), tier_reached, _f(fitness), cid))

    @staticmethod
    def add_objectives(c, candidate: int, tier: int, values: dict) -> None:
        """A multi-objective run's objective values of ``candidate`` on ``tier``."""
        c.execute("INSERT OR REPLACE INTO pareto (candidate, tier, objectives) VALUES (?, ?, ?)",
                  (candidate, tier, json.dumps(values, allow_nan=True)))

    def ensure_pareto_table(self) -> None:
        self.db.execute(PARETO_TABLE)

    # -- reads -----------------------------------------------------------------------------------
    def candidate(self, cid: int) -> dict:
        row = self.db.execute("SELECT * FROM candidates WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(f"no candidate {cid} in {self.path}")
        return _candidate_row(row)

    def candidates(self, where: str = "", params: tuple = ()) -> list[dict]:
        """Every candidate in id order, or those matching the SQL condition ``where`` (for ad-hoc
        reads; the code reads through the named queries below)."""
        sql = "SELECT * FROM candidates" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        return [_candidate_row(r) for r in self.db.execute(sql, params)]

    def candidates_from(self, *origins: Origin) -> list[dict]:
        """The candidates of the given origins, in id order."""
        return self.candidates(f"origin IN ({_marks(origins)})", _values(origins))

    def finished_candidates(self) -> list[dict]:
        """Candidates whose funnel has ended (done or failed), duplicates left out."""
        return self.candidates(f"status IN ({_marks(FINISHED)}) AND origin != ?",
                               _values(FINISHED) + (Origin.DUPLICATE.value,))

    def done_on_tier(self, tier: int) -> list[dict]:
        """The search's own candidates (seeds and children) that finished on ``tier``."""
        return self.candidates(f"origin IN ({_marks(SEARCHED)}) AND status = ? AND tier_reached = ?",
                               _values(SEARCHED) + (Status.DONE.value, tier))

    def scored_candidates(self) -> list[dict]:
        """Candidates with a fitness on some tier, neither duplicates nor baselines (what a run ranks)."""
        return self.candidates("origin NOT IN (?, ?) AND tier_reached >= 0 AND fitness IS NOT NULL",
                               _values((Origin.DUPLICATE, Origin.BASELINE)))

    @staticmethod
    def tier_fitnesses(c, tier: int) -> list[float]:
        """Every fitness recorded on ``tier`` so far (read within the transaction cursor ``c``)."""
        rows = c.execute("SELECT fitness FROM evaluations WHERE tier = ? AND fitness IS NOT NULL", (tier,))
        return [r[0] for r in rows.fetchall()]

    def objectives(self, tier: int | None = None) -> dict[tuple[int, int], dict]:
        """``{(candidate, tier): values}`` of every evaluation a multi-objective run recorded (of
        one tier if given); empty for a single-objective run's store, which has no such table."""
        try:
            if tier is None:
                rows = self.db.execute("SELECT candidate, tier, objectives FROM pareto")
            else:
                rows = self.db.execute("SELECT candidate, tier, objectives FROM pareto WHERE tier = ?", (tier,))
            return {(r[0], r[1]): json.loads(r[2]) for r in rows}
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}
            raise

    def evaluations(self, candidate: int | None = None) -> list[dict]:
        if candidate is None:
            rows = self.db.execute("SELECT * FROM evaluations ORDER BY id")
        else:
            rows = self.db.execute("SELECT * FROM evaluations WHERE candidate = ? ORDER BY id", (candidate,))
        return [_evaluation_row(r) for r in rows]

    def evaluation(self, candidate: int, tier: int) -> dict | None:
        r = self.db.execute("SELECT * FROM evaluations WHERE candidate = ? AND tier = ?", (candidate, tier)).fetchone()
        return _evaluation_row(r) if r else None

    def heldout(self) -> dict[int, dict]:
        """Held-out evaluations by candidate: ``{id: {at_evaluation, fitness, result, finished}}``."""
        out = {}
        for r in self.db.execute("SELECT * FROM heldout ORDER BY id"):
            d = dict(r)
            d["result"] = json.loads(d["result"]) if d["result"] else None
            if d["fitness"] is None:
                d["fitness"] = math.inf
            out[d["candidate"]] = d
        return out

    def failures(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM failures ORDER BY id")]

    def count_evaluations(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    def by_fingerprint(self, fp: str) -> dict | None:
        r = self.db.execute(
            "SELECT * FROM candidates WHERE fingerprint = ? AND origin != ? ORDER BY id LIMIT 1",
            (fp, Origin.DUPLICATE.value),
        ).fetchone()
        return _candidate_row(r) if r else None


def _candidate_row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["parents"] = json.loads(d["parents"])
    return d


def _evaluation_row(r: sqlite3.Row) -> dict:
    d = dict(r)
    d["result"] = loads(d["result"]) if d["result"] else None
    if d["fitness"] is None:
        d["fitness"] = math.inf
    return d
