"""Capacity records: what a node offers, signed by the node, spread by gossip.

A record is a DSSE envelope (payload type ``CAPACITY_PAYLOAD_TYPE``) around canonical JSON, sent
as a msgpack map ``{payloadType, payload, keyid, sig}``. A record is accepted only if, in order:
the message is at most ``MAX_RECORD_BYTES``; it decodes; the signature verifies; the signer is the
peer the record describes (and, when known, the peer that sent it); the payload passes the strict
schema; and it has not expired. Whether it is newer than what we hold is the directory's business
(``node/directory.py``). Pure code; the clock is a parameter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .dsse import Envelope, sign_envelope
from .errors import RemoteError
from .fields import PeerIdStr, model_schema
from .identity import Identity
from .signed import open_signed

CAPACITY_PAYLOAD_TYPE = "application/vnd.pointillist.capacity.v1+json"
#: Record versions read here. v2 adds each model's ``family`` and ``warm``; v3 (issue 10) adds the
#: node's ``reachability`` and allows a node with no models (a bootstrap/relay without a GPU).
#: Nodes publish v3. Nodes before a version drop its records (their schema is closed), so they
#: do not see newer nodes.
RECORD_VERSIONS = (1, 2, 3)
REACHABILITY = ("public", "private", "unknown")
MAX_RECORD_BYTES = 8 * 1024
#: A record lives this long unless renewed; nodes renew every ``HEARTBEAT_S``.
RECORD_TTL_S = 90
HEARTBEAT_S = 30
#: A record may claim to expire at most this far ahead (stops a node pinning a stale record).
MAX_TTL_S = 600
#: Clock skew tolerated between nodes. Without a bound on ``issuedAt`` a record dated in the
#: future would pass the lifetime bound and stay live long after its node stopped renewing it.
MAX_CLOCK_SKEW_S = 120

_Short = Annotated[str, StringConstraints(min_length=1, max_length=100)]
_Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Addr = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class ServedModel(_Strict):
    name: _Short
    digest: _Digest
    pipeline: _Short
    max_side: int = Field(alias="maxSide", ge=8, le=16384)
    # v2: the architecture family ("sd15", "sdxl", …; null when unknown) and whether the model is
    # on the device now (a cold one costs a load before the job starts).
    family: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,31}$")] | None = None
    warm: bool = True


class Device(_Strict):
    kind: Annotated[str, StringConstraints(pattern=r"^(cuda|mps|xpu|cpu)$")]
    name: _Short
    vram_total: int = Field(alias="vramTotal", ge=0)  # bytes; 0 on CPU
    vram_free: int = Field(alias="vramFree", ge=0)


class Speed(_Strict):
    steps_per_s: float = Field(alias="stepsPerS", ge=0, le=1e6)
    ref_width: int = Field(alias="refWidth", ge=8, le=16384)
    ref_height: int = Field(alias="refHeight", ge=8, le=16384)


class CapacityRecord(_Strict):
    v: int = Field(3, ge=min(RECORD_VERSIONS), le=max(RECORD_VERSIONS))
    peer_id: PeerIdStr = Field(alias="peerId")
    addrs: list[_Addr] = Field(max_length=16)
    device: Device
    models: list[ServedModel] = Field(min_length=0, max_length=32)  # at least one before v3
    speed: Speed
    queue_free: int = Field(alias="queueFree", ge=0, le=100_000)
    queue_size: int = Field(alias="queueSize", ge=0, le=100_000)
    accepting: bool
    version: _Short
    seq: int = Field(ge=0, lt=2**63)
    issued_at: int = Field(alias="issuedAt", ge=0)
    expires_at: int = Field(alias="expiresAt", ge=0)
    # v3: whether others can dial this node (AutoNAT, network/reachability.py)
    reachability: Literal["public", "private", "unknown"] = "unknown"

    @model_validator(mode="after")
    def _members_of_their_version(self) -> "CapacityRecord":
        if self.v == 1 and any({"family", "warm"} & m.model_fields_set for m in self.models):
            raise ValueError("family and warm are members of v2 records")
        if self.v < 3 and "reachability" in self.model_fields_set:
            raise ValueError("reachability is a member of v3 records")
        if self.v < 3 and not self.models:
            raise ValueError(f"a v{self.v} record serves at least one model")
        return self

    def to_payload(self) -> bytes:
        import json

        return json.dumps(
            self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    def serves(self, ref: str) -> ServedModel | None:
        """The served model named ``ref`` or with digest ``ref``, if any."""
        for m in self.models:
            if ref in (m.name, m.digest):
                return m
        return None


_record_schema = model_schema(CapacityRecord)


def encode_record(identity: Identity, record: CapacityRecord) -> bytes:
    """The gossip message bytes of ``record`` signed by ``identity``."""
    if record.peer_id != identity.peer_id:
        raise ValueError("a node signs only its own capacity record")
    env = sign_envelope(identity, CAPACITY_PAYLOAD_TYPE, record.to_payload())
    data = msgpack.packb(
        {"payloadType": env.payload_type, "payload": env.payload, "keyid": env.keyid, "sig": env.sig},
        use_bin_type=True,
    )
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"capacity record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    return data


class RecordRejected(RemoteError):
    """A record dropped by ``decode_record``; ``reason`` is a short fixed word for counting
    (metrics, ``node status``), the message says the details."""

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BadRecordSignature(RecordRejected):
    reason = "signature"


def decode_record(data: bytes, now: float, sender: str | None = None) -> CapacityRecord:
    """Check and parse a record from the network; ``RecordRejected`` says why it was dropped."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordRejected(f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}", "too_large")
    envelope = _unpack(data)
    record = open_signed(envelope, CAPACITY_PAYLOAD_TYPE, _record_schema, what="record", error=RecordRejected,
                         signature_error=BadRecordSignature)
    if record.peer_id != envelope.keyid:
        raise RecordRejected(f"record for {record.peer_id} is signed by {envelope.keyid}", "wrong_signer")
    if sender is not None and sender != record.peer_id:
        raise RecordRejected(f"record for {record.peer_id} was published by {sender}", "wrong_sender")
    if record.expires_at <= now:
        raise RecordRejected("record has expired", "expired")
    if record.expires_at - record.issued_at > MAX_TTL_S:
        raise RecordRejected("record lifetime is out of bounds", "bad_lifetime")
    if record.issued_at > now + MAX_CLOCK_SKEW_S:
        raise RecordRejected("record is issued in the future (check the node's clock)", "from_future")
    return record


def _unpack(data: bytes) -> Envelope:
    try:
        obj: Any = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_RECORD_BYTES,
                                   max_str_len=MAX_RECORD_BYTES, max_array_len=64, max_map_len=64)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RecordRejected(f"record is not msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict) or set(obj) != {"payloadType", "payload", "keyid", "sig"}:
        raise RecordRejected("record must be a map of payloadType, payload, keyid, sig")
    if not (isinstance(obj["payloadType"], str) and isinstance(obj["payload"], bytes)
            and isinstance(obj["keyid"], str) and isinstance(obj["sig"], bytes)):
        raise RecordRejected("record envelope has wrong types")
    return Envelope(obj["payloadType"], obj["payload"], obj["keyid"], obj["sig"])
