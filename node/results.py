"""Finished results, keyed by job id, so a requester whose connection broke can fetch its image
later, also after the node restarts. Bounded by age and total size (oldest first).

Rows of the ``results`` table of the node's state database (``state_store.py``): one INSERT per
job and one primary-key lookup per fetch, whatever the number stored. Pruning is not done here on
``put``: ``prune_pass`` removes at most a batch of rows and is called by the state's background
maintenance; a put that takes the total over the bound wakes it (``on_over_bound``) without
waiting for it. Between the two, the store may hold a little more than ``max_bytes``.

A result may carry its job's step commitments (issue 11: ``Trajectory.to_bytes()``, the leaves
whose Merkle root the attestation signs), in the same row: kept for the same challenge window
(``keep_s``, the results' retention), counted in the same size bound (``size`` is the PNG's bytes
plus the trajectory's) and pruned with the result. ``trajectory_for`` reads them back for the
audit protocol (issue 11, later items).

A size bound too small for the node's traffic prunes step commitments inside the challenge window
(``MIN_CHALLENGE_WINDOW_S``, 1 h), where a node that cannot open its leaves fails an audit: each
such prune is counted (``pruned_in_window``) and logged as a warning naming the fix (at most a few
a minute).

All methods block (SQLite): the service calls them in worker threads.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..attestation.trajectory import Trajectory
from ..protocol.audit import MIN_CHALLENGE_WINDOW_S
from .quiet_log import RateLimitedLog

log = logging.getLogger("pointillist.node")
_window_log = RateLimitedLog(log)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredResult:
    job_id: str
    requester: str
    created: float
    png: bytes


class ResultStore:
    def __init__(self, db: Any, keep_s: float, max_bytes: int, *, clock: Callable[[], float] = time.time,
                 on_over_bound: Callable[[], None] | None = None) -> None:
        """``db``: a ``state_store.Database`` (``transaction()``, ``lock``, ``conn``)."""
        self.db = db
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.on_over_bound = on_over_bound or (lambda: None)
        self._totals = threading.Lock()
        #: results with step commitments pruned for size before the challenge window ended
        self.pruned_in_window = 0
        with db.lock:  # once, at open: from here on a running total
            self.count, self.total_bytes = db.conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM results").fetchone()

    def put(self, job_id: str, requester: str, png: bytes, now: float | None = None,
            trajectory: bytes | None = None) -> None:
        """Store a result; ``trajectory``: its step commitments (``Trajectory.to_bytes()``)."""
        if not _JOB_ID.match(job_id):
            raise ValueError("job ids are 32 lowercase hex digits")
        now = self.clock() if now is None else now
        size = len(png) + (len(trajectory) if trajectory is not None else 0)
        with self.db.transaction() as conn:
            old = conn.execute("SELECT size FROM results WHERE job_id = ?", (job_id,)).fetchone()
            conn.execute("INSERT OR REPLACE INTO results (job_id, requester, created, size, png, trajectory) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (job_id, requester, now, size, png, trajectory))
        with self._totals:
            self.count += old is None
            self.total_bytes += size - (old[0] if old else 0)
            over = self.total_bytes > self.max_bytes
        if over:
            self.on_over_bound()

    def get(self, job_id: str, now: float | None = None) -> StoredResult | None:
        if not _JOB_ID.match(job_id):
            return None
        now = self.clock() if now is None else now
        with self.db.lock:
            row = self.db.conn.execute("SELECT requester, created, png FROM results WHERE job_id = ?",
                                       (job_id,)).fetchone()
        if row is None or now - row[1] > self.keep_s:
            return None
        return StoredResult(job_id, row[0], row[1], bytes(row[2]))

    def trajectory_bytes(self, job_id: str, now: float | None = None) -> bytes | None:
        """The stored step commitments of ``job_id`` as stored, or ``None`` (none kept, expired,
        pruned, or a result stored without them)."""
        if not _JOB_ID.match(job_id):
            return None
        now = self.clock() if now is None else now
        with self.db.lock:
            row = self.db.conn.execute("SELECT created, trajectory FROM results WHERE job_id = ?",
                                       (job_id,)).fetchone()
        if row is None or row[1] is None or now - row[0] > self.keep_s:
            return None
        return bytes(row[1])

    def trajectory_for(self, job_id: str, now: float | None = None) -> Trajectory | None:
        """The step commitments of ``job_id`` within the challenge window, or ``None``: the
        leaves in order, their hashes and root (recomputed; the audit compares it with the
        signed one), and inclusion proofs (``Trajectory.proof``). Raises ``VerificationError``
        if the stored bytes are damaged."""
        data = self.trajectory_bytes(job_id, now)
        return Trajectory.from_bytes(data) if data is not None else None

    def prune_pass(self, now: float | None = None, batch: int = 500, max_bytes: int | None = None) -> bool:
        """Drop at most ``batch`` results and about ``max_bytes`` (at least one result): expired
        ones first, then the oldest while over the size bound. True if more would go (call again)."""
        now = self.clock() if now is None else now
        budget = max_bytes if max_bytes is not None else float("inf")
        doomed: list[tuple[str, int]] = []
        freed = 0

        def take(job_id: str, size: int) -> bool:
            nonlocal freed
            if len(doomed) >= batch or (doomed and freed + size > budget):
                return False
            doomed.append((job_id, size))
            freed += size
            return True

        with self.db.transaction() as conn:
            for job_id, size in conn.execute("SELECT job_id, size FROM results WHERE created < ? "
                                             "ORDER BY created LIMIT ?", (now - self.keep_s, batch)).fetchall():
                if not take(job_id, size):
                    break
            over = self.total_bytes - freed - self.max_bytes
            in_window = 0
            if over > 0:
                taken = {job_id for job_id, _ in doomed}
                for job_id, size, created, committed in conn.execute(
                        "SELECT job_id, size, created, trajectory IS NOT NULL FROM results ORDER BY created LIMIT ?",
                        (batch,)).fetchall():
                    if over <= 0:
                        break
                    if job_id in taken:
                        continue
                    if not take(job_id, size):
                        break
                    over -= size
                    in_window += bool(committed) and now - created < MIN_CHALLENGE_WINDOW_S
            conn.executemany("DELETE FROM results WHERE job_id = ?", [(job_id,) for job_id, _ in doomed])
            expired_left = conn.execute("SELECT 1 FROM results WHERE created < ? LIMIT 1",
                                        (now - self.keep_s,)).fetchone() is not None
        with self._totals:
            self.count -= len(doomed)
            self.total_bytes -= freed
            over_bound = self.total_bytes > self.max_bytes and self.count > 0
            self.pruned_in_window += in_window
        if in_window:
            _window_log.log(logging.WARNING, "pruned in challenge window",
                            "%d result(s) pruned for space less than %d min after their job: audits of them "
                            "within the challenge window will fail this node; raise [results] max_mb",
                            in_window, MIN_CHALLENGE_WINDOW_S // 60)
        return bool(doomed) and (expired_left or over_bound)
