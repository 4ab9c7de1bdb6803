"""One error root for the whole project, split by who is at fault.

    PointillistError            root; str(err) is one line meant for a human
    ├── UsageError              the caller's input is wrong (arguments, files, config)
    ├── ModelError              a model could not be found, hashed or loaded
    ├── RemoteError             a peer sent something we cannot accept
    │   └── FrameError          framing or encoding is broken
    ├── JobRejected             a node refused a job and said why (``code``)
    ├── TransportError          the network failed: unreachable, reset, timed out
    └── VerificationError       a signature, digest or binding does not hold
        └── SignatureError      specifically, a signature is invalid

The CLI catches only the root and prints ``error: <message>``; tracebacks are for ``--verbose``.
Errors of libraries underneath (libp2p, msgpack, torch) are mapped at the boundary with
``raise Ours(...) from exc``.
"""

from __future__ import annotations


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


class JobRejected(PointillistError):
    """A node answered with an error message; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
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
