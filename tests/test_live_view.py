"""The live view of ``pointillist node start`` in a terminal (node/live_view.py). Unit tests render
a scripted NodeStatus to a recording console; the integration test runs a real node in tmux, a real
pseudo-terminal, submits a job with the CLI and reads the screen as the operator would see it.

tmux rather than pexpect + pyte: it is a real terminal that redraws exactly as the operator's
would, ``capture-pane`` gives the screen as text, and it needs no test-only Python dependency.
The test skips, saying why, where tmux is not installed."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
import trio
from rich.console import Console

from pointillist.node.events import JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from pointillist.node.live_view import LiveView, duration, render
from pointillist.node.operator_view import make_output
from pointillist.node.status import NodeStatus, Readings
from pointillist.protocol.errors import ErrorCode

from support import NODE_START_TIMEOUT_S, cli_env, run_cli

PEER = "12D3KooWNodeNodeNodeNodeNodeNodeNodeNodeNodeNodeNodeNo"
REQ = "12D3KooWRequesterRequesterRequesterRequester0042"
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"
DONE, FAILED, RUNNING = "d" * 32, "f" * 32, "a" * 32


def scripted_status() -> tuple[NodeStatus, list[float]]:
    now = [1000.0]
    status = NodeStatus(PEER, [{"name": "tiny-sd", "digest": "6284f5af008435e4" + "0" * 48, "warm": True},
                               {"name": "big-xl", "digest": "77" * 32, "warm": False}],
                        clock=lambda: now[0], wall_clock=lambda: 1_700_000_000.0)
    status.readings = Readings(addrs=lambda: [ADDR], peers=lambda: 3, records_held=lambda: 7,
                               records_rejected=lambda: {"expired": 2}, queue_depth=lambda: 2,
                               stored=lambda: (2, 3 * 1024 * 1024))
    now[0] = 1100.0
    status.observe(JobAccepted(DONE, REQ, REQ, "tiny-sd", 20, 0, at=1100.0))
    status.observe(JobStarted(DONE, 20, at=1100.25))
    status.observe(JobFinished(DONE, REQ, REQ, None, queue_s=0.25, generation_s=4.5, delivery_s=0.0125,
                               steps=20, png_bytes=99, at=1104.8))
    status.observe(JobFinished(FAILED, REQ, REQ, ErrorCode.INTERNAL, queue_s=0.5, generation_s=1.0,
                               delivery_s=0.0, steps=20, at=1106.0))
    status.observe(RequestRefused(REQ, ErrorCode.BUSY, "queue full"))
    status.observe(JobAccepted(RUNNING, REQ, REQ, "tiny-sd", 40, 0, at=1107.0))
    status.observe(JobStarted(RUNNING, 40, at=1108.0))
    status.observe(JobProgress(RUNNING, 10, 40))
    now[0] = 1111.0
    return status, now


def screen(renderable, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_view_shows_identity_models_peers_queue_jobs_errors_results():
    status, _ = scripted_status()
    text = screen(render(status.snapshot()))
    lines = text.splitlines()
    assert re.search(r"pointillist node\s+v\S+\s+·\s+up 1m 51s", lines[0]), lines[0]
    assert f"peer       {PEER}" in text and f"addresses  {ADDR}" in text
    assert re.search(r"tiny-sd\s+6284f5af008435e4\s+warm", text) and re.search(r"big-xl\s+7777777777777777\s+cold", text)
    assert "3 peers connected  ·  7 records held  ·  2 rejected (expired 2)" in text
    assert "1 waiting  ·  accepting" in text  # the running job is not counted as waiting
    assert "served 1  ·  failed 1 (internal 1)  ·  refused 1 (busy 1)  ·  last 4.44 steps/s" in text
    assert "2 stored, 3.0 MiB" in text
    # the job on the GPU, with its progress
    assert f"job {RUNNING}" in text and "running 3.00 s" in text and "step 10/40  25%" in text
    # recent jobs, newest first, with the three durations
    jobs = [line for line in lines if DONE in line or FAILED in line]
    assert FAILED in jobs[0] and DONE in jobs[1], jobs
    assert re.search(r"failed internal\s+500 ms\s+1.00 s\s+0 ms\s+20$", jobs[0].rstrip()), jobs[0]
    assert re.search(r"done\s+250 ms\s+4.50 s\s+12 ms\s+20$", jobs[1].rstrip()), jobs[1]
    assert "12D3Ko…er0042" in jobs[1]  # requesters shortened: every peer ID starts with 12D3KooW
    header = next(line for line in lines if "generation" in line)
    assert header.split() == ["at", "job", "requester", "outcome", "queue", "generation", "delivery", "steps"]
    # recent errors: the failed job and the refusal
    errors = lines[lines.index(next(line for line in lines if line.startswith("recent errors"))):]
    assert any("busy" in line and "queue full" in line for line in errors), errors
    assert any("internal" in line and "job failed" in line for line in errors), errors


def test_an_idle_new_node_and_a_node_shutting_down():
    status = NodeStatus(PEER, [{"name": "tiny-sd", "digest": "ab" * 32, "warm": True}])
    text = screen(render(status.snapshot()))
    assert "current    idle" in text and "served 0  ·  failed 0  ·  refused 0" in text
    assert "recent jobs: none yet" in text and "recent errors: none" in text and "addresses  (none)" in text
    status.readings = Readings(accepting=lambda: False)
    assert "not accepting (shutting down)" in screen(render(status.snapshot()))


def test_a_narrow_terminal_still_shows_the_peer_id_and_the_recent_job():
    status, _ = scripted_status()
    text = screen(render(status.snapshot()), width=80)
    assert PEER in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert any(line.lstrip().split()[1].startswith("dddddd") for line in text.splitlines()
               if "done" in line), text  # the job id is cut with an ellipsis, its start kept


def test_a_short_terminal_keeps_the_lists_short():
    status, now = scripted_status()
    for i in range(10):
        status.observe(JobFinished(f"{i:032x}", REQ, REQ, None, 0.1, 0.2, 0.3, 4))
    tall = screen(render(status.snapshot(), height=60))
    short = screen(render(status.snapshot(), height=24))
    assert len(short.splitlines()) < len(tall.splitlines()) and len(short.splitlines()) <= 28


def test_durations_read_naturally():
    assert [duration(x) for x in (None, 0.0004, 0.25, 4.5, 59.99, 61, 3725)] == [
        "-", "0 ms", "250 ms", "4.50 s", "59.99 s", "1m 01s", "1h 02m 05s"]


def test_live_view_task_draws_logs_above_and_leaves_a_final_view(monkeypatch):
    status, now = scripted_status()
    out = io.StringIO()
    console = Console(file=out, width=120, height=40, force_terminal=True, color_system=None)
    root = logging.getLogger()
    original_stderr = sys.stderr
    handler = logging.StreamHandler(sys.stderr)  # what cli.main configures for a node
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    view = LiveView(status, console=console, refresh_s=0.01)

    async def shown(text: str) -> None:
        with trio.fail_after(20):  # a deadline, not a fixed wait: CI is slow
            while text not in out.getvalue():
                await trio.sleep(0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(view.run)
            await shown("step 10/40")
            assert sys.stderr is not original_stderr  # written above the view while it is up
            logging.getLogger("pointillist.node").warning("a line above the view")
            status.observe(JobProgress(RUNNING, 30, 40))
            await shown("step 30/40  75%")
            status.observe(JobFinished(RUNNING, REQ, REQ, None, 1.0, 2.0, 0.5, 40))
            await shown("served 2")
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sys.stderr is original_stderr and handler.stream is original_stderr  # given back
    written = out.getvalue()
    assert "WARNING a line above the view" in written
    assert "step 30/40  75%" in written
    assert "\x1b[?25h" in written  # the cursor is shown again
    final = written[written.rindex("pointillist node"):]  # the last drawing stays on the screen
    assert "served 2" in final and RUNNING in final and "current    idle" in final


def test_live_to_a_file_writes_the_last_view_once_at_exit(monkeypatch):
    status, _ = scripted_status()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    out = io.StringIO()
    view = LiveView(status, console=Console(file=out, width=120, height=40), refresh_s=0.01)

    async def main():
        with trio.move_on_after(0.1):
            await view.run()

    trio.run(main)
    text = out.getvalue()
    assert text.count("pointillist node") == 1 and text.endswith("\n") and "\x1b[" not in text
    assert "served 1" in text and "step 10/40" in text


def test_a_terminal_that_fails_stops_the_view_not_the_node(monkeypatch):
    class Gone(io.StringIO):
        def write(self, s):
            raise OSError(5, "Input/output error")

    status, _ = scripted_status()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    view = LiveView(status, console=Console(file=Gone(), force_terminal=True, width=100, height=30), refresh_s=0.01)

    async def main():
        with trio.move_on_after(0.1) as scope:
            await view.run()  # goes on sleeping: the node keeps serving
        assert scope.cancelled_caught

    original_stderr = sys.stderr
    trio.run(main)
    assert sys.stderr is original_stderr


def test_make_output_gives_the_live_view_when_live(monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    assert isinstance(make_output(True, "json", NodeStatus(PEER, []), None), LiveView)


# ---- a real node in a real terminal -------------------------------------------------------------

def tmux(*args: str, socket: str) -> subprocess.CompletedProcess:
    """tmux on a server of its own (``-L``); ``-u``: UTF-8 whatever the locale (CI may set none)."""
    return subprocess.run(["tmux", "-u", "-L", socket, *args], capture_output=True, timeout=30,
                          encoding="utf-8", errors="replace")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: it is the pseudo-terminal "
                    "this test reads the live view from (apt-get install tmux)")
def test_live_view_in_a_terminal_after_a_job(tmp_path):
    home = tmp_path / "node"
    home.mkdir()
    ready = home / "ready.json"
    socket = f"pointillist-test-{os.getpid()}-{time.monotonic_ns()}"
    env = cli_env(home)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
    command = (f"env -i {exports} TERM=screen {shlex.quote(sys.executable)} -m pointillist.cli node start "
               f"--ready-file {shlex.quote(str(ready))}")  # no --live: a terminal gets the view by default
    # A server of its own with only this configuration: the screen stays when the node exits.
    conf = tmp_path / "tmux.conf"
    conf.write_text("set-option -g remain-on-exit on\n")
    started = tmux("-f", str(conf), "new-session", "-d", "-x", "150", "-y", "50", "-s", "node", command,
                   socket=socket)
    assert started.returncode == 0, started.stderr
    try:
        def pane() -> str:
            return tmux("capture-pane", "-p", "-t", "node", socket=socket).stdout

        def dead() -> bool:
            return tmux("display-message", "-p", "-t", "node", "#{pane_dead}", socket=socket).stdout.strip() == "1"

        def wait_screen(condition, timeout_s: float, what: str) -> str:
            deadline = time.monotonic() + timeout_s
            text = ""
            while time.monotonic() < deadline:
                text = pane()
                if condition(text):
                    return text
                if dead():
                    raise AssertionError(f"the node exited before the screen showed {what}:\n{text}")
                time.sleep(0.1)
            raise AssertionError(f"the screen never showed {what}:\n{text}")

        wait_screen(lambda _: ready.exists(), NODE_START_TIMEOUT_S, "a serving node")
        info = json.loads(ready.read_text())
        peer_id, addr = info["peer_id"], info["addrs"][0]
        first = wait_screen(lambda s: "pointillist node" in s and "served 0" in s, 30, "the view")
        assert f"peer       {peer_id}" in first and addr in first and "recent jobs: none yet" in first

        # A job long enough to be seen running: the current job and its step bar.
        slow = subprocess.Popen([sys.executable, "-m", "pointillist.cli", "submit", "a slow fox", "--peer", addr,
                                 "--size", "256", "--steps", "150", "--quiet", "--json",
                                 "--out", str(tmp_path / "slow.png")],
                                env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            running = wait_screen(lambda s: re.search(r"step [1-9]\d*/150", s) or "served 1" in s, 240,
                                  "the running job")
            out, err = slow.communicate(timeout=300)
        finally:
            if slow.poll() is None:
                slow.kill()
                slow.wait()
        assert slow.returncode == 0, err
        slow_id = json.loads(out.splitlines()[0])["jobId"]
        assert re.search(rf"current\s+job {slow_id}", running) and "━" in running, running

        # One small job more, then the screen as the operator sees it after it.
        r = run_cli(["submit", "a fox", "--peer", addr, "--size", "64", "--steps", "4", "--quiet",
                     "--out", str(tmp_path / "a.png"), "--json"], tmp_path)
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout.splitlines()[0])["jobId"]
        after = wait_screen(lambda s: "served 2" in s and job_id in s, 30, "the finished job")
        assert f"peer       {peer_id}" in after
        assert "current    idle" in after and "failed 0" in after
        rows = {line.split()[1]: line for line in after.splitlines() if slow_id in line or job_id in line}
        for jid, steps in ((job_id, "4"), (slow_id, "150")):
            cells = rows[jid].split()
            assert cells[3] == "done" and cells[-1] == steps, rows[jid]
            # queue, generation, delivery: each a duration in ms or s
            assert re.fullmatch(r"(\d+ ms|\d+\.\d\d s)( (\d+ ms|\d+\.\d\d s)){2}", " ".join(cells[4:-1])), rows[jid]
        assert "Traceback" not in after

        # Ctrl-C: the last view stays, the node says it stopped, the terminal is usable again.
        tmux("send-keys", "-t", "node", "C-c", socket=socket)
        final = wait_screen(lambda s: "node stopped" in s, 60, "the node stopping")
        assert "received SIGINT, shutting down" in final
        last = final[final.rindex("pointillist node"):]
        assert "served 2" in last and "not accepting (shutting down)" in last and job_id in last
        assert "Traceback" not in final
    finally:
        tmux("kill-server", socket=socket)
