"""Several models on one device: which are loaded where, and the swaps a job may need.

A home GPU holds one SD model comfortably and rarely two, but an operator has a folder of them.
So each served model is a ``ServedSlot`` (what the job service and the capacity record see: name,
digest, family, whether it is warm) and one ``Residency`` decides where its pipeline lives:

* **on the device** (warm): at most ``max_on_device`` pipelines; a job for one starts at once;
* **in RAM**: moved off the device to make room, kept while their bytes fit ``ram_budget``;
  bringing one back is a host-to-device copy (seconds for SD-1.5 on PCIe);
* **on disk**: loaded again from its file or folder when asked for (tens of seconds).

The least recently used model leaves first. All of this runs on the generation thread, inside a
job's ``generate`` (one job at a time per device), so a swap never races a generation; the trio
loop never waits on it. The loader and the two moves are injected: the unit tests script them,
the node passes ``loading.load_model`` and the pipeline's ``to()``.

On a CPU the "device" is RAM: ``max_on_device`` still bounds how many pipelines stay loaded.

Running out of device memory (``torch.OutOfMemoryError``; MPS and the CPU allocator raise a
``RuntimeError`` saying so) fails that job alone: ``ServedSlot.generate`` drops the failed call's
frames, releases memory (gc, empty the CUDA cache) and raises ``JobRejected(OUT_OF_MEMORY)`` with
one line (size, model, device memory free/total), which the job service passes to the requester.
The model stays where it was; the next job runs as usual. torch is never imported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ..protocol.errors import ErrorCode, JobRejected, one_line

log = logging.getLogger("pointillist.node")


class Pipeline(Protocol):
    """What residency needs of a loaded model (``pipeline.LoadedModel`` provides it)."""

    def generate(self, params: Any, on_step: Callable[[int, int], None] | None = None) -> Any: ...


@dataclass
class ModelFacts:
    """What is known of a model without loading it: from its path, digest and header."""

    name: str
    digest: str
    path: Path
    family: str | None = None
    native_side: int | None = None
    pipeline: str = "unknown"


@dataclass
class Residency:
    load: Callable[[ModelFacts], Pipeline]  # from disk onto the device
    to_ram: Callable[[Pipeline], None]  # off the device, kept in RAM
    to_device: Callable[[Pipeline], None]  # back from RAM
    size_of: Callable[[Pipeline], int]  # bytes it takes in RAM
    release: Callable[[], None] = lambda: None  # after dropping one: gc, empty the CUDA cache
    max_on_device: int = 1
    ram_budget: int = 0  # bytes of off-device pipelines kept in RAM
    on_change: Callable[[], None] = lambda: None  # warmth changed: re-advertise
    memory: Callable[[], tuple[int, int] | None] = lambda: None  # device (free, total) bytes; None off CUDA

    def __post_init__(self) -> None:
        self._on_device: OrderedDict[str, Pipeline] = OrderedDict()  # digest -> pipeline, LRU first
        self._in_ram: OrderedDict[str, Pipeline] = OrderedDict()
        self._lock = threading.Lock()
        self.swaps: list[tuple[str, str, float]] = []  # (digest, "ram"/"disk", seconds): for logs and tests

    def adopt(self, facts: ModelFacts, pipe: Pipeline) -> None:
        """A model loaded at start-up (the first one: it also measured the node's speed)."""
        with self._lock:
            self._on_device[facts.digest] = pipe

    def warm(self, digest: str) -> bool:
        return digest in self._on_device

    def where(self, digest: str) -> str:
        return "device" if digest in self._on_device else "ram" if digest in self._in_ram else "disk"

    def get(self, facts: ModelFacts) -> Pipeline:
        """The pipeline of ``facts`` on the device, after whatever moves that takes."""
        with self._lock:
            pipe = self._on_device.get(facts.digest)
            if pipe is not None:
                self._on_device.move_to_end(facts.digest)
                return pipe
            self._make_room()
            started = time.monotonic()
            pipe = self._in_ram.pop(facts.digest, None)
            if pipe is not None:
                self.to_device(pipe)
                source = "ram"
            else:
                pipe = self.load(facts)  # a failure leaves things as they are, minus the room made
                source = "disk"
            self._on_device[facts.digest] = pipe
            took = time.monotonic() - started
            self.swaps.append((facts.digest, source, took))
            log.info("model %s loaded from %s in %.1f s", facts.name, source, took)
        self.on_change()
        return pipe

    def _make_room(self) -> None:
        while len(self._on_device) >= max(1, self.max_on_device):
            digest, pipe = self._on_device.popitem(last=False)
            size = self.size_of(pipe)
            if size <= self.ram_budget:
                self.to_ram(pipe)
                self._in_ram[digest] = pipe
                self._trim_ram()
            self.release()  # a pipeline not kept in RAM is dropped here

    def _trim_ram(self) -> None:
        while self._in_ram and sum(self.size_of(p) for p in self._in_ram.values()) > self.ram_budget:
            self._in_ram.popitem(last=False)


@dataclass
class ServedSlot:
    """One served model as the job service sees it (``service.Model``): generating through it
    first brings its pipeline onto the device."""

    facts: ModelFacts
    residency: Residency
    memory_fit: Any = None  # memory_fit.MemoryFit on CUDA: admission refuses jobs that would not fit

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def digest(self) -> str:
        return self.facts.digest

    @property
    def family(self) -> str | None:
        return self.facts.family

    @property
    def warm(self) -> bool:
        return self.residency.warm(self.facts.digest)

    def on_device(self) -> Pipeline:
        """The loaded model on the device (loading or moving it first), for audits."""
        return self.residency.get(self.facts)

    def generate(self, params: Any, on_step: Callable[[int, int], None] | None = None) -> Any:
        failed: str | None = None
        try:
            return self.residency.get(self.facts).generate(params, on_step)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = one_line(exc, 160)
        # Out of the except block: the exception and its traceback (whose frames hold the job's
        # tensors) are gone, so releasing now frees the memory.
        self.residency.release()
        log.warning("model %s ran out of device memory: %s", self.name, failed)
        raise JobRejected(ErrorCode.OUT_OF_MEMORY, self._oom_message(params, failed))

    def _oom_message(self, params: Any, detail: str) -> str:
        size = f"{getattr(params, 'width', '?')}x{getattr(params, 'height', '?')}"
        try:
            memory = self.residency.memory()
        except Exception:  # a broken device cannot even say how much is free: say nothing
            memory = None
        vram = f"{memory[0] / 2**30:.1f} of {memory[1] / 2**30:.1f} GiB free after release" if memory else "memory released"
        return f"{size} with model {self.name} ran out of device memory ({vram}): {detail}"[:300]


#: What MPS and the CPU allocator say when they run out (they raise a plain ``RuntimeError``).
_OOM_PHRASES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.OutOfMemoryError`` (CUDA; also named ``torch.cuda.OutOfMemoryError``), found by
    class name so this module needs no torch, or a ``RuntimeError`` whose message says so."""
    if any(c.__name__ == "OutOfMemoryError" and c.__module__.split(".")[0] == "torch" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)
