"""``pointillist submit``: sign jobs, send them to nodes, show progress, verify, write the images.

Parsing and printing only; ``pointillist.requester.Requester`` does the work. With ``--peer``
the jobs go to that node; otherwise the network is joined through the bootstrap peers and the
best node serving the model is chosen for each job, falling back to the next if it fails.

A job is never lost from sight: its id is printed the moment a node accepts it (and recorded in
the requester's journal), ``--out`` is checked to be writable before anything is sent, and
Ctrl-C says how to fetch what was accepted. Nothing is written unless it verifies.
``--audit-share`` audits that share of the written images at once (``audit_cmd.audit_image``:
with ``--audit-model`` here, without it by another node serving the model, found through the
bootstrap peers): a spot check whose cost is paid on a sample, not on every job.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from . import options

DEFAULT_MODEL = "tiny-sd"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+", help="what to draw; several prompts make several jobs")
    p.add_argument("--peer", metavar="MULTIADDR", help="node to use: /ip4/<ip>/tcp/<port>/p2p/<peer id> "
                   "(default: choose one through --bootstrap)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                   help="peer to discover nodes through; repeatable (default: config.toml)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name, digest, or digest prefix of 10+ hex digits (default {DEFAULT_MODEL})")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=options.seed, help="random seed (default: random); image k of -n uses seed+k")
    p.add_argument("-n", "--count", type=options.count, default=1, help="images per prompt (default 1)")
    p.add_argument("--steps", type=options.positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--size", type=options.image_size, default=(512, 512), metavar="WxH",
                   help="image size (default 512x512)")
    p.add_argument("--guidance", type=options.non_negative_float, default=7.5,
                   help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--sampler", type=_sampler, metavar="NAME",
                   help="sampler, as AUTOMATIC1111 names it: 'Euler a', 'DPM++ 2M Karras', 'DDIM', 'UniPC', … "
                        "(default: the model's own scheduler)")
    p.add_argument("--out", type=Path, help="output PNG (default pointillist-<job id>.png); with several "
                   "images, NAME-1.png, NAME-2.png, …")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--key", type=Path, help="requester identity file")
    p.add_argument("--timeout", type=options.positive_float,
                   help="give up on one node after this many seconds (default: scaled by work)")
    p.add_argument("--max-wait", type=options.positive_float, default=300.0, metavar="SECONDS",
                   help="how long to keep trying to join and to find a node with a free slot (default 300)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: one 'accepted' event per job as it happens, then one result each")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--audit-share", type=_share, metavar="FRACTION",
                   help="audit this share of the images (0..1) right after they are written: "
                        "`pointillist audit` on each one drawn (default: [audit] share in config.toml, else 0)")
    p.add_argument("--audit-model", type=Path, metavar="PATH",
                   help="the model to audit with, the jobs' model (default: [audit] model in config.toml; "
                        "without one, another node serving the model recomputes, found through the bootstrap peers)")


def run(args: argparse.Namespace) -> int:
    import time

    from ..protocol.keyfile import data_dir, default_key_path, load_or_create_identity
    from ..protocol.settings import GenerationSettings
    from ..requester import JobSpec, Requester
    from .config import load_config
    from .interrupt import run_trio
    from .output import check_writable, write_new

    config = load_config()
    bootstrap = args.bootstrap or config.bootstrap
    args.audit_share = config.audit_share if args.audit_share is None else args.audit_share
    args.audit_model = args.audit_model or config.audit_model
    _check_addresses(args.peer, bootstrap)
    width, height = args.size
    first_seed = secrets.randbits(63) if args.seed is None else args.seed
    specs = [
        JobSpec(args.model, GenerationSettings(prompt=prompt, negative_prompt=args.negative,
                                               seed=(first_seed + k) % 2**64, steps=args.steps,
                                               guidance=args.guidance, width=width, height=height,
                                               sampler=args.sampler))
        for prompt in args.prompt for k in range(args.count)
    ]
    outs = _planned_outputs(args.out, len(specs))
    for out in outs:
        check_writable(out, overwrite=args.force)  # before anything is sent, not after the GPU work
    if args.out is None:
        check_writable(Path("pointillist-check.png"), overwrite=True)
    if args.audit_share > 0 and args.audit_model is None and not bootstrap:
        from ..protocol.errors import UsageError

        raise UsageError("--audit-share needs --audit-model PATH (or [audit] model in config.toml) to recompute "
                         "the steps here, or bootstrap peers (--bootstrap / config.toml) to find a node that does")
    identity, _ = load_or_create_identity(args.key or default_key_path())
    for spec in specs:
        spec.request_for(identity.peer_id, int(time.time()))  # bad settings fail before the network
    requester = Requester(identity, bootstrap=bootstrap, state_dir=data_dir(),
                          patience_s=args.max_wait, attempt_timeout_s=args.timeout)
    view = _View(args.json, args.quiet, len(specs))
    results = run_trio(_submit_all, requester, args.peer, specs, view, interrupted=view.interrupted_line)

    failures = 0
    for i, result in enumerate(results):
        if isinstance(result, Exception):
            failures += 1
            view.failed(i, result)
            continue
        out = outs[i] if outs else Path(f"pointillist-{result.request.job_id[:12]}.png")
        write_new(out, result.png, overwrite=args.force or not outs)
        view.done(i, result, out)
        if args.audit_share > 0 and secrets.SystemRandom().random() < args.audit_share:
            failures += _spot_check(out, result.node.addr, args.audit_model, bootstrap, view, i)
    if failures and len(results) == 1 and not args.json:
        raise results[0]
    return 1 if failures else 0


def _spot_check(out: Path, node_addr: str, model: Path | None, bootstrap: list[str], view, i: int) -> int:
    """Audit one written image (``audit_cmd.audit_image``: here with ``model``, else by a node
    found through ``bootstrap``); 1 if the node failed, else 0."""
    from .audit_cmd import audit_image

    verdict, evidence = audit_image(out, model, peer=node_addr, bootstrap=bootstrap)
    if view.as_json:
        print(json.dumps({"event": "audit", "index": i, "out": str(out), "verdict": verdict.verdict,
                          "detail": verdict.detail, **({"evidence": str(evidence)} if evidence else {}),
                          **({"auditor": verdict.auditor} if verdict.auditor else {})}), flush=True)
    else:
        print(f"audit of {out}: {verdict.detail}" + (f" (evidence: {evidence})" if evidence else ""),
              file=sys.stderr)
    return 1 if verdict.ok is False else 0


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


async def _submit_all(requester, peer, specs, view):
    async with requester.open(peer=peer) as session:
        view.connection_of = getattr(session.transport, "connection_kind", view.connection_of)
        view.status("looking for nodes…")
        with view:
            return await session.submit_all(specs, view.hooks_for)


def _sampler(text: str) -> str:
    from ..protocol.settings import sampler_problem

    problem = sampler_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _check_addresses(peer: str | None, bootstrap: list[str]) -> None:
    from ..network.host import parse_peer_addr

    for addr in ([peer] if peer else []) + list(bootstrap):
        parse_peer_addr(addr)


def _planned_outputs(out: Path | None, n: int) -> list[Path]:
    if out is None:
        return []
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}") for i in range(n)]


class _View:
    """What the user sees: a progress bar and one line per accepted job on stderr, or JSON lines."""

    def __init__(self, as_json: bool, quiet: bool, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.as_json = as_json
        self.total = total
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), transient=True, disable=quiet or as_json, console=self.console,
        )
        self.quiet = quiet
        self.tasks: dict[int, int] = {}
        self.accepted: dict[str, tuple[str, str]] = {}  # job id -> (peer id, addr), until written
        #: peer id -> "direct" / "relayed" / None: how the job reached its node (network/relay.py)
        self.connection_of = lambda peer_id: None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def status(self, text: str) -> None:
        if not self.as_json and not self.quiet:
            self.console.print(text, style="dim")

    def hooks_for(self, i: int):
        from ..protocol.messages import AcceptedMessage
        from ..requester import Hooks

        label = f"[{i + 1}/{self.total}] " if self.total > 1 else ""
        task = self.progress.add_task(f"{label}starting…", total=None)

        def on_attempt(node) -> None:
            self.progress.update(task, description=f"{label}sending to {node.peer_id[:16]}…", completed=0, total=None)

        def on_accepted(request, node) -> None:
            self.accepted[request.job_id] = (node.peer_id, node.addr)
            via = self.connection_of(node.peer_id)
            self.emit({"event": "accepted", "index": i, "jobId": request.job_id, "node": node.peer_id, "addr": node.addr,
                       "connection": via},
                      f"{label}job {request.job_id} accepted by {node.peer_id}" + (" (relayed)" if via == "relayed" else ""))

        def on_event(event) -> None:
            if isinstance(event, AcceptedMessage):
                self.progress.update(task, description=label + ("running" if event.position == 0 else
                                                                 f"queued ({event.position} ahead)"))
            else:
                self.progress.update(task, description=f"{label}generating", completed=event.step, total=event.total)

        return Hooks(on_attempt=on_attempt, on_accepted=on_accepted, on_event=on_event)

    def emit(self, obj: dict, text: str) -> None:
        if self.as_json:
            print(json.dumps(obj), flush=True)
        elif not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def done(self, i: int, result, out: Path) -> None:
        self.accepted.pop(result.request.job_id, None)
        if self.as_json:
            print(json.dumps({"event": "done", "index": i, "jobId": result.request.job_id,
                              "node": result.node.peer_id, "out": str(out), "verified": True}), flush=True)
        else:
            if not self.quiet:
                from .report import print_report

                print_report(result.report, sys.stderr)
            print(out, flush=True)

    def failed(self, i: int, error: Exception) -> None:
        message = error.diagnostics() if hasattr(error, "diagnostics") else str(error)
        if self.as_json:
            print(json.dumps({"event": "failed", "index": i, "error": message}), flush=True)
        elif self.total > 1:
            print(f"error: job {i + 1}/{self.total}: {message}", file=sys.stderr)

    def interrupted_line(self) -> str:
        if not self.accepted:
            return "interrupted before any node accepted a job; nothing is left running"
        fetches = "; ".join(f"pointillist fetch {job_id}" for job_id in self.accepted)
        return (f"interrupted; {len(self.accepted)} accepted job(s) keep running on their nodes, "
                f"get the images with: {fetches}")
