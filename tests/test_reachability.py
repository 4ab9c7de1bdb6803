"""Reachability (issue 10, item 1): AutoNAT v1 with a dial-back that proves something.

py-libp2p 0.8.1's AutoNAT server dials back with the host that received the request, reusing the
connection the request came in on, so it answered "reachable" for an address where nothing
listens (a node behind NAT came out public). network/reachability.py dials back from a fresh
host. In process on 127.0.0.1; the NAT case itself is tests/test_nat_netns.py's.
"""

from __future__ import annotations

import socket

import pytest
import trio

from pointillist.network.host import build_host, full_addrs, listening
from pointillist.network.reachability import PRIVATE, PUBLIC, UNKNOWN, Reachability, judge
from pointillist.protocol.identity import Identity


@pytest.mark.parametrize("answers, verdict", [
    ([], UNKNOWN),
    ([True], PUBLIC), ([False], PRIVATE),
    ([True, True], PUBLIC), ([False, False], PRIVATE), ([True, False], UNKNOWN),
    ([True, True, False], PUBLIC), ([False, False, True], UNKNOWN),
])
def test_two_answers_that_agree_settle_it(answers, verdict):
    assert judge(answers) == verdict


def dead_port_addr() -> str:
    """An address on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"/ip4/127.0.0.1/tcp/{port}"


async def test_a_node_is_public_only_where_it_can_really_be_dialed_back():
    server_host, client_host = build_host(Identity.generate()), build_host(Identity.generate())
    async with listening(server_host, ["/ip4/127.0.0.1/tcp/0"]), listening(client_host, ["/ip4/127.0.0.1/tcp/0"]):
        Reachability(server_host, lambda: [])  # serves dial-back requests
        from pointillist.network.host import connect, parse_peer_addr

        server = parse_peer_addr(full_addrs(server_host)[0])
        await connect(client_host, server)
        with trio.fail_after(30):
            honest = Reachability(client_host, lambda: full_addrs(client_host))
            assert await honest.check([server.peer_id]) == PUBLIC
            # The client is connected to the server, but nothing listens where it claims to:
            # the stock server said OK here (it reused the open connection).
            claims = Reachability(client_host, lambda: [dead_port_addr()])
            assert await claims.check([server.peer_id]) == PRIVATE
            nowhere = Reachability(client_host, lambda: [])
            assert await nowhere.check([]) == PRIVATE  # listening nowhere: private without asking
            changes = []
            quiet = Reachability(client_host, lambda: full_addrs(client_host), on_change=lambda: changes.append(1))
            assert await quiet.check([]) == UNKNOWN and changes == []  # no one asked: nothing known


# ---- what is advertised (network/addresses.py, pure) ------------------------------------------------

from pointillist.network.addresses import advertised, expand_wildcards, is_local  # noqa: E402

IPS = lambda: ["127.0.0.1", "192.168.1.20", "203.0.113.7", "::1", "2001:db8::7"]  # noqa: E731
CIRCUIT = "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit/p2p/12D3KooWHome"


def test_a_wildcard_stands_for_every_interface_address():
    assert expand_wildcards(["/ip4/0.0.0.0/tcp/4001/p2p/X", "/ip6/::/tcp/4001/p2p/X"], IPS) == [
        "/ip4/127.0.0.1/tcp/4001/p2p/X", "/ip4/192.168.1.20/tcp/4001/p2p/X", "/ip4/203.0.113.7/tcp/4001/p2p/X",
        "/ip6/::1/tcp/4001/p2p/X", "/ip6/2001:db8::7/tcp/4001/p2p/X"]


@pytest.mark.parametrize("addr, local", [
    ("/ip4/127.0.0.1/tcp/1", True), ("/ip4/10.1.2.3/tcp/1", True), ("/ip4/172.20.0.1/tcp/1", True),
    ("/ip4/192.168.0.9/tcp/1", True), ("/ip4/100.64.0.1/tcp/1", True), ("/ip4/169.254.1.1/tcp/1", True),
    ("/ip4/0.0.0.0/tcp/1", True), ("/ip6/fd00::1/tcp/1", True), ("/ip6/::1/tcp/1", True),
    ("/ip4/203.0.113.7/tcp/1", False), ("/ip4/8.8.8.8/tcp/1", False), ("/dns4/example.org/tcp/1", False),
])
def test_loopback_and_private_ranges_are_local(addr, local):
    assert is_local(addr) is local


def test_only_addresses_others_can_use_are_advertised():
    listen = ["/ip4/0.0.0.0/tcp/4001/p2p/X"]
    public = "/ip4/203.0.113.7/tcp/4001/p2p/X"
    assert advertised(listen, [], "public", IPS) == [public]  # never 0.0.0.0, loopback or LAN
    assert advertised(listen, [CIRCUIT], "unknown", IPS) == [public, CIRCUIT]
    assert advertised(listen, [CIRCUIT], "private", IPS) == [CIRCUIT]  # AutoNAT: not dialable
    # Nothing better: a network of one machine or one LAN keeps its local addresses.
    assert advertised(["/ip4/127.0.0.1/tcp/5/p2p/X"], [], "unknown", IPS) == ["/ip4/127.0.0.1/tcp/5/p2p/X"]
    assert advertised(["/ip4/192.168.1.20/tcp/5/p2p/X"], [], "private", IPS) == ["/ip4/192.168.1.20/tcp/5/p2p/X"]
