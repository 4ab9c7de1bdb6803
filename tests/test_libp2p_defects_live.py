"""py-libp2p defects from the shared findings, guarded against a live node process:
connections that come and go must not pile up resources, and a node stopped while a peer floods
it with gossip must exit cleanly (the "Nursery is closed to new arrivals" crash)."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import trio

from pointillist.network.overlay import CAPACITY_TOPIC, open_network
from pointillist.network.host import parse_peer_addr, running_host
from pointillist.protocol import framing
from pointillist.protocol.identity import Identity
from pointillist.protocol.messages import JOB_PROTOCOL
from support import NodeHandle

pytestmark = pytest.mark.integration


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settles(measure, ok, timeout_s: float):
    """Poll ``measure()`` until ``ok(value)`` or the deadline; the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = measure()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = measure()
    return value


def test_many_short_connections_do_not_leak_descriptors(tmp_path):
    node = NodeHandle(tmp_path / "node", []).wait_ready()
    try:
        peer = parse_peer_addr(node.addr)

        async def churn(n: int) -> None:
            for _ in range(n):
                async with running_host(Identity.generate()) as host:
                    await host.connect(peer)
                    stream = await host.new_stream(peer.peer_id, [JOB_PROTOCOL])
                    await stream.write(framing.encode_frame({"t": "nothing"}))
                    with trio.move_on_after(2):
                        await framing.read_frame(stream, 4096)

        trio.run(churn, 20)  # warm-up: first-use allocations
        before = fd_count(node.proc.pid)
        trio.run(churn, 200)
        # the node closes its side of the last connections shortly after we do
        after = settles(lambda: fd_count(node.proc.pid), lambda n: n - before < 20, timeout_s=15)
        assert after - before < 20, (before, after)
        assert node.alive()
    finally:
        node.stop()


@pytest.mark.parametrize("round_", range(3))
def test_stopping_under_gossip_flood_exits_cleanly(tmp_path, round_):
    node = NodeHandle(tmp_path / "node", ["--heartbeat", "1"]).wait_ready()
    rng = random.Random(round_)

    async def flood_then_stop():
        async with open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net:
            net.pubsub.remove_topic_validator(CAPACITY_TOPIC)
            await net.join([node.addr])
            await net.pubsub.wait_for_subscription(parse_peer_addr(node.addr).peer_id, CAPACITY_TOPIC, timeout=10)
            for i in range(300):
                await net.pubsub.publish(CAPACITY_TOPIC, rng.randbytes(200))
                if i == 150:
                    node.proc.send_signal(signal.SIGTERM)  # stop while messages keep arriving
                await trio.sleep(0.002)

    trio.run(flood_then_stop)
    node.proc.wait(30)  # the SIGTERM sent mid-flood, nothing more
    code = node.stop()
    assert code == 0, node.log()[-3000:]
    assert "Traceback" not in node.log() and "Nursery is closed" not in node.log()
