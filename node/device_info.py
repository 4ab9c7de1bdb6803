"""What a node tells the network about its hardware and speed. Imports torch: generation path."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from ..protocol.capacity import Device, Speed

#: Self-benchmark job: small enough to take well under a second on a GPU with SD-1.5 and a few
#: seconds on a CPU with the tiny model; speed is then scaled by pixels when choosing nodes.
REF_WIDTH = REF_HEIGHT = 256
REF_STEPS = 3


def describe_device(device: str) -> Device:
    """The device as the capacity record states it; imports torch only for a CUDA device."""
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        import torch

        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return Device(kind="cuda", name=torch.cuda.get_device_name(index)[:100], vramTotal=total, vramFree=free)
    if kind == "mps":
        return Device(kind="mps", name="Apple GPU", vramTotal=0, vramFree=0)
    return Device(kind="cpu", name=cpu_name()[:100] or "cpu", vramTotal=0, vramFree=0)


def device_memory(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device now (one driver call, no sync); None elsewhere."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.mem_get_info(torch.device(device).index or 0)


def measure_speed(model, params_type) -> Speed:
    """Steps per second of ``model`` at the reference size, after one warm-up step."""
    params = params_type(prompt="self-benchmark", negative_prompt="", seed=0, steps=1,
                         guidance=7.5, width=REF_WIDTH, height=REF_HEIGHT)
    model.generate(params)  # warm-up: kernels, allocator, caches
    timed = params_type(**{**params.__dict__, "steps": REF_STEPS})
    t = time.perf_counter()
    model.generate(timed)
    elapsed = time.perf_counter() - t
    return Speed(stepsPerS=round(REF_STEPS / max(elapsed, 1e-6), 3), refWidth=REF_WIDTH, refHeight=REF_HEIGHT)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
