"""A requester's reputation of nodes (requester/reputation.py): pure in process, then the whole
loop as a user meets it: a node's signed lie fails ``verify --reproduce``, submit then gives that
node no job, ``reputation forget`` lets it serve again."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from pointillist.requester.ranking import by_standing
from pointillist.requester.reputation import FAILURES_KEPT, FILE_NAME, MAX_PEERS, Reputation
from support import NodeHandle, run_cli


def test_one_failed_check_distrusts_a_node_and_passes_do_not_outweigh_it():
    r = Reputation()
    for t in range(3):
        r.passed("good", t)
        r.passed("liar", t)
    r.failed("liar", 10, "reproduce", "mismatch: mean 0.08 levels", evidence="/tmp/fox.png")
    assert r.distrusted() == {"liar"}
    s = r.standing("liar")
    assert (s.passed, s.failed, s.last_at) == (3, 1, 10)
    assert s.failures[0].evidence == "/tmp/fox.png" and s.failures[0].check == "reproduce"
    assert not r.standing("never-seen").distrusted
    assert r.forget("liar") and not r.forget("liar") and r.distrusted() == set()


def test_failures_kept_are_bounded_but_counted():
    r = Reputation()
    for t in range(FAILURES_KEPT + 3):
        r.failed("liar", t, "audit", f"step {t}")
    s = r.standing("liar")
    assert s.failed == FAILURES_KEPT + 3 and [f.reason for f in s.failures][-1] == f"step {FAILURES_KEPT + 2}"
    assert len(s.failures) == FAILURES_KEPT


def test_the_peer_bound_forgets_passes_before_failures(monkeypatch):
    monkeypatch.setattr("pointillist.requester.reputation.MAX_PEERS", 3)
    r = Reputation()
    r.failed("liar", 0, "reproduce", "x")
    for i, t in enumerate((1, 2, 3)):
        r.passed(f"good{i}", t)
    assert set(r.peers()) == {"liar", "good1", "good2"}  # the oldest pass went, the failure stayed
    assert MAX_PEERS == 10_000


def test_the_file_round_trips_and_a_corrupt_one_reads_as_empty(tmp_path):
    r = Reputation()
    r.failed("liar", 5, "reproduce", "mismatch", evidence=None)
    r.passed("good", 6)
    r.save(tmp_path)
    again = Reputation.load(tmp_path)
    assert again.to_json() == r.to_json() and again.distrusted() == {"liar"}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    (tmp_path / FILE_NAME).write_text("{not json")
    assert Reputation.load(tmp_path).peers() == {}
    (tmp_path / FILE_NAME).write_text(json.dumps({"a": {"passed": "x"}, "b": [], "c": {"passed": 1, "failed": 0,
                                                                                       "last_at": 2}}))
    assert set(Reputation.load(tmp_path).peers()) == {"c"}  # entries of the wrong shape are dropped


def test_ranking_leaves_out_distrusted_nodes_and_puts_backoff_last():
    ranked = [SimpleNamespace(peer_id=p) for p in ("fast-liar", "fast-backoff", "slow", "slower")]
    ordered = by_standing(ranked, avoid={"fast-backoff"}, distrusted={"fast-liar"})
    assert [c.peer_id for c in ordered] == ["slow", "slower", "fast-backoff"]
    assert by_standing(ranked, distrusted={p.peer_id for p in ranked}) == []


@pytest.mark.integration
def test_a_node_caught_by_reproduce_gets_no_job_until_forgotten(tmp_path):
    pytest.importorskip("torch")
    from test_reproduce import FOX, NODE, TINY, attested_png, tiny_digest

    from pointillist.protocol.keyfile import KEY_FILE_NAME, encode_private_key

    node_home = tmp_path / "node"
    node_home.mkdir()
    (node_home / KEY_FILE_NAME).write_bytes(encode_private_key(NODE))  # the node runs as NODE
    node = NodeHandle(node_home, []).wait_ready()
    requester = tmp_path / "requester"
    try:
        assert node.peer_id == NODE.peer_id
        from PIL import Image

        lie = tmp_path / "lie.png"  # NODE's signature on a flat grey square it never generated
        lie.write_bytes(attested_png(Image.new("RGB", (64, 64), (128, 128, 128)), FOX, digest=tiny_digest()))
        checked = run_cli(["verify", str(lie), "--reproduce", "--model", str(TINY)], requester)
        assert checked.returncode == 1 and "gets no more jobs from you" in checked.stderr, checked.stderr
        shown = json.loads(run_cli(["reputation", "--json"], requester).stdout)
        assert shown[NODE.peer_id]["distrusted"] and shown[NODE.peer_id]["failures"][0]["evidence"] == str(lie)

        args = ["submit", "a fox", "--bootstrap", node.addr, "--size", "64", "--steps", "2",
                "--out", str(tmp_path / "fox.png")]
        refused = run_cli(args, requester)
        assert refused.returncode != 0 and "failed a check of its work" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "fox.png").exists()

        forgot = run_cli(["reputation", "forget", NODE.peer_id], requester)
        assert forgot.returncode == 0, forgot.stderr
        served = run_cli(args, requester)
        assert served.returncode == 0 and "verified" in served.stderr, served.stderr
    finally:
        node.stop()


def test_outcomes_are_recorded_together_and_a_save_failure_is_one_warning(tmp_path):
    from pointillist.requester.reputation import Outcome, Reputation, record_outcomes

    assert record_outcomes(tmp_path, [], 0.0) is None and not (tmp_path / "reputation.json").exists()
    warning = record_outcomes(tmp_path, [Outcome("12D3KooWHonest", True),
                                         Outcome("12D3KooWCheat", False, "audit", "unet step 1", "/e.json")], 100.0)
    assert warning is None
    kept = Reputation.load(tmp_path)
    assert kept.distrusted() == {"12D3KooWCheat"} and kept.standing("12D3KooWHonest").passed == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    warning = record_outcomes(blocked / "below", [Outcome("12D3KooWHonest", True)], 200.0)
    assert warning is not None and warning.startswith("warning: could not record") and "\n" not in warning
