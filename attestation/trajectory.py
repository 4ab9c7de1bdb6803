"""Step commitments (issue 11): the denoising trajectory of a generation as a Merkle tree.

A node records, for every call of the scheduler's ``step``, what went in and what came out, and
commits to all of it with one Merkle root in the attestation (predicate generation/v3,
``docs/attestation.md`` section 3.2). Later, an auditor asks for chosen steps, gets their leaves
with inclusion proofs (``Trajectory.proof``, ``verify_inclusion``) and recomputes them with the
model. Everything here is the byte format, specified in docs/attestation.md section 10:

* a tensor is encoded as ``dtype name, shape, byte length, raw bytes`` (``encode_tensor``), the
  raw bytes in C order, little-endian, in the dtype the pipeline produced;
* leaf 0 is the initial latent x_T as the pipeline prepared it (it binds the seed);
* leaf k (k = 1..N, N = the number of scheduler steps) is ``k, t_k, eps_k, x_k``: the timestep,
  the model output the scheduler received (after classifier-free guidance) and the latent it
  returned;
* the tree is RFC 9162's (Certificate Transparency v2) Merkle tree hash over the N + 1 leaves:
  leaf hash ``SHA-256(0x00 || leaf)``, node hash ``SHA-256(0x01 || left || right)``, so any
  number of leaves works and inclusion proofs are RFC 9162's audit paths.

Pure code: bytes, shapes and dtype names in, bytes out; no torch (``node/step_commitments.py``
turns tensors into ``TensorBytes``). Bad input raises ``VerificationError`` with one line.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from pointillist.protocol.errors import VerificationError

#: The ``trajectory.encoding`` of predicate generation/v3 that this module implements.
ENCODING = "pointillist-trajectory-v1"
#: RFC 9162 section 2.1.1 domain separation: leaf hashes and interior node hashes.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: Element sizes of the dtype names a tensor may carry (torch's names without ``torch.``).
DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}
MAX_NDIM = 8
#: The most scheduler steps a trajectory may have (Heun runs 2 * steps - 1 for steps <= 1000).
MAX_STEPS = 10_000
#: The most bytes one stored trajectory may hold when read back (a guard, not a policy).
MAX_TRAJECTORY_BYTES = 4 * 2**30
#: First bytes of a stored trajectory (``Trajectory.to_bytes``): the leaves in order.
CONTAINER_MAGIC = b"pointillist-trajectory-v1\n"

_HEX256 = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class TensorBytes:
    """A tensor as bytes: ``dtype`` a name of ``DTYPE_SIZES``, ``shape`` its sizes, ``data`` the
    elements in C order, little-endian (``len(data) == itemsize * prod(shape)``)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        _check_tensor(self.dtype, self.shape, len(self.data))


@dataclass(frozen=True)
class StepLeaf:
    """One decoded leaf: ``index`` 0 holds ``latent`` = x_T only (``timestep`` and
    ``model_output`` ``None``); index k >= 1 holds t_k, eps_k and x_k."""

    index: int
    timestep: TensorBytes | None
    model_output: TensorBytes | None
    latent: TensorBytes


@dataclass(frozen=True)
class TrajectoryCommitment:
    """The ``trajectory`` member of predicate generation/v3: ``steps`` scheduler steps, a tree of
    ``leaves`` = ``steps`` + 1 leaves, its RFC 9162 root as 64 lowercase hex digits."""

    encoding: str
    steps: int
    leaves: int
    root: str

    def to_json_dict(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "steps": self.steps, "leaves": self.leaves, "root": self.root}


# --- tensors and leaves ----------------------------------------------------------------------------


def _check_tensor(dtype: str, shape: tuple[int, ...], length: int) -> None:
    if dtype not in DTYPE_SIZES:
        raise VerificationError(f"trajectory tensor dtype {dtype!r} is not one of {', '.join(DTYPE_SIZES)}")
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or any(
            type(d) is not int or not 0 <= d < 2**32 for d in shape):
        raise VerificationError(f"trajectory tensor shape {shape!r}: at most {MAX_NDIM} sizes below 2**32")
    if length != DTYPE_SIZES[dtype] * math.prod(shape):
        raise VerificationError(f"trajectory tensor of {dtype} {list(shape)} must hold "
                                f"{DTYPE_SIZES[dtype] * math.prod(shape)} bytes, not {length}")


