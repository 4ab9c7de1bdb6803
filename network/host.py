"""The libp2p boundary: building hosts, listening, dialing and closing. Everything
libp2p-specific that more than one module needs lives here, and libp2p errors become ours here.

Hosts speak exactly TCP + Noise + yamux (no TLS/secio/plaintext fallback is offered), and allow one
connection per peer: py-libp2p otherwise waits out a 250 ms "happy eyeballs" timer per dial.
Workarounds for py-libp2p 0.8.1 defects are listed in docs/decisions.md, each with its test.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetwork
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from ..protocol.errors import TransportError, UsageError, find_ours, one_line
from ..protocol.framing import is_transport_failure
from ..protocol.identity import Identity
from .relay import RelayService, Relaying, is_circuit, relaying_of

log = logging.getLogger("pointillist.network")

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
#: A requester listens on every interface, any free port: a node behind NAT can then reach it
#: back (DCUtR's connection reversal, or a simultaneous open), so jobs leave the relay. It serves
#: nothing but the libp2p basics (identify, ping, the relay's stop side, DCUtR) to Noise peers.
REQUESTER_LISTEN = "/ip4/0.0.0.0/tcp/0"
DIAL_TIMEOUT_S = 10.0
#: Longest we wait for our side of closing every connection (GO_AWAY written, socket closed).
CLOSE_BOUND_S = 2.0


# ---- logging ----------------------------------------------------------------------------

# py-libp2p cuts its logger off from the application's handlers when imported (no handler,
# propagate=False), so its warnings reach stderr through logging's last-resort handler whatever
# the application configured. Re-attach it; the CLI's handler decides what is shown.
logging.getLogger("libp2p").propagate = True


class _OrdinaryPeerBehaviour(logging.Filter):
    """Turn py-libp2p's ERROR records for ordinary peer behaviour into one DEBUG line of ours.

    Every connection from a peer without gossip (a requester's bare host) logged a seven-line
    ERROR: our pubsub opens a GossipSub stream to each new peer, the peer answers "na", and
    ``BasicHost.new_stream`` logs that before raising ``StreamFailure`` to pubsub, which copes.
    A peer that hangs up at the wrong moment logs more ERRORs (multiselect write/read failed,
    yamux "Error in handle_incoming ... ConnectionClosedError"). Each restates an exception that
    py-libp2p also hands to its caller, or a connection that ended; neither is our error.
    Regression test: tests/test_libp2p_defects.py::test_peers_without_gossip_log_no_error.
    """

    def __init__(self, prefixes: tuple[str, ...], only_if_any: tuple[str, ...] = (), level: int = logging.ERROR) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.only_if_any = only_if_any
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        message = record.getMessage()
        if not message.startswith(self.prefixes):
            return True
        if self.only_if_any and not any(marker in message for marker in self.only_if_any):
            return True
        log.debug("%s: %s", record.name, " ".join(line.strip() for line in message.splitlines()))
        return False


_ORDINARY_PEER_BEHAVIOUR = {
    "libp2p.host.basic_host": _OrdinaryPeerBehaviour(("Failed to open stream to peer",)),
    "libp2p.protocol_muxer.multiselect_client": _OrdinaryPeerBehaviour(
        ("MultiselectClient handshake: write failed", "MultiselectClient handshake: read failed")),
    "libp2p.stream_muxer.yamux.yamux": _OrdinaryPeerBehaviour(
        ("Error in handle_incoming for peer",),
        only_if_any=("ConnectionClosedError", "ClosedResourceError", "BrokenResourceError", "reset by")),
    # A relayed connection that ends (either side closes, or a reservation stream is done) is
    # logged as several ERRORs by the relay: yamux's end of stream is not the EOF it expects.
    # Regression test: tests/test_relay.py (the relay's log holds no ERROR after a job).
    "libp2p.relay.circuit_v2.protocol": _OrdinaryPeerBehaviour(
        ("Error reading from hop stream", "Unexpected error reading from stream", "Error writing to destination stream",
         "Error relaying data", "Unexpected error handling hop stream", "Error sending status message",
         "Error handling reservation request", "Error handling stop stream", "Error sending stop status message")),
    "libp2p.relay.circuit_v2.transport": _OrdinaryPeerBehaviour(("Failed to fetch stored addresses",),
                                                                level=logging.WARNING),
    # Hole punching dials addresses that are expected to fail (the other side's NAT, its LAN
    # address); each failure was an ERROR. Regression test: tests/test_nat_netns.py (home logs).
    "libp2p.transport.tcp.tcp": _OrdinaryPeerBehaviour(("Unexpected error opening TCP stream",
                                                         "Failed to open TCP stream")),
}
for _name, _filter in _ORDINARY_PEER_BEHAVIOUR.items():
    logging.getLogger(_name).addFilter(_filter)


# ---- building and addresses -------------------------------------------------------------


def build_host(identity: Identity, mdns: bool = False) -> IHost:
    """A host speaking TCP + Noise + yamux; with ``mdns``, it also announces itself and listens
    for peers on the local network (multicast DNS; network/lan.py hands what it finds to us)."""
    key_pair = create_new_key_pair(identity.seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            dial_timeout=DIAL_TIMEOUT_S,
            min_connections=0,
            low_watermark=0,
        ),
        enable_mDNS=mdns,
    )
    # py-libp2p's auto-connector aims at the midpoint of its watermarks (150 connections) by
    # dialing every peer it has heard of: at 20 nodes that is a full mesh, at 10,000 a storm. We
    # choose whom to connect to (``Network.keep_peers``); GossipSub and Kademlia work over those.
    host.get_network().auto_connector.maybe_connect = _no_auto_dial
    return host


async def _no_auto_dial() -> None:
    return None


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # multiaddr raises several unrelated types
        raise UsageError(f"not a multiaddr: {text!r} (expected e.g. {DEFAULT_LISTEN})") from exc
    if "tcp" not in {p.name for p in addr.protocols()}:
        raise UsageError(f"listen address must be TCP, e.g. {DEFAULT_LISTEN}: {text!r}")
    return addr


def parse_peer_addr(text: str) -> PeerInfo:
    """A dialable peer: ``/ip4/<ip>/tcp/<port>/p2p/<peer id>``."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:
        raise UsageError(
            f"not a peer address: {text!r} (expected /ip4/<ip>/tcp/<port>/p2p/<peer id>)"
        ) from exc


def full_addrs(host: IHost) -> list[str]:
    """The host's listen addresses with its /p2p/ component, as strings others can dial."""
    own = str(host.get_id())
    out = []
    for addr in host.get_addrs():
        text = str(addr)
        out.append(text if "/p2p/" in text else f"{text}/p2p/{own}")
    return out


# ---- listening --------------------------------------------------------------------------


def ensure_listen_addr_free(addr: multiaddr.Multiaddr) -> None:
    """Refuse an address another socket already listens on (``TransportError``).

    py-libp2p sets SO_REUSEPORT on its TCP listeners, so a second node on a busy port binds it
    anyway and the kernel then spreads incoming connections over both processes. A plain probe
    socket (SO_REUSEADDR only, so a previous run's TIME_WAIT connections are no conflict) fails
    to bind where any socket listens. Port 0 always gets a fresh port; DNS names are not probed.
    Regression test: tests/test_libp2p_defects.py::test_a_second_node_on_a_busy_port_is_refused.
    """
    protocols = {p.name for p in addr.protocols()}
    family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET if "ip4" in protocols else None
    port = int(addr.value_for_protocol("tcp"))
    if family is None or port == 0:
        return
    ip = addr.value_for_protocol("ip6" if family == socket.AF_INET6 else "ip4")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(f"cannot listen on {addr}: the address is already in use") from exc
            raise TransportError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


@asynccontextmanager
async def listening(host: IHost, listen: Sequence[str], relay: RelayService | None = None) -> AsyncIterator[IHost]:
    """Run ``host`` on ``listen`` (possibly none: reachable through relays only) until the block
    ends, then close its connections promptly. The host accepts relayed connections and dials
    ``/p2p-circuit`` addresses; with ``relay`` it also relays for others (network/relay.py).

    py-libp2p logs a failed listen and runs on without it; here it is a ``TransportError``.
    """
    addrs = [parse_listen_addr(a) for a in listen]
    for addr in addrs:
        ensure_listen_addr_free(addr)
    try:
        async with host.run(addrs), Relaying(host, relay).running():
            try:
                _check_listeners(host.get_network(), addrs)
                yield host
            finally:
                await disconnect_all(host)
    except BaseExceptionGroup as group:  # host.run() is a nursery: surface our own error
        ours = find_ours(group)
        if ours is None:
            raise
        raise ours from group


def _check_listeners(network: INetwork, addrs: list[multiaddr.Multiaddr]) -> None:
    failed = [str(a) for a in addrs if str(a) not in network.listeners]
    if failed:
        raise TransportError(f"cannot listen on {', '.join(failed)}")


@asynccontextmanager
async def running_host(identity: Identity, listen: list[str] | None = None) -> AsyncIterator[IHost]:
    """A bare host (no gossip, no DHT) listening on ``listen``, for one-off exchanges."""
    async with listening(build_host(identity), listen or [DEFAULT_LISTEN]) as host:
        yield host


# ---- closing ----------------------------------------------------------------------------


async def disconnect_all(host: IHost) -> None:
    """Close every connection before the host stops, without waiting out py-libp2p's sleeps.

    py-libp2p 0.8.1 leaves connections open when ``host.run()`` exits, and the remote side keeps
    counting them: a peer ID that reconnected eight times in a process was then refused by the
    node ("Established per peer limit exceeded: 8 >= 8") for 30 s. So we close them — all at
    once, and each only as far as the peer can tell (see ``_close_for_the_peer``). Regression
    tests: tests/test_libp2p_defects.py (reconnecting, close-down time).
    """
    network = host.get_network()
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BOUND_S):
        async with trio.open_nursery() as nursery:
            for conn in network.get_connections():
                nursery.start_soon(_close_for_the_peer, network, conn)


