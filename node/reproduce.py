"""Re-running an attested generation to check its claim: ``pointillist verify --reproduce``.

A valid attestation proves who claims an image, not that the claim is true: a node that ran other
weights, another prompt or fewer steps, or pasted an image, and signed honest-looking settings,
still verifies. ``Reproducer.reproduce`` runs the generation the statement describes — the same
model (by digest), prompt, negative prompt, seed, steps, guidance, size and scheduler — and
compares the pixels:

* ``bit-for-bit``: identical RGB8 pixels. Expect it only on the same device type, dtype, torch
  thread count, library versions and CPU instruction set as the node (docs/reproduce.md).
* ``within-tolerance``: not identical, but no further apart than an honest run under other
  conditions (``within_tolerance``: ``MAX_MEAN_ABS_DIFF``, ``MAX_ABS_DIFF``).
* ``mismatch``: further apart; the attested generation does not give this image.
* ``cannot-reproduce``: this machine cannot run the attested generation (another model digest,
  scheduler class or pipeline, a sampler needing a missing package, a model that will not load),
  or ran it on another device type or dtype and got pixels beyond the tolerance, which holds
  only under the attested ones (``judge``). It says nothing against the image.

Importing this module imports neither torch nor diffusers (the model digest is checked first,
so a wrong ``--model`` answers without them); ``Reproducer`` loads them on its first run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from ..protocol.errors import ModelError, PointillistError, UsageError, one_line

BIT_FOR_BIT = "bit-for-bit"
WITHIN_TOLERANCE = "within-tolerance"
MISMATCH = "mismatch"
CANNOT_REPRODUCE = "cannot-reproduce"
OUTCOMES = (BIT_FOR_BIT, WITHIN_TOLERANCE, MISMATCH, CANNOT_REPRODUCE)

#: The tolerance, in 8-bit levels (0..255) of the RGB values, calibrated on the embedded model by
#: bench/bench_reproduce_tolerance.py (figures and reasoning: docs/reproduce.md). Over 20 seeds,
#: honest re-runs on 2 and 4 torch threads moved at most 2 of 12,288 values by one level (mean
#: 0.00016); the subtlest dishonest run (another sampler) had a mean of at least 0.0208, 0.1 %
#: noise on the UNet's weights at least 0.053: a separation of 128x. The limit is about their
#: geometric mean (0.0018), an order of magnitude from each side. Calibrated on random tiny
#: weights on a CPU only: GPUs, float16 and real models are not measured here.
MAX_MEAN_ABS_DIFF = 0.002
#: No single value may move further than this: a mean over a large image would dilute a small
#: pasted patch. Honest re-runs moved values by 1 level at most.
MAX_ABS_DIFF = 8

#: Dtypes a re-run may use on each device type; another attested dtype runs as float32 (CPUs
#: have no fast float16, and diffusers advises against it there).
_DEVICE_DTYPES = {
    "cpu": ("float32", "bfloat16"),
    "cuda": ("float32", "float16", "bfloat16"),
    "mps": ("float32", "float16"),
}
_LIBRARY_ORDER = ("torch", "diffusers", "transformers", "pointillist")


@dataclass(frozen=True)
class PixelDifference:
    """How far two RGB8 images of one size are apart, over every R, G and B value."""

    values: int  # width * height * 3
    differing: int  # values that are not equal
    max_abs: int  # largest difference, levels 0..255
    mean_abs: float  # mean absolute difference, levels
    psnr_db: float  # peak signal-to-noise ratio; inf when identical

    @property
    def identical(self) -> bool:
        return self.differing == 0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "valuesDiffering": self.differing,
            "maxAbsDiff": self.max_abs,
            "meanAbsDiff": self.mean_abs,
            "psnrDb": None if math.isinf(self.psnr_db) else round(self.psnr_db, 2),  # JSON has no infinity
        }

    def describe(self) -> str:
        psnr = "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f}"
        levels = "level" if self.max_abs == 1 else "levels"
        return (f"{self.differing} of {self.values} RGB values differ, max {self.max_abs} {levels}, "
                f"mean {self.mean_abs:.5f} levels, PSNR {psnr} dB")


def compare_pixels(a: Image.Image, b: Image.Image) -> PixelDifference:
    """The difference of two images of the same size, as RGB8 (no numpy: Pillow's histogram)."""
    if a.size != b.size:
        raise UsageError(f"cannot compare a {a.width}x{a.height} image with a {b.width}x{b.height} one")
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    hist = diff.histogram()  # 256 bins per band, R then G then B
    counts = [sum(hist[level + 256 * band] for band in range(3)) for level in range(256)]
    values = a.width * a.height * 3
    total = sum(level * n for level, n in enumerate(counts))
    squares = sum(level * level * n for level, n in enumerate(counts))
    max_abs = max((level for level, n in enumerate(counts) if n), default=0)
    mse = squares / values
    return PixelDifference(
        values=values,
        differing=values - counts[0],
        max_abs=max_abs,
        mean_abs=total / values,
        psnr_db=math.inf if mse == 0 else 10 * math.log10(255 * 255 / mse),
    )


def within_tolerance(difference: PixelDifference) -> bool:
    """True when ``difference`` is no larger than an honest re-run's (docs/reproduce.md)."""
    return difference.mean_abs <= MAX_MEAN_ABS_DIFF and difference.max_abs <= MAX_ABS_DIFF


def threshold_json() -> dict[str, Any]:
    return {"meanAbsDiff": MAX_MEAN_ABS_DIFF, "maxAbsDiff": MAX_ABS_DIFF}


def describe_threshold() -> str:
    return f"tolerance: mean <= {MAX_MEAN_ABS_DIFF} levels and max <= {MAX_ABS_DIFF} levels"


@dataclass(frozen=True)
class Condition:
    """One condition of the run that changes output bits: what the node attested, what ran here."""

    name: str  # device, dtype, threads, torch, diffusers, transformers, pointillist, scheduler
    attested: Any
    here: Any
    same: bool
    note: str | None = None  # why it differs, when that needs words (the scheduler's keys)

    def describe(self) -> str:
        if self.note:
            return f"{self.name} ({self.note})"
        return f"{self.name} (attested {self.attested}, here {self.here})"


@dataclass(frozen=True)
class Reproduction:
    """The outcome of one re-run; ``detail`` is one line."""

    outcome: str  # one of OUTCOMES
    detail: str
    difference: PixelDifference | None = None
    conditions: tuple[Condition, ...] = field(default=())

    @property
    def ok(self) -> bool | None:
        """True: reproduced (bit for bit or within tolerance); False: mismatch; None: cannot."""
        if self.outcome == CANNOT_REPRODUCE:
            return None
        return self.outcome != MISMATCH

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "detail": self.detail,
            "metrics": self.difference.to_json_dict() if self.difference is not None else None,
            "threshold": threshold_json(),
            "held": [c.name for c in self.conditions if c.same],
            "differed": [c.name for c in self.conditions if not c.same],
            "conditions": {
                c.name: {"attested": c.attested, "here": c.here, "same": c.same, **({"note": c.note} if c.note else {})}
                for c in self.conditions
            },
        }


