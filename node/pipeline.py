"""The generation runner: make one image with a loaded Stable Diffusion pipeline
(``loading.py`` loads it).

Importing this module imports torch, diffusers and transformers (6-10 s, ~420 MB), so only the
generation path may import it, and lazily: nothing else in the package imports it at import time.

Everything is offline: ``HF_HUB_OFFLINE=1`` is set here, before the libraries load; every module
that imports them imports this one first.

Reproducibility: the initial latent comes from a CPU ``torch.Generator`` seeded with the job's
seed, so the starting noise is the same on every device; what the device then computes is
bit-identical only for the same hardware, dtype, thread count and library versions (see
docs/reproduce.md, and docs/decisions.md on aligned weights). ``generate`` calls the pipeline exactly as a
direct diffusers call would, so a direct call with the same folder, seed and parameters gives the
same pixels.
"""

from __future__ import annotations

import os

# Before torch/diffusers/transformers/huggingface_hub are imported: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import math  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers.utils import logging as _diffusers_logging  # noqa: E402
from transformers.utils import logging as _transformers_logging  # noqa: E402

from pointillist.protocol.errors import UsageError  # noqa: E402
from pointillist.protocol.settings import GenerationSettings  # noqa: E402

if TYPE_CHECKING:
    import PIL.Image

    from pointillist.attestation.trajectory import Trajectory

__all__ = [
    "GenerationResult",
    "GenerationSettings",
    "LoadedModel",
]

_MAX_SEED = 2**64  # torch.Generator.manual_seed takes 64-bit seeds


def _quiet_libraries() -> None:
    _transformers_logging.set_verbosity_error()
    _transformers_logging.disable_progress_bar()
    _diffusers_logging.set_verbosity_error()
    _diffusers_logging.disable_progress_bar()


_quiet_libraries()


@dataclass(frozen=True)
class GenerationResult:
    image: PIL.Image.Image  # mode RGB
    pipeline: str  # pipeline class name, e.g. "StableDiffusionPipeline"
    scheduler: str  # scheduler class name, e.g. "DDIMScheduler"
    # The scheduler's config as attested (``samplers.scheduler_config``): with ``scheduler``,
    # enough to rebuild the scheduler that ran (``samplers.rebuild_scheduler``).
    scheduler_config: dict[str, Any]
    dtype: str  # "float32" / "float16" / "bfloat16"
    device: str  # "cpu", "cuda", "mps", ...
    torch_threads: int
    libraries: dict[str, str]  # {"torch": ..., "diffusers": ..., "transformers": ...}
    # The recorded denoising steps (issue 11; ``step_commitments.py``), ``None`` when the caller
    # asked for none (``commit_steps=False``). Its ``commitment()`` goes into predicate v3.
    trajectory: Trajectory | None = field(default=None, repr=False)


