"""What the operator sees of a running node on stderr (issue 9): in a terminal a live view
(``live_view``); without one (a service, a pipe, a file) one line per event (``event_log``), as
text or, with ``--log-format json``, as JSON lines.

``make_output`` changes the process's logging, because the node's ordinary log lines share stderr
with the view or the event lines:

* always: ``logging.raiseExceptions = False``, so a broken pipe or a closed stderr makes log lines
  vanish instead of raising out of ``logging`` into the node;
* live: while the view is up, the root logger's stderr handlers write above it (see live_view);
  ``log_format`` is then not used (JSON above a live view helps nobody);
* json: the formatter of every root handler is replaced by ``JsonLineFormatter`` and Python
  warnings are routed through logging, so every line from then on is one JSON object. Lines
  written before (start-up, model loading) are in the format the CLI configured.
"""

from __future__ import annotations

import logging

import trio

from .event_log import EventLog, use_json_lines
from .events import EventBus
from .live_view import LiveView
from .status import NodeStatus


class EventLines:
    """One line per event; subscribed as soon as it is made, so no event is missed before ``run``."""

    def __init__(self, status: NodeStatus, events: EventBus, log_format: str) -> None:
        if log_format == "json":
            use_json_lines()
        self.status = status
        self.log = EventLog()
        events.subscribe(self.log.observe)

    async def run(self) -> None:
        self.log.serving(self.status.snapshot())
        await trio.sleep_forever()


def make_output(live: bool, log_format: str, status: NodeStatus, events: EventBus):
    """An object whose ``async run()`` shows the node until cancelled."""
    logging.raiseExceptions = False
    if live:
        return LiveView(status)
    return EventLines(status, events, log_format)