def encode_tensor(tensor: TensorBytes) -> bytes:
    """``u8 len(dtype) || dtype (ASCII) || u8 ndim || ndim x u32 size || u64 byte length || bytes``,
    integers big-endian, the element bytes as they are (C order, little-endian)."""
    name = tensor.dtype.encode("ascii")
    return b"".join((
        struct.pack(">B", len(name)), name,
        struct.pack(">B", len(tensor.shape)), struct.pack(f">{len(tensor.shape)}I", *tensor.shape),
        struct.pack(">Q", len(tensor.data)), tensor.data,
    ))


def initial_leaf(latent: TensorBytes) -> bytes:
    """Leaf 0: ``u32 0 || T(x_T)``."""
    return struct.pack(">I", 0) + encode_tensor(latent)


def step_leaf(index: int, timestep: TensorBytes, model_output: TensorBytes, latent: TensorBytes) -> bytes:
    """Leaf k >= 1: ``u32 k || T(t_k) || T(eps_k) || T(x_k)``."""
    if type(index) is not int or not 1 <= index <= MAX_STEPS:
        raise VerificationError(f"step leaf index must be 1 to {MAX_STEPS}, not {index!r}")
    return b"".join((struct.pack(">I", index), encode_tensor(timestep), encode_tensor(model_output),
                     encode_tensor(latent)))


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = memoryview(data), 0, what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise VerificationError(f"{self.what}: truncated at byte {self.pos}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def tensor(self) -> TensorBytes:
        (name_length,) = self.unpack(">B")
        try:
            dtype = self.take(name_length).decode("ascii")
        except UnicodeDecodeError:
            raise VerificationError(f"{self.what}: dtype name is not ASCII") from None
        (ndim,) = self.unpack(">B")
        if ndim > MAX_NDIM:
            raise VerificationError(f"{self.what}: {ndim} dimensions, at most {MAX_NDIM}")
        shape = self.unpack(f">{ndim}I")
        (length,) = self.unpack(">Q")
        _check_tensor(dtype, shape, length)
        return TensorBytes(dtype, shape, self.take(length))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise VerificationError(f"{self.what}: {len(self.data) - self.pos} bytes after its end")


def decode_leaf(data: bytes, expected_index: int | None = None) -> StepLeaf:
    """The leaf's contents; ``VerificationError`` if the bytes are not exactly one leaf (of
    ``expected_index``, if given)."""
    reader = _Reader(data, "trajectory leaf")
    (index,) = reader.unpack(">I")
    if expected_index is not None and index != expected_index:
        raise VerificationError(f"trajectory leaf says step {index}, expected {expected_index}")
    if index == 0:
        leaf = StepLeaf(0, None, None, reader.tensor())
    elif index <= MAX_STEPS:
        leaf = StepLeaf(index, reader.tensor(), reader.tensor(), reader.tensor())
    else:
        raise VerificationError(f"trajectory leaf index {index} is above {MAX_STEPS}")
    reader.end()
    return leaf


# --- the Merkle tree (RFC 9162 section 2.1) -------------------------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaves given by their leaf hashes; the empty tree is SHA-256 of nothing."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """RFC 9162 MTH of the leaves (their data, not their hashes)."""
    return root_from_leaf_hashes([leaf_hash(leaf) for leaf in leaves])


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 PATH(index, D[n]) over leaves given by their leaf hashes: the sibling hashes
    from the leaf up to the root."""
    if not 0 <= index < len(hashes):
        raise VerificationError(f"leaf {index} is not in a tree of {len(hashes)} leaves")
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return inclusion_proof(hashes[:k], index) + [root_from_leaf_hashes(hashes[k:])]
    return inclusion_proof(hashes[k:], index - k) + [root_from_leaf_hashes(hashes[:k])]


def verify_inclusion(index: int, tree_size: int, leaf_digest: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: whether ``proof`` shows the leaf with hash ``leaf_digest`` at
    ``index`` in the tree of ``tree_size`` leaves with root ``root``. Never raises for bad input."""
    if type(index) is not int or type(tree_size) is not int or not 0 <= index < tree_size:
        return False
    if not all(isinstance(p, bytes) and len(p) == 32 for p in proof) or len(leaf_digest) != 32:
        return False
    fn, sn, r = index, tree_size - 1, leaf_digest
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# --- a whole trajectory ---------------------------------------------------------------------------


class Trajectory:
    """The leaves of one generation, in order (leaf 0 = x_T), with their hashes."""

    def __init__(self, leaves: Sequence[bytes], leaf_hashes: Sequence[bytes] | None = None) -> None:
        if not 2 <= len(leaves) <= MAX_STEPS + 1:
            raise VerificationError(f"a trajectory has 2 to {MAX_STEPS + 1} leaves, not {len(leaves)}")
        self.leaves = tuple(bytes(leaf) for leaf in leaves)
        self.leaf_hashes = tuple(leaf_hashes) if leaf_hashes is not None else tuple(map(leaf_hash, self.leaves))
        if len(self.leaf_hashes) != len(self.leaves):
            raise VerificationError("one leaf hash per leaf")
        self.root = root_from_leaf_hashes(self.leaf_hashes)

    @property
    def steps(self) -> int:
        return len(self.leaves) - 1

    @property
    def size(self) -> int:
        """Bytes of leaf data."""
        return sum(map(len, self.leaves))

    def commitment(self) -> TrajectoryCommitment:
        return TrajectoryCommitment(ENCODING, self.steps, len(self.leaves), self.root.hex())

    def leaf(self, index: int) -> StepLeaf:
        if not 0 <= index < len(self.leaves):
            raise VerificationError(f"leaf {index} is not in a trajectory of {len(self.leaves)} leaves")
        return decode_leaf(self.leaves[index], index)

    def proof(self, index: int) -> list[bytes]:
        return inclusion_proof(self.leaf_hashes, index)

    def to_bytes(self) -> bytes:
        """``CONTAINER_MAGIC || u32 leaf count || (u64 length || leaf) per leaf``: how a node
        stores it (not signed; the root is recomputed on reading)."""
        parts = [CONTAINER_MAGIC, struct.pack(">I", len(self.leaves))]
        for leaf in self.leaves:
            parts += [struct.pack(">Q", len(leaf)), leaf]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Trajectory:
        if len(data) > MAX_TRAJECTORY_BYTES:
            raise VerificationError(f"stored trajectory larger than {MAX_TRAJECTORY_BYTES} bytes")
        reader = _Reader(data, "stored trajectory")
        if reader.take(len(CONTAINER_MAGIC)) != CONTAINER_MAGIC:
            raise VerificationError("stored trajectory: not a pointillist-trajectory-v1 container")
        (count,) = reader.unpack(">I")
        if not 2 <= count <= MAX_STEPS + 1:
            raise VerificationError(f"stored trajectory: {count} leaves, expected 2 to {MAX_STEPS + 1}")
        leaves = []
        for _ in range(count):
            (length,) = reader.unpack(">Q")
            leaves.append(reader.take(length))
        reader.end()
        return cls(leaves)


class TrajectoryBuilder:
    """Collects leaves as a generation runs: ``initial`` once, then ``step`` for k = 1, 2, ...;
    each leaf is hashed as it comes (the caller's thread: the generation thread)."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._hashes: list[bytes] = []

    @property
    def count(self) -> int:
        return len(self._leaves)

    def _add(self, leaf: bytes) -> None:
        self._leaves.append(leaf)
        self._hashes.append(leaf_hash(leaf))

    def initial(self, latent: TensorBytes) -> None:
        if self._leaves:
            raise VerificationError("the initial latent is leaf 0 and comes first")
        self._add(initial_leaf(latent))

    def step(self, timestep: TensorBytes, model_output: TensorBytes, latent: TensorBytes) -> None:
        if not self._leaves:
            raise VerificationError("the initial latent (leaf 0) must come before step 1")
        self._add(step_leaf(len(self._leaves), timestep, model_output, latent))

    def finish(self) -> Trajectory:
        return Trajectory(self._leaves, self._hashes)


def commitment_problem(commitment: TrajectoryCommitment) -> str | None:
    """One line saying why ``commitment`` is not a valid v3 ``trajectory`` member, or ``None``."""
    if commitment.encoding != ENCODING:
        return f"encoding must be {ENCODING!r}"
    if type(commitment.steps) is not int or not 1 <= commitment.steps <= MAX_STEPS:
        return f"steps must be an integer from 1 to {MAX_STEPS}"
    if commitment.leaves != commitment.steps + 1:
        return "leaves must equal steps + 1 (leaf 0 is the initial latent)"
    if not isinstance(commitment.root, str) or _HEX256.fullmatch(commitment.root) is None:
        return "root must be 64 lowercase hex digits"
    return None
