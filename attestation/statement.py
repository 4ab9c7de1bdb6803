"""The attestation's payload: an in-toto Statement v1 whose predicate records one generation.

The statement is signed inside a DSSE envelope with payload type ``ATTESTATION_PAYLOAD_TYPE``
(see ``docs/attestation.md``). DSSE's pre-authentication encoding puts that type in front of
every signed byte string, which is what keeps an attestation signature from ever being valid as a
job, a Noise handshake or a pubsub message signed by the same libp2p key; no extra prefix is
added, so stock DSSE / in-toto verifiers can check our attestations.

Three predicate types are read: ``PREDICATE_TYPE`` (generation/v1) for a job without a
sampler (format version 1: the model's own scheduler, named by class), ``PREDICATE_TYPE_V2``
(generation/v2) for a job naming one: it adds the sampler's A1111 name and the scheduler's
config, everything that was passed to ``from_config``; ``PREDICATE_TYPE_V3`` (generation/v3,
issue 11) for either kind of job: the scheduler config always, ``sampler`` ``null`` when the
job named none, and the step commitments (``trajectory``, see ``trajectory.py``). The version
follows the record: a ``trajectory`` is version 3, else ``settings.sampler is None`` is version 1.

Pure code: ``build_statement`` turns values into canonical JSON bytes, ``parse_statement`` turns
untrusted bytes into values or raises ``VerificationError`` with a one-line reason.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pointillist.protocol import schema
from pointillist.protocol.errors import UsageError, VerificationError
from pointillist.protocol.schema import HEX128, HEX256, PEER_ID
from pointillist.protocol.settings import (
    SETTINGS_MEMBERS,
    SETTINGS_MEMBERS_V2,
    GenerationSettings,
    settings_from_json,
)
from pointillist.protocol.signed import SchemaError, parse_signed_json

from .pixels import PixelSubject
from .trajectory import ENCODING as TRAJECTORY_ENCODING
from .trajectory import MAX_STEPS as MAX_TRAJECTORY_STEPS
from .trajectory import TrajectoryCommitment, commitment_problem

ATTESTATION_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://pointillist.dev/attestation/generation/v1"
PREDICATE_TYPE_V2 = "https://pointillist.dev/attestation/generation/v2"
PREDICATE_TYPE_V3 = "https://pointillist.dev/attestation/generation/v3"
PREDICATE_TYPES = (PREDICATE_TYPE, PREDICATE_TYPE_V2, PREDICATE_TYPE_V3)
#: Limits of ``schedulerConfig`` (predicate v2): members, characters of a string, array items.
MAX_CONFIG_MEMBERS = 100
MAX_CONFIG_STRING = 200
MAX_CONFIG_ARRAY = 2000
#: The digest algorithm name of a model, defined in docs/model-digest.md.
MODEL_DIGEST_ALGORITHM = "pointillist-model-v1"
#: The library versions a predicate records, no more and no fewer.
LIBRARY_NAMES = ("torch", "diffusers", "transformers", "pointillist")

#: Statements larger than this are refused before parsing (a real one is a few kB).
MAX_STATEMENT_BYTES = 256 * 1024

_SUBJECT_NAME = re.compile(r"rgb8:([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
_CREATED_AT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class GenerationRecord:
    """What a node states about one generation: the predicate, with Python names and types.

    ``settings`` are the seven settings of the job it ran (``prompt`` ... ``height`` in the
    predicate; see ``GenerationSettings``). ``model_digest`` is the 64-hex
    ``pointillist-model-v1`` digest. ``created_at`` is RFC 3339 UTC to the second
    (``2026-11-22T10:00:00Z``; see ``rfc3339_utc``). ``libraries`` maps each of
    ``LIBRARY_NAMES`` to a version string; treat it as read-only.

    ``scheduler_config`` is the scheduler's config (predicate v2, ``settings.sampler`` set): JSON
    values by name, no ``_``-prefixed keys, so that ``<scheduler>.from_config(scheduler_config)``
    rebuilds the scheduler that ran. ``None`` in version 1; always set in version 3.

    ``trajectory`` is the commitment to the denoising steps (predicate v3): set, the record is
    version 3 whatever ``settings.sampler`` says (``None`` is written as ``"sampler": null``).
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
    scheduler_config: dict[str, Any] | None = field(default=None, hash=False)
    trajectory: TrajectoryCommitment | None = None

    @property
    def predicate_type(self) -> str:
        if self.trajectory is not None:
            return PREDICATE_TYPE_V3
        return PREDICATE_TYPE if self.settings.sampler is None else PREDICATE_TYPE_V2


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
    if record.trajectory is not None:
        if not isinstance(record.trajectory, TrajectoryCommitment):
            raise UsageError(f"record trajectory must be a TrajectoryCommitment, not {type(record.trajectory).__name__}")
        if not isinstance(record.scheduler_config, dict):
            raise UsageError("a record with a trajectory (predicate v3) needs its scheduler config as a dict")
    elif settings.sampler is None and record.scheduler_config is not None:
        raise UsageError("a record without a sampler (predicate v1) has no scheduler config")
    elif settings.sampler is not None and not isinstance(record.scheduler_config, dict):
        raise UsageError("a record with a sampler (predicate v2) needs its scheduler config as a dict")
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
    if obj.get("predicateType") not in PREDICATE_TYPES:
        raise VerificationError(
            f"predicateType is {_short(obj.get('predicateType'))}, expected one of "
            f"{', '.join(repr(t) for t in PREDICATE_TYPES)}"
        )
    return _to_statement(obj)


