"""A node's own capacity record: built from its live state, signed, published on change and on a
slow heartbeat (gossip costs ~17 ms of CPU per delivered record per node, so never every second).

The device's free memory is read again before each publication (``device_now``: on CUDA one
``torch.cuda.mem_get_info``, in a worker thread so the trio loop never waits on the driver while
the GPU works). A model's ``maxSide`` is the operator's ``max_side``, lowered to what its
measured memory estimate allows (``memory_fit``, node/memory_fit.py) on CUDA.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from ..protocol.capacity import HEARTBEAT_S, RECORD_TTL_S, CapacityRecord, Device, Speed, encode_record
from .service import JobService, ServedModels
from .version import POINTILLIST_VERSION

log = logging.getLogger("pointillist.node")

#: At most one publication per this many seconds, however often the queue changes.
MIN_PUBLISH_INTERVAL_S = 1.0


class Advertiser:
    def __init__(
        self,
        network,
        service: JobService,
        models: ServedModels,
        device: Device,
        speed: Speed,
        *,
        max_side: int,
        pipeline_names: dict[str, str],
        heartbeat_s: float = HEARTBEAT_S,
        ttl_s: int = RECORD_TTL_S,
        clock: Callable[[], float] | None = None,
        device_now: Callable[[], Device] | None = None,
        reachability: Callable[[], str] = lambda: "unknown",
    ) -> None:
        self.network = network
        self.reachability = reachability  # public / private / unknown (network/reachability.py)
        self.service = service
        self.models = models
        self.device = device
        self.speed = speed
        self.max_side = max_side
        self.pipeline_names = pipeline_names
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.clock = clock or network.clock
        self.device_now = device_now
        self._seq = 0
        self._changed = trio.Event()
        self.published = 0

    def changed(self) -> None:
        """Called by the job service whenever its queue changes."""
        self._changed.set()

    def build(self) -> CapacityRecord:
        now = self.clock()
        # Sequence numbers come from the clock (ms) so they keep rising across restarts.
        self._seq = max(self._seq + 1, int(now * 1000))
        limits = self.service.limits
        queue_size = limits.queue_size + 1  # the running job plus those waiting
        return CapacityRecord.model_validate({
            "peerId": self.network.peer_id,
            "addrs": self._addrs(),
            "device": self.device.model_dump(by_alias=True),
            "models": [
                {"name": m.name, "digest": m.digest, "pipeline": self.pipeline_names.get(m.digest, "unknown"),
                 "maxSide": self._max_side(m), "family": getattr(m, "family", None), "warm": getattr(m, "warm", True)}
                for m in self.models
            ],
            "speed": self.speed.model_dump(by_alias=True),
            "queueFree": max(0, queue_size - self.service.queue_depth),
            "queueSize": queue_size,
            "accepting": not self.service.shutting_down,
            "version": POINTILLIST_VERSION,
            "seq": self._seq,
            "issuedAt": int(now),
            "expiresAt": int(now) + self.ttl_s,
            "reachability": self.reachability(),
        })

    def _max_side(self, model) -> int:
        fit = getattr(model, "memory_fit", None)
        return self.max_side if fit is None else max(8, min(self.max_side, fit.max_side()))

    async def refresh_device(self) -> None:
        """Read the device's free memory again (a failed reading keeps the last one)."""
        if self.device_now is None:
            return
        try:
            # Abandoned on cancel: the last record at shutdown must not wait on a busy driver.
            self.device = await trio.to_thread.run_sync(self.device_now, abandon_on_cancel=True)
        except Exception:
            log.debug("could not read the device's memory", exc_info=True)

    async def publish_now(self) -> None:
        await self.refresh_device()
        data = encode_record(self.network.identity, self.build())
        await self.network.publish(data)
        self.published += 1

    async def run(self) -> None:
        # The first publication may reach nobody (no mesh formed yet): repeat it shortly after
        # joining instead of leaving newcomers to wait a full heartbeat.
        for delay in (0.0, 2.0, 5.0):
            await trio.sleep(delay)
            await self._publish_logged()
        while True:
            await trio.sleep(MIN_PUBLISH_INTERVAL_S)
            with trio.move_on_after(max(0.0, self.heartbeat_s - MIN_PUBLISH_INTERVAL_S)):
                await self._changed.wait()
            self._changed = trio.Event()
            await self._publish_logged()

    async def _publish_logged(self) -> None:
        try:
            await self.publish_now()
        except Exception:  # publishing is retried at the next heartbeat
            log.warning("could not publish capacity record", exc_info=True)

    def _addrs(self) -> list[str]:
        """Only addresses others can use (network/addresses.py)."""
        from ..network.addresses import advertised

        return advertised(self.network.listen_addrs(), self.network.circuit_addrs(), self.reachability())[:16]
