"""Nothing lost, nobody let in who should not be: restarts, fetch by job id, operator policy."""

from __future__ import annotations

import time

import pytest
import trio

from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request, sign_job
from pointillist.protocol.keyfile import encode_private_key
from support import NodeHandle, exchange, job_frame, run_cli

pytestmark = pytest.mark.integration


def job_for(node, **over):
    args = dict(node=node.peer_id, model="tiny-sd", prompt="restart me", seed=3, steps=2,
                guidance=7.5, width=64, height=64, now=int(time.time()))
    args.update(over)
    return new_job_request(**args)


def key_home(tmp_path, name: str, identity: Identity):
    home = tmp_path / name
    home.mkdir()
    (home / "identity.key").write_bytes(encode_private_key(identity))
    return home


def test_results_identity_and_replay_cache_survive_a_restart(tmp_path):
    requester, stranger = Identity.generate(), Identity.generate()
    node = NodeHandle(tmp_path / "node", []).wait_ready()
    request = job_for(node)
    envelope = sign_job(requester, request)
    first = trio.run(exchange, node, job_frame(envelope), requester)
    assert first[-1]["t"] == "result"
    before = node.peer_id
    assert node.stop() == 0

    node = NodeHandle(tmp_path / "node", []).wait_ready()  # same home: same key and state
    try:
        assert node.peer_id == before
        replay = trio.run(exchange, node, job_frame(envelope), requester)
        assert replay[-1] == {"t": "error", "code": "replayed", "message": replay[-1]["message"]}

        out = tmp_path / "fetched.png"
        fetched = run_cli(["fetch", request.job_id, "--peer", node.addr, "--out", str(out)],
                          key_home(tmp_path, "req", requester))
        assert fetched.returncode == 0, fetched.stderr
        assert out.read_bytes() == first[-1]["png"]

        other = run_cli(["fetch", request.job_id, "--peer", node.addr, "--out", str(tmp_path / "x.png")],
                        key_home(tmp_path, "stranger", stranger))
        assert other.returncode == 1 and "not-found" in other.stderr
        assert not (tmp_path / "x.png").exists()
        assert node.alive()
    finally:
        node.stop()


def test_operator_policy_limits_rates_and_denies(tmp_path):
    banned, busy_body = Identity.generate(), Identity.generate()
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[limits]\nmax_steps = 4\n[requesters]\ndeny = ["{banned.peer_id}"]\n'
                      'jobs_per_minute = 1\nburst = 2\n')
    node = NodeHandle(tmp_path / "node", ["--policy", str(policy)]).wait_ready()
    try:
        def code(identity, **over):
            replies = trio.run(exchange, node, job_frame(sign_job(identity, job_for(node, **over))), identity)
            return replies[-1]["code"] if replies[-1]["t"] == "error" else replies[-1]["t"]

        assert code(banned) == "forbidden"
        assert code(busy_body, steps=5) == "invalid-params"  # policy limit, not the default 150
        assert code(busy_body) == "result"
        assert code(busy_body, seed=4) == "result"
        assert code(busy_body, seed=5) == "rate-limited"
        assert code(Identity.generate()) == "result"  # others are unaffected
        assert node.alive()
    finally:
        node.stop()


def test_bad_policy_file_stops_the_node_with_one_line(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[limits]\nmax_stepz = 3\n")
    result = run_cli(["node", "start", "--policy", str(policy)], tmp_path, timeout=120)
    assert result.returncode == 2
    assert "unknown setting" in result.stderr and "Traceback" not in result.stderr
