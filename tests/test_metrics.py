"""The Prometheus endpoint of a node (``node start --metrics``): in-process tests that feed events
and readings and scrape exact values, and a node process scraped after a good job, a refused job
and a garbage frame."""

from __future__ import annotations

import socket
import struct
import time
import urllib.error
import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from pointillist.node.events import EventBus, JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from pointillist.node.metrics import LATENCY_BUCKETS, start_metrics_server
from pointillist.node.status import NodeStatus, Readings
from pointillist.node.version import POINTILLIST_VERSION
from pointillist.protocol.errors import ErrorCode, UsageError
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request, sign_job
from support import exchange, job_frame, run_cli

PEER = "12D3KooWMetricsTestPeer"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint: {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def finished(code: ErrorCode | None = None, queue_s=0.5, generation_s=2.0, delivery_s=0.25, steps=20,
             delivered=True) -> JobFinished:
    return JobFinished("job1", "requester", "peer", code, queue_s=queue_s, generation_s=generation_s,
                       delivery_s=delivery_s, steps=steps, png_bytes=1000, delivered=delivered)


@pytest.fixture
def node():
    """An EventBus, a NodeStatus fed by it with settable readings, and a metrics server on both."""
    bus = EventBus()
    live = {"peers": 3, "records": 7, "rejected": {"stale": 2, "bad-signature": 1}, "queue": 1,
            "accepting": True, "stored": (4, 12345)}
    status = NodeStatus(PEER, [{"name": "tiny-sd", "digest": "ab" * 32, "warm": True}])
    status.readings = Readings(
        peers=lambda: live["peers"], records_held=lambda: live["records"],
        records_rejected=lambda: live["rejected"], queue_depth=lambda: live["queue"],
        accepting=lambda: live["accepting"], stored=lambda: live["stored"])
    bus.subscribe(status.observe)
    server = start_metrics_server("127.0.0.1", 0, status, bus)
    url = f"http://127.0.0.1:{server.port}/metrics"
    yield bus, live, status, server, url
    server.close()


def test_jobs_are_counted_by_outcome_and_code(node):
    bus, _, _, _, url = node
    before = scrape(url)
    assert value(before, "pointillist_jobs_total", outcome="ok", code="") == 0  # present before any job
    assert value(before, "pointillist_jobs_total", outcome="failed", code="internal") == 0
    bus.emit(JobAccepted("job1", "requester", "peer", "tiny-sd", 20, 0))
    bus.emit(JobStarted("job1", 20))
    bus.emit(JobProgress("job1", 10, 20))
    bus.emit(finished())
    bus.emit(finished(ErrorCode.INTERNAL, steps=20))
    bus.emit(finished(ErrorCode.BUSY))
    bus.emit(finished(ErrorCode.BUSY))
    bus.emit(finished(delivered=False, steps=4, generation_s=0.5))
    s = scrape(url)
    assert value(s, "pointillist_jobs_total", outcome="ok", code="") == 2
    assert value(s, "pointillist_jobs_total", outcome="failed", code="internal") == 1
    assert value(s, "pointillist_jobs_total", outcome="failed", code="busy") == 2
    assert value(s, "pointillist_jobs_total", outcome="failed", code="invalid-params") == 0
    assert value(s, "pointillist_jobs_accepted_total") == 1
    assert value(s, "pointillist_jobs_undelivered_total") == 1
    assert value(s, "pointillist_steps_total") == 24  # only jobs that delivered an image
    assert value(s, "pointillist_steps_per_second") == 8.0  # the last one: 4 steps in 0.5 s


def test_latency_histograms_count_jobs_that_delivered_an_image(node):
    bus, _, _, _, url = node
    bus.emit(finished(queue_s=0.5, generation_s=2.0, delivery_s=0.25))
    bus.emit(finished(queue_s=0.0, generation_s=45.0, delivery_s=0.01))
    bus.emit(finished(ErrorCode.INTERNAL, generation_s=1.0))  # a failure is not a latency
    s = scrape(url)
    for name, total in (("pointillist_job_queue_seconds", 0.5), ("pointillist_job_generation_seconds", 47.0),
                        ("pointillist_job_delivery_seconds", 0.26),
                        ("pointillist_job_end_to_end_seconds", 2.75 + 45.01)):
        assert value(s, f"{name}_count") == 2, name
        assert value(s, f"{name}_sum") == pytest.approx(total), name
        assert value(s, f"{name}_bucket", le="+Inf") == 2, name
    # buckets fit generation: from tens of milliseconds to minutes
    assert LATENCY_BUCKETS[0] <= 0.05 and LATENCY_BUCKETS[-1] >= 600
    assert value(s, "pointillist_job_generation_seconds_bucket", le="2.5") == 1
    assert value(s, "pointillist_job_generation_seconds_bucket", le="30.0") == 1
    assert value(s, "pointillist_job_generation_seconds_bucket", le="60.0") == 2
    assert value(s, "pointillist_job_end_to_end_seconds_bucket", le="2.5") == 0
    assert value(s, "pointillist_job_end_to_end_seconds_bucket", le="5.0") == 1


def test_refused_requests_are_counted_by_code(node):
    bus, _, _, _, url = node
    for code in (ErrorCode.BAD_FRAME, ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.INVALID_PARAMS):
        bus.emit(RequestRefused("peer", code, "no"))
    s = scrape(url)
    assert value(s, "pointillist_requests_refused_total", code="bad-frame") == 2
    assert value(s, "pointillist_requests_refused_total", code="frame-too-large") == 1
    assert value(s, "pointillist_requests_refused_total", code="invalid-params") == 1
    assert value(s, "pointillist_requests_refused_total", code="busy") == 0
    assert value(s, "pointillist_jobs_total", outcome="ok", code="") == 0  # a refusal is not a job


def test_gauges_read_the_live_readings_at_each_scrape(node):
    _, live, _, _, url = node
    s = scrape(url)
    assert value(s, "pointillist_peers") == 3
    assert value(s, "pointillist_records_held") == 7
    assert value(s, "pointillist_queue_depth") == 1
    assert value(s, "pointillist_accepting") == 1
    assert value(s, "pointillist_results_stored") == 4
    assert value(s, "pointillist_results_stored_bytes") == 12345
    assert value(s, "pointillist_records_rejected_total", reason="stale") == 2
    assert value(s, "pointillist_records_rejected_total", reason="bad-signature") == 1
    assert value(s, "pointillist_info", peer_id=PEER, version=POINTILLIST_VERSION) == 1
    assert value(s, "pointillist_model_info", name="tiny-sd", digest="ab" * 32) == 1
    live.update(peers=0, queue=5, accepting=False, stored=(5, 20000))
    live["rejected"]["stale"] = 9
    s = scrape(url)
    assert value(s, "pointillist_peers") == 0
    assert value(s, "pointillist_queue_depth") == 5
    assert value(s, "pointillist_accepting") == 0
    assert value(s, "pointillist_results_stored") == 5
    assert value(s, "pointillist_results_stored_bytes") == 20000
    assert value(s, "pointillist_records_rejected_total", reason="stale") == 9


def test_a_failing_reading_leaves_its_metric_out_not_the_scrape(node):
    bus, _, status, _, url = node

    def broken():
        raise RuntimeError("network object gone")

    status.readings.peers = broken
    status.readings.records_rejected = broken
    status.readings.stored = lambda: None  # not a pair: also a failure
    bus.emit(finished())
    s = scrape(url)
    assert value(s, "pointillist_peers") is None
    assert value(s, "pointillist_results_stored") is None
    assert not any(name == "pointillist_records_rejected_total" for name, _ in s)
    assert value(s, "pointillist_records_held") == 7
    assert value(s, "pointillist_queue_depth") == 1
    assert value(s, "pointillist_jobs_total", outcome="ok", code="") == 1


def test_metrics_are_per_server_not_global():
    buses = [EventBus(), EventBus()]
    servers = [start_metrics_server("127.0.0.1", 0, NodeStatus(f"peer{i}", []), bus) for i, bus in enumerate(buses)]
    try:
        buses[0].emit(finished())
        first, second = (scrape(f"http://127.0.0.1:{s.port}/metrics") for s in servers)
        assert value(first, "pointillist_jobs_total", outcome="ok", code="") == 1
        assert value(second, "pointillist_jobs_total", outcome="ok", code="") == 0
    finally:
        for s in servers:
            s.close()


def test_close_frees_the_port_and_can_be_called_twice():
    server = start_metrics_server("127.0.0.1", 0, NodeStatus(PEER, []), EventBus())
    port = server.port
    assert value(scrape(f"http://127.0.0.1:{port}/metrics"), "pointillist_info", peer_id=PEER,
                 version=POINTILLIST_VERSION) == 1
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    again = start_metrics_server("127.0.0.1", port, NodeStatus(PEER, []), EventBus())  # the port is free
    again.close()


def test_a_busy_port_or_bad_host_is_a_one_line_usage_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError) as caught:
            start_metrics_server("127.0.0.1", port, NodeStatus(PEER, []), EventBus())
        assert f"127.0.0.1:{port}" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError) as caught:  # an address of no interface here (TEST-NET-1, no DNS asked)
        start_metrics_server("192.0.2.1", 9464, NodeStatus(PEER, []), EventBus())
    assert "192.0.2.1:9464" in str(caught.value) and "\n" not in str(caught.value)


