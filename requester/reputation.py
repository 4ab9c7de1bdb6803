"""A requester's own record of which nodes passed or failed a check of their work (issue 11).

A check is a re-run (``verify --reproduce``) or a step audit: an objective test of a node's
signed claim, not a guess from timing. One failure makes a node *distrusted*: its signature sits
on an image the attested generation does not give, which an honest node never signs (honest
noise stays inside the checks' tolerances by calibration). Distrusted nodes get no jobs from this
requester (``requester.Session``) until the operator forgets the verdict
(``pointillist reputation forget PEER``), e.g. after a check is shown to be wrong.

This is local knowledge, never gossiped: a network-wide reputation would let anyone accuse
anyone. What another requester can do instead is re-check the evidence (the image, and later the
audit's evidence file) with the model in hand.

Pure, with a small JSON file (``reputation.json`` in the requester's data directory) to survive
between commands. A corrupt file reads as empty: this is a cache of verdicts whose evidence lives
elsewhere (the path recorded with each failure).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "reputation.json"
#: Peers remembered; beyond this, peers with no failure and the oldest last check are forgotten
#: first (a failure is kept as long as anything is).
MAX_PEERS = 10_000
#: Characters kept of a failure's reason and evidence path.
MAX_TEXT = 500


@dataclass
class Failure:
    at: float  # Unix time
    check: str  # "reproduce" or "audit"
    reason: str  # one line: what differed, by how much
    evidence: str | None  # a file that lets anyone re-check it (the image, an evidence file)


@dataclass
class Standing:
    passed: int = 0
    failed: int = 0
    last_at: float = 0.0
    failures: list[Failure] = field(default_factory=list)  # the most recent few

    @property
    def distrusted(self) -> bool:
        return self.failed > 0


#: Failures kept per peer (the count keeps counting).
FAILURES_KEPT = 5


class Reputation:
    def __init__(self, standings: dict[str, Standing] | None = None) -> None:
        self._standings = dict(standings or {})

    def passed(self, peer: str, now: float) -> None:
        standing = self._standings.setdefault(peer, Standing())
        standing.passed += 1
        standing.last_at = now
        self._bound()

    def failed(self, peer: str, now: float, check: str, reason: str, evidence: str | None = None) -> None:
        standing = self._standings.setdefault(peer, Standing())
        standing.failed += 1
        standing.last_at = now
        standing.failures = [*standing.failures, Failure(now, check, reason[:MAX_TEXT],
                                                         evidence[:MAX_TEXT] if evidence else None)][-FAILURES_KEPT:]
        self._bound()

    def forget(self, peer: str) -> bool:
        return self._standings.pop(peer, None) is not None

    def standing(self, peer: str) -> Standing:
        return self._standings.get(peer, Standing())

    def distrusted(self) -> set[str]:
        return {peer for peer, s in self._standings.items() if s.distrusted}

    def peers(self) -> dict[str, Standing]:
        return dict(self._standings)

    def _bound(self) -> None:
        if len(self._standings) <= MAX_PEERS:
            return
        order = sorted(self._standings.items(), key=lambda kv: (kv[1].distrusted, kv[1].last_at))
        for peer, _ in order[: len(self._standings) - MAX_PEERS]:
            del self._standings[peer]

    # ---- the file -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {peer: asdict(s) for peer, s in self._standings.items()}

    @classmethod
    def from_json(cls, raw: Any) -> Reputation:
        """Standings from the file's JSON; entries of the wrong shape are dropped, not fatal."""
        standings: dict[str, Standing] = {}
        if not isinstance(raw, dict):
            return cls()
        for peer, s in raw.items():
            try:
                failures = [Failure(float(f["at"]), str(f["check"]), str(f["reason"]),
                                    None if f.get("evidence") is None else str(f["evidence"]))
                            for f in s.get("failures", [])][-FAILURES_KEPT:]
                standing = Standing(int(s["passed"]), int(s["failed"]), float(s["last_at"]), failures)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if standing.passed >= 0 and standing.failed >= 0:
                standings[str(peer)] = standing
        return cls(standings)

    @classmethod
    def load(cls, state_dir: Path) -> Reputation:
        try:
            return cls.from_json(json.loads((state_dir / FILE_NAME).read_text()))
        except (OSError, ValueError):
            return cls()

    def save(self, state_dir: Path) -> None:
        """Atomically (a temporary file and ``os.replace``); ``OSError`` reaches the caller, since
        a verdict that was not saved must not be reported as recorded."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / FILE_NAME
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)


@dataclass(frozen=True)
class Outcome:
    """One check of a node's work: passed, or failed with the check's name, why and the evidence."""

    node: str
    passed: bool
    check: str = ""  # "audit", "reproduce"
    reason: str = ""
    evidence: str | None = None


def record_outcomes(state_dir: Path, outcomes: list[Outcome], now: float) -> str | None:
    """Apply ``outcomes`` to the reputation kept in ``state_dir`` and save it; a one-line warning
    when it could not be saved (the outcomes still stand as reported), else ``None``."""
    if not outcomes:
        return None
    reputation = Reputation.load(state_dir)
    for outcome in outcomes:
        if outcome.passed:
            reputation.passed(outcome.node, now)
        else:
            reputation.failed(outcome.node, now, outcome.check, outcome.reason, outcome.evidence)
    try:
        reputation.save(state_dir)
    except OSError as exc:
        return f"warning: could not record the outcome in {state_dir}: {exc.strerror or exc}"
    return None
