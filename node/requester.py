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
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from ..protocol.errors import JobRejected, PointillistError, RemoteError, TransportError, UsageError, VerificationError
from ..protocol.identity import Identity
from ..protocol.jobs import JobRequest, sign_job
from .client import run_job
from .p2p import connect, parse_peer_addr
from .selection import Candidate, rank_nodes

log = logging.getLogger("pointillist.requester")

#: How many nodes one ``submit`` tries before giving up.
MAX_ATTEMPTS = 3
#: Candidates whose round-trip time is measured before choosing.
PROBE_TOP = 3


class NoNodeSucceeded(PointillistError):
    """Every attempt failed; the message lists each node and why."""

    def __init__(self, attempts: list[tuple[str, str]]) -> None:
        self.attempts = attempts
        lines = "; ".join(f"{peer[:20]}…: {why}" for peer, why in attempts) or "no node was tried"
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


async def find_candidates(net, bootstrap: list[str], model: str, steps: int, width: int, height: int) -> list[Candidate]:
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
    return rank_nodes(net.directory.live(net.clock()), model, steps, width, height, latency, exclude={net.peer_id})


async def submit_to_best(
    net,
    identity: Identity,
    candidates: list[Candidate],
    make_request: Callable[[str], JobRequest],
    on_attempt: Callable[[str], None] | None = None,
    on_event: Callable[[Any], None] | None = None,
    timeout: float | None = None,
    max_attempts: int = MAX_ATTEMPTS,
):
    """Try candidates best first; return ``(png, report, request)`` of the first verified image."""
    attempts: list[tuple[str, str]] = []
    for candidate in candidates[:max_attempts]:
        record = candidate.record
        request = make_request(record.peer_id)
        if on_attempt:
            on_attempt(record.peer_id)
        try:
            peer = _peer_info(record)
            png, report = await run_and_verify(net.host, peer, identity, request, on_event, timeout)
            return png, report, request
        except (JobRejected, TransportError, RemoteError, VerificationError) as exc:
            attempts.append((record.peer_id, exc.diagnostics()))
            log.info("node %s failed: %s", record.peer_id, exc)
    if not candidates:
        raise NoNodeSucceeded([])
    raise NoNodeSucceeded(attempts)


def _peer_info(record) -> PeerInfo:
    for addr in record.addrs:
        try:
            info = parse_peer_addr(addr)
        except UsageError:
            continue
        if info.peer_id == ID.from_base58(record.peer_id):
            return info
    raise UsageError(f"node {record.peer_id} advertises no usable address")
