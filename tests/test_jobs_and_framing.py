import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointillist.node.limits import NodeLimits
from pointillist.node.replay import ReplayCache
from pointillist.protocol import framing
from pointillist.protocol.dsse import Envelope, pae, sign_envelope
from pointillist.protocol.errors import FrameError, JobRejected, RemoteError, SignatureError, TransportError, UsageError, VerificationError
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import JOB_PAYLOAD_TYPE, check_fresh, new_job_request, open_job, sign_job
from pointillist.protocol.messages import JobMessage, WireEnvelope, parse_reply, parse_request, to_wire

REQUESTER = Identity(bytes(range(32)))
NODE = Identity(bytes(range(1, 33)))


def make_request(**over):
    args = dict(node=NODE.peer_id, model="tiny-sd", prompt="a cat", seed=7, steps=4, guidance=7.5,
                width=64, height=64, now=1_000_000)
    args.update(over)
    return new_job_request(**args)


def test_pae_matches_dsse_spec_example():
    # from the DSSE protocol document
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_job_round_trip_and_seed_as_string():
    request = make_request(seed=2**64 - 1)
    job = open_job(Envelope.from_json(sign_job(REQUESTER, request).to_json()))
    assert job.request == request and job.requester == REQUESTER.peer_id
    assert json.loads(job.envelope.payload)["seed"] == str(2**64 - 1)


def test_tampered_job_fails_signature():
    env = sign_job(REQUESTER, make_request())
    tampered = Envelope(env.payload_type, env.payload.replace(b'"a cat"', b'"a dog"'), env.keyid, env.sig)
    with pytest.raises(SignatureError):
        open_job(tampered)


def test_job_signature_is_not_valid_under_another_payload_type():
    env = sign_job(REQUESTER, make_request())
    with pytest.raises(VerificationError):
        open_job(Envelope("application/vnd.in-toto+json", env.payload, env.keyid, env.sig))


def test_signed_garbage_payload_is_remote_error():
    env = sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, b'{"v":1}')
    with pytest.raises(RemoteError, match="invalid job field"):
        open_job(env)


_MISSING = object()
BAD_JOBS = [
    ("v", 2, "v: must be at most 1"),
    ("v", _MISSING, "v: missing"),
    ("negativePrompt", _MISSING, "negativePrompt: missing"),  # the spec says every member, always
    ("extra", 1, "extra: unknown member"),
    ("jobId", "AB" * 16, "jobId: must match"),
    ("jobId", "ab" * 16 + "\n", "jobId: must match"),  # patterns match the whole string
    ("nonce", 1, "nonce: must be a string"),
    ("issuedAt", -1, "issuedAt: must be at least 0"),
    ("issuedAt", 1e6, "issuedAt: must be an integer"),
    ("expiresAt", 2**63, "expiresAt: must be at most"),
    ("node", "not a peer id", "node: must match"),
    ("model", "", "model: must be at least 1 characters"),
    ("prompt", "x" * 4001, "prompt: must be at most 4000 characters"),
    ("seed", 7, "seed: must be a string"),
    ("seed", "07", "seed: must match"),
    ("seed", str(2**64), "seed: must be below 2**64"),
    ("steps", True, "steps: must be an integer"),
    ("steps", 4.0, "steps: must be an integer"),
    ("guidance", "7.5", "guidance: must be a number"),
    ("guidance", 101, "guidance: must be between 0 and 100"),
    ("guidance", 10**400, "guidance: must be between 0 and 100"),  # compared exactly, never overflows
    ("width", 8193, "width: must be at most 8192"),
]


@pytest.mark.parametrize("member,value,reason", BAD_JOBS, ids=[f"{m}={v!r}"[:30] for m, v, _ in BAD_JOBS])
def test_job_schema_refuses(member, value, reason):
    obj = json.loads(make_request().to_payload())
    if value is _MISSING:
        del obj[member]
    else:
        obj[member] = value
    env = sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, json.dumps(obj).encode())
    with pytest.raises(RemoteError) as info:
        open_job(env)
    assert str(info.value).startswith(f"invalid job field {reason}")


