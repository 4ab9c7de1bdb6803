"""What an audit asks a node for (node/audit_check.py does the checking): the steps to challenge,
drawn after the commitment, and the leaves their checks need, by scheduler. Torch-free: a
requester that has another node recompute (a remote audit) plans the audit without torch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..attestation.statement import GenerationRecord
from ..protocol.errors import PointillistError

#: Schedulers whose ``step`` adds noise the commitments do not hold (docs/attestation.md, 10).
STOCHASTIC_SCHEDULERS = frozenset({
    "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler",
    "LCMScheduler", "DDPMScheduler", "TCDScheduler", "CMStochasticIterativeScheduler",
})
#: Deterministic schedulers whose step k depends on leaf k-1 and eps_k only.
SINGLE_STEP_SCHEDULERS = frozenset({"DDIMScheduler", "EulerDiscreteScheduler"})
#: Deterministic multistep schedulers: how many earlier steps a replay must run before step k to
#: reach its state (``None``: all of them, from x_T). DPM++ uses the ``solver_order`` - 1 previous
#: model outputs; UniPC's corrector reaches ``solver_order`` + 1 steps back (a replay from
#: ``solver_order`` back is off by 1-4 % of the step on the embedded model, measured). PNDM/PLMS
#: keeps a counter and Heun/LMS per-step state that a replay from the middle does not rebuild.
#: Each window is checked bit for bit against a full replay by tests/test_audit_check.py.
_HISTORY = {
    "DPMSolverMultistepScheduler": lambda config: int(config.get("solver_order", 2)) - 1,
    "UniPCMultistepScheduler": lambda config: int(config.get("solver_order", 2)) + 1,
    "PNDMScheduler": lambda config: None,
    "HeunDiscreteScheduler": lambda config: None,
    "LMSDiscreteScheduler": lambda config: None,
}


class AuditError(PointillistError):
    """The audit itself cannot run (bad arguments), as opposed to a verdict."""


def is_stochastic(scheduler: str, config: Mapping[str, Any]) -> bool:
    if scheduler in STOCHASTIC_SCHEDULERS:
        return True
    algorithm = config.get("algorithm_type")
    return isinstance(algorithm, str) and algorithm.startswith("sde")


def choose_steps(steps: int, extra: int = 2, rng: random.Random | None = None) -> list[int]:
    """The steps to challenge: step 1 (it binds the seed to the model's first output) and ``extra``
    more drawn uniformly without replacement from 2..``steps``; sorted. Use an unpredictable
    ``rng`` (the default, ``random.SystemRandom``) once the node has committed."""
    rng = rng if rng is not None else random.SystemRandom()
    others = list(range(2, steps + 1))
    return sorted([1, *rng.sample(others, min(extra, len(others)))])


def history_start(scheduler: str, config: Mapping[str, Any], k: int) -> int | None:
    """The first step a replay of the scheduler part of step k runs (1..k): k for single-step
    schedulers; ``None`` for a scheduler with no rule here (stochastic or unknown)."""
    if scheduler in SINGLE_STEP_SCHEDULERS:
        return k
    rule = _HISTORY.get(scheduler)
    if rule is None or is_stochastic(scheduler, config):
        return None
    back = rule(config)
    return 1 if back is None else max(1, k - back)


def leaves_needed(record: GenerationRecord, steps: Sequence[int], *, scheduler_history: bool = True) -> list[int]:
    """Leaf indices an audit of ``steps`` asks for: 0 (x_T), N (the image's latent), k and k-1 for
    each challenged k, and, with ``scheduler_history``, the earlier leaves a multistep scheduler's
    replay needs (``history_start``)."""
    if record.trajectory is None:
        raise AuditError("the record has no step commitments (not version 3)")
    n = record.trajectory.steps
    wanted = {0, n}
    for k in steps:
        if not 1 <= k <= n:
            raise AuditError(f"step {k} is not in 1..{n}")
        wanted |= {k - 1, k}
        start = history_start(record.scheduler, record.scheduler_config or {}, k) if scheduler_history else None
        if start is not None:
            wanted |= set(range(start - 1, k + 1))
    return sorted(wanted)
