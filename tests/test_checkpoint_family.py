"""Single-file checkpoint family detection (node/checkpoint_family.py) from real key names and shapes.

The checkpoints here are sparse files: a real-shaped safetensors header (the original LDM /
CompVis / Stability key names and shapes of each family, written by ``ldm_shapes``) followed by a
data section made with ``truncate``, so an SDXL-sized file costs no disk and no RAM. The key lists
are checked against diffusers itself: converted with diffusers' own LDM-to-diffusers functions,
they must give exactly the state-dict keys and shapes of the models built (on the meta device) from
the shipped config folders -- which proves both the key names and the shipped configs.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from pointillist.node import checkpoint_family as CF
from pointillist.protocol.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "node" / "model_configs"

U = "model.diffusion_model."

# ---------------------------------------------------------------------------------------------
# real LDM key names and shapes, per family


def _resblock(out: dict, p: str, cin: int, cout: int, temb: int) -> None:
    out[p + "in_layers.0.weight"] = out[p + "in_layers.0.bias"] = (cin,)
    out[p + "in_layers.2.weight"] = (cout, cin, 3, 3)
    out[p + "in_layers.2.bias"] = (cout,)
    out[p + "emb_layers.1.weight"] = (cout, temb)
    out[p + "emb_layers.1.bias"] = (cout,)
    out[p + "out_layers.0.weight"] = out[p + "out_layers.0.bias"] = (cout,)
    out[p + "out_layers.3.weight"] = (cout, cout, 3, 3)
    out[p + "out_layers.3.bias"] = (cout,)
    if cin != cout:
        out[p + "skip_connection.weight"] = (cout, cin, 1, 1)
        out[p + "skip_connection.bias"] = (cout,)


def _transformer(out: dict, p: str, ch: int, depth: int, ctx: int, linear: bool) -> None:
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    out[p + "norm.weight"] = out[p + "norm.bias"] = (ch,)
    out[p + "proj_in.weight"] = out[p + "proj_out.weight"] = proj
    out[p + "proj_in.bias"] = out[p + "proj_out.bias"] = (ch,)
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        for attn, kv in (("attn1", ch), ("attn2", ctx)):
            out[b + f"{attn}.to_q.weight"] = (ch, ch)
            out[b + f"{attn}.to_k.weight"] = out[b + f"{attn}.to_v.weight"] = (ch, kv)
            out[b + f"{attn}.to_out.0.weight"] = (ch, ch)
            out[b + f"{attn}.to_out.0.bias"] = (ch,)
        out[b + "ff.net.0.proj.weight"] = (ch * 8, ch)
        out[b + "ff.net.0.proj.bias"] = (ch * 8,)
        out[b + "ff.net.2.weight"] = (ch, ch * 4)
        out[b + "ff.net.2.bias"] = (ch,)
        for n in ("norm1", "norm2", "norm3"):
            out[b + f"{n}.weight"] = out[b + f"{n}.bias"] = (ch,)


def ldm_unet(
    *, mc: int = 320, mult=(1, 2, 4, 4), depths=(1, 1, 1, 0), mid_depth: int = 1, ctx: int = 768,
    linear: bool = False, adm: int | None = None, in_ch: int = 4, nrb: int = 2,
) -> dict[str, tuple[int, ...]]:
    """The original (CompVis ``openaimodel.UNetModel``) UNet keys, prefixed ``model.diffusion_model.``."""
    out: dict[str, tuple[int, ...]] = {}
    temb = mc * 4
    out["time_embed.0.weight"], out["time_embed.0.bias"] = (temb, mc), (temb,)
    out["time_embed.2.weight"], out["time_embed.2.bias"] = (temb, temb), (temb,)
    if adm is not None:
        out["label_emb.0.0.weight"], out["label_emb.0.0.bias"] = (temb, adm), (temb,)
        out["label_emb.0.2.weight"], out["label_emb.0.2.bias"] = (temb, temb), (temb,)
    out["input_blocks.0.0.weight"], out["input_blocks.0.0.bias"] = (mc, in_ch, 3, 3), (mc,)
    chans, ch, n = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            _resblock(out, f"input_blocks.{n}.0.", ch, mc * m, temb)
            ch = mc * m
            if depths[level]:
                _transformer(out, f"input_blocks.{n}.1.", ch, depths[level], ctx, linear)
            chans.append(ch)
            n += 1
        if level != len(mult) - 1:
            out[f"input_blocks.{n}.0.op.weight"], out[f"input_blocks.{n}.0.op.bias"] = (ch, ch, 3, 3), (ch,)
            chans.append(ch)
            n += 1
    _resblock(out, "middle_block.0.", ch, ch, temb)
    _transformer(out, "middle_block.1.", ch, mid_depth, ctx, linear)
    _resblock(out, "middle_block.2.", ch, ch, temb)
    n = 0
    for level in reversed(range(len(mult))):
        for j in range(nrb + 1):
            _resblock(out, f"output_blocks.{n}.0.", ch + chans.pop(), mc * mult[level], temb)
            ch = mc * mult[level]
            k = 1
            if depths[level]:
                _transformer(out, f"output_blocks.{n}.1.", ch, depths[level], ctx, linear)
                k = 2
            if level and j == nrb:
                out[f"output_blocks.{n}.{k}.conv.weight"], out[f"output_blocks.{n}.{k}.conv.bias"] = (ch, ch, 3, 3), (ch,)
            n += 1
    out["out.0.weight"] = out["out.0.bias"] = (mc,)
    out["out.2.weight"], out["out.2.bias"] = (4, mc, 3, 3), (4,)
    return {U + k: v for k, v in out.items()}


def _vae_res(out: dict, p: str, cin: int, cout: int) -> None:
    out[p + "norm1.weight"] = out[p + "norm1.bias"] = (cin,)
    out[p + "conv1.weight"], out[p + "conv1.bias"] = (cout, cin, 3, 3), (cout,)
    out[p + "norm2.weight"] = out[p + "norm2.bias"] = (cout,)
    out[p + "conv2.weight"], out[p + "conv2.bias"] = (cout, cout, 3, 3), (cout,)
    if cin != cout:
        out[p + "nin_shortcut.weight"], out[p + "nin_shortcut.bias"] = (cout, cin, 1, 1), (cout,)


def _vae_mid(out: dict, p: str, ch: int) -> None:
    _vae_res(out, p + "block_1.", ch, ch)
    out[p + "attn_1.norm.weight"] = out[p + "attn_1.norm.bias"] = (ch,)
    for x in ("q", "k", "v", "proj_out"):
        out[p + f"attn_1.{x}.weight"], out[p + f"attn_1.{x}.bias"] = (ch, ch, 1, 1), (ch,)
    _vae_res(out, p + "block_2.", ch, ch)


def ldm_vae(ch: int = 128, mult=(1, 2, 4, 4), nrb: int = 2, z: int = 4) -> dict[str, tuple[int, ...]]:
    """The original ``AutoencoderKL`` keys, prefixed ``first_stage_model.``."""
    out: dict[str, tuple[int, ...]] = {}
    out["encoder.conv_in.weight"], out["encoder.conv_in.bias"] = (ch, 3, 3, 3), (ch,)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            _vae_res(out, f"encoder.down.{i}.block.{j}.", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            out[f"encoder.down.{i}.downsample.conv.weight"] = (block_in, block_in, 3, 3)
            out[f"encoder.down.{i}.downsample.conv.bias"] = (block_in,)
    _vae_mid(out, "encoder.mid.", block_in)
    out["encoder.norm_out.weight"] = out["encoder.norm_out.bias"] = (block_in,)
    out["encoder.conv_out.weight"], out["encoder.conv_out.bias"] = (2 * z, block_in, 3, 3), (2 * z,)
    out["quant_conv.weight"], out["quant_conv.bias"] = (2 * z, 2 * z, 1, 1), (2 * z,)
    out["post_quant_conv.weight"], out["post_quant_conv.bias"] = (z, z, 1, 1), (z,)
    block_in = ch * mult[-1]
    out["decoder.conv_in.weight"], out["decoder.conv_in.bias"] = (block_in, z, 3, 3), (block_in,)
    _vae_mid(out, "decoder.mid.", block_in)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            _vae_res(out, f"decoder.up.{i}.block.{j}.", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            out[f"decoder.up.{i}.upsample.conv.weight"] = (block_in, block_in, 3, 3)
            out[f"decoder.up.{i}.upsample.conv.bias"] = (block_in,)
    out["decoder.norm_out.weight"] = out["decoder.norm_out.bias"] = (ch,)
    out["decoder.conv_out.weight"], out["decoder.conv_out.bias"] = (3, ch, 3, 3), (3,)
    return {"first_stage_model." + k: v for k, v in out.items()}


def hf_clip(prefix: str, d: int = 768, inter: int = 3072, layers: int = 12, vocab: int = 49408) -> dict:
    """OpenAI CLIP text model keys in transformers naming (SD 1.x, SDXL encoder 1)."""
    out = {
        "embeddings.token_embedding.weight": (vocab, d),
        "embeddings.position_embedding.weight": (77, d),
        "final_layer_norm.weight": (d,),
        "final_layer_norm.bias": (d,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for x in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{x}.weight"], out[p + f"self_attn.{x}.bias"] = (d, d), (d,)
        for n in ("layer_norm1", "layer_norm2"):
            out[p + f"{n}.weight"] = out[p + f"{n}.bias"] = (d,)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (inter, d), (inter,)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, inter), (d,)
    return {prefix + k: v for k, v in out.items()}


def open_clip(prefix: str, d: int, inter: int, layers: int, proj: int | None) -> dict:
    """OpenCLIP text tower keys (SD 2.x: ViT-H, SDXL encoder 2: ViT-bigG)."""
    out = {
        "token_embedding.weight": (49408, d),
        "positional_embedding": (77, d),
        "ln_final.weight": (d,),
        "ln_final.bias": (d,),
    }
    if proj is not None:
        out["text_projection"] = (d, proj)
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        out[p + "attn.in_proj_weight"], out[p + "attn.in_proj_bias"] = (3 * d, d), (3 * d,)
        out[p + "attn.out_proj.weight"], out[p + "attn.out_proj.bias"] = (d, d), (d,)
        for n in ("ln_1", "ln_2"):
            out[p + f"{n}.weight"] = out[p + f"{n}.bias"] = (d,)
        out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = (inter, d), (inter,)
        out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = (d, inter), (d,)
    return {prefix + k: v for k, v in out.items()}


def sd15_shapes() -> dict:
    return {**ldm_unet(), **ldm_vae(), **hf_clip("cond_stage_model.transformer.text_model.")}


def sd2_shapes() -> dict:
    unet = ldm_unet(ctx=1024, linear=True)
    return {**unet, **ldm_vae(), **open_clip("cond_stage_model.model.", 1024, 4096, 24, 1024)}


def sdxl_shapes() -> dict:
    unet = ldm_unet(mult=(1, 2, 4), depths=(0, 2, 10), mid_depth=10, ctx=2048, linear=True, adm=2816)
    return {
        **unet,
        **ldm_vae(),
        **hf_clip("conditioner.embedders.0.transformer.text_model."),
        **open_clip("conditioner.embedders.1.model.", 1280, 5120, 32, 1280),
    }


def refiner_shapes() -> dict:
    unet = ldm_unet(mc=384, mult=(1, 2, 4, 4), depths=(0, 4, 4, 0), mid_depth=4, ctx=1280, linear=True, adm=2560)
    return {**unet, **ldm_vae(), **open_clip("conditioner.embedders.0.model.", 1280, 5120, 32, 1280)}


FAMILY_SHAPES = {"sd15": sd15_shapes, "sd2": sd2_shapes, "sdxl": sdxl_shapes}

# ---------------------------------------------------------------------------------------------
# sparse safetensors files

_DSIZE = {"F16": 2, "BF16": 2, "F32": 4}


def write_sparse(
    path: Path, shapes: dict, *, dtype: str = "F16", metadata: dict | None = None, values: dict | None = None
) -> Path:
    """A safetensors file with this header whose data section is a hole (``truncate``), except the
    tensors in ``values`` ({name: list of floats}, F16), which are written for real."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, shape in shapes.items():
        size = _DSIZE[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset)
        for name, vals in (values or {}).items():
            assert dtype == "F16"
            fh.seek(8 + len(raw) + header[name]["data_offsets"][0])
            fh.write(struct.pack(f"<{len(vals)}e", *vals))
    return path


