"""Single-file checkpoints loaded with no config: detection picks the shipped config folder.

* ``test_tiny_sd15_layout_*`` (always on, ~seconds): a checkpoint in the real SD 1.5 *layout*
  (LDM key names, the same block structure) with tiny widths and seeded random weights, loaded
  through the single-file path, gives the same pixels as the same weights saved and loaded as a
  diffusers folder, and every weight of the loaded pipeline is the checkpoint's (none left random).
* ``test_real_sd15_shapes_*`` (``heavy``): the same with real SD 1.5 shapes (1.07 B random fp16
  weights, a 2.1 GB file) and no config at all: real detection, the shipped ``sd15`` folder and the
  shipped CLIP vocabulary.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from test_checkpoint_family import hf_clip, ldm_unet, ldm_vae, open_clip, sd15_shapes  # noqa: E402

from pointillist.node import checkpoint_family as CF  # noqa: E402
from pointillist.node import loading as L  # noqa: E402
from pointillist.node import pipeline as P  # noqa: E402
from pointillist.protocol.errors import ModelError  # noqa: E402

SHIPPED = L.shipped_configs_path()

PARAMS = P.GenerationSettings(
    prompt="a lighthouse at dusk, pointillism",
    negative_prompt="blurry",
    seed=1234,
    steps=2,
    guidance=7.5,
    width=64,
    height=64,
)


def _random_checkpoint(path: Path, shapes: dict, dtype: torch.dtype, seed: int = 0) -> dict:
    """Seeded random weights (normal, std 0.02; norm weights around 1) saved as safetensors."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02
        if len(shape) == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
            value += 1.0
        state[name] = value.to(dtype)
    save_file(state, str(path))
    return state


def _tiny_config(root: Path, family: str = "sd15") -> Path:
    """The shipped folder of ``family`` with the UNet, VAE and text encoder(s) shrunk (same layout)."""
    folder = root / family
    shutil.copytree(SHIPPED / family, folder)

    def edit(rel: str, **changes) -> None:
        cfg = json.loads((folder / rel).read_text())
        cfg.update(changes)
        (folder / rel).write_text(json.dumps(cfg))

    edit("vae/config.json", block_out_channels=[32, 32, 32, 32], sample_size=64)
    clip = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    edit("text_encoder/config.json", **clip)
    if family == "sd15":
        edit("unet/config.json", block_out_channels=[32, 32, 64, 64], cross_attention_dim=32, sample_size=8)
    elif family.startswith("sd2"):
        edit("unet/config.json", block_out_channels=[32, 32, 64, 64], cross_attention_dim=32, sample_size=8,
             attention_head_dim=[2, 2, 4, 4])
    else:  # sdxl: context = 32 + 64, class input = 6 * 8 (time ids) + 64 (pooled projection)
        # The two encoders must differ in width: diffusers tells them apart by it.
        edit("text_encoder_2/config.json", **{**clip, "hidden_size": 64, "projection_dim": 64})
        edit("unet/config.json", block_out_channels=[32, 64, 64], cross_attention_dim=96, sample_size=8,
             attention_head_dim=[2, 4, 4], transformer_layers_per_block=[1, 1, 2], addition_time_embed_dim=8,
             projection_class_embeddings_input_dim=112)
    return folder


def _tiny_shapes(family: str = "sd15") -> dict:
    vae = ldm_vae(ch=32, mult=(1, 1, 1, 1))
    if family == "sd15":
        unet = ldm_unet(mc=32, mult=(1, 1, 2, 2), ctx=32)
        return {**unet, **vae, **hf_clip("cond_stage_model.transformer.text_model.", d=32, inter=37, layers=2)}
    if family.startswith("sd2"):  # three OpenCLIP layers: SD 2.x runs all but the last
        unet = ldm_unet(mc=32, mult=(1, 1, 2, 2), ctx=32, linear=True)
        return {**unet, **vae, **open_clip("cond_stage_model.model.", 32, 37, 3, 32)}
    unet = ldm_unet(mc=32, mult=(1, 2, 2), depths=(0, 1, 2), mid_depth=2, ctx=96, linear=True, adm=112)
    return {
        **unet,
        **vae,
        **hf_clip("conditioner.embedders.0.transformer.text_model.", d=32, inter=37, layers=2),
        **open_clip("conditioner.embedders.1.model.", 64, 37, 2, 64),
    }


