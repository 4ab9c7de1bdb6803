"""LAN discovery (issue 10, item 4; off by default): a home with several GPUs finds its own nodes
without a bootstrap peer. Multicast DNS as libp2p specifies it (``_p2p._udp.local``), through
py-libp2p's ``enable_mDNS``; what it finds is joined like a bootstrap peer (connect, fetch its
records), so LAN nodes see each other's records and gossip.

py-libp2p calls its discovery handlers in zeroconf's own thread and keeps them in a process-wide
list: ``Lan`` hands each find to the trio loop through a bounded channel (finds beyond it are
dropped: the next announcement brings them again) and unregisters itself when it stops.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery

from ..protocol.errors import RemoteError, TransportError

log = logging.getLogger("pointillist.network")

#: Finds waiting for the loop; more are dropped until it catches up.
QUEUE = 64


class Lan:
    def __init__(self, own_peer_id: str, join: Callable[[Any], Awaitable[None]]) -> None:
        self.own = own_peer_id
        self.join = join  # connect to a PeerInfo and fetch its records
        self.found: set[str] = set()

    async def run(self) -> None:
        send, receive = trio.open_memory_channel(QUEUE)
        token = trio.lowlevel.current_trio_token()

        def on_peer(info: Any) -> None:  # zeroconf's thread
            try:
                token.run_sync_soon(_offer, send, info)
            except trio.RunFinishedError:
                pass

        peerDiscovery.register_peer_discovered_handler(on_peer)
        try:
            async for info in receive:
                peer = str(info.peer_id)
                if peer == self.own:
                    continue
                try:
                    await self.join(info)
                except (TransportError, RemoteError) as exc:
                    log.info("LAN peer %s: %s", peer, exc)
                    continue
                if peer not in self.found:
                    self.found.add(peer)
                    log.info("found %s on the local network", peer)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(on_peer)


def _offer(send: trio.MemorySendChannel, info: Any) -> None:
    try:
        send.send_nowait(info)
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass
