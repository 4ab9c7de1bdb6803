"""The attestation's payload: an in-toto Statement v1 whose predicate records one generation.

The statement is signed inside a DSSE envelope with payload type ``ATTESTATION_PAYLOAD_TYPE``
(see ``docs/attestation.md``). DSSE's pre-authentication encoding puts that type in front of
every signed byte string, which is what keeps an attestation signature from ever being valid as a
job, a Noise handshake or a pubsub message signed by the same libp2p key; no extra prefix is
added, so stock DSSE / in-toto verifiers can check our attestations.

Pure code: ``build_statement`` turns values into canonical JSON bytes, ``parse_statement`` turns
untrusted bytes into values or raises ``VerificationError`` with a one-line reason.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pointillist.protocol.errors import UsageError, VerificationError
from pointillist.protocol.fields import Hex128, PeerIdStr, PromptStr, SeedStr, model_schema
from pointillist.protocol.settings import GenerationSettings
from pointillist.protocol.signed import parse_signed_json

from .pixels import PixelSubject

ATTESTATION_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://pointillist.dev/attestation/generation/v1"
#: The digest algorithm name of a model, defined in docs/model-digest.md.
MODEL_DIGEST_ALGORITHM = "pointillist-model-v1"
#: The library versions a predicate records, no more and no fewer.
LIBRARY_NAMES = ("torch", "diffusers", "transformers", "pointillist")

#: Statements larger than this are refused before parsing (a real one is a few kB).
MAX_STATEMENT_BYTES = 256 * 1024

_SUBJECT_NAME = re.compile(r"^rgb8:([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
_CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Hex256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ShortName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
CreatedAtStr = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")]


@dataclass(frozen=True)
class GenerationRecord:
    """What a node states about one generation: the predicate, with Python names and types.

    ``settings`` are the seven settings of the job it ran (``prompt`` ... ``height`` in the
    predicate; see ``GenerationSettings``). ``model_digest`` is the 64-hex
    ``pointillist-model-v1`` digest. ``created_at`` is RFC 3339 UTC to the second
    (``2026-11-22T10:00:00Z``; see ``rfc3339_utc``). ``libraries`` maps each of
    ``LIBRARY_NAMES`` to a version string; treat it as read-only.
    """

    model_name: str
    model_digest: str
    pipeline: str
    scheduler: str
    settings: GenerationSettings
    dtype: str
    device: str
    torch_threads: int
    libraries: dict[str, str] = field(hash=False)
    job_id: str
    requester: str
    request_sha256: str
    node: str
    created_at: str


@dataclass(frozen=True)
class Statement:
    """A parsed statement: the one subject (the image's pixels) and the generation record."""

    subject: PixelSubject
    record: GenerationRecord

    def to_json_dict(self) -> dict[str, Any]:
        return _statement_dict(self.record, self.subject)


def rfc3339_utc(unix_time: float) -> str:
    """``createdAt`` text for a Unix time, truncated to the second: ``2026-11-22T10:00:00Z``."""
    return time.strftime(_CREATED_AT_FORMAT, time.gmtime(int(unix_time)))


def build_statement(record: GenerationRecord, subject: PixelSubject) -> bytes:
    """The canonical JSON bytes of the statement (sorted keys, no spaces, UTF-8).

    Raises ``UsageError`` if ``parse_statement`` would refuse the result (a field out of range,
    subject size different from the record's), so nothing unverifiable is ever signed.
    """
    settings = record.settings
    if not isinstance(settings, GenerationSettings):
        raise UsageError(f"record settings must be GenerationSettings, not {type(settings).__name__}")
    if not _is_int(settings.seed):
        raise UsageError(f"record seed must be an int, not {type(settings.seed).__name__}")
    if not (_is_int(settings.guidance) or isinstance(settings.guidance, float)):
        raise UsageError(f"record guidance must be a float, not {type(settings.guidance).__name__}")
    obj = _statement_dict(record, subject)
    try:
        payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        data = payload.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise UsageError(f"cannot encode the attestation statement: {exc}") from exc
    try:
        parse_statement(data)
    except VerificationError as exc:
        raise UsageError(f"refusing to build an invalid statement: {exc}") from exc
    return data


def parse_statement(payload: bytes) -> Statement:
    """Parse statement JSON strictly; raise ``VerificationError`` with a one-line reason.

    Refused: anything ``loads_strict`` refuses (not UTF-8, duplicate keys, NaN, lone surrogate
    escapes, too deep), any unknown or missing field, a wrong JSON type (booleans are not numbers; ``guidance``
    may be written 7 or 7.0 but integer fields refuse 7.0), a seed that is not a decimal string
    below 2**64, more or fewer than one subject, a subject size different from the predicate's.
    It checks no signature: nothing it returns is to be trusted before ``Envelope.verify`` passed.
    """
    return parse_signed_json(payload, _statement_schema, what="statement", error=VerificationError,
                             max_bytes=MAX_STATEMENT_BYTES)


def _statement_schema(obj: Any) -> Statement:
    # The types first, for a clearer message than the schema's for someone else's statement.
    if not isinstance(obj, dict):
        raise VerificationError("statement is not a JSON object")
    if obj.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"statement _type is {_short(obj.get('_type'))}, expected {STATEMENT_TYPE!r}")
    if obj.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(
            f"predicateType is {_short(obj.get('predicateType'))}, expected {PREDICATE_TYPE!r}"
        )
    return _to_statement(_statement_model(obj))


