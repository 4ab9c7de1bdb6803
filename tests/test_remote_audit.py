"""Remote audits (issue 11, item 4): a requester without the model has another node serving the
same digest recompute the challenged steps (``/pointillist/audit-job/1.0.0``) and gets a verdict
that node signs (predicate audit/v1).

Pure first (the verdict's format and its binding to what was asked), then the auditor's service in
process against a scripted audit (every refusal, the order of frames), then real node processes:
an honest node's image passes, a node running other weights fails with evidence that a re-check
with the model confirms, and ``submit --audit-share`` finds an auditor through the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time

import pytest
import trio

from pointillist.attestation.audit_verdict import AuditVerdictRecord, open_verdict, sign_verdict
from pointillist.attestation.png import extract_provenance
from pointillist.attestation.verify import verified_generation
from pointillist.protocol import framing
from pointillist.protocol.audit import OpenedLeaf
from pointillist.protocol.audit_job import (
    AuditJobRequest,
    audit_job_message,
    new_audit_job,
    open_audit_job,
    parse_audit_job_message,
    sign_audit_job,
)
from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import FrameError, RemoteError, VerificationError
from pointillist.protocol.identity import Identity
from pointillist.requester.audit_job_client import Audited, AuditorFailed, check_verdict
from support import REPO, VECTORS, NodeHandle, load_vector_generator, run_cli

GEN = load_vector_generator()
PNG = (VECTORS / "valid-v3.png").read_bytes()  # signed by GEN.NODE, model GEN.MODEL_DIGEST, 5 steps
STATEMENT, ATTESTATION, IMAGE = verified_generation(PNG)
RECORD = STATEMENT.record
AUDITOR = GEN.AUDITOR
REQUESTER = GEN.REQUESTER
NOW = 1795341700  # within valid-v3's job window; the audit job is issued now
AUDITED = Audited(PNG, hashlib.sha256(ATTESTATION.payload).hexdigest(), STATEMENT.subject.sha256,
                  RECORD.trajectory.root, RECORD.model_digest, RECORD.node)


def audit_job(steps=(1, 3), node: str = AUDITOR.peer_id, png: bytes = PNG, model: str = RECORD.model_digest):
    request = new_audit_job(node=node, model=model, png=png, steps=list(steps), now=NOW)
    return request, sign_audit_job(REQUESTER, request)


def verdict_for(request: AuditJobRequest, envelope: Envelope, verdict: str = "pass", **changes) -> AuditVerdictRecord:
    record = AuditVerdictRecord(
        auditor=AUDITOR.peer_id, subject=STATEMENT.subject, statement_sha256=AUDITED.statement_sha256,
        attested_node=RECORD.node, attested_job=RECORD.job_id, model_digest=RECORD.model_digest,
        root=RECORD.trajectory.root, steps=tuple(request.steps), verdict=verdict, detail=f"{verdict}: scripted",
        checks=({"check": "unet", "status": verdict, "detail": "scripted", "step": 1, "measure": "eps-rel-error",
                 "value": float("inf"), "threshold": 2e-4},),
        requester=envelope.keyid, audit_job_id=request.job_id,
        audit_job_sha256=hashlib.sha256(envelope.payload).hexdigest(), device="cpu", dtype="float32",
        torch_threads=1, libraries={"torch": "2.13.0"}, created_at="2026-11-22T10:01:40Z")
    return dataclasses.replace(record, **changes)


# ---- the formats (pure) --------------------------------------------------------------------------


def test_a_signed_verdict_reads_back_as_signed_with_infinite_figures_as_strings():
    request, envelope = audit_job()
    record = verdict_for(request, envelope, "fail")
    signed = sign_verdict(AUDITOR, record)
    back = open_verdict(Envelope.from_json(signed.to_json()))
    assert back == dataclasses.replace(record, checks=({**record.checks[0], "value": "inf"},))
    assert b"Infinity" not in signed.payload  # JSON has no infinities: no verifier should choke


def test_a_verdict_is_refused_when_signed_by_another_key_or_edited():
    request, envelope = audit_job()
    signed = sign_verdict(AUDITOR, verdict_for(request, envelope))
    with pytest.raises(VerificationError, match="names auditor"):
        open_verdict(sign_envelope(GEN.OTHER, signed.payload_type, signed.payload))
    edited = Envelope(signed.payload_type, signed.payload.replace(b'"pass"', b'"fail"', 1), signed.keyid, signed.sig)
    with pytest.raises(VerificationError, match="signature"):
        open_verdict(edited)
    with pytest.raises(ValueError, match="names auditor"):  # nothing is signed in another's name
        sign_verdict(GEN.OTHER, verdict_for(request, envelope))


@pytest.mark.parametrize("change, what", [
    ({"audit_job_id": "0" * 32}, "another audit job"),
    ({"audit_job_sha256": "0" * 64}, "another signed audit job"),
    ({"requester": GEN.OTHER.peer_id}, "another requester"),
    ({"statement_sha256": "1" * 64}, "another generation statement"),
    ({"subject": dataclasses.replace(STATEMENT.subject, sha256="2" * 64)}, "another image pixels"),
    ({"attested_node": GEN.OTHER.peer_id}, "another audited node"),
    ({"root": "3" * 64}, "another step commitments root"),
    ({"model_digest": "4" * 64}, "another model"),
    ({"steps": (1, 2)}, "another steps"),
])
def test_a_verdict_about_anything_but_what_was_asked_is_the_auditors_failure(change, what):
    request, envelope = audit_job()
    good = sign_verdict(AUDITOR, verdict_for(request, envelope))
    assert check_verdict(good, auditor=AUDITOR.peer_id, job=request, job_envelope=envelope, audited=AUDITED).verdict == "pass"
    bad = sign_verdict(AUDITOR, verdict_for(request, envelope, **change))
    with pytest.raises(AuditorFailed, match=what):
        check_verdict(bad, auditor=AUDITOR.peer_id, job=request, job_envelope=envelope, audited=AUDITED)
    with pytest.raises(AuditorFailed, match="not by the auditor"):  # a verdict relayed from someone else
        check_verdict(good, auditor=GEN.OTHER.peer_id, job=request, job_envelope=envelope, audited=AUDITED)


def test_audit_jobs_and_their_frames_are_checked_strictly():
    request, envelope = audit_job()
    assert open_audit_job(envelope).request == request
    with pytest.raises(VerificationError):
        open_audit_job(Envelope(envelope.payload_type, envelope.payload.replace(b"[1,3]", b"[1,4]"),
                                envelope.keyid, envelope.sig))
    unordered = envelope.payload.replace(b"[1,3]", b"[3,1]")
    with pytest.raises(RemoteError, match="steps"):
        open_audit_job(sign_envelope(REQUESTER, envelope.payload_type, unordered))
    leaf = OpenedLeaf(0, b"x", (b"h" * 32,))
    frame = audit_job_message(envelope, PNG, [leaf])
    assert parse_audit_job_message(frame).leaves == (leaf,)
    for broken in ({**frame, "extra": 1}, {**frame, "image": b""}, {**frame, "leaves": []},
                   {**frame, "leaves": [frame["leaves"][0]] * 2},
                   {**frame, "leaves": [{**frame["leaves"][0], "proof": [b"short"]}]},
                   {**frame, "envelope": {**frame["envelope"], "sig": b"x"}}, [frame]):
        with pytest.raises(FrameError):
            parse_audit_job_message(broken)


# ---- the auditor's service in process, against a scripted audit -----------------------------------


class ScriptedModel:
    name = "tiny-sd-vectors"
    digest = RECORD.model_digest

    def generate(self, params, on_step=None):  # never called: no generation job here
        raise AssertionError("no generation")


def service(policy=None):
    """The auditor's service over a scripted audit; the vectors' image is 16x16, so by default the
    operator's limits admit sides from 16."""
    from pointillist.node.audit_job_service import AuditJobService
    from pointillist.node.limits import NodeLimits
    from pointillist.node.policy import Policy
    from pointillist.node.service import JobService, ServedModels

    policy = policy or Policy(limits=NodeLimits(min_side=16))
    jobs = JobService(AUDITOR, ServedModels([ScriptedModel()]), policy=policy, clock=lambda: NOW)
    audits = AuditJobService(jobs)
    audited: list = []

    def scripted_audit(job, message, checked, model):  # what _audit does, minus the recomputation
        audited.append((job.request.steps, [o.index for o in message.leaves], jobs.queue_depth))
        statement = checked[0]
        return sign_verdict(AUDITOR, dataclasses.replace(
            verdict_for(job.request, job.envelope), statement_sha256=hashlib.sha256(checked[1].payload).hexdigest(),
            subject=statement.subject))

    audits._audit = scripted_audit
    return audits, audited


