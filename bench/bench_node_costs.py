"""A job's cost on the node against how much the node holds, and against the number of steps
(issue 9, "costs flat in use"). In process, no libp2p: a ``JobService`` answers over an in-memory
stream (as tests/test_admission.py drives it), with a real state store (node/state_store.py) in
a temporary folder, and the embedded tiny model.

Part 1, history. One service per node state, all open side by side, jobs interleaved round by
round (so load from elsewhere falls on all alike), 64x64, --steps steps:

  empty            a fresh state store
  results 2,000    2,000 stored results (inserted directly; PNG sizes around this job's result)
  results 20,000   20,000 stored results
  replay 1,000     1,000 remembered job ids (2,000 keys, live)
  replay 100,000   100,000 remembered job ids

Each state is closed and re-opened after filling, so the node reads it the way it does at start
(running totals, replay cache from disk), and its background maintenance runs throughout. A
job's time is from sending the signed job to receiving the result frame; printed as medians
and as ratios against "empty" (goal: at most 1.1).

Part 2, steps. On an empty node, per round and for each of 4, 20 and 50 steps (order rotated):
a bare pipeline call (``LoadedModel.generate``, same settings, in this thread) and the same job
through the service (order alternating); medians over rounds. Prints overhead(50) / overhead(4)
(goal: at most 1.2). The overhead is the job's time minus the pipeline call inside that same job
(timed around ``LoadedModel.generate``, the service's ``on_step`` callbacks counted as overhead):
a separate bare call varies by more than the overhead on a shared machine, so the difference
against it is printed too but is noise at 50 steps.

Part 3, pruning: how long one bounded pass holds the database.

    .venv/bin/python bench/bench_node_costs.py --rounds 31 --step-rounds 31
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import trio
import trio.testing

SIZE = 64


class MemoryStream:
    """The part of a libp2p stream the job service uses, over trio's in-memory stream pair."""

    def __init__(self, side) -> None:
        self.side = side
        self.muxed_conn = SimpleNamespace(peer_id="bench-peer")

    async def read(self, n: int | None = None) -> bytes:
        return await self.side.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.side.send_all(data)

    async def close(self) -> None:
        await self.side.send_eof()

    async def reset(self) -> None:
        await self.side.aclose()


class TimedModel:
    """The loaded model, timing its own pipeline call inside each job (``last``): the pipeline's
    time without the service's ``on_step`` callbacks, which count as node overhead."""

    def __init__(self, model) -> None:
        self.model, self.name, self.digest = model, model.name, model.digest
        self.last = 0.0

    def generate(self, params, on_step=None):
        in_callback = 0.0

        def timed(k: int, n: int) -> None:
            nonlocal in_callback
            t = time.perf_counter()
            try:
                on_step(k, n)
            finally:
                in_callback += time.perf_counter() - t

        t = time.perf_counter()
        result = self.model.generate(params, timed if on_step else None)
        self.last = time.perf_counter() - t - in_callback
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=31, help="jobs per node state in part 1")
    ap.add_argument("--step-rounds", type=int, default=31, help="rounds of part 2")
    ap.add_argument("--steps", type=int, default=4, help="steps of part 1's jobs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a 2-core node uses 1)")
    args = ap.parse_args()

    import torch

    from pointillist.node.loading import embedded_model_path, load_model

    torch.set_num_threads(args.threads)
    model = TimedModel(load_model(embedded_model_path()))
    with tempfile.TemporaryDirectory(prefix="pointillist-bench-costs-") as tmp:
        trio.run(run, args, model, Path(tmp))


def make_policy():
    from pointillist.node.policy import Policy, RequesterPolicy

    # No rate limit: this measures cost, not admission. Default result bounds (24 h, 2 GiB).
    return Policy(requesters=RequesterPolicy(jobs_per_minute=10**9, burst=10**9))


