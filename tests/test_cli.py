"""The CLI as a user meets it: in process through ``main(argv)``, and cold-start imports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pointillist.cli.main import main
from support import run_cli

from support import VECTORS  # noqa: E402


def test_verify_valid_vector(capsys):
    assert main(["verify", str(VECTORS / "valid.png")]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("verified")
    assert all(line.split()[0] in ("ok", "skip") for line in out.splitlines()[:-1])


@pytest.mark.parametrize("name,check", [("tampered-pixels.png", "pixels"), ("tampered-seed.png", "signature"),
                                        ("job-mismatch.png", "job binding"), ("reencoded-no-chunks.png", "attestation")])
def test_verify_tampered_vectors_fail_with_the_right_line(capsys, name, check):
    assert main(["verify", str(VECTORS / name)]) == 1
    lines = capsys.readouterr().out.splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert failing and failing[0].split(None, 1)[1].startswith(check)
    assert lines[-1] == "NOT VERIFIED"


def test_verify_json_and_expectations(capsys):
    assert main(["verify", str(VECTORS / "valid.png"), "--json", "--expect-model", "f" * 64]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {c["name"]: c["ok"] for c in report["checks"]}["model"] is False


def test_missing_file_is_one_line_error(capsys, tmp_path):
    assert main(["verify", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and err.count("\n") == 1


def test_not_a_png_fails_cleanly(capsys):
    assert main(["verify", str(VECTORS / "not-a-png.bin")]) == 1
    assert "not a readable PNG" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["submit", "x", "--peer", "/ip4/127.0.0.1/tcp/1"], "not a peer address"),
    (["submit", "x", "--peer", "nonsense"], "not a peer address"),
    (["node", "start", "--listen", "/dns/nowhere"], "listen address"),
])
def test_user_mistakes_are_one_line_errors(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.setenv("POINTILLIST_HOME", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["submit", "x", "--size", "big", "--peer", "p"], ["submit", "x", "--seed", "-1", "--peer", "p"],
                                  ["submit", "x", "--steps", "0", "--peer", "p"], ["frobnicate"]])
def test_bad_arguments_exit_2_with_usage(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_submit_to_a_dead_peer_reports_unreachable(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = "12D3KooWHFd1gyNYFqxt7ke9FY2VoVVWY2XSPhvL9vg2pB6wQGfa"
    result = run_cli(["submit", "x", "--peer", f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}", "--quiet"], tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("argv", [["--help"], ["verify", str(VECTORS / "valid.png")], ["keys"]])
def test_fast_commands_do_not_import_heavy_modules(argv, tmp_path):
    code = (
        "import sys; from pointillist.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'libp2p', 'trio') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    env = {**os.environ, "POINTILLIST_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_expect_model_takes_a_digest_not_a_name(capsys):
    assert main(["verify", str(VECTORS / "valid.png"), "--expect-model", "stable-diffusion-v1-5"]) == 2
    assert "not a name" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["submit", "x", "--timeout", "-1", "--peer", "p"],
                                  ["submit", "x", "--timeout", "nan", "--peer", "p"],
                                  ["peers", "--wait", "-1"]])
def test_bad_numbers_are_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