# ---------------------------------------------------------------------------------------------
# detection


@pytest.mark.parametrize(
    "filename, shapes, family, side",
    [
        ("v1-5-pruned-emaonly.safetensors", sd15_shapes, "sd15", 512),
        ("v2-1_512-ema-pruned.safetensors", sd2_shapes, "sd2-512", 512),
        ("sd_xl_base_1.0.safetensors", sdxl_shapes, "sdxl", 1024),
        ("sd_xl_turbo_1.0_fp16.safetensors", sdxl_shapes, "sdxl-turbo", 512),
    ],
)
def test_detects_each_family_from_real_shapes(tmp_path: Path, filename, shapes, family, side):
    path = write_sparse(tmp_path / filename, shapes())
    blocks = getattr(os.stat(path), "st_blocks", None)  # POSIX only
    assert blocks is None or blocks * 512 < 10 * 2**20  # sparse: the data section uses no disk
    detection = CF.detect_family(path)
    assert detection.family.name == family
    assert detection.family.native_side == side


def _probe_values(std: float) -> list[float]:
    return [std if i % 2 else -std for i in range(320)]  # sample std = std * sqrt(320/319)


def test_sd2_768_v_from_the_norm_bias_spread(tmp_path: Path):
    v = write_sparse(tmp_path / "v2-1_768-ema-pruned.safetensors", sd2_shapes(), values={CF.V_PRED_PROBE: _probe_values(0.15)})
    eps = write_sparse(tmp_path / "b.safetensors", sd2_shapes(), values={CF.V_PRED_PROBE: _probe_values(0.05)})
    assert CF.detect_family(v).family.name == "sd2-768-v"
    assert CF.detect_family(v).family.native_side == 768
    assert CF.detect_family(eps).family.name == "sd2-512"


