"""What a node keeps across restarts: finished results (for fetch) and the ids of accepted jobs
(against replays). One object the runner opens, maintains in the background and closes.

One SQLite database, ``<state dir>/state.db`` (issue 9, "costs flat in use"): a job's cost on the
node must not grow with the results stored or the job ids remembered, so

- a result is one INSERT (one transaction) and a fetch one primary-key lookup, both in a worker
  thread; the operator's (count, bytes) is a running total kept in memory, read at no cost;
- a remembered job is one INSERT of its two keys (in a worker thread, before "accepted" is
  sent, so it survives a crash right after); the in-memory ``ReplayCache`` stays the check;
- a result's step commitments (issue 11, the leaves of the Merkle root its attestation signs)
  are a column of its row: written in the same INSERT, kept for the same window, counted in the
  same size bound (``[results] max_mb``) and pruned with it; ``NodeState.trajectory_for`` reads them;
- pruning (expired results, then the oldest over the size bound, then expired replay keys) runs
  in ``maintain()``: in a worker thread, at most ``PRUNE_BATCH`` rows a pass, passes until nothing
  is left, then it sleeps ``MAINTAIN_PERIOD_S`` or until a put crosses the size bound.

Settings: WAL journal (readers never wait for the writer; a commit is an append to the log) with
``synchronous=NORMAL``: a commit is not fsynced, so a process crash loses nothing and a power cut
may lose the last commits but never corrupts the database. That is the durability the old files
had (rename without fsync); an fsync per job costs ~50 ms here. ``auto_vacuum=INCREMENTAL`` so the
file shrinks as results are pruned (bounded pages per pass) and disk use follows ``max_mb``.

One connection, shared by the worker threads (``check_same_thread=False``) and guarded by a lock:
SQLite has one writer at a time anyway, and every statement under the lock is bounded.

A database that cannot be opened or read is moved aside (``state.db.corrupt-<time>``) with a
one-line warning and a fresh one is made: a node always starts. A node upgraded in place imports
the old layout (``results/*.png`` + ``*.json``, ``replay.json``) once and removes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import trio

from ..attestation.trajectory import Trajectory
from .policy import Policy
from .replay import ReplayCache, ReplayJournal
from .results import ResultStore

log = logging.getLogger("pointillist.node")

DB_NAME = "state.db"
#: At most this many rows and (for results) bytes deleted per pruning pass; the lock is released
#: between passes. Measured on 2 cores: a pass held it ~50 ms (500 results of 12 KB, or 8 MiB).
PRUNE_BATCH = 500
PRUNE_BYTES = 8 * 2**20
#: Free pages returned to the file system per pass (4 KiB each): as many as a pass frees.
VACUUM_PAGES = PRUNE_BYTES // 4096
#: How often maintenance looks for expired rows when nothing wakes it.
MAINTAIN_PERIOD_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    png BLOB NOT NULL,
    trajectory BLOB
);
CREATE INDEX IF NOT EXISTS results_created ON results (created);
CREATE TABLE IF NOT EXISTS replay (
    key TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replay_expires ON replay (expires_at);
"""


