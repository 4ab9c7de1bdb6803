"""The strict JSON and base64 rules every signed document is read with (docs/attestation.md,
"Strict JSON"), and the one helper that turns signed bytes into values or our errors."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import RemoteError, SignatureError, VerificationError
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import open_job, sign_job
from pointillist.protocol.signed import SchemaError, open_signed, parse_signed_json
from pointillist.protocol.strict_json import MAX_DEPTH, StrictJSONError, loads_strict
from support import load_vector_generator

V = load_vector_generator()
KEY = Identity(bytes(range(32)))


@pytest.mark.parametrize("data,reason", [
    (b'{"a":1,"a":1}', "repeats the key 'a'"),
    (b'{"x":{"a":1,"\\u0061":2}}', "repeats the key 'a'"),  # compared after unescaping, at any depth
    (b'[NaN]', "NaN is not JSON"),
    (b'[Infinity]', "Infinity is not JSON"),
    (b'[-Infinity]', "-Infinity is not JSON"),
    (b'[1e400]', "out of range for a double"),
    (b'[-1e400]', "out of range for a double"),
    (b'["\\ud800"]', "lone surrogate"),
    (b'{"\\udc00":1}', "lone surrogate"),
    (b'["\\ude00\\ud83d"]', "lone surrogate"),  # a pair in the wrong order is two lone halves
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested too deeply"),
    (b"[" * 100_000, "nested too deeply"),
    (b"\xef\xbb\xbf{}", "BOM"),
    (b"\xff{}", "not UTF-8"),
    ("{}".encode("utf-16"), "not UTF-8"),
    (b"{} {}", "Extra data"),
    (b'["a\x01"]', "Invalid control character"),
    (b"[01]", "not valid JSON"),
    (b"[.5]", "not valid JSON"),
    ("\ud800", "lone surrogate"),  # text given as str, not decoded from UTF-8
])
def test_refused(data, reason: str) -> None:
    with pytest.raises(StrictJSONError) as info:
        loads_strict(data)
    assert reason in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("data,value", [
    (b'["\\ud83d\\ude00"]', ["\U0001F600"]),  # a surrogate pair is one code point
    (b"[18446744073709551615]", [2**64 - 1]),  # integers keep full precision
    (b"[-0, 7, 7.0, 7.5e0]", [0, 7, 7.0, 7.5]),
    (b' {"a" : [ 1 ] }\n', {"a": [1]}),
])
def test_accepted(data: bytes, value) -> None:
    assert loads_strict(data) == value


def test_depth_limit_is_inclusive() -> None:
    deepest = loads_strict(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        (deepest,) = deepest
    assert deepest == []


# --- base64 ---------------------------------------------------------------------------------------


def envelope_json(payload_b64: str, sig_b64: str) -> str:
    return json.dumps({"payloadType": "t", "payload": payload_b64, "signatures": [{"keyid": "k", "sig": sig_b64}]})


@pytest.mark.parametrize("payload,reason", [
    ("QR==", "not canonical base64"),  # b"A" with non-zero padding bits
    ("QUI=", None),
    ("QUJ=", "not canonical base64"),
    ("QQ", "not valid base64"),  # padding left out
    ("QQ===", "not valid base64"),
    ("Q Q==", "not valid base64"),
    ("QQ==\n", "not valid base64"),
    ("-_8=", "not valid base64"),  # the URL-safe alphabet
])
def test_envelope_base64_must_be_canonical(payload: str, reason: str | None) -> None:
    text = envelope_json(payload, base64.b64encode(bytes(64)).decode())
    if reason is None:
        assert Envelope.from_json(text).payload == base64.b64decode(payload)
    else:
        with pytest.raises(VerificationError, match=reason):
            Envelope.from_json(text)


@given(st.binary(max_size=100))
def test_every_envelope_we_write_reads_back(payload: bytes) -> None:
    envelope = sign_envelope(KEY, "t", payload)
    assert Envelope.from_json(envelope.to_json()) == envelope


# --- the signed-JSON helper -----------------------------------------------------------------------


def schema(obj):
    if not isinstance(obj, dict):
        raise SchemaError("", "must be an object")
    if set(obj) != {"n"}:
        raise SchemaError("n", "the only member")
    return obj["n"]


@pytest.mark.parametrize("error", [RemoteError, VerificationError])
def test_parse_signed_json_raises_the_callers_error(error) -> None:
    assert parse_signed_json(b'{"n":1}', schema, what="thing", error=error) == 1
    for data, reason in ((b'{"n":1,"n":2}', "thing: JSON repeats the key 'n'"),
                         (b'{"m":1}', "invalid thing field n: the only member"),
                         (b'[1]', "invalid thing: must be an object"),
                         (b'{"n":"' + b"x" * 100 + b'"}', "thing is larger than 50 bytes")):
        with pytest.raises(error) as info:
            parse_signed_json(data, schema, what="thing", error=error, max_bytes=50)
        assert type(info.value) is error and str(info.value) == reason


def test_open_signed_checks_the_signature_first() -> None:
    good = sign_envelope(KEY, "t", b'{"n":1}')
    assert open_signed(good, "t", schema, what="thing", error=RemoteError) == 1
    forged = Envelope("t", b'{"n":2}', good.keyid, good.sig)
    with pytest.raises(SignatureError):
        open_signed(forged, "t", schema, what="thing", error=RemoteError)
    with pytest.raises(RemoteError, match="thing not signed: envelope signature invalid"):
        open_signed(forged, "t", schema, what="thing", error=RemoteError, signature_error=RemoteError)
    with pytest.raises(VerificationError, match="payload type"):
        open_signed(good, "other", schema, what="thing", error=RemoteError)


def test_job_limits_count_code_points() -> None:
    # 4000 code points outside the BMP: 8000 UTF-16 units, 16000 UTF-8 bytes, still 4000 characters.
    at_limit = V.job_request("00112233445566778899aabbccddeeff", "\U0001F30A" * 4000)
    assert open_job(sign_job(V.REQUESTER, at_limit)).request.prompt == "\U0001F30A" * 4000
    payload = sign_job(V.REQUESTER, at_limit).payload.replace("\U0001F30A".encode() * 4000,
                                                               "\U0001F30A".encode() * 4001)
    with pytest.raises(RemoteError, match="prompt"):
        open_job(sign_envelope(V.REQUESTER, "application/vnd.pointillist.job.v1+json", payload))
