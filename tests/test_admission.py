"""Node admission as a table, in process: every error code a job can earn, in the documented
check order (node/admission.py ``JOB_CHECK_ORDER``), and the stream handler's frame-level codes
over an in-memory stream. No node process, no libp2p, no torch."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from pointillist.node.admission import JOB_CHECK_ORDER, Admission
from pointillist.node.limits import NodeLimits
from pointillist.node.memory_fit import MARGIN, MemoryFit
from pointillist.node.policy import Policy, RequesterPolicy
from pointillist.node.replay import ReplayCache
from pointillist.node.service import JobService, ServedModels
from pointillist.protocol import framing
from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.errors import ErrorCode, JobRejected
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import JOB_PAYLOAD_TYPE, new_job_request, sign_job
from pointillist.protocol.messages import JobMessage, WireEnvelope, to_wire

NOW = 1_763_780_000
NODE = Identity.generate()
REQUESTER = Identity.generate()
OTHER = Identity.generate()
MODEL = SimpleNamespace(name="tiny-sd", digest="cd" * 32)


def job(**changes):
    settings = dict(node=NODE.peer_id, model="tiny-sd", prompt="a fox", seed=1, steps=4, guidance=7.5,
                    width=64, height=64, now=NOW)
    settings.update(changes)
    return new_job_request(**settings)


# Each fault makes exactly one check fail; a row's job carries its own fault and every fault of
# the rows after it, so the code it gets proves that its check runs before all later ones.
FAULTS = [
    "bad-signature", "bad-schema", "expired", "wrong-node", "forbidden", "unknown-model", "invalid-params",
    "too-big-for-gpu", "shutting-down", "queue-full", "replayed", "rate-limited", "replay-cache-full",
]
EXPECTED = [code for _, code in JOB_CHECK_ORDER]


def admission_with(faults: set[str]) -> tuple[Admission, dict]:
    limits = NodeLimits(queue_size=2, max_steps=50)
    requesters = RequesterPolicy(deny=frozenset({REQUESTER.peer_id}) if "forbidden" in faults else frozenset(),
                                 jobs_per_minute=60, burst=1)
    prefilled = 2 * ("replayed" in faults) + 2  # keys remembered below: this job's, and one other job's
    replay = ReplayCache(max_entries=prefilled + 1 if "replay-cache-full" in faults else 1000)
    # Measured GPU memory (node/memory_fit.py): room for 64x64 (4,096 px), not for 64x72.
    fit = MemoryFit(budget=1000 + int(4096 * 10 * MARGIN) + 1, weights=1000, per_pixel=10, source="test")
    model = SimpleNamespace(name=MODEL.name, digest=MODEL.digest, memory_fit=fit)
    admission = Admission(NODE.peer_id, ServedModels([model]), Policy(limits=limits, requesters=requesters), replay=replay)
    request = job(
        now=NOW - 7200 if "expired" in faults else NOW,
        node=OTHER.peer_id if "wrong-node" in faults else NODE.peer_id,
        model="no-such-model" if "unknown-model" in faults else "tiny-sd",
        steps=500 if "invalid-params" in faults else 4,
        height=72 if "too-big-for-gpu" in faults else 64,
    )
    if "replayed" in faults:
        admission.replay.check_and_remember(request.job_id, request.nonce, request.expires_at, NOW)
    if "rate-limited" in faults:
        admission.rate.take(REQUESTER.peer_id, NOW)  # burst 1: the bucket is now empty
    if "replay-cache-full" in faults:  # one job (two keys) remembered: room for one key more
        admission.replay.check_and_remember("0" * 32, "1" * 32, NOW + 600, NOW)
    envelope = sign_job(REQUESTER, request)
    if "bad-schema" in faults:
        envelope = sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, b'{"v":1,"jobId":"not hex"}')
    if "bad-signature" in faults:
        envelope = Envelope(envelope.payload_type, envelope.payload, envelope.keyid, bytes(64))
    state = dict(now=NOW, queue_depth=3 if "queue-full" in faults else 0, shutting_down="shutting-down" in faults)
    return admission, {"envelope": envelope, **state}


def test_the_table_covers_every_code_a_job_can_earn():
    # Earned outside admission: by the frame reader, the fetch path, or while the job runs.
    frame_level = {ErrorCode.FRAME_TOO_LARGE, ErrorCode.TIMEOUT, ErrorCode.INTERNAL, ErrorCode.NOT_FOUND,
                   ErrorCode.OUT_OF_MEMORY}
    assert set(EXPECTED) | frame_level == set(ErrorCode)
    assert len(FAULTS) == len(JOB_CHECK_ORDER)


@pytest.mark.parametrize("row", range(len(FAULTS)), ids=FAULTS)
def test_a_job_is_refused_for_its_first_failing_check(row):
    admission, call = admission_with(set(FAULTS[row:]))
    with pytest.raises(JobRejected) as e:
        admission.admit(call.pop("envelope"), **call)
    assert e.value.code is EXPECTED[row], e.value


def test_a_job_passing_every_check_is_admitted_and_remembered():
    admission, call = admission_with(set())
    envelope = call.pop("envelope")
    signed = admission.admit(envelope, **call)
    assert signed.requester == REQUESTER.peer_id and signed.request.node == NODE.peer_id
    with pytest.raises(JobRejected) as e:
        admission.admit(envelope, **call)
    assert e.value.code is ErrorCode.REPLAYED


def test_a_replay_does_not_cost_the_requester_a_rate_token():
    admission, call = admission_with(set())
    envelope = call.pop("envelope")
    admission.admit(envelope, **call)
    for _ in range(5):  # someone replays the published job; burst is 1
        with pytest.raises(JobRejected, match="replayed"):
            admission.admit(envelope, **{**call, "now": NOW + 60})
    fresh = sign_job(REQUESTER, job(now=NOW + 60))
    assert admission.admit(fresh, **{**call, "now": NOW + 60}).request.node == NODE.peer_id


@pytest.mark.parametrize("sampler, refused", [
    (None, False), ("Euler a", False), ("DPM++ 2M Karras", False), ("k_euler", True),
])
def test_a_sampler_this_node_cannot_run_is_invalid_params(sampler, refused):
    admission, call = admission_with(set())
    call["envelope"] = sign_job(REQUESTER, job(sampler=sampler))
    if not refused:
        admission.admit(call.pop("envelope"), **call)
        return
    with pytest.raises(JobRejected) as e:
        admission.admit(call.pop("envelope"), **call)
    assert e.value.code is ErrorCode.INVALID_PARAMS and "unknown sampler 'k_euler'" in str(e.value)


def test_a_job_refused_for_load_can_be_sent_again_as_it_is():
    admission, call = admission_with(set())
    envelope = call.pop("envelope")
    with pytest.raises(JobRejected, match="busy"):
        admission.admit(envelope, **{**call, "queue_depth": 3})
    assert admission.admit(envelope, **call)


# ---- the stream handler, frame-level codes, in memory -----------------------------------------


class MemoryStream:
    """The part of a libp2p stream the job service uses, over trio's in-memory stream pair."""

    def __init__(self, side) -> None:
        self.side = side
        self.muxed_conn = SimpleNamespace(peer_id="memory-peer")

    async def read(self, n: int | None = None) -> bytes:
        return await self.side.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.side.send_all(data)

    async def close(self) -> None:
        await self.side.send_eof()

    async def reset(self) -> None:
        await self.side.aclose()


