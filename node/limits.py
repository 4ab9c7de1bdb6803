"""What a node agrees to generate: the operator's limits, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.errors import ErrorCode, JobRejected
from ..protocol.jobs import JobRequest
from .samplers import sampler_refusal


@dataclass(frozen=True)
class NodeLimits:
    max_steps: int = 150
    min_side: int = 64
    max_side: int = 2048
    max_pixels: int = 1024 * 1024
    side_multiple: int = 8  # Stable Diffusion's VAE works on multiples of 8
    max_prompt_chars: int = 2000
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    queue_size: int = 8  # jobs waiting behind the running one; more get "busy"

    def check(self, job: JobRequest) -> None:
        """Raise ``JobRejected(ErrorCode.INVALID_PARAMS)`` naming the first limit the job exceeds."""
        problems = []
        if job.steps > self.max_steps:
            problems.append(f"steps {job.steps} > {self.max_steps}")
        for name, side in (("width", job.width), ("height", job.height)):
            if not self.min_side <= side <= self.max_side:
                problems.append(f"{name} {side} outside {self.min_side}..{self.max_side}")
            elif side % self.side_multiple:
                problems.append(f"{name} {side} is not a multiple of {self.side_multiple}")
        if job.width * job.height > self.max_pixels:
            problems.append(f"{job.width}x{job.height} exceeds {self.max_pixels} pixels")
        if len(job.prompt) > self.max_prompt_chars or len(job.negative_prompt) > self.max_prompt_chars:
            problems.append(f"prompt longer than {self.max_prompt_chars} characters")
        if not self.min_guidance <= job.guidance <= self.max_guidance:
            problems.append(f"guidance {job.guidance} outside {self.min_guidance}..{self.max_guidance}")
        if (sampler_problem := sampler_refusal(job.sampler)) is not None:
            problems.append(sampler_problem)  # unknown here, or its package is not installed
        if problems:
            raise JobRejected(ErrorCode.INVALID_PARAMS, "; ".join(problems))
