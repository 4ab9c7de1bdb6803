"""``pointillist reputation``: the nodes this requester has checked (``verify --reproduce``), and
which of them failed and get no more jobs from it; ``reputation forget PEER`` clears a verdict.
The standings live in ``reputation.json`` in the data directory (requester/reputation.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("show", "forget"), default="show",
                   help="show the standings (default), or forget one node's")
    p.add_argument("peer", nargs="?", metavar="PEER_ID", help="with forget: the node's peer ID")
    p.add_argument("--json", action="store_true", help="print the standings as JSON")


def run(args: argparse.Namespace) -> int:
    from ..protocol.errors import UsageError
    from ..protocol.keyfile import data_dir
    from ..requester.reputation import FILE_NAME, Reputation

    state = data_dir()
    reputation = Reputation.load(state)
    if args.action == "forget":
        if not args.peer:
            raise UsageError("reputation forget needs the node's peer ID")
        if not reputation.forget(args.peer):
            raise UsageError(f"no standing recorded for {args.peer} in {state / FILE_NAME}")
        try:
            reputation.save(state)
        except OSError as exc:
            raise UsageError(f"cannot write {state / FILE_NAME}: {exc.strerror or exc}") from None
        print(f"forgot {args.peer}: it can get jobs again")
        return 0
    if args.peer:
        raise UsageError("a peer ID is only taken by `reputation forget PEER_ID`")
    peers = reputation.peers()
    if args.json:
        print(json.dumps({peer: {**reputation.to_json()[peer], "distrusted": s.distrusted}
                          for peer, s in sorted(peers.items())}, indent=2))
        return 0
    if not peers:
        print("no node checked yet (`pointillist verify IMAGE --reproduce --model PATH` checks one)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("node", "passed", "failed", "standing", "last failure")
    for peer, s in sorted(peers.items(), key=lambda kv: (not kv[1].distrusted, kv[0])):
        last = s.failures[-1] if s.failures else None
        failure = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(last.at))} {last.check}: {last.reason}"
                   + (f" ({last.evidence})" if last.evidence else "")) if last else ""
        table.add_row(peer, str(s.passed), str(s.failed), "distrusted" if s.distrusted else "ok", failure)
    Console(file=sys.stdout, soft_wrap=False).print(table)
    return 0
