"""Finding nodes for a job: join through bootstrap peers, learn their records, rank, probe.

Records come from the bootstrap peers' directories (one request each), from gossip while we
listen, and — for a model given by digest that no known node serves — from the DHT's providers of
that digest. The best few candidates are asked for their own fresh record, which also measures
their round-trip time. Joining is retried until the caller's deadline: a bootstrap peer under load
answers late rather than never.
"""

from __future__ import annotations

import logging

import trio

from ..attestation.verify import MIN_DIGEST_PREFIX  # the shortest prefix any command accepts
from ..network.host import connect, parse_peer_addr
from ..protocol.errors import RemoteError, TransportError, UsageError
from .ranking import Candidate, by_standing, rank_nodes, serving_nodes

log = logging.getLogger("pointillist.requester")

#: Candidates whose round-trip time is measured before choosing.
PROBE_TOP = 3
#: How long to listen to gossip for a node serving the model when none is known yet.
GOSSIP_WAIT_S = 6.0
_HEX = frozenset("0123456789abcdef")


def looks_like_digest(ref: str) -> bool:
    return len(ref) == 64 and set(ref) <= _HEX


class Discovery:
    """The requester's view of the network, over an open ``network.overlay.Network``."""

    def __init__(self, net, bootstrap: list[str]) -> None:
        self.net = net
        self.bootstrap = list(bootstrap)
        self.dht_problem: str | None = None  # why the last DHT lookup failed, for the final error

    def live(self):
        return self.net.directory.live(self.net.clock())

    async def join(self, patience_s: float) -> list[str]:
        """Reach at least one bootstrap peer, asking again (0.5 s, 1 s, 2 s… apart) for up to
        ``patience_s``; ``TransportError`` if none answered."""
        if not self.bootstrap:
            raise UsageError("no node given: use --peer, or --bootstrap / config.toml to find nodes")
        deadline = trio.current_time() + patience_s
        pause = 0.5
        while True:
            reached = await self.net.join(self.bootstrap)
            if reached:
                return reached
            if trio.current_time() + pause > deadline:
                raise TransportError(f"no bootstrap peer answered within {patience_s:.0f} s "
                                     f"({', '.join(self.bootstrap)})")
            await trio.sleep(pause)
            pause = min(8.0, pause * 2)

    def resolve_model(self, ref: str) -> str:
        """``ref`` as typed, or the full digest a hex prefix (≥ 10 digits) of a known model
        stands for: ``peers`` and error messages show short digests, and users type them."""
        text = ref.strip().lower()
        if looks_like_digest(text) or not (MIN_DIGEST_PREFIX <= len(text) < 64 and set(text) <= _HEX):
            return ref
        if any(m.name == ref for r in self.live() for m in r.models):
            return ref  # a model whose *name* looks like hex
        matches = {m.digest for r in self.live() for m in r.models if m.digest.startswith(text)}
        if len(matches) > 1:
            raise UsageError(f"digest prefix {ref} matches {len(matches)} models; give more digits")
        return matches.pop() if matches else ref

    def rank(self, model: str, steps: int, width: int, height: int, exclude: set[str] = frozenset(),
             latency: dict[str, float] | None = None) -> list[Candidate]:
        return rank_nodes(self.live(), model, steps, width, height, latency, exclude=exclude | {self.net.peer_id})

    def serving(self, model: str, exclude: set[str] = frozenset()) -> int:
        return serving_nodes(self.live(), model, exclude | {self.net.peer_id})

    async def wait_for_model(self, model: str, patience_s: float = GOSSIP_WAIT_S) -> bool:
        """Listen to gossip until some live node serves ``model`` (full or not), at most
        ``patience_s``; also asks the DHT when ``model`` is a digest. Returns whether one did."""
        if self.serving(model):
            return True
        if looks_like_digest(model):
            await self._ask_providers(model)
        with trio.move_on_after(patience_s):
            while not self.serving(model):
                await trio.sleep(0.25)
        return self.serving(model) > 0

    async def candidates(self, model: str, steps: int, width: int, height: int,
                         avoid: set[str] = frozenset(), distrusted: set[str] = frozenset()) -> list[Candidate]:
        """Ranked candidates, the best few probed for a fresh record and their round-trip time,
        ordered by ``ranking.by_standing`` (backoff last, distrusted nodes left out)."""
        ranked = by_standing(self.rank(model, steps, width, height), distrusted=distrusted)
        latency: dict[str, float] = {}
        for candidate in ranked[:PROBE_TOP]:
            try:
                peer = parse_peer_addr(candidate.address.addr) if candidate.address else None
                if peer is None:
                    raise UsageError("no address of its own")
                await connect(self.net.host, peer, timeout_s=5)
                _, latency[candidate.peer_id] = await self.net.fetch_records(peer.peer_id, timeout_s=5)
            except (TransportError, RemoteError, UsageError) as exc:
                log.info("node %s did not answer a probe: %s", candidate.peer_id, exc)
                latency[candidate.peer_id] = float("inf")
        ranked = self.rank(model, steps, width, height, latency=latency)
        return by_standing(ranked, avoid, distrusted)

    async def _ask_providers(self, digest: str) -> None:
        try:
            providers = await self.net.find_model_providers(digest)
        except TransportError as exc:
            self.dht_problem = exc.diagnostics()
            log.info("DHT lookup of %s failed: %s", digest, exc)
            return
        for info in providers:
            try:
                await connect(self.net.host, info)
                await self.net.fetch_records(info.peer_id)
            except (TransportError, RemoteError) as exc:
                log.info("provider %s: %s", info.peer_id, exc)
