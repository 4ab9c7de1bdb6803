"""``pointillist demo``: the whole path on one machine.

Starts three contributor nodes as separate processes on 127.0.0.1 with the embedded tiny model;
the first is the bootstrap peer of the others. A requester joins through it, learns the nodes'
signed capacity records, picks one, signs a job for it, verifies the attested image, writes it,
and the nodes are stopped (SIGTERM, then waited for). Every identity and log lives in the demo
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import options

NODE_START_TIMEOUT_S = 180.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=Path("pointillist-demo"),
                   help="folder for the image, node logs and demo identities (default ./pointillist-demo)")
    p.add_argument("--nodes", type=options.positive_int, default=3, help="how many nodes (default 3)")
    p.add_argument("--prompt", default="a lighthouse at dusk, pointillism")
    p.add_argument("--seed", type=options.seed, default=42)
    p.add_argument("--steps", type=options.positive_int, default=8)
    p.add_argument("--size", type=options.image_size, default=(128, 128), metavar="WxH")


def run(args: argparse.Namespace) -> int:
    from ..protocol.errors import UsageError

    demo_dir: Path = args.dir
    try:
        demo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {demo_dir}: {exc.strerror}") from exc
    nodes = [NodeProcess(demo_dir / f"node{i}") for i in range(args.nodes)]
    say(f"starting {len(nodes)} nodes on 127.0.0.1 (logs in {demo_dir}/node*/node.log)")
    try:
        nodes[0].start()
        boot = nodes[0].wait_ready(NODE_START_TIMEOUT_S)["addrs"][0]
        for node in nodes[1:]:
            node.start(bootstrap=boot)
        infos = [node.wait_ready(NODE_START_TIMEOUT_S) for node in nodes]
        for info in infos:
            say(f"  node {info['peer_id']}  {info['addrs'][0]}  model {info['models'][0]['name']}")
        return _submit_and_check(args, demo_dir, infos)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.stop()
        say("nodes stopped")


def _submit_and_check(args: argparse.Namespace, demo_dir: Path, infos: list[dict]) -> int:
    import trio

    from ..attestation.verify import verify_image
    from ..protocol.keyfile import load_or_create_identity
    from ..protocol.settings import GenerationSettings
    from ..requester import JobSpec, Requester
    from .report import print_report

    requester_dir = demo_dir / "requester"
    identity, _ = load_or_create_identity(requester_dir / "identity.key")
    width, height = args.size
    model = infos[0]["models"][0]["name"]
    spec = JobSpec(model, GenerationSettings(prompt=args.prompt, negative_prompt="", seed=args.seed,
                                             steps=args.steps, guidance=7.5, width=width, height=height))
    boot = infos[0]["addrs"][0]
    say(f"requester {identity.peer_id} joins through {infos[0]['peer_id']} and picks a node for {model!r}")
    requester = Requester(identity, bootstrap=[boot], state_dir=requester_dir)

    async def submit():
        async with requester.open() as session:
            return await session.submit(spec)

    outcome = trio.run(submit)
    say(f"job {outcome.request.job_id} ran on {outcome.request.node}")
    out = demo_dir / "demo.png"
    out.write_bytes(outcome.png)
    say(f"wrote {out}; `pointillist verify {out}` says:")
    report = verify_image(out.read_bytes())
    print_report(report, sys.stdout)
    say("(the embedded tiny model has random weights: the image is noise, by design)")
    return 0 if report.ok else 1


class NodeProcess:
    """One ``pointillist node start`` child process with its own identity and log."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ready_file = home / "ready.json"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, bootstrap: str | None = None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self._log = open(self.home / "node.log", "wb")
        env = {**os.environ, "POINTILLIST_HOME": str(self.home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pointillist.cli", "node", "start",
             "--key", str(self.home / "identity.key"), "--ready-file", str(self.ready_file),
             *(["--bootstrap", bootstrap] if bootstrap else [])],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )

    def wait_ready(self, timeout_s: float) -> dict:
        from ..protocol.errors import PointillistError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return json.loads(self.ready_file.read_text())
            if self.proc.poll() is not None:
                raise PointillistError(f"node in {self.home} exited with {self.proc.returncode}; see {self.home}/node.log")
            time.sleep(0.1)
        raise PointillistError(f"node in {self.home} not ready after {timeout_s:.0f} s; see {self.home}/node.log")

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


def say(text: str) -> None:
    print(text, flush=True)
