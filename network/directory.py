"""The peer directory: the newest valid capacity record of every peer we have heard of.

Pure: records come in already checked (``protocol.capacity.decode_record``); the directory keeps
the newest by sequence number, refuses replays of older ones, and forgets records after expiry.
"""

from __future__ import annotations

from ..protocol.capacity import CapacityRecord


class PeerDirectory:
    def __init__(self, max_peers: int = 10_000) -> None:
        self.max_peers = max_peers
        self._records: dict[str, CapacityRecord] = {}
        self._received_at: dict[str, float] = {}

    def offer(self, record: CapacityRecord, now: float) -> bool:
        """Keep ``record`` if it is newer than what we hold; return whether it was kept."""
        held = self._records.get(record.peer_id)
        if held is not None and record.seq <= held.seq:
            return False  # a replay or a stale copy still circulating
        if held is None and len(self._records) >= self.max_peers:
            self.expire(now)
            if len(self._records) >= self.max_peers:
                return False
        self._records[record.peer_id] = record
        self._received_at[record.peer_id] = now
        return True

    def expire(self, now: float) -> list[str]:
        gone = [p for p, r in self._records.items() if r.expires_at <= now]
        for p in gone:
            del self._records[p]
            del self._received_at[p]
        return gone

    def live(self, now: float) -> list[CapacityRecord]:
        self.expire(now)
        return list(self._records.values())

    def get(self, peer_id: str) -> CapacityRecord | None:
        return self._records.get(peer_id)

    def age(self, peer_id: str, now: float) -> float:
        return now - self._received_at[peer_id]

    def __len__(self) -> int:
        return len(self._records)
