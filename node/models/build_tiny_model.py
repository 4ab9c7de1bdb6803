"""Build Pointillist's embedded default model: a tiny Stable Diffusion 1.x pipeline.

    python node/models/build_tiny_model.py [OUT_DIR] [--seed N]

OUT_DIR defaults to ``node/models/tiny-sd`` next to this script. The script also writes
``<OUT_DIR>.versions.json`` beside the folder (never inside it: everything inside the folder is
model content that loaders read and ``model_digest`` hashes) recording the seed, the library
versions used and the resulting ``pointillist-model-v1`` digest.

What it is
----------
A real ``StableDiffusionPipeline`` -- the real SD-1.x architecture of every component, only
much smaller, in the way diffusers' own test suite builds its dummy pipelines -- with *seeded random
weights*. No package on PyPI ships real text-to-image weights and this project may not download any,
so the default model is honest noise: it exercises the whole generation, hashing and attestation path
(tokenizer, text encoder, UNet denoising loop, scheduler, VAE decode) in well under a second on a
CPU, but its images are noise, not pictures.

Components
----------
* ``unet``: ``UNet2DConditionModel``, block_out_channels (32, 64), layers_per_block 1,
  cross_attention_dim 32, sample_size 32 (about 1.0 M parameters).
* ``vae``: ``AutoencoderKL`` with SD's four blocks, block_out_channels (16, 32, 32, 32),
  norm_num_groups 16, 4 latent channels (about 0.32 M). Four blocks mean three downsamplings, so
  ``vae_scale_factor`` is 8 exactly as in SD (a 64x64 image has an 8x8 latent, 256x256 a 32x32
  one). A two-block VAE (factor 2) was tried first and rejected: its latents are 16x as large, and
  self-attention over them made 256x256 take ~7 s instead of ~1 s.
* ``text_encoder``: 2-layer ``CLIPTextModel``, hidden size 32, 77 positions, vocabulary 514.
* ``tokenizer``: ``CLIPTokenizer`` (byte-level BPE) whose ``vocab.json``, ``merges.txt`` and
  ``tokenizer_config.json`` are written by this script: the 256 byte-to-unicode characters of
  GPT-2/CLIP, the same 256 with the ``</w>`` end-of-word suffix, then ``<|startoftext|>`` (512) and
  ``<|endoftext|>`` (513, also pad and unk). The merges list is empty, so every word is spelled out
  byte by byte -- valid CLIP BPE, just without learned merges. ``model_max_length`` is 77.
* ``scheduler``: ``DDIMScheduler`` with Stable Diffusion 1.x's training schedule (scaled_linear
  betas 0.00085..0.012, 1000 steps, steps_offset 1, set_alpha_to_one False, clip_sample False,
  "leading" spacing, epsilon prediction). Chosen because with eta = 0 (the pipeline default) it is
  deterministic -- the generator is used once, for the initial latent -- and first-order: step k
  depends only on the latent at step k and one UNet output, so ``steps`` means exactly ``steps``
  UNet evaluations and a single denoising step can be recomputed from committed latents (PNDM, the
  scheduler SD-1.5 ships with, keeps a history of past outputs and runs steps + 1 evaluations).
* ``safety_checker`` and ``feature_extractor``: None (``requires_safety_checker`` False).

Generation constraint: width and height must be multiples of 8 -- ``StableDiffusionPipeline``
rejects anything else, and 8 is the VAE factor. Any multiple of 8 works (the UNet's single
downsampling copes with odd latent sizes such as 9x9 for 72x72 by upsampling to the skip size);
64x64 and 256x256 are the sizes measured. The pipeline's own default size is 256x256
(UNet sample_size 32 x 8), but Pointillist always passes width and height explicitly.

Reproducibility
---------------
The build is byte-for-byte reproducible for a given seed and library versions, and -- unlike
``torch.manual_seed`` + the layers' default initialisers -- also across CPUs: PyTorch's float32
``normal_`` takes a different code path per instruction set (AVX2 vs AVX-512 vs none), so default
initialisation bits depend on the machine. Here every parameter that is not a constant (norm
weights 1, norm biases 0 stay as initialised) is overwritten with values built only from exact
operations: integers from ``torch.randint`` on a seeded CPU generator (Mersenne Twister, integer
arithmetic only), converted to float64 (exact), scaled by 2**-23 (exact) and by a bound (one
correctly rounded IEEE multiply), then rounded to float32 once. The bound mimics PyTorch's default
``kaiming_uniform_(a=sqrt(5))`` scale: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights with two or
more dimensions and for the bias that belongs to such a weight; U(-0.02, 0.02) for anything else.
Parameters are filled in ``state_dict`` order, one generator per component seeded with ``seed +
component index`` so components do not depend on each other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

DEFAULT_SEED = 0
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "tiny-sd"

#: Versions this script's committed output (node/models/tiny-sd) was built with. The sibling file
#: ``tiny-sd.versions.json`` is the authoritative record; this constant mirrors it for readers.
BUILT_WITH = {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.23.0"}

MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _quiet() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_tokenizer(folder: Path) -> int:
    """Write a byte-level CLIP BPE tokenizer (vocab, empty merges, config). Returns vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    from pointillist.node.loading import bytes_to_unicode  # the map the node's shipped vocabulary uses

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    # CLIP's merges.txt starts with a version line; the (empty) list of merges follows.
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "clean_up_tokenization_spaces": True,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return len(vocab)