async def ask(audits, frame) -> list[dict]:
    from test_admission import MemoryStream

    ours, theirs = trio.testing.memory_stream_pair()
    ours = MemoryStream(ours)
    replies = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(audits.handle_stream, MemoryStream(theirs))
        await framing.write_frame(ours, frame, 64 * 1024 * 1024)
        with trio.fail_after(30):
            while True:
                replies.append(await framing.read_frame(ours, framing.MAX_REPLY_FRAME))
                if replies[-1]["t"] in ("verdict", "error"):
                    break
    return replies


def leaves(indices=(0, 1, 2, 3, 5)):
    trajectory = GEN.synthetic_trajectory()
    return [OpenedLeaf(i, trajectory.leaves[i], tuple(trajectory.proof(i))) for i in indices]


async def test_the_auditor_accepts_then_answers_with_a_verdict_bound_to_the_job():
    audits, audited = service()
    request, envelope = audit_job()
    replies = await ask(audits, audit_job_message(envelope, PNG, leaves()))
    assert [r["t"] for r in replies] == ["accepted", "verdict"] and replies[0]["position"] == 0
    assert audited == [([1, 3], [0, 1, 2, 3, 5], 1)]  # counted in the advertised queue while it ran
    verdict = Envelope(**{k: replies[1]["envelope"][w] for k, w in
                          (("payload_type", "payloadType"), ("payload", "payload"), ("keyid", "keyid"), ("sig", "sig"))})
    record = check_verdict(verdict, auditor=AUDITOR.peer_id, job=request, job_envelope=envelope, audited=AUDITED)
    assert record.verdict == "pass" and audits.jobs.queue_depth == 0
    again = await ask(audits, audit_job_message(envelope, PNG, leaves()))  # the same signed job twice
    assert again[-1]["code"] == "replayed"


