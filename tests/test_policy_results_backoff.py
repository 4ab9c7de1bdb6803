"""Operator policy, the result store and requester backoff: pure pieces, no network."""

from __future__ import annotations

import pytest

from pointillist.requester.backoff import PeerBackoff
from pointillist.node.policy import RateLimiter, load_policy
from pointillist.node.policy import Policy, ResultPolicy
from pointillist.node.replay import ReplayCache
from pointillist.node.state_store import open_node_state
from pointillist.protocol.errors import JobRejected, UsageError

JOB = "a" * 32


def test_policy_file_sets_limits_and_requesters(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[limits]\nmax_steps = 10\nqueue_size = 1\n[requesters]\ndeny = ["12D3KooWbad"]\n'
                    'jobs_per_minute = 6\nburst = 2\n[results]\nkeep_hours = 1\n')
    policy = load_policy(path)
    assert policy.limits.max_steps == 10 and policy.limits.queue_size == 1
    assert policy.limits.max_side == 2048  # untouched defaults stay
    with pytest.raises(JobRejected) as e:
        policy.requesters.check_identity("12D3KooWbad")
    assert e.value.code == "forbidden"
    policy.requesters.check_identity("12D3KooWgood")
    assert policy.results.keep_hours == 1


def test_allow_list_admits_only_its_members(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[requesters]\nallow = ["12D3KooWfriend"]\n')
    policy = load_policy(path)
    policy.requesters.check_identity("12D3KooWfriend")
    with pytest.raises(JobRejected):
        policy.requesters.check_identity("12D3KooWstranger")


@pytest.mark.parametrize("text,message", [
    ("[limits]\nmax_stepz = 3\n", "unknown setting"),
    ("[limitz]\n", "unknown section"),
    ("[limits]\nmax_steps = -1\n", "negative"),
    ("[requesters]\ndeny = \"x\"\n", "list of peer IDs"),
    ("[limits\n", "policy"),
])
def test_bad_policy_is_a_usage_error(tmp_path, text, message):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_policy(path)


def test_rate_limiter_allows_a_burst_then_refills():
    limiter = RateLimiter(per_minute=60, burst=2)
    limiter.take("a", 0.0)
    limiter.take("a", 0.0)
    with pytest.raises(JobRejected) as e:
        limiter.take("a", 0.5)
    assert e.value.code == "rate-limited"
    limiter.take("b", 0.5)  # others are not affected
    limiter.take("a", 1.6)  # one token back after a second


def test_rate_limiter_is_bounded():
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=100)
    for i in range(1000):
        limiter.take(f"peer{i}", 0.0)
    assert len(limiter._buckets) == 100


def _store(path, keep_s=100, max_bytes=10**6):
    policy = Policy(results=ResultPolicy(keep_hours=keep_s / 3600, max_mb=max_bytes / 2**20))
    return open_node_state(path, policy)


def test_result_store_round_trip_expiry_and_size(tmp_path):
    state = _store(tmp_path / "r", keep_s=100, max_bytes=250)
    store = state.results
    store.put(JOB, "req", b"x" * 100, now=0)
    assert store.get(JOB, now=50).png == b"x" * 100
    assert store.get(JOB, now=101) is None
    store.put("b" * 32, "req", b"y" * 100, now=10)
    store.put("c" * 32, "req", b"z" * 100, now=20)  # 300 bytes > 250: the oldest goes, at the next pass
    assert state.stored() == (3, 300)
    state.prune_pass(now=20)
    assert store.get(JOB, now=20) is None and store.get("c" * 32, now=20) is not None
    assert state.stored() == (2, 200)
    assert store.get("../../etc/passwd") is None


def test_result_store_survives_a_new_instance(tmp_path):
    _store(tmp_path).results.put(JOB, "req", b"png", now=0)  # not closed: as after a crash
    assert _store(tmp_path).results.get(JOB, now=1).requester == "req"


def test_replay_cache_persists(tmp_path):
    state = _store(tmp_path)
    state.replay.check_and_remember(JOB, "b" * 32, expires_at=100, now=0)
    state.save_replay([(key, 100) for key in ReplayCache.keys(JOB, "b" * 32)])
    state.close()
    again = open_node_state(tmp_path, Policy(), clock=lambda: 10).replay
    with pytest.raises(JobRejected):
        again.check_and_remember(JOB, "c" * 32, expires_at=100, now=10)
    assert len(open_node_state(tmp_path, Policy(), clock=lambda: 200).replay) == 0  # expired entries dropped


def test_backoff_doubles_and_forgets_on_success(tmp_path):
    b = PeerBackoff()
    assert b.failed("p", 0) == 15
    assert b.failed("p", 0) == 30
    assert b.avoided(29) == {"p"} and b.avoided(31) == set()
    b.succeeded("p")
    assert b.avoided(0) == set()
    b.failed("q", 0)
    b.save(tmp_path / "b.json")
    assert PeerBackoff.load(tmp_path / "b.json").avoided(1) == {"q"}
    (tmp_path / "junk.json").write_text("[1,2")
    assert PeerBackoff.load(tmp_path / "junk.json").avoided(0) == set()


def test_policy_values_are_type_checked(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[limits]\nqueue_size = "8"\n')
    with pytest.raises(UsageError, match="queue_size must be int"):
        load_policy(path)
    path.write_text("[limits]\nmax_guidance = 12\n")  # an int where a float is expected is fine
    assert load_policy(path).limits.max_guidance == 12


def test_replay_check_unseen_remembers_nothing():
    cache = ReplayCache()
    cache.check_unseen(JOB, "b" * 32, now=0)
    cache.check_unseen(JOB, "b" * 32, now=0)
    cache.check_and_remember(JOB, "b" * 32, expires_at=100, now=0)
    with pytest.raises(JobRejected):
        cache.check_unseen(JOB, "c" * 32, now=1)
