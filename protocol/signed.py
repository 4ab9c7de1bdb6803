"""Reading signed JSON from others: verify the signature, parse strictly, check the schema,
and say what is wrong in one line of *our* error type.

Jobs and fetches from requesters, capacity records from nodes (``RemoteError``: a peer sent
something we cannot accept) and attestation statements (``VerificationError``: an image does not
verify) all go through here, so every signed payload meets the same strict JSON rules
(``strict_json``) and its problems read alike: ``"<what>: <why>"``.

Pure code: bytes in, values or exceptions out.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from .dsse import Envelope
from .errors import PointillistError, VerificationError
from .strict_json import StrictJSONError, loads_strict

T = TypeVar("T")


class SchemaError(ValueError):
    """A JSON value breaks a schema: ``path`` names the member (``predicate.seed``, ``subject.0``;
    empty for the whole document), ``problem`` says what is wrong, one line each."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def parse_signed_json(
    payload: bytes,
    schema: Callable[[Any], T],
    *,
    what: str,
    error: type[PointillistError],
    max_bytes: int | None = None,
) -> T:
    """``schema(loads_strict(payload))``, or ``error`` naming ``what`` and the first problem.

    ``schema`` takes the parsed JSON value and returns the typed value or raises ``SchemaError``.
    It checks no signature: use it alone only where the caller verifies the envelope itself.
    """
    if max_bytes is not None and len(payload) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes")
    try:
        obj = loads_strict(payload)
    except StrictJSONError as exc:
        raise error(f"{what}: {exc}") from None
    try:
        return schema(obj)
    except SchemaError as exc:
        raise error(f"invalid {what} field {exc}" if exc.path else f"invalid {what}: {exc}") from None


def open_signed(
    envelope: Envelope,
    payload_type: str,
    schema: Callable[[Any], T],
    *,
    what: str,
    error: type[PointillistError],
    signature_error: type[PointillistError] | None = None,
) -> T:
    """Verify ``envelope`` as ``payload_type``, then ``parse_signed_json`` its payload.

    A wrong payload type or signature raises ``VerificationError`` (``SignatureError`` for the
    signature) unless ``signature_error`` is given, in which case that type is raised instead,
    chained to the original; a bad payload raises ``error``.
    """
    try:
        payload = envelope.verify(payload_type)
    except VerificationError as exc:
        if signature_error is None:
            raise
        raise signature_error(f"{what} not signed: {exc}") from exc
    return parse_signed_json(payload, schema, what=what, error=error)
