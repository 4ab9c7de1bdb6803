"""The generation runner: load a Stable Diffusion model offline and make one image.

Importing this module imports torch, diffusers and transformers (6-10 s, ~420 MB), so only the
generation path may import it, and lazily: nothing else in the package imports it at import time.

Everything is offline: ``HF_HUB_OFFLINE=1`` is set before the libraries load and every loader call
passes ``local_files_only=True``. A single-file checkpoint therefore needs ``config=``, a local
diffusers folder holding the pipeline's configs and tokenizer (its weights are not read).

Reproducibility: the initial latent comes from a CPU ``torch.Generator`` seeded with the job's
seed, so the starting noise is the same on every device; what the device then computes is
bit-identical only for the same hardware, dtype, thread count and library versions (see
docs/findings.md, "Determinism and verification"). ``generate`` calls the pipeline exactly as a
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

import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers.utils import logging as _diffusers_logging  # noqa: E402
from transformers.utils import logging as _transformers_logging  # noqa: E402

from pointillist.node.model_digest import model_digest  # noqa: E402
from pointillist.protocol.errors import ModelError, UsageError, one_line  # noqa: E402
from pointillist.protocol.settings import GenerationSettings  # noqa: E402

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "GenerationResult",
    "GenerationSettings",
    "LoadedModel",
    "SINGLE_FILE_SUFFIXES",
    "embedded_model_path",
    "load_model",
]

#: Checkpoint suffixes loaded through ``from_single_file``.
SINGLE_FILE_SUFFIXES = frozenset({".safetensors", ".ckpt"})

#: Text-to-image pipeline classes loaded directly. Other folders go through
#: AutoPipelineForText2Image, whose first use imports every pipeline module (~1.5 s).
_TEXT2IMAGE_CLASSES = frozenset({"StableDiffusionPipeline", "StableDiffusionXLPipeline"})

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

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
    dtype: str  # "float32" / "float16" / "bfloat16"
    device: str  # "cpu", "cuda", "mps", ...
    torch_threads: int
    libraries: dict[str, str]  # {"torch": ..., "diffusers": ..., "transformers": ...}


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

    def generate(
        self, params: GenerationSettings, on_step: Callable[[int, int], None] | None = None
    ) -> GenerationResult:
        """Make one image. Raises UsageError for bad parameters (before any work).

        Failures inside the run (e.g. ``torch.OutOfMemoryError``) propagate as the library raised
        them, unmapped, so the caller can tell them apart and log them with a traceback.

        ``on_step(k, n)`` is called after each denoising step k = 1..n, where n is the number of
        scheduler timesteps (``steps`` for the embedded model's DDIM scheduler; a multistep
        scheduler such as PNDM may run more). An exception raised by ``on_step`` aborts the run and
        propagates unchanged (use it to cancel).
        """
        _validate(params)
        pipe = self.pipe

        def callback(pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
            if on_step is not None:
                total = getattr(pipeline, "_num_timesteps", None) or params.steps
                try:
                    on_step(step_index + 1, total)
                except BaseException as exc:  # noqa: BLE001 - re-raised unchanged below
                    raise _StepCallbackError(exc) from exc
            return callback_kwargs

        with self._lock, torch.inference_mode():
            generator = torch.Generator(device="cpu").manual_seed(params.seed)
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
            image = output.images[0].convert("RGB")

        return GenerationResult(
            image=image,
            pipeline=type(pipe).__name__,
            scheduler=type(pipe.scheduler).__name__,
            dtype=self.dtype,
            device=self.device,
            torch_threads=torch.get_num_threads(),
            libraries=library_versions(),
        )


def embedded_model_path() -> Path:
    """The embedded default model: ``models/tiny-sd`` inside the installed ``pointillist.node``."""
    return Path(__file__).resolve().parent / "models" / "tiny-sd"


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _resolve_device(device: str | None) -> str:
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(f"unknown device {device!r}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available")
    if parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device {device!r} requested but MPS is not available")
    return str(parsed)


def _resolve_dtype(dtype: str | None, device: str) -> str:
    if dtype is None:
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r} (expected one of {', '.join(_DTYPES)})")
    return dtype


def _read_model_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError(f"not a diffusers pipeline folder (no model_index.json): {folder}")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"cannot read {index}: {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise ModelError(f"{index} names no pipeline class (_class_name)")
    return data


def _dtype_keyword() -> str:
    """Newer diffusers take ``dtype=`` and warn on ``torch_dtype=``; older ones only know the latter."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _common_kwargs(model_index: dict[str, Any], torch_dtype: torch.dtype) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True, _dtype_keyword(): torch_dtype}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # otherwise diffusers warns that accelerate is missing
    if "safety_checker" in model_index:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return kwargs


