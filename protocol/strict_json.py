"""One strict JSON reader for everything signed or sent by others: DSSE envelopes, jobs, fetch
requests, capacity records and attestation statements (docs/attestation.md, "Strict JSON").

Refuses what two JSON parsers could read differently, so that every verifier reaches the same
verdict on the same bytes:

* bytes that are not UTF-8 (a BOM, UTF-16), and anything outside RFC 8259's grammar (trailing
  data, raw control characters in strings, ``NaN``/``Infinity``);
* repeated keys in an object (which copy wins?), compared after unescaping;
* strings holding a lone surrogate escape (``"\\ud800"``): not Unicode text, and not encodable
  as UTF-8, so other parsers replace, keep or refuse it;
* numbers with a fraction or exponent that overflow an IEEE 754 double (``1e400``);
* nesting deeper than ``MAX_DEPTH`` arrays and objects (stack exhaustion in recursive parsers).

Integers keep full precision; whether a member takes an integer or any number is the schema's
business.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting of arrays and objects accepted: ``{}`` is depth 1. Our documents need 4.
MAX_DEPTH = 32
_TOO_DEEP = f"JSON is nested too deeply (more than {MAX_DEPTH} levels)"


class StrictJSONError(ValueError):
    """Why the text is not acceptable JSON; one line."""


def loads_strict(data: bytes | str) -> Any:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StrictJSONError("not UTF-8") from None
    else:
        _text(data)  # text decoded from UTF-8 has no surrogates; text from elsewhere may
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants,
                           parse_float=_finite_float)
    except _DuplicateKey as exc:
        raise StrictJSONError(f"JSON repeats the key {exc.args[0]!r}") from None
    except RecursionError:
        raise StrictJSONError(_TOO_DEEP) from None
    except ValueError as exc:
        raise StrictJSONError(f"not valid JSON: {str(exc).splitlines()[0]}") from None
    # Cheap tests first: most documents have no escapes and few brackets.
    if "\\u" in data or data.count("[") + data.count("{") > MAX_DEPTH:
        _check_tree(value)
    return value


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


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range for a double")
    return value


def _check_tree(value: Any) -> None:
    """Depth and lone surrogates, without recursion (the value may be deep)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _text(item)
        elif isinstance(item, (dict, list)):
            if depth + 1 > MAX_DEPTH:
                raise StrictJSONError(_TOO_DEEP)
            if isinstance(item, dict):
                for key in item:
                    _text(key)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJSONError("JSON holds a lone surrogate (\\ud800 to \\udfff alone is not Unicode text)") from None
