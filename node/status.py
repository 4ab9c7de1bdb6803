"""The operator's figures, gathered once: a subscriber of the job service's events plus a few live
readings (peers, records, queue, stored results). The live view, the event log, ``node status``
and the metrics endpoint all read from here or from the same events, so they agree.

``snapshot()`` is plain JSON (camelCase keys, like the wire formats): it is what ``node status
--json`` prints and what the status protocol carries.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from .events import Event, JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from .version import POINTILLIST_VERSION

#: How many finished jobs and errors the view keeps to show.
RECENT = 10


@dataclass
class Readings:
    """Live values the events do not carry, read when a snapshot is taken."""

    addrs: Callable[[], list[str]] = list
    peers: Callable[[], int] = lambda: 0
    records_held: Callable[[], int] = lambda: 0
    records_rejected: Callable[[], dict[str, int]] = dict
    queue_depth: Callable[[], int] = lambda: 0
    accepting: Callable[[], bool] = lambda: True
    stored: Callable[[], tuple[int, int]] = lambda: (0, 0)  # results held, their bytes
    models: Callable[[], list[dict]] | None = None  # when warmth changes; else NodeStatus.models
    reachability: Callable[[], str] = lambda: "unknown"  # public / private / unknown (AutoNAT)


@dataclass
class _Current:
    job_id: str
    requester: str
    steps: int
    step: int = 0
    started: float | None = None


@dataclass
class NodeStatus:
    peer_id: str
    models: list[dict]  # {"name", "digest", "warm"}
    readings: Readings = field(default_factory=Readings)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.started_mono = self.clock()
        self.started_wall = self.wall_clock()
        self.served = 0
        self.failed = 0
        self.failed_by_code: Counter[str] = Counter()
        self.refused_by_code: Counter[str] = Counter()
        self.steps_done = 0
        self.last_steps_per_s: float | None = None
        self.recent_jobs: deque[dict] = deque(maxlen=RECENT)
        self.recent_errors: deque[dict] = deque(maxlen=RECENT)
        self._accepted: dict[str, _Current] = {}
        self.current: _Current | None = None

    # ---- events ----------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        if isinstance(event, JobAccepted):
            self._accepted[event.job_id] = _Current(event.job_id, event.requester, event.steps)
        elif isinstance(event, JobStarted):
            self.current = self._accepted.get(event.job_id) or _Current(event.job_id, "?", event.steps)
            self.current.started = event.at
        elif isinstance(event, JobProgress):
            if self.current is not None and self.current.job_id == event.job_id:
                self.current.step = event.step
        elif isinstance(event, JobFinished):
            self._finished(event)
        elif isinstance(event, RequestRefused):
            self.refused_by_code[str(event.code)] += 1
            self._error(event.peer, None, str(event.code), event.message)

    def _finished(self, e: JobFinished) -> None:
        self._accepted.pop(e.job_id, None)
        if self.current is not None and self.current.job_id == e.job_id:
            self.current = None
        if e.ok:
            self.served += 1
            self.steps_done += e.steps
            if e.generation_s > 0:
                self.last_steps_per_s = e.steps / e.generation_s
        else:
            self.failed += 1
            self.failed_by_code[str(e.code)] += 1
            self._error(e.peer, e.job_id, str(e.code), "job failed")
        self.recent_jobs.append({
            "jobId": e.job_id, "requester": e.requester, "ok": e.ok,
            "code": None if e.ok else str(e.code), "delivered": e.delivered, "steps": e.steps,
            "queueS": round(e.queue_s, 4), "generationS": round(e.generation_s, 4),
            "deliveryS": round(e.delivery_s, 4), "at": self._wall(e.at),
        })

    def _error(self, peer: str, job_id: str | None, code: str, message: str) -> None:
        self.recent_errors.append({"at": self._wall(self.clock()), "peer": peer, "jobId": job_id,
                                   "code": code, "message": message[:200]})

    def _wall(self, mono: float) -> float:
        return round(self.started_wall + (mono - self.started_mono), 3)

    # ---- reading ---------------------------------------------------------------------

    def snapshot(self) -> dict:
        r = self.readings
        now = self.clock()
        stored_count, stored_bytes = r.stored()
        current = None
        if self.current is not None:
            c = self.current
            current = {"jobId": c.job_id, "requester": c.requester, "step": c.step, "total": c.steps,
                       "runningS": round(now - c.started, 3) if c.started is not None else 0.0}
        return {
            "peerId": self.peer_id,
            "version": POINTILLIST_VERSION,
            "pid": os.getpid(),
            "startedAt": round(self.started_wall, 3),
            "uptimeS": round(now - self.started_mono, 3),
            "addrs": list(r.addrs()),
            "reachability": r.reachability(),
            "models": list(r.models() if r.models is not None else self.models),
            "peers": r.peers(),
            "recordsHeld": r.records_held(),
            "recordsRejected": dict(r.records_rejected()),
            "queue": r.queue_depth(),
            "accepting": r.accepting(),
            "current": current,
            "jobs": {"served": self.served, "failed": self.failed, "failedByCode": dict(self.failed_by_code)},
            "refusedByCode": dict(self.refused_by_code),
            "stepsDone": self.steps_done,
            "lastStepsPerS": None if self.last_steps_per_s is None else round(self.last_steps_per_s, 3),
            "recentJobs": list(self.recent_jobs),
            "recentErrors": list(self.recent_errors),
            "results": {"count": stored_count, "bytes": stored_bytes},
        }
