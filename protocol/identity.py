"""Ed25519 identities: one key is both the libp2p peer ID and the signer of jobs and attestations.

Pure code, no libp2p import: ``import libp2p`` costs over a second, and commands such as
``verify`` and ``keys`` must start fast. A libp2p Ed25519 peer ID is the base58btc encoding of an
*identity* multihash over the protobuf-encoded public key::

    protobuf PublicKey { Type = 1 (Ed25519) ; Data = <32 bytes> }
        = 08 01 12 20 <32 bytes>                      (36 bytes)
    multihash identity = 00 24 <the 36 bytes above>   (38 bytes)
    peer ID            = base58btc(multihash)         ("12D3KooW...")

A test checks this against ``libp2p.peer.id.ID.from_pubkey``.
"""

from __future__ import annotations

from dataclasses import dataclass

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import SignatureError, UsageError

_PROTOBUF_ED25519_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID string of an Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base58.b58encode(_IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX + public_key).decode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a peer ID; raises ``SignatureError`` for anything else.

    Only identity-multihash Ed25519 peer IDs carry their key; others (RSA, sha256-hashed) are refused
    because a verifier could not check a signature without fetching the key from somewhere.
    """
    if not 40 <= len(peer_id) <= 60:  # base58 decoding is quadratic: never decode a long string
        raise SignatureError(f"not an Ed25519 peer ID: {peer_id[:60]!r}")
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureError(f"not a peer ID: {peer_id[:60]!r}") from exc
    prefix = _IDENTITY_MULTIHASH_PREFIX + _PROTOBUF_ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise SignatureError(f"not an Ed25519 peer ID: {peer_id[:60]!r}")
    return raw[len(prefix):]


def verify_signature(peer_id: str, message: bytes, signature: bytes) -> None:
    """Return nothing if ``signature`` is ``peer_id``'s Ed25519 signature of ``message``; else raise."""
    public_key = public_key_from_peer_id(peer_id)
    if len(signature) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError as exc:
        raise SignatureError(f"signature does not verify for {peer_id}") from exc


@dataclass(frozen=True)
class Identity:
    """A private Ed25519 key with its peer ID. ``seed`` is the 32-byte private seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise UsageError("an Ed25519 private key seed is 32 bytes")

    @classmethod
    def generate(cls) -> "Identity":
        return cls(bytes(SigningKey.generate()))

    @property
    def _signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message``. Callers must domain-separate (see ``dsse.pae``)."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(peer_id={self.peer_id!r})"
