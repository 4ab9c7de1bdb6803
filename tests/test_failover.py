"""The requester's failover state machine, in process, against scripted fake nodes
(tests/fake_nodes.py) behind the ``NodeTransport`` interface. Waits run on trio's virtual clock
(``autojump_clock``), so a test of a 300 s patience takes milliseconds. The real-stack proof of
the same behaviour is tests/test_kill_failover.py and tests/test_load.py."""

from __future__ import annotations

import time

import pytest
import trio

from fake_nodes import MODEL, FakeNode, FakeTransport
from pointillist.protocol.errors import ErrorCode, Retry
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request
from pointillist.requester.backoff import PeerBackoff
from pointillist.requester.failover import Failover, Hooks, NoNodeSucceeded

REQUESTER = Identity.generate()


def make_request(node: str):
    return new_job_request(node=node, model=MODEL, prompt="a fox", seed=7, steps=4, guidance=7.5,
                           width=64, height=64, now=int(time.time()))


def failover(*nodes: FakeNode, backoff: PeerBackoff | None = None, serving=None, **kw) -> Failover:
    order = [n.target for n in nodes]
    return Failover(FakeTransport(*nodes), REQUESTER, rank=lambda exclude: [t for t in order if t.peer_id not in exclude],
                    serving=serving, backoff=backoff if backoff is not None else PeerBackoff(), **kw)


def tried(outcome_or_error) -> list[tuple[str, str]]:
    return [(a.peer_id, a.outcome) for a in outcome_or_error.attempts]


async def test_a_verified_image_from_the_first_node_ends_the_job():
    a, b = FakeNode(["ok"]), FakeNode(["ok"])
    outcome = await failover(a, b).run(make_request)
    assert outcome.report.ok and outcome.request.node == a.peer_id
    assert tried(outcome) == [(a.peer_id, "verified")] and not b.jobs


async def test_busy_node_is_passed_over_without_penalty():
    a, b = FakeNode(["busy"]), FakeNode(["ok"])
    backoff = PeerBackoff()
    outcome = await failover(a, b, backoff=backoff).run(make_request)
    assert outcome.request.node == b.peer_id
    assert tried(outcome) == [(a.peer_id, "busy"), (b.peer_id, "verified")]
    assert a.peer_id not in backoff.avoided(time.time())


async def test_when_every_node_is_busy_the_requester_waits_its_turn(autojump_clock):
    a, b = FakeNode(["busy", "busy", "ok"]), FakeNode(["busy"])
    start = trio.current_time()
    outcome = await failover(a, b).run(make_request)
    assert outcome.request.node == a.peer_id and len(a.jobs) == 3
    assert trio.current_time() - start >= 1 + 2  # two pauses between three rounds


async def test_busy_forever_gives_up_at_the_patience_deadline_listing_attempts(autojump_clock):
    a = FakeNode(["busy"])
    start = trio.current_time()
    with pytest.raises(NoNodeSucceeded) as e:
        await failover(a, patience_s=60).run(make_request)
    assert 50 <= trio.current_time() - start <= 60
    assert "no node had a free slot within 60 s" in str(e.value) and "busy" in str(e.value)
    assert len(e.value.attempts) > 5 and str(e.value).count("scripted busy") == 1  # one line, counted


async def test_node_that_dies_mid_job_is_avoided_and_the_job_runs_elsewhere():
    a, b = FakeNode(["dies"]), FakeNode(["ok"])
    accepted = []
    backoff = PeerBackoff()
    outcome = await failover(a, b, backoff=backoff).run(
        make_request, Hooks(on_accepted=lambda request, node: accepted.append((request.job_id, node.peer_id))))
    assert outcome.request.node == b.peer_id
    assert tried(outcome) == [(a.peer_id, "failed"), (b.peer_id, "verified")]
    assert "fetching the result failed too" in outcome.attempts[0].detail
    assert a.peer_id in backoff.avoided(time.time())
    assert [peer for _, peer in accepted] == [a.peer_id, b.peer_id]  # both job ids were shown as accepted


