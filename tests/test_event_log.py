"""The event log: one line per event on stderr when the node has no terminal, as text or JSON lines
(node/event_log.py, node/operator_view.py). Unit tests feed scripted events; the integration test
reads the real stderr of a node process after a real job."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import time

import pytest
import trio

from pointillist.node.event_log import (
    REFUSAL_BURST, REFUSAL_WINDOW_S, EventLog, JsonLineFormatter, rfc3339, use_json_lines,
)
from pointillist.node.events import EventBus, JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from pointillist.node.operator_view import EventLines, make_output
from pointillist.node.status import NodeStatus
from pointillist.protocol.errors import ErrorCode

from support import NODE_START_TIMEOUT_S, cli_env, run_cli

JOB = "0123456789abcdef0123456789abcdef"
REQ = "12D3KooWRequesterRequesterRequesterRequesterReq"
OTHER = "12D3KooWRelayRelayRelayRelayRelayRelayRelayRelay"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def job_events(ok: bool = True) -> list:
    return [
        JobAccepted(JOB, REQ, REQ, "tiny-sd", 4, 2, at=10.0),
        JobStarted(JOB, 4, at=10.5),
        JobProgress(JOB, 1, 4), JobProgress(JOB, 2, 4), JobProgress(JOB, 4, 4),
        JobFinished(JOB, REQ, REQ, None if ok else ErrorCode.INTERNAL, queue_s=0.5, generation_s=1.25,
                    delivery_s=0.0625, steps=4, png_bytes=4321, at=11.9),
    ]


@pytest.fixture
def capture():
    """A logger of its own with a handler to a buffer: (logger, buffer, handler)."""
    logger = logging.getLogger(f"test.events.{time.monotonic_ns()}")
    logger.propagate = False
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    yield logger, buf, handler
    logger.removeHandler(handler)


def test_text_lines_one_per_event_with_job_peer_and_durations(capture):
    logger, buf, _ = capture
    log = EventLog(logger)
    for event in job_events():
        log.observe(event)
    log.observe(RequestRefused(OTHER, ErrorCode.BUSY, "queue full"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines  # accepted, started, finished, refused: progress makes no line
    accepted, started, finished, refused = lines
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", accepted)  # the timestamp of every log line
    assert f"job {JOB} from {REQ} accepted (2 ahead): model tiny-sd, 4 steps" in accepted
    assert f"job {JOB} started (4 steps, after 0.500 s in the queue) for {REQ}" in started
    assert (f"job {JOB} done (queue 0.500 s, generation 1.250 s, delivery 0.062 s, 4 steps, 4321 bytes) "
            f"for {REQ}") in finished
    assert f"peer {OTHER}: refused (busy): queue full" in refused


def test_text_failed_job_and_a_job_relayed_by_another_peer(capture):
    logger, buf, _ = capture
    log = EventLog(logger)
    log.observe(JobFinished(JOB, REQ, OTHER, ErrorCode.INTERNAL, 0.1, 0.2, 0.0, 4))
    log.observe(JobFinished(JOB, REQ, REQ, None, 0.1, 0.2, 0.3, 4, delivered=False))
    failed, stored = buf.getvalue().splitlines()
    assert " WARNING " in failed and f"job {JOB} failed (internal) (queue 0.100 s" in failed
    assert failed.endswith(f"for {REQ} via peer {OTHER}")
    assert "done, stored for fetch (the requester was gone)" in stored


def test_json_lines_parse_and_carry_the_durations(capture):
    logger, buf, handler = capture
    handler.setFormatter(JsonLineFormatter())
    log = EventLog(logger)
    log.serving({"peerId": OTHER, "addrs": ["/ip4/127.0.0.1/tcp/1/p2p/x"], "version": "0",
                 "models": [{"name": "tiny-sd", "digest": "ab" * 32, "warm": True}]})
    for event in job_events():
        log.observe(event)
    log.observe(RequestRefused(OTHER, ErrorCode.BUSY, "queue full"))
    logger.warning("an ordinary line with %s", "arguments")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["node_serving", "job_accepted", "job_started", "job_finished",
                                             "request_refused", "log", "log"]
    assert all(RFC3339.match(r["ts"]) for r in records)
    serving, accepted, started, finished, refused, plain, exc = records
    assert serving["peerId"] == OTHER and serving["models"] == [{"name": "tiny-sd", "digest": "ab" * 32}]
    assert accepted == {**accepted, "jobId": JOB, "requester": REQ, "peer": REQ, "model": "tiny-sd", "steps": 4,
                        "ahead": 2, "level": "info"}
    assert started["jobId"] == JOB and started["queueS"] == 0.5 and started["requester"] == REQ
    assert finished == {**finished, "jobId": JOB, "requester": REQ, "peer": REQ, "ok": True, "code": None,
                        "delivered": True, "steps": 4, "pngBytes": 4321, "queueS": 0.5, "generationS": 1.25,
                        "deliveryS": 0.0625, "totalS": 1.8125}
    assert refused == {**refused, "peer": OTHER, "code": "busy", "message": "queue full"}
    assert plain == {**plain, "level": "warning", "logger": logger.name, "message": "an ordinary line with arguments"}
    assert exc["message"] == "it failed" and "ValueError: boom" in exc["exc"] and exc["level"] == "error"


def test_refusals_from_a_flooding_peer_are_held_back_and_counted(capture):
    logger, buf, handler = capture
    handler.setFormatter(JsonLineFormatter())
    now = [0.0]
    log = EventLog(logger, clock=lambda: now[0])
    for _ in range(REFUSAL_BURST + 20):
        log.observe(RequestRefused(OTHER, ErrorCode.BAD_FRAME, "garbage"))
    log.observe(RequestRefused(OTHER, ErrorCode.BUSY, "queue full"))  # another code has its own allowance
    now[0] = REFUSAL_WINDOW_S + 1
    log.observe(RequestRefused(OTHER, ErrorCode.BAD_FRAME, "garbage"))
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    codes = [(e["event"], e.get("code")) for e in events]
    assert codes == [("request_refused", "bad-frame")] * REFUSAL_BURST + [("request_refused", "busy"),
                     ("refusals_held_back", "bad-frame"), ("request_refused", "bad-frame")]
    assert events[-2]["count"] == 20


def test_the_subscriber_never_raises_even_when_logging_does():
    class Exploding(logging.Logger):
        def log(self, *a, **k):
            raise RuntimeError("disk on fire")

    log = EventLog(Exploding("x"))
    for event in job_events():
        log.observe(event)  # no exception: the bus would otherwise drop the subscriber
    log.serving({})  # a malformed snapshot neither


def test_a_broken_stderr_does_not_raise_out_of_logging(monkeypatch):
    class Broken(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    logger = logging.getLogger("test.events.broken")
    logger.propagate = False
    handler = logging.StreamHandler(Broken())
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    try:
        make_output(False, "text", NodeStatus("p", []), EventBus())  # what the node does: no raising from logging
        assert logging.raiseExceptions is False
        EventLog(logger).observe(job_events()[-1])
        logger.warning("still fine")
    finally:
        logger.removeHandler(handler)


def test_json_mode_reformats_the_root_handlers(monkeypatch):
    root = logging.getLogger()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    bus = EventBus()
    try:
        output = make_output(False, "json", NodeStatus("12D3KooWnode", []), bus)
        assert isinstance(output, EventLines)
        for event in job_events():
            bus.emit(event)  # subscribed when made: no event is missed before run() starts
        logging.getLogger("pointillist.node").warning("an ordinary warning")
        import warnings
        warnings.warn("a library's warning")  # routed through logging, so a JSON line too
    finally:
        logging.captureWarnings(False)
    records = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["job_accepted", "job_started", "job_finished", "log", "log"]
    assert records[3]["message"] == "an ordinary warning" and records[3]["logger"] == "pointillist.node"
    assert "a library's warning" in records[4]["message"] and records[4]["logger"] == "py.warnings"


def test_text_mode_writes_the_serving_line_first(monkeypatch):
    root = logging.getLogger()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    status = NodeStatus("12D3KooWnode", [{"name": "tiny-sd", "digest": "cd" * 32, "warm": True}])

    async def main():
        output = make_output(False, "text", status, EventBus())
        with trio.move_on_after(0.05):
            await output.run()

    trio.run(main)
    assert buf.getvalue() == "node 12D3KooWnode serving on (no address); models tiny-sd (cdcdcdcdcdcd)\n"


def test_rfc3339_is_utc_with_milliseconds():
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


def test_use_json_lines_on_a_given_logger():
    logger = logging.getLogger("test.events.json")
    logger.propagate = False
    buf = io.StringIO()
    logger.addHandler(logging.StreamHandler(buf))
    try:
        use_json_lines(logger)
        logger.warning("multi\nline")
    finally:
        logging.captureWarnings(False)
        logger.handlers.clear()
    (line,) = buf.getvalue().splitlines()
    assert json.loads(line)["message"] == "multi\nline"


# ---- a real node, stderr to a file ----------------------------------------------------------

@pytest.mark.integration
def test_json_event_lines_of_a_real_node_after_a_job(tmp_path):
    home = tmp_path / "node"
    home.mkdir()
    ready = home / "ready.json"
    err_path = home / "stderr.log"
    with open(err_path, "wb") as err, open(home / "stdout.log", "wb") as out:
        # stderr is a file, not a terminal: no live view by default, one JSON line per event
        proc = subprocess.Popen([sys.executable, "-m", "pointillist.cli", "node", "start", "--log-format", "json",
                                 "--ready-file", str(ready)],
                                env=cli_env(home), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        info = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), NODE_START_TIMEOUT_S, proc,
                        err_path, "the node to serve")
        r = run_cli(["submit", "a fox", "--peer", info["addrs"][0], "--size", "64", "--steps", "4", "--quiet",
                     "--out", str(tmp_path / "a.png"), "--json"], tmp_path)
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout.splitlines()[0])["jobId"]

        def finished():
            return [e for e in parse_lines(err_path.read_text()) if e.get("event") == "job_finished"]

        (done,) = wait_for(finished, 60, proc, err_path, "the job_finished line")
        events = parse_lines(err_path.read_text())  # every line so far parses: asserted in parse_lines
        serving = [e for e in events if e["event"] == "node_serving"]
        assert serving and serving[0]["peerId"] == info["peer_id"] and serving[0]["addrs"] == info["addrs"]
        mine = [e for e in events if e.get("jobId") == job_id]
        assert [e["event"] for e in mine] == ["job_accepted", "job_started", "job_finished"], events
        assert mine[0]["peer"] and mine[0]["requester"] and mine[0]["steps"] == 4
        assert done["jobId"] == job_id and done["ok"] is True and done["code"] is None and done["delivered"] is True
        for key in ("queueS", "generationS", "deliveryS"):
            assert isinstance(done[key], (int, float)) and done[key] >= 0, done
        assert done["generationS"] > 0 and all(RFC3339.match(e["ts"]) for e in events)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    assert proc.returncode == 0, text
    # Every line is JSON, from start-up (before the node serves) to the last one after it stops.
    logs = [e for e in parse_lines(text) if e["event"] == "log"]
    assert any("shutting down" in e["message"] for e in logs), text
    assert logs[-1]["message"] == "node stopped", text


def parse_lines(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{text}") from None
    return events


def wait_for(condition, timeout_s: float, proc: subprocess.Popen, log_path, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"node exited {proc.returncode} before {what}:\n{log_path.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()}")
