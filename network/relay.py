"""Circuit relay v2 (issue 10): reaching a node that cannot be dialed, through one that can.

Every host runs the relay protocol's *stop* side (it accepts connections relayed to it) and can
dial ``/p2p-circuit`` addresses (``dial_circuit``; ``network.host.connect`` uses it). A node whose
operator allows it also runs the *hop* side, with limits (``RelayLimits`` from policy.toml's
``[relay]``). A node given relays (``--relay``, ``[node] relays``) reserves a slot on each, keeps
the reservation renewed with its own backoff, and advertises ``<relay>/p2p-circuit/p2p/<self>`` in
its capacity record.

py-libp2p 0.8.1 carries the protocol (``libp2p.relay.circuit_v2``) but does not wire it; its
defects met here and guarded (docs/decisions.md, tests/test_relay.py):

- the swarm never dials a ``/p2p-circuit`` address (``Swarm.dial_peer`` drops them): we dial
  through ``CircuitV2Transport.dial``, whose connection the swarm then reuses for streams;
- the relay keys its active circuits by peer ID, so closing one circuit reset another circuit of
  the same peer (``_PerCircuitRelay``);
- the transport's reservation refresher spins without sleeping once a refresh fails, and never
  makes a lapsed reservation again: we renew ourselves (``Reservations``), with backoff;
- a dialer with the default relay config reserves a slot for itself on every dial, using up the
  relay's reservations: dialers use the STOP role only.
"""

from __future__ import annotations

import logging
import time
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from ..protocol.errors import TransportError, one_line

log = logging.getLogger("pointillist.network")

CIRCUIT = "/p2p-circuit"
#: DCUtR's first step dials the peer's known addresses directly and waits this long (py-libp2p
#: waits its default 10 s, on addresses that are often a home's private ones).
DCUTR_DIAL_TIMEOUT_S = 2
#: After reaching a peer through a relay, wait at most this long for DCUtR to make the connection
#: direct before using the relayed one. Both sides start a punch at once; where one succeeds it
#: took 0.1 s (tests/test_nat_netns.py) to 2.2 s (an early prototype); where none can, this is
#: the relayed job's extra latency (bench/bench_relay.py).
DIRECT_WAIT_S = 2.5
#: A reservation is renewed this long before it expires (py-libp2p renews 30 s before).
RENEW_BEFORE_S = 60.0
#: Waits between failed reservation attempts: 2 s, doubling, at most this.
MAX_BACKOFF_S = 60.0
RESERVE_TIMEOUT_S = 15.0
#: Relays a node picks for itself when its operator named none and it is private.
MAX_AUTO_RELAYS = 2
#: An automatic relay is dropped after this many failures in a row (another is tried).
AUTO_GIVE_UP = 3
#: How often the automatic choice looks for relays (until it holds ``MAX_AUTO_RELAYS``).
AUTO_LOOK_S = 5.0

_relaying: "weakref.WeakKeyDictionary[IHost, Relaying]" = weakref.WeakKeyDictionary()


def is_circuit(addr: Any) -> bool:
    return CIRCUIT in str(addr)


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """The address of ``peer_id`` through the relay at ``relay_addr`` (which ends in /p2p/<relay>)."""
    return f"{relay_addr}{CIRCUIT}/p2p/{peer_id}"


@dataclass(frozen=True)
class RelayService:
    """What a relaying node allows (policy.toml ``[relay]``, node/policy.py)."""

    max_reservations: int = 32
    max_circuits: int = 8  # at once, per reserved node
    max_circuit_mb: float = 64.0  # both directions, encrypted: a job's PNG and its frames must fit
    max_circuit_s: int = 900
    reservation_ttl_s: int = 3600

    def limits(self) -> RelayLimits:
        return RelayLimits(duration=self.max_circuit_s, data=int(self.max_circuit_mb * 2**20),
                           max_circuit_conns=self.max_circuits, max_reservations=self.max_reservations,
                           reservation_ttl=self.reservation_ttl_s)


