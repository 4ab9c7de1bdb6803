"""What ``pointillist verify`` costs as a process, against the least any verifier must do.

One run writes a signed, attested RGB image (--size, default 512x512) to a temporary folder and
times, interleaved run by run so that load from elsewhere on a shared machine falls on both:

  floor    a Python process that reads the PNG, decodes it with Pillow, takes the sha256 of its
           RGB8 pixels and checks one Ed25519 signature (PyNaCl) over the attestation's bytes
  verify   the real command: python -m pointillist.cli verify IMAGE (every check of
           docs/attestation.md, section 7)
  batch    the real command on --batch copies of the image in one call, per image

and prints medians over --runs, the ratio verify / floor (goal <= 1.5) and verify's own time
(goal <= 0.3 s). Both processes run this interpreter with the same environment, with bytecode
caching on as for an installed command (into a temporary PYTHONPYCACHEPREFIX, filled by an
uncounted first run): under PYTHONDONTWRITEBYTECODE=1 every run would compile our modules from
source, ~10 ms that no user pays. Nothing outside this repository's virtual environment is needed.

    .venv/bin/python bench/bench_verify.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 1.5
GOAL_SECONDS = 0.3

#: The floor: what any verifier of this format must do, written as plainly as possible.
FLOOR = """
import hashlib, io, sys
from PIL import Image
from nacl.signing import VerifyKey
folder = sys.argv[1]
with open(folder + "/image.png", "rb") as f:
    data = f.read()
with Image.open(io.BytesIO(data)) as image:
    image.load()
    digest = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
with open(folder + "/signed.bin", "rb") as f:
    message = f.read()
with open(folder + "/key.bin", "rb") as f:
    key = f.read()
VerifyKey(key[:32]).verify(message, key[32:])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="images per call for the batch figure (0: skip)")
    args = ap.parse_args()
    if args.runs < 1 or args.size < 8 or args.size % 8 or args.batch < 0:
        ap.error("--runs >= 1, --size a multiple of 8 from 8, --batch >= 0")

    with tempfile.TemporaryDirectory(prefix="pointillist-bench-verify-") as tmp:
        png_bytes, times = measure(args, Path(tmp))
    report(args, png_bytes, times)


def measure(args, folder: Path) -> tuple[int, dict[str, list[float]]]:
    png_bytes = write_inputs(folder, args.size)
    batch = [str(folder / f"copy-{i}.png") for i in range(args.batch)]
    for name in batch:
        Path(name).write_bytes((folder / "image.png").read_bytes())

    commands = {
        "floor": [sys.executable, "-c", FLOOR, str(folder)],
        "verify": [sys.executable, "-m", "pointillist.cli", "verify", str(folder / "image.png")],
    }
    if batch:
        commands["batch"] = [sys.executable, "-m", "pointillist.cli", "verify", *batch]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    times: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(args.runs + 1):  # run 0 fills the page and bytecode caches, not counted
        for name, command in commands.items():
            elapsed = timed(command, env)
            if run:
                times[name].append(elapsed)
    return png_bytes, times


def write_inputs(folder: Path, size: int) -> int:
    """The attested image, and the floor's inputs: the signed PAE bytes, key and signature."""
    from PIL import Image

    from pointillist.attestation import GenerationRecord, attest, embed_provenance
    from pointillist.protocol.dsse import pae
    from pointillist.protocol.identity import Identity, public_key_from_peer_id
    from pointillist.protocol.jobs import new_job_request, open_job, sign_job

    node, requester = Identity(bytes(range(32))), Identity(bytes(range(32, 64)))
    # Noise on a gradient: compresses about as badly as a generated image does.
    noise = [Image.effect_noise((size, size), 40) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((size, size))
    image = Image.merge("RGB", [Image.blend(gradient, n, 0.5) for n in noise])
    request = new_job_request(node=node.peer_id, model="tiny-sd", prompt="a lighthouse at dusk, oil painting",
                              negative_prompt="blurry", seed=1234, steps=20, guidance=7.5, width=size,
                              height=size, now=int(time.time()))
    job = open_job(sign_job(requester, request))
    record = GenerationRecord(
        model_name="tiny-sd", model_digest="ab" * 32, pipeline="StableDiffusionPipeline",
        scheduler="PNDMScheduler", settings=request.settings, dtype="float32", device="cpu", torch_threads=1,
        libraries={"torch": "2", "diffusers": "0", "transformers": "4", "pointillist": "0.1.0"},
        job_id=request.job_id, requester=requester.peer_id, request_sha256=job.payload_sha256,
        node=node.peer_id, created_at="2026-11-22T10:00:05Z",
    )
    envelope = attest(node, record, image)
    png = embed_provenance(image, envelope, job.envelope)
    (folder / "image.png").write_bytes(png)
    (folder / "signed.bin").write_bytes(pae(envelope.payload_type, envelope.payload))
    (folder / "key.bin").write_bytes(public_key_from_peer_id(node.peer_id) + envelope.sig)
    check = subprocess.run([sys.executable, "-m", "pointillist.cli", "verify", str(folder / "image.png")],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"the bench image does not verify:\n{check.stdout}{check.stderr}")
    return len(png)


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def report(args, png_bytes: int, times: dict[str, list[float]]) -> None:
    floor, verify = statistics.median(times["floor"]), statistics.median(times["verify"])
    ratio = verify / floor
    print(f"image: {args.size}x{args.size} RGB, PNG {png_bytes} bytes; {args.runs} runs; python {sys.version.split()[0]}")
    print(f"floor process          median {floor * 1000:7.1f} ms   (min {min(times['floor']) * 1000:.1f})")
    print(f"verify process         median {verify * 1000:7.1f} ms   (min {min(times['verify']) * 1000:.1f})")
    if "batch" in times:
        batch = statistics.median(times["batch"])
        print(f"verify of {args.batch} in one call median {batch * 1000:7.1f} ms   "
              f"({batch / args.batch * 1000:.1f} ms per image)")
    print(f"ratio verify / floor          {ratio:7.2f}   goal <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    print(f"verify time                   {verify:7.3f} s goal <= {GOAL_SECONDS} s: "
          f"{'met' if verify <= GOAL_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
