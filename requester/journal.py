"""The requester's journal: every job a node accepted, so that no job is lost from sight.

One JSON object per line in ``jobs.jsonl`` in the requester's data directory, appended the moment
a node accepts a job (before the image exists): job id, node peer ID, the address it was reached
at, when. ``pointillist fetch JOB_ID`` finds the node here, so an interrupted ``submit`` or a
broken connection never leaves a user holding an id without knowing where its image is. Bounded:
the oldest lines are dropped once the file holds twice ``MAX_ENTRIES``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_ENTRIES = 1000


@dataclass(frozen=True)
class JournalEntry:
    job_id: str
    peer_id: str
    addr: str
    accepted_at: int


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, entry: JournalEntry) -> None:
        """Append ``entry``; a journal that cannot be written costs a warning, never the job."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
            # No line is shorter than 64 bytes: below this size there cannot be too many lines.
            if self.path.stat().st_size > 2 * MAX_ENTRIES * 64 and self.path.read_bytes().count(b"\n") > 2 * MAX_ENTRIES:
                self._trim()
        except OSError:
            pass

    def find(self, job_id: str) -> JournalEntry | None:
        found = None
        for entry in self._entries():
            if entry.job_id == job_id:
                found = entry  # the last one wins: a job fetched from a restarted node's new address
        return found

    def _entries(self) -> list[JournalEntry]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        out = []
        for line in lines:
            try:
                raw = json.loads(line)
                out.append(JournalEntry(str(raw["job_id"]), str(raw["peer_id"]), str(raw["addr"]),
                                        int(raw["accepted_at"])))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: skip it
        return out

    def _trim(self) -> None:
        keep = self._entries()[-MAX_ENTRIES:]
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(asdict(e), separators=(",", ":")) + "\n" for e in keep), encoding="utf-8")
        os.replace(tmp, self.path)
