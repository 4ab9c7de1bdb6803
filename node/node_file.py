"""``node.json`` in the node's state directory: how ``pointillist node status`` on this machine
finds the running node (peer ID, addresses, pid). Written once the node serves, removed when it
stops; a file left by a crash is recognised by its pid no longer running."""

from __future__ import annotations

import json
import os
from pathlib import Path

NODE_FILE = "node.json"


def write_node_file(state_dir: Path, info: dict) -> None:
    path = state_dir / NODE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: info[k] for k in ("peer_id", "addrs", "pid", "metrics") if k in info}))
    os.replace(tmp, path)


def remove_node_file(state_dir: Path) -> None:
    """Remove it if it is still this process's (a second node may have started since)."""
    path = state_dir / NODE_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read_node_file(state_dir: Path) -> dict | None:
    """The running node's entry, or None when there is none; ``ValueError`` if unreadable."""
    try:
        info = json.loads((state_dir / NODE_FILE).read_text())
    except FileNotFoundError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("peer_id"), str) or not isinstance(info.get("addrs"), list):
        raise ValueError(f"{state_dir / NODE_FILE} is not a node file")
    return info


def pid_running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
