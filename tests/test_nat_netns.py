"""A home GPU node behind a NAT joins the network (issue 10), in Linux network namespaces that
the test builds and removes itself (tests/netns.py: documentation addresses only, nothing leaves).

- home1 sits behind a symmetric NAT that drops unsolicited inbound, and the requester (public,
  with a stateful firewall) cannot be dialed either: no direct path exists, the job goes through
  the relay and verifies;
- home2 sits behind a port-preserving NAT and is configured with nothing but a bootstrap peer: it
  finds out it is private, reserves a slot on a relay by itself, and DCUtR (TCP simultaneous
  open from the listen ports) makes the requester's connection direct;
- AutoNAT tells the relay it is public and the homes that they are private.

Needs root (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from netns import Netns, Topology, Unavailable, nat_topology, tcp_connect
from support import NodeHandle, cli_env

pytestmark = pytest.mark.integration

JOB = ["--size", "64", "--steps", "6", "--quiet"]
PORT = 4001


def cli(ns: Netns, args: list[str], home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``pointillist ARGS`` inside ``ns``, as the user whose POINTILLIST_HOME is ``home``."""
    return subprocess.run(ns.python("-m", "pointillist.cli", *args), env=cli_env(home), capture_output=True,
                          text=True, timeout=timeout)


def node_in(ns: Netns, home: Path, args: list[str]) -> NodeHandle:
    return NodeHandle(home, args, launcher=ns.python("-m", "pointillist.cli", "node", "start"))


