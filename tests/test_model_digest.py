"""pointillist-model-v1 digests (node/model_digest.py, spec in docs/model-digest.md)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pointillist.node import model_digest as md
from pointillist.node.model_digest import a1111_model_hash, compute_model_digest, model_digest
from pointillist.protocol.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "node" / "models" / "tiny-sd"
RECORD = REPO / "node" / "models" / "tiny-sd.versions.json"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A private copy of the embedded tiny model."""
    dst = tmp_path / "tiny-sd"
    shutil.copytree(EMBEDDED, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")


def test_digest_shape_and_recorded_value():
    digest = compute_model_digest(EMBEDDED)
    assert len(digest) == 64 and digest == digest.lower() and int(digest, 16) >= 0
    assert digest == json.loads(RECORD.read_text())["digest"]


def test_known_answer_follows_the_spec(tmp_path: Path):
    """An independent transcription of docs/model-digest.md on a hand-made folder."""
    root = tmp_path / "m"
    (root / "unet").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    weights = bytes(range(256)) * 3
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (root / "unet" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.1", "b": [1, {"_x": 2, "é": 1.5}],'
        ' "a": 1e-05, "transformers_version": "9"}',
        encoding="utf-8",
    )
    (root / "tokenizer" / "merges.txt").write_bytes(b"#version: 0.2\n")
    (root / "README.md").write_text("not counted")

    canonical = '{"_class_name":"UNet2DConditionModel","a":1e-05,"b":[1,{"é":1.5}]}'.encode()
    lines = sorted(
        [
            (hashlib.sha256(canonical).hexdigest(), "unet/config.json"),
            (hashlib.sha256(weights).hexdigest(), "unet/diffusion_pytorch_model.safetensors"),
            (hashlib.sha256(b"#version: 0.2\n").hexdigest(), "tokenizer/merges.txt"),
        ],
        key=lambda item: item[1].encode(),
    )
    expected = hashlib.sha256("".join(f"{h}  {p}\n" for h, p in lines).encode()).hexdigest()
    assert compute_model_digest(root) == expected


def test_metadata_only_edits_keep_the_digest(model: Path):
    before = compute_model_digest(model)
    _edit_json(model / "model_index.json", _diffusers_version="9.9.9", _name_or_path="/somewhere/else")
    _edit_json(model / "unet" / "config.json", _diffusers_version="0.0.1", _use_default_values=["x"])
    _edit_json(model / "text_encoder" / "config.json", transformers_version="4.0.0", _name_or_path="x")
    # Re-indented, re-ordered keys: same parsed object.
    sched = model / "scheduler" / "scheduler_config.json"
    data = json.loads(sched.read_text())
    sched.write_text(json.dumps(dict(reversed(list(data.items())))), encoding="utf-8")
    assert compute_model_digest(model) == before


def test_real_resave_of_components_keeps_the_digest(model: Path, tmp_path: Path):
    """Re-saving weights and configs through diffusers/transformers changes bytes, not the digest."""
    pytest.importorskip("torch")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    before = compute_model_digest(model)
    out = tmp_path / "resaved"
    shutil.copytree(model, out)
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        component = cls.from_pretrained(model / sub, local_files_only=True)
        shutil.rmtree(out / sub)
        component.save_pretrained(out / sub, safe_serialization=True)
    DDIMScheduler.from_pretrained(model / "scheduler", local_files_only=True).save_pretrained(out / "scheduler")
    # diffusers records where a config came from; a re-save elsewhere thus changes the bytes.
    _edit_json(out / "model_index.json", _name_or_path=str(model))
    changed = [
        p.relative_to(out).as_posix()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.read_bytes() != (model / p.relative_to(out)).read_bytes()
    ]
    assert "unet/config.json" in changed  # diffusers adds "_name_or_path" on re-save
    assert compute_model_digest(out) == before


def test_weight_byte_change_changes_the_digest(model: Path):
    before = compute_model_digest(model)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # last byte of the last tensor
    weights.write_bytes(bytes(data))
    assert compute_model_digest(model) != before


@pytest.mark.parametrize(
    ("rel", "changes"),
    [
        ("scheduler/scheduler_config.json", {"beta_end": 0.0121}),
        ("scheduler/scheduler_config.json", {"_class_name": "PNDMScheduler"}),
        ("unet/config.json", {"cross_attention_dim": 64}),
        ("tokenizer/tokenizer_config.json", {"model_max_length": 76}),
    ],
)
def test_config_value_change_changes_the_digest(model: Path, rel: str, changes: dict):
    before = compute_model_digest(model)
    _edit_json(model / rel, **changes)
    assert compute_model_digest(model) != before


def test_rename_changes_the_digest(model: Path):
    before = compute_model_digest(model)
    (model / "vae" / "diffusion_pytorch_model.safetensors").rename(model / "vae" / "model.safetensors")
    assert compute_model_digest(model) != before


def test_hidden_and_uncounted_files_are_ignored(model: Path):
    before = compute_model_digest(model)
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "download.json").write_text("{}")
    (model / "unet" / ".hidden.safetensors").write_bytes(b"x")
    (model / ".DS_Store").write_bytes(b"\0")
    (model / "README.md").write_text("# a model card is not the model\n")
    (model / "sample.png").write_bytes(b"\x89PNG")
    assert compute_model_digest(model) == before
    (model / "notes.txt").write_text("counted")
    assert compute_model_digest(model) != before


