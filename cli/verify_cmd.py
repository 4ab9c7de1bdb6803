"""``pointillist verify IMAGE``: offline check of an image's embedded attestation.

Imports neither torch nor libp2p: it must answer in well under a second.
Exit status: 0 verified, 1 a check failed, 2 the file could not be read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="PNG written by pointillist (or any tool that kept its chunks)")
    p.add_argument("--expect-node", metavar="PEER_ID", help="fail unless this node signed it")
    p.add_argument("--expect-model", metavar="DIGEST",
                   help="fail unless made with this model digest (full, or its first 10+ hex digits)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..attestation.verify import verify_image
    from ..protocol.errors import UsageError
    from .report import print_report

    if args.expect_model is not None and not re.fullmatch(r"[0-9a-f]{10,64}", args.expect_model):
        # A name is whatever the signing node chose to call its model: it would prove nothing.
        raise UsageError("--expect-model takes a model digest (or its first 10+ hex digits), not a name")
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.image}: {exc.strerror}") from exc
    report = verify_image(data, expect_node=args.expect_node, expect_model=args.expect_model)
    if args.json:
        json.dump(report.to_json_dict(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print_report(report, sys.stdout)
    return 0 if report.ok else 1
