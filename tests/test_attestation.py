"""Statement, signing and verification of attestations (PNG details: test_attestation_png.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pointillist.attestation as attestation_pkg
from pointillist.attestation import (
    ATTESTATION_PAYLOAD_TYPE,
    CHECK_NAMES,
    GenerationRecord,
    PixelSubject,
    Statement,
    attest,
    build_statement,
    embed_provenance,
    extract_provenance,
    parse_statement,
    pixel_subject,
    rfc3339_utc,
    verify_attestation,
    verify_image,
)
from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import SignatureError, UsageError, VerificationError
from pointillist.protocol.jobs import sign_job
from pointillist.protocol.settings import SETTING_NAMES
from support import load_vector_generator

from support import VECTORS  # noqa: E402




V = load_vector_generator()


@dataclasses.dataclass(frozen=True)
class Signed:
    image: Image.Image
    job: Envelope
    record: GenerationRecord
    envelope: Envelope
    png: bytes


def make_signed(prompt: str = "a lighthouse at dusk", **record_changes) -> Signed:
    image = V.gradient()
    request = V.job_request("00112233445566778899aabbccddeeff", prompt)
    job = sign_job(V.REQUESTER, request)
    record = replace_record(V.record_for(job, request), **record_changes)
    envelope = attest(V.NODE, record, image)
    return Signed(image, job, record, envelope, embed_provenance(image, envelope, job))


def replace_record(record: GenerationRecord, **changes) -> GenerationRecord:
    """``dataclasses.replace`` that also reaches into ``record.settings``."""
    settings = {k: changes.pop(k) for k in list(changes) if k in SETTING_NAMES}
    return dataclasses.replace(record, settings=dataclasses.replace(record.settings, **settings), **changes)


@pytest.fixture(scope="module")
def signed() -> Signed:
    return make_signed()


# --- round trip ----------------------------------------------------------------------------------


def test_sign_embed_extract_verify_round_trip(signed: Signed) -> None:
    provenance = extract_provenance(signed.png)
    assert provenance.attestation == signed.envelope
    assert provenance.job == signed.job
    assert provenance.image.tobytes() == signed.image.tobytes()
    statement = verify_attestation(provenance.attestation, provenance.image)
    assert statement.record == signed.record

    report = verify_image(signed.png, expect_node=V.NODE.peer_id, expect_model=V.MODEL_NAME)
    assert report.ok
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert all(c.ok for c in report.checks)
    assert report.statement == statement
    assert report.job is not None and report.job.prompt == signed.record.settings.prompt
    encoded = json.dumps(report.to_json_dict())
    assert json.loads(encoded)["ok"] is True


def test_statement_round_trip_and_canonical_bytes(signed: Signed) -> None:
    subject = pixel_subject(signed.image)
    payload = build_statement(signed.record, subject)
    assert parse_statement(payload) == Statement(subject, signed.record)
    obj = json.loads(payload)
    assert payload == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert obj["predicate"]["seed"] == "1234" and obj["predicate"]["guidance"] == 7.5
    assert obj["subject"] == [{"name": "rgb8:16x16", "digest": {"sha256": subject.sha256}}]
    assert Statement(subject, signed.record).to_json_dict() == obj


def test_non_ascii_prompt_is_utf8_not_escaped() -> None:
    s = make_signed(prompt="灯台 — phare")
    assert "灯台 — phare".encode() in s.envelope.payload
    assert verify_image(s.png).ok


def test_rfc3339_utc() -> None:
    assert rfc3339_utc(1795341600.9) == "2026-11-22T10:00:00Z"


# --- strict parsing ------------------------------------------------------------------------------


def _payload(signed: Signed) -> dict:
    return json.loads(signed.envelope.payload)


def _edit(obj: dict, path: str, value) -> dict:
    obj = json.loads(json.dumps(obj))
    *parents, last = path.split(".")
    target = obj
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return obj


_DELETE = object()

BAD_STATEMENTS = [
    ("_type", "https://in-toto.io/Statement/v0.1", "statement _type is"),
    ("predicateType", "https://slsa.dev/provenance/v1", "predicateType is"),
    ("predicate.extra", 1, "predicate.extra: unknown member"),
    ("extra", 1, "field extra"),
    ("predicate.seed", 1234, "predicate.seed"),
    ("predicate.seed", "01234", "predicate.seed"),
    ("predicate.seed", str(2**64), "below 2**64"),
    ("predicate.steps", 20.0, "predicate.steps"),
    ("predicate.steps", True, "predicate.steps"),
    ("predicate.guidance", "7.5", "predicate.guidance"),
    ("predicate.width", 32, "does not match the predicate size 32x16"),
    ("predicate.prompt", _DELETE, "predicate.prompt: missing"),
    ("predicate.libraries.torch", _DELETE, "predicate.libraries.torch"),
    ("predicate.libraries.numpy", "2.0", "predicate.libraries.numpy"),
    ("predicate.model.digest.pointillist-model-v1", "AB" * 32, "pointillist-model-v1"),
    ("predicate.model.digest.sha256", "ab" * 32, "predicate.model.digest.sha256"),
    ("predicate.createdAt", "2026-11-22T10:00:00+00:00", "predicate.createdAt"),
    ("predicate.createdAt", "2026-02-30T10:00:00Z", "not a valid date"),
    ("predicate.createdAt", "2016-12-31T23:59:60Z", "leap second"),
    ("predicate.createdAt", "2026-11-22T10:00:61Z", "leap second"),
    ("predicate.createdAt", "0000-01-01T00:00:00Z", "not a valid date"),
    ("predicate.node", "not a peer id!", "predicate.node"),
    ("predicate.job.id", "xyz", "predicate.job.id"),
    ("subject.0.name", "rgb8:016x16", "subject.0.name"),
    ("subject.0.digest.sha512", "00", "subject.0.digest.sha512"),
    ("subject", [], "subject"),
]


@pytest.mark.parametrize("path,value,reason", BAD_STATEMENTS, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD_STATEMENTS])
def test_parse_statement_refuses(signed: Signed, path: str, value, reason: str) -> None:
    data = json.dumps(_edit(_payload(signed), path, value)).encode()
    with pytest.raises(VerificationError) as info:
        parse_statement(data)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_statement_refuses_two_subjects(signed: Signed) -> None:
    obj = _payload(signed)
    obj["subject"] = obj["subject"] * 2
    with pytest.raises(VerificationError, match="subject"):
        parse_statement(json.dumps(obj).encode())


@pytest.mark.parametrize(
    "data,reason",
    [
        (b'{"_type": 1, "_type": 2}', "repeats the key '_type'"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("{}".encode("utf-16"), "not UTF-8"),
        (b"[1]", "not a JSON object"),
        (b"[" * 100_000, "nested too deeply"),
        (b"{" + b" " * (300 * 1024) + b"}", "larger than"),
    ],
)
def test_parse_statement_refuses_bad_json(data: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        parse_statement(data)


def test_parse_statement_refuses_lone_surrogate(signed: Signed) -> None:
    text = json.dumps(_payload(signed)).replace('"prompt": "', '"prompt": "\\ud800', 1)
    with pytest.raises(VerificationError, match="surrogate"):
        parse_statement(text.encode())


def test_guidance_may_be_written_as_an_integer(signed: Signed) -> None:
    data = json.dumps(_edit(_payload(signed), "predicate.guidance", 7)).encode()
    assert parse_statement(data).record.settings.guidance == 7.0


@pytest.mark.parametrize(
    "change",
    [{"steps": 0}, {"seed": -1}, {"seed": "1234"}, {"seed": True}, {"guidance": "7"}, {"model_digest": "ab"},
     {"prompt": "\ud800"}, {"libraries": {"torch": "2"}}, {"created_at": "yesterday"}],
)
def test_build_statement_refuses_invalid_records(signed: Signed, change: dict) -> None:
    record = replace_record(signed.record, **change)
    with pytest.raises(UsageError):
        build_statement(record, pixel_subject(signed.image))


# --- signing -------------------------------------------------------------------------------------


def test_attest_refuses_a_record_for_another_node(signed: Signed) -> None:
    with pytest.raises(UsageError, match="signing key"):
        attest(V.OTHER, signed.record, signed.image)


def test_attest_refuses_a_size_mismatch(signed: Signed) -> None:
    with pytest.raises(UsageError, match="differs from the image"):
        attest(V.NODE, signed.record, signed.image.resize((32, 32)))


def test_attest_refuses_transparent_images(signed: Signed) -> None:
    rgba = signed.image.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 10))
    with pytest.raises(UsageError, match="transparent"):
        attest(V.NODE, signed.record, rgba)


def test_embed_refuses_an_attestation_of_other_pixels(signed: Signed) -> None:
    other = signed.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with pytest.raises(UsageError, match="not this image's pixels"):
        embed_provenance(other, signed.envelope, signed.job)
    with pytest.raises(UsageError, match="not a job envelope"):
        embed_provenance(signed.image, signed.envelope, signed.envelope)


# --- verification --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_of_the_payload_fails(signed: Signed, data: st.DataObject) -> None:
    payload = signed.envelope.payload
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != payload[index]), label="byte")
    tampered = payload[:index] + bytes([byte]) + payload[index + 1 :]
    envelope = dataclasses.replace(signed.envelope, payload=tampered)
    with pytest.raises(SignatureError):
        verify_attestation(envelope, signed.image)


def test_verify_attestation_order_and_errors(signed: Signed) -> None:
    wrong_type = sign_envelope(V.NODE, "application/json", signed.envelope.payload)
    with pytest.raises(VerificationError, match="payload type"):
        verify_attestation(wrong_type, signed.image)
    resigned = sign_envelope(V.OTHER, ATTESTATION_PAYLOAD_TYPE, signed.envelope.payload)
    with pytest.raises(VerificationError, match="statement names node"):
        verify_attestation(resigned, signed.image)
    touched = signed.image.copy()
    touched.putpixel((5, 5), (0, 0, 0))
    with pytest.raises(VerificationError, match="pixel sha256"):
        verify_attestation(signed.envelope, touched)
    with pytest.raises(UsageError):
        verify_attestation(signed.envelope, signed.png)  # type: ignore[arg-type]


def test_failed_signature_skips_dependent_checks(signed: Signed) -> None:
    forged = dataclasses.replace(signed.envelope, payload=signed.envelope.payload.replace(b"dusk", b"dawn"))
    report = verify_image(V._encode_png(signed.image, V.texts(forged, signed.job, None)))
    assert [(c.name, c.ok) for c in report.checks] == [
        ("attestation", True), ("signature", False), ("pixels", None), ("model", None),
        ("node", None), ("job binding", None), ("parameters", None),
    ]
    assert report.statement is None and report.job is None and not report.ok
    assert report.to_json_dict()["statement"] is None


def test_report_ok_needs_the_signature() -> None:
    report = verify_image(b"")
    assert report.check("attestation").ok is False
    assert all(c.ok is None for c in report.checks[1:])
    assert not report.ok
    with pytest.raises(UsageError):
        report.check("colour")


@pytest.mark.parametrize(
    "expect,ok",
    [
        (V.MODEL_NAME, True),
        (V.MODEL_DIGEST, True),
        (V.MODEL_DIGEST[:10].upper(), True),
        ("pointillist-model-v1:" + V.MODEL_DIGEST[:12], True),
        (V.MODEL_DIGEST[:9], False),
        (V.MODEL_NAME.upper(), False),
        ("0" * 64, False),
    ],
)
def test_expect_model(signed: Signed, expect: str, ok: bool) -> None:
    assert verify_image(signed.png, expect_model=expect).check("model").ok is ok


def test_job_for_the_digest_instead_of_the_name_binds(signed: Signed) -> None:
    request = dataclasses.replace(V.job_request("00112233445566778899aabbccddeeff", "x"), model=V.MODEL_DIGEST)
    job = sign_job(V.REQUESTER, request)
    record = V.record_for(job, request)
    envelope = attest(V.NODE, record, signed.image)
    assert verify_image(embed_provenance(signed.image, envelope, job)).ok


def test_details_escape_control_characters() -> None:
    s = make_signed(model_name="evil\x1b[2J\nmodel")
    report = verify_image(s.png)
    detail = report.check("model").detail
    assert "\x1b" not in detail and "\n" not in detail and "\\x1b" in detail


def test_verify_image_refuses_misuse() -> None:
    with pytest.raises(UsageError):
        verify_image("not bytes")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        verify_image(b"", expect_node=123)  # type: ignore[arg-type]


# --- package surface -----------------------------------------------------------------------------


def test_public_names() -> None:
    assert sorted(attestation_pkg.__all__) == sorted(set(attestation_pkg.__all__))
    for name in attestation_pkg.__all__:
        assert hasattr(attestation_pkg, name), name
    public = {n for n in vars(attestation_pkg) if not n.startswith("_")}
    modules = {"a1111", "audit_verdict", "pixels", "png", "sign", "statement", "trajectory", "verify"}
    assert public - modules == set(attestation_pkg.__all__)
    assert PixelSubject(1, 2, "00").name == "rgb8:1x2"


def test_verify_imports_nothing_heavy() -> None:
    code = (
        "import sys, pointillist.attestation.verify\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'libp2p', 'trio', 'pydantic', 'msgpack'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_hashes_are_of_the_payload_as_signed(signed: Signed) -> None:
    obj = _payload(signed)
    assert obj["predicate"]["job"]["requestSha256"] == hashlib.sha256(signed.job.payload).hexdigest()


def test_a_signed_job_never_passes_as_an_attestation(signed: Signed) -> None:
    as_is = verify_image(V._encode_png(signed.image, V.texts(signed.job, signed.job, None)))
    assert "payload type" in as_is.check("attestation").detail
    retyped = dataclasses.replace(signed.job, payload_type=ATTESTATION_PAYLOAD_TYPE)
    with pytest.raises(VerificationError):
        verify_attestation(retyped, signed.image)


def test_spec_is_enough_for_an_independent_verifier() -> None:
    """docs/attestation.md sections 2-4 with nacl, base58, json and hashlib only; none of our code."""
    import base64

    import base58
    from nacl.signing import VerifyKey

    envelope = json.loads((VECTORS / "valid.json").read_bytes())
    payload = base64.b64decode(envelope["payload"], validate=True)
    (signature,) = envelope["signatures"]
    raw = base58.b58decode(signature["keyid"])
    assert len(raw) == 38 and raw[:6] == bytes.fromhex("002408011220")
    ptype = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    VerifyKey(raw[6:]).verify(pae, base64.b64decode(signature["sig"]))
    statement = json.loads(payload)
    assert statement["predicate"]["node"] == signature["keyid"]
    pixels = Image.open(VECTORS / "valid.png").convert("RGB")
    assert statement["subject"][0] == {
        "name": f"rgb8:{pixels.width}x{pixels.height}",
        "digest": {"sha256": hashlib.sha256(pixels.tobytes()).hexdigest()},
    }


# --- predicate generation/v2: sampler and scheduler config ----------------------------------------


def _v2_record() -> GenerationRecord:
    request = V.job_request("4123456789abcdef0123456789abcdef", "a lighthouse", sampler=V.SAMPLER)
    return V.record_for(sign_job(V.REQUESTER, request), request)


def _v2_payload() -> dict:
    return json.loads(attest(V.NODE, _v2_record(), V.gradient()).payload)


def test_v2_statement_round_trips_sampler_and_config() -> None:
    record = _v2_record()
    statement = parse_statement(attest(V.NODE, record, V.gradient()).payload)
    assert statement.record == record and statement.record.scheduler_config == V.SAMPLER_CONFIG
    assert statement.record.predicate_type == "https://pointillist.dev/attestation/generation/v2"
    assert statement.to_json_dict()["predicate"]["sampler"] == V.SAMPLER


V2_CONFIG_BAD = [
    ({}, "must hold 1 to 100"),
    ({f"k{i}": 1 for i in range(101)}, "must hold 1 to 100"),
    ({"_class_name": "x"}, "member names must match"),
    ({"a-b": 1}, "member names must match"),
    ({"nested": {"a": 1}}, "must be null, a boolean, a number or a string"),
    ({"nested": [[1]]}, "must be null, a boolean, a number or a string"),
    ({"big": 2**63}, "integer out of range"),
    ({"long": "x" * 201}, "at most 200 characters"),
    ({"many": [0.5] * 2001}, "at most 2000 items"),
]


@pytest.mark.parametrize("config,reason", V2_CONFIG_BAD, ids=[r for _, r in V2_CONFIG_BAD])
def test_v2_scheduler_config_rules(config: dict, reason: str) -> None:
    obj = _v2_payload()
    obj["predicate"]["schedulerConfig"] = config
    with pytest.raises(VerificationError, match=reason):
        parse_statement(json.dumps(obj).encode())


def test_v2_scheduler_config_accepts_json_scalars_and_flat_arrays() -> None:
    obj = _v2_payload()
    obj["predicate"]["schedulerConfig"] = {"a": None, "b": True, "c": -(2**63), "d": 1e-300, "e": "-Infinity",
                                           "trained_betas": [0.1] * 1000, "f": []}
    assert parse_statement(json.dumps(obj).encode()).record.scheduler_config["c"] == -(2**63)


@pytest.mark.parametrize("predicate_type,member,reason", [
    ("https://pointillist.dev/attestation/generation/v1", "sampler", "predicate.sampler: unknown member"),
    ("https://pointillist.dev/attestation/generation/v3", None, "predicate.trajectory: missing"),
    ("https://pointillist.dev/attestation/generation/v4", None, "expected"),
])
def test_v2_members_belong_to_v2_only(predicate_type: str, member, reason: str) -> None:
    obj = _v2_payload()
    obj["predicateType"] = predicate_type
    with pytest.raises(VerificationError, match=reason):
        parse_statement(json.dumps(obj).encode())


def test_build_statement_keeps_versions_apart() -> None:
    v1 = make_signed().record
    with pytest.raises(UsageError, match="has no scheduler config"):
        attest(V.NODE, dataclasses.replace(v1, scheduler_config={"a": 1}), V.gradient())
    with pytest.raises(UsageError, match="needs its scheduler config"):
        attest(V.NODE, dataclasses.replace(_v2_record(), scheduler_config=None), V.gradient())
    with pytest.raises(UsageError, match="not JSON compliant"):  # infinities must be spelled as strings
        attest(V.NODE, dataclasses.replace(_v2_record(), scheduler_config={"x": float("inf")}), V.gradient())
    with pytest.raises(UsageError, match="schedulerConfig"):
        attest(V.NODE, dataclasses.replace(_v2_record(), scheduler_config={"x": {"y": 1}}), V.gradient())


def test_a1111_sampler_is_the_sampler_name_in_v2_and_the_class_in_v1() -> None:
    from pointillist.attestation import a1111_parameters

    assert ", Sampler: DPM++ 2M Karras, " in a1111_parameters(_v2_record())
    assert ", Sampler: PNDMScheduler, " in a1111_parameters(make_signed().record)
