"""Finished results on disk, keyed by job id, so a requester whose connection broke can fetch
its image later, also after the node restarts. Bounded by age and total size (oldest first).

Layout: ``<dir>/<job id>.png`` and ``<dir>/<job id>.json`` (requester, created). Files are written
to a temporary name and renamed, so a crash never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredResult:
    job_id: str
    requester: str
    created: float
    png: bytes


class ResultStore:
    def __init__(self, directory: Path, keep_s: float, max_bytes: int) -> None:
        self.directory = directory
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(self, job_id: str, requester: str, png: bytes, now: float | None = None) -> None:
        if not _JOB_ID.match(job_id):
            raise ValueError("job ids are 32 lowercase hex digits")
        now = time.time() if now is None else now
        self._write(self.directory / f"{job_id}.png", png)
        self._write(self.directory / f"{job_id}.json", json.dumps({"requester": requester, "created": now}).encode())
        self.prune(now)

    def get(self, job_id: str, now: float | None = None) -> StoredResult | None:
        if not _JOB_ID.match(job_id):
            return None
        now = time.time() if now is None else now
        try:
            meta = json.loads((self.directory / f"{job_id}.json").read_text())
            png = (self.directory / f"{job_id}.png").read_bytes()
        except (OSError, ValueError):
            return None
        if now - meta.get("created", 0) > self.keep_s:
            return None
        return StoredResult(job_id, meta["requester"], meta["created"], png)

    def prune(self, now: float | None = None) -> int:
        """Drop expired results, then the oldest until within the size bound. Returns how many."""
        now = time.time() if now is None else now
        entries = []
        for meta_path in self.directory.glob("*.json"):
            png_path = meta_path.with_suffix(".png")
            try:
                created = json.loads(meta_path.read_text()).get("created", 0)
                size = png_path.stat().st_size
            except (OSError, ValueError):
                created, size = 0, 0
            entries.append((created, size, meta_path, png_path))
        entries.sort()
        total = sum(e[1] for e in entries)
        dropped = 0
        for created, size, meta_path, png_path in entries:
            if now - created <= self.keep_s and total <= self.max_bytes:
                continue
            for p in (png_path, meta_path):
                p.unlink(missing_ok=True)
            total -= size
            dropped += 1
        return dropped

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        # No fsync: rename already guarantees a whole file or none, which covers process crashes
        # and restarts; surviving a power cut as well would cost two fsyncs (~100 ms here) per job.
        tmp.write_bytes(data)
        os.replace(tmp, path)
