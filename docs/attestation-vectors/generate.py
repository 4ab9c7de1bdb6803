"""Regenerate the attestation test vectors in this folder, byte for byte.

    .venv/bin/python docs/attestation-vectors/generate.py [OUT_DIR]

Everything is fixed: the Ed25519 seeds, the times, the 16x16 gradient image; Ed25519 signatures
are deterministic, and so is Pillow's PNG writer for a given zlib. ``index.json`` lists every
vector with its expected outcome; tests/test_attestation_vectors.py checks both the outcomes and
that this script reproduces the committed files. No torch: the "generation" is a gradient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path

from PIL import Image

from pointillist.attestation import (
    ATTESTATION_KEYWORD,
    ATTESTATION_PAYLOAD_TYPE,
    JOB_KEYWORD,
    PARAMETERS_KEYWORD,
    GenerationRecord,
    a1111_parameters,
    attest,
    embed_provenance,
)
from pointillist.attestation import trajectory as T
from pointillist.attestation.png import _encode_png  # to write the broken files embed refuses to
from pointillist.protocol.dsse import Envelope, pae, sign_envelope
from pointillist.protocol.identity import Identity
from pointillist.protocol.jobs import JobRequest, sign_job

NODE = Identity(bytes(range(0, 32)))
REQUESTER = Identity(bytes(range(32, 64)))
OTHER = Identity(bytes(range(64, 96)))  # neither: the forger
AUDITOR = Identity(bytes(range(96, 128)))  # the node that signs the audit verdict vectors

ISSUED_AT = 1795341600  # 2026-11-22T10:00:00Z
CREATED_AT = "2026-11-22T10:00:05Z"
MODEL_NAME = "tiny-sd-vectors"
MODEL_DIGEST = hashlib.sha256(b"pointillist attestation test vector model").hexdigest()
LIBRARIES = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0", "pointillist": "0.1.0"}
#: Format version 2: the sampler of the v2 vectors and the scheduler config a node running it on
#: the embedded model records (node/samplers.py: DDIM's config, DPM++ 2M Karras overrides).
SAMPLER = "DPM++ 2M Karras"
SAMPLER_SCHEDULER = "DPMSolverMultistepScheduler"
SAMPLER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": True,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
    "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": "-Infinity", "variance_type": None,
    "timestep_spacing": "leading", "steps_offset": 1, "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False, "time_shift_type": "exponential", "clip_sample": False,
    "set_alpha_to_one": False, "clip_sample_range": 1.0,
}


#: Format version 3 (issue 11): the embedded model's own scheduler and its config as a node records
#: it (``"sampler": null`` in the predicate), and a small synthetic trajectory (TRAJECTORY_STEPS
#: DDIM steps of 1x4x2x2 float32 latents) whose leaves, root and proofs are in trajectory-merkle.json.
OWN_SCHEDULER = "DDIMScheduler"
OWN_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading", "rescale_betas_zero_snr": False,
}
TRAJECTORY_STEPS = 5


def gradient() -> Image.Image:
    """16x16 RGB, pixel (x, y) = (17x, 17y, 8(x+y)): 256 distinct colours."""
    image = Image.new("RGB", (16, 16))
    image.putdata([(17 * x, 17 * y, 8 * (x + y)) for y in range(16) for x in range(16)])
    return image


def job_request(job_id: str, prompt: str, negative: str = "blurry", seed: str = "1234",
                node: Identity = NODE, model: str = MODEL_NAME, guidance: float = 7.5,
                sampler: str | None = None, steps: int = 20) -> JobRequest:
    """A version 1 job, or version 2 with ``sampler``."""
    return JobRequest(
        job_id=job_id,
        nonce="0f" * 16,
        issued_at=ISSUED_AT,
        expires_at=ISSUED_AT + 600,
        node=node.peer_id,
        model=model,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        guidance=guidance,
        width=16,
        height=16,
        v=1 if sampler is None else 2,
        sampler=sampler,
    )


def record_for(job: Envelope, request: JobRequest, model_name: str = MODEL_NAME) -> GenerationRecord:
    """The node's record of ``request``: predicate v1, or v2 (``SAMPLER_CONFIG``) for a v2 job."""
    v2 = request.sampler is not None
    return GenerationRecord(
        model_name=model_name,
        model_digest=MODEL_DIGEST,
        pipeline="StableDiffusionPipeline",
        scheduler=SAMPLER_SCHEDULER if v2 else "PNDMScheduler",
        settings=request.settings,
        dtype="float32",
        device="cpu",
        torch_threads=1,
        libraries=dict(LIBRARIES),
        job_id=request.job_id,
        requester=job.keyid,
        request_sha256=hashlib.sha256(job.payload).hexdigest(),
        node=NODE.peer_id,
        created_at=CREATED_AT,
        scheduler_config=dict(SAMPLER_CONFIG) if v2 else None,
    )


