"""Length-prefixed msgpack frames: the wire format of every Pointillist stream.

    frame = uint32 big-endian body length || body (one msgpack map)

Limits are per direction: a node reads requests of at most ``MAX_REQUEST_FRAME`` bytes (a job is a
few KiB), a requester reads replies of at most ``MAX_REPLY_FRAME`` (the result PNG). A length above
the limit is refused *before* any body byte is read, so a peer cannot make us buffer gigabytes.

The reading loop is our own: py-libp2p's ``read_exactly`` gives up after 100 partial reads, which
breaks large payloads on some muxers (see docs/decisions.md).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import msgpack

from .errors import FrameError, FrameTooLarge, TransportError

MAX_REQUEST_FRAME = 256 * 1024
MAX_REPLY_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ByteStream(Protocol):
    """The part of a libp2p stream (or a test double) that framing needs."""

    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


def encode_frame(message: dict[str, Any], max_size: int = MAX_REPLY_FRAME) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_size:
        raise FrameTooLarge(f"message of {len(body)} bytes exceeds the {max_size}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes, max_size: int) -> dict[str, Any]:
    """Decode one frame body into a dict with string keys; anything else raises ``FrameError``."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=10_000,
            max_map_len=1_000,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # ExtraData, FormatError, ...
        raise FrameError(f"frame is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise FrameError("frame body must be a msgpack map")
    return obj


def parse_header(header: bytes, max_size: int) -> int:
    (length,) = _HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    if length == 0:
        raise FrameError("empty frame")
    return length


async def read_exact(stream: ByteStream, n: int) -> bytes:
    """Read exactly ``n`` bytes however the muxer splits them; EOF midway is a ``TransportError``."""
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        try:
            chunk = await stream.read(min(remaining, 1 << 20))
        except EOFError as exc:
            raise TransportError("stream closed in the middle of a frame") from exc
        except Exception as exc:  # libp2p stream errors: reset, closed, connection gone
            if is_transport_failure(exc):
                raise TransportError(f"stream failed while reading: {type(exc).__name__}") from exc
            raise
        if not chunk:
            raise TransportError("stream closed in the middle of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def read_frame(stream: ByteStream, max_size: int) -> dict[str, Any]:
    length = parse_header(await read_exact(stream, _HEADER.size), max_size)
    return decode_body(await read_exact(stream, length), max_size)


async def write_frame(stream: ByteStream, message: dict[str, Any], max_size: int = MAX_REPLY_FRAME) -> None:
    data = encode_frame(message, max_size)
    try:
        await stream.write(data)
    except Exception as exc:
        if is_transport_failure(exc):
            raise TransportError(f"stream failed while writing: {type(exc).__name__}") from exc
        raise


def is_transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the network failing (libp2p's errors, sockets, EOF), not a bug of ours.
    Checked by module name so that this pure module need not import libp2p."""
    module = type(exc).__module__ or ""
    return module.startswith("libp2p") or isinstance(exc, (OSError, EOFError))
