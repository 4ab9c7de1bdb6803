"""Choosing a node for a job: pure ranking over the directory.

Eligible: serves the requested model (by name or digest), accepts jobs, has a free queue slot,
and its largest side covers the request. Ranked by estimated time to finish: the job's steps at
the node's measured speed, scaled by pixels relative to its reference size, plus one job's worth
of waiting per queued job, plus the observed network latency when we have one, plus
``COLD_MODEL_S`` when the node's record says the model is not on its device (it must load it
first), so among otherwise similar nodes a warm one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.capacity import CapacityRecord
from .transport import NodeAddress


#: What loading a cold model costs before the job starts: SD-1.5 from RAM to a GPU takes a few
#: seconds, from disk tens of seconds; one figure, since the record does not say which.
COLD_MODEL_S = 15.0


@dataclass(frozen=True)
class Candidate:
    record: CapacityRecord
    estimate_s: float

    @property
    def peer_id(self) -> str:
        return self.record.peer_id

    @property
    def address(self) -> NodeAddress | None:
        """The record's first address that names its own peer: a record may list addresses of
        others (a relay, a stale one), and only the node itself is worth dialing for its job."""
        suffix = "/p2p/" + self.record.peer_id
        for addr in self.record.addrs:
            if addr.endswith(suffix):
                return NodeAddress(self.record.peer_id, addr)
        return None


def estimate_seconds(record: CapacityRecord, steps: int, width: int, height: int, latency_s: float = 0.0) -> float:
    speed = record.speed
    if speed.steps_per_s <= 0:
        return float("inf")
    pixel_ratio = (width * height) / (speed.ref_width * speed.ref_height)
    one_job = steps / speed.steps_per_s * pixel_ratio
    queued = max(0, record.queue_size - record.queue_free)
    return one_job * (1 + queued) + latency_s


def serving_nodes(records: list[CapacityRecord], model: str, exclude: set[str] = frozenset()) -> int:
    """How many nodes serve ``model`` and accept jobs at all, with a free slot or not."""
    return sum(1 for r in records if r.accepting and r.peer_id not in exclude and r.serves(model) is not None)


def rank_nodes(
    records: list[CapacityRecord],
    model: str,
    steps: int,
    width: int,
    height: int,
    latency_s: dict[str, float] | None = None,
    exclude: set[str] = frozenset(),
) -> list[Candidate]:
    latency_s = latency_s or {}
    out = []
    for r in records:
        served = r.serves(model)
        if served is None or not r.accepting or r.queue_free <= 0 or r.peer_id in exclude:
            continue
        if max(width, height) > served.max_side:
            continue
        estimate = estimate_seconds(r, steps, width, height, latency_s.get(r.peer_id, 0.0))
        out.append(Candidate(r, estimate + (0.0 if served.warm else COLD_MODEL_S)))
    out.sort(key=lambda c: (c.estimate_s, c.record.peer_id))
    return out


def by_standing(ranked: list[Candidate], avoid: set[str] = frozenset(),
                distrusted: set[str] = frozenset()) -> list[Candidate]:
    """``ranked`` without the nodes that failed a check of their work (``requester.reputation``),
    and with the nodes in backoff (``avoid``) last rather than nowhere: a recovered node beats none,
    a node caught signing what it did not run does not."""
    kept = [c for c in ranked if c.peer_id not in distrusted]
    return [c for c in kept if c.peer_id not in avoid] + [c for c in kept if c.peer_id in avoid]
