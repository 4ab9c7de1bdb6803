"""``pointillist audit`` as a user runs it, against real node processes: an honest node's image
passes; a node that runs other weights than it attests (tests/cheating_node.py) makes images that
verify, and the audit fails them, writes evidence that a re-check confirms, and distrusts the node;
evidence that accuses an honest node does not hold up."""

from __future__ import annotations

import base64
import json
import sys

import pytest
import trio

from support import REPO, NodeHandle, run_cli

pytestmark = pytest.mark.integration
TINY = REPO / "node" / "models" / "tiny-sd"
JOB = ["--size", "64", "--steps", "6", "--quiet"]


def submit(node, out, home) -> None:
    done = run_cli(["submit", "a lighthouse", "--peer", node.addr, *JOB, "--out", str(out)], home)
    assert done.returncode == 0, done.stderr


def audit(args: list[str], home):
    return run_cli(["audit", *args, "--model", str(TINY), "--json"], home)


def test_submit_spot_checks_its_share_of_an_honest_nodes_images(shared_node, tmp_path):
    r = run_cli(["submit", "a fox", "a hen", "--peer", shared_node.addr, *JOB, "--out", str(tmp_path / "x.png"),
                 "--audit-share", "1", "--audit-model", str(TINY), "--json"], tmp_path / "requester")
    assert r.returncode == 0, r.stderr
    audits = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "audit"]
    assert [a["verdict"] for a in audits] == ["pass", "pass"], audits
    # The share and model can live in config.toml; a flag still wins over it.
    (tmp_path / "requester" / "config.toml").write_text(f'[audit]\nshare = 1\nmodel = "{TINY}"\n')
    configured = run_cli(["submit", "a fox", "--peer", shared_node.addr, *JOB, "--out", str(tmp_path / "z.png"),
                          "--json"], tmp_path / "requester")
    assert configured.returncode == 0 and '"verdict": "pass"' in configured.stdout, configured.stdout
    none = run_cli(["submit", "a fox", "--peer", shared_node.addr, *JOB, "--out", str(tmp_path / "y.png"),
                    "--audit-share", "0", "--json"], tmp_path / "requester")
    assert none.returncode == 0 and '"audit"' not in none.stdout, none.stdout + none.stderr


def test_an_honest_nodes_image_passes_and_the_node_is_remembered_as_passed(shared_node, tmp_path):
    home = tmp_path / "requester"
    submit(shared_node, tmp_path / "fox.png", home)
    result = audit([str(tmp_path / "fox.png")], home)  # the node's address comes from the journal
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "pass" and 1 in verdict["challengedSteps"] and len(verdict["challengedSteps"]) == 3
    assert {c["check"] for c in verdict["checks"]} >= {"seed-binding", "unet", "vae"}, verdict
    standing = json.loads(run_cli(["reputation", "--json"], home).stdout)[shared_node.peer_id]
    assert standing["passed"] == 1 and not standing["distrusted"]


def test_a_node_running_other_weights_verifies_but_fails_the_audit(tmp_path):
    home = tmp_path / "requester"
    node = NodeHandle(tmp_path / "cheat", [], launcher=[sys.executable, str(REPO / "tests" / "cheating_node.py")])
    try:
        node.wait_ready()
        image = tmp_path / "lie.png"
        submit(node, image, home)
        # Every check of the attestation passes: the node signed honest parameters.
        assert run_cli(["verify", str(image)], home).returncode == 0
        result = audit([str(image), "--peer", node.addr], home)
        # A requester that spot-checks every image catches it at once (a named --peer is obeyed).
        spot = run_cli(["submit", "a harbour", "--peer", node.addr, *JOB, "--out", str(tmp_path / "spot.png"),
                        "--audit-share", "1", "--audit-model", str(TINY)], home)
    finally:
        node.stop()
    assert spot.returncode == 1 and f"audit of {tmp_path / 'spot.png'}: fail: unet step 1" in spot.stderr, spot.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    failed = next(c for c in verdict["checks"] if c["status"] == "fail")
    assert failed["check"] == "unet" and failed["step"] == 1 and failed["value"] > failed["threshold"], failed
    evidence = tmp_path / "lie.png.audit-evidence.json"
    assert verdict["evidence"] == str(evidence) and evidence.exists()

    standing = json.loads(run_cli(["reputation", "--json"], home).stdout)[node.peer_id]
    assert standing["distrusted"] and standing["failures"][0]["check"] == "audit"

    recheck = audit(["--evidence", str(evidence)], tmp_path / "someone-else")
    assert recheck.returncode == 1 and "the evidence holds" in recheck.stderr, recheck.stdout + recheck.stderr

    doc = json.loads(evidence.read_text())  # a leaf changed after the fact no longer proves anything
    leaf = bytearray(base64.b64decode(doc["leaves"]["1"]["leaf"]))
    leaf[-1] ^= 1
    doc["leaves"]["1"]["leaf"] = base64.b64encode(bytes(leaf)).decode()
    evidence.write_text(json.dumps(doc))
    forged = audit(["--evidence", str(evidence)], tmp_path / "someone-else")
    assert forged.returncode == 0 and "leaf 1 is not the node's" in forged.stderr, forged.stderr


