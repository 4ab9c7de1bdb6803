"""One line per event on stderr, for a node without a terminal (a service, a pipe, a file).

The lines go through ``logging`` (logger ``pointillist.node.events``, level INFO), so they share
the root handler that ``pointillist`` configures with the node's other log lines: in ``text``
format they read like them (``<time> INFO pointillist.node.events: job … done (queue …)``); in
``json`` format :func:`use_json_lines` replaces the formatter of every root handler, so every line
on the stream, events and ordinary log records alike, is one JSON object and the stream stays
parseable. Event objects have stable keys::

    {"ts": "2026-11-23T14:13:54.123Z", "level": "info", "event": "job_finished",
     "jobId": "…", "requester": "…", "peer": "…", "ok": true, "code": null, "delivered": true,
     "steps": 4, "pngBytes": 1234, "queueS": 0.001, "generationS": 0.8, "deliveryS": 0.02,
     "totalS": 0.821}

``event`` is one of ``node_serving``, ``job_accepted``, ``job_started``, ``job_finished``,
``request_refused``; an ordinary log record is ``{"ts", "level", "event": "log", "logger",
"message"}`` plus ``"exc"`` (the traceback) when it carries one. Progress is not logged (the
live view and ``node status`` show it): a line per sampled step would drown everything else.
Refusals come from peers, so a misbehaving one could write without bound: at most
``REFUSAL_BURST`` lines per refusal code per minute, then one line saying how many were held back.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Callable

from .events import Event, JobAccepted, JobFinished, JobStarted, RequestRefused

EVENTS_LOGGER = "pointillist.node.events"
REFUSAL_BURST = 5
REFUSAL_WINDOW_S = 60.0
#: Accepted jobs remembered to name their requester on the later lines (a bound, not a queue size).
_TRACKED = 1000


def rfc3339(ts: float) -> str:
    """``2026-11-23T14:13:54.123Z``: UTC, milliseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def secs(value: float) -> str:
    return f"{value:.3f} s"


