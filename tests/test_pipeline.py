"""The generation runner (node/pipeline.py) on the embedded tiny model, CPU, offline."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from pointillist.node import loading as L  # noqa: E402
from pointillist.node import pipeline as P  # noqa: E402
from pointillist.node.model_digest import compute_model_digest  # noqa: E402
from pointillist.protocol.errors import ModelError, UsageError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "node" / "models" / "build_tiny_model.py"
RECORD = REPO / "node" / "models" / "tiny-sd.versions.json"

PARAMS = P.GenerationSettings(
    prompt="a lighthouse at dusk, pointillism",
    negative_prompt="blurry",
    seed=1234,
    steps=4,
    guidance=7.5,
    width=64,
    height=64,
)


@pytest.fixture(scope="module")
def model() -> P.LoadedModel:
    return L.load_model(L.embedded_model_path(), device="cpu")


def _pixels(image) -> bytes:
    assert image.mode == "RGB"
    return image.tobytes()


def test_embedded_model_is_packaged():
    path = L.embedded_model_path()
    assert path == REPO / "node" / "models" / "tiny-sd"
    assert (path / "model_index.json").is_file()
    assert not any(part.startswith(".") for p in path.rglob("*") for part in p.relative_to(path).parts)


def test_loads_offline_without_any_network(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = L.load_model(L.embedded_model_path(), device="cpu", name="default")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert loaded.name == "default" and loaded.path == L.embedded_model_path()
    assert loaded.digest == compute_model_digest(L.embedded_model_path())
    assert loaded.digest == json.loads(RECORD.read_text())["digest"]
    assert (loaded.device, loaded.dtype) == ("cpu", "float32")


def test_result_describes_the_run(model: P.LoadedModel):
    assert model.name == "tiny-sd"
    result = model.generate(PARAMS)
    assert result.image.mode == "RGB" and result.image.size == (64, 64)
    assert result.pipeline == "StableDiffusionPipeline"
    assert result.scheduler == "DDIMScheduler"
    assert (result.dtype, result.device) == ("float32", "cpu")
    assert result.torch_threads == torch.get_num_threads()
    assert set(result.libraries) == {"torch", "diffusers", "transformers"}
    assert result.libraries["torch"] == torch.__version__


def test_generation_is_deterministic_in_process(model: P.LoadedModel):
    first = _pixels(model.generate(PARAMS).image)
    assert _pixels(model.generate(PARAMS).image) == first
    other_seed = P.GenerationSettings(**{**PARAMS.__dict__, "seed": PARAMS.seed + 1})
    assert _pixels(model.generate(other_seed).image) != first
    other_prompt = P.GenerationSettings(**{**PARAMS.__dict__, "prompt": "a different prompt"})
    assert _pixels(model.generate(other_prompt).image) != first


def test_equals_a_direct_diffusers_call_bit_for_bit(model: P.LoadedModel, one_thread: None):
    from diffusers import StableDiffusionPipeline

    ours = model.generate(PARAMS)

    pipe = StableDiffusionPipeline.from_pretrained(
        L.embedded_model_path(),
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        low_cpu_mem_usage=False,
    )
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(
        prompt=PARAMS.prompt,
        negative_prompt=PARAMS.negative_prompt,
        num_inference_steps=PARAMS.steps,
        guidance_scale=PARAMS.guidance,
        width=PARAMS.width,
        height=PARAMS.height,
        generator=torch.Generator("cpu").manual_seed(PARAMS.seed),
        output_type="pil",
    ).images[0]
    assert ours.torch_threads == 1
    assert _pixels(ours.image) == _pixels(direct.convert("RGB"))


def test_on_step_reports_each_step(model: P.LoadedModel):
    seen: list[tuple[int, int]] = []
    model.generate(PARAMS, on_step=lambda k, n: seen.append((k, n)))
    assert seen == [(k, PARAMS.steps) for k in range(1, PARAMS.steps + 1)]


def test_on_step_exception_aborts_and_propagates(model: P.LoadedModel):
    class Cancelled(Exception):
        pass

    def cancel(k: int, n: int) -> None:
        if k == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        model.generate(PARAMS, on_step=cancel)
    assert model.generate(PARAMS).image.size == (64, 64)  # still usable


def test_other_sizes(model: P.LoadedModel):
    for width, height in ((256, 256), (72, 48)):
        params = P.GenerationSettings(**{**PARAMS.__dict__, "width": width, "height": height, "steps": 2})
        assert model.generate(params).image.size == (width, height)


@pytest.mark.parametrize(
    "change",
    [
        {"width": 65},
        {"height": 60},
        {"width": 0},
        {"height": -8},
        {"width": 64.0},
        {"steps": 0},
        {"seed": -1},
        {"seed": 2**64},
        {"guidance": float("nan")},
    ],
)
def test_bad_parameters_raise_usage_error(model: P.LoadedModel, change: dict):
    with pytest.raises(UsageError):
        model.generate(P.GenerationSettings(**{**PARAMS.__dict__, **change}))


def test_single_file_without_config_is_detected_or_refused(tmp_path: Path):
    """With no config a .safetensors is detected from its header (tests/test_single_file.py,
    tests/test_checkpoint_family.py); a .ckpt cannot be and needs one."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="model-config"):
        L.load_model(ckpt, device="cpu")
    unreadable = tmp_path / "model.safetensors"
    unreadable.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a safetensors file") as info:
        L.load_model(unreadable, device="cpu")
    assert "\n" not in str(info.value)


def test_unloadable_single_file_is_a_one_line_model_error(tmp_path: Path):
    ckpt = tmp_path / "broken.safetensors"
    ckpt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not-json")
    with pytest.raises(ModelError) as info:
        L.load_model(ckpt, device="cpu", config=L.embedded_model_path())
    assert "\n" not in str(info.value) and "broken.safetensors" in str(info.value)


def test_bad_model_paths(tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        L.load_model(tmp_path / "nope", device="cpu")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="model_index.json"):
        L.load_model(tmp_path / "folder", device="cpu")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ModelError):
        L.load_model(tmp_path / "image.png", device="cpu")


def test_bad_device_or_dtype():
    with pytest.raises(UsageError):
        L.load_model(L.embedded_model_path(), device="cpu", dtype="float64")
    with pytest.raises(UsageError):
        L.load_model(L.embedded_model_path(), device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            L.load_model(L.embedded_model_path(), device="cuda")


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_tiny_model", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu and 2.13.0+cu128 build the same CPU weights


def test_committed_model_equals_a_fresh_rebuild(tmp_path: Path):
    import diffusers
    import transformers

    recorded = json.loads(RECORD.read_text())
    installed = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
    differing = {k: (recorded[k], v) for k, v in installed.items() if _public(recorded[k]) != _public(v)}
    if differing:
        pytest.skip(
            "embedded model was built with other library versions (recorded, installed): "
            + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in sorted(differing.items()))
        )

    build = _load_build_script()
    out = tmp_path / "tiny-sd"
    build.build(out, seed=recorded["seed"])
    committed = L.embedded_model_path()
    assert compute_model_digest(out) == compute_model_digest(committed) == recorded["digest"]
    rebuilt = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    original = sorted(p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file())
    assert rebuilt == original
    for rel in rebuilt:
        assert (out / rel).read_bytes() == (committed / rel).read_bytes(), rel
