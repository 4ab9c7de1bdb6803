"""Ctrl-C in a network command: exit 130 with one line saying what is left and how to get it.

trio raises ``KeyboardInterrupt`` wherever the main task is, and nurseries (py-libp2p's included)
wrap it in exception groups; ``run_trio`` finds it inside them and turns it into ``Interrupted``,
whose message the command composes from what it knows at that moment (e.g. the jobs a node has
already accepted, with the ``fetch`` command that gets their images).
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol.errors import PointillistError


class Interrupted(PointillistError):
    exit_code = 130


def run_trio(async_fn: Callable[..., Any], *args: Any, interrupted: Callable[[], str]) -> Any:
    import trio

    try:
        return trio.run(async_fn, *args)
    except BaseException as exc:
        if is_interrupt(exc):
            raise Interrupted(interrupted()) from None
        raise


def is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(is_interrupt(inner) for inner in exc.exceptions)
    return False
