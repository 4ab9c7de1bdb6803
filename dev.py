#!/usr/bin/env python3
"""Set up a virtual environment in .venv and run the demo or the tests.

    python3 dev.py demo     # install, then start 3 local nodes, submit a job, verify the image
    python3 dev.py test     # install (with test extras), then run the test suite
    python3 dev.py setup    # install only

Needs nothing but Python >= 3.11. Installation is skipped when pyproject.toml has not changed
since the last one. PyTorch: if .venv has no torch yet, the CPU build torch==2.13.0 is installed;
to use a GPU, install PyTorch's CUDA build into .venv first (see README) and it is kept.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".pointillist-installed"
CPU_TORCH = "torch==2.13.0"


def sh(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def has_torch() -> bool:
    return subprocess.run([str(PY), "-c", "import torch"], capture_output=True).returncode == 0


def setup(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python >= 3.11 is needed, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not has_torch():
        sh(*pip, CPU_TORCH)
    sh(*pip, "-e", f".{extras}")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "demo"
    rest = argv[1:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if action == "setup":
        setup("[test]")
        return 0
    if action == "demo":
        setup("[test]")
        return subprocess.run([str(BIN / "pointillist"), "demo", *rest], cwd=ROOT, env=env).returncode
    if action == "test":
        setup("[test]")
        return subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
