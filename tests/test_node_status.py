"""The operator's figures: ``NodeStatus`` from events, the signed status protocol (pure and over an
in-memory stream), the node file, and ``pointillist node status`` against a running node."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio
import trio.testing

from pointillist.cli.node_cmd import parse_metrics_addr
from pointillist.node.events import EventBus, JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from pointillist.node.node_file import pid_running, read_node_file, remove_node_file, write_node_file
from pointillist.node.status import NodeStatus, Readings
from pointillist.node.status_service import StatusService
from pointillist.protocol import framing
from pointillist.protocol.dsse import sign_envelope
from pointillist.protocol.errors import ErrorCode, FrameError, JobRejected, UsageError
from pointillist.protocol.identity import Identity
from pointillist.protocol.messages import WireEnvelope
from pointillist.protocol.status import (
    MAX_AGE_S,
    STATUS_PAYLOAD_TYPE,
    check_status_request,
    parse_status_reply,
    status_request,
)
from support import run_cli
from test_admission import MemoryStream

NODE = Identity.generate()
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def scripted_status() -> tuple[NodeStatus, Clock]:
    clock = Clock()
    status = NodeStatus(NODE.peer_id, [{"name": "tiny", "digest": "ab" * 32, "warm": True}],
                        Readings(addrs=lambda: ["/ip4/127.0.0.1/tcp/1"], peers=lambda: 3, records_held=lambda: 4,
                                 records_rejected=lambda: {"expired": 2}, queue_depth=lambda: 1,
                                 stored=lambda: (5, 5000)),
                        clock=clock, wall_clock=lambda: NOW)
    return status, clock


def test_status_counts_jobs_durations_progress_and_refusals():
    status, clock = scripted_status()
    status.observe(JobAccepted("a" * 32, "req", "peer1", "tiny", 20, 0, at=100.0))
    status.observe(JobStarted("a" * 32, 20, at=101.0))
    status.observe(JobProgress("a" * 32, 7, 20))
    clock.t = 102.5
    running = status.snapshot()["current"]
    assert running == {"jobId": "a" * 32, "requester": "req", "step": 7, "total": 20, "runningS": 1.5}
    status.observe(JobFinished("a" * 32, "req", "peer1", None, queue_s=1.0, generation_s=2.0, delivery_s=0.25,
                               steps=20, png_bytes=900, at=103.25))
    status.observe(JobFinished("b" * 32, "req", "peer2", ErrorCode.INTERNAL, queue_s=0.5, generation_s=0.1,
                               delivery_s=0.0, steps=20, at=104.0))
    status.observe(RequestRefused("peer3", ErrorCode.BAD_FRAME, "not msgpack"))
    s = status.snapshot()
    assert s["current"] is None
    assert s["jobs"] == {"served": 1, "failed": 1, "failedByCode": {"internal": 1}}
    assert s["refusedByCode"] == {"bad-frame": 1}
    assert s["stepsDone"] == 20 and s["lastStepsPerS"] == 10.0
    ok, failed = s["recentJobs"]
    assert (ok["jobId"], ok["ok"], ok["queueS"], ok["generationS"], ok["deliveryS"]) == ("a" * 32, True, 1.0, 2.0, 0.25)
    assert ok["at"] == NOW + 3.25  # wall time of the event, not of the snapshot
    assert (failed["ok"], failed["code"]) == (False, "internal")
    assert [(e["code"], e["peer"]) for e in s["recentErrors"]] == [("internal", "peer2"), ("bad-frame", "peer3")]
    assert (s["peers"], s["recordsHeld"], s["recordsRejected"], s["queue"]) == (3, 4, {"expired": 2}, 1)
    assert s["results"] == {"count": 5, "bytes": 5000}
    json.dumps(s)  # what travels and what --json prints


def test_status_keeps_only_recent_jobs_and_errors():
    status, _ = scripted_status()
    for i in range(50):
        status.observe(RequestRefused(f"p{i}", ErrorCode.EXPIRED, "old"))
    s = status.snapshot()
    assert s["refusedByCode"] == {"expired": 50}
    assert len(s["recentErrors"]) == 10 and s["recentErrors"][-1]["peer"] == "p49"


def test_a_fresh_request_signed_with_the_nodes_key_is_accepted():
    check_status_request(status_request(NODE, NODE.peer_id, NOW), NODE.peer_id, NOW + MAX_AGE_S)


def _signed_payload(signer: Identity, payload: dict) -> dict:
    env = sign_envelope(signer, STATUS_PAYLOAD_TYPE, json.dumps(payload).encode())
    return {"t": "status?", "envelope": WireEnvelope.from_envelope(env).model_dump()}


@pytest.mark.parametrize("make, code", [
    (lambda: status_request(Identity.generate(), NODE.peer_id, NOW), ErrorCode.FORBIDDEN),
    (lambda: status_request(NODE, NODE.peer_id, NOW - MAX_AGE_S - 1), ErrorCode.EXPIRED),
    (lambda: status_request(NODE, NODE.peer_id, NOW + MAX_AGE_S + 1), ErrorCode.EXPIRED),
    (lambda: _signed_payload(NODE, {"v": 1, "node": Identity.generate().peer_id, "issuedAt": int(NOW)}),
     ErrorCode.WRONG_NODE),
    (lambda: _tampered(), ErrorCode.BAD_SIGNATURE),
])
def test_requests_not_from_this_nodes_operator_are_refused_with_a_code(make, code):
    with pytest.raises(JobRejected) as err:
        check_status_request(make(), NODE.peer_id, NOW)
    assert err.value.code == code


def _tampered() -> dict:
    frame = status_request(NODE, NODE.peer_id, NOW)
    frame["envelope"]["payload"] = frame["envelope"]["payload"].replace(b'"v":1', b'"v":1 ')
    return frame


@pytest.mark.parametrize("frame", [
    None, [], {"t": "status?"}, {"t": "job", "envelope": {}}, {"t": "status?", "envelope": {"payload": 1}},
    _signed_payload(NODE, {"v": 1, "node": NODE.peer_id}),  # signed, but the payload breaks the schema
    _signed_payload(NODE, {"v": 2, "node": NODE.peer_id, "issuedAt": int(NOW)}),
])
def test_malformed_requests_are_frame_errors(frame):
    with pytest.raises(FrameError):
        check_status_request(frame, NODE.peer_id, NOW)


def test_replies_parse_to_the_snapshot_or_the_nodes_error():
    assert parse_status_reply({"t": "status", "status": {"peers": 1}}) == {"peers": 1}
    with pytest.raises(JobRejected) as err:
        parse_status_reply({"t": "error", "code": "forbidden", "message": "no"})
    assert err.value.code == ErrorCode.FORBIDDEN
    for bad in ({"t": "error", "code": "nonsense"}, {"t": "status", "status": 3}, "x"):
        with pytest.raises(FrameError):
            parse_status_reply(bad)


async def _exchange(service: StatusService, raw: bytes) -> dict | None:
    client, server = trio.testing.memory_stream_pair()
    reply: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(server))
        await client.send_all(raw)
        try:
            reply.append(await framing.read_frame(MemoryStream(client), 1 << 20))
        except Exception:
            reply.append(None)
    return reply[0]


async def test_the_status_service_answers_its_operator_and_refuses_others():
    status, _ = scripted_status()
    events = EventBus()
    events.subscribe(status.observe)
    service = StatusService(NODE.peer_id, status, events, clock=lambda: NOW)
    good = await _exchange(service, framing.encode_frame(status_request(NODE, NODE.peer_id, NOW)))
    assert good["t"] == "status" and good["status"]["peerId"] == NODE.peer_id and good["status"]["peers"] == 3
    stranger = await _exchange(service, framing.encode_frame(status_request(Identity.generate(), NODE.peer_id, NOW)))
    assert (stranger["t"], stranger["code"]) == ("error", "forbidden")
    garbage = await _exchange(service, framing.encode_frame({"t": "status?", "envelope": 7}))
    assert (garbage["t"], garbage["code"]) == ("error", "bad-frame")
    assert status.snapshot()["refusedByCode"] == {"forbidden": 1, "bad-frame": 1}  # counted like job refusals
    # A broken frame or a peer that leaves: the stream ends, nothing is raised into the node.
    assert await _exchange(service, b"\xff\xff\xff\xff") is None
    assert await _exchange(service, b"") is None


def test_node_file_is_removed_only_by_the_node_that_wrote_it(tmp_path):
    write_node_file(tmp_path, {"peer_id": "p", "addrs": ["a"], "pid": os.getpid(), "metrics": None, "speed": 1})
    assert read_node_file(tmp_path) == {"peer_id": "p", "addrs": ["a"], "pid": os.getpid(), "metrics": None}
    (tmp_path / "node.json").write_text(json.dumps({"peer_id": "p", "addrs": [], "pid": os.getpid() + 1}))
    remove_node_file(tmp_path)  # another node's file: kept
    assert read_node_file(tmp_path) is not None
    write_node_file(tmp_path, {"peer_id": "p", "addrs": [], "pid": os.getpid()})
    remove_node_file(tmp_path)
    assert read_node_file(tmp_path) is None
    (tmp_path / "node.json").write_text("[1]")
    with pytest.raises(ValueError):
        read_node_file(tmp_path)


def test_pid_running():
    assert pid_running(os.getpid())
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not pid_running(int(done.stdout))
    assert not pid_running("12") and not pid_running(0)


@pytest.mark.parametrize("text, parsed", [
    ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("[::1]:0", ("::1", 0)),
])
def test_metrics_addresses_default_to_this_machine(text, parsed):
    assert parse_metrics_addr(text) == parsed


@pytest.mark.parametrize("text", ["", "x", "host:", ":9464", "1.2.3.4:99999", "127.0.0.1:-1"])
def test_bad_metrics_addresses_say_what_is_expected(text):
    with pytest.raises(UsageError, match="PORT or HOST:PORT"):
        parse_metrics_addr(text)


@pytest.mark.integration
def test_node_status_reports_a_running_node_to_its_operator_only(node_process, tmp_path):
    node = node_process()
    submitted = run_cli(["submit", "--peer", node.addr, "a lighthouse", "--steps", "4", "--size", "64x64",
                         "--out", str(tmp_path / "a.png"), "--json"], tmp_path / "requester")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout.splitlines()[0])["jobId"]

    s = node.status()
    assert s["peerId"] == node.peer_id and s["pid"] == node.proc.pid
    assert s["jobs"]["served"] == 1 and s["results"]["count"] == 1
    (job,) = s["recentJobs"]
    assert job["jobId"] == job_id and job["ok"] and job["steps"] == 4 and job["generationS"] > 0

    text = run_cli(["node", "status"], node.home)
    assert text.returncode == 0 and node.peer_id in text.stdout and "1 served, 0 failed" in text.stdout
    assert job_id in text.stdout

    # Someone else's key on this machine: refused by the node, one line, no traceback.
    run_cli(["keys", "--key", str(tmp_path / "other.key")], tmp_path)  # creates it
    other = run_cli(["node", "status", "--key", str(tmp_path / "other.key")], node.home)
    assert other.returncode != 0 and "not this node's key" in other.stderr and "Traceback" not in other.stderr

    assert node.stop() == 0
    gone = run_cli(["node", "status"], node.home)
    assert gone.returncode != 0 and "no node is running here" in gone.stderr and len(gone.stderr.splitlines()) == 1