def fill(state_dir: Path, results: int, replay_jobs: int, png_size: int, now: float) -> None:
    """Insert straight into the database: a node that has held this much for a while."""
    from pointillist.node.state_store import open_node_state

    state = open_node_state(state_dir, make_policy())
    rng = random.Random(1)
    with state.db.transaction() as conn:
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", (
            (f"{rng.getrandbits(128):032x}", "12D3KooWbenchrequester", now - rng.uniform(0, 3600),
             len(png), png)
            for png in (os.urandom(int(png_size * rng.uniform(0.8, 1.2))) for _ in range(results))))
        conn.executemany("INSERT INTO replay VALUES (?, ?)", (
            (f"{kind}:{rng.getrandbits(128):032x}", int(now) + 3000)
            for _ in range(replay_jobs) for kind in ("id", "nonce")))
    state.close()


async def one_job(service, frame: bytes) -> tuple[float, bytes]:
    from pointillist.protocol import framing

    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        stream = MemoryStream(ours)
        t = time.perf_counter()
        await ours.send_all(frame)
        while True:
            reply = await framing.read_frame(stream, framing.MAX_REPLY_FRAME)
            if reply["t"] in ("result", "error"):
                break
        elapsed = time.perf_counter() - t
    if reply["t"] != "result":
        raise SystemExit(f"job failed: {reply}")
    return elapsed, reply["png"]


