"""A contributor node's process: load the operator's models, measure speed, join the network,
serve jobs and advertise capacity until SIGINT/SIGTERM, then stop cleanly: a last record says
"not accepting", and the running generation is asked to stop at its next step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from ..protocol.capacity import HEARTBEAT_S, RECORD_TTL_S
from ..protocol.identity import Identity
from ..protocol.messages import JOB_PROTOCOL
from .advertise import Advertiser
from .policy import Policy
from .operator_view import make_output
from .state_store import NodeState, open_node_state
from .status import NodeStatus, Readings
from .audit_service import AuditService
from .audit_job_service import AuditJobService
from .status_service import StatusService
from .node_file import remove_node_file, write_node_file
from ..protocol.audit import AUDIT_PROTOCOL
from ..protocol.audit_job import AUDIT_JOB_PROTOCOL
from ..protocol.status import STATUS_PROTOCOL
from ..network.overlay import open_network
from ..network.host import DEFAULT_LISTEN
from ..network.reachability import Reachability
from ..network.relay import Reservations, relaying_of
from .service import JobService, ServedModels

log = logging.getLogger("pointillist.node")

#: How long a node with relays waits for its first reservation before it starts advertising.
RESERVATION_WAIT_S = 30.0

#: Provider records in the DHT are renewed this often.
REPROVIDE_S = 600
#: Direct peers a node keeps besides whoever connects to it.
PEER_TARGET = 8


@dataclass
class NodeConfig:
    identity: Identity
    model_paths: list[Path] = field(default_factory=list)  # empty: the embedded tiny model
    no_models: bool = False  # an entry point: bootstrap and relay, no GPU, no torch (issue 10)
    model_config: Path | None = None  # diffusers config folder for single-file checkpoints
    models_dir: Path | None = None  # serve every model in this folder too
    models_on_device: int = 1  # pipelines kept on the GPU at once; others wait in RAM or on disk
    models_ram_mb: int | None = None  # RAM for models moved off the GPU (default: half the free RAM)
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])  # [] : reached through relays only
    relays: list[str] = field(default_factory=list)  # relays to reserve a slot on (network/relay.py)
    mdns: bool = False  # find and join nodes on the local network (network/lan.py)
    bootstrap: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    policy: Policy = field(default_factory=Policy)
    state_dir: Path | None = None  # results and replay cache; None keeps them in memory only
    ready_file: Path | None = None
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics on this host and port
    live: bool = False  # a live view on stderr (a terminal) instead of one line per event
    log_format: str = "text"  # "text" or "json": the event lines when there is no live view
    heartbeat_s: float = HEARTBEAT_S
    record_ttl_s: int = RECORD_TTL_S


@dataclass
class LoadedNode:
    models: ServedModels
    device: object  # protocol.capacity.Device
    speed: object  # protocol.capacity.Speed
    pipelines: dict[str, str]  # model digest -> pipeline class name
    residency: object | None = None  # node.residency.Residency
    device_now: Callable[[], object] | None = None  # the Device record read again (free VRAM); CUDA only


def model_paths(config: NodeConfig) -> list[Path]:
    """What the node serves: ``--model`` paths, then the models in ``--models-dir``."""
    from .model_folder import find_models

    paths = list(config.model_paths)
    if config.models_dir is not None:
        paths += [p for p in find_models(config.models_dir) if p not in paths]
    return paths


def entry_node() -> LoadedNode:
    """A node that serves no model: a bootstrap and relay on a small machine (``--no-models``).
    Imports no torch; its record lists no model and speed 0, so no requester ranks it for a job."""
    from ..protocol.capacity import Speed
    from .device_info import REF_HEIGHT, REF_WIDTH, describe_device

    return LoadedNode(
        models=ServedModels([], allow_none=True),
        device=describe_device("cpu"),
        speed=Speed(stepsPerS=0.0, refWidth=REF_WIDTH, refHeight=REF_HEIGHT),
        pipelines={},
    )


def load_node(config: NodeConfig) -> LoadedNode:
    """Load the first model, measure this machine with it, and make the others loadable on
    demand (imports torch). Every model is hashed now: its digest is what the network sees.
    With ``no_models``: ``entry_node()``."""
    if config.no_models:
        return entry_node()
    from .device_info import describe_device, device_memory, measure_speed
    from .memory_fit import estimate_for, measure_fit
    from ..protocol.settings import GenerationSettings
    from .loading import embedded_model_path, load_model
    from .model_digest import model_digest
    from .model_folder import model_names
    from .residency import ModelFacts, Residency, ServedSlot

    _leave_a_core_for_the_network(config.device)
    paths = model_paths(config) or [embedded_model_path()]
    names = model_names(paths)
    def model_config(path: Path) -> Path | str | None:
        # --model-config overrides detection for the --model paths only: one override for a
        # whole folder of different checkpoints would be wrong for all but one of them.
        return config.model_config if path in config.model_paths else None

    first = load_model(paths[0], name=names[0], device=config.device, dtype=config.dtype,
                       config=model_config(paths[0]))

    def load(facts: ModelFacts):
        return load_model(facts.path, name=facts.name, device=first.device, dtype=first.dtype,
                          config=model_config(facts.path))

    device = str(first.device)
    on_cuda = device.startswith("cuda")
    residency = Residency(
        load=load,
        to_ram=lambda m: m.pipe.to("cpu"),
        to_device=lambda m: m.pipe.to(first.device),
        size_of=_pipeline_bytes,
        release=_release_memory,
        max_on_device=config.models_on_device,
        # On a CPU the device is RAM: an evicted pipeline is dropped, not "moved to RAM".
        ram_budget=0 if str(first.device) == "cpu" else _ram_budget(config.models_ram_mb),
        memory=(lambda: device_memory(device)) if on_cuda else (lambda: None),  # for out-of-memory messages
    )
    facts = [_facts(first.path, first.name, first.digest, first)]
    seen = {first.digest}
    for path, name in zip(paths[1:], names[1:]):
        digest = model_digest(path)
        if digest in seen:
            log.warning("%s is the same model as one already served; serving it once", path)
            continue
        seen.add(digest)
        facts.append(_facts(path, name, digest, None))
    residency.adopt(facts[0], first)
    speed = measure_speed(first, GenerationSettings)
    # GPU memory, measured once with the first model alone on the device (None off CUDA); the
    # other models are estimated from their family, calibrated by this measurement.
    fit = measure_fit(first, GenerationSettings)
    slots = [ServedSlot(f, residency) for f in facts]
    if fit is not None:
        dtype_bytes = 4 if "32" in str(first.dtype) else 2
        slots[0].memory_fit = fit
        for slot in slots[1:]:
            slot.memory_fit = estimate_for(slot.family, fit, facts[0].family, dtype_bytes)
    return LoadedNode(
        models=ServedModels(slots),
        device=describe_device(device),  # after the measurements: free VRAM as jobs will find it
        speed=speed,
        pipelines={f.digest: f.pipeline for f in facts},
        residency=residency,
        device_now=(lambda: describe_device(device)) if on_cuda else None,
    )


#: Pipeline class by family, for models not loaded yet (a folder names its own).
_FAMILY_PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sdxl-turbo": "StableDiffusionXLPipeline"}


def _facts(path: Path, name: str, digest: str, loaded) -> "ModelFacts":
    from .residency import ModelFacts

    family = getattr(loaded, "family", None) if loaded is not None else _family_of(path)
    if loaded is not None:
        pipeline = type(loaded.pipe).__name__
    elif path.is_dir():
        pipeline = _index_class(path)
    else:
        pipeline = _FAMILY_PIPELINES.get(family or "", "StableDiffusionPipeline" if family else "unknown")
    native_side = getattr(loaded, "native_side", None) if loaded is not None else _native_side(family)
    return ModelFacts(name=name, digest=digest, path=path, family=family, native_side=native_side,
                      pipeline=pipeline)


def _native_side(family: str | None) -> int | None:
    from .checkpoint_family import FAMILIES

    known = FAMILIES.get(family or "")
    return known.native_side if known is not None else None


def _family_of(path: Path) -> str | None:
    """The architecture family from a checkpoint's header, without loading it (None if unknown)."""
    from .checkpoint_family import family_of

    try:
        return family_of(path)
    except Exception:  # an unreadable model fails when a job asks for it, with the loader's message
        return None


