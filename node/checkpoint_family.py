"""Which Stable Diffusion family a single-file checkpoint belongs to, from its safetensors header.

Pure and cheap: standard library only (no torch, no diffusers), reads the header (tensor names,
dtypes, shapes) and at most one small tensor (320 values, for the SD 2.x v-prediction test); the
weights are never loaded. The rules are documented in docs/models.md; in short (``U`` is
``model.diffusion_model.``):

* UNet in-channels (``U input_blocks.0.0.weight`` dim 1): 4 is text-to-image; 9 (inpainting),
  8 (instruct-pix2pix), 7 (x4 upscaler), 5 (depth) are refused by name.
* Text encoder(s): ``cond_stage_model.transformer.text_model.*`` 768 wide = SD 1.x;
  ``cond_stage_model.model.*`` 1024 wide = SD 2.x; ``conditioner.embedders.0.transformer.*``
  (768) + ``conditioner.embedders.1.model.*`` (1280) with ``U label_emb.0.0.weight`` [1280, 2816]
  = SDXL base; ``conditioner.embedders.0.model.*`` only (label_emb [1536, 2560]) = SDXL refiner,
  refused. A ``label_emb`` on an SD 2.x UNet is unCLIP, refused.
* SD 2.x 512 (epsilon) vs 768-v (v-prediction) have identical shapes. ``modelspec.prediction_type``
  in the safetensors metadata decides when present; otherwise ComfyUI's heuristic: the standard
  deviation of ``U output_blocks.11.1.transformer_blocks.0.norm1.bias`` above 0.09 means
  v-prediction (ComfyUI ``model_detection.py``/``supported_models.py``, ``SD20.model_type``).
* SDXL base vs SDXL-turbo are the same architecture; no weight test tells them apart. ``turbo`` in
  the file name or in a ``modelspec.*`` metadata value means turbo; otherwise base.
* Every family's essential keys (first and last UNet blocks, VAE encoder and decoder ends, the
  last text-encoder layer and final norm) must be present: diffusers loads single files
  non-strictly, so a missing component would silently stay random.

``.ckpt`` files (pickles) have no readable header without unpickling; they are not auto-detected
and need an explicit config (see docs/models.md).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointillist.protocol.errors import ModelError, one_line

__all__ = [
    "FAMILIES",
    "Family",
    "Header",
    "TensorInfo",
    "detect_family",
    "family_of",
    "folder_family",
    "read_header",
]

U = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TE = "cond_stage_model.transformer.text_model."
SD1_TE_OLD = "cond_stage_model.transformer.embeddings."
SD2_TE = "cond_stage_model.model."
XL_TE1 = "conditioner.embedders.0.transformer.text_model."
XL_TE2 = "conditioner.embedders.1.model."
REFINER_TE = "conditioner.embedders.0.model."

#: The tensor whose spread tells SD 2.x v-prediction from epsilon (ComfyUI's test).
V_PRED_PROBE = U + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD_THRESHOLD = 0.09

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class Family:
    name: str  # also the shipped config folder's name under node/model_configs/
    title: str
    pipeline: str  # diffusers pipeline class
    native_side: int  # the size the family was trained at (square side, pixels)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd15", "Stable Diffusion 1.x", "StableDiffusionPipeline", 512),
        Family("sd2-512", "Stable Diffusion 2.x 512 (epsilon)", "StableDiffusionPipeline", 512),
        Family("sd2-768-v", "Stable Diffusion 2.x 768-v (v-prediction)", "StableDiffusionPipeline", 768),
        Family("sdxl", "Stable Diffusion XL base", "StableDiffusionXLPipeline", 1024),
        Family("sdxl-turbo", "SDXL-Turbo", "StableDiffusionXLPipeline", 512),
    )
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets relative to the data section
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int  # absolute file offset of the data section


def read_header(path: Path) -> Header:
    """Read a .safetensors file's header (names, dtypes, shapes, offsets, ``__metadata__``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ModelError(f"not a safetensors file (shorter than 8 bytes): {path.name}")
            (length,) = struct.unpack("<Q", raw_len)
            if length > MAX_HEADER_BYTES:
                raise ModelError(f"not a safetensors file (header length {length}): {path.name}")
            raw = fh.read(length)
    except OSError as exc:
        raise ModelError(f"cannot read checkpoint {path}: {one_line(exc)}") from exc
    if len(raw) != length:
        raise ModelError(f"not a safetensors file (truncated header): {path.name}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"not a safetensors file (header is not JSON): {path.name}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"not a safetensors file (header is not an object): {path.name}")
    meta = data.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    try:
        for name, info in data.items():
            start, end = info["data_offsets"]
            tensors[name] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]), int(start), int(end))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"not a safetensors file (bad tensor entry): {path.name}") from exc
    metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return Header(path, tensors, metadata, 8 + length)


