"""A job through a relay against the same job direct, and how soon a private node is seen (issue 10).

    sudo .venv/bin/python bench/bench_relay.py [--rounds N]

Builds the NAT topology of tests/netns.py (network namespaces, documentation addresses only, torn
down at the end; needs root and nft) and runs real processes in it:

- a public node P (203.0.113.1, embedded model) that is also the relay and bootstrap peer;
- a home node H behind a symmetric NAT (no hole punch possible), embedded model, reserving a slot
  on P;
- the requester in the public segment, firewalled like a laptop.

Each round submits the same job (embedded model, 64x64, 6 steps; a fresh seed each) once to P
directly and once to H through the relay, alternating which goes first; the ratio relayed/direct
is the cost of the relay (a relayed dial also waits for DCUtR, which cannot succeed here). Then
it starts a second home node behind the port-preserving NAT with nothing configured but the
bootstrap peer, and times from its start to its record carrying a relayed address at P (it must
find out it is private, choose P as its relay and reserve), against the same node's time to its
ready file (model loaded, speed measured). Both are whole-command wall times on a shared machine:
compare only figures of one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

JOB = ["--size", "64", "--steps", "6", "--quiet"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from netns import Unavailable, nat_topology
    from support import NodeHandle, cli_env

    try:
        topology = nat_topology()
        topo = topology.__enter__()
    except Unavailable as exc:
        print(f"skipped: network namespaces unavailable ({exc})")
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    nodes: list[NodeHandle] = []

    def node(ns, name, extra):
        handle = NodeHandle(work / name, extra, launcher=ns.python("-m", "pointillist.cli", "node", "start"))
        nodes.append(handle)
        return handle

    def cli(ns, argv, home):
        started = time.perf_counter()
        done = subprocess.run(ns.python("-m", "pointillist.cli", *argv), env=cli_env(home), capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-500:]}")
        return time.perf_counter() - started, done.stdout

    try:
        public = node(topo.pub, "public", ["--heartbeat", "1", "--listen", f"/ip4/{topo.pub.ip}/tcp/4001"]).wait_ready()
        home = node(topo.home1, "home", ["--heartbeat", "1", "--listen", f"/ip4/{topo.home1.ip}/tcp/4001",
                                         "--relay", public.addr, "--bootstrap", public.addr]).wait_ready()
        circuit = f"{public.addr}/p2p-circuit/p2p/{home.peer_id}"
        times: dict[str, list[float]] = {"direct": [], "relayed": []}
        kinds: dict[str, set] = {"direct": set(), "relayed": set()}
        requester = work / "requester"
        cli(topo.req, ["submit", "warm-up", "--peer", public.addr, *JOB, "--out", str(work / "w.png")], requester)
        for r in range(args.rounds):
            order = [("direct", public.addr), ("relayed", circuit)]
            for kind, addr in order if r % 2 == 0 else order[::-1]:
                took, out = cli(topo.req, ["submit", f"a heron {r}", "--peer", addr, *JOB, "--seed", str(r), "--json",
                                           "--out", str(work / f"{kind}-{r}.png")], requester)
                times[kind].append(took)
                kinds[kind] |= {e.get("connection") for e in map(json.loads, out.splitlines())
                                if e.get("event") == "accepted"}
        # A private node that configures nothing: from its start to its relayed record at P.
        started = time.perf_counter()
        fresh = node(topo.home2, "fresh", ["--heartbeat", "1", "--listen", f"/ip4/{topo.home2.ip}/tcp/4001",
                                           "--bootstrap", public.addr])
        fresh.wait_ready()
        ready_s = time.perf_counter() - started
        seen_s = None
        deadline = time.monotonic() + 120
        while seen_s is None and time.monotonic() < deadline:
            _, out = cli(topo.req, ["peers", "--bootstrap", public.addr, "--wait", "0", "--json"], work / "look")
            record = {r["peerId"]: r for r in json.loads(out or "[]")}.get(fresh.peer_id)
            if record and any("/p2p-circuit" in a for a in record["addrs"]):
                seen_s = time.perf_counter() - started
    finally:
        for handle in reversed(nodes):
            handle.stop()
        topology.__exit__(None, None, None)

    direct, relayed = statistics.median(times["direct"]), statistics.median(times["relayed"])
    from pointillist.node.device_info import cpu_name

    cpu = cpu_name()
    print(f"### Relay vs direct (issue 10)\n\n`bench/bench_relay.py`, {time.strftime('%Y-%m-%d')}, {cpu}, "
          f"Python {platform.python_version()}: `sudo .venv/bin/python bench/bench_relay.py --rounds {args.rounds}`. "
          f"Network namespaces (tests/netns.py), whole `submit` commands, embedded model 64x64, 6 steps.\n")
    print("| path | connection | rounds | median s | min-max s | / direct |")
    print("|---|---|---|---|---|---|")
    for kind, med in (("direct", direct), ("relayed", relayed)):
        seen = ", ".join(sorted(k or "?" for k in kinds[kind]))
        print(f"| {kind} | {seen} | {len(times[kind])} | {med:.2f} | {min(times[kind]):.2f}-{max(times[kind]):.2f} "
              f"| {med / direct:.2f} |")
    print(f"\nA private node configured with a bootstrap peer only: ready file after {ready_s:.1f} s (model "
          f"loaded, speed measured); its record with a relayed address seen at the bootstrap after "
          + (f"{seen_s:.1f} s ({seen_s - ready_s:.1f} s after ready)." if seen_s else "more than 120 s (not seen)."))
    return 0 if seen_s else 1


if __name__ == "__main__":
    sys.exit(main())
