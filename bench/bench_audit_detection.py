"""The step audit's detection table (issue 11, item 3): how often ``node.audit_check.audit``
passes honest nodes and catches dishonest ones, and what it costs against the generation.

On the embedded model (node/models/tiny-sd, CPU, float32), each trial makes one job (a fresh
seed and prompt: --size, --steps, guidance 7.5, the model's own DDIM), has a node produce an
image and its step commitments, honestly or not, and audits it as ``audit_check`` prescribes:
step 1, --challenge more steps drawn at random from 2..N, and the VAE check on leaf N, with the
leaves and RFC 9162 proofs of the committed tree. The generation runs on 1 torch thread.

  honest      same threads       audited on 1 thread, as generated (bit for bit expected)
              other threads      audited on 2 threads
              batch of two       generated in one pipeline call with another prompt and seed
                                 (the recorded batch's first half), audited alone
  dishonest   wrong seed         generated from seed + 1, attested seed
              wrong prompt       generated from another prompt
              wrong steps        generated with N - 1 steps, attested N (its own commitment)
              wrong guidance     generated with guidance 7.0, attested 7.5
              other model        UNet with other random weights (same shapes and scales)
              UNet noise 0.1 %   UNet weights x (1 + 0.001 N(0, 1))
              fabricated steps   the UNet ran at odd steps only; at even steps the node reused
                                 the previous model output (no UNet call) and stepped the scheduler
                                 honestly, so its leaves chain and its image decodes
              image not decoded  honest leaves, the image of another seed

Per case: trials, passes / fails / unauditable, the false-alarm rate (honest) or miss rate
(dishonest) with a 95 % Clopper-Pearson interval, the failing check, the case's measure
(min / median / max), and for the fabricated case the hypergeometric catch probability beside
the measured rate. Then the cost: a --cost-steps job (20) at --cost-size, generation time against
the audit's (step 1 + --challenge steps + VAE, proofs and seed check included).

    .venv/bin/python bench/bench_audit_detection.py                 # 100 trials per case
    .venv/bin/python bench/bench_audit_detection.py --trials 20     # quicker

About 2.5 minutes with the defaults on the 2-core sandbox (136 s; docs/benchmarks.md); the
"other threads" case is the slowest (switching torch's thread pool every trial).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pointillist.attestation.statement import GenerationRecord  # noqa: E402
from pointillist.protocol.settings import GenerationSettings  # noqa: E402

WORDS = ("fox lighthouse dusk harbor violet mountain river city neon garden storm portrait cat "
         "forest desert glass copper sunrise train market lantern owl meadow").split()
NOISE = 0.001


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for k events in n trials, by bisection on the binomial
    tails: lower solves P(X >= k | p) = alpha/2, upper P(X <= k | p) = alpha/2."""
    def cdf(x: int, p: float) -> float:  # P(X <= x)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(x + 1))

    def bisect(below) -> float:  # the p where ``below(p)`` turns from True to False
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if below(mid) else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else bisect(lambda p: 1 - cdf(k - 1, p) < alpha / 2)
    upper = 1.0 if k == n else bisect(lambda p: cdf(k, p) > alpha / 2)
    return lower, upper


def catch_probability(n_candidates: int, faked: int, k: int) -> float:
    """P(at least one of ``k`` steps drawn without replacement from ``n_candidates`` is one of the
    ``faked`` ones) = 1 - C(n - f, k) / C(n, k)."""
    return 1 - math.comb(n_candidates - faked, k) / math.comb(n_candidates, k)


