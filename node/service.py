"""The job protocol, node side: check a signed job, queue it, run it off the trio loop, stream
progress, answer with the attested PNG.

Order of checks (cheapest and most security-relevant first, nothing runs before all pass):
frame size → msgpack → message schema (here), then the job's own checks in ``admission.py``.
Refusals are logged at most a few per minute per code (``quiet_log``): a peer cannot flood the log.

A peer can never crash the node: every stream handler ends in a catch-all that logs and resets
the stream. Every write has a deadline, and a peer that does not read is treated as gone
(py-libp2p stalls a connection whose peer leaves large writes unread; see docs/decisions.md).

Generation runs on one long-lived thread per service (``GenerationThread``), not a fresh worker
thread per job: on CUDA a job on a new thread cost 0.4-0.7 s more (docs/benchmarks.md, H100), and
trio ends idle cached worker threads after 10 s, so a node with sparse jobs would pay it every
job. The thread takes one job at a time (the service's GPU lock admits one anyway), stops a job
when the node shuts down (``on_step`` checks the flag and raises ``GenerationCancelled``), hands
its outcome back to the trio loop, and ends when the service is garbage-collected.

Step commitments (issue 11): the model records and hashes every denoising step in the
generation thread (``step_commitments.py``), the attestation signs their Merkle root (predicate
generation/v3), and the leaves are stored with the result (``ResultStore.put(trajectory=...)``),
for ``trajectory_for`` to read during the challenge window. A model that records none (test
doubles) gets the version 1 or 2 predicate as before.

Everything that touches the disk (storing a result, fetching one, writing a job's replay keys)
runs in trio's worker threads: its cost does not grow with what the node holds
(node/state_store.py), and the loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import outcome
import trio

from ..attestation.png import embed_provenance
from ..attestation.sign import attest
from ..attestation.statement import GenerationRecord, rfc3339_utc
from ..attestation.trajectory import Trajectory
from ..protocol import framing
from ..protocol.errors import ErrorCode, FrameError, FrameTooLarge, JobRejected, TransportError
from ..protocol.identity import Identity
from ..protocol.jobs import SignedJob
from ..protocol.messages import (
    AcceptedMessage,
    ErrorMessage,
    FetchMessage,
    ProgressMessage,
    ResultMessage,
    parse_request,
    to_wire,
)
from .admission import Admission
from .events import EventBus, JobAccepted, JobFinished, JobProgress, JobStarted, RequestRefused
from .limits import NodeLimits
from .policy import Policy
from .quiet_log import RateLimitedLog
from .replay import ReplayCache
from .results import ResultStore
from .version import POINTILLIST_VERSION

log = logging.getLogger("pointillist.node")

READ_REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
#: Progress frames go out at most this often (plus the last step reached).
PROGRESS_INTERVAL_S = 0.2
_refusals = RateLimitedLog(log)


class GenerationCancelled(Exception):
    """Raised inside the generation thread to stop a job when the node shuts down."""


class GenerationThread:
    """One long-lived thread that runs blocking calls one at a time for the trio loop."""

    def __init__(self, name: str = "pointillist-generation") -> None:
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the thread; its value, or its exception raised here. Not cancellable once
        started (as ``trio.to_thread.run_sync``): a caller that must stop it makes ``fn`` return."""
        if self._thread is None:
            self._thread = threading.Thread(target=_serve_calls, args=(self._calls,), name=self.name, daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def deliver(result: outcome.Outcome) -> None:
            box.append(result)
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        self._calls.put((fn, deliver))
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def close(self) -> None:
        """Let the thread end once it has finished what it holds."""
        self._calls.put(None)


def _serve_calls(calls: queue.SimpleQueue) -> None:
    while True:
        call = calls.get()
        if call is None:
            return
        fn, deliver = call
        result = outcome.capture(fn)
        # Nothing of the last call may stay referenced while waiting for the next: ``fn`` holds
        # the service, and the thread ends only once the service is collected.
        del call, fn
        deliver(result)
        del deliver, result


class Model(Protocol):
    """What the service needs of a loaded model (``pipeline.LoadedModel`` provides it)."""

    name: str
    digest: str

    def generate(self, params: Any, on_step: Callable[[int, int], None] | None = None) -> Any: ...


class ServedModels:
    """The operator's models. Jobs name one by name or by full digest; nothing else is loadable."""

    def __init__(self, models: list[Model], allow_none: bool = False) -> None:
        if not models and not allow_none:
            raise ValueError("a node serves at least one model")
        self._models = list(models)

    def __iter__(self):
        return iter(self._models)

    def find(self, ref: str) -> Model:
        for m in self._models:
            if ref in (m.name, m.digest):
                return m
        served = ", ".join(f"{m.name} ({m.digest[:12]})" for m in self._models)
        if not served:
            raise JobRejected(ErrorCode.UNKNOWN_MODEL, "this node serves no models (an entry point: bootstrap and relay)")
        raise JobRejected(ErrorCode.UNKNOWN_MODEL, f"model {ref[:80]!r} is not served here; served: {served}")


class JobService:
    def __init__(
        self,
        identity: Identity,
        models: ServedModels,
        *,
        policy: Policy | None = None,
        replay: ReplayCache | None = None,
        results: ResultStore | None = None,
        save_replay: Callable[[list[tuple[str, int]]], None] | None = None,
        clock: Callable[[], float] = time.time,
        make_params: Callable[[SignedJob], Any] | None = None,
    ) -> None:
        self.identity = identity
        self.models = models
        self.policy = policy or Policy()
        self.limits: NodeLimits = self.policy.limits
        self.admission = Admission(identity.peer_id, models, self.policy, replay=replay)
        self.replay = self.admission.replay
        self.results = results
        #: writes a newly remembered job's replay keys to disk (blocking; called in a worker thread)
        self._save_replay = save_replay
        self.clock = clock
        self._make_params = make_params or _default_params
        self._gpu = trio.Lock()  # one generation at a time on this device
        self._generation = GenerationThread()
        weakref.finalize(self, self._generation.close)  # the thread must not keep the service alive
        self._waiting = 0  # jobs admitted and not yet finished (running one included)
        self._shutting_down = threading.Event()
        #: called (no arguments) whenever the queue changes, to re-advertise capacity
        self.on_change: Callable[[], None] = lambda: None
        #: what happens here, for the live view, logs, metrics and ``node status``
        self.events = EventBus()

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down.is_set()

    def shutdown(self) -> None:
        """Ask a running generation to stop at its next step."""
        self._shutting_down.set()

    # ---- stream handler -------------------------------------------------------------------

    async def handle_stream(self, stream: Any) -> None:
        await serve_guarded(stream, self._serve, "a job")

    async def _serve(self, stream: Any, peer: str) -> None:
        try:
            with trio.fail_after(READ_REQUEST_TIMEOUT_S):
                frame = await framing.read_frame(stream, framing.MAX_REQUEST_FRAME)
        except trio.TooSlowError:
            return await self._reject(stream, peer, JobRejected(ErrorCode.TIMEOUT, "no complete request frame in time"))
        except FrameError as exc:
            code = ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.BAD_FRAME
            return await self._reject(stream, peer, JobRejected(code, str(exc)))
        try:
            message = parse_request(frame)
            if isinstance(message, FetchMessage):
                return await self._fetch(stream, message)
            job = self.admission.admit(message.envelope.to_envelope(), now=self.clock(),
                                       queue_depth=self._waiting, shutting_down=self.shutting_down)
        except JobRejected as exc:
            return await self._reject(stream, peer, exc)
        except FrameError as exc:
            return await self._reject(stream, peer, JobRejected(ErrorCode.BAD_FRAME, str(exc)))

        request = job.request
        model = self.models.find(request.model)  # already checked in admission
        started = generated_at = None
        trajectory: bytes | None = None
        async with self.in_queue() as position:
            accepted = JobAccepted(request.job_id, job.requester, peer, request.model, request.steps, position)
            self.events.emit(accepted)
            try:
                log.debug("job %s from %s accepted (%d ahead)", request.job_id, job.requester, position)
                await self.remember(request)
                await self._write(stream, AcceptedMessage(t="accepted", jobId=request.job_id, position=position))
                async with self._gpu:
                    started = time.monotonic()
                    self.events.emit(JobStarted(request.job_id, request.steps))
                    png, trajectory = await self._run(stream, job, model)
                    generated_at = time.monotonic()
            except JobRejected as exc:
                self._finished(accepted, started, generated_at, exc.code)
                return await self._reject(stream, peer, exc, reported=True)
            except BaseException:
                self._finished(accepted, started, generated_at, ErrorCode.INTERNAL, delivered=False)
                raise
        log.debug("job %s done (%d bytes)", request.job_id, len(png))
        delivered = False
        try:
            if self.results is not None:
                # Kept before sending: if the requester is gone, it can fetch the result later.
                try:
                    await trio.to_thread.run_sync(functools.partial(
                        self.results.put, request.job_id, job.requester, png, trajectory=trajectory))
                except (OSError, sqlite3.Error) as exc:  # a full disk must not cost the requester its image
                    log.warning("job %s: result not stored (%s); sending it anyway", request.job_id, exc)
            await self._write(stream, ResultMessage(t="result", jobId=request.job_id, png=png))
            delivered = True
        finally:
            self._finished(accepted, started, generated_at, None, len(png), delivered)

    @contextlib.asynccontextmanager
    async def in_queue(self) -> AsyncIterator[int]:
        """Count a job (or an audit job) in ``queue_depth`` while the block runs, re-advertising
        on entry and exit; yields the number of jobs ahead of it."""
        self._waiting += 1
        self.on_change()
        try:
            yield self._waiting - 1
        finally:
            self._waiting -= 1
            self.on_change()

    async def on_device(self, fn: Callable[[], Any], started: Callable[[], None] = lambda: None) -> Any:
        """``fn()`` on the generation thread, one at a time with every job (the device lock);
        ``started()`` on the loop once the device is ours."""
        async with self._gpu:
            started()
            return await self._generation.run(fn)

    async def remember(self, request: Any) -> None:
        """The job's replay keys on disk before "accepted" goes out, so that a crash right after
        does not let the same signed job run again. One INSERT in a worker thread: its cost does
        not grow with the keys held, and the loop never waits on the disk. A failed write is
        logged and the job runs: the cache in memory still refuses replays until a restart."""
        if self._save_replay is None:
            return
        entries = [(key, request.expires_at) for key in ReplayCache.keys(request.job_id, request.nonce)]
        try:
            await trio.to_thread.run_sync(self._save_replay, entries)
        except (OSError, sqlite3.Error) as exc:
            log.warning("job %s: replay keys not written to disk (%s)", request.job_id, exc)

    def _finished(self, accepted: JobAccepted, started: float | None, generated_at: float | None,
                  code: ErrorCode | None, png_bytes: int = 0, delivered: bool = True) -> None:
        now = time.monotonic()
        started = started or now
        generated_at = generated_at or now
        self.events.emit(JobFinished(
            accepted.job_id, accepted.requester, accepted.peer, code, queue_s=started - accepted.at,
            generation_s=generated_at - started, delivery_s=now - generated_at,
            steps=accepted.steps, png_bytes=png_bytes, delivered=delivered))

    async def trajectory_for(self, job_id: str) -> Trajectory | None:
        """The step commitments kept for ``job_id`` (``ResultStore.trajectory_for``, in a worker
        thread), or ``None``. For the audit protocol (issue 11, later items); no network use yet."""
        if self.results is None:
            return None
        return await trio.to_thread.run_sync(self.results.trajectory_for, job_id)

    async def _fetch(self, stream: Any, message: FetchMessage) -> None:
        request, requester = self.admission.check_fetch(message.envelope.to_envelope(), now=self.clock())
        stored = await trio.to_thread.run_sync(self.results.get, request.job_id) if self.results is not None else None
        if stored is None or stored.requester != requester:  # never tell others what exists
            raise JobRejected(ErrorCode.NOT_FOUND, f"no stored result for job {request.job_id} of this requester")
        await self._write(stream, ResultMessage(t="result", jobId=stored.job_id, png=stored.png))

    async def _run(self, stream: Any, job: SignedJob, model: Model) -> tuple[bytes, bytes | None]:
        """The attested PNG, and the stored form of its step commitments (``None`` if the model
        recorded none)."""
        params = self._make_params(job)
        result: dict[str, Any] = {}
        latest: list[tuple[int, int] | None] = [None]
        work_done = trio.Event()

        def on_step(step: int, total: int) -> None:
            if self._shutting_down.is_set():
                raise GenerationCancelled("node is shutting down")
            # A plain store, read by the loop at its own pace: the generation thread never waits
            # on the trio loop or the network (it used to hand every step over and block).
            latest[0] = (step, total)

        def work() -> None:
            generated = model.generate(params, on_step)
            result["png"] = self._attest(job, model, generated)
            # Serialised here, in the generation thread: a few MB copied, never on the trio loop.
            trajectory = getattr(generated, "trajectory", None)
            result["trajectory"] = trajectory.to_bytes() if trajectory is not None else None

        async def forward_progress() -> None:
            # At most one frame per PROGRESS_INTERVAL_S, and always the last step reached:
            # a 50-step job no longer costs 50 frames and 50 thread hand-offs (issue 9).
            sent = None
            deliverable = True
            while True:
                with trio.move_on_after(PROGRESS_INTERVAL_S):
                    await work_done.wait()
                current = latest[0]
                if current is not None and current != sent:
                    sent = current
                    self.events.emit(JobProgress(job.request.job_id, *current))
                    if deliverable:
                        try:
                            await self._write(stream, ProgressMessage(t="progress", step=current[0], total=current[1]))
                        except TransportError:
                            deliverable = False  # keep generating; the requester may come back
                if work_done.is_set():
                    return

        failure: JobRejected | None = None
        try:
            await self._write(stream, ProgressMessage(t="progress", step=0, total=job.request.steps))
        except TransportError:
            pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_progress)
            # Failures are raised after the nursery: raised inside, trio would wrap them in an
            # ExceptionGroup and the requester would get a generic "internal error".
            try:
                await self._generation.run(work)
            except GenerationCancelled as exc:
                failure = JobRejected(ErrorCode.BUSY, f"node is shutting down ({exc})")
            except JobRejected as exc:
                failure = exc
            except Exception as exc:
                log.exception("job %s failed in the pipeline", job.request.job_id)
                failure = JobRejected(ErrorCode.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}"[:300])
            finally:
                work_done.set()
        if failure is not None:
            raise failure
        return result["png"], result["trajectory"]

    def _attest(self, job: SignedJob, model: Model, generated: Any) -> bytes:
        r = job.request
        trajectory = getattr(generated, "trajectory", None)
        record = GenerationRecord(
            model_name=model.name,
            model_digest=model.digest,
            pipeline=generated.pipeline,
            scheduler=generated.scheduler,
            settings=r.settings,
            dtype=generated.dtype,
            device=generated.device,
            torch_threads=generated.torch_threads,
            libraries={**generated.libraries, "pointillist": POINTILLIST_VERSION},
            job_id=r.job_id,
            requester=job.requester,
            request_sha256=job.payload_sha256,
            node=self.identity.peer_id,
            created_at=rfc3339_utc(self.clock()),
            # Recorded steps (issue 11) make it predicate v3, which records the scheduler's config
            # always; otherwise a job naming a sampler (v2) gets predicate v2, which records it too.
            scheduler_config=generated.scheduler_config if trajectory is not None or r.sampler is not None else None,
            trajectory=trajectory.commitment() if trajectory is not None else None,
        )
        envelope = attest(self.identity, record, generated.image)
        return embed_provenance(generated.image, envelope, job.envelope)

    async def _reject(self, stream: Any, peer: str, exc: JobRejected, reported: bool = False) -> None:
        """Answer with ``exc``'s code. A refusal before any work is reported here as a
        ``RequestRefused`` event; ``reported`` says the job already was (as finished, failed)."""
        if not reported:
            self.events.emit(RequestRefused(peer, exc.code, exc.message))
        _refusals.log(logging.INFO, f"refused ({exc.code})", "peer %s: refused (%s): %s", peer, exc.code, exc.message)
        await _send_error(stream, exc)

    async def _write(self, stream: Any, message: Any) -> None:
        try:
            with trio.fail_after(WRITE_TIMEOUT_S):
                await framing.write_frame(stream, to_wire(message))
        except trio.TooSlowError as exc:
            raise TransportError("peer did not read within the write deadline") from exc


