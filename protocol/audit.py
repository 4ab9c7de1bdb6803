"""The audit protocol ``/pointillist/audit/1.0.0`` (issue 11): ask a node for chosen leaves of a
generation's step commitments, with their Merkle inclusion proofs. One stream, one request, one
reply (msgpack frames, as the job protocol)::

    auditor → node   {"t": "audit?", "jobId": <32 hex>, "root": <64 hex>, "leaves": [k, ...]}
    node → auditor   {"t": "audit", "treeSize": n,
                      "leaves": [{"i": k, "leaf": <bytes>, "proof": [<32 bytes>, ...]}, ...]}
                 or  {"t": "error", "code": str, "message": str}

Who may ask: whoever holds the attestation. ``root`` is the trajectory root it signed (predicate
generation/v3); the node answers only for a job whose kept trajectory has that root, so the
request proves the asker holds the attestation (a 256-bit value no one guesses), and a node never
serves the latents of a job to someone who has not seen its image. ``leaves`` are distinct
indices 0..n-1 in increasing order, at most ``MAX_LEAVES``. The auditor checks every leaf against
the signed root with its proof (``attestation.trajectory.verify_inclusion``); a missing leaf, a
bad proof, or a refusal within the challenge window is a failed audit (docs/protocol.md).

Pure code: values in, frames or exceptions out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, FrameError, JobRejected

AUDIT_PROTOCOL = "/pointillist/audit/1.0.0"
#: Leaves one request may ask for: every leaf of a 63-step job, or a few of any job. The reply
#: stays under the reply frame limit for 1024x1024 float16 latents (256 KiB a leaf).
MAX_LEAVES = 64
#: Levels of an inclusion proof: a tree of up to 2**32 leaves (trajectories have at most 10,001).
MAX_PROOF = 32
#: Nodes keep a job's step commitments at least this long after the job (its results' retention,
#: ``[results] keep_hours``, may keep them longer). Within it, no answer is a failed audit.
MIN_CHALLENGE_WINDOW_S = 3600

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_ROOT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AuditRequest:
    job_id: str
    root: str
    leaves: tuple[int, ...]


@dataclass(frozen=True)
class OpenedLeaf:
    index: int
    leaf: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class AuditReply:
    tree_size: int
    leaves: tuple[OpenedLeaf, ...]


def audit_request(job_id: str, root: str, leaves: list[int]) -> dict[str, Any]:
    request = {"t": "audit?", "jobId": job_id, "root": root, "leaves": sorted(set(leaves))}
    parse_audit_request(request)  # the same rules as the node: a bad request never leaves
    return request


def parse_audit_request(frame: Any) -> AuditRequest:
    """The request in ``frame``; ``FrameError`` for a malformed one, ``JobRejected``
    (invalid-params) for leaves out of the rules."""
    if not isinstance(frame, dict) or frame.get("t") != "audit?" or set(frame) != {"t", "jobId", "root", "leaves"}:
        raise FrameError("expected {t: 'audit?', jobId, root, leaves}")
    job_id, root, leaves = frame["jobId"], frame["root"], frame["leaves"]
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise FrameError("jobId must be 32 lowercase hex digits")
    if not isinstance(root, str) or not _ROOT.fullmatch(root):
        raise FrameError("root must be 64 lowercase hex digits")
    if not isinstance(leaves, list) or not all(type(k) is int for k in leaves):
        raise FrameError("leaves must be a list of integers")
    if not 1 <= len(leaves) <= MAX_LEAVES:
        raise JobRejected(ErrorCode.INVALID_PARAMS, f"ask for 1 to {MAX_LEAVES} leaves, not {len(leaves)}")
    if any(k < 0 for k in leaves) or leaves != sorted(set(leaves)):
        raise JobRejected(ErrorCode.INVALID_PARAMS, "leaves must be distinct indices >= 0 in increasing order")
    return AuditRequest(job_id, root, tuple(leaves))


def audit_reply(tree_size: int, opened: list[OpenedLeaf]) -> dict[str, Any]:
    return {"t": "audit", "treeSize": tree_size,
            "leaves": [{"i": o.index, "leaf": o.leaf, "proof": list(o.proof)} for o in opened]}


def parse_audit_reply(frame: Any, request: AuditRequest) -> AuditReply:
    """The node's answer to ``request``: exactly the leaves asked for, in order, or
    ``JobRejected`` with the node's error code; ``FrameError`` for anything malformed."""
    if isinstance(frame, dict) and frame.get("t") == "error":
        code, message = frame.get("code"), frame.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise FrameError("malformed error reply")
        try:
            error = ErrorCode(code)
        except ValueError:
            error = ErrorCode.INTERNAL
            message = f"{code}: {message}"
        raise JobRejected(error, message[:300])
    if not isinstance(frame, dict) or frame.get("t") != "audit" or set(frame) != {"t", "treeSize", "leaves"}:
        raise FrameError("expected {t: 'audit', treeSize, leaves}")
    tree_size, items = frame["treeSize"], frame["leaves"]
    if type(tree_size) is not int or not 2 <= tree_size <= 2**32:
        raise FrameError("treeSize must be an integer of at least 2")
    if not isinstance(items, list) or len(items) != len(request.leaves):
        raise FrameError(f"expected {len(request.leaves)} leaves")
    opened = []
    for want, item in zip(request.leaves, items):
        if not isinstance(item, dict) or set(item) != {"i", "leaf", "proof"}:
            raise FrameError("a leaf must be {i, leaf, proof}")
        proof = item["proof"]
        if item["i"] != want or type(item["i"]) is not int:
            raise FrameError(f"expected leaf {want}, got {item['i']!r}")
        if not isinstance(item["leaf"], bytes) or not isinstance(proof, list) or len(proof) > MAX_PROOF \
                or not all(isinstance(h, bytes) and len(h) == 32 for h in proof):
            raise FrameError(f"leaf {want}: leaf must be bytes and proof a list of 32-byte hashes")
        opened.append(OpenedLeaf(want, item["leaf"], tuple(proof)))
    return AuditReply(tree_size, tuple(opened))
