"""Loading a model offline onto a device: diffusers folders and single-file checkpoints.

Importing this module imports torch and diffusers (through ``pipeline``): only the generation path
may import it, lazily. Offline: ``pipeline`` sets ``HF_HUB_OFFLINE=1`` before the libraries load,
and every loader call passes ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import diffusers
import torch

from pointillist.node.checkpoint_family import FAMILIES, Family, detect_family, family_by_name, folder_family
from pointillist.node.model_digest import model_digest
from pointillist.node.pipeline import LoadedModel
from pointillist.protocol.errors import ModelError, UsageError, one_line

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


def embedded_model_path() -> Path:
    """The embedded default model: ``models/tiny-sd`` inside the installed ``pointillist.node``."""
    return Path(__file__).resolve().parent / "models" / "tiny-sd"


def shipped_configs_path() -> Path:
    """The shipped single-file config folders: ``model_configs/<family>`` inside ``pointillist.node``."""
    return Path(__file__).resolve().parent / "model_configs"


#: The shared CLIP BPE vocabulary (open_clip's copy of OpenAI CLIP's; MIT, see model_configs/NOTICE.md).
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_CLIP_MERGES = 49152 - 256 - 2  # 48,894 merges; the vocabulary is then 49,408 tokens
_TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from the 256 byte values to printable characters, in the
    table's order (the first 256 tokens of CLIP's vocabulary; node/models/build_tiny_model.py's
    tokenizer uses it too)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's BPE vocabulary (49,408 tokens) and merges (48,894), built from the shipped
    ``bpe_simple_vocab_16e6.txt.gz`` exactly as CLIP's ``SimpleTokenizer`` builds them."""
    path = shipped_configs_path() / CLIP_BPE_FILE
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the shipped CLIP vocabulary {path}: {one_line(exc)}") from exc
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _shipped_tokenizers(config: Path) -> dict[str, Any]:
    """Tokenizers for a config folder whose tokenizer folders hold only ``tokenizer_config.json``
    (the shipped folders): built from the shared CLIP vocabulary with that config's tokens."""
    from transformers import CLIPTokenizer

    built: dict[str, Any] = {}
    for sub in _TOKENIZER_FOLDERS:
        folder = config / sub
        cfg_file = folder / "tokenizer_config.json"
        if not cfg_file.is_file() or any((folder / f).exists() for f in ("vocab.json", "tokenizer.json")):
            continue
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"cannot read {cfg_file}: {type(exc).__name__}: {one_line(exc)}") from exc
        cfg.pop("tokenizer_class", None)
        vocab, merges = clip_vocab_and_merges()
        built[sub] = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **cfg)
    return built


def _single_file_config(path: Path, config: Path | None) -> tuple[Path, Family | None]:
    """The config folder for a single-file checkpoint and its family (None for a user's folder).

    ``config`` None: detect the family from the safetensors header and use the shipped folder.
    ``config`` a family name (``sd15``, ``sd2-512``, ``sd2-768-v``, ``sdxl``, ``sdxl-turbo``) that is
    not an existing folder: that shipped folder. Otherwise ``config`` is a local diffusers folder.
    """
    shipped = shipped_configs_path()
    if config is None:
        if path.suffix.lower() != ".safetensors":
            raise ModelError(
                f"cannot detect the architecture of {path.name}: only .safetensors headers are read "
                f"(a {path.suffix} is a pickle); pass --model-config <family: {', '.join(FAMILIES)}> "
                "or a local diffusers folder, or convert it to .safetensors"
            )
        family = detect_family(path).family
        return shipped / family.name, family
    config = Path(config).expanduser()
    if not config.is_dir():
        family = family_by_name(str(config))
        if family is not None:
            return shipped / family.name, family
        raise ModelError(
            f"config for {path.name} must be a local diffusers folder or one of {', '.join(FAMILIES)}: {config}"
        )
    try:
        if config.resolve().parent == shipped.resolve() and config.name in FAMILIES:
            return config, FAMILIES[config.name]
    except OSError:
        pass
    return config, None


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


#: Bytes; PyTorch's CPU allocator aligns every allocation to this.
_ALIGNMENT = 64


def _own_aligned_memory(pipe: Any) -> None:
    """Give every weight that does not start on a 64-byte boundary a fresh, aligned copy.

    On the CPU the vectorised kernels sum in a different order when a weight's first element is
    not aligned, so the same weights loaded two ways (a diffusers folder, whose tensors sit at
    offsets inside the safetensors file, or a converted single-file checkpoint) gave images one
    level apart in a pixel. Aligned copies make the image depend on the weights' values only.
    Weights moved to a GPU are fresh allocations already, and are left alone.
    """
    copies: dict[int, Any] = {}  # id of a shared buffer -> its copy, so sharing survives
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            for param in module._parameters.values():
                if param is not None and param.device.type == "cpu" and param.data_ptr() % _ALIGNMENT:
                    param.data = param.data.clone()
            for key, buffer in module._buffers.items():
                if buffer is not None and buffer.device.type == "cpu" and buffer.data_ptr() % _ALIGNMENT:
                    module._buffers[key] = copies.setdefault(id(buffer), buffer.clone())


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
    * A ``.safetensors`` / ``.ckpt`` file is loaded with ``<Pipeline>.from_single_file``. With no
      ``config``, a ``.safetensors`` file's family is detected from its header
      (``checkpoint_family.detect_family``; unknown or unsupported architectures raise a one-line
      ModelError naming what was found) and the shipped config folder
      ``model_configs/<family>`` is used; a ``.ckpt`` needs ``config``. ``config`` overrides the
      detection: a family name (``sd15``, ``sd2-512``, ``sd2-768-v``, ``sdxl``, ``sdxl-turbo``) or a
      local diffusers folder with the pipeline's configs and tokenizer; the pipeline class is the
      one its ``model_index.json`` names. ``config`` is ignored for folders.
    * ``family`` and ``native_side`` of the result are the family name and its training size for a
      detected or named family, or a diffusers folder whose configs show one
      (``checkpoint_family.folder_family``); None otherwise (a user's config folder, the tiny model).

    ``device`` defaults to cuda, else mps, else cpu; ``dtype`` to float16 on cuda and float32
    elsewhere; ``name`` to the folder name or file stem. ``digest`` is ``model_digest(path)``
    (for a single file, the checkpoint's sha256; the config folder is not part of it). Raises
    ModelError (one line) when the model cannot be found, hashed or loaded, UsageError for a bad
    device or dtype.
    """
    path = Path(path).expanduser()
    family: Family | None = None
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
        family = folder_family(path)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        config, family = _single_file_config(path, config)
        model_index = _read_model_index(config)
        pipeline_class = getattr(diffusers, model_index["_class_name"], None)
        if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
            raise ModelError(
                f"{model_index['_class_name']} (from {config / 'model_index.json'}) cannot load single-file checkpoints"
            )
        digest = model_digest(path)
        kwargs = _common_kwargs(model_index, torch_dtype)
        kwargs.pop("low_cpu_mem_usage", None)  # from_single_file has no such option
        kwargs.update(_shipped_tokenizers(config))
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
    _own_aligned_memory(pipe)
    pipe.set_progress_bar_config(disable=True)

    loaded = LoadedModel(
        name=name if name is not None else default_name,
        digest=digest,
        path=path,
        pipe=pipe,
        device=device,
        dtype=_DTYPE_NAMES[torch_dtype],
    )
    # Set here rather than through __init__ so pipeline.py needs no change for them.
    loaded.family = family.name if family is not None else None
    loaded.native_side = family.native_side if family is not None else None
    return loaded