_UNPACK = {"F32": ("f", 4), "F16": ("e", 2), "F64": ("d", 8)}


def read_small_tensor(header: Header, name: str, max_elements: int = 4096) -> list[float]:
    """The values of one small floating-point tensor (F64/F32/F16/BF16), without numpy or torch."""
    info = header.tensors[name]
    count = math.prod(info.shape)
    if count > max_elements:
        raise ModelError(f"tensor {name} is too large to probe ({count} values)")
    with open(header.path, "rb") as fh:
        fh.seek(header.data_offset + info.start)
        raw = fh.read(info.end - info.start)
    if info.dtype == "BF16":
        halves = struct.unpack(f"<{count}H", raw[: 2 * count])
        return list(struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *(h << 16 for h in halves))))
    if info.dtype not in _UNPACK:
        raise ModelError(f"tensor {name} has dtype {info.dtype}, which cannot be probed")
    code, size = _UNPACK[info.dtype]
    return list(struct.unpack(f"<{count}{code}", raw[: size * count]))


def _std(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))  # torch.std's default (unbiased)


# ---------------------------------------------------------------------------------------------
# essential keys: what must be present so that no component silently stays random


def _unet_keys(last_block: int, cross_attn_probe: str) -> list[str]:
    return [
        U + "time_embed.0.weight",
        U + "input_blocks.0.0.weight",
        U + f"input_blocks.{last_block}.0.in_layers.0.weight",
        U + "middle_block.1.proj_in.weight",
        U + "middle_block.2.out_layers.3.weight",
        U + f"output_blocks.{last_block}.0.in_layers.0.weight",
        U + "out.2.weight",
        cross_attn_probe,
    ]


_VAE_KEYS = [
    VAE + "encoder.conv_in.weight",
    VAE + "encoder.conv_out.weight",
    VAE + "quant_conv.weight",
    VAE + "post_quant_conv.weight",
    VAE + "decoder.conv_in.weight",
    VAE + "decoder.up.0.block.0.conv1.weight",
    VAE + "decoder.conv_out.weight",
]


def _clip_keys(prefix: str, layers: int) -> list[str]:  # transformers-style CLIP (OpenAI CLIP-L)
    return [
        prefix + "embeddings.token_embedding.weight",
        prefix + "embeddings.position_embedding.weight",
        prefix + "encoder.layers.0.self_attn.q_proj.weight",
        prefix + f"encoder.layers.{layers - 1}.mlp.fc2.weight",
        prefix + "final_layer_norm.weight",
    ]


def _open_clip_keys(prefix: str, layers: int) -> list[str]:  # open_clip-style (ViT-H / ViT-bigG)
    return [
        prefix + "token_embedding.weight",
        prefix + "positional_embedding",
        prefix + "transformer.resblocks.0.attn.in_proj_weight",
        prefix + f"transformer.resblocks.{layers - 1}.mlp.c_proj.weight",
        prefix + "ln_final.weight",
    ]


SD1_ATTN2 = U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
XL_ATTN2 = U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"

ESSENTIAL: dict[str, list[str]] = {
    "sd15": _unet_keys(11, SD1_ATTN2) + _VAE_KEYS + _clip_keys(SD1_TE, 12),
    # SD 2.x runs the penultimate of OpenCLIP ViT-H's 24 layers; checkpoints carry all 24, and 23 are needed.
    "sd2": _unet_keys(11, SD1_ATTN2) + _VAE_KEYS + _open_clip_keys(SD2_TE, 23),
    "sdxl": _unet_keys(8, XL_ATTN2)
    + [U + "label_emb.0.0.weight"]
    + _VAE_KEYS
    + _clip_keys(XL_TE1, 12)
    + _open_clip_keys(XL_TE2, 32)
    + [XL_TE2 + "text_projection"],
}


# ---------------------------------------------------------------------------------------------
# detection


def _shape(header: Header, name: str) -> tuple[int, ...] | None:
    info = header.tensors.get(name)
    return info.shape if info is not None else None