# --- JSON shape ----------------------------------------------------------------------------------


def _statement_dict(record: GenerationRecord, subject: PixelSubject) -> dict[str, Any]:
    predicate = {
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
    }
    if record.trajectory is not None:  # predicate v3: sampler (or null), config, trajectory
        predicate["sampler"] = record.settings.sampler
        predicate["schedulerConfig"] = _plain_config(record.scheduler_config)
        predicate["trajectory"] = record.trajectory.to_json_dict()
    elif record.settings.sampler is not None:  # predicate v2; "sampler" comes with the settings
        predicate["schedulerConfig"] = _plain_config(record.scheduler_config)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject.to_json_dict()],
        "predicateType": record.predicate_type,
        "predicate": predicate,
    }


def _plain_config(config: Any) -> Any:
    # Tuples (diffusers keeps some config lists as tuples) are JSON arrays; the rest is checked
    # when the built statement is parsed back.
    if isinstance(config, dict):
        return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}
    return config


def _created_at(value: Any, path: str) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, a real date and time of year 1 to 9999, second 00 to 59."""
    if type(value) is not str:
        raise SchemaError(path, "must be a string")
    match = _CREATED_AT.fullmatch(value)
    if match is None:
        raise SchemaError(path, "must be YYYY-MM-DDTHH:MM:SSZ")
    # Leap seconds (second 60) are refused: nodes write POSIX time, which has none, and
    # 23:59:60 would be a second spelling of the next day's 00:00:00.
    if int(match.group(6)) >= 60:
        raise SchemaError(path, "second 60 is a leap second; createdAt is POSIX time and has none")
    try:
        datetime(*(int(g) for g in match.groups()))
    except ValueError as exc:
        raise SchemaError(path, f"not a valid date and time: {exc}") from None
    return value


_CONFIG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1


def _config_scalar(value: Any, path: str) -> Any:
    if value is None or type(value) is bool or type(value) is float:  # floats are finite (strict JSON)
        return value
    if type(value) is int:
        if not _MIN_INT <= value <= _MAX_INT:
            raise SchemaError(path, "integer out of range -2**63 .. 2**63-1")
        return value
    if type(value) is str:
        return schema.string(max_length=MAX_CONFIG_STRING)(value, path)
    raise SchemaError(path, "must be null, a boolean, a number or a string")


def _scheduler_config(value: Any, path: str) -> dict[str, Any]:
    """``schedulerConfig``: an object of 1-100 members named ``[A-Za-z][A-Za-z0-9_]*`` (no
    ``_`` prefix); each value null, a boolean, a number, a string of at most 200 characters, or
    an array of at most 2000 of those."""
    if type(value) is not dict:
        raise SchemaError(path, "must be an object")
    if not 1 <= len(value) <= MAX_CONFIG_MEMBERS:
        raise SchemaError(path, f"must hold 1 to {MAX_CONFIG_MEMBERS} members")
    out = {}
    for key, item in value.items():
        where = f"{path}.{key}"
        if _CONFIG_KEY.fullmatch(key) is None:
            raise SchemaError(where, "member names must match [A-Za-z][A-Za-z0-9_]{0,99}")
        if type(item) is list:
            if len(item) > MAX_CONFIG_ARRAY:
                raise SchemaError(where, f"must hold at most {MAX_CONFIG_ARRAY} items")
            out[key] = [_config_scalar(v, f"{where}.{i}") for i, v in enumerate(item)]
        else:
            out[key] = _config_scalar(item, where)
    return out


def _nullable(check: schema.Check) -> schema.Check:
    def nullable(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return nullable


def _trajectory(value: Any, path: str) -> TrajectoryCommitment:
    """``trajectory`` (predicate v3): exactly ``encoding``, ``steps``, ``leaves``, ``root``."""
    m = _TRAJECTORY_MEMBERS(value, path)
    commitment = TrajectoryCommitment(m["encoding"], m["steps"], m["leaves"], m["root"])
    problem = commitment_problem(commitment)
    if problem is not None:
        raise SchemaError(path, problem)
    return commitment


_TRAJECTORY_MEMBERS = schema.members({
    "encoding": schema.exactly(TRAJECTORY_ENCODING),
    "steps": schema.integer(1, MAX_TRAJECTORY_STEPS),
    "leaves": schema.integer(2, MAX_TRAJECTORY_STEPS + 1),
    "root": schema.string(pattern=HEX256),
})
_NAME = schema.string(1, 200)
_SHORT_NAME = schema.string(1, 100)
_PREDICATE: dict[str, schema.Check] = {
    "model": schema.members({
        "name": _NAME,
        "digest": schema.members({MODEL_DIGEST_ALGORITHM: schema.string(pattern=HEX256)}),
    }),
    "pipeline": _NAME,
    "scheduler": _NAME,
    **SETTINGS_MEMBERS,
    "dtype": _SHORT_NAME,
    "device": _SHORT_NAME,
    "torchThreads": schema.integer(1, 4096),
    "libraries": schema.members({name: _SHORT_NAME for name in LIBRARY_NAMES}),
    "job": schema.members({
        "id": schema.string(pattern=HEX128),
        "requester": schema.string(pattern=PEER_ID),
        "requestSha256": schema.string(pattern=HEX256),
    }),
    "node": schema.string(pattern=PEER_ID),
    "createdAt": _created_at,
}
_PREDICATES = {
    PREDICATE_TYPE: schema.members(_PREDICATE),
    PREDICATE_TYPE_V2: schema.members({**_PREDICATE, **SETTINGS_MEMBERS_V2, "schedulerConfig": _scheduler_config}),
    # v3: the sampler is null for a job that named none (nothing in a statement is optional).
    PREDICATE_TYPE_V3: schema.members({**_PREDICATE, **SETTINGS_MEMBERS_V2,
                                       "sampler": _nullable(SETTINGS_MEMBERS_V2["sampler"]),
                                       "schedulerConfig": _scheduler_config, "trajectory": _trajectory}),
}
_SUBJECTS = schema.array(schema.members({
    "name": schema.string(pattern=_SUBJECT_NAME.pattern),
    "digest": schema.members({"sha256": schema.string(pattern=HEX256)}),
}), 1, 1)
_STATEMENTS = {
    predicate_type: schema.members({
        "_type": schema.exactly(STATEMENT_TYPE),
        "subject": _SUBJECTS,
        "predicateType": schema.exactly(predicate_type),
        "predicate": predicate,
    })
    for predicate_type, predicate in _PREDICATES.items()
}


def _to_statement(obj: Any) -> Statement:
    m = _STATEMENTS[obj["predicateType"]](obj, "")
    p, s = m["predicate"], m["subject"][0]
    match = _SUBJECT_NAME.fullmatch(s["name"])
    assert match is not None  # the pattern was validated
    subject = PixelSubject(int(match.group(1)), int(match.group(2)), s["digest"]["sha256"])
    if (subject.width, subject.height) != (p["width"], p["height"]):
        raise VerificationError(
            f"statement subject {subject.name} does not match the predicate size {p['width']}x{p['height']}"
        )
    record = GenerationRecord(
        model_name=p["model"]["name"],
        model_digest=p["model"]["digest"][MODEL_DIGEST_ALGORITHM],
        pipeline=p["pipeline"],
        scheduler=p["scheduler"],
        settings=settings_from_json(p),
        dtype=p["dtype"],
        device=p["device"],
        torch_threads=p["torchThreads"],
        libraries=dict(p["libraries"]),
        job_id=p["job"]["id"],
        requester=p["job"]["requester"],
        request_sha256=p["job"]["requestSha256"],
        node=p["node"],
        created_at=p["createdAt"],
        scheduler_config=p.get("schedulerConfig"),
        trajectory=p.get("trajectory"),
    )
    return Statement(subject=subject, record=record)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
