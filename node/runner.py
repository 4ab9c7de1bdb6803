"""A contributor node's process: load the operator's models, start the libp2p host, serve jobs
until SIGINT/SIGTERM, then stop cleanly (the running generation is asked to stop at its next step).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from ..protocol.identity import Identity
from ..protocol.messages import JOB_PROTOCOL
from .limits import NodeLimits
from .p2p import DEFAULT_LISTEN, full_addrs, running_host
from .service import JobService, ServedModels

log = logging.getLogger("pointillist.node")


@dataclass
class NodeConfig:
    identity: Identity
    model_paths: list[Path] = field(default_factory=list)  # empty: the embedded tiny model
    model_config: Path | None = None  # diffusers config folder for single-file checkpoints
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    device: str | None = None
    dtype: str | None = None
    limits: NodeLimits = field(default_factory=NodeLimits)
    ready_file: Path | None = None


def load_models(config: NodeConfig) -> ServedModels:
    from .pipeline import embedded_model_path, load_model  # generation path: imports torch

    paths = config.model_paths or [embedded_model_path()]
    return ServedModels(
        [load_model(p, device=config.device, dtype=config.dtype, config=config.model_config) for p in paths]
    )


async def serve(config: NodeConfig, models: ServedModels, on_ready: Callable[[dict], None] | None = None) -> None:
    service = JobService(config.identity, models, limits=config.limits)
    async with running_host(config.identity, config.listen) as host:
        host.set_stream_handler(JOB_PROTOCOL, service.handle_stream)
        info = {
            "peer_id": config.identity.peer_id,
            "addrs": full_addrs(host),
            "models": [{"name": m.name, "digest": m.digest} for m in models],
            "pid": os.getpid(),
        }
        if config.ready_file:
            _write_atomic(config.ready_file, json.dumps(info).encode())
        if on_ready:
            on_ready(info)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                service.shutdown()
                break


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
