"""The model digest of a multi-GB checkpoint against ``sha256sum`` of the same file, same run.

Writes one file of --size-gib of random bytes (a checkpoint's bytes are as incompressible) to a
temporary folder and times, interleaved run by run so that load from elsewhere falls on both, each
as a whole process over the file already in the page cache (an uncounted first read puts it there):

  sha256sum  coreutils ``sha256sum FILE``
  digest     ``compute_model_digest(FILE)`` (node/model_digest.py, no cache): for a single file this
             is the file's sha256, so the two must agree, and the bench checks they do
  cached     ``model_digest(FILE)`` with its cache filled: the cost of a node restart

and prints medians over --runs and the speed ratio sha256sum time / digest time (issue 8's goal:
>= 0.9). Needs coreutils' sha256sum on PATH and --size-gib of free space in the temporary folder.

    .venv/bin/python bench/bench_model_digest.py --size-gib 2 --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 0.9
CHUNK = 64 << 20

DIGEST = "import sys; from pointillist.node.model_digest import compute_model_digest as d; print(d(sys.argv[1]))"
CACHED = ("import sys; from pointillist.node.model_digest import model_digest as d; "
          "print(d(sys.argv[1], cache_dir=sys.argv[2]))")


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out.split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("error: sha256sum (coreutils) is not on PATH", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.safetensors"
        left = int(args.size_gib * (1 << 30))
        with open(path, "wb") as f:
            while left > 0:
                f.write(os.urandom(min(CHUNK, left)))
                left -= CHUNK
        commands = {
            "sha256sum": ["sha256sum", str(path)],
            "digest": [sys.executable, "-c", DIGEST, str(path)],
            "cached": [sys.executable, "-c", CACHED, str(path), tmp],
        }
        answers = {name: timed(cmd)[1] for name, cmd in commands.items()}  # page cache, digest cache
        if len(set(answers.values())) != 1:
            print(f"error: the digests disagree: {answers}", file=sys.stderr)
            return 1
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd)[0])

    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:10s} median {median[name]:7.3f} s   (min {min(values):.3f}, max {max(values):.3f})")
    ratio = median["sha256sum"] / median["digest"]
    print(f"digest speed / sha256sum speed: {ratio:.2f}x (goal >= {GOAL_RATIO}) "
          f"-- {args.size_gib:g} GiB, {args.runs} runs, file in the page cache")
    return 0 if ratio >= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