async def serve_guarded(stream: Any, serve: Callable[[Any, str], Awaitable[None]], what: str) -> None:
    """Run ``serve(stream, peer)``; whatever happens, the stream is closed and the node lives on:
    a broken connection is logged, a bug of ours is logged and answered "internal"."""
    peer = _remote_peer(stream)
    try:
        await serve(stream, peer)
    except TransportError as exc:
        log.info("peer %s: %s", peer, exc)
    except trio.Cancelled:
        raise
    except Exception:  # a bug of ours must not take the node down either
        log.exception("peer %s: internal error while serving %s", peer, what)
        await _send_error(stream, JobRejected(ErrorCode.INTERNAL, "internal error on the node"))
    finally:
        await _close(stream)


def _default_params(job: SignedJob) -> Any:
    return job.request.settings  # what LoadedModel.generate takes


async def _send_error(stream: Any, exc: JobRejected) -> None:
    message = ErrorMessage(t="error", code=exc.code, message=exc.message[:2000])
    try:
        with trio.fail_after(5):
            await framing.write_frame(stream, to_wire(message))
    except (TransportError, trio.TooSlowError):
        pass
    except Exception:  # the stream may be in any state; the error reply is best effort
        log.debug("could not send error reply", exc_info=True)


async def _close(stream: Any) -> None:
    try:
        with trio.move_on_after(2):
            await stream.close()
    except Exception:
        try:
            await stream.reset()
        except Exception:
            pass


def _remote_peer(stream: Any) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:
        return "?"