@pytest.mark.parametrize("make, code, words", [
    (lambda: audit_job_message(audit_job(node=GEN.OTHER.peer_id)[1], PNG, leaves()), "wrong-node", "addressed to"),
    (lambda: audit_job_message(audit_job(model="5" * 64)[1], PNG, leaves()), "unknown-model", "not served"),
    (lambda: audit_job_message(audit_job()[1], PNG + b"\0", leaves()), "bad-frame", "not the one the signed audit job"),
    (lambda: audit_job_message(audit_job(png=(VECTORS / "tampered-pixels.png").read_bytes())[1],
                               (VECTORS / "tampered-pixels.png").read_bytes(), leaves()), "invalid-params",
     "does not verify (pixels"),
    (lambda: audit_job_message(audit_job(png=(VECTORS / "tampered-seed.png").read_bytes())[1],
                               (VECTORS / "tampered-seed.png").read_bytes(), leaves()), "invalid-params", "does not verify"),
    (lambda: audit_job_message(audit_job(png=(VECTORS / "valid.png").read_bytes())[1],
                               (VECTORS / "valid.png").read_bytes(), leaves()), "invalid-params", "no step commitments"),
    (lambda: audit_job_message(audit_job(steps=(1, 6))[1], PNG, leaves()), "invalid-params", "steps 1..5"),
    (lambda: {"t": "audit-job", "envelope": 7}, "bad-frame", "envelope"),
    (lambda: [1, 2, 3], "bad-frame", "msgpack map"),
])
async def test_every_refusal_is_one_error_frame_and_the_auditor_keeps_serving(make, code, words):
    audits, audited = service()
    replies = await ask(audits, make())
    assert [r["t"] for r in replies] == ["error"] and replies[0]["code"] == code, replies
    assert words in replies[0]["message"] and audited == []
    _, envelope = audit_job()
    assert (await ask(audits, audit_job_message(envelope, PNG, leaves())))[-1]["t"] == "verdict"


async def test_an_operator_can_turn_audit_jobs_off_and_its_limits_apply_to_the_audited_image():
    from pointillist.node.policy import AuditPolicy, Policy

    audits, audited = service(Policy(audits=AuditPolicy(serve=False)))
    replies = await ask(audits, audit_job_message(audit_job()[1], PNG, leaves()))
    assert replies[0]["code"] == "forbidden" and "[audits] serve = false" in replies[0]["message"]
    audits, audited = service(Policy())  # sides from 64: the 16x16 image is outside
    replies = await ask(audits, audit_job_message(audit_job()[1], PNG, leaves()))
    assert replies[0]["code"] == "invalid-params" and "width 16 outside 64..2048" in replies[0]["message"]
    assert audited == []


# ---- real node processes ---------------------------------------------------------------------------

JOB = ["--size", "64", "--steps", "6", "--quiet"]


@pytest.fixture(scope="module")
def auditor(tmp_path_factory):
    handle = NodeHandle(tmp_path_factory.mktemp("auditor"), []).wait_ready()
    yield handle
    handle.stop()


