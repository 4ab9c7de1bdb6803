"""``pointillist verify IMAGE...``: offline check of images' embedded attestations.

Imports neither torch, libp2p nor pydantic: it must answer about as fast as decoding the PNG
(bench/bench_verify.py). Several images are checked in one process, one report each.
Exit status: 0 all verified, 1 a check failed, 2 a file could not be read (the others are still
checked and reported).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                   help="PNG written by pointillist (or any tool that kept its chunks)")
    p.add_argument("--expect-node", metavar="PEER_ID", help="fail unless this node signed it")
    p.add_argument("--expect-model", metavar="DIGEST",
                   help="fail unless made with this model digest (full, or its first 10+ hex digits)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON; with several images, a list of reports, each with its file")


def run(args: argparse.Namespace) -> int:
    from ..attestation.verify import verify_image
    from ..protocol.errors import UsageError
    from .report import print_report

    if args.expect_model is not None and not re.fullmatch(r"[0-9a-f]{10,64}", args.expect_model):
        # A name is whatever the signing node chose to call its model: it would prove nothing.
        raise UsageError("--expect-model takes a model digest (or its first 10+ hex digits), not a name")
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
        results.append((path, report))
        if not args.json:  # printed as it goes: a long batch shows progress
            if several and len(results) > 1:
                print()
            print_report(report, sys.stdout, title=str(path) if several else None)
    if args.json and several:
        _print_json([{"file": str(path), **report.to_json_dict()} for path, report in results])
    elif args.json and results:
        _print_json(results[0][1].to_json_dict())
    if unreadable:
        return 2
    return 0 if all(report.ok for _, report in results) else 1


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    print()
