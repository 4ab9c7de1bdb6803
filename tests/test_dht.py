"""Kademlia provider records answer "who serves model X" (in process, two real hosts)."""

from __future__ import annotations

import trio

from pointillist.network.overlay import open_network
from pointillist.network.host import full_addrs
from pointillist.protocol.identity import Identity

DIGEST = "6284f5af008435e404a39621e5afb8bb679b2458f583be73770a000e45eed048"
LISTEN = ["/ip4/127.0.0.1/tcp/0"]


async def test_a_provider_is_found_by_model_digest_once():
    async with open_network(Identity.generate(), LISTEN) as node, open_network(Identity.generate(), LISTEN) as other, \
            open_network(Identity.generate(), LISTEN, serve_dht=False) as requester:
        await other.join(full_addrs(node.host)[:1])
        await node.provide_models([DIGEST])
        await requester.join(full_addrs(other.host)[:1])
        with trio.fail_after(30):
            providers = await requester.find_model_providers(DIGEST)
        ids = [p.peer_id for p in providers]
        assert node.host.get_id() in ids
        assert len(ids) == len(set(ids))  # py-libp2p repeats providers; we de-duplicate
        assert await requester.find_model_providers("ab" * 32, timeout_s=5) == []
