"""DSSE (Dead Simple Signing Envelope) v1: the one signing mechanism of the project.

Both requesters' jobs and nodes' attestations are DSSE envelopes; what keeps a signature for one
from being valid as the other (or as a Noise handshake or a pubsub message, which the same libp2p
key also signs) is the Pre-Authentication Encoding: every signed byte string starts with
``DSSEv1 <len(type)> <type> ...``, and the payload type names what the payload is.

Spec: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
Pure code: bytes in, bytes or exceptions out.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from .errors import SignatureError, VerificationError
from .identity import Identity, verify_signature
from .strict_json import StrictJSONError, loads_strict


def pae(payload_type: str, payload: bytes) -> bytes:
    """PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in ASCII decimal."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    keyid: str  # the signer's libp2p peer ID; its Ed25519 public key is inside it
    sig: bytes

    def to_json_dict(self) -> dict:
        """The standard JSON form (base64 payload and signature)."""
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [{"keyid": self.keyid, "sig": base64.b64encode(self.sig).decode("ascii")}],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "Envelope":
        """Parse the JSON form strictly; any deviation raises ``VerificationError``."""
        try:
            obj = loads_strict(data)
        except StrictJSONError as exc:
            raise VerificationError(f"envelope: {exc}") from None
        return cls.from_json_dict(obj)

    @classmethod
    def from_json_dict(cls, obj: object) -> "Envelope":
        if not isinstance(obj, dict) or set(obj) != {"payloadType", "payload", "signatures"}:
            raise VerificationError("envelope must have exactly payloadType, payload and signatures")
        sigs = obj["signatures"]
        if not isinstance(obj["payloadType"], str) or not isinstance(obj["payload"], str):
            raise VerificationError("envelope payloadType and payload must be strings")
        if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
            raise VerificationError("envelope must carry exactly one signature")
        keyid, sig = sigs[0].get("keyid"), sigs[0].get("sig")
        if not isinstance(keyid, str) or not isinstance(sig, str):
            raise VerificationError("signature needs a keyid (peer ID) and a sig")
        return cls(obj["payloadType"], _b64(obj["payload"], "payload"), keyid, _b64(sig, "sig"))

    def verify(self, expected_payload_type: str) -> bytes:
        """Check type and signature; return the payload bytes exactly as signed."""
        if self.payload_type != expected_payload_type:
            raise VerificationError(
                f"payload type is {self.payload_type!r}, expected {expected_payload_type!r}"
            )
        try:
            verify_signature(self.keyid, pae(self.payload_type, self.payload), self.sig)
        except SignatureError as exc:
            raise SignatureError(f"envelope signature invalid: {exc}") from exc
        return self.payload


def sign_envelope(identity: Identity, payload_type: str, payload: bytes) -> Envelope:
    return Envelope(payload_type, payload, identity.peer_id, identity.sign(pae(payload_type, payload)))


def _b64(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 section 4) in its one canonical spelling.

    Python's decoder, like many, ignores non-zero bits in the last character before the padding
    ("QR==" reads as "QQ==", b"A"); others refuse them. Re-encoding and comparing refuses every
    other spelling, so all verifiers agree on which envelopes are well-formed.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise VerificationError(f"envelope {what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerificationError(f"envelope {what} is not canonical base64 (padding bits must be zero)")
    return raw
