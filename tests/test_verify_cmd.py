"""``pointillist verify`` on several files, and what the command imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pointillist.cli.main import main
from support import VECTORS

VALID, TAMPERED, NO_JOB = (str(VECTORS / n) for n in ("valid.png", "tampered-seed.png", "no-job.png"))


def test_several_files_one_report_each_in_order(capsys) -> None:
    assert main(["verify", VALID, TAMPERED, VALID]) == 1
    blocks = capsys.readouterr().out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [VALID, TAMPERED, VALID]
    assert [b.splitlines()[-1] for b in blocks] == ["verified", "NOT VERIFIED", "verified"]


def test_all_verified_exits_0(capsys) -> None:
    assert main(["verify", VALID, str(VECTORS / "valid-palette.png")]) == 0
    assert capsys.readouterr().out.count("\nverified\n") == 2


def test_one_file_prints_no_title(capsys) -> None:
    assert main(["verify", VALID]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("ok    attestation")


def test_json_of_several_is_a_list_with_files(capsys) -> None:
    assert main(["verify", "--json", VALID, NO_JOB]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [(r["file"], r["ok"]) for r in reports] == [(VALID, True), (NO_JOB, False)]
    assert reports[0]["job"]["jobId"] == "00112233445566778899aabbccddeeff"
    assert {c["name"]: c["ok"] for c in reports[1]["checks"]}["job binding"] is False


def test_an_unreadable_file_exits_2_after_checking_the_others(capsys, tmp_path) -> None:
    missing = tmp_path / "missing.png"
    assert main(["verify", VALID, str(missing), TAMPERED]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: cannot read {missing}: No such file or directory\n"
    assert [b.splitlines()[-1] for b in out.split("\n\n")] == ["verified", "NOT VERIFIED"]


def test_file_names_are_printed_on_one_line(capsys, tmp_path) -> None:
    odd = tmp_path / "a\nb\x1b[2J.png"
    shutil.copy(VALID, odd)
    assert main(["verify", str(odd), VALID]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("a\\nb\\x1b[2J.png")


@pytest.mark.parametrize("argv", [["verify", VALID, TAMPERED], ["verify", "--json", VALID]])
def test_verify_process_imports_no_network_torch_or_pydantic(argv, tmp_path) -> None:
    # The verify path must start about as fast as decoding the PNG (bench/bench_verify.py):
    # pydantic alone costs more than the whole check.
    code = (
        "import sys; from pointillist.cli.main import main\n"
        f"main({argv!r})\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'libp2p', 'trio', 'pydantic', 'msgpack')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "POINTILLIST_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


def test_version_2_image_verifies_and_its_json_shows_the_sampler(capsys) -> None:
    assert main(["verify", "--json", str(VECTORS / "valid-v2.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    predicate = report["statement"]["predicate"]
    assert report["statement"]["predicateType"] == "https://pointillist.dev/attestation/generation/v2"
    assert predicate["sampler"] == report["job"]["sampler"] == "DPM++ 2M Karras"
    assert predicate["scheduler"] == "DPMSolverMultistepScheduler"
    assert predicate["schedulerConfig"]["use_karras_sigmas"] is True
    assert main(["verify", str(VECTORS / "v2-sampler-mismatch.png")]) == 1
    assert "differs from the attestation in sampler" in capsys.readouterr().out
