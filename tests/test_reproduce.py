"""``pointillist verify IMAGE --reproduce --model PATH`` (issue 11, item 6): re-running an attested
generation tells an honest image (bit for bit, or within the tolerance on another thread count)
from a validly signed lie (other weights, another prompt, a pasted image: mismatch).

Real components throughout: honest images come from a real node process, cheating ones from the
embedded model in this process (perturbed weights, another prompt) or no model at all, each
signed with a real identity over the honest model digest and settings; every verdict is the real
CLI's, in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from PIL import Image

from pointillist.attestation import GenerationRecord, attest, embed_provenance, rfc3339_utc
from pointillist.attestation.trajectory import ENCODING, TrajectoryCommitment
from pointillist.cli.main import main
from pointillist.node.model_digest import compute_model_digest
from pointillist.node.reproduce import (
    MAX_ABS_DIFF,
    MAX_MEAN_ABS_DIFF,
    Condition,
    PixelDifference,
    compare_pixels,
    judge,
    run_dtype,
    run_threads,
    within_tolerance,
)
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import new_job_request, open_job, sign_job
from pointillist.protocol.settings import GenerationSettings
from support import REPO, run_cli

TINY = REPO / "node" / "models" / "tiny-sd"
NODE = Identity(bytes(range(100, 132)))
REQUESTER = Identity(bytes(range(132, 164)))
#: The honest job of these tests. On this repository's 2-core sandbox, 1 and 2 torch threads
#: give 2 RGB values one level apart for it (3 steps, seed 0), so it shows the tolerance at work.
FOX = GenerationSettings(prompt="a red fox", negative_prompt="", seed=0, steps=3, guidance=7.5, width=64, height=64)


def tiny_digest() -> str:
    return compute_model_digest(TINY)


def attested_png(image: Image.Image, settings: GenerationSettings, *, digest: str, scheduler: str = "DDIMScheduler",
                 scheduler_config: dict | None = None, threads: int = 1,
                 trajectory: TrajectoryCommitment | None = None) -> bytes:
    """An image signed by NODE as a generation of ``settings`` on the tiny model, for a job signed by
    REQUESTER, with this machine's library versions: everything a node states, whatever made the image."""
    request = new_job_request(node=NODE.peer_id, model="tiny-sd", prompt=settings.prompt, now=int(time.time()),
                              negative_prompt=settings.negative_prompt, seed=settings.seed, steps=settings.steps,
                              guidance=settings.guidance, width=settings.width, height=settings.height,
                              sampler=settings.sampler)
    job = sign_job(REQUESTER, request)
    record = GenerationRecord(
        model_name="tiny-sd", model_digest=digest, pipeline="StableDiffusionPipeline", scheduler=scheduler,
        settings=request.settings, dtype="float32", device="cpu", torch_threads=threads,
        libraries={name: version(name) for name in ("torch", "diffusers", "transformers", "pointillist")},
        job_id=request.job_id, requester=REQUESTER.peer_id, request_sha256=open_job(job).payload_sha256,
        node=NODE.peer_id, created_at=rfc3339_utc(time.time()), scheduler_config=scheduler_config,
        trajectory=trajectory,
    )
    return embed_provenance(image, attest(NODE, record, image), job)


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([((4 * x) % 256, (4 * y) % 256, (2 * (x + y)) % 256) for y in range(height) for x in range(width)])
    return image


def reproduce(images: list[Path], home: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["verify", *map(str, images), "--reproduce", "--model", str(TINY), *extra], home)


def reports(result: subprocess.CompletedProcess) -> list[dict]:
    out = json.loads(result.stdout)
    return out if isinstance(out, list) else [out]


# --- the measure, pure -----------------------------------------------------------------------------


def test_identical_images_measure_zero_and_psnr_is_infinite() -> None:
    diff = compare_pixels(gradient(), gradient())
    assert (diff.values, diff.differing, diff.max_abs, diff.mean_abs) == (64 * 64 * 3, 0, 0, 0.0)
    assert diff.identical and within_tolerance(diff) and diff.to_json_dict()["psnrDb"] is None


