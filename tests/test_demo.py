"""The README's first command runs ``pointillist demo``: it must work as shipped."""

from __future__ import annotations

import pytest

from pointillist.attestation.verify import verify_image
from support import run_cli

pytestmark = pytest.mark.integration


def test_demo_runs_three_nodes_and_writes_a_verified_image(tmp_path):
    result = run_cli(["demo", "--dir", str(tmp_path / "demo")], tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and "nodes stopped" in result.stdout
    report = verify_image((tmp_path / "demo" / "demo.png").read_bytes())
    assert report.ok
    logs = [(tmp_path / "demo" / f"node{i}" / "node.log").read_text() for i in range(3)]
    assert all("node stopped" in log and "Traceback" not in log for log in logs)