def _index_class(folder: Path) -> str:
    try:
        return str(json.loads((folder / "model_index.json").read_text())["_class_name"])[:100]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _pipeline_bytes(model) -> int:
    total = 0
    for component in getattr(model.pipe, "components", {}).values():
        parameters = getattr(component, "parameters", None)
        if callable(parameters):
            total += sum(p.numel() * p.element_size() for p in parameters())
    return total


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ram_budget(configured_mb: int | None) -> int:
    """Bytes of RAM for models moved off the GPU: as configured, else half of what is free now."""
    if configured_mb is not None:
        return configured_mb * 2**20
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 0


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
    state = open_node_state(config.state_dir, config.policy)
    try:
        await _serve(config, node, state, on_ready)
    finally:
        state.close()


async def _serve(config: NodeConfig, node: LoadedNode, state: NodeState,
                 on_ready: Callable[[dict], None] | None) -> None:
    service = JobService(config.identity, node.models, policy=config.policy, replay=state.replay,
                         results=state.results, save_replay=state.save_replay)
    def models_now() -> list[dict]:
        return [{"name": m.name, "digest": m.digest, "family": getattr(m, "family", None),
                 "warm": getattr(m, "warm", True)} for m in node.models]

    status = NodeStatus(config.identity.peer_id, models_now())

    service.events.subscribe(status.observe)
    # Only a node others can dial is any use as a relay.
    relay = config.policy.relay.service() if config.listen else None
    async with open_network(config.identity, config.listen, relay=relay, mdns=config.mdns) as net:
        reachability = Reachability(net.host, net.listen_addrs)
        reservations = Reservations(relaying_of(net.host), config.relays,
                                    auto=lambda: _relay_candidates(net, config.bootstrap, reachability.status))
        net.circuit_addrs = reservations.addrs
        status.readings = Readings(
            addrs=net.addrs,
            reachability=lambda: reachability.status,
            peers=lambda: len(net.host.get_connected_peers()),
            records_held=lambda: len(net.directory),
            records_rejected=lambda: net.rejected,
            queue_depth=lambda: service.queue_depth,
            accepting=lambda: not service.shutting_down,
            stored=state.stored,
            models=models_now,
        )
        net.host.set_stream_handler(JOB_PROTOCOL, service.handle_stream)
        net.host.set_stream_handler(STATUS_PROTOCOL, StatusService(config.identity.peer_id, status, service.events).handle_stream)
        net.host.set_stream_handler(AUDIT_PROTOCOL, AuditService(state.trajectory_for, service.events).handle_stream)
        net.host.set_stream_handler(AUDIT_JOB_PROTOCOL, AuditJobService(service).handle_stream)
        advertiser = Advertiser(
            net, service, node.models, node.device, node.speed,
            max_side=config.policy.limits.max_side, pipeline_names=node.pipelines,
            heartbeat_s=config.heartbeat_s, ttl_s=config.record_ttl_s,
            device_now=node.device_now,
            reachability=lambda: reachability.status,
        )
        service.on_change = advertiser.changed
        reservations.on_change = advertiser.changed  # a relayed address came or went
        def reachability_changed() -> None:
            advertiser.changed()
            reservations.nudge()  # a node just found private takes relays now, not at the next look

        reachability.on_change = reachability_changed
        if node.residency is not None:  # a model swap happens on the generation thread
            token = trio.lowlevel.current_trio_token()
            node.residency.on_change = lambda: token.run_sync_soon(advertiser.changed)
        reached = await net.join(config.bootstrap)
        if config.bootstrap and not reached:
            log.warning("no bootstrap peer answered; waiting for others to find this node")
        with contextlib.ExitStack() as cleanup:
            metrics_url = None
            if config.metrics is not None:
                from .metrics import start_metrics_server

                server = start_metrics_server(*config.metrics, status, service.events)
                cleanup.callback(server.close)
                metrics_url = f"http://{_url_host(config.metrics[0])}:{server.port}/metrics"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reservations.run)
                if config.relays:  # reachable through them before saying so, within reason
                    with trio.move_on_after(RESERVATION_WAIT_S):
                        await reservations.first.wait()
                nursery.start_soon(advertiser.run)
                nursery.start_soon(reachability.run, lambda: _dialback_peers(net))
                nursery.start_soon(_reprovide, net, [m.digest for m in node.models])
                nursery.start_soon(_keep_peers, net, config.heartbeat_s)
                nursery.start_soon(state.maintain)
                info = {
                    "peer_id": config.identity.peer_id,
                    "addrs": net.addrs(),
                    "models": [{"name": m.name, "digest": m.digest} for m in node.models],
                    "speed": node.speed.model_dump(by_alias=True),
                    "bootstrap_reached": reached,
                    "pid": os.getpid(),
                    "metrics": metrics_url,
                }
                if config.ready_file:
                    _write_atomic(config.ready_file, json.dumps(info).encode())
                if config.state_dir is not None:  # how `node status` finds this node
                    write_node_file(config.state_dir, info)
                    cleanup.callback(remove_node_file, config.state_dir)
                if on_ready:
                    on_ready(info)
                output = make_output(config.live, config.log_format, status, service.events)
                nursery.start_soon(output.run)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        log.info("received %s, shutting down", signal.Signals(signum).name)
                        break
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the shutdown short
                service.shutdown()
                with trio.move_on_after(2):
                    await advertiser.publish_now()  # "accepting": false, so requesters look elsewhere
                nursery.cancel_scope.cancel()


def _relay_candidates(net, bootstrap: list[str], reachability: str) -> list[str]:
    """Relays for a node whose operator named none: only once AutoNAT found it private (or it
    listens nowhere); its bootstrap peers first, then nodes whose records say they are public."""
    if reachability != "private":
        return []
    found = list(bootstrap)
    for record in net.directory.live(net.clock()):
        if record.peer_id == net.peer_id or getattr(record, "reachability", "unknown") != "public":
            continue
        direct = [a for a in record.addrs if "/p2p-circuit" not in a and a.endswith("/p2p/" + record.peer_id)]
        found += direct[:1]
    return list(dict.fromkeys(found))


def _dialback_peers(net) -> list:
    """Whom to ask to dial us back: connected peers that published a record (nodes answer; a
    requester's bare host does not), in random order so no one peer decides for us."""
    import random

    from libp2p.peer.id import ID

    connected = {str(p) for p in net.host.get_connected_peers()}
    nodes = [r.peer_id for r in net.directory.live(net.clock()) if r.peer_id in connected and r.peer_id != net.peer_id]
    random.shuffle(nodes)
    return [ID.from_base58(p) for p in nodes]


def _url_host(host: str) -> str:
    """The host to put in the URL we print: an all-interfaces bind is reachable as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


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
