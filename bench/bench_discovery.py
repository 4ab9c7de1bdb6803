"""Discovery at 20 nodes on one machine: convergence time, and gossip's CPU and memory cost.

Phase 1 (baseline, same run): one node alone; its CPU use over --window seconds.
Phase 2: --nodes nodes in separate processes, node0 the bootstrap of the rest (all started at
once). Measures the time from the last node being ready until every node holds every other
node's record (polled over the records protocol), then each node's CPU use over the same
window and its resident memory. Prints per-node figures and ratios against the baseline.

    .venv/bin/python bench/bench_discovery.py --nodes 20 --window 60 --heartbeat 30
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import NodeHandle  # noqa: E402

from pointillist.network.overlay import open_network  # noqa: E402
from pointillist.network.host import parse_peer_addr  # noqa: E402
from pointillist.protocol.identity import Identity  # noqa: E402

import logging  # noqa: E402

logging.getLogger("libp2p").setLevel(logging.WARNING)  # polling would otherwise log every dial

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_share(nodes: list[NodeHandle], window: float) -> list[float]:
    before = [cpu_seconds(n.proc.pid) for n in nodes]
    time.sleep(window)
    return [(cpu_seconds(n.proc.pid) - b) / window for n, b in zip(nodes, before)]


async def held_counts(addrs: list[str]) -> list[int]:
    counts = []
    async with open_network(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], serve_dht=False) as net:
        for addr in addrs:
            peer = parse_peer_addr(addr)
            net.directory._records.clear()
            net._raw.clear()
            try:
                await net.host.connect(peer)
                await net.fetch_records(peer.peer_id)
                counts.append(len(net.directory))
            except Exception:
                counts.append(0)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--heartbeat", type=float, default=30)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pointillist-bench-disc-"))
    hb = ["--heartbeat", str(args.heartbeat)]

    alone = NodeHandle(root / "alone", hb).wait_ready()
    time.sleep(5)
    base_cpu = cpu_share([alone], args.window)[0]
    base_rss = rss_mib(alone.proc.pid)
    alone.stop()

    boot = NodeHandle(root / "node0", hb).wait_ready()
    nodes = [boot] + [NodeHandle(root / f"node{i}", [*hb, "--bootstrap", boot.addr]) for i in range(1, args.nodes)]
    started = time.monotonic()
    for n in nodes[1:]:
        n.wait_ready()
    ready = time.monotonic()
    addrs = [n.addr for n in nodes]
    while True:
        counts = trio.run(held_counts, addrs)
        if min(counts) >= args.nodes:
            break
        if time.monotonic() - ready > 600:
            print(f"did not converge: counts {counts}")
            break
        time.sleep(1)
    converged = time.monotonic() - ready
    shares = cpu_share(nodes, args.window)
    rss = [rss_mib(n.proc.pid) for n in nodes]
    for n in nodes:
        n.stop()

    cpu = statistics.median(shares)
    print(f"nodes {args.nodes}, heartbeat {args.heartbeat:g} s, window {args.window:g} s, machine cores {os.cpu_count()}")
    print(f"start-up of {args.nodes - 1} joiners (parallel)    {ready - started:8.1f} s")
    print(f"convergence after last node ready        {converged:8.1f} s  (every node holds all {args.nodes} records)")
    print(f"baseline: one node alone, CPU            {base_cpu * 100:8.2f} %   RSS {base_rss:.0f} MiB")
    print(f"in network: CPU per node median          {cpu * 100:8.2f} %   (max {max(shares) * 100:.2f} %)")
    print(f"in network: RSS per node median          {statistics.median(rss):8.0f} MiB (max {max(rss):.0f})")
    print(f"ratio CPU in network / alone             {cpu / max(base_cpu, 1e-9):8.2f}")
    print(f"ratio RSS in network / alone             {statistics.median(rss) / base_rss:8.2f}")


if __name__ == "__main__":
    main()
