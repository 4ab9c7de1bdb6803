"""Circuit relay v2 (issue 10) without root: a home node that listens nowhere at all is reachable
only through a relay on 127.0.0.1, and every protocol works through it — records, jobs, fetch,
audits — with the image verifying as one made directly. The relay is an entry point that serves
no model (``node start --no-models``: a bootstrap and relay on a machine without a GPU).

Then the defects of py-libp2p 0.8.1 that network/relay.py works around, in process.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import trio

from support import REPO, NodeHandle, run_cli

TINY = REPO / "node" / "models" / "tiny-sd"
JOB = ["--size", "64", "--steps", "6", "--quiet"]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A model only the home node serves, so that discovery must choose it (other weights)."""
    from support import build_tiny_variant

    return build_tiny_variant(tmp_path_factory.mktemp("models") / "home-sd", seed=11)


@pytest.fixture(scope="module")
def relayed(tmp_path_factory, other_model):
    """(relay, home): the relay is an entry node on 127.0.0.1 serving no model; the home node has
    no listen address and reserves a slot on it."""
    root = tmp_path_factory.mktemp("relay")
    relay = NodeHandle(root / "relay", ["--heartbeat", "1", "--no-models"]).wait_ready()
    home = NodeHandle(root / "home", ["--heartbeat", "1", "--listen", "none", "--relay", relay.addr,
                                      "--bootstrap", relay.addr, "--model", str(other_model)])
    try:
        home.wait_ready()
    except BaseException:
        relay.stop()
        raise
    yield relay, home
    home.stop()
    relay.stop()


@pytest.mark.integration
def test_a_node_that_listens_nowhere_is_reached_through_its_relay(relayed, other_model, tmp_path):
    relay, home = relayed
    circuit = f"{relay.addr}/p2p-circuit/p2p/{home.peer_id}"
    assert home.info["addrs"] == [circuit]  # nothing else: it listens nowhere
    # Its record, as anyone joining through the relay sees it, lists only the relayed address.
    deadline = time.monotonic() + 60
    while True:
        shown = run_cli(["peers", "--bootstrap", relay.addr, "--wait", "1", "--json"], tmp_path / "look")
        records = {r["peerId"]: r for r in json.loads(shown.stdout or "[]")}
        if home.peer_id in records:
            break
        assert time.monotonic() < deadline, shown.stderr
    assert records[home.peer_id]["addrs"] == [circuit]
    assert relay.peer_id in records and records[relay.peer_id]["models"] == []  # the entry point

    home_digest = home.info["models"][0]["digest"]
    requester = tmp_path / "requester"
    # Found through discovery: only the home node serves this model, so the job must go through the relay.
    out = tmp_path / "found.png"
    found = run_cli(["submit", "a heron", "--bootstrap", relay.addr, "--model", home_digest, *JOB, "--out", str(out),
                     "--json"], requester)
    assert found.returncode == 0, found.stderr
    accepted = next(e for e in map(json.loads, found.stdout.splitlines()) if e["event"] == "accepted")
    assert accepted["node"] == home.peer_id and accepted["addr"] == circuit
    # Reached through the circuit; on one machine DCUtR may then make it direct (the home node
    # dials the requester back), which tests/test_nat_netns.py checks behind real NATs.
    assert accepted["connection"] in ("relayed", "direct")
    verify = run_cli(["verify", str(out), "--expect-node", home.peer_id, "--expect-model", home_digest], requester)
    assert verify.returncode == 0, verify.stdout
    # Fetch (by job id, from the journal's relayed address) and the audit protocol work the same.
    again = run_cli(["fetch", accepted["jobId"], "--out", str(tmp_path / "again.png")], requester)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.png").read_bytes() == out.read_bytes()
    by_address = run_cli(["submit", "a wren", "--peer", circuit, "--model", home_digest, *JOB,
                          "--out", str(tmp_path / "wren.png")], requester)
    assert by_address.returncode == 0, by_address.stderr
    audited = run_cli(["audit", str(tmp_path / "wren.png"), "--model", str(other_model), "--json"], requester)
    assert audited.returncode == 0 and json.loads(audited.stdout)["verdict"] == "pass", audited.stdout + audited.stderr
    # The relay's operator sees no ERROR for circuits that simply ended.
    assert not re.search(r" ERROR ", relay.log()), relay.log()[-3000:]


@pytest.mark.integration
def test_no_relay_reachable_is_a_clear_start_and_a_clear_error(tmp_path):
    nowhere = run_cli(["node", "start", "--listen", "none"], tmp_path / "a")
    assert nowhere.returncode == 2 and "needs --relay" in nowhere.stderr and "Traceback" not in nowhere.stderr
    # A relay that is not there: the node still starts (after waiting for it a bounded time),
    # says so, and keeps trying; a requester told its relayed address gets one line.
    dead_relay = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWQcwn9eMnABT9DtZLiFdEcQfbfvVc73oXzYifJC92oyXh"
    home = NodeHandle(tmp_path / "home", ["--listen", "none", "--relay", dead_relay])
    try:
        home.wait_ready()
        assert home.info["addrs"] == []
        assert "no reservation on relay" in home.log()
        r = run_cli(["submit", "x", "--peer", f"{dead_relay}/p2p-circuit/p2p/{home.peer_id}", *JOB, "--max-wait", "5",
                     "--out", str(tmp_path / "x.png")], tmp_path / "q")
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    finally:
        home.stop()