def _pixels(model: P.LoadedModel) -> bytes:
    return model.generate(PARAMS).image.tobytes()


def _assert_no_random_weights(model: P.LoadedModel, ckpt: dict) -> None:
    """Every UNet / VAE / text-encoder tensor equals diffusers' conversion of the checkpoint."""
    from diffusers.loaders import single_file_utils as S

    pipe = model.pipe
    expected = {
        "unet": S.convert_ldm_unet_checkpoint(ckpt, pipe.unet.config),
        "vae": S.convert_ldm_vae_checkpoint(ckpt, pipe.vae.config),
    }
    if "cond_stage_model.model.token_embedding.weight" in ckpt:
        expected["text_encoder"] = S.convert_open_clip_checkpoint(pipe.text_encoder, ckpt)
    else:
        expected["text_encoder"] = S.convert_ldm_clip_checkpoint(ckpt)
    if getattr(pipe, "text_encoder_2", None) is not None:
        expected["text_encoder_2"] = S.convert_open_clip_checkpoint(
            pipe.text_encoder_2, ckpt, prefix="conditioner.embedders.1.model."
        )
    for part, want in expected.items():
        want = {k.removeprefix("text_model."): v for k, v in want.items()}
        got = {k.removeprefix("text_model."): v for k, v in getattr(pipe, part).state_dict().items()}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert set(got) <= set(want), part  # extra: e.g. the OpenCLIP layer SD 2.x does not run
        for key, value in got.items():
            assert torch.equal(value.float(), want[key].float()), f"{part}: {key}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny-sf")
    ckpt_path = root / "tiny-sd15-layout.safetensors"
    state = _random_checkpoint(ckpt_path, _tiny_shapes(), torch.float32)
    return {"root": root, "ckpt": ckpt_path, "state": state, "config": _tiny_config(root / "configs")}


