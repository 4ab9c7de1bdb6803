"""``pointillist node init``: write a commented ``config.toml`` and ``policy.toml`` to edit.

The policy file is generated from the dataclasses that read it (``NodeLimits``,
``RequesterPolicy``, ``ResultPolicy``, ``AuditPolicy``, ``RelayPolicy``), so every key and default shown is the one the code uses;
``HELP`` must explain each (a test fails for a field without text). Both files, as written, load
to exactly the defaults: every config key is commented out, every policy key is set to its default.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..node.limits import NodeLimits
from ..node.policy import AuditPolicy, RelayPolicy, RequesterPolicy, ResultPolicy
from ..protocol.errors import UsageError

#: What each policy key does, by section and field name.
HELP: dict[str, dict[str, str]] = {
    "limits": {
        "max_steps": "most denoising steps one job may ask for",
        "min_side": "smallest image side in pixels",
        "max_side": "largest image side in pixels (also advertised in the capacity record)",
        "max_pixels": "most pixels (width x height) one job may ask for",
        "side_multiple": "sides must be multiples of this (Stable Diffusion's VAE works on 8)",
        "max_prompt_chars": "longest prompt or negative prompt, in characters (code points)",
        "min_guidance": "lowest classifier-free guidance scale accepted",
        "max_guidance": "highest classifier-free guidance scale accepted",
        "queue_size": "jobs that may wait behind the running one; more are answered \"busy\"",
    },
    "requesters": {
        "allow": "requester peer IDs; if not empty, only these may submit jobs",
        "deny": "requester peer IDs refused outright",
        "jobs_per_minute": "jobs one requester may send per minute, on average",
        "burst": "jobs one requester may send at once before the rate applies",
    },
    "results": {
        "keep_hours": "finished images stay fetchable by job id this long",
        "max_mb": "and within this much disk; the oldest go first",
    },
    "audits": {
        "serve": "recompute a few steps of other nodes' images for requesters' audit jobs (no GPU needed on their side)",
    },
    "relay": {
        "serve": "relay connections to nodes that cannot be dialed (home GPUs behind NAT); useful when this node can be dialed",
        "max_reservations": "nodes that may hold a slot here at once",
        "max_circuits": "relayed connections at once to one node that holds a slot",
        "max_circuit_mb": "bytes one relayed connection may carry, both directions (a job's image must fit)",
        "max_circuit_s": "seconds one relayed connection may last",
        "reservation_ttl_s": "seconds a slot lasts before the node must renew it",
    },
}
_SECTIONS = (("limits", NodeLimits), ("requesters", RequesterPolicy), ("results", ResultPolicy),
             ("audits", AuditPolicy), ("relay", RelayPolicy))

CONFIG_TEXT = """\
# Pointillist configuration. Command-line options win over what is set here.
# Every key is optional; remove the leading '#' to set one. Unknown keys are an error.

# Peers to join the network through (multiaddrs ending in /p2p/<peer id>).
# bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]

[node]
# Addresses to listen on. Default: /ip4/127.0.0.1/tcp/0 (this machine only, any free port).
# [] listens nowhere: the node is reached only through its relays.
# listen = ["/ip4/0.0.0.0/tcp/4001"]

# Relays to reserve a slot on, so that requesters reach this node even when it cannot be dialed
# (behind a home router). Its capacity record then lists <relay>/p2p-circuit/p2p/<this node>.
# relays = ["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]

# Find the other nodes on this local network by multicast DNS (several GPUs at home, no
# bootstrap peer needed). Off by default.
# mdns = true

# Models to serve: diffusers folders or single-file checkpoints. Default: the embedded tiny model
# (random weights: its images are noise).
# models = ["/models/stable-diffusion-v1-5"]

# Local diffusers folder with configs and tokenizer, for single-file checkpoints.
# model_config = "/models/stable-diffusion-v1-5"

# A folder of models (A1111's models/Stable-diffusion, say): every .safetensors checkpoint and
# diffusers folder directly in it is served too, besides `models`.
# models_dir = "~/stable-diffusion-webui/models/Stable-diffusion"

# How many models stay on the GPU at once; a job for another first loads it (from RAM if it
# was moved there, else from disk). Default: 1.
# models_on_device = 1

# RAM (MiB) for models moved off the GPU, kept for a quick return. Default: half the free RAM.
# models_ram_mb = 16384

# Torch device: cuda, cuda:1, mps, cpu. Default: the best available.
# device = "cuda"

# Weights dtype: float16, bfloat16, float32. Default: float16 on CUDA, float32 elsewhere.
# dtype = "float16"

# Serve Prometheus metrics on HOST:PORT (or PORT, on 127.0.0.1). Default: off.
# A host other than 127.0.0.1 exposes the figures to that network; there is no authentication.
# metrics = "127.0.0.1:9464"

# Without a terminal (a service, a pipe), the node writes one line per event on stderr:
# "text" for people, "json" (JSON lines) for log collectors. Default: text.
# log_format = "json"

[audit]
# Share of the images `pointillist submit` writes that it audits at once, 0 to 1: it recomputes
# a few of their committed steps with `model` (docs/audit.md). Default: 0 (no spot checks).
# share = 0.1

# The model to recompute with: the jobs' model, as a diffusers folder or single-file checkpoint.
# model = "/models/stable-diffusion-v1-5"
"""


def policy_text() -> str:
    lines = ["# Pointillist operator policy: what this node accepts, from whom, and how long it keeps",
             "# results. Every key below is set to its default; edit what you want to change.",
             "# Unknown keys are an error."]
    for section, cls in _SECTIONS:
        lines += ["", f"[{section}]"]
        for f in fields(cls):
            lines.append(f"# {HELP[section][f.name]}")
            lines.append(f"{f.name} = {_toml(getattr(cls(), f.name))}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (frozenset, set, list, tuple)):
        return "[" + ", ".join(f'"{v}"' for v in sorted(value)) + "]"
    if isinstance(value, float):
        return repr(value)  # keeps the point: load_policy checks the type
    return str(value)


def write_files(folder: Path, force: bool) -> list[Path]:
    """Write both files into ``folder``; ``UsageError`` (nothing written) if one exists and not
    ``force``."""
    targets = {folder / "config.toml": CONFIG_TEXT, folder / "policy.toml": policy_text()}
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists (use --force to overwrite)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, text in targets.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    return list(targets)