def texts(attestation: Envelope | str, job: Envelope | str | None, parameters: str | None) -> list[tuple[str, str]]:
    """The chunks ``embed_provenance`` writes, in its order, from pieces that may be broken."""
    out = []
    if parameters is not None:
        out.append((PARAMETERS_KEYWORD, parameters))
    out.append((ATTESTATION_KEYWORD, attestation if isinstance(attestation, str) else attestation.to_json().decode()))
    if job is not None:
        out.append((JOB_KEYWORD, job if isinstance(job, str) else job.to_json().decode()))
    return out


def edited(envelope: Envelope, old: bytes, new: bytes) -> Envelope:
    """The same envelope and signature over a payload with one edit."""
    assert envelope.payload.count(old) == 1, old
    return Envelope(envelope.payload_type, envelope.payload.replace(old, new), envelope.keyid, envelope.sig)


def resigned(identity: Identity, envelope: Envelope, old: bytes, new: bytes) -> Envelope:
    """The payload with one edit, validly signed again: only the parser can refuse it."""
    assert envelope.payload.count(old) == 1, old
    return sign_envelope(identity, envelope.payload_type, envelope.payload.replace(old, new))


def with_pad_bits(envelope: Envelope) -> str:
    """The envelope JSON with non-zero padding bits in the signature's base64: the same bytes to
    a lenient decoder (Python's), refused by the canonical-base64 rule."""
    obj = envelope.to_json_dict()
    sig = obj["signatures"][0]["sig"]
    assert sig.endswith("=="), sig  # 64 bytes: the last character before "==" has 4 padding bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    obj["signatures"][0]["sig"] = sig[:-3] + alphabet[(alphabet.index(sig[-3]) & 0b110000) | 0b1111] + "=="
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def build_vectors() -> dict[str, bytes]:
    """File name -> bytes of every vector, ``index.json`` included. Pure."""
    image = gradient()
    request = job_request("00112233445566778899aabbccddeeff", "a lighthouse at dusk, oil painting")
    job = sign_job(REQUESTER, request)
    record = record_for(job, request)
    attestation = attest(NODE, record, image)
    parameters = a1111_parameters(record)
    payload = attestation.payload

    files: dict[str, bytes] = {}
    index: list[dict] = []

    def add(name, data, expect, check=None, reason=None, description="", kind="png", **extra):
        if name not in files:
            files[name] = data
        index.append(
            {"file": name, "kind": kind, **extra, "expect": expect, "check": check, "reason": reason,
             "description": description}
        )

    def png(name, check, reason, description, pixels=image, **chunks):
        data = _encode_png(pixels, texts(**{"attestation": attestation, "job": job, "parameters": parameters, **chunks}))
        add(name, data, "invalid", check, reason, description)

    valid_png = embed_provenance(image, attestation, job)
    add("valid.png", valid_png, "valid", description="A node's output: attestation, job and A1111 text.")
    add("valid.png", valid_png, "valid", description="Expecting the right node and a 10-hex model prefix.",
        options={"expect_node": NODE.peer_id, "expect_model": MODEL_DIGEST[:10]})
    add("valid.png", valid_png, "invalid", "node", "expected",
        description="Expecting another node.", options={"expect_node": OTHER.peer_id})
    add("valid.png", valid_png, "invalid", "model", "expected other-model",
        description="Expecting another model.", options={"expect_model": "other-model"})
    add("valid.json", attestation.to_json(), "valid", kind="envelope", image="valid.png",
        description="The attestation envelope of valid.png alone.")
    add("job.json", job.to_json(), "valid", kind="job", description="The requester's signed job of valid.png.")

    u_request = job_request("ffeeddccbbaa99887766554433221100", "灯台、夕暮れ —油彩", negative="")
    u_job = sign_job(REQUESTER, u_request)
    u_record = record_for(u_job, u_request)
    add("valid-unicode.png", embed_provenance(image, attest(NODE, u_record, image), u_job), "valid",
        description="Non-Latin-1 prompt: UTF-8 statement, parameters written as iTXt, no negative line.")

    palette = Image.new("P", image.size)
    palette.putpalette(image.tobytes())  # colour i is pixel i, row-major
    palette.putdata(range(256))
    add("valid-palette.png", _encode_png(palette, texts(attestation, job, parameters)), "valid",
        description="valid.png losslessly re-encoded as a palette PNG, chunks kept: same RGB8 pixels.")

    touched = image.copy()
    touched.putpixel((0, 0), (1, 0, 0))
    png("tampered-pixels.png", "pixels", "differs from the signed", "One pixel changed after signing.",
        pixels=touched)
    png("cropped.png", "pixels", "the attestation is for rgb8:16x16", "Cropped to 8x8 after signing.",
        pixels=image.crop((0, 0, 8, 8)))
    transparent = image.convert("RGBA")
    transparent.putpixel((3, 3), (51, 51, 48, 0))
    png("transparent.png", "pixels", "transparent", "Same RGB values, but one pixel made transparent.",
        pixels=transparent)
    png("tampered-seed.png", "signature", "envelope signature invalid",
        "Payload seed edited 1234 -> 1235, signature kept.",
        attestation=edited(attestation, b'"seed":"1234"', b'"seed":"1235"'))
    png("tampered-model-digest.png", "signature", "envelope signature invalid",
        "Payload model digest edited, signature kept.",
        attestation=edited(attestation, MODEL_DIGEST.encode(), hashlib.sha256(b"other").hexdigest().encode()))
    png("forged-keyid.png", "signature", "envelope signature invalid",
        "Signed by another key while keyid claims the node.",
        attestation=Envelope(ATTESTATION_PAYLOAD_TYPE, payload, NODE.peer_id,
                             OTHER.sign(pae(ATTESTATION_PAYLOAD_TYPE, payload))))
    png("resigned-other-key.png", "signature", "but the statement names node",
        "Validly re-signed by another key (keyid is that key); the statement still names the node.",
        attestation=sign_envelope(OTHER, ATTESTATION_PAYLOAD_TYPE, payload))
    reencoded = json.dumps(json.loads(payload), indent=2, sort_keys=True, ensure_ascii=False).encode()
    png("reencoded-payload.png", "signature", "envelope signature invalid",
        "Payload JSON re-serialised with other spacing, same content; the signature covers bytes.",
        attestation=Envelope(ATTESTATION_PAYLOAD_TYPE, reencoded, attestation.keyid, attestation.sig))
    png("truncated-envelope.png", "attestation", "not valid JSON", "Attestation envelope JSON cut in half.",
        attestation=attestation.to_json().decode()[: len(attestation.to_json()) // 2])
    png("wrong-payload-type.png", "attestation", "payload type is 'application/json'",
        "The node signed the same statement under payload type application/json.",
        attestation=sign_envelope(NODE, "application/json", payload))
    other_request = job_request(request.job_id, "a burning lighthouse", seed="4321")
    png("job-mismatch.png", "job binding", "requestSha256, prompt, seed",
        "A validly signed job with the same id but another prompt and seed.", job=sign_job(REQUESTER, other_request))
    png("job-other-signer.png", "job binding", "differs from the attestation in requester",
        "The same job validly signed by another key (keyid is that key).", job=sign_job(OTHER, request))
    png("job-bad-signature.png", "job binding", "job envelope: envelope signature invalid",
        "The job's keyid is the requester but another key signed it.",
        job=Envelope(job.payload_type, job.payload, job.keyid, OTHER.sign(pae(job.payload_type, job.payload))))
    # Everything consistent (the statement binds this job's id and hash, the settings agree)
    # except that the requester addressed the job to another node: only the node rule fails.
    elsewhere = job_request(request.job_id, request.prompt, node=OTHER)
    elsewhere_job = sign_job(REQUESTER, elsewhere)
    png("job-for-other-node.png", "job binding", "differs from the attestation in node",
        "A job the requester signed for another node, run and attested by this node, hash and id bound.",
        attestation=attest(NODE, record_for(elsewhere_job, elsewhere), image), job=elsewhere_job)
    png("edited-parameters.png", "parameters", "was edited", "A1111 text edited (Seed 1234 -> 99).",
        parameters=parameters.replace("Seed: 1234", "Seed: 99"))
    png("no-job.png", "job binding", "no job embedded", "Attestation without the job envelope.", job=None)
    plain = io.BytesIO()
    Image.open(io.BytesIO(valid_png)).save(plain, format="PNG")
    add("reencoded-no-chunks.png", plain.getvalue(), "invalid", "attestation", "no attestation",
        description="valid.png re-saved by Pillow, which drops text chunks.")
    add("truncated.png", valid_png[: len(valid_png) // 2], "invalid", "attestation", "not a readable PNG",
        description="valid.png cut in half.")
    add("not-a-png.bin", b"GIF89a this is not a PNG\n", "invalid", "attestation", "not a readable PNG",
        description="Not a PNG at all.")
    add("tampered-seed.json", edited(attestation, b'"seed":"1234"', b'"seed":"1235"').to_json(), "invalid",
        reason="envelope signature invalid", kind="envelope", image="valid.png",
        description="The envelope of tampered-seed.png alone.")
    add("resigned-other-key.json", sign_envelope(OTHER, ATTESTATION_PAYLOAD_TYPE, payload).to_json(), "invalid",
        reason="but the statement names node", kind="envelope", image="valid.png",
        description="The envelope of resigned-other-key.png alone.")

    add_rule_vectors(add, png, image, job, attestation)
    add_v2_vectors(add, image, job)
    add_v3_vectors(add, image)

    document = {
        "description": "Pointillist attestation test vectors; see docs/attestation.md, section Test vectors.",
        "keys": {
            "node": {"seed": bytes(range(0, 32)).hex(), "peerId": NODE.peer_id},
            "requester": {"seed": bytes(range(32, 64)).hex(), "peerId": REQUESTER.peer_id},
            "other": {"seed": bytes(range(64, 96)).hex(), "peerId": OTHER.peer_id},
            "auditor": {"seed": bytes(range(96, 128)).hex(), "peerId": AUDITOR.peer_id},
        },
        "vectors": index,
    }
    files["index.json"] = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def add_rule_vectors(add, png, image: Image.Image, job: Envelope, attestation: Envelope) -> None:
    """Vectors for the rules docs/attestation.md spells out for independent verifiers: canonical
    base64, strict JSON, code points, leap seconds, the A1111 text."""
    pad_bits = "padding bits must be zero"
    png("noncanonical-base64.png", "attestation", pad_bits,
        "The attestation signature's base64 has non-zero padding bits (same bytes to a lenient decoder).",
        attestation=with_pad_bits(attestation))
    png("job-noncanonical-base64.png", "job binding", pad_bits,
        "The job signature's base64 has non-zero padding bits.", job=with_pad_bits(job))
    obj = attestation.to_json_dict()
    duplicated = json.dumps(obj, sort_keys=True, separators=(",", ":")).replace(
        '{"payload":', '{"payloadType":"application/json","payload":', 1)
    add("envelope-duplicate-key.json", duplicated.encode(), "invalid", reason="repeats the key 'payloadType'",
        kind="envelope", image="valid.png", description="The attestation envelope with payloadType twice.")

    seed = b'"seed":"1234"'
    png("statement-duplicate-key.png", "attestation", "repeats the key 'seed'",
        "The node validly signed a statement naming seed twice (1234, then 1235).",
        attestation=resigned(NODE, attestation, seed, seed + b',"seed":"1235"'))
    png("statement-lone-surrogate.png", "attestation", "lone surrogate",
        "The node validly signed a statement whose prompt holds the escape \\ud800 alone.",
        attestation=resigned(NODE, attestation, b'"prompt":"', b'"prompt":"\\ud800'))
    png("leap-second.png", "attestation", "leap second",
        "The node validly signed createdAt 2016-12-31T23:59:60Z, a real leap second.",
        attestation=resigned(NODE, attestation, CREATED_AT.encode(), b"2016-12-31T23:59:60Z"))

    for name, old, new, reason, description in (
        ("job-duplicate-key.json", seed, seed + b',"seed":"1235"', "repeats the key 'seed'", "seed twice"),
        ("job-lone-surrogate.json", b'"prompt":"', b'"prompt":"\\ud800', "lone surrogate", "a lone \\ud800"),
        ("job-nan.json", b'"guidance":7.5', b'"guidance":NaN', "NaN is not JSON", "guidance NaN"),
        ("job-huge-number.json", b'"guidance":7.5', b'"guidance":1e400', "out of range for a double",
         "guidance 1e400, infinite as a double"),
        ("job-integer-as-float.json", b'"steps":20', b'"steps":20.0', "steps", "steps written 20.0"),
        ("job-too-deep.json", b'"v":1', b'"v":1,"x":' + b"[" * 33 + b"]" * 33, "nested too deeply",
         "an extra member nested 33 arrays deep"),
    ):
        add(name, resigned(REQUESTER, job, old, new).to_json(), "invalid", reason=reason, kind="job",
            description=f"A validly signed job whose payload has {description}.")
    bom = sign_envelope(REQUESTER, job.payload_type, b"\xef\xbb\xbf" + job.payload)
    add("job-bom.json", bom.to_json(), "invalid", reason="BOM", kind="job",
        description="A validly signed job whose payload starts with a UTF-8 byte order mark.")

    # 4000 characters are 4000 code points: here 8000 UTF-16 units and 16000 UTF-8 bytes.
    waves = job_request("0123456789abcdef0123456789abcdef", "\U0001F30A" * 4000)
    waves_job = sign_job(REQUESTER, waves)
    waves_attestation = attest(NODE, record_for(waves_job, waves), image)
    add("valid-astral-prompt.png", embed_provenance(image, waves_attestation, waves_job), "valid",
        description="A prompt of 4000 code points outside the BMP (8000 UTF-16 units): at the limit.")
    png("prompt-too-long.png", "attestation", "predicate.prompt",
        "The node validly signed a prompt of 4001 code points.", job=waves_job,
        attestation=resigned(NODE, waves_attestation, "\U0001F30A".encode() * 4000, "\U0001F30A".encode() * 4001))

    small = job_request("1123456789abcdef0123456789abcdef", "a lighthouse", guidance=0.00001)
    small_job = sign_job(REQUESTER, small)
    small_record = record_for(small_job, small)
    small_attestation = attest(NODE, small_record, image)
    add("valid-cfg-scale-small.png", embed_provenance(image, small_attestation, small_job), "valid",
        description="Guidance 1e-05: CFG scale is written 0.00001, positional, never an exponent.")
    png("cfg-scale-exponent.png", "parameters", "was edited", "As valid-cfg-scale-small.png, CFG scale written 1e-05.",
        attestation=small_attestation, job=small_job,
        parameters=a1111_parameters(small_record).replace("CFG scale: 0.00001,", "CFG scale: 1e-05,"))

    quoted = job_request("2123456789abcdef0123456789abcdef", "a lighthouse", model='"tiny" sd ')
    quoted_job = sign_job(REQUESTER, quoted)
    add("valid-quoted-model.png",
        embed_provenance(image, attest(NODE, record_for(quoted_job, quoted, model_name=quoted.model), image),
                         quoted_job), "valid",
        description='Model name \'"tiny" sd \' (quotes, trailing space): JSON-quoted in the A1111 text.')

    injected = job_request("3123456789abcdef0123456789abcdef", "a lighthouse\nNegative prompt: a burning lighthouse")
    injected_job = sign_job(REQUESTER, injected)
    injected_record = record_for(injected_job, injected)
    injected_attestation = attest(NODE, injected_record, image)
    add("valid-prompt-not-a1111.png", embed_provenance(image, injected_attestation, injected_job), "valid",
        description="A prompt with a line 'Negative prompt: ...': A1111 readers would misread it, so no "
                    "parameters text is written.")
    s = injected_record.settings
    naive = (f"{s.prompt}\nNegative prompt: {s.negative_prompt}\nSteps: 20, Sampler: PNDMScheduler, CFG scale: 7.5, "
             f"Seed: 1234, Size: 16x16, Model hash: {MODEL_DIGEST[:10]}, Model: {MODEL_NAME}")
    png("prompt-not-a1111-parameters.png", "parameters", "would misread",
        "As valid-prompt-not-a1111.png with the A1111 text naively written: it reads as another prompt.",
        attestation=injected_attestation, job=injected_job, parameters=naive)


def add_v2_vectors(add, image: Image.Image, v1_job: Envelope) -> None:
    """Format version 2 (docs/attestation.md): a job naming a sampler, predicate generation/v2
    recording it and the scheduler's config; the A1111 text names the sampler."""
    request = job_request("4123456789abcdef0123456789abcdef", "a lighthouse at dusk, oil painting", sampler=SAMPLER)
    job = sign_job(REQUESTER, request)
    record = record_for(job, request)
    attestation = attest(NODE, record, image)
    parameters = a1111_parameters(record)

    def png(name, expect, check, reason, description, **chunks):
        pieces = {"attestation": attestation, "job": job, "parameters": parameters, **chunks}
        add(name, _encode_png(image, texts(**pieces)), expect, check, reason, description)

    png("valid-v2.png", "valid", None, None,
        "Format version 2: the job names sampler 'DPM++ 2M Karras'; predicate generation/v2 records it, the "
        "scheduler class and its config; the A1111 text says 'Sampler: DPM++ 2M Karras'.")
    add("valid-v2.json", attestation.to_json(), "valid", kind="envelope", image="valid-v2.png",
        description="The attestation envelope of valid-v2.png alone.")
    add("job-v2.json", job.to_json(), "valid", kind="job",
        description="The requester's signed version 2 job of valid-v2.png (payload type job.v2+json).")
    png("v2-tampered-sampler.png", "invalid", "signature", "envelope signature invalid",
        "Payload sampler edited 'DPM++ 2M Karras' -> 'Euler', signature kept.",
        attestation=edited(attestation, b'"sampler":"DPM++ 2M Karras"', b'"sampler":"Euler"'))
    png("v2-tampered-scheduler-config.png", "invalid", "signature", "envelope signature invalid",
        "Payload schedulerConfig edited (use_karras_sigmas true -> false), signature kept.",
        attestation=edited(attestation, b'"use_karras_sigmas":true', b'"use_karras_sigmas":false'))
    euler = dataclasses.replace(record, settings=dataclasses.replace(record.settings, sampler="Euler"),
                                scheduler="EulerDiscreteScheduler")
    png("v2-sampler-mismatch.png", "invalid", "job binding", "differs from the attestation in sampler",
        "The node validly signed sampler 'Euler' for a job asking for 'DPM++ 2M Karras' (id and hash bound).",
        attestation=attest(NODE, euler, image), parameters=a1111_parameters(euler))
    v1_request = JobRequest.from_json_dict(json.loads(v1_job.payload))
    for_v1 = dataclasses.replace(record_for(v1_job, v1_request), scheduler=SAMPLER_SCHEDULER,
                                 scheduler_config=dict(SAMPLER_CONFIG),
                                 settings=dataclasses.replace(v1_request.settings, sampler=SAMPLER))
    png("v2-statement-for-v1-job.png", "invalid", "job binding", "differs from the attestation in sampler",
        "A v2 statement naming a sampler, bound to the version 1 job of valid.png, which named none.",
        attestation=attest(NODE, for_v1, image), job=v1_job, parameters=a1111_parameters(for_v1))
    png("v2-parameters-class-name.png", "invalid", "parameters", "was edited",
        "valid-v2.png with the A1111 text naming the scheduler class, as version 1 does, not the sampler.",
        parameters=parameters.replace(f"Sampler: {SAMPLER},", f"Sampler: {SAMPLER_SCHEDULER},"))
    png("v2-no-scheduler-config.png", "invalid", "attestation", "predicate.schedulerConfig: missing",
        "The node validly signed a generation/v2 statement without schedulerConfig.",
        attestation=resigned(NODE, attestation, b'"schedulerConfig":' + json.dumps(
            SAMPLER_CONFIG, sort_keys=True, separators=(",", ":")).encode() + b",", b""))
    png("v2-config-underscore-key.png", "invalid", "attestation", "member names must match",
        "The node validly signed a schedulerConfig holding '_class_name' (bookkeeping, left out by rule).",
        attestation=resigned(NODE, attestation, b'"schedulerConfig":{', b'"schedulerConfig":{"_class_name":"x",'))
    png("v2-predicate-v1-type.png", "invalid", "attestation", "predicate.sampler: unknown member",
        "The node validly signed the v2 predicate under predicateType generation/v1.",
        attestation=resigned(NODE, attestation, b"/attestation/generation/v2", b"/attestation/generation/v1"))
    add("job-v2-payload-as-v1.json", sign_envelope(REQUESTER, "application/vnd.pointillist.job.v1+json",
                                                   job.payload).to_json(), "invalid",
        reason="sampler: unknown member", kind="job",
        description="A version 2 job payload validly signed under the version 1 payload type.")


def synthetic_trajectory() -> T.Trajectory:
    """TRAJECTORY_STEPS steps of 1x4x2x2 float32 latents with exactly representable values, the
    timesteps DDIM's "leading" spacing gives for 5 steps (801, 601, 401, 201, 1) as int64."""
    import struct

    def tensor(values: list[float]) -> T.TensorBytes:
        return T.TensorBytes("float32", (1, 4, 2, 2), struct.pack("<16f", *values))

    builder = T.TrajectoryBuilder()
    builder.initial(tensor([(i - 8) / 4 for i in range(16)]))
    for k in range(1, TRAJECTORY_STEPS + 1):
        t = 1000 // TRAJECTORY_STEPS * (TRAJECTORY_STEPS - k) + 1
        builder.step(T.TensorBytes("int64", (), struct.pack("<q", t)),
                     tensor([(i % 5 - 2) / 8 * k for i in range(16)]),
                     tensor([(i - 8) / 4 / (k + 1) for i in range(16)]))
    return builder.finish()


def merkle_document(trajectory: T.Trajectory) -> dict:
    """trajectory-merkle.json: a tensor encoding, the leaves of ``trajectory``, their hashes, the
    root and an RFC 9162 inclusion proof for every leaf, plus proofs that must be refused."""
    latent = trajectory.leaf(0).latent
    hashes = trajectory.leaf_hashes
    root = trajectory.root
    proofs = [{"index": i, "treeSize": len(hashes), "leafHash": hashes[i].hex(),
               "path": [p.hex() for p in trajectory.proof(i)]} for i in range(len(hashes))]
    bad = [
        {**proofs[2], "index": 3, "why": "the proof of leaf 2 presented for index 3"},
        {**proofs[2], "leafHash": hashes[3].hex(), "why": "leaf 3's hash with leaf 2's proof"},
        {**proofs[2], "path": proofs[2]["path"][:-1], "why": "the last hash of the path left out"},
        {**proofs[2], "treeSize": 2, "why": "index 2 in a tree of 2 leaves"},
        {**proofs[5], "path": [proofs[5]["path"][0], proofs[5]["path"][0]], "why": "a path hash replaced"},
    ]
    return {
        "description": "Step commitments (pointillist-trajectory-v1), docs/attestation.md section 10: "
                       "a tensor's encoding, the leaves of a small trajectory (hex), leaf hashes "
                       "SHA-256(0x00 || leaf), the RFC 9162 root, and inclusion proofs.",
        "encoding": T.ENCODING,
        "tensor": {"dtype": latent.dtype, "shape": list(latent.shape), "data": latent.data.hex(),
                   "encoded": T.encode_tensor(latent).hex()},
        "steps": trajectory.steps,
        "leaves": [leaf.hex() for leaf in trajectory.leaves],
        "leafHashes": [h.hex() for h in hashes],
        "root": root.hex(),
        "proofs": proofs,
        "badProofs": bad,
    }


def add_v3_vectors(add, image: Image.Image) -> None:
    """Format version 3 (issue 11): predicate generation/v3 commits to the denoising steps; the
    job format is unchanged (v1 here, and v2 with a sampler)."""
    trajectory = synthetic_trajectory()
    document = json.dumps(merkle_document(trajectory), indent=2) + "\n"
    add("trajectory-merkle.json", document.encode(), "valid", kind="merkle",
        description="Leaves -> leaf hashes -> RFC 9162 root, and an inclusion proof per leaf; badProofs must "
                    "be refused. The root is that of valid-v3.png.")
    request = job_request("5123456789abcdef0123456789abcdef", "a lighthouse at dusk, oil painting",
                          steps=TRAJECTORY_STEPS)
    job = sign_job(REQUESTER, request)
    record = dataclasses.replace(record_for(job, request), scheduler=OWN_SCHEDULER,
                                 scheduler_config=dict(OWN_SCHEDULER_CONFIG), trajectory=trajectory.commitment())
    attestation = attest(NODE, record, image)
    parameters = a1111_parameters(record)
    root = trajectory.root.hex().encode()

    def png(name, expect, check, reason, description, **chunks):
        pieces = {"attestation": attestation, "job": job, "parameters": parameters, **chunks}
        add(name, _encode_png(image, texts(**pieces)), expect, check, reason, description)

    png("valid-v3.png", "valid", None, None,
        "Format version 3: a version 1 job (no sampler); predicate generation/v3 with \"sampler\": null, the "
        "model's own scheduler and its config, and the trajectory of trajectory-merkle.json (5 steps, 6 "
        "leaves); the A1111 text names the scheduler class.")
    add("valid-v3.json", attestation.to_json(), "valid", kind="envelope", image="valid-v3.png",
        description="The attestation envelope of valid-v3.png alone.")
    add_audit_vectors(add, image, attestation, trajectory)

    v2_request = job_request("6123456789abcdef0123456789abcdef", "a lighthouse at dusk, oil painting",
                             sampler=SAMPLER, steps=TRAJECTORY_STEPS)
    v2_job = sign_job(REQUESTER, v2_request)
    v2_record = dataclasses.replace(record_for(v2_job, v2_request), trajectory=trajectory.commitment())
    add("valid-v3-sampler.png", embed_provenance(image, attest(NODE, v2_record, image), v2_job), "valid",
        description="Format version 3 for a version 2 job naming 'DPM++ 2M Karras': the sampler, its "
                    "scheduler config and a trajectory (that of valid-v3.png, reused); 'Sampler: DPM++ 2M Karras'.")

    png("v3-tampered-root.png", "invalid", "signature", "envelope signature invalid",
        "Payload trajectory root edited (one hex digit), signature kept.",
        attestation=edited(attestation, root, root[:-1] + (b"0" if root[-1:] != b"0" else b"1")))
    png("v3-malformed-trajectory.png", "invalid", "attestation", "leaves must equal steps + 1",
        "The node validly signed a trajectory of 5 steps and 5 leaves (leaf 0, x_T, is one more).",
        attestation=resigned(NODE, attestation, b'"leaves":6', b'"leaves":5'))
    png("v3-trajectory-encoding.png", "invalid", "attestation", "predicate.trajectory.encoding",
        "The node validly signed a trajectory in an encoding this version does not define.",
        attestation=resigned(NODE, attestation, b'"encoding":"pointillist-trajectory-v1"',
                             b'"encoding":"pointillist-trajectory-v9"'))
    png("v3-root-uppercase.png", "invalid", "attestation", "predicate.trajectory.root",
        "The node validly signed the root in uppercase hex.",
        attestation=resigned(NODE, attestation, root, root.upper()))
    png("v3-no-trajectory.png", "invalid", "attestation", "predicate.trajectory: missing",
        "The node validly signed a generation/v3 statement without trajectory.",
        attestation=resigned(NODE, attestation, b',"trajectory":' + json.dumps(
            trajectory.commitment().to_json_dict(), sort_keys=True, separators=(",", ":")).encode(), b""))
    png("v3-sampler-missing.png", "invalid", "attestation", "predicate.sampler: missing",
        "The node validly signed a generation/v3 statement without the sampler member (null is required).",
        attestation=resigned(NODE, attestation, b'"sampler":null,', b""))
    png("v3-predicate-v2-type.png", "invalid", "attestation", "predicate.trajectory: unknown member",
        "The node validly signed the v3 predicate under predicateType generation/v2.",
        attestation=resigned(NODE, attestation, b"/attestation/generation/v3", b"/attestation/generation/v2"))


def add_audit_vectors(add, image: Image.Image, attestation: Envelope, trajectory: T.Trajectory) -> None:
    """Remote audits (issue 11, item 4): the requester's signed audit job about valid-v3.png, and
    the auditor's signed verdict (predicate audit/v1, docs/attestation.md section 11)."""
    from pointillist.attestation.audit_verdict import AuditVerdictRecord, sign_verdict
    from pointillist.attestation.pixels import pixel_subject
    from pointillist.protocol.audit_job import AuditJobRequest, sign_audit_job

    png = embed_provenance(image, attestation, None)  # the bytes the audit job names
    request = AuditJobRequest(jobId="7123456789abcdef0123456789abcdef", nonce="89abcdef0123456789abcdef01234567",
                              issuedAt=ISSUED_AT + 60, expiresAt=ISSUED_AT + 960, node=AUDITOR.peer_id,
                              model=MODEL_DIGEST, imageSha256=hashlib.sha256(png).hexdigest(), steps=[1, 3])
    job = sign_audit_job(REQUESTER, request)
    add("audit-job.json", job.to_json(), "valid", kind="audit-job",
        description="A requester's signed audit job: node AUDITOR is to recompute steps 1 and 3 of the image "
                    "whose PNG bytes have imageSha256 (valid-v3.png's attestation without its job).")
    record = AuditVerdictRecord(
        auditor=AUDITOR.peer_id, subject=pixel_subject(image),
        statement_sha256=hashlib.sha256(attestation.payload).hexdigest(), attested_node=NODE.peer_id,
        attested_job="5123456789abcdef0123456789abcdef", model_digest=MODEL_DIGEST, root=trajectory.root.hex(),
        steps=(1, 3), verdict="fail", detail="fail: unet step 3: relative error of eps 0.0031 > 0.0002",
        checks=({"check": "seed-binding", "status": "pass", "detail": "leaf 0 is the seed's", "step": 0},
                {"check": "unet", "status": "pass", "detail": "eps recomputed bit for bit", "step": 1,
                 "measure": "eps-rel-error", "value": 0.0, "threshold": 0.0002},
                {"check": "unet", "status": "fail", "detail": "relative error of eps 0.0031", "step": 3,
                 "measure": "eps-rel-error", "value": 0.0031, "threshold": 0.0002}),
        requester=REQUESTER.peer_id, audit_job_id=request.job_id,
        audit_job_sha256=hashlib.sha256(job.payload).hexdigest(), device="cpu", dtype="float32", torch_threads=1,
        libraries=LIBRARIES, created_at="2026-11-22T10:01:30Z")
    verdict = sign_verdict(AUDITOR, record)
    add("audit-verdict.json", verdict.to_json(), "valid", kind="verdict", image="valid-v3.png",
        description="The auditor's signed verdict on valid-v3.png for audit-job.json: fail at step 3.")
    add("audit-verdict.json", verdict.to_json(), "invalid", reason="predicateType", kind="envelope",
        image="valid-v3.png", description="A verdict is not a generation attestation: image verifiers refuse it.")
    add("audit-verdict-other-signer.json", sign_envelope(OTHER, ATTESTATION_PAYLOAD_TYPE, verdict.payload).to_json(),
        "invalid", reason="names auditor", kind="verdict", image="valid-v3.png",
        description="The same statement signed by another key than the auditor it names.")
    add("audit-verdict-as-generation.json", attestation.to_json(), "invalid", reason="predicateType",
        kind="verdict", image="valid-v3.png", description="A generation attestation is not a verdict.")


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(build_vectors().items()):
        (out / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
