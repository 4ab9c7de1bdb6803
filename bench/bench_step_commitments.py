"""Issue 11, item 1: what recording and hashing the step commitments costs a generation.

In process, the embedded tiny model (node/models/tiny-sd) on the CPU, 1 torch thread. For each
image size, every round runs ``LoadedModel.generate`` twice with the same settings, once with
``commit_steps=True`` (what a node does: every scheduler step's model output and latent copied,
encoded and hashed in the generation thread, the Merkle root at the end) and once with
``commit_steps=False``, in alternating order, and prints the ratio of the medians measured in the
same run. It also times the commitment work alone on a latent of the same shape (two tensors
encoded and one leaf hashed per step, then the tree), the stored form (``Trajectory.to_bytes``),
reports the bytes a job keeps, and times storing them with the result (``ResultStore.put`` in a
temporary state database: a worker thread's time in a node, not the generation thread's).

    .venv/bin/python bench/bench_step_commitments.py [--sizes 64 256 512] [--steps 20] [--rounds 7]

Sizes are image sides in pixels; the latent is 4 x size/8 x size/8 float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    import torch

    from pointillist.attestation import trajectory as T
    from pointillist.node.loading import embedded_model_path, load_model
    from pointillist.node.policy import Policy
    from pointillist.node.state_store import open_node_state
    from pointillist.node.step_commitments import tensor_bytes
    from pointillist.protocol.settings import GenerationSettings

    torch.set_num_threads(1)
    model = load_model(embedded_model_path(), device="cpu")
    print(f"torch {torch.__version__}, 1 thread, tiny-sd, {args.steps} steps, {args.rounds} rounds per size")
    print(f"{'size':>6} {'latent':>10} {'plain ms':>10} {'recorded ms':>12} {'ratio':>7} "
          f"{'commit-only ms':>15} {'per step ms':>12} {'to_bytes ms':>12} {'stored':>10} {'put png ms':>11} "
          f"{'put +traj ms':>13}")
    state_dir = tempfile.TemporaryDirectory()
    state = open_node_state(Path(state_dir.name), Policy())
    job_number = 0
    for size in args.sizes:
        settings = GenerationSettings(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=1234,
                                      steps=args.steps, guidance=7.5, width=size, height=size)
        model.generate(dataclasses.replace(settings, steps=2))  # warm-up at this size
        plain, recorded, ratios = [], [], []
        result = None
        for round_ in range(args.rounds):
            times = {}
            for commit in ((True, False) if round_ % 2 == 0 else (False, True)):
                started = time.perf_counter()
                out = model.generate(settings, commit_steps=commit)
                times[commit] = time.perf_counter() - started
                if commit:
                    result = out
            recorded.append(times[True])
            plain.append(times[False])
            ratios.append(times[True] / times[False])
        assert result is not None and result.trajectory is not None

        # The commitment work alone, on tensors of the job's shape.
        latent = torch.randn(1, 4, size // 8, size // 8)
        t = torch.tensor(981)
        alone = []
        for _ in range(max(3, args.rounds)):
            started = time.perf_counter()
            builder = T.TrajectoryBuilder()
            builder.initial(tensor_bytes(latent))
            for _ in range(args.steps):
                builder.step(tensor_bytes(t), tensor_bytes(latent), tensor_bytes(latent))
            builder.finish()
            alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        stored = result.trajectory.to_bytes()
        to_bytes_s = time.perf_counter() - started
        png = result.image.tobytes()  # stands in for the PNG (the same order of size)
        puts: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(max(3, args.rounds)):
            for with_trajectory in (False, True):
                job_number += 1
                started = time.perf_counter()
                state.results.put(f"{job_number:032x}", "bench", png, trajectory=stored if with_trajectory else None)
                puts[with_trajectory].append(time.perf_counter() - started)

        p, r = statistics.median(plain), statistics.median(recorded)
        a = statistics.median(alone)
        print(f"{size:>5}² {f'4x{size // 8}x{size // 8}':>10} {p * 1e3:>10.1f} {r * 1e3:>12.1f} "
              f"{statistics.median(ratios):>7.3f} {a * 1e3:>15.2f} {a / args.steps * 1e3:>12.3f} "
              f"{to_bytes_s * 1e3:>12.2f} {len(stored) / 2**20:>6.2f} MiB {statistics.median(puts[False]) * 1e3:>11.2f} "
              f"{statistics.median(puts[True]) * 1e3:>13.2f}")
    state.close()
    state_dir.cleanup()
    print("ratio: median over rounds of (recorded / plain) within a round; commit-only: encoding and hashing "
          "N+1 leaves and the tree, no pipeline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
