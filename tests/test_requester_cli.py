"""No job is lost from the user's sight, tried as a user would: real ``pointillist`` processes
against a real node process on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from support import cli_env, run_cli

pytestmark = pytest.mark.integration
SMALL = ["--size", "64", "--steps", "4", "--quiet"]
#: A job long enough on the tiny model to interrupt while it runs (a few seconds on 2 cores).
SLOW = ["--size", "256", "--steps", "150"]


def spawn(args: list[str], home) -> subprocess.Popen:
    """A CLI process that gets SIGINT as a terminal's Ctrl-C would deliver it: whatever the test
    runner's own disposition (a background CI job ignores SIGINT, and children inherit that)."""
    return subprocess.Popen([sys.executable, "-m", "pointillist.cli", *args], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_until(stream, pattern: str, timeout_s: float = 120) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"never saw {pattern!r}; got {seen!r}")


def interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_submit_prints_the_job_id_when_accepted_and_in_json(shared_node, tmp_path):
    out = tmp_path / "a.png"
    r = run_cli(["submit", "a fox", "--peer", shared_node.addr, *SMALL, "--out", str(out), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["accepted", "done"]
    assert events[0]["jobId"] == events[1]["jobId"] and events[0]["node"] == shared_node.peer_id
    assert events[1]["out"] == str(out) and events[1]["verified"] is True
    verified = run_cli(["verify", str(out), "--json"], tmp_path)
    assert json.loads(verified.stdout)["job"]["jobId"] == events[0]["jobId"]


def test_out_is_checked_before_anything_is_sent(shared_node, tmp_path):
    jobs_before = shared_node.log().count("accepted (")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for target, message in ((tmp_path / "missing" / "x.png", "does not exist"), (blocker / "x.png", "cannot write")):
        r = run_cli(["submit", "a fox", "--peer", shared_node.addr, *SMALL, "--out", str(target)], tmp_path)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert shared_node.log().count("accepted (") == jobs_before  # the node never heard of them


def test_several_prompts_and_count_share_one_submit(shared_node, tmp_path):
    out = tmp_path / "many.png"
    r = run_cli(["submit", "a fox", "a hen", "-n", "2", "--seed", "5", "--peer", shared_node.addr, *SMALL,
                 "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    written = r.stdout.split()
    assert written == [str(tmp_path / f"many-{i}.png") for i in range(1, 5)]
    seeds = [json.loads(run_cli(["verify", p, "--json"], tmp_path).stdout)["job"]["seed"] for p in written]
    assert seeds == ["5", "6", "5", "6"]


def test_ctrl_c_during_submit_says_how_to_fetch_and_fetch_gets_the_image(shared_node, tmp_path):
    proc = spawn(["submit", "a slow fox", "--peer", shared_node.addr, *SLOW, "--out", str(tmp_path / "x.png")], tmp_path)
    accepted = read_until(proc.stderr, r"job ([0-9a-f]{32}) accepted")
    job_id = re.search(r"job ([0-9a-f]{32}) accepted", accepted).group(1)
    code, err = interrupt(proc)
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"interrupted; 1 accepted job(s) keep running on their nodes, get the images with: "
                         f"pointillist fetch {job_id}"), err
    assert "Traceback" not in err and sum(line.startswith("interrupted") for line in lines) == 1, err
    assert not (tmp_path / "x.png").exists()
    # The journal knows where the job went: no --peer needed; fetch waits while it still runs.
    r = run_cli(["fetch", job_id, "--out", str(tmp_path / "fetched.png"), "--max-wait", "120"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(run_cli(["verify", str(tmp_path / "fetched.png"), "--json"], tmp_path).stdout)["ok"]


def test_ctrl_c_during_peers_is_one_line_and_exit_130(shared_node, tmp_path):
    proc = spawn(["peers", "--bootstrap", shared_node.addr, "--wait", "60"], tmp_path)
    read_until(proc.stderr, "listening for records")
    code, err = interrupt(proc)
    assert code == 130 and err.strip().count("\n") == 0 and err.startswith("interrupted"), err


def test_ctrl_c_during_fetch_is_one_line_and_exit_130(shared_node, tmp_path):
    missing = "0" * 32
    assert run_cli(["keys"], tmp_path).returncode == 0  # fetch signs with the requester's identity
    proc = spawn(["fetch", missing, "--peer", shared_node.addr, "--max-wait", "120"], tmp_path)
    read_until(proc.stderr, "not finished .* yet; waiting")
    code, err = interrupt(proc)
    assert code == 130 and err.strip().count("\n") == 0, err
    assert f"pointillist fetch {missing}" in err


def test_a_short_digest_as_peers_shows_it_selects_the_model(shared_node, tmp_path):
    digest = shared_node.info["models"][0]["digest"]
    out = tmp_path / "short.png"
    r = run_cli(["submit", "a fox", "--bootstrap", shared_node.addr, "--model", digest[:12], *SMALL,
                 "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    job = json.loads(run_cli(["verify", str(out), "--json"], tmp_path).stdout)["job"]
    assert job["model"] == digest  # the signed job names the model exactly, never a prefix


def test_a_named_sampler_runs_on_the_node_and_its_image_verifies(shared_node, tmp_path):
    from pointillist.attestation.png import extract_provenance

    out = tmp_path / "euler-a.png"
    r = run_cli(["submit", "a fox", "--peer", shared_node.addr, *SMALL, "--sampler", "Euler a", "--out", str(out)],
                tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(run_cli(["verify", str(out), "--json"], tmp_path).stdout)
    assert report["ok"] and report["job"]["sampler"] == "Euler a", report
    assert "Sampler: Euler a," in extract_provenance(out.read_bytes()).parameters


def test_a_sampler_the_node_cannot_run_is_refused_in_one_line(shared_node, tmp_path):
    # DPM++ SDE needs torchsde, which Pointillist does not install: the node refuses it.
    r = run_cli(["submit", "a fox", "--peer", shared_node.addr, *SMALL, "--sampler", "DPM++ SDE Karras",
                 "--out", str(tmp_path / "x.png")], tmp_path)
    assert r.returncode != 0 and "torchsde" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()