class EventLog:
    """An ``EventBus`` subscriber that logs each event as one line (see the module's doc)."""

    def __init__(self, logger: logging.Logger | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger or logging.getLogger(EVENTS_LOGGER)
        if self.logger.level == logging.NOTSET:
            self.logger.setLevel(logging.INFO)  # shown even where the root logger is set higher
        self.clock = clock
        self._jobs: OrderedDict[str, JobAccepted] = OrderedDict()
        self._refusals: dict[str, tuple[float, int]] = {}  # code -> (window start, lines in it)

    # ---- the subscriber ----------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Never raises: watching the node must not break it (the bus would drop us)."""
        try:
            self._observe(event)
        except Exception:
            pass

    def serving(self, snapshot: dict) -> None:
        """The first line: who this node is and where it listens (``NodeStatus.snapshot()``)."""
        try:
            models = [{"name": m["name"], "digest": m["digest"]} for m in snapshot.get("models", [])]
            names = ", ".join(f"{m['name']} ({m['digest'][:12]})" for m in models) or "none"
            addrs = list(snapshot.get("addrs", []))
            self._line(f"node {snapshot['peerId']} serving on {' '.join(addrs) or '(no address)'}; models {names}",
                       {"event": "node_serving", "peerId": snapshot["peerId"], "addrs": addrs, "models": models,
                        "version": snapshot.get("version"), "pid": snapshot.get("pid")})
        except Exception:
            pass

    def _observe(self, event: Event) -> None:
        if isinstance(event, JobAccepted):
            self._jobs[event.job_id] = event
            while len(self._jobs) > _TRACKED:
                self._jobs.popitem(last=False)
            via = "" if event.peer == event.requester else f" via peer {event.peer}"
            self._line(f"job {event.job_id} from {event.requester}{via} accepted ({event.position} ahead): "
                       f"model {event.model}, {event.steps} steps",
                       {"event": "job_accepted", "jobId": event.job_id, "requester": event.requester,
                        "peer": event.peer, "model": event.model, "steps": event.steps, "ahead": event.position})
        elif isinstance(event, JobStarted):
            accepted = self._jobs.get(event.job_id)
            fields = {"event": "job_started", "jobId": event.job_id, "steps": event.steps}
            text = f"job {event.job_id} started ({event.steps} steps"
            if accepted is not None:
                queue_s = max(0.0, event.at - accepted.at)
                fields.update(requester=accepted.requester, peer=accepted.peer, queueS=round(queue_s, 4))
                text += f", after {secs(queue_s)} in the queue) for {accepted.requester}"
                if accepted.peer != accepted.requester:
                    text += f" via peer {accepted.peer}"
            else:
                text += ")"
            self._line(text, fields)
        elif isinstance(event, JobFinished):
            self._jobs.pop(event.job_id, None)
            self._finished(event)
        elif isinstance(event, RequestRefused):
            self._refused(event)
        # JobProgress: not logged (see the module's doc)

    def _finished(self, e: JobFinished) -> None:
        total = e.queue_s + e.generation_s + e.delivery_s
        durations = (f"queue {secs(e.queue_s)}, generation {secs(e.generation_s)}, "
                     f"delivery {secs(e.delivery_s)}, {e.steps} steps")
        if e.ok:
            outcome = "done" if e.delivered else "done, stored for fetch (the requester was gone)"
            text = f"job {e.job_id} {outcome} ({durations}, {e.png_bytes} bytes) for {e.requester}"
        else:
            text = f"job {e.job_id} failed ({e.code}) ({durations}) for {e.requester}"
        if e.peer != e.requester:
            text += f" via peer {e.peer}"
        level = logging.INFO if e.ok else logging.WARNING
        self._line(text, {"event": "job_finished", "jobId": e.job_id, "requester": e.requester, "peer": e.peer,
                          "ok": e.ok, "code": None if e.ok else str(e.code), "delivered": e.delivered,
                          "steps": e.steps, "pngBytes": e.png_bytes, "queueS": round(e.queue_s, 4),
                          "generationS": round(e.generation_s, 4), "deliveryS": round(e.delivery_s, 4),
                          "totalS": round(total, 4)}, level)

    def _refused(self, e: RequestRefused) -> None:
        code = str(e.code)
        now = self.clock()
        start, count = self._refusals.get(code, (now, 0))
        if now - start >= REFUSAL_WINDOW_S:
            if count > REFUSAL_BURST:
                held = count - REFUSAL_BURST
                self._line(f"{held} more refused ({code}) line(s) held back in the last {now - start:.0f} s",
                           {"event": "refusals_held_back", "code": code, "count": held,
                            "windowS": round(now - start, 1)})
            start, count = now, 0
        count += 1
        self._refusals[code] = (start, count)
        if count <= REFUSAL_BURST:
            self._line(f"peer {e.peer}: refused ({code}): {e.message}",
                       {"event": "request_refused", "peer": e.peer, "code": code, "message": e.message[:500]})

    def _line(self, text: str, fields: dict, level: int = logging.INFO) -> None:
        self.logger.log(level, "%s", text, extra={"event_fields": fields})


class JsonLineFormatter(logging.Formatter):
    """Every record as one JSON object on one line (see the module's doc for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        head = {"ts": rfc3339(record.created), "level": record.levelname.lower()}
        fields = getattr(record, "event_fields", None)
        if isinstance(fields, dict):
            obj = {**head, **fields}
        else:
            try:
                message = record.getMessage()
            except Exception:  # a log call with bad arguments still makes a line
                message = f"{record.msg!r} {record.args!r}"
            obj = {**head, "event": "log", "logger": record.name, "message": message}
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, default=str)


def use_json_lines(logger: logging.Logger | None = None) -> None:
    """Make every handler of ``logger`` (the root logger) write JSON lines, and route Python
    warnings through logging, so nothing else on the stream breaks the format. Handlers added
    later are not changed."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonLineFormatter())
    logging.captureWarnings(True)