def test_sd2_prediction_type_metadata_wins(tmp_path: Path):
    path = write_sparse(tmp_path / "m.safetensors", sd2_shapes(), metadata={"modelspec.prediction_type": "v"})
    assert CF.detect_family(path).family.name == "sd2-768-v"


def test_sdxl_turbo_from_modelspec_metadata(tmp_path: Path):
    path = write_sparse(tmp_path / "model.safetensors", sdxl_shapes(), metadata={"modelspec.title": "SDXL Turbo"})
    assert CF.detect_family(path).family.name == "sdxl-turbo"


def test_bf16_and_f32_probe_values_are_read(tmp_path: Path):
    vals = _probe_values(0.2)
    path = write_sparse(tmp_path / "p.safetensors", {"x": (320,)}, values={"x": vals})
    assert CF.read_small_tensor(CF.read_header(path), "x")[:2] == pytest.approx(vals[:2], rel=1e-3)


def test_unknown_architecture_is_one_line_naming_what_was_found(tmp_path: Path):
    shapes = {**ldm_unet(ctx=1024, linear=True), **ldm_vae(), **open_clip("cond_stage_model.model.", 1024, 4096, 24, 1024)}
    shapes["cond_stage_model.model.token_embedding.weight"] = (49408, 1280)  # no such family
    path = write_sparse(tmp_path / "odd.safetensors", shapes)
    with pytest.raises(ModelError) as info:
        CF.detect_family(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "unknown checkpoint architecture" in msg and "odd.safetensors" in msg
    assert "cond_stage_model.model (1280 wide)" in msg and "UNet in-channels 4" in msg
    assert "cross-attention context 1024" in msg

    other = write_sparse(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)})
    with pytest.raises(ModelError, match=r"no Stable Diffusion UNet .*double_blocks") as info:
        CF.detect_family(other)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "in_ch, what",
    [(9, "inpainting"), (8, "instruct-pix2pix"), (5, "depth"), (7, "upscaler")],
)
def test_non_text_to_image_unets_are_refused_by_name(tmp_path: Path, in_ch, what):
    shapes = {**ldm_unet(in_ch=in_ch), **ldm_vae(), **hf_clip("cond_stage_model.transformer.text_model.")}
    with pytest.raises(ModelError, match=what):
        CF.detect_family(write_sparse(tmp_path / "x.safetensors", shapes))


