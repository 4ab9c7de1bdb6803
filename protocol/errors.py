"""One error root for the whole project, split by who is at fault.

    PointillistError            root; str(err) is one line meant for a human
    ├── UsageError              the caller's input is wrong (arguments, files, config)
    ├── ModelError              a model could not be found, hashed or loaded
    ├── RemoteError             a peer sent something we cannot accept
    │   └── FrameError          framing or encoding is broken
    │       └── FrameTooLarge   a frame longer than the receiver's limit
    ├── JobRejected             a node refused a job and said why (``code``, an ``ErrorCode``)
    ├── TransportError          the network failed: unreachable, reset, timed out
    └── VerificationError       a signature, digest or binding does not hold
        └── SignatureError      specifically, a signature is invalid

The CLI catches only the root and prints ``error: <message>``; tracebacks are for ``--verbose``.
Errors of libraries underneath (libp2p, msgpack, torch) are mapped at the boundary with
``raise Ours(...) from exc``.
"""

from __future__ import annotations

import enum


class PointillistError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1

    def diagnostics(self) -> str:
        """A one-line, human-readable account of what went wrong."""
        return str(self) or type(self).__name__


class UsageError(PointillistError):
    exit_code = 2


class ModelError(PointillistError):
    exit_code = 2


class RemoteError(PointillistError):
    """A peer sent data that fails our schema, size or signature checks."""


class FrameError(RemoteError):
    pass


class FrameTooLarge(FrameError):
    """A frame's announced length is above the receiver's limit."""


class Retry(enum.Enum):
    """What a requester does after a node answered with an error code (docs/protocol.md)."""

    LATER = "later"  # the node is loaded, not at fault: try others now, this one again later
    ELSEWHERE = "elsewhere"  # this node will not run this job: try another, no penalty
    ELSEWHERE_AND_AVOID = "elsewhere-and-avoid"  # the node failed: try another, back off from it


class ErrorCode(enum.StrEnum):
    """The error codes of the job protocol, as they travel (``{t:"error", code, message}``).

    A ``StrEnum`` so that it is its wire string; a code a peer sends that is not listed here
    makes the whole message invalid (``bad-frame`` on our side), never an unknown member.
    """

    BAD_FRAME = "bad-frame"  # not msgpack, not a map, unknown message type, schema violation
    FRAME_TOO_LARGE = "frame-too-large"
    BAD_SIGNATURE = "bad-signature"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    WRONG_NODE = "wrong-node"  # the job was signed for another node
    UNKNOWN_MODEL = "unknown-model"
    INVALID_PARAMS = "invalid-params"  # outside this node's limits
    BUSY = "busy"  # queue full, shutting down, replay cache full
    RATE_LIMITED = "rate-limited"  # this requester sent too many jobs to this node
    FORBIDDEN = "forbidden"  # the operator's policy refuses this requester
    NOT_FOUND = "not-found"  # fetch: no stored result for that job id (or not yours)
    TIMEOUT = "timeout"  # the node gave up waiting for the request
    INTERNAL = "internal"  # the node failed while running the job
    OUT_OF_MEMORY = "out-of-memory"  # the job did not fit the node's device memory; it keeps serving

    @property
    def retry(self) -> Retry:
        return _RETRY.get(self, Retry.ELSEWHERE)


#: The requester's rule, by code; codes not listed are ``Retry.ELSEWHERE``: refusals that depend
#: on this node (its models, limits, policy, clock) or on a request another node would judge
#: afresh. Tested in tests/test_error_codes.py against docs/protocol.md's table.
_RETRY = {
    ErrorCode.BUSY: Retry.LATER,
    ErrorCode.RATE_LIMITED: Retry.LATER,
    ErrorCode.INTERNAL: Retry.ELSEWHERE_AND_AVOID,
    ErrorCode.TIMEOUT: Retry.ELSEWHERE_AND_AVOID,
    # The node accepted a job it advertised it could run and then could not: its estimate or its
    # free memory was wrong (often a GPU shared with other programs), and the same will likely
    # happen to the next job of that size. Avoid it briefly; it stays a candidate behind others.
    ErrorCode.OUT_OF_MEMORY: Retry.ELSEWHERE_AND_AVOID,
}


class JobRejected(PointillistError):
    """A node refused a job (or our node refuses one) with a typed ``code`` and a message."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        code = ErrorCode(code)  # a string that is not a code is a bug of ours: ValueError
        super().__init__(f"node refused the job ({code}): {message}")
        self.code = code
        self.message = message


class TransportError(PointillistError):
    pass


class VerificationError(PointillistError):
    pass


class SignatureError(VerificationError):
    pass


def find_ours(exc: BaseException) -> PointillistError | None:
    """The first of our errors inside ``exc``, looking through exception groups and causes.

    trio nurseries (and so py-libp2p's ``host.run()``) wrap what a task raised in
    ``ExceptionGroup``s; the user should still see our one-line message, not the group.
    """
    if isinstance(exc, PointillistError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_ours(inner)
            if found is not None:
                return found
    return None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception squeezed into one bounded line, for mapping into our errors."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
