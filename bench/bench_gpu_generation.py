"""Issue 8 on a real GPU: the node's generation path against bare diffusers, VRAM, model swaps, OOM.

SD-1.5-shaped and SDXL-shaped pipelines with random weights (bench_gpu_shapes.py), fp16 on CUDA.
All ratios are against a baseline measured in the same run, the runs interleaved so that drift
falls on every method alike:

  bare         pipe(prompt, negative_prompt="", num_inference_steps=N, guidance_scale=7.5, width,
               height, generator=torch.Generator("cpu").manual_seed(seed)) -- plain diffusers, the baseline
  generate     LoadedModel.generate(params) from pointillist.node.pipeline, on the same pipeline object
  thread       the same, in a fresh threading.Thread per job
  trio_thread  the same, in trio.to_thread.run_sync (trio keeps idle worker threads for 10 s)
  node         what a node does per job (node/service.py): trio.to_thread.run_sync, progress sent back
               to the trio loop at every step with trio.from_thread.run_sync, a trio task draining it
  node_watch   node, plus a trio task sleeping 5 ms in a loop that records how late the loop wakes
               (does generation hold the trio loop?)

throughput ratio = median(bare) / median(method) (>= 0.98 is issue 8's goal). The SD-1.5 pipeline
is written to a diffusers folder first and loaded back with ``load_model`` exactly as a node loads
it (timed: from_pretrained + model digest + move to the GPU). Then: peak VRAM per model
(torch.cuda.max_memory_allocated over one job), time to swap models between GPU and CPU RAM (and
the first job after a swap), and genuine CUDA out-of-memory errors -- an absurd batch on the bare
pipeline (whole card), and a too-large job through LoadedModel.generate with the allocator capped
to emulate a small card -- each followed by releasing memory (gc + empty_cache), checking the
allocation is back at its baseline and that the next normal job gives the same pixels as before.

    python bench/bench_gpu_generation.py --runs 7 --sdxl-runs 3 --out $OUT/generation.json
    python bench/bench_gpu_generation.py --smoke-cpu    # tiny shapes on CPU: exercises the script only

Without a CUDA device (and without --smoke-cpu) it prints "no CUDA device: skipped" and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu_shapes as shapes  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="timed runs per method, SD-1.5 (default 7)")
    ap.add_argument("--sdxl-runs", type=int, default=3, help="timed runs per method, SDXL; 0 skips SDXL")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512, help="SD-1.5 side (default 512)")
    ap.add_argument("--sdxl-size", type=int, default=1024)
    ap.add_argument("--swaps", type=int, default=3)
    ap.add_argument("--small-card-gib", type=float, default=6.0, help="allocator cap for the node-path OOM")
    ap.add_argument("--no-oom", action="store_true")
    ap.add_argument("--out", type=Path, help="write all figures here as JSON")
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny shapes on CPU, few runs: checks the script")
    args = ap.parse_args()
    device = shapes.require_cuda_or_skip(args.smoke_cpu)
    if args.smoke_cpu:
        args.runs, args.sdxl_runs, args.steps, args.size, args.sdxl_size, args.swaps = 2, 1, 2, 64, 64, 1

    shapes.import_pointillist()
    import torch

    from pointillist.node.loading import load_model
    from pointillist.node.pipeline import LoadedModel

    GenerationParams = settings_class()

    tiny = args.smoke_cpu
    dtype = torch.float32 if tiny else torch.float16
    dtype_name = "float32" if tiny else "float16"
    cuda = device == "cuda"
    res: dict = {"command": " ".join(sys.argv), "env": shapes.environment(), "args": vars(args) | {"out": str(args.out)}}
    print(json.dumps(res["env"]), flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def mib(n: int) -> float:
        return round(n / 2**20, 1)

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    # --- SD-1.5: build, save as a diffusers folder, load as a node does ------------------------
    t = time.perf_counter()
    pipe = shapes.build_pipeline("sd15", device, dtype, tiny=tiny)
    sync()
    res["sd15_build_s"] = time.perf_counter() - t
    res["sd15_params"] = shapes.pipeline_params(pipe)
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-sd15-"))
    os.environ["POINTILLIST_HOME"] = str(folder.parent / (folder.name + "-home"))  # fresh digest cache
    t = time.perf_counter()
    pipe.save_pretrained(folder)
    res["sd15_save_s"] = time.perf_counter() - t
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    base0 = allocated()
    t = time.perf_counter()
    sd15 = load_model(folder, device=device, dtype=dtype_name)
    sync()
    res["sd15_load_model_s"] = time.perf_counter() - t
    res["sd15_weights_mib"] = mib(allocated() - base0)
    print(f"SD-1.5-shaped: params {res['sd15_params']}, built in {res['sd15_build_s']:.1f} s, "
          f"load_model from disk {res['sd15_load_model_s']:.1f} s, weights {res['sd15_weights_mib']} MiB", flush=True)

    params = GenerationParams(prompt=PROMPT, negative_prompt="", seed=1234, steps=args.steps, guidance=7.5,
                              width=args.size, height=args.size)
    res["sd15"] = compare_methods(sd15, params, args.runs, sync, cuda, "SD-1.5")
    reference_sd15 = res["sd15"].pop("_image")

    # --- SDXL ----------------------------------------------------------------------------------
    sdxl = None
    if args.sdxl_runs > 0:
        base1 = allocated()
        t = time.perf_counter()
        xl_pipe = shapes.build_pipeline("sdxl", device, dtype, tiny=tiny)
        sync()
        res["sdxl_build_s"] = time.perf_counter() - t
        res["sdxl_params"] = shapes.pipeline_params(xl_pipe)
        res["sdxl_weights_mib"] = mib(allocated() - base1)
        print(f"SDXL-shaped: params {res['sdxl_params']}, built in {res['sdxl_build_s']:.1f} s, "
              f"weights {res['sdxl_weights_mib']} MiB", flush=True)
        sdxl = LoadedModel(name="sdxl-random", digest="0" * 64, path=Path("sdxl-random"), pipe=xl_pipe,
                           device=device, dtype=dtype_name)
        xl_params = GenerationParams(prompt=PROMPT, negative_prompt="", seed=1234, steps=args.steps, guidance=7.5,
                                     width=args.sdxl_size, height=args.sdxl_size)
        # Peak VRAM per model: the other model off the GPU, as a one-model-resident node would run.
        sd15.pipe.to("cpu")
        res["sdxl"] = compare_methods(sdxl, xl_params, args.sdxl_runs, sync, cuda, "SDXL")
        reference_sdxl = res["sdxl"].pop("_image")
        sd15.pipe.to(device)
        if cuda:
            swap(res, sd15, sdxl, params, xl_params, reference_sd15, reference_sdxl, args.swaps, sync, device)

    # --- out of memory ----------------------------------------------------------------------------
    if cuda and not args.no_oom:
        if sdxl is not None:
            sdxl.pipe.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()
        res["oom"] = oom_checks(sd15, params, reference_sd15, args.small_card_gib)

    if args.out:
        args.out.write_text(json.dumps(res, indent=2, default=str))
    summary(res)


def settings_class():
    """What LoadedModel.generate takes: GenerationSettings (protocol/settings.py) since the
    requester refactor, GenerationParams (node/pipeline.py) before it."""
    try:
        from pointillist.protocol.settings import GenerationSettings
        return GenerationSettings
    except ImportError:
        from pointillist.node.pipeline import GenerationParams
        return GenerationParams


def timed(fn, sync) -> tuple[float, object]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def compare_methods(model, params, runs: int, sync, cuda: bool, label: str) -> dict:
    import numpy as np
    import torch

    pipe = model.pipe

    def bare():
        return pipe(params.prompt, negative_prompt="", num_inference_steps=params.steps,
                    guidance_scale=params.guidance, width=params.width, height=params.height,
                    generator=torch.Generator("cpu").manual_seed(params.seed)).images[0]

    def generate():
        return model.generate(params).image

    def thread():
        box: dict = {}
        worker = threading.Thread(target=lambda: box.setdefault("image", model.generate(params).image))
        worker.start()
        worker.join()
        return box["image"]

    methods = {
        "bare": bare,
        "generate": generate,
        "thread": thread,
        "trio_thread": lambda: node_job(model, params, progress=False, watch=False),
        "node": lambda: node_job(model, params, progress=True, watch=False),
        "node_watch": lambda: node_job(model, params, progress=True, watch=True),
    }
    out: dict = {"size": f"{params.width}x{params.height}", "steps": params.steps}

    # Warm-up (kernel selection, allocator) and checks: finite output, same pixels both ways.
    raw = pipe(params.prompt, negative_prompt="", num_inference_steps=params.steps, guidance_scale=params.guidance,
               width=params.width, height=params.height, output_type="np",
               generator=torch.Generator("cpu").manual_seed(params.seed)).images
    out["finite_output"] = bool(np.isfinite(raw).all())
    out["output_std"] = float(np.nan_to_num(raw).std())
    images = {name: fn() for name, fn in methods.items()}
    for name in ("trio_thread", "node", "node_watch"):
        images[name] = images[name][0]
    ref = np.asarray(images["bare"])
    out["same_pixels"] = {n: bool(np.array_equal(ref, np.asarray(im))) for n, im in images.items() if n != "bare"}
    out["_image"] = ref

    # Peak VRAM of one job (weights included), per method.
    if cuda:
        out["peak_vram_mib"] = {}
        for name in ("bare", "generate", "node"):
            fn = methods[name]
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            fn()
            out["peak_vram_mib"][name] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["weights_resident_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)

    times: dict[str, list[float]] = {n: [] for n in methods}
    order = list(methods)
    lateness: list[float] = []
    for r in range(runs):
        k = r % len(order)
        for name in order[k:] + order[:k]:  # rotate who goes first
            dt, result = timed(methods[name], sync)
            times[name].append(dt)
            if name == "node_watch":
                lateness.append(result[1])
    med = {n: statistics.median(v) for n, v in times.items()}
    out["times_s"] = times
    out["median_s"] = med
    out["throughput_ratio_vs_bare"] = {n: med["bare"] / med[n] for n in methods if n != "bare"}
    out["images_per_s"] = {n: 1 / med[n] for n in methods}
    out["steps_per_s"] = {n: params.steps / med[n] for n in methods}
    out["node_loop_max_late_ms"] = {"median": statistics.median(lateness) * 1e3, "max": max(lateness) * 1e3}

    # The attestation's bulk on top (node/service.py _attest): pixel digest + PNG encoding.
    from pointillist.attestation.pixels import pixel_subject

    im = images["generate"]
    enc = []
    for _ in range(3):
        t = time.perf_counter()
        pixel_subject(im)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        enc.append(time.perf_counter() - t)
    out["pixel_digest_plus_png_s"] = statistics.median(enc)
    out["png_bytes"] = len(buf.getvalue())
    out["image_sha256"] = hashlib.sha256(ref.tobytes()).hexdigest()
    print(f"{label} {out['size']} {params.steps} steps: medians {json.dumps(med)}; "
          f"ratios {json.dumps(out['throughput_ratio_vs_bare'])}; "
          f"same pixels {out['same_pixels']}; finite {out['finite_output']}; "
          f"peak VRAM {out.get('peak_vram_mib')}; loop late {out['node_loop_max_late_ms']}", flush=True)
    return out


def node_job(model, params, *, progress: bool, watch: bool) -> tuple[object, float]:
    """One job the way JobService._run drives it (progress=True); returns (image, worst loop
    lateness in s, measured only with watch=True)."""
    import trio

    async def run() -> tuple[object, float]:
        send, receive = trio.open_memory_channel(params.steps + 2)
        result: dict = {}
        worst = [0.0]

        def on_step(step: int, total: int) -> None:
            try:
                trio.from_thread.run_sync(send.send_nowait, (step, total))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.RunFinishedError):
                pass

        def work() -> None:
            result["image"] = model.generate(params, on_step if progress else None).image

        async def forward_progress() -> None:
            async with receive:
                async for _ in receive:
                    pass

        async def watch_loop() -> None:
            while True:
                t = trio.current_time()
                await trio.sleep(0.005)
                worst[0] = max(worst[0], trio.current_time() - t - 0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_progress)
            if watch:
                nursery.start_soon(watch_loop)
            try:
                await trio.to_thread.run_sync(work)
            finally:
                await send.aclose()
                nursery.cancel_scope.cancel()
        return result["image"], worst[0]

    return trio.run(run)


def swap(res, sd15, sdxl, params, xl_params, ref15, refxl, swaps: int, sync, device: str) -> None:
    """SDXL resident <-> SD-1.5 resident, through CPU RAM (pipe.to), timed; then the first job."""
    import numpy as np

    sdxl.pipe.to("cpu")
    to_xl, to_15, first_xl, first_15, same = [], [], [], [], []

    def swap_in(resident, incoming, job, ref, swap_times, first_times) -> None:
        dt_out, _ = timed(lambda: resident.pipe.to("cpu"), sync)
        dt_in, _ = timed(lambda: incoming.pipe.to(device), sync)
        swap_times.append(dt_out + dt_in)
        dt, im = timed(lambda: incoming.generate(job).image, sync)
        first_times.append(dt)
        same.append(np.array_equal(np.asarray(im), ref))

    for _ in range(swaps):
        swap_in(sd15, sdxl, xl_params, refxl, to_xl, first_xl)
        swap_in(sdxl, sd15, params, ref15, to_15, first_15)
    res["swap"] = {
        "sd15_to_sdxl_s": to_xl, "sdxl_to_sd15_s": to_15,
        "first_job_after_swap_sdxl_s": first_xl, "first_job_after_swap_sd15_s": first_15,
        "same_pixels_after_swaps": all(same),
        "median_sd15_to_sdxl_s": statistics.median(to_xl), "median_sdxl_to_sd15_s": statistics.median(to_15),
    }
    print(f"swap via CPU RAM: SD-1.5 -> SDXL {statistics.median(to_xl):.2f} s, SDXL -> SD-1.5 "
          f"{statistics.median(to_15):.2f} s (median of {swaps}); first jobs after swap SDXL {first_xl}, "
          f"SD-1.5 {first_15}; same pixels after swaps: {all(same)}", flush=True)


def oom_checks(model, params, reference, small_card_gib: float) -> dict:
    import numpy as np
    import torch

    GenerationParams = settings_class()
    out: dict = {}
    total = torch.cuda.get_device_properties(0).total_memory

    def release() -> dict:
        gc.collect()
        torch.cuda.empty_cache()
        return {"allocated_mib": round(torch.cuda.memory_allocated() / 2**20, 1),
                "reserved_mib": round(torch.cuda.memory_reserved() / 2**20, 1),
                "free_mib": round(torch.cuda.mem_get_info()[0] / 2**20, 1)}

    def next_job_same() -> bool:
        return bool(np.array_equal(np.asarray(model.generate(params).image), reference))

    baseline = release()
    out["baseline"] = baseline

    # 1. Whole card: an absurd batch on the bare pipeline (CFG batch 2048 at 1024^2, one step).
    t = time.perf_counter()
    try:
        model.pipe(params.prompt, negative_prompt="", num_inference_steps=1, width=1024, height=1024,
                   num_images_per_prompt=1024, generator=torch.Generator("cpu").manual_seed(0), output_type="latent")
        out["whole_card"] = {"raised": None}
    except torch.OutOfMemoryError as exc:
        out["whole_card"] = {"raised": type(exc).__name__, "message": str(exc).splitlines()[0][:200],
                             "after_catch_s": time.perf_counter() - t}
    out["whole_card"]["after_release"] = release()
    out["whole_card"]["back_to_baseline"] = out["whole_card"]["after_release"]["allocated_mib"] == baseline["allocated_mib"]
    out["whole_card"]["next_job_same_pixels"] = next_job_same()

    # 2. Through LoadedModel.generate on an emulated small card: the allocator capped at
    #    small_card_gib, growing sizes until the job does not fit.
    torch.cuda.set_per_process_memory_fraction(small_card_gib * 2**30 / total)
    tried = []
    caught = None
    try:
        for side in (1536, 2048, 3072, 4096):
            big = dataclasses.replace(params, width=side, height=side, steps=2)
            t = time.perf_counter()
            try:
                model.generate(big)
                tried.append({"side": side, "fit": True, "s": time.perf_counter() - t})
            except torch.OutOfMemoryError as exc:
                caught = {"side": side, "raised": type(exc).__name__, "message": str(exc).splitlines()[0][:200],
                          "after_s": time.perf_counter() - t}
                break
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    out["small_card"] = {"cap_gib": small_card_gib, "fitted": tried, "oom": caught, "after_release": release()}
    out["small_card"]["back_to_baseline"] = (out["small_card"]["after_release"]["allocated_mib"]
                                             == baseline["allocated_mib"])
    out["small_card"]["next_job_same_pixels"] = next_job_same()
    print(f"OOM: {json.dumps(out)}", flush=True)
    return out


def summary(res: dict) -> None:
    env = res["env"]
    print(f"\n== {env['gpu']}, torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}")
    print("ratio = median(bare) / median(method): generate = LoadedModel.generate; thread = it in a plain thread; "
          "trio = in trio.to_thread; node = + per-step progress hop; node_watch = + 5 ms loop probe")
    print(f"{'model':6} {'size':>9} {'bare s':>7} {'node s':>7} {'generate':>8} {'thread':>7} {'trio':>7} "
          f"{'node':>7} {'node_w':>7} {'img/s':>6} {'peak MiB':>9} {'weights MiB':>11} {'same px':>8}")
    for key, weights in (("sd15", "sd15_weights_mib"), ("sdxl", "sdxl_weights_mib")):
        r = res.get(key)
        if not r:
            continue
        m, q = r["median_s"], r["throughput_ratio_vs_bare"]
        peak = r.get("peak_vram_mib", {}).get("generate", "-")
        print(f"{key:6} {r['size']:>9} {m['bare']:7.3f} {m['node']:7.3f} {q['generate']:8.3f} {q['thread']:7.3f} "
              f"{q['trio_thread']:7.3f} {q['node']:7.3f} {q['node_watch']:7.3f} {1 / m['node']:6.2f} {peak!s:>9} "
              f"{res.get(weights, '-')!s:>11} {all(r['same_pixels'].values())!s:>8}")
        print(f"{'':6} loop lateness during node_watch jobs: median {r['node_loop_max_late_ms']['median']:.1f} ms, "
              f"max {r['node_loop_max_late_ms']['max']:.1f} ms; pixel digest + PNG "
              f"{r['pixel_digest_plus_png_s'] * 1e3:.0f} ms")
    if "swap" in res:
        s = res["swap"]
        print(f"swap SD-1.5->SDXL {s['median_sd15_to_sdxl_s']:.2f} s, SDXL->SD-1.5 {s['median_sdxl_to_sd15_s']:.2f} s")
    if "oom" in res:
        o = res["oom"]
        print(f"OOM whole card: {o['whole_card']['raised']}, back to baseline {o['whole_card']['back_to_baseline']}, "
              f"next job same {o['whole_card']['next_job_same_pixels']}; small card "
              f"{o['small_card']['cap_gib']} GiB: OOM at {(o['small_card']['oom'] or {}).get('side')}, back to "
              f"baseline {o['small_card']['back_to_baseline']}, next job same {o['small_card']['next_job_same_pixels']}")


if __name__ == "__main__":
    main()
