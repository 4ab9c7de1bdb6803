"""``pointillist node start``: serve jobs on this machine's GPU (or CPU); ``node init``: write
the operator's config files."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start a node and serve jobs until Ctrl-C / SIGTERM")
    start.add_argument(
        "--model", dest="models", action="append", type=Path, default=[], metavar="PATH",
        help="diffusers model folder or single-file checkpoint; repeat to serve several "
        "(default: config.toml, else the embedded tiny model, whose images are noise)",
    )
    start.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=None,
                       help="find the other nodes on this local network by multicast DNS, no bootstrap "
                       "needed (default: off, or mdns in config.toml)")
    start.add_argument("--no-models", action="store_true",
                       help="serve no model: run as a bootstrap peer and relay only (a small public machine "
                       "without a GPU keeping the network's doors open); loads no torch")
    start.add_argument("--models-dir", type=Path, metavar="DIR",
                       help="serve every checkpoint (.safetensors) and diffusers folder in DIR; one at a time "
                       "stays on the GPU, the others load when a job asks for them (default: config.toml)")
    start.add_argument("--model-config", type=Path, metavar="DIR|FAMILY",
                       help="for the --model checkpoints: a family (sd15, sd2-512, sd2-768-v, sdxl, sdxl-turbo) "
                       "or a local diffusers folder, instead of detecting it from the file (needed for .ckpt)")
    start.add_argument("--listen", action="append", default=[], metavar="MULTIADDR",
                       help="listen address (default /ip4/127.0.0.1/tcp/0); repeatable; 'none' listens nowhere "
                       "(reached through --relay only)")
    start.add_argument("--relay", action="append", default=[], metavar="MULTIADDR",
                       help="relay to reserve a slot on, for requesters to reach this node through; repeatable "
                       "(default: [node] relays in config.toml)")
    start.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                       help="peer to join the network through; repeatable (default: config.toml)")
    start.add_argument("--key", type=Path, help="identity file (default: identity.key in the config directory)")
    start.add_argument("--device", help="torch device: cuda, cuda:1, mps, cpu (default: best available)")
    start.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                       help="weights dtype (default: float16 on CUDA, float32 elsewhere)")
    start.add_argument("--policy", type=Path, metavar="FILE",
                       help="operator policy TOML: limits, allowed requesters, rate, result retention "
                       "(default: policy.toml in the config directory, if present)")
    start.add_argument("--metrics", metavar="[HOST:]PORT",
                       help="serve Prometheus metrics here (default: off; host 127.0.0.1 unless given)")
    start.add_argument("--log-format", choices=["text", "json"],
                       help="event lines when stderr is not a terminal: text (default) or JSON lines")
    start.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                       help="live status view on stderr (default: on when stderr is a terminal)")
    start.add_argument("--ready-file", type=Path, help="write peer ID and addresses as JSON here once serving")
    start.add_argument("--heartbeat", type=float, help=argparse.SUPPRESS)  # tests: seconds between records
    start.add_argument("--record-ttl", type=int, help=argparse.SUPPRESS)  # tests: record lifetime
    status = sub.add_parser("status", help="ask the node running on this machine for its figures")
    status.add_argument("--json", action="store_true", help="print the figures as JSON")
    status.add_argument("--key", type=Path, help="the node's identity file (default: identity.key in the config directory)")
    init = sub.add_parser("init", help="write a commented config.toml and policy.toml to edit")
    init.add_argument("--dir", type=Path, help="where to write them (default: the config directory)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")


def run(args: argparse.Namespace) -> int:
    if args.node_command == "init":
        return _init(args)
    if args.node_command == "status":
        from .node_status import run_status

        return run_status(args.key, args.json)
    import trio

    from ..network.host import DEFAULT_LISTEN, ensure_listen_addr_free, parse_listen_addr, parse_peer_addr
    from ..node.runner import NodeConfig, load_node, serve
    from ..node.policy import load_policy
    from ..protocol.errors import UsageError
    from ..protocol.keyfile import config_dir, data_dir, default_key_path, load_or_create_identity
    from .config import load_config

    config = load_config()
    listen = args.listen or config.listen or [DEFAULT_LISTEN]
    if listen == ["none"]:
        listen = []
    relays = args.relay or config.relays
    bootstrap = args.bootstrap or config.bootstrap
    for addr in listen:  # a typo or a busy port fails now, not after seconds of loading models
        ensure_listen_addr_free(parse_listen_addr(addr))
    for addr in bootstrap + relays:
        parse_peer_addr(addr)
    if not listen and not relays:
        raise UsageError("a node that listens nowhere needs --relay (or [node] relays) to be reachable at all")
    models_dir = args.models_dir or config.models_dir
    if args.no_models and (args.models or args.models_dir):
        raise UsageError("--no-models serves no model: leave out --model and --models-dir")
    if args.no_models and not listen:
        raise UsageError("--no-models runs a bootstrap and relay: it must listen somewhere (--listen)")
    if models_dir is not None and not args.no_models:  # an empty or missing folder fails now, not after loading torch
        from ..node.model_folder import find_models

        find_models(models_dir)
    identity, _ = load_or_create_identity(args.key or default_key_path())
    node_config = NodeConfig(
        identity=identity,
        model_paths=[] if args.no_models else args.models or config.models,
        no_models=args.no_models,
        model_config=args.model_config or config.model_config,
        models_dir=None if args.no_models else args.models_dir or config.models_dir,
        models_on_device=config.models_on_device or 1,
        models_ram_mb=config.models_ram_mb,
        listen=listen,
        relays=relays,
        mdns=config.mdns if args.mdns is None else args.mdns,
        bootstrap=bootstrap,
        device=args.device or config.device,
        dtype=args.dtype or config.dtype,
        ready_file=args.ready_file,
        policy=load_policy(args.policy or config_dir() / "policy.toml"),
        state_dir=data_dir() / "node",
        metrics=parse_metrics_addr(args.metrics or config.metrics),
        live=sys.stderr.isatty() if args.live is None else args.live,
        log_format=args.log_format or config.log_format or "text",
    )
    if args.policy is not None and not args.policy.exists():
        raise UsageError(f"policy file {args.policy} does not exist")
    if args.heartbeat:
        node_config.heartbeat_s = args.heartbeat
    if args.record_ttl:
        node_config.record_ttl_s = args.record_ttl
    if node_config.log_format == "json" and not node_config.live:
        from ..node.event_log import use_json_lines

        use_json_lines()  # from the first line on, not only once serving: the stream stays parseable
    node = load_node(node_config)

    def on_ready(info: dict) -> None:
        for m in info["models"]:
            print(f"serving {m['name']}  {m['digest']}", flush=True)
        if not info["models"]:
            print("serving no models: a bootstrap peer and relay", flush=True)
        else:
            print(f"speed   {info['speed']['stepsPerS']} steps/s at "
                  f"{info['speed']['refWidth']}x{info['speed']['refHeight']}", flush=True)
        for addr in info["addrs"]:
            print(f"listening {addr}", flush=True)

    trio.run(serve, node_config, node, on_ready)
    logging.getLogger("pointillist.node").info("node stopped")
    return 0


def parse_metrics_addr(value: str | None) -> tuple[str, int] | None:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to 127.0.0.1 so that
    turning metrics on never exposes them beyond this machine by accident."""
    from ..protocol.errors import UsageError

    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise UsageError(f"--metrics {value!r}: expected PORT or HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def _init(args: argparse.Namespace) -> int:
    from ..protocol.keyfile import config_dir
    from .node_init import write_files

    for path in write_files(args.dir or config_dir(), args.force):
        print(path)
    return 0
