"""How the requester talks to one node, as an interface: run a signed job, fetch a stored result.

The failover logic (``failover.py``) sees nodes only through ``NodeTransport``, so it can be tested
in process against scripted fake nodes; ``libp2p_transport.Libp2pTransport`` is the real one.
Contract of both methods: return the PNG exactly as the node sent it (checking it is the
caller's job, so nothing unverified is ever written), or raise

* ``JobRejected`` — the node answered with an error code;
* ``TransportError`` — unreachable, stream broken, silent or too slow;
* ``RemoteError`` — the node sent something that is not a valid message.

``on_event`` receives ``AcceptedMessage`` and ``ProgressMessage`` as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..protocol.dsse import Envelope
from ..protocol.jobs import JobRequest
from ..protocol.messages import AcceptedMessage, ProgressMessage

Event = AcceptedMessage | ProgressMessage
OnEvent = Callable[[Event], None]


@dataclass(frozen=True)
class NodeAddress:
    """A node as the requester dials it: its peer ID and one multiaddr ending in ``/p2p/<id>``."""

    peer_id: str
    addr: str


class NodeTransport(Protocol):
    async def run_job(self, node: NodeAddress, envelope: Envelope, request: JobRequest,
                      on_event: OnEvent | None, deadline_s: float) -> bytes: ...

    async def fetch(self, node: NodeAddress, envelope: Envelope, job_id: str, timeout_s: float) -> bytes: ...


def job_deadline_s(request: JobRequest) -> float:
    """Whole-job deadline, scaled by work: 30 s + 2 s per step per 512x512 of pixels (AI Horde's rule)."""
    return 30.0 + request.steps * 2.0 * max(1.0, request.width * request.height / (512 * 512))
