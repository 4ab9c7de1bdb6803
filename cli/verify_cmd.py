"""``pointillist verify IMAGE...``: offline check of images' embedded attestations.

Imports neither torch, libp2p nor pydantic: it must answer about as fast as decoding the PNG
(bench/bench_verify.py). Several images are checked in one process, one report each.

``--reproduce --model PATH`` then re-runs each verified image's generation with that model
(``node/reproduce.py``, docs/reproduce.md) and says whether it gave the same pixels bit for bit,
within the tolerance, or not; only then are torch and diffusers imported, and the model is loaded
once for all the images.

Exit status: 0 all verified (and, with --reproduce, all reproduced bit for bit or within the
tolerance), 1 a check failed or a reproduction gave other pixels (mismatch), 2 a file could not
be read or the arguments are wrong (the other files are still checked and reported), 3 all
verified but at least one could not be reproduced here (another model digest, a scheduler or
package this machine lacks): nothing against the image. The highest-priority status wins, in
the order 2, 1, 3, 0.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

#: Exit status when every image verified and at least one could not be re-run here.
EXIT_CANNOT_REPRODUCE = 3
_REPRODUCE_OPTIONS = ("device", "dtype", "threads", "model_config")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                   help="PNG written by pointillist (or any tool that kept its chunks)")
    p.add_argument("--expect-node", metavar="PEER_ID", help="fail unless this node signed it")
    p.add_argument("--expect-model", metavar="DIGEST",
                   help="fail unless made with this model digest (full, or its first 10+ hex digits)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON; with several images, a list of reports, each with its file")
    r = p.add_argument_group("reproducing (loads torch and the model; docs/reproduce.md)")
    r.add_argument("--reproduce", action="store_true",
                   help="re-run each verified image's generation with --model and compare the pixels")
    r.add_argument("--model", type=Path, metavar="PATH",
                   help="the model to re-run with: a diffusers folder or a single-file checkpoint; "
                        "its digest must be the attested one")
    r.add_argument("--model-config", type=Path, metavar="DIR|FAMILY",
                   help="config of a single-file checkpoint, as for node start (needed for .ckpt)")
    r.add_argument("--device", metavar="DEVICE", help="device to re-run on (default cpu; e.g. cuda)")
    r.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="dtype to re-run in (default: the attested one where the device runs it, else float32)")
    r.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the attested count if this machine has that many cores)")


def run(args: argparse.Namespace) -> int:
    from ..attestation.verify import verify_image
    from ..protocol.errors import UsageError

    if args.expect_model is not None and not re.fullmatch(r"[0-9a-f]{10,64}", args.expect_model):
        # A name is whatever the signing node chose to call its model: it would prove nothing.
        raise UsageError("--expect-model takes a model digest (or its first 10+ hex digits), not a name")
    reproducer = _reproducer(args)
    several = len(args.images) > 1
    results = []
    unreadable = 0
    for path in args.images:
        try:
            data = path.read_bytes()  # one at a time: a batch never holds more than one image
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
            unreadable += 1
            continue
        report = verify_image(data, expect_node=args.expect_node, expect_model=args.expect_model)
        reproduction = _reproduce(reproducer, report, data) if reproducer is not None else None
        results.append((path, report, reproduction))
        if not args.json:  # printed as it goes: a long batch shows progress
            if several and len(results) > 1:
                print()
            _print_text(report, reproducer is not None, reproduction, str(path) if several else None)
            sys.stdout.flush()
    if args.json:
        dicts = [_json_dict(report, reproducer is not None, reproduction) for _, report, reproduction in results]
        if several:
            _print_json([{"file": str(path), **d} for (path, _, _), d in zip(results, dicts)])
        elif results:
            _print_json(dicts[0])
    if reproducer is not None:
        _record_standings(results)
    if unreadable:
        return 2
    if not all(report.ok for _, report, _ in results) or any(r is not None and r.ok is False for *_, r in results):
        return 1
    if any(r is not None and r.ok is None for *_, r in results):
        return EXIT_CANNOT_REPRODUCE
    return 0


def _reproducer(args: argparse.Namespace):
    """A ``Reproducer`` for --reproduce --model (torch is not imported yet), or None."""
    from ..protocol.errors import UsageError

    given = [f"--{name.replace('_', '-')}" for name in _REPRODUCE_OPTIONS if getattr(args, name) is not None]
    if not args.reproduce:
        if args.model is not None:
            raise UsageError("--model is the model to re-run with and needs --reproduce")
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --reproduce --model PATH")
        return None
    if args.model is None:
        raise UsageError("--reproduce needs --model PATH: the model to re-run the generation with")
    if not args.model.expanduser().exists():
        raise UsageError(f"--model {args.model}: no such file or folder")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    device = args.device or "cpu"
    if not re.fullmatch(r"(cpu|cuda|mps)(:[0-9]{1,3})?", device):
        raise UsageError(f"--device takes cpu, cuda, cuda:N or mps, not {device!r}")
    from ..node.reproduce import Reproducer

    reproducer = Reproducer(args.model, device=device, dtype=args.dtype, threads=args.threads,
                            model_config=args.model_config)
    reproducer.digest  # noqa: B018 - a path that is no model is a usage error, before any image
    return reproducer


def _record_standings(results) -> None:
    """What the re-runs showed of each signing node, into this requester's reputation
    (requester/reputation.py): a mismatch distrusts the node for later submits."""
    import time

    from ..protocol.keyfile import data_dir
    from ..requester.reputation import Outcome, record_outcomes

    checked = [(report.statement.record.node, path, r) for path, report, r in results if r is not None and r.ok is not None]
    outcomes = [Outcome(node, bool(r.ok), "reproduce", r.detail, str(path.resolve())) for node, path, r in checked]
    warning = record_outcomes(data_dir(), outcomes, time.time())
    for outcome in outcomes:
        if not outcome.passed:
            print(f"node {outcome.node} failed this check and gets no more jobs from you "
                  f"(`pointillist reputation`)", file=sys.stderr)
    if warning:
        print(warning, file=sys.stderr)


def _reproduce(reproducer, report, data: bytes):
    """The reproduction of a verified image, or None when it did not verify (nothing to re-run)."""
    if not report.ok or report.statement is None:
        return None
    from ..attestation.png import read_png

    image = read_png(data).image  # RGB8: the pixels check passed
    return reproducer.reproduce(report.statement.record, image)


_MARK = {True: "ok  ", False: "FAIL", None: "----"}


def _print_text(report, reproducing: bool, reproduction, title: str | None) -> None:
    from .report import print_report

    if not reproducing:
        print_report(report, sys.stdout, title=title)
        return
    text = io.StringIO()
    print_report(report, text, title=title)
    lines = text.getvalue().splitlines()
    verdict = lines.pop()  # "verified" / "NOT VERIFIED": the reproduction goes before it
    for line in lines:
        print(line)
    if reproduction is None:
        print(f"skip  {'reproduce':<12} needs a verified image")
        print(verdict)
        return
    print(f"{_MARK[reproduction.ok]}  {'reproduce':<12} {_printable(reproduction.detail)}")
    tail = {"bit-for-bit": "reproduced bit for bit", "within-tolerance": "reproduced within tolerance",
            "mismatch": "NOT REPRODUCED: the attested generation gives other pixels",
            "cannot-reproduce": "not reproduced here (cannot reproduce)"}[reproduction.outcome]
    print(f"{verdict}, {tail}")


def _json_dict(report, reproducing: bool, reproduction) -> dict:
    out = report.to_json_dict()
    if reproducing:
        out["reproduce"] = reproduction.to_json_dict() if reproduction is not None else None
    return out


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    print()
