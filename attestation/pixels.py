"""The attestation's subject: the image's pixels as raw RGB8, not the file that carries them.

A file hash could not be written into the same file, and it would break on any lossless
re-encoding or metadata edit. The subject is instead::

    name   = "rgb8:<width>x<height>"           (decimal, no leading zeros)
    sha256 = sha256(R G B R G B ...)            one byte per channel, rows top to bottom,
                                                pixels left to right, no padding, no header

Only images whose pixels are exactly 8-bit RGB are accepted: RGB, grayscale (R=G=B) and palette
images, with alpha only if every pixel is fully opaque. A transparent pixel would show the viewer
something the digest does not cover, so it is refused rather than silently dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from PIL import Image

from pointillist.protocol.errors import VerificationError

#: Pillow modes whose pixels convert to RGB8 without loss or ambiguity.
EXACT_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P"})


@dataclass(frozen=True)
class PixelSubject:
    width: int
    height: int
    sha256: str  # lowercase hex

    @property
    def name(self) -> str:
        return f"rgb8:{self.width}x{self.height}"

    def to_json_dict(self) -> dict:
        """The in-toto ResourceDescriptor form: ``{"name": ..., "digest": {"sha256": ...}}``."""
        return {"name": self.name, "digest": {"sha256": self.sha256}}


def to_rgb8(image: Image.Image) -> Image.Image:
    """A new mode-RGB image with exactly ``image``'s pixels and no metadata.

    Raises ``VerificationError`` if the pixels are not exactly representable as RGB8: a mode
    outside ``EXACT_MODES`` (16-bit, float, CMYK, ...) or any pixel that is not fully opaque.
    """
    if image.mode not in EXACT_MODES:
        raise VerificationError(f"pixels are not 8-bit RGB, grayscale or palette (mode {image.mode})")
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        low, _ = alpha.getextrema()
        if low < 255:
            raise VerificationError("image has transparent pixels; attested images are fully opaque")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def rgb8_bytes(image: Image.Image) -> bytes:
    """The raw RGB8 pixel bytes the subject digest covers (see ``to_rgb8`` for what is refused)."""
    return to_rgb8(image).tobytes()


def pixel_subject(image: Image.Image) -> PixelSubject:
    """The subject of ``image``; raises ``VerificationError`` as ``to_rgb8`` does."""
    data = rgb8_bytes(image)
    return PixelSubject(image.width, image.height, hashlib.sha256(data).hexdigest())
