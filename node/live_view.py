"""The live view of ``pointillist node start`` in a terminal: who the node is and where it listens,
its models, peers, queue, the job on the GPU with its step progress, jobs served and failed with
their durations, recent errors, stored results, uptime.

Everything is read on the trio thread: every ``REFRESH_S`` a task takes ``NodeStatus.snapshot()``,
builds a static renderable from it and redraws (``auto_refresh=False``: rich's own refresh thread
would read the status while the loop changes it). While the view is up, the root logger's stderr
handlers write through the view's console, so log lines appear above the view instead of
garbling it; when the task is cancelled the view is drawn a last time, left on the screen, and
the terminal is given back (cursor shown, handlers restored).
"""

from __future__ import annotations

import logging
import sys
import time

import trio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .status import NodeStatus

#: Seconds between redraws while a job runs (its step bar moves), twice that while idle: a
#: redraw costs ~10 ms of the trio thread.
REFRESH_S = 0.25


# ---- formatting --------------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {s:02d}s" if hours else f"{minutes}m {s:02d}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def short(peer: str | None) -> str:
    """Peer IDs share their first characters (``12D3KooW``): keep a few of each end."""
    if not peer:
        return "-"
    return peer if len(peer) <= 16 else f"{peer[:6]}…{peer[-6:]}"


def clock_time(wall: float | None) -> str:
    return "-" if wall is None else time.strftime("%H:%M:%S", time.localtime(wall))


def by_code(counts: dict) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---- the view ----------------------------------------------------------------------------

_REACH = {"public": "public (others can dial this node)",
          "private": "private (behind NAT: reached through its relays)",
          "unknown": "unknown (not yet checked)"}


