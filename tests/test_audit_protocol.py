"""``/pointillist/audit/1.0.0``: the frames and the auditor's checks in process (pure), then a
real node process that opens leaves of an image it made to whoever shows the image's signed root,
and refuses everything else in one frame without falling over."""

from __future__ import annotations

import re
import struct

import pytest
import trio

from pointillist.attestation import trajectory as T
from pointillist.protocol.audit import (
    MAX_LEAVES,
    OpenedLeaf,
    audit_reply,
    audit_request,
    parse_audit_request,
)
from pointillist.protocol.errors import ErrorCode, FrameError, JobRejected, TransportError
from pointillist.requester.audit_client import Unanswered, check_opened


def small_trajectory(steps: int = 4) -> T.Trajectory:
    def tensor(value: float) -> T.TensorBytes:
        return T.TensorBytes("float32", (1, 2), struct.pack("<2f", value, -value))

    builder = T.TrajectoryBuilder()
    builder.initial(tensor(0.5))
    for k in range(1, steps + 1):
        builder.step(T.TensorBytes("int64", (), struct.pack("<q", 1000 - k)), tensor(k), tensor(-k))
    return builder.finish()


TRAJ = small_trajectory()
COMMITMENT = TRAJ.commitment()
JOB = "ab" * 16


def honest_reply(request: dict, trajectory: T.Trajectory = TRAJ) -> dict:
    return audit_reply(len(trajectory.leaves),
                       [OpenedLeaf(k, trajectory.leaves[k], tuple(trajectory.proof(k))) for k in request["leaves"]])


def test_leaves_proven_against_the_signed_root_are_accepted():
    request = audit_request(JOB, COMMITMENT.root, [4, 0, 1])
    assert request["leaves"] == [0, 1, 4]
    opened = check_opened(honest_reply(request), request, COMMITMENT)
    assert sorted(opened.leaves) == [0, 1, 4] and opened.leaves[4].leaf == TRAJ.leaves[4]


@pytest.mark.parametrize("doctor, reason", [
    (lambda r: {**r, "leaves": [{**r["leaves"][0], "leaf": r["leaves"][0]["leaf"][:-1] + b"\x01"}, *r["leaves"][1:]]},
     "leaf 0 does not belong to the signed root"),
    (lambda r: {**r, "leaves": [{**r["leaves"][0], "proof": r["leaves"][0]["proof"][1:]}, *r["leaves"][1:]]},
     "leaf 0 does not belong"),
    (lambda r: {**r, "treeSize": 9}, "opened a tree of 9 leaves; it signed 5"),
    (lambda r: {**r, "leaves": r["leaves"][:1]}, "malformed reply: expected 2 leaves"),
    (lambda r: {**r, "leaves": r["leaves"][::-1]}, "expected leaf 0"),
    (lambda r: {"t": "error", "code": "not-found", "message": "gone"}, "refused the challenge (not-found): gone"),
    (lambda r: [1, 2], "malformed reply"),
])
def test_a_doctored_or_refused_answer_is_unanswered_in_one_line(doctor, reason):
    request = audit_request(JOB, COMMITMENT.root, [0, 3])
    with pytest.raises(Unanswered, match=re.escape(reason)) as e:
        check_opened(doctor(honest_reply(request)), request, COMMITMENT)
    assert "\n" not in str(e.value)


def test_a_tampered_leaf_with_a_proof_of_its_own_tree_is_caught():
    """A node that changes a latent after signing can prove it only against another root."""
    leaves = list(TRAJ.leaves)
    leaves[2] = T.step_leaf(2, T.TensorBytes("int64", (), struct.pack("<q", 998)),
                            T.TensorBytes("float32", (1, 2), struct.pack("<2f", 9, 9)),
                            T.TensorBytes("float32", (1, 2), struct.pack("<2f", 9, 9)))
    forged = T.Trajectory(leaves)
    request = audit_request(JOB, COMMITMENT.root, [2])
    with pytest.raises(Unanswered, match="leaf 2 does not belong"):
        check_opened(honest_reply(request, forged), request, COMMITMENT)