def test_one_level_in_one_value_is_within_tolerance_a_pasted_patch_is_not() -> None:
    a, b = gradient(), gradient()
    r, g, bl = b.getpixel((5, 5))
    b.putpixel((5, 5), (r + 1, g, bl))
    diff = compare_pixels(a, b)
    assert (diff.differing, diff.max_abs) == (1, 1) and diff.mean_abs == pytest.approx(1 / 12288)
    assert within_tolerance(diff) and 89.0 < diff.psnr_db < 89.1
    # A pixel changed a lot: its mean over a large image is tiny; the max catches it.
    big_a, big_b = gradient(512, 512), gradient(512, 512)
    big_b.putpixel((0, 0), (255, 255, 255))  # one pixel
    patch = compare_pixels(big_a, big_b)
    assert patch.mean_abs < MAX_MEAN_ABS_DIFF and patch.max_abs > MAX_ABS_DIFF and not within_tolerance(patch)


def test_beyond_the_tolerance_on_another_dtype_is_no_accusation() -> None:
    # The tolerance holds on the attested device type and dtype; another dtype alone moves pixels
    # further than some lies (docs/reproduce.md), so the verdict there is cannot-reproduce.
    far = PixelDifference(values=12288, differing=7000, max_abs=5, mean_abs=0.72, psnr_db=48.0)
    threads = Condition("threads", 1, 2, False)
    dtype = Condition("dtype", "float16", "float32", False)
    assert judge(far, (threads,)).outcome == "mismatch"
    other = judge(far, (Condition("device", "cuda", "cpu", False), dtype, threads))
    assert other.outcome == "cannot-reproduce" and other.ok is None
    assert other.detail.startswith("cannot reproduce: ran on cpu/float32, the image was attested on cuda/float16")
    assert other.to_json_dict()["metrics"]["meanAbsDiff"] == 0.72 and other.to_json_dict()["differed"] == [
        "device", "dtype", "threads"]
    near = PixelDifference(values=12288, differing=1, max_abs=1, mean_abs=1 / 12288, psnr_db=89.0)
    assert judge(near, (dtype,)).outcome == "within-tolerance"


def test_dtype_and_threads_follow_the_attestation_where_this_machine_can() -> None:
    assert run_dtype("float16", "cpu") == "float32" and run_dtype("bfloat16", "cpu") == "bfloat16"
    assert run_dtype("float16", "cuda:0") == "float16" and run_dtype("float8", "cuda") == "float32"
    assert run_threads(1, cores=2) == 1 and run_threads(2, cores=2) == 2 and run_threads(16, cores=2) == 2


