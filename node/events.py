"""What happens on a node, as events: one stream that the live view, the JSON log, metrics and
``node status`` all read, so each figure is counted once and shown alike everywhere.

The job service emits on the trio loop; subscribers must be quick and must not raise (a
subscriber that raises is logged once and dropped: watching the node must never break it).
Times are ``time.monotonic()`` seconds; durations are split where the operator can act on them:
queue (waiting for the GPU), generation (pipeline and attestation) and delivery (storing the
result and sending it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..protocol.errors import ErrorCode

log = logging.getLogger("pointillist.node")


@dataclass(frozen=True)
class JobAccepted:
    job_id: str
    requester: str
    peer: str
    model: str
    steps: int
    position: int  # jobs ahead of it
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    steps: int
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    step: int
    total: int


@dataclass(frozen=True)
class JobFinished:
    """A job's end: ``code`` is None when the requester got its image (or it was stored for a
    requester who left), else why it failed."""

    job_id: str
    requester: str
    peer: str
    code: ErrorCode | None
    queue_s: float
    generation_s: float
    delivery_s: float
    steps: int
    png_bytes: int = 0
    delivered: bool = True  # False: stored for fetch, the requester was gone
    at: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.code is None


@dataclass(frozen=True)
class RequestRefused:
    """A request refused before any work (admission or framing)."""

    peer: str
    code: ErrorCode
    message: str
    at: float = field(default_factory=time.monotonic)


Event = JobAccepted | JobStarted | JobProgress | JobFinished | RequestRefused


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("an event subscriber failed and was removed")
                self._subscribers.remove(callback)