@pytest.fixture
def tiny_shipped(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point the loader's shipped configs at the tiny sd15 folder and its detection at sd15
    (tiny widths cannot pass the real shape checks, which test_checkpoint_family covers)."""
    shipped = tiny["config"].parent
    shutil.copy(SHIPPED / L.CLIP_BPE_FILE, shipped / L.CLIP_BPE_FILE)
    monkeypatch.setattr(L, "shipped_configs_path", lambda: shipped)
    monkeypatch.setattr(L, "detect_family", lambda path: CF.Detection(CF.FAMILIES["sd15"], "test"))
    return tiny


def test_tiny_sd15_layout_loads_with_no_config_and_matches_the_folder(tiny_shipped: dict, tmp_path: Path, monkeypatch,
                                                                      one_thread: None):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading a local checkpoint")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    single = L.load_model(tiny_shipped["ckpt"], device="cpu")
    assert (single.family, single.native_side) == ("sd15", 512)
    assert single.name == "tiny-sd15-layout"
    assert type(single.pipe).__name__ == "StableDiffusionPipeline"
    assert type(single.pipe.scheduler).__name__ == "PNDMScheduler"
    assert single.pipe.tokenizer.pad_token == "<|endoftext|>" and len(single.pipe.tokenizer) == 49408
    _assert_no_random_weights(single, tiny_shipped["state"])

    folder = tmp_path / "as-folder"
    single.pipe.save_pretrained(folder)
    from_folder = L.load_model(folder, device="cpu")
    assert from_folder.family is None
    assert _pixels(single) == _pixels(from_folder)


@pytest.mark.parametrize("family", ["sd2-768-v", "sdxl", "sdxl-turbo"])
def test_tiny_sd2_and_sdxl_layouts_load_completely_and_match_the_folder(family: str, tmp_path: Path, monkeypatch,
                                                                         one_thread: None):
    """The SD 2.x and SDXL paths (OpenCLIP encoders, two tokenizers, pooled projection) through the
    shipped folders' schedulers and tokenizers, with tiny widths."""
    shipped = tmp_path / "configs"
    _tiny_config(shipped, family)
    shutil.copy(SHIPPED / L.CLIP_BPE_FILE, shipped / L.CLIP_BPE_FILE)
    monkeypatch.setattr(L, "shipped_configs_path", lambda: shipped)
    monkeypatch.setattr(L, "detect_family", lambda path: CF.Detection(CF.FAMILIES[family], "test"))
    ckpt = tmp_path / f"tiny-{family}.safetensors"
    state = _random_checkpoint(ckpt, _tiny_shapes(family), torch.float32)

    single = L.load_model(ckpt, device="cpu")
    assert (single.family, single.native_side) == (family, CF.FAMILIES[family].native_side)
    _assert_no_random_weights(single, state)
    scheduler = json.loads((SHIPPED / family / "scheduler" / "scheduler_config.json").read_text())
    assert type(single.pipe.scheduler).__name__ == scheduler["_class_name"]
    assert single.pipe.scheduler.config.prediction_type == scheduler["prediction_type"]
    if family.startswith("sdxl"):
        assert single.pipe.tokenizer.pad_token == "<|endoftext|>" and single.pipe.tokenizer_2.pad_token == "!"
        assert single.pipe.config.force_zeros_for_empty_prompt is True
    else:
        assert single.pipe.tokenizer.pad_token == "!"

    folder = tmp_path / "as-folder"
    single.pipe.save_pretrained(folder)
    assert _pixels(single) == _pixels(L.load_model(folder, device="cpu"))


def test_tiny_sd15_layout_with_a_config_folder_override(tiny: dict):
    model = L.load_model(tiny["ckpt"], device="cpu", config=tiny["config"])
    assert model.family is None  # a user's folder: the family is not known
    _assert_no_random_weights(model, tiny["state"])


def test_shipped_tokenizers_encode_like_clip():
    tokenizers = L._shipped_tokenizers(SHIPPED / "sdxl")
    one, two = tokenizers["tokenizer"], tokenizers["tokenizer_2"]
    ids = one("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7] == 49407  # pad <|endoftext|>
    ids2 = two("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids2[:7] == ids[:7] and ids2[7] == 0  # SD 2.x / SDXL encoder 2 pad with "!" (id 0)
    assert L._shipped_tokenizers(SHIPPED / "sd2-768-v")["tokenizer"].pad_token == "!"
    assert L._shipped_tokenizers(SHIPPED / "sd15")["tokenizer"].pad_token == "<|endoftext|>"
    assert one.model_max_length == 77


def test_ckpt_files_need_a_config(tmp_path: Path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="model-config") as info:
        L.load_model(ckpt, device="cpu")
    assert "\n" not in str(info.value)


def test_unknown_architecture_error_reaches_load_model(tmp_path: Path):
    from test_checkpoint_family import write_sparse

    path = write_sparse(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)})
    with pytest.raises(ModelError, match="unknown checkpoint architecture") as info:
        L.load_model(path, device="cpu")
    assert "\n" not in str(info.value)


def test_family_name_as_config(tiny_shipped: dict):
    model = L.load_model(tiny_shipped["ckpt"], device="cpu", config=Path("sd15"))
    assert model.family == "sd15"
    with pytest.raises(ModelError, match="sd2-768-v"):
        L.load_model(tiny_shipped["ckpt"], device="cpu", config=Path("no-such-family"))


@pytest.mark.heavy
def test_real_sd15_shapes_load_with_no_config_and_match_the_folder(tmp_path: Path, one_thread: None):
    """Real SD 1.5 shapes, random fp16 weights: detection, shipped config, shipped vocabulary.

    Measured on 2 cores / 23 GB RAM (CPU, torch 2.13, diffusers 0.42.1): 1.3 to 2.3 min wall,
    peak RSS 9.0 GB.
    Disk: a 2.1 GB checkpoint and a 2.1 GB fp16 folder under tmp_path.
    """
    ckpt_path = tmp_path / "v1-5-random.safetensors"
    state = _random_checkpoint(ckpt_path, sd15_shapes(), torch.float16)
    assert CF.detect_family(ckpt_path).family.name == "sd15"

    single = L.load_model(ckpt_path, device="cpu")
    assert (single.family, single.native_side) == ("sd15", 512)
    _assert_no_random_weights(single, state)
    del state
    single_pixels = _pixels(single)

    folder = tmp_path / "as-folder"
    single.pipe.to(torch.float16)  # the values are fp16 already: halving loses nothing
    single.pipe.save_pretrained(folder)
    del single
    from_folder = L.load_model(folder, device="cpu", dtype="float32")
    assert (from_folder.family, from_folder.native_side) == ("sd15", 512)  # from the folder's configs
    assert _pixels(from_folder) == single_pixels


def test_weights_at_unaligned_addresses_get_aligned_copies_with_the_same_values():
    """Folder loads leave weights at their offsets in the safetensors file; the CPU kernels then
    round differently (the sd2-768-v comparison above was one level off in a pixel without this)."""
    from types import SimpleNamespace

    module = torch.nn.Linear(5, 3)
    module.register_buffer("table", torch.arange(7, dtype=torch.float32))
    for holder, key in ((module._parameters, "weight"), (module._buffers, "table")):
        value = holder[key].detach()
        storage = torch.empty(value.numel() + 1)
        storage[1:].copy_(value.flatten())
        unaligned = storage[1:].view(value.shape)  # 4 bytes past an aligned allocation
        if holder is module._parameters:
            holder[key].data = unaligned
        else:
            holder[key] = unaligned
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    assert module.weight.data_ptr() % 64 and module.table.data_ptr() % 64

    L._own_aligned_memory(SimpleNamespace(components={"unet": module, "tokenizer": object()}))
    assert all(t.data_ptr() % 64 == 0 for t in module.state_dict().values())
    assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.integration
def test_a_node_process_serves_a_single_file_checkpoint_given_with_no_config(tiny: dict, tmp_path: Path):
    """``node start --model FILE.safetensors`` and nothing else, in a real node process: the
    family is advertised, the job verifies, the attested digest is the file's sha256 and the A1111
    text carries its AutoV2 hash. (Detection is the launcher's: tiny widths, see tests/family_node.py.)"""
    import hashlib

    from pointillist.attestation.png import extract_provenance
    from support import REPO, NodeHandle, run_cli

    configs = tiny["config"].parent
    shutil.copy(SHIPPED / L.CLIP_BPE_FILE, configs / L.CLIP_BPE_FILE)
    node = NodeHandle(tmp_path / "node", ["--model", str(tiny["ckpt"])],
                      launcher=[sys.executable, str(REPO / "tests" / "family_node.py")],
                      env={"POINTILLIST_TEST_CONFIGS": str(configs), "POINTILLIST_TEST_FAMILY": "sd15"})
    try:
        node.wait_ready()
        (model,) = node.status()["models"]
        sha256 = hashlib.sha256(tiny["ckpt"].read_bytes()).hexdigest()
        assert (model["name"], model["digest"], model["family"]) == ("tiny-sd15-layout", sha256, "sd15"), model

        out = tmp_path / "single.png"
        done = run_cli(["submit", "--peer", node.addr, "--model", "tiny-sd15-layout", "a harbour", "--steps", "2",
                        "--size", "64x64", "--out", str(out)], tmp_path / "requester")
        assert done.returncode == 0 and "verified" in done.stderr, done.stderr
        report = json.loads(run_cli(["verify", str(out), "--json"], tmp_path / "requester").stdout)
        assert report["ok"] and sha256 in json.dumps(report), report
        assert f"Model hash: {sha256[:10]}," in extract_provenance(out.read_bytes()).parameters
    finally:
        node.stop()