class _PerCircuitRelay(CircuitV2Protocol):
    """py-libp2p 0.8.1 keeps one "active relay" per peer ID and closes it when any circuit of that
    peer ends, so two requesters reaching one home node through the same relay cut each other off.
    Here every circuit owns and closes only its own two streams.
    Regression test: tests/test_relay.py::test_two_circuits_to_one_node_do_not_cut_each_other."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active_relays = _NeverShared()

    async def _relay_data(self, src_stream: Any, dst_stream: Any, peer_id: Any, deadline: Any = None,
                          circuit_data_limit: Any = None) -> None:
        try:
            await super()._relay_data(src_stream, dst_stream, peer_id, deadline, circuit_data_limit)
        finally:
            await self._close_stream(src_stream)
            await self._close_stream(dst_stream)


class _NeverShared(dict):
    def __setitem__(self, key: Any, value: Any) -> None:  # circuits are never found by peer ID
        pass


class Relaying:
    """The relay protocol on one host: stop side always, hop side when ``service`` is given."""

    def __init__(self, host: IHost, service: RelayService | None = None) -> None:
        self.host = host
        self.service = service
        # Direct Connection Upgrade through Relay: hole punching (or dialing back) to replace a
        # relayed connection with a direct one when both sides' NATs allow it.
        self.dcutr = DCUtRProtocol(host, dial_timeout=DCUTR_DIAL_TIMEOUT_S)
        self.protocol = _PerCircuitRelay(host, limits=service.limits() if service else None,
                                         allow_hop=service is not None)
        # STOP only: with the default (client) role, every dial would also reserve a slot.
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP))

    @asynccontextmanager
    async def running(self) -> AsyncIterator["Relaying"]:
        async with background_trio_service(self.protocol), background_trio_service(self.dcutr):
            _relaying[self.host] = self
            try:
                yield self
            finally:
                _relaying.pop(self.host, None)

    async def dial(self, peer_id: str, addr: str, direct_wait_s: float = DIRECT_WAIT_S) -> None:
        """Connect to ``peer_id`` through the relay address ``addr`` (``.../p2p-circuit``), then
        give DCUtR up to ``direct_wait_s`` to make the connection direct."""
        target = addr if addr.endswith(f"/p2p/{peer_id}") else f"{addr}/p2p/{peer_id}"
        try:
            conn = await self.transport.dial(multiaddr.Multiaddr(target))
        except Exception as exc:  # py-libp2p raises a plain ConnectionError, among others
            raise TransportError(f"cannot reach peer {peer_id} through {target}: {one_line(exc, 200)}") from exc
        await self._await_direct(conn.muxed_conn.peer_id, direct_wait_s)

    async def _await_direct(self, peer: Any, wait_s: float) -> None:
        """Until the connection to ``peer`` is direct, our own hole punch has failed, or
        ``wait_s`` passed: the other side's DCUtR may also make it direct meanwhile."""
        gave_up = trio.Event()

        async def punch() -> None:
            try:
                if not await self.dcutr.initiate_hole_punch(peer):
                    gave_up.set()
            except Exception as exc:  # a failed punch is ordinary; the relayed connection stays
                log.debug("hole punch to %s: %s", peer, exc)
                gave_up.set()

        with trio.move_on_after(wait_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(punch)
                while connection_kind(self.host, peer) != "direct" and not gave_up.is_set():
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()


def relaying_of(host: IHost) -> Relaying | None:
    return _relaying.get(host)


def is_relayed(conn: Any) -> bool:
    try:
        return conn.get_connection_type() == ConnectionType.RELAYED
    except Exception:  # a connection of another kind, or one closing
        return is_circuit(" ".join(str(a) for a in getattr(conn, "get_transport_addresses", list)()))


def connection_kind(host: IHost, peer_id: Any) -> str | None:
    """"direct" when this host has a direct connection to ``peer_id``, "relayed" when it has only
    relayed ones, ``None`` when it has none."""
    from libp2p.peer.id import ID

    peer = peer_id if isinstance(peer_id, ID) else ID.from_base58(str(peer_id))
    conns = [c for c in host.get_network().get_connections(peer) if not getattr(c, "is_closed", False)]
    if not conns:
        return None
    return "relayed" if all(is_relayed(c) for c in conns) else "direct"


class Reservations:
    """Slots reserved on relays for a node that may not be dialable: made at start, renewed
    before they expire, made again with backoff when a relay goes and comes back. ``addrs()`` are
    the circuit addresses that work now; ``on_change`` runs whenever they change.

    The relays are the operator's (``relays``) or, when there are none, up to ``max_auto`` chosen
    from ``auto()`` (a home user configures nothing: a node that AutoNAT finds private picks public
    nodes and bootstrap peers); an automatic relay that fails ``AUTO_GIVE_UP`` times in a row is
    dropped for the next candidate."""

    def __init__(self, relaying: Relaying, relays: list[str], on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, auto: Callable[[], list[str]] | None = None,
                 max_auto: int = MAX_AUTO_RELAYS) -> None:
        self.relaying = relaying
        self.relays = list(relays)
        self.on_change = on_change
        self.clock = clock
        self.auto = auto
        self.max_auto = max_auto
        self._held: dict[str, float] = {}  # relay address -> expiry (unix time)
        self._kept: set[str] = set()  # relays with a keeper task
        self._given_up: set[str] = set()
        self.first = trio.Event()  # set once any reservation was made (or every relay failed once)
        self._tried: set[str] = set()
        self._nudged = trio.Event()

    def addrs(self) -> list[str]:
        own = str(self.relaying.host.get_id())
        return [circuit_addr(relay, own) for relay in self._held]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for relay in self.relays:
                self._kept.add(relay)
                nursery.start_soon(self._keep, relay, False)
            while self.auto is not None and not self.relays:  # the operator's relays win
                for relay in self.auto():
                    if len(self._kept) >= self.max_auto:
                        break
                    if relay not in self._kept and relay not in self._given_up:
                        self._kept.add(relay)
                        nursery.start_soon(self._keep, relay, True)
                with trio.move_on_after(AUTO_LOOK_S):
                    await self._nudged.wait()
                self._nudged = trio.Event()

    def nudge(self) -> None:
        """Look for relays now (the node has just found out it is private)."""
        self._nudged.set()

    async def _keep(self, relay: str, auto: bool) -> None:
        backoff = 2.0
        failures = 0
        while True:
            try:
                expiry = await self._reserve(relay)
            except TransportError as exc:
                failures += 1
                if self._held.pop(relay, None) is not None:
                    self.on_change()
                self._tried_once(relay)
                if auto and failures >= AUTO_GIVE_UP:
                    log.info("giving up relay %s: %s", relay, exc)
                    self._kept.discard(relay)
                    self._given_up.add(relay)
                    return
                log.info("no reservation on relay %s: %s (next try in %.0f s)", relay, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            backoff, failures = 2.0, 0
            fresh = relay not in self._held
            self._held[relay] = expiry
            if fresh:
                log.info("reserved a slot on relay %s until %s", relay,
                         time.strftime("%H:%M:%S", time.localtime(expiry)))
                self.on_change()
            self._tried_once(relay)
            await trio.sleep(max(5.0, expiry - self.clock() - RENEW_BEFORE_S))

    def _tried_once(self, relay: str) -> None:
        self._tried.add(relay)
        if self._held or self._tried >= set(self.relays):
            self.first.set()

    async def _reserve(self, relay: str) -> float:
        """One reservation (or renewal) on ``relay``; its expiry, or ``TransportError``."""
        from .host import connect, open_stream, parse_peer_addr

        peer = parse_peer_addr(relay)
        with trio.move_on_after(RESERVE_TIMEOUT_S) as scope:
            await connect(self.relaying.host, peer)  # a reservation holds only while connected
            stream = await open_stream(self.relaying.host, peer.peer_id, HOP_PROTOCOL)
            try:
                made = await self.relaying.transport._make_reservation(stream, peer.peer_id)
            except Exception as exc:  # py-libp2p raises what the stream raised
                raise TransportError(f"reservation failed: {one_line(exc, 200)}") from exc
            finally:
                with trio.move_on_after(2):
                    await stream.close()
        if scope.cancelled_caught:
            raise TransportError(f"the relay did not answer within {RESERVE_TIMEOUT_S:.0f} s")
        if not made:
            raise TransportError("the relay refused the reservation (no slot, or it does not relay)")
        expiry = self.relaying.transport._reservations.get(peer.peer_id)
        return float(expiry) if expiry else self.clock() + 300.0
