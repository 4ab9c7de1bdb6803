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
    from support import build_tiny_variant

    return build_tiny_variant(tmp_path_factory.mktemp("models") / "other-sd", seed=7)


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
    """Mallory publishes bad records to the bootstrap node; an observer in that node's gossip
    mesh records everything it forwards. Waiting for a good record published last tells us the
    node has handled the bad ones before it — no fixed sleeps."""
    boot, victim = network[0], network[1]
    mallory = Identity.generate()

    async def attack():
        async with open_network(mallory, ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net, \
                open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as observer:
            forwarded = _record_what_is_forwarded(observer)
            boot_id = parse_peer_addr(boot.addr).peer_id
            for peer in (net, observer):
                await peer.join([boot.addr])
                await peer.pubsub.wait_for_subscription(boot_id, CAPACITY_TOPIC, timeout=10)
            # Both in the bootstrap's mesh: mallory publishes to its mesh peers only (waiting for
            # the observer alone let mallory's first record go nowhere, about 1 run in 7).
            for peer in (net, observer):
                await peer.pubsub.router.wait_for_mesh(boot_id, CAPACITY_TOPIC, timeout=10)
            net.pubsub.remove_topic_validator(CAPACITY_TOPIC)  # publish what honest nodes would refuse
            now = time.time()
            genuine = encode_record(mallory, _record_for(mallory, 100, now=now, queue_free=7))
            await net.pubsub.publish(CAPACITY_TOPIC, genuine)
            await _wait_until(lambda: genuine in forwarded, 20, "the genuine record forwarded")

            forged = encode_record(mallory, _record_for(mallory, 2**62, now=now))  # then relabelled:
            bad = [
                _relabel(forged, victim.peer_id),
                encode_record(mallory, _record_for(mallory, 50, now=now, queue_free=1)),  # stale
                encode_record(mallory, _record_for(mallory, 200, now=now - 3600, ttl=10, queue_free=2)),  # expired
                b"\x00garbage",
                b"\x81" * 9000,  # oversized
            ]
            # A replay of the record held passes the validator (equal sequence numbers do, so that
            # a record first fetched by exchange still propagates); the directory ignores it.
            last = encode_record(mallory, _record_for(mallory, 101, now=now, queue_free=6))
            for data in [bad[0], bad[1], genuine, *bad[2:], last]:
                await net.pubsub.publish(CAPACITY_TOPIC, data)
            await _wait_until(lambda: last in forwarded, 20, "the last good record forwarded")
            assert not set(bad) & set(forwarded), "the node forwarded a record it should have refused"

    trio.run(attack)
    held = wait_for(lambda: _if(trio.run(directory_of, boot.addr), lambda h: h[mallory.peer_id].seq >= 101),
                    20, "the last record held")
    assert held[mallory.peer_id].seq == 101 and held[mallory.peer_id].queue_free == 6  # not the expired seq 200
    assert held[victim.peer_id].device.name != "attacker" and held[victim.peer_id].seq < 2**62


def _record_what_is_forwarded(observer) -> list[bytes]:
    """Every record ``observer`` receives by gossip, unchecked, in order of arrival."""
    seen: list[bytes] = []
    observer.pubsub.remove_topic_validator(CAPACITY_TOPIC)
    observer.accept_record = lambda data, sender: seen.append(data)
    return seen


async def _wait_until(predicate, timeout_s: float, what: str) -> None:
    try:
        with trio.fail_after(timeout_s):
            while not predicate():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _if(value, predicate):
    """``value`` if ``predicate(value)`` holds (and raises nothing), else ``None``: for wait_for."""
    try:
        return value if predicate(value) else None
    except (KeyError, AttributeError):
        return None


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