def cannot(detail: str, conditions: tuple[Condition, ...] = ()) -> Reproduction:
    return Reproduction(CANNOT_REPRODUCE, f"cannot reproduce: {detail}", None, conditions)


def judge(difference: PixelDifference, conditions: tuple[Condition, ...]) -> Reproduction:
    """The outcome for a measured difference under ``conditions``.

    The tolerance was calibrated on the attested device type and dtype (only the thread count
    changed); another dtype alone moves pixels further than some lies do (bfloat16 for float32 on
    the embedded model: mean 0.7 levels, docs/reproduce.md). So a difference beyond the tolerance
    while the device type or dtype differed is ``cannot-reproduce``, with its figures, never a
    ``mismatch``: it would accuse an honest GPU node from a CPU.
    """
    differed = [c for c in conditions if not c.same]
    if difference.identical:
        how = "as attested" if not differed else "although " + ", ".join(c.describe() for c in differed) + " differ"
        return Reproduction(BIT_FOR_BIT, f"bit-for-bit: identical RGB8 pixels ({how})", difference, conditions)
    why = ("; differs from the attested run in " + ", ".join(c.describe() for c in differed)) if differed else (
        "; every recorded condition was the same")
    if within_tolerance(difference):
        detail = f"within tolerance: {difference.describe()} ({describe_threshold()}){why}"
        return Reproduction(WITHIN_TOLERANCE, detail, difference, conditions)
    unlike = [c for c in differed if c.name in ("device", "dtype")]
    if unlike:
        attested = "/".join(str(c.attested) for c in unlike)
        here = "/".join(str(c.here) for c in unlike)
        detail = (f"cannot reproduce: ran on {here}, the image was attested on {attested}, and the pixels differ "
                  f"beyond the tolerance ({difference.describe()}), which holds only on the attested device type "
                  f"and dtype; re-run there (--device, --dtype)")
        return Reproduction(CANNOT_REPRODUCE, detail, difference, conditions)
    return Reproduction(MISMATCH, f"mismatch: {difference.describe()}, beyond the {describe_threshold()}{why}",
                        difference, conditions)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, where the platform tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_dtype(attested: str, device: str) -> str:
    """The attested dtype where ``device`` can run it, else float32."""
    allowed = _DEVICE_DTYPES.get(device.split(":")[0], ("float32",))
    return attested if attested in allowed else "float32"


