"""The libp2p boundary: building hosts and parsing addresses. Everything libp2p-specific that
more than one module needs lives here, and libp2p errors become ours here.

Hosts speak exactly TCP + Noise + yamux (no TLS/secio/plaintext fallback is offered), and allow one
connection per peer: py-libp2p otherwise waits out a 250 ms "happy eyeballs" timer per dial.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from ..protocol.errors import TransportError, UsageError, find_ours
from ..protocol.identity import Identity

# py-libp2p cuts its logger off from the application's handlers when imported (no handler,
# propagate=False), so its warnings reach stderr through logging's last-resort handler whatever
# the application configured. Re-attach it; the CLI's handler decides what is shown.
logging.getLogger("libp2p").propagate = True

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
DIAL_TIMEOUT_S = 10.0


def build_host(identity: Identity) -> IHost:
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


@asynccontextmanager
async def running_host(identity: Identity, listen: list[str] | None = None) -> AsyncIterator[IHost]:
    host = build_host(identity)
    addrs = [parse_listen_addr(a) for a in (listen or [DEFAULT_LISTEN])]
    try:
        async with host.run(addrs):
            try:
                yield host
            finally:
                await disconnect_all(host)
    except OSError as exc:
        raise TransportError(f"cannot listen on {', '.join(map(str, addrs))}: {exc.strerror or exc}") from exc
    except BaseExceptionGroup as group:  # host.run() is a nursery: surface our own error
        ours = find_ours(group)
        if ours is None:
            raise
        raise ours from group


async def disconnect_all(host: IHost) -> None:
    """Close every connection before the host stops.

    py-libp2p 0.8.1 leaves connections open when ``host.run()`` exits, and the remote side keeps
    counting them: a peer ID that reconnected eight times in a process was then refused by the
    node ("Established per peer limit exceeded: 8 >= 8") for 30 s. Regression test:
    tests/test_libp2p_defects.py.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        for peer_id in list(host.get_network().connections):
            try:
                await host.disconnect(peer_id)
            except Exception:  # best effort: the connection may already be gone
                pass


async def connect(host: IHost, peer: PeerInfo, timeout_s: float = DIAL_TIMEOUT_S) -> None:
    try:
        with trio.fail_after(timeout_s):
            await host.connect(peer)
    except trio.TooSlowError as exc:
        raise TransportError(f"peer {peer.peer_id} did not answer within {timeout_s:.0f} s") from exc
    except Exception as exc:
        if isinstance(exc, (OSError,)) or type(exc).__module__.startswith("libp2p"):
            where = ", ".join(str(a) for a in peer.addrs) or "no known address"
            raise TransportError(f"cannot reach peer {peer.peer_id} at {where}") from exc
        raise

