"""The node's state database (node/state_store.py): results and replay keys in SQLite, pruned in
bounded passes in the background, crash-safe replay keys, migration from the old files, and a
corrupt database replaced instead of stopping the node. Clocks are injected; no fixed sleeps."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

import pytest
import trio
import trio.testing

from pointillist.node.policy import Policy, ResultPolicy
from pointillist.node.replay import ReplayCache
from pointillist.node.service import JobService, ServedModels
from pointillist.node.state_store import DB_NAME, open_node_state
from pointillist.protocol import framing
from pointillist.protocol.fetch import sign_fetch
from pointillist.protocol.jobs import sign_job
from pointillist.protocol.messages import FetchMessage, JobMessage, WireEnvelope, to_wire

from test_admission import NODE, NOW, REQUESTER, FakeModel, MemoryStream, job


def policy(keep_s: float = 1000, max_bytes: int = 10**9) -> Policy:
    return Policy(results=ResultPolicy(keep_hours=keep_s / 3600, max_mb=max_bytes / 2**20))


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def jid(i: int) -> str:
    return f"{i:032x}"


def fill(store, n: int, size: int, start: float = 0.0) -> None:
    for i in range(n):
        store.put(jid(i), "req", bytes([i % 256]) * size, now=start + i)


def rows(state, table: str) -> int:
    with state.db.lock:
        return state.db.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_expired_results_and_replay_keys_go_on_a_pass_with_the_clock_injected(tmp_path):
    clock = Clock()
    state = open_node_state(tmp_path, policy(keep_s=100), clock=clock)
    fill(state.results, 3, 10)  # created at 0, 1, 2
    state.save_replay([("id:a", 50), ("nonce:a", 50), ("id:b", 500)])
    clock.now = 101.5  # results 0 and 1 expired (older than 100 s), 2 not; replay key a expired
    assert state.results.get(jid(0)) is None and state.results.get(jid(2)) is not None
    state.prune_pass()
    assert state.stored() == (1, 10) and rows(state, "results") == 1
    with state.db.lock:
        assert state.db.conn.execute("SELECT key FROM replay").fetchall() == [("id:b",)]


def test_the_oldest_go_first_when_over_the_size_bound(tmp_path):
    state = open_node_state(tmp_path, policy(max_bytes=250))
    fill(state.results, 5, 100, start=1000)  # 500 bytes; the bound keeps the two newest
    assert state.stored() == (5, 500)  # put never prunes: a job does not pay for it
    while state.prune_pass(now=1005):
        pass
    assert state.stored() == (2, 200)
    assert [state.results.get(jid(i), now=1005) is not None for i in range(5)] == [False] * 3 + [True] * 2


def test_pruning_step_commitments_inside_the_challenge_window_is_counted_and_warned(tmp_path, caplog):
    """A size bound too small for the traffic would make an honest node fail audits (it could no
    longer open its leaves within the hour): the node says so and how to fix it."""
    state = open_node_state(tmp_path, policy(max_bytes=250), clock=lambda: NOW)
    for i in range(3):  # with commitments: 20 + 80 bytes each, made a minute apart, 1 h + before now
        state.results.put(jid(i), "req", b"p" * 20, now=NOW - 4000 + 60 * i, trajectory=b"t" * 80)
    while state.prune_pass(now=NOW):
        pass
    assert state.results.pruned_in_window == 0 and "challenge window" not in caplog.text  # old: fine
    for i in range(3, 6):  # fresh ones, within the window
        state.results.put(jid(i), "req", b"p" * 20, now=NOW - 60 + i, trajectory=b"t" * 80)
    with caplog.at_level(logging.WARNING, logger="pointillist.node"):
        while state.prune_pass(now=NOW):
            pass
    assert state.results.pruned_in_window >= 1
    assert "audits of them within the challenge window will fail this node; raise [results] max_mb" in caplog.text


def test_each_pass_is_bounded(tmp_path):
    clock = Clock()
    state = open_node_state(tmp_path, policy(keep_s=10), clock=clock)
    fill(state.results, 120, 10)
    state.save_replay([(f"id:{i}", 5) for i in range(130)])
    clock.now = 1000  # everything expired
    passes = []
    while True:
        more = state.prune_pass(batch=50)
        passes.append((rows(state, "results"), rows(state, "replay")))
        if not more:
            break
    assert passes[:3] == [(70, 80), (20, 30), (0, 0)]
    assert state.stored() == (0, 0)


def test_each_pass_is_bounded_in_bytes_too_and_takes_at_least_one_result(tmp_path):
    state = open_node_state(tmp_path, policy(keep_s=10))
    fill(state.results, 10, 100)
    assert state.results.prune_pass(now=1000, max_bytes=250) and state.stored() == (8, 800)
    assert state.results.prune_pass(now=1000, max_bytes=50) and state.stored() == (7, 700)
    while state.results.prune_pass(now=1000, max_bytes=250):
        pass
    assert state.stored() == (0, 0)


def test_stored_is_a_running_total_that_survives_a_restart(tmp_path):
    state = open_node_state(tmp_path, policy())
    fill(state.results, 4, 25)
    state.results.put(jid(1), "req", b"y" * 5, now=9)  # replacing a result adjusts, not adds
    assert state.stored() == (4, 80)
    state.close()
    assert open_node_state(tmp_path, policy()).stored() == (4, 80)


def test_disk_space_of_pruned_results_is_given_back(tmp_path):
    state = open_node_state(tmp_path, policy(keep_s=10))
    fill(state.results, 50, 40_000)
    pages = lambda: state.db.conn.execute("PRAGMA page_count").fetchone()[0]  # noqa: E731
    full = pages()
    while state.prune_pass(now=10_000):
        pass
    assert pages() < full / 10
    assert state.db.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0


def test_replay_keys_survive_a_crash(tmp_path):
    state = open_node_state(tmp_path, policy())
    state.replay.check_and_remember("a" * 32, "b" * 32, expires_at=NOW + 100, now=NOW)
    state.save_replay([(k, NOW + 100) for k in ReplayCache.keys("a" * 32, "b" * 32)])
    # no close(): a second open of the same files is what a restart after a crash sees
    again = open_node_state(tmp_path, policy(), clock=lambda: NOW + 1)
    with pytest.raises(Exception, match="already accepted"):
        again.replay.check_unseen("c" * 32, "b" * 32, now=NOW + 1)


async def _read_until(stream, kinds):
    replies = []
    while not replies or replies[-1]["t"] not in kinds:
        replies.append(await framing.read_frame(stream, framing.MAX_REPLY_FRAME))
    return replies


async def test_a_job_is_on_disk_when_accepted_is_sent_and_its_result_can_be_fetched(tmp_path):
    release = threading.Event()

    class HeldModel(FakeModel):
        def generate(self, settings, on_step=None):
            release.wait(30)
            return super().generate(settings, on_step)

    state = open_node_state(tmp_path, policy(), clock=lambda: NOW)
    service = JobService(NODE, ServedModels([HeldModel()]), replay=state.replay, results=state.results,
                         save_replay=state.save_replay, clock=lambda: NOW, make_params=lambda j: j.request.settings)
    request = job(now=NOW)
    frame = framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(sign_job(REQUESTER, request)))))
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        await ours.send_all(frame)
        stream = MemoryStream(ours)
        assert (await _read_until(stream, ("accepted", "error")))[-1]["t"] == "accepted"
        # The node "crashes" now: a fresh open of its state refuses the same job.
        crashed = open_node_state(tmp_path, policy(), clock=lambda: NOW)
        with pytest.raises(Exception, match="already accepted"):
            crashed.replay.check_unseen(request.job_id, request.nonce, now=NOW)
        release.set()
        result = (await _read_until(stream, ("result", "error")))[-1]
    assert result["t"] == "result" and state.stored()[0] == 1

    fetch = framing.encode_frame(to_wire(FetchMessage(t="fetch", envelope=WireEnvelope.from_envelope(
        sign_fetch(REQUESTER, request.job_id, NODE.peer_id, NOW)))))
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        await ours.send_all(fetch)
        fetched = (await _read_until(MemoryStream(ours), ("result", "error")))[-1]
    assert fetched["t"] == "result" and fetched["png"] == result["png"]


async def test_maintenance_prunes_promptly_after_a_put_crosses_the_bound(tmp_path):
    state = open_node_state(tmp_path, policy(max_bytes=1000), clock=Clock(100))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.maintain, 3600)  # the period alone would not prune within the test
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(fill, state.results, 30, 100)
        with trio.fail_after(10):
            while state.stored()[1] > 1000:
                await trio.sleep(0.01)  # polling for the condition, bounded by the deadline above
        nursery.cancel_scope.cancel()
    assert state.stored() == (10, 1000)


async def test_maintenance_outlives_a_database_error(tmp_path, caplog):
    state = open_node_state(tmp_path, policy())
    calls = []

    def failing_pass():
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return False

    state.prune_pass = failing_pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.maintain, 3600)
        with trio.fail_after(10):
            while not calls:
                await trio.sleep(0.01)
            state.wake()
            while len(calls) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert "pruning failed" in caplog.text


def test_the_old_files_are_imported_once_and_removed(tmp_path):
    old = tmp_path / "results"
    old.mkdir()
    for i, created in ((1, 100.0), (2, 200.0)):
        (old / f"{jid(i)}.png").write_bytes(b"png%d" % i)
        (old / f"{jid(i)}.json").write_text(json.dumps({"requester": f"req{i}", "created": created}))
    (old / f".{jid(3)}.png.tmp").write_bytes(b"half")
    (tmp_path / "replay.json").write_text(json.dumps([["id:live", 5000], ["nonce:live", 5000], ["id:dead", 10]]))

    state = open_node_state(tmp_path, policy(keep_s=10_000), clock=lambda: 300)
    assert state.results.get(jid(1)).png == b"png1" and state.results.get(jid(2)).requester == "req2"
    assert state.stored() == (2, 8)
    with pytest.raises(Exception, match="already accepted"):
        state.replay.check_unseen("live", "x", now=300)
    assert len(state.replay) == 2  # the expired key is not imported
    assert not old.exists() and not (tmp_path / "replay.json").exists()
    state.close()
    assert open_node_state(tmp_path, policy(keep_s=10_000), clock=lambda: 300).stored() == (2, 8)


@pytest.mark.parametrize("garbage", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_a_corrupt_database_is_moved_aside_and_replaced(tmp_path, caplog, garbage):
    (tmp_path / DB_NAME).write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="pointillist.node"):
        state = open_node_state(tmp_path, policy())
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    assert [p.read_bytes() for p in tmp_path.glob(f"{DB_NAME}.corrupt-*")] == [garbage]
    state.results.put(jid(1), "req", b"png")
    assert state.results.get(jid(1)).png == b"png"


def test_in_memory_state_when_there_is_no_state_dir():
    state = open_node_state(None, policy())
    assert state.results is None and state.save_replay is None and state.stored() == (0, 0)
    state.close()


# ---- the generation thread (node/service.py) --------------------------------------------------


def job_frame(**changes) -> bytes:
    request = job(now=NOW, **changes)
    return framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(sign_job(REQUESTER, request)))))


async def run_job(service, frame: bytes, on_reply=None) -> list[dict]:
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        await ours.send_all(frame)
        stream, replies = MemoryStream(ours), []
        while not replies or replies[-1]["t"] not in ("result", "error"):
            replies.append(await framing.read_frame(stream, framing.MAX_REPLY_FRAME))
            if on_reply:
                on_reply(replies[-1])
    return replies


def service_with(model) -> JobService:
    return JobService(NODE, ServedModels([model]), clock=lambda: NOW, make_params=lambda j: j.request.settings)


async def test_every_job_runs_on_one_long_lived_thread_that_ends_with_the_service():
    import gc

    threads = []

    class Recording(FakeModel):
        def generate(self, settings, on_step=None):
            threads.append(threading.current_thread())
            return super().generate(settings, on_step)

    service = service_with(Recording())
    for _ in range(3):
        assert (await run_job(service, job_frame()))[-1]["t"] == "result"
    assert len(set(threads)) == 1 and threads[0] is not threading.main_thread()
    thread = threads[0]
    del service, threads
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


async def test_a_failing_generation_is_an_internal_error_and_the_thread_serves_the_next_job():
    calls = []

    class FailsOnce(FakeModel):
        def generate(self, settings, on_step=None):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("out of memory")
            return super().generate(settings, on_step)

    service = service_with(FailsOnce())
    failed = (await run_job(service, job_frame()))[-1]
    assert failed["code"] == "internal" and "RuntimeError: out of memory" in failed["message"]
    assert (await run_job(service, job_frame()))[-1]["t"] == "result"


async def test_shutdown_stops_a_running_generation_at_its_next_step():
    class Endless(FakeModel):
        def generate(self, settings, on_step=None):
            step = 0
            while True:  # only on_step's exception ends it
                step += 1
                on_step(step, 10**9)
                threading.Event().wait(0.001)

    service = service_with(Endless())

    def shut_down_once_running(reply):
        if reply["t"] == "progress" and reply["step"] > 0:
            service.shutdown()

    with trio.fail_after(30):
        replies = await run_job(service, job_frame(), shut_down_once_running)
    assert replies[-1]["code"] == "busy" and "shutting down" in replies[-1]["message"]