# --- JSON shape ----------------------------------------------------------------------------------


def _statement_dict(record: GenerationRecord, subject: PixelSubject) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject.to_json_dict()],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": {"name": record.model_name, "digest": {MODEL_DIGEST_ALGORITHM: record.model_digest}},
            "pipeline": record.pipeline,
            "scheduler": record.scheduler,
            **record.settings.to_json_dict(),
            "dtype": record.dtype,
            "device": record.device,
            "torchThreads": record.torch_threads,
            "libraries": dict(record.libraries),
            "job": {"id": record.job_id, "requester": record.requester, "requestSha256": record.request_sha256},
            "node": record.node,
            "createdAt": record.created_at,
        },
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ModelDigest(_Strict):
    pointillist_model_v1: Hex256 = Field(alias=MODEL_DIGEST_ALGORITHM)


class _Model(_Strict):
    name: Name
    digest: _ModelDigest


class _Libraries(_Strict):
    torch: ShortName
    diffusers: ShortName
    transformers: ShortName
    pointillist: ShortName


class _Job(_Strict):
    id: Hex128
    requester: PeerIdStr
    request_sha256: Hex256 = Field(alias="requestSha256")


class _Predicate(_Strict):
    model: _Model
    pipeline: Name
    scheduler: Name
    prompt: PromptStr
    negative_prompt: PromptStr = Field(alias="negativePrompt")
    seed: SeedStr
    steps: int = Field(ge=1, le=1000)
    guidance: float = Field(ge=0.0, le=100.0)
    width: int = Field(ge=8, le=8192)
    height: int = Field(ge=8, le=8192)
    dtype: ShortName
    device: ShortName
    torch_threads: int = Field(alias="torchThreads", ge=1, le=4096)
    libraries: _Libraries
    job: _Job
    node: PeerIdStr
    created_at: CreatedAtStr = Field(alias="createdAt")

    @field_validator("created_at")
    @classmethod
    def _real_date(cls, value: str) -> str:
        # Leap seconds (second 60) are refused: nodes write POSIX time, which has none, and
        # 23:59:60 would be a second spelling of the next day's 00:00:00.
        if value[17:19] in ("60", "61"):
            raise ValueError("second 60 is a leap second; createdAt is POSIX time and has none")
        try:
            datetime.strptime(value, _CREATED_AT_FORMAT)
        except ValueError as exc:
            raise ValueError(f"not a valid date and time: {exc}") from None
        return value


class _SubjectDigest(_Strict):
    sha256: Hex256


class _Subject(_Strict):
    name: Annotated[str, StringConstraints(pattern=_SUBJECT_NAME.pattern)]
    digest: _SubjectDigest


class _StatementModel(_Strict):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[_Subject] = Field(min_length=1, max_length=1)
    predicate_type: Literal["https://pointillist.dev/attestation/generation/v1"] = Field(alias="predicateType")
    predicate: _Predicate


_statement_model = model_schema(_StatementModel, "statement")


def _to_statement(model: _StatementModel) -> Statement:
    p = model.predicate
    subject_model = model.subject[0]
    match = _SUBJECT_NAME.match(subject_model.name)
    assert match is not None  # the pattern was validated
    subject = PixelSubject(int(match.group(1)), int(match.group(2)), subject_model.digest.sha256)
    if (subject.width, subject.height) != (p.width, p.height):
        raise VerificationError(
            f"statement subject {subject.name} does not match the predicate size {p.width}x{p.height}"
        )
    record = GenerationRecord(
        model_name=p.model.name,
        model_digest=p.model.digest.pointillist_model_v1,
        pipeline=p.pipeline,
        scheduler=p.scheduler,
        settings=GenerationSettings(prompt=p.prompt, negative_prompt=p.negative_prompt, seed=int(p.seed),
                                    steps=p.steps, guidance=p.guidance, width=p.width, height=p.height),
        dtype=p.dtype,
        device=p.device,
        torch_threads=p.torch_threads,
        libraries={name: getattr(p.libraries, name) for name in LIBRARY_NAMES},
        job_id=p.job.id,
        requester=p.job.requester,
        request_sha256=p.job.request_sha256,
        node=p.node,
        created_at=p.created_at,
    )
    return Statement(subject=subject, record=record)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
