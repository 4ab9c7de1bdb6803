"""Kademlia provider records answer "who serves model X" (in process, real hosts), and a lookup
that failed is told apart from one that found nobody."""

from __future__ import annotations

import logging

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from pointillist.network.host import full_addrs, parse_peer_addr
from pointillist.network.overlay import model_key, open_network
from pointillist.protocol.errors import TransportError
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
        assert await requester.find_model_providers("ab" * 32, timeout_s=5) == []  # asked, nobody serves it


async def test_a_lookup_with_no_dht_peer_fails_instead_of_finding_nobody():
    # py-libp2p answers [] when it has nobody to ask, which read as "no live node serves …".
    async with open_network(Identity.generate(), LISTEN, serve_dht=False) as requester:
        with pytest.raises(TransportError, match=f"^no DHT peer to ask who serves {DIGEST}$"):
            await requester.find_model_providers(DIGEST, timeout_s=5)


async def test_a_lookup_that_raises_is_a_transport_error(monkeypatch):
    async with open_network(Identity.generate(), LISTEN) as node, \
            open_network(Identity.generate(), LISTEN, serve_dht=False) as requester:
        await requester.join(full_addrs(node.host)[:1])

        async def broken(key, count=20):
            raise RuntimeError("routing table exploded")

        monkeypatch.setattr(requester.dht, "find_providers", broken)
        with pytest.raises(TransportError, match=f"^DHT lookup of {DIGEST} failed: RuntimeError: routing table exploded$"):
            await requester.find_model_providers(DIGEST)


async def test_a_lookup_that_times_out_returns_what_it_found(monkeypatch):
    async with open_network(Identity.generate(), LISTEN) as node, \
            open_network(Identity.generate(), LISTEN, serve_dht=False) as requester:
        await requester.join(full_addrs(node.host)[:1])
        provider = parse_peer_addr(full_addrs(node.host)[0])

        async def slow(key, count=20):  # learns of one provider, then hangs, as a lookup can
            requester.dht.provider_store.add_provider(bytes.fromhex(key), PeerInfo(provider.peer_id, provider.addrs))
            await trio.sleep_forever()

        monkeypatch.setattr(requester.dht, "find_providers", slow)
        found = await requester.find_model_providers(DIGEST, timeout_s=0.5)
        assert [p.peer_id for p in found] == [provider.peer_id]


async def test_a_failed_announcement_is_logged_with_its_reason(monkeypatch, caplog):
    async with open_network(Identity.generate(), LISTEN) as node, open_network(Identity.generate(), LISTEN) as other:
        await node.join(full_addrs(other.host)[:1])

        async def refused(key):
            assert key == model_key(DIGEST)
            raise ConnectionResetError("peer reset the stream")

        monkeypatch.setattr(node.dht, "provide", refused)
        await node.provide_models([DIGEST])
        warning = next(r for r in caplog.records if r.name == "pointillist.network" and r.levelno == logging.WARNING)
        assert warning.getMessage() == f"model {DIGEST} not announced in the DHT: ConnectionResetError: peer reset the stream"
