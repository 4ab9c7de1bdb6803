"""Where identities live on disk, and their file format.

Location: ``$POINTILLIST_HOME`` if set (tests and the demo give each node its own), otherwise the
platform's user config directory (``platformdirs.user_config_dir("pointillist")``), e.g.
``~/.config/pointillist`` on Linux. The key file is ``identity.key``, mode 0600.

Format: libp2p's marshalled private key, the same bytes go-libp2p's ``crypto.MarshalPrivateKey``
writes, so a key can move between implementations (py-libp2p's own ``serialize()`` writes only the
32-byte seed; that form is accepted on reading too)::

    protobuf PrivateKey { Type = 1 (Ed25519) ; Data = <32-byte seed || 32-byte public key> }
        = 08 01 12 40 <seed> <public key>
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError
from .identity import Identity

_PREFIX = b"\x08\x01\x12\x40"
_PY_LIBP2P_PREFIX = b"\x08\x01\x12\x20"  # py-libp2p's serialize() writes the 32-byte seed only
KEY_FILE_NAME = "identity.key"


def config_dir() -> Path:
    home = os.environ.get("POINTILLIST_HOME")
    if home:
        return Path(home)
    import platformdirs  # imported here: only commands that touch keys pay for it

    return Path(platformdirs.user_config_dir("pointillist"))


def data_dir() -> Path:
    """Where a node keeps state (results, replay cache): ``$POINTILLIST_HOME`` or the platform's
    user data directory."""
    home = os.environ.get("POINTILLIST_HOME")
    if home:
        return Path(home)
    import platformdirs

    return Path(platformdirs.user_data_dir("pointillist"))


def default_key_path() -> Path:
    return config_dir() / KEY_FILE_NAME


def encode_private_key(identity: Identity) -> bytes:
    return _PREFIX + identity.seed + identity.public_key


def decode_private_key(data: bytes, source: str = "key file") -> Identity:
    """Accept go-libp2p's 64-byte form and py-libp2p's 32-byte (seed only) form."""
    if len(data) == 4 + 32 and data.startswith(_PY_LIBP2P_PREFIX):
        return Identity(data[4:])
    if len(data) != len(_PREFIX) + 64 or not data.startswith(_PREFIX):
        raise UsageError(f"{source} is not an Ed25519 libp2p private key")
    seed, public = data[4:36], data[36:]
    identity = Identity(seed)
    if identity.public_key != public:
        raise UsageError(f"{source} is corrupt: its public key does not match its seed")
    return identity


def load_identity(path: Path) -> Identity:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"no identity at {path} (create one with `pointillist keys`)") from exc
    except OSError as exc:
        raise UsageError(f"cannot read identity {path}: {exc.strerror}") from exc
    return decode_private_key(data, str(path))


def load_or_create_identity(path: Path | None = None) -> tuple[Identity, bool]:
    """Load the identity at ``path`` (default location if None), creating it if absent.

    Returns ``(identity, created)``. A new key is written with mode 0600 from the first byte
    (``O_EXCL`` so two processes starting at once cannot both create different keys).
    """
    path = path or default_key_path()
    if path.exists():
        return load_identity(path), False
    identity = Identity.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_identity(path), False
    except OSError as exc:
        raise UsageError(f"cannot create identity {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(encode_private_key(identity))
    return identity, True
