"""Discovery with real nodes: six processes on 127.0.0.1 joined through one bootstrap node."""

from __future__ import annotations

import signal
import time

import pytest
import trio

from pointillist.network.overlay import CAPACITY_TOPIC, open_network
from pointillist.network.host import parse_peer_addr
from pointillist.protocol.capacity import CapacityRecord, decode_record, encode_record
from pointillist.protocol.identity import Identity
from support import NodeHandle, run_cli

pytestmark = pytest.mark.integration
TTL = 10  # short record lifetime and heartbeat so expiry is observable in a test
FAST = ["--heartbeat", "1", "--record-ttl", str(TTL)]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second model (same architecture, other weights) that only one node serves."""
    import importlib.util

    from support import REPO

    spec = importlib.util.spec_from_file_location("build_tiny_model", REPO / "node/models/build_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("models") / "other-sd"
    module.build(out, seed=7)
    return out


@pytest.fixture(scope="module")
def network(tmp_path_factory, other_model):
    root = tmp_path_factory.mktemp("net")
    boot = NodeHandle(root / "node0", FAST).wait_ready()
    others = [NodeHandle(root / f"node{i}", [*FAST, "--bootstrap", boot.addr]) for i in range(1, 5)]
    others.append(NodeHandle(root / "node5", [*FAST, "--bootstrap", boot.addr, "--model", str(other_model)]))
    nodes = [boot] + [n.wait_ready() for n in others]
    yield nodes
    for n in nodes:
        n.stop()


async def directory_of(addr: str) -> dict[str, CapacityRecord]:
    """What one node holds, fetched over the records protocol by a throwaway peer."""
    async with open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net:
        peer = parse_peer_addr(addr)
        await net.host.connect(peer)
        await net.fetch_records(peer.peer_id)
        return {r.peer_id: r for r in net.directory.live(time.time())}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_node_sees_every_record(network):
    everyone = {n.peer_id for n in network}

    def all_complete():
        return all(set(trio.run(directory_of, n.addr)) >= everyone for n in network)

    wait_for(all_complete, 60, "all records on all nodes")
    record = trio.run(directory_of, network[1].addr)[network[5].peer_id]
    assert record.serves("other-sd") and not record.serves("tiny-sd")
    assert record.speed.steps_per_s > 0 and record.queue_free == record.queue_size and record.accepting


def test_requester_asking_for_a_model_only_one_node_serves_reaches_it(network, tmp_path):
    target = network[5]
    out = tmp_path / "other.png"
    for model in ("other-sd", target.info["models"][0]["digest"]):
        result = run_cli(["submit", "a heron", "--bootstrap", network[0].addr, "--model", model, "--steps", "2",
                          "--size", "64x64", "--out", str(out), "--force", "--quiet"], tmp_path)
        assert result.returncode == 0, result.stderr
        verify = run_cli(["verify", str(out), "--expect-node", target.peer_id, "--expect-model",
                          target.info["models"][0]["digest"]], tmp_path)
        assert verify.returncode == 0, verify.stdout


def test_peers_command_shows_the_network(network, tmp_path):
    import json

    result = run_cli(["peers", "--bootstrap", network[2].addr, "--wait", "0", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["peerId"] for r in rows} >= {n.peer_id for n in network}
    table = run_cli(["peers", "--bootstrap", network[2].addr, "--wait", "0"], tmp_path)
    assert table.returncode == 0 and "live node" in table.stdout and "other-sd" in table.stdout


def _record_for(identity: Identity, seq: int, *, now: float, ttl: int = TTL, queue_free: int = 1, accepting=True,
                peer_id: str | None = None) -> CapacityRecord:
    return CapacityRecord.model_validate({
        "peerId": peer_id or identity.peer_id, "addrs": [], "accepting": accepting, "version": "test",
        "device": {"kind": "cpu", "name": "attacker", "vramTotal": 0, "vramFree": 0},
        "models": [{"name": "tiny-sd", "digest": "0" * 64, "pipeline": "x", "maxSide": 64}],
        "speed": {"stepsPerS": 1e6, "refWidth": 64, "refHeight": 64},
        "queueFree": queue_free, "queueSize": 9, "seq": seq, "issuedAt": int(now), "expiresAt": int(now) + ttl,
    })


def test_forged_replayed_and_stale_records_are_rejected(network):
    victim = network[1]
    mallory = Identity.generate()

    async def attack():
        async with open_network(mallory, ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net:
            net.pubsub.remove_topic_validator(CAPACITY_TOPIC)  # publish what honest nodes would refuse
            boot = parse_peer_addr(network[0].addr)
            await net.join([network[0].addr])
            await net.pubsub.wait_for_subscription(boot.peer_id, CAPACITY_TOPIC, timeout=10)
            now = time.time()
            genuine = encode_record(mallory, _record_for(mallory, 100, now=now, queue_free=7))
            forged = encode_record(mallory, _record_for(mallory, 2**62, now=now))  # then relabelled:
            forged_for_victim = _relabel(forged, victim.peer_id)
            stale = encode_record(mallory, _record_for(mallory, 50, now=now, queue_free=1))
            expired = encode_record(mallory, _record_for(mallory, 200, now=now - 3600, ttl=10, queue_free=2))
            for data in (genuine, forged_for_victim, stale, genuine, expired, b"\x00garbage", b"\x81" * 9000):
                await net.pubsub.publish(CAPACITY_TOPIC, data)
                await trio.sleep(0.2)
            await trio.sleep(2)

    trio.run(attack)
    held = trio.run(directory_of, network[0].addr)
    assert held[mallory.peer_id].seq == 100 and held[mallory.peer_id].queue_free == 7  # not stale, not expired
    assert held[victim.peer_id].device.name != "attacker" and held[victim.peer_id].seq < 2**62


def _relabel(data: bytes, peer_id: str) -> bytes:
    """Swap the peerId inside a signed record without re-signing: a forgery."""
    import msgpack

    obj = msgpack.unpackb(data)
    record = decode_record(data, time.time())
    obj["payload"] = obj["payload"].replace(record.peer_id.encode(), peer_id.encode())
    return msgpack.packb(obj)


def test_a_stopped_node_disappears_after_expiry(network):
    gone = network[4]
    gone.proc.send_signal(signal.SIGKILL)  # no goodbye record: only expiry can remove it
    gone.proc.wait()
    start = time.monotonic()
    wait_for(lambda: gone.peer_id not in trio.run(directory_of, network[0].addr), TTL + 10, "expiry")
    assert time.monotonic() - start <= TTL + 10
    assert network[3].peer_id in trio.run(directory_of, network[0].addr)  # the living stay
