"""Audit jobs ``/pointillist/audit-job/1.0.0`` (issue 11, item 4): a requester without the model
asks another node that serves the attested model's digest to recompute the challenged steps of an
image's generation. The answer is a verdict the auditor signs (``attestation/audit_verdict.py``).

One stream, one audit (msgpack frames, as the job protocol)::

    requester → auditor   {"t": "audit-job", "envelope": <signed audit job>, "image": <PNG bytes>,
                           "leaves": [{"i": k, "leaf": <bytes>, "proof": [<32 bytes>, ...]}, ...]}
    auditor → requester   {"t": "accepted", "jobId": str, "position": int}      # 0 = running now
                          {"t": "verdict", "jobId": str, "envelope": <signed verdict>}
                      or  {"t": "error", "code": str, "message": str}

The requester fetched the leaves from the node that signed the image (``/pointillist/audit/1.0.0``)
and drew the steps after the commitment; the auditor trusts neither: it verifies the image, checks
every leaf's inclusion proof against the signed root itself, and recomputes. The signed job
(payload type ``AUDIT_JOB_PAYLOAD_TYPE``) is a bearer token for GPU time like a generation job:
short-lived, addressed to one node, remembered against replays. It names the image by the SHA-256
of the PNG bytes sent and the steps to check, so the verdict can say exactly what was asked.

Pure code: values in, frames or exceptions out; the clock is a parameter.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .audit import MAX_LEAVES, MAX_PROOF, OpenedLeaf
from .dsse import Envelope, sign_envelope
from .errors import ErrorCode, FrameError, JobRejected, RemoteError
from .fields import Hex128, PeerIdStr, model_schema
from .identity import Identity
from .jobs import MAX_JOB_LIFETIME_S
from .schema import HEX256
from .signed import open_signed

AUDIT_JOB_PROTOCOL = "/pointillist/audit-job/1.0.0"
AUDIT_JOB_PAYLOAD_TYPE = "application/vnd.pointillist.audit-job.v1+json"
#: Steps one audit job may ask to check (every step of a 63-step job at most; leaves are bounded
#: by ``MAX_LEAVES`` anyway).
MAX_AUDIT_STEPS = MAX_LEAVES - 1
#: Largest audit-job frame a node reads: a PNG (a 2048x2048 RGB PNG is at most ~12 MiB) and up
#: to ``MAX_LEAVES`` leaves (256 KiB each at 1024x1024 float16, 1 MiB in float32).
MAX_AUDIT_JOB_FRAME = 48 * 1024 * 1024
_Hex256 = Annotated[str, StringConstraints(pattern=rf"^{HEX256}$")]


class AuditJobRequest(BaseModel):
    """The signed payload: who is asked (``node``), with which model (its digest), about which
    image (``imageSha256``: the PNG bytes sent beside the envelope) and which steps."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    v: int = Field(1, ge=1, le=1)
    job_id: Hex128 = Field(alias="jobId")
    nonce: Hex128
    issued_at: int = Field(alias="issuedAt", ge=0, le=2**63 - 1)
    expires_at: int = Field(alias="expiresAt", ge=0, le=2**63 - 1)
    node: PeerIdStr
    model: _Hex256
    image_sha256: _Hex256 = Field(alias="imageSha256")
    steps: list[int] = Field(min_length=1, max_length=MAX_AUDIT_STEPS)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(k < 1 for k in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be distinct step numbers >= 1 in increasing order")
        return steps

    def to_payload(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedAuditJob:
    request: AuditJobRequest
    requester: str
    envelope: Envelope

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.envelope.payload).hexdigest()


@dataclass(frozen=True)
class AuditJobMessage:
    """A parsed request frame: the envelope as it arrived (not yet verified), the PNG, the leaves."""

    envelope: Envelope
    png: bytes
    leaves: tuple[OpenedLeaf, ...]


def new_audit_job(*, node: str, model: str, png: bytes, steps: list[int], now: int,
                  lifetime_s: int = 900) -> AuditJobRequest:
    return AuditJobRequest(jobId=secrets.token_hex(16), nonce=secrets.token_hex(16), issuedAt=now,
                           expiresAt=now + lifetime_s, node=node, model=model,
                           imageSha256=hashlib.sha256(png).hexdigest(), steps=sorted(set(steps)))


def sign_audit_job(identity: Identity, request: AuditJobRequest) -> Envelope:
    return sign_envelope(identity, AUDIT_JOB_PAYLOAD_TYPE, request.to_payload())


def open_audit_job(envelope: Envelope) -> SignedAuditJob:
    """Verify the requester's signature, then parse strictly: ``VerificationError`` (signature,
    payload type) or ``RemoteError`` (not a valid audit job). Freshness is the caller's
    (``jobs.check_fresh``, with ``MAX_JOB_LIFETIME_S``)."""
    request = open_signed(envelope, AUDIT_JOB_PAYLOAD_TYPE, _schema, what="audit job", error=RemoteError)
    return SignedAuditJob(request, envelope.keyid, envelope)


_schema = model_schema(AuditJobRequest)
assert MAX_JOB_LIFETIME_S >= 900  # new_audit_job's default lifetime must be one nodes accept


# ---- frames -----------------------------------------------------------------------------------


def audit_job_message(envelope: Envelope, png: bytes, leaves: list[OpenedLeaf]) -> dict[str, Any]:
    return {"t": "audit-job", "envelope": _wire(envelope), "image": png,
            "leaves": [{"i": o.index, "leaf": o.leaf, "proof": list(o.proof)} for o in leaves]}


def parse_audit_job_message(frame: Any) -> AuditJobMessage:
    """``FrameError`` for a frame of the wrong shape; nothing here is verified yet."""
    if not isinstance(frame, dict) or frame.get("t") != "audit-job" or set(frame) != {"t", "envelope", "image", "leaves"}:
        raise FrameError("expected {t: 'audit-job', envelope, image, leaves}")
    envelope = _unwire(frame["envelope"])
    png, items = frame["image"], frame["leaves"]
    if not isinstance(png, bytes) or not png:
        raise FrameError("image must be the PNG's bytes")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LEAVES:
        raise FrameError(f"leaves must be a list of 1 to {MAX_LEAVES}")
    leaves = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"i", "leaf", "proof"} or type(item["i"]) is not int \
                or item["i"] < 0 or not isinstance(item["leaf"], bytes) or not isinstance(item["proof"], list) \
                or len(item["proof"]) > MAX_PROOF \
                or not all(isinstance(h, bytes) and len(h) == 32 for h in item["proof"]):
            raise FrameError("a leaf must be {i: int >= 0, leaf: bytes, proof: [32-byte hashes]}")
        leaves.append(OpenedLeaf(item["i"], item["leaf"], tuple(item["proof"])))
    if [o.index for o in leaves] != sorted({o.index for o in leaves}):
        raise FrameError("leaves must come once each, in increasing order")
    return AuditJobMessage(envelope, png, tuple(leaves))