def library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _validate(params: GenerationSettings) -> None:
    # The job schema has checked a job's settings already; this guards direct callers (tests,
    # benchmarks, the self-benchmark) before any GPU time is spent.
    if not isinstance(params, GenerationSettings):
        raise UsageError(f"generate takes GenerationSettings, not {type(params).__name__}")
    for field in ("width", "height"):
        value = getattr(params, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
            raise UsageError(f"{field} must be a positive multiple of 8, got {value!r}")
    if isinstance(params.steps, bool) or not isinstance(params.steps, int) or params.steps < 1:
        raise UsageError(f"steps must be a positive integer, got {params.steps!r}")
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed < _MAX_SEED:
        raise UsageError(f"seed must be an integer in [0, 2**64), got {params.seed!r}")
    if isinstance(params.guidance, bool) or not isinstance(params.guidance, (int, float)) or not math.isfinite(
        params.guidance
    ):
        raise UsageError(f"guidance must be a finite number, got {params.guidance!r}")
    if not isinstance(params.prompt, str) or not isinstance(params.negative_prompt, str):
        raise UsageError("prompt and negative_prompt must be strings")


class _StepCallbackError(Exception):
    """Carries an exception raised by ``on_step`` through the pipeline, to re-raise it unchanged."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class LoadedModel:
    """A pipeline loaded on a device, ready to generate; ``generate`` calls are serialised."""

    name: str
    digest: str
    path: Path

    def __init__(self, *, name: str, digest: str, path: Path, pipe: Any, device: str, dtype: str) -> None:
        self.name = name
        self.digest = digest
        self.path = path
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LoadedModel(name={self.name!r}, digest={self.digest[:12]}…, pipeline="
            f"{type(self.pipe).__name__}, device={self.device!r}, dtype={self.dtype!r})"
        )

    def on_device(self) -> "LoadedModel":
        """Itself: already on its device (``ServedSlot.on_device`` moves one there first)."""
        return self

    def generate(
        self, params: GenerationSettings, on_step: Callable[[int, int], None] | None = None,
        *, commit_steps: bool = True,
    ) -> GenerationResult:
        """Make one image. Raises UsageError for bad parameters (before any work).

        ``params.sampler`` (an A1111 name, ``samplers.SAMPLERS``) runs that sampler: a scheduler
        built from the model's own scheduler config with the sampler's overrides, swapped in for
        this run only. ``None`` runs the model's own scheduler.

        Failures inside the run (e.g. ``torch.OutOfMemoryError``) propagate as the library raised
        them, unmapped, so the caller can tell them apart and log them with a traceback.

        ``on_step(k, n)`` is called after each denoising step k = 1..n, where n is the number of
        scheduler timesteps (``steps`` for the embedded model's DDIM scheduler; a multistep
        scheduler such as PNDM may run more). An exception raised by ``on_step`` aborts the run and
        propagates unchanged (use it to cancel).

        ``commit_steps`` records every scheduler step (``step_commitments.StepRecorder``) into
        ``result.trajectory``: the node attests its Merkle root (predicate v3). The scheduler is
        a fresh ``from_config`` copy for every run either way (the model's own one is never
        patched, and a copy carries no state from an earlier run); recording does not change
        the image.
        """
        _validate(params)
        pipe = self.pipe
        from . import samplers  # cheap: no torch of its own

        if params.sampler is not None and not isinstance(params.sampler, str):
            raise UsageError(f"sampler must be a string or None, got {params.sampler!r}")

        def callback(pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
            if on_step is not None:
                total = getattr(pipeline, "_num_timesteps", None) or params.steps
                try:
                    on_step(step_index + 1, total)
                except BaseException as exc:  # noqa: BLE001 - re-raised unchanged below
                    raise _StepCallbackError(exc) from exc
            return callback_kwargs

        with self._lock, torch.inference_mode():
            own_scheduler = pipe.scheduler
            if params.sampler is not None:  # raises UsageError before any work if unsupported
                scheduler = samplers.build_scheduler(own_scheduler.config, params.sampler, params.seed)
            else:
                scheduler = type(own_scheduler).from_config(own_scheduler.config)
            recorder = None
            if commit_steps:
                from .step_commitments import StepRecorder

                recorder = StepRecorder(scheduler)  # wraps step on this run's instance only
            generator = torch.Generator(device="cpu").manual_seed(params.seed)
            pipe.scheduler = scheduler
            try:
                output = pipe(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt,
                    num_inference_steps=params.steps,
                    guidance_scale=float(params.guidance),
                    width=params.width,
                    height=params.height,
                    generator=generator,
                    output_type="pil",
                    callback_on_step_end=callback,
                )
            except _StepCallbackError as exc:
                raise exc.original from None
            finally:
                pipe.scheduler = own_scheduler
            image = output.images[0].convert("RGB")
            # Hashing happened step by step in this thread; the tree is log-depth over N + 1 hashes.
            trajectory = recorder.finish() if recorder is not None else None

        return GenerationResult(
            image=image,
            pipeline=type(pipe).__name__,
            scheduler=type(scheduler).__name__,
            scheduler_config=samplers.scheduler_config(scheduler),
            dtype=self.dtype,
            device=self.device,
            torch_threads=torch.get_num_threads(),
            libraries=library_versions(),
            trajectory=trajectory,
        )
