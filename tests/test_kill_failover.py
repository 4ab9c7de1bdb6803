"""Kill test: the serving node is SIGKILLed at a random point of its job, trial after trial;
every job must still end with a verified image from another node."""

from __future__ import annotations

import json
import os
import random
import time

import pytest
import trio

from pointillist.protocol.identity import Identity
from pointillist.protocol.settings import GenerationSettings
from pointillist.requester import Hooks, JobSpec, Requester
from support import REPO, NodeHandle

pytestmark = pytest.mark.integration
TRIALS = int(os.environ.get("POINTILLIST_KILL_TRIALS", "20"))
FAST = ["--heartbeat", "1", "--record-ttl", "5"]
STEPS, SIZE = 24, 256  # ~1 s on the tiny model: sampled progress frames (0.2 s apart) fall mid-job


def test_killed_nodes_jobs_finish_elsewhere(tmp_path):
    rng = random.Random(20261122)
    boot = NodeHandle(tmp_path / "node0", FAST).wait_ready()
    nodes = {boot.peer_id: boot}
    for i in (1, 2):
        n = NodeHandle(tmp_path / f"node{i}", [*FAST, "--bootstrap", boot.addr]).wait_ready()
        nodes[n.peer_id] = n
    homes = {pid: n.home for pid, n in nodes.items()}
    requester = Identity.generate()
    outcomes = []
    try:
        for trial in range(TRIALS):
            # at most one node may be down at a time: wait for the last victim to be back
            for n in nodes.values():
                if not n.info:
                    n.wait_ready()
            kill_point = rng.randrange(-2, STEPS)
            outcome = trio.run(_one_trial, nodes, requester, kill_point, rng.randrange(2**32))
            outcome.update(trial=trial, kill_point=kill_point)
            outcomes.append(outcome)
            victim = outcome["killed"]
            if victim:
                live = next(n for pid, n in nodes.items() if pid != victim and n.alive())
                nodes[victim] = NodeHandle(homes[victim], [*FAST, "--bootstrap", live.addr])  # restarts in background
                nodes[victim].info = {}
    finally:
        for n in nodes.values():
            n.stop()
    (REPO / "docs" / "results").mkdir(exist_ok=True)
    if os.environ.get("POINTILLIST_RECORD_RESULTS"):
        (REPO / "docs" / "results" / "kill-test.json").write_text(json.dumps(outcomes, indent=1))
    assert len(outcomes) == TRIALS
    assert all(o["killed"] is not None for o in outcomes), outcomes  # every trial killed its node
    assert all(o["verified"] for o in outcomes), outcomes
    # A node killed while still generating cannot have signed the image; one killed after its last
    # step may have sent the finished image first, and then its image is the one that verified.
    assert all(o["signed_by"] != o["killed"] for o in outcomes if not o["after_last_step"]), outcomes
    assert sum(not o["after_last_step"] for o in outcomes) >= len(outcomes) // 3, outcomes  # most kill mid-job


async def _one_trial(nodes, requester, kill_point, seed):
    """``kill_point``: -2 kill as the attempt starts, -1 once the node accepted, k >= 0 once the
    node reported step k or later (progress is sampled, so the first frame at or past k)."""
    from pointillist.protocol.messages import AcceptedMessage, ProgressMessage

    state = {"target": None, "killed": None, "after_last_step": False}

    def kill():
        if state["killed"] is None:
            nodes[state["target"]].proc.kill()
            state["killed"] = state["target"]

    def on_attempt(node):
        if state["target"] is None:
            state["target"] = node.peer_id
            if kill_point == -2:
                kill()

    def on_event(event):
        if state["killed"] is not None:
            return
        if isinstance(event, AcceptedMessage) and kill_point == -1:
            kill()
        elif isinstance(event, ProgressMessage) and event.step >= kill_point:  # frames skip steps (≤ 5/s)
            # The last step's frame comes right before the result, which may already be on its way.
            state["after_last_step"] = event.step == event.total
            kill()

    spec = JobSpec("tiny-sd", GenerationSettings(prompt="kill test", negative_prompt="", seed=seed, steps=STEPS,
                                                 guidance=7.5, width=SIZE, height=SIZE))
    bootstrap = [n.addr for n in nodes.values() if n.info and n.alive()]
    async with Requester(requester, bootstrap=bootstrap).open() as session:
        outcome = await session.submit(spec, Hooks(on_attempt=on_attempt, on_event=on_event))
    png, report, request = outcome.png, outcome.report, outcome.request
    return {"verified": report.ok, "signed_by": request.node, "killed": state["killed"],
            "after_last_step": state["after_last_step"],
            "first_choice": state["target"]}
