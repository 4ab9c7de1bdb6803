"""The job protocol, requester side, over libp2p: one new stream per request on a shared host.

Implements ``transport.NodeTransport``. Connections are reused: several jobs to the same node
(``submit -n 8``) share one connection, each on its own stream.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.abc import IHost

from ..network.host import parse_peer_addr, stream_to
from ..protocol import framing
from ..protocol.dsse import Envelope
from ..protocol.errors import FrameError, JobRejected, RemoteError, TransportError
from ..protocol.jobs import JobRequest
from ..protocol.messages import (
    JOB_PROTOCOL,
    ErrorMessage,
    FetchMessage,
    JobMessage,
    ResultMessage,
    WireEnvelope,
    parse_reply,
    to_wire,
)
from .transport import NodeAddress, OnEvent

#: Longest silence tolerated between two messages from a node (queueing included).
IDLE_TIMEOUT_S = 120.0


class Libp2pTransport:
    def __init__(self, host: IHost) -> None:
        self.host = host

    def connection_kind(self, peer_id: str) -> str | None:
        """How this requester is connected to ``peer_id`` now: "direct", "relayed" or ``None``."""
        from ..network.relay import connection_kind

        return connection_kind(self.host, peer_id)

    async def run_job(self, node: NodeAddress, envelope: Envelope, request: JobRequest,
                      on_event: OnEvent | None, deadline_s: float) -> bytes:
        message = JobMessage(t="job", envelope=WireEnvelope.from_envelope(envelope))
        return await self._exchange(node, message, request.job_id, on_event, deadline_s)

    async def fetch(self, node: NodeAddress, envelope: Envelope, job_id: str, timeout_s: float) -> bytes:
        message = FetchMessage(t="fetch", envelope=WireEnvelope.from_envelope(envelope))
        return await self._exchange(node, message, job_id, None, timeout_s)

    async def _exchange(self, node: NodeAddress, message: Any, job_id: str,
                        on_event: OnEvent | None, deadline_s: float) -> bytes:
        """One request on a new job stream, then follow the replies to a result or an error."""
        peer = parse_peer_addr(node.addr)
        try:
            with trio.fail_after(deadline_s):
                async with stream_to(self.host, peer, JOB_PROTOCOL) as stream:
                    await framing.write_frame(stream, to_wire(message), framing.MAX_REQUEST_FRAME)
                    return await _follow(stream, job_id, on_event)
        except trio.TooSlowError as exc:
            raise TransportError(f"node {node.peer_id} did not finish within {deadline_s:.0f} s") from exc


async def _follow(stream: Any, job_id: str, on_event: OnEvent | None) -> bytes:
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

