import os
import stat
import subprocess
import sys

import pytest

from pointillist.protocol.errors import SignatureError, UsageError
from pointillist.protocol.identity import Identity, peer_id_from_public_key, public_key_from_peer_id, verify_signature
from pointillist.protocol.keyfile import decode_private_key, encode_private_key, load_or_create_identity


def test_peer_id_matches_libp2p():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    for seed in (bytes(32), bytes(range(32)), b"\xff" * 32):
        identity = Identity(seed)
        assert identity.peer_id == ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
        assert public_key_from_peer_id(identity.peer_id) == identity.public_key


def test_signature_verifies_and_rejects_tampering():
    identity = Identity.generate()
    sig = identity.sign(b"message")
    verify_signature(identity.peer_id, b"message", sig)
    with pytest.raises(SignatureError):
        verify_signature(identity.peer_id, b"messagE", sig)
    with pytest.raises(SignatureError):
        verify_signature(Identity.generate().peer_id, b"message", sig)


@pytest.mark.parametrize("bad", ["", "not-a-peer", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "12D3KooW" + "1" * 44])
def test_non_ed25519_peer_ids_refused(bad):
    with pytest.raises(SignatureError):
        public_key_from_peer_id(bad)


def test_key_file_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "sub" / "identity.key"
    first, created = load_or_create_identity(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created_again = load_or_create_identity(path)
    assert not created_again and again.peer_id == first.peer_id


def test_key_file_format_is_libp2p_marshalled_private_key(tmp_path):
    from libp2p.crypto.ed25519 import create_new_key_pair

    identity = Identity(bytes(range(32)))
    data = encode_private_key(identity)
    # go-libp2p's MarshalPrivateKey: 08 01 12 40 <seed> <public key>
    assert data == b"\x08\x01\x12\x40" + bytes(range(32)) + identity.public_key
    assert decode_private_key(data).peer_id == identity.peer_id
    # py-libp2p's serialize() writes the seed only; we read that too
    py_form = create_new_key_pair(bytes(range(32))).private_key.serialize()
    assert decode_private_key(py_form).peer_id == identity.peer_id


def test_corrupt_key_file_is_a_usage_error(tmp_path):
    path = tmp_path / "identity.key"
    path.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not an Ed25519"):
        load_or_create_identity(path)


def test_keys_command_creates_then_shows(tmp_path):
    env = {**os.environ, "POINTILLIST_HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "pointillist.cli", "keys"], env=env, capture_output=True, text=True)
    second = subprocess.run([sys.executable, "-m", "pointillist.cli", "keys"], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "created" in first.stdout
    assert second.returncode == 0 and "created" not in second.stdout
    peer = first.stdout.split("peer ID")[1].split()[0]
    assert peer in second.stdout and peer.startswith("12D3KooW")
    assert (tmp_path / "identity.key").exists()


def test_keys_command_does_not_import_libp2p_or_torch(tmp_path):
    code = (
        "import sys; from pointillist.cli.main import main; main(['keys']); "
        "bad = [m for m in ('torch', 'libp2p', 'trio', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "POINTILLIST_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_long_peer_ids_are_refused_before_decoding(monkeypatch):
    # base58 decoding is quadratic in the length (a 40,000-character key ID took ~1 s), so a
    # peer-supplied key ID of the wrong length must never reach the decoder.
    import base58

    def must_not_decode(_):
        raise AssertionError("decoded a peer ID of impossible length")

    monkeypatch.setattr(base58, "b58decode", must_not_decode)
    with pytest.raises(SignatureError):
        public_key_from_peer_id("1" * 40_000)