def verdict_message(job_id: str, envelope: Envelope) -> dict[str, Any]:
    return {"t": "verdict", "jobId": job_id, "envelope": _wire(envelope)}


@dataclass(frozen=True)
class AuditJobReply:
    """One reply frame: ``accepted`` (position), ``verdict`` (envelope, unverified) or an error
    (raised as ``JobRejected``)."""

    kind: str
    job_id: str
    position: int = 0
    envelope: Envelope | None = None


def parse_audit_job_reply(frame: Any) -> AuditJobReply:
    if isinstance(frame, dict) and frame.get("t") == "error":
        code, message = frame.get("code"), frame.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise FrameError("malformed error reply")
        try:
            raise JobRejected(ErrorCode(code), message[:300])
        except ValueError:
            raise JobRejected(ErrorCode.INTERNAL, f"{code}: {message}"[:300]) from None
    if isinstance(frame, dict) and frame.get("t") == "accepted" and set(frame) == {"t", "jobId", "position"} \
            and isinstance(frame["jobId"], str) and type(frame["position"]) is int and frame["position"] >= 0:
        return AuditJobReply("accepted", frame["jobId"][:200], frame["position"])
    if isinstance(frame, dict) and frame.get("t") == "verdict" and set(frame) == {"t", "jobId", "envelope"} \
            and isinstance(frame["jobId"], str):
        return AuditJobReply("verdict", frame["jobId"][:200], envelope=_unwire(frame["envelope"]))
    raise FrameError("expected an accepted, verdict or error reply")


def _wire(envelope: Envelope) -> dict[str, Any]:
    return {"payloadType": envelope.payload_type, "payload": envelope.payload, "keyid": envelope.keyid,
            "sig": envelope.sig}


def _unwire(obj: Any) -> Envelope:
    if not isinstance(obj, dict) or set(obj) != {"payloadType", "payload", "keyid", "sig"}:
        raise FrameError("envelope must be {payloadType, payload, keyid, sig}")
    kind, payload, keyid, sig = obj["payloadType"], obj["payload"], obj["keyid"], obj["sig"]
    if not (isinstance(kind, str) and len(kind) <= 200 and isinstance(payload, bytes) and len(payload) <= 1024 * 1024
            and isinstance(keyid, str) and len(keyid) <= 200 and isinstance(sig, bytes) and len(sig) == 64):
        raise FrameError("envelope members have the wrong types or sizes")
    return Envelope(kind, payload, keyid, sig)