def _describe(header: Header) -> str:
    """What was found, for the error line: text encoder(s), UNet in-channels and context width."""
    found: list[str] = []
    encoders = (  # (label, prefix, token-embedding key)
        ("cond_stage_model.transformer.text_model", SD1_TE, SD1_TE + "embeddings.token_embedding.weight"),
        ("cond_stage_model.transformer (no text_model.)", SD1_TE_OLD, SD1_TE_OLD + "token_embedding.weight"),
        ("cond_stage_model.model", SD2_TE, SD2_TE + "token_embedding.weight"),
        ("conditioner.embedders.0.transformer", XL_TE1, XL_TE1 + "embeddings.token_embedding.weight"),
        ("conditioner.embedders.0.model", REFINER_TE, REFINER_TE + "token_embedding.weight"),
        ("conditioner.embedders.1.model", XL_TE2, XL_TE2 + "token_embedding.weight"),
    )
    for label, prefix, emb_key in encoders:
        emb = _shape(header, emb_key)
        if emb is not None:
            found.append(f"text encoder {label} ({emb[-1]} wide)")
        elif any(k.startswith(prefix) for k in header.tensors):
            found.append(f"text encoder {label}")
    if not any(k.startswith(("cond_stage_model.", "conditioner.")) for k in header.tensors):
        found.append("no text encoder")
    conv_in = _shape(header, U + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4:
        found.append(f"UNet in-channels {conv_in[1]}")
        for probe in (SD1_ATTN2, XL_ATTN2):
            ctx = _shape(header, probe)
            if ctx is not None:
                found.append(f"cross-attention context {ctx[-1]}")
                break
        label = _shape(header, U + "label_emb.0.0.weight")
        if label is not None:
            found.append(f"label_emb {list(label)}")
    elif any(k.startswith(U) for k in header.tensors):
        found.append("UNet without input_blocks.0.0.weight")
    else:
        roots = sorted({k.split(".", 1)[0] for k in header.tensors})
        shown = ", ".join(roots[:6]) + (", …" if len(roots) > 6 else "")
        found.append(f"no Stable Diffusion UNet ({U}*); top-level names: {shown or 'none'}")
    found.append(f"{len(header.tensors)} tensors")
    return ", ".join(found)


def _unknown(header: Header, why: str = "") -> ModelError:
    what = _describe(header)
    lead = f"unknown checkpoint architecture in {header.path.name}"
    return ModelError(f"{lead}: {why + '; ' if why else ''}found {what}")


def _check_complete(header: Header, group: str, family_title: str) -> None:
    missing = [k for k in ESSENTIAL[group] if k not in header.tensors]
    if missing:
        parts = sorted({_component(k) for k in missing})
        raise ModelError(
            f"checkpoint {header.path.name} looks like {family_title} but lacks {', '.join(parts)} "
            f"({len(missing)} essential tensors missing, e.g. {missing[0]}); a partial checkpoint "
            "would load with random weights, so it is refused (pass --model-config with a complete folder)"
        )


def _component(key: str) -> str:
    if key.startswith(U):
        return "UNet"
    if key.startswith(VAE):
        return "VAE"
    return "text encoder"


def _is_turbo(header: Header) -> bool:
    if "turbo" in header.path.name.lower():
        return True
    return any(k.startswith("modelspec.") and "turbo" in v.lower() for k, v in header.metadata.items())


def _is_v_prediction(header: Header) -> tuple[bool, str]:
    declared = header.metadata.get("modelspec.prediction_type", "").strip().lower()
    if declared in {"v", "v_prediction", "v-prediction"}:
        return True, "modelspec.prediction_type"
    if declared in {"epsilon", "eps"}:
        return False, "modelspec.prediction_type"
    if V_PRED_PROBE not in header.tensors:
        return False, "no probe tensor"
    std = _std(read_small_tensor(header, V_PRED_PROBE))
    return std > V_PRED_STD_THRESHOLD, f"std {std:.3f} of {V_PRED_PROBE[len(U):]}"


@dataclass(frozen=True)
class Detection:
    family: Family
    reason: str  # how it was decided, for logs


def detect_family(path: Path) -> Detection:
    """Detect a .safetensors checkpoint's family. Raises ModelError (one line) when the checkpoint
    is unreadable, of an unknown or unsupported architecture, or incomplete."""
    header = read_header(path)
    t = header.tensors
    conv_in = _shape(header, U + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise _unknown(header)
    in_ch = conv_in[1]
    refused = {9: "an inpainting model", 8: "an instruct-pix2pix model", 7: "an x4 upscaler", 5: "a depth-to-image model"}
    if in_ch in refused:
        raise ModelError(
            f"checkpoint {header.path.name} is {refused[in_ch]} (UNet in-channels {in_ch}); "
            "only text-to-image checkpoints (in-channels 4) are supported"
        )
    if in_ch != 4:
        raise _unknown(header)

    label = _shape(header, U + "label_emb.0.0.weight")
    sd1_emb = _shape(header, SD1_TE + "embeddings.token_embedding.weight")
    sd2_emb = _shape(header, SD2_TE + "token_embedding.weight")
    xl1_emb = _shape(header, XL_TE1 + "embeddings.token_embedding.weight")
    xl2_emb = _shape(header, XL_TE2 + "token_embedding.weight")
    ctx = _shape(header, SD1_ATTN2)
    ctx_xl = _shape(header, XL_ATTN2)

    if any(k.startswith(REFINER_TE) for k in t) and xl1_emb is None:
        raise ModelError(
            f"checkpoint {header.path.name} is an SDXL refiner (text encoder conditioner.embedders.0.model"
            f"{', label_emb ' + str(list(label)) if label else ''}); refiners are img2img-only and not supported"
        )
    if xl1_emb is not None or xl2_emb is not None:
        if xl1_emb == (49408, 768) and xl2_emb == (49408, 1280) and label == (1280, 2816) and ctx_xl == (640, 2048):
            _check_complete(header, "sdxl", "SDXL")
            if _is_turbo(header):
                return Detection(FAMILIES["sdxl-turbo"], "SDXL architecture; 'turbo' in the file name or modelspec metadata")
            return Detection(FAMILIES["sdxl"], "SDXL architecture; no 'turbo' in the file name or metadata")
        raise _unknown(header, "SDXL-like text encoders but not SDXL base shapes")
    if sd2_emb is not None:
        if label is not None:
            raise ModelError(
                f"checkpoint {header.path.name} is an SD 2.x unCLIP model (UNet label_emb {list(label)}); not supported"
            )
        if sd2_emb == (49408, 1024) and ctx == (320, 1024):
            _check_complete(header, "sd2", "Stable Diffusion 2.x")
            v, why = _is_v_prediction(header)
            return Detection(FAMILIES["sd2-768-v" if v else "sd2-512"], f"SD 2.x architecture; {why}")
        raise _unknown(header, "SD 2.x-like text encoder with other shapes")
    if sd1_emb is not None:
        if sd1_emb == (49408, 768) and ctx == (320, 768) and label is None:
            _check_complete(header, "sd15", "Stable Diffusion 1.x")
            return Detection(FAMILIES["sd15"], "SD 1.x architecture")
        raise _unknown(header, "SD 1.x-like text encoder with other shapes")
    if _shape(header, SD1_TE_OLD + "token_embedding.weight") is not None:
        raise ModelError(
            f"checkpoint {header.path.name} uses the old SD 1.x text-encoder layout "
            "(cond_stage_model.transformer.embeddings.* without text_model.), which diffusers would load "
            "with a random text encoder; re-save it with current tools or pass --model-config"
        )
    raise _unknown(header)


def describe_header(path: Path) -> dict[str, Any]:
    """A summary of a checkpoint for debugging: tensor count, metadata keys and what was found."""
    header = read_header(path)
    return {"tensors": len(header.tensors), "metadata": sorted(header.metadata), "found": _describe(header)}


_FAMILY_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def family_by_name(name: str) -> Family | None:
    """The family with this name (``sd15``, ``sd2-512``, ``sd2-768-v``, ``sdxl``, ``sdxl-turbo``)."""
    return FAMILIES.get(name) if _FAMILY_NAME.match(name) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_family(folder: Path) -> Family | None:
    """The family of a diffusers folder from its configs (no weights read), or None.

    ``StableDiffusionXLPipeline`` with a 2048-wide UNet context: ``sdxl``, or ``sdxl-turbo`` when the
    scheduler uses "trailing" timestep spacing (SDXL-Turbo's published config); a
    ``StableDiffusionPipeline``: UNet context 768 = ``sd15``, 1024 = ``sd2-768-v`` with a
    v_prediction scheduler, else ``sd2-512``. Anything else (e.g. the tiny embedded model): None.
    """
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    ctx = unet.get("cross_attention_dim")
    if unet.get("in_channels", 4) != 4:
        return None
    if index.get("_class_name") == "StableDiffusionXLPipeline" and ctx == 2048:
        return FAMILIES["sdxl-turbo" if scheduler.get("timestep_spacing") == "trailing" else "sdxl"]
    if index.get("_class_name") == "StableDiffusionPipeline":
        if ctx == 768:
            return FAMILIES["sd15"]
        if ctx == 1024:
            return FAMILIES["sd2-768-v" if scheduler.get("prediction_type") == "v_prediction" else "sd2-512"]
    return None


def family_of(path: Path) -> str | None:
    """The family name of a checkpoint file or diffusers folder without loading it; None when it
    cannot be told (unknown or unsupported architecture, unreadable, a .ckpt)."""
    path = Path(path)
    try:
        if path.is_dir():
            family = folder_family(path)
            return family.name if family is not None else None
        if path.suffix.lower() != ".safetensors":
            return None
        return detect_family(path).family.name
    except (ModelError, OSError):
        return None
