"""Fetching a finished result by job id: a short-lived request signed by the job's requester.

Only the requester who signed the job may fetch its result; the node checks that the fetch is
signed by the same key it recorded with the result. Fetching is idempotent, so no replay cache.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .dsse import Envelope, sign_envelope
from .errors import RemoteError, VerificationError
from .fields import Hex128, PeerIdStr, first_problem
from .identity import Identity
from .strict_json import StrictJSONError, loads_strict

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
    """Verify and parse; returns the request and the requester's peer ID."""
    payload = envelope.verify(FETCH_PAYLOAD_TYPE)
    try:
        request = FetchRequest.model_validate(loads_strict(payload))
    except StrictJSONError as exc:
        raise RemoteError(f"fetch payload: {exc}") from None
    except ValidationError as exc:
        raise RemoteError(f"invalid fetch request field {first_problem(exc, 'fetch')}") from None
    return request, envelope.keyid
