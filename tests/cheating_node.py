"""``pointillist node start`` that runs other weights than it attests (tests of ``audit``).

No test hook in the product: this launcher wraps ``loading.load_model`` so that every model it
loads has its UNet weights multiplied by (1 + 0.1 % Gaussian noise), after the digest of the
honest files was taken. The node then attests the honest digest for images the noisy weights made:
what issue 11 calls a node that runs a cheaper or altered model and signs honest parameters.
Its images verify; ``pointillist audit`` must fail them. Usage: ``python tests/cheating_node.py
<node start arguments>``.
"""

from __future__ import annotations

import sys

import torch

from pointillist.node import loading

_honest_load = loading.load_model


def _load_altered(*args, **kwargs):
    model = _honest_load(*args, **kwargs)
    noise = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.pipe.unet.parameters():
            param.mul_(1 + 0.001 * torch.randn(param.shape, generator=noise))
    return model


loading.load_model = _load_altered

if __name__ == "__main__":
    from pointillist.cli.main import main

    sys.exit(main(["node", "start", *sys.argv[1:]]))
