"""Reachability (issue 10, item 1): can others dial this node? AutoNAT v1
(``/libp2p/autonat/1.0.0``): a node asks a few peers to dial it back at its listen addresses and
concludes ``public`` (someone did), ``private`` (the peers that answered could not, or it listens
nowhere) or ``unknown`` (no peer answered). The live view, the logs, ``node status`` and the
capacity record say which.

Every node answers others' dial-back requests. py-libp2p 0.8.1's server dials back with the host
that received the request, so ``host.connect`` returns the connection the request came in on and
the answer is "reachable" whatever the truth (a node behind a NAT came out public); ours dials back
from a throwaway host with a fresh identity and no connection to reuse, as go-libp2p does.
Regression test: tests/test_reachability.py.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import multiaddr
import trio
from libp2p.host.autonat.autonat import AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from ..protocol.errors import TransportError
from ..protocol.identity import Identity

log = logging.getLogger("pointillist.network")

PUBLIC = "public"
PRIVATE = "private"
UNKNOWN = "unknown"
#: Peers asked per check; two that agree settle it (one, when only one answers).
ASK_AT_MOST = 4
DIAL_BACK_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 15.0
#: Seconds between checks: soon while unknown, then rarely (addresses seldom change).
RECHECK_UNKNOWN_S = 30.0
RECHECK_KNOWN_S = 600.0
#: While no peer is connected, look again this often.
PEER_WAIT_S = 2.0


class _FreshDialBack(AutoNATService):
    """The AutoNAT server, dialing back from a throwaway host (see the module docstring)."""

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        from .host import build_host, connect, disconnect_all

        probe = build_host(Identity.generate())
        async with probe.run([]):
            try:
                for raw in addrs[:8]:
                    try:
                        await connect(probe, PeerInfo(peer_id, [multiaddr.Multiaddr(raw)]), DIAL_BACK_TIMEOUT_S)
                        return bytes(raw)
                    except (TransportError, ValueError):
                        continue
                return None
            finally:
                await disconnect_all(probe)


def judge(answers: list[bool]) -> str:
    """Pure: the verdict from the peers' answers (True: it dialed us back)."""
    if not answers:
        return UNKNOWN
    needed = min(2, len(answers))
    if sum(answers) >= needed:
        return PUBLIC
    if answers.count(False) >= needed and not any(answers):
        return PRIVATE
    return UNKNOWN


class Reachability:
    """This host's reachability, kept current by ``run``; it also answers others' requests."""

    def __init__(self, host: Any, listen_addrs: Callable[[], list[str]], on_change: Callable[[], None] = lambda: None) -> None:
        self.host = host
        self.listen_addrs = listen_addrs  # our own dialable addresses (not relayed ones)
        self.on_change = on_change
        self.service = _FreshDialBack(host, serve=True, confirmations=1)
        self.status = UNKNOWN

    async def check(self, peers: list[ID]) -> str:
        """Ask up to ``ASK_AT_MOST`` of ``peers`` and update ``status``."""
        addrs = [a for a in self.listen_addrs() if "/p2p-circuit" not in a]
        if not addrs:
            verdict = PRIVATE  # listening nowhere: no one can dial us, by construction
        else:
            raw = [multiaddr.Multiaddr(a.split("/p2p/")[0]).to_bytes() for a in addrs]
            answers: list[bool] = []
            for peer in peers[:ASK_AT_MOST]:
                try:
                    with trio.fail_after(QUERY_TIMEOUT_S):
                        status, _ = await self.service.query_server(peer, raw, timeout=QUERY_TIMEOUT_S)
                except Exception as exc:  # not a node (a requester), gone, or too slow: no answer
                    log.debug("reachability: %s gave no answer: %s", peer, exc)
                    continue
                answers.append(status == int(Message.OK))
            verdict = judge(answers)
        if verdict != self.status:
            log.info("reachability: %s (was %s)", verdict, self.status)
            self.status = verdict
            self.on_change()
        return verdict

    async def run(self, peers: Callable[[], list[ID]]) -> None:
        """Check as soon as there is someone to ask, then every ``RECHECK_UNKNOWN_S`` while
        unknown, else every ``RECHECK_KNOWN_S``."""
        while True:
            asked = peers()
            if not asked and self.listen_addrs():
                await trio.sleep(PEER_WAIT_S)  # no one to ask yet: nothing to conclude
                continue
            await self.check(asked)
            await trio.sleep(RECHECK_UNKNOWN_S if self.status == UNKNOWN else RECHECK_KNOWN_S)
