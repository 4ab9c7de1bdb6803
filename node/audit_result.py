"""What an audit concludes (node/audit_check.py computes it): the verdict, each check with its
figure, and the thresholds they were held to. Torch-free, so that code which only reports or
carries verdicts (the CLI, a remote auditor's signed verdict) does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .reproduce import MAX_ABS_DIFF, MAX_MEAN_ABS_DIFF

PASS = "pass"
FAIL = "fail"
UNAUDITABLE = "unauditable"

#: The UNet part: largest ``||eps' - eps|| / ||eps||`` of an honest recomputation (CPU float32).
#: Calibrated by bench/bench_audit_detection.py on the embedded model (docs/audit.md): honest
#: recomputations on another thread count or batch size reached 8.2e-6 (0 on the same ones); the
#: subtlest dishonest case, UNet weights x (1 + 0.1 % noise), measured at least 5.9e-3. 2e-4 is
#: about their geometric mean: 25x above the one, 29x below the other.
MAX_EPS_REL_ERROR = 2e-4
#: The scheduler part: largest ``||x_k' - x_k|| / ||x_k - x_{k-1}||``. The scheduler's arithmetic on
#: committed values is elementwise and deterministic: 0 in every honest trial here; the bound
#: leaves room for another device's rounding of the same float operations.
MAX_STEP_REL_ERROR = 1e-4

#: (device type, dtype) where the thresholds were calibrated: a figure beyond one fails a node only
#: when the node and the audit both ran here; elsewhere it makes the audit unauditable.
CALIBRATED_CONDITIONS = frozenset({("cpu", "float32")})


@dataclass(frozen=True)
class Check:
    """One check: ``status`` pass / fail / unauditable, with its figure where one was measured."""

    name: str  # model, proof, step-count, seed-binding, unet, scheduler, vae
    status: str
    detail: str
    step: int | None = None  # the step (unet, scheduler) or leaf (proof) it concerns
    measure: str | None = None  # what ``value`` is
    value: float | None = None
    threshold: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        value = self.value
        if value is not None and not math.isfinite(value):
            value = str(value)  # JSON has no infinities
        out: dict[str, Any] = {"check": self.name, "status": self.status, "detail": self.detail}
        if self.step is not None:
            out["step"] = self.step
        if self.measure is not None:
            out.update(measure=self.measure, value=value, threshold=self.threshold)
        if self.figures:
            out["figures"] = self.figures
        return out

    def describe(self) -> str:
        where = f" step {self.step}" if self.step is not None else ""
        return f"{self.name}{where}: {self.status}: {self.detail}"


@dataclass(frozen=True)
class AuditVerdict:
    verdict: str  # PASS, FAIL, UNAUDITABLE
    detail: str  # one line
    checks: tuple[Check, ...]
    steps: tuple[int, ...] = ()  # the challenged steps
    auditor: str | None = None  # the node that recomputed, for a remote audit (None: here)
    signed: dict[str, Any] | None = None  # that node's signed verdict (DSSE JSON, predicate audit/v1)

    @property
    def ok(self) -> bool | None:
        """True: passed; False: failed; None: unauditable."""
        return None if self.verdict == UNAUDITABLE else self.verdict == PASS

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.status == FAIL), None)

    @property
    def unchecked(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == UNAUDITABLE)

    def check(self, name: str, step: int | None = None) -> Check | None:
        return next((c for c in self.checks if c.name == name and (step is None or c.step == step)), None)

    def to_json_dict(self) -> dict[str, Any]:
        out = {
            "verdict": self.verdict,
            "detail": self.detail,
            "challengedSteps": list(self.steps),
            "checks": [c.to_json_dict() for c in self.checks],
            "thresholds": thresholds_json(),
        }
        if self.auditor is not None:
            out["auditor"] = self.auditor
        if self.signed is not None:
            out["signedVerdict"] = self.signed
        return out

    def describe(self) -> str:
        by = f" (recomputed by node {self.auditor})" if self.auditor else ""
        return "\n".join([f"audit{by}: {self.detail}", *("  " + c.describe() for c in self.checks)])

    @classmethod
    def from_signed(cls, record: Any, envelope: Any = None) -> "AuditVerdict":
        """The verdict an auditor signed (``attestation.audit_verdict.AuditVerdictRecord``) and
        its envelope, kept so that the signed form travels with what is reported."""
        checks = []
        for c in record.checks:
            value = c.get("value")
            checks.append(Check(
                str(c["check"]), str(c["status"]), str(c["detail"]), _int_or_none(c.get("step")),
                c.get("measure") if isinstance(c.get("measure"), str) else None,
                float(value) if isinstance(value, (int, float)) or value in ("inf", "nan") else None,
                c.get("threshold") if isinstance(c.get("threshold"), (int, float)) else None,
                c.get("figures") if isinstance(c.get("figures"), dict) else {}))
        return cls(record.verdict, record.detail, tuple(checks), tuple(record.steps), record.auditor,
                   envelope.to_json_dict() if envelope is not None else None)


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def thresholds_json() -> dict[str, Any]:
    return {"epsRelError": MAX_EPS_REL_ERROR, "stepRelError": MAX_STEP_REL_ERROR,
            "vaeMeanAbsDiff": MAX_MEAN_ABS_DIFF, "vaeMaxAbsDiff": MAX_ABS_DIFF, "seedBinding": "bit-exact"}
