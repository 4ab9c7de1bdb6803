"""The job protocol, requester side: send a signed job to one node and follow it to the end.

Returns the PNG exactly as the node sent it; checking it is the caller's job
(``pointillist.attestation.verify_image``), so that nothing unverified is ever written out.
"""

from __future__ import annotations

from typing import Any, Callable

import trio
from libp2p.abc import IHost
from libp2p.peer.peerinfo import PeerInfo

from ..protocol import framing
from ..protocol.dsse import Envelope
from ..protocol.errors import FrameError, JobRejected, RemoteError, TransportError
from ..protocol.jobs import JobRequest
from ..protocol.messages import (
    JOB_PROTOCOL,
    AcceptedMessage,
    ErrorMessage,
    FetchMessage,
    JobMessage,
    ProgressMessage,
    ResultMessage,
    WireEnvelope,
    parse_reply,
    to_wire,
)
from ..network.host import connect

#: Longest silence tolerated between two messages from a node (queueing included).
IDLE_TIMEOUT_S = 120.0


def job_deadline_s(request: JobRequest) -> float:
    """Whole-job deadline, scaled by work: 30 s + 2 s per step per 512x512 of pixels (AI Horde's rule)."""
    return 30.0 + request.steps * 2.0 * max(1.0, request.width * request.height / (512 * 512))


Event = AcceptedMessage | ProgressMessage


async def run_job(
    host: IHost,
    peer: PeerInfo,
    envelope: Envelope,
    request: JobRequest,
    on_event: Callable[[Event], None] | None = None,
    deadline_s: float | None = None,
) -> bytes:
    """Send the job and wait for its result. Raises ``JobRejected`` if the node says no,
    ``TransportError`` if it cannot be reached or goes silent, ``RemoteError`` if it sends garbage."""
    message = JobMessage(t="job", envelope=WireEnvelope.from_envelope(envelope))
    return await _exchange(host, peer, message, request.job_id, on_event, deadline_s or job_deadline_s(request))


async def fetch_result(host: IHost, peer: PeerInfo, envelope: Envelope, job_id: str, timeout_s: float = 60.0) -> bytes:
    """Ask ``peer`` for the stored result of ``job_id`` with a signed fetch request."""
    message = FetchMessage(t="fetch", envelope=WireEnvelope.from_envelope(envelope))
    return await _exchange(host, peer, message, job_id, None, timeout_s)


async def _exchange(host: IHost, peer: PeerInfo, message: Any, job_id: str,
                    on_event: Callable[[Event], None] | None, deadline_s: float) -> bytes:
    """One request on a new job stream, then follow the replies to a result or an error."""
    await connect(host, peer)
    try:
        with trio.fail_after(deadline_s):
            stream = await _open_stream(host, peer)
            try:
                await framing.write_frame(stream, to_wire(message), framing.MAX_REQUEST_FRAME)
                return await _follow(stream, job_id, on_event)
            finally:
                with trio.move_on_after(2):
                    try:
                        await stream.close()
                    except Exception:
                        pass
    except trio.TooSlowError as exc:
        raise TransportError(f"node {peer.peer_id} did not finish within {deadline_s:.0f} s") from exc


async def _follow(stream: Any, job_id: str, on_event: Callable[[Event], None] | None) -> bytes:
    while True:
        try:
            with trio.fail_after(IDLE_TIMEOUT_S):
                frame = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
        except trio.TooSlowError as exc:
            raise TransportError(f"node sent nothing for {IDLE_TIMEOUT_S:.0f} s") from exc
        except FrameError as exc:
            raise RemoteError(f"node sent a bad frame: {exc}") from exc
        try:
            message = parse_reply(frame)
        except FrameError as exc:
            raise RemoteError(f"node sent a bad message: {exc}") from exc
        if isinstance(message, ErrorMessage):
            raise JobRejected(message.code, message.message)
        if isinstance(message, ResultMessage):
            if message.jobId != job_id:
                raise RemoteError(f"node answered for job {message.jobId}, not {job_id}")
            return message.png
        if on_event is not None:
            on_event(message)


async def _open_stream(host: IHost, peer: PeerInfo) -> Any:
    try:
        return await host.new_stream(peer.peer_id, [JOB_PROTOCOL])
    except Exception as exc:
        if isinstance(exc, OSError) or type(exc).__module__.startswith("libp2p"):
            raise TransportError(f"cannot open a job stream to {peer.peer_id}: {exc}") from exc
        raise
