"""A real node in its own process; the real CLI and a raw libp2p client talk to it."""

from __future__ import annotations

import json
import time

import pytest
import trio

from pointillist.network.host import parse_peer_addr, running_host
from pointillist.protocol import framing
from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import JOB_PAYLOAD_TYPE, new_job_request, sign_job
from pointillist.protocol.messages import JOB_PROTOCOL, JobMessage, WireEnvelope, to_wire

from support import exchange, job_frame, run_cli

pytestmark = pytest.mark.integration
REQUESTER = Identity.generate()


def job_for(node, **over):
    args = dict(node=node.peer_id, model="tiny-sd", prompt="a red fox", seed=1234, steps=3,
                guidance=7.5, width=64, height=64, now=int(time.time()))
    args.update(over)
    return new_job_request(**args)


def test_cli_submit_then_verify(shared_node, tmp_path):
    out = tmp_path / "fox.png"
    submit = run_cli(["submit", "a red fox", "--peer", shared_node.addr, "--steps", "3", "--size", "64x64",
                      "--seed", "1234", "--out", str(out), "--quiet"], tmp_path / "requester")
    assert submit.returncode == 0, submit.stderr + shared_node.log()
    assert out.exists() and submit.stdout.strip() == str(out)
    verify = run_cli(["verify", str(out), "--expect-node", shared_node.peer_id, "--json"], tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert {"signature", "pixels", "model", "job binding"} <= set(names)
    wrong = run_cli(["verify", str(out), "--expect-node", REQUESTER.peer_id], tmp_path)
    assert wrong.returncode == 1 and "FAIL" in wrong.stdout


def test_cli_submit_refuses_existing_output_without_force(shared_node, tmp_path):
    out = tmp_path / "exists.png"
    out.write_bytes(b"precious")
    result = run_cli(["submit", "x", "--peer", shared_node.addr, "--out", str(out)], tmp_path)
    assert result.returncode == 2 and "exists" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == b"precious"


def test_node_image_is_bit_identical_to_a_direct_diffusers_call(shared_node, tmp_path):
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    import io

    from pointillist.node.loading import embedded_model_path

    request = job_for(shared_node, prompt="bit for bit", seed=99, steps=4)
    replies = trio.run(exchange, shared_node, job_frame(sign_job(REQUESTER, request)), REQUESTER)
    assert replies[-1]["t"] == "result", replies[-1]
    node_pixels = np.asarray(Image.open(io.BytesIO(replies[-1]["png"])).convert("RGB"))

    torch.set_num_threads(1)  # the node runs with OMP_NUM_THREADS=1 (see conftest)
    pipe = StableDiffusionPipeline.from_pretrained(
        embedded_model_path(), local_files_only=True, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(
        "bit for bit", negative_prompt="", num_inference_steps=4, guidance_scale=7.5, width=64, height=64,
        generator=torch.Generator("cpu").manual_seed(99), output_type="pil",
    ).images[0]
    assert np.array_equal(node_pixels, np.asarray(direct.convert("RGB")))


def _code(replies):
    assert replies, "node sent nothing"
    assert replies[-1]["t"] == "error", replies[-1]
    return replies[-1]["code"]


def test_bad_input_gets_clear_errors_and_node_keeps_serving(shared_node):
    node = shared_node
    other_node = Identity.generate()

    async def scenario():
        results = {}
        results["malformed"] = _code(await exchange(node, b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"))
        results["not a map"] = _code(await exchange(node, b"\x00\x00\x00\x04\x93\x01\x02\x03"))
        results["oversized"] = _code(await exchange(node, (1 << 30).to_bytes(4, "big") + b"x" * 100))
        results["unknown type"] = _code(await exchange(node, framing.encode_frame({"t": "gimme"})))
        good = sign_job(REQUESTER, job_for(node))
        forged = Envelope(good.payload_type, good.payload.replace(b"a red fox", b"a red cat"), good.keyid, good.sig)
        results["bad signature"] = _code(await exchange(node, job_frame(forged)))
        results["garbage job"] = _code(await exchange(node, job_frame(sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, b"[]"))))
        results["expired"] = _code(await exchange(node, job_frame(sign_job(REQUESTER, job_for(node, now=int(time.time()) - 4000)))))
        results["wrong node"] = _code(await exchange(node, job_frame(sign_job(REQUESTER, job_for(other_node)))))
        results["unknown model"] = _code(await exchange(node, job_frame(sign_job(REQUESTER, job_for(node, model="sdxl-from-the-hub")))))
        results["too large"] = _code(await exchange(node, job_frame(sign_job(REQUESTER, job_for(node, width=8192, height=8192)))))
        await exchange(node, b"\x00\x00", reset_after_write=True)  # a peer that vanishes mid-header
        ok = await exchange(node, job_frame(good))
        results["first good"] = ok[-1]["t"]
        results["replayed"] = _code(await exchange(node, job_frame(good)))
        again = await exchange(node, job_frame(sign_job(REQUESTER, job_for(node, seed=5))))
        results["next good"] = again[-1]["t"]
        steps = [r["step"] for r in again if r["t"] == "progress"]
        results["progress"] = (steps[0], steps[-1])
        return results

    results = trio.run(scenario)
    assert results == {
        "malformed": "bad-frame",
        "not a map": "bad-frame",
        "oversized": "frame-too-large",
        "unknown type": "bad-frame",
        "bad signature": "bad-signature",
        "garbage job": "bad-frame",
        "expired": "expired",
        "wrong node": "wrong-node",
        "unknown model": "unknown-model",
        "too large": "invalid-params",
        "first good": "result",
        "replayed": "replayed",
        "next good": "result",
        "progress": (0, 3),  # step 0 of 3 first, the last step always (frames between are sampled)
    }, node.log()
    assert node.alive()
