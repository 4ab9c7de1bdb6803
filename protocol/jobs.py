"""Jobs as requesters sign them.

A job is a DSSE envelope whose payload is the canonical JSON of a ``JobRequest`` and whose
payload type is ``JOB_PAYLOAD_TYPES[v]``: version 1 (``JOB_PAYLOAD_TYPE``) runs the model's own
scheduler, version 2 (``JOB_PAYLOAD_TYPE_V2``) adds the member ``sampler``. Both are read; a
requester writes version 1 unless it names a sampler, so jobs without one stay byte for byte
what they were. JSON rather than msgpack inside the envelope because the
signed job is also embedded in the image: anyone verifying an image offline can check what was
asked with a JSON parser and an Ed25519 library, nothing of ours. The envelope travels in a
msgpack wire message exactly as signed (the node never re-serialises what it verifies).

Pure code: the clock is a parameter (``now``), never read here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from . import schema
from .dsse import Envelope, sign_envelope
from .errors import RemoteError, UsageError, VerificationError
from .identity import Identity
from .settings import SETTINGS_MEMBERS, SETTINGS_MEMBERS_V2, GenerationSettings
from .signed import SchemaError, open_signed

JOB_PAYLOAD_TYPE = "application/vnd.pointillist.job.v1+json"
JOB_PAYLOAD_TYPE_V2 = "application/vnd.pointillist.job.v2+json"
#: The payload type of each job format version; the payload's ``v`` must agree with it.
JOB_PAYLOAD_TYPES: dict[int, str] = {1: JOB_PAYLOAD_TYPE, 2: JOB_PAYLOAD_TYPE_V2}

#: Largest allowed distance between issuedAt and expiresAt: a signed job is a bearer token for
#: GPU time, so it must not live long. Nodes remember job ids until expiry to refuse replays.
MAX_JOB_LIFETIME_S = 3600
#: Clock skew tolerated between requester and node.
MAX_CLOCK_SKEW_S = 120

#: Largest Unix time a job may name: every integer member is bounded, so verifiers whose JSON
#: parsers stop at 64-bit integers agree with ours.
MAX_TIME = 2**63 - 1

_ENVELOPE_MEMBERS: dict[str, schema.Check] = {
    "jobId": schema.string(pattern=schema.HEX128),
    "nonce": schema.string(pattern=schema.HEX128),
    "issuedAt": schema.integer(0, MAX_TIME),
    "expiresAt": schema.integer(0, MAX_TIME),
    "node": schema.string(pattern=schema.PEER_ID),
    "model": schema.string(1, 200),
}
#: The job payload's members and their rules by version (docs/attestation.md, section 5): all
#: required.
_JOBS: dict[int, schema.Check] = {
    1: schema.members({"v": schema.integer(1, 1), **_ENVELOPE_MEMBERS, **SETTINGS_MEMBERS}),
    2: schema.members({"v": schema.integer(2, 2), **_ENVELOPE_MEMBERS, **SETTINGS_MEMBERS_V2}),
}


@dataclass(frozen=True)
class JobRequest:
    """What a requester asks a node to generate: the job payload with Python names.

    ``seed`` is the decimal string of the JSON (``settings.seed`` is the int). Build one with
    ``new_job_request`` or read one with ``open_job``; both check it against the schema.
    ``sampler`` is the A1111 sampler name of a version 2 job, ``None`` in version 1.
    """

    job_id: str
    nonce: str
    issued_at: int
    expires_at: int
    node: str
    model: str
    prompt: str
    negative_prompt: str
    seed: str
    steps: int
    guidance: float
    width: int
    height: int
    v: int = 1
    sampler: str | None = None

    @property
    def settings(self) -> GenerationSettings:
        """The settings that decide the image, as the pipeline runs them and the attestation
        states them."""
        return GenerationSettings(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=int(self.seed),
                                  steps=self.steps, guidance=self.guidance, width=self.width, height=self.height,
                                  sampler=self.sampler)

    @property
    def payload_type(self) -> str:
        """The DSSE payload type of this job's version."""
        try:
            return JOB_PAYLOAD_TYPES[self.v]
        except (KeyError, TypeError):
            raise UsageError(f"no job format version {self.v!r}") from None

    def to_json_dict(self) -> dict[str, Any]:
        out = {
            "v": self.v, "jobId": self.job_id, "nonce": self.nonce, "issuedAt": self.issued_at,
            "expiresAt": self.expires_at, "node": self.node, "model": self.model, "prompt": self.prompt,
            "negativePrompt": self.negative_prompt, "seed": self.seed, "steps": self.steps,
            "guidance": float(self.guidance), "width": self.width, "height": self.height,
        }
        if self.v != 1 or self.sampler is not None:  # version 1 has no such member
            out["sampler"] = self.sampler
        return out

    def to_payload(self) -> bytes:
        """The canonical JSON a requester signs: sorted keys, no spaces, UTF-8."""
        return json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json_dict(cls, obj: Any, version: int = 1) -> JobRequest:
        """The job of format ``version`` in a parsed payload; ``SchemaError`` names the first
        member that is wrong (``v`` when the payload's version is not ``version``)."""
        m = _JOBS[version](obj, "")
        return cls(job_id=m["jobId"], nonce=m["nonce"], issued_at=m["issuedAt"], expires_at=m["expiresAt"],
                   node=m["node"], model=m["model"], prompt=m["prompt"], negative_prompt=m["negativePrompt"],
                   seed=m["seed"], steps=m["steps"], guidance=m["guidance"], width=m["width"], height=m["height"],
                   v=m["v"], sampler=m.get("sampler"))


