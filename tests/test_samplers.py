"""Samplers (issue 8, item 3): each A1111 sampler name runs its diffusers scheduler, and the
scheduler class and config the attestation records reproduce the image bit for bit on CPU.

For every sampler: generate through ``LoadedModel.generate``, sign a version 2 statement of the
result, parse it back from the signed bytes, rebuild the scheduler from nothing but the recorded
``scheduler`` class and ``schedulerConfig``, run a fresh pipeline (a direct diffusers call) with
it and compare pixels. The global torch RNG is reseeded differently before each run, so a
scheduler drawing noise from it instead of the job's generator would fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from pointillist.attestation import attest, parse_statement  # noqa: E402
from pointillist.attestation.a1111 import a1111_parameters  # noqa: E402
from pointillist.node import samplers as S  # noqa: E402
from pointillist.node.loading import embedded_model_path, load_model  # noqa: E402
from pointillist.node.pipeline import GenerationSettings, LoadedModel  # noqa: E402
from pointillist.protocol.errors import ErrorCode, JobRejected, UsageError  # noqa: E402
from pointillist.protocol.jobs import new_job_request, open_job, sign_job  # noqa: E402
from pointillist.protocol.settings import SAMPLERS, sampler_problem  # noqa: E402
from support import load_vector_generator  # noqa: E402

V = load_vector_generator()

BASE = GenerationSettings(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=2**64 - 7, steps=3,
                          guidance=7.5, width=32, height=32)


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model(embedded_model_path(), device="cpu")
    finally:
        torch.set_num_threads(before)


def _direct(model: LoadedModel, scheduler, settings: GenerationSettings) -> bytes:
    """A fresh pipeline (the model's components, this scheduler) called as diffusers documents."""
    pipe = type(model.pipe)(**{**model.pipe.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        out = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt,
                   num_inference_steps=settings.steps, guidance_scale=settings.guidance, width=settings.width,
                   height=settings.height, generator=torch.Generator("cpu").manual_seed(settings.seed),
                   output_type="pil")
    return out.images[0].convert("RGB").tobytes()


def _attested(settings: GenerationSettings, result) -> object:
    """The statement a node signs for this result, parsed back from the signed bytes."""
    request = dataclasses.replace(V.job_request("00112233445566778899aabbccddeeff", settings.prompt),
                                  negative_prompt=settings.negative_prompt, seed=str(settings.seed),
                                  steps=settings.steps, guidance=settings.guidance, width=settings.width,
                                  height=settings.height, v=2, sampler=settings.sampler)
    job = sign_job(V.REQUESTER, request)
    record = dataclasses.replace(V.record_for(job, request), scheduler=result.scheduler,
                                 scheduler_config=result.scheduler_config)
    return parse_statement(attest(V.NODE, record, result.image).payload)


@pytest.mark.parametrize("name", SAMPLERS)
def test_attested_scheduler_config_reproduces_the_image_bit_for_bit(model: LoadedModel, name: str) -> None:
    if S.missing_packages(name):
        pytest.skip(f"{name} needs {', '.join(S.missing_packages(name))}, not installed (the node refuses it)")
    settings = dataclasses.replace(BASE, sampler=name)
    torch.manual_seed(1)
    result = model.generate(settings)
    assert result.scheduler == S.TABLE[name].scheduler
    assert len(set(result.image.getdata())) > 100, "a degenerate image (NaN latents?)"
    assert type(model.pipe.scheduler).__name__ == "DDIMScheduler"  # the model's own, restored

    statement = _attested(settings, result)
    record = statement.record
    assert record.settings.sampler == name and record.scheduler == result.scheduler
    for key, value in S.TABLE[name].overrides.items():
        assert record.scheduler_config[key] == value, key
    assert record.scheduler_config["timestep_spacing"] == "leading"  # the model's, carried over

    torch.manual_seed(2)
    rebuilt = S.rebuild_scheduler(record.scheduler, record.scheduler_config)
    pixels = _direct(model, rebuilt, record.settings)
    assert hashlib.sha256(pixels).hexdigest() == statement.subject.sha256
    assert pixels == result.image.tobytes()
    assert f"Sampler: {name}," in a1111_parameters(record)


def test_samplers_change_the_image(model: LoadedModel) -> None:
    images = {name: model.generate(dataclasses.replace(BASE, sampler=name)).image.tobytes()
              for name in ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras")}
    assert len(set(images.values())) == len(images)
    # "DDIM" from the model's own DDIM config is the model's own scheduler: the same image as v1.
    assert model.generate(dataclasses.replace(BASE, sampler="DDIM")).image.tobytes() == \
        model.generate(BASE).image.tobytes()


def test_version_1_settings_run_the_models_own_scheduler(model: LoadedModel) -> None:
    result = model.generate(BASE)
    assert result.scheduler == "DDIMScheduler"
    assert result.scheduler_config["steps_offset"] == 1 and "_class_name" not in result.scheduler_config


def test_unknown_or_unavailable_sampler_is_refused_before_any_work(model: LoadedModel) -> None:
    with pytest.raises(UsageError, match="unknown sampler 'Euler A'; supported: Euler, Euler a"):
        model.generate(dataclasses.replace(BASE, sampler="Euler A"))
    assert type(model.pipe.scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(JobRejected) as info:
        S.check_sampler("k_euler")
    assert info.value.code == ErrorCode.INVALID_PARAMS and "\n" not in info.value.message
    S.check_sampler(None)  # version 1: the model's own scheduler
    S.check_sampler("Euler a")


def test_sampler_needing_a_missing_package_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    problem = S.sampler_refusal("DPM++ SDE Karras")
    assert problem is not None and "needs the Python package torchsde" in problem
    assert "DPM++ SDE Karras" not in S.supported() and "Euler" in S.supported()


def test_table_matches_the_protocol_list_and_diffusers() -> None:
    import diffusers

    assert tuple(S.TABLE) == SAMPLERS
    for sampler in S.TABLE.values():
        assert sampler_problem(sampler.name) is None
        assert isinstance(getattr(diffusers, sampler.scheduler), type)
    assert "samplers are: Euler, Euler a" in sampler_problem("euler")


def test_infinities_in_a_config_are_recorded_as_strings(model: LoadedModel) -> None:
    scheduler = S.build_scheduler(model.pipe.scheduler.config, "DPM++ 2M", seed=1)
    config = S.scheduler_config(scheduler)
    assert config["lambda_min_clipped"] == "-Infinity"
    assert S.rebuild_scheduler("DPMSolverMultistepScheduler", config).config.lambda_min_clipped == float("-inf")
    with pytest.raises(UsageError, match="no diffusers scheduler"):
        S.rebuild_scheduler("StableDiffusionPipeline", config)


def test_a_v2_job_round_trips_its_sampler() -> None:
    request = new_job_request(node=V.NODE.peer_id, model="tiny-sd", prompt="p", now=V.ISSUED_AT, seed=1, steps=2,
                              guidance=7.5, width=64, height=64, sampler="DPM++ 2M Karras")
    job = open_job(sign_job(V.REQUESTER, request))
    assert job.request.v == 2 and job.request.settings.sampler == "DPM++ 2M Karras"
    assert job.envelope.payload_type == "application/vnd.pointillist.job.v2+json"


def test_submit_refuses_an_unknown_sampler_before_sending(capsys: pytest.CaptureFixture) -> None:
    from pointillist.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["submit", "--sampler", "euler", "--peer", "/ip4/127.0.0.1/tcp/1/p2p/x", "a fox"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown sampler 'euler'; samplers are: Euler, Euler a" in err


def test_job_spec_refuses_an_unknown_sampler() -> None:
    from pointillist.requester import JobSpec

    spec = JobSpec("tiny-sd", dataclasses.replace(BASE, sampler="Euler A", width=64, height=64))
    with pytest.raises(UsageError, match="unknown sampler 'Euler A'"):
        spec.request_for(V.NODE.peer_id, V.ISSUED_AT)
    good = JobSpec("tiny-sd", dataclasses.replace(BASE, sampler="UniPC", width=64, height=64))
    assert good.request_for(V.NODE.peer_id, V.ISSUED_AT).v == 2
