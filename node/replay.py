"""Replay protection: a signed job is accepted at most once.

A job's signature stays valid until its ``expiresAt``, so the node remembers every job id and nonce
it has accepted until that moment; after it, freshness checks refuse the job anyway and the entry
can go. Pure and clock-free: callers pass ``now``.

The cache is bounded (200,000 keys: 100,000 jobs within a job's greatest lifetime, an hour; about
36 MiB when full, measured). When it is full of live entries the node refuses new jobs ("busy") rather than
forgetting one, since forgetting would re-open a replay window.

The cache in memory is the check. On disk (``ReplayJournal``) each accepted job adds its two keys,
before "accepted" is sent, so a restart (or crash) does not forget them; the journal is read once
at start-up.
"""

from __future__ import annotations

import heapq

from ..protocol.errors import ErrorCode, JobRejected


class ReplayCache:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._expiry_by_key: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (expires_at, key): oldest first, for pruning

    def __len__(self) -> int:
        return len(self._expiry_by_key)

    def check_unseen(self, job_id: str, nonce: str, now: float) -> None:
        """Raise ``JobRejected(ErrorCode.REPLAYED)`` if the job id or nonce was seen; remember nothing."""
        self._prune(now)
        if any(k in self._expiry_by_key for k in self.keys(job_id, nonce)):
            raise JobRejected(ErrorCode.REPLAYED, f"job {job_id} was already accepted by this node")

    @staticmethod
    def keys(job_id: str, nonce: str) -> tuple[str, str]:
        """The two keys a job is remembered by (also the journal's)."""
        return f"id:{job_id}", f"nonce:{nonce}"

    def check_and_remember(self, job_id: str, nonce: str, expires_at: int, now: float) -> None:
        """Raise ``JobRejected(ErrorCode.REPLAYED)`` if the job id or nonce was seen; otherwise remember both."""
        self._prune(now)
        keys = self.keys(job_id, nonce)
        if any(k in self._expiry_by_key for k in keys):
            raise JobRejected(ErrorCode.REPLAYED, f"job {job_id} was already accepted by this node")
        if len(self._expiry_by_key) + len(keys) > self.max_entries:
            raise JobRejected(ErrorCode.BUSY, "replay cache is full; try again later")
        for k in keys:
            self._expiry_by_key[k] = expires_at
            heapq.heappush(self._heap, (expires_at, k))

    def restore(self, entries: list[tuple[str, int]], now: float) -> None:
        for key, expires_at in entries:
            if expires_at > now and key not in self._expiry_by_key:
                self._expiry_by_key[key] = expires_at
                heapq.heappush(self._heap, (expires_at, key))

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry_by_key.get(key) == expires_at:
                del self._expiry_by_key[key]


class ReplayJournal:
    """The remembered keys on disk: the ``replay`` table of the node's state database
    (``state_store.py``). ``remember`` is one INSERT of a job's keys, whatever the number held;
    ``prune_pass`` deletes a bounded batch of expired keys. Blocking: called in worker threads."""

    def __init__(self, db) -> None:
        self.db = db  # a state_store.Database

    def remember(self, entries: list[tuple[str, int]]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO replay (key, expires_at) VALUES (?, ?)", entries)

    def load(self, now: float) -> list[tuple[str, int]]:
        """Every live key (at start-up, to fill the ``ReplayCache``)."""
        with self.db.lock:
            return self.db.conn.execute("SELECT key, expires_at FROM replay WHERE expires_at > ?", (now,)).fetchall()

    def prune_pass(self, now: float, batch: int = 500) -> bool:
        """Delete at most ``batch`` expired keys; True if that many went (there may be more)."""
        with self.db.transaction() as conn:
            gone = conn.execute("DELETE FROM replay WHERE rowid IN "
                                "(SELECT rowid FROM replay WHERE expires_at <= ? LIMIT ?)", (now, batch)).rowcount
        return gone >= batch