@dataclasses.dataclass
class FakeGeneration:
    image: object
    pipeline: str = "StableDiffusionPipeline"
    scheduler: str = "DDIMScheduler"
    dtype: str = "float32"
    device: str = "cpu"
    torch_threads: int = 1
    libraries: dict = dataclasses.field(default_factory=lambda: {"torch": "0", "diffusers": "0", "transformers": "0"})


class FakeModel:
    name, digest = MODEL.name, MODEL.digest

    def generate(self, settings, on_step=None):
        from PIL import Image

        for k in range(1, settings.steps + 1):
            if on_step:
                on_step(k, settings.steps)
        return FakeGeneration(Image.new("RGB", (settings.width, settings.height)))


async def serve_once(raw: bytes, *, close_after_write: bool = True) -> list[dict]:
    """Send ``raw`` to a fresh JobService over memory and return every frame it answers."""
    service = JobService(NODE, ServedModels([FakeModel()]), clock=lambda: NOW, make_params=lambda j: j.request.settings)
    ours, theirs = trio.testing.memory_stream_pair()
    replies = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        if raw:
            await ours.send_all(raw)
        if close_after_write:
            await ours.send_eof()
        stream = MemoryStream(ours)
        while True:
            try:
                replies.append(await framing.read_frame(stream, framing.MAX_REPLY_FRAME))
            except Exception:
                break
            if replies[-1]["t"] in ("result", "error"):
                break
    return replies