def test_single_file_is_plain_sha256(tmp_path: Path):
    payload = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB chunks
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert compute_model_digest(ckpt) == expected
    assert model_digest(ckpt, cache_dir=tmp_path / "cache") == expected
    assert a1111_model_hash(expected) == expected[:10]

    # A symlink named like a checkpoint (Hugging Face cache blobs have no suffix) hashes its target.
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    blob.write_bytes(payload)
    link = tmp_path / "linked.ckpt"
    link.symlink_to(blob)
    assert model_digest(link, cache_dir=tmp_path / "cache") == expected


def test_small_chunks_give_the_same_digest(model: Path, monkeypatch: pytest.MonkeyPatch):
    before = compute_model_digest(model)
    monkeypatch.setattr(md, "CHUNK_SIZE", 4097)
    assert compute_model_digest(model) == before


def test_cache_hit_and_invalidation(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    calls = []
    real = md._digest_entries
    monkeypatch.setattr(md, "_digest_entries", lambda *a: calls.append(1) or real(*a))

    first = model_digest(model, cache_dir=cache)
    assert first == compute_model_digest(model) and len(calls) == 2  # (compute_model_digest counts too)
    assert model_digest(model, cache_dir=cache) == first and len(calls) == 2  # served from cache
    assert (cache / "model-digests.json").is_file()
    assert [p.name for p in cache.iterdir()] == ["model-digests.json"]  # no temp files left behind

    # Same size, new content and a new mtime: recomputed.
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = model_digest(model, cache_dir=cache)
    assert second != first and len(calls) == 3

    # A size change (same mtime) is detected too.
    st = weights.stat()
    weights.write_bytes(bytes(data) + b"\0")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_digest(model, cache_dir=cache) not in (first, second) and len(calls) == 4

    # An added counted file invalidates; an added hidden file does not.
    (model / ".junk.json").write_text("{}")
    model_digest(model, cache_dir=cache)
    assert len(calls) == 4
    (model / "extra.txt").write_text("x")
    model_digest(model, cache_dir=cache)
    assert len(calls) == 5


def test_corrupt_cache_is_ignored_and_replaced(model: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    expected = compute_model_digest(model)
    for garbage in (b"{not json", b"\xff\xfe", b"[]", b'{"algorithm": "pointillist-model-v1", "entries": []}'):
        (cache / "model-digests.json").write_bytes(garbage)
        assert model_digest(model, cache_dir=cache) == expected
    # A wrong cached value for the right fingerprint is not trusted when malformed.
    data = json.loads((cache / "model-digests.json").read_text())
    assert data["algorithm"] == "pointillist-model-v1"
    key = str(model.resolve())
    assert data["entries"][key]["digest"] == expected
    data["entries"][key]["digest"] = "short"
    (cache / "model-digests.json").write_text(json.dumps(data))
    assert model_digest(model, cache_dir=cache) == expected


def test_unwritable_cache_does_not_fail(model: Path, tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    assert model_digest(model, cache_dir=blocker) == compute_model_digest(model)


def test_default_cache_dir_uses_pointillist_home(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POINTILLIST_HOME", str(tmp_path / "home"))
    assert md.default_cache_dir() == tmp_path / "home" / "cache"
    model_digest(model)
    assert (tmp_path / "home" / "cache" / "model-digests.json").is_file()


@pytest.mark.parametrize("kind", ["missing", "empty", "uncounted", "wrong-suffix", "missing-cached"])
def test_bad_paths_raise_model_error(tmp_path: Path, kind: str):
    target = tmp_path / "x"
    if kind == "empty":
        target.mkdir()
    elif kind == "uncounted":
        target.mkdir()
        (target / "README.md").write_text("hi")
        (target / ".hidden.json").write_text("{}")
    elif kind == "wrong-suffix":
        target = tmp_path / "x.png"
        target.write_bytes(b"\x89PNG")
    with pytest.raises(ModelError) as info:
        if kind == "missing-cached":
            model_digest(target, cache_dir=tmp_path / "cache")
        else:
            compute_model_digest(target)
    assert "\n" not in str(info.value) and str(info.value)


def test_import_is_light():
    """model_digest must not drag in torch/diffusers, nor the generation runner."""
    code = (
        "import sys, pointillist.node, pointillist.node.model_digest\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'pointillist.node.pipeline') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
