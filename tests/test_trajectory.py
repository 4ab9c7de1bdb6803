"""Step commitments (issue 11, item 1): the pure encoding and RFC 9162 tree of
attestation/trajectory.py, the committed Merkle vector, and (further down) real generations whose
recorded steps recompute bit for bit, and a node process that keeps them."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from pointillist.attestation import trajectory as T
from pointillist.protocol.errors import VerificationError

# --- the pure module -------------------------------------------------------------------------------

#: The leaves of the Certificate Transparency reference tests (RFC 6962 / RFC 9162 use the same
#: tree hash), and the roots of their first n leaves, n = 1..8, as the reference implementation
#: publishes them.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_empty_and_one_leaf_trees_are_rfc_9162s() -> None:
    assert T.merkle_root([]) == _sha(b"")
    assert T.merkle_root([b"abc"]) == _sha(b"\x00abc")
    assert T.merkle_root([b"a", b"b"]) == _sha(b"\x01" + _sha(b"\x00a") + _sha(b"\x00b"))
    # three leaves: the left subtree is the largest power of two below 3
    three = _sha(b"\x01" + _sha(b"\x01" + _sha(b"\x00a") + _sha(b"\x00b")) + _sha(b"\x00c"))
    assert T.merkle_root([b"a", b"b", b"c"]) == three


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_of_the_certificate_transparency_reference_tree(n: int) -> None:
    assert T.merkle_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize("size", range(1, 10))
def test_a_proof_for_every_index_verifies_and_wrong_ones_are_refused(size: int) -> None:
    leaves = [f"leaf {i}".encode() for i in range(size)]
    hashes = [T.leaf_hash(leaf) for leaf in leaves]
    root = T.root_from_leaf_hashes(hashes)
    for index in range(size):
        proof = T.inclusion_proof(hashes, index)
        assert len(proof) <= max(1, (size - 1).bit_length())
        assert T.verify_inclusion(index, size, hashes[index], proof, root)
        assert not T.verify_inclusion(index, size, T.leaf_hash(b"another leaf"), proof, root)  # wrong leaf
        assert not T.verify_inclusion(index, size, hashes[index], proof, _sha(b"another root"))
        # (the tree size is not authenticated by a proof, the root is: a v3 predicate signs both)
        assert not T.verify_inclusion(size, size, hashes[index], proof, root)  # index out of range
        assert not T.verify_inclusion(-1, size, hashes[index], proof, root)
        for other in range(size):  # wrong index: refused unless the leaf is there too
            if other != index:
                assert not T.verify_inclusion(other, size, hashes[index], proof, root)
        if proof:
            assert not T.verify_inclusion(index, size, hashes[index], proof[:-1], root)  # cut short
            assert not T.verify_inclusion(index, size, hashes[index], proof + [proof[-1]], root)  # too long
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            assert not T.verify_inclusion(index, size, hashes[index], flipped, root)
            assert not T.verify_inclusion(index, size, hashes[index], [b"short", *proof[1:]], root)


def test_a_leaf_hash_is_never_a_node_hash() -> None:
    # Domain separation: the 64 bytes of two child hashes, presented as a leaf, hash differently.
    a, b = T.leaf_hash(b"a"), T.leaf_hash(b"b")
    assert T.leaf_hash(a + b) != T.node_hash(a, b)
    root = T.root_from_leaf_hashes([a, b])
    assert not T.verify_inclusion(0, 1, T.leaf_hash(a + b), [], root)


def _tensor(values: list[float], shape=(1, 4, 1, 2)) -> T.TensorBytes:
    return T.TensorBytes("float32", shape, struct.pack(f"<{len(values)}f", *values))


def test_tensor_encoding_is_the_documented_bytes() -> None:
    tensor = _tensor([1.0, -2.0], shape=(1, 2))
    assert T.encode_tensor(tensor) == (
        b"\x07float32" + b"\x02" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02" + b"\x00" * 7 + b"\x08"
        + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0")
    scalar = T.TensorBytes("int64", (), struct.pack("<q", 981))
    assert T.encode_tensor(scalar) == b"\x05int64\x00" + b"\x00" * 7 + b"\x08" + struct.pack("<q", 981)


def test_leaves_round_trip_and_bind_their_index() -> None:
    x, eps, t = _tensor([0.5] * 8), _tensor([0.25] * 8), T.TensorBytes("int64", (), struct.pack("<q", 1))
    assert T.decode_leaf(T.initial_leaf(x)) == T.StepLeaf(0, None, None, x)
    assert T.decode_leaf(T.step_leaf(3, t, eps, x), 3) == T.StepLeaf(3, t, eps, x)
    with pytest.raises(VerificationError, match="says step 3, expected 2"):
        T.decode_leaf(T.step_leaf(3, t, eps, x), 2)


BAD_LEAVES = [
    (b"", "truncated"),
    (struct.pack(">I", 0) + b"\x07float32\x00" + b"\x00" * 7 + b"\x04", "truncated"),
    (T.initial_leaf(_tensor([0.5] * 8)) + b"\x00", "bytes after its end"),
    (struct.pack(">I", 0) + b"\x07float99\x00" + b"\x00" * 7 + b"\x04\x00\x00\x00\x00", "dtype 'float99'"),
    (struct.pack(">I", 0) + b"\x07float32\x00" + b"\x00" * 7 + b"\x08" + b"\x00" * 8, "must hold 4 bytes, not 8"),
    (struct.pack(">I", 0) + b"\x07float32\x09" + b"\x00\x00\x00\x01" * 9, "at most 8"),
    (struct.pack(">I", 0) + b"\x02\xff\xfe", "not ASCII"),
    (struct.pack(">I", 10_001), "above 10000"),
]


@pytest.mark.parametrize("data,reason", BAD_LEAVES, ids=[r for _, r in BAD_LEAVES])
def test_bad_leaves_are_refused_in_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason) as info:
        T.decode_leaf(data)
    assert "\n" not in str(info.value)


def test_a_tensor_must_hold_what_its_shape_says() -> None:
    with pytest.raises(VerificationError, match="must hold 32 bytes"):
        T.TensorBytes("float32", (1, 8), b"\x00" * 31)


def test_stored_trajectory_round_trips_and_refuses_damage() -> None:
    builder = T.TrajectoryBuilder()
    builder.initial(_tensor([1.0] * 8))
    for k in range(1, 4):
        builder.step(T.TensorBytes("int64", (), struct.pack("<q", 1000 - k)), _tensor([k] * 8), _tensor([-k] * 8))
    trajectory = builder.finish()
    assert trajectory.steps == 3 and trajectory.root == T.merkle_root(trajectory.leaves)
    again = T.Trajectory.from_bytes(trajectory.to_bytes())
    assert again.leaves == trajectory.leaves and again.root == trajectory.root
    assert again.commitment() == T.TrajectoryCommitment(T.ENCODING, 3, 4, trajectory.root.hex())
    assert T.verify_inclusion(2, 4, again.leaf_hashes[2], again.proof(2), again.root)
    assert again.leaf(2).model_output == _tensor([2.0] * 8)
    data = trajectory.to_bytes()
    for damaged, reason in ((data[:-1], "truncated"), (data + b"\x00", "after its end"),
                            (b"x" + data[1:], "not a pointillist-trajectory-v1 container")):
        with pytest.raises(VerificationError, match=reason):
            T.Trajectory.from_bytes(damaged)
    with pytest.raises(VerificationError, match="comes first"):
        builder.initial(_tensor([1.0] * 8))


def check_merkle_document(doc: dict) -> None:
    """docs/attestation-vectors/trajectory-merkle.json holds together (also run by the vector tests)."""
    assert doc["encoding"] == T.ENCODING
    tensor = T.TensorBytes(doc["tensor"]["dtype"], tuple(doc["tensor"]["shape"]), bytes.fromhex(doc["tensor"]["data"]))
    assert T.encode_tensor(tensor).hex() == doc["tensor"]["encoded"]
    leaves = [bytes.fromhex(h) for h in doc["leaves"]]
    assert len(leaves) == doc["steps"] + 1
    for index, leaf in enumerate(leaves):
        T.decode_leaf(leaf, index)
    # independently of the module: SHA-256 with the RFC 9162 prefixes
    assert [_sha(b"\x00" + leaf).hex() for leaf in leaves] == doc["leafHashes"]
    assert T.merkle_root(leaves).hex() == doc["root"]
    root = bytes.fromhex(doc["root"])
    for proof in doc["proofs"]:
        assert T.verify_inclusion(proof["index"], proof["treeSize"], bytes.fromhex(proof["leafHash"]),
                                  [bytes.fromhex(p) for p in proof["path"]], root)
    assert len(doc["proofs"]) == len(leaves) and doc["badProofs"]
    for proof in doc["badProofs"]:
        assert not T.verify_inclusion(proof["index"], proof["treeSize"], bytes.fromhex(proof["leafHash"]),
                                      [bytes.fromhex(p) for p in proof["path"]], root), proof["why"]


def test_committed_merkle_vector_and_valid_v3_share_the_root() -> None:
    from support import VECTORS

    from pointillist.attestation import verify_image

    doc = json.loads((VECTORS / "trajectory-merkle.json").read_text())
    check_merkle_document(doc)
    report = verify_image((VECTORS / "valid-v3.png").read_bytes())
    assert report.ok
    record = report.statement.record
    assert record.trajectory == T.TrajectoryCommitment(T.ENCODING, doc["steps"], doc["steps"] + 1, doc["root"])
    assert record.settings.sampler is None and record.scheduler_config["timestep_spacing"] == "leading"


# --- real generations with the embedded model ------------------------------------------------------

STEPS_BASE = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=2**64 - 7, steps=3,
                  guidance=7.5, width=32, height=32)


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("diffusers")
    import torch

    from pointillist.node.loading import embedded_model_path, load_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model(embedded_model_path(), device="cpu")
    finally:
        torch.set_num_threads(before)


def _settings(**over):
    from pointillist.protocol.settings import GenerationSettings

    return GenerationSettings(**{**STEPS_BASE, **over})


def _tensor_of(value: T.TensorBytes):
    from pointillist.node.step_commitments import to_tensor

    return to_tensor(value)


def _bytes_of(tensor) -> T.TensorBytes:
    from pointillist.node.step_commitments import tensor_bytes

    return tensor_bytes(tensor)


def test_step_1_recomputed_from_leaf_0_with_the_real_unet_is_bit_exact(model, one_thread) -> None:
    import torch

    from pointillist.node import samplers

    settings = _settings()
    result = model.generate(settings)
    trajectory = result.trajectory
    assert trajectory is not None and trajectory.root == T.merkle_root(trajectory.leaves)
    assert trajectory.commitment().root == trajectory.root.hex()
    assert trajectory.steps == settings.steps == 3  # DDIM: one step per timestep
    pipe = model.pipe

    # Leaf 0 binds the seed: the CPU generator's draw, times the scheduler's initial sigma (1 for DDIM).
    x_t = trajectory.leaf(0).latent
    shape = (1, pipe.unet.config.in_channels, settings.height // 8, settings.width // 8)
    drawn = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(settings.seed), dtype=torch.float32)
    assert x_t == _bytes_of(drawn * pipe.scheduler.init_noise_sigma)

    # The model part of step 1: the UNet on x_T with both prompts, then classifier-free guidance.
    scheduler = samplers.rebuild_scheduler(result.scheduler, result.scheduler_config)
    scheduler.set_timesteps(settings.steps)
    step1 = trajectory.leaf(1)
    t = _tensor_of(step1.timestep)
    assert t == scheduler.timesteps[0]
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative_prompt)
        x = _tensor_of(x_t)
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([negative, positive]), return_dict=False)[0]
        uncond, text = eps.chunk(2)
        eps = uncond + settings.guidance * (text - uncond)
    assert _bytes_of(eps) == step1.model_output  # bit for bit
    # The scheduler part: DDIM's arithmetic on committed values gives the committed latent.
    assert _bytes_of(scheduler.step(_tensor_of(step1.model_output), t, x, return_dict=False)[0]) == step1.latent
    # ... and a wrong seed does not give leaf 0.
    other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(settings.seed - 1), dtype=torch.float32)
    assert _bytes_of(other) != x_t


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "PLMS", "UniPC", "Heun", "DDIM"])
def test_scheduler_part_recomputes_from_committed_model_outputs(model, one_thread, sampler: str) -> None:
    from pointillist.node import samplers

    settings = _settings(sampler=sampler, steps=4)
    result = model.generate(settings)
    trajectory = result.trajectory
    scheduler = samplers.rebuild_scheduler(result.scheduler, result.scheduler_config)
    scheduler.set_timesteps(settings.steps)
    assert trajectory.steps == len(scheduler.timesteps)  # PLMS runs one more, Heun 2 * steps - 1
    x = _tensor_of(trajectory.leaf(0).latent)
    for k in range(1, trajectory.steps + 1):
        leaf = trajectory.leaf(k)
        # Every input of step k is committed: the latent of leaf k-1, t_k, eps_k (and, for the
        # multistep schedulers, the earlier eps_j, which this replay fed in order).
        x = scheduler.step(_tensor_of(leaf.model_output), _tensor_of(leaf.timestep), x, return_dict=False)[0]
        assert _bytes_of(x) == leaf.latent, f"step {k}"


def test_ancestral_noise_is_not_committed_but_follows_from_the_seed(model, one_thread) -> None:
    import torch

    from pointillist.node import samplers

    settings = _settings(sampler="Euler a", steps=3)
    trajectory = model.generate(settings).trajectory
    x_t = _tensor_of(trajectory.leaf(0).latent)
    leaf = trajectory.leaf(1)

    def step_1(generator):
        scheduler = samplers.rebuild_scheduler("EulerAncestralDiscreteScheduler",
                                               model.generate(settings, commit_steps=False).scheduler_config)
        scheduler.set_timesteps(settings.steps)
        return scheduler.step(_tensor_of(leaf.model_output), _tensor_of(leaf.timestep), x_t,
                              generator=generator, return_dict=False)[0]

    assert _bytes_of(step_1(torch.Generator("cpu").manual_seed(1))) != leaf.latent  # other noise
    replay = torch.Generator("cpu").manual_seed(settings.seed)
    torch.randn(tuple(x_t.shape), generator=replay)  # the draw that made x_T comes first
    assert _bytes_of(step_1(replay)) == leaf.latent


@pytest.mark.parametrize("sampler", [None, "Euler a"])
def test_recording_changes_nothing_and_patches_nothing(model, one_thread, sampler) -> None:
    own = model.pipe.scheduler
    settings = _settings(sampler=sampler)
    recorded, plain = model.generate(settings), model.generate(settings, commit_steps=False)
    assert recorded.image.tobytes() == plain.image.tobytes()
    assert plain.trajectory is None and recorded.trajectory.steps == 3
    assert model.pipe.scheduler is own and "step" not in vars(own)  # the per-run copy was wrapped
    assert recorded.trajectory.root == model.generate(settings).trajectory.root  # deterministic


def test_the_node_attests_version_3_with_the_recorded_root(model) -> None:
    from pointillist.attestation import PREDICATE_TYPE_V3, verify_image
    from pointillist.node.service import JobService, ServedModels
    from pointillist.protocol.identity import Identity
    from pointillist.protocol.jobs import new_job_request, open_job, sign_job

    node, requester = Identity(bytes(range(32))), Identity(bytes(range(32, 64)))
    service = JobService(node, ServedModels([model]))
    for sampler in (None, "DPM++ 2M"):
        request = new_job_request(node=node.peer_id, model=model.name, prompt="a fox", seed=7, steps=2,
                                  guidance=5.0, width=32, height=32, now=1795341600, sampler=sampler)
        job = open_job(sign_job(requester, request))
        generated = model.generate(job.request.settings)
        report = verify_image(service._attest(job, model, generated))
        assert report.ok, report.checks
        record = report.statement.record
        assert record.predicate_type == PREDICATE_TYPE_V3 and record.settings.sampler == sampler
        assert record.trajectory == generated.trajectory.commitment()
        assert record.scheduler_config == generated.scheduler_config


# --- a real node process ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("sampler", [None, "DPM++ 2M"])
def test_node_returns_a_v3_image_that_verifies_and_keeps_its_trajectory(shared_node, tmp_path, sampler) -> None:
    import time

    import torch
    import trio

    from pointillist.node.results import ResultStore
    from pointillist.node.state_store import DB_NAME, Database
    from pointillist.protocol.identity import Identity
    from pointillist.protocol.jobs import new_job_request, sign_job
    from support import exchange, job_frame, run_cli

    requester = Identity.generate()
    request = new_job_request(node=shared_node.peer_id, model="tiny-sd", prompt="a red fox", seed=4321, steps=3,
                              guidance=7.5, width=64, height=64, now=int(time.time()), sampler=sampler)
    replies = trio.run(exchange, shared_node, job_frame(sign_job(requester, request)), requester)
    assert replies[-1]["t"] == "result", replies[-1]
    out = tmp_path / "fox.png"
    out.write_bytes(replies[-1]["png"])

    verify = run_cli(["verify", str(out), "--expect-node", shared_node.peer_id, "--json"], tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    statement = json.loads(verify.stdout)["statement"]
    assert statement["predicateType"] == "https://pointillist.dev/attestation/generation/v3"
    predicate = statement["predicate"]
    assert predicate["sampler"] == sampler and predicate["schedulerConfig"]
    signed = predicate["trajectory"]

    # The node stored the leaves with the result (before it sent the result): read its database.
    db = Database(shared_node.home / "node" / DB_NAME)
    try:
        trajectory = ResultStore(db, keep_s=3600, max_bytes=2**40).trajectory_for(request.job_id)
    finally:
        db.close()
    assert trajectory is not None
    assert trajectory.commitment().to_json_dict() == signed
    assert signed["steps"] == 3 and signed["leaves"] == 4  # DDIM and DPM++ 2M: one step per timestep
    x_t = trajectory.leaf(0).latent  # binds the seed
    drawn = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(4321), dtype=torch.float32)
    assert x_t == _bytes_of(drawn)
    leaf_hash = trajectory.leaf_hashes[2]
    assert T.verify_inclusion(2, signed["leaves"], leaf_hash, trajectory.proof(2), bytes.fromhex(signed["root"]))


# --- storage: with the result, for the challenge window ---------------------------------------------


def _small_trajectory(k: int = 3) -> T.Trajectory:
    builder = T.TrajectoryBuilder()
    builder.initial(_tensor([0.5] * 8))
    for i in range(1, k + 1):
        builder.step(T.TensorBytes("int64", (), struct.pack("<q", 1000 - i)), _tensor([i] * 8), _tensor([-i] * 8))
    return builder.finish()


def test_trajectory_is_stored_with_the_result_counted_and_pruned_with_it(tmp_path) -> None:
    from pointillist.node.policy import Policy, ResultPolicy
    from pointillist.node.state_store import open_node_state

    now = [0.0]
    state = open_node_state(tmp_path, Policy(results=ResultPolicy(keep_hours=100 / 3600, max_mb=1.0)),
                            clock=lambda: now[0])
    try:
        trajectory = _small_trajectory()
        data = trajectory.to_bytes()
        state.results.put("a" * 32, "req", b"png", trajectory=data)
        state.results.put("b" * 32, "req", b"png-without")
        assert state.stored() == (2, 3 + len(data) + 11)  # the size bound counts the leaves too
        kept = state.trajectory_for("a" * 32)
        assert kept.leaves == trajectory.leaves and kept.root == trajectory.root
        assert state.trajectory_for("b" * 32) is None and state.trajectory_for("c" * 32) is None
        assert state.trajectory_for("not an id") is None
        assert state.results.get("a" * 32).png == b"png"  # fetch is unchanged
        now[0] = 101.0  # past the challenge window (the results' retention): gone, and pruned
        assert state.trajectory_for("a" * 32) is None
        while state.prune_pass():
            pass
        assert state.stored() == (0, 0)
        with state.db.lock:
            assert state.db.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    finally:
        state.close()


def test_a_database_from_before_step_commitments_gets_the_column(tmp_path) -> None:
    import sqlite3

    from pointillist.node.policy import Policy
    from pointillist.node.state_store import DB_NAME, open_node_state

    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript("""
        CREATE TABLE results (job_id TEXT PRIMARY KEY, requester TEXT NOT NULL, created REAL NOT NULL,
                              size INTEGER NOT NULL, png BLOB NOT NULL);
        CREATE TABLE replay (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
    """)
    conn.execute("INSERT INTO results VALUES (?, 'req', 0, 3, x'706e67')", ("a" * 32,))
    conn.commit()
    conn.close()
    state = open_node_state(tmp_path, Policy(), clock=lambda: 1.0)
    try:
        assert state.results.get("a" * 32).png == b"png" and state.trajectory_for("a" * 32) is None
        state.results.put("b" * 32, "req", b"png", trajectory=_small_trajectory(1).to_bytes())
        assert state.trajectory_for("b" * 32).steps == 1
    finally:
        state.close()


def test_damaged_stored_trajectory_is_a_one_line_error(tmp_path) -> None:
    from pointillist.node.policy import Policy
    from pointillist.node.state_store import open_node_state

    state = open_node_state(tmp_path, Policy(), clock=lambda: 1.0)
    try:
        state.results.put("a" * 32, "req", b"png", trajectory=_small_trajectory().to_bytes()[:-3])
        with pytest.raises(VerificationError, match="truncated"):
            state.trajectory_for("a" * 32)
    finally:
        state.close()


# --- predicate generation/v3 -----------------------------------------------------------------------


def test_v3_records_round_trip_and_build_refuses_what_parse_would() -> None:
    import dataclasses

    from support import load_vector_generator

    from pointillist.attestation import attest, parse_statement
    from pointillist.protocol.errors import UsageError
    from pointillist.protocol.jobs import sign_job

    V = load_vector_generator()
    commitment = V.synthetic_trajectory().commitment()
    for sampler in (None, V.SAMPLER):
        request = V.job_request("7123456789abcdef0123456789abcdef", "a fox", sampler=sampler, steps=5)
        record = dataclasses.replace(V.record_for(sign_job(V.REQUESTER, request), request), trajectory=commitment,
                                     scheduler_config=dict(V.OWN_SCHEDULER_CONFIG))
        parsed = parse_statement(attest(V.NODE, record, V.gradient()).payload).record
        assert parsed == record and parsed.trajectory == commitment and parsed.settings.sampler == sampler
        assert parsed.predicate_type.endswith("/generation/v3")
    with pytest.raises(UsageError, match="needs its scheduler config"):
        attest(V.NODE, dataclasses.replace(record, scheduler_config=None), V.gradient())
    with pytest.raises(UsageError, match="must be a TrajectoryCommitment"):
        attest(V.NODE, dataclasses.replace(record, trajectory=commitment.to_json_dict()), V.gradient())
    with pytest.raises(UsageError, match="leaves must equal steps"):
        attest(V.NODE, dataclasses.replace(record, trajectory=dataclasses.replace(commitment, leaves=5)), V.gradient())
