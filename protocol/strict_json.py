"""One strict JSON reader for everything signed or sent by others.

Refuses what two JSON parsers could read differently: repeated keys (which copy wins?),
NaN/Infinity (not JSON), and nesting deep enough to exhaust the stack.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(ValueError):
    """Why the text is not acceptable JSON; one line."""


def loads_strict(data: bytes | str) -> Any:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StrictJSONError("not UTF-8") from None
    try:
        return json.loads(data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise StrictJSONError(f"JSON repeats the key {exc.args[0]!r}") from None
    except RecursionError:
        raise StrictJSONError("JSON is nested too deeply") from None
    except ValueError as exc:
        raise StrictJSONError(f"not valid JSON: {str(exc).splitlines()[0]}") from None


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