def test_guidance_may_be_written_as_an_integer():
    obj = {**json.loads(make_request().to_payload()), "guidance": 7}
    job = open_job(sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, json.dumps(obj).encode()))
    assert type(job.request.guidance) is float and job.request.settings.guidance == 7.0


def test_freshness():
    request = make_request(now=1000, lifetime_s=600)
    check_fresh(request, 1000)
    with pytest.raises(VerificationError, match="expired"):
        check_fresh(request, 1600)
    with pytest.raises(VerificationError, match="future"):
        check_fresh(request, 500)
    with pytest.raises(VerificationError, match="lifetime"):
        check_fresh(make_request(now=1000, lifetime_s=10_000), 1001)


def test_user_mistakes_in_a_request_are_usage_errors():
    with pytest.raises(UsageError, match="steps"):
        make_request(steps=0)
    with pytest.raises(UsageError, match="seed"):
        make_request(seed=2**64)


def test_replay_cache_refuses_same_id_or_nonce_until_expiry():
    cache = ReplayCache()
    cache.check_and_remember("a" * 32, "b" * 32, expires_at=100, now=0)
    with pytest.raises(JobRejected) as e:
        cache.check_and_remember("a" * 32, "c" * 32, expires_at=100, now=1)
    assert e.value.code == "replayed"
    with pytest.raises(JobRejected):
        cache.check_and_remember("d" * 32, "b" * 32, expires_at=100, now=1)
    cache.check_and_remember("a" * 32, "b" * 32, expires_at=300, now=100)  # expired entries pruned


def test_full_replay_cache_refuses_rather_than_forgets():
    cache = ReplayCache(max_entries=2)
    cache.check_and_remember("a" * 32, "b" * 32, expires_at=100, now=0)
    with pytest.raises(JobRejected) as e:
        cache.check_and_remember("c" * 32, "d" * 32, expires_at=100, now=1)
    assert e.value.code == "busy"


def test_limits_name_the_problem():
    NodeLimits().check(make_request())
    with pytest.raises(JobRejected, match="multiple of 8"):
        NodeLimits().check(make_request(width=65))
    with pytest.raises(JobRejected, match="steps"):
        NodeLimits(max_steps=3).check(make_request())


def test_frame_round_trip_and_limits():
    msg = to_wire(JobMessage(t="job", envelope=WireEnvelope.from_envelope(sign_job(REQUESTER, make_request()))))
    frame = framing.encode_frame(msg, framing.MAX_REQUEST_FRAME)
    length = framing.parse_header(frame[:4], framing.MAX_REQUEST_FRAME)
    assert parse_request(framing.decode_body(frame[4:4 + length], framing.MAX_REQUEST_FRAME)) == parse_request(msg)
    with pytest.raises(FrameError, match="exceeds"):
        framing.parse_header((framing.MAX_REQUEST_FRAME + 1).to_bytes(4, "big"), framing.MAX_REQUEST_FRAME)
    with pytest.raises(FrameError):
        framing.parse_header(b"\0\0\0\0", 100)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_body_never_raises_anything_but_frame_error(data):
    try:
        obj = framing.decode_body(data, framing.MAX_REQUEST_FRAME)
    except FrameError:
        return
    try:
        parse_request(obj)
    except FrameError:
        pass


@pytest.mark.parametrize("obj", [
    {"t": "job"},
    {"t": "job", "envelope": {"payloadType": "x", "payload": "str-not-bytes", "keyid": "k", "sig": b"0" * 64}},
    {"t": "job", "envelope": {"payloadType": "x", "payload": b"", "keyid": "k", "sig": b"short"}},
    {"t": "result", "jobId": "x", "png": b""},
    {"t": "job", "envelope": {"payloadType": "x", "payload": b"", "keyid": "k", "sig": b"0" * 64}, "extra": 1},
])
def test_bad_requests_are_frame_errors(obj):
    with pytest.raises(FrameError):
        parse_request(obj)


