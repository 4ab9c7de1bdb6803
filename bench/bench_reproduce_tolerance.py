"""Calibrating ``verify --reproduce``'s tolerance: how far apart honest and dishonest re-runs are.

On the embedded model (node/models/tiny-sd, CPU, float32), for --seeds seeds, one reference image
per seed (1 torch thread, the job below) is compared with re-runs that are

  honest      the same claim under other conditions: 2 and 4 torch threads, and a reproduce run
              (``node.reproduce.Reproducer`` on the reference's record: a second model load,
              the product's own code path, expected bit for bit)
  dishonest   another generation signed as this one: the UNet's weights times (1 + 0.1 % Gaussian
              noise), another prompt, guidance 7.0 for 7.5, 19 steps for 20, another seed, another
              sampler (Euler for the model's own DDIM)

and prints, per case, the mean absolute difference over every RGB value (levels 0..255) and the
largest single difference (min / median / max over the seeds), the median PSNR, the separation
ratio (the least dishonest mean / the most honest one) and the threshold their geometric mean
suggests, next to the product's constants (``MAX_MEAN_ABS_DIFF``, ``MAX_ABS_DIFF``) and whether
they classify every run correctly. The honest cases depend on the CPU: on another instruction set
2 threads may agree with 1 bit for bit, or differ elsewhere.

    .venv/bin/python bench/bench_reproduce_tolerance.py            # 20 seeds, 64x64, 20 steps
    .venv/bin/python bench/bench_reproduce_tolerance.py --seeds 40 --size 96

About 1.5 minutes with the defaults on 2 idle cores (159 s on the shared sandbox, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the reference's thread count, before torch loads

from pointillist.attestation import GenerationRecord  # noqa: E402
from pointillist.node import reproduce as R  # noqa: E402
from pointillist.node.model_digest import model_digest  # noqa: E402
from pointillist.protocol.settings import GenerationSettings  # noqa: E402

PROMPT = "a lighthouse at dusk, pointillism"
NOISE = 0.001  # relative Gaussian noise on every UNet weight: 0.1 %


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds per case (default 20)")
    p.add_argument("--size", type=int, default=64, help="image side, a multiple of 8 (default 64)")
    p.add_argument("--steps", type=int, default=20, help="steps of the honest job (default 20)")
    args = p.parse_args()
    if args.seeds < 2 or args.size % 8 or args.size < 8 or args.steps < 2:
        p.error("--seeds >= 2, --size a multiple of 8, --steps >= 2")

    import torch

    from pointillist.node.loading import embedded_model_path, load_model
    from pointillist.node.pipeline import library_versions
    from pointillist.node.version import POINTILLIST_VERSION

    start = time.perf_counter()
    torch.set_num_threads(1)
    path = embedded_model_path()
    model = load_model(path, device="cpu", dtype="float32")
    noisy = load_model(path, device="cpu", dtype="float32")
    noise = torch.Generator().manual_seed(2026)
    with torch.no_grad():
        for param in noisy.pipe.unet.parameters():
            param.mul_(1 + NOISE * torch.randn(param.shape, generator=noise))
    reproducer = R.Reproducer(path, device="cpu")
    digest = model_digest(path)
    libraries = {**library_versions(), "pointillist": POINTILLIST_VERSION}

    def run(m, settings: GenerationSettings, threads: int = 1):
        torch.set_num_threads(threads)
        try:
            return m.generate(settings).image
        finally:
            torch.set_num_threads(1)

    def record(settings: GenerationSettings) -> GenerationRecord:
        return GenerationRecord(
            model_name="tiny-sd", model_digest=digest, pipeline=type(model.pipe).__name__,
            scheduler=type(model.pipe.scheduler).__name__, settings=settings, dtype="float32", device="cpu",
            torch_threads=1, libraries=libraries, job_id="0" * 32, requester="12D3KooW", request_sha256="0" * 64,
            node="12D3KooW", created_at="2026-11-23T00:00:00Z")

    honest = {
        "2 threads": lambda s, ref: R.compare_pixels(run(model, s, 2), ref),
        "4 threads": lambda s, ref: R.compare_pixels(run(model, s, 4), ref),
        "reproduce run": lambda s, ref: reproducer.reproduce(record(s), ref).difference,
    }
    dishonest = {
        "UNet x (1 + 0.1% noise)": lambda s, ref: R.compare_pixels(run(noisy, s), ref),
        "another prompt": lambda s, ref: R.compare_pixels(run(model, dataclasses.replace(s, prompt="a red hen")), ref),
        "guidance 7.0 for 7.5": lambda s, ref: R.compare_pixels(run(model, dataclasses.replace(s, guidance=7.0)), ref),
        f"{args.steps - 1} steps for {args.steps}": lambda s, ref: R.compare_pixels(
            run(model, dataclasses.replace(s, steps=args.steps - 1)), ref),
        "another seed": lambda s, ref: R.compare_pixels(run(model, dataclasses.replace(s, seed=s.seed + 10_000)), ref),
        "sampler Euler for DDIM": lambda s, ref: R.compare_pixels(
            run(model, dataclasses.replace(s, sampler="Euler")), ref),
    }
    results: dict[str, list[R.PixelDifference]] = {name: [] for name in (*honest, *dishonest)}
    for seed in range(args.seeds):
        settings = GenerationSettings(prompt=PROMPT, negative_prompt="", seed=seed, steps=args.steps, guidance=7.5,
                                      width=args.size, height=args.size)
        reference = run(model, settings)
        for name, case in (*honest.items(), *dishonest.items()):
            difference = case(settings, reference)
            assert difference is not None, f"{name}: no pixels compared"
            results[name].append(difference)
        print(f"seed {seed + 1}/{args.seeds} done, {time.perf_counter() - start:.0f} s", file=sys.stderr)

    print(f"embedded model, CPU float32, {args.size}x{args.size}, {args.steps} steps, guidance 7.5, "
          f"{args.seeds} seeds, reference on 1 torch thread; {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"{'case':<26} {'mean |diff| (levels) min / median / max':>42} {'max |diff| min/med/max':>24} "
          f"{'PSNR dB med':>12} {'values differing, max':>22}")

    def row(name: str, kind: str) -> None:
        diffs = results[name]
        means = [d.mean_abs for d in diffs]
        maxes = [d.max_abs for d in diffs]
        psnr = statistics.median(d.psnr_db for d in diffs)
        print(f"{kind} {name:<24} {min(means):>12.5f} / {statistics.median(means):>9.5f} / {max(means):>9.5f}   "
              f"{min(maxes):>6} / {statistics.median(maxes):>5g} / {max(maxes):>3}   "
              f"{'inf' if math.isinf(psnr) else f'{psnr:.1f}':>10} {max(d.differing for d in diffs):>22}")

    for name in honest:
        row(name, "H")
    for name in dishonest:
        row(name, "D")

    worst_honest = max(d.mean_abs for name in honest for d in results[name])
    best_dishonest = min(d.mean_abs for name in dishonest for d in results[name])
    values = args.size * args.size * 3
    floor = worst_honest or 1 / values  # all honest identical: one value one level off is the floor
    suggested = math.sqrt(floor * best_dishonest)
    print(f"most honest mean {worst_honest:.5f} (max |diff| {max(d.max_abs for n in honest for d in results[n])}), "
          f"least dishonest mean {best_dishonest:.5f}: separation ratio {best_dishonest / floor:.0f}x"
          + ("" if worst_honest else " (against one value one level off: every honest run was identical)"))
    print(f"geometric mean {suggested:.5f} levels; product threshold: mean <= {R.MAX_MEAN_ABS_DIFF}, "
          f"max <= {R.MAX_ABS_DIFF} (margins {R.MAX_MEAN_ABS_DIFF / floor:.1f}x above the most honest, "
          f"{best_dishonest / R.MAX_MEAN_ABS_DIFF:.1f}x below the least dishonest)")
    wrong = [f"{name} seed {i}" for name in honest for i, d in enumerate(results[name]) if not R.within_tolerance(d)]
    wrong += [f"{name} seed {i}" for name in dishonest for i, d in enumerate(results[name]) if R.within_tolerance(d)]
    bit = sum(d.identical for name in honest for d in results[name])
    print(f"honest runs bit for bit: {bit} of {len(honest) * args.seeds}; "
          f"misclassified by the product threshold: {len(wrong)}{': ' + ', '.join(wrong) if wrong else ''}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
