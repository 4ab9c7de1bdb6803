"""``pointillist fetch JOB_ID``: get a finished result again (after a broken connection, an
interrupted ``submit``, or a node restart). The node is the one the requester's journal recorded
for the job, or ``--peer``. Only the requester who signed the job can fetch it; if the node is
still generating, fetch waits for it (``--max-wait``). The image is verified before it is written.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", help="the job id (32 hex digits) that submit printed")
    p.add_argument("--peer", metavar="MULTIADDR", help="the node that ran the job (default: from the journal)")
    p.add_argument("--out", type=Path, help="output PNG (default pointillist-<job id>.png)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--key", type=Path, help="requester identity file (the one that signed the job)")
    p.add_argument("--max-wait", type=options.positive_float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a job the node is still running (default 60)")


def run(args: argparse.Namespace) -> int:
    from ..protocol.errors import UsageError
    from ..protocol.keyfile import data_dir, default_key_path, load_identity
    from ..requester import Requester
    from .interrupt import run_trio
    from .output import check_writable, write_new
    from .report import print_report

    if not re.fullmatch(r"[0-9a-f]{32}", args.job_id):
        raise UsageError(f"a job id is 32 lowercase hex digits: {args.job_id!r}")
    if args.peer:
        from ..network.host import parse_peer_addr

        parse_peer_addr(args.peer)
    out = args.out or Path(f"pointillist-{args.job_id[:12]}.png")
    check_writable(out, overwrite=args.force)
    identity = load_identity(args.key or default_key_path())
    requester = Requester(identity, state_dir=data_dir())

    def interrupted() -> str:
        return f"interrupted; the job stays on its node for a while: run `pointillist fetch {args.job_id}` again"

    png, report, _ = run_trio(_fetch, requester, args.peer, args.job_id, args.max_wait, interrupted=interrupted)
    write_new(out, png, overwrite=args.force)
    print_report(report, sys.stderr)
    print(out)
    return 0


async def _fetch(requester, peer: str | None, job_id: str, max_wait: float):
    async with requester.open(peer=peer, discover=False) as session:
        node = session.direct.node if session.direct else None
        def not_ready(where) -> None:
            print(f"job {job_id} is not finished on {where.peer_id} yet; waiting up to {max_wait:.0f} s",
                  file=sys.stderr, flush=True)

        return await session.fetch(job_id, node, patience_s=max_wait, on_not_ready=not_ready)
