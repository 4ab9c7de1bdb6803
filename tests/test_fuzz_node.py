"""Fuzz test: random and mutated frames against a live node on each protocol it serves (the job
protocol, the records protocol, the capacity gossip topic). The node must stay up, its memory
bounded, and a good job must still succeed afterwards."""

from __future__ import annotations

import json
import os
import random
import struct
import time

import msgpack
import pytest
import trio

from pointillist.network.overlay import CAPACITY_TOPIC, RECORDS_PROTOCOL, open_network
from pointillist.network.host import parse_peer_addr
from pointillist.protocol import framing
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request, sign_job
from pointillist.protocol.messages import JOB_PROTOCOL
from support import REPO, NodeHandle, exchange, job_frame

pytestmark = pytest.mark.integration
FRAMES = int(os.environ.get("POINTILLIST_FUZZ_FRAMES", "10000"))  # per protocol
CONCURRENCY = 16


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def seeds(node, requester: Identity) -> list[bytes]:
    """Valid frames to mutate: a job, a fetch-like map, a records request, a record."""
    job = new_job_request(node=node.peer_id, model="tiny-sd", prompt="fuzz", seed=1, steps=2, guidance=7.5,
                          width=64, height=64, now=int(time.time()))
    return [
        job_frame(sign_job(requester, job)),
        framing.encode_frame({"t": "records?"}),
        framing.encode_frame({"t": "fetch", "envelope": {"payloadType": "x", "payload": b"{}", "keyid": "k",
                                                          "sig": b"\0" * 64}}),
        framing.encode_frame({"t": "job", "envelope": [1, 2, 3]}),
    ]


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    kind = rng.randrange(8)
    if kind == 0:  # pure noise
        return rng.randbytes(rng.randrange(0, 400))
    if kind == 1:  # bit flips
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 2:  # truncation
        data = data[: rng.randrange(len(data))]
    elif kind == 3:  # a lying length header
        data[:4] = struct.pack(">I", rng.choice([0, 1, len(data), 2**31, 2**32 - 1, rng.randrange(2**32)]))
    elif kind == 4:  # splice noise into the body
        i = rng.randrange(4, len(data))
        data[i:i] = rng.randbytes(rng.randrange(1, 64))
    elif kind == 5:  # msgpack of random structures
        value = rng.choice([None, True, 1.5, -1, 2**63, "x" * rng.randrange(100), b"\xff" * 10, [1, [2, [3]]],
                            {"t": rng.choice(["job", "fetch", "records?", "result", 7])}])
        body = msgpack.packb(value)
        return struct.pack(">I", len(body)) + body
    elif kind == 6:  # two frames back to back
        return bytes(data) + bytes(data)
    else:  # header only
        return bytes(data[:4])
    # after kind 1, 2, 4: fix or keep the length at random
    if rng.random() < 0.5 and len(data) >= 4:
        data[:4] = struct.pack(">I", len(data) - 4)
    return bytes(data)


async def _fire(net, peer_id, protocol: str, frames: list[bytes], counts: dict) -> None:
    send, receive = trio.open_memory_channel(len(frames))
    for f in frames:
        send.send_nowait(f)
    send.close()

    async def worker():
        async for frame in receive:
            try:
                with trio.fail_after(15):
                    stream = await net.host.new_stream(peer_id, [protocol])
                    try:
                        await stream.write(frame)
                        with trio.move_on_after(0.5):
                            await stream.read(65536)  # an error reply, or nothing
                    finally:
                        await stream.reset()
                counts["sent"] += 1
            except trio.TooSlowError:
                counts["stalled"] += 1
            except Exception:
                counts["sent"] += 1  # the node closing on us is a fine answer to garbage

    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(worker)


def test_fuzzed_node_stays_up_bounded_and_serving(tmp_path):
    rng = random.Random(1122)
    node = NodeHandle(tmp_path / "node", ["--heartbeat", "5"]).wait_ready()
    requester = Identity.generate()
    try:
        rss_start = rss_mib(node.proc.pid)
        seed_frames = seeds(node, requester)
        report = {}

        async def campaign():
            async with open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net:
                peer = parse_peer_addr(node.addr)
                await net.host.connect(peer)
                for protocol in (JOB_PROTOCOL, RECORDS_PROTOCOL):
                    counts = {"sent": 0, "stalled": 0}
                    frames = [mutate(rng, rng.choice(seed_frames)) for _ in range(FRAMES)]
                    start = time.monotonic()
                    await _fire(net, peer.peer_id, protocol, frames, counts)
                    report[protocol] = {**counts, "seconds": round(time.monotonic() - start, 1),
                                        "rss_mib": round(rss_mib(node.proc.pid), 1)}
                net.pubsub.remove_topic_validator(CAPACITY_TOPIC)
                await net.pubsub.wait_for_subscription(peer.peer_id, CAPACITY_TOPIC, timeout=10)
                start = time.monotonic()
                for i in range(FRAMES):
                    await net.pubsub.publish(CAPACITY_TOPIC, mutate(rng, rng.choice(seed_frames)))
                    if i % 50 == 0:
                        await trio.sleep(0.01)  # pubsub queues hold 32 messages: pace, or they are dropped here
                report[CAPACITY_TOPIC] = {"sent": FRAMES, "seconds": round(time.monotonic() - start, 1),
                                          "rss_mib": round(rss_mib(node.proc.pid), 1)}

        trio.run(campaign)
        assert node.alive(), node.log()[-3000:]
        good = trio.run(exchange, node, job_frame(sign_job(requester, new_job_request(
            node=node.peer_id, model="tiny-sd", prompt="after the storm", seed=9, steps=2, guidance=7.5,
            width=64, height=64, now=int(time.time())))), requester)
        assert good[-1]["t"] == "result", good[-1]
        rss_end = rss_mib(node.proc.pid)
        report.update(frames_per_protocol=FRAMES, rss_start_mib=round(rss_start, 1), rss_end_mib=round(rss_end, 1))
        if os.environ.get("POINTILLIST_RECORD_RESULTS"):
            (REPO / "docs" / "results").mkdir(exist_ok=True)
            (REPO / "docs" / "results" / "fuzz-test.json").write_text(json.dumps(report, indent=1))
        for protocol in (JOB_PROTOCOL, RECORDS_PROTOCOL):
            assert report[protocol]["sent"] + report[protocol]["stalled"] == FRAMES
            assert report[protocol]["stalled"] <= FRAMES // 100, report  # the node kept answering
        assert rss_end - rss_start < 150, report  # memory stays bounded
        assert "Traceback" not in node.log()
    finally:
        node.stop()
