"""``pointillist peers``: the live network as a table, from the records a bootstrap peer holds
plus whatever gossip arrives while we listen."""

from __future__ import annotations

import argparse
import json
import sys

from . import options

#: Hex digits of a model digest shown in the table; ``submit --model`` takes any prefix of ≥ 10.
DIGEST_SHOWN = 12


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="peer to ask; repeatable (default: config.toml)")
    p.add_argument("--wait", type=options.non_negative_float, default=2.0, help="seconds to listen to gossip after joining (default 2)")
    p.add_argument("--json", action="store_true", help="print records as JSON")
    p.add_argument("--key", help="identity file (default: a throwaway identity)")


def run(args: argparse.Namespace) -> int:
    from ..network.host import parse_peer_addr
    from ..protocol.errors import UsageError
    from .config import load_config
    from .interrupt import run_trio

    bootstrap = args.bootstrap or load_config().bootstrap
    if not bootstrap:
        raise UsageError("no peers to ask: use --bootstrap or set bootstrap in config.toml")
    for addr in bootstrap:
        parse_peer_addr(addr)
    rows = run_trio(_collect, bootstrap, args.wait, args.key, interrupted=lambda: "interrupted; nothing was changed")
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        _table(rows)
    return 0


async def _collect(bootstrap: list[str], wait: float, key: str | None) -> list[dict]:
    from pathlib import Path

    from ..protocol.identity import Identity
    from ..protocol.keyfile import load_identity
    from ..requester import Requester

    identity = load_identity(Path(key)) if key else Identity.generate()
    async with Requester(identity, bootstrap=bootstrap, patience_s=30).open() as session:
        def joined(reached: list[str]) -> None:
            print(f"joined through {len(reached)} peer(s); listening for records for {wait:g} s",
                  file=sys.stderr, flush=True)

        rows = await session.nodes(wait, on_joined=joined)
        return [{**record.model_dump(by_alias=True), "ageS": round(age, 1)} for record, age in rows]


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(rows)} live node(s)")
    for column in ("peer", "device", "models", "speed", "queue", "age"):
        table.add_column(column)
    for r in rows:
        device = r["device"]
        vram = f" {device['vramTotal'] / 2**30:.0f} GiB" if device["vramTotal"] else ""
        table.add_row(  # names come from other peers' records: never let them be markup
            escape(r["peerId"][:20]) + "…",
            escape(f"{device['kind']} {device['name']}{vram}"),
            escape("\n".join(f"{m['name']} {m['digest'][:DIGEST_SHOWN]}" for m in r["models"])),
            f"{r['speed']['stepsPerS']:g} steps/s @{r['speed']['refWidth']}²",
            f"{r['queueFree']}/{r['queueSize']} free" + ("" if r["accepting"] else " (closed)"),
            f"{r['ageS']:.0f} s",
        )
    Console().print(table)