async def _close_for_the_peer(network: INetwork, conn: INetConn) -> None:
    """Close ``conn`` up to the point the peer has been told, then skip the local housekeeping.

    ``SwarmConn.close`` sends yamux GO_AWAY and closes the socket, and then sleeps a fixed 0.1 s
    twice (in ``Yamux.close`` and ``SwarmConn._cleanup``) so that local stream handlers see their
    streams reset. A host that is stopping has no use for that: ~0.2 s per connection on the
    way out of every requester process. The peer sees the same GO_AWAY and FIN either way.
    """
    muxer_closed = getattr(conn.muxed_conn, "event_closed", None)  # yamux: set once GO_AWAY is sent and the socket closed
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_close_quietly, conn)
        if isinstance(muxer_closed, trio.Event):
            await muxer_closed.wait()
            nursery.cancel_scope.cancel()
    with contextlib.suppress(Exception):  # the swarm's bookkeeping, which the skipped part does
        network.remove_conn(conn)


async def _close_quietly(conn: INetConn) -> None:
    try:
        await conn.close()
    except Exception as exc:  # best effort: the connection may already be gone
        log.debug("closing a connection to %s: %s", conn.muxed_conn.peer_id, exc)


# ---- dialing ----------------------------------------------------------------------------


async def connect(host: IHost, peer: PeerInfo, timeout_s: float = DIAL_TIMEOUT_S) -> None:
    """Connect to ``peer`` at its direct addresses, else through the relays among its addresses
    (``.../p2p-circuit``: py-libp2p's swarm never dials those, network/relay.py does)."""
    circuits = [str(a) for a in peer.addrs if is_circuit(a)]
    if circuits and not host.get_network().get_connections(peer.peer_id):
        direct = [a for a in peer.addrs if not is_circuit(a)]
        if direct:
            try:
                return await connect(host, PeerInfo(peer.peer_id, direct), timeout_s)
            except TransportError as exc:
                log.debug("peer %s: %s; trying its relays", peer.peer_id, exc)
        return await _connect_through_relays(host, peer.peer_id, circuits, timeout_s)
    try:
        with trio.fail_after(timeout_s):
            await host.connect(peer)
    except trio.TooSlowError as exc:
        raise TransportError(f"peer {peer.peer_id} did not answer within {timeout_s:.0f} s") from exc
    except Exception as exc:
        if not is_transport_failure(exc):
            raise
        where = ", ".join(str(a) for a in peer.addrs) or "no known address"
        actual = _peer_met_instead(exc)
        if actual is not None:
            raise TransportError(f"the peer at {where} is {actual}, not {peer.peer_id}") from exc
        raise TransportError(f"cannot reach peer {peer.peer_id} at {where}") from exc


