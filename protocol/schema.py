"""Strict schemas for the JSON an offline verifier reads (jobs, attestation statements), in
plain Python.

Why not pydantic, as for records and wire messages: pydantic builds its validators when a model
class is defined, and importing it plus building the job and statement models cost ~100 ms, more
than the rest of ``pointillist verify`` together (issue 7, item 8). These few checks keep the
same strictness: exact members, exact JSON types (a boolean is not a number, ``20.0`` is not an
integer), lengths in code points, full-string patterns.

A check is a function ``(value, path) -> value`` returning the value (a float for numbers, a dict
by member name for objects) or raising ``SchemaError(path, problem)``. Pure code.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .signed import SchemaError

Check = Callable[[Any, str], Any]

#: Patterns shared with the pydantic field types of ``fields.py``; always matched in full.
HEX128 = "[0-9a-f]{32}"
HEX256 = "[0-9a-f]{64}"
PEER_ID = "[1-9A-HJ-NP-Za-km-z]{40,60}"  # base58btc; whether it holds a key is checked when verifying
SEED = "0|[1-9][0-9]{0,19}"  # decimal without leading zeros; below 2**64 is checked apart


def string(min_length: int = 0, max_length: int | None = None, pattern: str | None = None) -> Check:
    """A JSON string; lengths count code points; ``pattern`` must match the whole string."""
    regex = re.compile(pattern) if pattern is not None else None

    def check(value: Any, path: str) -> str:
        if type(value) is not str:
            raise SchemaError(path, "must be a string")
        if len(value) < min_length:
            raise SchemaError(path, f"must be at least {min_length} characters")
        if max_length is not None and len(value) > max_length:
            raise SchemaError(path, f"must be at most {max_length} characters")
        if regex is not None and regex.fullmatch(value) is None:
            raise SchemaError(path, f"must match {pattern}")
        return value

    return check


def integer(ge: int, le: int) -> Check:
    """A JSON integer (no fraction, no exponent, not a boolean) in ``[ge, le]``."""

    def check(value: Any, path: str) -> int:
        if type(value) is not int:
            raise SchemaError(path, "must be an integer")
        if value < ge:
            raise SchemaError(path, f"must be at least {ge}")
        if value > le:
            raise SchemaError(path, f"must be at most {le}")
        return value

    return check


def number(ge: float, le: float) -> Check:
    """Any JSON number (not a boolean) in ``[ge, le]``, returned as a float."""

    def check(value: Any, path: str) -> float:
        if type(value) not in (int, float):
            raise SchemaError(path, "must be a number")
        if not ge <= value <= le:  # before float(): a huge integer would overflow it
            raise SchemaError(path, f"must be between {ge:g} and {le:g}")
        return float(value)

    return check


def exactly(expected: str) -> Check:
    def check(value: Any, path: str) -> str:
        if value != expected or type(value) is not str:
            raise SchemaError(path, f"must be {expected!r}")
        return value

    return check


def array(item: Check, min_length: int, max_length: int) -> Check:
    def check(value: Any, path: str) -> list:
        if type(value) is not list:
            raise SchemaError(path, "must be an array")
        if not min_length <= len(value) <= max_length:
            count = f"exactly {min_length}" if min_length == max_length else f"{min_length} to {max_length}"
            raise SchemaError(path, f"must hold {count} items, not {len(value)}")
        return [item(v, _join(path, str(i))) for i, v in enumerate(value)]

    return check


def members(spec: dict[str, Check]) -> Check:
    """A JSON object with exactly the members of ``spec``, none missing, none unknown."""

    def check(value: Any, path: str) -> dict[str, Any]:
        if type(value) is not dict:
            raise SchemaError(path, "must be an object")
        for key in value:
            if key not in spec:
                raise SchemaError(_join(path, key), "unknown member")
        missing = [key for key in spec if key not in value]
        if missing:
            raise SchemaError(_join(path, missing[0]), "missing")
        return {key: member(value[key], _join(path, key)) for key, member in spec.items()}

    return check


def seed(value: Any, path: str) -> str:
    """A seed: a decimal string below 2**64 (a string: JSON numbers lose precision past 2**53)."""
    string(pattern=SEED)(value, path)
    if int(value) >= 2**64:
        raise SchemaError(path, "must be below 2**64")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
