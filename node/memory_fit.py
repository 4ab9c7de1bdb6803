"""Will a job fit this GPU? A per-model estimate of device memory, measured once at start-up.

What a Stable Diffusion job needs on the device is the model's weights plus activations that grow
with the output's pixels (latents, attention, the VAE decode, which is the peak). So per model:

    fits(w, h)  ⇔  weights + per_pixel · w · h · MARGIN  ≤  budget

* ``budget``: the device bytes this process can use, measured once after loading the first model:
  what CUDA reports free plus what torch already holds (its cache included);
* ``per_pixel``: measured once, on the first model, by one 1-step generation at the model's
  native side (peak allocated minus the weights, over the pixels). Other models (not loaded yet)
  take their family's figure from ``FAMILY_BYTES_PER_PIXEL`` scaled by how far the measured
  model was from its own family's figure (dtype, attention kernels and library versions differ
  from the H100 run the table comes from);
* linear in pixels: with torch 2's memory-efficient attention that over-estimates somewhat
  above the measured size (fixed costs scaled too), which is the safe side. A job that still runs
  out of memory fails with ``out-of-memory`` (node/residency.py) and the node keeps serving.

Only on CUDA; CPU and MPS have no estimate (the operator's limits only). Imports torch only
inside ``measure_fit``.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import ErrorCode, JobRejected

log = logging.getLogger("pointillist.node")

MIB = 2**20
#: Room left on top of the estimate for allocator fragmentation and what the estimate misses.
MARGIN = 1.25

_SD15_PER_PIXEL = (2733 - 2057) * MIB / (512 * 512)  # docs/benchmarks.md, H100: peak − weights at 512²
_SDXL_PER_PIXEL = (11864 - 6728) * MIB / (1024 * 1024)  # same, SDXL at 1024² (fp32 VAE decode)

#: Activation bytes per output pixel in fp16, by family (docs/benchmarks.md, H100 section).
#: SD-2 shares SD-1.5's UNet shape closely enough (its text encoder is bigger, not its activations).
FAMILY_BYTES_PER_PIXEL = {
    "sd15": _SD15_PER_PIXEL, "sd2-512": _SD15_PER_PIXEL, "sd2-768-v": _SD15_PER_PIXEL,
    "sdxl": _SDXL_PER_PIXEL, "sdxl-turbo": _SDXL_PER_PIXEL,
}
#: Weights on the device in fp16, by family: SD-1.5 and SDXL measured (docs/benchmarks.md);
#: SD-2 from its parameter count (1.29 B: UNet 866 M, OpenCLIP-H text encoder 340 M, VAE 84 M).
FAMILY_WEIGHT_BYTES = {
    "sd15": 2057 * MIB, "sd2-512": 2460 * MIB, "sd2-768-v": 2460 * MIB,
    "sdxl": 6728 * MIB, "sdxl-turbo": 6728 * MIB,
}


@dataclass(frozen=True)
class MemoryFit:
    budget: int  # device bytes this process can use (measured once)
    weights: int  # this model's weights on the device
    per_pixel: float  # activation bytes per output pixel
    source: str  # how per_pixel was found, for the log

    def max_pixels(self) -> int:
        return max(0, int((self.budget - self.weights) / (self.per_pixel * MARGIN)))

    def max_side(self, multiple: int = 8) -> int:
        """The largest square side (a multiple of ``multiple``) that fits."""
        side = math.isqrt(self.max_pixels())
        return side - side % multiple

    def fits(self, width: int, height: int) -> bool:
        return width * height <= self.max_pixels()

    def check(self, width: int, height: int, model: str) -> None:
        """``JobRejected(INVALID_PARAMS)`` if a ``width``×``height`` job of ``model`` would not fit."""
        if not self.fits(width, height):
            raise JobRejected(
                ErrorCode.INVALID_PARAMS,
                f"{width}x{height} would not fit this GPU's memory with model {model} "
                f"(estimated to fit {self.max_pixels() / 1e6:.2f} Mpx, {self.max_side()}² at most; "
                f"{self.budget / 2**30:.1f} GiB usable)",
            )


def estimate_for(family: str | None, measured: MemoryFit, measured_family: str | None,
                 dtype_bytes: int = 2) -> MemoryFit:
    """The fit of a model not loaded yet, from its family and the one measured model."""
    if family not in FAMILY_BYTES_PER_PIXEL:
        return MemoryFit(measured.budget, measured.weights, measured.per_pixel, f"as {measured_family or 'the first model'}")
    reference = FAMILY_BYTES_PER_PIXEL.get(measured_family or "")
    calibration = measured.per_pixel / reference if reference else 1.0
    return MemoryFit(
        budget=measured.budget,
        weights=FAMILY_WEIGHT_BYTES[family] * dtype_bytes // 2,
        per_pixel=FAMILY_BYTES_PER_PIXEL[family] * calibration,
        source=f"{family} family table × {calibration:.2f}",
    )


def measure_fit(model: Any, params_type: Any) -> MemoryFit | None:
    """Measure ``model`` (loaded, alone on the device) once: None unless its device is CUDA."""
    import torch

    device = torch.device(str(model.device))
    if device.type != "cuda":
        return None
    side = getattr(model, "native_side", None) or 512
    family = getattr(model, "family", None)
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device)
    free, _total = torch.cuda.mem_get_info(device)
    budget = free + torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    params = params_type(prompt="memory probe", negative_prompt="", seed=0, steps=1,
                         guidance=7.5, width=side, height=side)
    per_pixel = None
    try:
        model.generate(params)
        torch.cuda.synchronize(device)
        per_pixel = max(1.0, (torch.cuda.max_memory_allocated(device) - weights) / (side * side))
        source = f"measured at {side}²"
    except Exception as exc:  # out of memory, or a pipeline that refuses the size: the table then
        log.warning("the memory probe at %d² failed (%s); using the family's figure", side, type(exc).__name__)
    gc.collect()
    torch.cuda.empty_cache()
    if per_pixel is None:
        per_pixel = FAMILY_BYTES_PER_PIXEL.get(family or "", _SD15_PER_PIXEL)
        source = "family table (the probe failed)"
    fit = MemoryFit(budget=budget, weights=weights, per_pixel=per_pixel, source=source)
    log.info("GPU memory: %.1f GiB usable, model %s takes %.1f GiB, %.0f bytes per pixel (%s): "
             "up to %d² per job", budget / 2**30, getattr(model, "name", "?"), weights / 2**30,
             per_pixel, source, fit.max_side())
    return fit