def test_refiner_unclip_and_old_sd1_layout_are_refused(tmp_path: Path):
    with pytest.raises(ModelError, match="SDXL refiner"):
        CF.detect_family(write_sparse(tmp_path / "r.safetensors", refiner_shapes()))
    unclip = {**sd2_shapes(), **{k: v for k, v in ldm_unet(ctx=1024, linear=True, adm=1024).items() if "label_emb" in k}}
    with pytest.raises(ModelError, match="unCLIP"):
        CF.detect_family(write_sparse(tmp_path / "u.safetensors", unclip))
    old = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in sd15_shapes().items()
    }
    with pytest.raises(ModelError, match="old SD 1.x text-encoder layout"):
        CF.detect_family(write_sparse(tmp_path / "o.safetensors", old))


@pytest.mark.parametrize("component, prefix", [("VAE", "first_stage_model."), ("text encoder", "cond_stage_model."), ("UNet", U + "output_blocks.11.")])
def test_incomplete_checkpoint_is_refused(tmp_path: Path, component, prefix):
    shapes = {k: v for k, v in sd15_shapes().items() if not k.startswith(prefix)}
    path = write_sparse(tmp_path / "partial.safetensors", shapes)
    with pytest.raises(ModelError) as info:
        CF.detect_family(path)
    msg = str(info.value)
    assert component in msg and "\n" not in msg


