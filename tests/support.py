"""Helpers for tests that run the real CLI and real nodes in child processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "docs" / "attestation-vectors"
NODE_START_TIMEOUT_S = 240


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "POINTILLIST_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        # pinned so images are bit-identical to an in-process call with torch.set_num_threads(1)
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run_cli(args: list[str], home: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real ``pointillist`` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "pointillist.cli", *args],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


#: ``pointillist node start`` as a child process; tests/oom_node.py and tests/family_node.py are
#: launchers that take the same arguments.
NODE_START = [sys.executable, "-m", "pointillist.cli", "node", "start"]


class NodeHandle:
    def __init__(self, home: Path, extra_args: list[str], launcher: list[str] = NODE_START,
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ready_file = home / "ready.json"
        self.ready_file.unlink(missing_ok=True)  # a restart in the same home must not read the old one
        self.log_path = home / "node.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*launcher, "--ready-file", str(self.ready_file), *extra_args],
            env=cli_env(home, **(env or {})), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.info: dict = {}

    def wait_ready(self) -> "NodeHandle":
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"node not ready:\n{self.log()}")

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    def status(self) -> dict:
        """``pointillist node status --json``, run as this node's operator (same home)."""
        shown = run_cli(["node", "status", "--json"], self.home)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode




def build_tiny_variant(out: Path, seed: int) -> Path:
    """The embedded model's architecture with other random weights (node/models/build_tiny_model.py),
    for a model that only one node of a test serves."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_tiny_model", REPO / "node/models/build_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(out, seed=seed)
    return out


def load_vector_generator():
    """docs/attestation-vectors/generate.py: the fixed keys, image, job and record of the vectors."""
    import importlib.util

    name = "pointillist_attestation_vectors_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, VECTORS / "generate.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


from pointillist.network.host import parse_peer_addr, running_host  # noqa: E402
from pointillist.protocol import framing  # noqa: E402
from pointillist.protocol.dsse import Envelope  # noqa: E402
from pointillist.protocol.identity import Identity  # noqa: E402
from pointillist.protocol.messages import JOB_PROTOCOL, JobMessage, WireEnvelope, to_wire  # noqa: E402
import trio  # noqa: E402


def job_frame(envelope: Envelope) -> bytes:
    return framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(envelope))))


async def exchange(node, raw: bytes, requester=None, reset_after_write: bool = False) -> list[dict]:
    """Open a job stream, write ``raw`` bytes, return every frame the node sends back."""
    peer = parse_peer_addr(node.addr)
    replies = []
    async with running_host(requester or Identity.generate()) as host:
        await host.connect(peer)
        stream = await host.new_stream(peer.peer_id, [JOB_PROTOCOL])
        await stream.write(raw)
        if reset_after_write:
            await stream.reset()
            return []
        with trio.fail_after(60):
            while True:
                try:
                    frame = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
                except Exception:
                    break
                replies.append(frame)
                if frame["t"] in ("result", "error"):
                    break
    return replies