def record_for(digest: str, settings: GenerationSettings, result, trajectory) -> GenerationRecord:
    """The record an honest-looking node signs (no signature needed for the audit)."""
    return GenerationRecord(
        model_name="tiny-sd", model_digest=digest, pipeline=result.pipeline, scheduler=result.scheduler,
        settings=settings, dtype=result.dtype, device=result.device, torch_threads=1, libraries={},
        job_id="0" * 32, requester="bench", request_sha256="0" * 64, node="bench",
        created_at="2026-11-23T00:00:00Z", scheduler_config=result.scheduler_config,
        trajectory=trajectory.commitment())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100, help="trials per case (default 100)")
    p.add_argument("--size", type=int, default=32, help="image side of the detection jobs (default 32)")
    p.add_argument("--steps", type=int, default=6, help="steps of the detection jobs (default 6)")
    p.add_argument("--challenge", type=int, default=2, help="random steps audited besides step 1 (default 2)")
    p.add_argument("--cost-steps", type=int, default=20, help="steps of the cost job (default 20)")
    p.add_argument("--cost-size", type=int, default=64, help="image side of the cost job (default 64)")
    p.add_argument("--cost-trials", type=int, default=10, help="cost repetitions (default 10)")
    p.add_argument("--seed", type=int, default=20261123, help="seed of the bench's own choices")
    args = p.parse_args()
    if args.trials < 1 or args.size % 8 or args.steps < 3:
        p.error("--trials >= 1, --size a multiple of 8, --steps >= 3")

    import torch

    from pointillist.attestation.trajectory import Trajectory, decode_leaf, initial_leaf, step_leaf
    from pointillist.node import audit_check as A
    from pointillist.node.loading import embedded_model_path, load_model
    from pointillist.node.step_commitments import StepRecorder, tensor_bytes, to_tensor

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    model = load_model(embedded_model_path(), device="cpu", dtype="float32")
    digest = model.digest

    def variant(seed: int, noise: float | None) -> object:
        """A second copy of the model with altered UNet weights: ``noise`` relative Gaussian noise,
        or (None) entirely other random weights of each tensor's mean and spread."""
        other = load_model(embedded_model_path(), device="cpu", dtype="float32")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in other.pipe.unet.parameters():
                if noise is not None:
                    param.mul_(1 + noise * torch.randn(param.shape, generator=g))
                else:
                    fresh = torch.randn(param.shape, generator=g)
                    spread = param.std() if param.numel() > 1 else torch.tensor(0.0)
                    param.copy_(fresh * spread + param.mean())
        return other

    other_model, noisy_model = variant(1, None), variant(2, NOISE)

    def job(trial: int, **over) -> GenerationSettings:
        words = rng.sample(WORDS, 4)
        base = dict(prompt=" ".join(words[:3]), negative_prompt=words[3] if trial % 2 else "",
                    seed=rng.randrange(2**64), steps=args.steps, guidance=7.5, width=args.size, height=args.size)
        return GenerationSettings(**{**base, **over})

    def generate(m, settings):
        torch.set_num_threads(1)
        result = m.generate(settings)
        return result, result.trajectory, result.image

    def batch_of_two(settings: GenerationSettings):
        """One pipeline call for [this job, another prompt and seed]; the recorded batch split."""
        pipe = model.pipe
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        recorder = StepRecorder(scheduler)
        own = pipe.scheduler
        torch.set_num_threads(1)
        with model._lock, torch.inference_mode():
            pipe.scheduler = scheduler
            try:
                out = pipe(prompt=[settings.prompt, "a completely different scene"],
                           negative_prompt=[settings.negative_prompt] * 2, num_inference_steps=settings.steps,
                           guidance_scale=float(settings.guidance), width=settings.width, height=settings.height,
                           generator=[torch.Generator("cpu").manual_seed(settings.seed),
                                      torch.Generator("cpu").manual_seed((settings.seed + 1) % 2**64)],
                           output_type="pil")
            finally:
                pipe.scheduler = own
        whole = recorder.finish()
        first = lambda tb: tensor_bytes(to_tensor(tb)[0:1])  # noqa: E731
        leaves = [initial_leaf(first(decode_leaf(whole.leaves[0], 0).latent))]
        for k in range(1, whole.steps + 1):
            leaf = decode_leaf(whole.leaves[k], k)
            leaves.append(step_leaf(k, leaf.timestep, first(leaf.model_output), first(leaf.latent)))
        result = model.generate(settings, commit_steps=False)  # for the scheduler name and config only
        return result, Trajectory(leaves), out.images[0].convert("RGB")

    def fabricated(settings: GenerationSettings):
        """The UNet runs at odd steps; at even steps its previous output is returned again."""
        unet = model.pipe.unet
        real_forward = unet.forward
        calls = {"n": 0, "last": None}

        def forward(*a, **kw):
            calls["n"] += 1
            if calls["n"] % 2 == 0 and calls["last"] is not None:
                return calls["last"]
            calls["last"] = real_forward(*a, **kw)
            return calls["last"]

        unet.forward = forward
        try:
            return generate(model, settings)
        finally:
            del unet.forward

    n = args.steps
    fake_steps = set(range(2, n + 1, 2))

    def produce(case: str, settings: GenerationSettings):
        """(record, trajectory, image) as the node in ``case`` would hand them over."""
        if case in ("honest: same threads", "honest: other threads"):
            result, traj, image = generate(model, settings)
        elif case == "honest: batch of two":
            result, traj, image = batch_of_two(settings)
        elif case == "wrong seed":
            result, traj, image = generate(model, GenerationSettings(**{**_fields(settings),
                                                                       "seed": (settings.seed + 1) % 2**64}))
        elif case == "wrong prompt":
            result, traj, image = generate(model, GenerationSettings(**{**_fields(settings),
                                                                       "prompt": settings.prompt + " at night"}))
        elif case == "wrong steps (N-1 for N)":
            result, traj, image = generate(model, GenerationSettings(**{**_fields(settings), "steps": n - 1}))
        elif case == "wrong guidance (7.0 for 7.5)":
            result, traj, image = generate(model, GenerationSettings(**{**_fields(settings), "guidance": 7.0}))
        elif case == "other model":
            result, traj, image = generate(other_model, settings)
        elif case == "UNet weights x (1 + 0.1 % noise)":
            result, traj, image = generate(noisy_model, settings)
        elif case == "fabricated steps (every other)":
            result, traj, image = fabricated(settings)
        elif case == "image not decoded from x_N":
            result, traj, _ = generate(model, settings)
            image = model.generate(GenerationSettings(**{**_fields(settings), "seed": (settings.seed + 7) % 2**64}),
                                   commit_steps=False).image
        else:
            raise AssertionError(case)
        return record_for(digest, settings, result, traj), traj, image

    honest = ["honest: same threads", "honest: other threads", "honest: batch of two"]
    dishonest = ["wrong seed", "wrong prompt", "wrong steps (N-1 for N)", "wrong guidance (7.0 for 7.5)",
                 "other model", "UNet weights x (1 + 0.1 % noise)", "fabricated steps (every other)",
                 "image not decoded from x_N"]
    rows = []
    for case in honest + dishonest:
        outcomes, measures, checks, challenged_fake = [], [], {}, 0
        t_case = time.perf_counter()
        for trial in range(args.trials):
            settings = job(trial)
            record, traj, image = produce(case, settings)
            steps = A.choose_steps(traj.steps if case.startswith("wrong steps") else n, args.challenge, rng)
            steps = [k for k in steps if k <= traj.steps]
            opened = A.open_leaves(traj, [i for i in A.leaves_needed(record, steps) if i < len(traj.leaves)])
            torch.set_num_threads(2 if case == "honest: other threads" else 1)
            verdict = A.audit(model, record, image, opened, steps)
            torch.set_num_threads(1)
            outcomes.append(verdict.verdict)
            failed = verdict.failed
            if failed is not None:
                checks[failed.name] = checks.get(failed.name, 0) + 1
            if case in honest:
                values = [c.value for c in verdict.checks if c.name == "unet" and c.value is not None]
                measures.append(max(values) if values else float("nan"))
            elif failed is not None and failed.value is not None:
                measures.append(failed.value)
            if case.startswith("fabricated"):
                hit = bool(fake_steps & set(steps))
                challenged_fake += hit
        rate_bad = sum(o != "pass" for o in outcomes) if case in honest else sum(o != "fail" for o in outcomes)
        lo, hi = clopper_pearson(rate_bad, args.trials)
        rows.append(dict(case=case, honest=case in honest, trials=args.trials,
                         passes=outcomes.count("pass"), fails=outcomes.count("fail"),
                         unauditable=outcomes.count("unauditable"), bad=rate_bad, lo=lo, hi=hi, checks=checks,
                         measures=measures, seconds=time.perf_counter() - t_case,
                         challenged_fake=challenged_fake))
        print(f"  {case}: {time.perf_counter() - t_case:.1f} s", file=sys.stderr, flush=True)

    print(f"Audit detection: embedded tiny model, CPU float32, {args.size}x{args.size}, {n} steps (DDIM), "
          f"guidance 7.5; audit = step 1 + {args.challenge} random steps of 2..{n} + VAE; "
          f"{args.trials} trials per case, a fresh seed and prompt each; generation on 1 torch thread.")
    print("Rates: false alarm (honest not passing) / miss (dishonest not failing), 95 % Clopper-Pearson.\n")
    print("| case | trials | pass / fail / unauditable | false alarm or miss (95 % CI) | failing check | "
          "measure min / median / max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ms = [m for m in r["measures"] if not math.isnan(m)]
        spread = (f"{min(ms):.3g} / {statistics.median(ms):.3g} / {max(ms):.3g}" if ms else "—")
        kind = "false alarm" if r["honest"] else "miss"
        checks = ", ".join(f"{k} {v}" for k, v in sorted(r["checks"].items())) or "—"
        print(f"| {r['case']} | {r['trials']} | {r['passes']} / {r['fails']} / {r['unauditable']} | "
              f"{kind} {r['bad']}/{r['trials']} = {r['bad'] / r['trials']:.3f} ({r['lo']:.3f}–{r['hi']:.3f}) | "
              f"{checks} | {spread} |")
    print("\nMeasures: honest cases, the largest UNet eps relative error of the audited steps; wrong seed, "
          "differing elements of x_T; wrong steps, the committed step count; image case, mean abs level "
          "difference; the others, the eps relative error at the failing step.")

    fab = next(r for r in rows if r["case"].startswith("fabricated"))
    expected = catch_probability(n - 1, len(fake_steps), args.challenge)
    lo, hi = clopper_pearson(fab["fails"], fab["trials"])
    print(f"\nFabricated steps: {len(fake_steps)} of {n} steps faked (f = {len(fake_steps) / n:.2f}; "
          f"steps {sorted(fake_steps)}), step 1 always audited and honest, {args.challenge} drawn from the "
          f"{n - 1} others: P(catch) = 1 - C({n - 1 - len(fake_steps)},{args.challenge})/C({n - 1},{args.challenge})"
          f" = {expected:.3f}; measured {fab['fails']}/{fab['trials']} = {fab['fails'] / fab['trials']:.3f} "
          f"({lo:.3f}–{hi:.3f}); a faked step was challenged in {fab['challenged_fake']} trials.")
    for steps_n, f in ((20, 0.5), (20, 0.25), (20, 0.1), (50, 0.1)):
        faked = round(f * steps_n)
        print(f"  N = {steps_n}, f = {f}: k = 2: {catch_probability(steps_n, faked, 2):.3f}, "
              f"k = 3: {catch_probability(steps_n, faked, 3):.3f}, k = 5: {catch_probability(steps_n, faked, 5):.3f}"
              f" (random steps from all N)")

    # --- cost
    gen_times, audit_times, shares, fixed_times = [], [], [], []
    for trial in range(args.cost_trials):
        settings = job(trial, steps=args.cost_steps, width=args.cost_size, height=args.cost_size)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        result = model.generate(settings)
        t_gen = time.perf_counter() - t0
        record = record_for(digest, settings, result, result.trajectory)
        steps = A.choose_steps(args.cost_steps, args.challenge, rng)
        opened = A.open_leaves(result.trajectory, A.leaves_needed(record, steps))
        t0 = time.perf_counter()
        verdict = A.audit(model, record, result.image, opened, steps)
        t_audit = time.perf_counter() - t0
        assert verdict.verdict == "pass", verdict.detail
        t0 = time.perf_counter()
        A.audit(model, record, result.image, opened, [])  # the fixed part: proofs, seed, VAE
        fixed_times.append(time.perf_counter() - t0)
        gen_times.append(t_gen)
        audit_times.append(t_audit)
        shares.append(t_audit / t_gen)
    print(f"\nCost: {args.cost_size}x{args.cost_size}, {args.cost_steps} steps, 1 thread, {args.cost_trials} "
          f"repetitions: generation median {statistics.median(gen_times) * 1000:.0f} ms, audit (step 1 + "
          f"{args.challenge} random + VAE, proofs, seed) median {statistics.median(audit_times) * 1000:.0f} ms: "
          f"{100 * statistics.median(shares):.1f} % of the generation (min {100 * min(shares):.1f} %, "
          f"max {100 * max(shares):.1f} %); UNet calls alone: {1 + args.challenge}/{args.cost_steps} = "
          f"{100 * (1 + args.challenge) / args.cost_steps:.0f} %. Of the audit, the fixed part (prompt-free: "
          f"proofs, schedule, seed, VAE decode) median {statistics.median(fixed_times) * 1000:.0f} ms; each audited "
          f"step (text encoding shared) about "
          f"{(statistics.median(audit_times) - statistics.median(fixed_times)) / (1 + args.challenge) * 1000:.0f} ms "
          f"against {statistics.median(gen_times) / args.cost_steps * 1000:.0f} ms per generated step (incl. the "
          f"generation's fixed costs).")
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s, torch {torch.__version__}, {os.cpu_count()} CPUs.")
    ok = all(r["bad"] == 0 for r in rows if not r["case"].startswith("fabricated"))
    return 0 if ok else 1


def _fields(settings: GenerationSettings) -> dict:
    import dataclasses

    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


if __name__ == "__main__":
    sys.exit(main())
