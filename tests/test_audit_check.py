"""The step audit (issue 11, item 3; ``node/audit_check.py``): an honest node's committed steps
pass, and each kind of lie fails with the check that catches it named.

Real components throughout: the embedded model generates with step recording (``LoadedModel.generate``),
the leaves and proofs are the real RFC 9162 tree's, and a dishonest node is the same pipeline run
with another seed, perturbed weights, or leaves it doctored and committed to. Small jobs (32x32,
at most 6 steps): CI has 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

pytest.importorskip("diffusers")

from pointillist.attestation import trajectory as T  # noqa: E402
from pointillist.attestation.statement import GenerationRecord  # noqa: E402
from pointillist.protocol.settings import GenerationSettings  # noqa: E402

JOB = GenerationSettings(prompt="a harbor at dawn", negative_prompt="blurry", seed=2**63 + 11, steps=5,
                         guidance=7.5, width=32, height=32)


@pytest.fixture(scope="module")
def model():
    import torch

    from pointillist.node.loading import embedded_model_path, load_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model(embedded_model_path(), device="cpu")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def noisy_model(model):
    """The embedded model with its UNet weights times (1 + 0.1 % Gaussian noise), same digest on disk."""
    import torch

    from pointillist.node.loading import embedded_model_path, load_model

    other = load_model(embedded_model_path(), device="cpu")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in other.pipe.unet.parameters():
            param.mul_(1 + 0.001 * torch.randn(param.shape, generator=g))
    return other


def job(**over) -> GenerationSettings:
    return dataclasses.replace(JOB, **over)


def record_for(model, settings, result, trajectory, **over) -> GenerationRecord:
    """What a node signs for ``result`` (the audit reads the record; signing is tested elsewhere)."""
    fields = dict(
        model_name="tiny-sd", model_digest=model.digest, pipeline=result.pipeline, scheduler=result.scheduler,
        settings=settings, dtype=result.dtype, device=result.device, torch_threads=1, libraries={},
        job_id="0" * 32, requester="requester", request_sha256="0" * 64, node="node",
        created_at="2026-11-23T00:00:00Z", scheduler_config=result.scheduler_config,
        trajectory=trajectory.commitment())
    return GenerationRecord(**{**fields, **over})


def audit_of(model, record, image, trajectory, steps, *, leaves=None):
    from pointillist.node import audit_check as A

    indices = A.leaves_needed(record, steps) if leaves is None else leaves
    return A.audit(model, record, image, A.open_leaves(trajectory, indices), steps)


def rebuilt(trajectory, k: int, *, latent=None, model_output=None) -> T.Trajectory:
    """``trajectory`` with leaf k's eps and/or latent replaced (a node committing doctored values)."""
    leaves = list(trajectory.leaves)
    leaf = T.decode_leaf(leaves[k], k)
    leaves[k] = T.step_leaf(k, leaf.timestep, model_output or leaf.model_output, latent or leaf.latent)
    return T.Trajectory(leaves)


def scaled(tb: T.TensorBytes, factor: float) -> T.TensorBytes:
    from pointillist.node.step_commitments import tensor_bytes, to_tensor

    return tensor_bytes(to_tensor(tb) * factor)


@pytest.fixture(scope="module")
def honest(model):
    import torch

    torch.set_num_threads(1)
    result = model.generate(JOB)
    return result, result.trajectory, record_for(model, JOB, result, result.trajectory)


def steps_1_and_two_random(n: int) -> list[int]:
    from pointillist.node.audit_check import choose_steps

    steps = choose_steps(n, 2, random.Random(20261123))
    assert steps[0] == 1 and len(set(steps)) == 3 and all(1 <= k <= n for k in steps)
    return steps


# --- honest ------------------------------------------------------------------------------------------


