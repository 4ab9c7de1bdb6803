"""``Requester``: the requester's side as one object — submit, fetch, list the network.

It owns discovery, ranking, backoff, failover, verification and the journal; the CLI only parses
arguments and prints. Use it inside trio::

    requester = Requester(identity, bootstrap=[...], state_dir=data_dir())
    async with requester.open() as session:          # or open(peer="/ip4/…/p2p/…")
        outcome = await session.submit(JobSpec("tiny-sd", settings))

Every result it returns has been verified (``failover.verify_result``); every job a node accepted
is in the journal before its image exists.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import trio

from ..protocol.errors import PointillistError, UsageError, VerificationError
from ..protocol.identity import Identity
from ..protocol.jobs import JobRequest, new_job_request
from ..protocol.settings import GenerationSettings, sampler_problem
from .backoff import PeerBackoff
from .failover import PATIENCE_S, Failover, Hooks, Outcome, fetch_when_done, verify_result
from .journal import Journal, JournalEntry
from .ranking import Candidate, by_standing
from .reputation import Reputation
from .transport import NodeAddress, NodeTransport

#: Jobs of one ``submit_all`` in flight at once (``submit -n 8``, several prompts).
MAX_PARALLEL = 8


@dataclass(frozen=True)
class JobSpec:
    """What to generate: a model (name, digest, or a digest prefix of ≥ 10 hex) and its settings.

    ``settings.sampler`` names an A1111 sampler (``SAMPLERS``; the job is then format version
    2) or is ``None`` (version 1: the model's own scheduler)."""

    model: str
    settings: GenerationSettings
    lifetime_s: int = 600

    def request_for(self, node: str, now: int) -> JobRequest:
        """The job signed for ``node``; ``UsageError`` for settings no node would take."""
        if self.settings.sampler is not None and (problem := sampler_problem(self.settings.sampler)) is not None:
            raise UsageError(problem)
        return new_job_request(node=node, model=self.model, now=now, lifetime_s=self.lifetime_s,
                               **dataclasses.asdict(self.settings))


@dataclass(frozen=True)
class Direct:
    """A node given by address (``--peer``) instead of found through records."""

    node: NodeAddress
    estimate_s: float = math.inf

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def address(self) -> NodeAddress:
        return self.node


class Requester:
    def __init__(self, identity: Identity, *, bootstrap: list[str] = (), state_dir: Path | None = None,
                 patience_s: float = PATIENCE_S, attempt_timeout_s: float | None = None) -> None:
        self.identity = identity
        self.bootstrap = list(bootstrap)
        self.state_dir = state_dir
        self.patience_s = patience_s
        self.attempt_timeout_s = attempt_timeout_s
        self.journal = Journal(state_dir / "jobs.jsonl") if state_dir else None

    @asynccontextmanager
    async def open(self, *, peer: str | None = None, discover: bool = True) -> AsyncIterator["Session"]:
        """A session on the network: through the bootstrap peers (records, gossip, DHT), or,
        with ``peer`` (or ``discover=False``), a plain host that dials nodes directly."""
        from ..network.host import REQUESTER_LISTEN, running_host
        from .libp2p_transport import Libp2pTransport

        if peer is not None or not discover:
            direct = _direct(peer) if peer else None
            async with running_host(self.identity, [REQUESTER_LISTEN]) as host:
                session = Session(self, Libp2pTransport(host), None, direct)
                try:
                    yield session
                finally:
                    session.close()
            return
        from ..network.overlay import open_network
        from .discovery import Discovery

        async with open_network(self.identity, [REQUESTER_LISTEN], serve_dht=False) as net:
            session = Session(self, Libp2pTransport(net.host), Discovery(net, self.bootstrap), None)
            try:
                yield session
            finally:
                session.close()


class Session:
    """An open requester: one host, shared by every job and fetch it runs."""

    def __init__(self, requester: Requester, transport: NodeTransport, discovery, direct: Direct | None) -> None:
        self.requester = requester
        self.transport = transport
        self.discovery = discovery
        self.direct = direct
        self._reached: list[str] | None = None  # bootstrap peers reached, once joined
        self._join_lock = trio.Lock()  # jobs of one submit_all join once, not each on its own
        state = requester.state_dir
        # One backoff per session: jobs running side by side share what they learn of nodes.
        self.backoff = PeerBackoff.load(state / "peer-backoff.json") if state else PeerBackoff()
        # Read once: nodes that failed a check of their work get no job (requester/reputation.py).
        self.distrusted = Reputation.load(state).distrusted() if state else set()

    def close(self) -> None:
        if self.requester.state_dir:
            self.backoff.save(self.requester.state_dir / "peer-backoff.json")

    # ---- submit -----------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, hooks: Hooks | None = None) -> Outcome:
        """Run ``spec`` on the best node that will; the verified outcome or ``PointillistError``."""
        r = self.requester
        spec.request_for(r.identity.peer_id, int(time.time()))  # bad settings fail before the network
        hooks = self._journaled(hooks or Hooks())
        rank, serving, spec = await self._ranking(spec, self.backoff)
        failover = Failover(self.transport, r.identity, rank=rank, serving=serving, backoff=self.backoff,
                            patience_s=r.patience_s, attempt_timeout_s=r.attempt_timeout_s,
                            max_failures=1 if self.direct else 3)
        return await failover.run(lambda node: spec.request_for(node, int(time.time())), hooks)

    async def submit_all(self, specs: list[JobSpec],
                         hooks_for: Callable[[int], Hooks] | None = None) -> list[Outcome | PointillistError]:
        """Several jobs on one host and its connections, up to ``MAX_PARALLEL`` at a time; one
        outcome or error per spec, in order. A job that fails does not stop the others."""
        results: list[Outcome | PointillistError | None] = [None] * len(specs)
        limit = trio.Semaphore(MAX_PARALLEL)

        async def one(i: int) -> None:
            async with limit:
                try:
                    results[i] = await self.submit(specs[i], hooks_for(i) if hooks_for else None)
                except PointillistError as exc:
                    results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(specs)):
                nursery.start_soon(one, i)
        return results  # type: ignore[return-value]

    async def _ranking(self, spec: JobSpec, backoff: PeerBackoff):
        """``(rank, serving, spec)`` for the failover: the one ``--peer`` node, or the network's."""
        if self.direct is not None:
            direct = self.direct
            return (lambda exclude: [] if direct.peer_id in exclude else [direct],
                    lambda exclude: 0 if direct.peer_id in exclude else 1, spec)
        d = self.discovery
        await self._join()
        spec = dataclasses.replace(spec, model=d.resolve_model(spec.model))
        distrusted = self.distrusted
        if not await d.wait_for_model(spec.model):
            hint = f"; {d.dht_problem}" if d.dht_problem else ""
            raise PointillistError(f"no live node serves {spec.model!r} (known nodes: {len(d.live())}; "
                                   f"see `pointillist peers`){hint}")
        if not d.serving(spec.model, distrusted):
            raise PointillistError(f"every live node serving {spec.model!r} failed a check of its work "
                                   f"({d.serving(spec.model)}; see `pointillist reputation`)")
        s = spec.settings
        avoided = backoff.avoided(time.time())
        first: list[list[Candidate]] = [await d.candidates(spec.model, s.steps, s.width, s.height, avoid=avoided,
                                                           distrusted=distrusted)]

        def rank(exclude: set[str]) -> list[Candidate]:
            if first:  # the probed ranking for the first round, fresh rankings after
                return [c for c in first.pop() if c.peer_id not in exclude]
            ranked = d.rank(spec.model, s.steps, s.width, s.height, exclude=exclude)
            return by_standing(ranked, backoff.avoided(time.time()), distrusted)

        return rank, (lambda exclude: d.serving(spec.model, exclude | distrusted)), spec

    # ---- fetch ------------------------------------------------------------------------------

    async def fetch(self, job_id: str, node: NodeAddress | None = None, patience_s: float = 60.0,
                    on_not_ready: Callable[[NodeAddress], None] | None = None):
        """The verified result of an earlier job: from ``node``, or from the node the journal
        recorded for it; waits (up to ``patience_s``) while the node is still generating."""
        r = self.requester
        if node is None:
            entry = r.journal.find(job_id) if r.journal else None
            if entry is None:
                raise UsageError(f"job {job_id} is not in this requester's journal: give --peer <node address>")
            node = NodeAddress(entry.peer_id, entry.addr)
        png = await fetch_when_done(self.transport, r.identity, node, job_id, patience_s,
                                    on_not_ready=(lambda: on_not_ready(node)) if on_not_ready else None)
        from ..attestation.verify import verify_image

        report = verify_image(png, expect_node=node.peer_id)
        if not report.ok or report.job is None or report.job.job_id != job_id:
            raise VerificationError("the fetched image did not verify; nothing was written")
        return png, report, node

    # ---- the network ------------------------------------------------------------------------

    async def nodes(self, listen_s: float, on_joined: Callable[[list[str]], None] | None = None) -> list[tuple[object, float]]:
        """Live records with their age in seconds, after joining and listening to gossip."""
        d = self.discovery
        if d is None:
            raise UsageError("listing the network needs bootstrap peers, not --peer")
        reached = await self._join()
        if on_joined:
            on_joined(reached)
        await trio.sleep(listen_s)
        now = d.net.clock()
        return [(rec, d.net.directory.age(rec.peer_id, now)) for rec in sorted(d.live(), key=lambda rec: rec.peer_id)]

    # ---- helpers ----------------------------------------------------------------------------

    async def _join(self) -> list[str]:
        """Join through the bootstrap peers once per session; the peers reached."""
        async with self._join_lock:
            if self._reached is None:
                self._reached = await self.discovery.join(self.requester.patience_s)
            return self._reached

    def _journaled(self, hooks: Hooks) -> Hooks:
        journal = self.requester.journal
        if journal is None:
            return hooks
        outer = hooks.on_accepted

        def on_accepted(request: JobRequest, node: NodeAddress) -> None:
            journal.record(JournalEntry(request.job_id, node.peer_id, node.addr, int(time.time())))
            if outer:
                outer(request, node)

        return dataclasses.replace(hooks, on_accepted=on_accepted)


def _direct(peer: str) -> Direct:
    from ..network.host import parse_peer_addr

    info = parse_peer_addr(peer)  # UsageError for a bad address
    return Direct(NodeAddress(info.peer_id.to_base58(), peer))


__all__ = ["Direct", "Hooks", "JobSpec", "Outcome", "Requester", "Session", "verify_result"]
