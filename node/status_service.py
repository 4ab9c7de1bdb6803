"""The node's side of ``/pointillist/status/1.0.0`` (protocol/status.py): answer the operator's
signed request with ``NodeStatus.snapshot()``. Like the job protocol, a peer can never crash the
node here: every failure ends the stream, and refusals are logged at a bounded rate."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import trio

from ..protocol import framing
from ..protocol.errors import ErrorCode, FrameError, JobRejected, TransportError
from ..protocol.status import check_status_request, status_reply
from .events import EventBus, RequestRefused
from .quiet_log import RateLimitedLog
from .service import _remote_peer
from .status import NodeStatus

log = logging.getLogger("pointillist.node")
_refusals = RateLimitedLog(log)

READ_TIMEOUT_S = 10.0


class StatusService:
    def __init__(self, peer_id: str, status: NodeStatus, events: EventBus | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.peer_id = peer_id
        self.status = status
        self.events = events  # refusals are counted with the job protocol's
        self.clock = clock

    async def handle_stream(self, stream: Any) -> None:
        try:
            with trio.fail_after(READ_TIMEOUT_S):
                frame = await framing.read_frame(stream, 4096)
                try:
                    check_status_request(frame, self.peer_id, self.clock())
                    reply = status_reply(self.status.snapshot())
                except (JobRejected, FrameError) as exc:
                    code = exc.code if isinstance(exc, JobRejected) else ErrorCode.BAD_FRAME
                    message = exc.message if isinstance(exc, JobRejected) else str(exc)
                    if self.events is not None:
                        self.events.emit(RequestRefused(_remote_peer(stream), code, f"status request: {message}"))
                    _refusals.log(logging.INFO, f"status refused ({code})", "status request refused (%s): %s",
                                  code, message)
                    reply = {"t": "error", "code": str(code), "message": message[:300]}
                await framing.write_frame(stream, reply)
        except (FrameError, TransportError, trio.TooSlowError) as exc:
            log.debug("status stream: %s", exc)
        except Exception:  # a bug of ours must not take the node down
            log.exception("status stream failed")
        finally:
            try:
                with trio.move_on_after(2):
                    await stream.close()
            except Exception:
                pass
