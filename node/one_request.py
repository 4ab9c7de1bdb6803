"""The node's side of a one-request protocol (status, audit): read one frame, answer it, close.

A peer can never crash the node here: a refusal (``JobRejected``, or ``FrameError`` for a frame
of the wrong shape) is answered with ``{"t": "error", code, message}``, counted as an event and
logged at a bounded rate; a broken or slow stream just ends; a bug of ours is logged and ends
the stream, never the node.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

from ..protocol import framing
from ..protocol.errors import ErrorCode, FrameError, JobRejected, TransportError
from .events import EventBus, RequestRefused
from .quiet_log import RateLimitedLog
from .service import _remote_peer

log = logging.getLogger("pointillist.node")
_refusals = RateLimitedLog(log)

READ_TIMEOUT_S = 10.0


async def answer_one_request(stream: Any, what: str, max_request: int,
                             answer: Callable[[Any], Awaitable[dict[str, Any]]],
                             events: EventBus | None = None, max_reply: int = framing.MAX_REPLY_FRAME) -> None:
    """Read one request frame (at most ``max_request`` bytes) from ``stream``, write
    ``await answer(frame)`` or the refusal, close. ``what`` names the protocol in logs."""
    try:
        with trio.fail_after(READ_TIMEOUT_S):
            frame = await framing.read_frame(stream, max_request)
        try:
            reply = await answer(frame)
        except (JobRejected, FrameError) as exc:
            code = exc.code if isinstance(exc, JobRejected) else ErrorCode.BAD_FRAME
            message = exc.message if isinstance(exc, JobRejected) else str(exc)
            if events is not None:
                events.emit(RequestRefused(_remote_peer(stream), code, f"{what} request: {message}"))
            _refusals.log(logging.INFO, f"{what} refused ({code})", f"{what} request refused (%s): %s",
                          code, message)
            reply = {"t": "error", "code": str(code), "message": message[:300]}
        with trio.fail_after(READ_TIMEOUT_S * 6):  # a large reply to a slow reader, still bounded
            await framing.write_frame(stream, reply, max_reply)
    except (FrameError, TransportError, trio.TooSlowError) as exc:
        log.debug("%s stream: %s", what, exc)
    except Exception:  # a bug of ours must not take the node down
        log.exception("%s stream failed", what)
    finally:
        try:
            with trio.move_on_after(2):
                await stream.close()
        except Exception:
            pass