@pytest.mark.integration
def test_another_node_recomputes_an_honest_image_and_signs_a_pass(shared_node, auditor, tmp_path):
    home = tmp_path / "requester"
    image = tmp_path / "fox.png"
    assert run_cli(["submit", "a fox", "--peer", shared_node.addr, *JOB, "--out", str(image)], home).returncode == 0
    result = run_cli(["audit", str(image), "--auditor", auditor.addr, "--json"], home)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["verdict"] == "pass" and shown["auditor"] == auditor.peer_id and 1 in shown["challengedSteps"]
    assert {c["check"] for c in shown["checks"]} >= {"proof", "seed-binding", "unet", "scheduler", "vae"}
    record = open_verdict(Envelope.from_json_dict(shown["signedVerdict"]))  # anyone can check it offline
    statement, envelope, _ = verified_generation(image.read_bytes())
    assert record.auditor == auditor.peer_id and record.attested_node == shared_node.peer_id
    assert record.statement_sha256 == hashlib.sha256(envelope.payload).hexdigest()
    assert record.subject == statement.subject and record.verdict == "pass"
    standing = json.loads(run_cli(["reputation", "--json"], home).stdout)[shared_node.peer_id]
    assert standing["passed"] == 1 and not standing["distrusted"]
    # Misuse is one line: the signer cannot audit itself; no auditor anywhere is a clear error.
    for args, words in ((["--auditor", shared_node.addr, "--model", "x"], "not both"),
                        ([], "--model PATH to recompute the steps here, or --auditor")):
        bad = run_cli(["audit", str(image), *args], home)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.integration
def test_a_node_running_other_weights_fails_a_remote_audit_with_evidence_that_holds(shared_node, tmp_path):
    home = tmp_path / "requester"
    cheat = NodeHandle(tmp_path / "cheat", [], launcher=[sys.executable, str(REPO / "tests" / "cheating_node.py")])
    try:
        cheat.wait_ready()
        image = tmp_path / "lie.png"
        assert run_cli(["submit", "a lighthouse", "--peer", cheat.addr, *JOB, "--out", str(image)], home).returncode == 0
        result = run_cli(["audit", str(image), "--peer", cheat.addr, "--auditor", shared_node.addr, "--json"], home)
    finally:
        cheat.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    shown = json.loads(result.stdout)
    failed = next(c for c in shown["checks"] if c["status"] == "fail")
    assert failed["check"] == "unet" and failed["step"] == 1 and shown["auditor"] == shared_node.peer_id
    evidence = json.loads((tmp_path / "lie.png.audit-evidence.json").read_text())
    assert open_verdict(Envelope.from_json_dict(evidence["auditorVerdict"])).verdict == "fail"
    assert json.loads(run_cli(["reputation", "--json"], home).stdout)[cheat.peer_id]["distrusted"]
    recheck = run_cli(["audit", "--evidence", str(tmp_path / "lie.png.audit-evidence.json"), "--model",
                       str(REPO / "node" / "models" / "tiny-sd")], tmp_path / "someone-else")
    assert recheck.returncode == 1 and "the evidence holds" in recheck.stderr, recheck.stderr
    assert f"node {shared_node.peer_id} signed this verdict" in recheck.stderr


@pytest.mark.integration
def test_submit_spot_checks_through_an_auditor_it_finds_on_the_network(tmp_path):
    boot = NodeHandle(tmp_path / "boot", ["--heartbeat", "1"]).wait_ready()
    other = NodeHandle(tmp_path / "other", ["--heartbeat", "1", "--bootstrap", boot.addr])
    try:
        other.wait_ready()
        deadline = time.monotonic() + 60  # the bootstrap holds the other node's record
        while run_cli(["peers", "--bootstrap", boot.addr, "--wait", "0", "--json"], tmp_path / "look").stdout.count(
                '"peerId"') < 2:
            assert time.monotonic() < deadline, "the records never met"
            time.sleep(0.5)
        r = run_cli(["submit", "a heron", "--bootstrap", boot.addr, *JOB, "--out", str(tmp_path / "h.png"),
                     "--audit-share", "1", "--json"], tmp_path / "requester")
    finally:
        boot.stop()
        other.stop()
    assert r.returncode == 0, r.stderr
    events = list(map(json.loads, r.stdout.splitlines()))
    made_by = next(e for e in events if e["event"] == "accepted")["node"]
    audit = next(e for e in events if e["event"] == "audit")
    assert audit["verdict"] == "pass", audit
    assert audit["auditor"] in {boot.peer_id, other.peer_id} - {made_by}  # never the signer itself
