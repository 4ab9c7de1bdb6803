"""``pointillist keys``: create the identity if there is none, then show it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", type=Path, help="key file (default: identity.key in the config directory)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..protocol.keyfile import default_key_path, load_or_create_identity

    path = args.key or default_key_path()
    identity, created = load_or_create_identity(path)
    if args.json:
        print(json.dumps({"peer_id": identity.peer_id, "path": str(path), "created": created}))
    else:
        print(f"{'created' if created else 'identity'} {path}")
        print(f"peer ID  {identity.peer_id}")
    return 0
