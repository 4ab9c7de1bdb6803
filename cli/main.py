"""``pointillist`` entry point: parse arguments, dispatch to one module per subcommand, and turn
our errors into one line on stderr. Nothing heavy is imported here: each subcommand imports what
it needs (``verify`` and ``keys`` never load libp2p or torch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from typing import Sequence

# subcommand -> module under pointillist.cli with ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "keys": ("keys_cmd", "create or show this machine's Ed25519 identity (also its libp2p peer ID)"),
    "node": ("node_cmd", "run a contributor node"),
    "submit": ("submit_cmd", "sign a job, send it to a node, verify and save the image"),
    "fetch": ("fetch_cmd", "fetch a finished result again by job id"),
    "verify": ("verify_cmd", "check an image's embedded attestation, offline"),
    "audit": ("audit_cmd", "recompute a few of an image's committed steps: did its node run what it signed?"),
    "peers": ("peers_cmd", "show the live nodes of the network"),
    "reputation": ("reputation_cmd", "the nodes you checked, and which failed and get no more jobs"),
    "demo": ("demo_cmd", "start three local nodes, submit a job, verify the image"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block it prints by default buries the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that subcommand's module is imported to add its
    arguments (the others are listed by name): each module costs start-up time, and
    ``verify`` must start fast."""
    parser = _Parser(
        prog="pointillist",
        description="Peer-to-peer image generation with signed, verifiable provenance.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            _module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is one), or None."""
    return next((word for word in argv if word in COMMANDS), None)


def _module(name: str):
    return importlib.import_module(f"pointillist.cli.{name}")


_LIBRARIES = ("libp2p", "multiaddr", "async_service", "diffusers", "transformers", "urllib3", "httpx")


class _LibraryLogFilter(logging.Filter):
    """Drop libraries' records below ``threshold``. A handler filter, because py-libp2p resets
    its loggers' levels when it is imported, which happens after start-up."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] not in _LIBRARIES or record.levelno >= self.threshold


def configure_logging(*, verbose: bool, serving: bool) -> None:
    """Commands log warnings only, libraries nothing (their failures reach the user as our
    one-line errors); a node logs its own activity at INFO and libraries' warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    threshold = logging.DEBUG if verbose else logging.WARNING if serving else logging.CRITICAL + 1
    handler.addFilter(_LibraryLogFilter(threshold))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO if serving else logging.WARNING)


def attach_dashed_values(argv: list[str]) -> list[str]:
    """``--size -64x64`` as ``--size=-64x64``: argparse reads a value that starts with a dash as
    an option and says "expected one argument", which hides the real mistake (a negative size,
    seed or guidance) that the option's own check then names. No option of ours starts with
    a dash and a digit, so this changes nothing else."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"-\d", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ..protocol.errors import PointillistError, find_ours

    words = attach_dashed_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser(_command_in(words) or "").parse_args(words)
    configure_logging(verbose=args.verbose, serving=args.command == "node")
    try:
        return int(_module(args._module).run(args) or 0)
    except (PointillistError, BaseExceptionGroup) as exc:
        from .interrupt import Interrupted, is_interrupt

        if is_interrupt(exc):
            print("interrupted", file=sys.stderr)
            return 130
        ours = find_ours(exc)
        if ours is None or args.verbose:
            raise
        prefix = "" if isinstance(ours, Interrupted) else "error: "
        print(f"{prefix}{ours.diagnostics()}", file=sys.stderr)
        return ours.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output left (`| head`): not an error of the user's, so no traceback.
        # Point stdout at /dev/null so the final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE


def run_and_exit() -> None:
    """The console entry point: ``main()``, then leave without the interpreter's teardown.

    After ``import libp2p`` a normal exit spends ~0.2 s tearing down modules and threads nobody
    needs any more; every file we write is closed and every stream flushed before this point,
    and nothing of ours relies on ``atexit``. Tests call ``main()`` and keep the normal exit."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1  # stdout closed early (e.g. `| head`): say so with the exit code
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
