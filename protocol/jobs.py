"""Jobs as requesters sign them.

A job is a DSSE envelope whose payload is the canonical JSON of a ``JobRequest`` and whose
payload type is ``JOB_PAYLOAD_TYPE``. JSON rather than msgpack inside the envelope because the
signed job is also embedded in the image: anyone verifying an image offline can check what was
asked with a JSON parser and an Ed25519 library, nothing of ours. The envelope travels in a
msgpack wire message exactly as signed (the node never re-serialises what it verifies).

Pure code: the clock is a parameter (``now``), never read here.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .dsse import Envelope, sign_envelope
from .errors import RemoteError, UsageError, VerificationError
from .fields import Hex128, PeerIdStr, PromptStr, SeedStr, first_problem, model_schema
from .identity import Identity
from .settings import GenerationSettings
from .signed import open_signed

JOB_PAYLOAD_TYPE = "application/vnd.pointillist.job.v1+json"

#: Largest allowed distance between issuedAt and expiresAt: a signed job is a bearer token for
#: GPU time, so it must not live long. Nodes remember job ids until expiry to refuse replays.
MAX_JOB_LIFETIME_S = 3600
#: Clock skew tolerated between requester and node.
MAX_CLOCK_SKEW_S = 120



class JobRequest(BaseModel):
    """What a requester asks a node to generate. Field names are the JSON names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    v: int = Field(1, ge=1, le=1)
    job_id: Hex128 = Field(alias="jobId")
    nonce: Hex128
    issued_at: int = Field(alias="issuedAt", ge=0)
    expires_at: int = Field(alias="expiresAt", ge=0)
    node: PeerIdStr
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    prompt: PromptStr
    negative_prompt: PromptStr = Field("", alias="negativePrompt")
    seed: SeedStr  # a string: JSON numbers lose precision past 2**53 in many parsers
    steps: int = Field(ge=1, le=1000)
    guidance: float = Field(ge=0.0, le=100.0)
    width: int = Field(ge=8, le=8192)
    height: int = Field(ge=8, le=8192)

    @property
    def settings(self) -> GenerationSettings:
        """The settings that decide the image, as the pipeline runs them and the attestation
        states them."""
        return GenerationSettings(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=int(self.seed),
                                  steps=self.steps, guidance=self.guidance, width=self.width, height=self.height)

    def to_payload(self) -> bytes:
        return json.dumps(
            self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")


_job_schema = model_schema(JobRequest, "job")


class SignedJob(BaseModel):
    """A verified job: the request, who signed it, and the envelope as it arrived."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    request: JobRequest
    requester: str
    envelope: Envelope

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.envelope.payload).hexdigest()


def new_job_request(
    *,
    node: str,
    model: str,
    prompt: str,
    now: int,
    negative_prompt: str = "",
    seed: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
    lifetime_s: int = 600,
) -> JobRequest:
    try:
        return _new_job_request(node, model, prompt, now, negative_prompt, seed, steps, guidance, width, height, lifetime_s)
    except ValidationError as exc:
        raise UsageError(f"invalid {first_problem(exc, 'job')}") from exc


def _new_job_request(node, model, prompt, now, negative_prompt, seed, steps, guidance, width, height, lifetime_s):
    return JobRequest(
        jobId=secrets.token_hex(16),
        nonce=secrets.token_hex(16),
        issuedAt=now,
        expiresAt=now + lifetime_s,
        node=node,
        model=model,
        prompt=prompt,
        negativePrompt=negative_prompt,
        seed=str(seed),
        steps=steps,
        guidance=float(guidance),
        width=width,
        height=height,
    )


def sign_job(identity: Identity, request: JobRequest) -> Envelope:
    return sign_envelope(identity, JOB_PAYLOAD_TYPE, request.to_payload())


def open_job(envelope: Envelope) -> SignedJob:
    """Verify the requester's signature, then parse the payload strictly.

    Raises ``VerificationError`` (bad signature or type) or ``RemoteError`` (payload not a valid
    job). Freshness is separate (``check_fresh``) because it needs the clock.
    """
    request = open_signed(envelope, JOB_PAYLOAD_TYPE, _job_schema, what="job", error=RemoteError)
    return SignedJob(request=request, requester=envelope.keyid, envelope=envelope)


def check_fresh(request: JobRequest, now: float, max_lifetime_s: int = MAX_JOB_LIFETIME_S) -> None:
    """Raise ``VerificationError`` unless ``now`` lies within the request's validity window
    (any signed request with ``issued_at``/``expires_at``: jobs, fetches)."""
    if request.expires_at <= request.issued_at:
        raise VerificationError("job expires before it is issued")
    if request.expires_at - request.issued_at > max_lifetime_s:
        raise VerificationError(f"lifetime exceeds {max_lifetime_s} s")
    if request.issued_at > now + MAX_CLOCK_SKEW_S:
        raise VerificationError("job is issued in the future (check the requester's clock)")
    if now >= request.expires_at:
        raise VerificationError("job has expired")