@pytest.mark.parametrize("frame, error", [
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": []}, JobRejected),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": [2, 1]}, JobRejected),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": [1, 1]}, JobRejected),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": [-1]}, JobRejected),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": list(range(MAX_LEAVES + 1))}, JobRejected),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": [True]}, FrameError),
    ({"t": "audit?", "jobId": "XY", "root": "00" * 32, "leaves": [1]}, FrameError),
    ({"t": "audit?", "jobId": JOB, "root": "00", "leaves": [1]}, FrameError),
    ({"t": "audit?", "jobId": JOB, "root": "00" * 32, "leaves": [1], "more": 1}, FrameError),
    ("audit?", FrameError),
])
def test_requests_out_of_the_rules_are_refused(frame, error):
    with pytest.raises(error) as e:
        parse_audit_request(frame)
    if error is JobRejected:
        assert e.value.code is ErrorCode.INVALID_PARAMS


# --- a real node process ----------------------------------------------------------------------------

async def ask(node_addr: str, frame) -> object:
    from pointillist.network.host import connect, open_stream, parse_peer_addr, running_host
    from pointillist.protocol import framing
    from pointillist.protocol.audit import AUDIT_PROTOCOL
    from pointillist.protocol.identity import Identity

    peer = parse_peer_addr(node_addr)
    async with running_host(Identity.generate()) as host:
        with trio.fail_after(60):
            await connect(host, peer)
            stream = await open_stream(host, peer.peer_id, AUDIT_PROTOCOL)
            if isinstance(frame, bytes):  # raw garbage, not a frame
                await stream.write(frame)
            else:
                await framing.write_frame(stream, frame)
            try:
                return await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
            except (FrameError, TransportError) as exc:  # returned: the host's nursery would group it
                return exc


async def open_with_client(node_addr: str, job_id: str, commitment, indices):
    from pointillist.network.host import running_host
    from pointillist.protocol.identity import Identity
    from pointillist.requester.audit_client import open_leaves

    async with running_host(Identity.generate()) as host:
        try:
            return await open_leaves(host, node_addr, job_id, commitment, indices)
        except Unanswered as exc:  # returned, not raised: the host's nursery would group it
            return exc


@pytest.mark.integration
def test_a_node_opens_leaves_of_its_own_image_to_whoever_shows_the_root(shared_node, tmp_path):
    from pointillist.attestation.png import extract_provenance
    from pointillist.attestation.statement import parse_statement
    from support import run_cli

    out = tmp_path / "fox.png"
    done = run_cli(["submit", "a fox", "--peer", shared_node.addr, "--size", "64", "--steps", "3",
                    "--out", str(out), "--quiet"], tmp_path / "requester")
    assert done.returncode == 0, done.stderr
    record = parse_statement(extract_provenance(out.read_bytes()).attestation.payload).record
    commitment = record.trajectory
    assert commitment is not None and commitment.leaves == 4

    opened = trio.run(open_with_client, shared_node.addr, record.job_id, commitment, [0, 1, 3])
    assert sorted(opened.leaves) == [0, 1, 3]
    assert T.decode_leaf(opened.leaves[3].leaf, 3).index == 3  # a step leaf, proven and decoded

    wrong_root = T.TrajectoryCommitment(commitment.encoding, 3, 4, "00" * 32)
    refused = trio.run(open_with_client, shared_node.addr, record.job_id, wrong_root, [0])
    assert isinstance(refused, Unanswered) and "(not-found)" in str(refused)
    refused = trio.run(open_with_client, shared_node.addr, record.job_id, commitment, [4])
    assert isinstance(refused, Unanswered) and "(invalid-params)" in str(refused) and "leaves 0..3" in str(refused)
    reply = trio.run(ask, shared_node.addr, {"t": "audit?", "nonsense": True})
    assert reply["t"] == "error" and reply["code"] == "bad-frame"
    ended = trio.run(ask, shared_node.addr, b"\xff" * 64)  # garbage: the node ends the stream, stays up
    assert isinstance(ended, TransportError), ended
    assert shared_node.alive()
    again = trio.run(open_with_client, shared_node.addr, record.job_id, commitment, [2])
    assert list(again.leaves) == [2]