@dataclass(frozen=True)
class SignedJob:
    """A verified job: the request, who signed it, and the envelope as it arrived."""

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
    sampler: str | None = None,
) -> JobRequest:
    """A fresh job (random id and nonce) valid from ``now`` for ``lifetime_s``; ``UsageError``
    naming the first value the schema refuses. With a ``sampler`` the job is format version 2,
    without one version 1 (the model's own scheduler)."""
    import secrets  # only requesters make jobs; verifying never needs it

    request = JobRequest(
        job_id=secrets.token_hex(16), nonce=secrets.token_hex(16), issued_at=now, expires_at=now + lifetime_s,
        node=node, model=model, prompt=prompt, negative_prompt=negative_prompt, seed=str(seed), steps=steps,
        guidance=float(guidance), width=width, height=height,
        v=1 if sampler is None else 2, sampler=sampler,
    )
    return _checked(request)


def sign_job(identity: Identity, request: JobRequest) -> Envelope:
    """The requester's envelope of ``request``; ``UsageError`` if ``open_job`` would refuse it."""
    request = _checked(request)
    return sign_envelope(identity, request.payload_type, request.to_payload())


def open_job(envelope: Envelope) -> SignedJob:
    """Verify the requester's signature, then parse the payload strictly.

    Raises ``VerificationError`` (bad signature or type) or ``RemoteError`` (payload not a valid
    job). Freshness is separate (``check_fresh``) because it needs the clock.
    """
    version = 2 if getattr(envelope, "payload_type", None) == JOB_PAYLOAD_TYPE_V2 else 1
    # An unknown payload type is refused by open_signed as a version 1 job's would be.
    request = open_signed(envelope, JOB_PAYLOAD_TYPES[version], lambda obj: JobRequest.from_json_dict(obj, version),
                          what="job", error=RemoteError)
    return SignedJob(request=request, requester=envelope.keyid, envelope=envelope)


def _checked(request: JobRequest) -> JobRequest:
    if request.v not in JOB_PAYLOAD_TYPES:
        raise UsageError(f"invalid job field v: no job format version {request.v!r}")
    try:
        _JOBS[request.v](request.to_json_dict(), "")
    except SchemaError as exc:
        raise UsageError(f"invalid job field {exc}") from None
    return request


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