def run_threads(attested: int, cores: int | None = None) -> int:
    """The attested torch thread count when this machine has that many cores (a chance at bit
    exactness), else every core."""
    cores = available_cores() if cores is None else cores
    return attested if attested <= cores else cores


class Reproducer:
    """Re-runs attested generations with one model, loaded once (per dtype) on first use.

    ``device`` defaults to cpu; ``dtype`` and ``threads`` (None: from each attestation, see
    ``run_dtype`` and ``run_threads``) override what the attestation records.
    """

    def __init__(self, model_path: Path, *, device: str = "cpu", dtype: str | None = None,
                 threads: int | None = None, model_config: Path | None = None) -> None:
        self.model_path = Path(model_path).expanduser()
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.model_config = model_config
        self._digest: str | None = None
        self._models: dict[str, Any] = {}  # dtype -> LoadedModel, or the ModelError that loading raised

    @property
    def digest(self) -> str:
        """The model's ``pointillist-model-v1`` digest (no torch; cached on disk by path)."""
        if self._digest is None:
            from .model_digest import model_digest

            self._digest = model_digest(self.model_path)
        return self._digest

    def reproduce(self, record: Any, image: Image.Image) -> Reproduction:
        """Re-run ``record`` (a verified ``GenerationRecord``) and compare with ``image``.

        Never raises for what the attestation or the model is: those are ``cannot-reproduce``.
        ``UsageError`` for a bad ``device`` / ``dtype`` of the caller's own.
        """
        if self.digest != record.model_digest:
            return cannot(f"the model at {self.model_path} has digest {self.digest}, "
                          f"the image was attested with {record.model_digest}")
        dtype = self.dtype or run_dtype(record.dtype, self.device)
        threads = self.threads or run_threads(record.torch_threads)
        try:
            model = self._model(dtype)
        except ModelError as exc:
            return cannot(f"cannot load the model: {exc}")

        import torch  # loaded by now, through the model

        from . import samplers
        from .pipeline import library_versions
        from .version import POINTILLIST_VERSION

        here_libraries = {**library_versions(), "pointillist": POINTILLIST_VERSION}
        conditions = [
            Condition("device", record.device, model.device,
                      record.device.split(":")[0] == model.device.split(":")[0]),
            Condition("dtype", record.dtype, model.dtype, record.dtype == model.dtype),
            Condition("threads", record.torch_threads, threads, record.torch_threads == threads),
            *(Condition(name, record.libraries.get(name), here_libraries.get(name),
                        record.libraries.get(name) == here_libraries.get(name)) for name in _LIBRARY_ORDER),
        ]
        pipe = model.pipe
        if type(pipe).__name__ != record.pipeline:
            return cannot(f"the image was made by a {record.pipeline}, this model loads as {type(pipe).__name__}")

        settings = record.settings
        own = pipe.scheduler
        if settings.sampler is None and type(own).__name__ != record.scheduler:
            # No sampler: the model's own scheduler ran (v1; v3 with "sampler": null).
            return cannot(f"the image was attested with the scheduler {record.scheduler}, "
                          f"this model's own is {type(own).__name__}")
        if record.scheduler_config is None:  # v1 records no config: the model's own, by class
            scheduler = own
        else:  # v2 and later: the attested class and config, checked against what generate builds
            try:
                missing = samplers.missing_packages(settings.sampler) if settings.sampler in samplers.TABLE else []
                if missing:
                    return cannot(f"sampler {settings.sampler!r} needs the Python package "
                                  f"{', '.join(missing)}, not installed here")
                scheduler = samplers.rebuild_scheduler(record.scheduler, record.scheduler_config)
            except Exception as exc:  # a config this diffusers cannot take
                return cannot(f"cannot rebuild the attested scheduler {record.scheduler}: {one_line(exc)}")
            conditions.append(_scheduler_condition(samplers, own, scheduler, record))

        run_settings = dataclasses.replace(settings, sampler=None)  # the scheduler is set below
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        pipe.scheduler = scheduler
        try:
            result = model.generate(run_settings, **_no_step_commitments(model))
        except UsageError as exc:  # settings this pipeline refuses (a size not a multiple of 8)
            return cannot(str(exc), tuple(conditions))
        except Exception as exc:  # the library failed (out of memory, an op missing for the dtype)
            return cannot(f"the generation failed here: {type(exc).__name__}: {one_line(exc)}", tuple(conditions))
        finally:
            pipe.scheduler = own
            torch.set_num_threads(before)
        return judge(compare_pixels(result.image, image), tuple(conditions))

    def _model(self, dtype: str) -> Any:
        loaded = self._models.get(dtype)
        if loaded is None:
            from .loading import load_model

            try:
                loaded = load_model(self.model_path, device=self.device, dtype=dtype, config=self.model_config)
            except ModelError as exc:
                loaded = exc
            self._models[dtype] = loaded
        if isinstance(loaded, PointillistError):
            raise loaded
        return loaded