async def test_broken_connection_after_acceptance_fetches_before_failing_over(autojump_clock):
    a, b = FakeNode(["breaks"], not_found_first=2), FakeNode(["ok"])
    outcome = await failover(a, b).run(make_request)
    assert outcome.request.node == a.peer_id and not b.jobs
    assert tried(outcome) == [(a.peer_id, "fetched")]
    assert a.fetches == 3  # twice "not-found" (still generating), then the result
    assert outcome.report.ok and outcome.report.job == outcome.request


async def test_node_that_times_out_is_avoided(autojump_clock):
    a, b = FakeNode(["hangs"]), FakeNode(["ok"])
    backoff = PeerBackoff()
    outcome = await failover(a, b, backoff=backoff, attempt_timeout_s=30).run(make_request)
    assert outcome.request.node == b.peer_id
    assert tried(outcome)[0] == (a.peer_id, "failed")
    assert a.peer_id in backoff.avoided(time.time())


async def test_image_that_does_not_verify_is_refused_and_never_returned():
    a, b = FakeNode(["bad-image"]), FakeNode(["ok"])
    outcome = await failover(a, b).run(make_request)
    assert outcome.request.node == b.peer_id
    assert "pixels" in outcome.attempts[0].detail


async def test_another_jobs_image_is_refused():
    a, b = FakeNode(["ok", "other-job"]), FakeNode(["ok"])
    first = await failover(a).run(make_request)  # a's first job, which it will replay
    outcome = await failover(a, b).run(make_request)
    assert outcome.request.node == b.peer_id and outcome.png != first.png
    assert "different job" in outcome.attempts[0].detail


async def test_gives_up_after_max_failures_and_lists_each_attempt():
    nodes = [FakeNode(["dies"]) for _ in range(4)]
    with pytest.raises(NoNodeSucceeded) as e:
        await failover(*nodes, max_failures=3).run(make_request)
    assert [a.peer_id for a in e.value.attempts] == [n.peer_id for n in nodes[:3]]
    assert not nodes[3].jobs
    assert "3 attempt(s)" in str(e.value)


async def test_no_node_serving_the_model_fails_at_once(autojump_clock):
    start = trio.current_time()
    with pytest.raises(NoNodeSucceeded, match="no node serves the model"):
        await failover(serving=lambda exclude: 0).run(make_request)
    assert trio.current_time() == start


async def test_full_nodes_are_waited_for_when_they_serve_the_model(autojump_clock):
    node = FakeNode(["ok"])
    rounds = []

    def rank(exclude):
        rounds.append(trio.current_time())
        return [node.target] if len(rounds) >= 3 else []  # full for two rounds, then a slot opens

    outcome = await Failover(FakeTransport(node), REQUESTER, rank=rank, serving=lambda exclude: 1).run(make_request)
    assert outcome.request.node == node.peer_id and len(rounds) == 3


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_every_error_code_is_handled_by_its_documented_retry_rule(code, autojump_clock):
    """The table in docs/protocol.md ("Which refusals the requester retries"), code by code:
    LATER → the node is asked again in a later round and not penalised; ELSEWHERE → not asked
    again, not penalised; ELSEWHERE_AND_AVOID → not asked again and put in backoff."""
    if code is ErrorCode.NOT_FOUND:
        script = ["not-found", "ok"]
    else:
        script = [str(code), "ok"]
    a, b = FakeNode(script), FakeNode(["busy", "ok"])
    backoff = PeerBackoff()
    outcome = await failover(a, b, backoff=backoff).run(make_request)
    avoided = a.peer_id in backoff.avoided(time.time())
    if code.retry is Retry.LATER:
        # round 1: a busy-ish, b busy; round 2: a answers ok
        assert outcome.request.node == a.peer_id and len(a.jobs) == 2 and not avoided
    else:
        # a is dropped for this job; b (busy in round 1) runs it in round 2
        assert outcome.request.node == b.peer_id and len(a.jobs) == 1
        assert avoided == (code.retry is Retry.ELSEWHERE_AND_AVOID)
