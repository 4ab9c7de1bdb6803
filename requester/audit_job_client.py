"""The requester's side of ``/pointillist/audit-job/1.0.0`` (protocol/audit_job.py): hand an
image, the challenged steps and the leaves its node opened to another node serving the same model
digest, and accept only a verdict that this auditor signed about exactly what was asked.

``check_verdict`` is pure: a verdict counts only if the auditor's key signed it, it answers this
audit job (its id and the SHA-256 of the signed job), and it judges this image (pixels, the
generation statement, the root) at these steps. Anything else is ``AuditorFailed``: the auditor's
failure, never the audited node's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import trio

from ..attestation.audit_verdict import AuditVerdictRecord, open_verdict
from ..network.host import parse_peer_addr, stream_to
from ..protocol import framing
from ..protocol.audit import OpenedLeaf
from ..protocol.audit_job import (
    AUDIT_JOB_PROTOCOL,
    MAX_AUDIT_JOB_FRAME,
    AuditJobRequest,
    audit_job_message,
    new_audit_job,
    parse_audit_job_reply,
    sign_audit_job,
)
from ..protocol.dsse import Envelope
from ..protocol.errors import FrameError, JobRejected, TransportError, VerificationError
from ..protocol.identity import Identity

#: An audit is a few UNet steps, behind whatever the auditor's queue holds.
TIMEOUT_S = 600.0


class AuditorFailed(Exception):
    """The auditor gave no valid verdict (refused, unreachable, or signed something else); one line."""


@dataclass(frozen=True)
class Audited:
    """What the requester asks about: the image and its verified generation statement."""

    png: bytes
    statement_sha256: str  # SHA-256 of the generation statement's payload
    subject_sha256: str  # the statement's pixel subject
    root: str
    model_digest: str
    node: str  # the node that signed the image


@dataclass(frozen=True)
class RemoteVerdict:
    record: AuditVerdictRecord
    envelope: Envelope


def check_verdict(envelope: Envelope, *, auditor: str, job: AuditJobRequest, job_envelope: Envelope,
                  audited: Audited) -> AuditVerdictRecord:
    """Pure: the verdict in ``envelope`` if it is the auditor's answer to ``job`` about
    ``audited``; ``AuditorFailed`` naming the first thing that is not."""
    if envelope.keyid != auditor:
        raise AuditorFailed(f"the verdict is signed by {envelope.keyid}, not by the auditor {auditor}")
    try:
        record = open_verdict(envelope)
    except VerificationError as exc:
        raise AuditorFailed(f"the auditor's verdict does not verify: {exc}") from None
    expected = {
        "audit job": (record.audit_job_id, job.job_id),
        "signed audit job": (record.audit_job_sha256, hashlib.sha256(job_envelope.payload).hexdigest()),
        "requester": (record.requester, job_envelope.keyid),
        "generation statement": (record.statement_sha256, audited.statement_sha256),
        "image pixels": (record.subject.sha256, audited.subject_sha256),
        "audited node": (record.attested_node, audited.node),
        "step commitments root": (record.root, audited.root),
        "model": (record.model_digest, audited.model_digest),
        "steps": (list(record.steps), list(job.steps)),
    }
    for what, (got, want) in expected.items():
        if got != want:
            raise AuditorFailed(f"the auditor's verdict is about another {what} than the one asked")
    return record


async def remote_audit(host: Any, identity: Identity, auditor_addr: str, audited: Audited, steps: list[int],
                       leaves: list[OpenedLeaf], *, timeout_s: float = TIMEOUT_S) -> RemoteVerdict:
    """Ask the node at ``auditor_addr`` to recompute ``steps`` of ``audited`` from ``leaves``;
    the checked verdict, or ``AuditorFailed``."""
    peer = parse_peer_addr(auditor_addr)
    job = new_audit_job(node=str(peer.peer_id), model=audited.model_digest, png=audited.png, steps=steps,
                        now=int(time.time()))
    job_envelope = sign_audit_job(identity, job)
    message = audit_job_message(job_envelope, audited.png, leaves)
    try:
        with trio.fail_after(timeout_s):
            async with stream_to(host, peer, AUDIT_JOB_PROTOCOL) as stream:
                await framing.write_frame(stream, message, MAX_AUDIT_JOB_FRAME)
                while True:
                    reply = parse_audit_job_reply(await framing.read_frame(stream, framing.MAX_REPLY_FRAME))
                    if reply.kind == "verdict":
                        break
    except trio.TooSlowError:
        raise AuditorFailed(f"the auditor gave no verdict within {timeout_s:.0f} s") from None
    except JobRejected as exc:
        raise AuditorFailed(f"the auditor refused ({exc.code}): {exc.message}") from None
    except (FrameError, TransportError) as exc:
        raise AuditorFailed(f"the auditor could not be asked: {exc}") from None
    if reply.job_id != job.job_id or reply.envelope is None:
        raise AuditorFailed("the auditor answered another audit job")
    record = check_verdict(reply.envelope, auditor=str(peer.peer_id), job=job, job_envelope=job_envelope,
                           audited=audited)
    return RemoteVerdict(record, reply.envelope)
