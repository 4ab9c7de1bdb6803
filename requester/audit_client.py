"""The auditor's side of ``/pointillist/audit/1.0.0`` (protocol/audit.py): ask the node that
signed an image for chosen leaves of its step commitments, and accept only leaves that its signed
root proves (``attestation.trajectory.verify_inclusion``).

What comes back is sorted into what an audit needs to tell apart: leaves proven against the root
(``opened``), and the node's failure to answer (``Unanswered``: a refusal, a bad proof, a leaf
that is not the one asked for, a tree of another size than the signed one). Within the challenge
window an unanswered challenge is a failed audit; the caller decides, since only it knows when
the image was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from ..attestation.trajectory import TrajectoryCommitment, leaf_hash, verify_inclusion
from ..network.host import parse_peer_addr, stream_to
from ..protocol import framing
from ..protocol.audit import AUDIT_PROTOCOL, OpenedLeaf, audit_request, parse_audit_reply, parse_audit_request
from ..protocol.errors import FrameError, JobRejected, TransportError

TIMEOUT_S = 120.0


class Unanswered(Exception):
    """The node did not open the asked leaves against its signed root; ``str`` is one line."""


@dataclass(frozen=True)
class OpenedLeaves:
    leaves: dict[int, OpenedLeaf]  # index -> leaf, each proven against the signed root


def check_opened(reply_frame: Any, request: dict[str, Any], commitment: TrajectoryCommitment) -> OpenedLeaves:
    """Pure: the leaves of ``reply_frame`` proven against ``commitment``, or ``Unanswered``."""
    parsed_request = parse_audit_request(request)
    try:
        reply = parse_audit_reply(reply_frame, parsed_request)
    except JobRejected as exc:
        raise Unanswered(f"the node refused the challenge ({exc.code}): {exc.message}") from None
    except FrameError as exc:
        raise Unanswered(f"the node answered the challenge with a malformed reply: {exc}") from None
    if reply.tree_size != commitment.leaves:
        raise Unanswered(f"the node opened a tree of {reply.tree_size} leaves; it signed {commitment.leaves}")
    root = bytes.fromhex(commitment.root)
    for opened in reply.leaves:
        if not verify_inclusion(opened.index, reply.tree_size, leaf_hash(opened.leaf), opened.proof, root):
            raise Unanswered(f"leaf {opened.index} does not belong to the signed root (its proof fails)")
    return OpenedLeaves({o.index: o for o in reply.leaves})


async def open_leaves(host: Any, node_addr: str, job_id: str, commitment: TrajectoryCommitment,
                      indices: list[int], timeout_s: float = TIMEOUT_S) -> OpenedLeaves:
    """Ask the node at ``node_addr`` for leaves ``indices`` of job ``job_id``. ``Unanswered`` when
    it refuses or proves nothing; ``TransportError`` when it cannot be reached at all."""
    request = audit_request(job_id, commitment.root, indices)
    peer = parse_peer_addr(node_addr)
    try:
        with trio.fail_after(timeout_s):
            async with stream_to(host, peer, AUDIT_PROTOCOL) as stream:
                await framing.write_frame(stream, request, framing.MAX_REQUEST_FRAME)
                frame = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
    except trio.TooSlowError:
        raise Unanswered(f"the node did not answer the challenge within {timeout_s:.0f} s") from None
    except FrameError as exc:
        raise Unanswered(f"the node answered the challenge with a malformed frame: {exc}") from None
    except TransportError:
        raise
    return check_opened(frame, request, commitment)
