"""Pixels and PNG embedding of attestations: formats, chunk encodings, hostile files."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pointillist.attestation import (
    ATTESTATION_KEYWORD,
    GenerationRecord,
    a1111_parameters,
    attest,
    embed_provenance,
    extract_provenance,
    pixel_subject,
    read_png,
    rgb8_bytes,
    verify_image,
)
from pointillist.protocol.errors import UsageError, VerificationError
from pointillist.protocol.jobs import sign_job
from pointillist.protocol.settings import SETTING_NAMES
from support import load_vector_generator

from support import VECTORS  # noqa: E402
VALID_PNG = (VECTORS / "valid.png").read_bytes()




V = load_vector_generator()


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length, kind) = struct.unpack(">I4s", png[pos : pos + 8])
        out.append((kind, png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">I4s", len(data), kind) + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in parts
    )
    return b"\x89PNG\r\n\x1a\n" + body


def with_chunk(png: bytes, kind: bytes, data: bytes, before: bytes = b"IDAT") -> bytes:
    parts = chunks(png)
    at = next(i for i, (k, _) in enumerate(parts) if k == before)
    return assemble(parts[:at] + [(kind, data)] + parts[at:])


def without_chunk(png: bytes, keyword: str) -> bytes:
    return assemble([(k, d) for k, d in chunks(png) if not d.startswith(keyword.encode() + b"\0")])


def attestation_text() -> str:
    return extract_provenance(VALID_PNG).attestation.to_json().decode()


# --- pixels --------------------------------------------------------------------------------------


def test_pixel_digest_is_sha256_of_raw_rgb_rows() -> None:
    image = V.gradient()
    raw = bytes(c for y in range(16) for x in range(16) for c in (17 * x, 17 * y, 8 * (x + y)))
    assert rgb8_bytes(image) == raw
    assert pixel_subject(image).sha256 == hashlib.sha256(raw).hexdigest()
    assert pixel_subject(image).name == "rgb8:16x16"


def test_grey_palette_and_opaque_alpha_images_have_their_rgb_digest() -> None:
    grey = V.gradient().convert("L")
    assert pixel_subject(grey) == pixel_subject(grey.convert("RGB"))
    rgba = V.gradient().convert("RGBA")
    assert pixel_subject(rgba) == pixel_subject(V.gradient())


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "1"])
def test_inexact_modes_are_refused(mode: str) -> None:
    with pytest.raises(VerificationError, match="not 8-bit RGB"):
        pixel_subject(Image.new(mode, (8, 8)))


# --- A1111 text ----------------------------------------------------------------------------------


def record(**changes) -> GenerationRecord:
    request = V.job_request("00112233445566778899aabbccddeeff", "a cat")
    record = V.record_for(sign_job(V.REQUESTER, request), request)
    settings = {k: changes.pop(k) for k in list(changes) if k in SETTING_NAMES}
    return dataclasses.replace(record, settings=dataclasses.replace(record.settings, **settings), **changes)


def test_a1111_parameters_format() -> None:
    assert a1111_parameters(record(guidance=7.0)) == (
        "a cat\nNegative prompt: blurry\n"
        f"Steps: 20, Sampler: PNDMScheduler, CFG scale: 7, Seed: 1234, Size: 16x16, "
        f"Model hash: {V.MODEL_DIGEST[:10]}, Model: tiny-sd-vectors"
    )


def test_a1111_parameters_omits_empty_negative_and_quotes_like_a1111() -> None:
    text = a1111_parameters(record(negative_prompt="", model_name="sd, v1: base", seed=2**64 - 1))
    assert text.splitlines()[0] == "a cat"
    assert "Negative prompt" not in text
    assert 'Model: "sd, v1: base"' in text and f"Seed: {2**64 - 1}," in text and "CFG scale: 7.5," in text


# --- PNG reading ---------------------------------------------------------------------------------


def test_extract_without_provenance() -> None:
    plain = io.BytesIO()
    V.gradient().save(plain, format="PNG")
    provenance = extract_provenance(plain.getvalue())
    assert (provenance.attestation, provenance.job, provenance.parameters) == (None, None, None)
    assert provenance.image.mode == "RGB"


def test_pillow_resave_that_keeps_the_text_still_verifies() -> None:
    decoded = Image.open(io.BytesIO(VALID_PNG))
    info = PngImagePlugin.PngInfo()
    for key, value in decoded.text.items():
        info.add_itxt(key, value, zip=True)  # other chunk flavour, compressed
    out = io.BytesIO()
    decoded.save(out, format="PNG", pnginfo=info, compress_level=9)
    assert out.getvalue() != VALID_PNG
    assert verify_image(out.getvalue()).ok


def test_ztxt_and_chunks_after_idat_are_read() -> None:
    png = without_chunk(VALID_PNG, ATTESTATION_KEYWORD)
    ztxt = ATTESTATION_KEYWORD.encode() + b"\0\0" + zlib.compress(attestation_text().encode())
    assert verify_image(with_chunk(png, b"zTXt", ztxt, before=b"IEND")).ok


def test_repeated_provenance_chunk_is_refused() -> None:
    png = with_chunk(VALID_PNG, b"tEXt", ATTESTATION_KEYWORD.encode() + b"\0" + attestation_text().encode())
    report = verify_image(png)
    assert report.check("attestation").ok is False
    assert "more than one 'pointillist.attestation'" in report.check("attestation").detail
    with pytest.raises(VerificationError, match="more than one"):
        extract_provenance(png)


@pytest.mark.parametrize(
    "kind,data,reason",
    [
        (b"gAMA", struct.pack(">I", 100000), "gAMA"),
        (b"iCCP", b"x\0\0" + zlib.compress(b"profile"), "iCCP"),
        (b"acTL", struct.pack(">II", 1, 0), "animated"),
    ],
)
def test_display_changing_chunks_fail_the_pixel_check(kind: bytes, data: bytes, reason: str) -> None:
    report = verify_image(with_chunk(VALID_PNG, kind, data))
    assert report.check("pixels").ok is False
    assert reason in report.check("pixels").detail
    assert report.check("signature").ok is True


def test_sixteen_bit_png_fails_the_pixel_check_only() -> None:
    parts = chunks(VALID_PNG)
    grey16 = io.BytesIO()
    Image.new("I;16", (16, 16)).save(grey16, format="PNG")
    image_parts = [p for p in chunks(grey16.getvalue()) if p[0] in (b"IHDR", b"IDAT")]
    texts = [p for p in parts if p[0] in (b"tEXt", b"iTXt")]
    png = assemble(image_parts[:1] + texts + image_parts[1:] + [(b"IEND", b"")])
    report = verify_image(png)
    assert report.check("pixels").ok is False
    assert "bit depth 16" in report.check("pixels").detail
    assert report.check("job binding").ok is True


@pytest.mark.parametrize(
    "png,reason",
    [
        (VALID_PNG[:-5], "truncated"),
        (VALID_PNG[:30], "truncated"),
        (VALID_PNG[:19] + b"\x11" + VALID_PNG[20:], "CRC mismatch in IHDR"),
        (b"\x89PNG\r\n\x1a\n", "truncated"),
        (b"", "no PNG signature"),
        (assemble([(b"IEND", b"")]), "first chunk is not IHDR"),
        (assemble([(b"IHDR", struct.pack(">IIBBBBB", 100000, 1, 8, 2, 0, 0, 0)), (b"IEND", b"")]), "size"),
        (assemble([(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)), (b"IEND", b"")]), "not a readable PNG"),
    ],
)
def test_unreadable_pngs(png: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match="not a readable PNG") as info:
        read_png(png)
    assert reason in str(info.value)
    report = verify_image(png)
    assert report.check("attestation").ok is False and reason in report.check("attestation").detail


def test_bytes_after_iend_are_ignored() -> None:
    assert verify_image(VALID_PNG + b"trailing junk").ok


def test_malformed_provenance_text_chunks() -> None:
    bad_utf8 = without_chunk(VALID_PNG, ATTESTATION_KEYWORD)
    bad_utf8 = with_chunk(bad_utf8, b"iTXt", ATTESTATION_KEYWORD.encode() + b"\0\0\0\0\0\xff\xfe")
    assert "malformed" in verify_image(bad_utf8).check("attestation").detail
    bomb = ATTESTATION_KEYWORD.encode() + b"\0\0" + zlib.compress(b" " * (2 * 1024 * 1024))
    big = with_chunk(without_chunk(VALID_PNG, ATTESTATION_KEYWORD), b"zTXt", bomb)
    assert "longer than" in verify_image(big).check("attestation").detail


def test_deeply_nested_envelopes_do_not_crash() -> None:
    nested = "[" * 100_000
    png = with_chunk(without_chunk(VALID_PNG, ATTESTATION_KEYWORD), b"tEXt", ATTESTATION_KEYWORD.encode() + b"\0" + nested.encode())
    assert "nested too deeply" in verify_image(png).check("attestation").detail
    png = with_chunk(without_chunk(VALID_PNG, "pointillist.job"), b"tEXt", b"pointillist.job\0" + nested.encode())
    assert "nested too deeply" in verify_image(png).check("job binding").detail


def test_extract_refuses_what_verify_reports() -> None:
    with pytest.raises(VerificationError, match="unsupported pixels: .*transparent"):
        extract_provenance((VECTORS / "transparent.png").read_bytes())
    with pytest.raises(VerificationError, match="attestation chunk: envelope: not valid JSON"):
        extract_provenance((VECTORS / "truncated-envelope.png").read_bytes())
    with pytest.raises(UsageError):
        read_png("valid.png")  # type: ignore[arg-type]


def test_embedding_is_lossless_and_deterministic() -> None:
    image = Image.effect_noise((40, 24), 80).convert("RGB")
    request = dataclasses.replace(V.job_request("00112233445566778899aabbccddeeff", "noise"), width=40, height=24)
    job = sign_job(V.REQUESTER, request)
    envelope = attest(V.NODE, V.record_for(job, request), image)
    png = embed_provenance(image, envelope, job)
    assert png == embed_provenance(image, envelope, job)
    assert extract_provenance(png).image.tobytes() == image.tobytes()
    assert verify_image(png).ok


# --- never raises --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_verify_image_never_raises_on_random_bytes(data: bytes) -> None:
    report = verify_image(data)
    assert not report.ok
    assert report.check("attestation").ok is False


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_verify_image_never_raises_on_damaged_pngs(data: st.DataObject) -> None:
    """Damage inside one chunk with its CRC fixed, so decoding gets past the CRC checks."""
    parts = chunks(VALID_PNG)
    which = data.draw(st.integers(0, len(parts) - 2), label="chunk")
    kind, body = parts[which]
    if body:
        at = data.draw(st.integers(0, len(body) - 1), label="at")
        body = body[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + body[at + 1 :]
    cut = data.draw(st.integers(0, len(body)), label="cut")
    parts[which] = (kind, body[:cut] if data.draw(st.booleans(), label="truncate") else body)
    report = verify_image(assemble(parts))
    assert isinstance(report.ok, bool)
    json.dumps(report.to_json_dict())
