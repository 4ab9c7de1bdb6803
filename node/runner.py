"""A contributor node's process: load the operator's models, measure speed, join the network,
serve jobs and advertise capacity until SIGINT/SIGTERM, then stop cleanly: a last record says
"not accepting", and the running generation is asked to stop at its next step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from ..protocol.capacity import HEARTBEAT_S, RECORD_TTL_S
from ..protocol.identity import Identity
from ..protocol.messages import JOB_PROTOCOL
from .advertise import Advertiser
from .policy import Policy
from .replay import ReplayCache, load_replay_cache, save_replay_cache
from .results import ResultStore
from ..network.overlay import open_network
from ..network.host import DEFAULT_LISTEN, full_addrs
from .service import JobService, ServedModels

log = logging.getLogger("pointillist.node")

#: Provider records in the DHT are renewed this often.
REPROVIDE_S = 600
#: Direct peers a node keeps besides whoever connects to it.
PEER_TARGET = 8


@dataclass
class NodeConfig:
    identity: Identity
    model_paths: list[Path] = field(default_factory=list)  # empty: the embedded tiny model
    model_config: Path | None = None  # diffusers config folder for single-file checkpoints
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    bootstrap: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    policy: Policy = field(default_factory=Policy)
    state_dir: Path | None = None  # results and replay cache; None keeps them in memory only
    ready_file: Path | None = None
    heartbeat_s: float = HEARTBEAT_S
    record_ttl_s: int = RECORD_TTL_S


@dataclass
class LoadedNode:
    models: ServedModels
    device: object  # protocol.capacity.Device
    speed: object  # protocol.capacity.Speed
    pipelines: dict[str, str]  # model digest -> pipeline class name


def load_node(config: NodeConfig) -> LoadedNode:
    """Load models and measure this machine (imports torch)."""
    from .device_info import describe_device, measure_speed
    from ..protocol.settings import GenerationSettings
    from .pipeline import embedded_model_path, load_model

    _leave_a_core_for_the_network(config.device)
    paths = config.model_paths or [embedded_model_path()]
    loaded = [load_model(p, device=config.device, dtype=config.dtype, config=config.model_config) for p in paths]
    first = loaded[0]
    return LoadedNode(
        models=ServedModels(loaded),
        device=describe_device(str(first.device)),
        speed=measure_speed(first, GenerationSettings),
        pipelines={m.digest: type(m.pipe).__name__ for m in loaded},
    )


def _leave_a_core_for_the_network(device: str | None) -> None:
    """On CPU, torch's threads use every core by default and then fight the trio loop that
    streams progress and gossips: measured on 2 cores, a 64x64 job through the node took 120 ms
    more than a direct call with 2 torch threads, 18 ms more with 1 (docs/benchmarks.md).
    An explicit OMP_NUM_THREADS (or a GPU) leaves torch alone."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or (device or "cpu").split(":")[0] not in ("cpu",):
        return
    if device is None and torch.cuda.is_available():
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


async def serve(config: NodeConfig, node: LoadedNode, on_ready: Callable[[dict], None] | None = None) -> None:
    results, replay, save = None, ReplayCache(), None
    if config.state_dir is not None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        results = ResultStore(config.state_dir / "results", config.policy.results.keep_hours * 3600,
                              int(config.policy.results.max_mb * 2**20))
        replay_path = config.state_dir / "replay.json"
        replay = load_replay_cache(replay_path, time.time())

        def save(cache: ReplayCache) -> None:
            save_replay_cache(replay_path, cache)

    service = JobService(config.identity, node.models, policy=config.policy, replay=replay,
                         results=results, save_replay=save)
    async with open_network(config.identity, config.listen) as net:
        net.host.set_stream_handler(JOB_PROTOCOL, service.handle_stream)
        advertiser = Advertiser(
            net, service, node.models, node.device, node.speed,
            max_side=config.policy.limits.max_side, pipeline_names=node.pipelines,
            heartbeat_s=config.heartbeat_s, ttl_s=config.record_ttl_s,
        )
        service.on_change = advertiser.changed
        reached = await net.join(config.bootstrap)
        if config.bootstrap and not reached:
            log.warning("no bootstrap peer answered; waiting for others to find this node")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(advertiser.run)
            nursery.start_soon(_reprovide, net, [m.digest for m in node.models])
            nursery.start_soon(_keep_peers, net, config.heartbeat_s)
            info = {
                "peer_id": config.identity.peer_id,
                "addrs": full_addrs(net.host),
                "models": [{"name": m.name, "digest": m.digest} for m in node.models],
                "speed": node.speed.model_dump(by_alias=True),
                "bootstrap_reached": reached,
                "pid": os.getpid(),
            }
            if config.ready_file:
                _write_atomic(config.ready_file, json.dumps(info).encode())
            if on_ready:
                on_ready(info)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    break
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the shutdown short
            service.shutdown()
            with trio.move_on_after(2):
                await advertiser.publish_now()  # "accepting": false, so requesters look elsewhere
            nursery.cancel_scope.cancel()


async def _reprovide(net, digests: list[str]) -> None:
    while True:
        await net.provide_models(digests)
        await trio.sleep(REPROVIDE_S)


async def _keep_peers(net, period_s: float) -> None:
    await trio.sleep(1)  # let the first records arrive
    while True:
        try:
            await net.keep_peers(PEER_TARGET)
        except Exception:
            log.debug("keeping peers failed", exc_info=True)
        await trio.sleep(period_s)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
