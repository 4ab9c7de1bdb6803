"""The operator's policy: limits on jobs, who may submit, how often, and how long results are kept.

Read from ``policy.toml`` (``--policy FILE``, default ``policy.toml`` in the config directory if it
exists; ``pointillist node init`` writes one with every key); every key is optional and unknown
keys are refused::

    [limits]            # per job; see NodeLimits for defaults
    max_steps = 150
    min_side = 64
    max_side = 2048
    side_multiple = 8
    max_pixels = 1048576
    max_prompt_chars = 2000
    min_guidance = 0.0
    max_guidance = 30.0
    queue_size = 8      # jobs waiting behind the running one; more are answered "busy"

    [requesters]
    allow = []          # requester peer IDs; if not empty, only these may submit
    deny = []           # requester peer IDs refused outright
    jobs_per_minute = 30
    burst = 10

    [results]
    keep_hours = 24     # finished images stay fetchable by job id this long
    max_mb = 2048       # and within this much disk; oldest go first

    [audits]
    serve = true        # recompute steps of other nodes' images for requesters' audit jobs

    [relay]             # circuit relay v2 for nodes that cannot be dialed (network/relay.py)
    serve = true        # relay for others (only a node that others can dial is any use as one)
    max_reservations = 32
    max_circuits = 8    # at once, per node that reserved a slot
    max_circuit_mb = 64.0
    max_circuit_s = 900
    reservation_ttl_s = 3600
"""

from __future__ import annotations

import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..protocol.errors import ErrorCode, JobRejected, UsageError
from .limits import NodeLimits


@dataclass(frozen=True)
class RequesterPolicy:
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    jobs_per_minute: float = 30.0
    burst: int = 10

    def check_identity(self, requester: str) -> None:
        if requester in self.deny or (self.allow and requester not in self.allow):
            raise JobRejected(ErrorCode.FORBIDDEN, f"requester {requester} may not submit jobs to this node")


@dataclass(frozen=True)
class ResultPolicy:
    keep_hours: float = 24.0
    max_mb: float = 2048.0


@dataclass(frozen=True)
class AuditPolicy:
    #: Audit jobs (protocol/audit_job.py) cost a few UNet steps each and let requesters without
    #: a GPU check the network's work, so a node serves them unless its operator says not to.
    serve: bool = True


@dataclass(frozen=True)
class RelayPolicy:
    serve: bool = True
    max_reservations: int = 32
    max_circuits: int = 8
    max_circuit_mb: float = 64.0
    max_circuit_s: int = 900
    reservation_ttl_s: int = 3600

    def service(self) -> Any:
        """The relay service to run (``network.relay.RelayService``), or ``None``."""
        if not self.serve:
            return None
        from ..network.relay import RelayService

        return RelayService(self.max_reservations, self.max_circuits, self.max_circuit_mb, self.max_circuit_s,
                            self.reservation_ttl_s)


@dataclass(frozen=True)
class Policy:
    limits: NodeLimits = field(default_factory=NodeLimits)
    requesters: RequesterPolicy = field(default_factory=RequesterPolicy)
    results: ResultPolicy = field(default_factory=ResultPolicy)
    audits: AuditPolicy = field(default_factory=AuditPolicy)
    relay: RelayPolicy = field(default_factory=RelayPolicy)


def load_policy(path: Path | None) -> Policy:
    if path is None or not path.exists():
        return Policy()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read policy {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"policy {path}: {exc}") from exc
    unknown = set(raw) - {"limits", "requesters", "results", "audits", "relay"}
    if unknown:
        raise UsageError(f"policy {path}: unknown section(s) {', '.join(sorted(unknown))}")
    req = dict(raw.get("requesters", {}))
    for key in ("allow", "deny"):
        if key in req:
            if not isinstance(req[key], list) or not all(isinstance(p, str) for p in req[key]):
                raise UsageError(f"policy {path}: requesters.{key} must be a list of peer IDs")
            req[key] = frozenset(req[key])
    return Policy(
        limits=_build(NodeLimits, raw.get("limits", {}), "limits", path),
        requesters=_build(RequesterPolicy, req, "requesters", path),
        results=_build(ResultPolicy, raw.get("results", {}), "results", path),
        audits=_build(AuditPolicy, raw.get("audits", {}), "audits", path),
        relay=_build(RelayPolicy, raw.get("relay", {}), "relay", path),
    )


def _build(cls, values: dict, section: str, path: Path):
    if not isinstance(values, dict):
        raise UsageError(f"policy {path}: [{section}] must be a table")
    defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
    unknown = set(values) - set(defaults)
    if unknown:
        raise UsageError(f"policy {path}: unknown setting(s) {', '.join(f'{section}.{k}' for k in sorted(unknown))}")
    for name, value in values.items():
        expected = type(defaults[name])
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or isinstance(value, bool) != isinstance(defaults[name], bool):
            raise UsageError(f"policy {path}: {section}.{name} must be {expected.__name__}, not {value!r}")
    try:
        obj = cls(**values)
    except TypeError as exc:
        raise UsageError(f"policy {path}: [{section}]: {exc}") from exc
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UsageError(f"policy {path}: {section}.{name} must not be negative")
    return obj


class RateLimiter:
    """Token bucket per requester: ``burst`` jobs at once, refilled at ``per_minute``. Pure; bounded
    to ``max_keys`` requesters (the least recently seen are forgotten, which only ever helps them)."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> None:
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
            raise JobRejected(ErrorCode.RATE_LIMITED, f"too many jobs from {key}; retry in {wait:.0f} s")
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
