"""Samplers: the AUTOMATIC1111 sampler names a job may give, mapped to diffusers schedulers.

A sampler is a scheduler class and the config overrides that make it that sampler (Karras
sigmas, the solver's algorithm and order). The scheduler is built with
``Class.from_config(<the model's own scheduler config>, **overrides)``, so what the model was
trained with (betas, prediction type, timestep spacing, steps offset) carries over, and the
attestation records the resulting class and full config: ``Class.from_config(recorded_config)``
rebuilds the scheduler that ran, on any machine, without this table (tests/test_samplers.py).

Every override a sampler depends on is given explicitly, even where it is the class default:
a model whose own scheduler is, say, DPM++ 2M Karras must still get plain Euler for "Euler".

Importing this module imports neither torch nor diffusers (admission checks names with it);
``build_scheduler`` imports diffusers when called.

Stochastic samplers ("Euler a", the SDE ones, LCM) draw their per-step noise from the
pipeline's seeded CPU generator, so they are as reproducible as the others; the one exception is
DPMSolverSDEScheduler ("DPM++ SDE Karras"), which draws from a Brownian tree (torchsde) seeded by
its ``noise_sampler_seed``, else from torch's global RNG: it is given the job's seed modulo
2**63 (the recorded config holds integers of int64), which the recorded config then holds.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

from ..protocol.errors import ErrorCode, JobRejected, UsageError
from ..protocol.settings import SAMPLERS


@dataclass(frozen=True)
class Sampler:
    name: str  # the A1111 name
    scheduler: str  # the diffusers class name
    overrides: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # Python packages the scheduler imports when it runs
    seeded: bool = False  # takes the job's seed as noise_sampler_seed


_KARRAS = {"use_karras_sigmas": True}
_NOT_KARRAS = {"use_karras_sigmas": False}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

#: The table, by A1111 name, in ``SAMPLERS`` order. UniPC: A1111's default order 3, but variant
#: bh2 (diffusers' default), not A1111's bh1: in diffusers 0.42.1 bh1 turns every image into NaN
#: (black) on the embedded model, at 3 to 10 steps.
TABLE: dict[str, Sampler] = {s.name: s for s in (
    Sampler("Euler", "EulerDiscreteScheduler", _NOT_KARRAS),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Heun", "HeunDiscreteScheduler", _NOT_KARRAS),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_NOT_KARRAS}),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_NOT_KARRAS}),
    Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_KARRAS}),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, requires=("torchsde",), seeded=True),
    Sampler("LMS", "LMSDiscreteScheduler", _NOT_KARRAS, requires=("scipy",)),
    Sampler("LMS Karras", "LMSDiscreteScheduler", _KARRAS, requires=("scipy",)),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    Sampler("UniPC", "UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 3, **_NOT_KARRAS}),
    Sampler("LCM", "LCMScheduler"),
)}
assert tuple(TABLE) == SAMPLERS, "node/samplers.py and protocol/settings.py SAMPLERS disagree"


def missing_packages(name: str) -> list[str]:
    """The packages sampler ``name`` needs that are not installed here (no import is made)."""
    return [package for package in TABLE[name].requires if importlib.util.find_spec(package) is None]


def supported() -> tuple[str, ...]:
    """The sampler names this installation can run."""
    return tuple(name for name in SAMPLERS if not missing_packages(name))


def sampler_refusal(name: str | None) -> str | None:
    """One line saying why this node cannot run sampler ``name``, or ``None`` if it can (or if
    ``name`` is ``None``: a version 1 job, the model's own scheduler)."""
    if name is None:
        return None
    if name not in TABLE:
        return f"unknown sampler {name!r}; supported: {', '.join(supported())}"
    missing = missing_packages(name)
    if missing:
        return (f"sampler {name!r} needs the Python package {', '.join(missing)}, not installed on this node; "
                f"supported: {', '.join(supported())}")
    return None


def check_sampler(name: str | None) -> None:
    """Raise ``JobRejected(INVALID_PARAMS)`` unless this node can run sampler ``name``."""
    problem = sampler_refusal(name)
    if problem is not None:
        raise JobRejected(ErrorCode.INVALID_PARAMS, problem)


def build_scheduler(base_config: Any, name: str, seed: int) -> Any:
    """The diffusers scheduler of sampler ``name`` on top of a model's scheduler config;
    ``UsageError`` if this node cannot run it."""
    problem = sampler_refusal(name)
    if problem is not None:
        raise UsageError(problem)
    import diffusers  # lazily: admission imports this module

    sampler = TABLE[name]
    overrides = dict(sampler.overrides)
    if sampler.seeded:
        # The config's integers are int64 (docs/attestation.md, section 3.1); job seeds reach 2**64.
        overrides["noise_sampler_seed"] = seed % 2**63
    return getattr(diffusers, sampler.scheduler).from_config(base_config, **overrides)


#: JSON has no infinities; diffusers configs hold some (DPMSolverMultistepScheduler's
#: ``lambda_min_clipped`` is -inf by default). The recorded config spells them as these strings
#: (docs/attestation.md, section 3), which no diffusers config takes as a string value.
_INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}


def _to_json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _from_json_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json_value(v) for v in value]
    if isinstance(value, str) and value in _INFINITIES:
        return _INFINITIES[value]
    return value


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """What the attestation records of a scheduler: its config without the ``_``-prefixed
    bookkeeping (``_class_name``, ``_diffusers_version``), tuples as lists, infinities as the
    strings ``Infinity`` / ``-Infinity``. ``rebuild_scheduler`` of it gives the same scheduler."""
    return {key: _to_json_value(value) for key, value in dict(scheduler.config).items() if not key.startswith("_")}


def rebuild_scheduler(class_name: str, config: dict[str, Any]) -> Any:
    """The scheduler an attestation records (its ``scheduler`` class and ``schedulerConfig``):
    ``Class.from_config(config)``, the infinity strings read back as floats."""
    import diffusers

    config = {key: _from_json_value(value) for key, value in config.items()}

    cls = getattr(diffusers, class_name, None)
    if cls is None or not isinstance(cls, type) or not class_name.endswith("Scheduler"):
        raise UsageError(f"{class_name!r} is no diffusers scheduler class")
    return cls.from_config(config)