class Net:
    def __init__(self, topo: Topology, root: Path, relay: NodeHandle, home1: NodeHandle, home2: NodeHandle):
        self.topo, self.root, self.relay, self.home1, self.home2 = topo, root, relay, home1, home2

    def circuit(self, node: NodeHandle) -> str:
        return f"{self.relay.addr}/p2p-circuit/p2p/{node.peer_id}"

    def status(self, ns: Netns, node: NodeHandle) -> dict:
        shown = cli(ns, ["node", "status", "--json"], node.home, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    try:
        topology = nat_topology()
        topo = topology.__enter__()
    except Unavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    root = tmp_path_factory.mktemp("nat")
    nodes: list[NodeHandle] = []
    try:
        relay = node_in(topo.pub, root / "relay", ["--heartbeat", "1", "--listen", f"/ip4/{topo.pub.ip}/tcp/{PORT}"])
        nodes.append(relay)
        relay.wait_ready()
        homes = []
        # home1 names its relay; home2 is a home user who configured nothing but a peer to join
        # through: it finds out it is private and takes a relay by itself.
        for ns, name, relays in ((topo.home1, "home1", ["--relay", relay.addr]), (topo.home2, "home2", [])):
            homes.append(node_in(ns, root / name, ["--heartbeat", "1", "--listen", f"/ip4/{ns.ip}/tcp/{PORT}",
                                                   *relays, "--bootstrap", relay.addr]))
            nodes.append(homes[-1])
        for home in homes:
            home.wait_ready()
        yield Net(topo, root, relay, *homes)
    finally:
        try:
            for node in reversed(nodes):
                node.stop()
        finally:
            topology.__exit__(None, None, None)  # raises if a namespace is left behind


def _accepted(stdout: str) -> dict:
    return next(e for e in map(json.loads, stdout.splitlines()) if e.get("event") == "accepted")


def job_through(net: Net, home: NodeHandle, circuit: str, name: str, prompt: str) -> dict:
    """Submit a job from the public requester to ``home`` at ``circuit``; check the image verifies
    as ``home``'s; the "accepted" event."""
    requester = net.root / name
    requester.mkdir()
    out = requester / "out.png"
    sent = cli(net.topo.req, ["submit", prompt, "--peer", circuit, *JOB, "--out", str(out), "--json"], requester)
    assert sent.returncode == 0, sent.stderr + home.log()[-3000:]
    accepted = _accepted(sent.stdout)
    assert accepted["node"] == home.peer_id and accepted["addr"] == circuit, accepted
    verified = cli(net.topo.req, ["verify", str(out), "--expect-node", home.peer_id], requester)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return accepted


def test_home_behind_a_symmetric_nat_serves_through_its_relay(net):
    topo, relay, home = net.topo, net.relay, net.home1
    assert relay.addr.startswith(f"/ip4/{topo.pub.ip}/tcp/{PORT}/p2p/"), relay.info
    circuit = net.circuit(home)
    assert circuit in home.info["addrs"], home.info  # the reservation was made before it said ready

    # Nothing reaches home1 from outside: its LAN address is not routed, its WAN address drops
    # unsolicited inbound — though the node does listen (as seen from its own LAN). And the
    # requester cannot be dialed back: no direct path exists at all.
    assert tcp_connect(topo.r1, topo.home1.ip, PORT) == "connected"
    assert tcp_connect(topo.req, topo.home1.ip, PORT).startswith("unreachable")
    assert tcp_connect(topo.req, topo.r1.ip, PORT) == "timeout"
    assert tcp_connect(topo.pub, topo.req.ip, PORT) == "timeout"

    # It joined: anyone joining through the relay sees its record, with the relayed address.
    deadline = time.monotonic() + 60
    while True:
        shown = cli(topo.req, ["peers", "--bootstrap", relay.addr, "--wait", "1", "--json"], net.root / "look")
        records = {r["peerId"]: r for r in json.loads(shown.stdout or "[]")}
        if home.peer_id in records:
            break
        assert time.monotonic() < deadline, f"home1's record never seen through the relay: {shown.stderr}"
    assert circuit in records[home.peer_id]["addrs"], records[home.peer_id]

    accepted = job_through(net, home, circuit, "requester1", "a heron")
    assert accepted["connection"] == "relayed", accepted  # DCUtR tried; no direct path exists


def test_home_behind_a_port_preserving_nat_gets_a_direct_connection(net):
    topo, home = net.topo, net.home2
    circuit = net.circuit(home)
    deadline = time.monotonic() + 60  # no --relay: it reserves once AutoNAT has found it private
    while circuit not in net.status(topo.home2, home)["addrs"]:
        assert time.monotonic() < deadline, home.log()[-3000:]
        time.sleep(0.5)  # polling interval, bounded by the deadline
    assert tcp_connect(topo.req, topo.r2.ip, PORT) == "timeout"  # not dialable before a hole is punched

    accepted = job_through(net, home, circuit, "requester2", "a wren")
    # Both ends dial from their listen ports at once (TCP simultaneous open): through r2, whose
    # mapping keeps the port, and through the requester's own firewall. A requester listening on
    # loopback only has no such port, and stays relayed.
    assert accepted["connection"] == "direct", (accepted, home.log()[-3000:])


def test_autonat_tells_the_relay_it_is_public_and_the_homes_they_are_private(net):
    topo = net.topo
    nodes = {"relay": (topo.pub, net.relay), "home1": (topo.home1, net.home1), "home2": (topo.home2, net.home2)}
    want = {"relay": "public", "home1": "private", "home2": "private"}
    deadline = time.monotonic() + 90
    while True:
        seen = {name: net.status(ns, node).get("reachability") for name, (ns, node) in nodes.items()}
        if seen == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polling interval, bounded by the deadline
    assert seen == want
    # A private node's record advertises only what works from outside (network/addresses.py):
    # its relayed address, not the address it listens on inside its home.
    deadline = time.monotonic() + 30
    while True:
        shown = cli(topo.req, ["peers", "--bootstrap", net.relay.addr, "--wait", "1", "--json"], net.root / "look3")
        addrs = {r["peerId"]: r["addrs"] for r in json.loads(shown.stdout or "[]")}
        if addrs.get(net.home1.peer_id) == [net.circuit(net.home1)] or time.monotonic() > deadline:
            break
    assert addrs.get(net.home1.peer_id) == [net.circuit(net.home1)], addrs
    for name, (_, node) in nodes.items():  # failed punches and dials are ordinary, not ERRORs
        assert " ERROR " not in node.log(), (name, [l for l in node.log().splitlines() if " ERROR " in l][:5])


def test_two_nodes_on_one_lan_find_each_other_by_mdns(net):
    """LAN discovery (item 4, off by default): two nodes in one home, no bootstrap peer at all."""
    topo = net.topo
    lan = [node_in(topo.home1, net.root / f"lan{i}", ["--heartbeat", "1", "--mdns",
                                                       "--listen", f"/ip4/{topo.home1.ip}/tcp/{4101 + i}"])
           for i in range(2)]
    try:
        for node in lan:
            node.wait_ready()
        deadline = time.monotonic() + 60
        while True:
            shown = cli(topo.home1, ["peers", "--bootstrap", lan[0].addr, "--wait", "0", "--json"], net.root / "look4")
            held = {r["peerId"] for r in json.loads(shown.stdout or "[]")}
            if lan[1].peer_id in held:
                break
            assert time.monotonic() < deadline, (shown.stderr, lan[0].log()[-2000:])
        # The node without --mdns in the same home was not found: the option is off by default.
        assert net.home1.peer_id not in held
    finally:
        for node in lan:
            node.stop()
