"""Regression tests for py-libp2p defects we work around (see docs/decisions.md)."""

from __future__ import annotations

import trio

from pointillist.network.host import full_addrs, parse_peer_addr, running_host
from pointillist.protocol import framing
from pointillist.protocol.identity import Identity

ECHO = "/pointillist/test-echo/1.0.0"


async def _echo(stream):
    frame = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
    await framing.write_frame(stream, frame)
    await stream.close()


async def test_same_peer_reconnecting_many_times_is_not_locked_out():
    # py-libp2p keeps connections of a stopped host open; the server then refuses the 9th
    # connection of that peer ID. running_host() closes its connections on exit.
    client_id = Identity.generate()
    async with running_host(Identity.generate()) as server:
        server.set_stream_handler(ECHO, _echo)
        peer = parse_peer_addr(full_addrs(server)[0])
        for i in range(12):
            async with running_host(client_id) as client:
                await client.connect(peer)
                stream = await client.new_stream(peer.peer_id, [ECHO])
                await framing.write_frame(stream, {"i": i})
                assert (await framing.read_frame(stream, 1024))["i"] == i
                await stream.close()
        with trio.fail_after(5):
            while server.get_network().connections:
                await trio.sleep(0.05)


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
    import pytest

    from pointillist.network.overlay import open_network

    with pytest.raises(BaseException) as caught:
        async with open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as net:
            assert net.peer_id
            raise KeyError("must come out")
    group = caught.value
    leaves = group.exceptions if isinstance(group, BaseExceptionGroup) else [group]
    while any(isinstance(e, BaseExceptionGroup) for e in leaves):
        leaves = [x for e in leaves for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]
    assert any(isinstance(e, KeyError) for e in leaves)