def test_reply_types():
    assert parse_reply({"t": "error", "code": "busy", "message": "m"}).code == "busy"
    with pytest.raises(FrameError):
        parse_reply({"t": "progress", "step": -1, "total": 4})


class ChunkyStream:
    """Hands out data a few bytes at a time, as a muxer may."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk = data, chunk

    async def read(self, n=None):
        out, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk):]
        return out


async def test_read_frame_survives_thousands_of_partial_reads():
    # py-libp2p's read_exactly gives up after 100 partial reads; ours must not.
    body = msgpack.packb({"t": "progress", "step": 1, "total": 2, "pad": b"x" * 5000})
    frame = len(body).to_bytes(4, "big") + body
    assert (await framing.read_frame(ChunkyStream(frame, 3), 10_000))["pad"] == b"x" * 5000


async def test_eof_midway_is_transport_error():
    with pytest.raises(TransportError):
        await framing.read_frame(ChunkyStream(b"\0\0\0\x10abc", 100), 100)


# --- format version 2: a job naming a sampler -------------------------------------------------------

from pointillist.protocol.jobs import JOB_PAYLOAD_TYPE_V2  # noqa: E402


def test_a_job_without_sampler_is_version_1_byte_for_byte_as_before():
    request = make_request()
    assert request.v == 1 and request.sampler is None and "sampler" not in json.loads(request.to_payload())
    assert sign_job(REQUESTER, request).payload_type == JOB_PAYLOAD_TYPE


def test_a_job_with_sampler_is_version_2_and_round_trips():
    request = make_request(sampler="Euler a")
    envelope = sign_job(REQUESTER, request)
    assert envelope.payload_type == JOB_PAYLOAD_TYPE_V2
    assert json.loads(envelope.payload)["v"] == 2
    job = open_job(Envelope.from_json(envelope.to_json()))
    assert job.request == request and job.request.settings.sampler == "Euler a"


V2_BAD = [
    ("sampler", _MISSING, "sampler: missing"),
    ("sampler", "", "sampler: must be at least 1 characters"),
    ("sampler", "x" * 101, "sampler: must be at most 100 characters"),
    ("sampler", 3, "sampler: must be a string"),
    ("sampler", None, "sampler: must be a string"),
    ("v", 1, "v: must be at least 2"),
]


@pytest.mark.parametrize("member,value,reason", V2_BAD, ids=[f"{m}={v!r}"[:30] for m, v, _ in V2_BAD])
def test_version_2_job_schema_refuses(member, value, reason):
    obj = json.loads(make_request(sampler="DDIM").to_payload())
    if value is _MISSING:
        del obj[member]
    else:
        obj[member] = value
    with pytest.raises(RemoteError) as info:
        open_job(sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE_V2, json.dumps(obj).encode()))
    assert str(info.value).startswith(f"invalid job field {reason}")


def test_payload_version_and_payload_type_must_agree():
    v2 = make_request(sampler="DDIM").to_payload()
    with pytest.raises(RemoteError, match="sampler: unknown member"):
        open_job(sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE, v2))
    v1 = make_request().to_payload()
    with pytest.raises(RemoteError, match="sampler: missing"):
        open_job(sign_envelope(REQUESTER, JOB_PAYLOAD_TYPE_V2, v1))
    with pytest.raises(VerificationError, match="payload type"):
        open_job(sign_envelope(REQUESTER, "application/vnd.pointillist.job.v3+json", v2))


def test_new_job_refuses_a_bad_sampler_before_signing():
    with pytest.raises(UsageError, match="invalid job field sampler"):
        make_request(sampler="")
