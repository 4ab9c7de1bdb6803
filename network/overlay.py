"""The network a node or requester joins: one libp2p host with GossipSub (capacity records) and a
Kademlia DHT (who serves which model digest), plus the record-exchange protocol that lets a
newcomer fetch every record a peer holds at once instead of waiting for the next heartbeat.

Settings below depart from py-libp2p's defaults on purpose (measured, see docs/decisions.md):
GossipSub's internal heartbeat 1 s (default 120 s), adaptive gossip off (it stretched the
heartbeat to 60 s), forwarding rate limit 1000/s (default 10 drops records at 20 nodes), only
/meshsub/1.1 and 1.0 (1.2's IDONTWANT halves queue capacity); the services start before
``host.run()`` and stop after it, which is what avoids the "Nursery is closed" crash at shutdown.
Kademlia speaks ``/pointillist/kad/1.0.0`` only (``_speak_our_kad_protocol``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import trio
from google.protobuf.message import DecodeError
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.kad_dht import DHTMode, KadDHT
import libp2p.kad_dht.common
import libp2p.kad_dht.kad_dht
import libp2p.kad_dht.peer_routing
import libp2p.kad_dht.provider_store
import libp2p.kad_dht.value_store
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import LifecycleError, background_trio_service

from ..protocol import framing
from ..protocol.capacity import CapacityRecord, decode_record
from ..protocol.errors import FrameError, RemoteError, TransportError, UsageError, find_ours
from ..protocol.identity import Identity
from .directory import PeerDirectory
from .host import build_host, connect, full_addrs, listening, open_stream, parse_peer_addr
from .addresses import expand_wildcards
from .lan import Lan
from .relay import RelayService

log = logging.getLogger("pointillist.network")

CAPACITY_TOPIC = "/pointillist/capacity/1"
RECORDS_PROTOCOL = "/pointillist/records/1.0.0"
DHT_PREFIX = TProtocol("/pointillist")
KAD_PROTOCOL = TProtocol(f"{DHT_PREFIX}/kad/1.0.0")  # go-libp2p's rule: <prefix>/kad/1.0.0
MAX_RECORDS_PER_REPLY = 2000
PROVIDE_TIMEOUT_S = 15.0


def _speak_our_kad_protocol() -> None:
    """Make py-libp2p's Kademlia serve and dial ``KAD_PROTOCOL`` instead of ``/ipfs/kad/1.0.0``.

    ``KadDHT`` 0.8.1 stores its ``protocol_prefix`` argument and never reads it again: the handler
    it registers and every stream it opens use the module constant ``PROTOCOL_ID``, imported by
    name into four modules (and once more, lazily, by the routing table's "does this peer serve
    Kademlia" check). Left alone, a node would answer, and join, any IPFS DHT it meets. Rebinding
    the constant in each of those modules is the only switch there is; every DHT in this process
    is ours. Regression test: tests/test_libp2p_defects.py::test_kademlia_speaks_only_our_protocol.
    """
    for module in (libp2p.kad_dht.common, libp2p.kad_dht.kad_dht, libp2p.kad_dht.peer_routing,
                   libp2p.kad_dht.provider_store, libp2p.kad_dht.value_store):
        if not hasattr(module, "PROTOCOL_ID"):  # py-libp2p moved it: fail loudly, not on IPFS
            raise ImportError(f"{module.__name__}.PROTOCOL_ID is gone; revisit _speak_our_kad_protocol")
        module.PROTOCOL_ID = KAD_PROTOCOL


_speak_our_kad_protocol()


def model_key(digest: str) -> str:
    """DHT key of a model digest: the sha2-256 multihash in hex, which py-libp2p takes as is."""
    return "1220" + digest


class _SafePubsub(Pubsub):
    """Pubsub whose inbound stream handler cannot crash the host at shutdown.

    Its reader runs in the swarm's task tree and schedules work on pubsub's nursery; during
    teardown that raises "Nursery is closed to new arrivals" (or a protobuf DecodeError for a
    half-read frame) out of ``host.run()``. Those are swallowed here, anything else is not.
    """

    async def stream_handler(self, stream: Any) -> None:
        try:
            await super().stream_handler(stream)
        except (RuntimeError, LifecycleError, DecodeError) as exc:
            if isinstance(exc, RuntimeError) and "Nursery is closed" not in str(exc):
                raise
            with contextlib.suppress(Exception):
                await stream.reset()


@dataclass
class Network:
    identity: Identity
    host: IHost
    pubsub: Pubsub
    dht: KadDHT
    directory: PeerDirectory
    clock: Callable[[], float]
    #: records dropped by validation, by ``RecordRejected.reason`` ("stale": older than held)
    rejected: Counter = field(default_factory=Counter)
    #: where others reach this host: its listen addresses, then its relayed ones once reserved
    #: (a node sets ``circuit_addrs`` to ``network.relay.Reservations.addrs``)
    circuit_addrs: Callable[[], list[str]] = lambda: []

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def listen_addrs(self) -> list[str]:
        """The addresses this host listens on, wildcards expanded (network/addresses.py)."""
        return expand_wildcards(full_addrs(self.host))

    def addrs(self) -> list[str]:
        """Every address of this host, relayed ones last: for this machine's own tools (ready
        file, ``node status``). The record advertises fewer (network/addresses.py)."""
        return self.listen_addrs() + self.circuit_addrs()

    # ---- records ----------------------------------------------------------------------

    def accept_record(self, data: bytes, sender: str | None) -> CapacityRecord | None:
        """Validate a record from anywhere and keep it if newer; ``None`` if dropped."""
        now = self.clock()
        try:
            record = decode_record(data, now, sender=sender)
        except RemoteError as exc:
            self.rejected[getattr(exc, "reason", "malformed")] += 1
            log.debug("dropped record from %s: %s", sender, exc)
            return None
        if not self.directory.offer(record, now):
            return None
        self._raw[record.peer_id] = (record.seq, data)
        return record

    def raw_records(self) -> list[bytes]:
        """Signed bytes of every live record we hold, exactly as signed, for peer exchange."""
        live = {r.peer_id: r.seq for r in self.directory.live(self.clock())}
        for gone in set(self._raw) - set(live):
            del self._raw[gone]
        return [data for peer, (seq, data) in self._raw.items() if live.get(peer) == seq][:MAX_RECORDS_PER_REPLY]

    def __post_init__(self) -> None:
        self._raw: dict[str, tuple[int, bytes]] = {}

    def _validate_gossip(self, forwarder: ID, msg: Any) -> bool:
        # Runs before GossipSub forwards a message: a record that fails here goes no further.
        try:
            record = decode_record(msg.data, self.clock(), sender=ID(msg.from_id).to_base58())
        except (RemoteError, ValueError) as exc:
            self.rejected[getattr(exc, "reason", "malformed")] += 1
            log.debug("gossip from %s dropped: %s", forwarder, exc)
            return False
        held = self.directory.get(record.peer_id)
        if held is not None and record.seq < held.seq:  # older than what we hold: a replay
            self.rejected["stale"] += 1
            return False
        return True

    async def _read_gossip(self, subscription: Any) -> None:
        async for msg in subscription:
            try:
                sender = ID(msg.from_id).to_base58()
            except Exception:
                continue
            self.accept_record(msg.data, sender)

    async def publish(self, data: bytes) -> None:
        self.accept_record(data, self.peer_id)
        await self.pubsub.publish(CAPACITY_TOPIC, data)

    # ---- joining ----------------------------------------------------------------------

    async def join(self, addrs: list[str]) -> list[str]:
        """Connect to bootstrap peers, seed the DHT, fetch their records. Returns those reached."""
        reached = []
        for text in addrs:
            peer = parse_peer_addr(text)
            if peer.peer_id == self.host.get_id():
                continue
            try:
                await connect(self.host, peer)
                await self.dht.add_peer(peer.peer_id)
                await self.fetch_records(peer.peer_id)
                reached.append(text)
            except (TransportError, RemoteError) as exc:
                log.warning("bootstrap peer %s: %s", text, exc)
        return reached

    async def join_peer(self, peer: PeerInfo) -> None:
        """Join through one peer found some other way (the LAN): connect, seed the DHT, fetch its
        records. ``TransportError`` / ``RemoteError`` when it cannot be joined."""
        if self.host.get_network().get_connections(peer.peer_id):
            return  # already joined
        await connect(self.host, peer)
        await self.dht.add_peer(peer.peer_id)
        await self.fetch_records(peer.peer_id)

    async def fetch_records(self, peer_id: ID, timeout_s: float = 10.0) -> tuple[int, float]:
        """Ask a peer for every record it holds; returns (records kept, round-trip seconds)."""
        start = time.perf_counter()
        try:
            with trio.fail_after(timeout_s):
                stream = await open_stream(self.host, peer_id, RECORDS_PROTOCOL)
                try:
                    await framing.write_frame(stream, {"t": "records?"}, framing.MAX_REQUEST_FRAME)
                    reply = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
        except trio.TooSlowError as exc:
            raise TransportError(f"peer {peer_id} did not send its records in time") from exc
        except FrameError as exc:
            raise RemoteError(f"peer {peer_id} sent a bad records frame: {exc}") from exc
        except Exception as exc:
            if framing.is_transport_failure(exc):
                raise TransportError(f"records from {peer_id}: {type(exc).__name__}") from exc
            raise
        rtt = time.perf_counter() - start
        records = reply.get("records") if reply.get("t") == "records" else None
        if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
            raise RemoteError(f"peer {peer_id} sent a malformed records reply")
        kept = sum(self.accept_record(r, None) is not None for r in records[:MAX_RECORDS_PER_REPLY])
        return kept, rtt

    async def _serve_records(self, stream: Any) -> None:
        try:
            with trio.fail_after(10):
                request = await framing.read_frame(stream, 1024)
                if request.get("t") != "records?":
                    raise FrameError("expected a records? request")
                await framing.write_frame(stream, {"t": "records", "records": self.raw_records()})
        except (FrameError, TransportError, trio.TooSlowError) as exc:
            log.debug("records stream: %s", exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        except Exception:
            log.exception("records stream failed")
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        with contextlib.suppress(Exception):
            await stream.close()

    async def keep_peers(self, target: int) -> int:
        """Connect to known nodes (from their records) until ``target`` peers are connected.

        A star around the bootstrap peer is fragile for gossip (the hub prunes its mesh to D and
        leaves reach each other only through lazy gossip), so nodes keep a few direct peers of
        their own; a bounded number, so connections do not grow with the network.
        """
        import random

        connected = set(self.host.get_connected_peers())
        candidates = [r for r in self.directory.live(self.clock())
                      if r.peer_id != self.peer_id and ID.from_base58(r.peer_id) not in connected]
        random.shuffle(candidates)
        for record in candidates:
            if len(connected) >= target:
                break
            peer = _own_address(record)  # a record may list others' addresses: dial only its own
            if peer is None:
                continue
            try:
                await connect(self.host, peer, timeout_s=5)
                await self.dht.add_peer(peer.peer_id)
                connected.add(peer.peer_id)
            except TransportError:
                continue
        return len(connected)

    # ---- DHT --------------------------------------------------------------------------

    async def provide_models(self, digests: list[str]) -> None:
        """Announce each model digest in the DHT. Failures are logged, never raised: the node
        still serves and gossips its records, and tries again at the next re-provide."""
        for digest in digests:
            problem = await self._provide(digest)
            if problem is None:
                continue
            if self.dht.get_routing_table_size() == 0:  # a lone node: nobody to tell yet
                log.debug("model %s not announced in the DHT: %s", digest, problem)
            else:
                log.warning("model %s not announced in the DHT: %s", digest, problem)

    async def _provide(self, digest: str) -> str | None:
        """Why announcing ``digest`` failed, or ``None`` if at least one DHT peer took it."""
        with trio.move_on_after(PROVIDE_TIMEOUT_S):
            try:
                accepted = await self.dht.provide(model_key(digest))
            except Exception as exc:  # py-libp2p raises several unrelated types here
                return f"{type(exc).__name__}: {exc}"
            return None if accepted else "no DHT peer accepted the announcement"
        return f"no DHT peer answered within {PROVIDE_TIMEOUT_S:.0f} s"

    async def find_model_providers(self, digest: str, timeout_s: float = 10.0) -> list[PeerInfo]:
        """Peers announcing ``digest`` in the DHT, de-duplicated (py-libp2p repeats them).

        ``[]`` means the lookup ran and nobody announces the model. ``TransportError`` means the
        lookup itself failed: no DHT peer to ask, or py-libp2p raised. A lookup still running
        after ``timeout_s`` returns the providers found so far.
        """
        key = model_key(digest)
        with trio.move_on_after(timeout_s):
            try:
                return self._other_providers(await self._find_providers(digest))
            except TransportError:
                raise
            except Exception as exc:  # py-libp2p raises several unrelated types here
                raise TransportError(f"DHT lookup of {digest} failed: {type(exc).__name__}: {exc}") from exc
        # Timed out: py-libp2p stores each provider as it learns of it, so none found is lost.
        return self._other_providers(self.dht.provider_store.get_providers(bytes.fromhex(key)))

    async def _find_providers(self, digest: str) -> list[PeerInfo]:
        key = model_key(digest)
        if not self.dht.provider_store.get_providers(bytes.fromhex(key)) and self.dht.get_routing_table_size() == 0:
            # py-libp2p answers [] here, which would read as "nobody serves it".
            raise TransportError(f"no DHT peer to ask who serves {digest}")
        return await self.dht.find_providers(key, count=100)

    def _other_providers(self, infos: list[PeerInfo]) -> list[PeerInfo]:
        found: dict[ID, PeerInfo] = {}
        for info in infos:
            if info.peer_id != self.host.get_id():
                found.setdefault(info.peer_id, info)
        return list(found.values())


def _own_address(record: CapacityRecord) -> PeerInfo | None:
    """The first address in ``record`` that dials the peer the record describes."""
    for addr in record.addrs:
        try:
            peer = parse_peer_addr(addr)
        except UsageError:
            continue
        if peer.peer_id.to_base58() == record.peer_id:
            return peer
    return None


@asynccontextmanager
async def open_network(
    identity: Identity,
    listen: list[str],
    *,
    serve_dht: bool = True,
    clock: Callable[[], float] = time.time,
    relay: RelayService | None = None,
    mdns: bool = False,
) -> AsyncIterator[Network]:
    """The host on ``listen`` with gossip, the DHT and records; with ``relay``, it also relays
    for nodes that cannot be dialed (network/relay.py); with ``mdns``, it finds and joins peers on
    the local network (network/lan.py)."""
    host = build_host(identity, mdns=mdns)
    gossipsub = GossipSub(
        protocols=[MESHSUB_V11, MESHSUB_V10],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        adaptive_gossip_enabled=False,
        max_messages_per_topic_per_second=1000.0,
    )
    pubsub = _SafePubsub(host, gossipsub)
    dht = KadDHT(host, DHTMode.SERVER if serve_dht else DHTMode.CLIENT, protocol_prefix=DHT_PREFIX)
    net = Network(identity, host, pubsub, dht, PeerDirectory(), clock)
    pubsub.set_topic_validator(CAPACITY_TOPIC, net._validate_gossip, is_async_validator=False)
    host.set_stream_handler(TProtocol(RECORDS_PROTOCOL), net._serve_records)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for service in (pubsub, gossipsub, dht):
                await stack.enter_async_context(background_trio_service(service))
            # ``listening`` closes every connection on the way out, before the services stop.
            await stack.enter_async_context(listening(host, listen, relay))
            subscription = await pubsub.subscribe(CAPACITY_TOPIC)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(net._read_gossip, subscription)
                if mdns:
                    nursery.start_soon(Lan(net.peer_id, net.join_peer).run)
                try:
                    yield net
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        ours = find_ours(group)
        if ours is None:
            raise
        raise ours from group


__all__ = ["CAPACITY_TOPIC", "RECORDS_PROTOCOL", "Network", "model_key", "open_network"]
