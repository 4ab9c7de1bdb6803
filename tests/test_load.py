"""Load test: many concurrent requesters against three nodes with small queues, for a bounded
number of jobs. No job is lost (each ends verified, or with an error listing its attempts),
queues never exceed their bound, and "busy" answers are rerouted or retried."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import trio

from pointillist.protocol.identity import Identity
from pointillist.protocol.settings import GenerationSettings
from pointillist.requester import Hooks, JobSpec, NoNodeSucceeded, Requester
from support import REPO, NodeHandle

pytestmark = pytest.mark.integration
REQUESTERS = int(os.environ.get("POINTILLIST_LOAD_REQUESTERS", "12"))
JOBS_EACH = 3
QUEUE = 1  # one waiting behind the running job; a third concurrent job is answered "busy"
STEPS, SIZE = 6, 128


def test_concurrent_requesters_lose_no_job(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[limits]\nqueue_size = {QUEUE}\n[requesters]\njobs_per_minute = 1000\nburst = 100\n")
    args = ["--policy", str(policy), "--heartbeat", "1", "--record-ttl", "10"]
    boot = NodeHandle(tmp_path / "node0", args).wait_ready()
    nodes = [boot] + [NodeHandle(tmp_path / f"node{i}", [*args, "--bootstrap", boot.addr]).wait_ready() for i in (1, 2)]
    outcomes: list[dict] = []
    try:
        start = time.monotonic()
        trio.run(_load, [n.addr for n in nodes], outcomes)
        elapsed = time.monotonic() - start
        logs = [n.log() for n in nodes]
    finally:
        for n in nodes:
            n.stop()

    ahead = [int(x) for log in logs for x in re.findall(r"accepted \((\d+) ahead\)", log)]
    busy = sum(log.count("refused (busy)") for log in logs)
    ok = [o for o in outcomes if o["ok"]]
    summary = {"requesters": REQUESTERS, "jobs": REQUESTERS * JOBS_EACH, "verified": len(ok),
               "failed_with_account": len(outcomes) - len(ok), "busy_answers": busy,
               "jobs_needing_more_than_one_attempt": sum(o["attempts"] > 1 for o in ok),
               "max_queue_ahead": max(ahead), "queue_bound": QUEUE, "seconds": round(elapsed, 1),
               "per_node_jobs": [log.count(" done (") for log in logs]}
    if os.environ.get("POINTILLIST_RECORD_RESULTS"):
        (REPO / "docs" / "results").mkdir(exist_ok=True)
        (REPO / "docs" / "results" / "load-test.json").write_text(json.dumps(summary, indent=1))
    assert len(outcomes) == REQUESTERS * JOBS_EACH, summary  # every job has an outcome
    assert all(o["ok"] or o["error"] for o in outcomes)  # none ends in silence
    assert len(ok) == len(outcomes), (summary, [o for o in outcomes if not o["ok"]])
    assert max(ahead) <= QUEUE, summary
    # Whether the load produced "busy" answers depends on timing (a fast machine may not queue);
    # when it did, those jobs still ended verified (asserted above), which is what matters.


async def _load(addrs: list[str], outcomes: list[dict]) -> None:
    async def requester(index: int) -> None:
        async with Requester(Identity.generate(), bootstrap=addrs).open() as session:
            for job in range(JOBS_EACH):
                attempts = []
                spec = JobSpec("tiny-sd", GenerationSettings(prompt=f"load {index}/{job}", negative_prompt="",
                                                             seed=index * 100 + job, steps=STEPS, guidance=7.5,
                                                             width=SIZE, height=SIZE))
                try:
                    outcome = await session.submit(spec, Hooks(on_attempt=attempts.append))
                    outcomes.append({"ok": outcome.report.ok, "attempts": len(attempts), "error": None})
                except NoNodeSucceeded as exc:
                    outcomes.append({"ok": False, "attempts": len(attempts), "error": str(exc)})

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i in range(REQUESTERS):
                nursery.start_soon(requester, i)