async def run(args, model, tmp: Path) -> None:
    from pointillist.node.service import JobService, ServedModels
    from pointillist.node.state_store import open_node_state
    from pointillist.protocol import framing
    from pointillist.protocol.identity import Identity
    from pointillist.protocol.jobs import new_job_request, sign_job
    from pointillist.protocol.messages import JobMessage, WireEnvelope, to_wire

    node, requester = Identity.generate(), Identity.generate()

    def job(steps: int):
        request = new_job_request(node=node.peer_id, model=model.name, prompt="a lighthouse", seed=1,
                                  steps=steps, guidance=7.5, width=SIZE, height=SIZE, now=int(time.time()))
        frame = framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(
            sign_job(requester, request)))))
        return request, frame

    opened = []

    def service_for(state_dir: Path):
        # Room for 100,000 remembered jobs plus the ones measured (the default holds 100,000).
        state = open_node_state(state_dir, make_policy(), replay_max_entries=2 * (100_000 + 10_000))
        opened.append(state)
        return state, JobService(node, ServedModels([model]), policy=make_policy(), replay=state.replay,
                                 results=state.results, save_replay=state.save_replay)

    async with trio.open_nursery() as nursery:
        # Warm-up (and this job's PNG size, for realistic fills).
        _, warm = service_for(tmp / "warm")
        for _ in range(3):
            _, png = await one_job(warm, job(args.steps)[1])
        png_size = len(png)

        scenarios = {"empty": (0, 0), "results 2,000": (2_000, 0), "results 20,000": (20_000, 0),
                     "replay 1,000": (0, 1_000), "replay 100,000": (0, 100_000)}
        services, opens = {}, {}
        for name, (results, replay_jobs) in scenarios.items():
            state_dir = tmp / name.replace(" ", "-").replace(",", "")
            t = time.perf_counter()
            fill(state_dir, results, replay_jobs, png_size, time.time())
            filled = time.perf_counter() - t
            t = time.perf_counter()
            state, services[name] = service_for(state_dir)
            opens[name] = (filled, time.perf_counter() - t, state.stored(), len(state.replay))
            nursery.start_soon(state.maintain)

        print(f"job: {SIZE}x{SIZE}, {args.steps} steps, {args.threads} torch threads, result PNG {png_size} bytes; "
              f"{args.rounds} jobs per state, interleaved")
        print(f"{'state':16} {'fill':>8} {'open':>8} {'results':>8} {'MB':>7} {'replay keys':>11}")
        for name, (filled, opened_s, (count, size), keys) in opens.items():
            print(f"{name:16} {filled:7.1f}s {opened_s * 1000:6.0f}ms {count:8} {size / 2**20:7.1f} {keys:11}")

        times = {name: [] for name in services}
        overheads = {name: [] for name in services}
        for r in range(args.rounds + 1):  # round 0 warms each state
            order = list(services)
            order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
            for name in order:
                elapsed, _ = await one_job(services[name], job(args.steps)[1])
                if r:
                    times[name].append(elapsed)
                    overheads[name].append(elapsed - model.last)
        base = statistics.median(times["empty"])
        base_overhead = statistics.median(overheads["empty"])
        print()
        print(f"{'state':16} {'job':>9} {'min':>9} {'ratio':>7} {'overhead':>9} {'ratio':>7}")
        for name, ts in times.items():
            m, o = statistics.median(ts), statistics.median(overheads[name])
            print(f"{name:16} {m * 1000:7.1f}ms {min(ts) * 1000:7.1f}ms {m / base:7.3f} "
                  f"{o * 1000:7.2f}ms {o / base_overhead:7.3f}")
        print("job: send to result frame, median; overhead: the job minus its own pipeline call, median; "
              "ratios against empty")
        worst = max(statistics.median(ts) for ts in times.values()) / base
        print(f"worst ratio {worst:.3f} (goal <= 1.1)")

        # Part 2: overhead against a bare pipeline call, by steps.
        from pointillist.protocol.settings import GenerationSettings

        empty = services["empty"]
        step_counts = (4, 20, 50)
        samples = {steps: {"bare": [], "job": [], "vs bare": [], "in job": []} for steps in step_counts}
        for r in range(args.step_rounds + 1):  # round 0 warms up
            # Every step count in every round, order rotated, and bare/job order alternating:
            # a machine that gets slower or faster during the run affects all alike.
            order = step_counts[r % 3:] + step_counts[:r % 3]
            for steps in order:
                params = GenerationSettings(prompt="a lighthouse", negative_prompt="", seed=1, steps=steps,
                                            guidance=7.5, width=SIZE, height=SIZE)
                _, frame = job(steps)
                if r % 2:
                    through, _ = await one_job(empty, frame)
                    inside = model.last
                t = time.perf_counter()
                model.model.generate(params)
                bare = time.perf_counter() - t
                if not r % 2:
                    through, _ = await one_job(empty, frame)
                    inside = model.last
                if r:
                    got = samples[steps]
                    got["bare"].append(bare)
                    got["job"].append(through)
                    got["vs bare"].append(through - bare)
                    got["in job"].append(through - inside)
        med = {steps: {k: statistics.median(v) for k, v in got.items()} for steps, got in samples.items()}
        overhead = {steps: med[steps]["in job"] for steps in step_counts}
        versus_bare = {steps: med[steps]["vs bare"] for steps in step_counts}
        bare_med = {steps: med[steps]["bare"] for steps in step_counts}
        node_med = {steps: med[steps]["job"] for steps in step_counts}
        print()
        print(f"{args.step_rounds} rounds, each with a bare call and a job through the service at every step count")
        print(f"{'steps':>5} {'bare':>9} {'service':>9} {'overhead':>9} {'vs bare':>9}")
        for steps in overhead:
            print(f"{steps:5} {bare_med[steps] * 1000:7.1f}ms {node_med[steps] * 1000:7.1f}ms "
                  f"{overhead[steps] * 1000:7.2f}ms {versus_bare[steps] * 1000:7.1f}ms")
        print("overhead: median of (job - its own pipeline call); vs bare: median of per-round (job - bare call)")
        print(f"overhead(50) / overhead(4) = {overhead[50] / overhead[4]:.3f} (goal <= 1.2); "
              f"vs bare: {versus_bare[50] / versus_bare[4]:.3f}")

        # Part 3: what one pruning pass holds the database for (puts, fetches and replay writes
        # wait on it, in worker threads; the trio loop never does).
        print()
        for size in (png_size, 400_000):  # this job's result; a 512x512 result
            n = int(60e6 / size)
            prune_dir = tmp / f"prune-{size}"
            fill(prune_dir, n, 0, size, time.time() - 3 * 86400)  # about 60 MB, all expired
            state, _ = service_for(prune_dir)
            passes = []
            while True:
                t = time.perf_counter()
                more = state.prune_pass()
                passes.append(time.perf_counter() - t)
                if not more:
                    break
            print(f"pruning {n:,} expired results of ~{size / 1000:.0f} KB: {len(passes)} passes; "
                  f"median {statistics.median(passes) * 1000:.1f} ms, longest {max(passes) * 1000:.1f} ms")
        nursery.cancel_scope.cancel()
    for state in opened:
        state.close()


if __name__ == "__main__":
    main()
