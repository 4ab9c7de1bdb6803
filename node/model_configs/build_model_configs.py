"""Write the shipped single-file config folders (node/model_configs/<family>/).

    python node/model_configs/build_model_configs.py [OUT_DIR]

Each folder is what ``<Pipeline>.from_single_file(ckpt, config=folder, local_files_only=True)``
reads: ``model_index.json``, ``scheduler/scheduler_config.json``, ``unet/config.json``,
``vae/config.json``, ``text_encoder[_2]/config.json`` and ``tokenizer[_2]/tokenizer_config.json``.
No weights. The tokenizers' vocabulary is NOT copied into each folder: all SD tokenizers are
OpenAI CLIP's BPE (49,408 tokens, 48,894 merges), shipped once as ``bpe_simple_vocab_16e6.txt.gz``
(open_clip, MIT; see NOTICE.md), and ``pointillist.node.loading`` builds the ``CLIPTokenizer``
from it with the folder's ``tokenizer_config.json`` (which sets ``pad_token``).

Sources of the values: the diffusers-format reference repositories on the Hugging Face Hub that
diffusers itself uses as the default config for each single-file type
(``diffusers.loaders.single_file_utils.DIFFUSERS_DEFAULT_PIPELINE_PATHS``), written from their
published ``config.json`` files; keys left out take the library default:

* sd15       stable-diffusion-v1-5/stable-diffusion-v1-5 (PNDMScheduler, epsilon)
* sd2-512    stabilityai/stable-diffusion-2-1-base (PNDMScheduler, epsilon; upcast_attention false)
* sd2-768-v  stabilityai/stable-diffusion-2-1 (DDIMScheduler, v_prediction; upcast_attention true,
             UNet sample_size 96, VAE sample_size 768)
* sdxl       stabilityai/stable-diffusion-xl-base-1.0 (EulerDiscreteScheduler, "leading";
             VAE scaling_factor 0.13025, force_upcast true; force_zeros_for_empty_prompt true).
             Cross-checked against copies of these configs in public code (e.g. SDXL UNet
             projection_class_embeddings_input_dim 2816, transformer_layers_per_block [1, 2, 10]).
* sdxl-turbo stabilityai/sdxl-turbo: the SDXL architecture (diffusers docs: "SDXL Turbo uses the
             exact same architecture as SDXL") trained at 512x512, with
             EulerAncestralDiscreteScheduler and timestep_spacing "trailing" (diffusers docs: "SDXL
             Turbo should use timestep_spacing='trailing'"); UNet sample_size 64. The scheduler
             class is EulerAncestralDiscreteScheduler as a public report of a direct load of
             sdxl-turbo/scheduler/scheduler_config.json states (another public comment says
             EulerDiscreteScheduler; with 1-4 steps either works, and samplers can be chosen per job).
             VAE sample_size 512 and force_zeros_for_empty_prompt true are assumed from SDXL base.

Cross-checked against public copies of the reference configs: SD 2.1 (768-v) UNet sample_size 96,
upcast_attention true, use_linear_projection true; SDXL UNet values and VAE scaling_factor
0.13025 / force_upcast true (see above). SD 2.x-base's PNDMScheduler and upcast_attention false
are from memory of stabilityai/stable-diffusion-2-1-base and not re-checked here.

The CLIP text-encoder values (hidden sizes, layers, heads, activations) are those of OpenAI
CLIP ViT-L/14 (SD 1.x, SDXL encoder 1), OpenCLIP ViT-H/14 run to its penultimate layer (SD 2.x:
23 of 24 layers) and OpenCLIP ViT-bigG/14 (SDXL encoder 2, with projection); tests load every
folder on the meta device and check each shape against real checkpoint key shapes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def _clip(hidden: int, inter: int, heads: int, layers: int, act: str, proj: int, with_projection: bool = False) -> dict:
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": act,
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": proj,
        "vocab_size": 49408,
    }


CLIP_L = _clip(768, 3072, 12, 12, "quick_gelu", 768)  # OpenAI CLIP ViT-L/14
CLIP_H = _clip(1024, 4096, 16, 23, "gelu", 512)  # OpenCLIP ViT-H/14, penultimate layer
CLIP_BIGG = _clip(1280, 5120, 20, 32, "gelu", 1280, with_projection=True)  # OpenCLIP ViT-bigG/14


def _tokenizer(pad: str) -> dict:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad,
        "do_lower_case": True,
        "errors": "replace",
    }


def _sd_unet(cross: int, heads: Any, sample: int, linear: bool, upcast: bool | None) -> dict:
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": heads,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": cross,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": sample,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
    if linear:
        cfg["use_linear_projection"] = True
    if upcast is not None:
        cfg["upcast_attention"] = upcast
    return cfg


def _xl_unet(sample: int) -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": sample,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def _vae(sample: int, scaling: float, force_upcast: bool | None = None) -> dict:
    cfg = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample,
        "scaling_factor": scaling,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    if force_upcast is not None:
        cfg["force_upcast"] = force_upcast
    return cfg


def _pndm() -> dict:
    return {
        "_class_name": "PNDMScheduler",
        **SD_BETAS,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }


def _ddim_v() -> dict:
    return {
        "_class_name": "DDIMScheduler",
        **SD_BETAS,
        "clip_sample": False,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "trained_betas": None,
    }


def _euler(ancestral: bool, spacing: str) -> dict:
    cfg = {
        "_class_name": "EulerAncestralDiscreteScheduler" if ancestral else "EulerDiscreteScheduler",
        **SD_BETAS,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": spacing,
        "trained_betas": None,
    }
    if not ancestral:
        cfg.update(interpolation_type="linear", use_karras_sigmas=False)
    return cfg


def _sd_index(scheduler: str) -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _xl_index(scheduler: str) -> dict:
    return {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def folders() -> dict[str, dict[str, dict]]:
    """{family: {relative file path: JSON content}}."""
    sd1_scaling = 0.18215
    return {
        "sd15": {
            "model_index.json": _sd_index("PNDMScheduler"),
            "scheduler/scheduler_config.json": _pndm(),
            "unet/config.json": _sd_unet(768, 8, 64, linear=False, upcast=None),
            "vae/config.json": _vae(512, sd1_scaling),
            "text_encoder/config.json": CLIP_L,
            "tokenizer/tokenizer_config.json": _tokenizer(EOS),
        },
        "sd2-512": {
            "model_index.json": _sd_index("PNDMScheduler"),
            "scheduler/scheduler_config.json": _pndm(),
            "unet/config.json": _sd_unet(1024, [5, 10, 20, 20], 64, linear=True, upcast=False),
            "vae/config.json": _vae(512, sd1_scaling),
            "text_encoder/config.json": CLIP_H,
            "tokenizer/tokenizer_config.json": _tokenizer("!"),
        },
        "sd2-768-v": {
            "model_index.json": _sd_index("DDIMScheduler"),
            "scheduler/scheduler_config.json": _ddim_v(),
            "unet/config.json": _sd_unet(1024, [5, 10, 20, 20], 96, linear=True, upcast=True),
            "vae/config.json": _vae(768, sd1_scaling),
            "text_encoder/config.json": CLIP_H,
            "tokenizer/tokenizer_config.json": _tokenizer("!"),
        },
        "sdxl": {
            "model_index.json": _xl_index("EulerDiscreteScheduler"),
            "scheduler/scheduler_config.json": _euler(False, "leading"),
            "unet/config.json": _xl_unet(128),
            "vae/config.json": _vae(1024, 0.13025, force_upcast=True),
            "text_encoder/config.json": CLIP_L,
            "text_encoder_2/config.json": CLIP_BIGG,
            "tokenizer/tokenizer_config.json": _tokenizer(EOS),
            "tokenizer_2/tokenizer_config.json": _tokenizer("!"),
        },
        "sdxl-turbo": {
            "model_index.json": _xl_index("EulerAncestralDiscreteScheduler"),
            "scheduler/scheduler_config.json": _euler(True, "trailing"),
            "unet/config.json": _xl_unet(64),
            "vae/config.json": _vae(512, 0.13025, force_upcast=True),
            "text_encoder/config.json": CLIP_L,
            "text_encoder_2/config.json": CLIP_BIGG,
            "tokenizer/tokenizer_config.json": _tokenizer(EOS),
            "tokenizer_2/tokenizer_config.json": _tokenizer("!"),
        },
    }


def render(content: dict) -> str:
    return json.dumps(content, indent=2, sort_keys=True) + "\n"


def build(out: Path = DEFAULT_OUT) -> list[Path]:
    written = []
    for family, files in folders().items():
        for rel, content in files.items():
            target = out / family / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(content), encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    written = build(args.out)
    print(f"wrote {len(written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
