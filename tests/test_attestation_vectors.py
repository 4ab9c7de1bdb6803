"""The committed test vectors in docs/attestation-vectors give their documented outcomes, and
generate.py reproduces them byte for byte."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pointillist.attestation import extract_provenance, verify_attestation, verify_image
from pointillist.protocol.dsse import Envelope
from pointillist.protocol.errors import RemoteError, VerificationError
from pointillist.protocol.jobs import open_job
from support import load_vector_generator

from support import VECTORS  # noqa: E402
INDEX = json.loads((VECTORS / "index.json").read_text(encoding="utf-8"))




def asset(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def vector_id(vector: dict) -> str:
    options = ",".join(f"{k}" for k in vector.get("options", {}))
    return vector["file"] + (f"[{options}]" if options else "") + f"-{vector['expect']}"


@pytest.mark.parametrize("vector", INDEX["vectors"], ids=vector_id)
def test_vector_outcome(vector: dict) -> None:
    data = asset(vector["file"])
    if vector["kind"] == "png":
        report = verify_image(data, **vector.get("options", {}))
        failed = [c for c in report.checks if c.ok is False]
        if vector["expect"] == "valid":
            assert report.ok, failed
            assert not failed
            assert report.statement is not None and report.job is not None
        else:
            assert not report.ok
            assert failed, report.checks
            first = failed[0]
            assert first.name == vector["check"], failed
            assert vector["reason"] in first.detail
    elif vector["kind"] == "envelope":
        image = extract_provenance(asset(vector["image"])).image
        if vector["expect"] == "valid":
            verify_attestation(Envelope.from_json(data), image)
        else:
            with pytest.raises(VerificationError) as info:
                verify_attestation(Envelope.from_json(data), image)
            assert vector["reason"] in str(info.value)
    elif vector["kind"] == "job":
        if vector["expect"] == "valid":
            open_job(Envelope.from_json(data))
        else:
            with pytest.raises((VerificationError, RemoteError)) as info:
                open_job(Envelope.from_json(data))
            assert vector["reason"] in str(info.value)
    elif vector["kind"] == "verdict":  # remote audits (tests/test_remote_audit.py)
        from pointillist.attestation.audit_verdict import open_verdict
        from pointillist.attestation.pixels import pixel_subject

        if vector["expect"] == "valid":
            record = open_verdict(Envelope.from_json(data))
            assert record.subject == pixel_subject(extract_provenance(asset(vector["image"])).image)
        else:
            with pytest.raises(VerificationError) as info:
                open_verdict(Envelope.from_json(data))
            assert vector["reason"] in str(info.value)
    elif vector["kind"] == "audit-job":
        from pointillist.protocol.audit_job import open_audit_job

        assert vector["expect"] == "valid"
        open_audit_job(Envelope.from_json(data))
    elif vector["kind"] == "merkle":  # step commitments, format version 3 (tests/test_trajectory.py)
        from test_trajectory import check_merkle_document

        check_merkle_document(json.loads(data))
    else:
        pytest.fail(f"unknown vector kind {vector['kind']!r}")


def test_index_lists_every_file() -> None:
    listed = {v["file"] for v in INDEX["vectors"]} | {v["image"] for v in INDEX["vectors"] if "image" in v}
    on_disk = {p.name for p in VECTORS.iterdir() if p.is_file()} - {"generate.py", "index.json"}
    assert listed == on_disk


def test_every_check_and_outcome_is_covered() -> None:
    checks = {v["check"] for v in INDEX["vectors"] if v["kind"] == "png" and v["expect"] == "invalid"}
    assert checks == {"attestation", "signature", "pixels", "model", "node", "job binding", "parameters"}


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path: Path) -> None:
    generator = load_vector_generator()
    assert generator.main(["generate.py", str(tmp_path)]) == 0
    generated = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in VECTORS.iterdir() if p.is_file() and p.name != "generate.py"}
    assert sorted(generated) == sorted(committed)
    differing = [name for name in generated if generated[name] != committed[name]]
    assert not differing, f"regenerate with docs/attestation-vectors/generate.py (zlib or Pillow changed?): {differing}"