def test_evidence_with_a_doctored_recomputation_against_an_honest_node_does_not_hold(shared_node, tmp_path):
    from test_audit_protocol import open_with_client

    from pointillist.attestation.png import extract_provenance
    from pointillist.attestation.statement import parse_statement
    from pointillist.cli.audit_cmd import _write_evidence
    from pointillist.node.audit_check import FAIL, AuditVerdict, Check, leaves_needed

    home = tmp_path / "requester"
    image = tmp_path / "honest.png"
    submit(shared_node, image, home)
    png = image.read_bytes()
    record = parse_statement(extract_provenance(png).attestation.payload).record
    steps = [1, 4]
    opened = trio.run(open_with_client, shared_node.addr, record.job_id, record.trajectory,
                      leaves_needed(record, steps))
    accusation = AuditVerdict(FAIL, "fail: unet step 4: relative error 0.3", (
        Check("unet", FAIL, "relative error 0.3", 4, "relative error", 0.3, 5e-5),), tuple(steps))
    evidence = tmp_path / "accusation.json"
    _write_evidence(evidence, png, record, steps, opened.leaves, accusation, None)

    recheck = audit(["--evidence", str(evidence)], tmp_path / "judge")
    assert recheck.returncode == 0, recheck.stdout + recheck.stderr
    assert "the evidence does not hold" in recheck.stderr and "passes" in recheck.stderr
    assert json.loads(recheck.stdout)["verdict"] == "pass"


def test_misuse_is_one_line(tmp_path):
    for args, message in ((["--model", str(TINY)], "give an IMAGE to audit, or --evidence FILE"),
                          ([str(tmp_path / "none.png"), "--model", str(TINY)], "cannot read"),
                          ([str(tmp_path / "x.png"), "--model", str(TINY), "--steps", "99"], "--steps takes 0 to 62")):
        r = run_cli(["audit", *args], tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    for extra, message in ((["--audit-share", "0.5"], "--audit-share needs --audit-model"),
                           (["--audit-share", "2", "--audit-model", str(TINY)], "not a share between 0 and 1")):
        nowhere = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        r = run_cli(["submit", "a fox", "--peer", nowhere, *extra], tmp_path)  # refused before any dial
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_signing_node_that_no_longer_opens_its_leaves_fails_within_the_window(tmp_path):
    """The node that signed the image comes back without its commitments (a new data directory,
    the same key): inside the challenge window its refusal is a failed audit."""
    from pointillist.protocol.identity import Identity
    from pointillist.protocol.keyfile import KEY_FILE_NAME, encode_private_key

    key = encode_private_key(Identity.generate())
    homes = [tmp_path / "before", tmp_path / "after"]
    for home in homes:
        home.mkdir()
        (home / KEY_FILE_NAME).write_bytes(key)
    requester = tmp_path / "requester"
    node = NodeHandle(homes[0], []).wait_ready()
    try:
        submit(node, tmp_path / "fox.png", requester)
    finally:
        node.stop()
    node = NodeHandle(homes[1], []).wait_ready()
    try:
        result = audit([str(tmp_path / "fox.png"), "--peer", node.addr], requester)
        elsewhere = run_cli(["audit", str(tmp_path / "fox.png"), "--model", str(TINY), "--peer",
                             node.addr.replace(node.peer_id, "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")],
                            requester)
    finally:
        node.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["checks"][0]["check"] == "answer" and "(not-found)" in verdict["detail"], verdict
    assert elsewhere.returncode == 2 and "is not the node that signed the image" in elsewhere.stderr
