"""The auditor's side of ``/pointillist/audit-job/1.0.0`` (protocol/audit_job.py): recompute the
challenged steps of an image another node signed, with the model this node serves under the
attested digest, and answer with a signed verdict (attestation/audit_verdict.py).

Order: frame → message shape → admission (``Admission.admit_audit``: the same checks, order and
replay/rate bookkeeping as a generation job) → the image (it must verify, carry step commitments,
name the job's model digest and be the PNG the job names by hash; its settings must be within this
node's limits), in a worker thread, before the audit takes a place in the device queue → the audit
itself (node/audit_check.py: proofs, seed, UNet, scheduler, VAE), on the generation thread, one at a
time with generation jobs. Audits count in the queue the capacity record advertises.

The auditor trusts neither the requester nor the audited node: leaves count only with their
inclusion proofs to the signed root (``audit_check`` checks them), and the image is verified here.
Every refusal is a ``{"t": "error"}`` reply; a peer can never crash the node.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import trio

from ..attestation.audit_verdict import AuditVerdictRecord, sign_verdict
from ..attestation.statement import rfc3339_utc
from ..protocol import framing
from ..protocol.audit_job import MAX_AUDIT_JOB_FRAME, AuditJobMessage, SignedAuditJob, parse_audit_job_message, verdict_message
from ..protocol.errors import ErrorCode, FrameError, FrameTooLarge, JobRejected, TransportError, VerificationError
from ..protocol.messages import AcceptedMessage
from .events import JobAccepted, JobFinished, JobStarted
from .service import JobService, serve_guarded
from .version import POINTILLIST_VERSION

log = logging.getLogger("pointillist.node")

#: An audit job carries an image and leaves (MiBs): more time to arrive than a job's few KiB.
READ_REQUEST_TIMEOUT_S = 60.0


class AuditJobService:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs  # its admission, queue, device lock, generation thread, events and identity

    async def handle_stream(self, stream: Any) -> None:
        await serve_guarded(stream, self._serve, "an audit job")

    async def _serve(self, stream: Any, peer: str) -> None:
        jobs = self.jobs
        try:
            with trio.fail_after(READ_REQUEST_TIMEOUT_S):
                frame = await framing.read_frame(stream, MAX_AUDIT_JOB_FRAME)
            message = parse_audit_job_message(frame)
            job = jobs.admission.admit_audit(message.envelope, now=jobs.clock(), queue_depth=jobs.queue_depth,
                                             shutting_down=jobs.shutting_down)
        except trio.TooSlowError:
            return await jobs._reject(stream, peer, JobRejected(ErrorCode.TIMEOUT, "no complete audit job in time"))
        except FrameError as exc:
            code = ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.BAD_FRAME
            return await jobs._reject(stream, peer, JobRejected(code, f"audit job: {exc}"))
        except JobRejected as exc:
            return await jobs._reject(stream, peer, exc)
        try:
            audited = await trio.to_thread.run_sync(self._check_image, job, message)
        except JobRejected as exc:
            return await jobs._reject(stream, peer, exc)

        request = job.request
        model = jobs.models.find(request.model)
        started = None
        async with jobs.in_queue() as position:
            accepted = JobAccepted(request.job_id, job.requester, peer, f"audit of {model.name}",
                                   len(request.steps), position)
            jobs.events.emit(accepted)
            try:
                await jobs.remember(request)
                await jobs._write(stream, AcceptedMessage(t="accepted", jobId=request.job_id, position=position))

                def start() -> None:
                    nonlocal started
                    started = time.monotonic()
                    jobs.events.emit(JobStarted(request.job_id, len(request.steps)))

                envelope = await jobs.on_device(lambda: self._audit(job, message, audited, model), start)
            except JobRejected as exc:
                self._finished(accepted, started, exc.code)
                return await jobs._reject(stream, peer, exc, reported=True)
            except Exception as exc:
                self._finished(accepted, started, ErrorCode.INTERNAL)
                if isinstance(exc, TransportError):
                    raise
                log.exception("audit job %s failed", request.job_id)
                return await jobs._reject(stream, peer, JobRejected(
                    ErrorCode.INTERNAL, f"the audit failed: {type(exc).__name__}: {exc}"[:300]), reported=True)
        try:
            with trio.fail_after(30):
                await framing.write_frame(stream, verdict_message(request.job_id, envelope))
        except trio.TooSlowError:
            raise TransportError("peer did not read the verdict within 30 s") from None
        finally:
            self._finished(accepted, started, None)

    def _check_image(self, job: SignedAuditJob, message: AuditJobMessage) -> Any:
        """The verified statement, envelope and pixels of the job's image; ``JobRejected`` naming
        what is wrong with it. Blocking (PNG decoding): runs in a worker thread."""
        from ..attestation.verify import verified_generation

        request = job.request
        if hashlib.sha256(message.png).hexdigest() != request.image_sha256:
            raise JobRejected(ErrorCode.BAD_FRAME, "the image sent is not the one the signed audit job names")
        try:
            statement, envelope, image = verified_generation(message.png)
        except VerificationError as exc:
            raise JobRejected(ErrorCode.INVALID_PARAMS, f"the image does not verify ({exc})") from None
        record = statement.record
        if record.trajectory is None:
            raise JobRejected(ErrorCode.INVALID_PARAMS, "the image has no step commitments (attestation before version 3)")
        if record.model_digest != request.model:
            raise JobRejected(ErrorCode.INVALID_PARAMS,
                              f"the image was made with model {record.model_digest}, the job names {request.model}")
        if request.steps[-1] > record.trajectory.steps:
            raise JobRejected(ErrorCode.INVALID_PARAMS, f"the generation has steps 1..{record.trajectory.steps}")
        self.jobs.limits.check(record.settings)  # the audit runs the UNet at the image's size
        return statement, envelope, image

    def _audit(self, job: SignedAuditJob, message: AuditJobMessage, audited: Any, model: Any) -> Any:
        """On the generation thread: the audit and the signed verdict."""
        from ..node.audit_check import audit
        from .pipeline import library_versions

        statement, envelope, image = audited
        record = statement.record
        loaded = model.on_device()
        verdict = audit(loaded, record, image, {o.index: (o.leaf, o.proof) for o in message.leaves},
                        list(job.request.steps))
        import torch

        verdict_record = AuditVerdictRecord(
            auditor=self.jobs.identity.peer_id, subject=statement.subject,
            statement_sha256=hashlib.sha256(envelope.payload).hexdigest(), attested_node=record.node,
            attested_job=record.job_id, model_digest=record.model_digest, root=record.trajectory.root,
            steps=tuple(job.request.steps), verdict=verdict.verdict, detail=verdict.detail,
            checks=tuple(c.to_json_dict() for c in verdict.checks), requester=job.requester,
            audit_job_id=job.request.job_id, audit_job_sha256=job.payload_sha256,
            device=str(loaded.device), dtype=str(loaded.dtype), torch_threads=torch.get_num_threads(),
            libraries={**library_versions(), "pointillist": POINTILLIST_VERSION},
            created_at=rfc3339_utc(self.jobs.clock()),
        )
        return sign_verdict(self.jobs.identity, verdict_record)

    def _finished(self, accepted: JobAccepted, started: float | None, code: ErrorCode | None) -> None:
        now = time.monotonic()
        started = started or now
        self.jobs.events.emit(JobFinished(
            accepted.job_id, accepted.requester, accepted.peer, code, queue_s=started - accepted.at,
            generation_s=now - started, delivery_s=0.0, steps=accepted.steps, png_bytes=0,
            delivered=code is None))
