"""``pointillist submit``: sign a job, send it to a node, show progress, verify, write the image.

Nothing is written unless the attestation verifies, names the node we asked, and embeds exactly
the job we signed.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from . import options

DEFAULT_MODEL = "tiny-sd"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--peer", required=True, metavar="MULTIADDR",
                   help="node to use: /ip4/<ip>/tcp/<port>/p2p/<peer id>")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or digest (default {DEFAULT_MODEL})")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=options.seed, help="random seed (default: random)")
    p.add_argument("--steps", type=options.positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--size", type=options.image_size, default=(512, 512), metavar="WxH",
                   help="image size (default 512x512)")
    p.add_argument("--guidance", type=options.non_negative_float, default=7.5,
                   help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--out", type=Path, help="output PNG (default pointillist-<job id>.png)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--key", type=Path, help="requester identity file")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (default: scaled by work)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from ..node.p2p import parse_peer_addr
    from ..protocol.errors import UsageError
    from ..protocol.jobs import new_job_request
    from ..protocol.keyfile import default_key_path, load_or_create_identity
    from .report import print_report

    peer = parse_peer_addr(args.peer)
    if args.out is not None and args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists (use --force to overwrite)")
    identity, _ = load_or_create_identity(args.key or default_key_path())
    width, height = args.size
    request = new_job_request(
        node=peer.peer_id.to_base58(),
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative,
        seed=secrets.randbits(63) if args.seed is None else args.seed,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        now=int(time.time()),
    )
    png, report = submit_and_verify(identity, peer, request, quiet=args.quiet, timeout=args.timeout)
    out = args.out or Path(f"pointillist-{request.job_id[:12]}.png")
    _write_new(out, png, overwrite=args.force or args.out is None)
    if not args.quiet:
        print_report(report, sys.stderr)
    print(out)
    return 0


def submit_and_verify(identity, peer, request, *, quiet: bool = False, timeout: float | None = None):
    """Sign ``request``, run it on ``peer``, and return ``(png, report)`` only if it verifies.

    Raises ``VerificationError`` if the image's attestation fails any check, is not signed by the
    node we asked, or embeds a job other than the one we signed.
    """
    import trio

    from ..attestation.verify import verify_image
    from ..protocol.errors import VerificationError
    from ..protocol.jobs import sign_job
    from .report import print_report

    envelope = sign_job(identity, request)
    png = trio.run(_submit, identity, peer, envelope, request, quiet, timeout)
    report = verify_image(png, expect_node=request.node)
    if not report.ok:
        print_report(report, sys.stderr)
        raise VerificationError("the node's image did not verify; nothing was written")
    if report.job is None or report.job != request:
        raise VerificationError("the image embeds a different job than the one we signed; nothing was written")
    return png, report


async def _submit(identity, peer, envelope, request, quiet, timeout) -> bytes:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..node.client import run_job
    from ..node.p2p import running_host
    from ..protocol.messages import AcceptedMessage

    async with running_host(identity) as host:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), transient=True, disable=quiet, console=_stderr_console(),
        ) as progress:
            task = progress.add_task(f"sending to {str(peer.peer_id)[:16]}…", total=request.steps)

            def on_event(event) -> None:
                if isinstance(event, AcceptedMessage):
                    where = "running" if event.position == 0 else f"queued ({event.position} ahead)"
                    progress.update(task, description=where)
                else:
                    progress.update(task, description="generating", completed=event.step, total=event.total)

            return await run_job(host, peer, envelope, request, on_event, deadline_s=timeout)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _write_new(path: Path, data: bytes, overwrite: bool) -> None:
    import os

    from ..protocol.errors import UsageError

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never clobber a file
            tmp.unlink()
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path} exists (use --force to overwrite)") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
