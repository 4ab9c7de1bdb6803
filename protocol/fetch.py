"""Fetching a finished result by job id: a short-lived request signed by the job's requester.

Only the requester who signed the job may fetch its result; the node checks that the fetch is
signed by the same key it recorded with the result. Fetching is idempotent, so no replay cache.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .dsse import Envelope, sign_envelope
from .errors import RemoteError
from .fields import Hex128, PeerIdStr, model_schema
from .identity import Identity
from .signed import open_signed

FETCH_PAYLOAD_TYPE = "application/vnd.pointillist.fetch.v1+json"
FETCH_LIFETIME_S = 120


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    v: int = Field(1, ge=1, le=1)
    job_id: Hex128 = Field(alias="jobId")
    node: PeerIdStr
    issued_at: int = Field(alias="issuedAt", ge=0)
    expires_at: int = Field(alias="expiresAt", ge=0)


def sign_fetch(identity: Identity, job_id: str, node: str, now: int) -> Envelope:
    request = FetchRequest(jobId=job_id, node=node, issuedAt=now, expiresAt=now + FETCH_LIFETIME_S)
    import json

    payload = json.dumps(request.model_dump(by_alias=True), sort_keys=True, separators=(",", ":")).encode()
    return sign_envelope(identity, FETCH_PAYLOAD_TYPE, payload)


def open_fetch(envelope: Envelope) -> tuple[FetchRequest, str]:
    """Verify and parse; returns the request and the requester's peer ID.

    Raises ``VerificationError`` (bad signature or type) or ``RemoteError`` (not a valid fetch).
    """
    request = open_signed(envelope, FETCH_PAYLOAD_TYPE, _fetch_schema, what="fetch request", error=RemoteError)
    return request, envelope.keyid


_fetch_schema = model_schema(FetchRequest)
