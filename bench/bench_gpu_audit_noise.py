"""Issue 11 on a real GPU: how far an honest one-step recomputation lands from the committed latent.

An audit (issue 11) re-runs a challenged denoising step from the committed input latent and
compares the result with the committed output:

    error = ||x_next_recomputed - x_next_committed|| / ||x_next_committed - x_in||

(relative error divided by the step's size). This measures that error on an SD-1.5-shaped UNet
with random weights (bench_gpu_shapes.py), fp16 on CUDA, 20 DDIM steps at 512x512, guidance 7.5:

Per trial (seed and prompt vary), the generation runs once on the GPU in fp16, recording the
latent after every step (callback_on_step_end; the initial latent comes from the CPU generator, as
the node's). Chosen steps (first, middle, last) are then recomputed from the committed input:

  honest     gpu16        the same pipeline on the same GPU, fp16 (expected bit-exact: 0)
             gpu16_batch2 same, the latent in a batch of two (other kernels may be chosen)
             gpu32        the same fp16 weights upcast to fp32 on the GPU (TF32 off)
             cpu32        the same fp16 weights upcast to fp32 on the CPU: a verifier without a GPU
             cpu32_as16   cpu32's result rounded to fp16 before comparing (the committed dtype)
  dishonest  unet_0.1pct  UNet weights w*(1 + 0.001*N(0,1)) (drawn in fp32, stored in fp16)
             unet_1pct    the same with 1 %
             other_model  a UNet of the same shape with other random weights
             wrong_prompt another prompt
             guidance_7   guidance 7.0 instead of 7.5
             guidance_5   guidance 5.0
  (the dishonest recomputations run on the GPU in fp16 and are compared with the honest commitment:
  the same measure an honest verifier would get against a node that ran them, up to the noise floor)

It also times the generation and one recomputed step per method: the audit's cost as a share of
the generation.

    python bench/bench_gpu_audit_noise.py --trials 24 --out $OUT/audit.json
    python bench/bench_gpu_audit_noise.py --smoke-cpu     # tiny shapes on CPU: exercises the script only

Without a CUDA device (and without --smoke-cpu) it prints "no CUDA device: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu_shapes as shapes  # noqa: E402

PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, photograph",
    "isometric city block at night, neon",
    "portrait of an old sailor, charcoal sketch",
]
WRONG_PROMPT = "a bowl of fruit on a wooden table"
HONEST = ["gpu16", "gpu16_batch2", "gpu32", "cpu32", "cpu32_as16"]
DISHONEST = ["unet_0.1pct", "unet_1pct", "other_model", "wrong_prompt", "guidance_7", "guidance_5"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--max-seconds", type=float, default=420, help="stop starting trials after this long")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on CPU, 2 trials: checks the script")
    args = ap.parse_args()
    device = shapes.require_cuda_or_skip(args.smoke_cpu)
    if args.smoke_cpu:
        args.trials, args.steps, args.size = 2, 4, 64

    import torch
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    started = time.perf_counter()
    tiny = args.smoke_cpu
    cuda = device == "cuda"
    low = torch.float32 if tiny else torch.float16
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(os.cpu_count() or 1)
    res: dict = {"command": " ".join(sys.argv), "env": shapes.environment(), "args": vars(args) | {"out": str(args.out)},
                 "cpu_threads": torch.get_num_threads()}
    print(json.dumps(res["env"]), flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t = time.perf_counter()
    pipe = shapes.build_pipeline("sd15", device, low, tiny=tiny)
    unet16, te16, tok = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet32g = copy.deepcopy(unet16).to(torch.float32)
    te32g = copy.deepcopy(te16).to(torch.float32)
    unet32c = copy.deepcopy(unet32g).to("cpu")
    te32c = copy.deepcopy(te32g).to("cpu")
    noisy, changed = {}, {}
    for name, rel in (("unet_0.1pct", 1e-3), ("unet_1pct", 1e-2)):
        noisy[name], changed[name] = perturbed(unet32g, rel, low, seed=7)
    other = shapes.build_pipeline("sd15", device, low, seed=1, tiny=tiny)
    unet_other = other.unet
    del other
    sync()
    res["setup_s"] = time.perf_counter() - t
    res["perturbed_fraction_changed"] = changed
    print(f"setup {res['setup_s']:.1f} s; share of fp16 weights changed by the perturbation: {changed}", flush=True)

    methods = {  # name -> (unet, text encoder, device, dtype, prompt override, guidance override, batch2)
        "gpu16": (unet16, te16, device, low, None, None, False),
        "gpu16_batch2": (unet16, te16, device, low, None, None, True),
        "gpu32": (unet32g, te32g, device, torch.float32, None, None, False),
        "cpu32": (unet32c, te32c, "cpu", torch.float32, None, None, False),
        "unet_0.1pct": (noisy["unet_0.1pct"], te16, device, low, None, None, False),
        "unet_1pct": (noisy["unet_1pct"], te16, device, low, None, None, False),
        "other_model": (unet_other, te16, device, low, None, None, False),
        "wrong_prompt": (unet16, te16, device, low, WRONG_PROMPT, None, False),
        "guidance_7": (unet16, te16, device, low, None, 7.0, False),
        "guidance_5": (unet16, te16, device, low, None, 5.0, False),
    }
    sched_cfg = dict(pipe.scheduler.config)
    chosen = sorted({0, args.steps // 2, args.steps - 1})
    errors: dict[str, dict[int, list[float]]] = {m: {s: [] for s in chosen} for m in HONEST + DISHONEST}
    step_rel: dict[int, list[float]] = {s: [] for s in chosen}
    gen_times: list[float] = []
    step_times: dict[str, list[float]] = {m: [] for m in methods}
    nonfinite = 0
    trials_done = 0

    for trial in range(args.trials):
        if time.perf_counter() - started > args.max_seconds:
            print(f"stopping after {trial} trials: --max-seconds {args.max_seconds} reached", flush=True)
            break
        seed, prompt = 1000 + trial, PROMPTS[trial % len(PROMPTS)]
        lat_shape = (1, 4, args.size // 8, args.size // 8)
        x0 = randn_tensor(lat_shape, generator=torch.Generator("cpu").manual_seed(seed), device=torch.device(device),
                          dtype=low) * pipe.scheduler.init_noise_sigma
        committed: list = []

        def record(p, i, t, kw):
            committed.append(kw["latents"].detach().clone())
            return kw

        sync()
        t0 = time.perf_counter()
        pipe(prompt, negative_prompt="", num_inference_steps=args.steps, guidance_scale=args.guidance,
             latents=x0.clone(), output_type="latent", callback_on_step_end=record)
        sync()
        gen_times.append(time.perf_counter() - t0)
        timesteps = pipe.scheduler.timesteps.clone()
        inputs = [x0] + committed[:-1]
        if not all(torch.isfinite(c).all() for c in committed):
            nonfinite += 1

        embeds: dict = {}
        for step in chosen:
            x_in, x_ref = inputs[step].double().cpu(), committed[step].double().cpu()
            size = (x_ref - x_in).norm().item()
            step_rel[step].append(size / x_in.norm().item())
            results = {}
            for name, (unet, te, dev, dt, p_over, g_over, batch2) in methods.items():
                key = (id(te), dev, p_over or prompt)
                if key not in embeds:
                    embeds[key] = encode(te, tok, p_over or prompt, dev)
                sched = DDIMScheduler.from_config(sched_cfg)
                sched.set_timesteps(args.steps, device=dev)
                t_step = sched.timesteps[step]
                assert int(t_step) == int(timesteps[step])
                extra = None
                if batch2:
                    extra = randn_tensor(lat_shape, generator=torch.Generator("cpu").manual_seed(seed + 10**6),
                                         device=torch.device(dev), dtype=dt)
                sync()
                t1 = time.perf_counter()
                x_next = one_step(unet, sched, embeds[key], inputs[step].to(dev, dt), t_step, g_over or args.guidance,
                                  extra)
                sync()
                step_times[name].append(time.perf_counter() - t1)
                results[name] = x_next.double().cpu()
            results["cpu32_as16"] = results["cpu32"].to(low).double()
            for name, x_next in results.items():
                errors[name][step].append((x_next - x_ref).norm().item() / size if size else math.inf)
        trials_done += 1
        print(f"trial {trial} seed {seed}: gen {gen_times[-1]:.2f} s; " + ", ".join(
            f"s{s}: " + " ".join(f"{m}={errors[m][s][-1]:.2g}" for m in ("gpu16", "gpu32", "cpu32", "unet_0.1pct",
                                                                             "guidance_7"))
            for s in chosen), flush=True)

    res.update(trials=trials_done, chosen_steps=chosen, nonfinite_trials=nonfinite,
               timesteps=[int(t) for t in pipe.scheduler.timesteps], errors=errors,
               step_size_rel_to_latent={s: statistics.median(v) for s, v in step_rel.items()},
               generation_s=statistics.median(gen_times),
               one_step_s={m: statistics.median(v) for m, v in step_times.items()})
    res["audit_share_per_step"] = {m: res["one_step_s"][m] / res["generation_s"] for m in ("gpu16", "gpu32", "cpu32")}
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=str))
    summary(res, errors, chosen)


def perturbed(unet32, rel: float, low, seed: int):
    """A copy of the UNet with w*(1 + rel*N(0,1)) drawn in fp32, cast to ``low``; and the share of
    ``low`` values that changed."""
    import torch

    gen = torch.Generator(device=next(unet32.parameters()).device).manual_seed(seed)
    out = copy.deepcopy(unet32)
    changed = total = 0
    with torch.no_grad():
        for p in out.parameters():
            before = p.detach().to(low).clone()
            p.mul_(1 + rel * torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))
            after = p.detach().to(low)
            changed += int((after != before).sum())
            total += p.numel()
    return out.to(low), changed / total


def encode(te, tok, prompt: str, device: str):
    """[negative "", prompt] embeddings the way StableDiffusionPipeline.encode_prompt makes them."""
    import torch

    with torch.no_grad():
        out = []
        for text in ("", prompt):
            ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out.append(te(ids.to(device), attention_mask=None)[0].to(te.dtype))
        return torch.cat(out)


def one_step(unet, sched, embeds, x_in, t, guidance: float, extra=None):
    """One denoising step as StableDiffusionPipeline.__call__ does it (DDIM, eta 0, CFG)."""
    import torch

    with torch.no_grad():
        if extra is None:
            model_in = torch.cat([x_in] * 2)
            enc = embeds
        else:  # the latent alongside another in a batch of two prompts' worth: [neg, neg, pos, pos]
            model_in = torch.cat([x_in, extra, x_in, extra])
            enc = torch.cat([embeds[:1], embeds[:1], embeds[1:], embeds[1:]])
        model_in = sched.scale_model_input(model_in, t)
        noise = unet(model_in, t, encoder_hidden_states=enc, return_dict=False)[0]
        if extra is None:
            uncond, text = noise.chunk(2)
        else:
            uncond, text = noise[0:1], noise[2:3]
        noise = uncond + guidance * (text - uncond)
        return sched.step(noise, t, x_in, eta=0.0, return_dict=False)[0]


def summary(res: dict, errors: dict, chosen: list[int]) -> None:
    env = res["env"]
    print(f"\n== {env['gpu']}, torch {env['torch']}, diffusers {env['diffusers']}; {res['trials']} trials, "
          f"steps {chosen} of {res['args']['steps']} (timesteps {[res['timesteps'][s] for s in chosen]}); "
          f"non-finite trials {res['nonfinite_trials']}")
    print("step size / ||x_in||, median: " + ", ".join(f"s{s}={v:.3g}" for s, v in res["step_size_rel_to_latent"].items()))
    print(f"{'method':14} " + " ".join(f"{f's{s} median':>12} {f's{s} max':>10} {f's{s} min':>10}" for s in chosen))
    for m in HONEST + DISHONEST:
        print(f"{m:14} " + " ".join(
            f"{statistics.median(errors[m][s]):12.3g} {max(errors[m][s]):10.3g} {min(errors[m][s]):10.3g}"
            for s in chosen))
    print("dishonest median / largest honest cross-precision error (max of gpu16_batch2, gpu32, cpu32, cpu32_as16),"
          " per step; > 1 separates:")
    for m in DISHONEST:
        print(f"{m:14} " + " ".join(
            f"s{s}: {statistics.median(errors[m][s]) / max(max(errors[h][s]) for h in HONEST[1:]):7.3g}"
            for s in chosen))
    print(f"generation {res['generation_s']:.3f} s; one step: " + ", ".join(
        f"{m} {v * 1e3:.1f} ms" for m, v in res["one_step_s"].items() if m in ("gpu16", "gpu32", "cpu32")))
    print("one recomputed step as a share of the generation: " + ", ".join(
        f"{m} {v:.3f}" for m, v in res["audit_share_per_step"].items()))


if __name__ == "__main__":
    main()
