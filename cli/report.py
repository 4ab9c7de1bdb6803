"""Printing a ``VerificationReport``: one line per check."""

from __future__ import annotations

from typing import TextIO

_MARK = {True: "ok  ", False: "FAIL", None: "skip"}


def print_report(report, out: TextIO) -> None:
    for check in report.checks:
        print(f"{_MARK[check.ok]}  {check.name:<12} {check.detail}", file=out)
    print("verified" if report.ok else "NOT VERIFIED", file=out)
