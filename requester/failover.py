"""Running one job on the best node that will do it: the requester's failover state machine.

A job is signed for one node; trying another node means signing a new job for it (same
settings, new job id). An image is returned only if its attestation verifies, is signed by the
node we asked, and embeds exactly the job we signed.

Per attempt, what a node's answer leads to (``ErrorCode.retry``, docs/protocol.md):

* a verified image: done, and the node's backoff is forgotten;
* ``busy`` / ``rate-limited`` (``Retry.LATER``): try the next node now, this one again in a later
  round; no penalty;
* another refusal (``Retry.ELSEWHERE``): this node will not run this job; try the next;
* ``internal`` / ``timeout`` / ``out-of-memory`` (``Retry.ELSEWHERE_AND_AVOID``), an unreachable
  or silent node, a malformed reply, an image that does not verify: try the next and avoid this
  node for a while (``PeerBackoff``);
* the connection breaks *after* the node accepted the job: the node keeps running it and stores
  the result, so ask it for the result (``fetch``) before going elsewhere.

Rounds: when every candidate of a round was busy (or every node that serves the model was full
when ranked), wait 1 s, 2 s, 4 s… (at most 8 s), re-rank on the records gossip brought meanwhile,
and go again — until ``patience_s`` runs out. Gives up early after ``max_failures`` real failures
or when no node outside those that failed serves the model. The final error lists every attempt.

Only ``NodeTransport`` touches the network, so this runs in process against scripted fake nodes
(tests/test_failover.py); time comes from trio's clock, so tests can use a virtual one.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..protocol.errors import (
    ErrorCode,
    JobRejected,
    PointillistError,
    RemoteError,
    Retry,
    TransportError,
    UsageError,
    VerificationError,
)
from ..protocol.fetch import sign_fetch
from ..protocol.identity import Identity
from ..protocol.jobs import JobRequest, sign_job
from ..protocol.messages import AcceptedMessage
from .backoff import PeerBackoff
from .ranking import Candidate
from .transport import NodeAddress, NodeTransport, OnEvent, job_deadline_s

log = logging.getLogger("pointillist.requester")

#: Nodes that may fail for real (not merely be busy) before one job gives up.
MAX_FAILURES = 3
#: How long one job keeps looking for a node with a free slot (busy rounds, full nodes).
PATIENCE_S = 300.0
#: Pause between rounds: 1 s, doubling, at most this.
MAX_ROUND_PAUSE_S = 8.0


class NoNodeSucceeded(PointillistError):
    """Every attempt failed; the message lists each node and why."""

    def __init__(self, attempts: list["Attempt"], why: str = "") -> None:
        self.attempts = attempts
        # Busy rounds repeat the same answer from the same node: say it once, with a count.
        counts: dict[tuple[str, str], int] = {}
        for a in attempts:
            counts[(a.peer_id, a.detail)] = counts.get((a.peer_id, a.detail), 0) + 1
        lines = "; ".join(f"{peer[:20]}…: {detail}" + (f" (×{n})" if n > 1 else "")
                          for (peer, detail), n in counts.items())
        summary = f"no node completed the job ({len(attempts)} attempt(s))"
        super().__init__(": ".join(part for part in (summary, why, lines) if part))


@dataclass(frozen=True)
class Attempt:
    peer_id: str
    outcome: str  # "verified", "fetched", "busy", "refused", "failed"
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    """A verified result: the PNG, its ``VerificationReport``, the job as signed, where it ran."""

    png: bytes
    report: object
    request: JobRequest
    node: NodeAddress
    attempts: list[Attempt] = field(default_factory=list)


def verify_result(png: bytes, request: JobRequest):
    """The ``VerificationReport`` of ``png`` if it is the attested result of exactly ``request``,
    signed by the node it was sent to; ``VerificationError`` otherwise."""
    from ..attestation.verify import verify_image

    report = verify_image(png, expect_node=request.node)
    if not report.ok:
        failed = next(c for c in report.checks if c.ok is False)
        raise VerificationError(f"the node's image did not verify ({failed.name}: {failed.detail})")
    if report.job is None or report.job != request:
        raise VerificationError("the image embeds a different job than the one we signed")
    return report


@dataclass
class Hooks:
    """What the caller wants to hear about; every hook is optional."""

    on_attempt: Callable[[NodeAddress], None] | None = None
    on_accepted: Callable[[JobRequest, NodeAddress], None] | None = None
    on_event: OnEvent | None = None


class Failover:
    def __init__(
        self,
        transport: NodeTransport,
        identity: Identity,
        *,
        rank: Callable[[set[str]], list[Candidate]],
        serving: Callable[[set[str]], int] | None = None,
        backoff: PeerBackoff | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_failures: int = MAX_FAILURES,
        patience_s: float = PATIENCE_S,
        attempt_timeout_s: float | None = None,
    ) -> None:
        """``rank(exclude)``: candidates with a free slot, best first, none of ``exclude``.
        ``serving(exclude)``: how many nodes (full or not) serve the model outside ``exclude``;
        without it, an empty ranking is always worth waiting for."""
        self.transport = transport
        self.identity = identity
        self.rank = rank
        self.serving = serving
        self.backoff = backoff
        self.wall_clock = wall_clock
        self.max_failures = max_failures
        self.patience_s = patience_s
        self.attempt_timeout_s = attempt_timeout_s

    async def run(self, make_request: Callable[[str], JobRequest], hooks: Hooks | None = None) -> Outcome:
        hooks = hooks or Hooks()
        deadline = trio.current_time() + self.patience_s
        attempts: list[Attempt] = []
        failed: set[str] = set()
        for round_no in itertools.count():
            if round_no:
                pause = min(MAX_ROUND_PAUSE_S, 2.0 ** (round_no - 1), deadline - trio.current_time())
                if pause <= 0:
                    raise NoNodeSucceeded(attempts, f"no node had a free slot within {self.patience_s:.0f} s")
                await trio.sleep(pause)
            candidates = [c for c in self.rank(set(failed)) if c.peer_id not in failed]
            if not candidates and self.serving is not None and self.serving(set(failed)) == 0:
                raise NoNodeSucceeded(attempts, "no other node serves the model" if failed else "no node serves the model")
            for candidate in candidates:
                if len(failed) >= self.max_failures:
                    raise NoNodeSucceeded(attempts)
                outcome = await self._try(candidate, make_request(candidate.peer_id), hooks, attempts)
                if outcome is not None:
                    return outcome
                if attempts[-1].outcome in ("refused", "failed"):
                    failed.add(candidate.peer_id)
            if len(failed) >= self.max_failures:
                raise NoNodeSucceeded(attempts)
        raise AssertionError("itertools.count() ended")

    async def _try(self, candidate: Candidate, request: JobRequest, hooks: Hooks,
                   attempts: list[Attempt]) -> Outcome | None:
        """One attempt; appends its ``Attempt``; returns the outcome only on success."""
        node = candidate.address
        if node is None:
            attempts.append(Attempt(candidate.peer_id, "failed", "its record lists no address of its own"))
            return None
        if hooks.on_attempt:
            hooks.on_attempt(node)
        try:
            png, how = await self._run_one(node, request, candidate.estimate_s, hooks)
            report = verify_result(png, request)
        except JobRejected as exc:
            retry = exc.code.retry
            if retry is Retry.LATER:
                attempts.append(Attempt(node.peer_id, "busy", exc.diagnostics()))
                return None
            attempts.append(Attempt(node.peer_id, "refused" if retry is Retry.ELSEWHERE else "failed",
                                    exc.diagnostics()))
            if retry is Retry.ELSEWHERE_AND_AVOID:
                self._avoid(node.peer_id)
        except (TransportError, RemoteError, VerificationError, UsageError) as exc:
            attempts.append(Attempt(node.peer_id, "failed", exc.diagnostics()))
            self._avoid(node.peer_id)
        else:
            if self.backoff is not None:
                self.backoff.succeeded(node.peer_id)
            attempts.append(Attempt(node.peer_id, how))
            return Outcome(png, report, request, node, attempts)
        log.info("node %s: %s", node.peer_id, attempts[-1].detail)
        return None

    async def _run_one(self, node: NodeAddress, request: JobRequest, estimate_s: float,
                       hooks: Hooks) -> tuple[bytes, str]:
        accepted = False

        def on_event(event) -> None:
            nonlocal accepted
            if isinstance(event, AcceptedMessage) and not accepted:
                accepted = True
                if hooks.on_accepted:
                    hooks.on_accepted(request, node)
            if hooks.on_event:
                hooks.on_event(event)

        timeout = self.attempt_timeout_s or job_deadline_s(request)
        try:
            return await self.transport.run_job(node, sign_job(self.identity, request), request, on_event, timeout), "verified"
        except TransportError as exc:
            if not accepted:
                raise
            # The node had the job: it finishes it and keeps the result, unless it died.
            log.info("connection to %s broke after it accepted job %s (%s); fetching", node.peer_id,
                     request.job_id, exc)
            patience = max(5.0, 2 * estimate_s) if math.isfinite(estimate_s) else 30.0
            try:
                png = await fetch_when_done(self.transport, self.identity, node, request.job_id, patience,
                                            wall_clock=self.wall_clock)
                return png, "fetched"
            except (TransportError, JobRejected, RemoteError) as fetch_exc:
                raise TransportError(f"{exc.diagnostics()}; fetching the result failed too: "
                                     f"{fetch_exc.diagnostics()}") from exc

    def _avoid(self, peer_id: str) -> None:
        if self.backoff is not None:
            self.backoff.failed(peer_id, self.wall_clock())


async def fetch_when_done(transport: NodeTransport, identity: Identity, node: NodeAddress, job_id: str,
                          patience_s: float, *, wall_clock: Callable[[], float] = time.time,
                          on_not_ready: Callable[[], None] | None = None) -> bytes:
    """Fetch a stored result, asking again while the node says ``not-found`` (it may still be
    generating) for up to ``patience_s``; ``TransportError`` at once if the node is gone.
    ``on_not_ready`` is called once, at the first ``not-found``. Checking the PNG is the caller's."""
    deadline = trio.current_time() + patience_s
    pause = 0.5
    told = False
    while True:
        envelope = sign_fetch(identity, job_id, node.peer_id, int(wall_clock()))
        try:
            return await transport.fetch(node, envelope, job_id, timeout_s=max(1.0, deadline - trio.current_time()))
        except JobRejected as exc:
            if exc.code is not ErrorCode.NOT_FOUND or trio.current_time() + pause > deadline:
                raise
        if on_not_ready and not told:
            told = True
            on_not_ready()
        await trio.sleep(pause)
        pause = min(4.0, pause * 2)