# ---- a real node ---------------------------------------------------------------------------


def wait_for(url: str, condition, timeout_s: float = 120) -> dict:
    """Scrape until ``condition(samples)`` holds; the last scrape in the failure message."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            shown = {k: v for k, v in samples.items() if k[0].startswith("pointillist_") and v}
            raise AssertionError(f"metrics never met the condition; last scrape: {shown}")
        time.sleep(0.2)


@pytest.mark.integration
def test_a_node_counts_a_good_job_a_refused_job_and_a_garbage_frame(node_process, tmp_path):
    node = node_process("--metrics", "127.0.0.1:0")
    url = node.info["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), node.info
    s = scrape(url)
    assert value(s, "pointillist_jobs_total", outcome="ok", code="") == 0
    assert value(s, "pointillist_info", peer_id=node.peer_id, version=POINTILLIST_VERSION) == 1

    # a good job, as a user submits it
    out = tmp_path / "fox.png"
    r = run_cli(["submit", "a fox", "--peer", node.addr, "--size", "64", "--steps", "4", "--quiet",
                 "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr

    # a refused job: more steps than the node's limit (150 by default)
    requester = Identity.generate()
    refused = trio.run(exchange, node, job_frame(sign_job(requester, new_job_request(
        node=node.peer_id, model="tiny-sd", prompt="too long", seed=1, steps=151, guidance=7.5,
        width=64, height=64, now=int(time.time())))), requester)
    assert [(f["t"], f.get("code")) for f in refused] == [("error", "invalid-params")], refused

    # garbage frames: a body that is not msgpack, and a length above the request limit
    garbage = trio.run(exchange, node, struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    assert [(f["t"], f.get("code")) for f in garbage] == [("error", "bad-frame")], garbage
    too_large = trio.run(exchange, node, struct.pack(">I", 2**31))
    assert [(f["t"], f.get("code")) for f in too_large] == [("error", "frame-too-large")], too_large

    s = wait_for(url, lambda s: value(s, "pointillist_jobs_total", outcome="ok", code="") == 1
                 and value(s, "pointillist_requests_refused_total", code="frame-too-large") == 1
                 and value(s, "pointillist_queue_depth") == 0)
    assert value(s, "pointillist_jobs_accepted_total") == 1
    assert value(s, "pointillist_requests_refused_total", code="invalid-params") == 1
    assert value(s, "pointillist_requests_refused_total", code="bad-frame") == 1
    assert sum(v for (name, labels), v in s.items()
               if name == "pointillist_jobs_total" and dict(labels)["outcome"] == "failed") == 0
    assert value(s, "pointillist_steps_total") == 4
    assert value(s, "pointillist_steps_per_second") > 0
    for name in ("pointillist_job_queue_seconds", "pointillist_job_generation_seconds",
                 "pointillist_job_end_to_end_seconds"):
        assert value(s, f"{name}_count") == 1, name
    assert value(s, "pointillist_job_end_to_end_seconds_sum") >= value(s, "pointillist_job_generation_seconds_sum") > 0
    assert value(s, "pointillist_results_stored") == 1
    assert value(s, "pointillist_results_stored_bytes") >= out.stat().st_size > 0
    assert value(s, "pointillist_accepting") == 1
    assert value(s, "pointillist_peers") is not None and value(s, "pointillist_records_held") is not None
    assert "Traceback" not in node.log()


@pytest.mark.integration
def test_a_busy_metrics_port_stops_the_node_with_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli(["node", "start", "--metrics", f"127.0.0.1:{port}"], tmp_path, timeout=240)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert line.startswith(f"error: metrics: cannot listen on 127.0.0.1:{port}: ") and "\n" not in line, r.stderr
