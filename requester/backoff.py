"""Requesters remember nodes that failed them and avoid them for a while: 15 s after the first
failure, doubling with each further one up to 10 minutes (hivemind bans for 15 s with 2x
backoff), forgotten on success. Pure, with a small JSON file to survive between commands.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_S = 15.0
MAX_S = 600.0
MAX_PEERS = 1000


class PeerBackoff:
    def __init__(self, entries: dict[str, tuple[int, float]] | None = None) -> None:
        self._entries = dict(entries or {})  # peer -> (failures, avoid until)

    def failed(self, peer: str, now: float) -> float:
        failures = self._entries.get(peer, (0, 0.0))[0] + 1
        until = now + min(MAX_S, BASE_S * 2 ** (failures - 1))
        self._entries[peer] = (failures, until)
        if len(self._entries) > MAX_PEERS:  # forget the ones whose ban ends first
            for p, _ in sorted(self._entries.items(), key=lambda kv: kv[1][1])[: len(self._entries) - MAX_PEERS]:
                del self._entries[p]
        return until

    def succeeded(self, peer: str) -> None:
        self._entries.pop(peer, None)

    def avoided(self, now: float) -> set[str]:
        return {p for p, (_, until) in self._entries.items() if until > now}

    @classmethod
    def load(cls, path: Path) -> "PeerBackoff":
        try:
            raw = json.loads(path.read_text())
            return cls({str(p): (int(f), float(u)) for p, (f, u) in raw.items()})
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache: losing it only means retrying a bad node sooner
