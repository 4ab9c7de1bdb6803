"""One ``GenerationSettings`` from the job to the verifier: every setting is carried by the job,
stated by the attestation and compared by the job-binding check. A setting added to the class
but left out of any of these makes a test here fail."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pointillist.attestation import a1111_parameters, attest, embed_provenance, parse_statement, verify_image
from pointillist.protocol.dsse import Envelope, sign_envelope
from pointillist.protocol.jobs import JOB_PAYLOAD_TYPE_V2, open_job, sign_job
from pointillist.protocol.settings import (
    SETTING_NAMES,
    SETTINGS_MEMBERS,
    SETTINGS_MEMBERS_V2,
    GenerationSettings,
    json_name,
    settings_from_json,
)
from support import load_vector_generator

V = load_vector_generator()


def embed(image, attestation: Envelope, job: Envelope) -> bytes:
    """The PNG a node writes (embed_provenance's chunks, in its order). Built from the vector
    generator's pieces because attestation/png.py's embed_provenance still accepts only version 1
    job envelopes."""
    parameters = a1111_parameters(parse_statement(attestation.payload).record)
    return V._encode_png(image, V.texts(attestation, job, parameters))

#: A different valid value for each setting. Adding a setting without adding it here fails
#: ``test_every_setting_has_an_alternative``, so the binding test below cannot skip it.
ALTERNATIVES = {
    "prompt": "a burning lighthouse",
    "negative_prompt": "sharp",
    "seed": 2**64 - 1,
    "steps": 21,
    "guidance": 7.25,
    "width": 24,
    "height": 32,
    "sampler": "Euler a",
}


def signed_job(settings_json: dict | None = None) -> tuple[Envelope, object]:
    # Format version 2, which carries every setting (version 1 has no sampler).
    request = V.job_request("00112233445566778899aabbccddeeff", "a lighthouse at dusk", sampler=V.SAMPLER)
    job = sign_job(V.REQUESTER, request)
    if settings_json is None:
        return job, request
    payload = {**json.loads(job.payload), **settings_json}
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return sign_envelope(V.REQUESTER, JOB_PAYLOAD_TYPE_V2, data), request


def test_every_setting_has_an_alternative() -> None:
    assert set(ALTERNATIVES) == set(SETTING_NAMES)
    base = signed_job()[1].settings
    assert all(getattr(base, name) != value for name, value in ALTERNATIVES.items())


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_each_setting_changed_alone_in_the_job_breaks_the_binding(name: str) -> None:
    image = V.gradient()
    job, request = signed_job()
    record = V.record_for(job, request)
    changed = dataclasses.replace(request.settings, **{name: ALTERNATIVES[name]})
    other_job, _ = signed_job(changed.to_json_dict())
    assert open_job(other_job).request.settings == changed  # the job really carries the change

    # The attestation binds the other job's id and payload hash, so only the setting differs.
    record = dataclasses.replace(record, request_sha256=open_job(other_job).payload_sha256)
    png = embed(image, attest(V.NODE, record, image), other_job)
    check = verify_image(png).check("job binding")
    assert check.ok is False
    assert check.detail.endswith(f"differs from the attestation in {json_name(name)}")


@pytest.mark.parametrize("name", SETTING_NAMES)
def test_each_setting_round_trips_through_job_and_statement(name: str) -> None:
    job, request = signed_job()
    changed = dataclasses.replace(request.settings, **{name: ALTERNATIVES[name]})
    other_job, other_request = signed_job(changed.to_json_dict())
    assert open_job(other_job).request.settings == changed
    image = V.gradient().resize((changed.width, changed.height))
    record = dataclasses.replace(V.record_for(other_job, other_request), settings=changed)
    assert parse_statement(attest(V.NODE, record, image).payload).record.settings == changed


def test_json_names_are_those_of_the_job_and_the_predicate() -> None:
    job, request = signed_job()
    job_json = json.loads(job.payload)
    settings_json = request.settings.to_json_dict()
    assert set(settings_json) == {json_name(n) for n in SETTING_NAMES}
    assert {k: job_json[k] for k in settings_json} == settings_json
    predicate = json.loads(attest(V.NODE, V.record_for(job, request), V.gradient()).payload)["predicate"]
    assert {k: predicate[k] for k in settings_json} == settings_json


def test_one_json_schema_for_the_settings_in_job_and_predicate() -> None:
    assert list(SETTINGS_MEMBERS_V2) == [json_name(n) for n in SETTING_NAMES]
    assert list(SETTINGS_MEMBERS) == [json_name(n) for n in SETTING_NAMES if n != "sampler"]  # version 1
    job_json = json.loads(signed_job()[0].payload)
    assert settings_from_json(job_json) == signed_job()[1].settings


def test_settings_compare_as_values() -> None:
    a = GenerationSettings("p", "", 1, 20, 7.0, 64, 64)
    assert a == GenerationSettings("p", "", 1, 20, 7, 64, 64)  # 7 and 7.0 are the same scale
    assert a.differing(dataclasses.replace(a, seed=2, height=8)) == ["seed", "height"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.seed = 3  # type: ignore[misc]


def test_version_1_settings_have_no_sampler_and_bind_as_before() -> None:
    request = V.job_request("00112233445566778899aabbccddeeff", "a lighthouse at dusk")
    job = sign_job(V.REQUESTER, request)
    assert request.settings.sampler is None and "sampler" not in json.loads(job.payload)
    assert "sampler" not in request.settings.to_json_dict()
    image = V.gradient()
    png = embed_provenance(image, attest(V.NODE, V.record_for(job, request), image), job)
    assert verify_image(png).ok
    assert json.loads(attest(V.NODE, V.record_for(job, request), image).payload)["predicateType"].endswith("/v1")


def test_sampler_none_and_a_sampler_differ() -> None:
    a = GenerationSettings("p", "", 1, 20, 7.0, 64, 64)
    assert a.differing(dataclasses.replace(a, sampler="Euler")) == ["sampler"]
