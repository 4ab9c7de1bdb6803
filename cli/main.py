"""``pointillist`` entry point: parse arguments, dispatch to one module per subcommand, and turn
our errors into one line on stderr. Nothing heavy is imported here: each subcommand imports what
it needs (``verify`` and ``keys`` never load libp2p or torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# subcommand -> module under pointillist.cli with ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "keys": ("keys_cmd", "create or show this machine's Ed25519 identity (also its libp2p peer ID)"),
    "node": ("node_cmd", "run a contributor node"),
    "submit": ("submit_cmd", "sign a job, send it to a node, verify and save the image"),
    "verify": ("verify_cmd", "check an image's embedded attestation, offline"),
    "demo": ("demo_cmd", "start three local nodes, submit a job, verify the image"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointillist",
        description="Peer-to-peer image generation with signed, verifiable provenance.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _module(name: str):
    return importlib.import_module(f"pointillist.cli.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    from ..protocol.errors import PointillistError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_module(args._module).run(args) or 0)
    except PointillistError as exc:
        if args.verbose:
            raise
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
