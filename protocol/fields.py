"""Field types shared by every schema of signed or peer-sent data (jobs, attestations, records)."""

from __future__ import annotations

from typing import Annotated, Any, Callable, TypeVar

from pydantic import AfterValidator, BaseModel, StringConstraints, ValidationError

from .signed import SchemaError

M = TypeVar("M", bound=BaseModel)


def _below_2_64(value: str) -> str:
    if int(value) >= 2**64:
        raise ValueError("seed must be below 2**64")
    return value


#: 128 random bits in lowercase hex (job ids, nonces).
Hex128 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
#: A libp2p peer ID in base58btc; whether it holds an Ed25519 key is checked when verifying.
PeerIdStr = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{40,60}$")]
#: A seed as a decimal string without leading zeros, below 2**64 (torch's generator range).
#: A string because JSON parsers lose integers above 2**53.
SeedStr = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,19})$"), AfterValidator(_below_2_64)]
#: Prompts and negative prompts.
PromptStr = Annotated[str, StringConstraints(max_length=4000)]


def first_problem(exc, default_place: str) -> str:
    """``"<field path>: <message>"`` for the first error of a pydantic ``ValidationError``:
    one line for a user or a log, whatever the schema."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or default_place
    return f"{where}: {first['msg']}"


def model_schema(model: type[M], default_place: str) -> Callable[[Any], M]:
    """``model.model_validate`` as a schema for ``protocol.signed``: pydantic's errors become one
    ``SchemaError`` line naming the first problem."""

    def validate(obj: Any) -> M:
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise SchemaError(first_problem(exc, default_place)) from None

    return validate
