"""What the network and the attestation cost on top of generation.

One run measures, on this machine, medians over --runs repetitions of the same job
(embedded tiny model unless --model is given):

  direct     a direct pipeline call in this process (LoadedModel.generate), same seed and settings
  e2e        the whole job through a node in its own process: sign, send, queue, generate,
             attest, embed, reply, verify on arrival (one warm libp2p connection)
  libp2p rt  a bare libp2p round trip of the same bytes (job frame out, PNG-sized frame back)
             against an echo host in its own process: TCP + Noise + yamux, no generation

and prints overhead = e2e - direct with ratios against direct and against the bare round trip.
Both node and this process run torch with the same thread count (--threads).

    .venv/bin/python bench/bench_job_overhead.py --runs 7 --steps 4 --size 64
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

import trio
from bench_children import serve_until_signalled, wait_json

ECHO_PROTOCOL = "/pointillist/bench-echo/1.0.0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, help="model folder (default: embedded tiny model)")
    ap.add_argument("--echo-server", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        return trio.run(echo_server, args.echo_server)

    tmp = Path(tempfile.mkdtemp(prefix="pointillist-bench-"))
    env = {**os.environ, "POINTILLIST_HOME": str(tmp / "node"), "OMP_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1"}
    # The node's per-requester rate limit (a burst of 10 by default) would refuse run 11 onwards:
    # this measures overhead, not admission, so the bench node gets a policy without one.
    policy = tmp / "policy.toml"
    policy.write_text("[requesters]\njobs_per_minute = 1000000\nburst = 1000000\n")
    node_cmd = [sys.executable, "-m", "pointillist.cli", "node", "start", "--ready-file", str(tmp / "node.json"),
                "--policy", str(policy)]
    if args.model:
        node_cmd += ["--model", str(args.model)]
    procs = [
        subprocess.Popen(node_cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "node.log", "wb")),
        subprocess.Popen([sys.executable, __file__, "--echo-server", str(tmp / "echo.json")], env=env,
                         stdout=subprocess.DEVNULL, stderr=open(tmp / "echo.log", "wb")),
    ]
    try:
        node = wait_json(tmp / "node.json", procs[0])
        echo = wait_json(tmp / "echo.json", procs[1])
        generate = direct_generator(args)
        direct, e2e, libp2p_rt, png_bytes = trio.run(measure, args, node, echo, generate)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    report(args, direct, e2e, libp2p_rt, png_bytes)


def direct_generator(args):
    """A zero-argument callable running the job's pipeline call in this process."""
    import torch

    from pointillist.node.loading import embedded_model_path, load_model
    from pointillist.protocol.settings import GenerationSettings

    torch.set_num_threads(args.threads)
    model = load_model(args.model or embedded_model_path())
    params = GenerationSettings(prompt="a lighthouse", negative_prompt="", seed=1, steps=args.steps,
                                guidance=7.5, width=args.size, height=args.size)
    return lambda: model.generate(params)


async def measure(args, node: dict, echo: dict, generate):
    # The three measurements are interleaved run by run, so that load from elsewhere on a
    # shared machine falls on all of them alike.
    from pointillist.attestation.verify import verify_image
    from pointillist.requester.libp2p_transport import Libp2pTransport
    from pointillist.requester.transport import NodeAddress, job_deadline_s
    from pointillist.network.host import connect, parse_peer_addr, running_host
    from pointillist.protocol import framing
    from pointillist.protocol.identity import Identity
    from pointillist.protocol.jobs import new_job_request, sign_job
    from pointillist.protocol.messages import JobMessage, WireEnvelope, to_wire

    me = Identity.generate()
    node_peer, echo_peer = parse_peer_addr(node["addrs"][0]), parse_peer_addr(echo["addrs"][0])
    model = node["models"][0]["name"]

    def request():
        return new_job_request(node=node["peer_id"], model=model, prompt="a lighthouse", seed=1,
                               steps=args.steps, guidance=7.5, width=args.size, height=args.size,
                               now=int(time.time()))

    direct, e2e, rt = [], [], []
    async with running_host(me) as host:
        transport = Libp2pTransport(host)
        node_address = NodeAddress(node["peer_id"], node["addrs"][0])
        await connect(host, node_peer)
        await connect(host, echo_peer)
        for i in range(args.runs + 1):  # the first round is a warm-up
            t = time.perf_counter()
            generate()
            t_direct = time.perf_counter() - t

            req = request()
            t = time.perf_counter()
            png = await transport.run_job(node_address, sign_job(me, req), req, None, job_deadline_s(req))
            if not verify_image(png, expect_node=node["peer_id"]).ok:
                raise SystemExit("result did not verify")
            t_e2e = time.perf_counter() - t

            frame = to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(sign_job(me, request()))))
            t = time.perf_counter()
            stream = await host.new_stream(echo_peer.peer_id, [ECHO_PROTOCOL])
            await framing.write_frame(stream, {"job": frame, "reply_bytes": len(png)})
            reply = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
            await stream.close()
            t_rt = time.perf_counter() - t
            assert len(reply["blob"]) == len(png)
            if i:
                direct.append(t_direct)
                e2e.append(t_e2e)
                rt.append(t_rt)
    return direct, e2e, rt, len(png)


async def echo_server(ready: Path) -> None:
    from pointillist.protocol import framing

    async def handler(stream):
        request = await framing.read_frame(stream, framing.MAX_REQUEST_FRAME * 4)
        await framing.write_frame(stream, {"blob": os.urandom(request["reply_bytes"])})
        await stream.close()

    await serve_until_signalled(ECHO_PROTOCOL, handler, ready)


def report(args, direct, e2e, rt, png_bytes) -> None:
    d, e, r = (statistics.median(x) for x in (direct, e2e, rt))
    overhead = e - d
    print(f"job: {args.size}x{args.size}, {args.steps} steps, {args.threads} torch threads, "
          f"{args.runs} runs, result PNG {png_bytes} bytes")
    print(f"direct pipeline call   median {d * 1000:8.1f} ms   (min {min(direct) * 1000:.1f})")
    print(f"end-to-end via node    median {e * 1000:8.1f} ms   (min {min(e2e) * 1000:.1f})")
    print(f"bare libp2p round trip median {r * 1000:8.1f} ms   (min {min(rt) * 1000:.1f})")
    print(f"overhead (e2e - direct)       {overhead * 1000:8.1f} ms")
    print(f"ratio e2e / direct            {e / d:8.3f}")
    print(f"ratio overhead / direct       {overhead / d:8.3f}")
    print(f"ratio overhead / libp2p rt    {overhead / r:8.3f}")


if __name__ == "__main__":
    main()
