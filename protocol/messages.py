"""Messages of the job protocol ``/pointillist/job/1.0.0``, and their strict schemas.

One stream per job. The requester sends one ``job`` message; the node answers with zero or more
``accepted``/``progress`` messages and ends with exactly one ``result`` or ``error``::

    requester → node   {"t": "job", "envelope": {"payloadType", "payload": bin, "keyid", "sig": bin}}
                  or   {"t": "fetch", "envelope": ...}   # a stored result, by job id
    node → requester   {"t": "accepted", "jobId": str, "position": int}   # 0 = running now
                       {"t": "progress", "step": int, "total": int}
                       {"t": "result", "jobId": str, "png": bin}          # attestation is inside
                       {"t": "error", "code": str, "message": str}

Every message from a peer is validated here before anything acts on it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from .dsse import Envelope
from .errors import ErrorCode, FrameError
from .fields import first_problem

JOB_PROTOCOL = "/pointillist/job/1.0.0"


_Short = Annotated[str, StringConstraints(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WireEnvelope(_Strict):
    payloadType: _Short
    payload: Annotated[bytes, Field(max_length=64 * 1024)]
    keyid: _Short
    sig: Annotated[bytes, Field(min_length=64, max_length=64)]

    def to_envelope(self) -> Envelope:
        return Envelope(self.payloadType, self.payload, self.keyid, self.sig)

    @classmethod
    def from_envelope(cls, env: Envelope) -> "WireEnvelope":
        return cls(payloadType=env.payload_type, payload=env.payload, keyid=env.keyid, sig=env.sig)


class JobMessage(_Strict):
    t: Literal["job"]
    envelope: WireEnvelope


class FetchMessage(_Strict):
    """Ask for a stored result: the envelope is a fetch request signed by the job's requester."""

    t: Literal["fetch"]
    envelope: WireEnvelope


class AcceptedMessage(_Strict):
    t: Literal["accepted"]
    jobId: _Short
    position: int = Field(ge=0)


class ProgressMessage(_Strict):
    t: Literal["progress"]
    step: int = Field(ge=0)
    total: int = Field(ge=1)


class ResultMessage(_Strict):
    t: Literal["result"]
    jobId: _Short
    png: bytes


class ErrorMessage(_Strict):
    t: Literal["error"]
    code: Annotated[ErrorCode, Field(strict=False)]  # the wire carries its string
    message: Annotated[str, StringConstraints(max_length=2000)]


NodeReply = Annotated[
    AcceptedMessage | ProgressMessage | ResultMessage | ErrorMessage, Field(discriminator="t")
]
_REPLY = TypeAdapter(NodeReply)
_REQUEST = TypeAdapter(Annotated[JobMessage | FetchMessage, Field(discriminator="t")])


def parse_request(obj: dict[str, Any]) -> JobMessage | FetchMessage:
    return _parse(_REQUEST, obj)


def parse_reply(obj: dict[str, Any]) -> AcceptedMessage | ProgressMessage | ResultMessage | ErrorMessage:
    return _parse(_REPLY, obj)


def _parse(adapter: TypeAdapter, obj: dict[str, Any]):
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise FrameError(f"invalid message at {first_problem(exc, 'message')}") from exc


def to_wire(message: _Strict) -> dict[str, Any]:
    return message.model_dump()
