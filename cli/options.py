"""Argument types shared by subcommands; each raises argparse errors with a one-line message."""

from __future__ import annotations

import argparse
import re


#: The sides a signed job may ask for (protocol/jobs.py); a node's own limits may be tighter.
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 8, 8192, 8
#: Images one ``submit -n`` may ask for per prompt.
MAX_COUNT = 100


def image_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"([+-]?\d+)(?:x([+-]?\d+))?", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or one number, e.g. 512x512: {text!r}")
    sides = int(m.group(1)), int(m.group(2) or m.group(1))
    for side in sides:
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise argparse.ArgumentTypeError(f"each side must be {MIN_SIDE} to {MAX_SIDE} pixels: {text!r}")
        if side % SIDE_MULTIPLE:
            raise argparse.ArgumentTypeError(f"each side must be a multiple of {SIDE_MULTIPLE}: {text!r}")
    return sides


def count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"at most {MAX_COUNT} images per prompt: {text!r}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer: {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError("seed must be between 0 and 2**64-1")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1: {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number: {text!r}") from None
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0: {text!r}")
    return value