def _portable_init(module, seed: int) -> None:
    """Overwrite non-constant parameters with machine-independent seeded values (see module doc)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    params = dict(module.named_parameters())
    scale = 2.0**-23
    with torch.no_grad():
        for name, param in module.state_dict(keep_vars=True).items():
            if name not in params or not param.is_floating_point():
                continue  # buffers (e.g. CLIP's position_ids) are deterministic already
            flat = param.detach().reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                continue  # constant initialisation (norm weight 1 / bias 0): already portable
            if param.dim() >= 2:
                bound = 1.0 / math.sqrt(param[0].numel())
            else:
                owner = params.get(name.rsplit(".", 1)[0] + ".weight") if name.endswith(".bias") else None
                bound = 1.0 / math.sqrt(owner[0].numel()) if owner is not None and owner.dim() >= 2 else 0.02
            ints = torch.randint(-(2**23), 2**23 + 1, tuple(param.shape), generator=generator, dtype=torch.int64)
            values = ints.to(torch.float64) * scale * bound
            param.copy_(values.to(param.dtype))


def build(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Build the tiny pipeline into ``out_dir`` (created; must be empty or absent).

    Returns the versions used (also written to ``<out_dir>.versions.json``).
    """
    _quiet()
    import diffusers
    import torch
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"error: {out_dir} exists and is not empty; remove it first")

    with tempfile.TemporaryDirectory() as scratch:
        vocab_size = write_tokenizer(Path(scratch) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(scratch) / "tokenizer", local_files_only=True)
        assert tokenizer.model_max_length == MAX_LENGTH, tokenizer.model_max_length

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        _portable_init(unet, seed)

        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=256,
        )
        _portable_init(vae, seed + 1)

        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab_size,
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_LENGTH,
                layer_norm_eps=1e-5,
                hidden_act="quick_gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        _portable_init(text_encoder, seed + 2)
        text_encoder.eval()

        scheduler = DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
            timestep_spacing="leading",
        )

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(out_dir, safe_serialization=True)

    # The tokenizer folder holds exactly the files written by code above: transformers 5 would
    # save a tokenizer.json plus machine-specific keys (is_local, local_files_only) instead.
    tok_dir = out_dir / "tokenizer"
    for child in tok_dir.iterdir():
        child.unlink()
    write_tokenizer(tok_dir)

    versions = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    out_dir: Path = args.out_dir
    versions = build(out_dir, args.seed)

    try:
        from pointillist.node.model_digest import compute_model_digest
    except ImportError:  # not installed: load the sibling module by path
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "_model_digest", Path(__file__).resolve().parents[1] / "model_digest.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        compute_model_digest = module.compute_model_digest
    digest = compute_model_digest(out_dir)

    record = {"seed": args.seed, **versions, "digest": digest, "digest_algorithm": "pointillist-model-v1"}
    record_path = out_dir.parent / f"{out_dir.name}.versions.json"
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"built {out_dir} (seed {args.seed}): {len(files)} files, {total} bytes")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"digest (pointillist-model-v1): {digest}")
    print(f"recorded in {record_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
