"""Provenance inside a PNG: three text chunks beside the pixels.

    iTXt  "pointillist.attestation"   the attestation envelope, DSSE JSON (``Envelope.to_json``)
    iTXt  "pointillist.job"           the requester's signed job envelope, DSSE JSON
    tEXt  "parameters"                A1111-style settings text (iTXt if not Latin-1), unsigned;
                                      absent when A1111 readers would misread the prompt (a1111.py)

The signatures cover the pixels (see ``pixels``), never the file, so the chunks can be copied,
reordered or recompressed by other tools. Re-encoding with a tool that drops text chunks (as a
plain Pillow ``save`` does) leaves an image with no attestation, which verification reports as
such. Pure code: bytes in, values or ``VerificationError`` out.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from pointillist.protocol.dsse import Envelope
from pointillist.protocol.errors import UsageError, VerificationError
from pointillist.protocol.jobs import JOB_PAYLOAD_TYPES

from .a1111 import a1111_parameters
from .pixels import pixel_subject, to_rgb8
from .statement import ATTESTATION_PAYLOAD_TYPE, parse_statement

ATTESTATION_KEYWORD = "pointillist.attestation"
JOB_KEYWORD = "pointillist.job"
PARAMETERS_KEYWORD = "parameters"
PROVENANCE_KEYWORDS = (ATTESTATION_KEYWORD, JOB_KEYWORD, PARAMETERS_KEYWORD)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Larger images are refused before decoding (the job schema's own limit).
MAX_SIDE = 8192
#: Largest text, after decompression, accepted in one of our chunks.
MAX_TEXT_BYTES = 1024 * 1024
#: (colour type, bit depth) pairs whose samples are exactly 8-bit: truecolour, grey, palette.
_EXACT_FORMATS = {(2, 8), (6, 8), (0, 8), (4, 8), (3, 1), (3, 2), (3, 4), (3, 8)}
#: Chunks that change how the pixels look without changing their values; the digest cannot
#: cover that, so images carrying them are refused.
_DISPLAY_CHUNKS = (b"iCCP", b"gAMA", b"cHRM", b"cICP")
#: Decoding errors of Pillow and zlib, mapped to ``VerificationError`` at this boundary.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class PngContents:
    """A decoded PNG before anything in it is trusted. Texts are ``None`` when their chunk is absent.

    ``image`` is the RGB8 image, or ``None`` when the pixels cannot be represented exactly as
    RGB8; ``pixel_error`` then says why (16-bit, transparency, animation, colour profile).
    """

    image: Image.Image | None
    pixel_error: str | None
    attestation: str | None
    job: str | None
    parameters: str | None


@dataclass(frozen=True)
class Provenance:
    """What ``extract_provenance`` found; nothing here is verified yet."""

    image: Image.Image  # mode RGB
    attestation: Envelope | None
    job: Envelope | None
    parameters: str | None


def embed_provenance(image: Image.Image, attestation: Envelope, job: Envelope | None) -> bytes:
    """PNG bytes of ``image`` (lossless RGB8) with the attestation, the job and the A1111 text.

    The signatures are not checked here, but the statement must parse and its subject must be
    this image's pixels; otherwise ``UsageError`` (a bug in the caller, not bad remote data).
    """
    if attestation.payload_type != ATTESTATION_PAYLOAD_TYPE:
        raise UsageError(f"not an attestation envelope (payload type {attestation.payload_type!r})")
    if job is not None and job.payload_type not in JOB_PAYLOAD_TYPES.values():
        raise UsageError(f"not a job envelope (payload type {job.payload_type!r})")
    try:
        statement = parse_statement(attestation.payload)
        rgb = to_rgb8(image)
    except VerificationError as exc:
        raise UsageError(f"cannot embed this attestation: {exc}") from exc
    if pixel_subject(rgb) != statement.subject:
        raise UsageError("the attestation's subject is not this image's pixels")
    texts = [(ATTESTATION_KEYWORD, attestation.to_json().decode("ascii"))]
    parameters = a1111_parameters(statement.record)
    if parameters is not None:  # None: A1111 readers would misread the prompt (a1111.py)
        texts.insert(0, (PARAMETERS_KEYWORD, parameters))
    if job is not None:
        texts.append((JOB_KEYWORD, job.to_json().decode("ascii")))
    return _encode_png(rgb, texts)


def extract_provenance(png_bytes: bytes) -> Provenance:
    """Decode the PNG and parse the envelopes in it, verifying nothing.

    Raises ``VerificationError``: "not a readable PNG: ..." for anything that is not a whole,
    decodable PNG, and one-line reasons for pixels that are not exactly RGB8, repeated
    provenance chunks or envelope JSON that does not parse.
    """
    contents = read_png(png_bytes)
    if contents.image is None:
        raise VerificationError(f"unsupported pixels: {contents.pixel_error}")
    return Provenance(
        image=contents.image,
        attestation=_envelope_or_none(contents.attestation, "attestation"),
        job=_envelope_or_none(contents.job, "job"),
        parameters=contents.parameters,
    )


def read_png(png_bytes: bytes) -> PngContents:
    """The pixels and the raw provenance texts of a PNG; the lenient layer under ``extract_provenance``.

    Raises ``VerificationError`` only for a file that is not a readable PNG or that repeats or
    garbles one of ``PROVENANCE_KEYWORDS``; pixel problems are reported in ``pixel_error``.
    """
    if not isinstance(png_bytes, (bytes, bytearray, memoryview)):
        raise UsageError(f"read_png takes bytes, not {type(png_bytes).__name__}")
    data = bytes(png_bytes)
    chunks = _chunks(data)
    width, height, bit_depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise VerificationError(f"not a readable PNG: size {width}x{height} outside 1..{MAX_SIDE}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise VerificationError("not a readable PNG: unknown compression, filter or interlace method")
    texts = _provenance_texts(chunks)
    try:
        with warnings.catch_warnings():  # e.g. "Invalid APNG": reported below as a pixel problem
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=["PNG"]) as decoded:
                decoded.load()
                frames = getattr(decoded, "n_frames", 1)
                image = decoded.copy()
    except _DECODE_ERRORS as exc:
        raise VerificationError(f"not a readable PNG: {_one_line(exc)}") from None
    types = {chunk_type for chunk_type, _ in chunks}
    pixel_error = None
    if (colour_type, bit_depth) not in _EXACT_FORMATS:
        pixel_error = f"PNG colour type {colour_type} at bit depth {bit_depth} is not exactly 8-bit RGB"
    elif frames != 1 or b"acTL" in types:
        pixel_error = "animated PNGs are not supported"
    elif any(t in types for t in _DISPLAY_CHUNKS):
        found = ", ".join(t.decode() for t in _DISPLAY_CHUNKS if t in types)
        pixel_error = f"PNG carries colour-changing chunks ({found}) that the pixel digest does not cover"
    rgb = None
    if pixel_error is None:
        try:
            rgb = to_rgb8(image)
        except VerificationError as exc:
            pixel_error = str(exc)
    return PngContents(rgb, pixel_error, *(texts.get(k) for k in PROVENANCE_KEYWORDS))


# --- writing -------------------------------------------------------------------------------------


def _encode_png(rgb: Image.Image, texts: list[tuple[str, str]]) -> bytes:
    """PNG bytes of an RGB image with text chunks, in order; deterministic for a given zlib."""
    info = PngImagePlugin.PngInfo()
    for keyword, text in texts:
        if keyword == PARAMETERS_KEYWORD:
            info.add_text(keyword, text)  # tEXt, or iTXt when not Latin-1 (Pillow's rule, A1111's too)
        else:
            info.add_itxt(keyword, text)
    out = io.BytesIO()
    rgb.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --- reading -------------------------------------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk up to IEND, checking structure and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise VerificationError("not a readable PNG: no PNG signature")
    chunks: list[tuple[bytes, bytes]] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise VerificationError("not a readable PNG: truncated (no IEND chunk)")
        length, chunk_type = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length + 4
        if length > 0x7FFFFFFF or end > len(data):
            raise VerificationError(f"not a readable PNG: truncated {chunk_type.decode('latin-1')!r} chunk")
        if not chunk_type.isalpha() or not chunk_type.isascii():
            raise VerificationError(f"not a readable PNG: bad chunk type {chunk_type!r}")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(chunk_type + body) != crc:
            raise VerificationError(f"not a readable PNG: CRC mismatch in {chunk_type.decode()} chunk")
        if not chunks and (chunk_type != b"IHDR" or length != 13):
            raise VerificationError("not a readable PNG: first chunk is not IHDR")
        chunks.append((chunk_type, body))
        pos = end
        if chunk_type == b"IEND":
            return chunks  # bytes after IEND are ignored, as every decoder does


def _provenance_texts(chunks: list[tuple[bytes, bytes]]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for chunk_type, body in chunks:
        if chunk_type not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        keyword_bytes, sep, rest = body.partition(b"\0")
        keyword = keyword_bytes.decode("latin-1")
        if not sep or keyword not in PROVENANCE_KEYWORDS:
            continue
        if keyword in texts:
            raise VerificationError(f"PNG carries more than one {keyword!r} text chunk")
        try:
            texts[keyword] = _decode_text(chunk_type, rest)
        except (ValueError, zlib.error) as exc:  # UnicodeDecodeError is a ValueError
            raise VerificationError(f"PNG text chunk {keyword!r} is malformed: {_one_line(exc)}") from None
    return texts


def _decode_text(chunk_type: bytes, rest: bytes) -> str:
    """The text of a tEXt / zTXt / iTXt chunk after its keyword and NUL (PNG spec 11.3.4)."""
    if len(rest) > MAX_TEXT_BYTES + 64:  # uncompressed text is bounded like inflated text
        raise ValueError(f"text longer than {MAX_TEXT_BYTES} bytes")
    if chunk_type == b"tEXt":
        return rest.decode("latin-1")
    if chunk_type == b"zTXt":
        if rest[:1] != b"\0":
            raise ValueError("unknown compression method")
        return _inflate(rest[1:]).decode("latin-1")
    if len(rest) < 2:
        raise ValueError("iTXt chunk too short")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _language, sep1, rest = rest.partition(b"\0")
    _translated, sep2, text = rest.partition(b"\0")
    if not (sep1 and sep2) or compressed not in (0, 1) or (compressed and method != 0):
        raise ValueError("bad iTXt header")
    return (_inflate(text) if compressed else text).decode("utf-8")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    if len(out) > MAX_TEXT_BYTES or inflater.unconsumed_tail:
        raise ValueError(f"text longer than {MAX_TEXT_BYTES} bytes")
    if not inflater.eof:
        raise ValueError("truncated compressed text")
    return out


def _envelope_or_none(text: str | None, what: str) -> Envelope | None:
    if text is None:
        return None
    try:
        return Envelope.from_json(text)
    except VerificationError as exc:
        raise VerificationError(f"{what} chunk: {exc}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
