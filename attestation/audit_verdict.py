"""The audit verdict (predicate audit/v1): what an auditor node signs after recomputing the
challenged steps of someone else's generation (issue 11, item 4; docs/attestation.md, section 11).

An in-toto Statement v1 in a DSSE envelope, like the generation attestation, signed by the
auditor's libp2p key. Its subject is the audited image's pixels (the same ``rgb8:WxH`` subject
as the generation attestation, so a verdict and an image are matched without our code); its
predicate names the generation statement it judged (by the SHA-256 of its payload), the audit job
that asked (requester, job id, SHA-256 of the signed job), the steps checked, the verdict with
every check's figure, and where the auditor computed. The predicate type keeps it apart from a
generation attestation: a verifier of images refuses it, and the reverse.

Pure code: values in, bytes or exceptions out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import VerificationError
from pointillist.protocol.identity import Identity
from pointillist.protocol.schema import HEX128, HEX256, PEER_ID, array, exactly, integer, members, string
from pointillist.protocol.signed import SchemaError, parse_signed_json

from .pixels import PixelSubject
from .statement import ATTESTATION_PAYLOAD_TYPE, STATEMENT_TYPE, _created_at

AUDIT_PREDICATE_TYPE = "https://pointillist.dev/attestation/audit/v1"
VERDICTS = ("pass", "fail", "unauditable")
MAX_VERDICT_BYTES = 256 * 1024
MAX_CHECKS = 200


@dataclass(frozen=True)
class AuditVerdictRecord:
    """What an auditor states. ``checks`` are the check objects of ``AuditVerdict.to_json_dict``."""

    auditor: str
    subject: PixelSubject
    statement_sha256: str  # the generation statement's payload
    attested_node: str
    attested_job: str
    model_digest: str
    root: str  # the trajectory root the leaves were proven against
    steps: tuple[int, ...]
    verdict: str
    detail: str
    checks: tuple[dict[str, Any], ...]
    requester: str
    audit_job_id: str
    audit_job_sha256: str
    device: str
    dtype: str
    torch_threads: int
    libraries: dict[str, str]
    created_at: str

    def to_statement(self) -> bytes:
        import json

        predicate = {
            "auditor": self.auditor,
            "attestation": {"statementSha256": self.statement_sha256, "node": self.attested_node,
                            "jobId": self.attested_job, "modelDigest": self.model_digest, "root": self.root},
            "auditJob": {"id": self.audit_job_id, "requester": self.requester, "requestSha256": self.audit_job_sha256},
            "steps": list(self.steps),
            "verdict": self.verdict,
            "detail": self.detail[:2000],
            "checks": [_plain(c) for c in self.checks],
            "device": self.device,
            "dtype": self.dtype,
            "torchThreads": self.torch_threads,
            "libraries": dict(self.libraries),
            "createdAt": self.created_at,
        }
        statement = {"_type": STATEMENT_TYPE, "subject": [self.subject.to_json_dict()],
                     "predicateType": AUDIT_PREDICATE_TYPE, "predicate": predicate}
        return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()


def sign_verdict(identity: Identity, record: AuditVerdictRecord) -> Envelope:
    if record.auditor != identity.peer_id:
        raise ValueError(f"verdict names auditor {record.auditor}, the key is {identity.peer_id}")
    return sign_envelope(identity, ATTESTATION_PAYLOAD_TYPE, record.to_statement())


def open_verdict(envelope: Envelope) -> AuditVerdictRecord:
    """Verify the auditor's signature and parse strictly; ``VerificationError`` (one line) for a
    bad signature, another predicate, a schema violation, or a predicate that names another
    auditor than the key that signed it."""
    payload = envelope.verify(ATTESTATION_PAYLOAD_TYPE)
    record = parse_signed_json(payload, _record, what="audit verdict", error=VerificationError,
                               max_bytes=MAX_VERDICT_BYTES)
    if record.auditor != envelope.keyid:
        raise VerificationError(f"the verdict names auditor {record.auditor} but is signed by {envelope.keyid}")
    return record


def _plain(value: Any) -> Any:
    """JSON has no infinities or NaN: a non-finite figure is written as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_item(value: Any, path: str) -> dict[str, Any]:
    """A check object: ``check``, ``status`` and ``detail`` are required; its figures are kept
    as they are (they are reported, never acted on)."""
    if type(value) is not dict:
        raise SchemaError(path, "must be an object")
    for key in ("check", "status", "detail"):
        string(1, 4000)(value.get(key), f"{path}.{key}")
    if value["status"] not in VERDICTS:
        raise SchemaError(f"{path}.status", f"must be one of {', '.join(VERDICTS)}")
    return value


def _verdict(value: Any, path: str) -> str:
    if value not in VERDICTS:
        raise SchemaError(path, f"must be one of {', '.join(VERDICTS)}")
    return value


_HEX = string(pattern=HEX256)
_SCHEMA = members({
    "_type": exactly(STATEMENT_TYPE),
    "subject": array(members({"name": string(pattern=r"rgb8:[1-9][0-9]{0,5}x[1-9][0-9]{0,5}"),
                              "digest": members({"sha256": _HEX})}), 1, 1),
    "predicateType": exactly(AUDIT_PREDICATE_TYPE),
    "predicate": members({
        "auditor": string(pattern=PEER_ID),
        "attestation": members({"statementSha256": _HEX, "node": string(pattern=PEER_ID),
                                "jobId": string(pattern=HEX128), "modelDigest": _HEX, "root": _HEX}),
        "auditJob": members({"id": string(pattern=HEX128), "requester": string(pattern=PEER_ID),
                             "requestSha256": _HEX}),
        "steps": array(integer(1, 10_000), 1, 63),
        "verdict": _verdict,
        "detail": string(1, 2000),
        "checks": array(_check_item, 0, MAX_CHECKS),
        "device": string(1, 100),
        "dtype": string(1, 40),
        "torchThreads": integer(0, 4096),
        "libraries": lambda v, p: {k: string(0, 100)(x, f"{p}.{k}") for k, x in members_any(v, p).items()},
        "createdAt": _created_at,
    }),
})


def members_any(value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict or len(value) > 32:
        raise SchemaError(path, "must be an object of at most 32 members")
    return value


def _record(obj: Any) -> AuditVerdictRecord:
    m = _SCHEMA(obj, "")
    p = m["predicate"]
    name = m["subject"][0]["name"]
    width, height = (int(x) for x in name.removeprefix("rgb8:").split("x"))
    return AuditVerdictRecord(
        auditor=p["auditor"], subject=PixelSubject(width, height, m["subject"][0]["digest"]["sha256"]),
        statement_sha256=p["attestation"]["statementSha256"], attested_node=p["attestation"]["node"],
        attested_job=p["attestation"]["jobId"], model_digest=p["attestation"]["modelDigest"],
        root=p["attestation"]["root"], steps=tuple(p["steps"]), verdict=p["verdict"], detail=p["detail"],
        checks=tuple(p["checks"]), requester=p["auditJob"]["requester"], audit_job_id=p["auditJob"]["id"],
        audit_job_sha256=p["auditJob"]["requestSha256"], device=p["device"], dtype=p["dtype"],
        torch_threads=p["torchThreads"], libraries=dict(p["libraries"]), created_at=p["createdAt"],
    )
