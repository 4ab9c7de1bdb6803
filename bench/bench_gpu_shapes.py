"""Shared by the bench_gpu_* scripts: SD-1.5- and SDXL-shaped pipelines with random weights.

No model hub is reachable where these benchmarks run, and none is needed: throughput, memory and
the numerical noise of a denoising step depend on the architecture's shapes, not on trained
weights. The configs below are those of the public SD-1.5 and SDXL-base folders (UNet, VAE, CLIP
text encoders), written out in code; the tokenizer is the embedded tiny model's (its token ids stay
below the real 49,408-entry vocabulary, so they index the full-size embedding tables).

Weights are drawn with torch's default initialisers on the target device (seeded), then cast to
the target dtype. Random weights are not trained weights: the UNet's noise prediction is small and
unstructured, so images are noise and latents grow along the schedule (see the scripts' NaN checks).

Also here: importing ``pointillist`` from this checkout when it is not installed (the GPU machine
has no libp2p and no install; only ``pointillist.node.pipeline`` and what it imports are needed,
none of which imports libp2p), and the one-line skip when no CUDA device is present.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "node" / "models" / "tiny-sd" / "tokenizer"

# SD-1.5 (runwayml/stable-diffusion-v1-5, unet/config.json), ~860 M parameters.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                    "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768,
    attention_head_dim=8,
)
# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json), ~2.6 B parameters.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32,
)
SD15_VAE = dict(_VAE, sample_size=512, scaling_factor=0.18215)
SDXL_VAE = dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# Token ids of the embedded tokenizer: bos 512, eos/pad 513 (pooled output reads the eos position).
_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
               layer_norm_eps=1e-5)
CLIP_L = dict(_TOKENS, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(_TOKENS, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 hidden_act="gelu", projection_dim=1280)
# The embedded model's DDIM config (SD-1.5's own folder names PNDM, a multistep scheduler; DDIM is
# one-step, which the audit recomputation needs, and costs the same per step).
DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
            timestep_spacing="leading")
# SDXL base's scheduler.
EULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
             steps_offset=1, prediction_type="epsilon", timestep_spacing="leading", interpolation_type="linear",
             use_karras_sigmas=False)


def _tiny(cfg: dict, **over) -> dict:
    return {**cfg, **over}


# Same structure, small widths: only for --smoke-cpu, to exercise the scripts without a GPU.
TINY = {
    "sd15": dict(unet=_tiny(SD15_UNET, block_out_channels=(32, 32, 64, 64), norm_num_groups=8, cross_attention_dim=32,
                            attention_head_dim=2, layers_per_block=1),
                 vae=_tiny(SD15_VAE, block_out_channels=(8, 8, 16, 16), norm_num_groups=4, layers_per_block=1),
                 te=_tiny(CLIP_L, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=32)),
    "sdxl": dict(unet=_tiny(SDXL_UNET, block_out_channels=(32, 32, 64), norm_num_groups=8, cross_attention_dim=64,
                            attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2), layers_per_block=1,
                            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32),
                 vae=_tiny(SDXL_VAE, block_out_channels=(8, 8, 16, 16), norm_num_groups=4, layers_per_block=1),
                 te=_tiny(CLIP_L, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          projection_dim=32),
                 te2=_tiny(CLIP_BIGG, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=32)),
}


def require_cuda_or_skip(smoke_cpu: bool) -> str:
    """'cuda', or 'cpu' for --smoke-cpu; otherwise print the one-line skip and exit 0."""
    try:
        import torch
    except ImportError:
        print("no CUDA device: skipped (torch is not installed)")
        sys.exit(0)
    if smoke_cpu:
        return "cpu"
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        sys.exit(0)
    return "cuda"


def import_pointillist() -> None:
    """Make ``pointillist.node`` / ``.protocol`` / ``.attestation`` importable from this checkout
    when the package is not installed (setuptools maps them from node/, protocol/, attestation/)."""
    try:
        import pointillist.node  # noqa: F401
        return
    except ImportError:
        pass
    pkg = types.ModuleType("pointillist")
    pkg.__path__ = []
    sys.modules["pointillist"] = pkg
    for sub in ("protocol", "node", "attestation"):
        # Bare package objects: their __init__ would import more than generation needs (the
        # attestation package's pulls in signing, hence base58 and PyNaCl).
        mod = types.ModuleType(f"pointillist.{sub}")
        mod.__path__ = [str(ROOT / sub)]
        sys.modules[mod.__name__] = mod
        setattr(pkg, sub, mod)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_pipeline(family: str, device: str, dtype, *, seed: int = 0, tiny: bool = False):
    """A StableDiffusionPipeline ('sd15') or StableDiffusionXLPipeline ('sdxl') with random weights,
    on ``device`` in ``dtype``, progress bar off."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on every cast

    if family == "sd15":
        cfg = TINY["sd15"] if tiny else dict(unet=SD15_UNET, vae=SD15_VAE, te=CLIP_L)
    elif family == "sdxl":
        cfg = TINY["sdxl"] if tiny else dict(unet=SDXL_UNET, vae=SDXL_VAE, te=CLIP_L, te2=CLIP_BIGG)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        te = CLIPTextModel(CLIPTextConfig(**cfg["te"]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["te2"])) if "te2" in cfg else None
    for m in (unet, vae, te, te2):
        if m is not None:
            m.to(dtype=dtype).eval()
    tok = CLIPTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    if family == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=DDIMScheduler(**DDIM), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                         tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(**EULER),
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_params(pipe) -> dict[str, int]:
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            out[name] = count_params(m)
    return out


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def environment() -> dict[str, str]:
    import platform

    import diffusers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "diffusers": diffusers.__version__, "transformers": transformers.__version__, "gpu": gpu_name()}
