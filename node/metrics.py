"""Prometheus metrics of a node (``node start --metrics HOST:PORT``; off by default).

Two sources, the same the live view and ``node status`` read (node/status.py), so the figures
agree everywhere:

* the job service's events (node/events.py) drive counters and histograms: jobs by outcome and
  error code, requests refused by code (bad frames included), queue, generation, delivery and
  end-to-end latencies, steps;
* the node's live readings (``NodeStatus.readings``) are read at scrape time: queue depth, peers,
  records held, records rejected by reason, stored results, accepting.

The metrics live in a registry of their own (never prometheus-client's global one, so that two
nodes in one process, or a test, never share counts) and are served by prometheus-client's own
HTTP server in a daemon thread. Events arrive on the trio thread, scrapes on the server's: the
metric objects are thread-safe, and a scrape only calls the readings (each guarded: a reading that
fails leaves its metric out of that scrape, it never breaks the scrape or the node).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..protocol.errors import ErrorCode, UsageError
from .events import Event, JobAccepted, JobFinished, RequestRefused
from .status import NodeStatus
from .version import POINTILLIST_VERSION

log = logging.getLogger("pointillist.node")

#: Seconds, from a tiny model's few steps on a GPU (tens of ms) to a large image on a CPU (many
#: minutes); the same buckets for every job duration so that the histograms compare.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                   300.0, 600.0, 1200.0, 1800.0)


@dataclass
class MetricsServer:
    """A running metrics endpoint: ``port`` is the bound one (useful when 0 was asked)."""

    host: str
    port: int
    registry: CollectorRegistry
    _httpd: Any
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # returns once serve_forever has left its loop
        httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(host: str, port: int, status: NodeStatus, events: Any) -> MetricsServer:
    """Serve the node's metrics on ``host:port`` (0: any free port) until ``close()``.

    ``events`` is the job service's ``EventBus``; ``status`` the node's ``NodeStatus``, whose
    readings are read at each scrape. ``UsageError`` if the address cannot be listened on."""
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, status)
    events.subscribe(metrics.observe)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, ValueError) as exc:  # busy port, unknown host, bad address
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        shown = f"[{host}]" if ":" in host else host
        raise UsageError(f"metrics: cannot listen on {shown}:{port}: {reason}") from exc
    thread.name = "pointillist-metrics"
    log.info("metrics on http://%s:%d/metrics", host, httpd.server_port)
    return MetricsServer(host, httpd.server_port, registry, httpd, thread)


class NodeMetrics:
    """The node's metrics in ``registry``: event-driven ones here, live ones in ``_Live``."""

    def __init__(self, registry: CollectorRegistry, status: NodeStatus) -> None:
        self.jobs = Counter(
            "pointillist_jobs", "Jobs finished, by outcome (ok, failed) and error code (empty when ok)",
            ["outcome", "code"], registry=registry)
        self.accepted = Counter(
            "pointillist_jobs_accepted", "Jobs admitted into the queue", registry=registry)
        self.undelivered = Counter(
            "pointillist_jobs_undelivered",
            "Jobs that produced an image but whose requester was gone (kept for fetch if the store is on)",
            registry=registry)
        self.refused = Counter(
            "pointillist_requests_refused",
            "Requests refused before any work, by error code: admission (invalid-params, busy, ...) "
            "and framing (bad-frame, frame-too-large)", ["code"], registry=registry)
        self.queue_s = Histogram(
            "pointillist_job_queue_seconds", "Time jobs waited for the GPU (jobs that delivered an image)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.generation_s = Histogram(
            "pointillist_job_generation_seconds",
            "Generation time, pipeline and attestation (jobs that delivered an image)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.delivery_s = Histogram(
            "pointillist_job_delivery_seconds", "Time to store and send the result (jobs that delivered an image)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.end_to_end_s = Histogram(
            "pointillist_job_end_to_end_seconds",
            "Acceptance to delivery: queue, generation and delivery (jobs that delivered an image)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.steps = Counter(
            "pointillist_steps", "Denoising steps of the jobs that delivered an image", registry=registry)
        self.steps_per_s = Gauge(
            "pointillist_steps_per_second", "Denoising steps per second of the last job that delivered an image",
            registry=registry)
        Info("pointillist", "This node's software version and peer id", registry=registry).info(
            {"version": POINTILLIST_VERSION, "peer_id": status.peer_id})
        # Every series present from the start, at 0: rate() and alerts need no first occurrence.
        self.jobs.labels("ok", "")
        for code in ErrorCode:
            self.jobs.labels("failed", str(code))
            self.refused.labels(str(code))
        registry.register(_Live(status))
        try:
            ProcessCollector(registry=registry)  # process_cpu_seconds_total, memory, open fds, start time
        except Exception:  # not on every platform; nothing of ours depends on it
            pass

    def observe(self, event: Event) -> None:
        """EventBus subscriber (trio thread). Never raises: watching must not break the node."""
        try:
            if isinstance(event, JobFinished):
                self._finished(event)
            elif isinstance(event, RequestRefused):
                self.refused.labels(str(event.code)).inc()
            elif isinstance(event, JobAccepted):
                self.accepted.inc()
        except Exception:
            log.debug("metrics: event %r not counted", event, exc_info=True)

    def _finished(self, e: JobFinished) -> None:
        if not e.ok:
            self.jobs.labels("failed", str(e.code)).inc()
            return
        self.jobs.labels("ok", "").inc()
        if not e.delivered:
            self.undelivered.inc()
        self.queue_s.observe(max(e.queue_s, 0.0))
        self.generation_s.observe(max(e.generation_s, 0.0))
        self.delivery_s.observe(max(e.delivery_s, 0.0))
        self.end_to_end_s.observe(max(e.queue_s + e.generation_s + e.delivery_s, 0.0))
        self.steps.inc(e.steps)
        if e.generation_s > 0:
            self.steps_per_s.set(e.steps / e.generation_s)


