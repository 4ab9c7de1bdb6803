"""The requester's side of the network: find nodes for a job, run it, verify, fail over.

A job is signed for one node; trying another node means signing a new job for it (same
settings, new job id). An image is returned only if its attestation verifies, is signed by the
node we asked, and embeds exactly the job we signed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from libp2p.abc import IHost
from libp2p.peer.peerinfo import PeerInfo

from ..protocol.errors import JobRejected, PointillistError, RemoteError, TransportError, UsageError, VerificationError
from ..protocol.identity import Identity
from ..protocol.jobs import JobRequest, sign_job
from .transport import run_job
from ..network.host import connect, parse_peer_addr
from .ranking import Candidate, rank_nodes

log = logging.getLogger("pointillist.requester")

#: How many nodes one ``submit`` tries before giving up.
MAX_ATTEMPTS = 3
#: Candidates whose round-trip time is measured before choosing.
PROBE_TOP = 3


class NoNodeSucceeded(PointillistError):
    """Every attempt failed; the message lists each node and why."""

    def __init__(self, attempts: list[tuple[str, str]]) -> None:
        self.attempts = attempts
        lines = "; ".join(f"{peer[:20]}…: {why}" for peer, why in attempts) or "no node had a free slot"
        super().__init__(f"no node completed the job ({len(attempts)} attempt(s)): {lines}")


def looks_like_digest(ref: str) -> bool:
    return len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)


async def run_and_verify(
    host: IHost,
    peer: PeerInfo,
    identity: Identity,
    request: JobRequest,
    on_event: Callable[[Any], None] | None = None,
    timeout: float | None = None,
):
    """Sign ``request``, run it on ``peer`` and return ``(png, report)`` if and only if it verifies."""
    from ..attestation.verify import verify_image

    envelope = sign_job(identity, request)
    png = await run_job(host, peer, envelope, request, on_event, deadline_s=timeout)
    report = verify_image(png, expect_node=request.node)
    if not report.ok:
        failed = next(c for c in report.checks if c.ok is False)
        raise VerificationError(f"the node's image did not verify ({failed.name}: {failed.detail})")
    if report.job is None or report.job != request:
        raise VerificationError("the image embeds a different job than the one we signed")
    return png, report


async def find_candidates(
    net, bootstrap: list[str], model: str, steps: int, width: int, height: int, avoid: set[str] = frozenset()
) -> list[Candidate]:
    """Join through ``bootstrap``, learn the network's records, and rank nodes for this job.

    Records come from the bootstrap peers' directories (one request each) and, for a model given
    by digest that no known node serves, from the DHT's providers of that digest. The best few
    are asked for their own fresh record, which also measures their round-trip time.
    """
    if not bootstrap:
        raise UsageError("no node given: use --peer, or --bootstrap / config.toml to find nodes")
    if not await net.join(bootstrap):
        raise TransportError(f"no bootstrap peer answered ({', '.join(bootstrap)})")
    now = net.clock()
    ranked = rank_nodes(net.directory.live(now), model, steps, width, height, exclude={net.peer_id})
    if not ranked and looks_like_digest(model):
        for info in await net.find_model_providers(model):
            try:
                await connect(net.host, info)
                await net.fetch_records(info.peer_id)
            except (TransportError, RemoteError) as exc:
                log.info("provider %s: %s", info.peer_id, exc)
        ranked = rank_nodes(net.directory.live(net.clock()), model, steps, width, height, exclude={net.peer_id})
    latency: dict[str, float] = {}
    for candidate in ranked[:PROBE_TOP]:
        record = candidate.record
        try:
            peer = _peer_info(record)
            await connect(net.host, peer)
            _, rtt = await net.fetch_records(peer.peer_id, timeout_s=5)
            latency[record.peer_id] = rtt
        except (TransportError, RemoteError, UsageError) as exc:
            log.info("node %s did not answer a probe: %s", record.peer_id, exc)
            latency[record.peer_id] = float("inf")
    ranked = rank_nodes(net.directory.live(net.clock()), model, steps, width, height, latency, exclude={net.peer_id})
    # Nodes in backoff go last rather than nowhere: a recovered node beats no node at all.
    return [c for c in ranked if c.record.peer_id not in avoid] + [c for c in ranked if c.record.peer_id in avoid]


RETRYABLE_BUSY = {"busy", "rate-limited"}


async def submit_to_best(
    net,
    identity: Identity,
    candidates: list[Candidate],
    make_request: Callable[[str], JobRequest],
    on_attempt: Callable[[str], None] | None = None,
    on_event: Callable[[Any], None] | None = None,
    timeout: float | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    backoff=None,
    rerank: Callable[[set[str]], list[Candidate]] | None = None,
    busy_rounds: int = 4,
):
    """Try candidates best first; return ``(png, report, request)`` of the first verified image.

    A node that fails (unreachable, dies, times out, refuses, sends an image that does not
    verify) is not tried again in this submit and is put in ``backoff``. A node that is only
    busy is tried again after a pause: when every candidate of a round answered busy, wait
    (1 s, 2 s, 4 s…), re-rank on the records gossip brought meanwhile, and go again. The final
    error lists every attempt.
    """
    attempts: list[tuple[str, str]] = []
    failed: set[str] = set()
    tried_fail = 0
    for round_no in range(busy_rounds + 1):
        if round_no:
            await _sleep(min(8.0, 2.0 ** (round_no - 1)))
            candidates = rerank(failed) if rerank else [c for c in candidates if c.record.peer_id not in failed]
        for candidate in candidates:
            record = candidate.record
            if record.peer_id in failed:
                continue
            if tried_fail >= max_attempts:
                raise NoNodeSucceeded(attempts)
            request = make_request(record.peer_id)
            if on_attempt:
                on_attempt(record.peer_id)
            try:
                peer = _peer_info(record)
                png, report = await run_and_verify(net.host, peer, identity, request, on_event, timeout)
                if backoff is not None:
                    backoff.succeeded(record.peer_id)
                return png, report, request
            except JobRejected as exc:
                attempts.append((record.peer_id, exc.diagnostics()))
                if exc.code in RETRYABLE_BUSY:
                    continue
                _fail(record.peer_id, failed, backoff, net)
                tried_fail += 1
            except (TransportError, RemoteError, VerificationError, UsageError) as exc:
                attempts.append((record.peer_id, exc.diagnostics()))
                _fail(record.peer_id, failed, backoff, net)
                tried_fail += 1
            log.info("node %s failed: %s", record.peer_id, attempts[-1][1])
        if candidates and not any(c.record.peer_id not in failed for c in candidates):
            break  # every candidate failed for real
        if not candidates and rerank is None:
            break
        # Otherwise nodes were busy, or every one was full when ranked: wait for capacity.
    raise NoNodeSucceeded(attempts)


async def _sleep(seconds: float) -> None:
    import trio

    await trio.sleep(seconds)


def _fail(peer_id: str, failed: set[str], backoff, net) -> None:
    failed.add(peer_id)
    if backoff is not None:
        backoff.failed(peer_id, net.clock())


def _peer_info(record) -> PeerInfo:
    from ..network.overlay import _own_address

    peer = _own_address(record)
    if peer is None:
        raise UsageError(f"node {record.peer_id} advertises no usable address")
    return peer