def render(snap: dict, height: int = 50) -> RenderableType:
    """The view of one ``NodeStatus.snapshot()``; ``height``: the terminal's, to fit the lists."""
    head = Rule(Text.assemble(("pointillist node", "bold"), f"  v{snap.get('version', '?')}  ·  "
                              f"up {duration(snap.get('uptimeS', 0))}  ·  pid {snap.get('pid', '?')}"),
                align="left", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("peer", snap["peerId"])
    grid.add_row("addresses", "\n".join(snap.get("addrs") or ["(none)"]))
    reach = snap.get("reachability", "unknown")
    grid.add_row("reachable", Text(_REACH.get(reach, reach), style={"public": "green", "private": "yellow"}.get(reach, "dim")))
    models = Text()
    for i, m in enumerate(snap.get("models", [])):
        if i:
            models.append("\n")
        models.append(f"{m['name']}  {m['digest'][:16]}  ")
        models.append("warm" if m.get("warm") else "cold", style="green" if m.get("warm") else "yellow")
    grid.add_row("models", models if snap.get("models") else Text("none", style="red"))
    network = f"{snap.get('peers', 0)} peers connected  ·  {snap.get('recordsHeld', 0)} records held"
    rejected = snap.get("recordsRejected") or {}
    if rejected:
        network += f"  ·  {sum(rejected.values())} rejected ({by_code(rejected)})"
    grid.add_row("network", network)
    # ``queue`` counts the admitted jobs not finished, the running one included
    waiting = max(0, snap.get("queue", 0) - (1 if snap.get("current") else 0))
    queue = Text(f"{waiting} waiting  ·  ")
    queue.append("accepting" if snap.get("accepting", True) else "not accepting (shutting down)",
                 style="green" if snap.get("accepting", True) else "yellow")
    grid.add_row("queue", queue)
    grid.add_row("current", _current(snap.get("current")))
    jobs = snap.get("jobs", {})
    line = Text(f"served {jobs.get('served', 0)}  ·  ")
    line.append(f"failed {jobs.get('failed', 0)}", style="red" if jobs.get("failed") else "")
    if jobs.get("failedByCode"):
        line.append(f" ({by_code(jobs['failedByCode'])})")
    refused = snap.get("refusedByCode") or {}
    line.append(f"  ·  refused {sum(refused.values())}")
    if refused:
        line.append(f" ({by_code(refused)})")
    if snap.get("lastStepsPerS") is not None:
        line.append(f"  ·  last {snap['lastStepsPerS']:.2f} steps/s")
    grid.add_row("jobs", line)
    results = snap.get("results", {})
    grid.add_row("results", f"{results.get('count', 0)} stored, {size(results.get('bytes', 0))}")

    # What fits: the grid takes ~10 lines plus one per extra address/model; each table 4 more.
    used = 13 + len(snap.get("addrs", [])) + len(snap.get("models", []))
    room = max(4, height - used - 8)
    recent_jobs = list(reversed(snap.get("recentJobs", [])))
    recent_errors = list(reversed(snap.get("recentErrors", [])))
    n_errors = min(len(recent_errors), max(2, room // 3))
    n_jobs = min(len(recent_jobs), max(3, room - n_errors))
    return Group(head, grid, Text(""), _jobs_table(recent_jobs[:n_jobs]), _errors_table(recent_errors[:n_errors]))


def _current(current: dict | None) -> RenderableType:
    if not current:
        return Text("idle", style="dim")
    row = Table.grid(padding=(0, 1))
    row.add_column(no_wrap=True)
    row.add_column(no_wrap=True)
    row.add_column(no_wrap=True)
    total = max(1, int(current.get("total") or 1))
    step = int(current.get("step") or 0)
    row.add_row(f"job {current['jobId']}", f"for {short(current.get('requester'))}",
                f"running {duration(current.get('runningS'))}")
    bar = Table.grid(padding=(0, 1))
    bar.add_column(no_wrap=True)
    bar.add_column(no_wrap=True)
    bar.add_row(ProgressBar(total=total, completed=min(step, total), width=40),
                f"step {step}/{total}  {100 * step // total}%")
    return Group(row, bar)


def _jobs_table(jobs: list[dict]) -> RenderableType:
    if not jobs:
        return Text("recent jobs: none yet", style="dim")
    table = Table(title="recent jobs", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  title_style="bold")
    table.add_column("at", no_wrap=True)
    table.add_column("job", overflow="ellipsis", no_wrap=True, min_width=12)
    table.add_column("requester", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    for name in ("queue", "generation", "delivery"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    for job in jobs:
        if job.get("ok"):
            outcome = Text("done" if job.get("delivered", True) else "stored", style="green")
        else:
            outcome = Text(f"failed {job.get('code')}", style="red")
        table.add_row(clock_time(job.get("at")), job["jobId"], short(job.get("requester")), outcome,
                      duration(job.get("queueS")), duration(job.get("generationS")),
                      duration(job.get("deliveryS")), str(job.get("steps", "")))
    return table


def _errors_table(errors: list[dict]) -> RenderableType:
    if not errors:
        return Text("recent errors: none", style="dim")
    table = Table(title="recent errors", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  title_style="bold red")
    table.add_column("at", no_wrap=True)
    table.add_column("peer", no_wrap=True)
    table.add_column("job", overflow="ellipsis", no_wrap=True, max_width=14)
    table.add_column("code", no_wrap=True)
    table.add_column("message", overflow="ellipsis", no_wrap=True)
    for e in errors:
        table.add_row(clock_time(e.get("at")), short(e.get("peer")), e.get("jobId") or "-",
                      str(e.get("code")), e.get("message") or "")
    return table


# ---- the task ----------------------------------------------------------------------------

class LiveView:
    """``async run()`` shows the node until cancelled (see the module's doc)."""

    def __init__(self, status: NodeStatus, console: Console | None = None,
                 refresh_s: float = REFRESH_S) -> None:
        self.status = status
        self.console = console
        self.refresh_s = refresh_s
        self._live: Live | None = None
        self._rerouted: list[tuple[logging.StreamHandler, object]] = []

    async def run(self) -> None:
        try:
            self._start()
            while True:
                busy = self._draw()
                await trio.sleep(self.refresh_s if busy else 2 * self.refresh_s)
        except trio.Cancelled:
            raise
        except Exception:
            pass  # a terminal that went away: stop drawing, keep serving
        finally:
            self._stop()
        await trio.sleep_forever()

    def _start(self) -> None:
        console = self.console or Console(stderr=True)
        self.console = console
        original_stderr = sys.stderr
        self._live = Live(console=console, auto_refresh=False, transient=False,
                          redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)
        self._live.start()
        if sys.stderr is not original_stderr:  # stderr now writes above the view: so must the logs
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and _same_stream(handler.stream, original_stderr):
                    self._rerouted.append((handler, handler.stream))
                    handler.setStream(sys.stderr)

    def _draw(self) -> bool:
        """Redraw; returns whether a job is running."""
        snap = self.status.snapshot()
        if self._live is not None:
            self._live.update(render(snap, self.console.height), refresh=True)
        return snap["current"] is not None

    def _stop(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.update(render(self.status.snapshot(), self.console.height), refresh=False)
        except Exception:
            pass
        try:
            live.stop()  # draws it a last time and leaves it; shows the cursor; gives stderr back
            if not live.console.is_terminal:  # a file gets the last view only, and no line end
                live.console.line()
        except Exception:
            pass
        for handler, stream in self._rerouted:
            try:
                handler.setStream(stream)
            except Exception:
                pass
        self._rerouted.clear()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def _same_stream(a, b) -> bool:
    if a is b:
        return True
    try:
        return a.fileno() == b.fileno()
    except Exception:
        return False
