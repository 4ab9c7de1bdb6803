"""``pointillist node status``: the figures of the node running on this machine, asked over its
status protocol and signed with the node's own key (only its operator can read them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..protocol.errors import UsageError

TIMEOUT_S = 10.0


def run_status(key: Path | None, as_json: bool) -> int:
    from ..node.node_file import pid_running, read_node_file
    from ..protocol.keyfile import data_dir, default_key_path, load_identity
    from .interrupt import run_trio

    state_dir = data_dir() / "node"
    try:
        info = read_node_file(state_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the node file: {exc}") from None
    if info is None:
        raise UsageError(f"no node is running here (no node.json in {state_dir}); start one with `pointillist node start`")
    if not pid_running(info.get("pid")):
        raise UsageError(f"the node that wrote {state_dir / 'node.json'} (pid {info.get('pid')}) is no longer running")
    key_path = key or default_key_path()
    if not key_path.exists():
        raise UsageError(f"no identity file at {key_path}: use --key with the file the node runs with")
    identity = load_identity(key_path)
    if identity.peer_id != info["peer_id"]:
        raise UsageError(f"{key_path} is not this node's key (the node is {info['peer_id']}); use --key")
    snapshot = run_trio(_ask, identity, info, interrupted=lambda: "interrupted")
    if as_json:
        json.dump(snapshot, sys.stdout, indent=2)
        print()
    else:
        print_status(snapshot)
    return 0


async def _ask(identity, info: dict) -> dict:
    import time

    import trio

    from ..network.host import connect, open_stream, parse_peer_addr, running_host
    from ..protocol import framing
    from ..protocol.errors import FrameError, JobRejected, RemoteError, TransportError
    from ..protocol.identity import Identity
    from ..protocol.status import MAX_STATUS_FRAME, STATUS_PROTOCOL, parse_status_reply, status_request

    addrs = sorted(info["addrs"], key=lambda a: "/127.0.0.1/" not in a)  # loopback first: same machine
    if not addrs:
        raise UsageError("the node file lists no address")
    peer = parse_peer_addr(addrs[0])
    try:
        # A throwaway connection key: the signature inside the request is what authenticates.
        async with running_host(Identity.generate()) as host:
            with trio.fail_after(TIMEOUT_S):
                await connect(host, peer)
                stream = await open_stream(host, peer.peer_id, STATUS_PROTOCOL)
                await framing.write_frame(stream, status_request(identity, info["peer_id"], time.time()))
                frame = await framing.read_frame(stream, MAX_STATUS_FRAME)
    except trio.TooSlowError:
        raise TransportError(f"the node at {addrs[0]} did not answer within {TIMEOUT_S:.0f} s") from None
    except FrameError as exc:
        raise RemoteError(f"the node sent a bad status reply: {exc}") from None
    except TransportError as exc:
        raise TransportError(f"the node at {addrs[0]} gave no status ({exc}); is it older than this "
                             f"version of pointillist?") from None
    try:
        return parse_status_reply(frame)
    except JobRejected as exc:
        raise RemoteError(f"the node refused the status request ({exc.code}): {exc.message}") from None
    except FrameError as exc:
        raise RemoteError(f"the node sent a bad status reply: {exc}") from None


def print_status(s: dict) -> None:
    """Plain lines: this is for people and for grep; ``--json`` is for scripts."""
    jobs = s["jobs"]
    print(f"node      {s['peerId']}  (pointillist {s['version']}, pid {s['pid']}, up {_duration(s['uptimeS'])})")
    for addr in s["addrs"]:
        print(f"address   {addr}")
    print(f"reachable {s.get('reachability', 'unknown')}")
    for m in s["models"]:
        print(f"model     {m['name']}  {m['digest'][:12]}  {'warm' if m.get('warm') else 'cold'}")
    print(f"peers     {s['peers']}   records held {s['recordsHeld']}   "
          f"accepting {'yes' if s['accepting'] else 'no'}   queue {s['queue']}")
    current = s.get("current")
    if current:
        print(f"running   {current['jobId']}  step {current['step']}/{current['total']}  "
              f"for {current['runningS']:.1f} s")
    print(f"jobs      {jobs['served']} served, {jobs['failed']} failed"
          + "".join(f", {n} {code}" for code, n in sorted(jobs["failedByCode"].items())))
    if s["refusedByCode"]:
        print("refused   " + ", ".join(f"{n} {code}" for code, n in sorted(s["refusedByCode"].items())))
    if s["recordsRejected"]:
        print("records rejected  " + ", ".join(f"{n} {why}" for why, n in sorted(s["recordsRejected"].items())))
    print(f"results   {s['results']['count']} stored, {s['results']['bytes'] / 2**20:.1f} MiB")
    for j in s["recentJobs"][-5:]:
        outcome = "ok" if j["ok"] else j["code"]
        print(f"  job {j['jobId']}  {outcome:<8} queue {j['queueS']:.2f} s  generation {j['generationS']:.2f} s  "
              f"delivery {j['deliveryS']:.2f} s  ({j['steps']} steps)")
    for e in s["recentErrors"][-5:]:
        job = f" job {e['jobId']}" if e.get("jobId") else ""
        print(f"  error {e['code']} from {e['peer'][:20]}{job}: {e['message']}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"
