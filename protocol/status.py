"""The operator's status protocol ``/pointillist/status/1.0.0``: ``pointillist node status`` asks
a running node for its figures (the same ``NodeStatus.snapshot()`` the live view shows).

Only the operator may ask: the request is signed with the node's own key (the identity file the
node runs with), so no one else can read a node's queue, requesters and errors. The libp2p
connection it travels on comes from a throwaway key; the signature, not the connection, is what
authenticates. One stream, one request, one reply::

    client → node   {"t": "status?", "envelope": {payloadType, payload, keyid, sig}}
                     payload (JSON): {"v": 1, "node": <peer id>, "issuedAt": <unix s>}
    node → client   {"t": "status", "status": {...}}          # docs/protocol.md lists the members
                or  {"t": "error", "code": str, "message": str}

A request is good for ``MAX_AGE_S`` either side of the node's clock: it reveals only what the
operator may see anyway, and travels inside a Noise-encrypted connection, so no nonce is kept.

Pure code: values in, frames or exceptions out.
"""

from __future__ import annotations

import json
from typing import Any

from .dsse import Envelope, sign_envelope
from .errors import ErrorCode, FrameError, JobRejected
from .identity import Identity
from .messages import WireEnvelope
from .schema import PEER_ID, integer, members, string
from .signed import open_signed

STATUS_PROTOCOL = "/pointillist/status/1.0.0"
STATUS_PAYLOAD_TYPE = "application/vnd.pointillist.status-request.v1+json"
MAX_AGE_S = 120
MAX_STATUS_FRAME = 256 * 1024

_payload_members = members({
    "v": integer(1, 1),
    "node": string(pattern=PEER_ID),
    "issuedAt": integer(0, 2**53),
})


def _payload(obj: Any) -> dict[str, Any]:
    return _payload_members(obj, "")


def status_request(identity: Identity, node_peer_id: str, now: float) -> dict[str, Any]:
    payload = json.dumps({"v": 1, "node": node_peer_id, "issuedAt": int(now)}, separators=(",", ":"))
    envelope = sign_envelope(identity, STATUS_PAYLOAD_TYPE, payload.encode())
    return {"t": "status?", "envelope": WireEnvelope.from_envelope(envelope).model_dump()}


def check_status_request(frame: Any, node_peer_id: str, now: float) -> None:
    """Accept only a fresh request signed by this node's own key; ``JobRejected`` otherwise."""
    if not isinstance(frame, dict) or frame.get("t") != "status?" or set(frame) != {"t", "envelope"}:
        raise FrameError("expected {t: 'status?', envelope}")
    try:
        envelope: Envelope = WireEnvelope.model_validate(frame["envelope"]).to_envelope()
    except Exception as exc:
        raise FrameError("malformed envelope") from exc
    if envelope.keyid != node_peer_id:
        raise JobRejected(ErrorCode.FORBIDDEN, "status is for this node's operator: sign with the node's own key")
    request = open_signed(envelope, STATUS_PAYLOAD_TYPE, _payload, what="status request",
                          error=FrameError, signature_error=_BadSignature)
    if request["node"] != node_peer_id:
        raise JobRejected(ErrorCode.WRONG_NODE, f"status request is for {request['node']}")
    if abs(now - request["issuedAt"]) > MAX_AGE_S:
        raise JobRejected(ErrorCode.EXPIRED, "status request is stale or from the future (check the clock)")


class _BadSignature(JobRejected):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_SIGNATURE, message)


def status_reply(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"t": "status", "status": snapshot}


def parse_status_reply(frame: Any) -> dict[str, Any]:
    """The snapshot, or ``JobRejected`` with the node's error code; ``FrameError`` if neither."""
    if isinstance(frame, dict) and frame.get("t") == "status" and isinstance(frame.get("status"), dict):
        return frame["status"]
    if isinstance(frame, dict) and frame.get("t") == "error":
        try:
            code = ErrorCode(frame.get("code"))
        except ValueError as exc:
            raise FrameError(f"node answered with an unknown error code {frame.get('code')!r:.40}") from exc
        raise JobRejected(code, str(frame.get("message", ""))[:300])
    raise FrameError("node sent neither a status nor an error")
