"""Recording the step commitments of a generation (issue 11): the torch side of
``attestation/trajectory.py``, which defines the bytes (docs/attestation.md, section 10).

``StepRecorder(scheduler)`` wraps ``step`` on one scheduler *instance*, the per-run copy that
``LoadedModel.generate`` builds for each job, so nothing stays patched: every call the pipeline
makes records leaf 0 (the first call's ``sample``, x_T as the pipeline prepared it) and then
leaf k = (k, t_k, the model output the scheduler received, the latent it returned). The wrapper
keeps ``step``'s signature (``functools.wraps``): pipelines look at it to decide whether to pass
``generator`` and ``eta``, and a stochastic sampler without its generator would draw other noise.

Tensors are copied to the CPU and hashed as they come, in the calling thread: the generation
thread, never the trio loop. Copying each step to the CPU synchronises a CUDA stream once a
step (a few tens of microseconds against a UNet call; docs/benchmarks.md, "Step commitments").

Imports torch: only the generation path imports this module.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from ..attestation.trajectory import TensorBytes, Trajectory, TrajectoryBuilder

_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.int32: "int32",
    torch.int64: "int64",
}
_DTYPES = {name: dtype for dtype, name in _NAMES.items()}


class CommitmentError(RuntimeError):
    """The pipeline did something the commitments cannot describe (a bug, not bad input)."""


def tensor_bytes(value: Any) -> TensorBytes:
    """``value`` (a tensor, or a Python number for a timestep) as C-order little-endian bytes."""
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise CommitmentError(f"no step commitment encoding for dtype {tensor.dtype}")
    cpu = tensor.detach().to("cpu").contiguous()
    data = cpu.reshape(-1).view(torch.uint8).numpy().tobytes()
    return TensorBytes(name, tuple(cpu.shape), data)


def to_tensor(value: TensorBytes, device: str | torch.device = "cpu") -> torch.Tensor:
    """The tensor ``value`` encodes (for an auditor recomputing a step, and tests)."""
    dtype = _DTYPES[value.dtype]
    if not value.data:
        return torch.empty(value.shape, dtype=dtype, device=device)
    flat = torch.frombuffer(bytearray(value.data), dtype=torch.uint8).view(dtype)
    return flat.reshape(value.shape).to(device)


class StepRecorder:
    """Records every ``step`` of ``scheduler`` (an instance used for one run only)."""

    def __init__(self, scheduler: Any) -> None:
        if sys.byteorder != "little":  # tensor_bytes copies memory as it is
            raise CommitmentError("step commitments are little-endian; this machine is not")
        self.builder = TrajectoryBuilder()
        self._last: Any = None
        self._last_bytes: TensorBytes | None = None
        original = scheduler.step

        @functools.wraps(original)
        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
            # Everything that goes in is copied before the scheduler runs, in case it works in place.
            self._input(sample)
            t, eps = tensor_bytes(timestep), tensor_bytes(model_output)
            out = original(model_output, timestep, sample, *args, **kwargs)
            latent = out[0] if isinstance(out, tuple) else out.prev_sample
            self._last, self._last_bytes = latent, tensor_bytes(latent)
            self.builder.step(t, eps, self._last_bytes)
            return out

        scheduler.step = step

    def _input(self, sample: Any) -> None:
        if self._last_bytes is None:
            self.builder.initial(tensor_bytes(sample))  # leaf 0: x_T, binds the seed
        elif sample is not self._last and tensor_bytes(sample) != self._last_bytes:
            # Leaf k-1's latent must be step k's input, or an auditor could not chain the steps.
            raise CommitmentError(f"the pipeline changed the latent between steps {self.builder.count - 1} "
                                  f"and {self.builder.count}; step commitments would not chain")

    def finish(self) -> Trajectory:
        if self.builder.count < 2:
            raise CommitmentError("the scheduler's step never ran: nothing to commit")
        return self.builder.finish()
