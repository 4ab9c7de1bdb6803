"""The step audit's cost on a real architecture (issue 11): an SD-1.5-shaped pipeline, CPU float32.

bench_audit_detection.py measures the audit's cost on the embedded tiny model, where Python
overhead and the fixed parts dominate. This script measures it on the SD-1.5 shapes of
bench_gpu_shapes.py (UNet ~860 M parameters, VAE ~84 M, CLIP-L text encoder ~123 M; random
weights, seeded: cost depends on shapes, not on trained weights), wrapped as the node wraps a
model (``LoadedModel``), on the CPU in float32 (the audit's calibrated conditions).

One job (--size, --steps, DDIM, guidance 7.5) is generated once per round (--reps rounds) through
``LoadedModel.generate`` with step recording, as a node runs it (timed: the baseline). Its record
(a fixed model digest, the generation's scheduler and config, the trajectory's commitment) is then
audited with ``node.audit_check.audit`` once per variant in each round:

  a   step 1 + 2 random steps + VAE   (the default challenge)
  b   step 1 + 1 random step + VAE
  c   step 1 only + VAE
  fixed  no step: proofs, schedule, seed binding, VAE decode (``audit(..., steps=[])``)

and the pieces timed alone: the text encoding (prompt and negative, as the audit's
``encode_prompt``), one UNet call on the batch of two (classifier-free guidance), one VAE decode
of the last latent (with postprocessing to PIL); and, from ``generate``'s step callbacks, the time of
one step inside the denoising loop. A round runs all of these in turn, so that on a shared machine
the figures of a round meet the same load. Each verdict must be "pass" (an honest image):
anything else stops the script with exit status 1.

Reported: medians (min-max) in seconds, each audit over its round's generation (median over
rounds), and the
amortised cost when only a share s of jobs is audited (s x ratio, s = 0.1 and 0.25), as a
markdown table for docs/benchmarks.md with the date, machine and command.

    .venv/bin/python bench/bench_audit_cost.py                  # 256x256, 20 steps, 2 rounds (~8 min, 2 cores)
    .venv/bin/python bench/bench_audit_cost.py --size 512 --reps 1

torch uses --threads threads for generation and audit alike, 1 by default: on a shared machine a
single thread's CPU time (``time.process_time``, reported beside wall time) is close to the work
itself, whereas with several OpenMP threads a descheduled thread stalls the others at every
barrier and their spinning counts as CPU time. The ratios, not the absolute times, are the figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu_shapes as shapes  # noqa: E402

#: Any fixed 64-hex digest: the record attests it and the LoadedModel carries it.
DIGEST = "5d15" * 16
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry"
SHARES = (0.1, 0.25)


#: CPU seconds (all threads, user + system) of the last ``timed`` call: on a shared machine less
#: sensitive to other processes' load than wall time (see the module docstring).
LAST_CPU = [0.0]


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    LAST_CPU[0] = time.process_time() - c0
    return time.perf_counter() - t0, out


def vars_of(settings) -> dict:
    import dataclasses

    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side, a multiple of 8 (default 256)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--reps", type=int, default=2,
                   help="rounds: the generation, each audit and each piece once per round (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the module docstring)")
    p.add_argument("--seed", type=int, default=20261123, help="the job's seed and the challenge draws' seed")
    args = p.parse_args()
    if args.size % 8 or args.steps < 3 or args.reps < 1 or args.threads < 1:
        p.error("--size a multiple of 8, --steps >= 3, --reps >= 1, --threads >= 1")

    t_start = time.perf_counter()
    shapes.import_pointillist()
    import diffusers
    import torch

    from pointillist.attestation.statement import GenerationRecord
    from pointillist.node import audit_check as A
    from pointillist.node.device_info import cpu_name
    from pointillist.node.pipeline import LoadedModel
    from pointillist.node.step_commitments import to_tensor
    from pointillist.protocol.settings import GenerationSettings

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    t_build, pipe = timed(lambda: shapes.build_pipeline("sd15", "cpu", torch.float32, seed=0))
    params = shapes.pipeline_params(pipe)
    model = LoadedModel(name="sd15-random", digest=DIGEST, path=Path("sd15-random"), pipe=pipe, device="cpu",
                        dtype="float32")
    print(f"built SD-1.5-shaped pipeline in {t_build:.1f} s: "
          + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in params.items()), file=sys.stderr, flush=True)

    settings = GenerationSettings(prompt=PROMPT, negative_prompt=NEGATIVE, seed=args.seed, steps=args.steps,
                                  guidance=7.5, width=args.size, height=args.size)

    # Warm-up, untimed: one 1-step generation at the job's size (first-call allocations and kernel choices).
    t_warm, _ = timed(lambda: model.generate(GenerationSettings(**{**vars_of(settings), "steps": 1})))
    print(f"  warm-up (1 step): {t_warm:.1f} s", file=sys.stderr, flush=True)

    # One round = the generation (the baseline), then each audit variant, then the pieces, so that
    # every figure of a round meets the same load on a shared machine; ratios are taken per round.
    variants = [("a", "step 1 + 2 random steps + VAE", 2), ("b", "step 1 + 1 random step + VAE", 1),
                ("c", "step 1 only + VAE", 0), ("fixed", "no step: proofs, seed, VAE", None)]
    gen_times: list[float] = []
    cpu: dict[str, list[float]] = {}  # the same keys as below ("gen", the variants, the pieces): CPU seconds
    head_times: list[float] = []  # generate() start to the end of step 1's callback, less step 1
    step_times: list[float] = []  # in-loop steps 2..N (UNet + DDIM step + recording)
    tail_times: list[float] = []  # after step N's callback: VAE decode, PIL, tree
    audit_times: dict[str, list[float]] = {key: [] for key, _, _ in variants}
    piece_times: dict[str, list[float]] = {"text": [], "unet": [], "vae": []}
    ratios: dict[str, list[float]] = {key: [] for key in [*audit_times, *piece_times]}
    roots: set[bytes] = set()
    eps_errors: list[float] = []
    exact = {"unet": [0, 0], "vae": [0, 0]}  # [bit exact / 0 level difference, checks]
    for rnd in range(args.reps):
        marks: list[float] = []
        cmarks: list[float] = []
        t0, c0 = time.perf_counter(), time.process_time()
        result = model.generate(settings, on_step=lambda k, n: (marks.append(time.perf_counter()),
                                                                 cmarks.append(time.process_time())))
        t_gen = time.perf_counter() - t0
        c_gen = time.process_time() - c0
        gen_times.append(t_gen)
        cpu.setdefault("gen", []).append(c_gen)
        steps_in_loop = [b - a for a, b in zip(marks, marks[1:])]
        step_times.extend(steps_in_loop)
        cpu.setdefault("step", []).extend(b - a for a, b in zip(cmarks, cmarks[1:]))
        head_times.append(marks[0] - t0 - statistics.median(steps_in_loop))
        tail_times.append(t0 + t_gen - marks[-1])
        roots.add(result.trajectory.root)
        print(f"  round {rnd + 1}/{args.reps}: generation {t_gen:.1f} s (in-loop step median "
              f"{statistics.median(steps_in_loop):.2f} s)", file=sys.stderr, flush=True)
        if len(roots) != 1:
            print("FAIL: the same job gave another trajectory root (same process, same threads): not "
                  "deterministic", file=sys.stderr)
            return 1
        assert result.scheduler == "DDIMScheduler", result.scheduler
        traj, image = result.trajectory, result.image
        n = traj.steps
        record = GenerationRecord(
            model_name=model.name, model_digest=DIGEST, pipeline=result.pipeline, scheduler=result.scheduler,
            settings=settings, dtype=result.dtype, device=result.device, torch_threads=result.torch_threads,
            libraries=result.libraries, job_id="0" * 32, requester="bench", request_sha256="0" * 64, node="bench",
            created_at="2026-11-23T00:00:00Z", scheduler_config=result.scheduler_config,
            trajectory=traj.commitment())

        for key, label, extra in variants:
            steps = [] if extra is None else A.choose_steps(n, extra, rng)
            opened = A.open_leaves(traj, A.leaves_needed(record, steps))
            t, verdict = timed(lambda: A.audit(model, record, image, opened, steps))
            if verdict.verdict != "pass":
                print(f"FAIL: audit {key} ({label}) of an honest image, steps {steps}: {verdict.detail}",
                      file=sys.stderr)
                return 1
            unet_checks = [c for c in verdict.checks if c.name == "unet"]
            if len(unet_checks) != len(steps) or not any(c.name == "vae" for c in verdict.checks):
                print(f"FAIL: audit {key} ran {len(unet_checks)} UNet checks for steps {steps}, or no VAE check: "
                      f"{verdict.detail}", file=sys.stderr)
                return 1
            for c in verdict.checks:
                if c.name in exact:
                    exact[c.name][0] += bool(c.figures.get("bitExact")) if c.name == "unet" else c.value == 0
                    exact[c.name][1] += 1
                if c.name == "unet":
                    eps_errors.append(c.value)
            audit_times[key].append(t)
            ratios[key].append(t / t_gen)
            cpu.setdefault(key, []).append(LAST_CPU[0])
            ratios.setdefault("cpu " + key, []).append(LAST_CPU[0] / c_gen)
            print(f"    audit {key} (steps {steps or 'none'}): {t:.1f} s, CPU {LAST_CPU[0]:.1f} s", file=sys.stderr,
                  flush=True)

        # The pieces, as the audit runs them (audit_check._Audit.prompt_embeds / check_unet / check_vae).
        k = 1 + rng.randrange(n)
        scheduler = A.samplers.rebuild_scheduler(record.scheduler, record.scheduler_config)
        scheduler.set_timesteps(n, device="cpu")
        before, leaf = A.decode_leaf(traj.leaves[k - 1], k - 1), A.decode_leaf(traj.leaves[k], k)
        z = to_tensor(A.decode_leaf(traj.leaves[n], n).latent).to(torch.float32)
        with torch.inference_mode():
            t, (pos, neg) = timed(lambda: pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True, NEGATIVE))
            piece_times["text"].append(t)
            cpu.setdefault("text", []).append(LAST_CPU[0])
            embeds = torch.cat([neg, pos])
            ts = to_tensor(leaf.timestep)
            x_in = scheduler.scale_model_input(torch.cat([to_tensor(before.latent).to(torch.float32)] * 2), ts)
            t, _ = timed(lambda: pipe.unet(x_in, ts, encoder_hidden_states=embeds, timestep_cond=None,
                                           return_dict=False)[0])
            piece_times["unet"].append(t)
            cpu.setdefault("unet", []).append(LAST_CPU[0])

            def decode():
                d = pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0]
                return pipe.image_processor.postprocess(d, output_type="pil", do_denormalize=[True])[0]

            t, _ = timed(decode)
            piece_times["vae"].append(t)
            cpu.setdefault("vae", []).append(LAST_CPU[0])
        for key, xs in piece_times.items():
            ratios[key].append(xs[-1] / t_gen)
            ratios.setdefault("cpu " + key, []).append(cpu[key][-1] / c_gen)
        print(f"    pieces: text {piece_times['text'][-1]:.2f} s, UNet call {piece_times['unet'][-1]:.2f} s, "
              f"VAE decode {piece_times['vae'][-1]:.2f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start

    # --- the table
    g = med(gen_times)
    u, v, txt = med(piece_times["unet"]), med(piece_times["vae"]), med(piece_times["text"])
    s_loop, s_head, s_tail = med(step_times), med(head_times), med(tail_times)
    command = ".venv/bin/python bench/" + Path(sys.argv[0]).name + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("### Audit cost on SD-1.5 shapes (issue 11)\n")
    print(f"`bench/bench_audit_cost.py`, {now}; {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, Python {platform.python_version()}"
          f": `{command}` ({total:.0f} s wall, of which building the pipeline {t_build:.0f} s).")
    print(f"SD-1.5-shaped StableDiffusionPipeline with random weights (bench_gpu_shapes.py: UNet "
          f"{params['unet'] / 1e6:.0f} M, VAE {params['vae'] / 1e6:.0f} M, text encoder "
          f"{params['text_encoder'] / 1e6:.0f} M parameters), CPU float32, {args.size}x{args.size}, {n} steps DDIM, "
          f"guidance 7.5, through `LoadedModel.generate` with step recording; audits by "
          f"`node.audit_check.audit` in the same process and threads, random steps drawn afresh each round. "
          f"{args.reps} rounds (one untimed 1-step generation first, as warm-up), each: the generation, the "
          f"four audits, the pieces. Times: median (min-max) s; ratio: median over rounds of time / that round's "
          f"generation (wall, and CPU seconds of all threads, less sensitive to other load); amortised: s x the "
          f"CPU ratio when a share s of jobs is audited. All "
          f"{sum(len(x) for x in audit_times.values())} audits passed.\n")
    print("| measured | wall s, median (min-max) | CPU s, median | / generation, wall | / generation, CPU | "
          "amortised, s = 0.1 | amortised, s = 0.25 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def row(label: str, xs: list[float], key: str, amortise: bool) -> None:
        m = med(xs)
        r = med(ratios[key]) if key in ratios else m / g
        rc = med(ratios["cpu " + key]) if "cpu " + key in ratios else med(cpu[key]) / med(cpu["gen"])
        am = " | ".join(f"{100 * s * rc:.1f} %" for s in SHARES) if amortise else "— | —"
        print(f"| {label} | {m:.2f} ({min(xs):.2f}-{max(xs):.2f}) | {med(cpu[key]):.2f} | {100 * r:.1f} % | "
              f"{100 * rc:.1f} % | {am} |")

    row(f"generation, {n} steps (the baseline)", gen_times, "gen", False)
    for key, label, _ in variants:
        row(f"audit {key}: {label}" if key != "fixed" else f"audit, {label}", audit_times[key], key, key != "fixed")
    row("piece: text encoding (prompt + negative)", piece_times["text"], "text", False)
    row("piece: one UNet call, batch of two (CFG)", piece_times["unet"], "unet", False)
    row("piece: one VAE decode + postprocess", piece_times["vae"], "vae", False)
    row("piece: one in-loop step of the generation (callbacks)", step_times, "step", False)

    print(f"\nInside the generation (step callbacks): before the loop + step 1 {s_head + s_loop:.2f} s, in-loop step "
          f"median {s_loop:.2f} s (min {min(step_times):.2f}, max {max(step_times):.2f}), after the loop (VAE decode, "
          f"PIL, tree) {s_tail:.2f} s: {n} steps are {100 * n * s_loop / g:.0f} % of the generation. "
          f"From the pieces: audit a ~ T + 3 U + V = {txt + 3 * u + v:.2f} s, b ~ T + 2 U + V = {txt + 2 * u + v:.2f} s, "
          f"c ~ T + U + V = {txt + u + v:.2f} s (measured {med(audit_times['a']):.2f} / {med(audit_times['b']):.2f} / "
          f"{med(audit_times['c']):.2f}). One VAE decode costs {v / u:.2f} standalone UNet calls "
          f"({v / s_loop:.2f} in-loop steps); a standalone UNet call costs {u / s_loop:.2f} in-loop steps. "
          f"UNet checks bit exact: {exact['unet'][0]}/{exact['unet'][1]} (max eps relative error "
          f"{max(eps_errors):.3g}); VAE checks with 0 level difference: {exact['vae'][0]}/{exact['vae'][1]}; "
          f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
