"""The node's side of ``/pointillist/audit/1.0.0`` (protocol/audit.py): open the asked leaves of
a job's kept step commitments, with their inclusion proofs, for whoever shows the job's signed
trajectory root. Reading the store runs in a worker thread: nothing history-sized on the loop."""

from __future__ import annotations

from typing import Any, Callable

import trio

from ..attestation.trajectory import Trajectory
from ..protocol.audit import OpenedLeaf, audit_reply, parse_audit_request
from ..protocol.errors import ErrorCode, JobRejected, VerificationError
from ..protocol.framing import MAX_REQUEST_FRAME
from .events import EventBus
from .one_request import answer_one_request


class AuditService:
    def __init__(self, trajectory_for: Callable[[str], Trajectory | None], events: EventBus | None = None) -> None:
        self.trajectory_for = trajectory_for  # blocking: NodeState.trajectory_for
        self.events = events

    async def _answer(self, frame: Any) -> dict[str, Any]:
        request = parse_audit_request(frame)
        try:
            trajectory = await trio.to_thread.run_sync(self.trajectory_for, request.job_id)
        except VerificationError as exc:  # damaged on disk: say so rather than go quiet
            raise JobRejected(ErrorCode.INTERNAL, f"the kept step commitments are damaged: {exc}") from None
        if trajectory is None or trajectory.root.hex() != request.root:
            raise JobRejected(ErrorCode.NOT_FOUND, "no step commitments with that root are kept here "
                                                   "(never made here, or older than the challenge window)")
        size = len(trajectory.leaves)
        if request.leaves[-1] >= size:
            raise JobRejected(ErrorCode.INVALID_PARAMS, f"the trajectory has leaves 0..{size - 1}")
        opened = [OpenedLeaf(k, trajectory.leaves[k], tuple(trajectory.proof(k))) for k in request.leaves]
        return audit_reply(size, opened)

    async def handle_stream(self, stream: Any) -> None:
        await answer_one_request(stream, "audit", MAX_REQUEST_FRAME, self._answer, self.events)
