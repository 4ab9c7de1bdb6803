"""Logging that a peer cannot flood: at most ``burst`` lines per key per ``window_s``; what is
held back is counted and reported in one line when the window turns over.

A fuzzing or misbehaving peer once made a node write 5,175 "refused" lines in one run; the
operator needs to know it happens and how often, not every instance.
"""

from __future__ import annotations

import logging
import time
from typing import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, lines in window)

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log unless ``key`` used up its burst in this window; returns whether it was logged."""
        now = self.clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window_s:
            if count > self.burst:
                self.logger.log(level, "%d more %s line(s) held back in the last %.0f s",
                                count - self.burst, key, now - start)
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if len(self._windows) > 1000:  # keys come from a fixed set in practice; stay bounded anyway
            self._windows.pop(next(iter(self._windows)))
        if count <= self.burst:
            self.logger.log(level, msg, *args)
            return True
        return False