def test_not_a_safetensors_file(tmp_path: Path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not-json")
    with pytest.raises(ModelError, match="not a safetensors file"):
        CF.detect_family(bad)
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    with pytest.raises(ModelError, match="not a safetensors file"):
        CF.detect_family(tmp_path / "short.safetensors")


def test_detection_reads_the_header_only(tmp_path: Path):
    """An SDXL-sized (6.9 GB) sparse file is detected in well under a second."""
    import time

    path = write_sparse(tmp_path / "sd_xl_base_1.0.safetensors", sdxl_shapes())
    assert path.stat().st_size > 6 * 2**30
    start = time.perf_counter()
    CF.detect_family(path)
    assert time.perf_counter() - start < 1.0


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, pointillist.node.checkpoint_family; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# the key lists and the shipped configs agree with diffusers


def _meta_models(folder: Path) -> dict:
    """The shipped folder's UNet, VAE and text encoders, built on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    import transformers

    models = {}
    with torch.device("meta"):
        models["unet"] = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(folder / "unet")
        )
        models["vae"] = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        for sub in ("text_encoder", "text_encoder_2"):
            if (folder / sub).is_dir():
                cfg = transformers.CLIPTextConfig.from_pretrained(folder / sub, local_files_only=True)
                cls = transformers.CLIPTextModelWithProjection if sub.endswith("2") else transformers.CLIPTextModel
                models[sub] = cls(cfg)
    return models


def _meta_checkpoint(shapes: dict) -> dict:
    import torch

    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _shapes_of(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("family, shapes", [("sd15", sd15_shapes), ("sd2-512", sd2_shapes), ("sd2-768-v", sd2_shapes), ("sdxl", sdxl_shapes), ("sdxl-turbo", sdxl_shapes)])
def test_shipped_configs_match_real_checkpoint_shapes(family, shapes):
    """diffusers' own LDM conversion of the real key list gives exactly each shipped model's keys
    and shapes (buffers such as CLIP's position_ids aside)."""
    pytest.importorskip("diffusers")
    from diffusers.loaders import single_file_utils as S

    models = _meta_models(CONFIGS / family)
    ckpt = _meta_checkpoint(shapes())
    unet = S.convert_ldm_unet_checkpoint(ckpt, models["unet"].config)
    assert _shapes_of(unet) == _shapes_of(models["unet"].state_dict())
    vae = S.convert_ldm_vae_checkpoint(ckpt, models["vae"].config)
    assert _shapes_of(vae) == _shapes_of(models["vae"].state_dict())

    def expected(model) -> dict:
        return {_plain(k): v for k, v in _shapes_of(model.state_dict()).items() if not k.endswith("position_ids")}

    def _plain(key: str) -> str:  # transformers 5 names CLIP text weights without "text_model."
        return key.removeprefix("text_model.")

    def converted(state: dict) -> dict:
        return {_plain(k): v for k, v in _shapes_of(state).items()}

    if family.startswith("sdxl"):
        te1 = S.convert_ldm_clip_checkpoint(ckpt)
        te2 = S.convert_open_clip_checkpoint(models["text_encoder_2"], ckpt, prefix="conditioner.embedders.1.model.")
        assert converted(te1) == expected(models["text_encoder"])
        assert converted(te2) == expected(models["text_encoder_2"])
    elif family == "sd15":
        assert converted(S.convert_ldm_clip_checkpoint(ckpt)) == expected(models["text_encoder"])
    else:
        te = S.convert_open_clip_checkpoint(models["text_encoder"], ckpt)
        assert converted(te) == expected(models["text_encoder"])


@pytest.mark.parametrize("family", sorted(CF.FAMILIES))
def test_folder_family_from_configs(family: str):
    """A diffusers folder's family from its model index, UNet and scheduler configs (the shipped
    folders have exactly the reference repositories' configs)."""
    assert CF.folder_family(CONFIGS / family) is CF.FAMILIES[family]
    assert CF.family_of(CONFIGS / family) == family


def test_family_of_files_and_unknowns(tmp_path: Path):
    assert CF.family_of(write_sparse(tmp_path / "sd_xl_base_1.0.safetensors", sdxl_shapes())) == "sdxl"
    assert CF.family_of(write_sparse(tmp_path / "odd.safetensors", {"x": (3,)})) is None
    assert CF.family_of(REPO / "node" / "models" / "tiny-sd") is None  # tiny widths: no family
    (tmp_path / "a.ckpt").write_bytes(b"\0")
    assert CF.family_of(tmp_path / "a.ckpt") is None
    assert CF.family_of(tmp_path / "missing.safetensors") is None


def test_committed_configs_equal_a_fresh_build(tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_model_configs", CONFIGS / "build_model_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.build(tmp_path)
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (CONFIGS / rel).read_bytes() == path.read_bytes(), rel
    committed = {p.relative_to(CONFIGS) for p in CONFIGS.rglob("*.json")}
    assert committed == {p.relative_to(tmp_path) for p in written}
