"""``pointillist node start`` whose pipeline runs out of GPU memory on demand (tests/test_gpu_memory.py).

No test hook in the product: this launcher wraps ``LoadedModel.generate`` so that a job whose
prompt contains "oom" raises ``torch.OutOfMemoryError`` from the pipeline call, as CUDA would,
holding a tensor in the failing frame; every other call (the self-benchmark, normal jobs) runs
the real pipeline. Usage: ``python tests/oom_node.py <node start arguments>``.
"""

from __future__ import annotations

import sys

import torch

from pointillist.node import pipeline

_original = pipeline.LoadedModel.generate


def _generate(self, params, on_step=None):
    if "oom" in params.prompt:
        held = torch.empty(1 << 20)  # what a real failure's frames hold until released
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 20.00 GiB ({held.numel()} floats held; injected by tests/oom_node.py)")
    return _original(self, params, on_step)


pipeline.LoadedModel.generate = _generate

if __name__ == "__main__":
    from pointillist.cli.main import main

    sys.exit(main(["node", "start", *sys.argv[1:]]))