def test_an_honest_trajectory_passes_step_1_two_random_steps_and_the_vae_bit_for_bit(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, record = honest
    steps = steps_1_and_two_random(trajectory.steps)
    verdict = audit_of(model, record, result.image, trajectory, steps)
    assert verdict.verdict == A.PASS and verdict.ok, verdict.describe()
    assert [c.name for c in verdict.checks][:4] == ["model", "proof", "step-count", "seed-binding"]
    for k in steps:  # on the generating machine, dtype and thread count: bit for bit
        assert verdict.check("unet", k).figures["bitExact"] and verdict.check("unet", k).value == 0
        assert verdict.check("scheduler", k).figures["bitExact"]
    assert verdict.check("seed-binding").status == A.PASS
    assert verdict.check("vae").figures["valuesDiffering"] == 0
    assert not verdict.unchecked
    document = json.loads(json.dumps(verdict.to_json_dict()))  # the evidence file's shape
    assert document["verdict"] == "pass" and document["challengedSteps"] == steps
    assert document["thresholds"]["epsRelError"] == A.MAX_EPS_REL_ERROR


def test_leaf_0_is_the_seeded_initial_latent_bit_for_bit(model, honest, one_thread):
    import torch

    from pointillist.node.step_commitments import tensor_bytes

    _, trajectory, _ = honest
    drawn = torch.randn((1, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(JOB.seed), dtype=torch.float32)
    assert tensor_bytes(drawn * model.pipe.scheduler.init_noise_sigma) == trajectory.leaf(0).latent


def test_leaves_needed_always_asks_for_x_t_and_the_last_latent(honest):
    from pointillist.node.audit_check import leaves_needed

    _, trajectory, record = honest
    assert leaves_needed(record, [1, 3]) == [0, 1, 2, 3, 5]


# --- the commitment itself ---------------------------------------------------------------------------


def test_a_tampered_latent_fails_its_proof_with_a_recomputed_tree_or_the_original_proof(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, record = honest
    leaf = trajectory.leaf(2)
    tampered = rebuilt(trajectory, 2, latent=scaled(leaf.latent, 1.001))
    # Proofs recomputed over the tampered tree lead to that tree's root, not the signed one: leaf 2's
    # fails, and so does every other proof whose path passes through leaf 2's subtree.
    verdict = audit_of(model, record, result.image, tampered, [1, 2])
    failed = [c.step for c in verdict.checks if c.name == "proof" and c.status == A.FAIL]
    assert verdict.verdict == A.FAIL and verdict.failed.name == "proof" and 2 in failed, verdict.detail
    assert verdict.check("unet") is None  # nothing is recomputed from leaves that are not the committed ones
    # ... and the original proof does not fit the tampered leaf.
    opened = A.open_leaves(trajectory, [0, 1, 2, 5])
    opened[2] = A.OpenedLeaf(tampered.leaves[2], opened[2].proof)
    verdict = A.audit(model, record, result.image, opened, [1, 2])
    assert (verdict.failed.name, verdict.failed.step) == ("proof", 2) and "root" in verdict.failed.detail


def test_a_wrong_merkle_proof_fails_naming_the_leaf(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, record = honest
    opened = A.open_leaves(trajectory, [0, 1, 2, 3, 5])
    opened[3] = A.OpenedLeaf(opened[3].data, opened[2].proof)  # leaf 3 with leaf 2's path
    verdict = A.audit(model, record, result.image, opened, [1, 3])
    assert verdict.verdict == A.FAIL and (verdict.failed.name, verdict.failed.step) == ("proof", 3)
    broken = bytearray(opened[2].proof[0])
    broken[0] ^= 1
    opened = A.open_leaves(trajectory, [0, 1, 5])
    opened[1] = A.OpenedLeaf(opened[1].data, (bytes(broken), *opened[1].proof[1:]))
    assert A.audit(model, record, result.image, opened, [1]).failed.step == 1


def test_a_committed_leaf_that_does_not_decode_fails(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, record = honest
    leaves = list(trajectory.leaves)
    leaves[1] = leaves[1] + b"\x00"  # committed, but not a leaf
    garbled = T.Trajectory(leaves)
    verdict = audit_of(model, record_for(model, JOB, result, garbled), result.image, garbled, [1])
    assert verdict.verdict == A.FAIL and verdict.failed.name == "proof" and "does not decode" in verdict.failed.detail


# --- lies about the generation -----------------------------------------------------------------------


def test_x_t_of_another_seed_fails_the_seed_binding(model, one_thread):
    from pointillist.node import audit_check as A

    result = model.generate(job(seed=JOB.seed - 1))
    record = record_for(model, JOB, result, result.trajectory)  # attests JOB's seed
    verdict = audit_of(model, record, result.image, result.trajectory, [1, 3])
    assert verdict.verdict == A.FAIL and verdict.failed.name == "seed-binding", verdict.detail
    assert verdict.failed.value == 64  # all 1x4x4x4 elements differ


def test_a_doctored_eps_fails_the_unet_check_of_its_step(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, _ = honest
    doctored = rebuilt(trajectory, 3, model_output=scaled(trajectory.leaf(3).model_output, 1.01))
    record = record_for(model, JOB, result, doctored)  # the node committed the doctored leaf
    verdict = audit_of(model, record, result.image, doctored, [1, 3])
    assert verdict.verdict == A.FAIL and (verdict.failed.name, verdict.failed.step) == ("unet", 3), verdict.detail
    assert verdict.failed.value == pytest.approx(0.01 / 1.01, rel=1e-4) and verdict.check("unet", 1).status == A.PASS
    # The same figure from another device type accuses no one: the threshold is not calibrated there.
    elsewhere = dataclasses.replace(record, device="cuda:0")
    verdict = audit_of(model, elsewhere, result.image, doctored, [1, 3])
    assert verdict.check("unet", 3).status == A.UNAUDITABLE and "cuda:0" in verdict.check("unet", 3).detail
    # (This doctored leaf kept the honest x_3, which does not follow from its eps: the scheduler
    # part, device-independent arithmetic, still fails it.)
    assert (verdict.failed.name, verdict.failed.step) == ("scheduler", 3)
    # A node that also stepped its scheduler from the doctored eps: only the UNet part could tell,
    # and from another device type it says unauditable, with its figure, rather than fail.
    from pointillist.node import samplers
    from pointillist.node.step_commitments import tensor_bytes, to_tensor

    scheduler = samplers.rebuild_scheduler(result.scheduler, result.scheduler_config)
    scheduler.set_timesteps(JOB.steps)
    leaf = doctored.leaf(3)
    x_3 = scheduler.step(to_tensor(leaf.model_output), to_tensor(leaf.timestep), to_tensor(doctored.leaf(2).latent),
                         return_dict=False)[0]
    consistent = rebuilt(doctored, 3, latent=tensor_bytes(x_3))
    elsewhere = record_for(model, JOB, result, consistent, device="cuda:0")
    verdict = audit_of(model, elsewhere, result.image, consistent, [1, 3])
    assert verdict.verdict == A.UNAUDITABLE and verdict.check("scheduler", 3).status == A.PASS, verdict.detail
    assert verdict.check("unet", 3).value == pytest.approx(0.01 / 1.01, rel=1e-4)
    same_device = audit_of(model, record_for(model, JOB, result, consistent), result.image, consistent, [1, 3])
    assert (same_device.failed.name, same_device.failed.step) == ("unet", 3)


def test_a_latent_that_is_not_the_schedulers_step_fails_the_scheduler_check(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, _ = honest
    doctored = rebuilt(trajectory, 2, latent=scaled(trajectory.leaf(2).latent, 1.001))
    record = record_for(model, JOB, result, doctored)
    verdict = audit_of(model, record, result.image, doctored, [1, 2])
    assert verdict.verdict == A.FAIL and (verdict.failed.name, verdict.failed.step) == ("scheduler", 2)
    assert verdict.check("unet", 2).status == A.PASS  # eps_2 itself is the model's


def test_unet_weight_noise_fails_the_unet_check_of_step_1(model, noisy_model, one_thread):
    from pointillist.node import audit_check as A

    result = noisy_model.generate(JOB)
    record = record_for(model, JOB, result, result.trajectory)
    verdict = audit_of(model, record, result.image, result.trajectory, steps_1_and_two_random(JOB.steps))
    assert verdict.verdict == A.FAIL and (verdict.failed.name, verdict.failed.step) == ("unet", 1), verdict.detail
    assert verdict.failed.value > 10 * A.MAX_EPS_REL_ERROR


def test_an_image_that_does_not_decode_from_the_last_latent_fails_the_vae_check(model, honest, one_thread):
    from pointillist.node import audit_check as A

    _, trajectory, record = honest
    other = model.generate(job(seed=5), commit_steps=False).image
    verdict = audit_of(model, record, other, trajectory, [1, 4])
    assert verdict.verdict == A.FAIL and (verdict.failed.name, verdict.failed.step) == ("vae", 5), verdict.detail


def test_a_commitment_with_fewer_steps_than_attested_fails_the_step_count(model, one_thread):
    from pointillist.node import audit_check as A

    result = model.generate(job(steps=4))
    record = record_for(model, JOB, result, result.trajectory)  # attests 5 steps
    verdict = audit_of(model, record, result.image, result.trajectory, [1, 2])
    assert verdict.verdict == A.FAIL and verdict.failed.name == "step-count" and verdict.failed.value == 4


# --- unauditable -------------------------------------------------------------------------------------


def test_another_models_digest_or_a_missing_leaf_is_unauditable_not_a_failure(model, honest, one_thread):
    from pointillist.node import audit_check as A

    result, trajectory, record = honest
    verdict = audit_of(model, dataclasses.replace(record, model_digest="ab" * 32), result.image, trajectory, [1])
    assert verdict.verdict == A.UNAUDITABLE and verdict.ok is None and "digest" in verdict.detail
    verdict = audit_of(model, record, result.image, trajectory, [1], leaves=[1, 5])  # no leaf 0
    assert verdict.verdict == A.UNAUDITABLE and "leaf 0" in verdict.detail


# --- samplers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [None, "Euler", "DPM++ 2M", "UniPC", "PLMS", "Heun"])
def test_every_step_of_a_deterministic_sampler_passes_bit_for_bit(model, one_thread, sampler):
    from pointillist.node import audit_check as A

    settings = job(sampler=sampler, steps=4)
    result = model.generate(settings)
    trajectory = result.trajectory
    record = record_for(model, settings, result, trajectory)
    # Each step alone, from the shortest replay window the module asks for (the whole run for
    # PLMS and Heun; Heun runs 2 * steps - 1 scheduler steps).
    for k in range(1, trajectory.steps + 1):
        verdict = audit_of(model, record, result.image, trajectory, [k])
        check = verdict.check("scheduler", k)
        assert verdict.verdict == A.PASS and not verdict.unchecked, (k, verdict.detail)
        assert check.figures["bitExact"] and verdict.check("unet", k).figures["bitExact"], k
        assert check.figures["replayedFrom"] == A.history_start(result.scheduler, result.scheduler_config, k)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "UniPC"])
def test_a_multistep_sampler_needs_only_a_window_of_earlier_leaves(model, one_thread, sampler):
    from pointillist.node import audit_check as A

    settings = job(sampler=sampler, steps=6)
    result = model.generate(settings)
    trajectory = result.trajectory
    record = record_for(model, settings, result, trajectory)
    start = A.history_start(result.scheduler, result.scheduler_config, 6)
    assert 1 < start < 6  # a window, not the whole run
    assert A.leaves_needed(record, [6]) == [0, *range(start - 1, 7)]
    verdict = audit_of(model, record, result.image, trajectory, [6])
    assert verdict.verdict == A.PASS and verdict.check("scheduler", 6).figures["bitExact"]
    # Without the earlier leaves the scheduler part is not checked (and says why); the rest is.
    verdict = audit_of(model, record, result.image, trajectory, [6], leaves=[0, 5, 6])
    assert verdict.verdict == A.PASS and verdict.check("scheduler", 6).status == A.UNAUDITABLE
    assert "not opened" in verdict.check("scheduler", 6).detail and verdict.check("unet", 6).status == A.PASS


def test_an_ancestral_samplers_scheduler_part_is_unauditable_its_unet_part_is_checked(model, one_thread):
    from pointillist.node import audit_check as A

    settings = job(sampler="Euler a", steps=4)
    result = model.generate(settings)
    record = record_for(model, settings, result, result.trajectory)
    verdict = audit_of(model, record, result.image, result.trajectory, [1, 3])
    assert verdict.verdict == A.PASS and "not checked" in verdict.detail
    for k in (1, 3):
        assert verdict.check("unet", k).status == A.PASS and verdict.check("unet", k).figures["bitExact"]
        assert verdict.check("scheduler", k).status == A.UNAUDITABLE
        assert "noise" in verdict.check("scheduler", k).detail
    assert verdict.check("seed-binding").status == A.PASS  # x_T times Euler's init sigma
    # ... and a lie in the model part is still caught.
    noisy = rebuilt(result.trajectory, 3, model_output=scaled(result.trajectory.leaf(3).model_output, 1.01))
    verdict = audit_of(model, record_for(model, settings, result, noisy), result.image, noisy, [1, 3])
    assert (verdict.failed.name, verdict.failed.step) == ("unet", 3)
