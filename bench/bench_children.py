"""Shared by the benches that start helper processes (imported as a sibling module: benches run
as ``python bench/NAME.py``, which puts this folder first on ``sys.path``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def wait_json(path: Path, proc: subprocess.Popen, timeout: float = 240) -> dict:
    """The JSON a child writes once it is ready (a node's ``--ready-file``); exits the bench with
    a pointer to the child's folder if the child dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"child exited {proc.returncode}; see {path.parent}")
        time.sleep(0.1)
    raise SystemExit(f"child not ready; see {path.parent}")


async def serve_until_signalled(protocol: str, handler, ready: Path) -> None:
    """A libp2p host with one stream handler that writes its addresses to ``ready`` and serves
    until SIGTERM or SIGINT: the echo peer the benches time round trips against."""
    import signal

    import trio

    from pointillist.network.host import full_addrs, running_host
    from pointillist.protocol.identity import Identity

    async with running_host(Identity.generate()) as host:
        host.set_stream_handler(protocol, handler)
        ready.write_text(json.dumps({"addrs": full_addrs(host)}))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
