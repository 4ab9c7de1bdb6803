"""What a ``pointillist submit`` process costs against the least a libp2p client process can.

One run starts a node (embedded tiny model, no rate limit) and an echo host, each in its own
process, then measures whole processes, interleaved run by run so that load from elsewhere falls
on all alike:

  bare      a minimal py-libp2p client process: import libp2p, dial the echo host (TCP + Noise +
            yamux), send a job-sized frame, read a reply as large as the PNG, exit
  submit    ``pointillist submit --peer NODE`` of a 64x64, 4-step job: sign, send, generate on
            the node (~50 ms), verify, write the PNG, exit
  submit8   ``pointillist submit -n 8`` (eight jobs over one connection), per image

and prints medians and the ratios submit / bare (goal <= 1.3) and submit8-per-image / submit.

    .venv/bin/python bench/bench_submit.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_children import serve_until_signalled, wait_json

ECHO_PROTOCOL = "/pointillist/bench-echo/1.0.0"
HERE = Path(__file__).resolve()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--echo-server", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bare-client", nargs=2, metavar=("ADDR", "REPLY_BYTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        return _run_echo_server(args.echo_server)
    if args.bare_client:
        return _run_bare_client(args.bare_client[0], int(args.bare_client[1]))

    tmp = Path(tempfile.mkdtemp(prefix="pointillist-bench-submit-"))
    env = {**os.environ, "POINTILLIST_HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    policy = tmp / "policy.toml"
    policy.write_text("[requesters]\njobs_per_minute = 1000000\nburst = 1000000\n[limits]\nqueue_size = 16\n")
    node = subprocess.Popen([sys.executable, "-m", "pointillist.cli", "node", "start", "--policy", str(policy),
                             "--ready-file", str(tmp / "node.json")], env={**env, "POINTILLIST_HOME": str(tmp / "node")},
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "node.log", "wb"))
    echo = subprocess.Popen([sys.executable, str(HERE), "--echo-server", str(tmp / "echo.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "echo.log", "wb"))
    try:
        node_info = wait_json(tmp / "node.json", node)
        echo_info = wait_json(tmp / "echo.json", echo)
        results = _measure(args, env, tmp, node_info["addrs"][0], echo_info["addrs"][0])
    finally:
        for p in (node, echo):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    _report(args, *results)


def _measure(args, env, tmp: Path, node_addr: str, echo_addr: str):
    submit = [sys.executable, "-m", "pointillist.cli", "submit", "a lighthouse", "--peer", node_addr,
              "--size", str(args.size), "--steps", str(args.steps), "--seed", "1", "--quiet", "--force"]
    png_bytes = 0
    bare, single, eight = [], [], []
    for i in range(args.runs + 1):  # the first round warms caches and the node
        t = _timed(submit + ["--out", str(tmp / "one.png")], env)
        png_bytes = (tmp / "one.png").stat().st_size
        b = _timed([sys.executable, str(HERE), "--bare-client", echo_addr, str(png_bytes)], env)
        e = _timed(submit + ["-n", "8", "--out", str(tmp / "eight.png")], env)
        if i:
            single.append(t)
            bare.append(b)
            eight.append(e / 8)
    return bare, single, eight, png_bytes


def _timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{cmd[3:5]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def _report(args, bare, single, eight, png_bytes) -> None:
    b, s, e = (statistics.median(x) for x in (bare, single, eight))
    print(f"job: {args.size}x{args.size}, {args.steps} steps, result PNG {png_bytes} bytes, {args.runs} runs")
    print(f"bare libp2p client process       median {b * 1000:7.0f} ms  (min {min(bare) * 1000:.0f})")
    print(f"submit process                   median {s * 1000:7.0f} ms  (min {min(single) * 1000:.0f})")
    print(f"submit -n 8, per image          median {e * 1000:7.0f} ms  (min {min(eight) * 1000:.0f})")
    print(f"ratio submit / bare client              {s / b:7.2f}   (goal <= 1.3)")
    print(f"ratio submit -n 8 per image / submit    {e / s:7.2f}")


# ---- the two helper processes -------------------------------------------------------------------


def _run_echo_server(ready: Path) -> None:
    import trio

    async def handler(stream):
        header = await stream.read(8)  # request length, reply length
        want, reply = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
        while want > 0:
            want -= len(await stream.read(want))
        await stream.write(os.urandom(reply))
        await stream.close()

    trio.run(serve_until_signalled, ECHO_PROTOCOL, handler, ready)


def _run_bare_client(addr: str, reply_bytes: int) -> None:
    """The least a client process does for one round trip: no schemas, no signing, no files."""
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.peer.peerinfo import info_from_p2p_addr

    request = os.urandom(1200)  # about a signed job's frame

    async def once():
        host = new_host(muxer_preference="YAMUX")
        peer = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await host.connect(peer)
            stream = await host.new_stream(peer.peer_id, [ECHO_PROTOCOL])
            await stream.write(len(request).to_bytes(4, "big") + reply_bytes.to_bytes(4, "big") + request)
            got = 0
            while got < reply_bytes:
                got += len(await stream.read(reply_bytes - got))
            await stream.close()

    trio.run(once)


if __name__ == "__main__":
    main()