async def test_frame_too_large_is_refused_before_reading_its_body():
    replies = await serve_once((framing.MAX_REQUEST_FRAME + 1).to_bytes(4, "big"))
    assert replies[-1]["code"] == "frame-too-large"


async def test_garbage_is_a_bad_frame():
    body = b"\xc1not msgpack"
    replies = await serve_once(len(body).to_bytes(4, "big") + body)
    assert replies[-1]["code"] == "bad-frame"


async def test_a_message_of_the_wrong_shape_is_a_bad_frame():
    replies = await serve_once(framing.encode_frame({"t": "job", "envelope": {"payloadType": 1}}))
    assert replies[-1]["code"] == "bad-frame"


async def test_a_request_that_never_completes_times_out(autojump_clock):
    replies = await serve_once(b"\x00\x00", close_after_write=False)
    assert replies[-1]["code"] == "timeout"


async def test_an_admitted_job_is_accepted_run_and_answered_with_a_verifying_image():
    from pointillist.attestation.verify import verify_image

    request = job(now=NOW)
    frame = framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(sign_job(REQUESTER, request)))))
    replies = await serve_once(frame, close_after_write=False)
    kinds = [r["t"] for r in replies]
    assert kinds[0] == "accepted" and kinds[-1] == "result" and "progress" in kinds
    report = verify_image(replies[-1]["png"], expect_node=NODE.peer_id)
    assert report.ok and report.job == request


async def test_the_service_reports_each_job_and_refusal_as_events():
    from pointillist.node.events import JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused

    service = JobService(NODE, ServedModels([FakeModel()]), clock=lambda: NOW, make_params=lambda j: j.request.settings)
    seen = []
    service.events.subscribe(seen.append)
    for raw in (framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(
            sign_job(REQUESTER, job(now=NOW)))))), b"\x00\x00\x00\x03abc"):
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.handle_stream, MemoryStream(theirs))
            await ours.send_all(raw)
            stream = MemoryStream(ours)
            while (await framing.read_frame(stream, framing.MAX_REPLY_FRAME))["t"] not in ("result", "error"):
                pass
    kinds = [type(e) for e in seen]
    assert kinds[:2] == [JobAccepted, JobStarted] and JobProgress in kinds
    finished = next(e for e in seen if isinstance(e, JobFinished))
    assert finished.ok and finished.delivered and finished.steps == 4 and finished.png_bytes > 0
    assert min(finished.queue_s, finished.generation_s, finished.delivery_s) >= 0
    assert isinstance(seen[-1], RequestRefused) and seen[-1].code is ErrorCode.BAD_FRAME


async def test_progress_is_sent_at_a_bounded_rate_and_always_reaches_the_last_step():
    import time as clock

    from pointillist.node import service as service_module

    class SlowModel(FakeModel):
        def generate(self, settings, on_step=None):
            from PIL import Image

            for k in range(1, 201):
                clock.sleep(0.005)  # 200 steps in about a second
                on_step(k, 200)
            return FakeGeneration(Image.new("RGB", (settings.width, settings.height)))

    service = JobService(NODE, ServedModels([SlowModel()]), clock=lambda: NOW, make_params=lambda j: j.request.settings)
    frame = framing.encode_frame(to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(
        sign_job(REQUESTER, job(now=NOW, steps=50))))))
    ours, theirs = trio.testing.memory_stream_pair()
    replies = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.handle_stream, MemoryStream(theirs))
        await ours.send_all(frame)
        stream = MemoryStream(ours)
        while not replies or replies[-1]["t"] not in ("result", "error"):
            replies.append(await framing.read_frame(stream, framing.MAX_REPLY_FRAME))
    elapsed = trio.current_time() - start
    steps = [r["step"] for r in replies if r["t"] == "progress"]
    assert replies[-1]["t"] == "result" and steps[0] == 0 and steps[-1] == 200
    assert steps == sorted(steps)
    assert len(steps) <= 2 + elapsed / service_module.PROGRESS_INTERVAL_S + 1, (len(steps), elapsed)