def _no_step_commitments(model: Any) -> dict[str, Any]:
    """``generate``'s keyword that skips recording the steps (issue 11's step commitments), where
    this version has it: a re-run compares pixels, and recording costs time and memory."""
    import inspect

    return {"commit_steps": False} if "commit_steps" in inspect.signature(model.generate).parameters else {}


def _scheduler_condition(samplers: Any, own: Any, rebuilt: Any, record: Any) -> Condition:
    """Whether the attested scheduler is what ``generate`` builds for the attested sampler on
    this model (no sampler, v3: the model's own scheduler). The re-run uses the attested one
    either way: that is the claim under test."""
    sampler = record.settings.sampler
    what = "the model's own scheduler" if sampler is None else f"what this Pointillist builds for {sampler!r}"
    label = "the model's own" if sampler is None else repr(sampler)
    attested = f"{record.scheduler} for {label}"
    if sampler is None:
        built = own
    elif sampler not in samplers.TABLE:
        return Condition("scheduler", attested, None, False,
                         f"sampler {sampler!r} is unknown to this Pointillist; ran the attested config")
    else:
        built = samplers.build_scheduler(own.config, sampler, record.settings.seed)
    here = f"{type(built).__name__} for {label}"
    if type(built) is not type(rebuilt):
        return Condition("scheduler", attested, here, False,
                         f"{what} is {type(built).__name__}; ran the attested {record.scheduler}")
    mine, theirs = samplers.scheduler_config(built), samplers.scheduler_config(rebuilt)
    keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k, ...) != theirs.get(k, ...))
    if keys:
        shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        return Condition("scheduler", attested, here, False,
                         f"the attested config differs from {what} in {shown}; ran the attested one")
    return Condition("scheduler", attested, here, True)
