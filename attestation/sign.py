"""Signing an attestation: the node's identity, its record of the generation, the image."""

from __future__ import annotations

from PIL import Image

from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import UsageError, VerificationError
from pointillist.protocol.identity import Identity

from .pixels import pixel_subject
from .statement import ATTESTATION_PAYLOAD_TYPE, GenerationRecord, build_statement


def attest(identity: Identity, record: GenerationRecord, image: Image.Image) -> Envelope:
    """The DSSE envelope of the statement that ``identity`` generated ``image`` as ``record`` says.

    Raises ``UsageError`` if the record names another node, if its size differs from the
    image's, if the image is not exactly RGB8 (see ``pixels.to_rgb8``) or if a field is out of
    range: nothing is signed that ``verify_attestation`` would refuse.
    """
    if record.node != identity.peer_id:
        raise UsageError(f"record names node {record.node}, but the signing key is {identity.peer_id}")
    width, height = record.settings.width, record.settings.height
    if (width, height) != image.size:
        raise UsageError(f"record size {width}x{height} differs from the image's {image.width}x{image.height}")
    try:
        subject = pixel_subject(image)
    except VerificationError as exc:
        raise UsageError(f"cannot attest this image: {exc}") from exc
    return sign_envelope(identity, ATTESTATION_PAYLOAD_TYPE, build_statement(record, subject))