class Database:
    """One SQLite connection shared by threads, one statement group at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn = _connect(path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, in one transaction (committed if the block returns)."""
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def vacuum_step(self, pages: int = VACUUM_PAGES) -> bool:
        """Return up to ``pages`` free pages to the file system; True if free pages remain."""
        with self.lock:
            # executescript steps the pragma to the end; execute() would free one page only
            self.conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            return self.conn.execute("PRAGMA freelist_count").fetchone()[0] > 0

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; ``Database.transaction`` begins and commits.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only on a new database
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=33554432")  # the log shrinks back to 32 MiB after a checkpoint
        conn.executescript(_SCHEMA)
        _add_trajectory_column(conn)
        conn.execute("SELECT COUNT(*) FROM results").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _add_trajectory_column(conn: sqlite3.Connection) -> None:
    """A database made before step commitments (issue 11) gets the results' ``trajectory``
    column (NULL for the results it holds). ALTER TABLE ADD COLUMN rewrites nothing."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
    if "trajectory" not in columns:
        conn.execute("ALTER TABLE results ADD COLUMN trajectory BLOB")


#: What SQLite says of a file that is not (or no longer) a database. Anything else (locked by
#: another process, permissions) is raised: moving a healthy database aside would lose it.
_UNREADABLE = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def open_database(path: Path) -> Database:
    """The database at ``path``; an unreadable one is moved aside and replaced by a fresh one."""
    try:
        return Database(path)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) not in _UNREADABLE or not path.exists():
            raise
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        log.warning("state database %s unreadable (%s); moved to %s, starting a fresh one", path, exc, aside.name)
        path.replace(aside)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.replace(aside.with_name(aside.name + suffix))
        return Database(path)


class NodeState:
    def __init__(self, db: Database | None, results: ResultStore | None, replay: ReplayCache,
                 journal: ReplayJournal | None, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.results = results
        self.replay = replay
        self.journal = journal
        self.clock = clock
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake: trio.Event | None = None
        if results is not None:
            results.on_over_bound = self.wake

    @property
    def save_replay(self) -> Callable[[list[tuple[str, int]]], None] | None:
        """Persist newly remembered replay keys ((key, expires_at) pairs): one INSERT. Blocking:
        the service calls it in a worker thread, before it sends "accepted"."""
        return self.journal.remember if self.journal is not None else None

    def stored(self) -> tuple[int, int]:
        """(results held, their bytes), for the operator's view: a running total, no scan."""
        if self.results is None:
            return 0, 0
        return self.results.count, self.results.total_bytes

    def trajectory_for(self, job_id: str) -> Trajectory | None:
        """The step commitments kept for ``job_id`` (blocking), or ``None``: what the audit
        protocol (issue 11) answers challenges from. See ``ResultStore.trajectory_for``."""
        return self.results.trajectory_for(job_id) if self.results is not None else None

    def prune_pass(self, now: float | None = None, batch: int = PRUNE_BATCH) -> bool:
        """One bounded pass (blocking): at most ``batch`` rows of each kind (``PRUNE_BYTES`` of
        results) and ``VACUUM_PAGES`` pages. True if there is more to do."""
        if self.db is None:
            return False
        now = self.clock() if now is None else now
        more = self.results.prune_pass(now, batch, PRUNE_BYTES) if self.results is not None else False
        more |= self.journal.prune_pass(now, batch)
        more |= self.db.vacuum_step()
        return more

    def wake(self) -> None:
        """Ask ``maintain`` for a pass now (from any thread; never waits)."""
        token, wake = self._token, self._wake
        if token is not None and wake is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(wake.set)

    async def maintain(self, period_s: float = MAINTAIN_PERIOD_S) -> None:
        """Background upkeep (pruning) until cancelled: passes in a worker thread until nothing is
        left, then sleep ``period_s`` or until ``wake``."""
        if self.db is None:
            return await trio.sleep_forever()
        self._token = trio.lowlevel.current_trio_token()
        while True:
            self._wake = trio.Event()
            try:
                while await trio.to_thread.run_sync(self.prune_pass):
                    await trio.sleep(0)
            except sqlite3.Error as exc:  # upkeep must never take the node down
                log.warning("state database: pruning failed (%s); retrying later", exc)
            with trio.move_on_after(period_s):
                await self._wake.wait()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def open_node_state(state_dir: Path | None, policy: Policy, *, clock: Callable[[], float] = time.time,
                    replay_max_entries: int | None = None) -> NodeState:
    """``state_dir`` None keeps everything in memory (tests, benchmarks)."""
    replay = ReplayCache() if replay_max_entries is None else ReplayCache(replay_max_entries)
    if state_dir is None:
        return NodeState(None, None, replay, None, clock)
    state_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(state_dir / DB_NAME)
    _import_old_layout(db, state_dir, clock())
    results = ResultStore(db, policy.results.keep_hours * 3600, int(policy.results.max_mb * 2**20), clock=clock)
    journal = ReplayJournal(db)
    replay.restore(journal.load(clock()), clock())
    return NodeState(db, results, replay, journal, clock)


def _import_old_layout(db: Database, state_dir: Path, now: float) -> None:
    """Before the database, results were files (``results/<id>.png`` + ``.json``) and the replay
    cache a JSON list (``replay.json``). Import them once, then remove them. Idempotent: a crash
    between the commit and the removal imports the same rows again (INSERT OR IGNORE)."""
    results_dir = state_dir / "results"
    replay_file = state_dir / "replay.json"
    metas = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if not metas and not replay_file.exists() and not results_dir.is_dir():
        return
    imported, entries = 0, []
    with db.transaction() as conn:
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text())
                png = meta_path.with_suffix(".png").read_bytes()
                row = (meta_path.stem, str(meta["requester"]), float(meta["created"]), len(png), png)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            conn.execute("INSERT OR IGNORE INTO results (job_id, requester, created, size, png) "
                         "VALUES (?, ?, ?, ?, ?)", row)
            imported += 1
        if replay_file.exists():
            try:
                entries = [(str(k), int(v)) for k, v in json.loads(replay_file.read_text()) if int(v) > now]
            except (OSError, ValueError, TypeError) as exc:
                log.warning("old replay cache %s unreadable (%s); not imported", replay_file, exc)
            conn.executemany("INSERT OR IGNORE INTO replay VALUES (?, ?)", entries)
    for path in (list(results_dir.iterdir()) if results_dir.is_dir() else []):
        if path.suffix in (".png", ".json", ".tmp"):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        results_dir.rmdir()
    replay_file.unlink(missing_ok=True)
    log.info("state: imported %d results and %d replay keys from the old files into %s",
             imported, len(entries), db.path.name)
