"""``--models-dir``: the folder scan, and a node process serving two models from a folder, one
warm at a time, saying which in ``node status`` and in its capacity record."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pointillist.node.model_folder import find_models, model_names
from pointillist.protocol.errors import UsageError
from support import REPO, run_cli

TINY = REPO / "node" / "models" / "tiny-sd"


def test_the_scan_takes_checkpoints_and_diffusers_folders_only(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"x")
    (tmp_path / "a.ckpt").write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model_index.json").write_text("{}")
    (tmp_path / "vae").mkdir()  # no model index: not a pipeline
    for junk in ("b.preview.png", "b.yaml", ".hidden.safetensors", "notes.txt"):
        (tmp_path / junk).write_bytes(b"x")
    found = find_models(tmp_path)
    assert [p.name for p in found] == ["a.ckpt", "b", "b.safetensors"]
    assert model_names(found) == ["a", "b", "b.safetensors"]  # a file and a folder named b


def test_a_missing_or_empty_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        find_models(tmp_path / "nope")
    with pytest.raises(UsageError, match="no models in"):
        find_models(tmp_path)


def two_models(folder: Path) -> None:
    """Two tiny models with different digests: the second's scheduler config differs."""
    shutil.copytree(TINY, folder / "tiny-a")
    shutil.copytree(TINY, folder / "tiny-b")
    config_path = folder / "tiny-b" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["timestep_spacing"] = "trailing"
    config_path.write_text(json.dumps(config))


@pytest.mark.integration
def test_a_node_serves_a_folder_of_models_one_warm_at_a_time(node_process, tmp_path):
    two_models(tmp_path / "models")
    node = node_process("--models-dir", str(tmp_path / "models"))
    before = {m["name"]: m["warm"] for m in node.status()["models"]}
    assert before == {"tiny-a": True, "tiny-b": False}

    out = tmp_path / "b.png"
    done = run_cli(["submit", "--peer", node.addr, "--model", "tiny-b", "a harbour", "--steps", "3",
                    "--size", "64x64", "--out", str(out)], tmp_path / "requester")
    assert done.returncode == 0 and "verified" in done.stderr, done.stderr
    verified = run_cli(["verify", str(out), "--json"], tmp_path / "requester")
    digest_b = next(m["digest"] for m in node.status()["models"] if m["name"] == "tiny-b")
    assert digest_b in verified.stdout

    after = {m["name"]: m["warm"] for m in node.status()["models"]}
    assert after == {"tiny-a": False, "tiny-b": True}
    # The capacity record says so too (re-published on the swap).
    deadline = time.monotonic() + 60
    while True:
        peers = run_cli(["peers", "--bootstrap", node.addr, "--wait", "0", "--json"], tmp_path / "requester")
        assert peers.returncode == 0, peers.stderr
        (record,) = json.loads(peers.stdout)
        warm = {m["name"]: m["warm"] for m in record["models"]}
        if warm == after or time.monotonic() > deadline:
            break
    assert warm == after
    assert "Traceback" not in node.log()
