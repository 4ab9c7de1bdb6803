"""The node's side of ``/pointillist/status/1.0.0`` (protocol/status.py): answer the operator's
signed request with ``NodeStatus.snapshot()`` (node/one_request.py: one frame in, one out)."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..protocol.status import check_status_request, status_reply
from .events import EventBus
from .one_request import answer_one_request
from .status import NodeStatus


class StatusService:
    def __init__(self, peer_id: str, status: NodeStatus, events: EventBus | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.peer_id = peer_id
        self.status = status
        self.events = events  # refusals are counted with the job protocol's
        self.clock = clock

    async def _answer(self, frame: Any) -> dict[str, Any]:
        check_status_request(frame, self.peer_id, self.clock())
        return status_reply(self.status.snapshot())

    async def handle_stream(self, stream: Any) -> None:
        await answer_one_request(stream, "status", 4096, self._answer, self.events)
