"""Admission: every check a node makes on a job before it spends anything on it.

Pure (the clock, queue depth and shutdown flag come in as values): it takes a signed envelope and
returns the verified job or raises ``JobRejected`` with the code the requester sees. The checks
run in ``JOB_CHECK_ORDER``, cheapest and most security-relevant first; a job that fails several
is refused for the first (tests/test_admission.py walks the table). Frame-level checks (size,
msgpack, message schema, read timeout) come before these, in the stream handler.

Replays are checked before the requester's rate bucket and remembered only after it: a replay
must not cost the real requester a token (anyone holding the image holds the signed job), and a
job refused for load may be retried as it is.

Admission remembers a job in memory only; writing it to disk (the state database) is the
service's, in a worker thread, before it answers "accepted".
"""

from __future__ import annotations

from typing import Any

from ..protocol.audit_job import SignedAuditJob, open_audit_job
from ..protocol.errors import ErrorCode, JobRejected, RemoteError, VerificationError
from ..protocol.fetch import FETCH_LIFETIME_S, FetchRequest, open_fetch
from ..protocol.jobs import SignedJob, check_fresh, open_job
from .policy import Policy, RateLimiter
from .replay import ReplayCache

#: The documented order of a job's checks, as (what is checked, the code when it fails).
JOB_CHECK_ORDER: tuple[tuple[str, ErrorCode], ...] = (
    ("requester signature", ErrorCode.BAD_SIGNATURE),
    ("job schema", ErrorCode.BAD_FRAME),
    ("freshness", ErrorCode.EXPIRED),
    ("addressed to this node", ErrorCode.WRONG_NODE),
    ("requester allowed", ErrorCode.FORBIDDEN),
    ("model served here", ErrorCode.UNKNOWN_MODEL),
    ("operator limits", ErrorCode.INVALID_PARAMS),
    ("fits the GPU's memory", ErrorCode.INVALID_PARAMS),  # node/memory_fit.py; CUDA only
    ("not shutting down", ErrorCode.BUSY),
    ("queue space", ErrorCode.BUSY),
    ("not a replay", ErrorCode.REPLAYED),
    ("requester's rate", ErrorCode.RATE_LIMITED),
    ("replay cache space", ErrorCode.BUSY),
)


class Admission:
    def __init__(self, node_id: str, models: Any, policy: Policy, *, replay: ReplayCache | None = None) -> None:
        self.node_id = node_id
        self.models = models  # anything with ``find(ref)`` raising JobRejected(UNKNOWN_MODEL)
        self.policy = policy
        self.replay = replay if replay is not None else ReplayCache()  # an empty cache is falsy
        self.rate = RateLimiter(policy.requesters.jobs_per_minute, policy.requesters.burst)

    def admit(self, envelope: Any, *, now: float, queue_depth: int, shutting_down: bool) -> SignedJob:
        """The verified job, remembered against replays; ``JobRejected`` at the first failed check.
        ``queue_depth``: jobs admitted and not finished (the running one included)."""
        job = _opened(open_job, envelope)
        request = job.request
        self._addressed(request, job.requester, now)
        model = self.models.find(request.model)
        self.policy.limits.check(request)
        fit = getattr(model, "memory_fit", None)  # measured once at start (CUDA only)
        if fit is not None:
            fit.check(request.width, request.height, model.name)
        self._take_a_place(request, job.requester, now, queue_depth, shutting_down)
        return job

    def admit_audit(self, envelope: Any, *, now: float, queue_depth: int, shutting_down: bool) -> SignedAuditJob:
        """An audit job (protocol/audit_job.py), through the same checks in the same order as a
        job, with the operator's ``[audits] serve`` switch in place of the job's limits (which
        apply to the audited image's settings once it is verified, in the audit service)."""
        job = _opened(open_audit_job, envelope)
        request = job.request
        self._addressed(request, job.requester, now)
        self.models.find(request.model)
        if not self.policy.audits.serve:
            raise JobRejected(ErrorCode.FORBIDDEN, "this node does not serve audit jobs ([audits] serve = false)")
        self._take_a_place(request, job.requester, now, queue_depth, shutting_down)
        return job

    def _addressed(self, request: Any, requester: str, now: float) -> None:
        try:
            check_fresh(request, now)
        except VerificationError as exc:
            raise JobRejected(ErrorCode.EXPIRED, str(exc)) from exc
        if request.node != self.node_id:
            raise JobRejected(ErrorCode.WRONG_NODE, f"job is addressed to {request.node}, this is {self.node_id}")
        self.policy.requesters.check_identity(requester)

    def _take_a_place(self, request: Any, requester: str, now: float, queue_depth: int, shutting_down: bool) -> None:
        if shutting_down:
            raise JobRejected(ErrorCode.BUSY, "node is shutting down")
        if queue_depth > self.policy.limits.queue_size:
            raise JobRejected(ErrorCode.BUSY, f"queue full ({self.policy.limits.queue_size} waiting)")
        self.replay.check_unseen(request.job_id, request.nonce, now)
        self.rate.take(requester, now)
        self.replay.check_and_remember(request.job_id, request.nonce, request.expires_at, now)

    def check_fetch(self, envelope: Any, *, now: float) -> tuple[FetchRequest, str]:
        """A fetch request's checks: signature, schema, freshness, target. Returns the request
        and its signer; whether a result exists for that signer is the store's business."""
        try:
            request, requester = open_fetch(envelope)
        except (VerificationError, RemoteError) as exc:
            raise JobRejected(ErrorCode.BAD_SIGNATURE, str(exc)) from exc
        try:
            check_fresh(request, now, FETCH_LIFETIME_S)
        except VerificationError as exc:
            raise JobRejected(ErrorCode.EXPIRED, f"fetch request: {exc}") from exc
        if request.node != self.node_id:
            raise JobRejected(ErrorCode.WRONG_NODE, f"fetch is addressed to {request.node}")
        return request, requester


def _opened(open_fn: Any, envelope: Any) -> Any:
    """The requester's signature, then the schema: ``bad-signature`` or ``bad-frame``."""
    try:
        return open_fn(envelope)
    except VerificationError as exc:
        raise JobRejected(ErrorCode.BAD_SIGNATURE, str(exc)) from exc
    except RemoteError as exc:
        raise JobRejected(ErrorCode.BAD_FRAME, str(exc)) from exc
