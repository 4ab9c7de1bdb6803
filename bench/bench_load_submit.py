"""Many ``pointillist submit`` processes at once against a few nodes through one bootstrap peer.

Starts --nodes node processes (embedded tiny model; the first is everyone's bootstrap peer, queue
--queue), then --requesters concurrent ``submit`` processes, each with its own identity, all
joining through the bootstrap peer. Every process must end with a verified image or an error
that lists its attempts; the bench prints how many ended each way and why, and the wall time.

Issue 7 measured the requester before its rework on 2 cores: 120 processes against 3 nodes gave
115 verified, 4 "no bootstrap peer answered", 1 gave up after 5 busy answers.

    .venv/bin/python bench/bench_load_submit.py --requesters 120
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_children import wait_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requesters", type=int, default=120)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-wait", type=float, default=600)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pointillist-bench-load-"))
    policy = tmp / "policy.toml"
    policy.write_text(f"[limits]\nqueue_size = {args.queue}\n[requesters]\njobs_per_minute = 1000\nburst = 100\n")
    nodes = []
    try:
        boot = _start_node(tmp / "node0", policy, [])
        nodes.append(boot)
        boot_addr = _ready(boot)["addrs"][0]
        for i in range(1, args.nodes):
            nodes.append(_start_node(tmp / f"node{i}", policy, ["--bootstrap", boot_addr]))
        for node in nodes:
            _ready(node)
        start = time.monotonic()
        procs = []
        for i in range(args.requesters):
            home = tmp / f"req{i}"
            home.mkdir()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pointillist.cli", "submit", f"load {i}", "--bootstrap", boot_addr,
                 "--size", str(args.size), "--steps", str(args.steps), "--seed", str(i), "--quiet",
                 "--max-wait", str(args.max_wait), "--out", str(home / "out.png")],
                env={**os.environ, "POINTILLIST_HOME": str(home), "OMP_NUM_THREADS": "1"},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        outcomes = collections.Counter()
        for proc in procs:
            _, err = proc.communicate(timeout=args.max_wait + 120)
            outcomes["verified" if proc.returncode == 0 else _reason(err)] += 1
        elapsed = time.monotonic() - start
    finally:
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.wait(30)
    busy = sum((tmp / f"node{i}" / "node.log").read_text(errors="replace").count("refused (busy)")
               for i in range(args.nodes))
    summary = {"requesters": args.requesters, "nodes": args.nodes, "queue": args.queue,
               "outcomes": dict(outcomes), "busy_answers_logged": busy, "seconds": round(elapsed, 1)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


def _start_node(home: Path, policy: Path, extra: list[str]) -> subprocess.Popen:
    home.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pointillist.cli", "node", "start", "--policy", str(policy),
         "--ready-file", str(home / "ready.json"), *extra],
        env={**os.environ, "POINTILLIST_HOME": str(home)}, stdout=subprocess.DEVNULL,
        stderr=open(home / "node.log", "wb"))
    proc.home = home  # type: ignore[attr-defined]
    return proc


def _ready(proc: subprocess.Popen) -> dict:
    return wait_json(proc.home / "ready.json", proc)  # type: ignore[attr-defined]


def _reason(stderr: str) -> str:
    line = (stderr.strip().splitlines() or ["(no output)"])[-1]
    return re.sub(r"12D3KooW\w+|[0-9a-f]{32}|/ip4/\S+", "…", line)[:160]


if __name__ == "__main__":
    main()
