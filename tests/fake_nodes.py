"""Scripted fake nodes behind the requester's ``NodeTransport`` interface, for in-process tests
of the failover state machine. Their images are real attested PNGs (signed with the fake node's
own key, embedding the requester's signed job), made without torch: a blank picture of the
requested size.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import trio
from PIL import Image, PngImagePlugin

from pointillist.attestation.png import embed_provenance
from pointillist.attestation.sign import attest
from pointillist.attestation.statement import GenerationRecord, rfc3339_utc
from pointillist.protocol.dsse import Envelope
from pointillist.protocol.errors import ErrorCode, JobRejected, TransportError
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import JobRequest, open_job
from pointillist.protocol.messages import AcceptedMessage, ProgressMessage
from pointillist.requester.requester import Direct
from pointillist.requester.transport import NodeAddress

MODEL = "tiny-sd"
DIGEST = "ab" * 32


def attested_png(node: Identity, job_envelope: Envelope, color: int = 0) -> bytes:
    """What an honest node returns for ``job_envelope``."""
    signed = open_job(job_envelope)
    request = signed.request
    image = Image.new("RGB", (request.width, request.height), (color, color, color))
    record = GenerationRecord(
        model_name=MODEL, model_digest=DIGEST, pipeline="StableDiffusionPipeline", scheduler="DDIMScheduler",
        settings=request.settings, dtype="float32", device="cpu", torch_threads=1,
        libraries={"torch": "0", "diffusers": "0", "transformers": "0", "pointillist": "0"},
        job_id=request.job_id, requester=signed.requester,
        request_sha256=hashlib.sha256(job_envelope.payload).hexdigest(), node=node.peer_id,
        created_at=rfc3339_utc(1_763_780_000),
    )
    return embed_provenance(image, attest(node, record, image), job_envelope)


def tampered_pixels(png: bytes) -> bytes:
    """The same PNG with one pixel changed and every text chunk kept."""
    original = Image.open(io.BytesIO(png))
    image = original.convert("RGB")
    image.putpixel((0, 0), (255, 0, 0))
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    for key, value in original.text.items():
        info.add_itxt(key, value)
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass
class FakeNode:
    """A node that answers each job with the next behaviour of its ``script`` (the last one
    repeats). Behaviours: "ok", "busy", "rate-limited", a refusal code such as "unknown-model",
    "dies" (accepts, reports a step, the connection breaks and the node is gone), "breaks"
    (accepts, the connection breaks, the node finishes and keeps the result: ``fetch`` gets it
    after ``not_found_first`` not-found answers), "hangs" (accepts and never answers),
    "bad-image", "other-job" (a verified image of an earlier job)."""

    script: list[str]
    identity: Identity = field(default_factory=Identity.generate)
    not_found_first: int = 1
    jobs: list[JobRequest] = field(default_factory=list)
    fetches: int = 0
    dead: bool = False
    _stored: dict[str, bytes] = field(default_factory=dict)
    _previous: bytes | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def target(self) -> Direct:
        return Direct(NodeAddress(self.peer_id, f"/ip4/127.0.0.1/tcp/1/p2p/{self.peer_id}"), estimate_s=1.0)

    async def run_job(self, envelope: Envelope, request: JobRequest, on_event, deadline_s: float) -> bytes:
        if self.dead:
            raise TransportError(f"cannot reach peer {self.peer_id}")
        behaviour = self.script[min(len(self.jobs), len(self.script) - 1)]
        self.jobs.append(request)
        if behaviour not in ("ok", "dies", "breaks", "hangs", "bad-image", "other-job"):
            raise JobRejected(ErrorCode(behaviour), f"scripted {behaviour}")
        on_event(AcceptedMessage(t="accepted", jobId=request.job_id, position=0))
        on_event(ProgressMessage(t="progress", step=1, total=request.steps))
        await trio.sleep(0)
        png = attested_png(self.identity, envelope)
        if behaviour == "dies":
            self.dead = True
            raise TransportError("stream failed while reading: StreamReset")
        if behaviour == "breaks":
            self._stored[request.job_id] = png
            raise TransportError("stream failed while reading: StreamReset")
        if behaviour == "hangs":
            await trio.sleep(deadline_s)
            raise TransportError(f"node {self.peer_id} did not finish within {deadline_s:.0f} s")
        if behaviour == "bad-image":
            return tampered_pixels(png)
        if behaviour == "other-job":
            if self._previous is None:
                raise AssertionError("other-job needs an earlier job on this node")
            return self._previous
        self._previous = png
        return png

    async def fetch(self, envelope: Envelope, job_id: str) -> bytes:
        if self.dead:
            raise TransportError(f"cannot reach peer {self.peer_id}")
        self.fetches += 1
        if job_id not in self._stored or self.fetches <= self.not_found_first:
            raise JobRejected(ErrorCode.NOT_FOUND, f"no stored result for job {job_id}")
        return self._stored[job_id]


class FakeTransport:
    """``NodeTransport`` over a dict of fake nodes."""

    def __init__(self, *nodes: FakeNode) -> None:
        self.nodes = {n.peer_id: n for n in nodes}

    async def run_job(self, node: NodeAddress, envelope, request, on_event, deadline_s):
        return await self.nodes[node.peer_id].run_job(envelope, request, on_event, deadline_s)

    async def fetch(self, node: NodeAddress, envelope, job_id, timeout_s):
        return await self.nodes[node.peer_id].fetch(envelope, job_id)
