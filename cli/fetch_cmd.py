"""``pointillist fetch JOB_ID --peer NODE``: get a finished result again (after a broken
connection, or after the node restarted). Only the requester who signed the job can fetch it;
the image is verified before it is written, as with ``submit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", help="the job id (32 hex digits) that submit printed")
    p.add_argument("--peer", required=True, metavar="MULTIADDR", help="the node that ran the job")
    p.add_argument("--out", type=Path, help="output PNG (default pointillist-<job id>.png)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--key", type=Path, help="requester identity file (the one that signed the job)")


def run(args: argparse.Namespace) -> int:
    import re
    import time

    import trio

    from ..attestation.verify import verify_image
    from ..network.host import parse_peer_addr
    from ..protocol.errors import UsageError, VerificationError
    from ..protocol.fetch import sign_fetch
    from ..protocol.keyfile import default_key_path, load_identity
    from .report import print_report
    from .submit_cmd import _write_new

    if not re.fullmatch(r"[0-9a-f]{32}", args.job_id):
        raise UsageError(f"a job id is 32 lowercase hex digits: {args.job_id!r}")
    peer = parse_peer_addr(args.peer)
    out = args.out or Path(f"pointillist-{args.job_id[:12]}.png")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists (use --force to overwrite)")
    identity = load_identity(args.key or default_key_path())
    envelope = sign_fetch(identity, args.job_id, peer.peer_id.to_base58(), int(time.time()))
    png = trio.run(_fetch, identity, peer, envelope, args.job_id)
    report = verify_image(png, expect_node=peer.peer_id.to_base58())
    if not report.ok or report.job is None or report.job.job_id != args.job_id:
        print_report(report, sys.stderr)
        raise VerificationError("the fetched image did not verify; nothing was written")
    _write_new(out, png, overwrite=args.force)
    print(out)
    return 0


async def _fetch(identity, peer, envelope, job_id: str) -> bytes:
    from ..requester.transport import fetch_result
    from ..network.host import running_host

    async with running_host(identity) as host:
        return await fetch_result(host, peer, envelope, job_id)