async def _connect_through_relays(host: IHost, peer_id: Any, circuits: list[str], timeout_s: float) -> None:
    relaying = relaying_of(host)
    if relaying is None:
        raise TransportError(f"peer {peer_id} is reachable only through a relay, and this host does not run one")
    problems = []
    for addr in circuits:
        try:
            with trio.fail_after(timeout_s):
                return await relaying.dial(str(peer_id), addr)
        except trio.TooSlowError:
            problems.append(f"{addr}: no answer within {timeout_s:.0f} s")
        except TransportError as exc:
            problems.append(str(exc))
    raise TransportError(f"cannot reach peer {peer_id} through its relays: {'; '.join(problems)}")


@asynccontextmanager
async def stream_to(host: IHost, peer: PeerInfo, protocol: str) -> AsyncIterator[Any]:
    """Connect to ``peer`` (``connect``), open a ``protocol`` stream (``open_stream``), yield it,
    and close it on the way out within a bound; a stream that fails to close is left to the
    connection's end."""
    await connect(host, peer)
    stream = await open_stream(host, peer.peer_id, protocol)
    try:
        yield stream
    finally:
        with trio.move_on_after(2), contextlib.suppress(Exception):
            await stream.close()


async def open_stream(host: IHost, peer_id: Any, protocol: str) -> Any:
    """A new stream to a connected peer; libp2p's failures (negotiation refused, connection
    gone, muxer errors) become one ``TransportError`` naming the peer and protocol."""
    try:
        return await host.new_stream(peer_id, [protocol])
    except Exception as exc:
        if not is_transport_failure(exc):
            raise
        raise TransportError(f"cannot open {protocol} to {peer_id}: {type(exc).__name__}: {one_line(exc, 200)}") from exc


_MISMATCH_ID = re.compile(r"remote_peer_id_from_pubkey=(\w+)")


def _peer_met_instead(exc: BaseException) -> str | None:
    """The peer ID a Noise handshake found instead of the one dialed, if that is why ``exc``.

    py-libp2p wraps ``PeerIDMismatchesPubkey`` in a SecurityUpgradeFailure inside a
    SwarmException inside a MultiError inside SwarmDialAllFailedError, and puts the ID it met
    only in the message; "another peer" if a later version stops putting it there.
    """
    for cause in _causes(exc):
        if isinstance(cause, PeerIDMismatchesPubkey):
            found = _MISMATCH_ID.search(str(cause))
            return found.group(1) if found else "another peer"
    return None


def _causes(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """``exc`` and everything it wraps: causes, contexts, and MultiError/group members."""
    if depth > 20:
        return []
    out = [exc]
    members: list[Any] = list(getattr(exc, "errors", None) or getattr(exc, "exceptions", None) or [])
    for inner in [*members, exc.__cause__ or exc.__context__]:
        if isinstance(inner, BaseException):
            out += _causes(inner, depth + 1)
    return out