def load_model(
    path: Path,
    *,
    name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    config: Path | None = None,
) -> LoadedModel:
    """Load a diffusers folder or a single-file checkpoint, offline, onto ``device``.

    * A folder must hold ``model_index.json``; a ``StableDiffusionPipeline`` or
      ``StableDiffusionXLPipeline`` folder loads with that class's ``from_pretrained``, any other
      with ``AutoPipelineForText2Image.from_pretrained`` (which maps, e.g., an img2img folder to
      its text-to-image pipeline).
    * A ``.safetensors`` / ``.ckpt`` file is loaded with ``<Pipeline>.from_single_file`` and needs
      ``config``: a local diffusers folder with the pipeline's configs and tokenizer; the pipeline
      class is the one its ``model_index.json`` names. ``config`` is ignored for folders.

    ``device`` defaults to cuda, else mps, else cpu; ``dtype`` to float16 on cuda and float32
    elsewhere; ``name`` to the folder name or file stem. ``digest`` is ``model_digest(path)``
    (for a single file, the checkpoint's sha256; the config folder is not part of it). Raises
    ModelError (one line) when the model cannot be found, hashed or loaded, UsageError for a bad
    device or dtype.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    torch_dtype = _DTYPES[dtype]

    if path.is_dir():
        model_index = _read_model_index(path)
        digest = model_digest(path)
        kwargs = _common_kwargs(model_index, torch_dtype)
        class_name = model_index["_class_name"]
        try:
            if class_name in _TEXT2IMAGE_CLASSES:
                pipe = getattr(diffusers, class_name).from_pretrained(path, **kwargs)
            else:  # e.g. an img2img folder: AutoPipeline picks its text-to-image sibling
                pipe = diffusers.AutoPipelineForText2Image.from_pretrained(path, **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot load model {path}: {type(exc).__name__}: {one_line(exc)}") from exc
        default_name = path.name
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if config is None:
            raise ModelError(
                f"single-file checkpoint {path.name} needs config=<local diffusers folder with the "
                "pipeline's configs and tokenizer> (no configs can be downloaded offline)"
            )
        config = Path(config).expanduser()
        if not config.is_dir():
            raise ModelError(f"config for {path.name} must be a local diffusers folder: {config}")
        model_index = _read_model_index(config)
        pipeline_class = getattr(diffusers, model_index["_class_name"], None)
        if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
            raise ModelError(
                f"{model_index['_class_name']} (from {config / 'model_index.json'}) cannot load single-file checkpoints"
            )
        digest = model_digest(path)
        kwargs = _common_kwargs(model_index, torch_dtype)
        kwargs.pop("low_cpu_mem_usage", None)  # from_single_file has no such option
        try:
            pipe = pipeline_class.from_single_file(str(path), config=str(config), **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot load checkpoint {path}: {type(exc).__name__}: {one_line(exc)}") from exc
        default_name = path.stem
    else:
        raise ModelError(
            f"not a model: {path} (expected a diffusers folder or a "
            f"{' / '.join(sorted(SINGLE_FILE_SUFFIXES))} checkpoint)"
        )

    try:
        pipe = pipe.to(device)
    except Exception as exc:
        raise ModelError(f"cannot move model {path.name} to {device}: {type(exc).__name__}: {one_line(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)

    return LoadedModel(
        name=name if name is not None else default_name,
        digest=digest,
        path=path,
        pipe=pipe,
        device=device,
        dtype=_DTYPE_NAMES[torch_dtype],
    )