# --- the command's arguments and the answers that need no torch ------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--model", str(TINY)], "--model is the model to re-run with and needs --reproduce"),
    (["--reproduce"], "--reproduce needs --model PATH"),
    (["--threads", "2"], "--threads only apply with --reproduce --model PATH"),
    (["--reproduce", "--model", "/nonexistent/model"], "no such file or folder"),
    (["--reproduce", "--model", str(TINY), "--device", "gpu0"], "--device takes cpu, cuda, cuda:N or mps"),
])
def test_reproduce_options_misused_are_one_line_usage_errors(argv, message, capsys) -> None:
    assert main(["verify", str(REPO / "docs" / "attestation-vectors" / "valid.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_another_model_cannot_reproduce_in_one_line_without_loading_torch(tmp_path) -> None:
    other = tmp_path / "other-tiny"
    shutil.copytree(TINY, other)
    config = other / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    image = tmp_path / "fox.png"
    image.write_bytes(attested_png(gradient(), FOX, digest=tiny_digest()))
    code = (
        "import sys; from pointillist.cli.main import main\n"
        f"code = main(['verify', {str(image)!r}, '--reproduce', '--model', {str(other)!r}])\n"
        "print('exit', code, sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    env = {**os.environ, "POINTILLIST_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[-1] == "exit 3 []", result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in lines if "reproduce  " in line]
    assert line.startswith("----  reproduce    cannot reproduce: ")
    assert (f"cannot reproduce: the model at {other} has digest {compute_model_digest(other)}, "
            f"the image was attested with {tiny_digest()}") in line
    assert lines[-2] == "verified, not reproduced here (cannot reproduce)"


# --- re-running generations (torch; a real node process) -------------------------------------------


@pytest.fixture(scope="module")
def honest(shared_node, tmp_path_factory) -> dict[str, Path]:
    """Images made by a real node (1 torch thread): the FOX job, version 1 and two version 2 samplers."""
    folder = tmp_path_factory.mktemp("honest")
    out = {}
    for name, sampler in (("v1", None), ("euler-a", "Euler a"), ("dpmpp-2m-karras", "DPM++ 2M Karras")):
        path = folder / f"{name}.png"
        args = ["submit", FOX.prompt, "--peer", shared_node.addr, "--steps", str(FOX.steps), "--size", "64x64",
                "--seed", str(FOX.seed), "--guidance", str(FOX.guidance), "--out", str(path), "--quiet"]
        submitted = run_cli(args + (["--sampler", sampler] if sampler else []), folder / "requester")
        assert submitted.returncode == 0, submitted.stderr + shared_node.log()
        out[name] = path
    return out


@pytest.fixture(scope="module")
def cheats(tmp_path_factory) -> dict[str, Path]:
    """The FOX job's attestation, honest digest and settings, over pixels made otherwise: the UNet's
    weights times (1 + 0.1 % Gaussian noise), or the prompt "a red hen". And "v3": the honest
    image with a version 3 record (no sampler, the model's own scheduler config, a trajectory)."""
    import dataclasses

    torch = pytest.importorskip("torch")
    from pointillist.node import samplers
    from pointillist.node.loading import load_model

    folder = tmp_path_factory.mktemp("cheats")
    digest = tiny_digest()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node: the cheat is in the weights or prompt, not the threads
    try:
        model = load_model(TINY, device="cpu", dtype="float32")
        images = {"v3": model.generate(FOX).image,
                  "other-prompt": model.generate(dataclasses.replace(FOX, prompt="a red hen")).image}
        own_config = samplers.scheduler_config(model.pipe.scheduler)
        noise = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for param in model.pipe.unet.parameters():
                param.mul_(1 + 0.001 * torch.randn(param.shape, generator=noise))
        images["noisy-weights"] = model.generate(FOX).image
    finally:
        torch.set_num_threads(before)
    out = {}
    # The re-run compares pixels; it does not recompute the trajectory, so any valid root will do.
    v3 = {"scheduler_config": own_config,
          "trajectory": TrajectoryCommitment(ENCODING, FOX.steps, FOX.steps + 1, "ab" * 32)}
    for name, image in images.items():
        out[name] = folder / f"{name}.png"
        out[name].write_bytes(attested_png(image, FOX, digest=digest, **(v3 if name == "v3" else {})))
    return out


@pytest.mark.integration
def test_a_node_image_reproduces_bit_for_bit(honest, tmp_path) -> None:
    result = reproduce([honest["v1"]], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok    reproduce    bit-for-bit: identical RGB8 pixels (as attested)") for line in lines)
    assert lines[-1] == "verified, reproduced bit for bit"


@pytest.mark.integration
def test_version_2_and_3_images_reproduce_bit_for_bit_with_the_attested_scheduler(honest, cheats, tmp_path) -> None:
    # Three images in one process: the model is loaded once for all.
    result = reproduce([honest["euler-a"], honest["dpmpp-2m-karras"], cheats["v3"]], tmp_path, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = (("Euler a", "EulerAncestralDiscreteScheduler", "'Euler a'"),
                ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", "'DPM++ 2M Karras'"),
                (None, "DDIMScheduler", "the model's own"))
    for report, (sampler, scheduler, label) in zip(reports(result), expected, strict=True):
        assert report["statement"]["predicate"]["sampler"] == sampler
        rep = report["reproduce"]
        assert rep["outcome"] == "bit-for-bit" and rep["metrics"]["valuesDiffering"] == 0, rep
        assert rep["conditions"]["scheduler"] == {
            "attested": f"{scheduler} for {label}", "here": f"{scheduler} for {label}", "same": True}
        assert rep["differed"] == [] and {"device", "dtype", "threads", "torch", "scheduler"} <= set(rep["held"])
    assert reports(result)[2]["statement"]["predicateType"].endswith("/generation/v3")


@pytest.mark.integration
def test_another_thread_count_is_within_tolerance_not_bit_for_bit(honest, tmp_path) -> None:
    result = reproduce([honest["v1"]], tmp_path, "--threads", "2", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [report] = reports(result)
    rep = report["reproduce"]
    assert rep["conditions"]["threads"] == {"attested": 1, "here": 2, "same": False} and rep["differed"] == ["threads"]
    if rep["outcome"] == "bit-for-bit":
        pytest.skip("1 and 2 torch threads give identical pixels for this job on this CPU")
    assert rep["outcome"] == "within-tolerance", rep
    metrics = rep["metrics"]
    assert 0 < metrics["valuesDiffering"] and metrics["maxAbsDiff"] <= rep["threshold"]["maxAbsDiff"]
    assert 0 < metrics["meanAbsDiff"] <= rep["threshold"]["meanAbsDiff"]
    assert "differs from the attested run in threads (attested 1, here 2)" in rep["detail"]


@pytest.mark.integration
def test_a_signed_lie_verifies_but_does_not_reproduce(cheats, tmp_path) -> None:
    files = [cheats["noisy-weights"], cheats["other-prompt"]]
    plain = run_cli(["verify", *map(str, files)], tmp_path)
    # The signature proves who claims these images, not that the claim is true: both verify.
    assert plain.returncode == 0 and plain.stdout.splitlines().count("verified") == 2, plain.stdout
    result = reproduce(files, tmp_path, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    for report in reports(result):
        assert report["ok"] is True  # every check of the attestation passes
        rep = report["reproduce"]
        assert rep["outcome"] == "mismatch" and rep["differed"] == [], rep
        assert rep["metrics"]["meanAbsDiff"] > rep["threshold"]["meanAbsDiff"] == MAX_MEAN_ABS_DIFF
    text = reproduce([cheats["noisy-weights"]], tmp_path)
    assert text.returncode == 1
    assert "FAIL  reproduce    mismatch: " in text.stdout and "beyond the tolerance: mean <= " in text.stdout
    assert text.stdout.splitlines()[-1] == "verified, NOT REPRODUCED: the attested generation gives other pixels"


@pytest.mark.integration
def test_a_pasted_image_mismatches_and_an_unknown_scheduler_cannot_reproduce(tmp_path) -> None:
    digest = tiny_digest()
    pasted, other_scheduler = tmp_path / "pasted.png", tmp_path / "pndm.png"
    pasted.write_bytes(attested_png(gradient(), FOX, digest=digest))
    other_scheduler.write_bytes(attested_png(gradient(), FOX, digest=digest, scheduler="PNDMScheduler"))
    result = reproduce([pasted, other_scheduler], tmp_path / "home", "--json")
    assert result.returncode == 1, result.stdout + result.stderr  # a mismatch outranks cannot-reproduce
    first, second = reports(result)
    assert first["reproduce"]["outcome"] == "mismatch" and first["reproduce"]["metrics"]["maxAbsDiff"] > 100
    assert second["reproduce"] == {**second["reproduce"], "outcome": "cannot-reproduce", "metrics": None}
    assert second["reproduce"]["detail"] == (
        "cannot reproduce: the image was attested with the scheduler PNDMScheduler, this model's own is DDIMScheduler")
    alone = reproduce([other_scheduler], tmp_path / "home")
    assert alone.returncode == 3 and "Traceback" not in alone.stderr, alone.stdout + alone.stderr
