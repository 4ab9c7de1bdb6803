"""Replay protection: a signed job is accepted at most once.

A job's signature stays valid until its ``expiresAt``, so the node remembers every job id and nonce
it has accepted until that moment; after it, freshness checks refuse the job anyway and the entry
can go. Pure and clock-free: callers pass ``now``.

The cache is bounded. When it is full of live entries the node refuses new jobs ("busy") rather
than forgetting one, since forgetting would re-open a replay window.
"""

from __future__ import annotations

import heapq

from ..protocol.errors import ErrorCode, JobRejected


class ReplayCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._expiry_by_key: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (expires_at, key): oldest first, for pruning

    def __len__(self) -> int:
        return len(self._expiry_by_key)

    def check_unseen(self, job_id: str, nonce: str, now: float) -> None:
        """Raise ``JobRejected(ErrorCode.REPLAYED)`` if the job id or nonce was seen; remember nothing."""
        self._prune(now)
        if f"id:{job_id}" in self._expiry_by_key or f"nonce:{nonce}" in self._expiry_by_key:
            raise JobRejected(ErrorCode.REPLAYED, f"job {job_id} was already accepted by this node")

    def check_and_remember(self, job_id: str, nonce: str, expires_at: int, now: float) -> None:
        """Raise ``JobRejected(ErrorCode.REPLAYED)`` if the job id or nonce was seen; otherwise remember both."""
        self._prune(now)
        keys = (f"id:{job_id}", f"nonce:{nonce}")
        if any(k in self._expiry_by_key for k in keys):
            raise JobRejected(ErrorCode.REPLAYED, f"job {job_id} was already accepted by this node")
        if len(self._expiry_by_key) + len(keys) > self.max_entries:
            raise JobRejected(ErrorCode.BUSY, "replay cache is full; try again later")
        for k in keys:
            self._expiry_by_key[k] = expires_at
            heapq.heappush(self._heap, (expires_at, k))

    def entries(self) -> list[tuple[str, int]]:
        """(key, expires_at) pairs, for persistence."""
        return sorted(self._expiry_by_key.items())

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


def load_replay_cache(path, now: float) -> ReplayCache:
    """The cache saved by ``save_replay_cache``; an unreadable file starts empty (and says so)."""
    import json
    import logging

    cache = ReplayCache()
    try:
        entries = json.loads(path.read_text())
        cache.restore([(str(k), int(v)) for k, v in entries], now)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError) as exc:
        logging.getLogger("pointillist.node").warning("replay cache %s unreadable (%s); starting empty", path, exc)
    return cache


def save_replay_cache(path, cache: ReplayCache) -> None:
    """Atomically: a crash mid-write leaves the previous file, never a torn one."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cache.entries()))
    os.replace(tmp, path)