# ---- py-libp2p 0.8.1 defects, in process -----------------------------------------------------------

PROTO = "/pointillist-test/echo/1.0.0"


async def test_two_circuits_to_one_node_do_not_cut_each_other():
    """py-libp2p keyed active circuits by peer ID: when one requester's circuit to a home node
    ended, another requester's circuit to the same node was reset (network/relay.py)."""
    from pointillist.network.host import connect, listening, build_host, open_stream, parse_peer_addr
    from pointillist.network.relay import RelayService, Reservations, circuit_addr, relaying_of
    from pointillist.protocol.identity import Identity

    relay_host, home_host = build_host(Identity.generate()), build_host(Identity.generate())
    first, second = build_host(Identity.generate()), build_host(Identity.generate())

    ended: list[str] = []

    async def echo(stream):
        try:
            while data := await stream.read(5):
                await stream.write(data)
        except Exception:
            pass
        finally:
            ended.append(str(stream.muxed_conn.peer_id))

    async with listening(relay_host, ["/ip4/127.0.0.1/tcp/0"], RelayService()), listening(home_host, []), \
            listening(first, []), listening(second, []):
        home_host.set_stream_handler(PROTO, echo)
        relay_addr = f"{relay_host.get_addrs()[0]}"
        relay_addr = relay_addr if "/p2p/" in relay_addr else f"{relay_addr}/p2p/{relay_host.get_id()}"
        reservations = Reservations(relaying_of(home_host), [relay_addr])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reservations.run)
            with trio.fail_after(20):
                await reservations.first.wait()
            assert reservations.addrs() == [circuit_addr(relay_addr, str(home_host.get_id()))]
            target = parse_peer_addr(reservations.addrs()[0])
            with trio.fail_after(30):
                await connect(first, target)  # the older circuit
                await connect(second, target)  # the newer one: the relay's per-peer entry was this one
                long_lived = await open_stream(second, target.peer_id, PROTO)
                short = await open_stream(first, target.peer_id, PROTO)
                for stream, word in ((long_lived, b"hello"), (short, b"brief")):
                    await stream.write(word)
                    assert await stream.read(5) == word
                await first.get_network().close_peer(target.peer_id)  # the first requester hangs up
                relay = relaying_of(relay_host).protocol.resource_manager.get_reservation(home_host.get_id())
                while str(first.get_id()) not in ended or relay.active_connections > 1:  # both ends saw it go
                    await trio.sleep(0.05)
                await long_lived.write(b"again")  # the defect had reset this circuit by now
                assert await long_lived.read(5) == b"again"
            nursery.cancel_scope.cancel()


async def test_a_lapsed_reservation_is_made_again_with_backoff_not_a_busy_loop(autojump_clock):
    """py-libp2p's refresher spun without sleeping once a refresh failed and never reserved again;
    ours waits 2 s, doubling, and reserves again when the relay answers."""
    from pointillist.network.relay import Reservations, TransportError

    attempts: list[float] = []
    answers = iter([TransportError("down")] * 4 + [None])

    class Scripted(Reservations):
        async def _reserve(self, relay):
            attempts.append(trio.current_time())
            answer = next(answers, None)
            if answer is not None:
                raise answer
            return self.clock() + 3600

    changes = []
    fake_host = type("H", (), {"get_id": lambda self: "12D3KooWHome"})()
    reservations = Scripted(type("R", (), {"host": fake_host})(), ["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWRelay"],
                            on_change=lambda: changes.append(reservations.addrs()), clock=lambda: 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reservations.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[:4] == [2, 4, 8, 16], gaps  # backoff, not a spin
    assert changes == [["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit/p2p/12D3KooWHome"]]


async def test_a_private_node_with_no_relays_configured_picks_its_own(autojump_clock):
    """A home user configures nothing: once the node is private, it takes up to two relays from
    its candidates (bootstrap peers, public nodes), and replaces one that keeps failing."""
    from pointillist.network.relay import AUTO_GIVE_UP, Reservations, TransportError

    dead, good, spare, extra = (f"/ip4/203.0.113.{i}/tcp/4001/p2p/12D3KooWRelay{i}" for i in (1, 2, 3, 4))
    candidates: list[str] = []  # empty while the node is not (yet) known to be private
    tries: dict[str, int] = {}

    class Scripted(Reservations):
        async def _reserve(self, relay):
            tries[relay] = tries.get(relay, 0) + 1
            if relay == dead:
                raise TransportError("no answer")
            return self.clock() + 3600

    fake_host = type("H", (), {"get_id": lambda self: "12D3KooWHome"})()
    reservations = Scripted(type("R", (), {"host": fake_host})(), [], auto=lambda: candidates, clock=lambda: 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reservations.run)
        await trio.sleep(30)
        assert reservations.addrs() == [] and tries == {}  # public or unknown: no relay needed
        candidates[:] = [dead, good, spare, extra]
        await trio.sleep(300)
        nursery.cancel_scope.cancel()
    assert tries[dead] == AUTO_GIVE_UP  # given up, not retried for ever
    assert sorted(reservations.addrs()) == sorted(f"{r}/p2p-circuit/p2p/12D3KooWHome" for r in (good, spare))
    assert extra not in tries  # two relays are enough
