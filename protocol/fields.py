"""Pydantic field types and error formatting for the schemas a running node reads from peers
(fetch requests, capacity records, wire messages). The job and the statement, which an offline
verifier reads too, use ``schema`` instead, with the same patterns."""

from __future__ import annotations

from typing import Annotated, Any, Callable, TypeVar

from pydantic import BaseModel, StringConstraints, ValidationError

from .schema import HEX128, PEER_ID
from .signed import SchemaError

M = TypeVar("M", bound=BaseModel)

#: 128 random bits in lowercase hex (job ids, nonces).
Hex128 = Annotated[str, StringConstraints(pattern=rf"^{HEX128}$")]
#: A libp2p peer ID in base58btc; whether it holds an Ed25519 key is checked when verifying.
PeerIdStr = Annotated[str, StringConstraints(pattern=rf"^{PEER_ID}$")]


def first_problem(exc: ValidationError, default_place: str) -> str:
    """``"<field path>: <message>"`` for the first error of a pydantic ``ValidationError``:
    one line for a user or a log, whatever the schema."""
    path, message = _first(exc)
    return f"{path or default_place}: {message}"


def model_schema(model: type[M]) -> Callable[[Any], M]:
    """``model.model_validate`` as a schema for ``protocol.signed``: pydantic's errors become one
    ``SchemaError`` naming the first problem."""

    def validate(obj: Any) -> M:
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise SchemaError(*_first(exc)) from None

    return validate


def _first(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]