class _Live(Collector):
    """Values read from the node at scrape time (the HTTP server's thread)."""

    def __init__(self, status: NodeStatus) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        r = self.status.readings  # looked up per scrape: the runner may replace it
        for name, doc, read in (
            ("pointillist_queue_depth", "Jobs admitted and not finished, the running one included",
             r.queue_depth),
            ("pointillist_peers", "Peers connected now", r.peers),
            ("pointillist_records_held", "Capacity records held in the directory", r.records_held),
            ("pointillist_accepting", "1 while the node accepts jobs, 0 while it shuts down",
             lambda: 1 if r.accepting() else 0),
        ):
            value = _read(name, read)
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
        stored = _read("pointillist_results_stored", lambda: _pair(r.stored()))  # one reading for both
        if stored is not None:
            yield GaugeMetricFamily("pointillist_results_stored", "Results kept for fetch", value=stored[0])
            yield GaugeMetricFamily("pointillist_results_stored_bytes", "Bytes of the results kept for fetch",
                                    value=stored[1])
        rejected = _read("pointillist_records_rejected_total", lambda: _copy_counts(r.records_rejected))
        if rejected is not None:
            family = CounterMetricFamily("pointillist_records_rejected",
                                         "Records from peers refused, by reason", labels=["reason"])
            for reason, count in sorted(rejected.items()):
                family.add_metric([str(reason)], float(count))
            yield family
        models = _read("pointillist_model_info", lambda: [dict(m) for m in list(self.status.models)])
        if models is not None:
            family = GaugeMetricFamily("pointillist_model_info", "Models this node serves",
                                       labels=["name", "digest"])
            for m in models:
                family.add_metric([str(m.get("name", "")), str(m.get("digest", ""))], 1.0)
            yield family


def _read(name: str, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        log.debug("metrics: %s could not be read; left out of this scrape", name, exc_info=True)
        return None


def _pair(value: Any) -> tuple[float, float]:
    count, size = value
    return float(count), float(size)


def _copy_counts(read: Callable[[], dict]) -> dict[str, int]:
    """A copy of a dict the trio thread may be updating: retried if it changed while copied."""
    for _ in range(3):
        try:
            return {str(k): int(v) for k, v in dict(read()).items()}
        except RuntimeError:  # changed size during iteration
            continue
    raise RuntimeError("kept changing while read")
