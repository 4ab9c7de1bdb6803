"""Step commitments (issue 11, item 1): the pure encoding and RFC 9162 tree of
attestation/trajectory.py, the committed Merkle vector, and (further down) real generations whose
recorded steps recompute bit for bit, and a node process that keeps them."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from pointillist.attestation import trajectory as T
from pointillist.protocol.errors import VerificationError

# --- the pure module -------------------------------------------------------------------------------

#: The leaves of the Certificate Transparency reference tests (RFC 6962 / RFC 9162 use the same
#: tree hash), and the roots of their first n leaves, n = 1..8, as the reference implementation
#: publishes them.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_empty_and_one_leaf_trees_are_rfc_9162s() -> None:
    assert T.merkle_root([]) == _sha(b"")
    assert T.merkle_root([b"abc"]) == _sha(b"\x00abc")
    assert T.merkle_root([b"a", b"b"]) == _sha(b"\x01" + _sha(b"\x00a") + _sha(b"\x00b"))
    # three leaves: the left subtree is the largest power of two below 3
    three = _sha(b"\x01" + _sha(b"\x01" + _sha(b"\x00a") + _sha(b"\x00b")) + _sha(b"\x00c"))
    assert T.merkle_root([b"a", b"b", b"c"]) == three


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_of_the_certificate_transparency_reference_tree(n: int) -> None:
    assert T.merkle_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize("size", range(1, 10))
def test_a_proof_for_every_index_verifies_and_wrong_ones_are_refused(size: int) -> None:
    leaves = [f"leaf {i}".encode() for i in range(size)]
    hashes = [T.leaf_hash(leaf) for leaf in leaves]
    root = T.root_from_leaf_hashes(hashes)
    for index in range(size):
        proof = T.inclusion_proof(hashes, index)
        assert len(proof) <= max(1, (size - 1).bit_length())
        assert T.verify_inclusion(index, size, hashes[index], proof, root)
        assert not T.verify_inclusion(index, size, T.leaf_hash(b"another leaf"), proof, root)  # wrong leaf
        assert not T.verify_inclusion(index, size, hashes[index], proof, _sha(b"another root"))
        # (the tree size is not authenticated by a proof, the root is: a v3 predicate signs both)
        assert not T.verify_inclusion(size, size, hashes[index], proof, root)  # index out of range
        assert not T.verify_inclusion(-1, size, hashes[index], proof, root)
        for other in range(size):  # wrong index: refused unless the leaf is there too
            if other != index:
                assert not T.verify_inclusion(other, size, hashes[index], proof, root)
        if proof:
            assert not T.verify_inclusion(index, size, hashes[index], proof[:-1], root)  # cut short
            assert not T.verify_inclusion(index, size, hashes[index], proof + [proof[-1]], root)  # too long
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            assert not T.verify_inclusion(index, size, hashes[index], flipped, root)
            assert not T.verify_inclusion(index, size, hashes[index], [b"short", *proof[1:]], root)


def test_a_leaf_hash_is_never_a_node_hash() -> None:
    # Domain separation: the 64 bytes of two child hashes, presented as a leaf, hash differently.
    a, b = T.leaf_hash(b"a"), T.leaf_hash(b"b")
    assert T.leaf_hash(a + b) != T.node_hash(a, b)
    root = T.root_from_leaf_hashes([a, b])
    assert not T.verify_inclusion(0, 1, T.leaf_hash(a + b), [], root)


def _tensor(values: list[float], shape=(1, 4, 1, 2)) -> T.TensorBytes:
    return T.TensorBytes("float32", shape, struct.pack(f"<{len(values)}f", *values))


def test_tensor_encoding_is_the_documented_bytes() -> None:
    tensor = _tensor([1.0, -2.0], shape=(1, 2))
    assert T.encode_tensor(tensor) == (
        b"\x07float32" + b"\x02" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02" + b"\x00" * 7 + b"\x08"
        + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0")
    scalar = T.TensorBytes("int64", (), struct.pack("<q", 981))
    assert T.encode_tensor(scalar) == b"\x05int64\x00" + b"\x00" * 7 + b"\x08" + struct.pack("<q", 981)


def test_leaves_round_trip_and_bind_their_index() -> None:
    x, eps, t = _tensor([0.5] * 8), _tensor([0.25] * 8), T.TensorBytes("int64", (), struct.pack("<q", 1))
    assert T.decode_leaf(T.initial_leaf(x)) == T.StepLeaf(0, None, None, x)
    assert T.decode_leaf(T.step_leaf(3, t, eps, x), 3) == T.StepLeaf(3, t, eps, x)
    with pytest.raises(VerificationError, match="says step 3, expected 2"):
        T.decode_leaf(T.step_leaf(3, t, eps, x), 2)


BAD_LEAVES = [
    (b"", "truncated"),
    (struct.pack(">I", 0) + b"\x07float32\x00" + b"\x00" * 7 + b"\x04", "truncated"),
    (T.initial_leaf(_tensor([0.5] * 8)) + b"\x00", "bytes after its end"),
    (struct.pack(">I", 0) + b"\x07float99\x00" + b"\x00" * 7 + b"\x04\x00\x00\x00\x00", "dtype 'float99'"),
    (struct.pack(">I", 0) + b"\x07float32\x00" + b"\x00" * 7 + b"\x08" + b"\x00" * 8, "must hold 4 bytes, not 8"),
    (struct.pack(">I", 0) + b"\x07float32\x09" + b"\x00\x00\x00\x01" * 9, "at most 8"),
    (struct.pack(">I", 0) + b"\x02\xff\xfe", "not ASCII"),
    (struct.pack(">I", 10_001), "above 10000"),
]


@pytest.mark.parametrize("data,reason", BAD_LEAVES, ids=[r for _, r in BAD_LEAVES])
def test_bad_leaves_are_refused_in_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason) as info:
        T.decode_leaf(data)
    assert "\n" not in str(info.value)


def test_a_tensor_must_hold_what_its_shape_says() -> None:
    with pytest.raises(VerificationError, match="must hold 32 bytes"):
        T.TensorBytes("float32", (1, 8), b"\x00" * 31)


def test_stored_trajectory_round_trips_and_refuses_damage() -> None:
    builder = T.TrajectoryBuilder()
    builder.initial(_tensor([1.0] * 8))
    for k in range(1, 4):
        builder.step(T.TensorBytes("int64", (), struct.pack("<q", 1000 - k)), _tensor([k] * 8), _tensor([-k] * 8))
    trajectory = builder.finish()
    assert trajectory.steps == 3 and trajectory.root == T.merkle_root(trajectory.leaves)
    again = T.Trajectory.from_bytes(trajectory.to_bytes())
    assert again.leaves == trajectory.leaves and again.root == trajectory.root
    assert again.commitment() == T.TrajectoryCommitment(T.ENCODING, 3, 4, trajectory.root.hex())
    assert T.verify_inclusion(2, 4, again.leaf_hashes[2], again.proof(2), again.root)
    assert again.leaf(2).model_output == _tensor([2.0] * 8)
    data = trajectory.to_bytes()
    for damaged, reason in ((data[:-1], "truncated"), (data + b"\x00", "after its end"),
                            (b"x" + data[1:], "not a pointillist-trajectory-v1 container")):
        with pytest.raises(VerificationError, match=reason):
            T.Trajectory.from_bytes(damaged)
    with pytest.raises(VerificationError, match="comes first"):
        builder.initial(_tensor([1.0] * 8))


def check_merkle_document(doc: dict) -> None:
    """docs/attestation-vectors/trajectory-merkle.json holds together (also run by the vector tests)."""
    assert doc["encoding"] == T.ENCODING
    tensor = T.TensorBytes(doc["tensor"]["dtype"], tuple(doc["tensor"]["shape"]), bytes.fromhex(doc["tensor"]["data"]))
    assert T.encode_tensor(tensor).hex() == doc["tensor"]["encoded"]
    leaves = [bytes.fromhex(h) for h in doc["leaves"]]
    assert len(leaves) == doc["steps"] + 1
    for index, leaf in enumerate(leaves):
        T.decode_leaf(leaf, index)
    # independently of the module: SHA-256 with the RFC 9162 prefixes
    assert [_sha(b"\x00" + leaf).hex() for leaf in leaves] == doc["leafHashes"]
    assert T.merkle_root(leaves).hex() == doc["root"]
    root = bytes.fromhex(doc["root"])
    for proof in doc["proofs"]:
        assert T.verify_inclusion(proof["index"], proof["treeSize"], bytes.fromhex(proof["leafHash"]),
                                  [bytes.fromhex(p) for p in proof["path"]], root)
    assert len(doc["proofs"]) == len(leaves) and doc["badProofs"]
    for proof in doc["badProofs"]:
        assert not T.verify_inclusion(proof["index"], proof["treeSize"], bytes.fromhex(proof["leafHash"]),
                                      [bytes.fromhex(p) for p in proof["path"]], root), proof["why"]


def test_committed_merkle_vector_and_valid_v3_share_the_root() -> None:
    from support import VECTORS

    from pointillist.attestation import verify_image

    doc = json.loads((VECTORS / "trajectory-merkle.json").read_text())
    check_merkle_document(doc)
    report = verify_image((VECTORS / "valid-v3.png").read_bytes())
    assert report.ok
    record = report.statement.record
    assert record.trajectory == T.TrajectoryCommitment(T.ENCODING, doc["steps"], doc["steps"] + 1, doc["root"])
    assert record.settings.sampler is None and record.scheduler_config["timestep_spacing"] == "leading"
