"""Regression tests for py-libp2p defects we work around (see docs/decisions.md), in process
against real hosts on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import trio
from libp2p.identity.identify.identify import ID as IDENTIFY_PROTOCOL
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from pointillist.network.host import connect, full_addrs, parse_peer_addr, running_host
from pointillist.network.overlay import KAD_PROTOCOL, RECORDS_PROTOCOL, open_network
from pointillist.protocol import framing
from pointillist.protocol.errors import TransportError
from pointillist.protocol.identity import Identity

ECHO = "/pointillist/test-echo/1.0.0"
LISTEN = ["/ip4/127.0.0.1/tcp/0"]


async def _echo(stream):
    frame = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
    await framing.write_frame(stream, frame)
    await stream.close()


async def wait_until(predicate, timeout_s: float = 5.0, poll_s: float = 0.01):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(poll_s)


async def _echo_once(host, peer: PeerInfo, i: int = 0) -> None:
    stream = await host.new_stream(peer.peer_id, [ECHO])
    await framing.write_frame(stream, {"i": i})
    assert (await framing.read_frame(stream, 1024))["i"] == i
    await stream.close()


async def test_same_peer_reconnecting_many_times_is_not_locked_out():
    # py-libp2p keeps connections of a stopped host open; the server then refuses the 9th
    # connection of that peer ID. running_host() closes its connections on exit, which the
    # server sees: it drops each one (after its own 0.1 s of bookkeeping) before the next dial.
    client_id = Identity.generate()
    async with running_host(Identity.generate()) as server:
        server.set_stream_handler(ECHO, _echo)
        peer = parse_peer_addr(full_addrs(server)[0])
        for i in range(12):
            async with running_host(client_id) as client:
                await client.connect(peer)
                await _echo_once(client, peer, i)
            await wait_until(lambda: not server.get_network().connections, timeout_s=5)


async def test_closing_a_host_skips_the_fixed_sleeps():
    # py-libp2p's close sleeps 0.1 s in Yamux.close and 0.1 s in SwarmConn._cleanup: 0.2 s on
    # the way out of every requester. We close only as far as the peer can tell.
    async with running_host(Identity.generate()) as server:
        server.set_stream_handler(ECHO, _echo)
        peer = parse_peer_addr(full_addrs(server)[0])
        async with running_host(Identity.generate()) as client:
            await connect(client, peer)
            await _echo_once(client, peer)
            start = time.perf_counter()
        host_exit = time.perf_counter() - start
        async with open_network(Identity.generate(), LISTEN, serve_dht=False) as net:
            await net.join(full_addrs(server)[:1])
            await _echo_once(net.host, peer)
            start = time.perf_counter()
        network_exit = time.perf_counter() - start
        await wait_until(lambda: not server.get_network().connections)  # and the server saw both go
    assert host_exit < 0.1 and network_exit < 0.1, (host_exit, network_exit)


async def test_large_payloads_cross_yamux_intact():
    # py-libp2p's read_exactly gives up after 100 partial reads (>= 512 KiB on some muxers);
    # our framing reads in a loop. Sizes up to 8 MiB, as a large result PNG would be.
    async with running_host(Identity.generate()) as server, running_host(Identity.generate()) as client:
        server.set_stream_handler(ECHO, _echo)
        peer = parse_peer_addr(full_addrs(server)[0])
        await client.connect(peer)
        for size in (512 * 1024, 2 * 1024 * 1024, 8 * 1024 * 1024):
            blob = bytes(range(256)) * (size // 256)
            stream = await client.new_stream(peer.peer_id, [ECHO])
            with trio.fail_after(60):
                await framing.write_frame(stream, {"blob": blob})
                assert (await framing.read_frame(stream, framing.MAX_REPLY_FRAME))["blob"] == blob
            await stream.close()


async def test_errors_inside_the_network_block_are_not_swallowed():
    # An await in a cancelled scope during teardown once replaced the block's exception with
    # Cancelled, which the nursery then absorbed: errors vanished into a normal return.
    with pytest.raises(BaseException) as caught:
        async with open_network(Identity.generate(), LISTEN) as net:
            assert net.peer_id
            raise KeyError("must come out")
    group = caught.value
    leaves = group.exceptions if isinstance(group, BaseExceptionGroup) else [group]
    while any(isinstance(e, BaseExceptionGroup) for e in leaves):
        leaves = [x for e in leaves for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]
    assert any(isinstance(e, KeyError) for e in leaves)


async def _identify(host, peer_id: ID) -> list[str]:
    """The protocols ``peer_id`` lists in its identify answer, asked over the wire."""
    stream = await host.new_stream(peer_id, [IDENTIFY_PROTOCOL])
    data = b""
    with trio.fail_after(10):
        while chunk := await _read_or_eof(stream):
            data += chunk
    return list(parse_identify_response(data).protocols)


async def _read_or_eof(stream) -> bytes:
    try:
        return await stream.read(65536)
    except Exception:  # py-libp2p signals the end of a stream with an exception
        return b""


async def test_kademlia_speaks_only_our_protocol():
    # KadDHT ignores its protocol_prefix and serves /ipfs/kad/1.0.0: a node would answer, and
    # join, any IPFS DHT it met. docs/protocol.md promises /pointillist/kad/1.0.0.
    async with open_network(Identity.generate(), LISTEN) as node, running_host(Identity.generate()) as peer:
        target = parse_peer_addr(full_addrs(node.host)[0])
        await connect(peer, target)
        protocols = await _identify(peer, target.peer_id)
        assert KAD_PROTOCOL == "/pointillist/kad/1.0.0"
        assert KAD_PROTOCOL in protocols and RECORDS_PROTOCOL in protocols
        assert "/ipfs/kad/1.0.0" not in protocols, protocols
        with pytest.raises(Exception):
            await peer.new_stream(target.peer_id, ["/ipfs/kad/1.0.0"])


async def test_peers_without_gossip_log_no_error(caplog):
    # The node's pubsub opens a GossipSub stream to every new connection; a requester's bare
    # host answers "na", and py-libp2p logged that as a seven-line ERROR each time. Peers that
    # leave as soon as they connect logged more (multiselect write failed, yamux reset).
    caplog.set_level(logging.DEBUG, logger="pointillist.network")
    async with open_network(Identity.generate(), LISTEN) as node:
        target = parse_peer_addr(full_addrs(node.host)[0])
        async with running_host(Identity.generate()) as requester:
            await connect(requester, target)
            stream = await requester.new_stream(target.peer_id, [RECORDS_PROTOCOL])
            await framing.write_frame(stream, {"t": "records?"})
            assert (await framing.read_frame(stream, framing.MAX_REPLY_FRAME))["t"] == "records"
            await stream.close()
            # the node has tried GossipSub on this peer and been refused: the case under test
            await wait_until(lambda: any("/meshsub/" in r.getMessage() for r in caplog.records))
        for _ in range(3):
            async with running_host(Identity.generate()) as hasty:
                await connect(hasty, target)
        await wait_until(lambda: not node.host.get_network().connections)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    refused = next(r for r in caplog.records if "/meshsub/" in r.getMessage())
    assert refused.levelno == logging.DEBUG and "\n" not in refused.getMessage()


async def test_a_second_node_on_a_busy_port_is_refused():
    # py-libp2p sets SO_REUSEPORT on listeners, so a second host bound the port and took a share
    # of its connections. Both a libp2p listener and a plain one must be refused.
    async with running_host(Identity.generate()) as first:
        addr = str(first.get_addrs()[0]).split("/p2p/")[0]
        with pytest.raises(TransportError, match="already in use") as caught:
            async with running_host(Identity.generate(), [addr]):
                pass
        assert addr in str(caught.value) and "\n" not in str(caught.value)
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        busy = f"/ip4/127.0.0.1/tcp/{plain.getsockname()[1]}"
        with pytest.raises(TransportError, match=f"cannot listen on {busy}: the address is already in use"):
            async with open_network(Identity.generate(), [busy]):
                pass


async def test_an_address_that_cannot_be_listened_on_is_an_error():
    # py-libp2p logs a failed listen and runs on with no address at all.
    with pytest.raises(TransportError, match="cannot listen on /ip4/192.0.2.1/tcp/4001"):
        async with running_host(Identity.generate(), ["/ip4/192.0.2.1/tcp/4001"]):
            pass


async def test_a_wrong_peer_id_at_a_live_address_names_the_peer_found():
    # The Noise handshake finds another peer ID there; "cannot reach peer" hid that.
    async with running_host(Identity.generate()) as server, running_host(Identity.generate()) as client:
        real = parse_peer_addr(full_addrs(server)[0])
        expected = Identity.generate().peer_id
        with pytest.raises(TransportError) as caught:
            await connect(client, PeerInfo(ID.from_base58(expected), real.addrs))
        assert str(caught.value) == f"the peer at {real.addrs[0]} is {real.peer_id}, not {expected}"
