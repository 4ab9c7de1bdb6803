"""``pointillist node start``: serve jobs on this machine's GPU (or CPU)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start a node and serve jobs until Ctrl-C / SIGTERM")
    start.add_argument(
        "--model",
        dest="models",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="diffusers model folder or single-file checkpoint; repeat to serve several "
        "(default: the embedded tiny model, whose images are noise)",
    )
    start.add_argument(
        "--model-config",
        type=Path,
        metavar="DIR",
        help="local diffusers folder with configs and tokenizer, needed for single-file checkpoints",
    )
    start.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                       help="listen address (default /ip4/127.0.0.1/tcp/0); repeatable")
    start.add_argument("--key", type=Path, help="identity file (default: identity.key in the config directory)")
    start.add_argument("--device", help="torch device: cuda, cuda:1, mps, cpu (default: best available)")
    start.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                       help="weights dtype (default: float16 on CUDA, float32 elsewhere)")
    start.add_argument("--ready-file", type=Path, help="write peer ID and addresses as JSON here once serving")


def run(args: argparse.Namespace) -> int:
    import trio

    from ..node.p2p import DEFAULT_LISTEN, parse_listen_addr
    from ..node.runner import NodeConfig, load_models, serve
    from ..protocol.keyfile import default_key_path, load_or_create_identity

    listen = args.listen or [DEFAULT_LISTEN]
    for addr in listen:
        parse_listen_addr(addr)  # fail on a typo before spending seconds loading models
    identity, _ = load_or_create_identity(args.key or default_key_path())
    config = NodeConfig(
        identity=identity,
        model_paths=args.models,
        model_config=args.model_config,
        listen=listen,
        device=args.device,
        dtype=args.dtype,
        ready_file=args.ready_file,
    )
    models = load_models(config)

    def on_ready(info: dict) -> None:
        for m in info["models"]:
            print(f"serving {m['name']}  {m['digest']}", flush=True)
        for addr in info["addrs"]:
            print(f"listening {addr}", flush=True)

    trio.run(serve, config, models, on_ready)
    print("node stopped", file=sys.stderr)
    return 0
