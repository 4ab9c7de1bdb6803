"""Printing a ``VerificationReport``: one line per check."""

from __future__ import annotations

from typing import TextIO

_MARK = {True: "ok  ", False: "FAIL", None: "skip"}


def print_report(report, out: TextIO, title: str | None = None) -> None:
    """The checks, then ``verified`` or ``NOT VERIFIED``; ``title`` (a file name) first if given."""
    if title is not None:
        print(_printable(title), file=out)
    for check in report.checks:
        print(f"{_MARK[check.ok]}  {check.name:<12} {check.detail}", file=out)
    print("verified" if report.ok else "NOT VERIFIED", file=out)


def _printable(text: str) -> str:
    # A file name may hold newlines or escape codes; the report stays one line per item.
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
