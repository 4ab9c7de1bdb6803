"""``pointillist submit``: sign a job, send it to a node, show progress, verify, write the image.

With ``--peer`` the job goes to that node. Without it, the network is joined through the
bootstrap peers (``--bootstrap`` or config.toml) and the best node serving the model is chosen,
falling back to the next one if it fails. Nothing is written unless the attestation verifies,
names the node that ran the job, and embeds exactly the job we signed.
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
    p.add_argument("--peer", metavar="MULTIADDR", help="node to use: /ip4/<ip>/tcp/<port>/p2p/<peer id> "
                   "(default: choose one through --bootstrap)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="peer to discover nodes through; repeatable (default: config.toml)")
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
    p.add_argument("--timeout", type=options.positive_float, help="give up on a node after this many seconds (default: scaled by work)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    import trio

    from ..network.host import parse_peer_addr
    from ..protocol.errors import UsageError
    from ..protocol.jobs import new_job_request
    from ..protocol.keyfile import default_key_path, load_or_create_identity
    from .config import load_config
    from .report import print_report

    peer = parse_peer_addr(args.peer) if args.peer else None
    bootstrap = args.bootstrap or load_config().bootstrap
    for addr in bootstrap:
        parse_peer_addr(addr)
    if args.out is not None and args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists (use --force to overwrite)")
    identity, _ = load_or_create_identity(args.key or default_key_path())
    width, height = args.size
    seed = secrets.randbits(63) if args.seed is None else args.seed

    def make_request(node: str):
        return new_job_request(
            node=node, model=args.model, prompt=args.prompt, negative_prompt=args.negative, seed=seed,
            steps=args.steps, guidance=args.guidance, width=width, height=height, now=int(time.time()),
        )

    make_request(identity.peer_id)  # refuse bad settings before touching the network
    png, report, request = trio.run(
        _submit, identity, peer, bootstrap, make_request, args.model, args.quiet, args.timeout
    )
    out = args.out or Path(f"pointillist-{request.job_id[:12]}.png")
    _write_new(out, png, overwrite=args.force or args.out is None)
    if not args.quiet:
        print_report(report, sys.stderr)
    print(out)
    return 0


async def _submit(identity, peer, bootstrap, make_request, model, quiet, timeout):
    import trio

    from ..network.overlay import open_network
    from ..network.host import DEFAULT_LISTEN, running_host
    from ..requester.backoff import PeerBackoff
    from ..requester.failover import find_candidates, run_and_verify, submit_to_best
    from ..requester.ranking import rank_nodes
    from ..protocol.errors import PointillistError
    from ..protocol.keyfile import data_dir

    with _progress(quiet) as show:
        if peer is not None:
            async with running_host(identity) as host:
                request = make_request(peer.peer_id.to_base58())
                show.attempt(request.node)
                png, report = await run_and_verify(host, peer, identity, request, show.event, timeout)
                return png, report, request
        async with open_network(identity, [DEFAULT_LISTEN], serve_dht=False) as net:
            show.status("looking for nodes…")
            probe = make_request(identity.peer_id)
            backoff_file = data_dir() / "peer-backoff.json"
            backoff = PeerBackoff.load(backoff_file)
            avoided = backoff.avoided(net.clock())
            candidates = await find_candidates(net, bootstrap, model, probe.steps, probe.width, probe.height,
                                               avoid=avoided)
            live = net.directory.live(net.clock())
            for _ in range(3):  # nobody known serves it yet: listen to gossip a little before giving up
                if candidates or any(r.serves(model) for r in live):
                    break
                await trio.sleep(2)
                live = net.directory.live(net.clock())
                candidates = rank_nodes(live, model, probe.steps, probe.width, probe.height,
                                        exclude={identity.peer_id})
            if not candidates and not any(r.serves(model) for r in live):
                raise PointillistError(
                    f"no live node serves {model!r} (known nodes: {len(live)}; see `pointillist peers`)"
                )
            # Nodes that serve it but are all full right now: submit_to_best waits for a free slot.

            def rerank(failed: set[str]):
                return rank_nodes(net.directory.live(net.clock()), model, probe.steps, probe.width, probe.height,
                                  exclude=failed | {identity.peer_id})

            try:
                return await submit_to_best(net, identity, candidates, make_request, show.attempt, show.event,
                                            timeout, backoff=backoff, rerank=rerank)
            finally:
                backoff.save(backoff_file)


class _progress:
    """A rich progress bar on stderr, or nothing with --quiet."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), transient=True, disable=quiet, console=Console(stderr=True),
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("starting…", total=None)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def attempt(self, peer_id: str) -> None:
        self.progress.update(self.task, description=f"sending to {peer_id[:16]}…", completed=0, total=None)

    def event(self, event) -> None:
        from ..protocol.messages import AcceptedMessage

        if isinstance(event, AcceptedMessage):
            self.status("running" if event.position == 0 else f"queued ({event.position} ahead)")
        else:
            self.progress.update(self.task, description="generating", completed=event.step, total=event.total)


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
